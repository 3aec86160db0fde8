//! Posts that wait for a reviewer: messages to approval-only groups (announcement channels)
//! and announcement changes of company and department groups. Only approved posts are
//! delivered; every state change is in the audit log, and the author hears the decision.
//! The HTTP handlers are in `api/posts.rs`.

use crate::directory::{from_json, scan_all, to_json};
use crate::error::ApiError;
use crate::state::{now_ms, AppState};
use protocol::{
    ConvId, ErrorCode, EventKind, GroupId, MessageId, MessageKind, Seq, ServerFrame, UserId,
};
use serde::{Deserialize, Serialize};
use store::{AuditEntry, MetaOp, NewMessage};

/// Namespace of posts, keyed by post id (time-ordered).
pub const NS_POST: &str = "post";
/// Namespace that makes a decision happen once, keyed by post id.
const NS_POST_DECISION: &str = "post_decision";

/// What a post becomes once approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostKind {
    /// A message in the group's conversation.
    Message,
    /// The group's announcement.
    Announcement,
}

/// Where a post is in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostState {
    /// Waiting for a reviewer.
    Pending,
    /// Approved and delivered.
    Approved,
    /// Rejected; never delivered.
    Rejected,
}

/// A post waiting for, or past, review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Post {
    /// Its id.
    pub id: String,
    /// The group.
    pub group: GroupId,
    /// Who wrote it.
    pub author: UserId,
    /// Message or announcement.
    pub kind: PostKind,
    /// The text (after moderation).
    pub body: String,
    /// The author's idempotency key, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Pending, approved or rejected.
    pub state: PostState,
    /// When it was submitted, ms since the epoch.
    pub created_at: u64,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<UserId>,
    /// When, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    /// The seq of the delivered message (approved messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    /// The reviewer's reason (rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn audit(me: &UserId, action: &str, post: &Post) -> AuditEntry {
    let mut e = AuditEntry::action(now_ms(), me, action);
    e.conv = Some(ConvId::group(&post.group));
    e.target = Some(post.author.clone());
    e.message = Some(post.id.clone());
    e.detail = Some(
        match post.kind {
            PostKind::Message => "message",
            PostKind::Announcement => "announcement",
        }
        .into(),
    );
    e
}

/// Stores a pending post and records its submission.
pub async fn submit(
    state: &AppState,
    author: &UserId,
    group: &GroupId,
    kind: PostKind,
    body: String,
    client_msg_id: Option<String>,
) -> Result<Post, ApiError> {
    let post = Post {
        id: format!("p{}", uuid::Uuid::now_v7().simple()),
        group: group.clone(),
        author: author.clone(),
        kind,
        body,
        client_msg_id,
        state: PostState::Pending,
        created_at: now_ms(),
        reviewer: None,
        decided_at: None,
        seq: None,
        reason: None,
    };
    state
        .meta
        .apply(vec![MetaOp::put(NS_POST, &post.id, to_json(&post)?)])
        .await?;
    state.audit(audit(author, "post.submit", &post)).await;
    Ok(post)
}

/// Takes the decision (`verb`: `approve` or `reject`) on a pending post exactly once: the
/// decision record (`<verb>:<reviewer>`; a bare reviewer id from before) is created once.
/// An approval whose delivery did not finish (the post is still pending under an approval)
/// is finished by the next approval: delivering is repeatable, so nothing is undone.
async fn decide(state: &AppState, me: &UserId, id: &str, verb: &str) -> Result<Post, ApiError> {
    if !state.is_reviewer(me) {
        return Err(ApiError::forbidden(
            "only reviewers (auth.reviewers) and company administrators decide posts",
        ));
    }
    let Some(bytes) = state.meta.get(NS_POST, id).await? else {
        return Err(ApiError::not_found(format!("no post {id}")));
    };
    let post: Post = from_json(&bytes)?;
    if &post.author == me {
        return Err(ApiError::forbidden(
            "a reviewer does not approve their own post",
        ));
    }
    let decided = || {
        ApiError::new(
            ErrorCode::Conflict,
            format!("post {id} was already decided"),
        )
    };
    if post.state != PostState::Pending {
        return Err(decided());
    }
    let mark = format!("{verb}:{me}").into_bytes();
    if state.meta.insert_new(NS_POST_DECISION, id, mark).await? {
        return Ok(post);
    }
    let unfinished_approval = verb == "approve"
        && state
            .meta
            .get(NS_POST_DECISION, id)
            .await?
            .is_some_and(|d| d.starts_with(b"approve:"));
    if unfinished_approval {
        return Ok(post);
    }
    Err(decided())
}

