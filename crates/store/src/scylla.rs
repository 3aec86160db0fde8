//! The ScyllaDB backend (cluster mode), also run against Apache Cassandra 5 in the tests.
//!
//! Messages are partitioned by (conversation, bucket) with `bucket = seq / bucket_size`
//! ([`DEFAULT_BUCKET_SIZE`] = 10,000 unless the options say otherwise), clustered by seq
//! descending, so a partition stays bounded however long a conversation grows, and a page
//! of history is one slice of one or two partitions. Seqs come from a [`SeqSource`] (Redis in
//! cluster mode); when it has no counter for a conversation, the store reads the highest seq
//! it holds and restores the counter from it, so a lost counter never restarts at 1.
//!
//! An append reads the idempotency row, takes the next seq, and writes the message, its
//! idempotency row, the conversation's meta row and the direct-conversation list rows in one
//! logged batch at the configured consistency; it returns only after that write succeeded.
//! Retries of one key on the same node are serialized in memory, so they store the message
//! once; a write that failed because the database was unreachable is kept in a small bounded
//! queue and written with its seq once the database is back (see docs/SCYLLA.md for the edge
//! cases and what this does and does not cover).
//!
//! Monotonic values (a conversation's last seq, read cursors) use write timestamps instead of
//! lightweight transactions: a row written `USING TIMESTAMP seq` keeps the highest seq
//! whatever order the writes arrive in. The schema is in [`ScyllaStore::migrate`] and
//! docs/SCYLLA.md.

mod compliance;
mod cql;
mod skip;

use crate::{
    Appended, AuditEntry, AuditQuery, Group, HeldMessage, Member, MetaOp, MetaStore, NewMessage,
    Page, Result, ReviewStore, SeqSource, Store, StoreError, Swap,
};
use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::client::PoolSize;
use ::scylla::deserialize::row::DeserializeRow;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::{Batch, BatchStatement, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
pub use ::scylla::statement::Consistency;
use ::scylla::value::MaybeUnset;
use async_trait::async_trait;
use cql::{exec_err, Statements};
use dashmap::DashMap;
use futures_util::{StreamExt, TryStreamExt};
use protocol::{ConvId, ConvKind, ConvSummary, GroupId, Message, MessageId, Seq, UserId};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Messages per partition of the `messages` table: `bucket = seq / bucket_size`.
pub const DEFAULT_BUCKET_SIZE: u64 = 10_000;

/// The largest TTL CQL accepts (20 years, in seconds); longer retentions are clamped to it.
pub const MAX_TTL_SECS: u32 = 630_720_000;

/// Base of the idempotency rows' write timestamps (`2^50 - seq`, in the past): the row with
/// the lowest seq wins if a key was ever written twice.
const IDEM_TS_BASE: i64 = 1 << 50;

/// How long a group's retention is cached before it is read again (another node may have
/// changed it).
const RETENTION_CACHE: Duration = Duration::from_secs(30);

/// How long a message written by the retry queue is remembered, so that the sender's retry
/// of it gets a first (non-duplicate) acknowledgement.
const RECOVERED_KEEP: Duration = Duration::from_secs(600);

/// Reads of a message that its idempotency row points to, before giving up (the logged batch
/// that wrote both may still be being applied).
const DUPLICATE_READ_ATTEMPTS: u32 = 5;

/// Members written per logged batch when a group is created.
const MEMBER_BATCH: usize = 50;

/// Conversations whose meta rows the conversation list reads at once.
const LIST_CONCURRENCY: usize = 32;

/// Messages the retention job deletes at once (`Store::expire`).
const EXPIRE_CONCURRENCY: usize = 16;

/// Connection and behaviour settings of [`ScyllaStore`].
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Contact points, `host:port` (the driver discovers the other nodes).
    pub nodes: Vec<String>,
    /// The keyspace (letters, digits and `_`, starting with a letter); created by
    /// [`ScyllaStore::migrate`].
    pub keyspace: String,
    /// Replicas of every row (used when the keyspace is created).
    pub replication_factor: u32,
    /// With a datacenter name the keyspace uses `NetworkTopologyStrategy` with
    /// `replication_factor` replicas in it; without, `SimpleStrategy`.
    pub datacenter: Option<String>,
    /// Consistency of every read and write: `LocalQuorum` (the default) for a replicated
    /// cluster, `One` for a single node.
    pub consistency: Consistency,
    /// Client-side timeout of one request (after which the call fails with `Unavailable`).
    pub request_timeout: Duration,
    /// Timeout of establishing one connection.
    pub connect_timeout: Duration,
    /// Connections per shard (ScyllaDB) or per node (Cassandra); `None` = the driver's
    /// default (one per shard).
    pub connections_per_shard: Option<NonZeroUsize>,
    /// Retention of messages without a group-specific one, in seconds (`None` = forever).
    pub default_ttl_secs: Option<u32>,
    /// Messages per partition (fixed when the keyspace is created; [`ScyllaStore::migrate`]
    /// refuses a different value later).
    pub bucket_size: u64,
    /// Most failed appends kept in memory to be written later (see docs/SCYLLA.md).
    pub retry_queue: usize,
    /// How often the retry queue tries to write what it holds.
    pub retry_interval: Duration,
    /// How an append is written (measured in docs/BENCHMARKS.md; edge cases in
    /// docs/SCYLLA.md).
    pub write_path: WritePath,
}

/// How [`ScyllaStore`] writes one message. Every path keeps the idempotency read in front
/// and gap-free seqs; they differ in what is atomic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WritePath {
    /// One logged batch: message, idempotency row, conversation meta row and the
    /// participants' `user_convs` rows, all or nothing. One request per message; the
    /// cheapest of the three as measured (docs/BENCHMARKS.md).
    #[default]
    Logged,
    /// A logged batch of only the message and its idempotency row (the pair that must be
    /// atomic), with the meta row and the `user_convs` rows this node has not written yet as
    /// single writes alongside it. The meta row is a hint (reads scan past it) and
    /// `user_convs` rows are idempotent; a crash between them leaves a direct conversation
    /// out of a side's list until its next message. Measured slower than `Logged`.
    Split,
    /// No batch: every row a single write, concurrently, the idempotency row after the
    /// message. Cheapest, but a crash between the two leaves a stored message whose retry is
    /// stored again under a new seq (a duplicate); kept for measurements only.
    Unlogged,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "chat".into(),
            replication_factor: 3,
            datacenter: None,
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connections_per_shard: None,
            default_ttl_secs: None,
            bucket_size: DEFAULT_BUCKET_SIZE,
            retry_queue: 10_000,
            retry_interval: Duration::from_secs(1),
            write_path: WritePath::default(),
        }
    }
}

impl ScyllaOptions {
    /// Settings for one node: replication factor 1, consistency `One`.
    pub fn single_node(node: impl Into<String>, keyspace: impl Into<String>) -> Self {
        Self {
            nodes: vec![node.into()],
            keyspace: keyspace.into(),
            replication_factor: 1,
            consistency: Consistency::One,
            ..Self::default()
        }
    }
}

/// Parses a consistency level by its CQL name, case-insensitively (`one`, `local_quorum`,
/// `quorum`, `local_one`, `two`, `three`, `all`, `each_quorum`).
pub fn parse_consistency(s: &str) -> Result<Consistency> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        "all" => Consistency::All,
        other => {
            return Err(StoreError::backend(format!(
                "unknown consistency level {other:?}"
            )))
        }
    })
}

