//! The `voiked` binary: parses flags, loads the configuration and runs the daemon.
//!
//! Besides what the daemon does, the binary writes `voiked.pid` in the data directory (see
//! [`PidFile`]), which `voike` checks before it sends the admin token to `api.addr`, and
//! handles SIGHUP (nothing is reloaded; see docs/operations.md).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;
use voiked::config::{Config, LogFormat, Overrides};

/// VOIKE mesh daemon: joins hosts into a peer-to-peer mesh.
#[derive(Debug, Parser)]
#[command(name = "voiked", version, about)]
struct Args {
    /// TOML config file (also VOIKED_CONFIG).
    #[arg(long, global = true, env = "VOIKED_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: identity key, admin token, database.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// p2p listen multiaddr (repeatable); port 0 picks a free port.
    #[arg(long, global = true, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Admin API address (loopback).
    #[arg(long, global = true, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// DNS listen address (UDP and TCP); port 0 picks a free port.
    #[arg(long, global = true, value_name = "ADDR")]
    dns: Option<SocketAddr>,
    /// DNS-over-HTTPS listen address, or `off`.
    #[arg(long, global = true, value_name = "ADDR")]
    doh: Option<String>,
    /// Join the mesh of this ticket (from `voike invite`) on first start.
    #[arg(long, global = true, value_name = "TICKET")]
    join: Option<String>,
    /// Extra bootstrap peer multiaddr (repeatable).
    #[arg(long, global = true, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check the configuration (file, environment, flags) and exit.
    Validate,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        api: args.api,
        dns: args.dns,
        doh: args.doh,
        join: args.join,
        bootstrap: args.bootstrap,
        log_format: args.log_format,
    };
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = match Config::load(args.config.as_deref(), env, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Validate) = args.command {
        println!(
            "config ok: data_dir={} api={} dns={} doh={} listen=[{}]",
            config.data_dir().display(),
            config.api.listen,
            config.dns.listen,
            config.dns.doh,
            config
                .p2p
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    // Before `voiked.pid` (which creates the data directory): a busy port leaves nothing behind.
    if let Err(e) = voiked::ports::check_listen_ports(&config) {
        tracing::error!(error = %format!("{e:#}"), "voiked cannot start");
        eprintln!("Error: {e:#}");
        return ExitCode::FAILURE;
    }
    let pid_file = match PidFile::write(&config.data_dir()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_workers())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown_timeout = config.shutdown_timeout;
    let result = runtime.block_on(async {
        // Installed before anything else runs, so that a SIGHUP never takes the default action
        // (which ends the process without a clean shutdown).
        let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        tokio::spawn(log_hangups(hangup));
        voiked::daemon::run(config).await
    });
    // Blocking threads still running (a WebAssembly job) do not hold up the exit.
    runtime.shutdown_timeout(shutdown_timeout);
    pid_file.remove();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "voiked stopped");
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("VOIKED_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,libp2p=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs every SIGHUP: nothing is reloaded (the configuration is read once, at start).
async fn log_hangups(mut hangup: Signal) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: nothing to reload; config changes need a restart");
    }
}

/// `voiked.pid` in the data directory: this process's id on the first line and its start time
/// (field 22 of `/proc/PID/stat`, clock ticks since boot) on the second. Written before the
/// daemon writes `api.addr`, removed at exit if it still names this process.
///
/// `voike` trusts `api.addr` only when the process this file names is alive with this start
/// time (a pid alone can be reused after a crash) and `api.addr` is not older than this file
/// (else it is left from an earlier run), so it never sends the admin token to a port that a
/// dead node's successor on that port holds.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    contents: String,
}

impl PidFile {
    const NAME: &str = "voiked.pid";

    fn write(data_dir: &Path) -> anyhow::Result<PidFile> {
        if !data_dir.exists() {
            // As the daemon creates it (which then checks its mode).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .with_context(|| {
                    format!(
                        "cannot create data directory {} (data_dir)",
                        data_dir.display()
                    )
                })?;
        }
        let stat = std::fs::read_to_string("/proc/self/stat")
            .context("cannot read /proc/self/stat for voiked.pid")?;
        let start = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .context("unexpected format of /proc/self/stat")?;
        let contents = format!("{}\n{start}\n", std::process::id());
        let path = data_dir.join(Self::NAME);
        // Written whole and renamed, so that a reader never sees half of it.
        let tmp = data_dir.join(format!(".{}.tmp", Self::NAME));
        std::fs::write(&tmp, &contents)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PidFile { path, contents })
    }

    /// Removes the file unless another process has written its own since.
    fn remove(self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.contents) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
