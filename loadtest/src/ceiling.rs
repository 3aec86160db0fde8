//! A bare tokio-tungstenite room broadcaster, the ceiling chatd is measured against.
//!
//! It speaks just enough of protocol v1 for the harness to drive the same scenarios: `hello`
//! on connect, `send` -> `ack` with a per-conversation seq and a `message` to every other
//! session in the room (or of the direct conversation's two users), `sync` (which joins the
//! rooms named in its cursors and answers an empty `synced`), and `ping` -> `pong`. There is
//! no persistence, no moderation, no authentication (the token's `sub` is read, not
//! verified) and no rate limit; like chatd, each session has a bounded outbound queue, a
//! writer task that batches flushes, and a full queue closes the session with 4000.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    close, ClientFrame, Codec, ConvId, Message, MessageId, Seq, ServerFrame, SyncedConv, Target,
    UserId,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// Outbound queue per session (chatd's default `server.outbound_queue`).
const QUEUE: usize = 1024;
/// Frames per flush (chatd's default `server.write_batch`).
const BATCH: usize = 64;

/// A frame encoded at most once per codec.
struct Shared {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl Shared {
    fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    fn encoded(&self, codec: Codec) -> Bytes {
        let cell = if codec == Codec::Json {
            &self.json
        } else {
            &self.msgpack
        };
        cell.get_or_init(|| codec.encode(&self.frame)).clone()
    }
}

struct Conn {
    id: u64,
    user: String,
    tx: mpsc::Sender<Arc<Shared>>,
    closed: AtomicBool,
    close_code: AtomicU64,
    notify: Notify,
}

impl Conn {
    fn push(&self, f: Arc<Shared>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(f) {
            self.close(close::SLOW_CONSUMER);
        }
    }

    fn close(&self, code: u16) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_code.store(u64::from(code), Ordering::Release);
        }
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<Arc<Conn>>,
}

/// Deliberate faults, for proving that the harness notices them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Drop every n-th delivery (0: never).
    pub drop_every: u64,
    /// Deliver every n-th delivery twice (0: never).
    pub duplicate_every: u64,
}

#[derive(Default)]
struct State {
    rooms: Mutex<HashMap<String, Room>>,
    users: Mutex<HashMap<String, Vec<Arc<Conn>>>>,
    next: AtomicU64,
    faults: Faults,
    deliveries: AtomicU64,
}

impl State {
    fn deliver(&self, to: &Conn, f: &Arc<Shared>) {
        let (d, u) = (self.faults.drop_every, self.faults.duplicate_every);
        if d > 0 || u > 0 {
            let k = self.deliveries.fetch_add(1, Ordering::Relaxed) + 1;
            if k.checked_rem(d) == Some(0) {
                return;
            }
            if k.checked_rem(u) == Some(0) {
                to.push(f.clone());
            }
        }
        to.push(f.clone());
    }
}

/// The `sub` claim of a JWT, read without verifying it.
pub fn jwt_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_owned)
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, faults: Faults) -> std::io::Result<()> {
    let state = Arc::new(State {
        faults,
        ..State::default()
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = session(state, stream).await {
                tracing::debug!(error = %e, "session ended");
            }
        });
    }
}

/// Binds `addr` and logs `listening addr=...` (the line the harness waits for).
pub async fn run(addr: SocketAddr, faults: Faults) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, ?faults, "listening");
    serve(listener, faults).await?;
    Ok(())
}

fn to_ws(codec: Codec, b: Bytes) -> WsMessage {
    if codec.is_text() {
        WsMessage::Text(Utf8Bytes::try_from(b).unwrap_or_else(|_| Utf8Bytes::from_static("{}")))
    } else {
        WsMessage::Binary(b)
    }
}

