//! The company directory over HTTP: accounts and departments (company administrators),
//! directory search (internal users), built-in sign-in, and the caller's own sessions.

use super::ClientAddr;
use super::{user_changed, ApiJson, Caller};
use crate::directory::{
    create_account, get_json, password_of, scan_all, to_json, Account, AccountRecord, Department,
    PasswordPolicy, Status, NS_CREDENTIAL, NS_DEPT, NS_USER,
};
use crate::error::{ApiError, ErrorBody};
use crate::groups;
use crate::hub::SessionDescription;
use crate::leavers::{self, Deactivated};
use crate::post_commit;
use crate::state::{now_ms, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{close, ErrorCode, UserId};
use router::Control;
use serde::{Deserialize, Serialize};
use store::{AuditEntry, MetaOp};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

fn policy(state: &AppState) -> PasswordPolicy {
    PasswordPolicy {
        min_len: state.config.auth.password_min_len,
        letters_and_digits: state.config.auth.password_letters_and_digits,
    }
}

fn audit(me: &UserId, action: &str, target: Option<&UserId>, detail: Option<String>) -> AuditEntry {
    let mut e = AuditEntry::action(now_ms(), me, action);
    e.target = target.cloned();
    e.detail = detail;
    e
}

fn valid_id(s: &str) -> bool {
    UserId::new(s).is_valid()
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let n = name.trim().chars().count();
    if n == 0 || n > 100 {
        return Err(ApiError::bad_request(format!(
            "{field}: must be 1 to 100 characters"
        )));
    }
    Ok(())
}

async fn department_exists(state: &AppState, id: &str) -> Result<bool, ApiError> {
    Ok(state.meta.get(NS_DEPT, id).await?.is_some())
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

fn too_many_for_user() -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        "too many sign-in attempts for this user; wait a minute",
    )
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
    if !req.user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    if req.password.len() > 1024 {
        // No stored password is longer (the policy), so nothing longer is worth hashing.
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "wrong user id or password",
        ));
    }
    state.signin.check_address(addr)?;
    if state.login_limiter.check_key(&req.user).is_err() {
        return Err(too_many_for_user());
    }
    // One entry per user id tried: made-up ids must not grow the limiter without bound.
    if state.login_limiter.len() > 100_000 {
        state.login_limiter.retain_recent();
    }
    let refused = || ApiError::new(ErrorCode::Unauthorized, "wrong user id or password");
    // Read from the store, not through the account cache, so made-up ids do not fill it.
    let Some((AccountRecord { account, .. }, hash)) = password_of(&state.meta, &req.user).await?
    else {
        // The same work as a real check, so neither answer nor time tells which ids exist.
        let _ = state.signin.hashing.verify(req.password, None).await?;
        return Err(refused());
    };
    if !state
        .signin
        .hashing
        .verify(req.password, Some(hash))
        .await?
    {
        return Err(refused());
    }
    if !account.is_active() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this account is deactivated",
        ));
    }
    let not_before = account
        .tokens_valid_after
        .max(state.membership.revocations.not_before(&req.user).await?);
    let (token, expires_at) = state
        .auth
        .mint_not_before(&req.user, not_before)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(Token { token, expires_at }))
}

/// Revokes every token of `user` issued up to now, on every node: their sessions close with
/// 4001 and the tokens are refused (HTTP 401, and at the WebSocket upgrade). Returns the new
/// cut-off (seconds): a token minted for the user now must have an `iat` of at least this.
pub(crate) async fn revoke_all_tokens(state: &AppState, user: &UserId) -> Result<u64, ApiError> {
    // One second ahead: a token minted earlier in this second is revoked too.
    let before = crate::clock::now_secs() + 1;
    let until = before.saturating_add(state.auth.max_lifetime_secs());
    state
        .membership
        .revocations
        .revoke_user(user, before, until)
        .await?;
    let control = Control::TokensRevoked {
        user: user.clone(),
        token: None,
        before: Some(before),
        until,
    };
    // Stored: nodes that miss the broadcast re-read the store within `revocation::FRESH_FOR`.
    post_commit::broadcast(&*state.router, control).await;
    Ok(before)
}