/// A message whose write failed while the database was unreachable, kept to be written
/// later with the seq it was given.
#[derive(Debug, Clone)]
struct Pending {
    message: Message,
    client_msg_id: String,
    participants: Vec<UserId>,
    ttl: i32,
    /// Written by the retry queue, not yet acknowledged to its sender.
    written: bool,
    since: Instant,
    /// Its compliance event (id and JSON body), written with it; in flight until then.
    event: (crate::EventId, String),
}

/// Serializes appends of one idempotency key within this process.
#[derive(Default)]
struct KeyLocks(DashMap<String, Arc<tokio::sync::Mutex<()>>>);

/// Holds a key's lock; removes the key's entry when nobody else waits for it.
struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    mutex: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, key: String) -> KeyGuard<'_> {
        let mutex = self.0.entry(key.clone()).or_default().clone();
        let mut g = KeyGuard {
            locks: self,
            key,
            mutex: Some(mutex.clone()),
            guard: None,
        };
        g.guard = Some(mutex.lock_owned().await);
        g
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.mutex.take();
        // Only the map's own reference left: nobody holds or waits for this key. Clones are
        // taken under the same shard lock, so none can appear while this check runs.
        self.locks
            .0
            .remove_if(&self.key, |_, m| Arc::strong_count(m) == 1);
    }
}

struct Inner {
    session: Session,
    opts: ScyllaOptions,
    seq: Arc<dyn SeqSource>,
    stmts: OnceCell<Statements>,
    locks: KeyLocks,
    /// Failed appends by idempotency key (bounded by `opts.retry_queue`).
    pending: DashMap<String, Pending>,
    /// Group retention (seconds, `None` = the default), with when it was read.
    retention: DashMap<String, (Option<u32>, Instant)>,
    /// `(user, conv)` pairs whose `user_convs` row this process wrote (`WritePath::Split`
    /// skips rewriting them); cleared when it reaches `USER_CONVS_CACHE`.
    user_convs: DashMap<(String, String), ()>,
    /// Conversations' min seqs (`Store::min_seq`) with when they were read: `history` and
    /// `sync` report it, and it only ever rises, so a copy a few seconds old is harmless.
    floors: DashMap<String, (u64, bool, Instant)>,
    closed: AtomicBool,
    /// This process's compliance event ids and those in flight (see `scylla/compliance.rs`).
    events: crate::compliance::Sequencer,
    /// Set once this process's source row is written (before its first event).
    registered: OnceCell<()>,
}

/// How long a conversation's min seq is cached.
const FLOOR_CACHE: Duration = Duration::from_secs(10);

/// Most `(user, conv)` pairs remembered as written before the set is cleared.
const USER_CONVS_CACHE: usize = 100_000;

/// The ScyllaDB / Cassandra store. Cheap to clone: clones share the session.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.inner.opts.keyspace)
            .field("nodes", &self.inner.opts.nodes)
            .finish_non_exhaustive()
    }
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::backend(format!("{v} does not fit a CQL bigint")))
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(format!("negative value {v}")))
}

/// The string form of a unit enum (its serde name).
fn enum_str<T: Serialize>(v: &T) -> Result<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(StoreError::corrupt(format!("not a unit enum: {other}"))),
        Err(e) => Err(StoreError::corrupt_with("enum", e)),
    }
}

fn enum_parse<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| StoreError::corrupt_with(format!("{s:?}"), e))
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::corrupt_with("encode json", e))
}

fn unjson<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt_with("decode json", e))
}

fn idem_key(conv: &ConvId, from: &UserId, client_msg_id: &str) -> String {
    format!("{}\0{}\0{}", conv.as_str(), from.as_str(), client_msg_id)
}

const DAY_MS: u64 = 86_400_000;

/// A row of the `messages` table as read.
type MessageRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<Vec<String>>,
    Option<i64>,
    i64,
);

fn message_from_row(r: MessageRow) -> Result<Message> {
    let (conv, seq, id, sender, kind, body, attachment, mentions, reply_to, ts) = r;
    Ok(Message {
        conv: ConvId::parse(&conv).map_err(|e| StoreError::corrupt(format!("{conv}: {e:?}")))?,
        seq: Seq(to_u64(seq)?),
        id: MessageId::new(id),
        from: UserId::new(sender),
        kind: enum_parse(&kind)?,
        body,
        attachment: attachment.as_deref().map(unjson).transpose()?,
        ts: to_u64(ts)?,
        mentions: mentions
            .unwrap_or_default()
            .into_iter()
            .map(UserId::new)
            .collect(),
        reply_to: reply_to.map(to_u64).transpose()?.map(Seq),
        mentioned: false,
    })
}

type BoxedRow = Box<dyn SerializeRow + Send + Sync>;

