//! What owners, admins and members do to a group, one function per operation: creation,
//! members and roles, ownership, mutes, bans, pins, the announcement, approval, archiving and
//! dissolving. The HTTP handlers in `api/groups.rs` only take the request apart and call one of
//! these with plain values.
//!
//! Every change reads the same way: [`authorize`] (the caller's role) -> the rules -> one
//! write (a settings change through [`update_settings`], a membership change through the
//! message store) -> [`GroupChange::commit`] (cache invalidation, audit entries and `event`
//! frames, best effort after the write). Nothing is undone by hand: a creation writes every
//! record keyed by the new group first and claims the name last, and the group exists only
//! from that claim on (see [`create`]).

use crate::directory::{scan_all, to_json, Account, NS_DEPT, NS_USER};
use crate::error::ApiError;
use crate::groups::{
    publish_announcement, update_settings, GroupChange, NS_COMPANY_GROUP, NS_DEPT_GROUP,
};
use crate::membership::{
    name_key, GroupSettings, GroupView, Lifecycle, NS_GROUP_NAME, NS_GROUP_SETTINGS,
};
use crate::posts::{Post, PostKind};
use crate::state::{now_ms, AppState};
use protocol::{ConvId, ErrorCode, EventKind, GroupId, Seq, ServerFrame, UserId};
use std::sync::Arc;
use store::{Group, GroupKind, Member, MetaOp, Role, Swap};

/// Most initial members of a new group (besides the creator).
pub const MAX_INITIAL_MEMBERS: usize = 5000;

/// How many times a creation re-tries to claim a name whose holder turned out not to exist.
const CLAIM_ATTEMPTS: usize = 4;

/// A group to create.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Display name, 1..=100 characters, unique (case-insensitive).
    pub name: String,
    /// The group's type.
    pub kind: GroupKind,
    /// Initial members besides the creator.
    pub members: Vec<UserId>,
    /// The department a department group follows.
    pub department: Option<String>,
    /// Posts need a reviewer's approval.
    pub approval_required: bool,
}

/// A group as it was created.
#[derive(Debug, Clone)]
pub struct Created {
    /// The group record.
    pub group: Group,
    /// Its members, the creator (owner) first.
    pub members: Vec<Member>,
    /// Its settings.
    pub settings: GroupSettings,
}

/// Test builds: fails the step `point` once when `CHATD_TEST_FAIL_ONCE` names it.
fn fault(point: &str) -> Result<(), ApiError> {
    #[cfg(feature = "test-hooks")]
    if crate::faults::fail_once(point) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("test hook: {point} failed"),
        ));
    }
    let _ = point;
    Ok(())
}

