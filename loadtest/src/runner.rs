//! Running a scenario against one target: plan, limits, setup, then the sessions, either in
//! this process or spread over `--procs` copies of it (each takes every n-th session and
//! reports back its raw measurements and ledger, which are merged here), with a monitor
//! that drives the progress bar, samples CPU and memory once a second, and ends the drain
//! as soon as every expected delivery has arrived.

use crate::client::{self, now_us, Shared};
use crate::ledger::Ledger;
use crate::limits;
use crate::metrics::{Counters, Metrics, Progress, RecorderData};
use crate::plan::Plan;
use crate::report::{self, Report, Sample};
use crate::scenario::{Kind, Scenario};
use crate::setup;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Environment variable that passes the signing secret to shard processes.
pub const SECRET_ENV: &str = "LOADTEST_JWT_SECRET";

/// Time between the connect ramp and the first send, so every session has synced.
const SETTLE: Duration = Duration::from_secs(1);

/// Everything a load generator (this process or a shard) needs to run its sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInput {
    /// The scenario.
    pub scenario: Scenario,
    /// Prefix of the user ids.
    pub tag: String,
    /// Server-chosen group ids, in plan order.
    pub group_ids: Vec<String>,
    /// Node addresses.
    pub targets: Vec<SocketAddr>,
    /// Number of loopback source addresses.
    pub sources: usize,
    /// The start, µs since the epoch (the same for every shard).
    pub t0_unix_us: u64,
    /// Client WebSocket read buffer, bytes.
    pub read_buffer: usize,
}

impl RunInput {
    fn phases(&self) -> (Duration, Duration, Duration) {
        let s = &self.scenario;
        let traffic_start = Duration::from_secs_f64(s.ramp_up_secs) + SETTLE;
        let traffic_end = traffic_start + Duration::from_secs_f64(s.duration_secs);
        let hard_stop = traffic_end + Duration::from_secs_f64(s.drain_secs);
        (traffic_start, traffic_end, hard_stop)
    }
}

/// What one load generator measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardResult {
    /// Histograms and timeline.
    pub recorder: RecorderData,
    /// Completeness ledger of its sessions.
    pub ledger: Ledger,
    /// Final counters.
    pub progress: Progress,
    /// Error frames and failed connects by code.
    pub error_codes: BTreeMap<String, u64>,
    /// Closes by code.
    pub close_codes: BTreeMap<String, u64>,
    /// Sends retried after a reconnect.
    pub resent: u64,
    /// Successful connects.
    pub connects: u64,
    /// Failed connects.
    pub connect_failures: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
}

/// Runs the sessions `idx % procs == shard` of the plan until `stop` or the hard stop.
pub async fn run_sessions(
    input: &RunInput,
    secret: &str,
    shard: usize,
    procs: usize,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<ShardResult> {
    let mut plan = Plan::build(&input.scenario, &input.tag);
    plan.set_group_ids(&input.group_ids);
    let ttl = Duration::from_secs_f64(
        input.scenario.ramp_up_secs
            + input.scenario.duration_secs
            + input.scenario.drain_secs
            + 3600.0,
    );
    let tokens = setup::tokens(&plan, secret, ttl)?;
    let now = now_us();
    let t0 = if input.t0_unix_us >= now {
        Instant::now() + Duration::from_micros(input.t0_unix_us - now)
    } else {
        Instant::now() - Duration::from_micros((now - input.t0_unix_us).min(60_000_000))
    };
    let (ts, te, hs) = input.phases();
    let pad_len = input.scenario.body_bytes.saturating_sub(17);
    let shared = Arc::new(Shared {
        plan: Arc::new(plan),
        tokens,
        targets: input.targets.clone(),
        sources: limits::sources(input.sources),
        codec: input.scenario.codec,
        t0,
        t0_us: input.t0_unix_us,
        traffic_start: t0 + ts,
        traffic_end: t0 + te,
        hard_stop: t0 + hs,
        metrics: metrics.clone(),
        stop,
        pad: "x".repeat(pad_len),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(input.read_buffer)
            .write_buffer_size(0),
        offline: Duration::from_millis(input.scenario.churn_offline_ms),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for idx in (0..shared.plan.sessions.len()).filter(|i| i % procs.max(1) == shard) {
        tasks.spawn(client::run(shared.clone(), idx as u32));
    }
    let mut ledger = Ledger::default();
    while let Some(r) = tasks.join_next().await {
        let outcome = r.context("a session task panicked")?;
        for (conv, seq) in outcome.acks {
            ledger.ack(conv, seq);
        }
        ledger.sessions.insert(outcome.idx, outcome.ledger);
    }
    let c = &metrics.counters;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(ShardResult {
        recorder: RecorderData::from(&metrics.merged()),
        ledger,
        progress: c.progress(),
        error_codes: Counters::snapshot(&c.error_codes),
        close_codes: Counters::snapshot(&c.close_codes),
        resent: c.resent.load(Relaxed),
        connects: c.connects.load(Relaxed),
        connect_failures: c.connect_failures.load(Relaxed),
        bytes_in: c.bytes_in.load(Relaxed),
    })
}

/// How the run is executed and observed.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Load-generator processes.
    pub procs: usize,
    /// Loopback source addresses.
    pub sources: usize,
    /// Client read buffer (0: automatic).
    pub read_buffer: usize,
    /// Show the progress bar.
    pub progress: bool,
    /// Where shard files go.
    pub work_dir: PathBuf,
    /// User-id prefix (empty: random).
    pub tag: String,
    /// Worker threads per load generator (for the saturation verdict).
    pub threads: usize,
}

/// One target to drive.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// A label for reports (`chatd`, `ceiling`).
    pub label: String,
    /// Node addresses.
    pub addrs: Vec<SocketAddr>,
    /// The signing secret.
    pub secret: String,
    /// The server's pid, for memory and CPU.
    pub server_pid: Option<u32>,
    /// Whether groups are created over HTTP (false for the bare broadcaster).
    pub http_setup: bool,
    /// The server's `max_connections`, if known.
    pub server_max: Option<u64>,
}

fn random_tag() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("lt{:06x}", rng.random_range(0..0x100_0000u32))
}

