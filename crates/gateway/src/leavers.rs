//! Departing employees (离职员工): deactivation with a hand-over of the groups the leaver
//! owns, deactivation of users known only from their tokens, and the optional scheduled
//! erasure that anonymises an account some days after it was switched off.
//!
//! The order of a deactivation is written out in [`deactivate`]: check everything that can be
//! refused (the successor, owned groups without one) before anything is written, switch the
//! account off at once (sessions closed, tokens refused on every node), then hand each owned
//! group over in one atomic member write per group, then remember the leaver for the erasure
//! job. Every step is idempotent, so an administrator whose request failed half-way sends the
//! same request again.
//!
//! Erasure ([`spawn_scheduler`], `leavers.erase_after_days`) keeps the user id, so every
//! message stays readable and attributed, and removes what identifies the person: display name
//! (becomes "Former employee" and a short, stable id), department, title and password. A legal
//! hold stops it; the one question asked about holds is [`erasure_blocked_by_hold`].

use crate::clock::now_secs;
use crate::directory::{
    from_json, get_json, to_json, Account, AccountRecord, Status, NS_CREDENTIAL, NS_USER,
};
use crate::error::ApiError;
use crate::events::user_changed;
use crate::groups::{update_settings, GroupChange};
use crate::membership::GroupView;
use crate::post_commit::{self, Audit};
use crate::state::{now_ms, AppState};
use protocol::{close, ErrorCode, EventKind, GroupId, ServerFrame, UserId};
use router::Control;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use store::{Member, MetaOp, Role, Swap};

/// Namespace of leaver records (keyed by user id): when the account was switched off, so the
/// erasure job finds the accounts due without reading the whole directory.
pub const NS_LEAVER: &str = "leaver";

/// Accounts the erasure job anonymises per run at most; a backlog drains over several runs.
pub const ERASE_BATCH: usize = 100;

/// Leaver records read per page by the erasure job.
const SCAN_PAGE: usize = 200;

/// Owned groups named in the refusal of a deactivation without a successor.
const NAMED_GROUPS: usize = 10;

/// The display name prefix of an erased account.
pub const FORMER_EMPLOYEE: &str = "Former employee";

/// What the erasure job knows about a leaver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaverRecord {
    /// When the account was first deactivated, ms since the epoch (a repeated deactivation
    /// keeps it, so retrying a request never postpones the erasure).
    pub deactivated_at: u64,
    /// The administrator who deactivated it.
    pub by: UserId,
    /// Who took over the leaver's groups, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<UserId>,
    /// When the account was anonymised, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<u64>,
}

/// The answer to a deactivation: the account as it now is, and the groups handed over.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deactivated {
    /// The account (created, deactivated, for a user known only from tokens).
    #[serde(flatten)]
    pub account: Account,
    /// The groups the leaver owned, now owned by `successor`.
    pub transferred: Vec<GroupId>,
    /// Who took them over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<UserId>,
}

/// Deactivates `id` on behalf of company administrator `by`, handing every group the user
/// owns to `successor`. Refused, before anything is written, when the user owns groups and
/// no successor is named (409: a group must always have an owner who can act, and only the
/// administrator knows who that should be), or when the successor cannot take them (400,
/// 404). A user without a directory record (known only from tokens) gets one, deactivated.
pub async fn deactivate(
    state: &AppState,
    by: &UserId,
    id: &str,
    successor: Option<UserId>,
) -> Result<Deactivated, ApiError> {
    let user = UserId::new(id);
    if !user.is_valid() {
        return Err(ApiError::bad_request("id: not a user id"));
    }
    if *by == user {
        return Err(ApiError::bad_request("id: you cannot deactivate yourself"));
    }
    // 1. Everything that can be refused, before any write.
    if let Some(s) = &successor {
        check_successor(state, &user, s).await?;
    }
    let owned = owned_groups(state, &user).await?;
    if !owned.is_empty() && successor.is_none() {
        let mut names: Vec<String> = owned
            .iter()
            .take(NAMED_GROUPS)
            .map(|v| v.group.id.to_string())
            .collect();
        if owned.len() > NAMED_GROUPS {
            names.push("...".into());
        }
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "successor: {user} owns {} group(s) ({}); name a successor (an active, internal \
                 account) to hand them to",
                owned.len(),
                names.join(", ")
            ),
        ));
    }
    // 2. Switch the account off everywhere, at once.
    let (account, created) = switch_off(state, &user).await?;
    // 3. Hand the groups over, one atomic member write per group.
    let mut transferred = Vec::new();
    if let Some(s) = &successor {
        for view in &owned {
            if hand_over(state, by, &user, s, view).await? {
                transferred.push(view.group.id.clone());
            }
        }
    }
    // 4. Remember the leaver for the erasure job.
    remember(state, &user, by, successor.as_ref()).await?;
    let mut detail = Vec::new();
    if created {
        detail.push("no directory record: created deactivated".to_owned());
    }
    if let Some(s) = &successor {
        detail.push(format!(
            "successor {s}, {} group(s) handed over",
            transferred.len()
        ));
    }
    let mut entry = Audit::new(now_ms(), by, "user.deactivate").target(user.clone());
    if !detail.is_empty() {
        entry = entry.detail(detail.join("; "));
    }
    state.audit(entry.build()).await;
    Ok(Deactivated {
        account,
        transferred,
        successor,
    })
}