/// Creates a group owned by `me`.
///
/// Crash-safe without undo: the records keyed by the new id (settings, the company or
/// department list) are written first, then the group and its members in the message store,
/// and last the name record is made to name the new group (`compare_and_swap`): that claim
/// is the commit point. A group whose name does not name it does not exist for anyone
/// (`Membership::get`), so a creation that fails or crashes before the claim leaves only
/// invisible rows, and a retry with the same name succeeds. A name held by a group that does
/// not exist (or is dissolved) is taken over; one held by a live group is a conflict.
pub async fn create(state: &AppState, me: &UserId, req: NewGroup) -> Result<Created, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("name: must be 1 to 100 characters"));
    }
    let max_members = state.config.groups.max_members;
    if req.members.len() > MAX_INITIAL_MEMBERS.min(max_members.saturating_sub(1)) {
        return Err(ApiError::bad_request(format!(
            "members: at most {} initial members",
            MAX_INITIAL_MEMBERS.min(max_members.saturating_sub(1))
        )));
    }
    let creator_external = state.is_external(me).await?;
    let mut settings = GroupSettings {
        approval_required: req.approval_required,
        ..GroupSettings::default()
    };
    let mut wanted = req.members;
    match req.kind {
        GroupKind::Company => {
            state.require_company_admin(me)?;
            // Company-wide groups are for announcements: only the owner and admins post.
            settings.muted_all = true;
            wanted.extend(directory_members(state, None).await?);
        }
        GroupKind::Department => {
            state.require_company_admin(me)?;
            let Some(dept) = req.department.clone() else {
                return Err(ApiError::bad_request(
                    "department: a department group needs its department",
                ));
            };
            if state.meta.get(NS_DEPT, &dept).await?.is_none() {
                return Err(ApiError::not_found(format!("no department {dept}")));
            }
            wanted.extend(directory_members(state, Some(&dept)).await?);
            settings.department = Some(dept);
        }
        GroupKind::Project | GroupKind::Study | GroupKind::External => {
            if creator_external && req.kind != GroupKind::External {
                return Err(ApiError::forbidden(
                    "external users may only create external groups",
                ));
            }
        }
    }
    if req.department.is_some() && req.kind != GroupKind::Department {
        return Err(ApiError::bad_request(
            "department: only department groups follow a department",
        ));
    }
    let now = now_ms();
    let mut members = vec![Member {
        user: me.clone(),
        role: Role::Owner,
        joined_at: now,
    }];
    for user in wanted {
        if !user.is_valid() {
            return Err(ApiError::bad_request(format!(
                "members: {user:?} is not a user id"
            )));
        }
        if user == *me || members.iter().any(|m| m.user == user) {
            continue;
        }
        check_joinable(state, req.kind, &user).await?;
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
    let key = name_key(name);
    // A name a live group holds is refused before anything is written.
    let holder = state.meta.get(NS_GROUP_NAME, &key).await?;
    if name_is_live(state, holder.as_deref()).await? {
        return Err(name_taken(name));
    }
    let mut records = vec![MetaOp::put(
        NS_GROUP_SETTINGS,
        group.id.as_str(),
        to_json(&settings)?,
    )];
    match (&group.kind, &settings.department) {
        (GroupKind::Company, _) => {
            records.push(MetaOp::put(NS_COMPANY_GROUP, group.id.as_str(), vec![]))
        }
        (GroupKind::Department, Some(d)) => records.push(MetaOp::put(
            NS_DEPT_GROUP,
            &format!("{d}/{}", group.id),
            vec![],
        )),
        _ => {}
    }
    state.meta.apply(records).await?;
    state
        .store
        .create_group(group.clone(), members.clone())
        .await?;
    fault("group.create")?;
    claim_name(state, name, &key, holder, &group.id).await?;
    let joined: Vec<UserId> = members.iter().map(|m| m.user.clone()).collect();
    GroupChange::new(&group.id, me)
        .audit_detail(
            "group.create",
            None,
            format!("{:?} {name}", group.kind).to_lowercase(),
        )
        .event(joined, ServerFrame::event(EventKind::MemberJoined))
        .commit(state)
        .await;
    Ok(Created {
        group,
        members,
        settings,
    })
}

fn name_taken(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("name: a group named {name:?} exists"),
    )
}

/// Whether a name record's value names a group that exists and is not dissolved.
async fn name_is_live(state: &AppState, holder: Option<&[u8]>) -> Result<bool, ApiError> {
    let Some(id) = holder.and_then(|h| std::str::from_utf8(h).ok()) else {
        return Ok(false);
    };
    Ok(state
        .membership
        .get(&GroupId::new(id))
        .await?
        .is_some_and(|v| v.settings.lifecycle != Lifecycle::Dissolved))
}

/// The commit point of a creation: makes the name record name `id`, replacing `seen` (what
/// was read before) or any later holder that is not a live group.
async fn claim_name(
    state: &AppState,
    name: &str,
    key: &str,
    seen: Option<Vec<u8>>,
    id: &GroupId,
) -> Result<(), ApiError> {
    let mut expected = seen;
    for _ in 0..CLAIM_ATTEMPTS {
        let new = id.as_str().as_bytes().to_vec();
        match state
            .meta
            .compare_and_swap(NS_GROUP_NAME, key, expected, new)
            .await?
        {
            Swap::Done => return Ok(()),
            Swap::Current(current) => {
                if name_is_live(state, current.as_deref()).await? {
                    // Another creation won the name: this group's rows stay invisible.
                    return Err(name_taken(name));
                }
                expected = current;
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "the group name is being claimed concurrently; try again",
    ))
}

/// The active internal accounts of the directory, optionally of one department.
async fn directory_members(
    state: &AppState,
    department: Option<&str>,
) -> Result<Vec<UserId>, ApiError> {
    let all: Vec<(String, Account)> = scan_all(&state.meta, NS_USER, "").await?;
    Ok(all
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| a.is_active() && !a.external)
        .filter(|a| department.is_none_or(|d| a.department.as_deref() == Some(d)))
        .map(|a| a.id)
        .collect())
}

