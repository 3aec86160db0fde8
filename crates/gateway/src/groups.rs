//! Group records and the shape of a group change, below the HTTP edge: the records this module
//! owns (company and department group lists; names are in `membership.rs`, which checks
//! them), read-modify-write of a group's settings, [`GroupChange`] (what follows a stored
//! change), the announcement, and groups that follow the directory. The operations an
//! administrator calls are in `group_admin.rs`; their handlers in `api/groups.rs`.

use crate::directory::{from_json, to_json, Account};
use crate::error::ApiError;
use crate::events::changed;
pub use crate::membership::NS_GROUP_NAME;
use crate::membership::{GroupSettings, GroupView, NS_GROUP_SETTINGS};
use crate::post_commit::{self, Audit, FollowUps};
use crate::state::{now_ms, AppState};
use protocol::{ConvId, ErrorCode, EventBuilder, EventKind, GroupId, ServerFrame, UserId};
use store::{AuditEntry, Member, Role, Swap};
/// Namespace listing company-wide groups (keyed by group id), which every new internal
/// account joins.
pub const NS_COMPANY_GROUP: &str = "company_group";
/// Namespace listing department groups, keyed `department/group`.
pub const NS_DEPT_GROUP: &str = "dept_group";

/// An audit entry of a change to a group.
pub fn audit_entry(
    me: &UserId,
    action: &str,
    group: &GroupId,
    target: Option<&UserId>,
) -> AuditEntry {
    let e = Audit::new(now_ms(), me, action).conv(ConvId::group(group));
    match target {
        Some(t) => e.target(t.clone()),
        None => e,
    }
    .build()
}

/// What follows one stored change of a group, built beside the write and applied by
/// [`GroupChange::commit`] once the write is durable: cached copies dropped on every node
/// (when members changed; a settings change drops them itself), then the audit entries and
/// the `event` frames through [`post_commit`] (best effort: the change is stored, so the
/// request succeeds whatever happens here).
#[derive(Debug)]
#[must_use = "a group change does nothing until it is committed"]
pub struct GroupChange {
    group: GroupId,
    actor: UserId,
    view_changed: bool,
    follow: FollowUps,
}

impl GroupChange {
    /// A change of `group` by `actor`, with no follow-up yet.
    pub fn new(group: &GroupId, actor: &UserId) -> Self {
        GroupChange {
            group: group.clone(),
            actor: actor.clone(),
            view_changed: false,
            follow: FollowUps::default(),
        }
    }

    /// The members or their roles changed: cached views of the group are dropped everywhere.
    pub fn members_changed(self) -> Self {
        self.view_changed()
    }

    /// Something else the cached group view holds changed (the group's own moderation
    /// rules): cached views of the group are dropped everywhere.
    pub fn view_changed(mut self) -> Self {
        self.view_changed = true;
        self
    }

    /// An audit entry of `action` (about `target`, when not the actor).
    pub fn audit(self, action: &str, target: Option<&UserId>) -> Self {
        self.audit_with(action, target, |a| a)
    }

    /// An audit entry of `action` with a detail (a role, a mute's end, ...).
    pub fn audit_detail(self, action: &str, target: Option<&UserId>, detail: String) -> Self {
        self.audit_with(action, target, |a| a.detail(detail))
    }

    /// An audit entry of `action`, completed by `more` (a message, a detail).
    pub fn audit_with(
        mut self,
        action: &str,
        target: Option<&UserId>,
        more: impl FnOnce(Audit) -> Audit,
    ) -> Self {
        let mut entry = Audit::new(now_ms(), &self.actor, action).conv(ConvId::group(&self.group));
        if let Some(t) = target {
            entry = entry.target(t.clone());
        }
        self.follow.audit.push(more(entry).build());
        self
    }

    /// An `event` frame for `audience`; its conversation and actor are the group and the
    /// actor of this change.
    pub fn event(mut self, audience: Vec<UserId>, event: EventBuilder) -> Self {
        let frame = event
            .conv(ConvId::group(&self.group))
            .actor(self.actor.clone())
            .build();
        self.follow.events.push((audience, frame));
        self
    }

    /// Runs the follow-ups; call it right after the write that made the change durable.
    pub async fn commit(self, state: &AppState) {
        if self.view_changed {
            changed(state, &self.group).await;
        }
        post_commit::after_commit(&*state.review, &*state.router, self.follow).await;
    }
}

/// How many times [`update_settings`] re-reads and re-applies a change that lost a race with
/// another node before it gives up with a retryable `unavailable` error.
pub const SETTINGS_ATTEMPTS: u32 = 16;

