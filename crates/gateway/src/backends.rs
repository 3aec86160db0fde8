//! Opening the configured backends: the store (`[store]`) and the router (`[router]`).
//!
//! This is the one place that maps configuration onto backend options, so
//! [`crate::server::Node::bind`] only says "open the store" and "open the router". Adding a
//! backend means: its implementation in the `store` or `router` crate, a variant in
//! [`StoreBackend`] or [`RouterBackend`] with its config keys (`config.rs`,
//! `config/default.toml`, `docs/CONFIG.md`), and one arm here.

use crate::config::{Config, RouterBackend, RouterConfig, StoreBackend};
use anyhow::Context;
use async_trait::async_trait;
use protocol::{ConvId, Seq};
use router::local::LocalRouter;
use router::redis::{RedisMode, RedisOptions, RedisRouter, RedisSeq};
use router::Router;
use std::sync::Arc;
use std::time::Duration;
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::scylla::{parse_consistency, ScyllaOptions, ScyllaStore};
use store::{AdminExport, MetaStore, ReviewStore, SeqSource, Store, StoreError};

/// The three faces of one storage backend: messages, moderation records, admin records.
pub struct Storage {
    /// Messages, conversations, groups and members.
    pub store: Arc<dyn Store>,
    /// The audit log and the review queue.
    pub review: Arc<dyn ReviewStore>,
    /// The namespaced admin records.
    pub meta: Arc<dyn MetaStore>,
    /// The embedded store itself (embedded mode), for backups.
    pub embedded: Option<EmbeddedStore>,
    /// Bulk reading of the administrative records, for `chatd export`.
    pub admin: Arc<dyn AdminExport>,
}

impl Storage {
    /// One backend value that implements all three traits.
    fn of<S: Store + ReviewStore + MetaStore + AdminExport + Clone>(s: S) -> Self {
        Self {
            store: Arc::new(s.clone()),
            review: Arc::new(s.clone()),
            admin: Arc::new(s.clone()),
            meta: Arc::new(s),
            embedded: None,
        }
    }
}

/// Opens the store `config.store.backend` names (the scylla one migrated, with Redis
/// sequence counters).
pub async fn open_store(config: &Config) -> anyhow::Result<Storage> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let dir = config.server.data_dir.clone();
            let opts = EmbeddedOptions {
                max_batch: config.store.max_batch,
                queue: config.store.queue,
                writers: config.store.writers,
            };
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, opts))
                .await?
                .with_context(|| {
                    format!("opening the store in {}", config.server.data_dir.display())
                })?;
            Ok(Storage {
                embedded: Some(store.clone()),
                ..Storage::of(store)
            })
        }
        StoreBackend::Scylla => {
            anyhow::ensure!(
                config.router.backend == RouterBackend::Redis,
                "store.backend = \"scylla\" needs router.backend = \"redis\", which allocates sequence numbers"
            );
            let store = scylla_store(config).await?;
            store
                .migrate()
                .await
                .context("running the CQL migrations")?;
            Ok(Storage::of(store))
        }
    }
}

/// Connects to the per-conversation seq counters in Redis (standalone or cluster, as
/// `router.redis_mode` says): the ScyllaDB store allocates seqs there and the cluster
/// hold-back reads them to find a lost tail.
pub async fn seq_counters(config: &Config) -> anyhow::Result<RedisSeq> {
    let r = &config.router;
    RedisSeq::connect_with(
        redis_mode(r.redis_mode),
        &r.redis_url,
        &r.redis_cluster_urls,
        &config.store.keyspace,
    )
    .await
    .with_context(|| {
        format!(
            "connecting to Redis at {} for sequence numbers",
            r.redis_url
        )
    })
}

