//! Posts that wait for a reviewer: messages to approval-only groups (announcement channels)
//! and announcement changes of company and department groups. Only approved posts are
//! delivered; every state change is in the audit log, and the author hears the decision.

use crate::api::{ApiJson, Caller};
use crate::directory::{from_json, scan_all, to_json};
use crate::error::{ApiError, ErrorBody};
use crate::state::{now_ms, AppState};
use axum::extract::{Path, Query, State};
use axum::Json;
use protocol::{
    ConvId, ErrorCode, EventKind, GroupId, MessageId, MessageKind, Seq, ServerFrame, UserId,
};
use serde::{Deserialize, Serialize};
use store::{AuditEntry, MetaOp, NewMessage};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(approve))
        .routes(routes!(reject))
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

/// `GET /v1/posts` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PostQuery {
    /// Only posts in this state.
    state: Option<PostState>,
    /// Only posts to this group.
    group: Option<String>,
}

/// Posts: reviewers see every post, other users their own.
#[utoipa::path(get, path = "/v1/posts", tag = "posts", params(PostQuery), security(("bearer" = [])),
    responses((status = 200, body = [Post]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): Query<PostQuery>,
) -> Result<Json<Vec<Post>>, ApiError> {
    let reviewer = state.is_reviewer(&me);
    let all: Vec<(String, Post)> = scan_all(&state.meta, NS_POST, "").await?;
    Ok(Json(
        all.into_iter()
            .map(|(_, p)| p)
            .filter(|p| reviewer || p.author == me)
            .filter(|p| q.state.is_none_or(|s| p.state == s))
            .filter(|p| q.group.as_deref().is_none_or(|g| p.group.as_str() == g))
            .collect(),
    ))
}

/// `POST /v1/posts/{id}/reject` body.
#[derive(Debug, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why (shown to the author).
    #[serde(default)]
    reason: Option<String>,
}

/// Takes the decision on a pending post exactly once.
async fn decide(state: &AppState, me: &UserId, id: &str) -> Result<Post, ApiError> {
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
    if post.state != PostState::Pending
        || !state
            .meta
            .insert_new(NS_POST_DECISION, id, me.as_str().as_bytes().to_vec())
            .await?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("post {id} was already decided"),
        ));
    }
    Ok(post)
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
    crate::api::publish(state, vec![post.author.clone()], frame).await;
}

/// Approves a pending post: a message is stored with the next seq and delivered; an
/// announcement replaces the group's. Reviewers only, never their own post.
#[utoipa::path(post, path = "/v1/posts/{id}/approve", tag = "posts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Post id")),
    responses((status = 200, body = Post), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Already decided", body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Post>, ApiError> {
    let post = decide(&state, &me, &id).await?;
    match publish_post(&state, &me, post).await {
        Ok(post) => Ok(Json(post)),
        Err(e) => {
            // Nothing was delivered: let the post be decided again.
            let _ = state
                .meta
                .apply(vec![MetaOp::delete(NS_POST_DECISION, &id)])
                .await;
            Err(e)
        }
    }
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
                },
                view.members.as_ref().clone(),
                None,
            )
            .await?;
            post.seq = Some(appended.message.seq);
        }
        PostKind::Announcement => {
            crate::api::groups::publish_announcement(&state, &me, &view, post.body.clone()).await?;
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

/// Rejects a pending post; it is never delivered and its author is told. Reviewers only.
#[utoipa::path(post, path = "/v1/posts/{id}/reject", tag = "posts", request_body = Decision, security(("bearer" = [])),
    params(("id" = String, Path, description = "Post id")),
    responses((status = 200, body = Post), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Already decided", body = ErrorBody)))]
async fn reject(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<Decision>,
) -> Result<Json<Post>, ApiError> {
    if d.reason.as_deref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::bad_request("reason: at most 500 characters"));
    }
    let mut post = decide(&state, &me, &id).await?;
    post.state = PostState::Rejected;
    post.reviewer = Some(me.clone());
    post.decided_at = Some(now_ms());
    post.reason = d.reason;
    save(&state, &post).await?;
    state.audit(audit(&me, "post.reject", &post)).await;
    tell_author(&state, &post, &me).await;
    Ok(Json(post))
}
