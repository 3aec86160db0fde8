//! The server's configuration: one struct with defaults, loaded from a TOML file and
//! overridden by `CHATD_`-prefixed environment variables (`CHATD_SERVER__LISTEN`, with `__`
//! between section and key). Every key is documented in `config/default.toml` and
//! `docs/CONFIG.md`; a test keeps the example file in step with this struct.

mod layers;

pub use layers::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener, data directory, sessions.
    pub server: ServerConfig,
    /// Token checking and minting.
    pub auth: AuthConfig,
    /// Persistence backend.
    pub store: StoreConfig,
    /// Delivery backend.
    pub router: RouterConfig,
    /// Limits on clients.
    pub limits: LimitsConfig,
    /// Moderation rules.
    pub moderation: ModerationConfig,
    /// Group administration.
    pub groups: GroupsConfig,
    /// Departing employees: scheduled erasure of deactivated accounts.
    pub leavers: LeaversConfig,
    /// Attachments.
    pub files: FilesConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Backups of the embedded store.
    pub backup: BackupConfig,
    /// The retention job (policies themselves are records set through the admin API).
    pub retention: RetentionConfig,
    /// `[compliance]`: the compliance event API and batch export (docs/OPERATIONS.md).
    pub compliance: ComplianceConfig,
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds between retention passes (the first one an interval after start); 0: none.
    /// A pass without any policy deletes nothing.
    pub interval_secs: u64,
    /// Most messages deleted by one store call (one write batch).
    pub batch: usize,
    /// Most conversations listed one by one in a dry-run or run report (the totals count
    /// every conversation).
    pub report_conversations: usize,
    /// Seconds a node's hold on the cluster's pass lease lasts without renewal (renewed every
    /// fifth of it while the pass runs): how long a dead node's lease blocks the next pass.
    pub lease_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            interval_secs: 3600,
            batch: 500,
            report_conversations: 1000,
            lease_secs: 300,
        }
    }
}

/// `[compliance]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Users who may read the compliance events and run exports, besides the company
    /// administrators (`auth.admins`).
    pub officers: Vec<String>,
    /// Most events one `GET /v1/admin/compliance/events` page may ask for.
    pub max_page: usize,
    /// Pages being read at once on this node (each reads up to `max_page` events and their
    /// messages); further requests get 503 with `retry`.
    pub max_concurrent_reads: usize,
    /// Where export batches are written (`""`: `compliance/` under `server.data_dir`).
    pub dir: PathBuf,
    /// Events per export batch (one zip file each), at most 10,000.
    pub batch_events: usize,
    /// An age X25519 recipient (`age1...`): batches are encrypted to it. Empty: not encrypted.
    pub public_key: String,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        Self {
            officers: Vec::new(),
            max_page: 1000,
            max_concurrent_reads: 2,
            dir: PathBuf::new(),
            batch_events: 5000,
            public_key: String::new(),
        }
    }
}