/// Refuses users who may not join a group of this kind: unknown, deactivated, or external
/// users outside external groups.
async fn check_joinable(state: &AppState, kind: GroupKind, user: &UserId) -> Result<(), ApiError> {
    if !state.user_exists(user).await? && state.membership.account(user).await?.is_none() {
        return Err(ApiError::not_found(format!("no user {user}")));
    }
    if let Some(a) = state.membership.account(user).await? {
        if !a.is_active() {
            return Err(ApiError::forbidden(format!("{user} is deactivated")));
        }
        if a.external && kind != GroupKind::External {
            return Err(ApiError::forbidden(format!(
                "{user} is external: external users may only join external groups"
            )));
        }
    }
    Ok(())
}

/// The caller's groups with their role in each.
pub async fn mine(state: &AppState, me: &UserId) -> Result<Vec<(Group, Role)>, ApiError> {
    let mut rows = Vec::new();
    for id in state.store.user_groups(me).await? {
        if let Ok(view) = state.group(&id).await {
            if let Some(role) = view.role_of(me) {
                rows.push((view.group.clone(), role));
            }
        }
    }
    Ok(rows)
}

/// A group with its members and settings, for its members and company administrators.
pub async fn read(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
) -> Result<(Group, Vec<Member>, GroupSettings), ApiError> {
    let view = state.group(id).await?;
    if view.role_of(me).is_none() && !state.is_company_admin(me) {
        return Err(ApiError::forbidden("only members may read a group"));
    }
    let members = state.store.members(id).await?;
    Ok((view.group.clone(), members, view.settings.clone()))
}

/// The group and the caller's role, or `forbidden` unless they are at least `min`.
/// Company administrators count as owners of every group.
pub async fn authorize(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    min: Role,
    what: &str,
) -> Result<(Arc<GroupView>, Role), ApiError> {
    let view = state.group(id).await?;
    let role = match view.role_of(me) {
        _ if state.is_company_admin(me) => Role::Owner,
        Some(r) => r,
        None => return Err(ApiError::forbidden("only members may change a group")),
    };
    if role < min {
        let who = if min == Role::Owner {
            "the owner"
        } else {
            "the owner and admins"
        };
        return Err(ApiError::forbidden(format!("only {who} may {what}")));
    }
    Ok((view, role))
}

/// `forbidden` when the group is archived (read-only).
fn writable(view: &GroupView) -> Result<(), ApiError> {
    if view.settings.lifecycle == Lifecycle::Archived {
        return Err(ApiError::forbidden("the group is archived (read-only)"));
    }
    Ok(())
}

/// The members a change is announced to (those before the change).
fn audience(view: &GroupView) -> Vec<UserId> {
    view.members.as_ref().clone()
}

/// Adds a member as `role` (default `member`; only the owner adds admins). Re-adding a
/// banned user lifts the ban.
pub async fn add_member(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
    role: Option<Role>,
) -> Result<Member, ApiError> {
    let (view, my_role) = authorize(state, me, id, Role::Admin, "add members").await?;
    writable(&view)?;
    let role = role.unwrap_or(Role::Member);
    if role == Role::Owner {
        return Err(ApiError::bad_request(
            "role: a group has one owner; transfer ownership instead",
        ));
    }
    if role == Role::Admin && my_role != Role::Owner {
        return Err(ApiError::forbidden("only the owner may appoint admins"));
    }
    if !user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    check_joinable(state, view.group.kind, user).await?;
    let directory_group = matches!(view.group.kind, GroupKind::Company | GroupKind::Department);
    let max_members = state.config.groups.max_members;
    if view.role_of(user).is_none() && !directory_group && view.members.len() >= max_members {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("the group is full: at most {max_members} members (groups.max_members)"),
        ));
    }
    if view.role_of(user) == Some(Role::Owner) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "that user owns the group",
        ));
    }
    if view.settings.banned.contains(user) {
        // The ban is lifted first, as a change of its own: a crash after it leaves the user
        // unbanned and not yet added, which the retry completes (never a banned member).
        update_settings(state, id, |s| {
            s.banned.remove(user);
            Ok(())
        })
        .await?;
        GroupChange::new(id, me)
            .audit("group.unban", Some(user))
            .commit(state)
            .await;
    }
    let was_member = view.role_of(user).is_some();
    let member = Member {
        user: user.clone(),
        role,
        joined_at: now_ms(),
    };
    state.store.put_member(id, member.clone()).await?;
    let mut change = GroupChange::new(id, me)
        .members_changed()
        .audit("group.add_member", Some(user));
    if !was_member {
        let mut joined = audience(&view);
        joined.push(user.clone());
        change = change.event(
            joined,
            ServerFrame::event(EventKind::MemberJoined).user(user.clone()),
        );
    }
    change.commit(state).await;
    Ok(member)
}

