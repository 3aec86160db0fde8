//! The moderation side of persistence: the audit log of verdicts and admin actions, the
//! review queue of messages held for approval, and the compliance event log. A separate trait from [`crate::Store`] so that
//! a backend can add it independently; the embedded backend implements both.

use crate::Result;
use async_trait::async_trait;
use protocol::{Attachment, ConvId, MessageKind, Seq, UserId};
use serde::{Deserialize, Serialize};

/// One audit record: a moderation verdict other than allow, or an admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When, ms since the epoch.
    pub ts: u64,
    /// Who (the sender for verdicts, the admin for actions).
    pub actor: UserId,
    /// What: `moderation.block`, `moderation.mask`, `review.approve`, `escalation.mute`, ...
    pub action: String,
    /// The conversation concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvId>,
    /// The user concerned, when not the actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<UserId>,
    /// The message concerned (server id or review id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The rule id (never the matched words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rule category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// What changed, for admin actions (e.g. a mute's end, a new role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEntry {
    /// An entry for an admin action by `actor`, with the other fields empty.
    pub fn action(ts: u64, actor: &UserId, action: &str) -> Self {
        Self {
            ts,
            actor: actor.clone(),
            action: action.to_owned(),
            conv: None,
            target: None,
            message: None,
            rule: None,
            category: None,
            detail: None,
        }
    }
}

/// Filters for reading the audit log; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuditQuery {
    /// Actor or target.
    pub user: Option<UserId>,
    /// Conversation.
    pub conv: Option<ConvId>,
    /// Rule category.
    pub category: Option<String>,
    /// From this time (ms, inclusive).
    pub since: Option<u64>,
    /// Until this time (ms, exclusive).
    pub until: Option<u64>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// Whether an entry passes the filters (time bounds excepted).
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.user
            .as_ref()
            .is_none_or(|u| &e.actor == u || e.target.as_ref() == Some(u))
            && self
                .conv
                .as_ref()
                .is_none_or(|c| e.conv.as_ref() == Some(c))
            && self
                .category
                .as_ref()
                .is_none_or(|c| e.category.as_ref() == Some(c))
    }
}

/// A message held by moderation until an admin approves or rejects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldMessage {
    /// The review id.
    pub id: String,
    /// The conversation it was sent to.
    pub conv: ConvId,
    /// The sender.
    pub from: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Text, image or file.
    pub kind: MessageKind,
    /// The body to deliver if approved (masked where rules asked for it).
    pub body: String,
    /// The referenced file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Mentioned users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The answered seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// When it was sent.
    pub ts: u64,
    /// Why it was held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The rule that held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Audit log and review queue.
#[async_trait]
pub trait ReviewStore: Send + Sync + 'static {
    /// Appends an audit record (durably).
    async fn audit(&self, entry: AuditEntry) -> Result<()>;
    /// Reads audit records, newest first.
    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Puts a message in the review queue (durably).
    async fn hold(&self, held: HeldMessage) -> Result<()>;
    /// The messages waiting for review in a conversation, oldest first.
    async fn held(&self, conv: &ConvId) -> Result<Vec<HeldMessage>>;
    /// Removes a held message and returns it (`None` if already decided or unknown).
    async fn take_held(&self, conv: &ConvId, id: &str) -> Result<Option<HeldMessage>>;
    /// Up to `limit` (at most [`crate::compliance::MAX_PAGE`]) events of the compliance log
    /// after `after`, oldest first, and only final ones: below the horizon, where no event
    /// can still appear (see [`crate::compliance`]).
    async fn compliance_events(
        &self,
        after: &crate::EventId,
        limit: usize,
    ) -> Result<crate::EventPage>;
}