/// `[backup]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where backups are written (`""`: `backups/` under `server.data_dir`).
    pub dir: PathBuf,
    /// Seconds between scheduled backups (embedded mode); 0: none.
    pub interval_secs: u64,
    /// How many backups to keep in `dir`; older ones are deleted.
    pub keep: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            interval_secs: 86_400,
            keep: 7,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the admin listener serving `GET /metrics` (keep it private); empty: serve
    /// `/metrics` on the main listener, to company administrators only.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (logged at start-up).
    pub listen: String,
    /// Where the embedded store and the generated signing secret live.
    pub data_dir: PathBuf,
    /// Most concurrent WebSocket sessions on this node; further upgrades get 503.
    pub max_connections: usize,
    /// Most concurrent sessions (devices) of one user; further upgrades get 429.
    pub max_sessions_per_user: usize,
    /// Interval the client is asked to heartbeat at, and the server's WebSocket ping interval.
    pub heartbeat_ms: u64,
    /// A session with no inbound frame for this long is closed with 4004.
    pub idle_timeout_ms: u64,
    /// Capacity of each session's outbound queue; overflow closes it with 4000.
    pub outbound_queue: usize,
    /// Most queued frames the writer sends before one flush.
    pub write_batch: usize,
    /// WebSocket read buffer per connection, bytes (small keeps idle connections cheap).
    pub ws_read_buffer: usize,
    /// Bytes of frames gathered before one socket write (0: one write per frame).
    pub ws_write_buffer: usize,
    /// On shutdown, how long sessions get to close before the store is flushed.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, how long the node keeps serving with `/readyz` false before it closes
    /// sessions, so load balancers take it out of rotation first, seconds.
    pub drain_delay_secs: u64,
    /// Then, the window over which sessions are closed (1001), spread evenly so clients do
    /// not all reconnect at once, seconds.
    pub drain_window_secs: u64,
    /// Set TCP_NODELAY on every accepted socket (small frames leave at once).
    pub tcp_nodelay: bool,
    /// Open files kept back from the connection budget (store, logs, Redis/CQL, probes);
    /// the open-files limit minus this is the most sockets the node keeps open.
    pub fd_reserve: u64,
    /// Most connections that have not yet sent a complete first request; a new one beyond
    /// it closes the oldest of them.
    pub max_pending_connections: usize,
    /// From accept (TLS handshake included) to the first request's complete headers, ms.
    pub header_read_timeout_ms: u64,
    /// How long a kept-alive HTTP connection may wait for its next request's headers, ms.
    pub keepalive_timeout_ms: u64,
    /// From accept to a completed WebSocket upgrade, ms; later the upgrade gets 503.
    pub upgrade_timeout_ms: u64,
    /// PEM certificate chain for TLS; TLS is on when this and `tls_key_file` are set.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key_file: Option<PathBuf>,
    /// How long a TLS handshake may take, ms.
    pub tls_handshake_timeout_ms: u64,
    /// How often the TLS files are checked for changes, ms (0: never reloaded).
    pub tls_reload_ms: u64,
    /// Origins (`scheme://host[:port]`) allowed to open a WebSocket from a browser; empty:
    /// no check. An upgrade without an `Origin` header (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Development: serve the web app from this directory (e.g. `web/dist`) instead of the
    /// copy embedded in the binary, so a rebuilt app shows without rebuilding chatd.
    pub web_dir: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            max_connections: 100_000,
            max_sessions_per_user: 16,
            heartbeat_ms: 30_000,
            idle_timeout_ms: 90_000,
            outbound_queue: 1024,
            write_batch: 64,
            ws_read_buffer: 1024,
            ws_write_buffer: 8192,
            shutdown_grace_ms: 3_000,
            drain_delay_secs: 5,
            drain_window_secs: 10,
            tcp_nodelay: true,
            fd_reserve: 128,
            max_pending_connections: 512,
            header_read_timeout_ms: 20_000,
            keepalive_timeout_ms: 60_000,
            upgrade_timeout_ms: 30_000,
            tls_cert_file: None,
            tls_key_file: None,
            tls_handshake_timeout_ms: 10_000,
            tls_reload_ms: 10_000,
            allowed_origins: Vec::new(),
            web_dir: None,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing secret. Unset: read `<data_dir>/jwt.secret`, creating it with a random
    /// secret on first start. Set it through `CHATD_AUTH__JWT_SECRET`, never in a committed file.
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) of the company's identity provider:
    /// tokens it signs (RS*/PS*, ES256/ES384, EdDSA) are accepted besides HS256 ones.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, tokens checked with the public key must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, every token must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// Lifetime of tokens minted by `chatd token`, seconds.
    pub token_ttl_secs: u64,
    /// Clock skew tolerated when checking `exp`, seconds.
    pub leeway_secs: u64,
    /// User ids of company administrators (audit log, review of direct messages, rule
    /// reload, lifting suspensions).
    pub admins: Vec<String>,
    /// User ids who approve or reject announcements (company administrators do too).
    pub reviewers: Vec<String>,
    /// Fewest characters of a built-in sign-in password.
    pub password_min_len: usize,
    /// Whether a password needs both letters and digits.
    pub password_letters_and_digits: bool,
    /// Failed sign-ins allowed per user id per minute before `POST /v1/login` answers 429.
    pub login_attempts_per_minute: u32,
    /// Sign-in attempts allowed per client address per minute (any user id) before
    /// `POST /v1/login` answers 429.
    pub login_attempts_per_minute_per_address: u32,
    /// Addresses of reverse proxies whose `X-Forwarded-For` header names the client (for the
    /// per-address limit); empty: the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// Password hashes (argon2id, 19 MiB each) computed at once on this node.
    pub hash_concurrency: usize,
    /// Sign-ins and password changes that may wait for a hashing slot; more get 503.
    pub hash_queue: usize,
    /// Longest wait for a hashing slot, ms; after it the request gets 503 with `retry`.
    pub hash_wait_ms: u64,
    /// Longest lifetime of any accepted token, seconds (revocation records are kept this
    /// long); a token that expires later is refused.
    pub max_token_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            token_ttl_secs: 24 * 3600,
            leeway_secs: 5,
            admins: Vec::new(),
            reviewers: Vec::new(),
            password_min_len: 8,
            password_letters_and_digits: true,
            login_attempts_per_minute: 10,
            login_attempts_per_minute_per_address: 60,
            trusted_proxies: Vec::new(),
            hash_concurrency: 2,
            hash_queue: 32,
            hash_wait_ms: 3_000,
            max_token_lifetime_secs: 30 * 24 * 3600,
        }
    }
}