fn now_ms() -> u64 {
    crate::client::now_us() / 1000
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn session(state: Arc<State>, stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut codec = Codec::Json;
    let mut user = String::new();
    let cb = |req: &Request, resp: Response| {
        if req
            .uri()
            .query()
            .is_some_and(|q| q.contains("codec=msgpack"))
        {
            codec = Codec::MsgPack;
        }
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| {
                req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("token="))
                        .map(str::to_owned)
                })
            });
        user = token
            .as_deref()
            .and_then(jwt_sub)
            .unwrap_or_else(|| "anonymous".into());
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Arc<Shared>>(QUEUE);
    let conn = Arc::new(Conn {
        id: state.next.fetch_add(1, Ordering::Relaxed),
        user: user.clone(),
        tx,
        closed: AtomicBool::new(false),
        close_code: AtomicU64::new(u64::from(close::GOING_AWAY)),
        notify: Notify::new(),
    });
    state
        .users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(user.clone())
        .or_default()
        .push(conn.clone());
    conn.push(Shared::new(ServerFrame::Hello {
        session_id: conn.id.to_string(),
        user: UserId::new(user.clone()),
        heartbeat_ms: 30_000,
        protocol: protocol::PROTOCOL_VERSION,
        max_frame_bytes: 65_536,
    }));
    let wconn = conn.clone();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                _ = wconn.notify.notified() => break,
                n = rx.recv_many(&mut buf, BATCH) => {
                    if n == 0 { break; }
                    for f in buf.drain(..) {
                        if sink.feed(to_ws(codec, f.encoded(codec))).await.is_err() { return; }
                    }
                    if sink.flush().await.is_err() { return; }
                }
            }
        }
        let code = wconn.close_code.load(Ordering::Acquire) as u16;
        let _ = sink
            .send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static("closing"),
            })))
            .await;
    });
    let mut joined: Vec<String> = Vec::new();
    while let Some(msg) = stream.next().await {
        if conn.closed.load(Ordering::Acquire) {
            break;
        }
        let (data, c) = match msg {
            Ok(WsMessage::Text(t)) => (Bytes::from(t), Codec::Json),
            Ok(WsMessage::Binary(b)) => (b, Codec::MsgPack),
            Ok(WsMessage::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(frame) = c.decode::<ClientFrame>(&data) else {
            continue;
        };
        match frame {
            ClientFrame::Send(protocol::SendFrame {
                rid,
                client_msg_id,
                to,
                kind,
                body,
                ..
            }) => {
                let me = UserId::new(user.clone());
                let (conv, other) = match &to {
                    Target::Group(g) => (ConvId::group(g), None),
                    Target::User(u) => (ConvId::direct(&me, u), Some(u.clone())),
                };
                let ts = now_ms();
                let id = MessageId::new(format!("{}-{}", conn.id, client_msg_id));
                let mut rooms = state.rooms.lock().unwrap_or_else(PoisonError::into_inner);
                let room = rooms.entry(conv.as_str().to_owned()).or_default();
                room.seq += 1;
                let seq = Seq(room.seq);
                let frame = Shared::new(ServerFrame::Message(Message {
                    conv: conv.clone(),
                    seq,
                    id: id.clone(),
                    from: me.clone(),
                    kind,
                    body,
                    attachment: None,
                    ts,
                    mentions: Vec::new(),
                    reply_to: None,
                    mentioned: false,
                }));
                match other {
                    None => {
                        for m in &room.members {
                            if m.id != conn.id {
                                state.deliver(m, &frame);
                            }
                        }
                    }
                    Some(other) => {
                        let users = state.users.lock().unwrap_or_else(PoisonError::into_inner);
                        for u in [me.as_str(), other.as_str()] {
                            for m in users.get(u).into_iter().flatten() {
                                if m.id != conn.id {
                                    state.deliver(m, &frame);
                                }
                            }
                            if me == other {
                                break;
                            }
                        }
                    }
                }
                drop(rooms);
                conn.push(Shared::new(ServerFrame::Ack {
                    rid,
                    client_msg_id,
                    conv,
                    seq: Some(seq),
                    id,
                    ts,
                    duplicate: false,
                    moderation: None,
                }));
            }
            ClientFrame::Sync { rid, cursors, .. } => {
                let mut rooms = state.rooms.lock().unwrap_or_else(PoisonError::into_inner);
                let mut out = Vec::new();
                for conv in cursors.keys() {
                    if conv.group_id().is_some() && !joined.iter().any(|j| j == conv.as_str()) {
                        rooms
                            .entry(conv.as_str().to_owned())
                            .or_default()
                            .members
                            .push(conn.clone());
                        joined.push(conv.as_str().to_owned());
                    }
                    out.push(SyncedConv {
                        conv: conv.clone(),
                        messages: Vec::new(),
                        has_more: false,
                        min_seq: None,
                    });
                }
                drop(rooms);
                conn.push(Shared::new(ServerFrame::Synced {
                    rid,
                    conversations: out,
                }));
            }
            ClientFrame::Ping { rid } => conn.push(Shared::new(ServerFrame::Pong { rid })),
            _ => {}
        }
    }
    {
        let mut rooms = state.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        for j in &joined {
            if let Some(r) = rooms.get_mut(j) {
                r.members.retain(|m| m.id != conn.id);
            }
        }
    }
    if let Some(list) = state
        .users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(&conn.user)
    {
        list.retain(|m| m.id != conn.id);
    }
    conn.close(close::GOING_AWAY);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sub_of_a_token() {
        let t = crate::setup::token("s", "alice.b-1", std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(jwt_sub(&t).as_deref(), Some("alice.b-1"));
        assert_eq!(jwt_sub("nope"), None);
    }
}
