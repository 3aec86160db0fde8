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

/// Declares [`Statements`], one prepared statement per field, from one list of names and CQL
/// texts (`{ks}` is the keyspace), so that a statement's name and text are written once and
/// preparing them is one loop rather than one `await` per field (which made `prepare` one of
/// the store's largest state machines).
macro_rules! statements {
    ($($(#[$attr:meta])* $name:ident = $cql:literal;)*) => {
        /// Every prepared statement, prepared once per store.
        pub(super) struct Statements {
            $($(#[$attr])* pub $name: PreparedStatement,)*
        }

        impl Statements {
            /// The CQL text of every statement against keyspace `ks`, in field order.
            fn texts(ks: &str) -> Vec<String> {
                vec![$(format!($cql, ks = ks)),*]
            }

            /// How many statements there are.
            const COUNT: usize = [$(stringify!($name)),*].len();

            /// The statements from their prepared forms, given in field order; `None` unless
            /// there is exactly one per field.
            fn from_prepared(prepared: Vec<PreparedStatement>) -> Option<Self> {
                let [$($name),*]: [PreparedStatement; Self::COUNT] = prepared.try_into().ok()?;
                Some(Self { $($name),* })
            }
        }
    };
}

statements! {
    insert_message = "INSERT INTO {ks}.messages (conv, bucket, seq, id, sender, kind, body, \
         attachment, mentions, reply_to, ts, client_msg_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    insert_idem = "INSERT INTO {ks}.idempotency (conv, sender, client_msg_id, seq, id) \
         VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?";
    update_meta = "UPDATE {ks}.conv_meta USING TIMESTAMP ? SET last_seq = ?, last_ts = ? \
         WHERE conv = ?";
    insert_user_conv = "INSERT INTO {ks}.user_convs (user_id, conv) VALUES (?, ?)";
    select_idem = "SELECT seq, id FROM {ks}.idempotency \
         WHERE conv = ? AND sender = ? AND client_msg_id = ?";
    select_message =
        "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?";
    select_older = "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? \
         AND seq <= ? LIMIT ?";
    select_newer = "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? \
         AND seq >= ? ORDER BY seq ASC LIMIT ?";
    select_top_seq = "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? LIMIT 1";
    select_meta = "SELECT last_seq, last_ts FROM {ks}.conv_meta WHERE conv = ?";
    select_user_convs = "SELECT conv FROM {ks}.user_convs WHERE user_id = ?";
    select_cursors = "SELECT conv, seq FROM {ks}.read_cursors WHERE user_id = ?";
    select_cursor = "SELECT seq FROM {ks}.read_cursors WHERE user_id = ? AND conv = ?";
    update_cursor = "UPDATE {ks}.read_cursors USING TIMESTAMP ? SET seq = ? \
         WHERE user_id = ? AND conv = ?";
    select_user = "SELECT id FROM {ks}.chat_users WHERE id = ?";
    insert_user = "INSERT INTO {ks}.chat_users (id, first_seen) VALUES (?, ?) USING TIMESTAMP ?";
    select_group =
        "SELECT id, name, kind, created_by, created_at FROM {ks}.chat_groups WHERE id = ?";
    insert_group = "INSERT INTO {ks}.chat_groups (id, name, kind, created_by, created_at) \
         VALUES (?, ?, ?, ?, ?)";
    select_members = "SELECT user_id, role, joined_at FROM {ks}.members WHERE group_id = ?";
    select_member = "SELECT user_id FROM {ks}.members WHERE group_id = ? AND user_id = ?";
    insert_member =
        "INSERT INTO {ks}.members (group_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)";
    delete_member = "DELETE FROM {ks}.members WHERE group_id = ? AND user_id = ?";
    select_user_groups = "SELECT group_id FROM {ks}.user_groups WHERE user_id = ?";
    insert_user_group = "INSERT INTO {ks}.user_groups (user_id, group_id) VALUES (?, ?)";
    delete_user_group = "DELETE FROM {ks}.user_groups WHERE user_id = ? AND group_id = ?";
    select_retention = "SELECT ttl_secs FROM {ks}.group_retention WHERE group_id = ?";
    insert_retention = "INSERT INTO {ks}.group_retention (group_id, ttl_secs) VALUES (?, ?)";
    delete_retention = "DELETE FROM {ks}.group_retention WHERE group_id = ?";
    insert_audit = "INSERT INTO {ks}.audit (day, ts, uid, entry) VALUES (?, ?, ?, ?)";
    insert_audit_day = "INSERT INTO {ks}.audit_days (shard, day) VALUES (0, ?)";
    select_audit_days = "SELECT day FROM {ks}.audit_days WHERE shard = 0 AND day >= ? AND day <= ?";
    select_audit = "SELECT entry FROM {ks}.audit WHERE day = ? AND ts >= ? AND ts < ?";
    insert_held = "INSERT INTO {ks}.held (conv, id, ts, entry) VALUES (?, ?, ?, ?)";
    select_held_all = "SELECT entry FROM {ks}.held WHERE conv = ?";
    select_held = "SELECT entry FROM {ks}.held WHERE conv = ? AND id = ?";
    delete_held = "DELETE FROM {ks}.held WHERE conv = ? AND id = ?";
    recall_message = "UPDATE {ks}.messages USING TTL ? SET kind = 'recalled', body = '', \
         attachment = null, mentions = null, reply_to = null \
         WHERE conv = ? AND bucket = ? AND seq = ?";
    select_meta_kv = "SELECT value FROM {ks}.meta WHERE ns = ? AND key = ?";
    scan_meta_kv = "SELECT key, value FROM {ks}.meta WHERE ns = ? AND key >= ? AND key < ? LIMIT ?";
    insert_meta_kv = "INSERT INTO {ks}.meta (ns, key, value) VALUES (?, ?, ?)";
    /// The one lightweight transaction of the backend: creating an administrative
    /// record (a user id, a group name) must not succeed twice. Rare, never on the
    /// message path.
    insert_new_meta_kv = "INSERT INTO {ks}.meta (ns, key, value) VALUES (?, ?, ?) IF NOT EXISTS";
    /// The compare-and-swap of a record several nodes change (group settings):
    /// also a lightweight transaction, also rare and off the message path.
    swap_meta_kv = "UPDATE {ks}.meta SET value = ? WHERE ns = ? AND key = ? IF value = ?";
    delete_meta_kv = "DELETE FROM {ks}.meta WHERE ns = ? AND key = ?";
    insert_event = "INSERT INTO {ks}.compliance_events (bucket, ts, source, n, body) \
         VALUES (?, ?, ?, ?, ?)";
    select_events = "SELECT ts, source, n, body FROM {ks}.compliance_events \
         WHERE bucket = ? AND (ts, source, n) > (?, ?, ?) LIMIT ?";
    upsert_source = "INSERT INTO {ks}.compliance_sources (shard, source, floor, seen) \
         VALUES (0, ?, ?, ?)";
    select_sources = "SELECT source, floor, seen FROM {ks}.compliance_sources WHERE shard = 0";
    delete_source = "DELETE FROM {ks}.compliance_sources WHERE shard = 0 AND source = ?";
    /// The first registration's time, where readers start; the earliest write wins
    /// (timestamp 2^50 - time).
    insert_origin = "INSERT INTO {ks}.settings (name, value) VALUES ('compliance_origin', ?) \
         USING TIMESTAMP ?";
    select_origin = "SELECT value FROM {ks}.settings WHERE name = 'compliance_origin'";
    /// Compare-and-delete (pruning ended moderation penalties): a lightweight
    /// transaction, rare and off the message path.
    delete_if_meta_kv = "DELETE FROM {ks}.meta WHERE ns = ? AND key = ? IF value = ?";
    select_floor = "SELECT min_seq, kept FROM {ks}.conv_floor WHERE conv = ?";
    update_floor_kept = "UPDATE {ks}.conv_floor SET kept = ? WHERE conv = ?";
    select_range =
        "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq >= ? AND seq < ?";
    insert_kept_bucket = "INSERT INTO {ks}.kept_buckets (conv, bucket) VALUES (?, ?)";
    select_kept_below =
        "SELECT bucket FROM {ks}.kept_buckets WHERE conv = ? AND bucket < ? LIMIT 1";
    select_kept_above = "SELECT bucket FROM {ks}.kept_buckets WHERE conv = ? AND bucket > ? \
         ORDER BY bucket ASC LIMIT 1";
    delete_kept_buckets = "DELETE FROM {ks}.kept_buckets WHERE conv = ?";
    select_older_from = "SELECT {MSG_COLS} FROM {ks}.messages WHERE conv = ? AND bucket = ? \
         AND seq <= ? AND seq >= ? LIMIT ?";
    update_floor = "UPDATE {ks}.conv_floor USING TIMESTAMP ? SET min_seq = ? WHERE conv = ?";
    select_expiring = "SELECT seq FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?";
    delete_message = "DELETE FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?";
    select_convs_first = "SELECT conv FROM {ks}.conv_meta LIMIT ?";
    select_convs_after = "SELECT conv FROM {ks}.conv_meta WHERE token(conv) > token(?) LIMIT ?";
}

impl Statements {
    /// Prepares every statement against keyspace `ks` (its tables must exist).
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let texts = Self::texts(ks);
        let mut prepared = Vec::with_capacity(texts.len());
        for cql in texts {
            let mut s = session.prepare(cql).await.map_err(prepare_err)?;
            s.set_page_size(PAGE_SIZE);
            // Every statement here can be applied twice with the same effect (writes carry
            // fixed values or timestamps), so the driver may retry them after a timeout...
            s.set_is_idempotent(true);
            prepared.push(s);
        }
        let mut statements = Self::from_prepared(prepared).ok_or_else(|| StoreError::Backend {
            what: "cql prepare: not one prepared statement per declared one".into(),
            source: None,
        })?;
        // ...except the lightweight transactions (compare-and-set), which must not be retried
        // blindly: a retry after a timeout could see its own first write and report a conflict.
        for lwt in [
            &mut statements.insert_new_meta_kv,
            &mut statements.swap_meta_kv,
            &mut statements.delete_if_meta_kv,
        ] {
            lwt.set_is_idempotent(false);
        }
        Ok(statements)
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
