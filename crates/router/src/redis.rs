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
//! Redis Cluster ([`RedisMode::Cluster`]): every node's keys and its channel share one hash
//! tag, the node id (`chat:node:{<id>}`, `chat:node:{<id>}:users`, ...), so one node's keys
//! live in one slot and different nodes' channels spread over the shards. Channels are sharded
//! (`SPUBLISH`/`SSUBSCRIBE`): a message is sent only to the shard that owns its channel, not
//! broadcast over the cluster bus as a classic `PUBLISH` would be. Commands are routed by slot
//! (pipelines never cross a slot), and the subscription reconnects and resubscribes by itself;
//! after such an interruption the node closes its sessions with 4000 as in standalone mode.
//!
//! Sequence numbers ([`RedisSeq`]) are `INCR` counters (`chat:seq:<namespace>:{<conv>}`); a missing counter
//! (Redis restarted empty, `FLUSHALL`) is reported so the caller can restore it from the store.

use crate::{Audience, Control, Envelope, Router, RouterError, Sink};
use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::StreamExt;
use protocol::{ConvId, UserId};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, PushInfo, PushKind, RedisFuture, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis server (or a primary with replicas behind one address): classic pub/sub.
    #[default]
    Standalone,
    /// A Redis Cluster (7.0 or later): slot-routed commands and sharded pub/sub.
    Cluster,
}

/// Settings of the Redis router.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (standalone mode; in cluster mode the seed used when
    /// `cluster_urls` is empty).
    pub url: String,
    /// Standalone or cluster.
    pub mode: RedisMode,
    /// Cluster mode: seed URLs (any reachable subset of the cluster's nodes).
    pub cluster_urls: Vec<String>,
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
            mode: RedisMode::Standalone,
            cluster_urls: Vec::new(),
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

/// The names of one node's channel and keys. Standalone keeps the historical layout (all
/// nodes under the `{node}` tag); cluster mode tags them with the node id so that each node's
/// keys share a slot and different nodes spread over the shards.
#[derive(Debug, Clone, Copy)]
struct Names {
    cluster: bool,
}

