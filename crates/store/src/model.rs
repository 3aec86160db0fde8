//! Records the store keeps, beside the wire types it shares with the protocol crate.

use protocol::{Attachment, ConvId, GroupId, Message, MessageId, MessageKind, Seq, UserId};
use serde::{Deserialize, Serialize};

/// A message about to be stored; the store assigns its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The conversation.
    pub conv: ConvId,
    /// The sender.
    pub from: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Server id chosen by the gateway (kept only if this is not a duplicate).
    pub id: MessageId,
    /// Text, image or file.
    pub kind: MessageKind,
    /// The body after moderation.
    pub body: String,
    /// The referenced file.
    pub attachment: Option<Attachment>,
    /// Mentioned users.
    pub mentions: Vec<UserId>,
    /// The answered seq.
    pub reply_to: Option<Seq>,
    /// Acceptance time, ms since the epoch.
    pub ts: u64,
    /// Every user who should see the conversation in their list (the two sides of a direct
    /// conversation; empty for groups, whose list comes from membership).
    pub participants: Vec<UserId>,
    /// The moderation outcome the message passed with (`allow`, `warn`, `mask`, ...), recorded
    /// in its compliance event (see [`crate::compliance`]); not part of the message.
    pub moderation: Option<String>,
}

impl NewMessage {
    /// The stored form, once a seq is assigned.
    pub fn into_message(self, seq: Seq) -> Message {
        Message {
            conv: self.conv,
            seq,
            id: self.id,
            from: self.from,
            kind: self.kind,
            body: self.body,
            attachment: self.attachment,
            ts: self.ts,
            mentions: self.mentions,
            reply_to: self.reply_to,
            mentioned: false,
        }
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message (the first copy, for a duplicate).
    pub message: Message,
    /// True when the (conv, sender, client_msg_id) had been stored before.
    pub duplicate: bool,
}

/// A page of messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The messages, in the order the call documents.
    pub messages: Vec<Message>,
    /// Whether more exist beyond the page.
    pub has_more: bool,
}

/// A group's kind, which drives its defaults.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Everyone in the company.
    Company,
    /// A department.
    Department,
    /// A project team (the default).
    #[default]
    Project,
    /// A study or interest group.
    Study,
    /// A group with people from outside the company.
    External,
}

/// A group's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Group {
    /// Its id.
    pub id: GroupId,
    /// Display name.
    pub name: String,
    /// Its kind.
    #[serde(default)]
    pub kind: GroupKind,
    /// Who created it.
    pub created_by: UserId,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
}

/// A member's role in a group.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An ordinary member.
    Member,
    /// May manage members and moderate.
    Admin,
    /// The group's owner; one per group.
    Owner,
}

/// A membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// When they joined, ms since the epoch.
    pub joined_at: u64,
}

/// What a recalled message becomes: its place in the conversation (seq, id, sender, time)
/// stays so that cursors and gaps still add up; its content is erased.
pub trait Tombstone {
    /// The recalled form of this message.
    fn tombstone(&self) -> Message;
}

impl Tombstone for Message {
    fn tombstone(&self) -> Message {
        Message {
            conv: self.conv.clone(),
            seq: self.seq,
            id: self.id.clone(),
            from: self.from.clone(),
            kind: MessageKind::Recalled,
            body: String::new(),
            attachment: None,
            ts: self.ts,
            mentions: Vec::new(),
            reply_to: None,
            mentioned: false,
        }
    }
}

/// The placeholder stored for a seq that holds no message (see [`crate::Store::mark_skipped`]).
pub fn skipped_placeholder(conv: &protocol::ConvId, seq: protocol::Seq, ts: u64) -> Message {
    Message {
        conv: conv.clone(),
        seq,
        id: protocol::MessageId::new(format!("skipped-{}", seq.0)),
        from: protocol::UserId::new(""),
        kind: MessageKind::Skipped,
        body: String::new(),
        attachment: None,
        ts,
        mentions: Vec::new(),
        reply_to: None,
        mentioned: false,
    }
}

/// What an append answers for a retry of a message that retention has deleted since (see
/// [`crate::Store::expire`]): a duplicate at its old seq, without content.
pub fn expired_placeholder(
    conv: &protocol::ConvId,
    seq: protocol::Seq,
    from: &protocol::UserId,
) -> Message {
    let mut gone = skipped_placeholder(conv, seq, 0);
    gone.id = protocol::MessageId::new(format!("expired-{}", seq.0));
    gone.from = from.clone();
    gone.kind = MessageKind::Recalled;
    gone
}
