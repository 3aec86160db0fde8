//! Probes and graceful drain.
//!
//! - `GET /livez`: the process is alive and its runtime answers (always 200 while serving).
//! - `GET /readyz`: the node should receive new clients: it has finished starting, is not
//!   draining, and its store and router answer a cheap probe within a second. 200 or 503,
//!   JSON body `{"ready", "starting", "draining", "store", "router", "sessions"}`.
//! - `/healthz` (in [`crate::api`]) is kept for compatibility.
//!
//! Drain (SIGTERM): [`Health::begin_drain`] makes `/readyz` answer 503 at once; the node
//! keeps serving for `server.drain_delay_secs` so load balancers take it out of rotation;
//! then [`close_spread`] closes the sessions with 1001 (going away: reconnect with jitter,
//! then `sync`), spread evenly over `server.drain_window_secs` so the clients do not all
//! reconnect in the same instant; new WebSocket upgrades get 503 from then on. Then
//! [`crate::server::Node::serve`] stops accepting, waits up to `server.shutdown_grace_ms`
//! for the sessions to end, flushes the store and exits.

use crate::hub::SessionHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The node's lifecycle as the probes see it.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    closing: AtomicBool,
    drain: CancellationToken,
    /// The last backend probe (when, store ok, router ok): `/readyz` is public, so a flood
    /// of probes costs at most one store and one router round trip per [`PROBE_CACHE`].
    last_probe: std::sync::Mutex<Option<(std::time::Instant, bool, bool)>>,
}

impl Health {
    /// A node that is still starting (not ready).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks start-up as finished (the listener serves).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Starts the drain: `/readyz` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when the drain begins.
    pub async fn drain_requested(&self) {
        self.drain.cancelled().await
    }

    /// Marks the phase where sessions are being closed: new sessions are refused.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether sessions are being closed (new WebSocket upgrades get 503).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether start-up has finished.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// How long a probe result is reused.
pub const PROBE_CACHE: Duration = Duration::from_secs(1);

impl Health {
    /// The last backend probe (store ok, router ok), if it is younger than [`PROBE_CACHE`].
    pub fn cached_probe(&self) -> Option<(bool, bool)> {
        let last = *self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(at, _, _)| at.elapsed() < PROBE_CACHE)
            .map(|(_, s, r)| (s, r))
    }

    /// Records a backend probe for [`Health::cached_probe`].
    pub fn remember_probe(&self, store: bool, router: bool) {
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), store, router));
    }
}

/// Closes `sessions` with 1001, evenly spread over `window` (all at once when it is zero),
/// stopping early when `stop` is cancelled (then closing the rest at once).
pub async fn close_spread(
    sessions: Vec<Arc<SessionHandle>>,
    window: Duration,
    stop: &CancellationToken,
) {
    let n = sessions.len();
    if n == 0 {
        return;
    }
    let start = tokio::time::Instant::now();
    for (i, s) in sessions.iter().enumerate() {
        // Session i closes at window * i / n: the first at once, the last just before the
        // window ends.
        let at = start + window.mul_f64(i as f64 / n as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => {}
        }
        s.close(protocol::close::GOING_AWAY, "server draining: reconnect");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lifecycle_flags() {
        let h = Health::new();
        assert!(!h.is_started() && !h.is_draining() && !h.is_closing());
        h.set_started();
        h.begin_drain();
        h.set_closing();
        assert!(h.is_started() && h.is_draining() && h.is_closing());
    }
}
