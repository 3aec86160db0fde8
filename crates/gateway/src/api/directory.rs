//! The company directory over HTTP: accounts and departments (company administrators),
//! directory search (internal users), built-in sign-in, and the caller's own sessions. Each
//! handler takes the request apart and calls one function of [`crate::directory_admin`],
//! which holds the rules; deactivation is [`crate::leavers`].

use super::ClientAddr;
use super::{ApiJson, Caller};
use crate::directory::{Account, Department};
use crate::directory_admin;
use crate::error::{ApiError, ErrorBody};
use crate::hub::SessionDescription;
use crate::leavers::{self, Deactivated};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::UserId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Revokes every token of a user (the review tools use it too).
pub(crate) use crate::directory_admin::revoke_all_tokens;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(create_user, search_users))
        .routes(routes!(get_user, update_user))
        .routes(routes!(deactivate))
        .routes(routes!(activate))
        .routes(routes!(set_password))
        .routes(routes!(create_department, list_departments))
        .routes(routes!(update_department, delete_department))
        .routes(routes!(me))
        .routes(routes!(my_sessions))
        .routes(routes!(sign_out_session))
}

/// `POST /v1/login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// User id.
    user: UserId,
    /// Password.
    password: String,
}

/// A signed-in session's token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Token {
    /// The JWT, for `Authorization: Bearer` and `/ws?token=`.
    token: String,
    /// Expiry, seconds since the epoch.
    expires_at: u64,
}

/// Built-in sign-in with a password set by an administrator (no token needed). Limited per
/// client address and per user id; the password check runs on the node's few hashing workers
/// (503 with `retry` when they are all busy), and costs the same for an unknown user id.
#[utoipa::path(post, path = "/v1/login", tag = "directory", request_body = Login,
    responses((status = 200, body = Token), (status = 400, body = ErrorBody),
        (status = 401, description = "Wrong user id or password, or deactivated", body = ErrorBody),
        (status = 429, description = "Too many attempts for this user id or from this address", body = ErrorBody),
        (status = 503, description = "Every password hashing worker is busy; retry", body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<Login>,
) -> Result<Json<Token>, ApiError> {
    let t = directory_admin::sign_in(&state, addr, &req.user, req.password).await?;
    Ok(Json(Token {
        token: t.token,
        expires_at: t.expires_at,
    }))
}

/// `POST /v1/users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// User id (`[A-Za-z0-9_.@-]`, 1..=64).
    id: UserId,
    /// Display name.
    name: String,
    /// Department id.
    #[serde(default)]
    department: Option<String>,
    /// Job title.
    #[serde(default)]
    title: Option<String>,
    /// Someone outside the company.
    #[serde(default)]
    external: bool,
    /// A password for built-in sign-in (checked against the password policy).
    #[serde(default)]
    password: Option<String>,
}

