//! A live session against a real in-process node: the input is turned (with `arbitrary`) into
//! a sequence of client frames, valid and broken, JSON and MessagePack, sent over a real
//! WebSocket to a node (`gateway::server::Node`, embedded store in a temp dir, local router)
//! started once per process in a static tokio runtime. Invariants:
//!
//! - the node never panics (libFuzzer aborts on a panic in any thread, session tasks included);
//! - the first frame is `hello`; every frame the server sends decodes as a `ServerFrame` in
//!   the session's codec and WebSocket frame kind;
//! - every request with a `rid` (but `read`, which has no reply on success) is answered with
//!   its reply type or an `error` carrying that rid, within `REPLY_TIMEOUT`;
//! - no `internal` error (the protocol reserves it for server bugs);
//! - the server never closes the session, except with 1009 after a frame over
//!   `limits.max_frame_bytes`;
//! - afterwards a fresh client connects and gets `pong` for a `ping`.
//!
//! Users `fuzz_a` (a company administrator and owner of a group), `fuzz_b` (a member of it)
//! and `fuzz_c` (neither) exist from the start.
#![no_main]

use arbitrary::Arbitrary;
use futures_util::{SinkExt, StreamExt};
use gateway::config::Config;
use gateway::server::Node;
use libfuzzer_sys::fuzz_target;
use protocol::{
    Attachment, ClientFrame, Codec, ConvId, ErrorCode, GroupId, MessageKind, SendFrame, Seq,
    ServerFrame, Target, UserId,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

/// How long a reply may take (generous: the fuzzer shares a loaded 2-core machine).
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Most steps run from one input.
const MAX_STEPS: usize = 48;
const USERS: [&str; 3] = ["fuzz_a", "fuzz_b", "fuzz_c"];

struct Harness {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    tokens: Vec<String>,
    group: GroupId,
    max_frame_bytes: usize,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| start().unwrap_or_else(|e| panic!("starting the node: {e:#}")))
}

fn start() -> anyhow_lite::Result<Harness> {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHATD_") {
            std::env::remove_var(k);
        }
    }
    // In $TMPDIR (scripts/fuzz.sh points it at a RAM disk it removes afterwards): every
    // acknowledged send is fsynced.
    let data = tempfile::Builder::new()
        .prefix("chatd-fuzz-session-")
        .tempdir()?
        .keep();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.data_dir = data;
    config.moderation.rules_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/moderation");
    config.moderation.reload_poll_ms = 0;
    config.auth.admins = vec![USERS[0].into()];
    let max_frame_bytes = config.limits.max_frame_bytes;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (addr, tokens) = rt.block_on(async {
        let node = Node::bind(config, tokio_util::sync::CancellationToken::new())
            .await
            .map_err(|e| format!("{e:#}"))?;
        let addr = node.local_addr()?;
        let auth = &node.state().0.auth;
        let mut tokens = Vec::new();
        for u in USERS {
            tokens.push(
                auth.mint(&UserId::new(u), None)
                    .map_err(|e| e.to_string())?,
            );
        }
        tokio::spawn(async move {
            if let Err(e) = node.serve().await {
                panic!("node stopped: {e:#}");
            }
        });
        Ok::<_, anyhow_lite::Error>((addr, tokens))
    })?;
    let group = rt.block_on(async {
        // Every user becomes known to the node with its first authenticated request.
        for t in &tokens {
            http(addr, t, "GET", "/v1/groups", "").await?;
        }
        let body = r#"{"name":"fuzz","members":["fuzz_b"]}"#;
        let reply = http(addr, &tokens[0], "POST", "/v1/groups", body).await?;
        let json = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(json)?;
        let id = v["id"].as_str().ok_or(format!("no group id in {reply}"))?;
        Ok::<_, anyhow_lite::Error>(GroupId::new(id))
    })?;
    Ok(Harness {
        rt,
        addr,
        tokens,
        group,
        max_frame_bytes,
    })
}

