//! Groups over HTTP: creation by type, members and roles, ownership, mutes, bans, pins, the
//! announcement, archiving and dissolving. Every change is authorized by the caller's role,
//! written durably before it is announced, recorded in the audit log, and announced to the
//! members as an `event`.

use super::{changed, group_event, notify, publish, ApiJson, Caller};
use crate::directory::{scan_all, to_json, Account, NS_USER};
use crate::error::{ApiError, ErrorBody};
use crate::groups::{
    audit_entry, publish_announcement, update_settings, NS_COMPANY_GROUP, NS_DEPT_GROUP,
    NS_GROUP_NAME,
};
use crate::membership::{GroupSettings, GroupView, Lifecycle, NS_GROUP_SETTINGS};
use crate::state::{now_ms, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ConvId, ErrorCode, EventKind, GroupId, Seq, ServerFrame, UserId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use store::{Group, GroupKind, Member, MetaOp, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_group, my_groups))
        .routes(routes!(get_group))
        .routes(routes!(add_member))
        .routes(routes!(remove_member))
        .routes(routes!(set_role))
        .routes(routes!(transfer))
        .routes(routes!(mute_member))
        .routes(routes!(unmute_member))
        .routes(routes!(mute_all))
        .routes(routes!(ban))
        .routes(routes!(unban))
        .routes(routes!(pin, unpin))
        .routes(routes!(set_announcement))
        .routes(routes!(set_approval))
        .routes(routes!(archive))
        .routes(routes!(dissolve))
}

const E401: &str = "No valid token";

/// `POST /v1/groups` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Display name, 1..=100 characters, unique (case-insensitive).
    name: String,
    /// Group type (default `project`). `company` and `department` groups are created by
    /// company administrators and follow the directory.
    #[serde(default)]
    kind: GroupKind,
    /// Initial members besides the creator.
    #[serde(default)]
    members: Vec<UserId>,
    /// The department a `department` group follows.
    #[serde(default)]
    department: Option<String>,
    /// Posts need a reviewer's approval (an announcement channel). Default: no.
    #[serde(default)]
    approval_required: bool,
}

/// A group with its members and settings, as the API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupDetail {
    #[serde(flatten)]
    group: Group,
    members: Vec<Member>,
    settings: GroupSettings,
}

/// A row of `GET /v1/groups`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupRow {
    #[serde(flatten)]
    group: Group,
    role: Role,
}

const MAX_INITIAL_MEMBERS: usize = 5000;

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

