//! The result of a run: a [`Report`] (written as JSON), a summary table for the terminal,
//! and the comparison with the bare broadcaster in `--ceiling` mode.

use crate::ledger::{Completeness, Ledger};
use crate::limits;
use crate::metrics::{LatencySummary, Recorder};
use crate::plan::Plan;
use crate::runner::{RunInput, ShardResult};
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One second of resource samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Sessions connected.
    pub connected: i64,
    /// CPU of the load generator(s), percent of one core.
    pub client_cpu_pct: f64,
    /// CPU of the server, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// The part of `server_cpu_pct` spent in the kernel (system time).
    #[serde(default)]
    pub server_sys_pct: Option<f64>,
    /// Server resident memory.
    pub server_rss_kib: Option<u64>,
    /// Whole machine busy, percent of all cores.
    pub machine_busy_pct: Option<f64>,
}

/// One second of the timeline, as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Sends in this second.
    pub sent: u64,
    /// Acks.
    pub acked: u64,
    /// Live deliveries.
    pub delivered: u64,
    /// Median end-to-end latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// Throughput over the traffic window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Seconds from the first send to the last delivery (at least the traffic duration).
    pub window_secs: f64,
    /// Sends per second.
    pub sent_per_sec: f64,
    /// Acks per second.
    pub acked_per_sec: f64,
    /// Live deliveries per second.
    pub delivered_per_sec: f64,
    /// Highest deliveries in one second.
    pub peak_delivered_per_sec: u64,
    /// Planned sends per second.
    pub planned_sent_per_sec: f64,
    /// Planned deliveries per second.
    pub planned_delivered_per_sec: f64,
}

/// Connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    /// Sessions in the plan.
    pub sessions: u64,
    /// Users in the plan.
    pub users: u64,
    /// Successful connects (including reconnects).
    pub connects: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Most sessions connected at once.
    pub peak_connected: i64,
    /// Setup time (TCP + upgrade + hello).
    pub setup: LatencySummary,
}

/// The server process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Its pid.
    pub pid: Option<u32>,
    /// RSS before the run, KiB.
    pub rss_base_kib: Option<u64>,
    /// Highest RSS sampled, KiB.
    pub rss_peak_kib: Option<u64>,
    /// (RSS at the most connected sample - base) / connected, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Mean CPU during the traffic, percent of one core.
    pub cpu_mean_pct: Option<f64>,
    /// The part of `cpu_mean_pct` spent in the kernel (system time): what the server's system
    /// calls (socket I/O, `fdatasync`) and context switches cost, apart from its own code.
    #[serde(default)]
    pub cpu_sys_mean_pct: Option<f64>,
    /// Highest CPU in one second.
    pub cpu_peak_pct: Option<f64>,
}

/// The load generator itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Processes.
    pub procs: usize,
    /// Worker threads per process.
    pub threads: usize,
    /// Loopback source addresses.
    pub sources: usize,
    /// Open-files limit per process.
    pub fd_limit: u64,
    /// Mean CPU during the run, percent of one core (all processes).
    pub cpu_mean_pct: f64,
    /// Highest CPU in one second.
    pub cpu_peak_pct: f64,
    /// Seconds in which the generator used at least 90 % of its threads (or of the machine).
    pub saturated_secs: u64,
    /// Seconds in which the whole machine was at least 95 % busy.
    pub machine_saturated_secs: u64,
    /// Whether the generator may have been the bottleneck.
    pub saturated: bool,
    /// Sends retried after a reconnect.
    pub resent: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Sends still without an ack when the run ended.
    #[serde(default)]
    pub unacked_at_end: u64,
}

