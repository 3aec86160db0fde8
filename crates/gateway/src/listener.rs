//! The accept loop: our own replacement for `axum::serve`, so that every accepted socket is
//! under a budget and a deadline before it costs more than a file descriptor.
//!
//! - **Budgets.** The open-files limit minus `server.fd_reserve` is the most sockets this
//!   node keeps open ([`Budgets`]). Connections that have not yet sent a complete first request
//!   ("pending": half-open, slow TLS handshakes, trickled headers) have their own budget,
//!   `server.max_pending_connections`; a new one beyond it evicts the oldest pending one, so
//!   half-open connections can never lock out a client that sends its request at once.
//!   WebSocket sessions are capped below the socket budget, leaving room for the pending
//!   budget and a quarter as much plain HTTP (`/healthz`, the admin API).
//! - **Deadlines.** The first request's headers (and the TLS handshake) must arrive within
//!   `server.header_read_timeout_ms` of the accept; a kept-alive connection must start its next
//!   request within `server.keepalive_timeout_ms`; a WebSocket upgrade must complete within
//!   `server.upgrade_timeout_ms` of the accept (else 503 before the upgrade); an HTTP exchange
//!   that moves no byte for a keep-alive period (a client that stopped reading) is closed.
//! - **Never dies, never spins.** Accept errors such as `EMFILE` evict the oldest pending
//!   connection and back off briefly.
//!
//! Every request carries [`ConnectInfo<SocketAddr>`] in its extensions, as
//! `into_make_service_with_connect_info` would. A connection's task ends when it is upgraded:
//! a WebSocket session then costs the session's own tasks and a few words here (the counted
//! socket wrapper: two pointers and a shared progress counter), nothing more.

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::tls::Tls;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::ErrorCode;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connection budgets of this process, derived at start-up from the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// The open-files (soft) limit seen at start-up.
    pub fd_limit: u64,
    /// Most accepted sockets open at once: the limit minus `server.fd_reserve`.
    pub sockets: usize,
    /// Most connections without a complete first request; beyond it the oldest is closed.
    pub pending: usize,
    /// Most WebSocket sessions: `server.max_connections`, or less when the sockets budget
    /// must also leave room for pending connections and plain HTTP.
    pub sessions: usize,
}

impl Budgets {
    /// The budgets for an open-files limit of `fd_limit`.
    pub fn derive(cfg: &ServerConfig, fd_limit: u64) -> Self {
        let sockets = usize::try_from(fd_limit.saturating_sub(cfg.fd_reserve))
            .unwrap_or(usize::MAX)
            .max(8);
        let pending = cfg.max_pending_connections.clamp(1, (sockets / 4).max(1));
        // Room for `pending` connections, plus a quarter as many plain HTTP ones (`/healthz`,
        // the admin API) in progress.
        let room = pending.saturating_add(pending / 4);
        let sessions = cfg.max_connections.min(sockets.saturating_sub(room)).max(1);
        Self {
            fd_limit,
            sockets,
            pending,
            sessions,
        }
    }

    /// The budgets for this process's current open-files limit.
    pub fn of_process(cfg: &ServerConfig) -> Self {
        let limit = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _hard)) => soft,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the open-files limit; assuming 1024");
                1024
            }
        };
        Self::derive(cfg, limit)
    }
}

/// Deadlines of the accept path.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Accept to the first request's complete headers (TLS handshake included).
    pub first_request: Duration,
    /// The TLS handshake alone.
    pub tls_handshake: Duration,
    /// Between requests of a kept-alive connection (idle time plus the next headers).
    pub keep_alive: Duration,
    /// Accept (or, on a kept-alive connection, the request) to a completed upgrade.
    pub upgrade: Duration,
}

impl Deadlines {
    /// The deadlines configured in `[server]` (0 ms is taken as 1 ms).
    pub fn from_config(cfg: &ServerConfig) -> Self {
        let ms = |v: u64| Duration::from_millis(v.max(1));
        Self {
            first_request: ms(cfg.header_read_timeout_ms),
            tls_handshake: ms(cfg.tls_handshake_timeout_ms),
            keep_alive: ms(cfg.keepalive_timeout_ms),
            upgrade: ms(cfg.upgrade_timeout_ms),
        }
    }
}

