//! `loadtest`: drive chatd (or the bare broadcaster) with thousands of simulated users.
//!
//! ```text
//! loadtest <connect-storm|dm|fanout|churn|mixed|FILE.toml> [--spawn-server target/release/chatd] [flags]
//! loadtest ceiling-server [--listen 127.0.0.1:0]
//! ```

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use loadtest::report::{self, Report};
use loadtest::runner::{self, RunOpts, TargetSpec};
use loadtest::scenario::{CodecName, Mode, Scenario, PRESETS};
use loadtest::setup::Spawned;
use loadtest::{limits, plot};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Load-test harness for chatd.
#[derive(Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Scenarios: connect-storm, dm, fanout, churn, mixed, or a TOML file (see loadtest/scenarios/).\nExample: loadtest fanout --spawn-server target/release/chatd --groups 10 --group-size 1000 --rate 50 --ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bare tokio-tungstenite room broadcaster (the ceiling chatd is compared with).
    CeilingServer {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Fault injection: drop every n-th delivery (for testing the harness).
        #[arg(long, default_value_t = 0)]
        drop_every: u64,
        /// Fault injection: deliver every n-th delivery twice.
        #[arg(long, default_value_t = 0)]
        duplicate_every: u64,
    },
    /// Internal: one load-generator process of a `--procs N` run.
    #[command(name = "__shard", hide = true)]
    Shard {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        procs: usize,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Args, Default)]
struct RunArgs {
    /// A preset (connect-storm, dm, fanout, churn, mixed) or a scenario TOML file.
    scenario: Option<String>,
    /// Node address (repeat, or comma-separate, for several nodes: round-robin).
    #[arg(long = "target", value_delimiter = ',')]
    targets: Vec<String>,
    /// Start this chatd binary on 127.0.0.1:0 with a temp data dir and a generated secret.
    #[arg(long)]
    spawn_server: Option<PathBuf>,
    /// Extra environment for the spawned server (KEY=VALUE, repeatable).
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// The server's pid (default: found by the port), for memory and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's server.max_connections (checked before the run).
    #[arg(long)]
    server_max_connections: Option<u64>,
    /// The server's signing secret.
    #[arg(long, env = "CHATD_AUTH__JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The server's data dir, to read jwt.secret from.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also run the scenario against the bare broadcaster and compare.
    #[arg(long)]
    ceiling: bool,
    /// Run only against the bare broadcaster.
    #[arg(long)]
    ceiling_only: bool,
    /// Extra arguments for the bare broadcaster (e.g. `--drop-every 50` to test the harness).
    #[arg(long, allow_hyphen_values = true)]
    ceiling_args: Option<String>,
    /// Load-generator processes (each holds at most ~fd-limit connections).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Loopback source addresses (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Worker threads per load-generator process (default: min(2, cpus)).
    #[arg(long)]
    threads: Option<usize>,
    /// Output directory (default loadtest-results/<name>-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Fail on duplicates and out-of-order deliveries too, not only on losses.
    #[arg(long)]
    strict: bool,
    /// User-id prefix (default random).
    #[arg(long, default_value = "")]
    tag: String,
    /// Client WebSocket read buffer, bytes (default 4096 for connect-storm, else 16384).
    #[arg(long, default_value_t = 0)]
    read_buffer: usize,
    #[command(flatten)]
    set: Overrides,
}

/// Scenario parameters from the command line (they override the preset or file).
#[derive(Args, Default)]
struct Overrides {
    /// Scenario name in reports.
    #[arg(long)]
    name: Option<String>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Users (connect-storm, dm, mixed).
    #[arg(long)]
    users: Option<usize>,
    /// Seconds of traffic (connect-storm: of holding).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of connection ramp-up.
    #[arg(long)]
    ramp_up: Option<f64>,
    /// Most seconds of draining after the traffic.
    #[arg(long)]
    drain: Option<f64>,
    /// Messages/s: total (dm), per group (fanout, churn), all groups (mixed).
    #[arg(long)]
    rate: Option<f64>,
    /// Direct messages/s (mixed).
    #[arg(long)]
    dm_rate: Option<f64>,
    /// Groups.
    #[arg(long)]
    groups: Option<usize>,
    /// Members per group (mixed: largest regular group).
    #[arg(long)]
    group_size: Option<usize>,
    /// Senders per group.
    #[arg(long)]
    senders_per_group: Option<usize>,
    /// Contacts per user for direct messages.
    #[arg(long)]
    contacts: Option<usize>,
    /// Share of sessions that churn.
    #[arg(long)]
    churn_share: Option<f64>,
    /// Reconnects per second.
    #[arg(long)]
    churn_rate: Option<f64>,
    /// Offline time of a churning session, ms.
    #[arg(long)]
    churn_offline_ms: Option<u64>,
    /// Zipf exponent of group sizes (mixed).
    #[arg(long)]
    zipf_s: Option<f64>,
    /// Large company groups (mixed).
    #[arg(long)]
    large_groups: Option<usize>,
    /// Members of each large group (mixed).
    #[arg(long)]
    large_group_size: Option<usize>,
    /// Share of users with several devices (mixed).
    #[arg(long)]
    multi_device_share: Option<f64>,
    /// Body size in bytes.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// json or msgpack.
    #[arg(long, value_parser = ["json", "msgpack"])]
    codec: Option<String>,
    /// embedded or cluster (informational; several --target nodes are used round-robin).
    #[arg(long, value_parser = ["embedded", "cluster"])]
    mode: Option<String>,
}

