//! The conversation policy, one for WebSocket and HTTP alike: who may read and write a
//! conversation ([`access`]), who may post in a group ([`check_posting`]), and the context the
//! moderation filter checks a text in ([`ModerationScope`]): whether the conversation has an
//! external member (looked up in the members' directory accounts, DMs included) and the
//! group's own rules (`GET/PUT /v1/groups/{id}/moderation`).
//!
//! Every moderated path takes its scope from here: a message and its attachment's name
//! (`send`), a group announcement, a post.

use crate::error::ApiError;
use crate::membership::{GroupView, Lifecycle};
use crate::penalties::Restriction;
use crate::state::{now_ms, AppState};
use moderation::{CheckContext, GroupPolicy, Verdict};
use protocol::{ConvId, ConvKind, ErrorCode, GroupId, UserId};
use std::sync::Arc;

/// Who may see a conversation, resolved for one caller.
pub enum Access {
    /// A direct conversation: both users.
    Direct([UserId; 2]),
    /// A group conversation.
    Group(Arc<GroupView>),
}

impl Access {
    /// Everyone who receives the conversation's messages.
    pub fn audience(&self) -> Vec<UserId> {
        match self {
            Access::Direct([a, b]) if a == b => vec![a.clone()],
            Access::Direct(pair) => pair.to_vec(),
            Access::Group(g) => g.members.as_ref().clone(),
        }
    }
}

/// Checks that `user` may read and write `conv`, and says who else is in it.
pub async fn access(state: &AppState, user: &UserId, conv: &ConvId) -> Result<Access, ApiError> {
    match conv.kind() {
        ConvKind::Direct(a, b) => {
            if a != user.as_str() && b != user.as_str() {
                return Err(ApiError::forbidden(format!("{conv} is not yours")));
            }
            Ok(Access::Direct([UserId::new(a), UserId::new(b)]))
        }
        ConvKind::Group(g) => {
            let view = state.group(&GroupId::new(g)).await?;
            if view.role_of(user).is_none() {
                return Err(ApiError::forbidden(format!(
                    "you are not a member of group {g}"
                )));
            }
            Ok(Access::Group(view))
        }
    }
}

/// Refuses posts to archived groups and from members muted in the group (or in a group
/// muted as a whole, where only the owner and admins post).
pub fn check_posting(view: &GroupView, me: &UserId) -> Result<(), ApiError> {
    if view.settings.lifecycle == Lifecycle::Archived {
        return Err(ApiError::forbidden("the group is archived (read-only)"));
    }
    if let Some(until) = view.settings.muted_until(me, now_ms()) {
        return Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted in this group until {until} (ms since the epoch)"),
        ));
    }
    if view.settings.muted_all && !view.is_admin(me) {
        return Err(ApiError::new(
            ErrorCode::Muted,
            "the group is muted: only the owner and admins post",
        ));
    }
    Ok(())
}

/// What the moderation filter needs to know about a conversation.
#[derive(Default)]
pub struct ModerationScope {
    /// Some member is external: the stricter outsider actions apply.
    external: bool,
    /// The group's own rules, compiled.
    group: Option<Arc<GroupPolicy>>,
}

impl ModerationScope {
    /// The scope of a conversation.
    pub async fn of(state: &AppState, access: &Access) -> Result<Self, ApiError> {
        match access {
            Access::Direct(pair) => {
                let mut external = false;
                for u in pair {
                    external |= state.membership.is_external(u).await?;
                }
                Ok(Self {
                    external,
                    group: None,
                })
            }
            Access::Group(view) => Self::of_group(state, view).await,
        }
    }

    /// The scope of a group conversation.
    pub async fn of_group(state: &AppState, view: &GroupView) -> Result<Self, ApiError> {
        let external = state.membership.has_external_member(view).await?;
        let group = view
            .moderation
            .as_ref()
            .and_then(|spec| state.moderation.group_policy(&view.group.id, spec));
        Ok(Self { external, group })
    }

    /// Whether the conversation has an external member.
    pub fn has_external_member(&self) -> bool {
        self.external
    }

    /// The context to check a text in.
    pub fn context(&self) -> CheckContext<'_> {
        CheckContext {
            group: self.group.as_deref(),
            has_external_member: self.external,
        }
    }

    /// The verdict on a text in this conversation.
    pub fn check(&self, state: &AppState, text: &str) -> Verdict {
        state.moderation.check(text, &self.context())
    }
}

/// A message's texts after moderation.
pub struct CheckedMessage {
    /// The stricter of the verdicts on the body and on the attachment's name: what the
    /// sender is told and what is audited.
    pub verdict: Verdict,
    /// The body to store and deliver (masked where its own verdict masked it).
    pub body: String,
    /// The attachment's name to store and deliver (masked where its own verdict masked it).
    pub attachment_name: Option<String>,
}

/// Checks a message's body and its attachment's name in `scope`. Each text keeps its own
/// masking; the stricter verdict decides the message's fate.
pub fn check_message(
    state: &AppState,
    scope: &ModerationScope,
    body: &str,
    attachment_name: Option<&str>,
) -> CheckedMessage {
    let verdict = scope.check(state, body);
    let body = verdict.text_to_deliver(body).to_owned();
    let Some(name) = attachment_name else {
        return CheckedMessage {
            verdict,
            body,
            attachment_name: None,
        };
    };
    let name_verdict = scope.check(state, name);
    let attachment_name = Some(name_verdict.text_to_deliver(name).to_owned());
    let verdict = if name_verdict.action > verdict.action {
        name_verdict
    } else {
        verdict
    };
    CheckedMessage {
        verdict,
        body,
        attachment_name,
    }
}

/// Who reviews a conversation: the group's owner and admins, or a company administrator.
pub async fn require_reviewer(
    state: &AppState,
    me: &UserId,
    conv: &ConvId,
) -> Result<(), ApiError> {
    if state.is_company_admin(me) {
        return Ok(());
    }
    if let Some(g) = conv.group_id() {
        let view = state.group(&g).await?;
        if view.role_of(me).is_some_and(|r| r >= store::Role::Admin) {
            return Ok(());
        }
    }
    Err(ApiError::forbidden(
        "only the group's owner and admins (or a company administrator) review messages",
    ))
}

/// Refuses authors who are muted or suspended (on any node: see [`crate::penalties`]): every
/// way of posting asks this, WebSocket sends, approval posts and announcements alike.
pub async fn check_not_restricted(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    match state
        .membership
        .penalties
        .restriction(user, now_ms())
        .await?
    {
        None => Ok(()),
        Some(Restriction::MutedUntil(until)) => Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted until {until} (ms since the epoch)"),
        )),
        Some(Restriction::Suspended) => Err(ApiError::new(
            ErrorCode::Muted,
            "you are suspended from posting until an administrator lifts it",
        )),
    }
}
