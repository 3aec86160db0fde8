//! The CQL of the ScyllaDB backend: the schema (idempotent migrations), the prepared
//! statements, and the mapping of driver errors to [`StoreError`].
//!
//! Everything here runs unchanged on ScyllaDB and on Apache Cassandra 5: no lightweight
//! transactions (except one, creating an administrative record), no counters, no ScyllaDB-only options (`BYPASS CACHE`, `USING TIMEOUT`,
//! `per_partition_rate_limit`, `tombstone_gc`), no Cassandra-5-only features (SAI, UCS,
//! vectors). `CREATE ... IF NOT EXISTS` is used for the schema only.

use crate::StoreError;
use ::scylla::client::session::Session;
use ::scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError, RequestError,
};
use ::scylla::statement::prepared::PreparedStatement;

/// Rows fetched per page by the paged range reads.
pub(super) const PAGE_SIZE: i32 = 500;

/// The tables, created in order by [`schema`]. `{ks}` is replaced by the keyspace.
const TABLES: &[&str] = &[
    // Messages: one partition per (conversation, bucket), bucket = seq / bucket_size, newest
    // first inside the partition. Written with `USING TTL` when the conversation has a
    // retention (0 = kept forever).
    "CREATE TABLE IF NOT EXISTS {ks}.messages (
        conv text, bucket bigint, seq bigint,
        id text, sender text, kind text, body text, attachment text,
        mentions list<text>, reply_to bigint, ts bigint, client_msg_id text,
        PRIMARY KEY ((conv, bucket), seq)
    ) WITH CLUSTERING ORDER BY (seq DESC)",
    // Idempotency: (conv, sender, client_msg_id) -> the stored seq and id, with the same TTL as
    // the message. Written with `USING TIMESTAMP (2^50 - seq)`, so that if two copies were
    // ever written for one key, the lowest seq wins everywhere, whatever the write order.
    "CREATE TABLE IF NOT EXISTS {ks}.idempotency (
        conv text, sender text, client_msg_id text, seq bigint, id text,
        PRIMARY KEY ((conv, sender, client_msg_id))
    )",
    // Per conversation: the highest seq ever stored and its ts. Written with
    // `USING TIMESTAMP seq`, so the highest seq wins whatever the write order (a max register
    // without read-before-write or LWT). Never expires: after a retention TTL has removed
    // every message, it still stops a lost seq counter from restarting at 1.
    "CREATE TABLE IF NOT EXISTS {ks}.conv_meta (
        conv text PRIMARY KEY, last_seq bigint, last_ts bigint
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.chat_users (
        id text PRIMARY KEY, first_seen bigint
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.chat_groups (
        id text PRIMARY KEY, name text, kind text, created_by text, created_at bigint
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.members (
        group_id text, user_id text, role text, joined_at bigint,
        PRIMARY KEY (group_id, user_id)
    )",
    "CREATE TABLE IF NOT EXISTS {ks}.user_groups (
        user_id text, group_id text, PRIMARY KEY (user_id, group_id)
    )",
    // The direct conversations a user took part in.
    "CREATE TABLE IF NOT EXISTS {ks}.user_convs (
        user_id text, conv text, PRIMARY KEY (user_id, conv)
    )",
    // Read cursors, written with `USING TIMESTAMP seq`: a cursor only moves forward.
    "CREATE TABLE IF NOT EXISTS {ks}.read_cursors (
        user_id text, conv text, seq bigint, PRIMARY KEY (user_id, conv)
    )",
    // Per-group message retention (seconds), applied as `USING TTL` on later appends.
    "CREATE TABLE IF NOT EXISTS {ks}.group_retention (
        group_id text PRIMARY KEY, ttl_secs int
    )",
    // Settings fixed at creation, e.g. the bucket size, checked at every start.
    "CREATE TABLE IF NOT EXISTS {ks}.settings (
        name text PRIMARY KEY, value text
    )",
    // Audit log: one partition per UTC day, newest first; entries as JSON.
    "CREATE TABLE IF NOT EXISTS {ks}.audit (
        day bigint, ts bigint, uid text, entry text,
        PRIMARY KEY (day, ts, uid)
    ) WITH CLUSTERING ORDER BY (ts DESC, uid ASC)",
    // The days that have audit entries (one small partition), so queries skip empty days.
    "CREATE TABLE IF NOT EXISTS {ks}.audit_days (
        shard int, day bigint, PRIMARY KEY (shard, day)
    ) WITH CLUSTERING ORDER BY (day DESC)",
    // Administrative records (accounts, departments, group settings, files, ...): one
    // partition per namespace, see `crate::meta`.
    "CREATE TABLE IF NOT EXISTS {ks}.meta (
        ns text, key text, value blob, PRIMARY KEY (ns, key)
    )",
    // Review queue: messages held by moderation, as JSON, by conversation.
    "CREATE TABLE IF NOT EXISTS {ks}.held (
        conv text, id text, ts bigint, entry text, PRIMARY KEY (conv, id)
    )",
    // Per conversation: the min seq below which retention deleted messages (`Store::min_seq`),
    // written with `USING TIMESTAMP min_seq` (a max register, like `conv_meta`), and whether
    // messages remain below it (kept by a hold or an exemption; reads skip the range when not).
    "CREATE TABLE IF NOT EXISTS {ks}.conv_floor (
        conv text PRIMARY KEY, min_seq bigint, kept boolean
    )",
    // Per conversation whose `conv_floor.kept` is true: the buckets below the min seq that
    // still held a message retention kept when the min seq rose past them (a superset: an
    // entry may outlive its messages until `kept` turns false, which drops the partition).
    // `history` and `after` hop between them instead of reading the emptied partitions
    // between (each a partition of tombstones).
    "CREATE TABLE IF NOT EXISTS {ks}.kept_buckets (
        conv text, bucket bigint, PRIMARY KEY (conv, bucket)
    ) WITH CLUSTERING ORDER BY (bucket DESC)",
    // Compliance event log (crate::compliance): one partition per minute of commit time,
    // events in (ts, source, n) order, each written in the batch of the change it records.
    "CREATE TABLE IF NOT EXISTS {ks}.compliance_events (
        bucket bigint, ts bigint, source text, n bigint, body text,
        PRIMARY KEY (bucket, ts, source, n)
    )",
    // Every writing process's floor (no event of it can still commit below), republished
    // about twice a second; readers stop at the lowest live one.
    "CREATE TABLE IF NOT EXISTS {ks}.compliance_sources (
        shard int, source text, floor bigint, seen bigint,
        PRIMARY KEY (shard, source)
    )",
];

