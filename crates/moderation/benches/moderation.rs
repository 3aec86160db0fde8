//! Criterion benchmarks of the full pipeline (normalize, match, detect, decide) over the COLD
//! comments, with the whole lexicon padded to 100,000 patterns, and of rule loading.
//!
//! `cargo bench -p moderation --bench moderation` (needs `../shared/data/moderation` next to
//! the workspace, or `MODERATION_DATA`; skips with a message otherwise).

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "data.rs"]
mod data;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moderation::{CheckContext, Moderator};

fn benches(c: &mut Criterion) {
    let Some(data) = data::data_dir() else {
        println!("moderation data not found (../shared/data/moderation or MODERATION_DATA): skipping benchmarks");
        return;
    };
    let cold: Vec<String> = data::cold_comments(&data)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let bytes: usize = cold.iter().map(String::len).sum();
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            println!("no temp dir ({e}): skipping benchmarks");
            return;
        }
    };
    let dir = tmp.path().join("lexicon100k");
    let lines = match data::write_rule_dir(&data, &dir, 100_000, Some(data::RAW_POLICY), None) {
        Ok(n) => n,
        Err(e) => {
            println!("cannot write rule dir ({e}): skipping benchmarks");
            return;
        }
    };
    let t = std::time::Instant::now();
    let big = match Moderator::load_dir(&dir) {
        Ok(m) => m,
        Err(e) => {
            println!("cannot load the lexicon ({e}): skipping benchmarks");
            return;
        }
    };
    println!(
        "lexicon+padding: {lines} lines, {} distinct patterns, trie and tables {:.1} MiB, first load {:.0} ms; COLD: {} messages, {:.1} bytes avg",
        big.stats().patterns,
        big.stats().heap_bytes as f64 / (1024.0 * 1024.0),
        t.elapsed().as_secs_f64() * 1e3,
        cold.len(),
        bytes as f64 / cold.len().max(1) as f64,
    );
    let shipped =
        Moderator::load_dir(&data::shipped_dir()).unwrap_or_else(|_| Moderator::builtin());

    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(cold.len() as u64));
    let run = |m: &Moderator, ctx: &CheckContext<'_>| {
        let mut n = 0usize;
        for t in &cold {
            n += black_box(m.check(black_box(t), ctx)).hits.len();
        }
        n
    };
    let inside = CheckContext::default();
    let external = CheckContext {
        group: None,
        has_external_member: true,
    };
    g.bench_function("lexicon_100k_cold", |b| b.iter(|| run(&big, &inside)));
    g.bench_function("lexicon_100k_cold_external", |b| {
        b.iter(|| run(&big, &external))
    });
    g.bench_function("shipped_cold", |b| b.iter(|| run(&shipped, &inside)));
    g.finish();

    let mut g = c.benchmark_group("load");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("lexicon_100k_load_dir", |b| {
        b.iter(|| Moderator::load_dir(black_box(&dir)).map(|m| m.stats().patterns))
    });
    g.finish();
}

criterion_group!(moderation_benches, benches);
criterion_main!(moderation_benches);
