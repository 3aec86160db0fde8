//! Logical dump and load of the embedded database, for `chatd backup` and `chatd restore`.
//!
//! [`EmbeddedStore::dump`] walks every keyspace under one fjall snapshot (a consistent,
//! cross-keyspace point in time, taken while the writer keeps appending) and hands each
//! key-value pair to a callback. [`load`] writes such pairs into a fresh database. The dump is
//! independent of fjall's file layout; what the keys and values mean is versioned by
//! [`SCHEMA_VERSION`].

use super::{backend, unjson, EmbeddedStore, MEMTABLE_BYTES, SEP};
use crate::{AdminExport, AdminRecord, Result};
use async_trait::async_trait;
use fjall::{Database, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Version of the embedded keyspaces' layout (names, key and value encodings). Bump it with
/// any change an older chatd would misread. 2: idempotency keys hashed (`idem_key`).
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest layout this version still reads as it is: version 1's written-out idempotency
/// keys are looked up as they are (see `idem_key`).
pub const MIN_SCHEMA_VERSION: u32 = 1;

/// Pairs written per atomic batch while loading.
const LOAD_BATCH: usize = 10_000;

impl EmbeddedStore {
    /// Calls `f(keyspace, key, value)` for every pair of every keyspace, in keyspace name and
    /// key order, as of one snapshot; returns the number of pairs per keyspace. Blocking
    /// (reads the disk): run it on a blocking thread. Appends go on meanwhile.
    pub fn dump(
        &self,
        mut f: impl FnMut(&str, &[u8], &[u8]) -> std::io::Result<()>,
    ) -> Result<BTreeMap<String, u64>> {
        let db = &self.ks.db;
        let snapshot = db.snapshot();
        let mut names: Vec<String> = db
            .list_keyspace_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        let mut counts = BTreeMap::new();
        for name in names {
            let keyspace = db
                .keyspace(&name, || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                })
                .map_err(backend)?;
            let mut n = 0u64;
            for guard in snapshot.iter(&keyspace) {
                let (k, v) = guard.into_inner().map_err(backend)?;
                f(&name, &k, &v).map_err(backend)?;
                n += 1;
            }
            counts.insert(name, n);
        }
        Ok(counts)
    }
}

#[async_trait]
impl AdminExport for EmbeddedStore {
    /// Reads the `meta`, `audit` and `held` keyspaces under one snapshot, on a blocking
    /// thread.
    async fn export_admin(&self, out: tokio::sync::mpsc::Sender<AdminRecord>) -> Result<()> {
        let ks = self.ks.clone();
        tokio::task::spawn_blocking(move || {
            let snapshot = ks.db.snapshot();
            // `Err(())`: the receiver is gone, stop quietly.
            let send = |r: AdminRecord| out.blocking_send(r).map_err(|_| ());
            for guard in snapshot.iter(&ks.meta) {
                let (k, v) = guard.into_inner().map_err(backend)?;
                // `ns \0 key`: namespaces never contain NUL.
                let Some(at) = k.iter().position(|b| *b == SEP) else {
                    continue;
                };
                let record = AdminRecord::Meta {
                    ns: String::from_utf8_lossy(&k[..at]).into_owned(),
                    key: String::from_utf8_lossy(&k[at + 1..]).into_owned(),
                    value: v.to_vec(),
                };
                if send(record).is_err() {
                    return Ok(());
                }
            }
            for guard in snapshot.iter(&ks.audit) {
                let (_, v) = guard.into_inner().map_err(backend)?;
                if send(AdminRecord::Audit(unjson(&v)?)).is_err() {
                    return Ok(());
                }
            }
            for guard in snapshot.iter(&ks.held) {
                let (_, v) = guard.into_inner().map_err(backend)?;
                if send(AdminRecord::Held(unjson(&v)?)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| crate::StoreError::backend_with("export task", e))?
    }
}

/// Writes `pairs` (keyspace, key, value) into the database under `dir/chat` (created; it
/// should not exist) and syncs it; returns the number of pairs per keyspace. Blocking.
pub fn load(
    dir: &Path,
    pairs: impl Iterator<Item = std::io::Result<(String, Vec<u8>, Vec<u8>)>>,
) -> Result<BTreeMap<String, u64>> {
    std::fs::create_dir_all(dir).map_err(backend)?;
    let db = Database::builder(dir.join("chat"))
        .open()
        .map_err(backend)?;
    let mut handles = HashMap::new();
    let mut counts = BTreeMap::new();
    let mut batch = db.batch();
    let mut in_batch = 0usize;
    for pair in pairs {
        let (name, k, v) = pair.map_err(backend)?;
        if !handles.contains_key(&name) {
            let ks = db
                .keyspace(&name, || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                })
                .map_err(backend)?;
            handles.insert(name.clone(), ks);
        }
        if let Some(ks) = handles.get(&name) {
            batch.insert(ks, k, v);
        }
        *counts.entry(name).or_insert(0u64) += 1;
        in_batch += 1;
        if in_batch >= LOAD_BATCH {
            std::mem::replace(&mut batch, db.batch())
                .commit()
                .map_err(backend)?;
            in_batch = 0;
        }
    }
    batch.commit().map_err(backend)?;
    db.persist(PersistMode::SyncAll).map_err(backend)?;
    Ok(counts)
}
