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
use crate::hub::{Registration, SessionHandle, SharedFrame, TokenRef};
use crate::ops::{self, SessionCtx};
use crate::state::AppState;
use crate::ws_handshake::{SocketSink, SocketStream, WsHandshake};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use protocol::{close, ClientFrame, Codec, ErrorCode, ServerFrame, UserId, PROTOCOL_VERSION};
use serde::Deserialize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tracing::Instrument;

/// Query parameters of `GET /ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// The JWT, when not in the Authorization header.
    token: Option<String>,
    /// `json` (default) or `msgpack`.
    codec: Option<String>,
    /// A name for this device, shown in the user's session list (else the `User-Agent`).
    device: Option<String>,
}

/// The device name a session is listed under: `?device=`, else the `User-Agent` header,
/// without control characters and cut to 64 characters.
fn device_name(query: Option<&str>, headers: &HeaderMap) -> Box<str> {
    let raw = query.unwrap_or_else(|| {
        headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    });
    raw.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .into_boxed_str()
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
    ws: WsHandshake,
) -> Response {
    if !crate::listener::origin_allowed(&state.config.server.allowed_origins, &headers) {
        return ApiError::forbidden(
            "this Origin may not open a WebSocket (server.allowed_origins)",
        )
        .into_response();
    }
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
    if state.health.is_closing() {
        crate::metrics::budget_refused("draining");
        return ApiError::new(ErrorCode::Unavailable, "this node is draining").into_response();
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        crate::metrics::budget_refused("sessions");
        return ApiError::new(
            ErrorCode::Unavailable,
            "this node is at its connection limit",
        )
        .into_response();
    };
    let token_ref = TokenRef {
        id: claims.token_id(&token).into(),
        iat: claims.iat,
        exp: claims.exp,
    };
    let user = UserId::new(claims.sub);
    if let Err(e) = state.check_account(&user, claims.iat, &token_ref.id).await {
        return e.into_response();
    }
    if let Err(e) = state.touch_user(&user).await {
        return e.into_response();
    }
    let device = device_name(query.device.as_deref(), &headers);
    let limits = &state.config.limits;
    let server = &state.config.server;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        .read_buffer_size(server.ws_read_buffer)
        .write_buffer_size(server.ws_write_buffer);
    let rate = state.read_rate;
    ws.accept(config, rate, move |sink, stream| {
        run(
            state,
            (sink, stream),
            user,
            codec,
            device,
            token_ref,
            permit,
        )
    })
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
    (mut sink, stream): (SocketSink, SocketStream),
    user: UserId,
    codec: Codec,
    device: Box<str>,
    token: TokenRef,
    _permit: OwnedSemaphorePermit,
) {
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    // Debug level: at the default `info` filter a session stores no span (about 0.4 KiB per
    // connection, measured); warnings about a session name it themselves.
    let span = tracing::debug_span!("session", session = %session_id, user = %user);
    async move {
        let (handle, queue) = SessionHandle::new(
            session_id,
            user,
            codec,
            device,
            token,
            state.config.server.outbound_queue,
        );
        // `hello` is queued before the session is registered for deliveries, so it is always
        // the first frame (the queue is empty: this never waits).
        handle
            .reply(ServerFrame::Hello {
                session_id: handle.id.clone(),
                user: handle.user.clone(),
                heartbeat_ms: state.config.server.heartbeat_ms,
                protocol: PROTOCOL_VERSION,
                max_frame_bytes: state.config.limits.max_frame_bytes,
            })
            .await;
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
                        code: CloseCode::from(close::RATE_LIMITED),
                        reason: Utf8Bytes::from_static("too many sessions"),
                    })))
                    .await;
                return;
            }
        };
        tracing::debug!("session open");
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
        let stream = read_loop(&state, stream, &handle, handle.token.exp).await;
        drop(registration);
        // After a broken frame the client may still be sending: keep reading (and
        // discarding) for a moment, so the socket is not closed with unread data (a TCP
        // reset that could destroy the close frame before the client reads it).
        let broken = handle.close_reason().is_some_and(|(code, _)| {
            matches!(
                *code,
                close::PROTOCOL_ERROR | close::INVALID_PAYLOAD | close::TOO_LARGE
            )
        });
        if broken {
            let _ = tokio::join!(writer, linger(stream));
        } else {
            drop(stream);
            let _ = writer.await;
        }
        tracing::debug!(reason = ?handle.close_reason(), "session closed");
    }
    .instrument(span)
    .await
}

