//! `chatd`: run a node (`chatd serve`, the default), mint a token (`chatd token`), back up or
//! restore an embedded node (`chatd backup`, `chatd restore`), export or import a cluster's
//! metadata (`chatd export`, `chatd import`), export conversations for compliance
//! (`chatd export-compliance`; docs/OPERATIONS.md).

use crate::auth::Auth;
use crate::config::Config;
use crate::server::Node;
use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::UserId;
use std::io::IsTerminal;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// An enterprise chat server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); environment variables CHATD_SECTION__KEY override it.
    #[arg(long, global = true, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve {
        /// Override server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Override server.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create or upgrade the CQL schema (cluster mode) and exit.
    Migrate,
    /// Print a token for a user, signed with the node's secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
        /// Override server.data_dir (where the generated secret lives).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Back up an embedded node into one archive (online: asks the running node).
    Backup {
        /// The archive to write (tar.gz).
        #[arg(long)]
        out: PathBuf,
        /// The running node (default: http://<server.listen>, 0.0.0.0 as 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
        /// A company administrator's token (default: one minted for --admin with the node's
        /// secret).
        #[arg(long, env = "CHATD_TOKEN")]
        token: Option<String>,
        /// The administrator to mint a token for (default: the first of auth.admins).
        #[arg(long)]
        admin: Option<String>,
        /// The node is stopped: open its data directory directly instead.
        #[arg(long)]
        offline: bool,
        /// Override server.data_dir (the secret; the store with --offline).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Export the metadata of the configured store (accounts, credentials, group settings,
    /// revocations, file records, ...: every record namespace; the audit log; the review
    /// queue) into one archive. Cluster mode: reads the CQL keyspace while nodes serve.
    Export {
        /// The archive to write (tar.gz).
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a metadata export into the configured store (cluster mode: the CQL keyspace,
    /// created if missing). Refuses a store that already holds metadata unless --force.
    Import {
        /// The archive.
        #[arg(long)]
        from: PathBuf,
        /// Merge into a store that already holds metadata (same keys are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Restore a backup archive into a data directory (the node must be stopped).
    Restore {
        /// The archive.
        #[arg(long)]
        from: PathBuf,
        /// Override server.data_dir (the target).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace the store and attachments of a non-empty data directory.
        #[arg(long)]
        force: bool,
    },
    /// Export the compliance event log after the last export's cursor into batch files in
    /// compliance.dir, then exit (embedded mode: the node must be stopped; cluster mode: any
    /// time). A running node does the same with `POST /v1/admin/compliance/exports`.
    ExportCompliance {
        /// Override server.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Log filter when `CHATD_LOG` is unset: the storage engine's routine notes (flushes, ingestion)
/// only from warnings up.
const DEFAULT_LOG: &str = "info,fjall=warn,lsm_tree=warn";

/// `chatd export-compliance`: runs the export job (or the interrupted one) to the end.
async fn export_compliance(config: &Config) -> anyhow::Result<()> {
    let storage = crate::backends::open_store(config)
        .await
        .context("opening the store (embedded mode: is the node still running?)")?;
    let ex = crate::compliance::Exporter {
        sources: crate::compliance::Sources {
            store: &*storage.store,
            review: &*storage.review,
            meta: &*storage.meta,
        },
        meta: &*storage.meta,
        config,
    };
    let result = async {
        ex.begin("chatd export-compliance").await?;
        ex.run(&CancellationToken::new()).await?;
        ex.status().await
    }
    .await;
    storage.store.close().await?;
    let (status, _) = result?;
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&status)?
    )?;
    Ok(())
}

/// The log filter from `CHATD_LOG` (a `target=level,...` list, as `DEFAULT_LOG`), or
/// `DEFAULT_LOG` when it is unset or does not parse. A [`Targets`] filter rather than
/// `EnvFilter`: the same directives without span/field filters, and without the regex engine
/// `EnvFilter` compiles in (docs/BENCHMARKS.md, "First run").
///
/// [`Targets`]: tracing_subscriber::filter::Targets
fn log_filter(value: Option<&str>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::Targets;
    let fallback = || DEFAULT_LOG.parse::<Targets>().unwrap_or_default();
    match value {
        None => (fallback(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "CHATD_LOG={v:?} is not a `target=level,...` list ({e}); using {DEFAULT_LOG:?}"
                )),
            ),
        },
    }
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let value = std::env::var("CHATD_LOG").ok();
    let (filter, error) = log_filter(value.as_deref());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .with(filter)
        .init();
    if let Some(error) = error {
        tracing::warn!("{error}");
    }
}

fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(
            open_files = n,
            "raised the open-files soft limit to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// Runs the `chatd` command line. The binary is this one call: the server's code is then
/// generated once, in this library, instead of again in the binary (docs/BENCHMARKS.md, first run).
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve {
        listen: None,
        data_dir: None,
    }) {
        Command::Token {
            user,
            ttl,
            data_dir,
        } => {
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            let user = UserId::new(user);
            anyhow::ensure!(user.is_valid(), "user ids are 1-64 of [A-Za-z0-9_.@-]");
            let auth = Auth::from_config(&config.auth, &config.server)?;
            let token = auth.mint(&user, ttl)?;
            // The token is the command's output, for scripts: `TOKEN=$(chatd token --user a)`.
            use std::io::Write;
            writeln!(std::io::stdout(), "{token}")?;
            Ok(())
        }
        Command::Backup {
            out,
            url,
            token,
            admin,
            offline,
            data_dir,
        } => {
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            init_tracing();
            let runtime = tokio::runtime::Runtime::new()?;
            if offline {
                let files = crate::backup::files_dir(&config);
                let store = store::embedded::EmbeddedStore::open(
                    &config.server.data_dir,
                    Default::default(),
                )
                .context("opening the store (is the node still running? then drop --offline)")?;
                let manifest = crate::backup::create(&store, &files, &out)?;
                runtime.block_on(store::Store::close(&store))?;
                print_done(&out, &manifest)
            } else {
                runtime.block_on(backup_online(&config, &out, url, token, admin))
            }
        }
        Command::Restore {
            from,
            data_dir,
            force,
        } => {
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            init_tracing();
            let files = crate::backup::files_dir(&config);
            let manifest = crate::backup::restore(&from, &config.server.data_dir, &files, force)
                .with_context(|| format!("restoring {}", from.display()))?;
            print_done(&config.server.data_dir, &manifest)
        }
        Command::Export { out } => {
            init_tracing();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let storage = crate::backends::open_store(&config)
                    .await
                    .context("opening the store (embedded mode: stop the node first)")?;
                let source = format!("{:?}", config.store.backend).to_lowercase();
                let result = crate::meta_archive::export(storage.admin.clone(), &source, &out)
                    .await
                    .with_context(|| format!("exporting to {}", out.display()));
                storage.store.close().await?;
                print_done(&out, &result?)
            })
        }
        Command::Import { from, force } => {
            init_tracing();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let storage = crate::backends::open_store(&config)
                    .await
                    .context("opening the store (embedded mode: stop the node first)")?;
                let target = crate::meta_archive::Target {
                    meta: storage.meta.clone(),
                    review: storage.review.clone(),
                    admin: storage.admin.clone(),
                };
                let result = crate::meta_archive::import(&from, &target, force)
                    .await
                    .with_context(|| format!("importing {}", from.display()));
                storage.store.close().await?;
                print_done(&from, &result?)
            })
        }
        Command::ExportCompliance { data_dir } => {
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            init_tracing();
            crate::compliance::check_config(&config).map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(export_compliance(&config))
        }
        Command::Migrate => {
            init_tracing();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let store = crate::backends::scylla_store(&config).await?;
                store
                    .migrate()
                    .await
                    .context("running the CQL migrations")?;
                tracing::info!(keyspace = %config.store.keyspace, "schema is up to date");
                Ok(())
            })
        }
        Command::Serve { listen, data_dir } => {
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            init_tracing();
            raise_fd_limit();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!("effective configuration:\n{}", config.redacted());
    let shutdown = CancellationToken::new();
    let node = Node::bind(config, shutdown.clone()).await?;
    let addr = node.local_addr()?;
    tracing::info!(%addr, "listening");
    if let Some(metrics_addr) = node.metrics_addr() {
        // A line of its own, after "listening" (which the test kit waits for).
        tracing::info!(%metrics_addr, "metrics endpoint ready");
    }
    let health = node.state().health.clone();
    tokio::spawn(async move {
        // The first SIGTERM/Ctrl-C drains (docs/OPERATIONS.md); a second one stops at once.
        wait_for_signal().await;
        health.begin_drain();
        wait_for_signal().await;
        tracing::warn!("second signal: skipping the rest of the drain");
        shutdown.cancel();
    });
    node.serve().await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Prints what a backup, restore, export or import did (its manifest's summary), for the
/// operator's log.
fn print_done(path: &std::path::Path, manifest: &dyn std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout(), "{}: {manifest}", path.display())?;
    Ok(())
}

/// `chatd backup` against a running node: `GET /v1/admin/backup`, streamed to `out`.
async fn backup_online(
    config: &Config,
    out: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    admin: Option<String>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let base = url.unwrap_or_else(|| {
        format!(
            "http://{}",
            config.server.listen.replace("0.0.0.0", "127.0.0.1")
        )
    });
    let token = match token {
        Some(t) => t,
        None => {
            let admin = admin
                .or_else(|| config.auth.admins.first().cloned())
                .context("no --token, no --admin and auth.admins is empty")?;
            let auth = Auth::from_config(&config.auth, &config.server)?;
            auth.mint(&UserId::new(admin), Some(300))?
        }
    };
    let resp = http_get(
        &format!("{}/v1/admin/backup", base.trim_end_matches('/')),
        &token,
    )
    .await
    .with_context(|| format!("connecting to {base}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = match body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        anyhow::bail!("the node answered {status}: {text}");
    }
    let partial = crate::backup::with_suffix(out, ".partial");
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("receiving the archive")?;
        if let Ok(chunk) = frame.into_data() {
            bytes += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, out).await?;
    use std::io::Write;
    writeln!(std::io::stdout(), "{}: {bytes} bytes", out.display())?;
    Ok(())
}

/// One plain-HTTP/1.1 `GET` with a bearer token, for the online backup client: hyper's own
/// client connection (the server already compiles hyper), no connection pool, no TLS (point
/// `--url` at a listener without TLS, e.g. on loopback). The response body streams.
async fn http_get(
    url: &str,
    token: &str,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    use hyper::header::{AUTHORIZATION, HOST};
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        other => anyhow::bail!(
            "{url}: the online backup client speaks plain http only, not {}",
            other.unwrap_or("a URL without a scheme")
        ),
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{url}: no host"))?
        .clone();
    // `[::1]` in a URL is the address `::1`.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // Drives the connection; it ends when the response body has been read (or dropped).
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backup client connection ended");
        }
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(sender.send_request(request).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tracing::Level;

    #[test]
    fn log_filter_keeps_the_target_level_syntax() {
        let (f, err) = log_filter(None);
        assert!(err.is_none());
        assert!(f.would_enable("chatd", &Level::INFO));
        assert!(!f.would_enable("fjall::tree", &Level::INFO));
        assert!(f.would_enable("lsm_tree", &Level::WARN));

        let (f, err) = log_filter(Some("warn,gateway::session=debug,store=off"));
        assert!(err.is_none());
        assert!(!f.would_enable("gateway::hub", &Level::INFO));
        assert!(f.would_enable("gateway::session", &Level::DEBUG));
        assert!(!f.would_enable("store::embedded", &Level::ERROR));

        // What only EnvFilter understood (span and field filters) falls back to the default
        // and says so.
        let (f, err) = log_filter(Some("gateway[session{user=1}]=trace"));
        assert!(err.unwrap().contains("CHATD_LOG"));
        assert!(f.would_enable("chatd", &Level::INFO));
    }
}
