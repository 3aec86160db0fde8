//! Building and running a node: open the store, start the router, bind, serve until the
//! shutdown signal, then close sessions and flush the store.

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::listener::Budgets;
use crate::membership::Membership;
use crate::moderation::Moderation;
use crate::state::{AppState, Inner};
use crate::tls::Tls;
use anyhow::{bail, Context};
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use dashmap::DashSet;
use protocol::close;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A bound, not yet serving node.
pub struct Node {
    state: AppState,
    listener: TcpListener,
    tls: Option<Tls>,
    budgets: Budgets,
    metrics_addr: Option<SocketAddr>,
}

impl Node {
    /// Opens the backends and binds the listener.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let auth = Auth::from_config(&config.auth, &config.server)
            .context("loading the token signing secret")?;
        crate::compliance::check_config(&config).map_err(anyhow::Error::msg)?;
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
        let crate::backends::Storage {
            store,
            review,
            meta,
            embedded,
            ..
        } = crate::backends::open_store(&config).await?;
        let router = crate::backends::open_router(&config.router).await?;
        #[cfg(feature = "test-hooks")]
        let router = crate::faults::wrap_router(router);
        let membership = Membership::new(store.clone(), meta.clone());
        membership
            .revocations
            .spawn_pruner(Duration::from_secs(3600), shutdown.clone());
        membership
            .penalties
            .start(
                Duration::from_millis(config.moderation.penalty_refresh_ms),
                shutdown.clone(),
            )
            .await
            .context("loading the moderation penalties")?;
        let hub = Hub::new(membership.clone());
        router.attach(
            crate::holdback::sink_for(&config, &hub, &store, &membership, &shutdown).await?,
        );
        let metrics_addr = crate::metrics::start(&config.metrics, shutdown.clone()).await?;
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(
                Tls::start(
                    cert.clone(),
                    key.clone(),
                    Duration::from_millis(config.server.tls_reload_ms),
                    shutdown.clone(),
                )
                .await
                .context("loading server.tls_cert_file / server.tls_key_file")?,
            ),
            (None, None) => None,
            _ => bail!("TLS needs both server.tls_cert_file and server.tls_key_file"),
        };
        let budgets = Budgets::of_process(&config.server);
        let pump = crate::pump::DeliveryPump::start(router.clone(), 65_536, shutdown.clone());
        let state = AppState(Arc::new(Inner {
            replies: crate::budget::ReplyBudgets::new(&config.limits),
            read_rate: crate::read_budget::ReadRate::of(&config.limits),
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
            user_rates: crate::user_rates::UserRates::new(&config.limits, &config.files),
            // The CQL database manages its own disks; the guard watches the embedded store's.
            disk: crate::disk::DiskGuard::new(if embedded.is_some() {
                config.store.min_free_bytes
            } else {
                0
            }),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                config.files.max_concurrent_uploads.max(1),
            )),
            uploads_by_user: Default::default(),
            signin: crate::signin::SignIn::new(&config.auth)?,
            login_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(config.auth.login_attempts_per_minute.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            connections: Arc::new(Semaphore::new(budgets.sessions)),
            shutdown,
            health: crate::health::Health::new(),
            embedded,
            config,
        }));
        Ok(Self {
            state,
            listener,
            tls,
            budgets,
            metrics_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The node's state (for tests and tools).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The address of the metrics listener (`metrics.listen`), if it has its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The connection budgets derived from the open-files limit.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Serves until the shutdown token is cancelled or a drain is requested
    /// ([`crate::health::Health::begin_drain`]), then shuts down in order: (drain: readiness
    /// false, keep serving `server.drain_delay_secs`, close sessions with 1001 spread over
    /// `server.drain_window_secs`), stop accepting, close the sessions left with 1001, let HTTP
    /// requests in progress finish, give sessions the grace period to end, flush the store.
    pub async fn serve(self) -> anyhow::Result<()> {
        let state = self.state;
        let budgets = self.budgets;
        tracing::info!(
            open_files = budgets.fd_limit,
            sockets = budgets.sockets,
            pending = budgets.pending,
            sessions = budgets.sessions,
            tls = self.tls.is_some(),
            "connection budgets"
        );
        let app = crate::api::routes()
            .merge(crate::api::web::routes())
            .route("/ws", get(crate::session::upgrade))
            .merge(crate::api::operations::probe_routes())
            .merge(crate::api::operations::metrics_routes(
                &state.config.metrics,
            ))
            .layer(DefaultBodyLimit::max(state.config.limits.max_http_body))
            .layer(axum::middleware::from_fn(crate::api::json_errors))
            .layer(axum::middleware::from_fn(crate::metrics::http_layer))
            .with_state(state.clone());
        let shutdown = state.shutdown.clone();
        let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
        // Everything is open: ready from the first request the listener serves. (While the
        // store opens, nothing listens yet, so probes fail to connect.)
        // Measured before the first request is served, so a full disk is refused from the start.
        state
            .disk
            .spawn(state.config.server.data_dir.clone(), shutdown.clone())
            .await;
        state.health.set_started();
        let serve = {
            let config = state.config.server.clone();
            let shutdown = shutdown.clone();
            let (listener, tls) = (self.listener, self.tls);
            tokio::spawn(async move {
                crate::listener::serve(listener, tls, app, &config, budgets, shutdown).await
            })
        };
        crate::backup::spawn_scheduler(state.clone());
        crate::compliance::resume_at_start(&state).await;
        crate::leavers::spawn_scheduler(state.clone());
        crate::retention::spawn_scheduler(state.clone());
        let draining = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = state.health.drain_requested() => true,
        };
        if draining {
            drain(&state).await;
            shutdown.cancel();
        }
        tracing::info!("shutting down: closing sessions");
        state
            .hub
            .close_all(close::GOING_AWAY, "server shutting down");
        // Sessions were told to close; give them (and HTTP requests in progress) the grace
        // period to finish.
        let hub = state.hub.clone();
        let drained = async move {
            serve.await.context("server task")?;
            while !hub.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("sessions still open after the grace period"),
        }
        state.store.close().await.context("flushing the store")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The drain of [`Node::serve`]: readiness is already false; keep serving for the delay, then
/// close the sessions spread over the window (a second signal, i.e. the shutdown token, cuts
/// both short).
async fn drain(state: &AppState) {
    let cfg = &state.config.server;
    let delay = Duration::from_secs(cfg.drain_delay_secs);
    let window = Duration::from_secs(cfg.drain_window_secs);
    tracing::info!(
        delay_secs = cfg.drain_delay_secs,
        window_secs = cfg.drain_window_secs,
        sessions = state.hub.len(),
        "draining: readiness is false; still serving"
    );
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = state.shutdown.cancelled() => {}
    }
    state.health.set_closing();
    let sessions = state.hub.all_sessions();
    tracing::info!(sessions = sessions.len(), "draining: closing sessions");
    crate::health::close_spread(sessions, window, &state.shutdown).await;
}
