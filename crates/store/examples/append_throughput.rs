//! Sustained durable appends into the embedded store, reporting throughput, per-append
//! latency percentiles, and CPU time: the store writer threads' own and the whole process's
//! (load generator and fjall's background threads included), so the cost per append can be
//! read even when other processes share the machine.
//!
//! `cargo run --release -p store --example append_throughput -- [writers] [per_writer] [convs] [writer threads] [id length]`
//!
//! With an id length (e.g. 36, a UUID's), the appends go to direct conversations between
//! users whose ids are that long, with client ids as long: the key lengths of a deployment
//! whose ids are UUIDs. Without one, group conversations `g<n>` and ids `u<n>`, `c<n>`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use protocol::{ConvId, GroupId, UserId};
use std::time::{Duration, Instant};
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::Store;

/// User + system CPU seconds in a `/proc/.../stat` file (Linux only).
fn stat_cpu(path: &std::path::Path) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / tick)
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .filter_map(|e| stat_cpu(&e.path().join("stat")))
        .sum()
}

/// CPU seconds used so far by the whole process.
fn process_cpu() -> f64 {
    stat_cpu(std::path::Path::new("/proc/self/stat")).unwrap_or(0.0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let writers = args.first().copied().unwrap_or(1024);
    let per_writer = args.get(1).copied().unwrap_or(200);
    let convs = args.get(2).copied().unwrap_or(1000);
    let defaults = EmbeddedOptions::default();
    let opts = EmbeddedOptions {
        writers: args.get(3).copied().unwrap_or(defaults.writers),
        ..defaults
    };
    let writer_threads = opts.writers;
    let id_len = args.get(4).copied().unwrap_or(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), opts).unwrap();
    rt.block_on(async move {
        let cpu0 = threads_cpu("store-writer");
        let proc0 = process_cpu();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let peer = (w * 7 + i) % convs;
                    let m = if id_len == 0 {
                        let conv = ConvId::group(&GroupId::new(format!("g{peer}")));
                        store::conformance::new_msg(&conv, &format!("u{w}"), &format!("c{i}"))
                    } else {
                        let id = |n: usize| format!("{n:0>id_len$}");
                        let conv = ConvId::direct(
                            &UserId::new(id(peer)),
                            &UserId::new(id(convs + peer)),
                        );
                        store::conformance::new_msg(&conv, &id(w), &id(i))
                    };
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
        let cpu = threads_cpu("store-writer") - cpu0;
        let proc_cpu = process_cpu() - proc0;
        lat.sort_unstable();
        let n = lat.len();
        let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e3;
        println!(
            "writers={writers} appends={n} conversations={convs} writer_threads={writer_threads} id_len={id_len}"
        );
        println!(
            "throughput      {:>10.0} durable appends/s (wall {wall:.2} s)",
            n as f64 / wall
        );
        println!(
            "writer capacity {:>10.0} appends per writer-CPU-second ({cpu:.2} s CPU)",
            n as f64 / cpu.max(1e-9)
        );
        println!(
            "process cost    {:>10.0} appends per process-CPU-second ({proc_cpu:.2} s CPU, {:.1} us per append)",
            n as f64 / proc_cpu.max(1e-9),
            proc_cpu * 1e6 / n as f64
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