/// Everything about one run against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `chatd` or `ceiling`.
    pub target: String,
    /// Node addresses.
    pub addrs: Vec<String>,
    /// The scenario as run.
    pub scenario: Scenario,
    /// User-id prefix of the run.
    pub tag: String,
    /// Connections.
    pub connections: Connections,
    /// Throughput.
    pub throughput: Throughput,
    /// Send to delivery on each recipient.
    pub e2e_latency: LatencySummary,
    /// Send to ack.
    pub ack_latency: LatencySummary,
    /// Completeness.
    pub completeness: Completeness,
    /// Error frames and failed connects by code.
    pub errors: BTreeMap<String, u64>,
    /// Closes by code.
    pub closes: BTreeMap<String, u64>,
    /// Server memory and CPU.
    pub server: ServerStats,
    /// Load-generator CPU.
    pub client: ClientStats,
    /// Per second.
    pub timeline: Vec<Second>,
    /// Resource samples, once a second.
    pub samples: Vec<Sample>,
    /// E2E latency histogram: (upper bound µs, count) buckets, for plots.
    pub e2e_histogram: Vec<(u64, u64)>,
    /// Whether the run passed (nothing lost).
    pub passed: bool,
    /// Why not.
    pub failures: Vec<String>,
    /// Remarks that are not failures.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What [`build`] needs.
pub struct Inputs<'a> {
    /// Target label.
    pub label: &'a str,
    /// Scenario.
    pub scenario: &'a Scenario,
    /// Plan.
    pub plan: &'a Plan,
    /// Run input.
    pub input: &'a RunInput,
    /// Per load generator.
    pub results: Vec<ShardResult>,
    /// Resource samples.
    pub samples: Vec<Sample>,
    /// Server pid.
    pub server_pid: Option<u32>,
    /// Server RSS before the run.
    pub server_rss_base_kib: Option<u64>,
    /// Processes.
    pub procs: usize,
    /// Threads per process.
    pub threads: usize,
    /// Source addresses.
    pub sources: usize,
    /// fd limit.
    pub fd_limit: u64,
    /// Whether the target keeps history (false for the bare broadcaster, which cannot
    /// replay what a reconnecting session missed).
    pub history: bool,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Merges the load generators' results into a report.
