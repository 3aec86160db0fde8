//! One simulated device: a task that connects (from a chosen loopback source address),
//! reads `hello`, `sync`s its conversations, sends its streams at their rates, records every
//! delivery, ack and error, drops and reconnects on its churn schedule (or when the server
//! closes it, e.g. as a slow consumer), and stops when the run says so.
//!
//! Frames are read with a borrowing, partial decoder ([`Light`]) so the load generator does
//! not allocate per delivery; only `synced` replies are decoded in full.

use crate::ledger::{ConvTrack, Seen, SessionLedger, Via};
use crate::metrics::{Counters, Metrics};
use crate::plan::{Plan, StreamTarget};
use crate::scenario::CodecName;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientFrame, ConvId, GroupId, MessageKind, Seq, ServerFrame, Target, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Most conversations in one `sync` request (the server's default limit is 200).
const SYNC_CHUNK: usize = 200;
/// How long a connection attempt (TCP + upgrade + hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// What every session task shares.
pub struct Shared {
    /// The plan.
    pub plan: Arc<Plan>,
    /// A token per user.
    pub tokens: Vec<String>,
    /// Nodes, round-robin by session index.
    pub targets: Vec<SocketAddr>,
    /// Loopback source addresses, round-robin by session index.
    pub sources: Vec<IpAddr>,
    /// The codec.
    pub codec: CodecName,
    /// The run's start; timeline seconds count from here.
    pub t0: Instant,
    /// The start as µs since the epoch.
    pub t0_us: u64,
    /// When sends start.
    pub traffic_start: Instant,
    /// When sends stop.
    pub traffic_end: Instant,
    /// When everything stops, drained or not.
    pub hard_stop: Instant,
    /// Where measurements go.
    pub metrics: Arc<Metrics>,
    /// Becomes true when the run is over.
    pub stop: watch::Receiver<bool>,
    /// Padding appended to the timestamp in each body.
    pub pad: String,
    /// Client WebSocket buffers.
    pub ws_config: WebSocketConfig,
    /// How long a churning session stays offline.
    pub offline: Duration,
}

/// µs since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Resolves once the run says stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The fields of a server frame the harness looks at, borrowed from the input.
#[derive(Debug, Deserialize)]
pub struct Light<'a> {
    /// Frame type.
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    /// Conversation.
    #[serde(default, borrow)]
    pub conv: Option<Cow<'a, str>>,
    /// Seq.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Message body.
    #[serde(default, borrow)]
    pub body: Option<Cow<'a, str>>,
    /// Request id.
    #[serde(default, borrow)]
    pub rid: Option<Cow<'a, str>>,
    /// Error code.
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// Heartbeat interval (hello).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

/// Decodes the light view of a frame.
pub fn decode_light(data: &[u8], binary: bool) -> Option<Light<'_>> {
    if binary {
        rmp_serde::from_slice(data).ok()
    } else {
        serde_json::from_slice(data).ok()
    }
}

/// The send timestamp at the start of a body, µs since the epoch.
pub fn body_ts(body: &str) -> Option<u64> {
    body.split(' ').next()?.parse().ok()
}

struct Pending {
    frame: Bytes,
    sent_at: Instant,
    conv: u32,
    resent: bool,
}

enum End {
    Stop,
    Churn,
    Closed,
}

/// One session's state across its connections.
struct Session {
    idx: u32,
    tracks: HashMap<u32, ConvTrack>,
    pending: HashMap<u64, Pending>,
    next_n: u64,
    rng: StdRng,
    connected_once: bool,
    next_send: Vec<Instant>,
    next_churn: Option<Instant>,
}

/// What a finished session hands back.
pub struct Outcome {
    /// Session index.
    pub idx: u32,
    /// Its ledger entry.
    pub ledger: SessionLedger,
    /// Acks it got: (conv, seq).
    pub acks: Vec<(u32, u64)>,
}

fn ws_message(codec: CodecName, bytes: Bytes) -> WsMessage {
    match codec {
        CodecName::Json => match Utf8Bytes::try_from(bytes) {
            Ok(t) => WsMessage::Text(t),
            Err(_) => WsMessage::Text(Utf8Bytes::from_static("{}")),
        },
        CodecName::Msgpack => WsMessage::Binary(bytes),
    }
}