impl Names {
    fn prefix(self, node: &str) -> String {
        if self.cluster {
            format!("chat:node:{{{node}}}")
        } else {
            format!("chat:{{node}}:{node}")
        }
    }
    fn node_channel(self, node: &str) -> String {
        self.prefix(node)
    }
    fn users_key(self, node: &str) -> String {
        format!("{}:users", self.prefix(node))
    }
    fn alive_key(self, node: &str) -> String {
        format!("{}:alive", self.prefix(node))
    }
    /// The descriptions of `user`'s sessions on `node` (a hash: session id → description).
    fn sessions_key(self, node: &str, user: &str) -> String {
        format!("{}:sessions:{user}", self.prefix(node))
    }
    /// The conversations `node` took seqs in recently, for the deployment `namespace` (a sorted
    /// set: conversation → when, ms since the epoch), read by the survivors when it dies.
    fn allocs_key(self, node: &str, namespace: &str) -> String {
        format!("{}:allocs:{namespace}", self.prefix(node))
    }
    /// `PUBLISH`, or `SPUBLISH` (sharded) in cluster mode.
    fn publish_cmd(self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

/// A command connection: one server through a reconnecting manager, or a slot-routing
/// cluster connection (which reconnects and follows topology changes by itself).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The seeds of a cluster: `cluster_urls`, or `url` alone when none are given.
fn cluster_seeds(url: &str, cluster_urls: &[String]) -> Vec<String> {
    if cluster_urls.is_empty() {
        vec![url.to_owned()]
    } else {
        cluster_urls.to_vec()
    }
}

/// Opens a command connection for `mode`.
async fn open_conn(
    mode: RedisMode,
    url: &str,
    cluster_urls: &[String],
) -> redis::RedisResult<Conn> {
    match mode {
        RedisMode::Standalone => {
            let client = redis::Client::open(url)?;
            Ok(Conn::Single(ConnectionManager::new(client).await?))
        }
        RedisMode::Cluster => {
            let client =
                redis::cluster::ClusterClientBuilder::new(cluster_seeds(url, cluster_urls))
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
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
    names: Names,
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
    /// This process's token, the value of its alive key: another process under the same node
    /// id has another one, so its peers can tell a restart from a node that lived on.
    incarnation: String,
    /// The other nodes last seen alive, with their incarnation tokens (only the heartbeat task
    /// uses it; the lock is never held across an await).
    peers: std::sync::Mutex<HashMap<String, String>>,
}

/// The Redis-backed router. Dropping it stops its background tasks.
pub struct RedisRouter {
    shared: Arc<Shared>,
    conn: Conn,
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
        let conn = open_conn(opts.mode, &opts.url, &opts.cluster_urls)
            .await
            .map_err(unavailable)?;
        let (ready, mut ready_rx) = tokio::sync::watch::channel(false);
        let names = Names {
            cluster: opts.mode == RedisMode::Cluster,
        };
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            names,
            sink: OnceLock::new(),
            local: DashMap::new(),
            presence: DashMap::new(),
            ready,
            echoes: DashMap::new(),
            next_echo: std::sync::atomic::AtomicU64::new(0),
            incarnation: format!("{:x}-{}", now_ms(), std::process::id()),
            peers: std::sync::Mutex::new(HashMap::new()),
        });
        // A node starts with no sessions: forget what an earlier process with this id left.
        forget_node(&mut conn.clone(), names, &opts.node_id)
            .await
            .map_err(unavailable)?;
        let stop = CancellationToken::new();
        let (out, out_rx) = mpsc::channel(opts.queue.max(1));
        tokio::spawn(publisher(conn.clone(), names, out_rx, stop.clone()));
        match opts.mode {
            RedisMode::Standalone => {
                let client = redis::Client::open(opts.url.as_str()).map_err(unavailable)?;
                tokio::spawn(subscriber(
                    shared.clone(),
                    client,
                    conn.clone(),
                    stop.clone(),
                ));
            }
            RedisMode::Cluster => {
                tokio::spawn(cluster_subscriber(
                    shared.clone(),
                    conn.clone(),
                    stop.clone(),
                ));
            }
        }
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
                    self.enqueue(self.shared.names.node_channel(&node), &part)?;
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
        let names = self.shared.names;
        let _: () = conn
            .sadd(names.users_key(node), user.as_str())
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
        let sent: redis::RedisResult<()> = redis::cmd(names.publish_cmd())
            .arg(PRESENCE)
            .arg(format!("+{node} {user} {echo}"))
            .query_async(&mut conn)
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
                self.shared
                    .names
                    .sessions_key(&self.shared.opts.node_id, user.as_str()),
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
                self.shared
                    .names
                    .sessions_key(&self.shared.opts.node_id, user.as_str()),
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
        let names = self.shared.names;
        if names.cluster {
            // Each node's hash lives in its own slot: one request per node, concurrently.
            let per_node = futures_util::future::try_join_all(nodes.iter().map(|node| {
                let mut conn = self.conn.clone();
                let key = names.sessions_key(node, user.as_str());
                async move { conn.hvals::<_, Vec<Vec<u8>>>(key).await }
            }))
            .await
            .map_err(unavailable)?;
            return Ok(per_node.into_iter().flatten().collect());
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hvals(names.sessions_key(node, user.as_str()));
        }
        let mut conn = self.conn.clone();
        let per_node: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(per_node.into_iter().flatten().collect())
    }

    async fn session_closed(&self, user: &UserId) -> Result<(), RouterError> {
        self.shared.local.remove(user);
        let mut conn = self.conn.clone();
        let node = &self.shared.opts.node_id;
        let names = self.shared.names;
        let _: () = conn
            .srem(names.users_key(node), user.as_str())
            .await
            .map_err(unavailable)?;
        let _: () = redis::cmd(names.publish_cmd())
            .arg(PRESENCE)
            .arg(format!("-{node} {user}"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Sends queued envelopes in order, retrying (with backoff) while Redis is away.
async fn publisher(
    mut conn: Conn,
    names: Names,
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
            let sent = if names.cluster {
                publish_sharded(&conn, &batch).await
            } else {
                let mut pipe = redis::pipe();
                for o in &batch {
                    pipe.publish(&o.channel, &o.payload).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            };
            match sent {
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

/// Cluster mode: `SPUBLISH`es a batch as one pipeline per channel (a pipeline must stay in one
/// slot), the pipelines concurrently; each channel's envelopes keep their order.
async fn publish_sharded(conn: &Conn, batch: &[Outgoing]) -> redis::RedisResult<()> {
    let mut per_channel: Vec<(&str, redis::Pipeline)> = Vec::new();
    for o in batch {
        let i = match per_channel.iter().position(|(c, _)| *c == o.channel) {
            Some(i) => i,
            None => {
                per_channel.push((o.channel.as_str(), redis::pipe()));
                per_channel.len() - 1
            }
        };
        per_channel[i]
            .1
            .cmd("SPUBLISH")
            .arg(&o.channel)
            .arg(&o.payload)
            .ignore();
    }
    futures_util::future::try_join_all(per_channel.into_iter().map(|(_, pipe)| {
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await }
    }))
    .await
    .map(|_| ())
}

/// Keeps the subscription up: subscribes, re-announces, rebuilds presence, and delivers.
async fn subscriber(
    shared: Arc<Shared>,
    client: redis::Client,
    conn: Conn,
    stop: CancellationToken,
) {
    let node = shared.opts.node_id.clone();
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(shared.names.node_channel(&node)).await?;
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

/// Hands the cluster connection's push messages to the subscriber through a bounded queue. A
/// full queue drops the push and raises `overflowed`: the subscriber then treats it as an
/// interrupted subscription (sessions reconnect and `sync`), so nothing is lost silently.
struct BoundedPush {
    tx: mpsc::Sender<PushInfo>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

impl redis::aio::AsyncPushSender for BoundedPush {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

/// Cluster mode: `SSUBSCRIBE`s this node's channel, `chat:all` and `chat:presence` (each to
/// the shard owning it), then delivers. The cluster connection reconnects and resubscribes by
/// itself; when it reports a dropped connection (or our queue overflowed), the node
/// re-announces, rebuilds presence and asks its sessions to reconnect and `sync`, as the
/// standalone subscriber does.
async fn cluster_subscriber(shared: Arc<Shared>, conn: Conn, stop: CancellationToken) {
    let node = shared.opts.node_id.clone();
    let channels = [
        shared.names.node_channel(&node),
        ALL.to_owned(),
        PRESENCE.to_owned(),
    ];
    let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut backoff = Duration::from_millis(100);
    let (mut sub, mut rx) = loop {
        if stop.is_cancelled() {
            return;
        }
        let (tx, rx) = mpsc::channel(shared.opts.queue.max(16));
        let attempt = async {
            let client = redis::cluster::ClusterClientBuilder::new(cluster_seeds(
                &shared.opts.url,
                &shared.opts.cluster_urls,
            ))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .push_sender(BoundedPush {
                tx,
                overflowed: overflowed.clone(),
            })
            .build()?;
            let mut sub = client.get_async_connection().await?;
            // One command per channel: they may live in different slots.
            for channel in &channels {
                sub.ssubscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(sub)
        };
        match attempt.await {
            Ok(sub) => break (sub, rx),
            Err(e) => {
                tracing::warn!(error = %e, "redis cluster subscribe failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    if let Err(e) = announce(&shared, conn.clone()).await {
        tracing::warn!(error = %e, "redis re-announce failed");
    }
    if let Err(e) = reconcile(&shared, conn.clone()).await {
        tracing::warn!(error = %e, "presence rebuild failed");
    }
    shared.ready.send_replace(true);
    tracing::info!(node = %node, "redis cluster sharded subscription up");
    let mut interrupted = false;
    let mut probe = tokio::time::interval(Duration::from_millis(500));
    loop {
        let push = tokio::select! {
            p = rx.recv() => p,
            _ = probe.tick() => {
                if interrupted {
                    // A command on the subscribing connection makes it reconnect (and so
                    // resubscribe) to nodes it lost.
                    let _: redis::RedisResult<Value> = redis::cmd("PING").query_async(&mut sub).await;
                }
                continue;
            }
            _ = stop.cancelled() => return,
        };
        let Some(push) = push else { return };
        if overflowed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("redis push queue overflowed; treating it as an interruption");
            resync(&shared, &conn).await;
        }
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    continue;
                };
                if let Ok(channel) = std::str::from_utf8(&channel) {
                    handle_message(&shared, channel, &payload);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis cluster subscription interrupted; resubscribing");
                interrupted = true;
            }
            PushKind::SUnsubscribe => {
                // The server drops sharded subscriptions whose slot moved: follow the slot.
                let channel = push.data.first().and_then(|v| match v {
                    Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                    _ => None,
                });
                if let Some(channel) = channel.filter(|c| channels.contains(c)) {
                    tracing::warn!(channel = %channel, "sharded subscription dropped; resubscribing");
                    interrupted = true;
                    if let Err(e) = sub.ssubscribe(&channel).await {
                        tracing::warn!(error = %e, "sharded resubscribe failed");
                    }
                }
            }
            PushKind::SSubscribe if interrupted => {
                interrupted = false;
                resync(&shared, &conn).await;
            }
            _ => {}
        }
    }
}

/// After an interrupted (or overflowed) subscription: registers this node again, rebuilds
/// presence, and asks the local sessions to reconnect and `sync` (what was published to us in
/// between is gone).
async fn resync(shared: &Shared, conn: &Conn) {
    if let Err(e) = announce(shared, conn.clone()).await {
        tracing::warn!(error = %e, "redis re-announce failed");
    }
    if let Err(e) = reconcile(shared, conn.clone()).await {
        tracing::warn!(error = %e, "presence rebuild failed");
    }
    if let Some(sink) = shared.sink.get() {
        tracing::warn!("redis subscription restored; asking local sessions to reconnect and sync");
        sink.deliver(Arc::new(Envelope::broadcast(Control::Disconnect {
            code: protocol::close::SLOW_CONSUMER,
            reason: "routing was interrupted: reconnect and sync".into(),
            session: None,
        })));
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
async fn announce(shared: &Shared, mut conn: Conn) -> redis::RedisResult<()> {
    let node = &shared.opts.node_id;
    let names = shared.names;
    let ttl = (shared.opts.heartbeat * 3).as_millis() as u64;
    // The node list is one key; the node's own keys share a slot (one pipeline, even in a
    // Redis Cluster).
    let _: () = conn.sadd(NODES, node).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(names.alive_key(node))
        .arg(&shared.incarnation)
        .arg("PX")
        .arg(ttl)
        .ignore();
    let users: Vec<String> = shared.local.iter().map(|u| u.key().to_string()).collect();
    for chunk in users.chunks(1000) {
        pipe.sadd(names.users_key(node), chunk).ignore();
    }
    // The sessions' descriptions come from the sink (the hub), which holds the sessions.
    if let Some(sink) = shared.sink.get() {
        for (user, session, description) in sink.session_descriptions() {
            pipe.hset(
                names.sessions_key(node, user.as_str()),
                session,
                description,
            )
            .ignore();
        }
    }
    pipe.query_async::<()>(&mut conn).await
}

/// Deletes what Redis holds about `node`'s users and sessions (a node that is gone, or this
/// node starting afresh).
async fn forget_node(conn: &mut Conn, names: Names, node: &str) -> redis::RedisResult<()> {
    let users: Vec<String> = conn.smembers(names.users_key(node)).await?;
    let mut pipe = redis::pipe();
    for user in &users {
        pipe.del(names.sessions_key(node, user)).ignore();
    }
    pipe.del(names.users_key(node)).ignore();
    pipe.query_async::<()>(conn).await
}

/// Rebuilds the presence map from the nodes' user sets, dropping dead nodes.
async fn reconcile(shared: &Shared, mut conn: Conn) -> redis::RedisResult<()> {
    let names = shared.names;
    let nodes: Vec<String> = conn.smembers(NODES).await?;
    let mut fresh: HashMap<UserId, Vec<String>> = HashMap::new();
    for node in nodes {
        if node == shared.opts.node_id {
            continue;
        }
        let alive: bool = conn.exists(names.alive_key(&node)).await?;
        if !alive {
            let _: () = conn.srem(NODES, &node).await?;
            forget_node(&mut conn, names, &node).await?;
            continue;
        }
        let users: Vec<String> = conn.smembers(names.users_key(&node)).await?;
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
async fn heartbeat(shared: Arc<Shared>, conn: Conn, stop: CancellationToken) {
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
        let alive: redis::RedisResult<bool> = c.exists(shared.names.alive_key(node)).await;
        match alive {
            // The key vanished (Redis restarted or was flushed): register everything again.
            Ok(false) => {
                if let Err(e) = announce(&shared, conn.clone()).await {
                    tracing::warn!(error = %e, "redis re-announce failed");
                }
            }
            Ok(true) => {
                let r: redis::RedisResult<()> = redis::cmd("PEXPIRE")
                    .arg(shared.names.alive_key(node))
                    .arg(ttl)
                    .query_async(&mut c)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "redis heartbeat failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "redis heartbeat failed"),
        }
        if let Err(e) = watch_peers(&shared, conn.clone()).await {
            tracing::warn!(error = %e, "checking the other nodes' alive keys failed");
        }
        if last_reconcile.elapsed() >= shared.opts.reconcile {
            last_reconcile = tokio::time::Instant::now();
            if let Err(e) = reconcile(&shared, conn.clone()).await {
                tracing::warn!(error = %e, "presence rebuild failed");
            }
        }
    }
}

/// Reads the other nodes' alive keys (one `MGET`; the cluster client splits it by slot) and
/// tells the sink about each node seen alive before whose key is now gone or carries another
/// incarnation: that process died (or was restarted) and may have left acknowledged messages
/// unpublished. Nodes are remembered here, not only in `chat:nodes` (which any survivor
/// prunes), so every survivor notices every death.
async fn watch_peers(shared: &Shared, mut conn: Conn) -> redis::RedisResult<()> {
    let me = &shared.opts.node_id;
    let mut nodes: Vec<String> = conn.smembers(NODES).await?;
    if let Ok(peers) = shared.peers.lock() {
        nodes.extend(peers.keys().cloned());
    }
    nodes.sort_unstable();
    nodes.dedup();
    nodes.retain(|n| n != me);
    if nodes.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = nodes.iter().map(|n| shared.names.alive_key(n)).collect();
    let alive: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
    let mut died = Vec::new();
    if let Ok(mut peers) = shared.peers.lock() {
        for (node, token) in nodes.into_iter().zip(alive) {
            let before = match token {
                Some(token) => peers
                    .insert(node.clone(), token.clone())
                    .filter(|t| *t != token),
                None => peers.remove(&node),
            };
            if before.is_some() {
                died.push(node);
            }
        }
    }
    if let Some(sink) = shared.sink.get() {
        for node in died {
            tracing::warn!(node = %node, "a node stopped: checking what it may not have published");
            sink.node_died(&node);
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// Per-conversation sequence counters in Redis, and (for a node that takes seqs, see
/// [`RedisSeq::recording`]) the record of the conversations it took them in.
#[derive(Clone)]
pub struct RedisSeq {
    conn: Conn,
    names: Names,
    namespace: String,
    next: redis::Script,
    restore: redis::Script,
    next_recorded: redis::Script,
    restore_recorded: redis::Script,
    record: Option<Arc<Record>>,
}

/// Where this node records the conversations it takes seqs in.
struct Record {
    /// The node's sorted set (conversation → ms of its last allocation).
    key: String,
    /// How long an entry stays.
    keep: Duration,
    /// When the set was last trimmed (ms since the epoch).
    trimmed: std::sync::atomic::AtomicU64,
}

fn seq_key(namespace: &str, conv: &ConvId) -> String {
    format!("chat:seq:{namespace}:{{{conv}}}")
}

impl RedisSeq {
    /// Connects to `url`. `namespace` separates deployments sharing one Redis (the gateway
    /// uses the store's keyspace, whose seqs these are).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, RouterError> {
        Self::connect_with(RedisMode::Standalone, url, &[], namespace).await
    }

    /// Connects in `mode` (in cluster mode to the seeds `cluster_urls`, or `url` when that is
    /// empty). Each counter is one key (`{<conv>}`-tagged), so it works unchanged in a cluster.
    pub async fn connect_with(
        mode: RedisMode,
        url: &str,
        cluster_urls: &[String],
        namespace: &str,
    ) -> Result<Self, RouterError> {
        let conn = open_conn(mode, url, cluster_urls)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            conn,
            names: Names {
                cluster: mode == RedisMode::Cluster,
            },
            namespace: namespace.to_owned(),
            next: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) else return false end",
            ),
            restore: redis::Script::new(
                "redis.call('SET', KEYS[1], ARGV[1], 'NX'); return redis.call('INCR', KEYS[1])",
            ),
            // Standalone: the seq and its record in one script (one round trip).
            next_recorded: redis::Script::new(
                "redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]); redis.call('PEXPIRE', KEYS[2], ARGV[3]); \
                 if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCR', KEYS[1]) else return false end",
            ),
            restore_recorded: redis::Script::new(
                "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]); redis.call('PEXPIRE', KEYS[2], ARGV[4]); \
                 redis.call('SET', KEYS[1], ARGV[1], 'NX'); return redis.call('INCR', KEYS[1])",
            ),
            record: None,
        })
    }

    /// Makes every seq taken through this handle also record its conversation in `node`'s
    /// allocation record (a sorted set, entries kept `keep`), in the same round trip as the
    /// `INCR` (standalone: one script; cluster: the record's slot is another shard, so the two
    /// requests go concurrently). When `node` dies, the survivors read the record
    /// ([`RedisSeq::allocations`]) and deliver from the store what it acknowledged but never
    /// published.
    pub fn recording(mut self, node: &str, keep: Duration) -> Self {
        self.record = Some(Arc::new(Record {
            key: self.names.allocs_key(node, &self.namespace),
            keep,
            trimmed: std::sync::atomic::AtomicU64::new(0),
        }));
        self
    }

    /// The record's TTL: it outlives its newest entry by `keep`.
    fn record_ttl(record: &Record) -> u64 {
        (record.keep * 2).as_millis().max(1000) as u64
    }

    /// Records `conv` in the allocation record (cluster mode: its own request).
    async fn record_alone(
        &self,
        record: &Record,
        conv: &ConvId,
        now: u64,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.zadd(&record.key, conv.as_str(), now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&record.key)
            .arg(Self::record_ttl(record))
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Drops entries older than `keep`, at most every `keep / 4`.
    async fn trim(&self, record: &Record, now: u64) {
        use std::sync::atomic::Ordering;
        let every = (record.keep / 4).as_millis().max(1000) as u64;
        let last = record.trimmed.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || record
                .trimmed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let oldest = now.saturating_sub(record.keep.as_millis() as u64);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&record.key)
            .arg("-inf")
            .arg(format!("({oldest}"))
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "trimming the seq allocation record failed");
        }
    }

    /// Runs a seq script, recording `conv` as [`RedisSeq::recording`] says. A failed record
    /// only costs the crash repair for this message (logged), never the send.
    async fn take<T: redis::FromRedisValue + Send>(
        &self,
        conv: &ConvId,
        plain: &redis::Script,
        recorded: &redis::Script,
        args: &[u64],
    ) -> redis::RedisResult<T> {
        let key = seq_key(&self.namespace, conv);
        let mut conn = self.conn.clone();
        let Some(record) = &self.record else {
            let mut inv = plain.key(&key);
            for a in args {
                inv.arg(*a);
            }
            return inv.invoke_async(&mut conn).await;
        };
        let now = now_ms();
        self.trim(record, now).await;
        if self.names.cluster {
            let mut inv = plain.key(&key);
            for a in args {
                inv.arg(*a);
            }
            let (seq, recorded) = tokio::join!(
                inv.invoke_async::<T>(&mut conn),
                self.record_alone(record, conv, now)
            );
            if let Err(e) = recorded {
                tracing::warn!(conv = %conv, error = %e, "recording a seq allocation failed");
            }
            return seq;
        }
        let mut inv = recorded.key(&key);
        inv.key(&record.key);
        for a in args {
            inv.arg(*a);
        }
        inv.arg(now)
            .arg(conv.as_str())
            .arg(Self::record_ttl(record))
            .invoke_async(&mut conn)
            .await
    }

    /// The next seq, or `None` when the counter does not exist.
    pub async fn next(&self, conv: &ConvId) -> Result<Option<u64>, RouterError> {
        retry_once(|| self.take(conv, &self.next, &self.next_recorded, &[])).await
    }

    /// The current value of each conversation's counter (the last seq handed out), `None`
    /// where there is none; one `MGET` per 1,000 (in a Redis Cluster the client splits it by
    /// slot and sends the parts concurrently). Used by the receive side to notice seqs it has
    /// not been sent (the tail of a conversation whose publisher died).
    pub async fn current(&self, convs: &[ConvId]) -> Result<Vec<Option<u64>>, RouterError> {
        let mut out = Vec::with_capacity(convs.len());
        for chunk in convs.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|c| seq_key(&self.namespace, c)).collect();
            let mut conn = self.conn.clone();
            let values: Vec<Option<u64>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            out.extend(values);
        }
        Ok(out)
    }

    /// The conversations `node` recorded taking seqs in during the last `within` (see
    /// [`RedisSeq::recording`]); a dead node's record outlives it by its `keep`.
    pub async fn allocations(
        &self,
        node: &str,
        within: Duration,
    ) -> Result<Vec<ConvId>, RouterError> {
        let key = self.names.allocs_key(node, &self.namespace);
        let since = now_ms().saturating_sub(within.as_millis() as u64);
        let mut conn = self.conn.clone();
        let convs: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(convs
            .into_iter()
            .filter_map(|c| ConvId::parse(&c).ok())
            .collect())
    }

    /// Creates the counter at `last` unless it exists, then returns the next seq.
    pub async fn restore(&self, conv: &ConvId, last: u64) -> Result<u64, RouterError> {
        let args = [last];
        retry_once(|| self.take(conv, &self.restore, &self.restore_recorded, &args)).await
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
            mode: RedisMode::Standalone,
            cluster_urls: Vec::new(),
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

    fn cluster_urls() -> Vec<String> {
        let urls = std::env::var("CHATD_TEST_REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
            panic!(
                "CHATD_TEST_REDIS_CLUSTER_URLS is not set: start the Redis Cluster with \
                 scripts/services/env.sh start and source .cache/services.env (the README's \
                 test command does this)"
            )
        });
        urls.split(',').map(str::to_owned).collect()
    }

    fn cluster_opts(node: &str) -> RedisOptions {
        RedisOptions {
            mode: RedisMode::Cluster,
            cluster_urls: cluster_urls(),
            ..opts(node)
        }
    }

    #[tokio::test]
    async fn cluster_conformance() {
        crate::conformance::run_all(
            || async { Arc::new(RedisRouter::connect(cluster_opts("c")).await.unwrap()) },
            true,
        )
        .await;
    }

    async fn keyslot(conn: &mut Conn, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(conn)
            .await
            .unwrap()
    }

    /// Node channels spread over the slots, and each node's keys share one slot.
    #[tokio::test]
    async fn cluster_names_spread_nodes_over_slots() {
        let mut conn = open_conn(RedisMode::Cluster, "", &cluster_urls())
            .await
            .unwrap();
        let names = Names { cluster: true };
        let mut slots = std::collections::HashSet::new();
        for i in 0..16 {
            slots.insert(keyslot(&mut conn, &names.node_channel(&format!("node-{i}"))).await);
        }
        assert!(slots.len() > 8, "node channels should spread: {slots:?}");
        let n = "node-x";
        let s = keyslot(&mut conn, &names.node_channel(n)).await;
        assert_eq!(keyslot(&mut conn, &names.users_key(n)).await, s);
        assert_eq!(keyslot(&mut conn, &names.alive_key(n)).await, s);
        assert_eq!(keyslot(&mut conn, &names.sessions_key(n, "alice")).await, s);
    }

    #[tokio::test]
    async fn cluster_seq_counters_across_slots() {
        let urls = cluster_urls();
        let seq = RedisSeq::connect_with(RedisMode::Cluster, "", &urls, "test")
            .await
            .unwrap();
        let mut conn = open_conn(RedisMode::Cluster, "", &urls).await.unwrap();
        // Many conversations: their counters land on all three masters.
        let mut slots = std::collections::HashSet::new();
        for i in 0..30 {
            let conv = ConvId::parse(&format!("group:cs{}x{i}", rand_suffix())).unwrap();
            slots.insert(keyslot(&mut conn, &seq_key("test", &conv)).await);
            assert_eq!(seq.next(&conv).await.unwrap(), None);
            assert_eq!(seq.restore(&conv, 41).await.unwrap(), 42);
            assert_eq!(seq.next(&conv).await.unwrap(), Some(43));
            assert_eq!(seq.restore(&conv, 5).await.unwrap(), 44);
        }
        assert!(slots.len() > 10);
    }

    /// Seqs taken through a recording handle leave their conversations in the node's record
    /// (in both modes); `current` reads counters on any shards.
    async fn allocation_record(mode: RedisMode, url: &str, urls: &[String]) {
        let ns = format!("rec{}", rand_suffix());
        let node = format!("n{}", rand_suffix());
        let plain = RedisSeq::connect_with(mode, url, urls, &ns).await.unwrap();
        let seq = plain.clone().recording(&node, Duration::from_secs(60));
        let convs: Vec<ConvId> = (0..20)
            .map(|i| ConvId::parse(&format!("group:rec{i}")).unwrap())
            .collect();
        for (i, conv) in convs.iter().enumerate() {
            assert_eq!(seq.next(conv).await.unwrap(), None);
            assert_eq!(seq.restore(conv, i as u64).await.unwrap(), i as u64 + 1);
            assert_eq!(seq.next(conv).await.unwrap(), Some(i as u64 + 2));
        }
        let mut recorded = plain
            .allocations(&node, Duration::from_secs(60))
            .await
            .unwrap();
        recorded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut want = convs.clone();
        want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(recorded, want);
        assert!(plain
            .allocations("nobody", Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        let current = plain.current(&convs).await.unwrap();
        assert_eq!(
            current,
            (0..20).map(|i| Some(i + 2)).collect::<Vec<Option<u64>>>()
        );
    }

    #[tokio::test]
    async fn seq_allocations_are_recorded() {
        allocation_record(RedisMode::Standalone, &redis_url(), &[]).await;
    }

    #[tokio::test]
    async fn cluster_seq_allocations_are_recorded() {
        allocation_record(RedisMode::Cluster, "", &cluster_urls()).await;
    }

    /// A sink that only counts the deaths it is told about.
    #[derive(Default)]
    struct Deaths(std::sync::Mutex<Vec<String>>);

    impl Sink for Deaths {
        fn deliver(&self, _envelope: Arc<Envelope>) {}
        fn node_died(&self, node: &str) {
            self.0.lock().unwrap().push(node.to_owned());
        }
    }

    /// When a node stops refreshing its alive key, the others are told once.
    async fn peers_notice_a_death(a: RedisOptions, b: RedisOptions) {
        let a = RedisRouter::connect(a).await.unwrap();
        let deaths = Arc::new(Deaths::default());
        a.attach(deaths.clone());
        let b = RedisRouter::connect(b).await.unwrap();
        let dead = b.node_id().to_owned();
        // A sees B alive first.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(deaths.0.lock().unwrap().is_empty());
        drop(b);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while deaths.0.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "death not noticed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*deaths.0.lock().unwrap(), vec![dead]);
    }

    #[tokio::test]
    async fn a_dead_node_is_noticed() {
        peers_notice_a_death(opts("d"), opts("d")).await;
    }

    #[tokio::test]
    async fn cluster_a_dead_node_is_noticed() {
        peers_notice_a_death(cluster_opts("d"), cluster_opts("d")).await;
    }

    /// The send path's cost of the allocation record: `next` without and with it, A/B
    /// interleaved, wall time per call (one connection, calls in sequence) and the Redis
    /// server's own time per call (`INFO commandstats`, so use a Redis nobody else loads:
    /// `CHATD_BENCH_REDIS_URL`). Run with `--ignored --nocapture`.
    #[tokio::test]
    #[ignore = "benchmark (prints timings, asserts little); scripts/test.sh runs it with --include-ignored"]
    async fn bench_seq_next_with_and_without_the_record() {
        let url = std::env::var("CHATD_BENCH_REDIS_URL").unwrap_or_else(|_| redis_url());
        let ns = format!("bench{}", rand_suffix());
        // CHATD_BENCH_CLUSTER=1: the test Redis Cluster instead (wall times only).
        let cluster = std::env::var("CHATD_BENCH_CLUSTER").is_ok_and(|v| v == "1");
        let plain = if cluster {
            RedisSeq::connect_with(RedisMode::Cluster, "", &cluster_urls(), &ns)
                .await
                .unwrap()
        } else {
            RedisSeq::connect(&url, &ns).await.unwrap()
        };
        let recorded = plain
            .clone()
            .recording("bench-node", Duration::from_secs(60));
        let convs: Vec<ConvId> = (0..1000)
            .map(|i| ConvId::parse(&format!("group:b{i}")).unwrap())
            .collect();
        for c in &convs {
            plain.restore(c, 0).await.unwrap();
        }
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n = 20_000usize;
        for round in 0..4 {
            for (label, seq) in [("without", &plain), ("with", &recorded)] {
                if !cluster {
                    let _: () = redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async(&mut admin)
                        .await
                        .unwrap();
                }
                let started = std::time::Instant::now();
                for i in 0..n {
                    seq.next(&convs[i % convs.len()]).await.unwrap();
                }
                let wall = started.elapsed().as_secs_f64() * 1e6 / n as f64;
                if cluster {
                    eprintln!("round {round} {label:>7} the record: {wall:.1} us per next() (wall, cluster)");
                    continue;
                }
                let stats: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let server = stats
                    .lines()
                    .find(|l| l.starts_with("cmdstat_evalsha:"))
                    .and_then(|l| l.split("usec_per_call=").nth(1))
                    .and_then(|v| v.split(',').next())
                    .unwrap_or("?")
                    .to_owned();
                eprintln!(
                    "round {round} {label:>7} the record: {wall:.1} us per next() (wall), \
                     {server} us per script call in Redis"
                );
            }
        }
    }

    /// The tail check's cost at scale: reading 10,000 counters as one pipeline of `GET`s (the
    /// earlier implementation) and as `MGET`s of 1,000 (the current one), A/B interleaved:
    /// wall time per round and the Redis server's time per round (`INFO commandstats`; use a
    /// Redis nobody else loads: `CHATD_BENCH_REDIS_URL`). Run with `--ignored --nocapture`.
    #[tokio::test]
    #[ignore = "benchmark (prints timings, asserts little); scripts/test.sh runs it with --include-ignored"]
    async fn bench_tail_check_reads() {
        let url = std::env::var("CHATD_BENCH_REDIS_URL").unwrap_or_else(|_| redis_url());
        let ns = format!("bench{}", rand_suffix());
        let seq = RedisSeq::connect(&url, &ns).await.unwrap();
        let convs: Vec<ConvId> = (0..10_000)
            .map(|i| ConvId::parse(&format!("group:t{i}")).unwrap())
            .collect();
        for c in convs.iter().step_by(2) {
            seq.restore(c, 7).await.unwrap();
        }
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let server_usec = |stats: &str| -> u64 {
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_get:") || l.starts_with("cmdstat_mget:"))
                .filter_map(|l| l.split("usec=").nth(1))
                .filter_map(|v| v.split(',').next())
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        };
        async fn cpu_secs(admin: &mut redis::aio::MultiplexedConnection) -> f64 {
            let info: String = redis::cmd("INFO")
                .arg("cpu")
                .query_async(admin)
                .await
                .unwrap();
            info.lines()
                .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
                .filter_map(|l| l.split(':').nth(1))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .sum()
        }
        let rounds = 20;
        for round in 0..3 {
            for label in ["GET pipeline", "MGET"] {
                let _: () = redis::cmd("CONFIG")
                    .arg("RESETSTAT")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let cpu_before = cpu_secs(&mut admin).await;
                let started = std::time::Instant::now();
                for _ in 0..rounds {
                    let values = if label == "MGET" {
                        seq.current(&convs).await.unwrap()
                    } else {
                        let mut out = Vec::new();
                        for chunk in convs.chunks(1000) {
                            let mut pipe = redis::pipe();
                            for conv in chunk {
                                pipe.get(seq_key(&ns, conv));
                            }
                            let mut conn = seq.conn.clone();
                            let v: Vec<Option<u64>> = pipe.query_async(&mut conn).await.unwrap();
                            out.extend(v);
                        }
                        out
                    };
                    assert_eq!(values.len(), convs.len());
                }
                let wall = started.elapsed().as_secs_f64() * 1e3 / f64::from(rounds);
                let cpu = (cpu_secs(&mut admin).await - cpu_before) * 1e3 / f64::from(rounds);
                let stats: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                let server = server_usec(&stats) as f64 / 1e3 / f64::from(rounds);
                eprintln!(
                    "round {round} {label:>12}: 10,000 counters in {wall:.2} ms (wall), \
                     {server:.2} ms in the commands, {cpu:.2} ms of Redis CPU"
                );
            }
        }
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