pub fn build(i: Inputs<'_>) -> Report {
    let mut rec = Recorder::new();
    let mut ledger = Ledger::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut resent, mut connects, mut failures, mut bytes_in, mut reconnects) = (0, 0, 0, 0, 0);
    let mut unacked: i64 = 0;
    for r in i.results {
        rec.merge(&Recorder::from(&r.recorder));
        ledger.merge(r.ledger);
        for (k, v) in r.error_codes {
            *errors.entry(k).or_default() += v;
        }
        for (k, v) in r.close_codes {
            *closes.entry(k).or_default() += v;
        }
        resent += r.resent;
        connects += r.connects;
        failures += r.connect_failures;
        bytes_in += r.bytes_in;
        reconnects += r.progress.reconnects;
        unacked += r.progress.outstanding.max(0);
    }
    let plan = i.plan;
    let completeness = ledger.check(
        plan.sessions
            .iter()
            .enumerate()
            .map(|(s, p)| (s as u32, p.convs.as_slice())),
        |c| plan.convs[c as usize].id.clone(),
    );
    let s = i.scenario;
    let traffic_start = (s.ramp_up_secs + 1.0).floor() as usize;
    let window = s.duration_secs;
    let timeline: Vec<Second> = rec
        .timeline
        .iter()
        .enumerate()
        .map(|(t, b)| {
            let l = LatencySummary::of(&b.latency);
            Second {
                t: t as u64,
                sent: b.sent,
                acked: b.acked,
                delivered: b.delivered,
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
                max_ms: l.max_ms,
            }
        })
        .collect();
    let sum = |f: fn(&Second) -> u64| timeline.iter().map(f).sum::<u64>() as f64;
    // A backlogged server keeps delivering after the sends stop: rates are over the span
    // from the first send to the last delivery, never shorter than the traffic window.
    let last_active = timeline
        .iter()
        .rposition(|x| x.delivered > 0 || x.acked > 0)
        .map_or(0, |i| i + 1);
    let span = (last_active.saturating_sub(traffic_start) as f64).max(window);
    let throughput = Throughput {
        window_secs: span,
        sent_per_sec: sum(|x| x.sent) / window,
        acked_per_sec: sum(|x| x.acked) / span,
        delivered_per_sec: sum(|x| x.delivered) / span,
        peak_delivered_per_sec: timeline
            .iter()
            .skip(traffic_start)
            .map(|x| x.delivered)
            .max()
            .unwrap_or(0),
        planned_sent_per_sec: plan.planned_rate() + 0.0,
        planned_delivered_per_sec: plan.planned_delivery_rate() + 0.0,
    };
    let samples = i.samples;
    let in_traffic =
        |x: &Sample| x.t >= traffic_start as f64 && x.t <= traffic_start as f64 + window;
    let peak = samples.iter().max_by_key(|x| x.connected);
    let server = ServerStats {
        pid: i.server_pid,
        rss_base_kib: i.server_rss_base_kib,
        rss_peak_kib: samples.iter().filter_map(|x| x.server_rss_kib).max(),
        rss_per_connection_kib: match (i.server_rss_base_kib, peak) {
            (Some(base), Some(p)) if p.connected > 0 => p
                .server_rss_kib
                .map(|r| (r as f64 - base as f64) / p.connected as f64),
            _ => None,
        },
        cpu_mean_pct: mean(
            samples
                .iter()
                .filter(|x| in_traffic(x))
                .filter_map(|x| x.server_cpu_pct),
        ),
        cpu_sys_mean_pct: mean(
            samples
                .iter()
                .filter(|x| in_traffic(x))
                .filter_map(|x| x.server_sys_pct),
        ),
        cpu_peak_pct: samples
            .iter()
            .filter_map(|x| x.server_cpu_pct)
            .reduce(f64::max),
    };
    let capacity = (i.threads * i.procs.max(1)).min(limits::cpus()) as f64 * 100.0;
    let saturated_secs = samples
        .iter()
        .filter(|x| x.client_cpu_pct >= 0.9 * capacity)
        .count() as u64;
    let machine_saturated_secs = samples
        .iter()
        .filter(|x| x.machine_busy_pct.is_some_and(|m| m >= 95.0))
        .count() as u64;
    let client = ClientStats {
        procs: i.procs,
        threads: i.threads,
        sources: i.sources,
        fd_limit: i.fd_limit,
        cpu_mean_pct: mean(samples.iter().map(|x| x.client_cpu_pct)).unwrap_or(0.0),
        cpu_peak_pct: samples.iter().map(|x| x.client_cpu_pct).fold(0.0, f64::max),
        saturated_secs,
        machine_saturated_secs,
        saturated: saturated_secs > 0,
        resent,
        bytes_in,
        unacked_at_end: unacked as u64,
    };
    let mut fails = Vec::new();
    let mut notes = Vec::new();
    let churn = plan.sessions.iter().any(|p| p.churn.is_some());
    if completeness.lost > 0 && !i.history && churn {
        notes.push(format!(
            "{} deliveries missed while sessions were offline: this target keeps no history to sync from (not a failure)",
            completeness.lost
        ));
    } else if completeness.lost > 0 {
        fails.push(format!(
            "{} of {} expected deliveries lost",
            completeness.lost, completeness.expected
        ));
    }
    if unacked > 0 {
        notes.push(format!(
            "{unacked} sends were never acknowledged: the drain ended at its limit while the server was still behind, so missing deliveries may be late rather than lost (raise --drain to tell)"
        ));
    }
    let connections = Connections {
        sessions: plan.sessions.len() as u64,
        users: plan.users.len() as u64,
        connects,
        failures,
        reconnects,
        peak_connected: peak.map(|p| p.connected).unwrap_or(0),
        setup: LatencySummary::of(&rec.connect),
    };
    if completeness.never_connected > 0 {
        fails.push(format!(
            "{} sessions never connected",
            completeness.never_connected
        ));
    }
    let e2e_histogram = rec
        .e2e
        .iter_log(1, 2.0)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect();
    Report {
        target: i.label.to_owned(),
        addrs: i.input.targets.iter().map(|a| a.to_string()).collect(),
        scenario: s.clone(),
        tag: i.input.tag.clone(),
        connections,
        throughput,
        e2e_latency: LatencySummary::of(&rec.e2e),
        ack_latency: LatencySummary::of(&rec.ack),
        passed: fails.is_empty(),
        failures: fails,
        notes,
        completeness,
        errors,
        closes,
        server,
        client,
        timeline,
        samples,
        e2e_histogram,
    }
}

fn lat_row(out: &mut String, name: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {name:<18} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
        l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
}