/// Applies a change to a group's settings, durably, then drops cached copies everywhere.
/// Returns the settings after the change.
///
/// A read-modify-write with a version check: the write is a compare-and-swap against the
/// bytes read, so a concurrent change on another node is never overwritten; on a lost race
/// `change` is re-applied (hence `Fn`) to the value the swap answered with, at most
/// [`SETTINGS_ATTEMPTS`] times with a short random back-off. The per-process group lock
/// keeps this node's own updates from racing each other.
pub async fn update_settings(
    state: &AppState,
    id: &GroupId,
    change: impl Fn(&mut GroupSettings) -> Result<(), ApiError>,
) -> Result<GroupSettings, ApiError> {
    let _guard = state.membership.lock(id).await;
    let mut old = state.meta.get(NS_GROUP_SETTINGS, id.as_str()).await?;
    for attempt in 0..SETTINGS_ATTEMPTS {
        let mut settings: GroupSettings = match &old {
            Some(b) => from_json(b)?,
            None => GroupSettings::default(),
        };
        change(&mut settings)?;
        let new = to_json(&settings)?;
        match state
            .meta
            .compare_and_swap(NS_GROUP_SETTINGS, id.as_str(), old, new)
            .await?
        {
            Swap::Done => {
                changed(state, id).await;
                return Ok(settings);
            }
            // Another node changed them first: apply the change again to what it stored.
            Swap::Current(current) => old = current,
        }
        tracing::debug!(group = %id, attempt, "group settings changed concurrently; retrying");
        let backoff_ms = rand::random_range(1..=5u64 * u64::from(attempt + 1));
        tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
    }
    tracing::warn!(group = %id, "group settings update gave up after {SETTINGS_ATTEMPTS} races");
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the group's settings are changing concurrently; try again",
    ))
}

/// Applies an announcement and tells the members.
pub async fn publish_announcement(
    state: &AppState,
    me: &UserId,
    view: &GroupView,
    text: String,
) -> Result<GroupSettings, ApiError> {
    let id = &view.group.id;
    if !text.is_empty() {
        crate::policy::check_not_restricted(state, me).await?;
    }
    let settings = update_settings(state, id, |s| {
        s.announcement = (!text.is_empty()).then(|| text.clone());
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit("group.announcement", None)
        .event(
            view.members.as_ref().clone(),
            ServerFrame::event(EventKind::Announcement).detail(text),
        )
        .commit(state)
        .await;
    Ok(settings)
}

/// Adds a new or changed account to the groups the directory puts it in: every company
/// group (internal, active accounts) and its department's groups; removes it from the
/// department groups of a department it left.
pub async fn follow_directory(
    state: &AppState,
    account: &Account,
    old_department: Option<&str>,
) -> Result<(), ApiError> {
    let now = now_ms();
    let mut join: Vec<GroupId> = Vec::new();
    let mut leave: Vec<GroupId> = Vec::new();
    if account.is_active() && !account.external {
        for (gid, ()) in scan_unit(state, NS_COMPANY_GROUP, "").await? {
            join.push(GroupId::new(gid));
        }
    }
    if let Some(d) = account
        .department
        .as_deref()
        .filter(|_| account.is_active())
    {
        for (key, ()) in scan_unit(state, NS_DEPT_GROUP, &format!("{d}/")).await? {
            if let Some(gid) = key.split_once('/').map(|(_, g)| g) {
                join.push(GroupId::new(gid));
            }
        }
    }
    if let Some(old) = old_department.filter(|o| Some(*o) != account.department.as_deref()) {
        for (key, ()) in scan_unit(state, NS_DEPT_GROUP, &format!("{old}/")).await? {
            if let Some(gid) = key.split_once('/').map(|(_, g)| g) {
                leave.push(GroupId::new(gid));
            }
        }
    }
    let system = UserId::new("system");
    for gid in join {
        let Ok(view) = state.group(&gid).await else {
            continue;
        };
        if view.role_of(&account.id).is_some() {
            continue;
        }
        let member = Member {
            user: account.id.clone(),
            role: Role::Member,
            joined_at: now,
        };
        state.store.put_member(&gid, member).await?;
        let mut audience = view.members.as_ref().clone();
        audience.push(account.id.clone());
        GroupChange::new(&gid, &system)
            .members_changed()
            .event(
                audience,
                ServerFrame::event(EventKind::MemberJoined).user(account.id.clone()),
            )
            .commit(state)
            .await;
    }
    for gid in leave {
        let Ok(view) = state.group(&gid).await else {
            continue;
        };
        if view.role_of(&account.id).is_none_or(|r| r == Role::Owner) {
            continue;
        }
        state.store.remove_member(&gid, &account.id).await?;
        GroupChange::new(&gid, &system)
            .members_changed()
            .event(
                view.members.as_ref().clone(),
                ServerFrame::event(EventKind::MemberLeft).user(account.id.clone()),
            )
            .commit(state)
            .await;
    }
    Ok(())
}

/// The keys of a namespace whose values are empty.
async fn scan_unit(
    state: &AppState,
    ns: &str,
    prefix: &str,
) -> Result<Vec<(String, ())>, ApiError> {
    let mut out = Vec::new();
    let mut pages = store::Pages::new(&*state.meta, ns, prefix, 1000);
    while let Some(page) = pages.next().await? {
        out.extend(page.into_iter().map(|(k, _)| (k, ())));
    }
    Ok(out)
}
