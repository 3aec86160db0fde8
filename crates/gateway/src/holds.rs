//! Legal holds: what the lawyers need kept, whatever retention or a recall says.
//!
//! A hold covers one user (every message they sent), one conversation, or the whole company,
//! from `starts_at` until `ends_at` (or until released). While a hold applies, the retention
//! job (`retention.rs`) skips what it covers, a recall keeps a copy of the recalled content
//! ([`preserve_if_held`], namespace [`NS_HELD_CONTENT`]), and account erasure must skip a held user
//! (call [`covers_user`]). Holds are records in the [`store::MetaStore`] (namespace
//! [`NS_HOLD`]); creating and releasing one is audited. A released hold stays listed (with
//! who released it and when) and covers nothing from then on: the data follows the normal
//! retention policies again. The HTTP handlers are in `api/retention.rs`.

use crate::directory::{from_json, get_json, scan_all, to_json};
use crate::error::ApiError;
use crate::post_commit::Audit;
use crate::state::{now_ms, AppState};
use protocol::{ConvId, ErrorCode, Message, UserId};
use serde::{Deserialize, Serialize};
use store::{MetaOp, Swap};

/// Namespace of holds, keyed by hold id (`h` + a UUIDv7, so in creation order).
pub const NS_HOLD: &str = "legal_hold";
/// Namespace of content a recall erased while a hold covered it, keyed `conv/seq` (seq as
/// 20 digits), value the original message as JSON. Kept for the lawyers (and the compliance
/// export) while a hold covers it; the retention job deletes it once none does.
pub const NS_HELD_CONTENT: &str = "held_content";

/// Longest reason accepted, in characters.
const MAX_REASON: usize = 1000;
/// Most holds in force or listed at once: holds are few; this bounds what every check reads.
pub const MAX_HOLDS: usize = 10_000;

/// What a hold covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HoldScope {
    /// Everything in every conversation.
    Company,
    /// Every message this user sent, in any conversation.
    User {
        /// The held user.
        user: UserId,
    },
    /// Every message of one conversation.
    Conversation {
        /// The held conversation.
        conv: ConvId,
    },
}

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hold {
    /// Its id.
    pub id: String,
    /// What it covers.
    pub scope: HoldScope,
    /// Why (the matter, the request).
    pub reason: String,
    /// From when it applies, ms since the epoch.
    pub starts_at: u64,
    /// Until when it applies (exclusive), ms since the epoch; `None`: until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// Who created it.
    pub created_by: UserId,
    /// When, ms since the epoch.
    pub created_at: u64,
    /// When it was released, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<u64>,
    /// Who released it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<UserId>,
}

impl Hold {
    /// Whether the hold is in force at `now` (started, not ended, not released).
    pub fn applies(&self, now: u64) -> bool {
        self.released_at.is_none()
            && self.starts_at <= now
            && self.ends_at.is_none_or(|end| now < end)
    }
}

/// A new hold, as an administrator asks for it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    /// What it covers.
    pub scope: HoldScope,
    /// Why (required, at most 1,000 characters).
    pub reason: String,
    /// From when (ms since the epoch); default now.
    #[serde(default)]
    pub starts_at: Option<u64>,
    /// Until when (ms since the epoch, after `starts_at`); default until released.
    #[serde(default)]
    pub ends_at: Option<u64>,
}

/// The holds in force at one moment, for checking many messages against them.
#[derive(Debug, Clone, Default)]
pub struct ActiveHolds {
    /// A company hold applies.
    pub company: bool,
    /// Held users.
    pub users: std::collections::HashSet<UserId>,
    /// Held conversations.
    pub convs: std::collections::HashSet<ConvId>,
}

impl ActiveHolds {
    /// Whether the holds keep every message of `conv` (a company or conversation hold).
    pub fn covers_conversation(&self, conv: &ConvId) -> bool {
        self.company || self.convs.contains(conv)
    }

    /// Whether the holds keep what `user` sent (a company or user hold).
    pub fn covers_user(&self, user: &UserId) -> bool {
        self.company || self.users.contains(user)
    }

    /// Whether the holds keep a message sent by `from` in `conv`.
    pub fn covers_message(&self, conv: &ConvId, from: &UserId) -> bool {
        self.covers_conversation(conv) || self.covers_user(from)
    }

