//! The caller's conversation list over HTTP, and recall by administrators.

use super::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::{ConvSummary, Seq};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(conversations))
        .routes(routes!(recall))
}

/// The caller's conversations with the last message, unread count and mention flag, most
/// recently active first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, body = [ConvSummary]), (status = 401, body = ErrorBody)))]
async fn conversations(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<ConvSummary>>, ApiError> {
    Ok(Json(crate::messages::conversation_list(&state, &me).await?))
}

/// Recalls a message, as the WebSocket `recall` does: its sender within the recall window,
/// the group's owner and admins, or a company administrator (for compliance requests).
#[utoipa::path(delete, path = "/v1/conversations/{conv}/messages/{seq}", tag = "conversations", security(("bearer" = [])),
    params(("conv" = String, Path, description = "Conversation id, e.g. group:g1"), ("seq" = u64, Path, description = "Message seq")),
    responses((status = 204, description = "Recalled"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn recall(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((conv, seq)): Path<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    let conv = super::review::parse_conv(&conv)?;
    crate::messages::recall(&state, &me, &conv, Seq(seq)).await?;
    Ok(StatusCode::NO_CONTENT)
}