/// Removes `user` (a kick), or the caller leaves when `user` is the caller. Admins remove
/// members; the owner removes anyone but themselves.
pub async fn remove_member(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
) -> Result<(), ApiError> {
    let (view, my_role) = authorize(state, me, id, Role::Member, "leave").await?;
    kick(state, me, &view, my_role, user, "removed").await?;
    Ok(())
}

/// Removes `user` from the group on behalf of `me` (whose role is `my_role`); `how` is the
/// event's detail when it is not the user leaving. Returns whether they were a member.
async fn kick(
    state: &AppState,
    me: &UserId,
    view: &GroupView,
    my_role: Role,
    user: &UserId,
    how: &str,
) -> Result<bool, ApiError> {
    let id = &view.group.id;
    let Some(their_role) = view.role_of(user) else {
        return Ok(false);
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
    state.store.remove_member(id, user).await?;
    let (action, detail) = if leaving {
        ("group.leave", "left")
    } else {
        ("group.remove_member", how)
    };
    GroupChange::new(id, me)
        .members_changed()
        .audit(action, Some(user))
        .event(
            audience(view),
            ServerFrame::event(EventKind::MemberLeft)
                .user(user.clone())
                .detail(detail),
        )
        .commit(state)
        .await;
    Ok(true)
}

/// The name of a role in audit entries and events.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// Appoints or demotes an admin (the owner).
pub async fn set_role(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
    role: Role,
) -> Result<Member, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Owner, "change roles").await?;
    if role == Role::Owner {
        return Err(ApiError::bad_request(
            "role: use POST /v1/groups/{id}/transfer to change the owner",
        ));
    }
    match view.role_of(user) {
        None => return Err(ApiError::not_found(format!("{user} is not a member"))),
        Some(Role::Owner) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the owner's role changes only by a transfer",
            ))
        }
        Some(_) => {}
    }
    let member = Member {
        user: user.clone(),
        role,
        joined_at: now_ms(),
    };
    state.store.put_member(id, member.clone()).await?;
    GroupChange::new(id, me)
        .members_changed()
        .audit_detail("group.set_role", Some(user), role_name(role).into())
        .event(
            audience(&view),
            ServerFrame::event(EventKind::RoleChanged)
                .user(user.clone())
                .detail(role_name(role)),
        )
        .commit(state)
        .await;
    Ok(member)
}

/// Hands the group to another member (the owner); the old owner becomes an admin.
pub async fn transfer(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    to: &UserId,
) -> Result<(), ApiError> {
    let (view, _) = authorize(state, me, id, Role::Owner, "transfer ownership").await?;
    let Some(owner) = view
        .roles
        .iter()
        .find(|(_, r)| **r == Role::Owner)
        .map(|(u, _)| u.clone())
    else {
        return Err(ApiError::new(ErrorCode::Internal, "the group has no owner"));
    };
    if *to == owner {
        return Err(ApiError::bad_request("user: already the owner"));
    }
    if view.role_of(to).is_none() {
        return Err(ApiError::not_found(format!("{to} is not a member")));
    }
    let now = now_ms();
    // Promotion and demotion in one atomic write: never two owners, never none.
    let promote = Member {
        user: to.clone(),
        role: Role::Owner,
        joined_at: now,
    };
    let demote = Member {
        user: owner.clone(),
        role: Role::Admin,
        joined_at: now,
    };
    state.store.put_members(id, vec![promote, demote]).await?;
    let mut change = GroupChange::new(id, me)
        .members_changed()
        .audit("group.transfer", Some(to));
    for (user, role) in [(to.clone(), "owner"), (owner, "admin")] {
        change = change.event(
            audience(&view),
            ServerFrame::event(EventKind::RoleChanged)
                .user(user)
                .detail(role),
        );
    }
    change.commit(state).await;
    Ok(())
}

