//! The compliance API (会话存档): the event log as JSONL pages, and the batch export job.
//! Company administrators and `compliance.officers` only; the rules are in
//! [`crate::compliance`].

use super::Caller;
use crate::compliance::{self, ExportStatus};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(export_status, export_start))
}

/// `GET /v1/admin/compliance/events` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// The `chatd-next-cursor` of the previous page, or a record's `cursor` (absent: the
    /// start of the log).
    after: Option<String>,
    /// Events in the page: 1 to `compliance.max_page` (default 100).
    limit: Option<usize>,
}

/// The compliance event log after a cursor, oldest first, as JSONL (one record per line):
/// every stored message with its moderation outcome, recall, membership change and audit
/// entry, final ones only. Headers: `chatd-next-cursor` (pass it as `after`),
/// `chatd-has-more` (`true` when the page stopped at its limit), `chatd-horizon` (every event
/// committed before this time, ms, is in reach).
#[utoipa::path(get, path = "/v1/admin/compliance/events", tag = "compliance", params(EventsQuery), security(("bearer" = [])),
    responses((status = 200, description = "JSONL records", content_type = "application/x-ndjson", headers(("chatd-next-cursor" = String, description = "The cursor of the next page"), ("chatd-has-more" = bool, description = "Whether more events are final now"), ("chatd-horizon" = u64, description = "Events committed before this time (ms) are all in reach"))),
        (status = 400, description = "Bad cursor or limit", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 503, description = "Too many pages being read", body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    compliance::require_officer(&state, &me)?;
    let after = compliance::decode_cursor(q.after.as_deref().unwrap_or(""))?;
    let page = compliance::page_now(&state, &after, q.limit.unwrap_or(100)).await?;
    let body = compliance::jsonl(&page.records)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::HeaderName::from_static("chatd-next-cursor"),
                compliance::encode_cursor(&page.next),
            ),
            (
                header::HeaderName::from_static("chatd-has-more"),
                page.has_more.to_string(),
            ),
            (
                header::HeaderName::from_static("chatd-horizon"),
                page.horizon.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The export's progress: the cursor after the last exported event, batches and events so
/// far, the current or last job.
#[utoipa::path(get, path = "/v1/admin/compliance/exports", tag = "compliance", security(("bearer" = [])),
    responses((status = 200, body = ExportStatus), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn export_status(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<ExportStatus>, ApiError> {
    compliance::require_officer(&state, &me)?;
    Ok(Json(compliance::status(&state).await?))
}

/// Starts an export job in the background (or resumes the interrupted one): it writes every
/// event after the last export's cursor to batch files in `compliance.dir`, then stops.
/// 409 while one is running on this node.
#[utoipa::path(post, path = "/v1/admin/compliance/exports", tag = "compliance", security(("bearer" = [])),
    responses((status = 200, body = ExportStatus), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 409, description = "An export is running", body = ErrorBody)))]
async fn export_start(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<ExportStatus>, ApiError> {
    compliance::require_officer(&state, &me)?;
    Ok(Json(compliance::start(&state, &me).await?))
}
