//! Daemon configuration: embedded defaults, a TOML file, `VOIKED_*` environment variables and
//! command-line flags, applied in that order (later wins).
//!
//! Environment variables name a key by its path, sections separated by a double underscore:
//! `VOIKED_DATA_DIR`, `VOIKED_API__LISTEN`, `VOIKED_P2P__BOOTSTRAP`. Values are read as TOML
//! (`VOIKED_P2P__MAX_PEERS=32`) or, failing that, as a string; lists also accept a comma-separated
//! string. `VOIKED_LOG` (log filter) and `VOIKED_CONFIG` (config file) are not config keys.
//! Every error names the key it is about. The full reference is `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer};

/// Environment variables that are not config keys.
const NON_KEY_VARS: &[&str] = &["VOIKED_LOG", "VOIKED_CONFIG"];

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory (identity key, admin token, database). Default: `$XDG_DATA_HOME/voiked`,
    /// i.e. `~/.local/share/voiked`.
    pub data_dir: Option<PathBuf>,
    /// `"human"` (default) or `"json"`.
    pub log_format: LogFormat,
    /// How long a graceful shutdown may take before the process exits anyway. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Threads of the async runtime (the event loop, API, sync, Hypermesh, DNS bookkeeping);
    /// 0 = one per core. Default 1: an idle mesh node wakes a second worker for nearly every
    /// message, and record writes are no faster with two (they meet at the store's one writer).
    /// DNS packets, the store, WebAssembly runs and compiles have threads of their own.
    pub worker_threads: usize,
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub sync: SyncConfig,
    pub hypermesh: HypermeshConfig,
    pub dns: DnsConfig,
    pub grid: GridConfig,
}

/// Largest `worker_threads`.
pub const MAX_WORKER_THREADS: usize = 256;

/// `[grid]`: the VVM (WebAssembly runtime) and the grid job scheduler.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridConfig {
    /// Run grid jobs on this node. Default true.
    pub enabled: bool,
    /// Length of a segment claim's lease; the runner renews it every third. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Segments this node runs at once; 0 = one per core. Default 0.
    pub max_parallel: usize,
    /// WebAssembly instances the runtime's pool holds (an upper bound on concurrent runs).
    /// Default 64.
    pub max_instances: u32,
    /// Linear memory any one job may use on this node, in bytes; a job's larger
    /// `memoryBytes` is lowered to this. Default 268435456 (256 MiB).
    pub max_memory_bytes: u64,
    /// Longest a module may take to compile. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub compile_timeout: Duration,
    /// `[grid.module_limits]`: bounds on a module's shape, checked before it is compiled (at
    /// upload, and on a runner that fetched it); a refusal names the key and the value.
    /// `max_functions` (imported and defined) default 10000, `max_function_bytes` default
    /// 262144, `max_locals` (per function) default 10000, `max_nesting_depth` (control
    /// blocks in one function) default 512. Each must be at least 1.
    pub module_limits: voike_runtime::ModuleLimits,
    /// What one job's scratch directory may hold, in bytes; past it the job fails as
    /// `scratch_quota`. Default 67108864 (64 MiB).
    pub scratch_quota_bytes: u64,
    /// How long finished jobs stay in the live state after the hour they were submitted in
    /// ends; a job still unfinished after twice this is dropped too. Their ledger entries stay.
    /// Applies to the jobs this node holds, whether or not it runs jobs. Default `"24h"`
    /// (between 1s and 30 days).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            enabled: true,
            lease: Duration::from_secs(10),
            max_parallel: 0,
            max_instances: 64,
            max_memory_bytes: 256 << 20,
            compile_timeout: Duration::from_secs(30),
            module_limits: voike_runtime::ModuleLimits::default(),
            scratch_quota_bytes: 64 << 20,
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl GridConfig {
    /// The VVM settings these give, with the compilation cache under `data_dir`.
    pub fn runtime_config(&self, data_dir: &std::path::Path) -> voike_runtime::RuntimeConfig {
        voike_runtime::RuntimeConfig {
            max_module_bytes: voike_protocol::sync::MAX_MODULE_BYTES,
            module_limits: self.module_limits,
            max_scratch_bytes: self.scratch_quota_bytes,
            compile_timeout: self.compile_timeout,
            max_instances: self.max_instances,
            max_memory_bytes: self.max_memory_bytes,
            cache_dir: Some(data_dir.join("wasm-cache")),
            ..voike_runtime::RuntimeConfig::default()
        }
    }
}

