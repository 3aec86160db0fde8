//! Free space on the volumes a node writes to, so that no client can fill the disk the message
//! store needs.
//!
//! Two guards share one measurement ([`free_bytes`]):
//!
//! - **the data volume** (`store.min_free_bytes`, embedded mode): a [`DiskGuard`] measures the
//!   volume of `server.data_dir` once a second in the background; while it is below the
//!   threshold, every write a client asks for (a message, a mutating HTTP request) is refused
//!   with `unavailable` (503, `retry: true`) and counted in
//!   `chatd_budget_refusals_total{budget="disk"}`, while reads, sign-in and delivery of what is
//!   stored go on. The store itself keeps the margin for its journal, compaction and the
//!   writes already queued. A refusal costs one atomic load, not a system call.
//! - **the files volume** (`files.min_free_bytes`): measured per upload in
//!   [`crate::files::check_free_space`], since an upload's size is known up front.
//!
//! In cluster mode the store is the CQL database, whose disks are its own to manage, so the
//! data guard is off.

use crate::error::ApiError;
use protocol::ErrorCode;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the data volume is measured.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free bytes (for unprivileged writers) on the volume of `dir`, measured at its nearest
/// existing ancestor (a directory not created yet is on its parent's volume). Blocking: call
/// it from `spawn_blocking`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match rustix::fs::statvfs(d) {
            Ok(st) => return Ok(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(e) => last = e.into(),
        }
    }
    rustix::fs::statvfs(".")
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
        .map_err(|_| last)
}

/// The data volume's guard: whether writes are refused because it is nearly full.
#[derive(Debug, Default)]
pub struct DiskGuard {
    /// Below `store.min_free_bytes` at the last measurement.
    low: AtomicBool,
    /// Free bytes at the last measurement (`u64::MAX` before the first, or when off).
    free: AtomicU64,
    /// The threshold; 0 = off.
    min_free: u64,
}

impl DiskGuard {
    /// A guard of `min_free` bytes (0: off); call [`DiskGuard::spawn`] to start measuring.
    pub fn new(min_free: u64) -> Arc<Self> {
        Arc::new(Self {
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            min_free,
        })
    }

    /// Measures `dir`'s volume now and then every [`CHECK_EVERY`] until `shutdown`. A failed
    /// measurement is logged and leaves the last verdict in place.
    pub async fn spawn(self: &Arc<Self>, dir: PathBuf, shutdown: CancellationToken) {
        if self.min_free == 0 {
            return;
        }
        self.measure(&dir).await;
        let guard = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => guard.measure(&dir).await,
                }
            }
        });
    }

    async fn measure(&self, dir: &Path) {
        let owned = dir.to_path_buf();
        match tokio::task::spawn_blocking(move || free_bytes(&owned)).await {
            Ok(Ok(free)) => {
                self.free.store(free, Ordering::Relaxed);
                let low = free < self.min_free;
                if self.low.swap(low, Ordering::Relaxed) != low {
                    if low {
                        tracing::error!(
                            free,
                            min_free = self.min_free,
                            dir = %dir.display(),
                            "the data volume is nearly full: writes are refused until space is freed"
                        );
                    } else {
                        tracing::info!(free, "the data volume has room again: writes resume");
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot measure free space")
            }
            Err(e) => tracing::warn!(error = %e, "free-space measurement failed"),
        }
    }

    /// `unavailable` (503, retry) while the data volume is below `store.min_free_bytes`.
    pub fn check(&self) -> Result<(), ApiError> {
        if !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        crate::metrics::budget_refused("disk");
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server's disk is nearly full (store.min_free_bytes); writes resume when space \
             is freed, retry later",
        ))
    }

    /// Free bytes on the data volume at the last measurement (`u64::MAX` when not measured).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_threshold_above_the_free_space_refuses_and_zero_is_off() {
        let dir = std::env::temp_dir().join("chatd-disk-guard-test/not/created/yet");
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0);
        let full = DiskGuard::new(u64::MAX);
        full.spawn(dir.clone(), CancellationToken::new()).await;
        assert_eq!(full.check().unwrap_err().code, ErrorCode::Unavailable);
        assert!(full.free() < u64::MAX);
        let roomy = DiskGuard::new(1);
        roomy.spawn(dir.clone(), CancellationToken::new()).await;
        roomy.check().unwrap();
        let off = DiskGuard::new(0);
        off.spawn(dir, CancellationToken::new()).await;
        off.check().unwrap();
        assert_eq!(off.free(), u64::MAX);
    }
}
