//! Test kit for the end-to-end tests: start real `chatd` processes on ephemeral ports with
//! their own data directories, mint tokens, and talk to them with a real WebSocket client
//! (tokio-tungstenite) and a real HTTP client (reqwest).
//!
//! The binary is the one `cargo build -p gateway --features test-hooks` puts in the target
//! directory; the README's test command builds it before running the tests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use protocol::{ClientFrame, Codec, ServerFrame};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod compliance;

/// The secret every test node signs with.
pub const SECRET: &str = "e2e-test-secret-not-for-production";

/// Default wait for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path of the `chatd` binary under test.
pub fn chatd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CHATD_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test>-<hash> -> target/debug/chatd
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("chatd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p gateway --features test-hooks` first (the README's test command does)",
        bin.display()
    );
    bin
}

/// A running node; killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    log: mpsc::Receiver<String>,
    /// The metrics listener's address, once read from the log (which is drained as read).
    metrics: std::sync::OnceLock<SocketAddr>,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for starting a node.
#[derive(Clone, Default)]
pub struct NodeOpts {
    /// Extra environment (e.g. `CHATD_LIMITS__MAX_FRAME_BYTES`).
    pub env: Vec<(String, String)>,
    /// Listen address (default 127.0.0.1:0).
    pub listen: Option<String>,
    /// A command that runs chatd, e.g. `["prlimit", "--nofile=512:512"]` (empty: none).
    pub wrapper: Vec<String>,
}

impl NodeOpts {
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.push((k.to_owned(), v.to_string()));
        self
    }

    /// Lifts the per-session send rate and burst out of the way, for tests that send faster
    /// than a client may by default (pipelining, ordering, bulk set-up).
    pub fn unthrottled_sends(self) -> Self {
        self.env("CHATD_LIMITS__SEND_PER_SEC", 100_000)
            .env("CHATD_LIMITS__SEND_BURST", 100_000)
    }

    /// Several [`NodeOpts::env`] at once.
    pub fn envs(mut self, extra: &[(&str, &str)]) -> Self {
        for (k, v) in extra {
            self = self.env(k, v);
        }
        self
    }
}

impl Node {
    /// Starts a node with a fresh data directory.
    pub fn start() -> Node {
        Self::start_with(NodeOpts::default())
    }

    /// Starts a node with options and a fresh data directory.
    pub fn start_with(opts: NodeOpts) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut node = Self::spawn(&dir, opts);
        node._tmp = Some(tmp);
        node
    }

    /// Starts a node on an existing data directory (the caller keeps it alive).
    pub fn spawn(data_dir: &Path, opts: NodeOpts) -> Node {
        let listen = opts.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(chatd_bin());
                c
            }
            None => Command::new(chatd_bin()),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(data_dir)
            .env("CHATD_AUTH__JWT_SECRET", SECRET)
            .env("CHATD_LOG", "info")
            // Tests stop nodes at once and run many side by side: no drain pauses, and the
            // metrics listener on a free port (tests that need them override these).
            .env("CHATD_SERVER__DRAIN_DELAY_SECS", "0")
            .env("CHATD_SERVER__DRAIN_WINDOW_SECS", "0")
            .env("CHATD_METRICS__LISTEN", "127.0.0.1:0")
            // Tests run with the repository's default rules unless they say otherwise.
            .env(
                "CHATD_MODERATION__RULES_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/moderation"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn chatd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("E2E_VERBOSE").is_some() {
                    eprintln!("[chatd] {line}");
                }
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chatd did not report its address in time"));
            if let Some(rest) = line.split("addr=").nth(1) {
                if line.contains("listening") {
                    let a = rest.split_whitespace().next().unwrap();
                    break a.parse().unwrap();
                }
            }
        };
        Node {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            env: opts.env,
            log: rx,
            metrics: std::sync::OnceLock::new(),
            _tmp: None,
        }
    }

    /// The process id of the `chatd` child (e.g. to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the child has used, in clock ticks (1/100 s; `/proc/<pid>/stat`,
    /// Linux only).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The address of the node's metrics listener (from its `metrics_addr=` log line).
    pub fn metrics_addr(&self) -> SocketAddr {
        if let Some(addr) = self.metrics.get() {
            return *addr;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for line in self.log_lines() {
                if let Some(rest) = line.split("metrics_addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    return *self.metrics.get_or_init(|| addr);
                }
            }
            assert!(
                Instant::now() < deadline,
                "the node did not log metrics_addr"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The current value of one metric series (`name{labels}` as rendered), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://{}/metrics", self.metrics_addr());
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        metric_value(&text, series)
    }

    /// The child's resident set size in KiB (`VmRSS` in `/proc/<pid>/status`; Linux only).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Base HTTP URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines printed so far (drains them).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), or 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    /// A token id, as every token the server mints carries one: without it two tokens of one
    /// user minted in the same second are the same bytes, and signing one device out (which
    /// revokes its token) would revoke the other's too.
    sid: String,
}

/// A token id unique in this test process.
fn next_sid() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with_exp(user, now_secs() + 3600)
}

