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
