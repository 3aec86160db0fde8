//! Frees the LSM trees' retired memtables on a thread of their own.
//!
//! lsm-tree drops a flushed memtable when it garbage-collects old versions of a tree, and it
//! does that holding the tree's version-history lock for writing (after a memtable rotation
//! and after registering a flushed table). Dropping a 32 MiB memtable frees every node of its
//! skiplist, 120,000-280,000 `free` calls, which took 50-60 ms on this project's 2-core
//! machine; every append waits for that lock (the memtable insert and fjall's write-stall
//! check take it for reading), so each rotation showed as a 50-100 ms send→ack stall
//! (docs/BENCHMARKS.md, "DMs over 30 seconds").
//!
//! The reaper keeps one more reference to each tree's active memtable. When lsm-tree lets go of
//! it, its drop under the lock is only a reference count decrement, and the reaper, seeing
//! itself the last holder, frees it here with no lock held. It looks every [`TICK`]: a memtable
//! is active for seconds at any rate that makes its size matter, so none of the large ones is
//! missed; a small one it misses is freed under the lock as before, which is cheap.
//!
//! It uses fjall's hidden `AbstractTree` re-export (`Keyspace::tree.active_memtable()`); a
//! fjall upgrade that removes it fails to compile rather than silently changing behaviour.

use super::Keyspaces;
use fjall::AbstractTree;
use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the reaper looks at the trees.
const TICK: Duration = Duration::from_millis(25);

/// A memtable the reaper holds a reference to (its type is lsm-tree's and need not be named:
/// only its reference count matters here).
type Held = Arc<dyn Any + Send + Sync>;

/// Per tree: the active memtable as last seen (its id and a reference).
struct Watched {
    id: u64,
    memtable: Held,
}

/// Runs until the store is closed or dropped: starts the thread and returns its handle.
pub(super) fn spawn(ks: Weak<Keyspaces>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-reaper".into())
        .spawn(move || run(&ks))
}

fn run(ks: &Weak<Keyspaces>) {
    let mut watched: Vec<Option<Watched>> = Vec::new();
    let mut retired: Vec<Held> = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let Some(ks) = ks.upgrade() else { break };
        if ks.closing.load(Ordering::Relaxed) {
            break;
        }
        let trees = ks.all();
        watched.resize_with(trees.len(), || None);
        for (tree, seen) in trees.iter().zip(watched.iter_mut()) {
            let active = tree.tree.active_memtable();
            let id = active.id();
            if seen.as_ref().is_some_and(|w| w.id == id) {
                continue;
            }
            if let Some(old) = seen.take() {
                retired.push(old.memtable);
            }
            *seen = Some(Watched {
                id,
                memtable: active,
            });
        }
        drop(ks);
        // The last holder frees it, here and with no lock held.
        retired.retain(|m| Arc::strong_count(m) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedOptions, EmbeddedStore};
    use crate::Store;

    /// A rotated, flushed memtable is released by lsm-tree while the reaper still holds it,
    /// and the reaper then frees it: nothing is kept beyond one tick.
    #[tokio::test]
    async fn retired_memtables_are_freed_by_the_reaper() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let ks = store.ks.clone();
        ks.users.insert("u1", [1]).unwrap();
        let first = ks.users.tree.active_memtable();
        let weak = Arc::downgrade(&first);
        drop(first);
        std::thread::sleep(TICK * 4);
        // Held by the tree and by the reaper.
        assert!(weak.strong_count() >= 2, "reaper holds the active memtable");
        ks.users.rotate_memtable_and_wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "retired memtable still held: {}",
                weak.strong_count()
            );
            // Version GC runs on the next rotation's maintenance.
            ks.users.insert("u2", [1]).unwrap();
            ks.users.rotate_memtable_and_wait().unwrap();
            std::thread::sleep(TICK * 2);
        }
        store.close().await.unwrap();
    }
}