/// Most `send`s of one session that may wait for their durable append at once (embedded
/// store). Each holds an ack slot; the reader stops reading while all are taken.
const PIPELINE_DEPTH: usize = 16;

type InFlight<'a> = FuturesOrdered<
    Pin<Box<dyn std::future::Future<Output = Option<Arc<SharedFrame>>> + Send + 'a>>,
>;

/// Reads the session's frames until it ends; returns the read half (see [`linger`]).
async fn read_loop(
    state: &AppState,
    mut stream: SocketStream,
    handle: &Arc<SessionHandle>,
    token_exp: u64,
) -> SocketStream {
    let ctx = SessionCtx::new(
        handle.clone(),
        state.config.limits.send_per_sec,
        state.config.limits.send_burst,
    );
    read_frames(state, &ctx, &mut stream, handle, token_exp).await;
    // Read cursors the rate held back are still stored and published: the final one counts.
    ops::flush_reads(state, &ctx, true).await;
    stream
}

/// How long the socket stays open after a broken frame closed the session.
const LINGER: Duration = Duration::from_secs(1);

/// A lingering close (RFC 6455 section 7.1.1): keeps the socket open for at most [`LINGER`]
/// after the close frame was sent, reading and discarding what the peer still sends, until
/// the peer answers with its own close. Closing a socket whose receive buffer holds unread
/// data (the rest of an oversized frame) sends a TCP reset, and a reset makes the peer's
/// kernel drop the close frame it has not read yet; so when the WebSocket layer stops reading
/// after the broken frame (its stream ends or repeats the error), the socket is still held
/// open until the deadline.
async fn linger(mut stream: SocketStream) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let drain = async {
        loop {
            match stream.next().await {
                // The peer answered the close: it has read ours.
                Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

async fn read_frames(
    state: &AppState,
    ctx: &SessionCtx,
    stream: &mut SocketStream,
    handle: &Arc<SessionHandle>,
    token_exp: u64,
) {
    // Sends are pipelined only where the store keeps one writer's order (embedded); other
    // backends get one send at a time, as before.
    let depth = if state.store.keeps_append_order() {
        PIPELINE_DEPTH
    } else {
        1
    };
    let mut order = crate::order::SendOrder::default();
    // Allocated at the first send: an idle session carries none of it.
    let mut in_flight: Option<InFlight<'_>> = None;
    let idle = Duration::from_millis(state.config.server.idle_timeout_ms.max(100));
    let expires_in = Duration::from_secs(token_exp.saturating_sub(now_secs()));
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    // One idle timer, moved only when it fires, rather than a new timer for every frame.
    let mut last_frame = tokio::time::Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // Made once: a new cancellation future per frame registers and unregisters with the
    // token each time (a lock each way).
    let closed = handle.closed();
    tokio::pin!(closed);
    loop {
        let pending = in_flight.as_ref().map_or(0, |f| f.len());
        let reads_due = ctx.reads_due();
        let next = tokio::select! {
            _ = &mut closed => return,
            _ = &mut expiry => {
                handle.close(close::TOKEN_EXPIRED, "token expired");
                return;
            }
            Some(reply) = next_reply(&mut in_flight), if pending > 0 => {
                if let Some(reply) = reply {
                    handle.reply_shared(reply).await;
                }
                continue;
            }
            _ = &mut idle_timer => {
                let now = tokio::time::Instant::now();
                if pending == 0 && now >= last_frame + idle {
                    handle.close(close::IDLE_TIMEOUT, "idle timeout");
                    return;
                }
                let base = if pending == 0 { last_frame } else { now };
                idle_timer.as_mut().reset(base + idle);
                continue;
            }
            _ = sleep_until(reads_due), if reads_due.is_some() => {
                ops::flush_reads(state, ctx, false).await;
                continue;
            }
            // The socket under `stream` is read at the session's frame budget (frame_meter.rs).
            next = stream.next(), if pending < depth => next,
        };
        last_frame = tokio::time::Instant::now();
        let message = match next {
            None => return,
            Some(Err(e)) => {
                let (code, reason) = read_error_close(e);
                handle.close(code, reason);
                return;
            }
            Some(Ok(m)) => m,
        };
        let (data, codec) = match message {
            WsMessage::Text(t) => (bytes::Bytes::from(t), Codec::Json),
            WsMessage::Binary(b) => (b, Codec::MsgPack),
            WsMessage::Close(_) => return,
            // Pings are answered by the WebSocket layer; any frame counts as liveness.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
        };
        #[cfg(feature = "test-hooks")]
        if data.as_ref() == b"__panic__" {
            panic!("test hook: deliberate panic in a session task");
        }
        let frame = match codec.decode::<ClientFrame>(&data) {
            Ok(frame) => frame,
            Err(e) => {
                crate::metrics::frame_in_invalid();
                if !drain(&mut in_flight, handle).await {
                    return;
                }
                let reply = ServerFrame::error(
                    e.rid,
                    ErrorCode::BadRequest,
                    format!("cannot decode frame: {}", e.message),
                );
                handle.reply(reply).await;
                continue;
            }
        };
        let frame = match frame {
            ClientFrame::Send(req) => {
                // Pipelined: each send waits for the previous one to enter the store, and the
                // replies come out of `in_flight` in send order.
                let ticket = order.next_ticket();
                let send = async move {
                    ticket.wait_turn().await;
                    ops::send_in_order(state, ctx, req, &ticket).await
                };
                in_flight
                    .get_or_insert_with(FuturesOrdered::new)
                    .push_back(Box::pin(send));
                continue;
            }
            frame => frame,
        };
        // Anything else sees the effects of every earlier send, as without pipelining.
        // Heavy requests (`sync`, `history`, `conversations`) run one at a time here, and
        // each holds the session's heavy slot until its reply is written (ops.rs).
        if !drain(&mut in_flight, handle).await {
            return;
        }
        // Boxed: the reader task's future need not be sized for the largest handler, which
        // an idle session would carry for nothing.
        if let Some(reply) = Box::pin(ops::handle(state, ctx, frame)).await {
            handle.reply_shared(reply).await;
        }
    }
}

async fn next_reply(in_flight: &mut Option<InFlight<'_>>) -> Option<Option<Arc<SharedFrame>>> {
    match in_flight {
        Some(f) => f.next().await,
        None => None,
    }
}

/// Waits for every pipelined send and queues their replies in order; `false` when the
/// session closed meanwhile.
async fn drain(in_flight: &mut Option<InFlight<'_>>, handle: &SessionHandle) -> bool {
    let Some(f) = in_flight else { return true };
    loop {
        let reply = tokio::select! {
            _ = handle.closed() => return false,
            r = f.next() => r,
        };
        match reply {
            None => return true,
            Some(Some(reply)) => handle.reply_shared(reply).await,
            Some(None) => {}
        }
    }
}

/// The close code for a failed read, by the WebSocket layer's error type: a message or
/// frame over the limit is 1009, invalid UTF-8 in a text message 1007, any other RFC 6455
/// violation (unmasked client frame, reserved opcode or bits, bad fragmentation, a control
/// frame too long or fragmented) 1002; a broken connection gets 1001 (nobody reads it).
fn read_error_close(e: WsError) -> (u16, &'static str) {
    match e {
        WsError::Capacity(_) => (close::TOO_LARGE, "frame too large"),
        WsError::Utf8(_) => (close::INVALID_PAYLOAD, "invalid UTF-8 in a text frame"),
        WsError::Protocol(p) => {
            tracing::debug!(error = %p, "protocol violation");
            (close::PROTOCOL_ERROR, "WebSocket protocol violation")
        }
        other => {
            tracing::debug!(error = %other, "read error");
            (close::GOING_AWAY, "read error")
        }
    }
}

/// How long one batch of writes may take before the peer counts as a slow consumer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the close frame (after what the socket layer already holds) may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn write_loop(
    mut sink: SocketSink,
    mut queue: mpsc::Receiver<Arc<SharedFrame>>,
    handle: Arc<SessionHandle>,
    batch: usize,
    ping_every: Duration,
) {
    let codec = handle.codec;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    // Grows at the first delivery: an idle session holds no batch buffer.
    let mut buffered = Vec::new();
    // Made once, not per batch (see `read_frames`).
    let closed = handle.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            // Closing wins over queued frames: they are dropped, the close frame goes next.
            _ = &mut closed => break,
            n = queue.recv_many(&mut buffered, batch) => {
                if n == 0 {
                    break;
                }
                crate::metrics::frames_out(codec, n, queue.len());
                let write = async {
                    for frame in buffered.drain(..) {
                        sink.feed(to_ws(codec, frame.encoded(codec))).await?;
                    }
                    sink.flush().await
                };
                match bounded_write(write, &handle).await {
                    Written::Done => {}
                    Written::Stopped => break,
                    Written::Failed => return,
                }
            }
            _ = ping.tick() => {
                let write = sink.send(WsMessage::Ping(bytes::Bytes::new()));
                match bounded_write(write, &handle).await {
                    Written::Done => {}
                    Written::Stopped => break,
                    Written::Failed => return,
                }
            }
        }
    }
    // Stop writing queued frames (and give their reply budgets back) before the close frame.
    buffered.clear();
    queue.close();
    while queue.try_recv().is_ok() {}
    let (code, reason) = handle
        .close_reason()
        .cloned()
        .unwrap_or((close::GOING_AWAY, "session ended".into()));
    // A frame cut off by the close is still whole in the WebSocket layer's buffer, so the
    // close frame follows it; the client sees it once it reads that far, if it does so
    // within the deadline.
    let goodbye = async {
        sink.send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason),
        })))
        .await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
}