/// State shared by the accept loop and every connection.
struct Shared {
    budgets: Budgets,
    deadlines: Deadlines,
    nodelay: bool,
    /// Accepted sockets still open (WebSocket sessions included).
    open: AtomicUsize,
    /// Connections without a first request, oldest first, with the token that closes them.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    /// Seconds since start of the last "budget exhausted" warning (one per second at most).
    last_warning: AtomicU64,
    started: Instant,
}

impl Shared {
    fn pending_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a pending connection, closing the oldest one beyond the budget.
    fn enter_pending(&self, id: u64, token: CancellationToken) {
        let evicted = {
            let mut map = self.pending_map();
            map.insert(id, token);
            if map.len() > self.budgets.pending {
                map.pop_first().map(|(_, t)| t)
            } else {
                None
            }
        };
        if let Some(t) = evicted {
            t.cancel();
            self.warn("pending-connection budget reached: closed the oldest pending connection");
        }
    }

    /// Removes a connection from the pending set; whether it was still there.
    fn leave_pending(&self, id: u64) -> bool {
        self.pending_map().remove(&id).is_some()
    }

    /// Closes the oldest pending connection; whether there was one.
    fn evict_oldest(&self) -> bool {
        let oldest = self.pending_map().pop_first();
        match oldest {
            Some((_, t)) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether one more socket may be kept open (making room by eviction if needed).
    fn admit(&self) -> bool {
        if self.open.load(Ordering::Acquire) >= self.budgets.sockets && !self.evict_oldest() {
            self.warn("socket budget reached: refusing a new connection");
            return false;
        }
        true
    }

    /// A warning about a budget, at most once a second.
    fn warn(&self, what: &'static str) {
        crate::metrics::budget_refused("connections");
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now > last
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                open = self.open.load(Ordering::Relaxed),
                sockets = self.budgets.sockets,
                pending = self.budgets.pending,
                "{what}"
            );
        }
    }
}

/// Holds one unit of the open-sockets count until the socket is dropped.
struct Slot(Arc<Shared>);

impl Slot {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that gives its slot back when dropped, wherever it ends up (a WebSocket session
/// owns it after the upgrade), and counts the reads and writes that moved bytes, so the
/// connection's task can tell a stalled HTTP exchange from a busy one.
struct Counted<IO> {
    io: IO,
    progress: Arc<AtomicU64>,
    _slot: Slot,
}

impl<IO> Counted<IO> {
    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Removes the connection from the pending set when its task ends, whatever the reason.
struct PendingGuard {
    shared: Arc<Shared>,
    id: u64,
    /// Cancelled when the connection is evicted from the pending set.
    evicted: CancellationToken,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.leave_pending(self.id);
    }
}

/// What a connection needs besides its socket.
struct ConnCtx {
    shared: Arc<Shared>,
    app: Router,
    shutdown: CancellationToken,
    /// Dropped when the connection's task ends; the accept loop waits for all of them.
    _done: mpsc::Sender<()>,
}

/// Accepts until `shutdown`, then waits for every connection still in HTTP (not upgraded)
/// to finish: idle ones close at once, requests in progress complete.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    app: Router,
    cfg: &ServerConfig,
    budgets: Budgets,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        budgets,
        deadlines: Deadlines::from_config(cfg),
        nodelay: cfg.tcp_nodelay,
        open: AtomicUsize::new(0),
        pending: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        last_warning: AtomicU64::new(0),
        started: Instant::now(),
    });
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(&shared, &e).await;
                continue;
            }
        };
        if !shared.admit() {
            drop(stream);
            continue;
        }
        if shared.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        }
        // Counted and registered before the task runs, so a burst of accepts sees itself.
        let slot = Slot::new(shared.clone());
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        shared.enter_pending(id, evicted.clone());
        let pending = PendingGuard {
            shared: shared.clone(),
            id,
            evicted,
        };
        let ctx = ConnCtx {
            shared: shared.clone(),
            app: app.clone(),
            shutdown: shutdown.clone(),
            _done: done_tx.clone(),
        };
        tokio::spawn(connection(stream, slot, pending, peer, tls.clone(), ctx));
    }
    drop(listener);
    drop(done_tx);
    // Every connection task holds a sender; `None` means all of them have ended.
    let _ = done_rx.recv().await;
}