impl Overrides {
    fn apply(&self, s: &mut Scenario) {
        macro_rules! set {
            ($($f:ident => $g:ident),* $(,)?) => { $( if let Some(v) = self.$f.clone() { s.$g = v; } )* };
        }
        set!(name => name, seed => seed, users => users, duration => duration_secs, ramp_up => ramp_up_secs,
             drain => drain_secs, rate => rate, dm_rate => dm_rate, groups => groups, group_size => group_size,
             senders_per_group => senders_per_group, contacts => contacts, churn_share => churn_share,
             churn_rate => churn_rate, churn_offline_ms => churn_offline_ms, zipf_s => zipf_s,
             large_groups => large_groups, large_group_size => large_group_size,
             multi_device_share => multi_device_share, body_bytes => body_bytes);
        if let Some(c) = &self.codec {
            s.codec = if c == "msgpack" {
                CodecName::Msgpack
            } else {
                CodecName::Json
            };
        }
        if let Some(m) = &self.mode {
            s.mode = if m == "cluster" {
                Mode::Cluster
            } else {
                Mode::Embedded
            };
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOADTEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let (soft, hard) = limits::raise_nofile();
    tracing::debug!(soft, hard, "open-files limit raised to the hard limit");
    match cli.command {
        Some(Command::CeilingServer {
            listen,
            threads,
            drop_every,
            duplicate_every,
        }) => {
            ensure_loopback(&listen)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            let faults = loadtest::ceiling::Faults {
                drop_every,
                duplicate_every,
            };
            rt.block_on(loadtest::ceiling::run(listen, faults))
        }
        Some(Command::Shard {
            input,
            index,
            procs,
            output,
            threads,
        }) => runner::shard_main(&input, index, procs, &output, threads),
        None => {
            tracing::info!(
                soft,
                hard,
                "open-files limit: soft raised to the hard limit"
            );
            run(cli.run)
        }
    }
}

fn ensure_loopback(a: &SocketAddr) -> anyhow::Result<()> {
    if !a.ip().is_loopback() {
        bail!(
            "{a} is not a loopback address: this harness only sends traffic to 127.0.0.0/8 or ::1"
        );
    }
    Ok(())
}

fn resolve_targets(list: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for t in list {
        let a: SocketAddr = t
            .parse()
            .with_context(|| format!("--target {t}: expected IP:PORT such as 127.0.0.1:8080"))?;
        ensure_loopback(&a)?;
        out.push(a);
    }
    Ok(out)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(name) = args.scenario.clone() else {
        bail!(
            "name a scenario: one of {} or a .toml file (see --help)",
            PRESETS.join(", ")
        );
    };
    let mut scenario = Scenario::load(&name)?;
    args.set.apply(&mut scenario);
    if !args.targets.is_empty() {
        scenario.targets = args.targets.clone();
    }
    scenario.validate()?;
    let threads = args.threads.unwrap_or_else(|| limits::cpus().min(2)).max(1);
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("loadtest-results").join(format!("{}-{secs}", scenario.name))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = RunOpts {
        procs: args.procs.max(1),
        sources: args.sources.max(1),
        read_buffer: args.read_buffer,
        progress: !args.no_progress,
        work_dir: out.join("shards"),
        tag: args.tag.clone(),
        threads,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let mut reports: Vec<Report> = Vec::new();

    if args.ceiling || args.ceiling_only {
        let exe = std::env::current_exe()?;
        let mut cargs: Vec<String> = vec![
            "ceiling-server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--threads".into(),
            "2".into(),
        ];
        cargs.extend(
            args.ceiling_args
                .iter()
                .flat_map(|a| a.split_whitespace().map(str::to_owned)),
        );
        // The harness waits for its `listening addr=` line, an info line.
        let env = [("LOADTEST_LOG".to_owned(), "info".to_owned())];
        let ceiling = Spawned::start(&exe, &cargs, &env, out.join("ceiling-server.log"), false)?;
        let spec = TargetSpec {
            label: "ceiling".into(),
            addrs: vec![ceiling.addr],
            secret: ceiling.secret.clone(),
            server_pid: Some(ceiling.pid()),
            http_setup: false,
            server_max: None,
        };
        let mut sc = scenario.clone();
        sc.targets = vec![ceiling.addr.to_string()];
        tracing::info!(addr = %ceiling.addr, "running against the bare broadcaster");
        reports.push(rt.block_on(runner::run_target(&opts, &sc, &spec))?);
        drop(ceiling);
    }

    if !args.ceiling_only {
        let mut _spawned = None;
        let spec = if let Some(bin) = &args.spawn_server {
            let mut env: Vec<(String, String)> = vec![
                ("CHATD_LIMITS__SEND_PER_SEC".into(), "1000000".into()),
                ("CHATD_LIMITS__SEND_BURST".into(), "1000000".into()),
                // The per-user budgets too: a benchmark measures capacity, not the limits.
                (
                    "CHATD_LIMITS__USER_DELIVERIES_PER_SEC".into(),
                    "100000000".into(),
                ),
                (
                    "CHATD_LIMITS__USER_DELIVERIES_BURST".into(),
                    "100000000".into(),
                ),
                (
                    "CHATD_LIMITS__USER_MESSAGE_BYTES_PER_DAY".into(),
                    "0".into(),
                ),
                ("CHATD_LIMITS__HTTP_WRITES_PER_SEC".into(), "100000".into()),
                ("CHATD_LIMITS__HTTP_WRITES_BURST".into(), "100000".into()),
                ("CHATD_LIMITS__HTTP_READS_PER_SEC".into(), "100000".into()),
                ("CHATD_LIMITS__HTTP_READS_BURST".into(), "100000".into()),
            ];
            for kv in &args.server_env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--server-env {kv}: expected KEY=VALUE"))?;
                env.push((k.to_owned(), v.to_owned()));
            }
            let max = env
                .iter()
                .rev()
                .find(|(k, _)| k == "CHATD_SERVER__MAX_CONNECTIONS")
                .and_then(|(_, v)| v.parse().ok())
                .or(Some(100_000));
            let s = Spawned::start(
                bin,
                &["serve".into(), "--listen".into(), "127.0.0.1:0".into()],
                &env,
                out.join("chatd.log"),
                true,
            )?;
            tracing::info!(addr = %s.addr, pid = s.pid(), log = %s.log.display(), "spawned chatd");
            scenario.targets = vec![s.addr.to_string()];
            let spec = TargetSpec {
                label: "chatd".into(),
                addrs: vec![s.addr],
                secret: s.secret.clone(),
                server_pid: Some(s.pid()),
                http_setup: true,
                server_max: args.server_max_connections.or(max),
            };
            _spawned = Some(s);
            spec
        } else {
            let addrs = resolve_targets(&scenario.targets)?;
            let secret = match (&args.jwt_secret, &args.data_dir) {
                (Some(s), _) => s.clone(),
                (None, Some(d)) => std::fs::read_to_string(d.join("jwt.secret"))
                    .with_context(|| format!("reading {}/jwt.secret", d.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => bail!("the harness mints tokens: give --jwt-secret (or CHATD_AUTH__JWT_SECRET), --data-dir of the server, or --spawn-server"),
            };
            let pid = args
                .server_pid
                .or_else(|| limits::pid_by_port(addrs[0].port()));
            if pid.is_none() {
                tracing::warn!(
                    "server pid not found (give --server-pid): no server memory or CPU figures"
                );
            }
            TargetSpec {
                label: "chatd".into(),
                addrs,
                secret,
                server_pid: if scenario.targets.len() == 1 {
                    pid
                } else {
                    args.server_pid
                },
                http_setup: true,
                server_max: args.server_max_connections,
            }
        };
        reports.push(rt.block_on(runner::run_target(&opts, &scenario, &spec))?);
    }

    // Output: per target a directory with report.json and plots, and one combined report.
    let mut stdout = std::io::stdout().lock();
    for r in &reports {
        let dir = out.join(&r.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
        let plots = plot::write_all(r, &dir)?;
        write!(stdout, "{}", report::table(r))?;
        writeln!(
            stdout,
            "  files              {} and {} plots in {}",
            dir.join("report.json").display(),
            plots.len(),
            dir.display()
        )?;
    }
    let comparison = match (
        reports.iter().find(|r| r.target == "chatd"),
        reports.iter().find(|r| r.target == "ceiling"),
    ) {
        (Some(c), Some(b)) => {
            let cmp = report::compare(c, b);
            write!(stdout, "{}", report::comparison_table(&cmp, c, b))?;
            Some(cmp)
        }
        _ => None,
    };
    let combined = serde_json::json!({ "runs": reports, "comparison": comparison });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&combined)?,
    )?;
    writeln!(stdout, "report: {}", out.join("report.json").display())?;
    drop(stdout);

    let mut failed = Vec::new();
    for r in &reports {
        if !r.passed {
            failed.push(format!("{}: {}", r.target, r.failures.join("; ")));
        }
        if args.strict && (r.completeness.duplicates > 0 || r.completeness.out_of_order > 0) {
            failed.push(format!(
                "{}: {} duplicates, {} out of order (--strict)",
                r.target, r.completeness.duplicates, r.completeness.out_of_order
            ));
        }
    }
    if !failed.is_empty() {
        bail!("run failed: {}", failed.join("; "));
    }
    Ok(())
}
