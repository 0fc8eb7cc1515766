//! The `voiked` binary: parses flags, loads the configuration and runs the daemon.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
    let result = runtime.block_on(voiked::daemon::run(config));
    // Blocking threads still running (a WebAssembly job) do not hold up the exit.
    runtime.shutdown_timeout(shutdown_timeout);
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
