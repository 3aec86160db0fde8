//! The WebSocket handshake of `GET /ws` (RFC 6455 section 4.2), done here rather than by
//! axum's `WebSocketUpgrade` so that the session's socket can be wrapped before the
//! WebSocket layer reads from it: the [`Metered`] connection charges every inbound frame to
//! the session's read budget (see [`crate::frame_meter`]), which the WebSocket layer's own API
//! has no place for.
//!
//! A request that is not a valid upgrade is refused with 400 and the JSON error body, like
//! every other refusal of the route (docs/PROTOCOL.md).

use crate::error::ApiError;
use crate::frame_meter::Metered;
use crate::read_budget::ReadRate;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A session's WebSocket: the upgraded connection, read at the frame budget.
pub type Socket = WebSocketStream<Metered<TokioIo<hyper::upgrade::Upgraded>>>;

/// The write half of a session's [`Socket`].
pub type SocketSink = SplitSink<Socket, Message>;

/// The read half of a session's [`Socket`].
pub type SocketStream = SplitStream<Socket>;

/// A checked upgrade request, ready to be accepted.
pub struct WsHandshake {
    accept_key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Whether the comma-separated header `name` lists `token` (ASCII case ignored).
fn header_lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsHandshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // The route only answers GET (others get 405 from the router); HTTP/2 is not served.
        if parts.version != Version::HTTP_11 {
            return Err(ApiError::bad_request("a WebSocket upgrade needs HTTP/1.1"));
        }
        if !header_lists(&parts.headers, header::CONNECTION, "upgrade")
            || !header_lists(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(ApiError::bad_request(
                "not a WebSocket upgrade (Connection: upgrade and Upgrade: websocket needed)",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key is missing"))?;
        let accept_key = HeaderValue::try_from(derive_accept_key(key.as_bytes()))
            .map_err(|_| ApiError::bad_request("Sec-WebSocket-Key is not valid"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
        Ok(Self {
            accept_key,
            on_upgrade,
        })
    }
}

impl WsHandshake {
    /// Answers 101 and, once the connection is switched, runs `session` on its socket's two
    /// halves (in a task of its own, as the response must be sent first).
    ///
    /// The socket is split here, before the session starts, so the session's future holds two
    /// pointers rather than the whole socket (an async function keeps its arguments for its
    /// whole life): with the socket, the session task took the next allocator size class,
    /// 1 KiB more per idle connection (docs/BENCHMARKS.md, "Every frame on the wire").
    pub fn accept<F, Fut>(self, config: WebSocketConfig, rate: ReadRate, session: F) -> Response
    where
        F: FnOnce(SocketSink, SocketStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            accept_key,
            on_upgrade,
        } = self;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            let io = Metered::new(TokioIo::new(upgraded), rate);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            let (sink, stream) = socket.split();
            session(sink, stream).await;
        });
        let mut response = Body::empty().into_response();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_are_matched_in_lists_ignoring_case() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(header_lists(&h, header::CONNECTION, "upgrade"));
        h.insert(header::CONNECTION, "keep-alive, upgraded".parse().unwrap());
        assert!(!header_lists(&h, header::CONNECTION, "upgrade"));
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
