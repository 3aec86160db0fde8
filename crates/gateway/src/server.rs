//! Building and running a node: open the store, start the router, bind, serve until the
//! shutdown signal, then close sessions and flush the store.

use crate::auth::Auth;
use crate::cluster::RedisSeqSource;
use crate::config::Config;
use crate::hub::Hub;
use crate::membership::Membership;
use crate::moderation::Moderation;
use crate::state::{AppState, Inner};
use anyhow::{bail, Context};
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use dashmap::DashSet;
use protocol::close;
use router::local::LocalRouter;
use router::redis::{RedisOptions, RedisRouter, RedisSeq};
use router::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::scylla::{parse_consistency, ScyllaOptions, ScyllaStore};
use store::{MetaStore, ReviewStore, Store};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A bound, not yet serving node.
pub struct Node {
    state: AppState,
    listener: TcpListener,
}

/// The three faces of one storage backend: messages, moderation records, admin records.
type Backends = (Arc<dyn Store>, Arc<dyn ReviewStore>, Arc<dyn MetaStore>);

/// Opens the ScyllaDB store (running the migrations) with Redis sequence counters; it also
/// keeps the audit log and the review queue, shared by every node.
async fn open_scylla(config: &Config) -> anyhow::Result<Backends> {
    anyhow::ensure!(
        config.router.backend == "redis",
        "store.backend = \"scylla\" needs router.backend = \"redis\", which allocates sequence numbers"
    );
    let store = scylla_store(config).await?;
    store
        .migrate()
        .await
        .context("running the CQL migrations")?;
    Ok((
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(store),
    ))
}

/// Connects the ScyllaDB store described by `config` (without migrating).
pub async fn scylla_store(config: &Config) -> anyhow::Result<ScyllaStore> {
    let s = &config.store;
    let seq = RedisSeq::connect(&config.router.redis_url, &s.keyspace)
        .await
        .with_context(|| {
            format!(
                "connecting to Redis at {} for sequence numbers",
                config.router.redis_url
            )
        })?;
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

impl Node {
    /// Opens the backends and binds the listener.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let auth = Auth::from_config(&config.auth, &config.server)
            .context("loading the token signing secret")?;
        let moderation = {
            let dir = config.moderation.rules_dir.clone();
            let m = tokio::task::spawn_blocking(move || Moderation::load(&dir))
                .await?
                .with_context(|| {
                    format!(
                        "loading moderation rules from {}",
                        config.moderation.rules_dir.display()
                    )
                })?;
            let m = Arc::new(m);
            m.spawn_watcher(
                Duration::from_millis(config.moderation.reload_poll_ms),
                shutdown.clone(),
            );
            m
        };
        let (store, review, meta): Backends = match config.store.backend.as_str() {
            "embedded" => {
                let dir = config.server.data_dir.clone();
                let opts = EmbeddedOptions {
                    max_batch: config.store.max_batch,
                    queue: config.store.queue,
                };
                let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, opts))
                    .await?
                    .with_context(|| {
                        format!("opening the store in {}", config.server.data_dir.display())
                    })?;
                (
                    Arc::new(store.clone()),
                    Arc::new(store.clone()),
                    Arc::new(store),
                )
            }
            "scylla" => open_scylla(&config).await?,
            other => bail!("store.backend = {other:?}: expected \"embedded\" or \"scylla\""),
        };
        let router: Arc<dyn Router> = match config.router.backend.as_str() {
            "local" => Arc::new(LocalRouter::new()),
            "redis" => {
                let r = &config.router;
                let node_id = if r.node_id.is_empty() {
                    format!("node-{}", uuid::Uuid::new_v4().simple())
                } else {
                    r.node_id.clone()
                };
                let opts = RedisOptions {
                    url: r.redis_url.clone(),
                    node_id,
                    heartbeat: Duration::from_millis(r.heartbeat_ms.max(100)),
                    reconcile: Duration::from_millis(r.reconcile_ms.max(100)),
                    queue: r.publish_queue,
                };
                let router = RedisRouter::connect(opts)
                    .await
                    .with_context(|| format!("connecting to Redis at {}", r.redis_url))?;
                tracing::info!(node = router.node_id(), "redis router connected");
                Arc::new(router)
            }
            other => bail!("router.backend = {other:?}: expected \"local\" or \"redis\""),
        };
        let membership = Membership::new(store.clone(), meta.clone());
        membership
            .revocations
            .spawn_pruner(Duration::from_secs(3600), shutdown.clone());
        let hub = Hub::new(membership.clone());
        router.attach(hub.clone());
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let pump = crate::pump::DeliveryPump::start(router.clone(), 65_536, shutdown.clone());
        let state = AppState(Arc::new(Inner {
            pump,
            auth,
            store,
            review,
            meta,
            moderation,
            router,
            hub,
            membership,
            known_users: DashSet::new(),
            upload_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(config.files.uploads_per_minute.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.files.max_concurrent_uploads.max(1),
            )),
            uploads_by_user: Default::default(),
            signin: crate::signin::SignIn::new(&config.auth)?,
            login_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(config.auth.login_attempts_per_minute.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            connections: Arc::new(Semaphore::new(config.server.max_connections.max(1))),
            shutdown,
            config,
        }));
        Ok(Self { state, listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The node's state (for tests and tools).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown token is cancelled, then shuts down in order.
    pub async fn serve(self) -> anyhow::Result<()> {
        let state = self.state;
        let app = crate::api::routes()
            .route("/ws", get(crate::session::upgrade))
            .layer(DefaultBodyLimit::max(state.config.limits.max_http_body))
            .with_state(state.clone());
        let shutdown = state.shutdown.clone();
        let hub = state.hub.clone();
        let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
        let closer = async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: closing sessions");
            hub.close_all(close::GOING_AWAY, "server shutting down");
        };
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(closer);
        let serve = tokio::spawn(async move { serve.await });
        state.shutdown.cancelled().await;
        // Sessions were told to close; give them the grace period to finish.
        match tokio::time::timeout(grace, serve).await {
            Ok(r) => r.context("server task")?.context("serving")?,
            Err(_) => tracing::warn!("sessions still open after the grace period"),
        }
        state.store.close().await.context("flushing the store")?;
        tracing::info!("stopped");
        Ok(())
    }
}