/// Creates a group: the caller becomes its owner.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = CreateGroup, security(("bearer" = [])),
    responses((status = 201, body = GroupDetail), (status = 400, body = ErrorBody),
        (status = 401, description = E401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "A member or the department does not exist", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<Response, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("name: must be 1 to 100 characters"));
    }
    if req.members.len() > MAX_INITIAL_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "members: at most {MAX_INITIAL_MEMBERS} initial members"
        )));
    }
    let creator_external = state.is_external(&me).await?;
    let mut settings = GroupSettings {
        approval_required: req.approval_required,
        ..GroupSettings::default()
    };
    let mut wanted = req.members;
    match req.kind {
        GroupKind::Company => {
            state.require_company_admin(&me)?;
            // Company-wide groups are for announcements: only the owner and admins post.
            settings.muted_all = true;
            wanted.extend(directory_members(&state, None).await?);
        }
        GroupKind::Department => {
            state.require_company_admin(&me)?;
            let Some(dept) = req.department.clone() else {
                return Err(ApiError::bad_request(
                    "department: a department group needs its department",
                ));
            };
            if state
                .meta
                .get(crate::directory::NS_DEPT, &dept)
                .await?
                .is_none()
            {
                return Err(ApiError::not_found(format!("no department {dept}")));
            }
            wanted.extend(directory_members(&state, Some(&dept)).await?);
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
        if user == me || members.iter().any(|m| m.user == user) {
            continue;
        }
        check_joinable(&state, req.kind, &user).await?;
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
    let name_key = name.to_lowercase();
    if !state
        .meta
        .insert_new(
            NS_GROUP_NAME,
            &name_key,
            group.id.as_str().as_bytes().to_vec(),
        )
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("name: a group named {name:?} exists"),
        ));
    }
    let mut ops = vec![MetaOp::put(
        NS_GROUP_SETTINGS,
        group.id.as_str(),
        to_json(&settings)?,
    )];
    match (&group.kind, &settings.department) {
        (GroupKind::Company, _) => {
            ops.push(MetaOp::put(NS_COMPANY_GROUP, group.id.as_str(), vec![]))
        }
        (GroupKind::Department, Some(d)) => ops.push(MetaOp::put(
            NS_DEPT_GROUP,
            &format!("{d}/{}", group.id),
            vec![],
        )),
        _ => {}
    }
    // Settings first (an orphan settings record is harmless), then the group; undo the name
    // reservation when either fails, so nothing is half-applied.
    let created = async {
        state.meta.apply(ops).await?;
        state
            .store
            .create_group(group.clone(), members.clone())
            .await?;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(e) = created {
        let _ = state
            .meta
            .apply(vec![MetaOp::delete(NS_GROUP_NAME, &name_key)])
            .await;
        return Err(e);
    }
    let mut entry = audit_entry(&me, "group.create", &group.id, None);
    entry.detail = Some(format!("{:?} {name}", group.kind).to_lowercase());
    state.audit(entry).await;
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
    Ok((
        StatusCode::CREATED,
        Json(GroupDetail {
            group,
            members,
            settings,
        }),
    )
        .into_response())
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
#[utoipa::path(get, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    responses((status = 200, body = [GroupRow]), (status = 401, description = E401, body = ErrorBody)))]
async fn my_groups(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<GroupRow>>, ApiError> {
    let mut rows = Vec::new();
    for id in state.store.user_groups(&me).await? {
        if let Ok(view) = state.group(&id).await {
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

/// One group with its members and settings (members, and company administrators).
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupDetail), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<GroupDetail>, ApiError> {
    let id = GroupId::new(id);
    let view = state.group(&id).await?;
    if view.role_of(&me).is_none() && !state.is_company_admin(&me) {
        return Err(ApiError::forbidden("only members may read a group"));
    }
    let members = state.store.members(&id).await?;
    Ok(Json(GroupDetail {
        group: view.group.clone(),
        members,
        settings: view.settings.clone(),
    }))
}

/// The group and the caller's role, or `forbidden` unless they are at least `min`.
/// Company administrators count as owners of every group.
pub(super) async fn authorize(
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

/// `POST /v1/groups/{id}/members` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user to add.
    user: UserId,
    /// Their role (default `member`; only the owner may add admins).
    #[serde(default)]
    role: Option<Role>,
}

/// Adds a member (owner and admins; re-adding a banned user lifts the ban).
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups", request_body = AddMember, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = Member), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<Json<Member>, ApiError> {
    let id = GroupId::new(id);
    let (view, my_role) = authorize(&state, &me, &id, Role::Admin, "add members").await?;
    writable(&view)?;
    let role = req.role.unwrap_or(Role::Member);
    if role == Role::Owner {
        return Err(ApiError::bad_request(
            "role: a group has one owner; transfer ownership instead",
        ));
    }
    if role == Role::Admin && my_role != Role::Owner {
        return Err(ApiError::forbidden("only the owner may appoint admins"));
    }
    if !req.user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    check_joinable(&state, view.group.kind, &req.user).await?;
    if view.role_of(&req.user) == Some(Role::Owner) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "that user owns the group",
        ));
    }
    if view.settings.banned.contains(&req.user) {
        let user = req.user.clone();
        update_settings(&state, &id, move |s| {
            s.banned.remove(&user);
            Ok(())
        })
        .await?;
        state
            .audit(audit_entry(&me, "group.unban", &id, Some(&req.user)))
            .await;
    }
    let was_member = view.role_of(&req.user).is_some();
    let member = Member {
        user: req.user.clone(),
        role,
        joined_at: now_ms(),
    };
    state.store.put_member(&id, member.clone()).await?;
    changed(&state, &id).await;
    state
        .audit(audit_entry(&me, "group.add_member", &id, Some(&req.user)))
        .await;
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

/// Removes a member (kick), or the caller leaves. Admins remove members; the owner removes
/// anyone but themselves.
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{user}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("user" = String, Path, description = "Member")),
    responses((status = 204, description = "Removed"), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = GroupId::new(id);
    let user = UserId::new(user);
    let (view, my_role) = authorize(&state, &me, &id, Role::Member, "leave").await?;
    kick(&state, &me, &view, my_role, &user, "removed").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes `user` from the group on behalf of `me` (whose role is `my_role`).
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
    changed(state, id).await;
    let action = if leaving {
        "group.leave"
    } else {
        "group.remove_member"
    };
    state.audit(audit_entry(me, action, id, Some(user))).await;
    let mut frame = group_event(EventKind::MemberLeft, id, me, Some(user.clone()));
    if let ServerFrame::Event { detail, .. } = &mut frame {
        *detail = Some(if leaving { "left".into() } else { how.into() });
    }
    publish(state, view.members.as_ref().clone(), frame).await;
    Ok(true)
}