    /// Whether no hold is in force.
    pub fn is_empty(&self) -> bool {
        !self.company && self.users.is_empty() && self.convs.is_empty()
    }
}

/// Every hold, oldest first (released ones included).
pub async fn list(state: &AppState) -> Result<Vec<Hold>, ApiError> {
    let all: Vec<(String, Hold)> = scan_all(&state.meta, NS_HOLD, "").await?;
    Ok(all.into_iter().map(|(_, h)| h).collect())
}

/// The holds in force at `now`.
pub async fn active(state: &AppState, now: u64) -> Result<ActiveHolds, ApiError> {
    let mut out = ActiveHolds::default();
    for h in list(state).await?.into_iter().filter(|h| h.applies(now)) {
        match h.scope {
            HoldScope::Company => out.company = true,
            HoldScope::User { user } => {
                out.users.insert(user);
            }
            HoldScope::Conversation { conv } => {
                out.convs.insert(conv);
            }
        }
    }
    Ok(out)
}

/// Whether a hold in force at `now` covers `user` (a user or company hold): account erasure
/// must then leave the account and its messages alone.
pub async fn covers_user(state: &AppState, user: &UserId, now: u64) -> Result<bool, ApiError> {
    Ok(active(state, now).await?.covers_user(user))
}

/// Whether a hold in force at `now` covers all of `conv` (a conversation or company hold).
pub async fn covers_conversation(
    state: &AppState,
    conv: &ConvId,
    now: u64,
) -> Result<bool, ApiError> {
    Ok(active(state, now).await?.covers_conversation(conv))
}

/// Creates a hold (audited `hold.create`).
pub async fn create(state: &AppState, me: &UserId, req: NewHold) -> Result<Hold, ApiError> {
    let reason = req.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "reason: say why, in 1 to {MAX_REASON} characters"
        )));
    }
    if let HoldScope::User { user } = &req.scope {
        if !user.is_valid() {
            return Err(ApiError::bad_request(
                "scope.user: 1 to 64 characters of letters, digits and _ . @ -",
            ));
        }
    }
    let now = now_ms();
    let starts_at = req.starts_at.unwrap_or(now);
    if req.ends_at.is_some_and(|end| end <= starts_at) {
        return Err(ApiError::bad_request("ends_at must be after starts_at"));
    }
    if list(state).await?.len() >= MAX_HOLDS {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("at most {MAX_HOLDS} holds; release or delete old ones first"),
        ));
    }
    let hold = Hold {
        id: format!("h{}", uuid::Uuid::now_v7().simple()),
        scope: req.scope,
        reason,
        starts_at,
        ends_at: req.ends_at,
        created_by: me.clone(),
        created_at: now,
        released_at: None,
        released_by: None,
    };
    if !state
        .meta
        .insert_new(NS_HOLD, &hold.id, to_json(&hold)?)
        .await?
    {
        return Err(ApiError::new(ErrorCode::Conflict, "hold id taken; retry"));
    }
    state
        .audit(
            audit(me, "hold.create", &hold)
                .detail(describe(&hold))
                .build(),
        )
        .await;
    Ok(hold)
}

/// Releases a hold (audited `hold.release`); releasing a released hold returns it as it is.
pub async fn release(state: &AppState, me: &UserId, id: &str) -> Result<Hold, ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::not_found(format!("no hold {id}")));
    }
    let Some(mut current) = state.meta.get(NS_HOLD, id).await? else {
        return Err(ApiError::not_found(format!("no hold {id}")));
    };
    // Compare-and-swap: two admins releasing at once record one release.
    for _ in 0..8 {
        let mut hold: Hold = from_json(&current)?;
        if hold.released_at.is_some() {
            return Ok(hold);
        }
        hold.released_at = Some(now_ms());
        hold.released_by = Some(me.clone());
        match state
            .meta
            .compare_and_swap(NS_HOLD, id, Some(current), to_json(&hold)?)
            .await?
        {
            Swap::Done => {
                state
                    .audit(
                        audit(me, "hold.release", &hold)
                            .detail(describe(&hold))
                            .build(),
                    )
                    .await;
                return Ok(hold);
            }
            Swap::Current(Some(now)) => current = now,
            Swap::Current(None) => return Err(ApiError::not_found(format!("no hold {id}"))),
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the hold is changing concurrently; try again",
    ))
}