/// Mutes a member for `duration_secs` (owner and admins; admins mute only members).
/// Returns the end of the mute (ms since the epoch).
pub async fn mute_member(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
    duration_secs: u64,
) -> Result<u64, ApiError> {
    let (view, my_role) = authorize(state, me, id, Role::Admin, "mute members").await?;
    let max = state.config.groups.max_mute_secs;
    if duration_secs == 0 || duration_secs > max {
        return Err(ApiError::bad_request(format!(
            "duration_secs: must be 1 to {max}"
        )));
    }
    let Some(their_role) = view.role_of(user) else {
        return Err(ApiError::not_found(format!("{user} is not a member")));
    };
    if their_role >= my_role {
        return Err(ApiError::forbidden(
            "you may mute only members below your role",
        ));
    }
    let until = now_ms() + duration_secs * 1000;
    update_settings(state, id, |s| {
        s.mutes.insert(user.clone(), until);
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit_detail("group.mute", Some(user), format!("until {until}"))
        .event(
            audience(&view),
            ServerFrame::event(EventKind::Muted)
                .user(user.clone())
                .until(until),
        )
        .commit(state)
        .await;
    Ok(until)
}

/// Lifts a member's mute (owner and admins).
pub async fn unmute_member(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
) -> Result<(), ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "unmute members").await?;
    if !view.settings.mutes.contains_key(user) {
        return Err(ApiError::not_found(format!("{user} is not muted")));
    }
    update_settings(state, id, |s| {
        s.mutes.remove(user);
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit("group.unmute", Some(user))
        .event(
            audience(&view),
            ServerFrame::event(EventKind::Unmuted).user(user.clone()),
        )
        .commit(state)
        .await;
    Ok(())
}

/// Mutes or unmutes the whole group: the owner and admins still post (owner and admins).
pub async fn mute_all(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    muted: bool,
) -> Result<GroupSettings, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "mute the group").await?;
    let settings = update_settings(state, id, |s| {
        s.muted_all = muted;
        Ok(())
    })
    .await?;
    let (action, event) = if muted {
        ("group.mute_all", EventKind::Muted)
    } else {
        ("group.unmute_all", EventKind::Unmuted)
    };
    GroupChange::new(id, me)
        .audit(action, None)
        .event(audience(&view), ServerFrame::event(event).detail("all"))
        .commit(state)
        .await;
    Ok(settings)
}

/// Removes a user and keeps them out: only the owner or an admin can add them again (owner
/// and admins; admins ban only members).
pub async fn ban(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
) -> Result<(), ApiError> {
    let (view, my_role) = authorize(state, me, id, Role::Admin, "ban users").await?;
    if !user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    if user == me {
        return Err(ApiError::bad_request("user: you cannot ban yourself"));
    }
    if view.role_of(user).is_some_and(|r| r >= my_role) {
        return Err(ApiError::forbidden(
            "you may ban only members below your role",
        ));
    }
    // The ban goes first: a crash before the removal leaves a banned member whom the retry
    // removes (never a removed user who may come back).
    update_settings(state, id, |s| {
        s.banned.insert(user.clone());
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit("group.ban", Some(user))
        .commit(state)
        .await;
    kick(state, me, &view, my_role, user, "banned").await?;
    Ok(())
}

/// Lifts a ban (owner and admins).
pub async fn unban(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    user: &UserId,
) -> Result<(), ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "lift bans").await?;
    if !view.settings.banned.contains(user) {
        return Err(ApiError::not_found(format!("{user} is not banned")));
    }
    update_settings(state, id, |s| {
        s.banned.remove(user);
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit("group.unban", Some(user))
        .commit(state)
        .await;
    Ok(())
}

/// Pins message `seq` (owner and admins), at most `groups.max_pins` at once.
pub async fn pin(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    seq: u64,
) -> Result<GroupSettings, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "pin messages").await?;
    let conv = ConvId::group(id);
    let last = state.store.last_seq(&conv).await?;
    if seq == 0 || seq > last.0 {
        return Err(ApiError::not_found(format!("no message {seq} in {conv}")));
    }
    let max = state.config.groups.max_pins;
    let settings = update_settings(state, id, |s| {
        if !s.pinned.contains(&Seq(seq)) {
            if s.pinned.len() >= max {
                return Err(ApiError::bad_request(format!(
                    "seq: at most {max} pinned messages; unpin one first"
                )));
            }
            s.pinned.push(Seq(seq));
        }
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit_with("group.pin", None, |a| a.message(seq.to_string()))
        .event(
            audience(&view),
            ServerFrame::event(EventKind::Pinned).seq(Seq(seq)),
        )
        .commit(state)
        .await;
    Ok(settings)
}

/// Unpins message `seq` (owner and admins).
pub async fn unpin(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    seq: u64,
) -> Result<GroupSettings, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "unpin messages").await?;
    if !view.settings.pinned.contains(&Seq(seq)) {
        return Err(ApiError::not_found(format!("message {seq} is not pinned")));
    }
    let settings = update_settings(state, id, |s| {
        s.pinned.retain(|p| *p != Seq(seq));
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit_with("group.unpin", None, |a| a.message(seq.to_string()))
        .event(
            audience(&view),
            ServerFrame::event(EventKind::Pinned)
                .seq(Seq(seq))
                .detail("unpinned"),
        )
        .commit(state)
        .await;
    Ok(settings)
}

/// What became of an announcement.
#[derive(Debug)]
pub enum Announced {
    /// Applied and announced; the settings now.
    Published(GroupSettings),
    /// Waiting for a reviewer (company and department groups, approval-only groups).
    Pending(Post),
}

/// Sets the group announcement (owner and admins; empty clears it). In company and
/// department groups and approval-only groups it becomes a pending post for a reviewer.
pub async fn set_announcement(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    text: &str,
) -> Result<Announced, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Admin, "set the announcement").await?;
    writable(&view)?;
    let text = text.trim().to_owned();
    let max = state.config.groups.max_announcement_chars;
    if text.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "text: at most {max} characters"
        )));
    }
    let verdict = crate::policy::ModerationScope::of_group(state, &view)
        .await?
        .check(state, &text);
    if verdict.action == moderation::Action::Block {
        return Err(ApiError::new(
            ErrorCode::Blocked,
            "announcement blocked by the moderation filter",
        ));
    }
    let needs_approval = matches!(view.group.kind, GroupKind::Company | GroupKind::Department)
        || view.settings.approval_required;
    if needs_approval {
        crate::policy::check_not_restricted(state, me).await?;
        let post = crate::posts::submit(state, me, id, PostKind::Announcement, text, None).await?;
        return Ok(Announced::Pending(post));
    }
    Ok(Announced::Published(
        publish_announcement(state, me, &view, text).await?,
    ))
}