/// Handles a failed `accept` without dying or spinning.
async fn accept_error(shared: &Shared, e: &io::Error) {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) {
        return;
    }
    // EMFILE/ENFILE/ENOBUFS and friends: free a descriptor and give the system a moment.
    shared.evict_oldest();
    shared.warn("accept failed (out of file descriptors?): backing off");
    tracing::debug!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn connection(
    stream: TcpStream,
    slot: Slot,
    pending: PendingGuard,
    peer: SocketAddr,
    tls: Option<Tls>,
    ctx: ConnCtx,
) {
    let accepted = Instant::now();
    let shared = ctx.shared.clone();
    let progress = Arc::new(AtomicU64::new(0));
    let io = Counted {
        io: stream,
        progress: progress.clone(),
        _slot: slot,
    };
    let (id, evicted) = (pending.id, pending.evicted.clone());
    let conn = Conn {
        peer,
        accepted,
        id,
        evicted,
        progress,
        ctx: &ctx,
    };
    let first_deadline = tokio::time::Instant::from_std(accepted + shared.deadlines.first_request);
    match tls {
        None => serve_http(io, first_deadline, conn).await,
        Some(tls) => {
            let handshake =
                tokio::time::timeout(shared.deadlines.tls_handshake, tls.acceptor.accept(io));
            let stream = tokio::select! {
                r = handshake => r,
                _ = pending.evicted.cancelled() => return,
                _ = tokio::time::sleep_until(first_deadline) => return,
                _ = ctx.shutdown.cancelled() => return,
            };
            match stream {
                Ok(Ok(s)) => serve_http(s, first_deadline, conn).await,
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// One accepted connection's facts, for [`serve_http`].
struct Conn<'a> {
    peer: SocketAddr,
    accepted: Instant,
    id: u64,
    evicted: CancellationToken,
    progress: Arc<AtomicU64>,
    ctx: &'a ConnCtx,
}

async fn serve_http<IO>(io: IO, first_deadline: tokio::time::Instant, c: Conn<'_>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        accepted,
        id,
        evicted,
        progress,
        ctx,
    } = c;
    let shared = &ctx.shared;
    let service = ConnService {
        app: ctx.app.clone(),
        shared: shared.clone(),
        peer,
        accepted,
        id,
        first: AtomicBool::new(true),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.deadlines.keep_alive)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut first_armed = true;
    let mut shutting_down = false;
    // An exchange that moves no byte for a whole keep-alive period is stalled (a client that
    // stopped reading its response, or sending its body): closed at the next check.
    let stall = shared.deadlines.keep_alive;
    let mut stall_check = tokio::time::interval_at(tokio::time::Instant::now() + stall, stall);
    let mut last_progress = progress.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // No request line or URI here: hyper's errors never carry the query.
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = evicted.cancelled(), if first_armed => {
                tracing::debug!(%peer, "pending connection evicted");
                return;
            }
            _ = tokio::time::sleep_until(first_deadline), if first_armed => {
                if shared.leave_pending(id) {
                    tracing::debug!(%peer, "no complete request before the header deadline; closed");
                    return;
                }
                first_armed = false;
            }
            _ = stall_check.tick() => {
                let now = progress.load(Ordering::Relaxed);
                if now == last_progress {
                    tracing::debug!(%peer, "no progress for a keep-alive period; closed");
                    return;
                }
                last_progress = now;
            }
            _ = ctx.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The per-connection service: adds the connection's facts to each request, ends the
/// pending phase at the first request, bounds upgrades by their deadline, then runs the app.
struct ConnService {
    app: Router,
    shared: Arc<Shared>,
    peer: SocketAddr,
    accepted: Instant,
    id: u64,
    first: AtomicBool,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let start = if self.first.swap(false, Ordering::Relaxed) {
            self.shared.leave_pending(self.id);
            self.accepted
        } else {
            Instant::now()
        };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let upgrade = req.headers().contains_key(axum::http::header::UPGRADE);
        let deadline = tokio::time::Instant::from_std(start + self.shared.deadlines.upgrade);
        let response = self.app.clone().oneshot(req.map(Body::new));
        Box::pin(async move {
            if !upgrade {
                return response.await;
            }
            match tokio::time::timeout_at(deadline, response).await {
                Ok(r) => r,
                Err(_) => Ok(ApiError::new(
                    ErrorCode::Unavailable,
                    "the WebSocket upgrade did not complete in time",
                )
                .into_response()),
            }
        })
    }
}

/// Whether a WebSocket upgrade with these headers passes `server.allowed_origins`: always
/// when the list is empty or the request has no `Origin` (not a browser); otherwise the
/// origin must be in the list (compared without case and without a trailing `/`).
pub fn origin_allowed(allowed: &[String], headers: &axum::http::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Query keys whose values are never secret, and are logged as they are.
const LOGGABLE_QUERY_KEYS: &[&str] = &[
    "codec",
    "device",
    "limit",
    "since",
    "until",
    "before",
    "after",
    "state",
    "group",
    "conv",
    "category",
    "user",
    "department",
    "include_deactivated",
    "name",
    "type",
    "mime",
];

/// A request URI fit for a log line: the path, and the query with every value redacted
/// except those of a few harmless keys, so that `?token=` (however spelled or encoded)
/// never reaches a log.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let plain_key =
                key.len() <= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            match (plain_key, LOGGABLE_QUERY_KEYS.contains(&key)) {
                (true, true) => format!("{key}={value}"),
                (true, false) => format!("{key}=<redacted>"),
                (false, _) => "<redacted>".to_owned(),
            }
        })
        .collect();
    format!("{}?{}", uri.path(), pairs.join("&"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn budgets_leave_room_for_http_at_a_low_fd_limit() {
        let cfg = ServerConfig::default();
        let b = Budgets::derive(&cfg, 512);
        assert_eq!(b.sockets, 512 - cfg.fd_reserve as usize);
        assert!(b.pending >= 1 && b.pending <= b.sockets / 4);
        assert_eq!(b.pending, 96);
        assert_eq!(b.sessions, 384 - 96 - 24, "{b:?}");
    }

    #[test]
    fn the_connect_storm_fits_a_20000_fd_limit() {
        // loadtest/scenarios/connect-storm.toml holds 19,000 idle sessions at 20,000 files.
        let b = Budgets::derive(&ServerConfig::default(), 20_000);
        assert!(b.sessions >= 19_000, "{b:?}");
    }

    #[test]
    fn configured_session_cap_wins_when_lower() {
        let cfg = ServerConfig::default();
        let b = Budgets::derive(&cfg, 1 << 20);
        assert_eq!(b.sessions, cfg.max_connections);
        assert_eq!(b.pending, cfg.max_pending_connections);
        let b = Budgets::derive(&cfg, u64::MAX);
        assert_eq!(b.sessions, cfg.max_connections);
    }

    #[test]
    fn origins() {
        use axum::http::HeaderMap;
        let list = vec!["https://chat.example.com".to_owned()];
        let with = |o: &str| {
            let mut h = HeaderMap::new();
            h.insert("origin", o.parse().unwrap());
            h
        };
        assert!(origin_allowed(&[], &with("https://evil.example")));
        assert!(origin_allowed(&list, &HeaderMap::new()));
        assert!(origin_allowed(&list, &with("https://Chat.Example.com/")));
        assert!(!origin_allowed(&list, &with("https://evil.example")));
        assert!(!origin_allowed(&list, &with("null")));
        assert!(!origin_allowed(
            &list,
            &with("https://chat.example.com.evil.example")
        ));
    }

    #[test]
    fn tokens_are_redacted_from_uris() {
        let r = |u: &str| redacted_uri(&u.parse().unwrap());
        assert_eq!(r("/ws"), "/ws");
        assert_eq!(
            r("/ws?token=abc.def.ghi&codec=json"),
            "/ws?token=<redacted>&codec=json"
        );
        assert_eq!(r("/ws?%74oken=abc&codec=x"), "/ws?<redacted>&codec=x");
        assert_eq!(r("/ws?abc.def.ghi"), "/ws?<redacted>");
        assert_eq!(r("/v1/audit?limit=-1"), "/v1/audit?limit=-1");
        assert_eq!(
            r("/v1/x?access_token=s3cret"),
            "/v1/x?access_token=<redacted>"
        );
    }

    #[test]
    fn tiny_limits_still_serve() {
        let cfg = ServerConfig::default();
        let b = Budgets::derive(&cfg, 10);
        assert!(b.sockets >= 8 && b.pending >= 1 && b.sessions >= 1, "{b:?}");
    }
}