/// Where progress comes from and how the run is stopped.
enum Execution {
    Local {
        metrics: Arc<Metrics>,
        stop: watch::Sender<bool>,
    },
    Shards {
        latest: Arc<Mutex<Vec<Progress>>>,
        stdins: Vec<Option<ChildStdin>>,
    },
}

impl Execution {
    fn progress(&self) -> Progress {
        match self {
            Execution::Local { metrics, .. } => metrics.counters.progress(),
            Execution::Shards { latest, .. } => latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .fold(Progress::default(), |a, b| a + *b),
        }
    }

    fn stop(&mut self) {
        match self {
            Execution::Local { stop, .. } => {
                let _ = stop.send(true);
            }
            Execution::Shards { stdins, .. } => {
                for s in stdins.iter_mut() {
                    if let Some(mut s) = s.take() {
                        let _ = writeln!(s, "stop");
                    }
                }
            }
        }
    }
}

/// Runs `scenario` against `target` and returns the report.
pub async fn run_target(
    opts: &RunOpts,
    scenario: &Scenario,
    target: &TargetSpec,
) -> anyhow::Result<Report> {
    scenario.validate()?;
    let tag = if opts.tag.is_empty() {
        random_tag()
    } else {
        opts.tag.clone()
    };
    let mut plan = Plan::build(scenario, &tag);
    let sessions = plan.sessions.len() as u64;
    let (fd_limit, _) = limits::raise_nofile();
    let needs = limits::Needs {
        connections: sessions,
        procs: opts.procs as u64,
        sources: opts.sources as u64,
        fd_limit,
        server_max: target.server_max,
        server_fd: target
            .server_pid
            .and_then(|p| limits::nofile_of(p).map(|l| (p, l))),
    };
    limits::check(&needs)
        .with_context(|| format!("{}: this run cannot happen as asked", target.label))?;
    tracing::info!(
        target = %target.label,
        users = plan.users.len(),
        sessions,
        groups = plan.groups.len(),
        conversations = plan.convs.len(),
        planned_msgs_per_sec = plan.planned_rate(),
        planned_deliveries_per_sec = plan.planned_delivery_rate(),
        "plan"
    );
    let group_ids: Vec<String> = if target.http_setup {
        let began = std::time::Instant::now();
        let tokens = setup::tokens(&plan, &target.secret, Duration::from_secs(3600))?;
        let base = format!("http://{}", target.addrs[0]);
        let ids = setup::create_groups(&base, &plan, &tokens).await?;
        tracing::info!(
            groups = ids.len(),
            secs = began.elapsed().as_secs_f64(),
            "groups created"
        );
        ids
    } else {
        (0..plan.groups.len())
            .map(|g| format!("{tag}g{g}"))
            .collect()
    };
    plan.set_group_ids(&group_ids);
    let read_buffer = if opts.read_buffer > 0 {
        opts.read_buffer
    } else if scenario.kind == Kind::ConnectStorm {
        4096
    } else {
        16 * 1024
    };
    let lead = if opts.procs > 1 { 2_000_000 } else { 300_000 };
    let input = RunInput {
        scenario: scenario.clone(),
        tag,
        group_ids,
        targets: target.addrs.clone(),
        sources: opts.sources,
        t0_unix_us: now_us() + lead,
        read_buffer,
    };
    let server_rss_base = target.server_pid.and_then(limits::rss_kib);

    let (mut exec, work) = if opts.procs <= 1 {
        let metrics = Metrics::new();
        let (tx, rx) = watch::channel(false);
        let input2 = input.clone();
        let secret = target.secret.clone();
        let m2 = metrics.clone();
        let work = tokio::spawn(async move {
            let r = run_sessions(&input2, &secret, 0, 1, m2, rx).await?;
            Ok::<_, anyhow::Error>((vec![r], Vec::<u32>::new()))
        });
        (Execution::Local { metrics, stop: tx }, work)
    } else {
        let (children, latest, stdins, outputs) = spawn_shards(opts, &input, &target.secret)?;
        let pids: Vec<u32> = children.iter().map(Child::id).collect();
        let work = tokio::task::spawn_blocking(move || {
            let mut results = Vec::new();
            for (mut child, out) in children.into_iter().zip(outputs) {
                let status = child.wait().context("waiting for a shard")?;
                if !status.success() {
                    bail!("shard process failed with {status}");
                }
                let text = std::fs::read_to_string(&out)
                    .with_context(|| format!("reading {}", out.display()))?;
                results.push(serde_json::from_str(&text).context("parsing a shard result")?);
            }
            Ok((results, pids))
        });
        (Execution::Shards { latest, stdins }, work)
    };

    let samples = monitor(&input, opts, target, &mut exec, &plan, &work).await;
    let (results, _pids) = work.await.context("the load generators")??;
    let report = report::build(report::Inputs {
        label: &target.label,
        scenario,
        plan: &plan,
        input: &input,
        results,
        samples,
        server_pid: target.server_pid,
        server_rss_base_kib: server_rss_base,
        procs: opts.procs,
        threads: opts.threads,
        sources: opts.sources,
        fd_limit,
        history: target.http_setup,
    });
    Ok(report)
}