/// Makes the group an announcement channel (posts need approval) or not (the owner).
pub async fn set_approval(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
    required: bool,
) -> Result<GroupSettings, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Owner, "change approval").await?;
    let settings = update_settings(state, id, |s| {
        s.approval_required = required;
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit_detail("group.approval", None, required.to_string())
        .event(
            audience(&view),
            ServerFrame::event(EventKind::GroupChanged)
                .detail(format!("approval_required={required}")),
        )
        .commit(state)
        .await;
    Ok(settings)
}

/// Archives a project group: read-only from now on (the owner).
pub async fn archive(
    state: &AppState,
    me: &UserId,
    id: &GroupId,
) -> Result<GroupSettings, ApiError> {
    let (view, _) = authorize(state, me, id, Role::Owner, "archive the group").await?;
    if view.group.kind != GroupKind::Project {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "only project groups are archived",
        ));
    }
    let settings = update_settings(state, id, |s| {
        if s.lifecycle != Lifecycle::Active {
            return Err(ApiError::new(ErrorCode::Conflict, "already archived"));
        }
        s.lifecycle = Lifecycle::Archived;
        Ok(())
    })
    .await?;
    GroupChange::new(id, me)
        .audit("group.archive", None)
        .event(audience(&view), ServerFrame::event(EventKind::Archived))
        .commit(state)
        .await;
    Ok(settings)
}

/// Dissolves an archived project group: every member is removed and the name is freed (the
/// owner).
///
/// The mark comes first: once the settings say dissolved the group is gone for every
/// request, and the removals and the name's release that follow are repeatable. If they are
/// interrupted, the name stays taken only until a creation finds its holder dissolved and
/// takes it over (see [`create`]).
pub async fn dissolve(state: &AppState, me: &UserId, id: &GroupId) -> Result<(), ApiError> {
    let (view, _) = authorize(state, me, id, Role::Owner, "dissolve the group").await?;
    if view.settings.lifecycle != Lifecycle::Archived {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "archive the group before dissolving it",
        ));
    }
    update_settings(state, id, |s| {
        s.lifecycle = Lifecycle::Dissolved;
        Ok(())
    })
    .await?;
    for user in view.members.iter() {
        state.store.remove_member(id, user).await?;
    }
    // Only while the name still names this group: never frees another group's name.
    let key = name_key(&view.group.name);
    let mine = id.as_str().as_bytes().to_vec();
    state
        .meta
        .compare_and_delete(NS_GROUP_NAME, &key, mine)
        .await?;
    GroupChange::new(id, me)
        .members_changed()
        .audit("group.dissolve", None)
        .event(audience(&view), ServerFrame::event(EventKind::Dissolved))
        .commit(state)
        .await;
    Ok(())
}
