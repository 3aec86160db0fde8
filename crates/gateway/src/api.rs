//! The HTTP JSON API under `/v1/` (groups and conversations) and `/healthz`.
//!
//! Every `/v1` route authenticates with `Authorization: Bearer <jwt>` and answers errors as
//! `{"error": {"code", "message", "retry"}}` with the code's HTTP status, including
//! malformed JSON bodies (400), which axum would otherwise answer in plain text.

use crate::error::ApiError;
use crate::session::{auth_error, bearer};
use crate::state::{now_ms, AppState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use protocol::{ConvId, ConvSummary, ErrorCode, EventKind, GroupId, ServerFrame, UserId};
use router::{Control, Envelope};
use serde::{Deserialize, Serialize};
use store::{Group, GroupKind, Member, Role};

/// The authenticated caller of an HTTP request.
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers, None)
            .ok_or_else(|| auth_error(crate::auth::AuthError::Missing))?;
        let claims = state.auth.verify(&token).map_err(auth_error)?;
        let user = UserId::new(claims.sub);
        state.touch_user(&user).await?;
        Ok(Caller(user))
    }
}

/// A JSON body whose rejection is a JSON `bad_request`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(ErrorCode::TooLarge, "request body too large"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/groups", post(create_group).get(my_groups))
        .route("/v1/groups/{id}", get(get_group))
        .route("/v1/groups/{id}/members", post(add_member))
        .route("/v1/groups/{id}/members/{user}", delete(remove_member))
        .route("/v1/conversations", get(conversations))
        .route("/v1/review", get(review_list))
        .route("/v1/review/approve", post(review_approve))
        .route("/v1/review/reject", post(review_reject))
        .route("/v1/audit", get(audit))
        .route("/v1/admin/moderation/reload", post(reload_rules))
        .route("/v1/admin/users/{user}/lift", post(lift))
        .route("/v1/admin/users/{user}/disconnect", post(disconnect))
        .fallback(|| async { ApiError::not_found("no such route") })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    sessions: usize,
}

async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        sessions: state.hub.len(),
    })
}

/// `POST /v1/groups` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Display name, 1..=100 characters.
    name: String,
    /// Group kind (default `project`).
    #[serde(default)]
    kind: GroupKind,
    /// Initial members besides the creator.
    #[serde(default)]
    members: Vec<UserId>,
}

/// A group with its members, as the API returns it.
#[derive(Debug, Serialize)]
pub struct GroupDetail {
    #[serde(flatten)]
    group: Group,
    members: Vec<Member>,
}

/// A row of `GET /v1/groups`.
#[derive(Debug, Serialize)]
pub struct GroupRow {
    #[serde(flatten)]
    group: Group,
    role: Role,
}

const MAX_INITIAL_MEMBERS: usize = 5000;

async fn create_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<Response, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("name must be 1 to 100 characters"));
    }
    if req.members.len() > MAX_INITIAL_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "members: at most {MAX_INITIAL_MEMBERS} initial members"
        )));
    }
    let now = now_ms();
    let mut members = vec![Member {
        user: me.clone(),
        role: Role::Owner,
        joined_at: now,
    }];
    for user in req.members {
        if !user.is_valid() {
            return Err(ApiError::bad_request(format!(
                "members: {user:?} is not a user id"
            )));
        }
        if user == me || members.iter().any(|m| m.user == user) {
            continue;
        }
        if !state.user_exists(&user).await? {
            return Err(ApiError::not_found(format!("no user {user}")));
        }
        members.push(Member {
            user,
            role: Role::Member,
            joined_at: now,
        });
    }
    let group = Group {
        id: GroupId::new(format!("g{}", uuid::Uuid::now_v7().simple())),
        name: name.to_owned(),
        kind: req.kind,
        created_by: me.clone(),
        created_at: now,
    };
    state
        .store
        .create_group(group.clone(), members.clone())
        .await?;
    let joined: Vec<UserId> = members.iter().map(|m| m.user.clone()).collect();
    notify(
        &state,
        joined,
        EventKind::MemberJoined,
        &group.id,
        &me,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(GroupDetail { group, members })).into_response())
}

