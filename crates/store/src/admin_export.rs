//! Reading every administrative record of a backend in bulk, for `chatd export` (moving or
//! restoring a cluster's metadata; messages are backed up with the database's own snapshots).
//!
//! The administrative side of a store is what [`crate::MetaStore`] and [`crate::ReviewStore`]
//! hold: the namespaced records (accounts, departments, credentials, group settings,
//! revocations, files, ...), the audit log and the review queue. Loading them back needs no
//! new operation: `MetaStore::apply`, `ReviewStore::audit` and `ReviewStore::hold` do it.

use crate::{AuditEntry, HeldMessage, Result};
use async_trait::async_trait;

/// One administrative record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRecord {
    /// A [`crate::MetaStore`] record.
    Meta {
        /// Namespace.
        ns: String,
        /// Key within the namespace.
        key: String,
        /// The value, as stored.
        value: Vec<u8>,
    },
    /// An audit log entry.
    Audit(AuditEntry),
    /// A message waiting in the review queue.
    Held(HeldMessage),
}

/// Bulk reading of the administrative records.
#[async_trait]
pub trait AdminExport: Send + Sync + 'static {
    /// Sends every administrative record to `out`: the `MetaStore` records first, then the
    /// audit entries, then the held messages (in no particular order within each kind).
    /// Reads page by page and waits for room in `out`, so memory stays bounded whatever the
    /// size; returns early, without an error, when `out` is closed (a caller that only wanted
    /// to know whether there is anything at all).
    async fn export_admin(&self, out: tokio::sync::mpsc::Sender<AdminRecord>) -> Result<()>;
}

/// Whether the backend holds no administrative record at all.
pub async fn is_empty(source: &dyn AdminExport) -> Result<bool> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (done, first) = tokio::join!(source.export_admin(tx), async move {
        let first = rx.recv().await;
        // Dropping the receiver stops the export after its first record.
        drop(rx);
        first
    });
    done?;
    Ok(first.is_none())
}