/// Revokes one token of `user` (by its id) on every node: the sessions using it close with
/// 4001 and it is refused from now on.
pub(crate) async fn revoke_token(
    state: &AppState,
    user: &UserId,
    token_id: &str,
) -> Result<(), ApiError> {
    let until = crate::clock::now_secs().saturating_add(state.auth.max_lifetime_secs());
    state
        .membership
        .revocations
        .revoke_token(user, token_id, until)
        .await?;
    let control = Control::TokensRevoked {
        user: user.clone(),
        token: Some(token_id.to_owned()),
        before: None,
        until,
    };
    post_commit::broadcast(&*state.router, control).await;
    Ok(())
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
    state.require_company_admin(&me)?;
    if !req.id.is_valid() {
        return Err(ApiError::bad_request(
            "id: 1 to 64 characters of letters, digits and _ . @ -",
        ));
    }
    check_name("name", &req.name)?;
    if req
        .title
        .as_deref()
        .is_some_and(|t| t.chars().count() > 100)
    {
        return Err(ApiError::bad_request("title: at most 100 characters"));
    }
    if let Some(d) = &req.department {
        if !department_exists(&state, d).await? {
            return Err(ApiError::not_found(format!("no department {d}")));
        }
    }
    let hash = match &req.password {
        Some(p) => {
            policy(&state).check(p)?;
            Some(state.signin.hashing.hash(p.clone()).await?)
        }
        None => None,
    };
    let now = now_ms();
    let account = Account {
        id: req.id.clone(),
        name: req.name.trim().to_owned(),
        department: req.department,
        title: req.title,
        status: Status::Active,
        external: req.external,
        tokens_valid_after: 0,
        created_at: now,
        updated_at: now,
    };
    // One commit point, no undo: see `directory::AccountRecord`.
    if !create_account(&state.meta, account.clone(), hash).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("id: user {} exists", account.id),
        ));
    }
    user_changed(&state, &account.id).await;
    state.touch_user(&account.id).await?;
    groups::follow_directory(&state, &account, None).await?;
    state
        .audit(audit(&me, "user.create", Some(&account.id), None))
        .await;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// `GET /v1/users` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
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
    let admin = state.is_company_admin(&me);
    if !admin && state.is_external(&me).await? {
        return Err(ApiError::forbidden(
            "external users do not see the directory",
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let needle = q.q.as_deref().map(str::to_lowercase);
    let all: Vec<(String, Account)> = scan_all(&state.meta, NS_USER, "").await?;
    Ok(Json(
        all.into_iter()
            .map(|(_, a)| a)
            .filter(|a| a.is_active() || (admin && q.include_deactivated))
            .filter(|a| {
                q.department
                    .as_deref()
                    .is_none_or(|d| a.department.as_deref() == Some(d))
            })
            .filter(|a| {
                needle.as_deref().is_none_or(|n| {
                    a.name.to_lowercase().contains(n) || a.id.as_str().to_lowercase().contains(n)
                })
            })
            .take(limit)
            .collect(),
    ))
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
    let admin = state.is_company_admin(&me);
    if !admin && me.as_str() != id && state.is_external(&me).await? {
        return Err(ApiError::forbidden(
            "external users do not see the directory",
        ));
    }
    let account = state
        .membership
        .account(&UserId::new(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    Ok(Json(account.as_ref().clone()))
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

/// Reads an account record for a change (with its password binding, which a rewrite must
/// keep), or `not_found`.
async fn load(state: &AppState, id: &str) -> Result<AccountRecord, ApiError> {
    get_json(&state.meta, NS_USER, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))
}

async fn save(state: &AppState, record: &AccountRecord) -> Result<(), ApiError> {
    let id = &record.account.id;
    state
        .meta
        .apply(vec![MetaOp::put(NS_USER, id.as_str(), to_json(record)?)])
        .await?;
    user_changed(state, id).await;
    Ok(())
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
    state.require_company_admin(&me)?;
    let mut record = load(&state, &id).await?;
    let account = &mut record.account;
    let old_department = account.department.clone();
    if let Some(n) = &req.name {
        check_name("name", n)?;
        account.name = n.trim().to_owned();
    }
    if let Some(t) = req.title {
        if t.chars().count() > 100 {
            return Err(ApiError::bad_request("title: at most 100 characters"));
        }
        account.title = (!t.is_empty()).then_some(t);
    }
    if let Some(d) = req.department {
        if !d.is_empty() && !department_exists(&state, &d).await? {
            return Err(ApiError::not_found(format!("no department {d}")));
        }
        account.department = (!d.is_empty()).then_some(d);
    }
    if let Some(x) = req.external {
        account.external = x;
    }
    account.updated_at = now_ms();
    save(&state, &record).await?;
    let account = record.account;
    groups::follow_directory(&state, &account, old_department.as_deref()).await?;
    state
        .audit(audit(&me, "user.update", Some(&account.id), None))
        .await;
    Ok(Json(account))
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
    state.require_company_admin(&me)?;
    let mut record = load(&state, &id).await?;
    record.account.status = Status::Active;
    record.account.updated_at = now_ms();
    save(&state, &record).await?;
    let account = record.account;
    // No longer a leaver: a pending erasure is cancelled.
    leavers::reactivated(&state, &account.id).await?;
    state
        .audit(audit(&me, "user.activate", Some(&account.id), None))
        .await;
    Ok(Json(account))
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
    let admin = state.is_company_admin(&me);
    if !admin && me.as_str() != id {
        return Err(ApiError::forbidden(
            "only company administrators set other users' passwords",
        ));
    }
    let record = load(&state, &id).await?;
    let key = record.credential_key();
    let account = record.account;
    if !admin {
        // Guessing the current password costs sign-in attempts.
        if state.login_limiter.check_key(&me).is_err() {
            return Err(too_many_for_user());
        }
        let current: Option<String> = get_json(&state.meta, NS_CREDENTIAL, &key).await?;
        let ok = match (current, req.current) {
            (Some(h), Some(c)) if c.len() <= 1024 => {
                state.signin.hashing.verify(c, Some(h)).await?
            }
            _ => false,
        };
        if !ok {
            return Err(ApiError::forbidden("current: wrong current password"));
        }
    }
    policy(&state).check(&req.password)?;
    let hash = state.signin.hashing.hash(req.password).await?;
    state
        .meta
        .apply(vec![MetaOp::put(NS_CREDENTIAL, &key, to_json(&hash)?)])
        .await?;
    let not_before = revoke_all_tokens(&state, &account.id).await?;
    state
        .audit(audit(&me, "user.password", Some(&account.id), None))
        .await;
    if me != account.id {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (token, expires_at) = state
        .auth
        .mint_not_before(&me, not_before.max(account.tokens_valid_after))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(Token { token, expires_at }).into_response())
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
    state.require_company_admin(&me)?;
    if !valid_id(&d.id) {
        return Err(ApiError::bad_request(
            "id: 1 to 64 characters of letters, digits and _ . @ -",
        ));
    }
    check_name("name", &d.name)?;
    if let Some(p) = &d.parent {
        if !department_exists(&state, p).await? {
            return Err(ApiError::not_found(format!("no department {p}")));
        }
    }
    if !state.meta.insert_new(NS_DEPT, &d.id, to_json(&d)?).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("id: department {} exists", d.id),
        ));
    }
    state
        .audit(audit(&me, "department.create", None, Some(d.id.clone())))
        .await;
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

/// The department tree, as a flat list with parents (internal users).
#[utoipa::path(get, path = "/v1/departments", tag = "directory", security(("bearer" = [])),
    responses((status = 200, body = [Department]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_departments(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<Department>>, ApiError> {
    if !state.is_company_admin(&me) && state.is_external(&me).await? {
        return Err(ApiError::forbidden(
            "external users do not see the directory",
        ));
    }
    let all: Vec<(String, Department)> = scan_all(&state.meta, NS_DEPT, "").await?;
    Ok(Json(all.into_iter().map(|(_, d)| d).collect()))
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
    state.require_company_admin(&me)?;
    let mut d: Department = get_json(&state.meta, NS_DEPT, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no department {id}")))?;
    if let Some(n) = req.name {
        check_name("name", &n)?;
        d.name = n.trim().to_owned();
    }
    if let Some(p) = req.parent {
        if p.is_empty() {
            d.parent = None;
        } else {
            // Walk up from the new parent: meeting this department would make a cycle.
            let mut cursor = Some(p.clone());
            let mut steps = 0;
            while let Some(c) = cursor {
                if c == id {
                    return Err(ApiError::bad_request(
                        "parent: a department cannot be inside itself",
                    ));
                }
                let up: Department = get_json(&state.meta, NS_DEPT, &c)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no department {c}")))?;
                cursor = up.parent;
                steps += 1;
                if steps > 1000 {
                    return Err(ApiError::bad_request("parent: the tree is too deep"));
                }
            }
            d.parent = Some(p);
        }
    }
    state
        .meta
        .apply(vec![MetaOp::put(NS_DEPT, &id, to_json(&d)?)])
        .await?;
    state
        .audit(audit(&me, "department.update", None, Some(id)))
        .await;
    Ok(Json(d))
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
    state.require_company_admin(&me)?;
    if !department_exists(&state, &id).await? {
        return Err(ApiError::not_found(format!("no department {id}")));
    }
    let depts: Vec<(String, Department)> = scan_all(&state.meta, NS_DEPT, "").await?;
    if depts.iter().any(|(_, d)| d.parent.as_deref() == Some(&id)) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the department has sub-departments",
        ));
    }
    let users: Vec<(String, Account)> = scan_all(&state.meta, NS_USER, "").await?;
    if users
        .iter()
        .any(|(_, a)| a.department.as_deref() == Some(&id))
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the department still has accounts",
        ));
    }
    state.meta.apply(vec![MetaOp::delete(NS_DEPT, &id)]).await?;
    state
        .audit(audit(&me, "department.delete", None, Some(id)))
        .await;
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
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::bad_request("id: not a session id"));
    }
    let local = state
        .hub
        .sessions_of(&me)
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.token.id.to_string());
    let token_id = match local {
        Some(t) => Some(t),
        None => state
            .router
            .remote_sessions(&me)
            .await?
            .iter()
            .filter_map(|b| serde_json::from_slice::<SessionDescription>(b).ok())
            .find(|d| d.id == id)
            .map(|d| d.token_id),
    };
    if let Some(token_id) = token_id.filter(|t| !t.is_empty()) {
        revoke_token(&state, &me, &token_id).await?;
    }
    let control = Control::Disconnect {
        code: close::SIGNED_OUT,
        reason: "signed out from another device".into(),
        session: Some(id),
    };
    post_commit::control(&*state.router, vec![me], control).await;
    Ok(StatusCode::NO_CONTENT)
}
