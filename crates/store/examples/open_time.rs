//! How long the embedded store takes to open with many messages on disk: the open rebuilds
//! the idempotency filter by one scan of the idempotency keyspace (see
//! `crates/store/src/embedded/idem_filter.rs`), so its time grows with the message count.
//! Fills a fresh data directory with `messages` durable appends (1,000 conversations), closes
//! it, then opens it again `opens` times and reports each open's wall time. It also checks
//! that a retry of the first message after the reopen is still recognized.
//!
//! `cargo run --release -p store --example open_time -- [messages] [opens]`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use protocol::{ConvId, GroupId};
use std::time::Instant;
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::Store;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(1_000_000);
    let opens = args.get(1).copied().unwrap_or(3);
    let tasks = 1024;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conv = |i: usize| ConvId::group(&GroupId::new(format!("g{}", i % 1000)));
    rt.block_on(async {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let started = Instant::now();
        let mut handles = Vec::with_capacity(tasks);
        for t in 0..tasks {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                let mut i = t;
                while i < messages {
                    let m =
                        store::conformance::new_msg(&conv(i), &format!("u{t}"), &format!("c{i}"));
                    s.append(m).await.unwrap();
                    i += tasks;
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        println!(
            "filled {messages} messages in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        store.close().await.unwrap();
    });
    for _ in 0..opens {
        let started = Instant::now();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let took = started.elapsed();
        println!(
            "open with {messages} idempotency keys: {:.0} ms",
            took.as_secs_f64() * 1e3
        );
        rt.block_on(async {
            let again = store
                .append(store::conformance::new_msg(&conv(0), "u0", "c0"))
                .await
                .unwrap();
            assert!(again.duplicate, "a retry after the reopen is a duplicate");
            store.close().await.unwrap();
        });
    }
}
