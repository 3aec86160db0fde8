//! One WebSocket session: authentication before the upgrade, then a reader (this task) and a
//! writer task joined by the session's bounded outbound queue.
//!
//! The reader decodes frames in order and runs each through [`crate::ops::handle`]; replies
//! and routed deliveries both go through the queue, so one task owns the socket's write half.
//! The writer drains up to `server.write_batch` queued frames per flush, so a burst costs one
//! syscall rather than one per frame. Either side ending ends both; the hub registration
//! undoes itself on drop, even when a handler panics.

use crate::auth::{now_secs, AuthError};
use crate::error::ApiError;
use crate::hub::{Registration, SessionHandle, SharedFrame};
use crate::ops::{self, SessionCtx};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use protocol::{close, ClientFrame, Codec, ErrorCode, ServerFrame, UserId, PROTOCOL_VERSION};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

/// Query parameters of `GET /ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// The JWT, when not in the Authorization header.
    token: Option<String>,
    /// `json` (default) or `msgpack`.
    codec: Option<String>,
}

/// The bearer token from the header, or else from the query.
pub fn bearer(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or_else(|| query_token.map(str::to_owned))
}

/// Maps a token failure to the HTTP error.
pub fn auth_error(e: AuthError) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, e.to_string())
}

/// `GET /ws`: checks the token, the codec and the limits, then upgrades.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = match bearer(&headers, query.token.as_deref()) {
        Some(t) => t,
        None => return auth_error(AuthError::Missing).into_response(),
    };
    let claims = match state.auth.verify(&token) {
        Ok(c) => c,
        Err(e) => return auth_error(e).into_response(),
    };
    let codec = match query.codec.as_deref().map(Codec::from_name) {
        None => Codec::Json,
        Some(Some(c)) => c,
        Some(None) => {
            return ApiError::bad_request("codec must be json or msgpack").into_response()
        }
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this node is at its connection limit",
        )
        .into_response();
    };
    let user = UserId::new(claims.sub);
    if let Err(e) = state.check_account(&user, claims.iat).await {
        return e.into_response();
    }
    if let Err(e) = state.touch_user(&user).await {
        return e.into_response();
    }
    let limits = &state.config.limits;
    let server = &state.config.server;
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(server.ws_read_buffer)
        .write_buffer_size(server.ws_write_buffer)
        .on_upgrade(move |socket| run(state, socket, user, codec, claims.exp, permit))
}

fn to_ws(codec: Codec, bytes: bytes::Bytes) -> WsMessage {
    if codec.is_text() {
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => WsMessage::Text(text),
            Err(_) => WsMessage::Text(Utf8Bytes::from_static("{}")),
        }
    } else {
        WsMessage::Binary(bytes)
    }
}

async fn run(
    state: AppState,
    socket: WebSocket,
    user: UserId,
    codec: Codec,
    token_exp: u64,
    _permit: OwnedSemaphorePermit,
) {
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("session", session = %session_id, user = %user);
    async move {
        let (handle, queue) =
            SessionHandle::new(session_id, user, codec, state.config.server.outbound_queue);
        let (mut sink, stream) = socket.split();
        let registration = match Registration::new(
            state.hub.clone(),
            state.router.clone(),
            handle.clone(),
            state.config.server.max_sessions_per_user,
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                let frame = ServerFrame::error(
                    None,
                    ErrorCode::RateLimited,
                    "too many sessions for this user",
                );
                let _ = sink.send(to_ws(codec, codec.encode(&frame))).await;
                let _ = sink
                    .send(WsMessage::Close(Some(CloseFrame {
                        code: close::RATE_LIMITED,
                        reason: Utf8Bytes::from_static("too many sessions"),
                    })))
                    .await;
                return;
            }
        };
        tracing::debug!("session open");
        handle
            .reply(ServerFrame::Hello {
                session_id: handle.id.clone(),
                user: handle.user.clone(),
                heartbeat_ms: state.config.server.heartbeat_ms,
                protocol: PROTOCOL_VERSION,
                max_frame_bytes: state.config.limits.max_frame_bytes,
            })
            .await;
        let writer = tokio::spawn(
            write_loop(
                sink,
                queue,
                handle.clone(),
                state.config.server.write_batch.max(1),
                Duration::from_millis(state.config.server.heartbeat_ms.max(100)),
            )
            .in_current_span(),
        );
        read_loop(&state, stream, &handle, token_exp).await;
        drop(registration);
        let _ = writer.await;
        tracing::debug!(reason = ?handle.close_reason(), "session closed");
    }
    .instrument(span)
    .await
}