/// The summary table.
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let s = &r.scenario;
    let _ = writeln!(
        o,
        "== {} against {} ({:?}, {:?}, {} node(s)): seed {}, {} users, {} sessions, {:.0} s",
        s.name,
        r.target,
        s.kind,
        s.codec,
        r.addrs.len(),
        s.seed,
        r.connections.users,
        r.connections.sessions,
        s.duration_secs
    );
    let t = &r.throughput;
    let _ = writeln!(
        o,
        "  throughput         sent {:.0}/s (planned {:.0})  acked {:.0}/s  delivered {:.0}/s (planned {:.0}, peak {}/s)",
        t.sent_per_sec, t.planned_sent_per_sec, t.acked_per_sec, t.delivered_per_sec, t.planned_delivered_per_sec, t.peak_delivered_per_sec
    );
    let _ = writeln!(
        o,
        "  latency (ms)       {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max"
    );
    lat_row(&mut o, "send->delivery", &r.e2e_latency);
    lat_row(&mut o, "send->ack", &r.ack_latency);
    lat_row(&mut o, "connect", &r.connections.setup);
    let c = &r.connections;
    let _ = writeln!(
        o,
        "  connections        peak {}  connects {}  failed {}  reconnects {}",
        c.peak_connected, c.connects, c.failures, c.reconnects
    );
    let k = &r.completeness;
    let _ = writeln!(
        o,
        "  completeness       expected {}  live {}  via sync {}  LOST {}  duplicates {}  out-of-order {}  ack gaps {}",
        k.expected, k.delivered_live, k.recovered_by_sync, k.lost, k.duplicates, k.out_of_order, k.ack_gaps
    );
    for e in &k.lost_examples {
        let _ = writeln!(o, "    lost: {e}");
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o, "  errors             {:?}", r.errors);
    }
    if !r.closes.is_empty() {
        let _ = writeln!(o, "  closes             {:?}", r.closes);
    }
    let sv = &r.server;
    let fmt_opt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        o,
        "  server             rss base {} KiB, peak {} KiB, per connection {} KiB; cpu mean {}% (system {}%), peak {}%",
        sv.rss_base_kib.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
        sv.rss_peak_kib.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
        fmt_opt(sv.rss_per_connection_kib),
        fmt_opt(sv.cpu_mean_pct),
        fmt_opt(sv.cpu_sys_mean_pct),
        fmt_opt(sv.cpu_peak_pct),
    );
    let cl = &r.client;
    let _ = writeln!(
        o,
        "  load generator     {} proc(s) x {} thread(s), cpu mean {:.0}%, peak {:.0}%{}{}",
        cl.procs,
        cl.threads,
        cl.cpu_mean_pct,
        cl.cpu_peak_pct,
        if cl.saturated {
            format!(
                " -- SATURATED for {} s: the client may be the bottleneck",
                cl.saturated_secs
            )
        } else {
            String::new()
        },
        if cl.machine_saturated_secs > 0 {
            format!(" (machine >= 95% busy for {} s)", cl.machine_saturated_secs)
        } else {
            String::new()
        }
    );
    for n in &r.notes {
        let _ = writeln!(o, "  note               {n}");
    }
    let _ = writeln!(
        o,
        "  result             {}",
        if r.passed {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", r.failures.join("; "))
        }
    );
    o
}

/// chatd against the bare broadcaster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// chatd delivered/s divided by the broadcaster's.
    pub throughput_ratio: f64,
    /// chatd p99 divided by the broadcaster's.
    pub p99_ratio: f64,
    /// Whether chatd reaches >= 0.8x the throughput.
    pub throughput_target_met: bool,
    /// Whether chatd's p99 is <= 1.5x.
    pub p99_target_met: bool,
    /// chatd's server CPU per delivered message, µs (mean CPU over the traffic divided by
    /// delivered/s); `None` when the CPU was not sampled.
    #[serde(default)]
    pub cpu_per_delivery_us: Option<f64>,
    /// The same for the bare broadcaster.
    #[serde(default)]
    pub ceiling_cpu_per_delivery_us: Option<f64>,
    /// chatd's CPU per delivery divided by the broadcaster's (informational: what a
    /// delivery costs with persistence, moderation and authorization against without).
    #[serde(default)]
    pub cpu_ratio: Option<f64>,
}

/// Server CPU per delivered message, µs.
fn cpu_per_delivery_us(r: &Report) -> Option<f64> {
    let delivered = r.throughput.delivered_per_sec;
    let cpu = r.server.cpu_mean_pct?;
    (delivered > 0.0).then(|| cpu / 100.0 / delivered * 1e6)
}

