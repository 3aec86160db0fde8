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

const WRITERS: usize = 256;
const PER_WRITER: usize = 40;

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let mut group = c.benchmark_group("embedded_store");
    group.throughput(Throughput::Elements((WRITERS * PER_WRITER) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let mut round = 0u64;
    group.bench_function("durable_append_256_writers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let r = round;
                let s = store.clone();
                total += rt.block_on(async move {
                    let start = Instant::now();
                    let mut tasks = Vec::with_capacity(WRITERS);
                    for w in 0..WRITERS {
                        let s = s.clone();
                        tasks.push(tokio::spawn(async move {
                            let conv = ConvId::group(&GroupId::new(format!("g{}", w % 64)));
                            for i in 0..PER_WRITER {
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
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
