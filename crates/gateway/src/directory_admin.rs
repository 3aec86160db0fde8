//! What company administrators and users do to the directory, one function per operation:
//! built-in sign-in, accounts (create, search, read, change, re-activate, password),
//! departments, token revocation and signing a session out. The HTTP handlers in
//! `api/directory.rs` only take the request apart and call one of these with plain values;
//! the records themselves (accounts with their password binding, departments) are in
//! `directory.rs`. Deactivation is `leavers.rs`.
//!
//! Each change reads: authorize -> rules -> one write -> its follow-ups (cache invalidation
//! on every node, the audit entry), best effort once the write is stored.

use crate::directory::{
    create_account, get_json, password_of, scan_all, to_json, Account, AccountRecord, Department,
    PasswordPolicy, Status, NS_CREDENTIAL, NS_DEPT, NS_USER,
};
use crate::error::ApiError;
use crate::events::user_changed;
use crate::post_commit::{self, Audit};
use crate::state::{now_ms, AppState};
use protocol::{close, ErrorCode, UserId};
use router::Control;
use store::{AuditEntry, MetaOp};

fn policy(state: &AppState) -> PasswordPolicy {
    PasswordPolicy {
        min_len: state.config.auth.password_min_len,
        letters_and_digits: state.config.auth.password_letters_and_digits,
    }
}

fn audit(me: &UserId, action: &str, target: Option<&UserId>, detail: Option<String>) -> AuditEntry {
    let mut e = Audit::new(now_ms(), me, action);
    if let Some(t) = target {
        e = e.target(t.clone());
    }
    if let Some(d) = detail {
        e = e.detail(d);
    }
    e.build()
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

fn too_many_for_user() -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        "too many sign-in attempts for this user; wait a minute",
    )
}

/// `forbidden` for external users (company administrators are never refused).
async fn sees_directory(state: &AppState, me: &UserId) -> Result<(), ApiError> {
    if !state.is_company_admin(me) && state.is_external(me).await? {
        return Err(ApiError::forbidden(
            "external users do not see the directory",
        ));
    }
    Ok(())
}

/// A token minted for a user: the JWT and its expiry (seconds since the epoch).
#[derive(Debug, Clone)]
pub struct Minted {
    /// The JWT.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

fn mint(state: &AppState, user: &UserId, not_before: u64) -> Result<Minted, ApiError> {
    let (token, expires_at) = state
        .auth
        .mint_not_before(user, not_before)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Minted { token, expires_at })
}

/// Built-in sign-in from client address `addr`: limited per address and per user id; the
/// check costs the same for an unknown user id, so neither answer nor time tells which ids
/// exist.
pub async fn sign_in(
    state: &AppState,
    addr: Option<std::net::IpAddr>,
    user: &UserId,
    password: String,
) -> Result<Minted, ApiError> {
    if !user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    if password.len() > 1024 {
        // No stored password is longer (the policy), so nothing longer is worth hashing.
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "wrong user id or password",
        ));
    }
    state.signin.check_address(addr)?;
    if state.login_limiter.check_key(user).is_err() {
        return Err(too_many_for_user());
    }
    // One entry per user id tried: made-up ids must not grow the limiter without bound.
    if state.login_limiter.len() > 100_000 {
        state.login_limiter.retain_recent();
    }
    let refused = || ApiError::new(ErrorCode::Unauthorized, "wrong user id or password");
    // Read from the store, not through the account cache, so made-up ids do not fill it.
    let Some((AccountRecord { account, .. }, hash)) = password_of(&state.meta, user).await? else {
        // The same work as a real check.
        let _ = state.signin.hashing.verify(password, None).await?;
        return Err(refused());
    };
    if !state.signin.hashing.verify(password, Some(hash)).await? {
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
        .max(state.membership.revocations.not_before(user).await?);
    mint(state, user, not_before)
}