impl ScyllaStore {
    /// Connects to the cluster. The schema is not touched: call [`Self::migrate`] (idempotent)
    /// before the first use on a new keyspace. The statements are prepared here when the
    /// schema exists, otherwise right after `migrate` or at the first call.
    pub async fn new(opts: ScyllaOptions, seq: Arc<dyn SeqSource>) -> Result<Self> {
        if !cql::valid_keyspace(&opts.keyspace) {
            return Err(StoreError::backend(format!(
                "invalid keyspace name {:?}: use letters, digits and _",
                opts.keyspace
            )));
        }
        if opts.bucket_size == 0 {
            return Err(StoreError::backend("bucket_size must be at least 1"));
        }
        let profile = ExecutionProfile::builder()
            .consistency(opts.consistency)
            .request_timeout(Some(opts.request_timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&opts.nodes)
            .connection_timeout(opts.connect_timeout)
            .default_execution_profile_handle(profile.into_handle())
            .keyspaces_to_fetch([opts.keyspace.clone()]);
        if let Some(n) = opts.connections_per_shard {
            builder = builder.pool_size(PoolSize::PerShard(n));
        }
        let session = builder.build().await.map_err(cql::session_err)?;
        let store = Self {
            inner: Arc::new(Inner {
                session,
                opts,
                seq,
                stmts: OnceCell::new(),
                locks: KeyLocks::default(),
                pending: DashMap::new(),
                retention: DashMap::new(),
                user_convs: DashMap::new(),
                floors: DashMap::new(),
                closed: AtomicBool::new(false),
                events: crate::compliance::Sequencer::new(
                    uuid::Uuid::new_v4().simple().to_string(),
                    0,
                    0,
                ),
                registered: OnceCell::new(),
            }),
        };
        if let Err(e) = store.stmts().await {
            tracing::debug!(error = %e, "statements not prepared yet (schema missing?)");
        }
        let weak = Arc::downgrade(&store.inner);
        let every = store
            .inner
            .opts
            .retry_interval
            .max(Duration::from_millis(10));
        tokio::spawn(retry_loop(weak, every));
        tokio::spawn(compliance::publish_loop(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Creates the keyspace and every table unless they exist (idempotent: safe on every
    /// start and from several nodes at once), checks that the keyspace was created with the
    /// same bucket size, then prepares the statements.
    pub async fn migrate(&self) -> Result<()> {
        self.check_open()?;
        let o = &self.inner.opts;
        let replication = cql::replication(o.replication_factor, o.datacenter.as_deref());
        for ddl in cql::schema(&o.keyspace, &replication) {
            self.inner
                .session
                .query_unpaged(ddl, &[])
                .await
                .map_err(exec_err)?;
        }
        self.check_bucket_size(true).await?;
        self.stmts().await?;
        // This process's compliance source row, before it serves (see scylla/compliance.rs).
        self.register().await
    }

    /// Compares the keyspace's recorded bucket size with the options (recording it first
    /// when `record` and the keyspace has none).
    async fn check_bucket_size(&self, record: bool) -> Result<()> {
        let ks = &self.inner.opts.keyspace;
        let want = self.inner.opts.bucket_size;
        let found: Option<(String,)> = self
            .inner
            .session
            .query_unpaged(
                format!("SELECT value FROM {ks}.settings WHERE name = 'bucket_size'"),
                &[],
            )
            .await
            .map_err(exec_err)?
            .into_rows_result()
            .map_err(cql::decode_err)?
            .maybe_first_row()
            .map_err(cql::decode_err)?;
        match found {
            Some((v,)) if v.parse::<u64>().ok() == Some(want) => Ok(()),
            Some((v,)) => Err(StoreError::backend(format!(
                "keyspace {ks} was created with bucket_size {v}, the options say {want}: \
                 the bucket size cannot change once messages are stored"
            ))),
            None if record => {
                self.inner
                    .session
                    .query_unpaged(
                        format!(
                            "INSERT INTO {ks}.settings (name, value) VALUES ('bucket_size', '{want}')"
                        ),
                        &[],
                    )
                    .await
                    .map_err(exec_err)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Sets a group's message retention: messages appended to the group from now on expire
    /// after `secs` seconds (`USING TTL`); `None` removes the group's own setting so the
    /// default (`ScyllaOptions::default_ttl_secs`) applies again, and `Some(0)` keeps the
    /// group's messages forever whatever the default. Values above [`MAX_TTL_SECS`] are
    /// clamped. Messages already stored keep the TTL they were written with. Other nodes see
    /// the change within 30 s (they cache the setting).
    pub async fn set_group_retention(&self, group: &GroupId, secs: Option<u32>) -> Result<()> {
        let st = self.stmts().await?;
        match secs {
            Some(s) => {
                let s = i32::try_from(s.min(MAX_TTL_SECS)).unwrap_or(i32::MAX);
                self.exec(&st.insert_retention, (group.as_str(), s)).await?;
            }
            None => {
                self.exec(&st.delete_retention, (group.as_str(),)).await?;
            }
        }
        self.inner.retention.insert(
            group.as_str().to_owned(),
            (secs.map(|s| s.min(MAX_TTL_SECS)), Instant::now()),
        );
        Ok(())
    }

    /// A group's own retention in seconds (`None`: the default applies).
    pub async fn group_retention(&self, group: &GroupId) -> Result<Option<u32>> {
        if let Some(e) = self.inner.retention.get(group.as_str()) {
            if e.1.elapsed() < RETENTION_CACHE {
                return Ok(e.0);
            }
        }
        let st = self.stmts().await?;
        let row: Option<(Option<i32>,)> = self.one(&st.select_retention, (group.as_str(),)).await?;
        let secs = row
            .and_then(|(s,)| s)
            .map(|s| u32::try_from(s).unwrap_or(0));
        self.inner
            .retention
            .insert(group.as_str().to_owned(), (secs, Instant::now()));
        Ok(secs)
    }

    /// Caches a conversation's min seq and kept flag (bounded: cleared past 100,000).
    fn remember_floor(&self, conv: &ConvId, min: u64, kept: bool) {
        if self.inner.floors.len() >= 100_000 {
            self.inner.floors.clear();
        }
        self.inner
            .floors
            .insert(conv.as_str().to_owned(), (min, kept, Instant::now()));
    }

    /// A conversation's min seq and whether messages remain below it (see `conv_floor`).
    async fn floor(&self, conv: &ConvId) -> Result<(u64, bool)> {
        if let Some(f) = self.inner.floors.get(conv.as_str()) {
            if f.2.elapsed() < FLOOR_CACHE {
                return Ok((f.0, f.1));
            }
        }
        let st = self.stmts().await?;
        let row: Option<(Option<i64>, Option<bool>)> =
            self.one(&st.select_floor, (conv.as_str(),)).await?;
        let (min, kept) = match row {
            Some((min, kept)) => (min.map(to_u64).transpose()?, kept.unwrap_or(true)),
            None => (None, false),
        };
        let min = min.unwrap_or(1).max(1);
        self.remember_floor(conv, min, kept);
        Ok((min, kept))
    }

    /// Whether a message other than `skip` is stored in `lo..hi`.
    async fn remains(&self, conv: &ConvId, lo: u64, hi: u64, skip: &HashSet<u64>) -> Result<bool> {
        Ok(!self.kept_in(conv, lo, hi, skip, 1).await?.is_empty())
    }

    /// The buckets of `lo..hi` that still hold a message other than `skip` (see
    /// `kept_buckets`), the lowest `max` of them.
    async fn kept_in(
        &self,
        conv: &ConvId,
        lo: u64,
        hi: u64,
        skip: &HashSet<u64>,
        max: usize,
    ) -> Result<Vec<u64>> {
        let st = self.stmts().await?;
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        for bucket in self.bucket(lo)..=self.bucket(hi - 1) {
            let rows: Vec<(i64,)> = self
                .rows(
                    &st.select_range,
                    (conv.as_str(), to_i64(bucket)?, to_i64(lo)?, to_i64(hi)?),
                )
                .await?;
            for (s,) in rows {
                if !skip.contains(&to_u64(s)?) {
                    out.push(bucket);
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The next bucket below `bucket` (or above it, `up`) that a read of `conv` must visit
    /// when messages are kept below its min seq, whose bucket is `floor_bucket`: buckets
    /// strictly below `floor_bucket` hold only kept messages, and only those listed in
    /// `kept_buckets` hold any. `None`: nothing further down (up: `floor_bucket` is next).
    async fn next_kept_bucket(
        &self,
        conv: &ConvId,
        bucket: u64,
        floor_bucket: u64,
        up: bool,
    ) -> Result<Option<u64>> {
        let st = self.stmts().await?;
        let (stmt, from) = if up {
            (&st.select_kept_above, bucket)
        } else {
            (&st.select_kept_below, bucket)
        };
        let row: Option<(i64,)> = self.one(stmt, (conv.as_str(), to_i64(from)?)).await?;
        let next = row.map(|(b,)| to_u64(b)).transpose()?;
        Ok(next.filter(|b| *b < floor_bucket))
    }

    /// Failed appends waiting in the retry queue (not yet written).
    pub fn pending_writes(&self) -> usize {
        self.inner.pending.iter().filter(|p| !p.written).count()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &ScyllaOptions {
        &self.inner.opts
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::unavailable("store is closed"))
        } else {
            Ok(())
        }
    }

    async fn stmts(&self) -> Result<&Statements> {
        self.check_open()?;
        let inner = &self.inner;
        inner
            .stmts
            .get_or_try_init(|| async {
                let st = Statements::prepare(&inner.session, &inner.opts.keyspace).await?;
                self.check_bucket_size(false).await?;
                Ok(st)
            })
            .await
    }

    fn bucket(&self, seq: u64) -> u64 {
        seq / self.inner.opts.bucket_size
    }

    async fn exec(&self, st: &PreparedStatement, values: impl SerializeRow) -> Result<()> {
        self.inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    /// The first row of a single-partition point read.
    async fn one<R>(&self, st: &PreparedStatement, values: impl SerializeRow) -> Result<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let res = self
            .inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(exec_err)?
            .into_rows_result()
            .map_err(cql::decode_err)?;
        res.maybe_first_row::<R>().map_err(cql::decode_err)
    }

    /// Every row of a range read, fetched page by page.
    async fn rows<R>(&self, st: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.inner
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(cql::pager_err)?
            .rows_stream::<R>()
            .map_err(cql::decode_err)?
            .map_err(cql::next_row_err)
            .try_collect()
            .await
    }

    /// Single writes, concurrently; the first error wins.
    async fn singles(&self, parts: Vec<(&PreparedStatement, BoxedRow)>) -> Result<()> {
        futures_util::future::try_join_all(
            parts
                .into_iter()
                .map(|(st, values)| async move { self.exec(st, values).await }),
        )
        .await
        .map(|_| ())
    }

    async fn batch(&self, parts: Vec<(&PreparedStatement, BoxedRow)>) -> Result<()> {
        let (stmts, values): (Vec<BatchStatement>, Vec<BoxedRow>) = parts
            .into_iter()
            .map(|(s, v)| (BatchStatement::from(s.clone()), v))
            .unzip();
        let mut batch = Batch::new_with_statements(BatchType::Logged, stmts);
        batch.set_is_idempotent(true);
        self.inner
            .session
            .batch(&batch, values)
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    /// (last seq, last ts) of a conversation from its meta row.
    async fn meta(&self, conv: &str) -> Result<(u64, u64)> {
        let st = self.stmts().await?;
        let row: Option<(Option<i64>, Option<i64>)> = self.one(&st.select_meta, (conv,)).await?;
        match row {
            Some((seq, ts)) => Ok((to_u64(seq.unwrap_or(0))?, to_u64(ts.unwrap_or(0))?)),
            None => Ok((0, 0)),
        }
    }

    /// The TTL (seconds, 0 = none) for a new message in `conv`.
    async fn ttl_for(&self, conv: &ConvId) -> Result<i32> {
        let own = match conv.kind() {
            ConvKind::Group(g) => self.group_retention(&GroupId::new(g)).await?,
            ConvKind::Direct(..) => None,
        };
        let secs = own
            .or(self.inner.opts.default_ttl_secs)
            .unwrap_or(0)
            .min(MAX_TTL_SECS);
        Ok(i32::try_from(secs).unwrap_or(i32::MAX))
    }

    /// The highest seq ever stored in `conv`: the meta row, then the messages table from
    /// the meta row's bucket up (buckets are dense), then this node's unwritten appends.
    async fn highest_stored(&self, conv: &ConvId) -> Result<u64> {
        let st = self.stmts().await?;
        let (mut best, _) = self.meta(conv.as_str()).await?;
        let mut bucket = self.bucket(best);
        loop {
            let top: Option<(i64,)> = self
                .one(&st.select_top_seq, (conv.as_str(), to_i64(bucket)?))
                .await?;
            match top {
                Some((s,)) => {
                    best = best.max(to_u64(s)?);
                    bucket += 1;
                }
                None => break,
            }
        }
        for p in self.inner.pending.iter() {
            if p.message.conv == *conv {
                best = best.max(p.message.seq.0);
            }
        }
        Ok(best)
    }

    /// Writes a message, its idempotency row, the conversation's meta row and the
    /// direct-conversation rows, as `opts.write_path` says.
    async fn write_message(
        &self,
        m: &Message,
        client_msg_id: &str,
        participants: &[UserId],
        ttl: i32,
        event: &(crate::EventId, String),
    ) -> Result<()> {
        let st = self.stmts().await?;
        let event = self.event_row(st, event)?;
        let conv = m.conv.as_str().to_owned();
        let seq = to_i64(m.seq.0)?;
        let ts = to_i64(m.ts)?;
        let attachment = match &m.attachment {
            Some(a) => MaybeUnset::Set(json(a)?),
            None => MaybeUnset::Unset,
        };
        let mentions = if m.mentions.is_empty() {
            MaybeUnset::Unset
        } else {
            MaybeUnset::Set(m.mentions.iter().map(|u| u.0.clone()).collect::<Vec<_>>())
        };
        let reply_to = match m.reply_to {
            Some(r) => MaybeUnset::Set(to_i64(r.0)?),
            None => MaybeUnset::Unset,
        };
        let message: (&PreparedStatement, BoxedRow) = (
            &st.insert_message,
            Box::new((
                conv.clone(),
                to_i64(self.bucket(m.seq.0))?,
                seq,
                m.id.0.clone(),
                m.from.0.clone(),
                enum_str(&m.kind)?,
                m.body.clone(),
                attachment,
                mentions,
                reply_to,
                ts,
                client_msg_id.to_owned(),
                ttl,
            )),
        );
        let idem: (&PreparedStatement, BoxedRow) = (
            &st.insert_idem,
            Box::new((
                conv.clone(),
                m.from.0.clone(),
                client_msg_id.to_owned(),
                seq,
                m.id.0.clone(),
                ttl,
                IDEM_TS_BASE - seq,
            )),
        );
        let meta: (&PreparedStatement, BoxedRow) =
            (&st.update_meta, Box::new((seq, seq, ts, conv.clone())));
        let path = self.inner.opts.write_path;
        let mut side = vec![meta];
        let mut new_pairs = Vec::new();
        for p in participants {
            let pair = (p.0.clone(), conv.clone());
            if path == WritePath::Split && self.inner.user_convs.contains_key(&pair) {
                continue;
            }
            side.push((&st.insert_user_conv, Box::new(pair.clone())));
            new_pairs.push(pair);
        }
        match path {
            WritePath::Logged => {
                let mut parts = vec![message, idem, event];
                parts.extend(side);
                self.batch(parts).await?;
            }
            WritePath::Split => {
                futures_util::future::try_join(
                    self.batch(vec![message, idem, event]),
                    self.singles(side),
                )
                .await?;
                if self.inner.user_convs.len() + new_pairs.len() > USER_CONVS_CACHE {
                    self.inner.user_convs.clear();
                }
                for pair in new_pairs {
                    self.inner.user_convs.insert(pair, ());
                }
            }
            WritePath::Unlogged => {
                side.push(message);
                side.push(event);
                self.singles(side).await?;
                self.singles(vec![idem]).await?;
            }
        }
        Ok(())
    }

    /// The stored copy of an idempotency key's message, if the key was stored.
    async fn find_stored(&self, msg: &NewMessage) -> Result<Option<Message>> {
        let st = self.stmts().await?;
        let idem: Option<(i64, String)> = self
            .one(
                &st.select_idem,
                (
                    msg.conv.as_str(),
                    msg.from.as_str(),
                    msg.client_msg_id.as_str(),
                ),
            )
            .await?;
        let Some((seq, _id)) = idem else {
            return Ok(None);
        };
        let bucket = to_i64(self.bucket(to_u64(seq)?))?;
        for attempt in 0..DUPLICATE_READ_ATTEMPTS {
            if attempt == 1 && to_u64(seq)? < self.min_seq(&msg.conv).await?.0 {
                // Stored once, deleted by retention since: a duplicate, answered with its
                // place only.
                return Ok(Some(crate::model::expired_placeholder(
                    &msg.conv,
                    Seq(to_u64(seq)?),
                    &msg.from,
                )));
            }
            let row: Option<MessageRow> = self
                .one(&st.select_message, (msg.conv.as_str(), bucket, seq))
                .await?;
            if let Some(row) = row {
                return Ok(Some(message_from_row(row)?));
            }
            tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
        }
        // The key is stored but its message cannot be read: its batch is still being applied
        // or the message just expired. Retrying later gives the right answer.
        Err(StoreError::unavailable(format!(
            "{} seq {seq}: idempotency row without its message yet",
            msg.conv
        )))
    }

    /// Writes a pending append now; on success it is acknowledged as a first store.
    async fn flush_pending(&self, key: &str) -> Result<Option<Appended>> {
        let Some(p) = self.inner.pending.get(key).map(|p| p.clone()) else {
            return Ok(None);
        };
        if !p.written {
            self.write_message(
                &p.message,
                &p.client_msg_id,
                &p.participants,
                p.ttl,
                &p.event,
            )
            .await?;
            self.inner.events.done(&[p.event.0.n]);
        }
        self.inner.pending.remove(key);
        Ok(Some(Appended {
            message: p.message,
            duplicate: false,
        }))
    }

    async fn append_locked(&self, msg: NewMessage, key: &str) -> Result<Appended> {
        // An earlier attempt of this key got a seq but its write failed (or was written by
        // the retry queue and never acknowledged): finish that one, never take a new seq.
        if let Some(done) = self.flush_pending(key).await? {
            return Ok(done);
        }
        if let Some(message) = self.find_stored(&msg).await? {
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let seq = match self.inner.seq.next(&msg.conv).await? {
            Some(s) => s,
            None => {
                let highest = self.highest_stored(&msg.conv).await?;
                self.inner.seq.restore(&msg.conv, Seq(highest)).await?
            }
        };
        let ttl = self.ttl_for(&msg.conv).await?;
        let client_msg_id = msg.client_msg_id.clone();
        let participants = msg.participants.clone();
        let moderation = msg.moderation.clone();
        let message = msg.into_message(seq);
        let event = self
            .new_event(&crate::EventBody::Message {
                conv: message.conv.clone(),
                seq: message.seq,
                id: message.id.clone(),
                from: message.from.clone(),
                client_msg_id: client_msg_id.clone(),
                moderation,
            })
            .await?;
        let n = event.0.n;
        match self
            .write_message(&message, &client_msg_id, &participants, ttl, &event)
            .await
        {
            Ok(()) => {
                self.inner.events.done(&[n]);
                Ok(Appended {
                    message,
                    duplicate: false,
                })
            }
            Err(StoreError::Unavailable { what, source }) => {
                let queued = self.inner.pending.len() < self.inner.opts.retry_queue;
                if queued {
                    self.inner.pending.insert(
                        key.to_owned(),
                        Pending {
                            message,
                            client_msg_id,
                            participants,
                            ttl,
                            written: false,
                            since: Instant::now(),
                            event,
                        },
                    );
                } else {
                    self.inner.events.failed(n, crate::compliance::FAILED_HOLD);
                    tracing::error!(conv = %message.conv, seq = message.seq.0,
                        "retry queue full: the seq of a failed append stays a gap");
                }
                Err(StoreError::Unavailable {
                    what: format!(
                        "{what} (not stored; {})",
                        if queued {
                            "kept to be written when the database is back"
                        } else {
                            "retry queue full"
                        }
                    ),
                    source,
                })
            }
            Err(e) => {
                self.inner.events.failed(n, crate::compliance::FAILED_HOLD);
                tracing::error!(conv = %message.conv, seq = message.seq.0, error = %e,
                    "append failed: its seq stays a gap");
                Err(e)
            }
        }
    }

    /// One pass of the retry queue: writes what it can, stops at the first failure, forgets
    /// acknowledgements nobody asked for after a while.
    async fn retry_pending(&self) {
        let keys: Vec<(String, bool, Instant)> = self
            .inner
            .pending
            .iter()
            .map(|p| (p.key().clone(), p.written, p.since))
            .collect();
        for (key, written, since) in keys {
            if written {
                if since.elapsed() > RECOVERED_KEEP {
                    self.inner.pending.remove_if(&key, |_, p| p.written);
                }
                continue;
            }
            let _guard = self.inner.locks.lock(key.clone()).await;
            let Some(p) = self.inner.pending.get(&key).map(|p| p.clone()) else {
                continue;
            };
            if p.written {
                continue;
            }
            match self
                .write_message(
                    &p.message,
                    &p.client_msg_id,
                    &p.participants,
                    p.ttl,
                    &p.event,
                )
                .await
            {
                Ok(()) => {
                    self.inner.events.done(&[p.event.0.n]);
                    tracing::info!(conv = %p.message.conv, seq = p.message.seq.0,
                        "retry queue: failed append written");
                    if let Some(mut e) = self.inner.pending.get_mut(&key) {
                        e.written = true;
                        e.since = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "retry queue: database still unavailable");
                    return;
                }
            }
        }
    }
}

async fn retry_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if inner.pending.is_empty() {
            continue;
        }
        ScyllaStore { inner }.retry_pending().await;
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.check_open()?;
        let key = idem_key(&msg.conv, &msg.from, &msg.client_msg_id);
        let _guard = self.inner.locks.lock(key.clone()).await;
        self.append_locked(msg, &key).await
    }

    async fn history(&self, conv: &ConvId, before: Option<Seq>, limit: usize) -> Result<Page> {
        let st = self.stmts().await?;
        let (last, _) = self.meta(conv.as_str()).await?;
        let top = match before {
            Some(b) => b.0.saturating_sub(1).min(last),
            None => last,
        };
        if top == 0 {
            return Ok(Page::default());
        }
        let (min, kept) = self.floor(conv).await?;
        // While nothing is kept below the min seq, a read starts there (the rows below are
        // tombstones); else it reaches down to seq 1, hopping over emptied buckets.
        let lo = if kept { 1 } else { min };
        if top < lo {
            return Ok(Page::default());
        }
        let floor_bucket = self.bucket(min);
        let want = limit.saturating_add(1);
        let mut out: Vec<Message> = Vec::with_capacity(want.min(1024));
        let first = self.bucket(top);
        let mut bucket = first;
        loop {
            let left = i32::try_from(want - out.len()).unwrap_or(i32::MAX);
            let (c, b, t) = (conv.as_str(), to_i64(bucket)?, to_i64(top)?);
            let rows: Vec<MessageRow> = if lo > 1 {
                // Nothing is kept below the min seq: do not read its deleted rows.
                self.rows(&st.select_older_from, (c, b, t, to_i64(lo)?, left))
                    .await?
            } else {
                self.rows(&st.select_older, (c, b, t, left)).await?
            };
            let got = rows.len();
            for r in rows {
                out.push(message_from_row(r)?);
            }
            if out.len() >= want || bucket == 0 || bucket <= self.bucket(lo) {
                break;
            }
            if kept && bucket <= floor_bucket {
                // Below the min seq's bucket only the buckets with kept messages count.
                match self
                    .next_kept_bucket(conv, bucket, floor_bucket, false)
                    .await?
                {
                    Some(b) => {
                        bucket = b;
                        continue;
                    }
                    None => break,
                }
            }
            // An empty bucket below the first one means everything older has expired (TTL).
            if got == 0 && bucket != first {
                break;
            }
            bucket -= 1;
        }
        let has_more = out.len() > limit;
        out.truncate(limit);
        Ok(Page {
            messages: out,
            has_more,
        })
    }

    async fn after(&self, conv: &ConvId, after: Seq, limit: usize) -> Result<Page> {
        let st = self.stmts().await?;
        let Some(lo) = after.0.checked_add(1) else {
            return Ok(Page::default());
        };
        let (min, kept) = self.floor(conv).await?;
        let lo = lo.max(if kept { 1 } else { min });
        let (last, _) = self.meta(conv.as_str()).await?;
        if lo > last {
            return Ok(Page::default());
        }
        let floor_bucket = self.bucket(min);
        let want = limit.saturating_add(1);
        let mut out: Vec<Message> = Vec::with_capacity(want.min(1024));
        let mut bucket = self.bucket(lo);
        let last_bucket = self.bucket(last);
        loop {
            let left = i32::try_from(want - out.len()).unwrap_or(i32::MAX);
            let rows: Vec<MessageRow> = self
                .rows(
                    &st.select_newer,
                    (conv.as_str(), to_i64(bucket)?, to_i64(lo)?, left),
                )
                .await?;
            for r in rows {
                out.push(message_from_row(r)?);
            }
            if out.len() >= want || bucket >= last_bucket {
                break;
            }
            bucket = if kept && bucket < floor_bucket {
                // Below the min seq's bucket only the buckets with kept messages count.
                self.next_kept_bucket(conv, bucket, floor_bucket, true)
                    .await?
                    .unwrap_or(floor_bucket)
            } else {
                bucket + 1
            };
        }
        let has_more = out.len() > limit;
        out.truncate(limit);
        Ok(Page {
            messages: out,
            has_more,
        })
    }

    async fn last_seq(&self, conv: &ConvId) -> Result<Seq> {
        self.check_open()?;
        Ok(Seq(self.meta(conv.as_str()).await?.0))
    }

    async fn conversations(&self, user: &UserId) -> Result<Vec<ConvSummary>> {
        let st = self.stmts().await?;
        let u = user.as_str();
        let (direct, groups, cursors) = tokio::try_join!(
            self.rows::<(String,)>(&st.select_user_convs, (u,)),
            self.rows::<(String,)>(&st.select_user_groups, (u,)),
            self.rows::<(String, Option<i64>)>(&st.select_cursors, (u,)),
        )?;
        let cursors: HashMap<String, u64> = cursors
            .into_iter()
            .map(|(c, s)| (c, u64::try_from(s.unwrap_or(0)).unwrap_or(0)))
            .collect();
        let mut convs: Vec<ConvId> = direct
            .into_iter()
            .filter_map(|(c,)| ConvId::parse(&c).ok())
            .collect();
        convs.extend(
            groups
                .into_iter()
                .map(|(g,)| ConvId::group(&GroupId::new(g))),
        );
        let metas: Vec<(ConvId, Result<(u64, u64)>)> = futures_util::stream::iter(convs)
            .map(|c| async move {
                let m = self.meta(c.as_str()).await;
                (c, m)
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(metas.len());
        for (conv, meta) in metas {
            let (last_seq, last_ts) = meta?;
            let read = cursors
                .get(conv.as_str())
                .copied()
                .unwrap_or(0)
                .min(last_seq);
            out.push(ConvSummary {
                conv,
                last_seq: Seq(last_seq),
                last_ts,
                read_seq: Seq(read),
                unread: last_seq - read,
                last_message: None,
                mentioned: false,
            });
        }
        out.sort_by(|a, b| b.last_ts.cmp(&a.last_ts).then(a.conv.cmp(&b.conv)));
        Ok(out)
    }

    async fn set_read(&self, user: &UserId, conv: &ConvId, seq: Seq) -> Result<Seq> {
        let st = self.stmts().await?;
        let s = to_i64(seq.0)?;
        // Written at timestamp = seq: a lower cursor written later loses to a higher one.
        self.exec(&st.update_cursor, (s, s, user.as_str(), conv.as_str()))
            .await?;
        let row: Option<(Option<i64>,)> = self
            .one(&st.select_cursor, (user.as_str(), conv.as_str()))
            .await?;
        let stored = row.and_then(|(s,)| s).map(to_u64).transpose()?;
        Ok(Seq(stored.unwrap_or(seq.0).max(seq.0)))
    }

    async fn touch_user(&self, user: &UserId, now: u64) -> Result<()> {
        if self.user_exists(user).await? {
            return Ok(());
        }
        let st = self.stmts().await?;
        // Timestamp 2^50 - now: if two nodes record the user at once, the earliest wins.
        let now = to_i64(now)?;
        self.exec(
            &st.insert_user,
            (user.as_str(), now, IDEM_TS_BASE.saturating_sub(now)),
        )
        .await
    }

    async fn user_exists(&self, user: &UserId) -> Result<bool> {
        let st = self.stmts().await?;
        let row: Option<(String,)> = self.one(&st.select_user, (user.as_str(),)).await?;
        Ok(row.is_some())
    }

    async fn create_group(&self, group: Group, members: Vec<Member>) -> Result<()> {
        let st = self.stmts().await?;
        if self.group(&group.id).await?.is_some() {
            return Err(StoreError::Conflict(format!("group {}", group.id)));
        }
        let g = group.id.0.clone();
        // Members first, in batches that stay far below the batch size limits (Cassandra
        // refuses batches over 50 KiB by default), then the group row: a failure part way
        // leaves no group, and creating it again rewrites the same member rows.
        for chunk in members.chunks(MEMBER_BATCH) {
            let mut parts: Vec<(&PreparedStatement, BoxedRow)> = Vec::new();
            let mut events = Vec::new();
            for m in chunk {
                let event = self
                    .new_event(&compliance::member_put(&group.id, m))
                    .await?;
                parts.push(self.event_row(st, &event)?);
                events.push(event.0.n);
                parts.push((
                    &st.insert_member,
                    Box::new((
                        g.clone(),
                        m.user.0.clone(),
                        enum_str(&m.role)?,
                        to_i64(m.joined_at)?,
                    )),
                ));
                parts.push((
                    &st.insert_user_group,
                    Box::new((m.user.0.clone(), g.clone())),
                ));
            }
            self.batch_with_events(parts, &events).await?;
        }
        self.exec(
            &st.insert_group,
            (
                g,
                group.name.clone(),
                enum_str(&group.kind)?,
                group.created_by.0.clone(),
                to_i64(group.created_at)?,
            ),
        )
        .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>> {
        let st = self.stmts().await?;
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let row: Option<Row> = self.one(&st.select_group, (id.as_str(),)).await?;
        let Some((gid, name, kind, created_by, created_at)) = row else {
            return Ok(None);
        };
        Ok(Some(Group {
            id: GroupId::new(gid),
            name: name.unwrap_or_default(),
            kind: kind
                .as_deref()
                .map(enum_parse)
                .transpose()?
                .unwrap_or_default(),
            created_by: UserId::new(created_by.unwrap_or_default()),
            created_at: to_u64(created_at.unwrap_or(0))?,
        }))
    }

    async fn members(&self, id: &GroupId) -> Result<Vec<Member>> {
        let st = self.stmts().await?;
        let rows: Vec<(String, Option<String>, Option<i64>)> =
            self.rows(&st.select_members, (id.as_str(),)).await?;
        rows.into_iter()
            .map(|(user, role, joined_at)| {
                Ok(Member {
                    user: UserId::new(user),
                    role: enum_parse(role.as_deref().unwrap_or("member"))?,
                    joined_at: to_u64(joined_at.unwrap_or(0))?,
                })
            })
            .collect()
    }

    async fn put_member(&self, id: &GroupId, member: Member) -> Result<()> {
        let st = self.stmts().await?;
        if self.group(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("group {id}")));
        }
        let event = self.new_event(&compliance::member_put(id, &member)).await?;
        self.batch_with_events(
            vec![
                self.event_row(st, &event)?,
                (
                    &st.insert_member,
                    Box::new((
                        id.0.clone(),
                        member.user.0.clone(),
                        enum_str(&member.role)?,
                        to_i64(member.joined_at)?,
                    )),
                ),
                (
                    &st.insert_user_group,
                    Box::new((member.user.0.clone(), id.0.clone())),
                ),
            ],
            &[event.0.n],
        )
        .await
    }

    async fn put_members(&self, id: &GroupId, members: Vec<Member>) -> Result<()> {
        let st = self.stmts().await?;
        if self.group(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("group {id}")));
        }
        // One logged batch: every row or none (members and the reverse index together).
        let mut parts: Vec<(&PreparedStatement, BoxedRow)> = Vec::new();
        let mut events = Vec::new();
        for member in members {
            let event = self.new_event(&compliance::member_put(id, &member)).await?;
            parts.push(self.event_row(st, &event)?);
            events.push(event.0.n);
            parts.push((
                &st.insert_member,
                Box::new((
                    id.0.clone(),
                    member.user.0.clone(),
                    enum_str(&member.role)?,
                    to_i64(member.joined_at)?,
                )),
            ));
            parts.push((
                &st.insert_user_group,
                Box::new((member.user.0.clone(), id.0.clone())),
            ));
        }
        match parts.len() {
            0 => Ok(()),
            _ => self.batch_with_events(parts, &events).await,
        }
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> Result<bool> {
        let st = self.stmts().await?;
        let row: Option<(String,)> = self
            .one(&st.select_member, (id.as_str(), user.as_str()))
            .await?;
        let mut parts: Vec<(&PreparedStatement, BoxedRow)> = vec![
            (&st.delete_member, Box::new((id.0.clone(), user.0.clone()))),
            (
                &st.delete_user_group,
                Box::new((user.0.clone(), id.0.clone())),
            ),
        ];
        let mut events = Vec::new();
        if row.is_some() {
            let event = self
                .new_event(&compliance::member_removed(id, user))
                .await?;
            parts.push(self.event_row(st, &event)?);
            events.push(event.0.n);
        }
        self.batch_with_events(parts, &events).await?;
        Ok(row.is_some())
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        let st = self.stmts().await?;
        let rows: Vec<(String,)> = self.rows(&st.select_user_groups, (user.as_str(),)).await?;
        Ok(rows.into_iter().map(|(g,)| GroupId::new(g)).collect())
    }

    async fn mark_skipped(&self, conv: &ConvId, seq: Seq) -> Result<Option<Message>> {
        self.write_skip(conv, seq).await
    }

    async fn recall(&self, conv: &ConvId, seq: Seq) -> Result<Option<Message>> {
        let st = self.stmts().await?;
        if seq.0 == 0 {
            return Ok(None);
        }
        let bucket = to_i64(self.bucket(seq.0))?;
        let row: Option<MessageRow> = self
            .one(&st.select_message, (conv.as_str(), bucket, to_i64(seq.0)?))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let original = message_from_row(row)?;
        let ttl = self.ttl_for(conv).await?;
        let event = self
            .new_event(&crate::EventBody::Recall {
                conv: original.conv.clone(),
                seq: original.seq,
                id: original.id.clone(),
                from: original.from.clone(),
            })
            .await?;
        self.batch_with_events(
            vec![
                (
                    &st.recall_message,
                    Box::new((ttl, conv.as_str().to_owned(), bucket, to_i64(seq.0)?)),
                ),
                self.event_row(st, &event)?,
            ],
            &[event.0.n],
        )
        .await?;
        Ok(Some(original))
    }

    async fn conversation_ids(&self, after: Option<&ConvId>, limit: usize) -> Result<Vec<ConvId>> {
        let st = self.stmts().await?;
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        // Token order: stable across calls, so a job can page through every conversation.
        let rows: Vec<(String,)> = match after {
            None => self.rows(&st.select_convs_first, (limit,)).await?,
            Some(a) => {
                self.rows(&st.select_convs_after, (a.as_str(), limit))
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(c,)| ConvId::parse(&c).ok())
            .collect())
    }

    async fn min_seq(&self, conv: &ConvId) -> Result<Seq> {
        Ok(Seq(self.floor(conv).await?.0))
    }

    async fn expire(&self, conv: &ConvId, seqs: &[Seq], min_seq: Seq) -> Result<u64> {
        let st = self.stmts().await?;
        let (last, _) = self.meta(conv.as_str()).await?;
        self.inner.floors.remove(conv.as_str());
        let (current, was_kept) = self.floor(conv).await?;
        let raised = min_seq.0.min(last.saturating_add(1)).max(current);
        let targets: Vec<u64> = seqs
            .iter()
            .map(|s| s.0)
            .filter(|s| *s > 0 && *s < raised)
            .collect();
        let skip: HashSet<u64> = targets.iter().copied().collect();
        // The buckets the raise passes that keep a message: listed before the raise, so a
        // reader that sees the new min seq finds them (`kept_buckets`).
        let mut newly_kept = self
            .kept_in(conv, current, raised, &skip, usize::MAX)
            .await?;
        if was_kept {
            // Kept by a version without the list: list the buckets below too, once.
            let listed: Option<(i64,)> = self
                .one(&st.select_kept_below, (conv.as_str(), i64::MAX))
                .await?;
            if listed.is_none() {
                newly_kept.extend(self.kept_in(conv, 1, current, &skip, usize::MAX).await?);
            }
        }
        let kept =
            (was_kept && self.remains(conv, 1, current, &skip).await?) || !newly_kept.is_empty();
        // The raise first: if a deletion below fails, the seqs at and above the minimum are
        // still all there. `kept` true before the raise, false only after it.
        if kept {
            for b in &newly_kept {
                self.exec(&st.insert_kept_bucket, (conv.as_str(), to_i64(*b)?))
                    .await?;
            }
            self.exec(&st.update_floor_kept, (true, conv.as_str()))
                .await?;
        }
        if raised > current {
            let r = to_i64(raised)?;
            self.exec(&st.update_floor, (r, r, conv.as_str())).await?;
        }
        if !kept {
            self.exec(&st.update_floor_kept, (false, conv.as_str()))
                .await?;
            if was_kept {
                self.exec(&st.delete_kept_buckets, (conv.as_str(),)).await?;
            }
        }
        self.remember_floor(conv, raised, kept);
        let c = conv.as_str();
        // The idempotency rows stay (no content in them): a retry of an expired message's
        // key is still a duplicate (`find_stored`).
        futures_util::stream::iter(targets)
            .map(|seq| async move {
                let bucket = to_i64(self.bucket(seq))?;
                let s = to_i64(seq)?;
                let row: Option<(i64,)> = self.one(&st.select_expiring, (c, bucket, s)).await?;
                if row.is_none() {
                    return Ok(0u64);
                }
                self.exec(&st.delete_message, (c, bucket, s)).await?;
                Ok(1)
            })
            .buffer_unordered(EXPIRE_CONCURRENCY)
            .try_fold(0u64, |n, one| async move { Ok::<u64, StoreError>(n + one) })
            .await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        // One last attempt at the retry queue; what is still unwritten stays a gap.
        if !self.inner.pending.is_empty() {
            self.retry_pending().await;
        }
        let left = self.pending_writes();
        if left > 0 {
            tracing::warn!(
                left,
                "closing with failed appends never written: their seqs stay gaps"
            );
        }
        self.leave_compliance_sources().await;
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[async_trait]
impl MetaStore for ScyllaStore {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let st = self.stmts().await?;
        let row: Option<(Vec<u8>,)> = self.one(&st.select_meta_kv, (ns, key)).await?;
        Ok(row.map(|(v,)| v))
    }

    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let st = self.stmts().await?;
        // Keys never contain NUL, so `after + NUL` is the first key above `after`.
        let lo = if after >= prefix {
            format!("{after}\0")
        } else {
            prefix.to_owned()
        };
        let hi = crate::meta::prefix_end(prefix);
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        self.rows(&st.scan_meta_kv, (ns, lo, hi, limit)).await
    }

    async fn insert_new(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<bool> {
        let st = self.stmts().await?;
        Ok(self
            .lwt(&st.insert_new_meta_kv, (ns, key, value))
            .await?
            .is_none())
    }

    async fn apply(&self, ops: Vec<MetaOp>) -> Result<()> {
        let st = self.stmts().await?;
        let parts: Vec<(&PreparedStatement, BoxedRow)> = ops
            .into_iter()
            .map(|op| -> (&PreparedStatement, BoxedRow) {
                match op {
                    MetaOp::Put { ns, key, value } => {
                        (&st.insert_meta_kv, Box::new((ns, key, value)))
                    }
                    MetaOp::Delete { ns, key } => (&st.delete_meta_kv, Box::new((ns, key))),
                }
            })
            .collect();
        match parts.len() {
            0 => Ok(()),
            _ => self.batch(parts).await,
        }
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<Swap> {
        let st = self.stmts().await?;
        let refused = match expected {
            None => self.lwt(&st.insert_new_meta_kv, (ns, key, new)).await?,
            Some(old) => self.lwt(&st.swap_meta_kv, (new, ns, key, old)).await?,
        };
        Ok(match refused {
            None => Swap::Done,
            Some(current) => Swap::Current(current),
        })
    }

    async fn compare_and_delete(&self, ns: &str, key: &str, expected: Vec<u8>) -> Result<Swap> {
        let st = self.stmts().await?;
        Ok(
            match self.lwt(&st.delete_if_meta_kv, (ns, key, expected)).await? {
                None => Swap::Done,
                Some(current) => Swap::Current(current),
            },
        )
    }
}

impl ScyllaStore {
    /// Runs a lightweight transaction on the `meta` table: `None` when it was applied,
    /// otherwise `Some` of the stored `value` the database answered with (`None`: no row).
    async fn lwt(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<Option<Vec<u8>>>> {
        let res = self
            .inner
            .session
            .execute_unpaged(stmt, values)
            .await
            .map_err(exec_err)?
            .into_rows_result()
            .map_err(cql::decode_err)?;
        let value_at = res.column_specs().get_by_name("value").map(|(i, _)| i);
        let row = res
            .maybe_first_row::<::scylla::value::Row>()
            .map_err(cql::decode_err)?;
        let Some(row) = row else {
            return Err(StoreError::backend(
                "a lightweight transaction answered no row",
            ));
        };
        if matches!(
            row.columns.first(),
            Some(Some(::scylla::value::CqlValue::Boolean(true)))
        ) {
            return Ok(None);
        }
        let current = value_at
            .and_then(|i| row.columns.get(i).cloned().flatten())
            .and_then(|v| match v {
                ::scylla::value::CqlValue::Blob(b) => Some(b),
                _ => None,
            });
        Ok(Some(current))
    }
}

#[async_trait]
impl ReviewStore for ScyllaStore {
    async fn audit(&self, entry: AuditEntry) -> Result<()> {
        let st = self.stmts().await?;
        let day = to_i64(entry.ts / DAY_MS)?;
        let uid = uuid::Uuid::new_v4().simple().to_string();
        let row = json(&entry)?;
        let event = self
            .new_event(&crate::EventBody::Audit {
                entry: entry.clone(),
            })
            .await?;
        self.batch_with_events(
            vec![
                (
                    &st.insert_audit,
                    Box::new((day, to_i64(entry.ts)?, uid, row)),
                ),
                (&st.insert_audit_day, Box::new((day,))),
                self.event_row(st, &event)?,
            ],
            &[event.0.n],
        )
        .await
    }

    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let st = self.stmts().await?;
        let since = query.since.unwrap_or(0).min(i64::MAX as u64);
        let until = query.until.unwrap_or(u64::MAX).min(i64::MAX as u64);
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        if since >= until {
            return Ok(Vec::new());
        }
        let days: Vec<(i64,)> = self
            .rows(
                &st.select_audit_days,
                (to_i64(since / DAY_MS)?, to_i64((until - 1) / DAY_MS)?),
            )
            .await?;
        let mut out = Vec::new();
        for (day,) in days {
            let rows: Vec<(String,)> = self
                .rows(&st.select_audit, (day, to_i64(since)?, to_i64(until)?))
                .await?;
            for (entry,) in rows {
                let e: AuditEntry = unjson(&entry)?;
                if query.matches(&e) {
                    out.push(e);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn hold(&self, held: HeldMessage) -> Result<()> {
        let st = self.stmts().await?;
        self.exec(
            &st.insert_held,
            (
                held.conv.as_str(),
                held.id.as_str(),
                to_i64(held.ts)?,
                json(&held)?,
            ),
        )
        .await
    }

    async fn held(&self, conv: &ConvId) -> Result<Vec<HeldMessage>> {
        let st = self.stmts().await?;
        let rows: Vec<(String,)> = self.rows(&st.select_held_all, (conv.as_str(),)).await?;
        let mut out = rows
            .into_iter()
            .map(|(e,)| unjson::<HeldMessage>(&e))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|h| h.ts);
        Ok(out)
    }

    async fn compliance_events(
        &self,
        after: &crate::EventId,
        limit: usize,
    ) -> Result<crate::EventPage> {
        self.read_events(after, limit).await
    }

    async fn take_held(&self, conv: &ConvId, id: &str) -> Result<Option<HeldMessage>> {
        let st = self.stmts().await?;
        let row: Option<(String,)> = self.one(&st.select_held, (conv.as_str(), id)).await?;
        let Some((entry,)) = row else {
            return Ok(None);
        };
        let held: HeldMessage = unjson(&entry)?;
        self.exec(&st.delete_held, (conv.as_str(), id)).await?;
        Ok(Some(held))
    }
}

#[async_trait]
impl crate::AdminExport for ScyllaStore {
    /// Three full-table reads (`meta`, `audit`, `held`), paged by the driver.
    async fn export_admin(&self, out: tokio::sync::mpsc::Sender<crate::AdminRecord>) -> Result<()> {
        use crate::AdminRecord;
        self.check_open()?;
        let session = &self.inner.session;
        let ks = &self.inner.opts.keyspace;
        let prepare = |cql: String| async move {
            let mut s = session.prepare(cql).await.map_err(cql::prepare_err)?;
            s.set_page_size(cql::PAGE_SIZE);
            Ok::<_, StoreError>(s)
        };
        let meta = prepare(format!("SELECT ns, key, value FROM {ks}.meta")).await?;
        let mut rows = session
            .execute_iter(meta, ())
            .await
            .map_err(cql::pager_err)?
            .rows_stream::<(String, String, Vec<u8>)>()
            .map_err(cql::decode_err)?;
        while let Some((ns, key, value)) = rows.try_next().await.map_err(cql::next_row_err)? {
            if out
                .send(AdminRecord::Meta { ns, key, value })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        for table in ["audit", "held"] {
            let st = prepare(format!("SELECT entry FROM {ks}.{table}")).await?;
            let mut rows = session
                .execute_iter(st, ())
                .await
                .map_err(cql::pager_err)?
                .rows_stream::<(String,)>()
                .map_err(cql::decode_err)?;
            while let Some((entry,)) = rows.try_next().await.map_err(cql::next_row_err)? {
                let record = match table {
                    "audit" => AdminRecord::Audit(unjson(&entry)?),
                    _ => AdminRecord::Held(unjson(&entry)?),
                };
                if out.send(record).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names() {
        assert_eq!(parse_consistency("ONE").unwrap(), Consistency::One);
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(
            parse_consistency("local-quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert!(parse_consistency("most").is_err());
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        assert_eq!(enum_str(&crate::Role::Admin).unwrap(), "admin");
        assert_eq!(
            enum_parse::<crate::GroupKind>("study").unwrap(),
            crate::GroupKind::Study
        );
        assert!(enum_parse::<crate::Role>("boss").is_err());
    }

    #[tokio::test]
    async fn key_locks_serialize_and_clean_up() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("k".into()).await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("k".into()).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
        assert!(locks.0.is_empty());
    }
}
