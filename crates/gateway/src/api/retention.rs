//! The company administrator's data lifecycle routes: retention policies, their dry run, a
//! pass on demand, and legal holds. The rules are in [`crate::retention`] and
//! [`crate::holds`]; every route here is for company administrators only.

use super::{ApiJson, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::holds::{Hold, NewHold};
use crate::retention::{PassOptions, Policies, Report};
use crate::state::{now_ms, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::ConvId;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policies, put_policies))
        .routes(routes!(dry_run))
        .routes(routes!(run_now))
        .routes(routes!(list_holds, create_hold))
        .routes(routes!(release_hold))
}

/// The retention policies in force (the defaults, which keep everything, until saved).
#[utoipa::path(get, path = "/v1/admin/retention", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Policies), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn get_policies(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Policies>, ApiError> {
    state.require_company_admin(&me)?;
    Ok(Json(crate::retention::policies(&state).await?))
}

/// Replaces the retention policies (audited `retention.policy`). The next pass applies them;
/// try them first with the dry run.
#[utoipa::path(put, path = "/v1/admin/retention", tag = "admin", request_body = Policies, security(("bearer" = [])),
    responses((status = 200, body = Policies), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn put_policies(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(p): ApiJson<Policies>,
) -> Result<Json<Policies>, ApiError> {
    state.require_company_admin(&me)?;
    Ok(Json(crate::retention::save_policies(&state, &me, p).await?))
}

/// Body of the dry run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// Policies to try (default: the saved ones); nothing is saved.
    #[serde(default)]
    pub policies: Option<Policies>,
    /// Measure ages as of this time, ms since the epoch (default now): "what would a pass
    /// next week delete".
    #[serde(default)]
    pub as_of: Option<u64>,
    /// Only these conversations (default: every one; at most 1,000).
    #[serde(default)]
    pub conversations: Option<Vec<ConvId>>,
}

/// Says, per conversation, what a pass would delete with the given (or saved) policies,
/// writing nothing: counts, seq ranges, attachment bytes, files. One pass or dry run at a
/// time per node (503 with retry otherwise).
#[utoipa::path(post, path = "/v1/admin/retention/dry-run", tag = "admin", request_body = DryRun, security(("bearer" = [])),
    responses((status = 200, body = Report), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 503, description = "A pass is running", body = ErrorBody)))]
async fn dry_run(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<DryRun>,
) -> Result<Json<Report>, ApiError> {
    state.require_company_admin(&me)?;
    let policies = match req.policies {
        Some(p) => {
            p.validate()?;
            p
        }
        None => crate::retention::policies(&state).await?,
    };
    if req.conversations.as_ref().is_some_and(|c| c.len() > 1000) {
        return Err(ApiError::bad_request("conversations: at most 1000"));
    }
    let opts = PassOptions {
        as_of: req.as_of.unwrap_or_else(now_ms),
        dry_run: true,
        policies,
        only: req.conversations,
        actor: Some(me),
    };
    Ok(Json(crate::retention::run(&state, opts).await?))
}

/// Body of a pass on demand.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNow {
    /// Test builds only (feature `test-hooks`; refused otherwise): measure ages as of this
    /// time, ms since the epoch.
    #[serde(default)]
    pub as_of: Option<u64>,
}

/// Runs a retention pass now with the saved policies (audited like a scheduled one) and
/// answers its report. 503 with retry while a pass runs here or on another node.
#[utoipa::path(post, path = "/v1/admin/retention/run", tag = "admin", request_body = RunNow, security(("bearer" = [])),
    responses((status = 200, body = Report), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 503, description = "A pass is running", body = ErrorBody)))]
async fn run_now(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<RunNow>,
) -> Result<Json<Report>, ApiError> {
    state.require_company_admin(&me)?;
    if req.as_of.is_some() && !cfg!(feature = "test-hooks") {
        return Err(ApiError::bad_request(
            "as_of is for test builds only; a pass measures ages from now",
        ));
    }
    let opts = PassOptions {
        as_of: req.as_of.unwrap_or_else(now_ms),
        dry_run: false,
        policies: crate::retention::policies(&state).await?,
        only: None,
        actor: Some(me),
    };
    Ok(Json(crate::retention::run(&state, opts).await?))
}

/// Every legal hold, oldest first (released ones too).
#[utoipa::path(get, path = "/v1/admin/holds", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [Hold]), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn list_holds(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<Hold>>, ApiError> {
    state.require_company_admin(&me)?;
    Ok(Json(crate::holds::list(&state).await?))
}

/// Places a legal hold on a user, a conversation or the whole company (audited
/// `hold.create`): retention and recalls keep what it covers while it applies.
#[utoipa::path(post, path = "/v1/admin/holds", tag = "admin", request_body = NewHold, security(("bearer" = [])),
    responses((status = 201, body = Hold), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn create_hold(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<NewHold>,
) -> Result<Response, ApiError> {
    state.require_company_admin(&me)?;
    let hold = crate::holds::create(&state, &me, req).await?;
    Ok((StatusCode::CREATED, Json(hold)).into_response())
}

/// Releases a legal hold (audited `hold.release`); what it kept follows the retention
/// policies again from the next pass.
#[utoipa::path(post, path = "/v1/admin/holds/{id}/release", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "The hold id")),
    responses((status = 200, body = Hold), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn release_hold(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Hold>, ApiError> {
    state.require_company_admin(&me)?;
    Ok(Json(crate::holds::release(&state, &me, &id).await?))
}