/// Revokes every token of `user` issued up to now, on every node: their sessions close with
/// 4001 and the tokens are refused (HTTP 401, and at the WebSocket upgrade). Returns the new
/// cut-off (seconds): a token minted for the user now must have an `iat` of at least this.
pub async fn revoke_all_tokens(state: &AppState, user: &UserId) -> Result<u64, ApiError> {
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
pub async fn revoke_token(state: &AppState, user: &UserId, token_id: &str) -> Result<(), ApiError> {
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

/// An account to register.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// User id.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Department id.
    pub department: Option<String>,
    /// Job title.
    pub title: Option<String>,
    /// Someone outside the company.
    pub external: bool,
    /// A password for built-in sign-in.
    pub password: Option<String>,
}

/// Registers an account (company administrators): it joins the company groups and its
/// department's groups. Crash-safe without undo (`directory::create_account`).
pub async fn create(state: &AppState, me: &UserId, req: NewAccount) -> Result<Account, ApiError> {
    state.require_company_admin(me)?;
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
        if !department_exists(state, d).await? {
            return Err(ApiError::not_found(format!("no department {d}")));
        }
    }
    let hash = match &req.password {
        Some(p) => {
            policy(state).check(p)?;
            Some(state.signin.hashing.hash(p.clone()).await?)
        }
        None => None,
    };
    let now = now_ms();
    let account = Account {
        id: req.id,
        name: req.name.trim().to_owned(),
        department: req.department,
        title: req.title,
        status: Status::Active,
        external: req.external,
        tokens_valid_after: 0,
        created_at: now,
        updated_at: now,
    };
    if !create_account(&state.meta, account.clone(), hash).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("id: user {} exists", account.id),
        ));
    }
    user_changed(state, &account.id).await;
    state.touch_user(&account.id).await?;
    crate::groups::follow_directory(state, &account, None).await?;
    state
        .audit(audit(me, "user.create", Some(&account.id), None))
        .await;
    Ok(account)
}

/// Directory search filters.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Part of the name or id (case-insensitive).
    pub q: Option<String>,
    /// Only this department.
    pub department: Option<String>,
    /// Include deactivated accounts (company administrators).
    pub include_deactivated: bool,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

/// Searches the directory by name and department (internal users).
pub async fn search(state: &AppState, me: &UserId, q: Search) -> Result<Vec<Account>, ApiError> {
    sees_directory(state, me).await?;
    let admin = state.is_company_admin(me);
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let needle = q.q.as_deref().map(str::to_lowercase);
    let all: Vec<(String, Account)> = scan_all(&state.meta, NS_USER, "").await?;
    Ok(all
        .into_iter()
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
        .collect())
}