/// Connects session `idx` and returns the socket (the caller reads `hello`).
async fn connect(sh: &Shared, idx: u32) -> Result<Ws, String> {
    let target = sh.targets[idx as usize % sh.targets.len()];
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if target.is_ipv4() {
        let src = sh.sources[idx as usize % sh.sources.len()];
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = sock
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let user = sh.plan.sessions[idx as usize].user as usize;
    let url = format!("ws://{target}/ws?codec={}", sh.codec.query());
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let auth = format!("Bearer {}", sh.tokens[user])
        .parse()
        .map_err(|_| "token is not a header value".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    match tokio_tungstenite::client_async_with_config(req, stream, Some(sh.ws_config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err(format!("http {}", resp.status().as_u16()))
        }
        Err(e) => Err(format!("upgrade: {e}")),
    }
}

/// Runs session `idx` until the run stops.
pub async fn run(sh: Arc<Shared>, idx: u32) -> Outcome {
    let plan = &sh.plan.sessions[idx as usize];
    let mut s = Session {
        idx,
        tracks: plan
            .convs
            .iter()
            .map(|&c| (c, ConvTrack::default()))
            .collect(),
        pending: HashMap::new(),
        next_n: 0,
        rng: StdRng::seed_from_u64(u64::from(idx) ^ 0x9e37_79b9_7f4a_7c15),
        connected_once: false,
        next_send: plan
            .streams
            .iter()
            .map(|st| sh.traffic_start + st.phase)
            .collect(),
        next_churn: plan.churn.as_ref().map(|c| sh.traffic_start + c.phase),
    };
    let mut acks = Vec::new();
    let mut stop = sh.stop.clone();
    let c = &sh.metrics.counters;
    let start = sh.t0 + plan.connect_at;
    tokio::select! {
        _ = sleep_until(start) => {}
        _ = stopped(&mut stop) => {}
    }
    let mut backoff = Duration::from_millis(50);
    while !*stop.borrow() && Instant::now() < sh.hard_stop {
        let began = Instant::now();
        let attempt = tokio::select! {
            r = timeout(CONNECT_TIMEOUT, connect_and_hello(&sh, idx)) => r.unwrap_or_else(|_| Err("timeout".into())),
            _ = stopped(&mut stop) => break,
        };
        let (ws, heartbeat) = match attempt {
            Ok(x) => x,
            Err(e) => {
                c.connect_failures.fetch_add(1, Ordering::Relaxed);
                Counters::bump(&c.error_codes, &format!("connect: {e}"));
                let jitter = s.rng.random_range(0..=backoff.as_millis() as u64);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let setup = began.elapsed().as_micros() as u64;
        sh.metrics
            .with(|r| r.connect.saturating_record(setup.max(1)));
        c.connects.fetch_add(1, Ordering::Relaxed);
        c.connected.fetch_add(1, Ordering::Relaxed);
        if s.connected_once {
            c.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        s.connected_once = true;
        for t in s.tracks.values_mut() {
            t.reconnected();
        }
        let end = drive(&sh, &mut s, &mut acks, ws, heartbeat, &mut stop).await;
        c.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop => break,
            End::Churn => tokio::time::sleep(sh.offline).await,
            End::Closed => {
                let jitter = s.rng.random_range(0..100);
                tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
            }
        }
    }
    Outcome {
        idx,
        ledger: SessionLedger {
            connected: s.connected_once,
            tracks: s.tracks.into_iter().collect(),
        },
        acks,
    }
}

impl Shared {
    /// The second of the timeline `now_us` falls in.
    fn second(&self, now_us: u64) -> usize {
        (now_us.saturating_sub(self.t0_us) / 1_000_000) as usize
    }
}

async fn connect_and_hello(sh: &Shared, idx: u32) -> Result<(Ws, Duration), String> {
    let mut ws = connect(sh, idx).await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                let f = decode_light(t.as_bytes(), false).ok_or("undecodable first frame")?;
                return hello(ws, f);
            }
            Some(Ok(WsMessage::Binary(b))) => {
                let f = decode_light(&b, true).ok_or("undecodable first frame")?;
                return hello(ws, f);
            }
            Some(Ok(WsMessage::Close(c))) => {
                return Err(format!(
                    "closed before hello: {}",
                    c.map(|c| u16::from(c.code)).unwrap_or(0)
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("ended before hello".into()),
        }
    }
}

fn hello(ws: Ws, f: Light<'_>) -> Result<(Ws, Duration), String> {
    if f.ty == "hello" {
        Ok((
            ws,
            Duration::from_millis(f.heartbeat_ms.unwrap_or(30_000).max(1000)),
        ))
    } else {
        Err(format!(
            "expected hello, got {} {}",
            f.ty,
            f.code.as_deref().unwrap_or("")
        ))
    }
}

async fn send_sync(sh: &Shared, ws: &mut Ws, cursors: Vec<(u32, u64)>) -> Result<(), ()> {
    for (k, chunk) in cursors.chunks(SYNC_CHUNK).enumerate() {
        let mut map = BTreeMap::new();
        for &(conv, seq) in chunk {
            if let Ok(id) = ConvId::parse(&sh.plan.convs[conv as usize].id) {
                map.insert(id, Seq(seq));
            }
        }
        let frame = ClientFrame::Sync {
            rid: Some(format!("s{k}")),
            cursors: map,
            limit: None,
        };
        let bytes = sh.codec.codec().encode(&frame);
        ws.send(ws_message(sh.codec, bytes)).await.map_err(|_| ())?;
    }
    Ok(())
}

async fn drive(
    sh: &Shared,
    s: &mut Session,
    acks: &mut Vec<(u32, u64)>,
    mut ws: Ws,
    heartbeat: Duration,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let c = &sh.metrics.counters;
    let plan = &sh.plan.sessions[s.idx as usize];
    // Catch up (and, on a bare broadcaster, join the rooms).
    if !s.tracks.is_empty() {
        let mut cursors: Vec<(u32, u64)> =
            s.tracks.iter().map(|(&c, t)| (c, t.contiguous)).collect();
        cursors.sort_unstable();
        if send_sync(sh, &mut ws, cursors).await.is_err() {
            return End::Closed;
        }
    }
    // Retry what was sent but never acknowledged, with the same client_msg_id.
    if Instant::now() < sh.hard_stop {
        let mut resend: Vec<(u64, Bytes)> = s
            .pending
            .iter()
            .map(|(n, p)| (*n, p.frame.clone()))
            .collect();
        resend.sort_unstable_by_key(|(n, _)| *n);
        for (n, frame) in resend {
            if ws.feed(ws_message(sh.codec, frame)).await.is_err() {
                return End::Closed;
            }
            if let Some(p) = s.pending.get_mut(&n) {
                p.resent = true;
            }
            c.resent.fetch_add(1, Ordering::Relaxed);
        }
        if ws.flush().await.is_err() {
            return End::Closed;
        }
    }
    let now = Instant::now();
    // Sends missed while offline are skipped, not bunched up.
    for (i, st) in plan.streams.iter().enumerate() {
        while s.next_send[i] < now {
            s.next_send[i] += st.interval;
        }
    }
    if let (Some(ch), Some(next)) = (plan.churn.as_ref(), s.next_churn.as_mut()) {
        while *next < now {
            *next += ch.period;
        }
    }
    let far = sh.hard_stop + Duration::from_secs(3600);
    let mut next_ping = now
        + heartbeat / 2
        + Duration::from_millis(s.rng.random_range(0..=heartbeat.as_millis() as u64 / 2));
    loop {
        let (send_i, send_at) = s
            .next_send
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, t)| (i, *t))
            .unwrap_or((0, far));
        let sending = send_at < sh.traffic_end;
        let churn_at = s.next_churn.filter(|t| *t < sh.traffic_end).unwrap_or(far);
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                let _ = timeout(Duration::from_millis(200), ws.close(None)).await;
                return End::Stop;
            }
            _ = sleep_until(sh.hard_stop) => {
                let _ = timeout(Duration::from_millis(200), ws.close(None)).await;
                return End::Stop;
            }
            msg = ws.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(_)) | None => {
                        Counters::bump(&c.close_codes, "0 (no close frame)");
                        return End::Closed;
                    }
                };
                let (data, binary): (&[u8], bool) = match &msg {
                    WsMessage::Text(t) => (t.as_bytes(), false),
                    WsMessage::Binary(b) => (b, true),
                    WsMessage::Close(cf) => {
                        let code = cf.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
                        Counters::bump(&c.close_codes, &code.to_string());
                        return End::Closed;
                    }
                    _ => continue,
                };
                c.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(more) = handle_frame(sh, s, acks, data, binary) {
                    if send_sync(sh, &mut ws, more).await.is_err() {
                        return End::Closed;
                    }
                }
            }
            _ = sleep_until(send_at), if sending => {
                let st = &plan.streams[send_i];
                s.next_send[send_i] += st.interval;
                let Some((conv, frame, n)) = build_send(sh, s, st.target) else { continue };
                if ws.send(ws_message(sh.codec, frame.clone())).await.is_err() {
                    // Not written: not sent. Keep it for the retry after reconnecting anyway.
                    s.pending.insert(n, Pending { frame, sent_at: Instant::now(), conv, resent: true });
                    c.outstanding.fetch_add(1, Ordering::Relaxed);
                    return End::Closed;
                }
                s.pending.insert(n, Pending { frame, sent_at: Instant::now(), conv, resent: false });
                c.sent.fetch_add(1, Ordering::Relaxed);
                c.outstanding.fetch_add(1, Ordering::Relaxed);
                let sec = sh.second(now_us());
                sh.metrics.with(|r| r.bucket(sec).sent += 1);
                next_ping = Instant::now() + heartbeat / 2;
            }
            _ = sleep_until(churn_at), if churn_at < far => {
                if let (Some(ch), Some(next)) = (plan.churn.as_ref(), s.next_churn.as_mut()) {
                    *next += ch.period;
                }
                let _ = timeout(Duration::from_millis(200), ws.close(None)).await;
                return End::Churn;
            }
            _ = sleep_until(next_ping) => {
                next_ping = Instant::now() + heartbeat / 2;
                let bytes = sh.codec.codec().encode(&ClientFrame::Ping { rid: None });
                if ws.send(ws_message(sh.codec, bytes)).await.is_err() {
                    return End::Closed;
                }
            }
        }
    }
}