async fn my_groups(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<GroupRow>>, ApiError> {
    let mut rows = Vec::new();
    for id in state.store.user_groups(&me).await? {
        if let Some(view) = state.membership.get(&id).await? {
            if let Some(role) = view.role_of(&me) {
                rows.push(GroupRow {
                    group: view.group.clone(),
                    role,
                });
            }
        }
    }
    Ok(Json(rows))
}

async fn get_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<GroupDetail>, ApiError> {
    let id = GroupId::new(id);
    let view = state.group(&id).await?;
    if view.role_of(&me).is_none() {
        return Err(ApiError::forbidden("only members may read a group"));
    }
    let members = state.store.members(&id).await?;
    Ok(Json(GroupDetail {
        group: view.group.clone(),
        members,
    }))
}

/// `POST /v1/groups/{id}/members` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user to add.
    user: UserId,
    /// Their role (default `member`; only the owner may add admins).
    #[serde(default)]
    role: Option<Role>,
}

async fn add_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<Json<Member>, ApiError> {
    let id = GroupId::new(id);
    let view = state.group(&id).await?;
    let my_role = view
        .role_of(&me)
        .ok_or_else(|| ApiError::forbidden("only members may change a group"))?;
    if my_role < Role::Admin {
        return Err(ApiError::forbidden(
            "only the owner and admins may add members",
        ));
    }
    let role = req.role.unwrap_or(Role::Member);
    if role == Role::Owner {
        return Err(ApiError::bad_request("role: a group has one owner"));
    }
    if role == Role::Admin && my_role != Role::Owner {
        return Err(ApiError::forbidden("only the owner may appoint admins"));
    }
    if !req.user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    if !state.user_exists(&req.user).await? {
        return Err(ApiError::not_found(format!("no user {}", req.user)));
    }
    if let Some(existing) = view.role_of(&req.user) {
        if existing == Role::Owner {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "that user owns the group",
            ));
        }
    }
    let was_member = view.role_of(&req.user).is_some();
    let member = Member {
        user: req.user.clone(),
        role,
        joined_at: now_ms(),
    };
    state.store.put_member(&id, member.clone()).await?;
    changed(&state, &id).await;
    if !was_member {
        let mut audience = view.members.as_ref().clone();
        audience.push(req.user.clone());
        notify(
            &state,
            audience,
            EventKind::MemberJoined,
            &id,
            &me,
            Some(req.user),
        )
        .await;
    }
    Ok(Json(member))
}