/// Errors of the harness's own set-up (not findings).
mod anyhow_lite {
    pub type Error = Box<dyn std::error::Error + Send + Sync>;
    pub type Result<T> = std::result::Result<T, Error>;
}

/// One HTTP/1.1 request with `Connection: close`; returns the whole response.
async fn http(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow_lite::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(REPLY_TIMEOUT, s.read_to_string(&mut out)).await??;
    if !out.starts_with("HTTP/1.1 2") {
        return Err(format!("{method} {path}: {out}").into());
    }
    Ok(out)
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum UserSpec {
    A,
    B,
    C,
    Unknown,
    All,
}

impl UserSpec {
    fn id(self) -> UserId {
        UserId::new(match self {
            UserSpec::A => "fuzz_a",
            UserSpec::B => "fuzz_b",
            UserSpec::C => "fuzz_c",
            UserSpec::Unknown => "nobody",
            UserSpec::All => "all",
        })
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum ConvSpec {
    Dm(UserSpec, UserSpec),
    Group,
    OtherGroup(u8),
}

impl ConvSpec {
    fn conv(&self, h: &Harness) -> ConvId {
        match self {
            ConvSpec::Dm(a, b) => ConvId::direct(&a.id(), &b.id()),
            ConvSpec::Group => ConvId::group(&h.group),
            ConvSpec::OtherGroup(n) => ConvId::group(&GroupId::new(format!("g{n}"))),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SeqSpec {
    Small(u8),
    Any(u64),
}

impl SeqSpec {
    fn seq(self) -> Seq {
        match self {
            SeqSpec::Small(n) => Seq(u64::from(n)),
            SeqSpec::Any(n) => Seq(n),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum TargetSpec {
    User(UserSpec),
    Group,
    OtherGroup(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct AttachmentSpec {
    file: u8,
    name: String,
    size: u64,
    mime: bool,
    width: Option<u32>,
}

#[derive(Arbitrary, Debug, Clone)]
enum FrameSpec {
    Send {
        cmid: u8,
        to: TargetSpec,
        kind: u8,
        body: String,
        attachment: Option<AttachmentSpec>,
        mentions: Vec<UserSpec>,
        reply_to: Option<SeqSpec>,
    },
    History {
        conv: ConvSpec,
        before: Option<SeqSpec>,
        limit: Option<u32>,
    },
    Sync {
        cursors: Vec<(ConvSpec, SeqSpec)>,
        limit: Option<u32>,
    },
    Conversations,
    Read {
        conv: ConvSpec,
        seq: SeqSpec,
    },
    Typing {
        conv: ConvSpec,
    },
    Recall {
        conv: ConvSpec,
        seq: SeqSpec,
    },
    Ping,
}

impl FrameSpec {
    fn frame(&self, h: &Harness, rid: Option<String>) -> ClientFrame {
        match self.clone() {
            FrameSpec::Send {
                cmid,
                to,
                kind,
                body,
                attachment,
                mentions,
                reply_to,
            } => ClientFrame::Send(SendFrame {
                rid,
                client_msg_id: format!("c{cmid}"),
                to: match to {
                    TargetSpec::User(u) => Target::User(u.id()),
                    TargetSpec::Group => Target::Group(h.group.clone()),
                    TargetSpec::OtherGroup(n) => Target::Group(GroupId::new(format!("g{n}"))),
                },
                kind: match kind % 4 {
                    0 => MessageKind::Text,
                    1 => MessageKind::Image,
                    2 => MessageKind::File,
                    _ => MessageKind::Recalled,
                },
                body,
                attachment: attachment.map(|a| Attachment {
                    file_id: format!("f{}", a.file),
                    name: a.name,
                    size: a.size,
                    mime: if a.mime { "image/png" } else { "text/plain" }.into(),
                    width: a.width,
                    height: a.width,
                }),
                mentions: mentions.into_iter().map(UserSpec::id).collect(),
                reply_to: reply_to.map(SeqSpec::seq),
            }),
            FrameSpec::History {
                conv,
                before,
                limit,
            } => ClientFrame::History {
                rid,
                conv: conv.conv(h),
                before_seq: before.map(SeqSpec::seq),
                limit,
            },
            FrameSpec::Sync { cursors, limit } => ClientFrame::Sync {
                rid,
                cursors: cursors
                    .into_iter()
                    .map(|(c, s)| (c.conv(h), s.seq()))
                    .collect(),
                limit,
            },
            FrameSpec::Conversations => ClientFrame::Conversations { rid },
            FrameSpec::Read { conv, seq } => ClientFrame::Read {
                rid,
                conv: conv.conv(h),
                seq: seq.seq(),
            },
            FrameSpec::Typing { conv } => ClientFrame::Typing { conv: conv.conv(h) },
            FrameSpec::Recall { conv, seq } => ClientFrame::Recall {
                rid,
                conv: conv.conv(h),
                seq: seq.seq(),
            },
            FrameSpec::Ping => ClientFrame::Ping { rid },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A well-formed frame, as JSON text or MessagePack binary.
    Frame {
        frame: FrameSpec,
        rid: bool,
        binary: bool,
    },
    /// A well-formed frame, cut short and with one byte changed.
    Broken {
        frame: FrameSpec,
        binary: bool,
        cut: u16,
        flip: Option<(u16, u8)>,
    },
    /// Arbitrary text (read as JSON).
    Text(String),
    /// Arbitrary bytes (read as MessagePack).
    Binary(Vec<u8>),
    /// A WebSocket ping.
    WsPing(u8),
    /// A frame over the limit: the server closes with 1009, and the script ends.
    Oversized { binary: bool },
}

#[derive(Arbitrary, Debug)]
struct Script {
    user: u8,
    msgpack: bool,
    steps: Vec<Step>,
}

/// What a reply to `frame` may be.
fn reply_fits(frame: &ClientFrame, reply: &ServerFrame) -> bool {
    matches!(
        (frame, reply),
        (_, ServerFrame::Error { .. })
            | (ClientFrame::Send(_), ServerFrame::Ack { .. })
            | (ClientFrame::History { .. }, ServerFrame::History { .. })
            | (ClientFrame::Sync { .. }, ServerFrame::Synced { .. })
            | (
                ClientFrame::Conversations { .. },
                ServerFrame::Conversations { .. }
            )
            | (ClientFrame::Recall { .. }, ServerFrame::Recalled { .. })
            | (ClientFrame::Ping { .. }, ServerFrame::Pong { .. })
    )
}

fn reply_rid(f: &ServerFrame) -> Option<&str> {
    match f {
        ServerFrame::Ack { rid, .. }
        | ServerFrame::History { rid, .. }
        | ServerFrame::Synced { rid, .. }
        | ServerFrame::Conversations { rid, .. }
        | ServerFrame::Error { rid, .. }
        | ServerFrame::Recalled { rid, .. }
        | ServerFrame::Pong { rid } => rid.as_deref(),
        _ => None,
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, user: usize, codec: Codec) -> WsStream {
    let name = if codec == Codec::Json {
        "json"
    } else {
        "msgpack"
    };
    let url = format!("ws://{}/ws?codec={name}&device=fuzz", h.addr);
    let mut req = url
        .into_client_request()
        .unwrap_or_else(|e| panic!("request: {e}"));
    let auth = format!("Bearer {}", h.tokens[user % h.tokens.len()]);
    req.headers_mut().insert(
        "authorization",
        auth.parse().unwrap_or_else(|e| panic!("header: {e}")),
    );
    match tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => panic!("cannot connect: {e}"),
        Err(_) => panic!("connect timed out"),
    }
}

/// Decodes a server frame, checking the frame kind matches the session's codec.
fn decode(codec: Codec, msg: &Ws) -> Option<ServerFrame> {
    let (data, is_text) = match msg {
        Ws::Text(t) => (t.as_bytes(), true),
        Ws::Binary(b) => (&b[..], false),
        _ => return None,
    };
    assert_eq!(
        is_text,
        codec.is_text(),
        "{codec:?} session got the other frame kind"
    );
    match codec.decode::<ServerFrame>(data) {
        Ok(f) => Some(f),
        Err(e) => panic!("server sent an undecodable frame ({e}): {msg:?}"),
    }
}

async fn run(h: &Harness, script: Script) {
    let user = usize::from(script.user % 3);
    let codec = if script.msgpack {
        Codec::MsgPack
    } else {
        Codec::Json
    };
    let ws = connect(h, user, codec).await;
    let (mut tx, mut rx) = ws.split();
    match tokio::time::timeout(REPLY_TIMEOUT, rx.next()).await {
        Ok(Some(Ok(m))) => match decode(codec, &m) {
            Some(ServerFrame::Hello { .. }) => {}
            other => panic!("first frame is not hello: {other:?}"),
        },
        other => panic!("no hello: {other:?}"),
    }
    // rid -> the request it answers; filled before the request is sent.
    let expected: Arc<Mutex<HashMap<String, ClientFrame>>> = Arc::default();
    let mut oversized = false;

    let writer = {
        let expected = expected.clone();
        let oversized = &mut oversized;
        async move {
            for (i, step) in script.steps.into_iter().take(MAX_STEPS).enumerate() {
                let msg = match step {
                    Step::Frame { frame, rid, binary } => {
                        let frame = frame.frame(h, rid.then(|| format!("r{i}")));
                        let c = if binary { Codec::MsgPack } else { Codec::Json };
                        let bytes = c.encode(&frame);
                        if let Some(rid) = frame.rid() {
                            if !matches!(frame, ClientFrame::Read { .. }) {
                                lock(&expected).insert(rid.clone(), frame.clone());
                            }
                        }
                        wire(c, bytes.to_vec())
                    }
                    Step::Broken {
                        frame,
                        binary,
                        cut,
                        flip,
                    } => {
                        let c = if binary { Codec::MsgPack } else { Codec::Json };
                        let mut bytes = c.encode(&frame.frame(h, Some(format!("b{i}")))).to_vec();
                        bytes.truncate(usize::from(cut));
                        if let Some((at, x)) = flip {
                            if let Some(b) = bytes.get_mut(usize::from(at)) {
                                *b ^= x;
                            }
                        }
                        match String::from_utf8(bytes) {
                            Ok(t) if !binary => Ws::text(t),
                            Ok(t) => Ws::binary(t.into_bytes()),
                            Err(e) => Ws::binary(e.into_bytes()),
                        }
                    }
                    Step::Text(t) => Ws::text(t),
                    Step::Binary(b) => Ws::binary(b),
                    Step::WsPing(n) => Ws::Ping(vec![n; usize::from(n % 126)].into()),
                    Step::Oversized { binary } => {
                        *oversized = true;
                        let big = "x".repeat(h.max_frame_bytes + 1);
                        if binary {
                            Ws::binary(big.into_bytes())
                        } else {
                            Ws::text(big)
                        }
                    }
                };
                let last = *oversized;
                if let Err(e) = tx.send(msg).await {
                    // The reader reports why the server closed.
                    return (tx, Some(e.to_string()));
                }
                if last {
                    return (tx, None);
                }
            }
            let end = ClientFrame::Ping {
                rid: Some("end".into()),
            };
            lock(&expected).insert("end".into(), end.clone());
            let sent = tx
                .send(wire(Codec::Json, Codec::Json.encode(&end).to_vec()))
                .await;
            (tx, sent.err().map(|e| e.to_string()))
        }
    };

    let reader = async {
        let mut answered: HashMap<String, Vec<ServerFrame>> = HashMap::new();
        let mut close = None;
        loop {
            let done = {
                let exp = lock(&expected);
                exp.contains_key("end") && exp.keys().all(|k| answered.contains_key(k))
            };
            if done {
                break;
            }
            let next = match tokio::time::timeout(REPLY_TIMEOUT, rx.next()).await {
                Ok(n) => n,
                Err(_) => break,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    close = Some(format!("read error: {e}"));
                    break;
                }
                None => {
                    close = close.or(Some("stream ended".into()));
                    break;
                }
            };
            if let Ws::Close(c) = &msg {
                close = Some(format!("{c:?}"));
                if c.as_ref().map(|c| u16::from(c.code)) == Some(protocol::close::TOO_LARGE) {
                    close = Some("1009".into());
                }
                continue;
            }
            let Some(frame) = decode(codec, &msg) else {
                continue;
            };
            if let ServerFrame::Error { code, message, .. } = &frame {
                assert_ne!(*code, ErrorCode::Internal, "internal error: {message}");
            }
            if let Some(rid) = reply_rid(&frame) {
                answered.entry(rid.to_owned()).or_default().push(frame);
            }
        }
        (answered, close)
    };

    let ((mut tx, send_error), (answered, close)) = tokio::join!(writer, reader);
    if oversized {
        // Known (reported with the fuzzing results in docs/SECURITY.md): the node closes the
        // socket with part of the oversized frame unread, so the kernel answers with a TCP
        // reset that often overtakes the 1009 close frame (the node's linger after a broken
        // frame narrows this, but the WebSocket layer stops reading after the error). Either
        // is accepted here; anything else (another close code, no close) is not.
        let reset = |s: &str| s.contains("reset") || s.contains("Broken pipe");
        assert!(
            close.as_deref() == Some("1009")
                || close.as_deref().is_some_and(reset)
                || send_error.as_deref().is_some_and(reset),
            "oversized frame: {close:?} / {send_error:?}"
        );
    } else {
        assert!(
            close.is_none(),
            "server closed the session: {close:?} / {send_error:?}"
        );
        let expected = lock(&expected);
        for (rid, frame) in expected.iter() {
            // Several frames may carry one rid (arbitrary text can too): one must fit.
            match answered.get(rid) {
                Some(replies) => assert!(
                    replies.iter().any(|r| reply_fits(frame, r)),
                    "{frame:?} answered {replies:?}"
                ),
                None => panic!("no reply within {REPLY_TIMEOUT:?} to {frame:?}"),
            }
        }
        let _ = tx.send(Ws::Close(None)).await;
        // Drain until the server's close, so this user's session is gone before the next run.
        let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
            while let Some(Ok(_)) = rx.next().await {}
        })
        .await;
    }

    // The node still serves a fresh client.
    let mut probe = connect(h, 2, Codec::Json).await;
    let ping = Codec::Json.encode(&ClientFrame::Ping {
        rid: Some("alive".into()),
    });
    if let Err(e) = probe.send(wire(Codec::Json, ping.to_vec())).await {
        panic!("probe send: {e}");
    }
    let alive = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Some(Ok(m)) = probe.next().await {
            if let Some(ServerFrame::Pong { rid: Some(r) }) = decode(Codec::Json, &m) {
                if r == "alive" {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(alive, Ok(true), "a fresh client got no pong");
    let _ = probe.close(None).await;
    let _ = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Some(Ok(_)) = probe.next().await {}
    })
    .await;
}

fn wire(codec: Codec, bytes: Vec<u8>) -> Ws {
    match (codec, String::from_utf8(bytes)) {
        (Codec::Json, Ok(t)) => Ws::text(t),
        (_, Ok(t)) => Ws::binary(t.into_bytes()),
        (_, Err(e)) => Ws::binary(e.into_bytes()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fuzz_target!(|script: Script| {
    let h = harness();
    h.rt.block_on(run(h, script));
});