/// `[groups]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// How long after sending a sender may recall their own message, seconds.
    pub recall_window_secs: u64,
    /// Most pinned messages per group.
    pub max_pins: usize,
    /// Longest mute of a member, seconds.
    pub max_mute_secs: u64,
    /// Longest group announcement, characters.
    pub max_announcement_chars: usize,
    /// Most members of a group that members are added to (project, study, external groups;
    /// company and department groups follow the directory). Every message to a group is one
    /// delivery per member.
    pub max_members: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            recall_window_secs: 120,
            max_pins: 50,
            max_mute_secs: 30 * 24 * 3600,
            max_announcement_chars: 2000,
            max_members: 10_000,
        }
    }
}

/// `[leavers]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LeaversConfig {
    /// Days after deactivation when an account is anonymised (unless a legal hold applies);
    /// 0: never.
    pub erase_after_days: u64,
    /// Seconds between runs of the erasure job (when erasure is on).
    pub erase_interval_secs: u64,
}

impl Default for LeaversConfig {
    fn default() -> Self {
        Self {
            erase_after_days: 0,
            erase_interval_secs: 3600,
        }
    }
}

/// `[files]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Where uploaded content is stored; empty: `files` under `server.data_dir`. In a
    /// cluster every node must see the same directory (a shared volume).
    pub dir: PathBuf,
    /// Largest upload, bytes; a larger one is refused with 413.
    pub max_bytes: u64,
    /// Media types that may be uploaded (`Content-Type` without parameters).
    pub allowed_types: Vec<String>,
    /// Uploads per user per minute; more get 429.
    pub uploads_per_minute: u32,
    /// Uploads being received at once on a node (each may hold up to `max_bytes` in
    /// memory); more get 503 with `retry`.
    pub max_concurrent_uploads: usize,
    /// Uploads one user may have in progress at once on a node; more get 429.
    pub max_concurrent_uploads_per_user: usize,
    /// Slowest accepted upload, bytes per second on average after `upload_grace_ms`; a
    /// slower (or stalled) upload ends with 408 and frees its slot.
    pub upload_min_bytes_per_sec: u64,
    /// Time an upload gets before `upload_min_bytes_per_sec` applies, ms.
    pub upload_grace_ms: u64,
    /// Bytes one user may upload per day (a sliding budget that refills evenly); an upload
    /// past it gets 429 and stores nothing.
    pub upload_bytes_per_day: u64,
    /// Free space that uploads must leave on the files volume, bytes; an upload that would
    /// go below it gets 503 with `retry`, so uploads cannot fill the disk the store needs.
    pub min_free_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            max_bytes: 20 * 1024 * 1024,
            allowed_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "application/pdf",
                "text/plain",
                "application/zip",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ]
            .map(String::from)
            .to_vec(),
            uploads_per_minute: 30,
            max_concurrent_uploads: 8,
            max_concurrent_uploads_per_user: 2,
            upload_min_bytes_per_sec: 4096,
            upload_grace_ms: 10_000,
            upload_bytes_per_day: 1024 * 1024 * 1024,
            min_free_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// `store.backend`: which engine keeps the messages and records. A value other than the