/// `[dns]`: the DNS, DoH and SNRL listeners.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP listen address. Default `127.0.0.1:1053`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// DNS-over-HTTPS listen address; `"off"` turns DoH off. Default `127.0.0.1:8053`.
    pub doh: String,
    /// PEM certificate chain for DoH over TLS (with `doh_key`); plain HTTP/1.1 and h2c without.
    pub doh_cert: Option<PathBuf>,
    /// PEM private key for `doh_cert`.
    pub doh_key: Option<PathBuf>,
    /// The mesh's own domain: nodes register `<node>.nodes.<mesh_domain>` and the service
    /// `voiked.<mesh_domain>`. Default `"voike.internal."`.
    pub mesh_domain: String,
    /// Addresses this node registers for itself; default: the IP addresses of its p2p listeners.
    #[serde(deserialize_with = "ip_addrs")]
    pub advertise: Vec<std::net::IpAddr>,
    /// UDP worker threads; 0 = one per core. Default 0.
    pub udp_workers: usize,
    /// Forward names outside the mesh zones to `upstreams`. Default true.
    pub forward: bool,
    /// Upstream resolvers (`IP` or `IP:PORT`); empty = the nameservers in /etc/resolv.conf.
    #[serde(deserialize_with = "string_list")]
    pub upstreams: Vec<String>,
    /// How long one upstream may take before the next is tried. Default `"2s"`.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Forwarded answers kept. Default 10000.
    pub cache_size: usize,
    /// Longest time a forwarded answer is fresh, whatever its TTL. Default `"1d"`.
    #[serde(with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    /// How long past its TTL a forwarded answer may be served while upstreams fail (RFC 8767).
    /// Default `"1d"`; `"0s"` turns serve-stale off.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// UDP responses per second per client prefix (response-rate limiting); 0 = off. Default 200.
    pub rrl_rate: u32,
    /// Every n-th limited response is sent truncated instead of dropped; 0 = never. Default 2.
    pub rrl_slip: u32,
    /// IPv4 prefix length RRL groups clients by. Default 24.
    pub rrl_ipv4_prefix: u8,
    /// IPv6 prefix length RRL groups clients by. Default 56.
    pub rrl_ipv6_prefix: u8,
    /// Leave loopback clients (this host's stub resolvers) out of RRL. Default true.
    pub rrl_exempt_loopback: bool,
    /// Concurrent TCP connections. Default 256.
    pub tcp_max_connections: usize,
    /// A TCP connection idle this long is closed. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Concurrent DoH connections. Default 256.
    pub doh_max_connections: usize,
    /// A DoH connection idle this long is closed. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub doh_idle_timeout: Duration,
    /// TTL of SNRL answers (DNS and `/snrl/resolve`), in seconds. Default 10.
    pub snrl_ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1053)),
            doh: "127.0.0.1:8053".into(),
            doh_cert: None,
            doh_key: None,
            mesh_domain: "voike.internal.".into(),
            advertise: Vec::new(),
            udp_workers: 0,
            forward: true,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            cache_size: 10_000,
            cache_max_ttl: Duration::from_secs(86_400),
            max_stale: Duration::from_secs(86_400),
            rrl_rate: 200,
            rrl_slip: 2,
            rrl_ipv4_prefix: 24,
            rrl_ipv6_prefix: 56,
            rrl_exempt_loopback: true,
            tcp_max_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            doh_max_connections: 256,
            doh_idle_timeout: Duration::from_secs(30),
            snrl_ttl: 10,
        }
    }
}

impl DnsConfig {
    /// The DoH address, `None` when off (checked by `Config::check`).
    pub fn doh_addr(&self) -> Option<SocketAddr> {
        let v = self.doh.trim();
        if v.eq_ignore_ascii_case("off") || v.is_empty() {
            return None;
        }
        v.parse().ok()
    }

