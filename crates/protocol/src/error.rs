//! Stable error codes and WebSocket close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The machine-readable reason in an `error` frame or an HTTP error body. These strings are
/// part of the public contract: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or request is malformed or a field is invalid.
    BadRequest,
    /// No valid credentials.
    Unauthorized,
    /// Authenticated, but not allowed (not a member, wrong role).
    Forbidden,
    /// The user, group, conversation or message does not exist.
    NotFound,
    /// Already exists (duplicate id or name).
    Conflict,
    /// The frame or body exceeds a size limit.
    TooLarge,
    /// Too many requests; slow down.
    RateLimited,
    /// The moderation filter rejected the message; the message names the category.
    Blocked,
    /// The sender is muted in this conversation (or suspended).
    Muted,
    /// A dependency (store, router) is temporarily unavailable.
    Unavailable,
    /// The request took too long to arrive (a stalled or too slow upload body).
    Timeout,
    /// A bug on the server side.
    Internal,
}

impl ErrorCode {
    /// Whether sending the same request again may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::Internal
        )
    }

    /// The code's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Muted => "muted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the admin API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::Blocked | ErrorCode::Muted => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 408,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the server uses, and what a client should do on each.
pub mod close {
    /// Server shutting down (standard "going away"): reconnect, to another node if possible.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455 (unmasked frame, reserved opcode or bits, bad
    /// fragmentation, a control frame too long): fix the client; reconnecting repeats it.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8 (standard "invalid payload data").
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame over the size limit (standard "message too big"): do not resend that frame.
    pub const TOO_LARGE: u16 = 1009;
    /// Unexpected server error: reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// Slow consumer: the session's outbound queue overflowed. Reconnect and `sync`; nothing
    /// is lost.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Signed out, deactivated or kicked: do not reconnect with the same token.
    pub const SIGNED_OUT: u16 = 4001;
    /// Rate limited: reconnect after a delay.
    pub const RATE_LIMITED: u16 = 4002;
    /// Token expired: refresh the token, then reconnect.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// No frame within the idle timeout: reconnect (and send heartbeats).
    pub const IDLE_TIMEOUT: u16 = 4004;
}