async fn save(state: &AppState, post: &Post) -> Result<(), ApiError> {
    state
        .meta
        .apply(vec![MetaOp::put(NS_POST, &post.id, to_json(post)?)])
        .await?;
    Ok(())
}

async fn tell_author(state: &AppState, post: &Post, me: &UserId) {
    let frame = ServerFrame::Event {
        event: EventKind::AnnouncementReviewed,
        conv: Some(ConvId::group(&post.group)),
        actor: Some(me.clone()),
        user: Some(post.author.clone()),
        seq: post.seq,
        until: None,
        detail: Some(match post.state {
            PostState::Rejected => format!("rejected {}", post.id),
            _ => format!("approved {}", post.id),
        }),
    };
    crate::events::publish(state, vec![post.author.clone()], frame).await;
}

async fn publish_post(state: &AppState, me: &UserId, mut post: Post) -> Result<Post, ApiError> {
    let state = state.clone();
    let me = me.clone();
    let view = state.group(&post.group).await?;
    match post.kind {
        PostKind::Message => {
            let conv = ConvId::group(&post.group);
            let appended = crate::messages::append_and_deliver(
                &state,
                NewMessage {
                    conv,
                    from: post.author.clone(),
                    client_msg_id: post
                        .client_msg_id
                        .clone()
                        .unwrap_or_else(|| post.id.clone()),
                    id: MessageId::new(uuid::Uuid::now_v7().to_string()),
                    kind: MessageKind::Text,
                    body: post.body.clone(),
                    attachment: None,
                    mentions: Vec::new(),
                    reply_to: None,
                    ts: now_ms(),
                    participants: Vec::new(),
                    moderation: Some("approval".into()),
                },
                view.members.as_ref().clone(),
                None,
                None,
            )
            .await?;
            post.seq = Some(appended.message.seq);
        }
        PostKind::Announcement => {
            crate::groups::publish_announcement(&state, &me, &view, post.body.clone()).await?;
        }
    }
    post.state = PostState::Approved;
    post.reviewer = Some(me.clone());
    post.decided_at = Some(now_ms());
    save(&state, &post).await?;
    state.audit(audit(&me, "post.approve", &post)).await;
    tell_author(&state, &post, &me).await;
    Ok(post)
}

/// Posts `me` may see (reviewers every post, other users their own), optionally only those
/// in state `only` or to group `group`.
pub async fn list(
    state: &AppState,
    me: &UserId,
    only: Option<PostState>,
    group: Option<&str>,
) -> Result<Vec<Post>, ApiError> {
    let reviewer = state.is_reviewer(me);
    let all: Vec<(String, Post)> = scan_all(&state.meta, NS_POST, "").await?;
    Ok(all
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| reviewer || &p.author == me)
        .filter(|p| only.is_none_or(|s| p.state == s))
        .filter(|p| group.is_none_or(|g| p.group.as_str() == g))
        .collect())
}

/// Approves a pending post: a message is stored with the next seq and delivered; an
/// announcement replaces the group's. Reviewers only, never their own post.
///
/// Repeatable rather than undone: if delivering fails (or the node stops) after the decision
/// was taken, the post stays pending under an approval, and approving it again finishes the
/// job. The message is stored once whatever the number of attempts (its client message id is
/// the post's), and re-applying an announcement sets the same text.
pub async fn approve(state: &AppState, me: &UserId, id: &str) -> Result<Post, ApiError> {
    let post = decide(state, me, id, "approve").await?;
    #[cfg(feature = "test-hooks")]
    if crate::faults::fail_once("post.approve") {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "test hook: post.approve failed",
        ));
    }
    publish_post(state, me, post).await
}

/// Rejects a pending post with an optional reason (at most 500 characters); it is never
/// delivered and its author is told. Reviewers only.
pub async fn reject(
    state: &AppState,
    me: &UserId,
    id: &str,
    reason: Option<String>,
) -> Result<Post, ApiError> {
    if reason.as_deref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::bad_request("reason: at most 500 characters"));
    }
    let mut post = decide(state, me, id, "reject").await?;
    post.state = PostState::Rejected;
    post.reviewer = Some(me.clone());
    post.decided_at = Some(now_ms());
    post.reason = reason;
    save(state, &post).await?;
    state.audit(audit(me, "post.reject", &post)).await;
    tell_author(state, &post, me).await;
    Ok(post)
}