    /// The upstream resolvers: configured, else from `resolv_conf` text.
    pub fn upstream_addrs(&self, resolv_conf: &str) -> Result<Vec<SocketAddr>, String> {
        if self.upstreams.is_empty() {
            return Ok(resolv_conf
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
                .collect());
        }
        self.upstreams
            .iter()
            .map(|u| {
                u.parse::<SocketAddr>()
                    .or_else(|_| {
                        u.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("{u:?} is not an IP address or IP:PORT"))
            })
            .collect()
    }
}

/// `[hypermesh]`: health gossip, failure detection and routing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypermeshConfig {
    /// This node's region, advertised in health reports and used for route affinity.
    pub region: String,
    /// Capabilities this node advertises (e.g. `["http", "gpu"]`).
    #[serde(deserialize_with = "string_list")]
    pub capabilities: Vec<String>,
    /// Longest time between two health reports (the keep-alive heartbeat). Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// PerfWatch's sampling interval while values move. Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub sample_fast: Duration,
    /// PerfWatch's sampling interval when idle (it backs off to this). Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub sample_slow: Duration,
    /// Phi at which a silent peer becomes suspect. Default 5.
    pub suspect_phi: f64,
    /// Phi at which a suspect peer is declared dead. Default 12.
    pub dead_phi: f64,
    /// Least silence before a peer can be declared dead. Default `"15s"`.
    #[serde(with = "humantime_serde")]
    pub min_dead: Duration,
    /// CPU or memory percentage that `overload_predicted` looks ahead to. Default 90.
    pub overload_limit_pct: f64,
    /// How far ahead `overload_predicted` looks. Default `"5m"`.
    #[serde(with = "humantime_serde")]
    pub overload_horizon: Duration,
    /// Clock offset from the median of the peers beyond which this node reports its clock as
    /// skewed: `sync.max_future_skew` (set by the daemon, not configured here).
    #[serde(skip)]
    pub clock_bound: Duration,
}

impl Default for HypermeshConfig {
    fn default() -> Self {
        HypermeshConfig {
            region: String::new(),
            capabilities: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            sample_fast: Duration::from_secs(1),
            sample_slow: Duration::from_secs(30),
            suspect_phi: 5.0,
            dead_phi: 12.0,
            min_dead: Duration::from_secs(15),
            overload_limit_pct: 90.0,
            overload_horizon: Duration::from_secs(300),
            clock_bound: Duration::from_secs(60),
        }
    }
}

/// `[sync]`: replication of documents and the ledger between members.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Mean interval of anti-entropy rounds with a random connected member (jittered ±20%).
    /// Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// How far ahead of the local clock a remote ledger entry's timestamp may be. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Sync requests a peer may send per second (sustained). Default 50.
    pub peer_request_rate: u32,
    /// Sync requests a peer may send in a burst. Default 200.
    pub peer_request_burst: u32,
    /// How long a sync request may wait for its answer. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            anti_entropy_interval: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(60),
            peer_request_rate: 50,
            peer_request_burst: 200,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[p2p]`: the libp2p swarm.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Listen multiaddrs. Default: TCP and QUIC on `0.0.0.0` port 4747. Port 0 picks a free port.
    #[serde(deserialize_with = "multiaddrs")]
    pub listen: Vec<Multiaddr>,
    /// Extra bootstrap peers to dial, besides those in a join ticket and known members.
    #[serde(deserialize_with = "multiaddrs")]
    pub bootstrap: Vec<Multiaddr>,
    /// A join ticket (`voike1...`), used on first start only.
    pub join: Option<String>,
    /// Longest wait between two dial attempts to an unreachable peer. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub redial_max: Duration,
    /// How long a new connection may stay without a valid membership proof. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Interval of libp2p pings on each connection (RTT measurement). Default `"15s"`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A ping not answered within this closes its connection (the member is then redialed), so
    /// a dead link is noticed instead of waiting on TCP retransmissions. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Most members this node dials to keep connected (inbound connections are not counted
    /// against it). Default 64.
    pub max_peers: usize,
    /// Addresses to advertise to members besides the listen addresses and the external
    /// addresses AutoNAT confirmed (e.g. a port forward on the router). Default none.
    #[serde(deserialize_with = "multiaddrs")]
    pub external_addresses: Vec<Multiaddr>,
    /// Ask the router for port mappings (UPnP IGD) for the listen ports, so that members reach
    /// this node directly through its NAT. Only tried when a listener is on a private IPv4
    /// address or `0.0.0.0` (nothing to map otherwise). Default true.
    pub port_mapping: bool,
    /// `[p2p.relay]`: relaying for members behind NAT, and using member relays.
    pub relay: RelayConfig,
}

/// `[p2p.relay]`: every member is a circuit-relay v2 server for members only (non-members'
/// requests are never looked at), and a node AutoNAT found behind NAT reserves slots on members
/// it reached directly, so that others can reach it through them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Relay for other members. Default true.
    pub serve: bool,
    /// Reserve slots on member relays while AutoNAT says this node is behind NAT. Default true.
    pub reserve: bool,
    /// Relays to hold reservations on at once. Default 2.
    pub relays: usize,
    /// Reservations this node holds for others at once. Default 128.
    pub max_reservations: usize,
    /// Circuits this node relays at once, and per peer. Default 64 and 8.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// How long a reservation lasts before the client renews it. Default `"1h"`.
    #[serde(with = "humantime_serde")]
    pub reservation_duration: Duration,
    /// Longest life of one relayed connection (it is then redialed). Default `"1h"`.
    #[serde(with = "humantime_serde")]
    pub circuit_duration: Duration,
    /// Most bytes one relayed connection carries, both ways. Default 1 GiB.
    pub circuit_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            serve: true,
            reserve: true,
            relays: 2,
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            reservation_duration: Duration::from_secs(3600),
            circuit_duration: Duration::from_secs(3600),
            circuit_bytes: 1 << 30,
        }
    }
}

/// `[api]`: the admin HTTP API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address. Default `127.0.0.1:8080`. Must be a loopback address unless
    /// `allow_remote` is set.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` address. Default false.
    pub allow_remote: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: None,
            log_format: LogFormat::Human,
            shutdown_timeout: Duration::from_secs(10),
            worker_threads: 1,
            p2p: P2pConfig::default(),
            api: ApiConfig::default(),
            sync: SyncConfig::default(),
            hypermesh: HypermeshConfig::default(),
            dns: DnsConfig::default(),
            grid: GridConfig::default(),
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4747"
                    .parse()
                    .expect("valid default multiaddr"),
                "/ip4/0.0.0.0/udp/4747/quic-v1"
                    .parse()
                    .expect("valid default multiaddr"),
            ],
            bootstrap: Vec::new(),
            join: None,
            redial_max: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            max_peers: 64,
            external_addresses: Vec::new(),
            port_mapping: true,
            relay: RelayConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_remote: false,
        }
    }
}