/// Registers an account (company administrators). It joins the company groups and its
/// department's groups.
#[utoipa::path(post, path = "/v1/users", tag = "directory", request_body = NewAccount, security(("bearer" = [])),
    responses((status = 201, body = Account), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No such department", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<NewAccount>,
) -> Result<Response, ApiError> {
    let account = directory_admin::create(
        &state,
        &me,
        directory_admin::NewAccount {
            id: req.id,
            name: req.name,
            department: req.department,
            title: req.title,
            external: req.external,
            password: req.password,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// `GET /v1/users` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Part of the name or id (case-insensitive).
    q: Option<String>,
    /// Only this department.
    department: Option<String>,
    /// Include deactivated accounts (company administrators).
    #[serde(default)]
    include_deactivated: bool,
    /// At most this many (default 50, at most 500).
    limit: Option<usize>,
}

/// Searches the directory by name and department (internal users).
#[utoipa::path(get, path = "/v1/users", tag = "directory", params(UserQuery), security(("bearer" = [])),
    responses((status = 200, body = [Account]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn search_users(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): Query<UserQuery>,
) -> Result<Json<Vec<Account>>, ApiError> {
    let search = directory_admin::Search {
        q: q.q,
        department: q.department,
        include_deactivated: q.include_deactivated,
        limit: q.limit,
    };
    Ok(Json(directory_admin::search(&state, &me, search).await?))
}

/// One account (internal users). Deactivated accounts are shown too, so that a client can
/// name the author of old messages (an erased one reads "Former employee …").
#[utoipa::path(get, path = "/v1/users/{id}", tag = "directory", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = Account), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(directory_admin::read(&state, &me, &id).await?))
}

/// `PATCH /v1/users/{id}` body: the fields to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    /// Display name.
    #[serde(default)]
    name: Option<String>,
    /// Department id (`""` removes it).
    #[serde(default)]
    department: Option<String>,
    /// Job title (`""` removes it).
    #[serde(default)]
    title: Option<String>,
    /// External flag.
    #[serde(default)]
    external: Option<bool>,
}

/// Changes an account (company administrators). A new department moves the account between
/// department groups.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "directory", request_body = AccountChange, security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = Account), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_user(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AccountChange>,
) -> Result<Json<Account>, ApiError> {
    let change = directory_admin::AccountChange {
        name: req.name,
        department: req.department,
        title: req.title,
        external: req.external,
    };
    Ok(Json(
        directory_admin::update(&state, &me, &id, change).await?,
    ))
}

/// `POST /v1/users/{id}/deactivate` body (optional: no body, or `{}`, names no successor).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deactivate {
    /// Who takes over every group the user owns (becomes its owner; the leaver stays a plain
    /// member): an active, internal account. Required when the user owns groups.
    #[serde(default)]
    successor: Option<UserId>,
}

/// Deactivates an account (company administrators): its tokens stop working and every
/// session closes with 4001 on every node, and every group it owns is handed to `successor`
/// (one atomic change per group, audited, announced to the members). Refused with 409 when
/// the user owns groups and no successor is named. Works for users known only from their
/// tokens (no directory record): a deactivated record is created for them.
#[utoipa::path(post, path = "/v1/users/{id}/deactivate", tag = "directory", security(("bearer" = [])),
    request_body(content = Deactivate, description = "Optional; needed when the user owns groups"),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = Deactivated), (status = 400, description = "Not a user id, yourself, or a successor who cannot take over (deactivated, external, the leaver)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such successor", body = ErrorBody),
        (status = 409, description = "The user owns groups and no successor was named (the message lists them)", body = ErrorBody)))]
async fn deactivate(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Deactivated>, ApiError> {
    state.require_company_admin(&me)?;
    let req: Deactivate = if body.iter().all(u8::is_ascii_whitespace) {
        Deactivate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
    };
    Ok(Json(
        leavers::deactivate(&state, &me, &id, req.successor).await?,
    ))
}

/// Re-activates an account (company administrators); old tokens stay revoked.
#[utoipa::path(post, path = "/v1/users/{id}/activate", tag = "directory", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = Account), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn activate(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(directory_admin::activate(&state, &me, &id).await?))
}

/// `PUT /v1/users/{id}/password` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// The new password (checked against the policy).
    password: String,
    /// The current password, when users change their own.
    #[serde(default)]
    current: Option<String>,
}

/// Sets a password: company administrators for anyone, users for themselves (with the
/// current password). Every token of the user issued before is revoked (their sessions close
/// with 4001); users changing their own password get a fresh token in the answer (200), an
/// administrator resetting someone else's gets 204.
#[utoipa::path(put, path = "/v1/users/{id}/password", tag = "directory", request_body = SetPassword, security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "Set (your own password): a fresh token; the old ones are revoked", body = Token),
        (status = 204, description = "Set (someone else's password): their tokens are revoked"),
        (status = 400, description = "Too weak (names the policy)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "Too many attempts at the current password", body = ErrorBody),
        (status = 503, description = "Every password hashing worker is busy; retry", body = ErrorBody)))]
