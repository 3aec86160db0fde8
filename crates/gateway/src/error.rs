//! One error type for client-visible failures, mapped to exactly one protocol error code:
//! an `error` frame on the WebSocket, an HTTP status with a JSON body on the API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ErrorCode, Rid, ServerFrame};
use serde::{Deserialize, Serialize};

/// A failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// The JSON body of an HTTP error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inner part of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// Whether retrying can help.
    pub retry: bool,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// The `error` frame for this failure.
    pub fn frame(self, rid: Option<Rid>) -> ServerFrame {
        ServerFrame::error(rid, self.code, self.message)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        use store::StoreError as E;
        match e {
            E::NotFound(m) => Self::new(ErrorCode::NotFound, m),
            E::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            e @ E::Unavailable { .. } => {
                tracing::warn!(error = %e, "store unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "storage is unavailable; nothing was stored",
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(ErrorCode::Internal, "storage failure")
            }
        }
    }
}

impl From<router::RouterError> for ApiError {
    fn from(e: router::RouterError) -> Self {
        tracing::warn!(error = %e, "router failure");
        Self::new(ErrorCode::Unavailable, "delivery is unavailable")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                retry: self.code.retryable(),
                code: self.code,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}
