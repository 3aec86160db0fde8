//! Sustained durable appends into the embedded store, with group commit.
//!
//! `cargo bench -p store --bench append`: each iteration appends a batch of messages from
//! many concurrent writers (as many sessions would) and waits for every ack, so the
//! throughput reported is of durable (fsynced) messages.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::{ConvId, GroupId};
use std::time::{Duration, Instant};
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::Store;

/// (concurrent writers, appends per writer per iteration)
const SHAPES: [(usize, usize); 2] = [(256, 40), (2048, 5)];

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let mut group = c.benchmark_group("embedded_store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let mut round = 0u64;
    for (writers, per_writer) in SHAPES {
        group.throughput(Throughput::Elements((writers * per_writer) as u64));
        group.bench_function(format!("durable_append_{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let r = round;
                    let s = store.clone();
                    total += rt.block_on(async move {
                        let start = Instant::now();
                        let mut tasks = Vec::with_capacity(writers);
                        for w in 0..writers {
                            let s = s.clone();
                            tasks.push(tokio::spawn(async move {
                                let conv = ConvId::group(&GroupId::new(format!("g{}", w % 64)));
                                for i in 0..per_writer {
                                    let m = store::conformance::new_msg(
                                        &conv,
                                        &format!("u{w}"),
                                        &format!("r{r}-{i}"),
                                    );
                                    s.append(m).await.unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                        start.elapsed()
                    });
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