async fn read_loop(
    state: &AppState,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    handle: &Arc<SessionHandle>,
    token_exp: u64,
) {
    let ctx = SessionCtx::new(
        handle.clone(),
        state.config.limits.send_per_sec,
        state.config.limits.send_burst,
    );
    let idle = Duration::from_millis(state.config.server.idle_timeout_ms.max(100));
    let expires_in = Duration::from_secs(token_exp.saturating_sub(now_secs()));
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    loop {
        let next = tokio::select! {
            _ = handle.closed() => return,
            _ = &mut expiry => {
                handle.close(close::TOKEN_EXPIRED, "token expired");
                return;
            }
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let message = match next {
            Err(_) => {
                handle.close(close::IDLE_TIMEOUT, "idle timeout");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                if is_too_large(&e) {
                    handle.close(close::TOO_LARGE, "frame too large");
                } else {
                    tracing::debug!(error = %e, "read error");
                    handle.close(close::GOING_AWAY, "read error");
                }
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        let (data, codec) = match message {
            WsMessage::Text(t) => (bytes::Bytes::from(t), Codec::Json),
            WsMessage::Binary(b) => (b, Codec::MsgPack),
            WsMessage::Close(_) => return,
            // Pings are answered by the WebSocket layer; any frame counts as liveness.
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
        };
        #[cfg(feature = "test-hooks")]
        if data.as_ref() == b"__panic__" {
            panic!("test hook: deliberate panic in a session task");
        }
        let reply = match codec.decode::<ClientFrame>(&data) {
            Ok(frame) => ops::handle(state, &ctx, frame).await,
            Err(e) => Some(ServerFrame::error(
                e.rid,
                ErrorCode::BadRequest,
                format!("cannot decode frame: {}", e.message),
            )),
        };
        if let Some(reply) = reply {
            handle.reply(reply).await;
        }
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}

/// How long one batch of writes may take before the peer counts as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, WsMessage>,
    mut queue: mpsc::Receiver<Arc<SharedFrame>>,
    handle: Arc<SessionHandle>,
    batch: usize,
    ping_every: Duration,
) {
    let codec = handle.codec;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut buffered = Vec::with_capacity(batch);
    loop {
        tokio::select! {
            biased;
            n = queue.recv_many(&mut buffered, batch) => {
                if n == 0 {
                    break;
                }
                let write = async {
                    for frame in buffered.drain(..) {
                        sink.feed(to_ws(codec, frame.encoded(codec))).await?;
                    }
                    sink.flush().await
                };
                // A peer that stops reading must not pin the session forever.
                match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        handle.close(close::GOING_AWAY, "write error");
                        return;
                    }
                    Err(_) => {
                        handle.close(close::SLOW_CONSUMER, "write timed out: reconnect and sync");
                        return;
                    }
                }
            }
            _ = handle.closed() => break,
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
                    handle.close(close::GOING_AWAY, "write error");
                    return;
                }
            }
        }
    }
    let (code, reason) = handle
        .close_reason()
        .cloned()
        .unwrap_or((close::GOING_AWAY, "session ended".into()));
    let _ = sink
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })))
        .await;
    let _ = sink.close().await;
}