/// A token with an explicit expiry (seconds since the epoch).
pub fn token_with_exp(user: &str, exp: u64) -> String {
    encode(
        &Header::default(),
        &Claims {
            sub: user,
            exp,
            iat: now_secs(),
            sid: next_sid(),
        },
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A connected WebSocket client speaking one codec.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    pub user: String,
    pub session_id: String,
}

/// How a connection attempt ended before the upgrade.
#[derive(Debug)]
pub struct HttpRefusal {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// Connects as `user` with JSON and reads `hello`.
    pub async fn connect(node: &Node, user: &str) -> Client {
        Self::connect_with(node.addr, user, Codec::Json).await
    }

    /// Connects with a codec and reads `hello`.
    pub async fn connect_with(addr: SocketAddr, user: &str, codec: Codec) -> Client {
        let name = match codec {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        };
        let url = format!("ws://{addr}/ws?codec={name}");
        Self::connect_url(&url, user, &token(user), codec).await
    }

    /// Connects as `user` naming the device (`?device=`) and reads `hello`.
    pub async fn connect_device(node: &Node, user: &str, device: &str) -> Client {
        let url = format!("ws://{}/ws?device={device}", node.addr);
        Self::connect_url(&url, user, &token(user), Codec::Json).await
    }

    /// Connects with a raw token and reads `hello`.
    pub async fn connect_token(node: &Node, user: &str, token: &str) -> Client {
        let url = format!("ws://{}/ws", node.addr);
        Self::connect_url(&url, user, token, Codec::Json).await
    }

    async fn connect_url(url: &str, user: &str, token: &str, codec: Codec) -> Client {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        let mut c = Client {
            ws,
            codec,
            user: user.to_owned(),
            session_id: String::new(),
        };
        match c.recv().await {
            ServerFrame::Hello {
                session_id,
                user: u,
                ..
            } => {
                assert_eq!(u.as_str(), user);
                c.session_id = session_id;
            }
            other => panic!("expected hello, got {other:?}"),
        }
        c
    }

    /// Tries to connect with a raw URL and headers; returns the HTTP refusal, if refused.
    pub async fn try_connect_raw(url: &str, bearer: Option<&str>) -> Result<(), HttpRefusal> {
        let mut req = url.into_client_request().unwrap();
        if let Some(b) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => Ok(()),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(HttpRefusal {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    /// Sends a frame in the client's codec.
    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = self.codec.encode(frame);
        self.send_raw(bytes.to_vec()).await;
    }

    /// Sends raw bytes as a text (JSON) or binary (MessagePack) frame.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        let msg = match self.codec {
            Codec::Json => WsMessage::Text(String::from_utf8(bytes).unwrap().into()),
            Codec::MsgPack => WsMessage::Binary(bytes.into()),
        };
        self.ws.send(msg).await.expect("ws send");
    }

    /// Sends a text frame regardless of codec.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.into()))
            .await
            .expect("ws send");
    }

    /// The next server frame (skipping pings), or panics after [`WAIT`].
    pub async fn recv(&mut self) -> ServerFrame {
        self.try_recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no frame within {WAIT:?}", self.user))
    }

    /// The next server frame within `wait`, or `None` on timeout. Panics if the socket closes.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    return Some(Codec::Json.decode(t.as_bytes()).expect("decode json frame"))
                }
                Some(Ok(WsMessage::Binary(b))) => {
                    return Some(Codec::MsgPack.decode(&b).expect("decode msgpack frame"))
                }
                Some(Ok(WsMessage::Close(c))) => panic!("{}: socket closed: {c:?}", self.user),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: socket error: {e}", self.user),
                None => panic!("{}: socket ended", self.user),
            }
        }
    }

    /// The next frame if one is already there (used after the server died).
    pub async fn ws_next(&mut self) -> Option<ServerFrame> {
        match self.ws.next().await {
            Some(Ok(WsMessage::Text(t))) => Codec::Json.decode(t.as_bytes()).ok(),
            Some(Ok(WsMessage::Binary(b))) => Codec::MsgPack.decode(&b).ok(),
            _ => None,
        }
    }

    /// Receives frames until one matches, returning it; panics after [`WAIT`].
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .try_recv(left)
                .await
                .unwrap_or_else(|| panic!("{}: expected frame never came", self.user));
            if pred(&f) {
                return f;
            }
        }
    }

    /// Waits for the server to close the socket and returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("{}: no close within {WAIT:?}", self.user),
                Ok(Some(Ok(WsMessage::Close(Some(frame))))) => return u16::from(frame.code),
                Ok(Some(Ok(WsMessage::Close(None)))) => return u16::from(CloseCode::Status),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("{}: error instead of close: {e}", self.user),
                Ok(None) => panic!("{}: stream ended without a close frame", self.user),
            }
        }
    }

    /// Sends a text message to a user and returns the ack.
    pub async fn send_dm(&mut self, to: &str, cmid: &str, body: &str) -> ServerFrame {
        self.send(&protocol::ClientFrame::Send(protocol::SendFrame {
            rid: Some(cmid.to_owned()),
            client_msg_id: cmid.to_owned(),
            to: protocol::Target::User(protocol::UserId::new(to)),
            kind: protocol::MessageKind::Text,
            body: body.to_owned(),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
        self.recv_until(|f| is_reply_to(f, cmid)).await
    }

    /// Sends a text message to a group and returns the ack (or error).
    pub async fn send_group(&mut self, group: &str, cmid: &str, body: &str) -> ServerFrame {
        self.send(&protocol::ClientFrame::Send(protocol::SendFrame {
            rid: Some(cmid.to_owned()),
            client_msg_id: cmid.to_owned(),
            to: protocol::Target::Group(protocol::GroupId::new(group)),
            kind: protocol::MessageKind::Text,
            body: body.to_owned(),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
        self.recv_until(|f| is_reply_to(f, cmid)).await
    }

    /// Every message of `conv` after seq `after`, oldest first, by `sync` pages of `page`
    /// messages until the server says there are no more.
    pub async fn sync_all(
        &mut self,
        conv: &protocol::ConvId,
        after: u64,
        page: u32,
    ) -> Vec<protocol::Message> {
        let mut out: Vec<protocol::Message> = Vec::new();
        let mut cursor = after;
        loop {
            let cursors = std::collections::BTreeMap::from([(conv.clone(), protocol::Seq(cursor))]);
            self.send(&ClientFrame::Sync {
                rid: Some("s".into()),
                cursors,
                limit: Some(page),
            })
            .await;
            let ServerFrame::Synced { conversations, .. } = self
                .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
                .await
            else {
                unreachable!()
            };
            let part = conversations
                .into_iter()
                .next()
                .expect("a synced conversation");
            if let Some(last) = part.messages.last() {
                cursor = last.seq.0;
            }
            out.extend(part.messages);
            if !part.has_more {
                return out;
            }
        }
    }

    /// Waits for the next `message` frame.
    pub async fn next_message(&mut self) -> protocol::Message {
        match self
            .recv_until(|f| matches!(f, ServerFrame::Message(_)))
            .await
        {
            ServerFrame::Message(m) => m,
            _ => unreachable!(),
        }
    }
}

/// Whether `f` is the ack or error for request id `rid`.
pub fn is_reply_to(f: &ServerFrame, rid: &str) -> bool {
    match f {
        ServerFrame::Ack { rid: Some(r), .. } | ServerFrame::Error { rid: Some(r), .. } => r == rid,
        _ => false,
    }
}

/// The seq of an ack, or panics with the frame.
pub fn ack_seq(f: &ServerFrame) -> u64 {
    match f {
        ServerFrame::Ack { seq: Some(s), .. } => s.0,
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// The error code of an error frame, or panics.
pub fn error_code(f: &ServerFrame) -> protocol::ErrorCode {
    match f {
        ServerFrame::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A small HTTP client for the `/v1` API.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(node: &Node) -> Api {
        Api {
            base: node.http(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request as `user` (or without a token when `None`); returns status and JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(u) = user {
            req = req.bearer_auth(token(u));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, json)
    }

    /// Sends a request with a raw bearer token (or none); returns status and JSON.
    pub async fn call_token(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, json)
    }

    /// Registers a directory account as company administrator `admin`; asserts 201.
    pub async fn create_account(&self, admin: &str, account: serde_json::Value) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/users",
                Some(admin),
                Some(account),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Uploads a file as `user` (`POST /v1/files`); returns status and JSON.
    pub async fn upload(
        &self,
        user: &str,
        name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        self.upload_token(Some(&token(user)), name, mime, bytes)
            .await
    }

    /// Uploads a file with a raw bearer token (or none); returns status and JSON.
    pub async fn upload_token(
        &self,
        bearer: Option<&str>,
        name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/files", self.base))
            .query(&[("name", name)])
            .header("content-type", mime)
            .body(bytes);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Makes `user` known to the server (any authenticated call does).
    pub async fn touch(&self, user: &str) {
        let (status, body) = self
            .call(reqwest::Method::GET, "/v1/groups", Some(user), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Creates a group as `owner` with `members`; returns its id.
    pub async fn create_group(&self, owner: &str, name: &str, members: &[&str]) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/groups",
                Some(owner),
                Some(serde_json::json!({"name": name, "members": members})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

/// The address of a test service from the environment the README's test command sets up, or a
/// panic that says how to start it.
pub fn service_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the cluster tests need Redis and the CQL database. Run \
             `scripts/services/env.sh start && source .cache/services.env`, or the README's test \
             command, which does both"
        )
    })
}

/// Options for a cluster-mode node sharing Redis and the CQL database with its peers.
pub fn cluster_node(keyspace: &str, node_id: &str) -> NodeOpts {
    let cql = service_env("CHATD_TEST_CQL");
    NodeOpts::default()
        .env("CHATD_STORE__BACKEND", "scylla")
        .env("CHATD_STORE__CQL_NODES", format!(r#"["{cql}"]"#))
        .env("CHATD_STORE__KEYSPACE", keyspace)
        .env("CHATD_STORE__REPLICATION_FACTOR", 1)
        .env("CHATD_STORE__CONSISTENCY", "one")
        .env("CHATD_STORE__REQUEST_TIMEOUT_MS", 2000)
        .env("CHATD_ROUTER__BACKEND", "redis")
        .env(
            "CHATD_ROUTER__REDIS_URL",
            service_env("CHATD_TEST_REDIS_URL"),
        )
        .env("CHATD_ROUTER__NODE_ID", node_id)
        .env("CHATD_ROUTER__HEARTBEAT_MS", 200)
        .env("CHATD_ROUTER__RECONCILE_MS", 1000)
        .env("CHATD_LIMITS__SEND_PER_SEC", 10_000)
        .env("CHATD_LIMITS__SEND_BURST", 10_000)
}

/// A keyspace name no other test run uses.
pub fn unique_keyspace(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{:x}_{}", nanos, std::process::id())
}

/// Runs one of the test-service scripts (`redis.sh restart`, `cassandra.sh pause`, ...).
pub fn service_script(script: &str, args: &[&str]) {
    let dir = service_env("CHATD_TEST_SERVICES_DIR");
    let status = Command::new(Path::new(&dir).join(script))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run a service script");
    assert!(status.success(), "{script} {args:?} failed");
}

/// An innocent pair's direct messages while something else loads the node: `alice` sends to
/// `bob` every 20 ms until `stop`; returns each round trip (send, ack, delivery).
pub async fn round_trips_until(
    mut alice: Client,
    mut bob: Client,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut rtts = Vec::new();
    let mut i = 0;
    while !*stop.borrow() {
        let t = Instant::now();
        let body = format!("still here? {i}");
        let ack = alice.send_dm("bob", &format!("rt{i}"), &body).await;
        ack_seq(&ack);
        let m = bob.next_message().await;
        assert_eq!(m.body, body);
        rtts.push(t.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rtts
}

/// The median and the slowest of some round trips.
pub fn p50_max(rtts: &[Duration]) -> (Duration, Duration) {
    let mut v = rtts.to_vec();
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

/// Samples a process's resident set size every 50 ms until `stop`; answers the peak, KiB.
pub fn rss_peak_until(
    pid: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !*stop.borrow() {
            peak = peak.max(proc_status_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak.max(proc_status_kib(pid, "VmRSS:"))
    })
}

/// The `error.code` of a JSON error body (`""` when there is none).
pub fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// Options of a node whose company administrator is `boss`.
pub fn admin_opts() -> NodeOpts {
    NodeOpts::default().env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
}

/// A node whose company administrator is `boss`, with `extra` environment.
pub fn admin_node(extra: &[(&str, &str)]) -> Node {
    Node::start_with(admin_opts().envs(extra))
}

/// `api.call` as `user`: status and JSON.
pub async fn call(
    api: &Api,
    m: reqwest::Method,
    path: &str,
    user: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    api.call(m, path, Some(user), body).await
}

/// The (seq, ts) of an ack with a seq, or panics with the frame.
pub fn ack_seq_ts(f: &ServerFrame) -> (u64, u64) {
    match f {
        ServerFrame::Ack {
            seq: Some(s), ts, ..
        } => (s.0, *ts),
        other => panic!("expected an ack with a seq, got {other:?}"),
    }
}

impl Client {
    /// `history` of `conv` (the newest 200): (seqs newest first, `min_seq`).
    pub async fn history_seqs(&mut self, conv: &protocol::ConvId) -> (Vec<u64>, Option<u64>) {
        self.send(&ClientFrame::History {
            rid: Some("h".into()),
            conv: conv.clone(),
            before_seq: None,
            limit: Some(200),
        })
        .await;
        match self
            .recv_until(|f| matches!(f, ServerFrame::History { .. }))
            .await
        {
            ServerFrame::History {
                messages, min_seq, ..
            } => (
                messages.iter().map(|m| m.seq.0).collect(),
                min_seq.map(|s| s.0),
            ),
            _ => unreachable!(),
        }
    }

    /// `sync` of `conv` from seq 0 (one page of 100): (seqs oldest first, `min_seq`).
    pub async fn sync_seqs(&mut self, conv: &protocol::ConvId) -> (Vec<u64>, Option<u64>) {
        self.send(&ClientFrame::Sync {
            rid: Some("s".into()),
            cursors: [(conv.clone(), protocol::Seq(0))].into(),
            limit: Some(100),
        })
        .await;
        let ServerFrame::Synced { conversations, .. } = self
            .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
            .await
        else {
            unreachable!()
        };
        let part = conversations.into_iter().next().expect("a synced entry");
        (
            part.messages.iter().map(|m| m.seq.0).collect(),
            part.min_seq.map(|s| s.0),
        )
    }
}

/// The value of one series (`name{labels}` exactly as rendered) in a Prometheus text
/// exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}