/// The keyspace's replication clause.
pub(super) fn replication(replication_factor: u32, datacenter: Option<&str>) -> String {
    match datacenter {
        Some(dc) => format!(
            "{{'class': 'NetworkTopologyStrategy', '{dc}': {}}}",
            replication_factor.max(1)
        ),
        None => format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            replication_factor.max(1)
        ),
    }
}

/// Every DDL statement of the schema, in order, for keyspace `ks`.
pub(super) fn schema(ks: &str, replication: &str) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} \
         AND durable_writes = true"
    )];
    out.extend(TABLES.iter().map(|t| t.replace("{ks}", ks)));
    out
}

/// Whether `ks` is a valid unquoted keyspace name (it is spliced into CQL).
pub(super) fn valid_keyspace(ks: &str) -> bool {
    !ks.is_empty()
        && ks.len() <= 48
        && ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && ks.as_bytes()[0].is_ascii_alphabetic()
}

/// The message columns, in the order [`super::MessageRow`] reads them.
const MSG_COLS: &str = "conv, seq, id, sender, kind, body, attachment, mentions, reply_to, ts";

/// Every prepared statement, prepared once per store.
pub(super) struct Statements {
    pub insert_message: PreparedStatement,
    pub insert_idem: PreparedStatement,
    pub update_meta: PreparedStatement,
    pub insert_user_conv: PreparedStatement,
    pub select_idem: PreparedStatement,
    pub select_message: PreparedStatement,
    pub select_older: PreparedStatement,
    pub select_newer: PreparedStatement,
    pub select_top_seq: PreparedStatement,
    pub select_meta: PreparedStatement,
    pub select_user_convs: PreparedStatement,
    pub select_cursors: PreparedStatement,
    pub select_cursor: PreparedStatement,
    pub update_cursor: PreparedStatement,
    pub select_user: PreparedStatement,
    pub insert_user: PreparedStatement,
    pub select_group: PreparedStatement,
    pub insert_group: PreparedStatement,
    pub select_members: PreparedStatement,
    pub select_member: PreparedStatement,
    pub insert_member: PreparedStatement,
    pub delete_member: PreparedStatement,
    pub select_user_groups: PreparedStatement,
    pub insert_user_group: PreparedStatement,
    pub delete_user_group: PreparedStatement,
    pub select_retention: PreparedStatement,
    pub insert_retention: PreparedStatement,
    pub delete_retention: PreparedStatement,
    pub insert_audit: PreparedStatement,
    pub insert_audit_day: PreparedStatement,
    pub select_audit_days: PreparedStatement,
    pub select_audit: PreparedStatement,
    pub insert_held: PreparedStatement,
    pub select_held_all: PreparedStatement,
    pub select_held: PreparedStatement,
    pub delete_held: PreparedStatement,
    pub recall_message: PreparedStatement,
    pub select_meta_kv: PreparedStatement,
    pub scan_meta_kv: PreparedStatement,
    pub insert_meta_kv: PreparedStatement,
    pub insert_new_meta_kv: PreparedStatement,
    pub swap_meta_kv: PreparedStatement,
    pub delete_meta_kv: PreparedStatement,
    // The compliance event log.
    pub insert_event: PreparedStatement,
    pub select_events: PreparedStatement,
    pub upsert_source: PreparedStatement,
    pub select_sources: PreparedStatement,
    pub delete_source: PreparedStatement,
    pub insert_origin: PreparedStatement,
    pub select_origin: PreparedStatement,
    pub delete_if_meta_kv: PreparedStatement,
    // Retention.
    pub select_floor: PreparedStatement,
    pub update_floor: PreparedStatement,
    pub update_floor_kept: PreparedStatement,
    pub select_range: PreparedStatement,
    pub select_older_from: PreparedStatement,
    pub select_expiring: PreparedStatement,
    pub delete_message: PreparedStatement,
    pub select_convs_first: PreparedStatement,
    pub select_convs_after: PreparedStatement,
    pub insert_kept_bucket: PreparedStatement,
    pub select_kept_below: PreparedStatement,
    pub select_kept_above: PreparedStatement,
    pub delete_kept_buckets: PreparedStatement,
}

