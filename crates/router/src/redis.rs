//! The Redis router: delivery between gateway nodes through Redis pub/sub.
//!
//! Channel layout: **one channel per node** (`chat:{node}:<id>`), one broadcast channel
//! (`chat:all`) and one presence channel (`chat:presence`), with a cluster-wide presence map
//! (which nodes hold a session of which user) kept in every node's memory. Publishing a
//! message resolves its recipients to nodes and publishes **once per interested node** (never
//! once per recipient); recipients on this node are delivered directly, without a Redis hop.
//! docs/ARCHITECTURE.md compares this with per-user and per-group channels.
//!
//! Presence: each node keeps its users in the set `chat:{node}:<id>:users`, refreshes
//! `chat:{node}:<id>:alive` (a key with a TTL) every heartbeat, and announces changes on
//! `chat:presence`. Every node rebuilds its map from the sets on start, after every
//! reconnection and periodically, and drops nodes whose alive key expired. Each session's
//! description (for its user's device list) is a field of `chat:{node}:<id>:sessions:<user>`.
//!
//! Failures: outgoing envelopes go through a bounded queue to one publisher task, which
//! keeps them (in order) while Redis is away and sends them when it is back; when the queue
//! is full, `publish` fails with `Unavailable` instead of dropping anything silently. When
//! this node's subscription was interrupted, envelopes for it may have been missed, so after
//! resubscribing it closes its sessions with 4000: clients reconnect and `sync`, and nothing
//! is lost.
//!
//! Sequence numbers ([`RedisSeq`]) are `INCR` counters (`chat:seq:<namespace>:{<conv>}`); a missing counter
//! (Redis restarted empty, `FLUSHALL`) is reported so the caller can restore it from the store.

