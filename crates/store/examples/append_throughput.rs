//! Sustained durable appends into the embedded store, reporting throughput, per-append
//! latency percentiles, and the store writer thread's own CPU time (so the capacity of the
//! single writer core can be read even when other processes share the machine).
//!
//! `cargo run --release -p store --example append_throughput -- [writers] [per_writer] [convs]`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use protocol::{ConvId, GroupId};
use std::time::{Duration, Instant};
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::Store;

/// CPU seconds used so far by this process's thread called `name` (Linux only).
fn thread_cpu(name: &str) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            return Some((utime + stime) / tick);
        }
    }
    None
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let writers = args.first().copied().unwrap_or(1024);
    let per_writer = args.get(1).copied().unwrap_or(200);
    let convs = args.get(2).copied().unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    rt.block_on(async move {
        let cpu0 = thread_cpu("store-writer").unwrap_or(0.0);
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let conv = ConvId::group(&GroupId::new(format!("g{}", (w * 7 + i) % convs)));
                    let m = store::conformance::new_msg(&conv, &format!("u{w}"), &format!("c{i}"));
                    let t = Instant::now();
                    s.append(m).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = thread_cpu("store-writer").unwrap_or(0.0) - cpu0;
        lat.sort_unstable();
        let n = lat.len();
        let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e3;
        println!("writers={writers} appends={n} conversations={convs}");
        println!(
            "throughput      {:>10.0} durable appends/s (wall {wall:.2} s)",
            n as f64 / wall
        );
        println!(
            "writer capacity {:>10.0} appends per writer-CPU-second ({cpu:.2} s CPU)",
            n as f64 / cpu.max(1e-9)
        );
        println!(
            "append latency  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
        store.close().await.unwrap();
    });
}