/// Compares chatd with the ceiling.
pub fn compare(chatd: &Report, ceiling: &Report) -> Comparison {
    let tr = chatd.throughput.delivered_per_sec / ceiling.throughput.delivered_per_sec.max(1e-9);
    let pr = chatd.e2e_latency.p99_ms / ceiling.e2e_latency.p99_ms.max(1e-9);
    let (c, b) = (cpu_per_delivery_us(chatd), cpu_per_delivery_us(ceiling));
    Comparison {
        throughput_ratio: tr,
        p99_ratio: pr,
        throughput_target_met: tr >= 0.8,
        p99_target_met: pr <= 1.5,
        cpu_per_delivery_us: c,
        ceiling_cpu_per_delivery_us: b,
        cpu_ratio: c.zip(b).filter(|(_, b)| *b > 0.0).map(|(c, b)| c / b),
    }
}

/// The comparison as text.
pub fn comparison_table(c: &Comparison, chatd: &Report, ceiling: &Report) -> String {
    let mut o = format!(
        "== chatd vs bare broadcaster\n  delivered/s        chatd {:.0}  ceiling {:.0}  ratio {:.2} (target >= 0.80: {})\n  p99 send->delivery chatd {:.2} ms  ceiling {:.2} ms  ratio {:.2} (target <= 1.50: {})\n",
        chatd.throughput.delivered_per_sec,
        ceiling.throughput.delivered_per_sec,
        c.throughput_ratio,
        if c.throughput_target_met { "met" } else { "MISSED" },
        chatd.e2e_latency.p99_ms,
        ceiling.e2e_latency.p99_ms,
        c.p99_ratio,
        if c.p99_target_met { "met" } else { "MISSED" },
    );
    if let (Some(a), Some(b), Some(r)) = (
        c.cpu_per_delivery_us,
        c.ceiling_cpu_per_delivery_us,
        c.cpu_ratio,
    ) {
        let _ = writeln!(
            o,
            "  server CPU/delivery chatd {a:.1} us  ceiling {b:.1} us  ratio {r:.2}"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(delivered_per_sec: f64, cpu_pct: Option<f64>, p99_ms: f64) -> Report {
        let mut r = Report::default();
        r.throughput.delivered_per_sec = delivered_per_sec;
        r.server.cpu_mean_pct = cpu_pct;
        r.e2e_latency.p99_ms = p99_ms;
        r
    }

    #[test]
    fn the_comparison_puts_cpu_per_delivery_side_by_side() {
        // 10,000 deliveries/s at 80 % of a core is 80 µs each; at 32 % it is 32 µs.
        let (chatd, ceiling) = (
            run(10_000.0, Some(80.0), 3.0),
            run(10_000.0, Some(32.0), 1.0),
        );
        let c = compare(&chatd, &ceiling);
        assert!((c.cpu_per_delivery_us.unwrap() - 80.0).abs() < 1e-9);
        assert!((c.ceiling_cpu_per_delivery_us.unwrap() - 32.0).abs() < 1e-9);
        assert!((c.cpu_ratio.unwrap() - 2.5).abs() < 1e-9);
        assert!((c.p99_ratio - 3.0).abs() < 1e-9);
        let text = comparison_table(&c, &chatd, &ceiling);
        assert!(
            text.contains("server CPU/delivery chatd 80.0 us  ceiling 32.0 us  ratio 2.50"),
            "{text}"
        );
    }

    #[test]
    fn without_cpu_samples_or_deliveries_there_is_no_cpu_ratio() {
        let c = compare(&run(10_000.0, None, 1.0), &run(10_000.0, Some(30.0), 1.0));
        assert_eq!((c.cpu_per_delivery_us, c.cpu_ratio), (None, None));
        let c = compare(&run(10_000.0, Some(50.0), 1.0), &run(0.0, Some(30.0), 1.0));
        assert_eq!((c.ceiling_cpu_per_delivery_us, c.cpu_ratio), (None, None));
        let text = comparison_table(&c, &run(1.0, None, 1.0), &run(1.0, None, 1.0));
        assert!(!text.contains("CPU/delivery"), "{text}");
    }
}