async fn remove_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = GroupId::new(id);
    let user = UserId::new(user);
    let view = state.group(&id).await?;
    let my_role = view
        .role_of(&me)
        .ok_or_else(|| ApiError::forbidden("only members may change a group"))?;
    let Some(their_role) = view.role_of(&user) else {
        return Err(ApiError::not_found(format!("{user} is not a member")));
    };
    if their_role == Role::Owner {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the owner cannot leave or be removed; transfer ownership first",
        ));
    }
    let leaving = user == me;
    if !leaving && (my_role < Role::Admin || their_role >= my_role) {
        return Err(ApiError::forbidden(
            "only the owner and admins may remove members, and admins only members",
        ));
    }
    state.store.remove_member(&id, &user).await?;
    changed(&state, &id).await;
    notify(
        &state,
        view.members.as_ref().clone(),
        EventKind::MemberLeft,
        &id,
        &me,
        Some(user),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn conversations(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<ConvSummary>>, ApiError> {
    Ok(Json(state.store.conversations(&me).await?))
}

/// Drops cached membership here and on every other node.
async fn changed(state: &AppState, id: &GroupId) {
    state.membership.invalidate(id);
    let control = Control::GroupChanged { group: id.clone() };
    if let Err(e) = state.router.publish(Envelope::broadcast(control)).await {
        tracing::warn!(error = %e, "could not broadcast a membership change");
    }
}

/// Sends a membership `event` to the given users.
async fn notify(
    state: &AppState,
    audience: Vec<UserId>,
    event: EventKind,
    group: &GroupId,
    actor: &UserId,
    user: Option<UserId>,
) {
    let frame = ServerFrame::Event {
        event,
        conv: Some(ConvId::group(group)),
        actor: Some(actor.clone()),
        user,
        seq: None,
        until: None,
        detail: None,
    };
    if let Err(e) = state.router.publish(Envelope::frame(audience, frame)).await {
        tracing::warn!(error = %e, "could not publish a group event");
    }
}

/// `?conv=` of the review list.
#[derive(Debug, Deserialize)]
pub struct ConvQuery {
    conv: String,
}

/// Body of approve and reject.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecision {
    /// The conversation the message was sent to.
    conv: String,
    /// The review id (the `id` of the sender's `ack`).
    id: String,
}

fn parse_conv(s: &str) -> Result<ConvId, ApiError> {
    ConvId::parse(s).map_err(|e| ApiError::bad_request(format!("conv: {e}")))
}

/// Who reviews a conversation: the group's owner and admins, or a company administrator.
async fn require_reviewer(state: &AppState, me: &UserId, conv: &ConvId) -> Result<(), ApiError> {
    if state.is_company_admin(me) {
        return Ok(());
    }
    if let Some(g) = conv.group_id() {
        let view = state.group(&g).await?;
        if view.role_of(me).is_some_and(|r| r >= Role::Admin) {
            return Ok(());
        }
    }
    Err(ApiError::forbidden(
        "only the group's owner and admins (or a company administrator) review messages",
    ))
}

async fn review_list(
    State(state): State<AppState>,
    Caller(me): Caller,
    axum::extract::Query(q): axum::extract::Query<ConvQuery>,
) -> Result<Json<Vec<store::HeldMessage>>, ApiError> {
    let conv = parse_conv(&q.conv)?;
    require_reviewer(&state, &me, &conv).await?;
    Ok(Json(state.review.held(&conv).await?))
}

/// The answer to an approval.
#[derive(Debug, Serialize)]
pub struct Approved {
    conv: ConvId,
    seq: protocol::Seq,
    id: protocol::MessageId,
}

async fn review_approve(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(d): ApiJson<ReviewDecision>,
) -> Result<Json<Approved>, ApiError> {
    let conv = parse_conv(&d.conv)?;
    require_reviewer(&state, &me, &conv).await?;
    let held =
        state.review.take_held(&conv, &d.id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no message {} waiting for review", d.id))
        })?;
    let audience = match conv.kind() {
        protocol::ConvKind::Direct(a, b) => vec![UserId::new(a), UserId::new(b)],
        protocol::ConvKind::Group(g) => state
            .group(&GroupId::new(g))
            .await?
            .members
            .as_ref()
            .clone(),
    };
    let participants = if conv.group_id().is_some() {
        Vec::new()
    } else {
        audience.clone()
    };
    let pump = state.pump.clone();
    let deliver: store::AfterAppend = Box::new(move |a: &store::Appended| {
        if !a.duplicate {
            pump.push(Envelope::frame(
                audience,
                ServerFrame::Message(a.message.clone()),
            ));
        }
    });
    let appended = state
        .store
        .append_then(
            store::NewMessage {
                conv: conv.clone(),
                from: held.from.clone(),
                client_msg_id: held.client_msg_id.clone(),
                id: protocol::MessageId::new(uuid::Uuid::now_v7().to_string()),
                kind: held.kind,
                body: held.body.clone(),
                attachment: held.attachment.clone(),
                mentions: held.mentions.clone(),
                reply_to: held.reply_to,
                ts: now_ms(),
                participants,
            },
            deliver,
        )
        .await?;
    let message = appended.message;
    decided(
        &state,
        me,
        &conv,
        held,
        EventKind::ReviewApproved,
        Some(message.seq),
    )
    .await;
    Ok(Json(Approved {
        conv,
        seq: message.seq,
        id: message.id,
    }))
}

