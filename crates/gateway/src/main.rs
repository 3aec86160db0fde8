//! `chatd`: run a node (`chatd serve`, the default) or mint a token (`chatd token`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::auth::Auth;
use gateway::config::Config;
use gateway::server::Node;
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
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHATD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
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

fn main() -> anyhow::Result<()> {
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
        Command::Migrate => {
            init_tracing();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let store = gateway::backends::scylla_store(&config).await?;
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
