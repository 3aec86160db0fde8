//! A group's own moderation rules over HTTP: `GET/PUT /v1/groups/{id}/moderation` (the
//! group's owner and admins, and company administrators). The rules are stored with the group
//! and applied on every moderated path of the group (see [`crate::policy`]).

use super::groups::authorize;
use super::{ApiJson, Caller};
use crate::directory::{get_json, to_json};
use crate::error::{ApiError, ErrorBody};
use crate::groups::GroupChange;
use crate::membership::NS_GROUP_MODERATION;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use moderation::GroupPolicySpec;
use protocol::{EventKind, GroupId, ServerFrame};
use std::collections::BTreeMap;
use store::{MetaOp, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most words a group may ban.
pub const MAX_WORDS: usize = 1000;
/// Longest word, in characters.
pub const MAX_WORD_CHARS: usize = 64;
/// Most entries of `tighten`.
pub const MAX_TIGHTEN: usize = 64;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_rules, put_rules))
}

/// A group's moderation rules (the schema of [`GroupPolicySpec`], which is the body).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct GroupModeration {
    /// Words banned in this group only (at most 1000, each 1 to 64 characters).
    words: Vec<String>,
    /// Action of those words: `block` (default), `review`, `mask`, `warn` or `allow`.
    words_action: Option<String>,
    /// Category reported for those words (default `group`).
    words_category: Option<String>,
    /// Category or detector name -> minimum action in this group (tightens only).
    tighten: BTreeMap<String, String>,
    /// Block secret markers and code names even without external members.
    forbid_secret_markers: bool,
}

/// The group's moderation rules (empty when it has none).
#[utoipa::path(get, path = "/v1/groups/{id}/moderation", tag = "groups", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupModeration), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_rules(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<GroupPolicySpec>, ApiError> {
    let id = GroupId::new(id);
    authorize(&state, &me, &id, Role::Admin, "read the moderation rules").await?;
    let spec: Option<GroupPolicySpec> =
        get_json(&state.meta, NS_GROUP_MODERATION, id.as_str()).await?;
    Ok(Json(spec.unwrap_or_default()))
}

/// Replaces the group's moderation rules (`{}` removes them). They are checked against the
/// rules in force (unknown category or detector names are refused), audited, and in force
/// on every node at once.
#[utoipa::path(put, path = "/v1/groups/{id}/moderation", tag = "groups", request_body = GroupModeration, security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupModeration), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_rules(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(mut spec): ApiJson<GroupPolicySpec>,
) -> Result<Json<GroupPolicySpec>, ApiError> {
    let id = GroupId::new(id);
    let (view, _) = authorize(&state, &me, &id, Role::Admin, "change the moderation rules").await?;
    validate(&mut spec)?;
    state
        .moderation
        .compile_group(&spec)
        .map_err(|e| ApiError::bad_request(format!("moderation rules: {e}")))?;
    let op = if spec == GroupPolicySpec::default() {
        MetaOp::delete(NS_GROUP_MODERATION, id.as_str())
    } else {
        MetaOp::put(NS_GROUP_MODERATION, id.as_str(), to_json(&spec)?)
    };
    state.meta.apply(vec![op]).await?;
    let detail = format!(
        "{} words, {} tightened",
        spec.words.len(),
        spec.tighten.len()
    );
    GroupChange::new(&id, &me)
        .view_changed()
        .audit_detail("group.moderation", None, detail)
        .event(
            view.members.as_ref().clone(),
            ServerFrame::event(EventKind::GroupChanged).detail("moderation_rules"),
        )
        .commit(&state)
        .await;
    Ok(Json(spec))
}

/// Bounds and tidies the rules: trimmed words, none empty, within the limits.
fn validate(spec: &mut GroupPolicySpec) -> Result<(), ApiError> {
    if spec.words.len() > MAX_WORDS {
        return Err(ApiError::bad_request(format!("words: at most {MAX_WORDS}")));
    }
    for w in &mut spec.words {
        *w = w.trim().to_owned();
        if w.is_empty() || w.chars().count() > MAX_WORD_CHARS {
            return Err(ApiError::bad_request(format!(
                "words: each 1 to {MAX_WORD_CHARS} characters"
            )));
        }
    }
    if spec.tighten.len() > MAX_TIGHTEN {
        return Err(ApiError::bad_request(format!(
            "tighten: at most {MAX_TIGHTEN} entries"
        )));
    }
    if spec
        .words_category
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.chars().count() > MAX_WORD_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "words_category: 1 to {MAX_WORD_CHARS} characters"
        )));
    }
    Ok(())
}