type ShardSpawn = (
    Vec<Child>,
    Arc<Mutex<Vec<Progress>>>,
    Vec<Option<ChildStdin>>,
    Vec<PathBuf>,
);

fn spawn_shards(opts: &RunOpts, input: &RunInput, secret: &str) -> anyhow::Result<ShardSpawn> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let input_path = opts.work_dir.join("shard-input.json");
    std::fs::write(&input_path, serde_json::to_vec(input)?)?;
    let exe = std::env::current_exe().context("finding the loadtest executable")?;
    let latest = Arc::new(Mutex::new(vec![Progress::default(); opts.procs]));
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..opts.procs {
        let out = opts.work_dir.join(format!("shard-{i}.json"));
        let mut child = Command::new(&exe)
            .arg("__shard")
            .arg("--input")
            .arg(&input_path)
            .arg("--index")
            .arg(i.to_string())
            .arg("--procs")
            .arg(opts.procs.to_string())
            .arg("--output")
            .arg(&out)
            .arg("--threads")
            .arg(opts.threads.to_string())
            .env(SECRET_ENV, secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a shard process")?;
        stdins.push(child.stdin.take());
        if let Some(stdout) = child.stdout.take() {
            let latest = latest.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(json) = line.strip_prefix("progress ") {
                        if let Ok(p) = serde_json::from_str::<Progress>(json) {
                            latest.lock().unwrap_or_else(PoisonError::into_inner)[i] = p;
                        }
                    }
                }
            });
        }
        children.push(child);
        outputs.push(out);
    }
    Ok((children, latest, stdins, outputs))
}

/// Entry point of a shard process: runs its share and writes its result.
pub fn shard_main(
    input: &Path,
    index: usize,
    procs: usize,
    output: &Path,
    threads: usize,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let input: RunInput = serde_json::from_str(&text)?;
    let secret = std::env::var(SECRET_ENV).context("the shard needs LOADTEST_JWT_SECRET")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let metrics = Metrics::new();
        let (tx, rx) = watch::channel(false);
        // The parent writes "stop" (or closes stdin) when the run is over.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(true);
        });
        let m2 = metrics.clone();
        let printer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Ok(json) = serde_json::to_string(&m2.counters.progress()) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "progress {json}");
                    let _ = out.flush();
                }
            }
        });
        let r = run_sessions(&input, &secret, index, procs, metrics, rx).await;
        printer.abort();
        r
    })?;
    std::fs::write(output, serde_json::to_vec(&result)?)?;
    Ok(())
}