use crate::{Audience, Control, Envelope, Router, RouterError, Sink};
use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use protocol::{ConvId, UserId};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Settings of the Redis router.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db`.
    pub url: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How often the node refreshes its alive key (its TTL is three times this).
    pub heartbeat: Duration,
    /// How often the presence map is rebuilt from Redis.
    pub reconcile: Duration,
    /// Envelopes kept while Redis is unreachable; beyond it `publish` fails.
    pub queue: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            node_id: "node-1".into(),
            heartbeat: Duration::from_secs(2),
            reconcile: Duration::from_secs(10),
            queue: 65_536,
        }
    }
}

const ALL: &str = "chat:all";
const PRESENCE: &str = "chat:presence";
const NODES: &str = "chat:nodes";

fn node_channel(node: &str) -> String {
    format!("chat:{{node}}:{node}")
}
fn users_key(node: &str) -> String {
    format!("chat:{{node}}:{node}:users")
}
fn alive_key(node: &str) -> String {
    format!("chat:{{node}}:{node}:alive")
}
/// The descriptions of `user`'s sessions on `node` (a hash: session id → description).
fn sessions_key(node: &str, user: &str) -> String {
    format!("chat:{{node}}:{node}:sessions:{user}")
}

fn unavailable(e: impl std::fmt::Display) -> RouterError {
    RouterError::Unavailable(e.to_string())
}

/// One outgoing publish.
struct Outgoing {
    channel: String,
    payload: Vec<u8>,
}

/// State shared by the router and its background tasks.
struct Shared {
    opts: RedisOptions,
    client: redis::Client,
    sink: OnceLock<Arc<dyn Sink>>,
    /// Users with a session on this node.
    local: DashMap<UserId, ()>,
    /// Cluster-wide: the nodes holding a session of each user (other nodes only).
    presence: DashMap<UserId, Vec<String>>,
    /// Set once the first subscription is up.
    ready: tokio::sync::watch::Sender<bool>,
    /// Announcements of ours waiting to come back through the presence channel.
    echoes: DashMap<u64, tokio::sync::oneshot::Sender<()>>,
    next_echo: std::sync::atomic::AtomicU64,
}

/// The Redis-backed router. Dropping it stops its background tasks.
pub struct RedisRouter {
    shared: Arc<Shared>,
    conn: ConnectionManager,
    out: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
}

impl Drop for RedisRouter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisRouter {
    /// Connects, subscribes and starts the background tasks. Fails when Redis cannot be
    /// reached at all at start-up (a node should not start blind); later outages are survived.
    pub async fn connect(opts: RedisOptions) -> Result<Self, RouterError> {
        let client = redis::Client::open(opts.url.as_str()).map_err(unavailable)?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(unavailable)?;
        let (ready, mut ready_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            client,
            sink: OnceLock::new(),
            local: DashMap::new(),
            presence: DashMap::new(),
            ready,
            echoes: DashMap::new(),
            next_echo: std::sync::atomic::AtomicU64::new(0),
        });
        // A node starts with no sessions: forget what an earlier process with this id left.
        forget_node(&mut conn.clone(), &opts.node_id)
            .await
            .map_err(unavailable)?;
        let stop = CancellationToken::new();
        let (out, out_rx) = mpsc::channel(opts.queue.max(1));
        tokio::spawn(publisher(conn.clone(), out_rx, stop.clone()));
        tokio::spawn(subscriber(shared.clone(), conn.clone(), stop.clone()));
        tokio::spawn(heartbeat(shared.clone(), conn.clone(), stop.clone()));
        // Wait (briefly) for the first subscription so that nothing published to this node
        // right after start is missed.
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx.wait_for(|r| *r)).await;
        Ok(Self {
            shared,
            conn,
            out,
            stop,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.opts.node_id
    }

    fn enqueue(&self, channel: String, envelope: &Envelope) -> Result<(), RouterError> {
        let payload = rmp_serde::to_vec_named(envelope).map_err(unavailable)?;
        self.out
            .try_send(Outgoing { channel, payload })
            .map_err(|_| RouterError::Unavailable("redis publish queue is full".into()))
    }
}

#[async_trait]
impl Router for RedisRouter {
    fn attach(&self, sink: Arc<dyn Sink>) {
        if self.shared.sink.set(sink).is_err() {
            tracing::warn!("RedisRouter::attach called twice; keeping the first sink");
        }
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), RouterError> {
        let sink = self.shared.sink.get().ok_or(RouterError::NoSink)?.clone();
        match &envelope.audience {
            Audience::AllNodes => {
                self.enqueue(ALL.to_owned(), &envelope)?;
                // Our own subscription to `chat:all` delivers it here too.
                Ok(())
            }
            Audience::Users(users) => {
                let mut remote: HashMap<String, Vec<UserId>> = HashMap::new();
                let mut any_local = false;
                for user in users {
                    if self.shared.local.contains_key(user) {
                        any_local = true;
                    }
                    if let Some(nodes) = self.shared.presence.get(user) {
                        for node in nodes.value() {
                            remote.entry(node.clone()).or_default().push(user.clone());
                        }
                    }
                }
                for (node, users) in remote {
                    let part = Envelope {
                        audience: Audience::Users(users),
                        skip_session: envelope.skip_session.clone(),
                        payload: envelope.payload.clone(),
                    };
                    self.enqueue(node_channel(&node), &part)?;
                }
                if any_local {
                    sink.deliver(Arc::new(envelope));
                }
                Ok(())
            }
        }
    }

    async fn session_opened(&self, user: &UserId) -> Result<(), RouterError> {
        self.shared.local.insert(user.clone(), ());
        let mut conn = self.conn.clone();
        let node = &self.shared.opts.node_id;
        let _: () = conn
            .sadd(users_key(node), user.as_str())
            .await
            .map_err(unavailable)?;
        // Wait until the announcement has come back through our own subscription: Redis sends
        // a channel's messages to every subscriber in order, so the other nodes have been sent
        // it too before the session's `hello` (and so its first `sync`) goes out.
        let echo = self
            .shared
            .next_echo
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.echoes.insert(echo, tx);
        let sent: redis::RedisResult<()> = conn
            .publish(PRESENCE, format!("+{node} {user} {echo}"))
            .await;
        if let Err(e) = sent {
            self.shared.echoes.remove(&echo);
            return Err(unavailable(e));
        }
        if tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .is_err()
        {
            tracing::warn!(user = %user, "presence announcement not echoed within 1 s");
        }
        self.shared.echoes.remove(&echo);
        Ok(())
    }

    async fn session_described(
        &self,
        user: &UserId,
        session: &str,
        description: Vec<u8>,
    ) -> Result<(), RouterError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(
                sessions_key(&self.shared.opts.node_id, user.as_str()),
                session,
                description,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn session_forgotten(&self, user: &UserId, session: &str) -> Result<(), RouterError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hdel(
                sessions_key(&self.shared.opts.node_id, user.as_str()),
                session,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn remote_sessions(&self, user: &UserId) -> Result<Vec<Vec<u8>>, RouterError> {
        let nodes = match self.shared.presence.get(user) {
            Some(nodes) => nodes.clone(),
            None => return Ok(Vec::new()),
        };
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hvals(sessions_key(node, user.as_str()));
        }
        let mut conn = self.conn.clone();
        let per_node: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(per_node.into_iter().flatten().collect())
    }

    async fn session_closed(&self, user: &UserId) -> Result<(), RouterError> {
        self.shared.local.remove(user);
        let mut conn = self.conn.clone();
        let node = &self.shared.opts.node_id;
        let _: () = conn
            .srem(users_key(node), user.as_str())
            .await
            .map_err(unavailable)?;
        let _: () = conn
            .publish(PRESENCE, format!("-{node} {user}"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Sends queued envelopes in order, retrying (with backoff) while Redis is away.
async fn publisher(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            _ = stop.cancelled() => return,
        };
        if n == 0 {
            return;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut pipe = redis::pipe();
            for o in &batch {
                pipe.publish(&o.channel, &o.payload).ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, queued = batch.len(), "redis publish failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        batch.clear();
    }
}

/// Keeps the subscription up: subscribes, re-announces, rebuilds presence, and delivers.
async fn subscriber(shared: Arc<Shared>, conn: ConnectionManager, stop: CancellationToken) {
    let node = shared.opts.node_id.clone();
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let attempt = async {
            let mut pubsub = shared.client.get_async_pubsub().await?;
            pubsub.subscribe(node_channel(&node)).await?;
            pubsub.subscribe(ALL).await?;
            pubsub.subscribe(PRESENCE).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match attempt.await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "redis subscribe failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Redis may have restarted empty: announce ourselves and our users again.
        if let Err(e) = announce(&shared, conn.clone()).await {
            tracing::warn!(error = %e, "redis re-announce failed");
        }
        if let Err(e) = reconcile(&shared, conn.clone()).await {
            tracing::warn!(error = %e, "presence rebuild failed");
        }
        if first {
            first = false;
            shared.ready.send_replace(true);
        } else if let Some(sink) = shared.sink.get() {
            // Envelopes sent to us while we were unsubscribed are gone: have clients resync.
            tracing::warn!(
                "redis subscription restored; asking local sessions to reconnect and sync"
            );
            sink.deliver(Arc::new(Envelope::broadcast(Control::Disconnect {
                code: protocol::close::SLOW_CONSUMER,
                reason: "routing was interrupted: reconnect and sync".into(),
                session: None,
            })));
        }
        tracing::info!(node = %node, "redis subscription up");
        let mut stream = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = stop.cancelled() => return,
            };
            let Some(msg) = msg else { break };
            handle_message(&shared, msg.get_channel_name(), msg.get_payload_bytes());
        }
        tracing::warn!("redis subscription lost; reconnecting");
    }
}

fn handle_message(shared: &Shared, channel: &str, payload: &[u8]) {
    if channel == PRESENCE {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let (sign, rest) = text.split_at(text.len().min(1));
        let mut parts = rest.split(' ');
        let (Some(node), Some(user)) = (parts.next(), parts.next()) else {
            return;
        };
        if node == shared.opts.node_id {
            if let Some(echo) = parts.next().and_then(|e| e.parse::<u64>().ok()) {
                if let Some((_, tx)) = shared.echoes.remove(&echo) {
                    let _ = tx.send(());
                }
            }
            return;
        }
        let user = UserId::new(user);
        match sign {
            "+" => {
                let mut e = shared.presence.entry(user).or_default();
                if !e.iter().any(|n| n == node) {
                    e.push(node.to_owned());
                }
            }
            "-" => {
                shared.presence.remove_if_mut(&user, |_, nodes| {
                    nodes.retain(|n| n != node);
                    nodes.is_empty()
                });
            }
            _ => {}
        }
        return;
    }
    match rmp_serde::from_slice::<Envelope>(payload) {
        Ok(envelope) => {
            if let Some(sink) = shared.sink.get() {
                sink.deliver(Arc::new(envelope));
            }
        }
        Err(e) => tracing::warn!(error = %e, channel, "undecodable envelope"),
    }
}

/// Registers this node and its users in Redis.
async fn announce(shared: &Shared, mut conn: ConnectionManager) -> redis::RedisResult<()> {
    let node = &shared.opts.node_id;
    let ttl = (shared.opts.heartbeat * 3).as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.sadd(NODES, node).ignore();
    pipe.cmd("SET")
        .arg(alive_key(node))
        .arg(1)
        .arg("PX")
        .arg(ttl)
        .ignore();
    let users: Vec<String> = shared.local.iter().map(|u| u.key().to_string()).collect();
    for chunk in users.chunks(1000) {
        pipe.sadd(users_key(node), chunk).ignore();
    }
    // The sessions' descriptions come from the sink (the hub), which holds the sessions.
    if let Some(sink) = shared.sink.get() {
        for (user, session, description) in sink.session_descriptions() {
            pipe.hset(sessions_key(node, user.as_str()), session, description)
                .ignore();
        }
    }
    pipe.query_async::<()>(&mut conn).await
}

/// Deletes what Redis holds about `node`'s users and sessions (a node that is gone, or this
/// node starting afresh).
async fn forget_node(conn: &mut ConnectionManager, node: &str) -> redis::RedisResult<()> {
    let users: Vec<String> = conn.smembers(users_key(node)).await?;
    let mut pipe = redis::pipe();
    for user in &users {
        pipe.del(sessions_key(node, user)).ignore();
    }
    pipe.del(users_key(node)).ignore();
    pipe.query_async::<()>(conn).await
}

/// Rebuilds the presence map from the nodes' user sets, dropping dead nodes.
async fn reconcile(shared: &Shared, mut conn: ConnectionManager) -> redis::RedisResult<()> {
    let nodes: Vec<String> = conn.smembers(NODES).await?;
    let mut fresh: HashMap<UserId, Vec<String>> = HashMap::new();
    for node in nodes {
        if node == shared.opts.node_id {
            continue;
        }
        let alive: bool = conn.exists(alive_key(&node)).await?;
        if !alive {
            let _: () = conn.srem(NODES, &node).await?;
            forget_node(&mut conn, &node).await?;
            continue;
        }
        let users: Vec<String> = conn.smembers(users_key(&node)).await?;
        for u in users {
            fresh.entry(UserId::new(u)).or_default().push(node.clone());
        }
    }
    shared.presence.retain(|u, _| fresh.contains_key(u));
    for (u, nodes) in fresh {
        shared.presence.insert(u, nodes);
    }
    Ok(())
}

/// Refreshes this node's alive key and rebuilds presence periodically.
async fn heartbeat(shared: Arc<Shared>, conn: ConnectionManager, stop: CancellationToken) {
    let mut beat = tokio::time::interval(shared.opts.heartbeat);
    let mut last_reconcile = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            _ = stop.cancelled() => return,
        }
        let node = &shared.opts.node_id;
        let ttl = (shared.opts.heartbeat * 3).as_millis() as u64;
        let mut c = conn.clone();
        let alive: redis::RedisResult<bool> = c.exists(alive_key(node)).await;
        match alive {
            // The key vanished (Redis restarted or was flushed): register everything again.
            Ok(false) => {
                if let Err(e) = announce(&shared, conn.clone()).await {
                    tracing::warn!(error = %e, "redis re-announce failed");
                }
            }
            Ok(true) => {
                let r: redis::RedisResult<()> = redis::cmd("PEXPIRE")
                    .arg(alive_key(node))
                    .arg(ttl)
                    .query_async(&mut c)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "redis heartbeat failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "redis heartbeat failed"),
        }
        if last_reconcile.elapsed() >= shared.opts.reconcile {
            last_reconcile = tokio::time::Instant::now();
            if let Err(e) = reconcile(&shared, conn.clone()).await {
                tracing::warn!(error = %e, "presence rebuild failed");
            }
        }
    }
}

/// Runs a Redis call, and once more after a short pause if the connection broke (the
/// connection manager reconnects in between, e.g. after a Redis restart). An `INCR` whose
/// reply was lost may have counted: that leaves a gap, never a reused seq.
async fn retry_once<T, F, Fut>(f: F) -> Result<T, RouterError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match f().await {
        Ok(v) => Ok(v),
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            f().await.map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Per-conversation sequence counters in Redis.
#[derive(Clone)]
pub struct RedisSeq {
    conn: ConnectionManager,
    namespace: String,
    next: redis::Script,
    restore: redis::Script,
}

fn seq_key(namespace: &str, conv: &ConvId) -> String {
    format!("chat:seq:{namespace}:{{{conv}}}")
}

impl RedisSeq {
    /// Connects to `url`. `namespace` separates deployments sharing one Redis (the gateway
    /// uses the store's keyspace, whose seqs these are).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, RouterError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
            next: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) else return false end",
            ),
            restore: redis::Script::new(
                "redis.call('SET', KEYS[1], ARGV[1], 'NX'); return redis.call('INCR', KEYS[1])",
            ),
        })
    }

    /// The next seq, or `None` when the counter does not exist.
    pub async fn next(&self, conv: &ConvId) -> Result<Option<u64>, RouterError> {
        let key = seq_key(&self.namespace, conv);
        retry_once(|| {
            let mut conn = self.conn.clone();
            let key = key.clone();
            async move {
                self.next
                    .key(key)
                    .invoke_async::<Option<u64>>(&mut conn)
                    .await
            }
        })
        .await
    }

    /// The current value of each conversation's counter (the last seq handed out), `None`
    /// where there is none; one round trip (a pipeline of `GET`s, so it also works when the
    /// keys live on different Redis Cluster shards). Used by the receive side to notice seqs
    /// it has not been sent (the tail of a conversation whose publisher died).
    pub async fn current(&self, convs: &[ConvId]) -> Result<Vec<Option<u64>>, RouterError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for conv in convs {
            pipe.get(seq_key(&self.namespace, conv));
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await.map_err(unavailable)
    }

    /// Creates the counter at `last` unless it exists, then returns the next seq.
    pub async fn restore(&self, conv: &ConvId, last: u64) -> Result<u64, RouterError> {
        let key = seq_key(&self.namespace, conv);
        retry_once(|| {
            let mut conn = self.conn.clone();
            let key = key.clone();
            async move {
                self.restore
                    .key(key)
                    .arg(last)
                    .invoke_async::<u64>(&mut conn)
                    .await
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("CHATD_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "CHATD_TEST_REDIS_URL is not set: start Redis with scripts/services/env.sh start \
                 and source .cache/services.env (the README's test command does this)"
            )
        })
    }

    fn opts(node: &str) -> RedisOptions {
        RedisOptions {
            url: redis_url(),
            node_id: format!("{node}-{}-{}", std::process::id(), rand_suffix()),
            heartbeat: Duration::from_millis(200),
            reconcile: Duration::from_millis(500),
            queue: 1024,
        }
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(
            || async { Arc::new(RedisRouter::connect(opts("n")).await.unwrap()) },
            true,
        )
        .await;
    }

    #[tokio::test]
    async fn seq_counters_restore_when_missing() {
        let seq = RedisSeq::connect(&redis_url(), "test").await.unwrap();
        let conv = ConvId::parse(&format!("group:seqtest{}", rand_suffix())).unwrap();
        assert_eq!(seq.next(&conv).await.unwrap(), None);
        assert_eq!(seq.restore(&conv, 41).await.unwrap(), 42);
        assert_eq!(seq.next(&conv).await.unwrap(), Some(43));
        // A racing restore with a stale floor does not move the counter back.
        assert_eq!(seq.restore(&conv, 5).await.unwrap(), 44);
        // The receive side reads counters without moving them.
        let none = ConvId::parse(&format!("group:seqnone{}", rand_suffix())).unwrap();
        assert_eq!(
            seq.current(&[conv.clone(), none]).await.unwrap(),
            vec![Some(44), None]
        );
        assert_eq!(seq.next(&conv).await.unwrap(), Some(45));
    }
}