/// Connects the ScyllaDB store described by `config` (without migrating); also used by
/// `chatd migrate`.
pub async fn scylla_store(config: &Config) -> anyhow::Result<ScyllaStore> {
    let s = &config.store;
    // Each seq taken is recorded under this node's id, so that the survivors can deliver
    // what this node acknowledged but never published if it dies (holdback.rs).
    let seq = seq_counters(config).await?.recording(
        &node_id(&config.router),
        Duration::from_secs(config.router.watch_secs.max(1)),
    );
    let opts = ScyllaOptions {
        nodes: s.cql_nodes.clone(),
        keyspace: s.keyspace.clone(),
        replication_factor: s.replication_factor,
        consistency: parse_consistency(&s.consistency)
            .with_context(|| format!("store.consistency = {:?}", s.consistency))?,
        request_timeout: Duration::from_millis(s.request_timeout_ms.max(1)),
        ..ScyllaOptions::default()
    };
    ScyllaStore::new(opts, Arc::new(RedisSeqSource(seq)))
        .await
        .with_context(|| format!("connecting to the CQL database at {:?}", s.cql_nodes))
}

/// Opens the router `config.backend` names.
pub async fn open_router(config: &RouterConfig) -> anyhow::Result<Arc<dyn Router>> {
    Ok(match config.backend {
        RouterBackend::Local => Arc::new(LocalRouter::new()),
        RouterBackend::Redis => {
            let node_id = node_id(config);
            let opts = RedisOptions {
                url: config.redis_url.clone(),
                mode: redis_mode(config.redis_mode),
                cluster_urls: config.redis_cluster_urls.clone(),
                node_id,
                heartbeat: Duration::from_millis(config.heartbeat_ms.max(100)),
                reconcile: Duration::from_millis(config.reconcile_ms.max(100)),
                queue: config.publish_queue,
            };
            let router = RedisRouter::connect(opts)
                .await
                .with_context(|| format!("connecting to Redis at {}", config.redis_url))?;
            tracing::info!(node = router.node_id(), "redis router connected");
            Arc::new(router)
        }
    })
}

/// This node's id in the cluster: `router.node_id`, or one generated once per process when
/// it is empty (the router and the seq allocation record must use the same).
pub fn node_id(config: &RouterConfig) -> String {
    static GENERATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if config.node_id.is_empty() {
        GENERATED
            .get_or_init(|| format!("node-{}", uuid::Uuid::new_v4().simple()))
            .clone()
    } else {
        config.node_id.clone()
    }
}

/// [`SeqSource`] over Redis `INCR` counters (see `router::redis::RedisSeq`): in cluster mode
/// the ScyllaDB store's sequence numbers come from Redis.
pub struct RedisSeqSource(pub RedisSeq);

fn unavailable(e: router::RouterError) -> StoreError {
    StoreError::unavailable_with("sequence counter", e)
}

#[async_trait]
impl SeqSource for RedisSeqSource {
    async fn next(&self, conv: &ConvId) -> store::Result<Option<Seq>> {
        let seq = self.0.next(conv).await.map_err(unavailable)?.map(Seq);
        // Test hook: die between taking a seq and storing its message (a crash that leaves
        // a seq without a message; see tests/tests/cluster_delivery.rs).
        #[cfg(feature = "test-hooks")]
        if seq.is_some()
            && std::env::var("CHATD_TEST_DIE_AFTER_SEQ_IN").is_ok_and(|c| c == conv.as_str())
        {
            std::process::abort();
        }
        Ok(seq)
    }

    async fn restore(&self, conv: &ConvId, last: Seq) -> store::Result<Seq> {
        Ok(Seq(self
            .0
            .restore(conv, last.0)
            .await
            .map_err(unavailable)?))
    }
}

/// The router's [`RedisMode`] for `router.redis_mode`.
fn redis_mode(mode: crate::config::RedisMode) -> RedisMode {
    match mode {
        crate::config::RedisMode::Standalone => RedisMode::Standalone,
        crate::config::RedisMode::Cluster => RedisMode::Cluster,
    }
}