impl Statements {
    /// Prepares every statement against keyspace `ks` (its tables must exist).
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let p = |cql: String| async move {
            let mut s = session.prepare(cql).await.map_err(prepare_err)?;
            s.set_page_size(PAGE_SIZE);
            // Every statement here can be applied twice with the same effect (writes carry
            // fixed values or timestamps), so the driver may retry them after a timeout.
            s.set_is_idempotent(true);
            Ok::<_, StoreError>(s)
        };
        Ok(Self {
            insert_message: p(format!(
                "INSERT INTO {ks}.messages (conv, bucket, seq, id, sender, kind, body, attachment, \
                 mentions, reply_to, ts, client_msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TTL ?"
            ))
            .await?,
            insert_idem: p(format!(
                "INSERT INTO {ks}.idempotency (conv, sender, client_msg_id, seq, id) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            update_meta: p(format!(
                "UPDATE {ks}.conv_meta USING TIMESTAMP ? SET last_seq = ?, last_ts = ? \
                 WHERE conv = ?"
            ))
            .await?,
            insert_user_conv: p(format!(
                "INSERT INTO {ks}.user_convs (user_id, conv) VALUES (?, ?)"
            ))
            .await?,
            select_idem: p(format!(
                "SELECT seq, id FROM {ks}.idempotency \
                 WHERE conv = ? AND sender = ? AND client_msg_id = ?"
            ))
            .await?,
            select_message: p(format!(
                "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            select_older: p(format!(
                "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq <= ? \
                 LIMIT ?"
            ))
            .await?,
            select_newer: p(format!(
                "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq >= ? \
                 ORDER BY seq ASC LIMIT ?"
            ))
            .await?,
            select_top_seq: p(format!(
                "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? LIMIT 1"
            ))
            .await?,
            select_meta: p(format!(
                "SELECT last_seq, last_ts FROM {ks}.conv_meta WHERE conv = ?"
            ))
            .await?,
            select_user_convs: p(format!(
                "SELECT conv FROM {ks}.user_convs WHERE user_id = ?"
            ))
            .await?,
            select_cursors: p(format!(
                "SELECT conv, seq FROM {ks}.read_cursors WHERE user_id = ?"
            ))
            .await?,
            select_cursor: p(format!(
                "SELECT seq FROM {ks}.read_cursors WHERE user_id = ? AND conv = ?"
            ))
            .await?,
            update_cursor: p(format!(
                "UPDATE {ks}.read_cursors USING TIMESTAMP ? SET seq = ? \
                 WHERE user_id = ? AND conv = ?"
            ))
            .await?,
            select_user: p(format!("SELECT id FROM {ks}.chat_users WHERE id = ?")).await?,
            insert_user: p(format!(
                "INSERT INTO {ks}.chat_users (id, first_seen) VALUES (?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            select_group: p(format!(
                "SELECT id, name, kind, created_by, created_at FROM {ks}.chat_groups WHERE id = ?"
            ))
            .await?,
            insert_group: p(format!(
                "INSERT INTO {ks}.chat_groups (id, name, kind, created_by, created_at) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            select_members: p(format!(
                "SELECT user_id, role, joined_at FROM {ks}.members WHERE group_id = ?"
            ))
            .await?,
            select_member: p(format!(
                "SELECT user_id FROM {ks}.members WHERE group_id = ? AND user_id = ?"
            ))
            .await?,
            insert_member: p(format!(
                "INSERT INTO {ks}.members (group_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            delete_member: p(format!(
                "DELETE FROM {ks}.members WHERE group_id = ? AND user_id = ?"
            ))
            .await?,
            select_user_groups: p(format!(
                "SELECT group_id FROM {ks}.user_groups WHERE user_id = ?"
            ))
            .await?,
            insert_user_group: p(format!(
                "INSERT INTO {ks}.user_groups (user_id, group_id) VALUES (?, ?)"
            ))
            .await?,
            delete_user_group: p(format!(
                "DELETE FROM {ks}.user_groups WHERE user_id = ? AND group_id = ?"
            ))
            .await?,
            select_retention: p(format!(
                "SELECT ttl_secs FROM {ks}.group_retention WHERE group_id = ?"
            ))
            .await?,
            insert_retention: p(format!(
                "INSERT INTO {ks}.group_retention (group_id, ttl_secs) VALUES (?, ?)"
            ))
            .await?,
            delete_retention: p(format!(
                "DELETE FROM {ks}.group_retention WHERE group_id = ?"
            ))
            .await?,
            insert_audit: p(format!(
                "INSERT INTO {ks}.audit (day, ts, uid, entry) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            insert_audit_day: p(format!(
                "INSERT INTO {ks}.audit_days (shard, day) VALUES (0, ?)"
            ))
            .await?,
            select_audit_days: p(format!(
                "SELECT day FROM {ks}.audit_days WHERE shard = 0 AND day >= ? AND day <= ?"
            ))
            .await?,
            select_audit: p(format!(
                "SELECT entry FROM {ks}.audit WHERE day = ? AND ts >= ? AND ts < ?"
            ))
            .await?,
            insert_held: p(format!(
                "INSERT INTO {ks}.held (conv, id, ts, entry) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            select_held_all: p(format!("SELECT entry FROM {ks}.held WHERE conv = ?")).await?,
            select_held: p(format!(
                "SELECT entry FROM {ks}.held WHERE conv = ? AND id = ?"
            ))
            .await?,
            delete_held: p(format!("DELETE FROM {ks}.held WHERE conv = ? AND id = ?")).await?,
            recall_message: p(format!(
                "UPDATE {ks}.messages USING TTL ? SET kind = 'recalled', body = '', \
                 attachment = null, mentions = null, reply_to = null \
                 WHERE conv = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            select_meta_kv: p(format!(
                "SELECT value FROM {ks}.meta WHERE ns = ? AND key = ?"
            ))
            .await?,
            scan_meta_kv: p(format!(
                "SELECT key, value FROM {ks}.meta WHERE ns = ? AND key >= ? AND key < ? LIMIT ?"
            ))
            .await?,
            insert_meta_kv: p(format!(
                "INSERT INTO {ks}.meta (ns, key, value) VALUES (?, ?, ?)"
            ))
            .await?,
            // The one lightweight transaction of the backend: creating an administrative
            // record (a user id, a group name) must not succeed twice. Rare, never on the
            // message path.
            insert_new_meta_kv: {
                let mut s = p(format!(
                    "INSERT INTO {ks}.meta (ns, key, value) VALUES (?, ?, ?) IF NOT EXISTS"
                ))
                .await?;
                s.set_is_idempotent(false);
                s
            },
            // The compare-and-swap of a record several nodes change (group settings):
            // also a lightweight transaction, also rare and off the message path.
            swap_meta_kv: {
                let mut s = p(format!(
                    "UPDATE {ks}.meta SET value = ? WHERE ns = ? AND key = ? IF value = ?"
                ))
                .await?;
                s.set_is_idempotent(false);
                s
            },
            delete_meta_kv: p(format!("DELETE FROM {ks}.meta WHERE ns = ? AND key = ?")).await?,
            insert_event: p(format!(
                "INSERT INTO {ks}.compliance_events (bucket, ts, source, n, body) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            select_events: p(format!(
                "SELECT ts, source, n, body FROM {ks}.compliance_events \
                 WHERE bucket = ? AND (ts, source, n) > (?, ?, ?) LIMIT ?"
            ))
            .await?,
            upsert_source: p(format!(
                "INSERT INTO {ks}.compliance_sources (shard, source, floor, seen) \
                 VALUES (0, ?, ?, ?)"
            ))
            .await?,
            select_sources: p(format!(
                "SELECT source, floor, seen FROM {ks}.compliance_sources WHERE shard = 0"
            ))
            .await?,
            delete_source: p(format!(
                "DELETE FROM {ks}.compliance_sources WHERE shard = 0 AND source = ?"
            ))
            .await?,
            // The first registration's time, where readers start; the earliest write wins
            // (timestamp 2^50 - time).
            insert_origin: p(format!(
                "INSERT INTO {ks}.settings (name, value) VALUES ('compliance_origin', ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            select_origin: p(format!(
                "SELECT value FROM {ks}.settings WHERE name = 'compliance_origin'"
            ))
            .await?,
            // Compare-and-delete (pruning ended moderation penalties): a lightweight
            // transaction, rare and off the message path.
            delete_if_meta_kv: {
                let mut s = p(format!(
                    "DELETE FROM {ks}.meta WHERE ns = ? AND key = ? IF value = ?"
                ))
                .await?;
                s.set_is_idempotent(false);
                s
            },
            select_floor: p(format!(
                "SELECT min_seq, kept FROM {ks}.conv_floor WHERE conv = ?"
            ))
            .await?,
            update_floor_kept: p(format!(
                "UPDATE {ks}.conv_floor SET kept = ? WHERE conv = ?"
            ))
            .await?,
            select_range: p(format!(
                "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq >= ? AND seq < ?"
            ))
            .await?,
            insert_kept_bucket: p(format!(
                "INSERT INTO {ks}.kept_buckets (conv, bucket) VALUES (?, ?)"
            ))
            .await?,
            select_kept_below: p(format!(
                "SELECT bucket FROM {ks}.kept_buckets WHERE conv = ? AND bucket < ? LIMIT 1"
            ))
            .await?,
            select_kept_above: p(format!(
                "SELECT bucket FROM {ks}.kept_buckets WHERE conv = ? AND bucket > ? \
                 ORDER BY bucket ASC LIMIT 1"
            ))
            .await?,
            delete_kept_buckets: p(format!("DELETE FROM {ks}.kept_buckets WHERE conv = ?")).await?,
            select_older_from: p(format!(
                "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq <= ? \
                 AND seq >= ? LIMIT ?"
            ))
            .await?,
            update_floor: p(format!(
                "UPDATE {ks}.conv_floor USING TIMESTAMP ? SET min_seq = ? WHERE conv = ?"
            ))
            .await?,
            select_expiring: p(format!(
                "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            delete_message: p(format!(
                "DELETE FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            select_convs_first: p(format!("SELECT conv FROM {ks}.conv_meta LIMIT ?")).await?,
            select_convs_after: p(format!(
                "SELECT conv FROM {ks}.conv_meta WHERE token(conv) > token(?) LIMIT ?"
            ))
            .await?,
        })
    }
}

/// Whether a failed request attempt may succeed later (the database is down, overloaded or
/// slow), as opposed to a request that can never succeed.
fn attempt_is_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
        ),
        _ => false,
    }
}