/// variants' names is refused at start-up with an error naming the choices.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// A fjall database under `server.data_dir` (one node).
    #[default]
    Embedded,
    /// ScyllaDB or Apache Cassandra over CQL (cluster mode).
    Scylla,
}

/// `router.backend`: how deliveries reach the sessions on other nodes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouterBackend {
    /// This process only.
    #[default]
    Local,
    /// Redis pub/sub between nodes (cluster mode).
    Redis,
}

/// `router.redis_mode`: how the Redis of the `redis` router is deployed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One Redis server at `router.redis_url`: classic pub/sub.
    #[default]
    Standalone,
    /// A Redis Cluster (7.0+) seeded by `router.redis_cluster_urls`: sharded pub/sub.
    Cluster,
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (a fjall database under `server.data_dir`) or `scylla` (cluster mode).
    pub backend: StoreBackend,
    /// Most writes made durable by one journal sync (group commit).
    pub max_batch: usize,
    /// Queue in front of the store writer.
    pub queue: usize,
    /// `embedded`: writer threads; conversations are spread over them. One is cheapest per
    /// message up to tens of thousands of appends a second (each thread pays its own wake-ups
    /// and journal syncs); two give ~15 % more at saturation (docs/BENCHMARKS.md).
    pub writers: usize,
    /// `scylla`: contact points, `host:port`.
    pub cql_nodes: Vec<String>,
    /// `scylla`: keyspace (created by migrations if missing).
    pub keyspace: String,
    /// `scylla`: replication factor used when creating the keyspace.
    pub replication_factor: u32,
    /// `scylla`: consistency of reads and writes, `local_quorum` or `one`.
    pub consistency: String,
    /// `scylla`: per-request timeout, ms.
    pub request_timeout_ms: u64,
    /// `embedded`: least free space on the volume of `server.data_dir`; below it every write
    /// a client asks for is refused with `unavailable` (0: off). See [`crate::disk`].
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            max_batch: 1024,
            queue: 8192,
            writers: 1,
            cql_nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "chat".into(),
            replication_factor: 3,
            consistency: "local_quorum".into(),
            request_timeout_ms: 5000,
            min_free_bytes: 512 * 1024 * 1024,
        }
    }
}