/// Whether `successor` may take over the groups of `leaver`: an active, internal account,
/// or a user known from tokens (seen by the server, or a company administrator).
async fn check_successor(
    state: &AppState,
    leaver: &UserId,
    successor: &UserId,
) -> Result<(), ApiError> {
    if !successor.is_valid() {
        return Err(ApiError::bad_request("successor: not a user id"));
    }
    if successor == leaver {
        return Err(ApiError::bad_request(
            "successor: the leaver cannot take over their own groups",
        ));
    }
    match state.membership.account(successor).await? {
        Some(a) if !a.is_active() => Err(ApiError::bad_request(format!(
            "successor: {successor} is deactivated"
        ))),
        Some(a) if a.external => Err(ApiError::bad_request(format!(
            "successor: {successor} is an external account; groups go to someone inside the company"
        ))),
        Some(_) => Ok(()),
        None if state.is_company_admin(successor) || state.user_exists(successor).await? => Ok(()),
        None => Err(ApiError::not_found(format!(
            "successor: no user {successor}"
        ))),
    }
}

/// The groups (not dissolved) that `user` owns.
pub async fn owned_groups(
    state: &AppState,
    user: &UserId,
) -> Result<Vec<Arc<GroupView>>, ApiError> {
    let mut out = Vec::new();
    for id in state.store.user_groups(user).await? {
        match state.group(&id).await {
            Ok(view) if view.role_of(user) == Some(Role::Owner) => out.push(view),
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Writes the account as deactivated (creating a record for a user known only from tokens)
/// with every token issued so far revoked, then closes the user's sessions on every node.
/// Returns the account and whether the record was created.
async fn switch_off(state: &AppState, user: &UserId) -> Result<(Account, bool), ApiError> {
    // Every token issued up to now (this second included) is refused, also after a later
    // re-activation.
    let cutoff = now_secs() + 1;
    let mut result = None;
    // Two rounds at most: a record created concurrently is found by the second read.
    for _ in 0..2 {
        let now = now_ms();
        // As `AccountRecord`, so the rewrite keeps the account's password binding.
        if let Some(mut record) =
            get_json::<AccountRecord>(&state.meta, NS_USER, user.as_str()).await?
        {
            let account = &mut record.account;
            account.status = Status::Deactivated;
            account.tokens_valid_after = cutoff;
            account.updated_at = now;
            state
                .meta
                .apply(vec![MetaOp::put(NS_USER, user.as_str(), to_json(&record)?)])
                .await?;
            result = Some((record.account, false));
            break;
        }
        let account = Account {
            id: user.clone(),
            name: user.to_string(),
            department: None,
            title: None,
            status: Status::Deactivated,
            external: false,
            tokens_valid_after: cutoff,
            created_at: now,
            updated_at: now,
        };
        if state
            .meta
            .insert_new(NS_USER, user.as_str(), to_json(&account)?)
            .await?
        {
            result = Some((account, true));
            break;
        }
    }
    let Some(result) = result else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the account is changing concurrently; try again",
        ));
    };
    user_changed(state, user).await;
    let control = Control::Disconnect {
        code: close::SIGNED_OUT,
        reason: "account deactivated".into(),
        session: None,
    };
    // Stored: the disconnect is best effort (a node that misses it refuses the account's
    // tokens anyway once it re-reads the account).
    post_commit::control(&*state.router, vec![user.clone()], control).await;
    Ok(result)
}