/// `PUT /v1/groups/{id}/members/{user}/role` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// `admin` or `member`.
    role: Role,
}

/// Appoints or demotes an admin (the owner).
#[utoipa::path(put, path = "/v1/groups/{id}/members/{user}/role", tag = "groups", request_body = SetRole, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("user" = String, Path, description = "Member")),
    responses((status = 200, body = Member), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_role(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
    ApiJson(req): ApiJson<SetRole>,
) -> Result<Json<Member>, ApiError> {
    let (id, user) = (GroupId::new(id), UserId::new(user));
    let (view, _) = authorize(&state, &me, &id, Role::Owner, "change roles").await?;
    if req.role == Role::Owner {
        return Err(ApiError::bad_request(
            "role: use POST /v1/groups/{id}/transfer to change the owner",
        ));
    }
    match view.role_of(&user) {
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
        role: req.role,
        joined_at: now_ms(),
    };
    state.store.put_member(&id, member.clone()).await?;
    changed(&state, &id).await;
    let mut entry = audit_entry(&me, "group.set_role", &id, Some(&user));
    entry.detail = Some(role_name(req.role).into());
    state.audit(entry).await;
    let mut frame = group_event(EventKind::RoleChanged, &id, &me, Some(user));
    if let ServerFrame::Event { detail, .. } = &mut frame {
        *detail = Some(role_name(req.role).into());
    }
    publish(&state, view.members.as_ref().clone(), frame).await;
    Ok(Json(member))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// `POST /v1/groups/{id}/transfer` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The member who becomes the owner.
    user: UserId,
}

/// Hands the group to another member (the owner); the old owner becomes an admin.
#[utoipa::path(post, path = "/v1/groups/{id}/transfer", tag = "groups", request_body = Transfer, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 204, description = "Transferred"), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn transfer(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Transfer>,
) -> Result<StatusCode, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Owner, "transfer ownership").await?;
    let Some(owner) = view
        .roles
        .iter()
        .find(|(_, r)| **r == Role::Owner)
        .map(|(u, _)| u.clone())
    else {
        return Err(ApiError::new(ErrorCode::Internal, "the group has no owner"));
    };
    if req.user == owner {
        return Err(ApiError::bad_request("user: already the owner"));
    }
    if view.role_of(&req.user).is_none() {
        return Err(ApiError::not_found(format!("{} is not a member", req.user)));
    }
    let now = now_ms();
    // Promotion and demotion in one atomic write: never two owners, never none.
    let promote = Member {
        user: req.user.clone(),
        role: Role::Owner,
        joined_at: now,
    };
    let demote = Member {
        user: owner.clone(),
        role: Role::Admin,
        joined_at: now,
    };
    state.store.put_members(&id, vec![promote, demote]).await?;
    changed(&state, &id).await;
    state
        .audit(audit_entry(&me, "group.transfer", &id, Some(&req.user)))
        .await;
    let audience = view.members.as_ref().clone();
    for (user, role) in [(req.user.clone(), "owner"), (owner, "admin")] {
        let mut frame = group_event(EventKind::RoleChanged, &id, &me, Some(user));
        if let ServerFrame::Event { detail, .. } = &mut frame {
            *detail = Some(role.into());
        }
        publish(&state, audience.clone(), frame).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/groups/{id}/mutes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteMember {
    /// The member to mute.
    user: UserId,
    /// For how long, seconds (1 to `groups.max_mute_secs`).
    duration_secs: u64,
}

/// The answer to a mute.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Muted {
    /// The muted member.
    user: UserId,
    /// Muted until, ms since the epoch.
    until: u64,
}