fn classify(
    transient: bool,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    if transient {
        StoreError::unavailable_with(what, e)
    } else {
        StoreError::backend_with(what, e)
    }
}

fn request_is_transient(e: &RequestError) -> bool {
    match e {
        RequestError::EmptyPlan
        | RequestError::ConnectionPoolError(_)
        | RequestError::RequestTimeout(_) => true,
        RequestError::LastAttemptError(a) => attempt_is_transient(a),
        _ => false,
    }
}

/// Maps an execution error: connection, timeout and replica-availability errors become
/// `Unavailable` (retrying later may work); anything else `Backend`.
pub(super) fn exec_err(e: ExecutionError) -> StoreError {
    let transient = match &e {
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_is_transient(a),
        ExecutionError::PrepareError(p) => prepare_is_transient(p),
        _ => false,
    };
    classify(transient, "cql", e)
}

fn prepare_is_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        _ => false,
    }
}

/// Maps a preparation error (see [`exec_err`]).
pub(super) fn prepare_err(e: PrepareError) -> StoreError {
    classify(prepare_is_transient(&e), "cql prepare", e)
}

fn next_page_is_transient(e: &NextPageError) -> bool {
    match e {
        NextPageError::RequestFailure(r) => request_is_transient(r),
        _ => false,
    }
}