/// Command-line values that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Vec<Multiaddr>,
    pub api: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    pub doh: Option<String>,
    pub join: Option<String>,
    pub bootstrap: Vec<Multiaddr>,
    pub log_format: Option<LogFormat>,
}

impl Overrides {
    /// The config keys these flags set.
    fn keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.data_dir.is_some() {
            keys.push("data_dir");
        }
        if !self.listen.is_empty() {
            keys.push("p2p.listen");
        }
        if self.api.is_some() {
            keys.push("api.listen");
        }
        if self.dns.is_some() {
            keys.push("dns.listen");
        }
        if self.doh.is_some() {
            keys.push("dns.doh");
        }
        if self.join.is_some() {
            keys.push("p2p.join");
        }
        if !self.bootstrap.is_empty() {
            keys.push("p2p.bootstrap");
        }
        if self.log_format.is_some() {
            keys.push("log_format");
        }
        keys
    }
}

/// A configuration error; the message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        /// 1-based, as editors count.
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid value for key `{key}` ({origin}): {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
    #[error("environment variable {var} is not valid UTF-8")]
    Env { var: String },
}

impl Config {
    /// Loads defaults, then `file`, then `VOIKED_*` variables from `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| {
                    let (line, column) = line_column(&text, e.span().map_or(0, |s| s.start));
                    ConfigError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        column,
                        message: e.message().trim_end().to_string(),
                    }
                })?
            }
            None => toml::Table::new(),
        };
        let mut env_keys = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("VOIKED_") else {
                continue;
            };
            if NON_KEY_VARS.contains(&var.as_str()) || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            env_keys.push((path.join("."), var.clone()));
            insert_path(&mut table, &path, parse_env_value(&value));
        }
        let flag_keys = overrides.keys();
        let origin_of = |key: &str| -> String {
            if flag_keys.contains(&key) {
                return "from a command-line flag".to_string();
            }
            env_keys
                .iter()
                .find(|(k, _)| {
                    key == k
                        || key.starts_with(&format!("{k}["))
                        || key.starts_with(&format!("{k}."))
                })
                .map(|(_, var)| format!("from environment variable {var}"))
                .unwrap_or_else(|| match file {
                    Some(p) => format!("from config file {}", p.display()),
                    None => "from defaults".to_string(),
                })
        };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Key {
                    origin: origin_of(&key),
                    message: with_duration_hint(e.into_inner().message()),
                    key,
                }
            })?;
        config.apply(overrides);
        config.check().map_err(|(key, message)| ConfigError::Key {
            origin: origin_of(key),
            key: key.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) {
        if let Some(d) = o.data_dir {
            self.data_dir = Some(d);
        }
        if !o.listen.is_empty() {
            self.p2p.listen = o.listen;
        }
        if let Some(a) = o.api {
            self.api.listen = a;
        }
        if let Some(d) = o.dns {
            self.dns.listen = d;
        }
        if let Some(d) = o.doh {
            self.dns.doh = d;
        }
        if let Some(j) = o.join {
            self.p2p.join = Some(j);
        }
        self.p2p.bootstrap.extend(o.bootstrap);
        if let Some(f) = o.log_format {
            self.log_format = f;
        }
    }

    /// Checks rules that types alone do not express.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.p2p.listen.is_empty() {
            return Err((
                "p2p.listen",
                "at least one listen address is required".into(),
            ));
        }
        if !self.api.allow_remote && !self.api.listen.ip().is_loopback() {
            return Err((
                "api.listen",
                format!(
                    "{} is not a loopback address; the admin API is for local use (set api.allow_remote = true to override)",
                    self.api.listen
                ),
            ));
        }
        if self.grid.retention < Duration::from_secs(1)
            || self.grid.retention > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(("grid.retention", "must be between 1s and 30 days".into()));
        }
        if self.p2p.redial_max < Duration::from_secs(1) {
            return Err(("p2p.redial_max", "must be at least 1s".into()));
        }
        if self.p2p.handshake_timeout < Duration::from_millis(100) {
            return Err(("p2p.handshake_timeout", "must be at least 100ms".into()));
        }
        if self.p2p.ping_interval < Duration::from_secs(1) {
            return Err(("p2p.ping_interval", "must be at least 1s".into()));
        }
        if self.p2p.ping_timeout < Duration::from_secs(1) {
            return Err(("p2p.ping_timeout", "must be at least 1s".into()));
        }
        if self.p2p.max_peers == 0 {
            return Err(("p2p.max_peers", "must be at least 1".into()));
        }
        if self.sync.anti_entropy_interval < Duration::from_millis(100) {
            return Err((
                "sync.anti_entropy_interval",
                "must be at least 100ms".into(),
            ));
        }
        if self.sync.max_future_skew < Duration::from_secs(1) {
            return Err(("sync.max_future_skew", "must be at least 1s".into()));
        }
        if self.sync.peer_request_rate == 0 {
            return Err(("sync.peer_request_rate", "must be at least 1".into()));
        }
        if self.sync.peer_request_burst == 0 {
            return Err(("sync.peer_request_burst", "must be at least 1".into()));
        }
        if self.sync.request_timeout < Duration::from_millis(100) {
            return Err(("sync.request_timeout", "must be at least 100ms".into()));
        }
        let h = &self.hypermesh;
        if h.heartbeat_interval < Duration::from_millis(100) {
            return Err((
                "hypermesh.heartbeat_interval",
                "must be at least 100ms".into(),
            ));
        }
        if h.sample_fast < Duration::from_millis(100) {
            return Err(("hypermesh.sample_fast", "must be at least 100ms".into()));
        }
        if h.sample_slow < h.sample_fast {
            return Err((
                "hypermesh.sample_slow",
                "must be at least hypermesh.sample_fast".into(),
            ));
        }
        if h.suspect_phi.is_nan() || h.suspect_phi <= 0.0 {
            return Err(("hypermesh.suspect_phi", "must be positive".into()));
        }
        if h.dead_phi.is_nan() || h.dead_phi <= h.suspect_phi {
            return Err((
                "hypermesh.dead_phi",
                "must be larger than hypermesh.suspect_phi".into(),
            ));
        }
        if h.min_dead < h.heartbeat_interval {
            return Err((
                "hypermesh.min_dead",
                "must be at least hypermesh.heartbeat_interval".into(),
            ));
        }
        if h.overload_horizon < Duration::from_secs(1) {
            return Err(("hypermesh.overload_horizon", "must be at least 1s".into()));
        }
        if !(1.0..=100.0).contains(&h.overload_limit_pct) {
            return Err((
                "hypermesh.overload_limit_pct",
                "must be between 1 and 100".into(),
            ));
        }
        let d = &self.dns;
        let doh = d.doh.trim();
        if !(doh.eq_ignore_ascii_case("off") || doh.is_empty())
            && doh.parse::<SocketAddr>().is_err()
        {
            return Err((
                "dns.doh",
                format!("{doh:?} is not an address (IP:PORT) or \"off\""),
            ));
        }
        if d.doh_cert.is_some() != d.doh_key.is_some() {
            return Err(("dns.doh_cert", "doh_cert and doh_key go together".into()));
        }
        if voike_protocol::zones::normalize_name("dns.mesh_domain", &d.mesh_domain).is_err()
            || d.mesh_domain.trim().trim_end_matches('.').is_empty()
        {
            return Err((
                "dns.mesh_domain",
                format!("{:?} is not a domain name", d.mesh_domain),
            ));
        }
        if let Err(e) = d.upstream_addrs("") {
            return Err(("dns.upstreams", e));
        }
        if d.upstream_timeout < Duration::from_millis(50) {
            return Err(("dns.upstream_timeout", "must be at least 50ms".into()));
        }
        if d.cache_size == 0 {
            return Err(("dns.cache_size", "must be at least 1".into()));
        }
        if d.rrl_ipv4_prefix == 0 || d.rrl_ipv4_prefix > 32 {
            return Err(("dns.rrl_ipv4_prefix", "must be between 1 and 32".into()));
        }
        if d.rrl_ipv6_prefix == 0 || d.rrl_ipv6_prefix > 128 {
            return Err(("dns.rrl_ipv6_prefix", "must be between 1 and 128".into()));
        }
        if d.tcp_max_connections == 0 {
            return Err(("dns.tcp_max_connections", "must be at least 1".into()));
        }
        if d.doh_max_connections == 0 {
            return Err(("dns.doh_max_connections", "must be at least 1".into()));
        }
        if d.tcp_idle_timeout < Duration::from_millis(100) {
            return Err(("dns.tcp_idle_timeout", "must be at least 100ms".into()));
        }
        if d.doh_idle_timeout < Duration::from_millis(100) {
            return Err(("dns.doh_idle_timeout", "must be at least 100ms".into()));
        }
        if d.snrl_ttl == 0 || d.snrl_ttl > 86_400 {
            return Err(("dns.snrl_ttl", "must be between 1 and 86400".into()));
        }
        let g = &self.grid;
        if g.lease < Duration::from_millis(300) {
            return Err(("grid.lease", "must be at least 300ms".into()));
        }
        if g.max_instances == 0 || g.max_instances > 100_000 {
            return Err(("grid.max_instances", "must be between 1 and 100000".into()));
        }
        if g.max_memory_bytes < 65_536 {
            return Err(("grid.max_memory_bytes", "must be at least 65536".into()));
        }
        if g.compile_timeout < Duration::from_millis(100) {
            return Err(("grid.compile_timeout", "must be at least 100ms".into()));
        }
        let m = &g.module_limits;
        for (key, value) in [
            ("grid.module_limits.max_functions", m.max_functions),
            (
                "grid.module_limits.max_function_bytes",
                m.max_function_bytes,
            ),
            ("grid.module_limits.max_locals", m.max_locals),
            ("grid.module_limits.max_nesting_depth", m.max_nesting_depth),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.shutdown_timeout < Duration::from_millis(100) {
            return Err(("shutdown_timeout", "must be at least 100ms".into()));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err((
                "worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = one per core)"),
            ));
        }
        Ok(())
    }

    /// The runtime's worker threads: `worker_threads`, or one per core for 0.
    pub fn runtime_workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The data directory, from the config or the per-user default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// `$XDG_DATA_HOME/voiked`, or `./voiked-data` when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("voiked"))
        .unwrap_or_else(|| PathBuf::from("voiked-data"))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A value error; a duration given as a bare number says how to write one (`5` → `"5s"`).