async fn set_password(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetPassword>,
) -> Result<Response, ApiError> {
    let fresh = directory_admin::set_password(&state, &me, &id, req.password, req.current).await?;
    Ok(match fresh {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(t) => Json(Token {
            token: t.token,
            expires_at: t.expires_at,
        })
        .into_response(),
    })
}

/// Creates a department (company administrators).
#[utoipa::path(post, path = "/v1/departments", tag = "directory", request_body = Department, security(("bearer" = [])),
    responses((status = 201, body = Department), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No such parent", body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_department(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(d): ApiJson<Department>,
) -> Result<Response, ApiError> {
    let d = directory_admin::create_department(&state, &me, d).await?;
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

/// The department tree, as a flat list with parents (internal users).
#[utoipa::path(get, path = "/v1/departments", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = [Department]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_departments(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<Department>>, ApiError> {
    Ok(Json(directory_admin::departments(&state, &me).await?))
}

/// `PATCH /v1/departments/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepartmentChange {
    /// New name.
    #[serde(default)]
    name: Option<String>,
    /// New parent (`""` makes it top-level).
    #[serde(default)]
    parent: Option<String>,
}

/// Renames or moves a department (company administrators); a move that would make a cycle
/// is refused.
#[utoipa::path(patch, path = "/v1/departments/{id}", tag = "directory", request_body = DepartmentChange, security(("bearer" = [])),
    params(("id" = String, Path, description = "Department id")),
    responses((status = 200, body = Department), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_department(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DepartmentChange>,
) -> Result<Json<Department>, ApiError> {
    Ok(Json(
        directory_admin::update_department(&state, &me, &id, req.name, req.parent).await?,
    ))
}

/// Deletes an empty department (company administrators): 409 while accounts or
/// sub-departments are in it.
#[utoipa::path(delete, path = "/v1/departments/{id}", tag = "directory", security(("bearer" = [])),
    params(("id" = String, Path, description = "Department id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_department(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    directory_admin::delete_department(&state, &me, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller as the server sees them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// User id.
    user: UserId,
    /// The directory record (absent for users known only from their token).
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<Account>,
    /// Whether they are a company administrator.
    company_admin: bool,
    /// Whether they review announcements.
    reviewer: bool,
}

/// The caller's account and powers.
#[utoipa::path(get, path = "/v1/me", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, Caller(me): Caller) -> Result<Json<Me>, ApiError> {
    let account = state.membership.account(&me).await?;
    Ok(Json(Me {
        company_admin: state.is_company_admin(&me),
        reviewer: state.is_reviewer(&me),
        account: account.map(|a| a.as_ref().clone()),
        user: me,
    }))
}

/// The caller's sessions (devices) on every node, oldest first.
#[utoipa::path(get, path = "/v1/me/sessions", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = [SessionDescription]), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn my_sessions(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<SessionDescription>>, ApiError> {
    let mut sessions: Vec<SessionDescription> = state
        .hub
        .sessions_of(&me)
        .iter()
        .map(|s| s.describe())
        .collect();
    for bytes in state.router.remote_sessions(&me).await? {
        match serde_json::from_slice::<SessionDescription>(&bytes) {
            Ok(d) => sessions.push(d),
            Err(e) => tracing::warn!(error = %e, "undecodable session description"),
        }
    }
    // A session lives on one node, and the router reads only the other nodes: no duplicates.
    sessions.sort_by(|a, b| (a.connected_at, &a.id).cmp(&(b.connected_at, &b.id)));
    Ok(Json(sessions))
}

/// Signs one of the caller's sessions out (close 4001), on whichever node holds it, and
/// revokes the token it was opened with: that token no longer connects nor calls the API,
/// and every other session opened with it closes too. An unknown session id is a no-op.
#[utoipa::path(delete, path = "/v1/me/sessions/{id}", tag = "directory", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Signed out"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn sign_out_session(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    directory_admin::sign_out_session(&state, &me, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
