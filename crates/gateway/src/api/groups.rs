//! Groups over HTTP: creation by type, members and roles, ownership, mutes, bans, pins, the
//! announcement, archiving and dissolving. Each handler takes the request apart and calls one
//! function of [`crate::group_admin`], which holds the rules (authorize -> rules -> one write
//! -> audit and events after the commit).

use super::{ApiJson, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::group_admin::{self, Announced, NewGroup};
use crate::membership::GroupSettings;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{GroupId, UserId};
use serde::{Deserialize, Serialize};
use store::{Group, GroupKind, Member, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Who may change a group (used by the other group routes too).
pub(super) use crate::group_admin::authorize;

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
    let created = group_admin::create(
        &state,
        &me,
        NewGroup {
            name: req.name,
            kind: req.kind,
            members: req.members,
            department: req.department,
            approval_required: req.approval_required,
        },
    )
    .await?;
    let detail = GroupDetail {
        group: created.group,
        members: created.members,
        settings: created.settings,
    };
    Ok((StatusCode::CREATED, Json(detail)).into_response())
}

/// The caller's groups with their role in each.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    responses((status = 200, body = [GroupRow]), (status = 401, description = E401, body = ErrorBody)))]
async fn my_groups(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<GroupRow>>, ApiError> {
    let rows = group_admin::mine(&state, &me).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(group, role)| GroupRow { group, role })
            .collect(),
    ))
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
    let (group, members, settings) = group_admin::read(&state, &me, &GroupId::new(id)).await?;
    Ok(Json(GroupDetail {
        group,
        members,
        settings,
    }))
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
    Ok(Json(
        group_admin::add_member(&state, &me, &id, &req.user, req.role).await?,
    ))
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
    let (id, user) = (GroupId::new(id), UserId::new(user));
    group_admin::remove_member(&state, &me, &id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
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
    Ok(Json(
        group_admin::set_role(&state, &me, &id, &user, req.role).await?,
    ))
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
    group_admin::transfer(&state, &me, &GroupId::new(id), &req.user).await?;
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
    let until = group_admin::mute_member(&state, &me, &id, &req.user, req.duration_secs).await?;
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
    group_admin::unmute_member(&state, &me, &id, &user).await?;
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
    Ok(Json(
        group_admin::mute_all(&state, &me, &id, req.muted).await?,
    ))
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
    group_admin::ban(&state, &me, &GroupId::new(id), &req.user).await?;
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
    group_admin::unban(&state, &me, &id, &user).await?;
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
    Ok(Json(
        group_admin::pin(&state, &me, &GroupId::new(id), seq).await?,
    ))
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
    Ok(Json(
        group_admin::unpin(&state, &me, &GroupId::new(id), seq).await?,
    ))
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
    Ok(
        match group_admin::set_announcement(&state, &me, &id, &req.text).await? {
            Announced::Published(settings) => {
                Json(AnnouncementOutcome::Published { settings }).into_response()
            }
            Announced::Pending(post) => (
                StatusCode::ACCEPTED,
                Json(AnnouncementOutcome::Pending { post }),
            )
                .into_response(),
        },
    )
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
    Ok(Json(
        group_admin::set_approval(&state, &me, &id, req.required).await?,
    ))
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
    Ok(Json(
        group_admin::archive(&state, &me, &GroupId::new(id)).await?,
    ))
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
    group_admin::dissolve(&state, &me, &GroupId::new(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