fn with_duration_hint(message: &str) -> String {
    if !message.contains("expected a duration") {
        return message.to_string();
    }
    let example = message
        .strip_prefix("invalid type: integer `")
        .and_then(|r| r.split('`').next())
        .map_or_else(
            || "\"1500ms\" or \"2s\"".to_string(),
            |n| format!("\"{n}s\""),
        );
    format!("{message}; write it with a unit, e.g. {example} (units: ms, s, m, h, d)")
}

fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                insert_path(t, rest, value);
            }
        }
    }
}

/// A list of multiaddrs, given as a TOML array or a comma-separated string.
/// A list given as a TOML array or as one comma-separated string (environment variables).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

fn parsed_list<'de, D: Deserializer<'de>, T: std::str::FromStr>(
    d: D,
    what: &str,
) -> Result<Vec<T>, D::Error>
where
    T::Err: std::fmt::Display,
{
    string_list(d)?
        .into_iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| serde::de::Error::custom(format!("{s:?} is not {what}: {e}")))
        })
        .collect()
}

fn multiaddrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
    parsed_list(d, "a multiaddr")
}

fn ip_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<std::net::IpAddr>, D::Error> {
    parsed_list(d, "an IP address")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::load(None, env(&[]), Overrides::default()).expect("defaults");
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.p2p.listen.len(), 2);
        assert!(c.p2p.listen[0].to_string().ends_with("/tcp/4747"));
        assert!(c.p2p.listen[1].to_string().ends_with("/udp/4747/quic-v1"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let f = file(
            "data_dir = \"/from/file\"\n[api]\nlisten = \"127.0.0.1:9000\"\n[p2p]\nmax_peers = 5\n",
        );
        let c = Config::load(
            Some(f.path()),
            env(&[
                ("VOIKED_API__LISTEN", "127.0.0.1:9001"),
                ("VOIKED_P2P__MAX_PEERS", "7"),
                ("HOME", "/x"),
            ]),
            Overrides {
                api: Some("127.0.0.1:9002".parse().expect("addr")),
                ..Overrides::default()
            },
        )
        .expect("load");
        assert_eq!(c.data_dir, Some(PathBuf::from("/from/file")));
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:9002");
        assert_eq!(c.p2p.max_peers, 7);
    }

    #[test]
    fn env_lists_accept_commas() {
        let c = Config::load(
            None,
            env(&[(
                "VOIKED_P2P__LISTEN",
                "/ip4/127.0.0.1/tcp/0, /ip4/127.0.0.1/udp/0/quic-v1",
            )]),
            Overrides::default(),
        )
        .expect("load");
        assert_eq!(c.p2p.listen.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let f = file("[p2p]\nlisten = [\"not-a-multiaddr\"]\n");
        let e = Config::load(Some(f.path()), env(&[]), Overrides::default()).expect_err("bad");
        assert!(e.to_string().contains("`p2p.listen`"), "{e}");

        let f = file("[api]\nlistn = \"127.0.0.1:1\"\n");
        let e = Config::load(Some(f.path()), env(&[]), Overrides::default()).expect_err("bad");
        assert!(e.to_string().contains("listn"), "{e}");

        let e = Config::load(
            None,
            env(&[("VOIKED_SHUTDOWN_TIMEOUT", "soon")]),
            Overrides::default(),
        )
        .expect_err("bad");
        assert!(e.to_string().contains("`shutdown_timeout`"), "{e}");
        assert!(e.to_string().contains("VOIKED_SHUTDOWN_TIMEOUT"), "{e}");

        for bad in ["-1", "two", "100000"] {
            let e = Config::load(
                None,
                env(&[("VOIKED_WORKER_THREADS", bad)]),
                Overrides::default(),
            )
            .expect_err("bad");
            assert!(e.to_string().contains("`worker_threads`"), "{bad}: {e}");
        }
        let c = Config::load(
            None,
            env(&[("VOIKED_WORKER_THREADS", "0")]),
            Overrides::default(),
        )
        .expect("0 is one per core");
        assert!(c.runtime_workers() >= 1);
        let c = Config::load(None, env(&[]), Overrides::default()).expect("defaults");
        assert_eq!(c.runtime_workers(), 1);

        let f = file("[api]\nlisten = \"0.0.0.0:8080\"\n");
        let e = Config::load(Some(f.path()), env(&[]), Overrides::default()).expect_err("bad");
        assert!(e.to_string().contains("`api.listen`"), "{e}");

        let f = file("this is [ not toml");
        let e = Config::load(Some(f.path()), env(&[]), Overrides::default()).expect_err("bad");
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }
}