fn audit(me: &UserId, action: &str, hold: &Hold) -> Audit {
    let mut a = Audit::new(now_ms(), me, action).message(hold.id.clone());
    match &hold.scope {
        HoldScope::User { user } => a = a.target(user.clone()),
        HoldScope::Conversation { conv } => a = a.conv(conv.clone()),
        HoldScope::Company => {}
    }
    a
}

fn describe(hold: &Hold) -> String {
    let scope = match &hold.scope {
        HoldScope::Company => "company".to_owned(),
        HoldScope::User { user } => format!("user {user}"),
        HoldScope::Conversation { conv } => format!("conversation {conv}"),
    };
    format!("{scope}; reason: {}", hold.reason)
}

/// Key of a preserved message in [`NS_HELD_CONTENT`].
pub fn held_content_key(conv: &ConvId, seq: protocol::Seq) -> String {
    format!("{conv}/{:020}", seq.0)
}

/// Keeps a copy of `original` before a recall erases its content, when a hold in force covers
/// it; a failure fails the recall (the content must not be lost while held). Returns whether
/// a hold covers it.
pub async fn preserve_if_held(state: &AppState, original: &Message) -> Result<bool, ApiError> {
    if !active(state, now_ms())
        .await?
        .covers_message(&original.conv, &original.from)
    {
        return Ok(false);
    }
    state
        .meta
        .apply(vec![MetaOp::put(
            NS_HELD_CONTENT,
            &held_content_key(&original.conv, original.seq),
            to_json(original)?,
        )])
        .await?;
    Ok(true)
}

/// A preserved message, if a recall under a hold kept one.
pub async fn preserved(
    state: &AppState,
    conv: &ConvId,
    seq: protocol::Seq,
) -> Result<Option<Message>, ApiError> {
    get_json(&state.meta, NS_HELD_CONTENT, &held_content_key(conv, seq)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn hold(scope: HoldScope, starts_at: u64, ends_at: Option<u64>) -> Hold {
        Hold {
            id: "h1".into(),
            scope,
            reason: "case 1".into(),
            starts_at,
            ends_at,
            created_by: UserId::new("boss"),
            created_at: 0,
            released_at: None,
            released_by: None,
        }
    }

    #[test]
    fn a_hold_applies_between_its_start_and_end_until_released() {
        let mut h = hold(HoldScope::Company, 100, Some(200));
        assert!(!h.applies(99));
        assert!(h.applies(100));
        assert!(h.applies(199));
        assert!(!h.applies(200));
        h.ends_at = None;
        assert!(h.applies(1_000_000));
        h.released_at = Some(150);
        assert!(!h.applies(160));
    }

    #[test]
    fn scopes_cover_what_they_name() {
        let conv = ConvId::parse("group:g1").unwrap();
        let other = ConvId::parse("group:g2").unwrap();
        let mut a = ActiveHolds::default();
        assert!(a.is_empty());
        a.users.insert(UserId::new("ann"));
        a.convs.insert(conv.clone());
        assert!(a.covers_message(&other, &UserId::new("ann")));
        assert!(!a.covers_message(&other, &UserId::new("bob")));
        assert!(a.covers_message(&conv, &UserId::new("bob")));
        assert!(!a.covers_conversation(&other));
        a.company = true;
        assert!(a.covers_message(&other, &UserId::new("bob")));
    }

    #[test]
    fn scopes_are_tagged_in_json() {
        let s: HoldScope = serde_json::from_str(r#"{"type":"user","user":"ann"}"#).unwrap();
        assert_eq!(
            s,
            HoldScope::User {
                user: UserId::new("ann")
            }
        );
        let s: HoldScope = serde_json::from_str(r#"{"type":"company"}"#).unwrap();
        assert_eq!(s, HoldScope::Company);
        assert!(
            serde_json::from_str::<HoldScope>(r#"{"type":"conversation","conv":"nope"}"#).is_err()
        );
    }
}