/// Makes `successor` the owner of the group and `leaver` a plain member, in one atomic
/// write; lifts a ban on the successor first. Audited and announced to the members. Returns
/// false when the leaver no longer owns the group (someone else transferred it meanwhile).
async fn hand_over(
    state: &AppState,
    by: &UserId,
    leaver: &UserId,
    successor: &UserId,
    view: &GroupView,
) -> Result<bool, ApiError> {
    let id = &view.group.id;
    if view.settings.banned.contains(successor) {
        update_settings(state, id, |s| {
            s.banned.remove(successor);
            Ok(())
        })
        .await?;
        GroupChange::new(id, by)
            .audit("group.unban", Some(successor))
            .commit(state)
            .await;
    }
    // The freshest view: the caller's may predate a concurrent change.
    let view = state.group(id).await?;
    if view.role_of(leaver) != Some(Role::Owner) {
        return Ok(false);
    }
    let was_member = view.role_of(successor).is_some();
    let now = now_ms();
    let members = vec![
        Member {
            user: successor.clone(),
            role: Role::Owner,
            joined_at: now,
        },
        Member {
            user: leaver.clone(),
            role: Role::Member,
            joined_at: now,
        },
    ];
    state.store.put_members(id, members).await?;
    let mut audience = view.members.as_ref().clone();
    if !was_member {
        audience.push(successor.clone());
    }
    let mut change = GroupChange::new(id, by).members_changed().audit_detail(
        "group.transfer",
        Some(successor),
        format!("from leaver {leaver}"),
    );
    if !was_member {
        change = change.event(
            audience.clone(),
            ServerFrame::event(EventKind::MemberJoined).user(successor.clone()),
        );
    }
    for (user, role) in [(successor, "owner"), (leaver, "member")] {
        change = change.event(
            audience.clone(),
            ServerFrame::event(EventKind::RoleChanged)
                .user(user.clone())
                .detail(role),
        );
    }
    change.commit(state).await;
    Ok(true)
}

/// Writes (or updates) the leaver record, keeping the first deactivation time.
async fn remember(
    state: &AppState,
    user: &UserId,
    by: &UserId,
    successor: Option<&UserId>,
) -> Result<(), ApiError> {
    let old: Option<LeaverRecord> = get_json(&state.meta, NS_LEAVER, user.as_str()).await?;
    let record = match old {
        Some(mut r) => {
            if let Some(s) = successor {
                r.successor = Some(s.clone());
            }
            r
        }
        None => LeaverRecord {
            deactivated_at: now_ms(),
            by: by.clone(),
            successor: successor.cloned(),
            erased_at: None,
        },
    };
    state
        .meta
        .apply(vec![MetaOp::put(
            NS_LEAVER,
            user.as_str(),
            to_json(&record)?,
        )])
        .await?;
    Ok(())
}

/// A re-activated account is no longer a leaver: its pending erasure is cancelled.
pub async fn reactivated(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    state
        .meta
        .apply(vec![MetaOp::delete(NS_LEAVER, user.as_str())])
        .await?;
    Ok(())
}

/// Whether a legal hold forbids erasing `user`'s account now (a hold on the user or on the
/// whole company; see [`crate::holds`]). An error makes the erasure job skip the account this
/// run: it never erases when unsure.
pub async fn erasure_blocked_by_hold(state: &AppState, user: &UserId) -> Result<bool, ApiError> {
    crate::holds::covers_user(state, user, now_ms()).await
}

/// The display name of an erased account: "Former employee" and the first six hex digits of
/// the SHA-256 of the user id (stable, so the same person reads the same everywhere).
pub fn former_name(user: &UserId) -> String {
    let digest = Sha256::digest(user.as_str().as_bytes());
    format!("{FORMER_EMPLOYEE} {}", &hex::encode(digest)[..6])
}

/// The length of a day for `leavers.erase_after_days`; test builds may shorten it with
/// `CHATD_TEST_DAY_MS` so an end-to-end test sees an erasure in seconds.
fn day_ms() -> u64 {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("CHATD_TEST_DAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return ms;
    }
    86_400_000
}

/// One run of the erasure job: anonymises up to [`ERASE_BATCH`] accounts whose
/// deactivation is older than `leavers.erase_after_days`; returns how many it erased.
pub async fn erase_due(state: &AppState) -> Result<usize, ApiError> {
    let days = state.config.leavers.erase_after_days;
    if days == 0 {
        return Ok(0);
    }
    let due_before = now_ms().saturating_sub(days.saturating_mul(day_ms()));
    let mut erased = 0;
    let mut pages = store::Pages::new(&*state.meta, NS_LEAVER, "", SCAN_PAGE);
    while let Some(page) = pages.next().await? {
        for (key, raw) in page {
            let record: LeaverRecord = match from_json(&raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(user = %key, error = %e.message, "unreadable leaver record");
                    continue;
                }
            };
            if record.erased_at.is_some() || record.deactivated_at > due_before {
                continue;
            }
            let user = UserId::new(&key);
            match erase(state, &user, raw, record).await {
                Ok(true) => {
                    erased += 1;
                    crate::metrics::leaver_erased();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(user = %user, error = %e.message, "erasure failed; retried next run")
                }
            }
            if erased >= ERASE_BATCH {
                return Ok(erased);
            }
        }
    }
    Ok(erased)
}