async fn monitor(
    input: &RunInput,
    opts: &RunOpts,
    target: &TargetSpec,
    exec: &mut Execution,
    plan: &Plan,
    work: &tokio::task::JoinHandle<anyhow::Result<(Vec<ShardResult>, Vec<u32>)>>,
) -> Vec<Sample> {
    let (ts, te, hs) = input.phases();
    let now = now_us();
    let t0 = Instant::now() + Duration::from_micros(input.t0_unix_us.saturating_sub(now));
    let bar = if opts.progress {
        ProgressBar::new(hs.as_millis() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {bar:24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(target.label.clone());
    let connect_storm = input.scenario.kind == Kind::ConnectStorm;
    let sessions = plan.sessions.len();
    let mut samples = Vec::new();
    let mut last = Progress::default();
    let mut last_tick = Instant::now();
    let mut last_sample = Instant::now();
    let self_pid = std::process::id().to_string();
    let mut last_cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_server_cpu: Option<limits::CpuTimes> = None;
    let mut last_machine = limits::machine_cpu();
    let mut stopped = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if work.is_finished() {
            break;
        }
        let now = Instant::now();
        let p = exec.progress();
        let dt = now.duration_since(last_tick).as_secs_f64().max(1e-3);
        let el = now.saturating_duration_since(t0);
        let phase = if now < t0 {
            "starting"
        } else if el < ts {
            "connecting"
        } else if el < te {
            if connect_storm {
                "holding"
            } else {
                "traffic"
            }
        } else {
            "draining"
        };
        bar.set_position(el.as_millis() as u64);
        bar.set_message(format!(
            "{phase} conns {}/{} sent/s {:.0} deliv/s {:.0} err {} pend {}",
            p.connected,
            sessions,
            (p.sent - last.sent) as f64 / dt,
            (p.delivered - last.delivered) as f64 / dt,
            p.errors,
            p.outstanding.max(0)
        ));
        last = p;
        last_tick = now;
        if now.duration_since(last_sample) >= Duration::from_secs(1) && now >= t0 {
            let wall = now.duration_since(last_sample).as_secs_f64();
            last_sample = now;
            let mut pids = vec![self_pid.clone()];
            if let Execution::Shards { .. } = exec {
                pids.extend(shard_pids());
            }
            let mut client = 0.0;
            for pid in &pids {
                if let Some(c) = limits::cpu_secs(pid) {
                    let prev = last_cpu.insert(pid.clone(), c).unwrap_or(c);
                    client += c - prev;
                }
            }
            let (mut server_cpu, mut server_sys) = (None, None);
            if let Some(c) = target
                .server_pid
                .and_then(|pid| limits::cpu_times(&pid.to_string()))
            {
                let prev = last_server_cpu.replace(c).unwrap_or(c);
                let (user, system) = (c.user - prev.user, c.system - prev.system);
                server_cpu = Some((user + system) / wall * 100.0);
                server_sys = Some(system / wall * 100.0);
            }
            let machine = limits::machine_cpu();
            let machine_busy = match (last_machine, machine) {
                (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                    Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
                }
                _ => None,
            };
            last_machine = machine;
            samples.push(Sample {
                t: el.as_secs_f64(),
                connected: p.connected,
                client_cpu_pct: client / wall * 100.0,
                server_cpu_pct: server_cpu,
                server_sys_pct: server_sys,
                server_rss_kib: target.server_pid.and_then(limits::rss_kib),
                machine_busy_pct: machine_busy,
            });
        }
        if !stopped {
            let done = if connect_storm {
                el >= te
            } else {
                el >= te + Duration::from_millis(200)
                    && p.outstanding <= 0
                    && p.delivered >= p.expected
            };
            if done || el >= hs {
                exec.stop();
                stopped = true;
            }
        }
    }
    bar.finish_and_clear();
    samples
}

/// Pids of this process's children (the shards), from /proc.
fn shard_pids() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            if rest.split_whitespace().nth(1) == Some(me.as_str()) && stat.contains("(loadtest)") {
                out.push(name);
            }
        }
    }
    out
}
