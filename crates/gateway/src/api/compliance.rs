//! The compliance API (会话存档): the event log as JSONL pages, and the batch export job.
//! Company administrators and `compliance.officers` only; the rules are in
//! [`crate::compliance`].

use super::Caller;
use crate::compliance::{self, ExportStatus};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use std::convert::Infallible;
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
#[into_params(parameter_in = Query)]
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
    let (page, slot) = compliance::page_now(&state, &after, q.limit.unwrap_or(100)).await?;
    let jsonl = compliance::jsonl(&page.records)?;
    let length = jsonl.len().to_string();
    let body = sent_holding(jsonl, slot);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_LENGTH, length),
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

/// The bytes of a page as a response body that keeps the read slot until its last chunk is
/// handed to the connection: a slow reader holds its slot, so the slots bound the memory of
/// pages in flight (released when the client has taken all but the last 64 KiB).
fn sent_holding(bytes: Vec<u8>, slot: compliance::ReadSlot) -> Body {
    const CHUNK: usize = 64 * 1024;
    let bytes = Bytes::from(bytes);
    let chunks = (0..bytes.len().div_ceil(CHUNK)).map(move |i| {
        let end = bytes.len().min((i + 1) * CHUNK);
        Ok::<_, Infallible>(bytes.slice(i * CHUNK..end))
    });
    let stream = futures_util::stream::iter(chunks).chain(futures_util::stream::once(async move {
        drop(slot);
        Ok(Bytes::new())
    }));
    Body::from_stream(stream)
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
