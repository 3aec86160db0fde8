//! The caller's conversation list over HTTP, and recall by administrators.

use super::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use protocol::ConvSummary;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(conversations))
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