fn build_send(sh: &Shared, s: &mut Session, target: StreamTarget) -> Option<(u32, Bytes, u64)> {
    let plan = &sh.plan;
    let me = plan.sessions[s.idx as usize].user as usize;
    let (conv, to) = match target {
        StreamTarget::Group(g) => (
            plan.groups[g as usize].conv,
            Target::Group(GroupId::new(plan.group_id(g))),
        ),
        StreamTarget::Contacts => {
            let contacts = &plan.contacts[me];
            if contacts.is_empty() {
                return None;
            }
            let (peer, conv) = contacts[s.rng.random_range(0..contacts.len())];
            (
                conv,
                Target::User(UserId::new(plan.users[peer as usize].clone())),
            )
        }
    };
    let n = s.next_n;
    s.next_n += 1;
    let frame = ClientFrame::Send(protocol::SendFrame {
        rid: Some(n.to_string()),
        client_msg_id: format!("{}-{n}", s.idx),
        to,
        kind: MessageKind::Text,
        body: format!("{} {}", now_us(), sh.pad),
        attachment: None,
        mentions: Vec::new(),
        reply_to: None,
    });
    Some((conv, sh.codec.codec().encode(&frame), n))
}

/// Handles one frame; returns further sync cursors when a `synced` entry has more.
fn handle_frame(
    sh: &Shared,
    s: &mut Session,
    acks: &mut Vec<(u32, u64)>,
    data: &[u8],
    binary: bool,
) -> Option<Vec<(u32, u64)>> {
    let c = &sh.metrics.counters;
    let Some(f) = decode_light(data, binary) else {
        Counters::bump(&c.error_codes, "undecodable frame");
        return None;
    };
    match f.ty.as_ref() {
        "message" => {
            let conv = f
                .conv
                .as_deref()
                .and_then(|id| sh.plan.conv_index.get(id))
                .copied();
            let Some(conv) = conv else {
                Counters::bump(&c.error_codes, "message in an unknown conversation");
                return None;
            };
            let seq = f.seq.unwrap_or(0);
            let track = s.tracks.entry(conv).or_default();
            if track.record(seq, Via::Live) != Seen::Duplicate {
                c.delivered.fetch_add(1, Ordering::Relaxed);
                let now = now_us();
                let sent = f.body.as_deref().and_then(body_ts).unwrap_or(now);
                let lat = now.saturating_sub(sent).max(1);
                let sec = sh.second(now);
                sh.metrics.with(|r| {
                    r.e2e.saturating_record(lat);
                    let b = r.bucket(sec);
                    b.delivered += 1;
                    b.latency.saturating_record(lat);
                });
            }
        }
        "ack" => {
            let n: Option<u64> = f.rid.as_deref().and_then(|r| r.parse().ok());
            let p = n.and_then(|n| s.pending.remove(&n))?;
            c.outstanding.fetch_sub(1, Ordering::Relaxed);
            c.acked.fetch_add(1, Ordering::Relaxed);
            c.expected
                .fetch_add(sh.plan.fanout_of(p.conv), Ordering::Relaxed);
            if let Some(seq) = f.seq {
                acks.push((p.conv, seq));
                s.tracks.entry(p.conv).or_default().record(seq, Via::Ack);
            }
            let sec = sh.second(now_us());
            let lat = p.sent_at.elapsed().as_micros() as u64;
            sh.metrics.with(|r| {
                if !p.resent {
                    r.ack.saturating_record(lat.max(1));
                }
                r.bucket(sec).acked += 1;
            });
        }
        "error" => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            Counters::bump(&c.error_codes, f.code.as_deref().unwrap_or("?"));
            let n: Option<u64> = f.rid.as_deref().and_then(|r| r.parse().ok());
            if n.and_then(|n| s.pending.remove(&n)).is_some() {
                c.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        "synced" => {
            let frame: Result<ServerFrame, _> = if binary {
                protocol::Codec::MsgPack.decode(data)
            } else {
                protocol::Codec::Json.decode(data)
            };
            let Ok(ServerFrame::Synced { conversations, .. }) = frame else {
                Counters::bump(&c.error_codes, "undecodable synced");
                return None;
            };
            let mut more = Vec::new();
            for entry in conversations {
                let Some(&conv) = sh.plan.conv_index.get(entry.conv.as_str()) else {
                    continue;
                };
                let track = s.tracks.entry(conv).or_default();
                let mut last = 0;
                for m in &entry.messages {
                    last = last.max(m.seq.0);
                    if track.record(m.seq.0, Via::Sync) == Seen::Fresh {
                        c.recovered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if entry.has_more && last > 0 {
                    more.push((conv, last));
                }
            }
            if !more.is_empty() {
                return Some(more);
            }
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_decoding_reads_both_codecs() {
        let m = ServerFrame::Message(protocol::Message {
            conv: ConvId::parse("group:g1").unwrap(),
            seq: Seq(7),
            id: protocol::MessageId::new("x"),
            from: UserId::new("a"),
            kind: MessageKind::Text,
            body: "1700000000000000 pad\"ding".into(),
            attachment: None,
            ts: 1,
            mentions: vec![],
            reply_to: None,
            mentioned: false,
        });
        for (codec, binary) in [
            (protocol::Codec::Json, false),
            (protocol::Codec::MsgPack, true),
        ] {
            let bytes = codec.encode(&m);
            let f = decode_light(&bytes, binary).unwrap();
            assert_eq!(f.ty, "message");
            assert_eq!(f.conv.as_deref(), Some("group:g1"));
            assert_eq!(f.seq, Some(7));
            assert_eq!(
                f.body.as_deref().and_then(body_ts),
                Some(1_700_000_000_000_000)
            );
        }
    }
}