/// One account (internal users, and anyone for their own).
pub async fn read(state: &AppState, me: &UserId, id: &str) -> Result<Account, ApiError> {
    if me.as_str() != id {
        sees_directory(state, me).await?;
    }
    let account = state
        .membership
        .account(&UserId::new(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    Ok(account.as_ref().clone())
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

/// Changes to an account; `None` leaves a field as it is, `""` removes a department or title.
#[derive(Debug, Clone, Default)]
pub struct AccountChange {
    /// Display name.
    pub name: Option<String>,
    /// Department id.
    pub department: Option<String>,
    /// Job title.
    pub title: Option<String>,
    /// External flag.
    pub external: Option<bool>,
}

/// Changes an account (company administrators). A new department moves the account between
/// department groups.
pub async fn update(
    state: &AppState,
    me: &UserId,
    id: &str,
    req: AccountChange,
) -> Result<Account, ApiError> {
    state.require_company_admin(me)?;
    let mut record = load(state, id).await?;
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
        if !d.is_empty() && !department_exists(state, &d).await? {
            return Err(ApiError::not_found(format!("no department {d}")));
        }
        account.department = (!d.is_empty()).then_some(d);
    }
    if let Some(x) = req.external {
        account.external = x;
    }
    account.updated_at = now_ms();
    save(state, &record).await?;
    let account = record.account;
    crate::groups::follow_directory(state, &account, old_department.as_deref()).await?;
    state
        .audit(audit(me, "user.update", Some(&account.id), None))
        .await;
    Ok(account)
}

/// Re-activates an account (company administrators); old tokens stay revoked, and a pending
/// erasure is cancelled.
pub async fn activate(state: &AppState, me: &UserId, id: &str) -> Result<Account, ApiError> {
    state.require_company_admin(me)?;
    let mut record = load(state, id).await?;
    record.account.status = Status::Active;
    record.account.updated_at = now_ms();
    save(state, &record).await?;
    let account = record.account;
    crate::leavers::reactivated(state, &account.id).await?;
    state
        .audit(audit(me, "user.activate", Some(&account.id), None))
        .await;
    Ok(account)
}

/// Sets a password: company administrators for anyone, users for themselves (with the
/// current password). Every token of the user issued before is revoked; users changing their
/// own password get a fresh token (`Some`), an administrator resetting someone else's gets
/// `None`.
pub async fn set_password(
    state: &AppState,
    me: &UserId,
    id: &str,
    password: String,
    current: Option<String>,
) -> Result<Option<Minted>, ApiError> {
    let admin = state.is_company_admin(me);
    if !admin && me.as_str() != id {
        return Err(ApiError::forbidden(
            "only company administrators set other users' passwords",
        ));
    }
    let record = load(state, id).await?;
    // The account's own password record (see `directory::AccountRecord`).
    let key = record.credential_key();
    let account = record.account;
    if !admin {
        // Guessing the current password costs sign-in attempts.
        if state.login_limiter.check_key(me).is_err() {
            return Err(too_many_for_user());
        }
        let stored: Option<String> = get_json(&state.meta, NS_CREDENTIAL, &key).await?;
        let ok = match (stored, current) {
            (Some(h), Some(c)) if c.len() <= 1024 => {
                state.signin.hashing.verify(c, Some(h)).await?
            }
            _ => false,
        };
        if !ok {
            return Err(ApiError::forbidden("current: wrong current password"));
        }
    }
    policy(state).check(&password)?;
    let hash = state.signin.hashing.hash(password).await?;
    state
        .meta
        .apply(vec![MetaOp::put(NS_CREDENTIAL, &key, to_json(&hash)?)])
        .await?;
    let not_before = revoke_all_tokens(state, &account.id).await?;
    state
        .audit(audit(me, "user.password", Some(&account.id), None))
        .await;
    if *me != account.id {
        return Ok(None);
    }
    Ok(Some(mint(
        state,
        me,
        not_before.max(account.tokens_valid_after),
    )?))
}

/// Creates a department (company administrators).
pub async fn create_department(
    state: &AppState,
    me: &UserId,
    d: Department,
) -> Result<Department, ApiError> {
    state.require_company_admin(me)?;
    if !valid_id(&d.id) {
        return Err(ApiError::bad_request(
            "id: 1 to 64 characters of letters, digits and _ . @ -",
        ));
    }
    check_name("name", &d.name)?;
    if let Some(p) = &d.parent {
        if !department_exists(state, p).await? {
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
        .audit(audit(me, "department.create", None, Some(d.id.clone())))
        .await;
    Ok(d)
}

/// The department tree, as a flat list with parents (internal users).
pub async fn departments(state: &AppState, me: &UserId) -> Result<Vec<Department>, ApiError> {
    sees_directory(state, me).await?;
    let all: Vec<(String, Department)> = scan_all(&state.meta, NS_DEPT, "").await?;
    Ok(all.into_iter().map(|(_, d)| d).collect())
}

/// Renames (`name`) or moves (`parent`; `""` makes it top-level) a department (company
/// administrators); a move that would make a cycle is refused.
pub async fn update_department(
    state: &AppState,
    me: &UserId,
    id: &str,
    name: Option<String>,
    parent: Option<String>,
) -> Result<Department, ApiError> {
    state.require_company_admin(me)?;
    let mut d: Department = get_json(&state.meta, NS_DEPT, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no department {id}")))?;
    if let Some(n) = name {
        check_name("name", &n)?;
        d.name = n.trim().to_owned();
    }
    if let Some(p) = parent {
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
        .apply(vec![MetaOp::put(NS_DEPT, id, to_json(&d)?)])
        .await?;
    state
        .audit(audit(me, "department.update", None, Some(id.to_owned())))
        .await;
    Ok(d)
}

/// Deletes an empty department (company administrators): `conflict` while accounts or
/// sub-departments are in it.
pub async fn delete_department(state: &AppState, me: &UserId, id: &str) -> Result<(), ApiError> {
    state.require_company_admin(me)?;
    if !department_exists(state, id).await? {
        return Err(ApiError::not_found(format!("no department {id}")));
    }
    let depts: Vec<(String, Department)> = scan_all(&state.meta, NS_DEPT, "").await?;
    if depts.iter().any(|(_, d)| d.parent.as_deref() == Some(id)) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the department has sub-departments",
        ));
    }
    let users: Vec<(String, Account)> = scan_all(&state.meta, NS_USER, "").await?;
    if users
        .iter()
        .any(|(_, a)| a.department.as_deref() == Some(id))
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the department still has accounts",
        ));
    }
    state.meta.apply(vec![MetaOp::delete(NS_DEPT, id)]).await?;
    state
        .audit(audit(me, "department.delete", None, Some(id.to_owned())))
        .await;
    Ok(())
}

/// Signs one of `me`'s sessions out (close 4001), on whichever node holds it, and revokes
/// the token it was opened with (found here or in the session descriptions of the other
/// nodes). An unknown session id is a no-op.
pub async fn sign_out_session(state: &AppState, me: &UserId, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::bad_request("id: not a session id"));
    }
    let local = state
        .hub
        .sessions_of(me)
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.token.id.to_string());
    let token_id = match local {
        Some(t) => Some(t),
        None => state
            .router
            .remote_sessions(me)
            .await?
            .iter()
            .filter_map(|b| serde_json::from_slice::<crate::hub::SessionDescription>(b).ok())
            .find(|d| d.id == id)
            .map(|d| d.token_id),
    };
    if let Some(token_id) = token_id.filter(|t| !t.is_empty()) {
        revoke_token(state, me, &token_id).await?;
    }
    let control = Control::Disconnect {
        code: close::SIGNED_OUT,
        reason: "signed out from another device".into(),
        session: Some(id.to_owned()),
    };
    post_commit::control(&*state.router, vec![me.clone()], control).await;
    Ok(())
}