/// How a write against the peer ended.
enum Written {
    /// Written; go on.
    Done,
    /// The session is closing: made no progress for [`WRITE_TIMEOUT`] (closed as a slow
    /// consumer) or closed meanwhile (the write is abandoned, so the close frame is not
    /// stuck behind the rest of the queue). The close frame should follow.
    Stopped,
    /// The socket failed: nothing more can be written.
    Failed,
}

/// Runs one write against the peer, bounded by [`WRITE_TIMEOUT`] and the session's closing.
async fn bounded_write<F>(write: F, handle: &SessionHandle) -> Written
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    let mut write = std::pin::pin!(write);
    // Most writes finish at the first poll: those need no timer.
    let outcome = match futures_util::FutureExt::now_or_never(write.as_mut()) {
        Some(done) => Ok(done),
        None => tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => r,
            _ = handle.closed() => return Written::Stopped,
        },
    };
    match outcome {
        Ok(Ok(())) => Written::Done,
        Ok(Err(_)) => {
            handle.close(close::GOING_AWAY, "write error");
            Written::Failed
        }
        Err(_) => {
            crate::metrics::slow_consumer(crate::metrics::SlowReason::WriteTimeout);
            handle.close(close::SLOW_CONSUMER, "write timed out: reconnect and sync");
            Written::Stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_cleaned_and_cut() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::USER_AGENT,
            "  ChatApp/2.1 (iPhone)  ".parse().unwrap(),
        );
        assert_eq!(&*device_name(None, &headers), "ChatApp/2.1 (iPhone)");
        assert_eq!(&*device_name(Some("pad\u{7}\nmini"), &headers), "padmini");
        let long = "x".repeat(100);
        assert_eq!(device_name(Some(&long), &headers).chars().count(), 64);
        assert_eq!(&*device_name(None, &HeaderMap::new()), "");
    }
}
