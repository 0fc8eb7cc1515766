//! DNS for the VOIKE mesh: authoritative answers from the node's local replica over UDP, TCP
//! and DNS-over-HTTPS, SNRL service names, and forwarding with a serve-stale cache.
//!
//! - [`authority`]: zones compiled into a [`Snapshot`] and the authoritative lookup (no I/O).
//! - [`wire`]: the UDP hot path's query parse and answer patching (no I/O).
//! - [`cache`], [`rrl`]: the forwarding cache (RFC 8767) and response-rate limiting (no I/O).
//! - [`engine`]: answering one message; forwarding to upstreams.
//! - [`udp`], [`tcp`], [`doh`]: the listeners.
//! - [`export`]: BIND zone files.
//!
//! The crate knows nothing of `voiked`: the node builds [`ZoneData`] from its replica, publishes
//! a new snapshot on every change, and answers SNRL names through [`Services`].

pub mod authority;
pub mod cache;
pub mod doh;
pub mod engine;
pub mod export;
pub mod metrics;
pub mod rrl;
pub mod tcp;
pub mod udp;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use authority::{RecordData, Snapshot, Withheld, ZoneData, ZoneEdit};
pub use engine::{Engine, ForwardConfig, ServiceAnswer, ServiceTarget, Services};
pub use metrics::Metrics;
pub use udp::RrlConfig;

/// Listener settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// UDP and TCP address (port 0: ephemeral, the same port for both).
    pub listen: SocketAddr,
    /// DoH address; `None` turns DoH off.
    pub doh: Option<SocketAddr>,
    /// PEM certificate chain and key for DoH over TLS; plain HTTP (h2c) without.
    pub doh_tls: Option<(PathBuf, PathBuf)>,
    /// UDP worker threads (0: one per core).
    pub udp_workers: usize,
    pub rrl: RrlConfig,
    pub tcp_max_connections: usize,
    pub tcp_idle_timeout: Duration,
    pub doh_max_connections: usize,
    pub doh_idle_timeout: Duration,
}

/// Why the DNS listeners did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind DNS {what} on {addr}: {reason}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("DoH TLS: {0}")]
    Tls(String),
}

/// The running listeners; dropping it stops them.
#[derive(Debug)]
pub struct DnsServer {
    engine: Arc<Engine>,
    pub dns_addr: SocketAddr,
    pub doh_addr: Option<SocketAddr>,
    /// The UDP workers' sockets (they block in `recv_from`; woken at shutdown).
    udp_sockets: Vec<Arc<std::net::UdpSocket>>,
    stop: Arc<AtomicBool>,
    /// Cancels the listeners and every open TCP/DoH connection.
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), StartError> {
    let bind_err = |what, addr, source| StartError::Bind {
        what,
        addr,
        reason: source,
    };
    // An ephemeral port must be free for both UDP and TCP: retry a few times.
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp::bind(addr, workers).map_err(|e| bind_err("UDP", addr, e))?;
        let port = udp[0]
            .local_addr()
            .map_err(|e| bind_err("UDP", addr, e))?
            .port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match std::net::TcpListener::bind(tcp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(bind_err("TCP", tcp_addr, e)),
        }
    }
    Err(last.unwrap_or_else(|| bind_err("TCP", addr, std::io::Error::other("no port"))))
}

impl DnsServer {
    /// Binds the listeners and starts serving `engine`.
    pub async fn start(config: Config, engine: Arc<Engine>) -> Result<Self, StartError> {
        let workers = if config.udp_workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.udp_workers
        };
        let (udp_sockets, tcp) = bind_pair(config.listen, workers)?;
        let dns_addr = tcp.local_addr().map_err(|e| StartError::Bind {
            what: "TCP",
            addr: config.listen,
            reason: e,
        })?;
        tcp.set_nonblocking(true).map_err(|e| StartError::Bind {
            what: "TCP",
            addr: dns_addr,
            reason: e,
        })?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| StartError::Bind {
            what: "TCP",
            addr: dns_addr,
            reason: e,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        let mut doh_addr = None;
        if let Some(addr) = config.doh {
            let tls = match &config.doh_tls {
                Some((cert, key)) => Some(doh::tls_acceptor(cert, key).map_err(StartError::Tls)?),
                None => None,
            };
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Bind {
                    what: "DoH",
                    addr,
                    reason: e,
                })?;
            doh_addr = Some(l.local_addr().map_err(|e| StartError::Bind {
                what: "DoH",
                addr,
                reason: e,
            })?);
            tasks.push(tokio::spawn(doh::serve(
                l,
                engine.clone(),
                tls,
                config.doh_max_connections,
                config.doh_idle_timeout,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(tcp::serve(
            tcp,
            engine.clone(),
            config.tcp_max_connections,
            config.tcp_idle_timeout,
            shutdown.clone(),
        )));
        let udp_sockets: Vec<Arc<std::net::UdpSocket>> =
            udp_sockets.into_iter().map(Arc::new).collect();
        udp::spawn(
            udp_sockets.clone(),
            engine.clone(),
            Some(config.rrl),
            tokio::runtime::Handle::current(),
            stop.clone(),
        )
        .map_err(|e| StartError::Bind {
            what: "UDP",
            addr: dns_addr,
            reason: e,
        })?;
        Ok(DnsServer {
            engine,
            dns_addr,
            doh_addr,
            udp_sockets,
            stop,
            shutdown,
            tasks,
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        udp::wake_for_shutdown(&self.udp_sockets);
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}