/// `[router]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// `local` (this process only) or `redis` (cluster mode).
    pub backend: RouterBackend,
    /// Redis URL for the `redis` backend (routing, presence and, in cluster mode, seqs).
    pub redis_url: String,
    /// `standalone` (one Redis at `redis_url`) or `cluster` (a Redis Cluster, sharded pub/sub).
    pub redis_mode: RedisMode,
    /// `cluster` mode: seed URLs (any reachable nodes of the cluster); empty: `redis_url`.
    pub redis_cluster_urls: Vec<String>,
    /// This node's id, unique in the cluster; empty: generated at start-up.
    pub node_id: String,
    /// How often the node refreshes its presence in Redis, ms.
    pub heartbeat_ms: u64,
    /// How often the cluster presence map is rebuilt from Redis, ms.
    pub reconcile_ms: u64,
    /// Envelopes kept while Redis is unreachable; beyond it, deliveries fail.
    pub publish_queue: usize,
    /// Cluster mode: how long a node waits for a missing seq before reading it from the
    /// store, ms (see `holdback.rs`).
    pub holdback_ms: u64,
    /// Cluster mode: how long after a seq is known to exist a node that cannot find it in
    /// the store records it as skipped, ms.
    pub skip_after_ms: u64,
    /// Cluster mode: how often the Redis seq counters of watched conversations are compared
    /// with what was delivered (finds the tail a dead publisher left), ms.
    pub tail_check_ms: u64,
    /// Cluster mode: how long a conversation stays watched after its last delivery here, and
    /// how long the node's seq allocation record keeps it, s.
    pub watch_secs: u64,
    /// Cluster mode: most conversations whose delivery order a node tracks.
    pub holdback_convs: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            backend: RouterBackend::Local,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_mode: RedisMode::Standalone,
            redis_cluster_urls: Vec::new(),
            node_id: String::new(),
            heartbeat_ms: 2000,
            reconcile_ms: 10_000,
            publish_queue: 65_536,
            holdback_ms: 250,
            skip_after_ms: 10_000,
            tail_check_ms: 500,
            watch_secs: 60,
            holdback_convs: 100_000,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest inbound WebSocket message, bytes; larger closes the session with 1009.
    pub max_frame_bytes: usize,
    /// Longest message body, in characters.
    pub max_body_chars: usize,
    /// Sustained sends per second per session.
    pub send_per_sec: u32,
    /// Burst allowance on top of `send_per_sec`.
    pub send_burst: u32,
    /// Sustained messages per second one user sends from all their sessions on this node.
    pub user_send_per_sec: u32,
    /// Burst allowance on top of `user_send_per_sec`.
    pub user_send_burst: u32,
    /// Sustained recipients per second of one user's messages on this node (a message to a
    /// group costs one per member): what one account makes others receive.
    pub user_deliveries_per_sec: u32,
    /// Burst allowance on top of `user_deliveries_per_sec`; a message to a larger group costs
    /// the whole burst.
    pub user_deliveries_burst: u32,
    /// Bytes of message bodies one user may store per day on this node (refilled evenly;
    /// 0: off): what one account may add to the message store.
    pub user_message_bytes_per_day: u32,
    /// Sustained mutating HTTP requests (not `GET`/`HEAD`/`OPTIONS`) per second per user.
    pub http_writes_per_sec: u32,
    /// Burst allowance on top of `http_writes_per_sec`.
    pub http_writes_burst: u32,
    /// Sustained other authenticated HTTP requests (`GET`, `HEAD`) per second per user.
    pub http_reads_per_sec: u32,
    /// Burst allowance on top of `http_reads_per_sec`.
    pub http_reads_burst: u32,
    /// Largest `history` page (larger requests are clamped).
    pub history_max: u32,
    /// Most messages per conversation in one `synced` reply (larger requests are clamped).
    pub sync_max: u32,
    /// Most conversations in one `sync` request.
    pub sync_max_conversations: usize,
    /// Largest `sync`, `history` or `conversations` reply, bytes (its estimated encoded
    /// size): a page stops early with `has_more` when the next message would not fit.
    pub reply_max_bytes: usize,
    /// Bytes of such replies one user may have in flight at once (being built, queued or
    /// written), across their sessions on this node.
    pub replies_max_bytes_per_user: usize,
    /// Bytes of such replies the node has in flight at once.
    pub replies_max_bytes: usize,
    /// How long a heavy request waits for room in those budgets before `unavailable`, ms.
    pub reply_wait_ms: u64,
    /// Sustained `read` and `typing` notices per second one session makes others receive.
    pub ephemeral_per_sec: u32,
    /// Burst allowed above `ephemeral_per_sec`.
    pub ephemeral_burst: u32,
    /// Shortest interval between two `typing` notices of one session in one conversation, ms.
    pub typing_interval_ms: u64,
    /// Sustained requests per second per session other than sends, reads and typing
    /// notices (`history`, `sync`, `conversations`, `recall`, `ping`).
    pub requests_per_sec: u32,
    /// Burst allowed above `requests_per_sec`.
    pub requests_burst: u32,
    /// Sustained WebSocket frames per second one session's socket is read at, of any type
    /// and whether or not they decode, one more for each full 8 KiB in a frame; past it (and
    /// `frames_burst`) the server stops reading that socket until the budget refills. Never
    /// below the send, request and ephemeral limits together.
    pub frames_per_sec: u32,
    /// Burst allowed above `frames_per_sec`.
    pub frames_burst: u32,
    /// Most users in one message's `mentions`.
    pub max_mentions: usize,
    /// Largest HTTP request body, bytes.
    pub max_http_body: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_body_chars: 8000,
            send_per_sec: 50,
            send_burst: 100,
            user_send_per_sec: 100,
            user_send_burst: 200,
            user_deliveries_per_sec: 50_000,
            user_deliveries_burst: 100_000,
            user_message_bytes_per_day: 256 * 1024 * 1024,
            http_writes_per_sec: 20,
            http_writes_burst: 200,
            http_reads_per_sec: 200,
            http_reads_burst: 1000,
            history_max: 200,
            sync_max: 500,
            sync_max_conversations: 200,
            reply_max_bytes: 1024 * 1024,
            replies_max_bytes_per_user: 4 * 1024 * 1024,
            replies_max_bytes: 32 * 1024 * 1024,
            reply_wait_ms: 2000,
            ephemeral_per_sec: 5,
            ephemeral_burst: 10,
            typing_interval_ms: 3000,
            requests_per_sec: 50,
            requests_burst: 200,
            frames_per_sec: 200,
            frames_burst: 500,
            max_mentions: 100,
            max_http_body: 1024 * 1024,
        }
    }
}