/// Mutes a member for a while (owner and admins; admins mute only members).
#[utoipa::path(post, path = "/v1/groups/{id}/mutes", tag = "groups", request_body = MuteMember, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = Muted), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn mute_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MuteMember>,
) -> Result<Json<Muted>, ApiError> {
    let id = GroupId::new(id);
    let (view, my_role) = authorize(&state, &me, &id, Role::Admin, "mute members").await?;
    let max = state.config.groups.max_mute_secs;
    if req.duration_secs == 0 || req.duration_secs > max {
        return Err(ApiError::bad_request(format!(
            "duration_secs: must be 1 to {max}"
        )));
    }
    let Some(their_role) = view.role_of(&req.user) else {
        return Err(ApiError::not_found(format!("{} is not a member", req.user)));
    };
    if their_role >= my_role {
        return Err(ApiError::forbidden(
            "you may mute only members below your role",
        ));
    }
    let until = now_ms() + req.duration_secs * 1000;
    let user = req.user.clone();
    update_settings(&state, &id, move |s| {
        s.mutes.insert(user.clone(), until);
        Ok(())
    })
    .await?;
    let mut entry = audit_entry(&me, "group.mute", &id, Some(&req.user));
    entry.detail = Some(format!("until {until}"));
    state.audit(entry).await;
    let mut frame = group_event(EventKind::Muted, &id, &me, Some(req.user.clone()));
    if let ServerFrame::Event { until: u, .. } = &mut frame {
        *u = Some(until);
    }
    publish(&state, view.members.as_ref().clone(), frame).await;
    Ok(Json(Muted {
        user: req.user,
        until,
    }))
}