/// Maps the error of starting a paged read (see [`exec_err`]).
pub(super) fn pager_err(e: PagerExecutionError) -> StoreError {
    let transient = match &e {
        PagerExecutionError::PrepareError(p) => prepare_is_transient(p),
        PagerExecutionError::NextPageError(n) => next_page_is_transient(n),
        _ => false,
    };
    classify(transient, "cql paged read", e)
}

/// Maps the error of fetching the next row of a paged read (see [`exec_err`]).
pub(super) fn next_row_err(e: NextRowError) -> StoreError {
    let transient = match &e {
        NextRowError::NextPageError(n) => next_page_is_transient(n),
        _ => false,
    };
    classify(transient, "cql paged read", e)
}

/// Maps a failure to connect: the database cannot be reached (yet).
pub(super) fn session_err(e: NewSessionError) -> StoreError {
    let transient = !matches!(
        e,
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_)
    );
    classify(transient, "cql connect", e)
}

/// Maps a decoding error of a result (wrong column types: a schema mismatch).
pub(super) fn decode_err(e: impl Into<crate::error::BoxError>) -> StoreError {
    StoreError::corrupt_with("cql result", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names() {
        assert!(valid_keyspace("chat"));
        assert!(valid_keyspace("chat_test_1a2b"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace("1chat"));
        assert!(!valid_keyspace("chat; DROP"));
        assert!(!valid_keyspace(&"a".repeat(49)));
    }

    #[test]
    fn schema_is_portable_cql() {
        let all = schema("ks", &replication(3, None))
            .join("\n")
            .to_uppercase();
        for forbidden in [
            " IF EXISTS",
            "COUNTER",
            "BYPASS CACHE",
            "USING TIMEOUT",
            "PER_PARTITION_RATE_LIMIT",
            "TOMBSTONE_GC",
            "STORAGEATTACHEDINDEX",
            "SAI",
            "UNIFIEDCOMPACTION",
            "VECTOR",
        ] {
            assert!(!all.contains(forbidden), "{forbidden}");
        }
        assert!(replication(3, Some("dc1")).contains("'dc1': 3"));
    }
}