/// `[moderation]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationConfig {
    /// Directory of rule files; empty string: built-in detectors only.
    pub rules_dir: PathBuf,
    /// How often to check the rule files for changes, ms (0: never).
    pub reload_poll_ms: u64,
    /// How often each node re-reads the penalties in force from the store, ms (0: only at
    /// start): the most a node that missed a penalty's broadcast lags behind.
    pub penalty_refresh_ms: u64,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            rules_dir: PathBuf::from("config/moderation"),
            reload_poll_ms: 2000,
            penalty_refresh_ms: 5000,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the `CHATD_<SECTION>__<KEY>` environment
    /// variables (names with `__`; `CHATD_LOG` and `CHATD_CONFIG` are the binary's own).
    /// How the layers merge and how environment values are typed: `config/layers.rs`.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        layers::load(file, std::env::vars_os())
    }

    /// The configuration as TOML with secrets redacted, for the start-up log.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        if c.auth.jwt_secret.is_some() {
            c.auth.jwt_secret = Some("<redacted>".into());
        }
        c.router.redis_url = redact_url(&c.router.redis_url);
        for u in &mut c.router.redis_cluster_urls {
            *u = redact_url(u);
        }
        toml::to_string(&c).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}

/// Hides the password of `scheme://user:password@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    #[test]
    fn default_toml_is_the_defaults() {
        let file = Config::load(Some(&repo_file("config/default.toml"))).unwrap();
        assert_eq!(
            file,
            Config::default(),
            "config/default.toml drifted from Config::default()"
        );
    }

    #[test]
    fn every_key_is_documented() {
        let text = std::fs::read_to_string(repo_file("docs/CONFIG.md")).unwrap();
        let value = toml::Value::try_from(Config::default()).unwrap();
        let table = value.as_table().unwrap();
        for (section, keys) in table {
            for key in keys.as_table().unwrap().keys() {
                let name = format!("`{section}.{key}`");
                assert!(
                    text.contains(&name),
                    "docs/CONFIG.md does not document {name}"
                );
            }
        }
        // jwt_secret has no default, so it is absent from the serialized defaults.
        assert!(text.contains("`auth.jwt_secret`"));
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://u:pw@h:1/0"),
            "redis://u:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlisten_adress = \"x\"\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("listen_adress"), "{err}");
    }

    #[test]
    fn backends_are_named_choices() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[store]\nbackend = \"scylla\"\n[router]\nbackend = \"redis\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Scylla);
        assert_eq!(c.router.backend, RouterBackend::Redis);
        std::fs::write(&p, "[store]\nbackend = \"mysql\"\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("mysql") && err.contains("embedded") && err.contains("scylla"),
            "{err}"
        );
        std::fs::write(&p, "[router]\nbackend = \"kafka\"\n").unwrap();
        let err = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(
            err.contains("kafka") && err.contains("local") && err.contains("redis"),
            "{err}"
        );
    }

    /// `layers::load` with `vars` as the whole environment.
    fn load_with<T: serde::de::DeserializeOwned>(
        file: Option<&Path>,
        vars: &[(&str, &str)],
    ) -> Result<T, ConfigError> {
        let vars = vars.iter().map(|(k, v)| (k.into(), v.into()));
        layers::load(file, vars.collect::<Vec<_>>())
    }

    /// The error `layers::load` gives, as shown.
    fn load_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        file: Option<&Path>,
        vars: &[(&str, &str)],
    ) -> String {
        load_with::<T>(file, vars).unwrap_err().to_string()
    }

    fn toml_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn nothing_set_is_the_defaults() {
        let c: Config = load_with(None, &[("CHATD_LOG", "debug"), ("CHATD_CONFIG", "x")]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn defaults_then_file_then_environment_merged_deeply() {
        let dir = tempfile::tempdir().unwrap();
        let p = toml_file(
            &dir,
            "[server]\nlisten = \"0.0.0.0:1\"\nmax_connections = 7\n[auth]\nadmins = [\"a\"]\n",
        );
        let c: Config = load_with(
            Some(&p),
            &[
                ("CHATD_SERVER__MAX_CONNECTIONS", "9"),
                ("CHATD_AUTH__REVIEWERS", r#"["r"]"#),
                ("chatd_limits__send_burst", "3"),
            ],
        )
        .unwrap();
        let mut want = Config::default();
        want.server.listen = "0.0.0.0:1".into(); // the file
        want.server.max_connections = 9; // the environment over the file
        want.auth.admins = vec!["a".into()]; // the file, the section's other keys default
        want.auth.reviewers = vec!["r".into()]; // the environment, beside the file's key
        want.limits.send_burst = 3; // the prefix in any case, keys lower-cased
        assert_eq!(c, want);
    }

    #[test]
    fn unknown_keys_from_the_environment_are_refused() {
        let err = load_err::<Config>(None, &[("CHATD_NOSUCH__KEY", "1")]);
        assert!(
            err.starts_with("nosuch (from CHATD_NOSUCH__KEY): unknown field `nosuch`"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = toml_file(&dir, "[server]\nlisten = \"x:1\"\n");
        let err = load_err::<Config>(Some(&p), &[("CHATD_SERVER__LISTEN_ADRESS", "y:1")]);
        assert!(
            err.starts_with(
                "server.listen_adress (from CHATD_SERVER__LISTEN_ADRESS): unknown field"
            ),
            "{err}"
        );
        let err = load_err::<Config>(None, &[("CHATD_SERVER__LISTEN__X", "1")]);
        assert!(
            err.starts_with("server.listen (from CHATD_SERVER__LISTEN__X)"),
            "{err}"
        );
    }

    #[test]
    fn environment_values_are_typed_by_their_key() {
        let c: Config = load_with(
            None,
            &[
                ("CHATD_AUTH__JWT_SECRET", "123456"),
                ("CHATD_AUTH__JWT_ISSUER", "true"),
                ("CHATD_SERVER__MAX_CONNECTIONS", "8080"),
                ("CHATD_SERVER__LISTEN", "8080"),
                ("CHATD_SERVER__TCP_NODELAY", "false"),
                ("CHATD_SERVER__TLS_CERT_FILE", "/etc/chatd/cert.pem"),
                ("CHATD_AUTH__ADMINS", r#"["a", "b"]"#),
                ("CHATD_STORE__CQL_NODES", "[]"),
                ("CHATD_STORE__BACKEND", "scylla"),
                ("CHATD_ROUTER__REDIS_MODE", "cluster"),
            ],
        )
        .unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("123456"));
        assert_eq!(c.auth.jwt_issuer.as_deref(), Some("true"));
        assert_eq!(c.server.max_connections, 8080);
        assert_eq!(c.server.listen, "8080");
        assert!(!c.server.tcp_nodelay);
        assert_eq!(
            c.server.tls_cert_file.as_deref(),
            Some(Path::new("/etc/chatd/cert.pem"))
        );
        assert_eq!(c.auth.admins, ["a", "b"]);
        assert!(c.store.cql_nodes.is_empty());
        assert_eq!(c.store.backend, StoreBackend::Scylla);
        assert_eq!(c.router.redis_mode, RedisMode::Cluster);
    }

    /// Key types the configuration may grow: optional numbers and flags (default `None`, so
    /// absent from any serialized defaults), lists of numbers, floats.
    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Other {
        s: OtherSection,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct OtherSection {
        n: Option<u64>,
        b: Option<bool>,
        v: Vec<u32>,
        f: f64,
        i: i32,
    }

    #[test]
    fn optional_and_other_types_from_the_environment() {
        let o: Other = load_with(
            None,
            &[
                ("CHATD_S__N", "42"),
                ("CHATD_S__B", "true"),
                ("CHATD_S__V", "[1, 2]"),
                ("CHATD_S__F", "0.5"),
                ("CHATD_S__I", "-3"),
            ],
        )
        .unwrap();
        let want = OtherSection {
            n: Some(42),
            b: Some(true),
            v: vec![1, 2],
            f: 0.5,
            i: -3,
        };
        assert_eq!(o.s, want);
        let err = load_err::<Other>(None, &[("CHATD_S__N", "-1")]);
        assert!(
            err.starts_with("s.n (from CHATD_S__N): expected an integer (u64)"),
            "{err}"
        );
        let err = load_err::<Other>(None, &[("CHATD_S__B", "yes")]);
        assert!(
            err.starts_with("s.b (from CHATD_S__B): expected `true` or `false`"),
            "{err}"
        );
        let err = load_err::<Other>(None, &[("CHATD_S__V", "1,2")]);
        assert!(
            err.starts_with("s.v (from CHATD_S__V): expected a TOML value"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_key_and_where_its_value_came_from() {
        let err = load_with::<Config>(None, &[("CHATD_SERVER__MAX_CONNECTIONS", "many-secret")])
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "server.max_connections (from CHATD_SERVER__MAX_CONNECTIONS): expected an integer (u64)"
            ),
            "{shown}"
        );
        assert!(
            !shown.contains("many-secret"),
            "the value is echoed: {shown}"
        );
        assert!(matches!(err, ConfigError::Invalid { .. }));

        let dir = tempfile::tempdir().unwrap();
        let p = toml_file(&dir, "[server]\nmax_connections = \"x\"\n");
        let err = load_err::<Config>(Some(&p), &[]);
        let want = format!(
            "server.max_connections (from {}): invalid type",
            p.display()
        );
        assert!(err.starts_with(&want), "{err}");
        // The environment's value replaces the file's bad one: no error.
        let c: Config = load_with(Some(&p), &[("CHATD_SERVER__MAX_CONNECTIONS", "2")]).unwrap();
        assert_eq!(c.server.max_connections, 2);

        let p = toml_file(&dir, "[server]\nlisten = \"a:1\"\nmax_connections =\n");
        let err = load_with::<Config>(Some(&p), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        let err = err.to_string();
        assert!(err.starts_with(&format!("{}: ", p.display())), "{err}");
        assert!(err.contains("line 3"), "{err}");

        let p = toml_file(&dir, "[server]\nlisten = \"a:1\"\n");
        let err = load_err::<Config>(Some(&p), &[("CHATD_SERVER__LISTEN__PORT", "2")]);
        let want = format!(
            "server.listen (from {}): a value that is not a table, while CHATD_SERVER__LISTEN__PORT set keys below it",
            p.display()
        );
        assert_eq!(err, want);

        let missing = dir.path().join("none.toml");
        let err = load_err::<Config>(Some(&missing), &[]);
        assert!(
            err.starts_with(&format!("reading {}", missing.display())),
            "{err}"
        );

        let err = load_err::<Config>(
            None,
            &[
                ("CHATD_SERVER__LISTEN", "a:1"),
                ("chatd_server__listen", "b:1"),
            ],
        );
        assert_eq!(
            err,
            "server.listen is set by both CHATD_SERVER__LISTEN and chatd_server__listen"
        );
    }
}