async fn review_reject(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(d): ApiJson<ReviewDecision>,
) -> Result<StatusCode, ApiError> {
    let conv = parse_conv(&d.conv)?;
    require_reviewer(&state, &me, &conv).await?;
    let held =
        state.review.take_held(&conv, &d.id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no message {} waiting for review", d.id))
        })?;
    decided(&state, me, &conv, held, EventKind::ReviewRejected, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells the sender of a held message what the reviewer decided, and records it.
async fn decided(
    state: &AppState,
    reviewer: UserId,
    conv: &ConvId,
    held: store::HeldMessage,
    event: EventKind,
    seq: Option<protocol::Seq>,
) {
    let frame = ServerFrame::Event {
        event,
        conv: Some(conv.clone()),
        actor: Some(reviewer.clone()),
        user: Some(held.from.clone()),
        seq,
        until: None,
        detail: Some(held.client_msg_id.clone()),
    };
    let _ = state
        .router
        .publish(Envelope::frame(vec![held.from.clone()], frame))
        .await;
    let action = match event {
        EventKind::ReviewApproved => "review.approve",
        _ => "review.reject",
    };
    state
        .audit(store::AuditEntry {
            ts: now_ms(),
            actor: reviewer,
            action: action.into(),
            conv: Some(conv.clone()),
            target: Some(held.from),
            message: Some(held.id),
            rule: held.rule,
            category: held.category,
        })
        .await;
}

fn require_company_admin(state: &AppState, me: &UserId) -> Result<(), ApiError> {
    if state.is_company_admin(me) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only company administrators may do this",
        ))
    }
}

/// `GET /v1/audit` filters, as query parameters.
#[derive(Debug, Deserialize)]
pub struct AuditParams {
    user: Option<String>,
    group: Option<String>,
    conv: Option<String>,
    category: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    Caller(me): Caller,
    axum::extract::Query(p): axum::extract::Query<AuditParams>,
) -> Result<Json<Vec<store::AuditEntry>>, ApiError> {
    require_company_admin(&state, &me)?;
    let conv = match (p.conv, p.group) {
        (Some(c), _) => Some(parse_conv(&c)?),
        (None, Some(g)) => Some(ConvId::group(&GroupId::new(g))),
        (None, None) => None,
    };
    let q = store::AuditQuery {
        user: p.user.map(UserId::new),
        conv,
        category: p.category,
        since: p.since,
        until: p.until,
        limit: p.limit,
    };
    Ok(Json(state.review.audit_query(&q).await?))
}

async fn reload_rules(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_company_admin(&state, &me)?;
    let m = state.moderation.clone();
    let result = tokio::task::spawn_blocking(move || m.reload())
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reload task: {e}")))?;
    match result {
        Ok(stats) => {
            state
                .audit(store::AuditEntry {
                    ts: now_ms(),
                    actor: me,
                    action: "moderation.reload".into(),
                    conv: None,
                    target: None,
                    message: None,
                    rule: None,
                    category: None,
                })
                .await;
            Ok(Json(
                serde_json::json!({"status": "reloaded", "stats": format!("{stats:?}")}),
            ))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "rules rejected, the previous rules stay in force: {e}"
        ))),
    }
}

async fn lift(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_company_admin(&state, &me)?;
    let user = UserId::new(user);
    state.moderation.lift(&user);
    state
        .audit(store::AuditEntry {
            ts: now_ms(),
            actor: me,
            action: "moderation.lift".into(),
            conv: None,
            target: Some(user.clone()),
            message: None,
            rule: None,
            category: None,
        })
        .await;
    let frame = ServerFrame::Event {
        event: EventKind::Unmuted,
        conv: None,
        actor: None,
        user: Some(user.clone()),
        seq: None,
        until: None,
        detail: None,
    };
    let _ = state
        .router
        .publish(Envelope::frame(vec![user], frame))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Closes every session of a user on every node with 4001 (signed out).
async fn disconnect(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_company_admin(&state, &me)?;
    let user = UserId::new(user);
    let control = Control::Disconnect {
        code: protocol::close::SIGNED_OUT,
        reason: "signed out by an administrator".into(),
        session: None,
    };
    state
        .router
        .publish(Envelope::control(vec![user.clone()], control))
        .await?;
    state
        .audit(store::AuditEntry {
            ts: now_ms(),
            actor: me,
            action: "user.disconnect".into(),
            conv: None,
            target: Some(user),
            message: None,
            rule: None,
            category: None,
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
