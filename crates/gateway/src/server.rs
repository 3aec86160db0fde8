//! Building and running a node: open the store, start the router, bind, serve until the
//! shutdown signal, then close sessions and flush the store.

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::membership::Membership;
use crate::moderation::Moderation;
use crate::state::{AppState, Inner};
use anyhow::Context;
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
        let crate::backends::Storage {
            store,
            review,
            meta,
        } = crate::backends::open_store(&config).await?;
        let router = crate::backends::open_router(&config.router).await?;
        let membership = Membership::new(store.clone(), meta.clone());
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