/// Lifts a member's mute (owner and admins).
#[utoipa::path(delete, path = "/v1/groups/{id}/mutes/{user}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("user" = String, Path, description = "Member")),
    responses((status = 204, description = "Unmuted"), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unmute_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, user) = (GroupId::new(id), UserId::new(user));
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "unmute members").await?;
    if !view.settings.mutes.contains_key(&user) {
        return Err(ApiError::not_found(format!("{user} is not muted")));
    }
    let u = user.clone();
    update_settings(&state, &id, move |s| {
        s.mutes.remove(&u);
        Ok(())
    })
    .await?;
    state
        .audit(audit_entry(&me, "group.unmute", &id, Some(&user)))
        .await;
    notify(
        &state,
        view.members.as_ref().clone(),
        EventKind::Unmuted,
        &id,
        &me,
        Some(user),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/groups/{id}/muted_all` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteAll {
    /// Whether only the owner and admins may post.
    muted: bool,
}

/// Mutes or unmutes the whole group: the owner and admins still post (owner and admins).
#[utoipa::path(put, path = "/v1/groups/{id}/muted_all", tag = "groups", request_body = MuteAll, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupSettings), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn mute_all(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MuteAll>,
) -> Result<Json<GroupSettings>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "mute the group").await?;
    let muted = req.muted;
    let settings = update_settings(&state, &id, move |s| {
        s.muted_all = muted;
        Ok(())
    })
    .await?;
    let action = if muted {
        "group.mute_all"
    } else {
        "group.unmute_all"
    };
    state.audit(audit_entry(&me, action, &id, None)).await;
    let event = if muted {
        EventKind::Muted
    } else {
        EventKind::Unmuted
    };
    let mut frame = group_event(event, &id, &me, None);
    if let ServerFrame::Event { detail, .. } = &mut frame {
        *detail = Some("all".into());
    }
    publish(&state, view.members.as_ref().clone(), frame).await;
    Ok(Json(settings))
}

/// `POST /v1/groups/{id}/bans` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// The user to remove and keep out.
    user: UserId,
}

/// Removes a user and keeps them out: only the owner or an admin can add them again
/// (owner and admins; admins ban only members).
#[utoipa::path(post, path = "/v1/groups/{id}/bans", tag = "groups", request_body = Ban, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 204, description = "Banned"), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn ban(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Ban>,
) -> Result<StatusCode, ApiError> {
    let id = GroupId::new(id);
    let (view, my_role) = authorize(&state, &me, &id, Role::Admin, "ban users").await?;
    if !req.user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    if req.user == me {
        return Err(ApiError::bad_request("user: you cannot ban yourself"));
    }
    if view.role_of(&req.user).is_some_and(|r| r >= my_role) {
        return Err(ApiError::forbidden(
            "you may ban only members below your role",
        ));
    }
    let user = req.user.clone();
    update_settings(&state, &id, move |s| {
        s.banned.insert(user.clone());
        Ok(())
    })
    .await?;
    state
        .audit(audit_entry(&me, "group.ban", &id, Some(&req.user)))
        .await;
    kick(&state, &me, &view, my_role, &req.user, "banned").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban (owner and admins).
#[utoipa::path(delete, path = "/v1/groups/{id}/bans/{user}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("user" = String, Path, description = "Banned user")),
    responses((status = 204, description = "Unbanned"), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unban(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, user) = (GroupId::new(id), UserId::new(user));
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "lift bans").await?;
    if !view.settings.banned.contains(&user) {
        return Err(ApiError::not_found(format!("{user} is not banned")));
    }
    let u = user.clone();
    update_settings(&state, &id, move |s| {
        s.banned.remove(&u);
        Ok(())
    })
    .await?;
    state
        .audit(audit_entry(&me, "group.unban", &id, Some(&user)))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Pins a message (owner and admins).
#[utoipa::path(put, path = "/v1/groups/{id}/pins/{seq}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("seq" = u64, Path, description = "Message seq")),
    responses((status = 200, body = GroupSettings), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn pin(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, seq)): Path<(String, u64)>,
) -> Result<Json<GroupSettings>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "pin messages").await?;
    let conv = ConvId::group(&id);
    let last = state.store.last_seq(&conv).await?;
    if seq == 0 || seq > last.0 {
        return Err(ApiError::not_found(format!("no message {seq} in {conv}")));
    }
    let max = state.config.groups.max_pins;
    let settings = update_settings(&state, &id, move |s| {
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
    let mut entry = audit_entry(&me, "group.pin", &id, None);
    entry.message = Some(seq.to_string());
    state.audit(entry).await;
    pin_event(&state, &view, &me, seq, None).await;
    Ok(Json(settings))
}

/// Unpins a message (owner and admins).
#[utoipa::path(delete, path = "/v1/groups/{id}/pins/{seq}", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("seq" = u64, Path, description = "Message seq")),
    responses((status = 200, body = GroupSettings), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unpin(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((id, seq)): Path<(String, u64)>,
) -> Result<Json<GroupSettings>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "unpin messages").await?;
    if !view.settings.pinned.contains(&Seq(seq)) {
        return Err(ApiError::not_found(format!("message {seq} is not pinned")));
    }
    let settings = update_settings(&state, &id, move |s| {
        s.pinned.retain(|p| *p != Seq(seq));
        Ok(())
    })
    .await?;
    let mut entry = audit_entry(&me, "group.unpin", &id, None);
    entry.message = Some(seq.to_string());
    state.audit(entry).await;
    pin_event(&state, &view, &me, seq, Some("unpinned")).await;
    Ok(Json(settings))
}

async fn pin_event(state: &AppState, view: &GroupView, me: &UserId, seq: u64, what: Option<&str>) {
    let mut frame = group_event(EventKind::Pinned, &view.group.id, me, None);
    if let ServerFrame::Event { seq: s, detail, .. } = &mut frame {
        *s = Some(Seq(seq));
        *detail = what.map(str::to_owned);
    }
    publish(state, view.members.as_ref().clone(), frame).await;
}

/// `PUT /v1/groups/{id}/announcement` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAnnouncement {
    /// The new announcement (empty clears it).
    text: String,
}

/// The outcome of an announcement change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AnnouncementOutcome {
    /// Applied and announced.
    Published {
        /// The group's settings now.
        settings: GroupSettings,
    },
    /// Waiting for a reviewer (company and department groups, approval-only groups).
    Pending {
        /// The pending post.
        post: crate::posts::Post,
    },
}

/// Sets the group announcement (owner and admins). In company and department groups and
/// approval-only groups it becomes a pending post that a reviewer approves (202).
#[utoipa::path(put, path = "/v1/groups/{id}/announcement", tag = "groups", request_body = SetAnnouncement, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = AnnouncementOutcome), (status = 202, description = "Pending approval", body = AnnouncementOutcome),
        (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_announcement(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetAnnouncement>,
) -> Result<Response, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "set the announcement").await?;
    writable(&view)?;
    let text = req.text.trim().to_owned();
    let max = state.config.groups.max_announcement_chars;
    if text.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "text: at most {max} characters"
        )));
    }
    let verdict = crate::policy::ModerationScope::of_group(&state, &view)
        .await?
        .check(&state, &text);
    if verdict.action == moderation::Action::Block {
        return Err(ApiError::new(
            ErrorCode::Blocked,
            "announcement blocked by the moderation filter",
        ));
    }
    let needs_approval = matches!(view.group.kind, GroupKind::Company | GroupKind::Department)
        || view.settings.approval_required;
    if needs_approval {
        crate::policy::check_not_restricted(&state, &me).await?;
        let post = crate::posts::submit(
            &state,
            &me,
            &id,
            crate::posts::PostKind::Announcement,
            text,
            None,
        )
        .await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(AnnouncementOutcome::Pending { post }),
        )
            .into_response());
    }
    let settings = publish_announcement(&state, &me, &view, text).await?;
    Ok(Json(AnnouncementOutcome::Published { settings }).into_response())
}

/// `PUT /v1/groups/{id}/approval` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetApproval {
    /// Whether posts need a reviewer's approval.
    required: bool,
}

/// Makes the group an announcement channel (posts need approval) or not (the owner).
#[utoipa::path(put, path = "/v1/groups/{id}/approval", tag = "groups", request_body = SetApproval, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupSettings), (status = 400, body = ErrorBody), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_approval(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetApproval>,
) -> Result<Json<GroupSettings>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Owner, "change approval").await?;
    let required = req.required;
    let settings = update_settings(&state, &id, move |s| {
        s.approval_required = required;
        Ok(())
    })
    .await?;
    let mut entry = audit_entry(&me, "group.approval", &id, None);
    entry.detail = Some(required.to_string());
    state.audit(entry).await;
    let mut frame = group_event(EventKind::GroupChanged, &id, &me, None);
    if let ServerFrame::Event { detail, .. } = &mut frame {
        *detail = Some(format!("approval_required={required}"));
    }
    publish(&state, view.members.as_ref().clone(), frame).await;
    Ok(Json(settings))
}

/// Archives a project group: read-only from now on (the owner).
#[utoipa::path(post, path = "/v1/groups/{id}/archive", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupSettings), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn archive(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<GroupSettings>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Owner, "archive the group").await?;
    if view.group.kind != GroupKind::Project {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "only project groups are archived",
        ));
    }
    let settings = update_settings(&state, &id, |s| {
        if s.lifecycle != Lifecycle::Active {
            return Err(ApiError::new(ErrorCode::Conflict, "already archived"));
        }
        s.lifecycle = Lifecycle::Archived;
        Ok(())
    })
    .await?;
    state
        .audit(audit_entry(&me, "group.archive", &id, None))
        .await;
    notify(
        &state,
        view.members.as_ref().clone(),
        EventKind::Archived,
        &id,
        &me,
        None,
    )
    .await;
    Ok(Json(settings))
}

/// Dissolves an archived project group: every member is removed and the name is freed
/// (the owner).
#[utoipa::path(post, path = "/v1/groups/{id}/dissolve", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 204, description = "Dissolved"), (status = 401, description = E401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn dissolve(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Owner, "dissolve the group").await?;
    if view.settings.lifecycle != Lifecycle::Archived {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "archive the group before dissolving it",
        ));
    }
    // Mark it dissolved first: from then on it is gone for every request, even if removing
    // the members below is interrupted (a retry finishes the job).
    update_settings(&state, &id, |s| {
        s.lifecycle = Lifecycle::Dissolved;
        Ok(())
    })
    .await?;
    for user in view.members.iter() {
        state.store.remove_member(&id, user).await?;
    }
    state
        .meta
        .apply(vec![MetaOp::delete(
            NS_GROUP_NAME,
            &view.group.name.to_lowercase(),
        )])
        .await?;
    changed(&state, &id).await;
    state
        .audit(audit_entry(&me, "group.dissolve", &id, None))
        .await;
    notify(
        &state,
        view.members.as_ref().clone(),
        EventKind::Dissolved,
        &id,
        &me,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