/// Anonymises one leaver's account unless it was re-activated or a legal hold applies.
/// Every write is conditional or repeatable: the account is swapped only if unchanged since
/// it was read (a concurrent re-activation wins), and only the node whose swap of the leaver
/// record lands writes the audit entry.
async fn erase(
    state: &AppState,
    user: &UserId,
    raw_record: Vec<u8>,
    record: LeaverRecord,
) -> Result<bool, ApiError> {
    let raw_account = state.meta.get(NS_USER, user.as_str()).await?;
    // The password record an account names (besides the one at the user id).
    let mut bound_credential = None;
    if let Some(raw) = &raw_account {
        let mut record: AccountRecord = from_json(raw)?;
        bound_credential = record.credential.is_some().then(|| record.credential_key());
        let account = &mut record.account;
        if account.is_active() {
            // Re-activated (and the record not yet removed): not a leaver any more.
            reactivated(state, user).await?;
            return Ok(false);
        }
        if erasure_blocked_by_hold(state, user).await? {
            tracing::debug!(user = %user, "erasure skipped: legal hold");
            return Ok(false);
        }
        account.name = former_name(user);
        account.department = None;
        account.title = None;
        account.updated_at = now_ms();
        let new = to_json(&record)?;
        if new != *raw {
            match state
                .meta
                .compare_and_swap(NS_USER, user.as_str(), raw_account.clone(), new)
                .await?
            {
                Swap::Done => {}
                // Changed meanwhile (re-activated, edited): looked at again next run.
                Swap::Current(_) => return Ok(false),
            }
        }
    } else if erasure_blocked_by_hold(state, user).await? {
        return Ok(false);
    }
    let mut deletes = vec![MetaOp::delete(NS_CREDENTIAL, user.as_str())];
    deletes.extend(bound_credential.map(|k| MetaOp::delete(NS_CREDENTIAL, &k)));
    state.meta.apply(deletes).await?;
    user_changed(state, user).await;
    let erased = LeaverRecord {
        erased_at: Some(now_ms()),
        ..record
    };
    match state
        .meta
        .compare_and_swap(
            NS_LEAVER,
            user.as_str(),
            Some(raw_record),
            to_json(&erased)?,
        )
        .await?
    {
        Swap::Done => {
            let system = UserId::new("system");
            let entry = Audit::new(now_ms(), &system, "user.erase")
                .target(user.clone())
                .detail("profile and credentials removed; messages kept")
                .build();
            state.audit(entry).await;
            tracing::info!(user = %user, "leaver erased");
            Ok(true)
        }
        // Another node erased it first, or it was re-activated meanwhile.
        Swap::Current(_) => Ok(false),
    }
}

/// Starts the erasure job (`leavers.erase_after_days` > 0): a run every
/// `leavers.erase_interval_secs`, the first one an interval after start, on every node (runs
/// on several nodes are safe: see [`erase_due`]).
pub fn spawn_scheduler(state: AppState) {
    if state.config.leavers.erase_after_days == 0 {
        return;
    }
    let period = Duration::from_secs(state.config.leavers.erase_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match erase_due(&state).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(erased = n, "erasure run"),
                    Err(e) => tracing::warn!(error = %e.message, "erasure run failed"),
                },
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn former_names_are_stable_and_short() {
        let a = former_name(&UserId::new("zhang.wei@corp.example"));
        assert_eq!(a, former_name(&UserId::new("zhang.wei@corp.example")));
        assert!(a.starts_with("Former employee "), "{a}");
        assert_eq!(a.len(), FORMER_EMPLOYEE.len() + 7);
        assert!(!a.contains("zhang"));
        assert_ne!(a, former_name(&UserId::new("li.na")));
    }

    #[test]
    fn leaver_records_read_back() {
        let r = LeaverRecord {
            deactivated_at: 5,
            by: UserId::new("boss"),
            successor: None,
            erased_at: None,
        };
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(json, r#"{"deactivated_at":5,"by":"boss"}"#);
        assert_eq!(serde_json::from_str::<LeaverRecord>(&json).ok(), Some(r));
    }
}
