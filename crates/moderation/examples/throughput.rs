//! Quick throughput check without criterion (`cargo run --release -p moderation --example
//! throughput [raw|default|shipped] [passes]`): messages per second over the COLD comments,
//! by wall clock and by this process's CPU time (which is what counts on a busy machine).
//! It also prints a digest of every verdict (action, category, rule, masked text, hits,
//! escalation) over one pass, so an optimisation can be checked to change no verdict.

#[path = "../benches/data.rs"]
mod data;

use std::hint::black_box;
use std::time::Instant;

use moderation::{CheckContext, Moderator};

/// User+system CPU seconds of this process (Linux `/proc/self/stat`, 100 ticks a second).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let Some(data) = data::data_dir() else {
        println!("moderation data not found: skipping");
        return;
    };
    let mode = std::env::args().nth(1).unwrap_or_else(|| "raw".to_string());
    let passes: usize = std::env::args()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(10);
    let cold: Vec<String> = data::cold_comments(&data)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let tmp = std::env::temp_dir().join(format!("moderation-tp-{}", std::process::id()));
    let policy = match mode.as_str() {
        "raw" => Some(data::RAW_POLICY),
        _ => Some("[categories]\nother = \"block\"\npadding = \"block\"\n"),
    };
    let dir = if mode == "shipped" {
        data::shipped_dir()
    } else {
        if let Err(e) = data::write_rule_dir(&data, &tmp, 100_000, policy, None) {
            println!("cannot write rules: {e}");
            return;
        }
        tmp.clone()
    };
    let (c0, t0) = (cpu_secs(), Instant::now());
    let m = match Moderator::load_dir(&dir) {
        Ok(m) => m,
        Err(e) => {
            println!("load failed: {e}");
            return;
        }
    };
    println!(
        "{mode}: {} patterns, {:.1} MiB, load {:.0} ms wall / {:.0} ms cpu",
        m.stats().patterns,
        m.stats().heap_bytes as f64 / 1048576.0,
        t0.elapsed().as_secs_f64() * 1e3,
        (cpu_secs() - c0) * 1e3
    );
    let ctx = CheckContext::default();
    let (c0, t0) = (cpu_secs(), Instant::now());
    let mut hits = 0usize;
    for _ in 0..passes {
        for t in &cold {
            hits += black_box(m.check(black_box(t), &ctx)).hits.len();
        }
    }
    let n = (passes * cold.len()) as f64;
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
    println!(
        "{n} checks: {:.0} msgs/s wall, {:.0} msgs/s cpu ({:.0} ns/msg cpu), {hits} hits",
        n / wall,
        n / cpu.max(1e-9),
        cpu * 1e9 / n
    );
    // One untimed pass: FNV-1a over the debug form of every verdict.
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for t in &cold {
        for b in format!("{:?}", m.check(t, &ctx)).bytes() {
            digest = (digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("verdict digest {digest:016x}");
    // The same over the hits that are not the classifier's (retraining it changes only those).
    let (mut rules_digest, mut classifier_hits): (u64, usize) = (0xcbf2_9ce4_8422_2325, 0);
    for t in &cold {
        for h in m.check(t, &ctx).hits {
            if &*h.rule == "classifier:offense" {
                classifier_hits += 1;
                continue;
            }
            for b in format!("{h:?}").bytes() {
                rules_digest = (rules_digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    println!("digest of the other hits {rules_digest:016x}, classifier hits {classifier_hits}");
    let _ = std::fs::remove_dir_all(&tmp);
}
