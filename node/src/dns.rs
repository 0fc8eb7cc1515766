//! DNS and SNRL on the node: feeds the `voike-dns` listeners from the replica, ranks and signs
//! SNRL answers, and registers this node in the mesh's own zone.
//!
//! Every durable document change (local or merged) rebuilds the served snapshot: the user
//! zones, plus the mesh zone (`dns.mesh_domain`) holding `<node>.nodes.<mesh_domain>` for every
//! node that registered itself. SOA serials are per node: the Unix time of the last change this
//! node saw in the zone, and at least one more than the previous serial.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use voike_dns::{
    DnsServer, Engine, RecordData, ServiceAnswer, Services, Snapshot, ZoneData, ZoneEdit,
};
use voike_protocol::endpoints::EndpointInput;
use voike_protocol::snrl::{self, SignedAnswer};

use crate::config::Config;
use crate::hypermesh::HypermeshHandle;
use crate::state::{ServedChanges, StateHandle};
use crate::swarm::SwarmHandle;

/// TTL of the `<node>.nodes.<mesh_domain>` records.
const NODE_RECORD_TTL: u32 = 60;
/// How long a signed DNS answer for a service is reused before it is ranked and signed again.
const DNS_ANSWER_REUSE: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long after a document change the DNS snapshot is rebuilt, so that a burst of changes
/// makes one snapshot.
const SNAPSHOT_COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

pub(crate) fn lower_fqdn(s: &str) -> String {
    let mut s = s.trim().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// Ranks and signs SNRL answers.
pub struct Snrl {
    state: StateHandle,
    hypermesh: HypermeshHandle,
    key: Keypair,
    ttl: u32,
    /// `dns.mesh_domain`, lower case and absolute: SRV targets are `<node>.nodes.<mesh_domain>`.
    mesh_domain: String,
    dns_answers: Mutex<HashMap<String, (Instant, Option<ServiceAnswer>)>>,
}

impl std::fmt::Debug for Snrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snrl")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Snrl {
    /// `POST /snrl/resolve`: candidates for `query`, ranked and signed by this node.
    pub fn resolve(
        &self,
        query: &snrl::Query,
    ) -> Result<SignedAnswer, voike_protocol::signing::SigningError> {
        let endpoints = self.state.served_endpoints();
        let health = self.hypermesh.node_health();
        let candidates = snrl::rank(&endpoints, query, &health);
        SignedAnswer::sign(&self.key, query, candidates, now_ms(), self.ttl)
    }
}

impl Services for Snrl {
    fn answer(&self, domain: &str) -> Option<ServiceAnswer> {
        let mut cache = self.dns_answers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ans)) = cache.get(domain)
            && at.elapsed() < DNS_ANSWER_REUSE
        {
            return ans.clone();
        }
        let query = snrl::Query {
            domain: domain.to_string(),
            client: snrl::ClientInfo::default(),
        };
        let ans = match self.resolve(&query) {
            Ok(signed) => Some(ServiceAnswer {
                addrs: {
                    // Ranked order, each address once (endpoints may share an address).
                    let mut seen = std::collections::HashSet::new();
                    signed
                        .candidates
                        .iter()
                        .filter_map(|c| c.address.parse::<IpAddr>().ok())
                        .filter(|ip| seen.insert(*ip))
                        .collect()
                },
                srv: srv_targets(&signed.candidates, &self.mesh_domain),
                txt: format!(
                    "snrl=v1 signer={} issued={} ttl={} sig={}",
                    signed.signer, signed.issued_at, signed.ttl, signed.signature
                ),
                ttl: signed.ttl,
            }),
            Err(e) => {
                warn!(error = %e, "cannot sign an SNRL answer");
                None
            }
        };
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(domain.to_string(), (Instant::now(), ans.clone()));
        ans
    }
}

/// The SRV records (RFC 2782) of a service's ranked candidates: `0 WEIGHT PORT
/// <node>.nodes.<mesh_domain>` for each node and port, in rank order. Every target has the same
/// priority, so that clients spread load by the endpoints' weights (1 to 1000); an endpoint's
/// own address is in the A/AAAA answer of the service name, the target names the node that
/// registered it.
fn srv_targets(candidates: &[snrl::Candidate], mesh_domain: &str) -> Vec<voike_dns::ServiceTarget> {
    let mut seen = std::collections::HashSet::new();
    candidates
        .iter()
        .filter(|c| seen.insert((c.node.clone(), c.port)))
        .map(|c| voike_dns::ServiceTarget {
            priority: 0,
            weight: u16::try_from(c.weight).unwrap_or(u16::MAX),
            port: c.port,
            target: format!("{}.nodes.{mesh_domain}", c.node.to_ascii_lowercase()),
        })
        .collect()
}

/// Remembers each zone's content fingerprint and serial.
#[derive(Debug, Default)]
struct Serials {
    zones: HashMap<String, (u64, u32)>,
}

impl Serials {
    fn serial(&mut self, domain: &str, records: &[RecordData]) -> u32 {
        let mut lines: Vec<String> = records
            .iter()
            .map(|r| format!("{}\0{}\0{}\0{}", r.name, r.rtype, r.value, r.ttl))
            .collect();
        lines.sort();
        let mut h = Sha256::new();
        for l in &lines {
            h.update(l.as_bytes());
            h.update([1]);
        }
        let d: [u8; 32] = h.finalize().into();
        let fingerprint = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let now = (now_ms() / 1000) as u32;
        let entry = self
            .zones
            .entry(domain.to_string())
            .or_insert((fingerprint, now));
        if entry.0 != fingerprint {
            entry.0 = fingerprint;
            entry.1 = now.max(entry.1.wrapping_add(1));
        }
        entry.1
    }

    /// The next serial of `domain`, after a change read record by record.
    fn bump(&mut self, domain: &str) -> u32 {
        let now = (now_ms() / 1000) as u32;
        let entry = self.zones.entry(domain.to_string()).or_insert((0, now));
        // The fingerprint is not known without reading the zone: the next full build sees a
        // change and moves the serial once more, which is harmless.
        entry.0 = 0;
        entry.1 = now.max(entry.1.wrapping_add(1));
        entry.1
    }
}

/// What the node's DNS serves and how.
#[derive(Debug)]
pub struct NodeDns {
    pub server: DnsServer,
    pub snrl: Arc<Snrl>,
    mesh_domain: String,
    nameserver: String,
    node_id: String,
    /// The document version the served snapshot was built from.
    published: tokio::sync::watch::Sender<u64>,
}

impl NodeDns {
    pub fn engine(&self) -> &Arc<Engine> {
        self.server.engine()
    }

    /// `dns.mesh_domain`, lower case and absolute.
    pub fn mesh_domain(&self) -> &str {
        &self.mesh_domain
    }

    /// Whether DNS answers `service` (a normalised name): it lies in the mesh domain or in a
    /// zone this node serves. SNRL (`/snrl/resolve`) answers every registered service either way.
    pub fn answers_service(&self, state: &StateHandle, service: &str) -> bool {
        use voike_protocol::zones::is_within;
        is_within(service, &self.mesh_domain)
            || state
                .served_zones()
                .iter()
                .any(|z| !is_within(&z.domain, &self.mesh_domain) && is_within(service, &z.domain))
    }

    /// The service every node registers itself under.
    pub fn node_service(&self) -> String {
        format!("voiked.{}", self.mesh_domain)
    }

    /// BIND text of the zone with id or domain `zone`.
    pub async fn export(&self, state: &StateHandle, zone: &str) -> Option<String> {
        // Read your writes: wait (briefly) for the snapshot of the current documents.
        let want = *state.watch_served_docs().borrow();
        let mut rx = self.published.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            rx.wait_for(|v| *v >= want),
        )
        .await;
        let wanted = lower_fqdn(zone);
        let domain = match state.zone(zone) {
            Some(z) => z.domain,
            None if wanted == self.mesh_domain => self.mesh_domain.clone(),
            None => {
                state
                    .zones()
                    .into_iter()
                    .find(|z| z.domain == wanted)?
                    .domain
            }
        };
        voike_dns::export::zone_file(&self.engine().snapshot(), &domain)
    }
}

/// What the DNS task keeps between snapshot updates.
#[derive(Default)]
struct Served {
    serials: Serials,
    /// The user zones of the last full build, by id: their domains.
    zones: HashMap<String, String>,
}

fn record_data(r: voike_protocol::zones::Record) -> RecordData {
    RecordData {
        id: r.id,
        name: r.name,
        rtype: r.rtype,
        value: r.value,
        ttl: u32::try_from(r.ttl).unwrap_or(u32::MAX),
    }
}

/// The mesh zone (`<node>.nodes.<mesh_domain>` for every node that registered itself) and the
/// SNRL service names, from the endpoints.
fn mesh_zone(state: &StateHandle, mesh_domain: &str) -> (ZoneData, Vec<String>) {
    let endpoints = state.served_endpoints();
    let node_service = format!("voiked.{mesh_domain}");
    let records: Vec<RecordData> = endpoints
        .iter()
        .filter(|e| e.service == node_service)
        .filter_map(|e| {
            let rtype = match e.address.parse::<IpAddr>().ok()? {
                IpAddr::V4(_) => "A",
                IpAddr::V6(_) => "AAAA",
            };
            Some(RecordData {
                id: e.id.clone(),
                name: format!("{}.nodes.{mesh_domain}", e.node.to_ascii_lowercase()),
                rtype: rtype.into(),
                value: e.address.clone(),
                ttl: NODE_RECORD_TTL,
            })
        })
        .collect();
    let services: Vec<String> = endpoints
        .iter()
        .map(|e| e.service.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let zone = ZoneData {
        domain: mesh_domain.to_string(),
        serial: 0,
        records,
    };
    (zone, services)
}

/// Reads every served zone and compiles a snapshot from scratch.
fn build_snapshot(
    generation: u64,
    state: &StateHandle,
    mesh_domain: &str,
    nameserver: &str,
    served: &mut Served,
) -> Snapshot {
    state.metrics().dns_snapshot_builds.inc();
    let mut zones: Vec<ZoneData> = Vec::new();
    served.zones.clear();
    for z in state.served_zones() {
        // The mesh domain is the nodes' own namespace: a zone at or under it (merged from a
        // node that did not enforce the rule) is never served.
        if voike_protocol::zones::is_within(&z.domain, mesh_domain) {
            debug!(zone = %z.id, domain = %z.domain, "zone inside the mesh domain not served");
            continue;
        }
        let records: Vec<RecordData> = state
            .records(&z.id)
            .unwrap_or_default()
            .into_iter()
            .map(record_data)
            .collect();
        served.zones.insert(z.id.clone(), z.domain.clone());
        zones.push(ZoneData {
            domain: z.domain,
            serial: 0,
            records,
        });
    }
    let (mesh, services) = mesh_zone(state, mesh_domain);
    zones.push(mesh);
    for z in &mut zones {
        z.serial = served.serials.serial(&z.domain, &z.records);
    }
    let snapshot = Snapshot::build(generation, &zones, nameserver, &services);
    log_unserved(&snapshot);
    snapshot
}

fn log_unserved(snapshot: &Snapshot) {
    for s in snapshot.skipped() {
        debug!(error = %s, "record not served");
    }
    // Counted in `voike_dns_records_withheld` when the snapshot is published.
    for w in snapshot.withheld() {
        debug!(name = %w.name, rtype = %w.rtype, value = %w.value, reason = w.reason, "record withheld");
    }
}

/// The snapshot after `changes`: records changed in a served zone are read one by one and
/// edited into `current`, so a write costs the same in a zone of ten records or of a hundred
/// thousand; anything else (a zone created or changed beyond its records, a grant or a
/// revocation) reads everything again.
fn update_snapshot(
    generation: u64,
    state: &StateHandle,
    mesh_domain: &str,
    nameserver: &str,
    served: &mut Served,
    current: &Snapshot,
    changes: ServedChanges,
) -> Snapshot {
    if changes.all || !changes.zones.is_empty() {
        return build_snapshot(generation, state, mesh_domain, nameserver, served);
    }
    let mut by_zone: HashMap<&str, Vec<(String, Option<RecordData>)>> = HashMap::new();
    for (zone, id) in &changes.records {
        // Records of a zone that is not served (inside the mesh domain, or losing a claim)
        // change nothing served.
        if served.zones.contains_key(zone) {
            let now = state.record(zone, id).map(record_data);
            by_zone
                .entry(zone.as_str())
                .or_default()
                .push((id.clone(), now));
        }
    }
    let mut edits = Vec::new();
    for (zone, records) in by_zone {
        let domain = served.zones[zone].clone();
        if !current.has_zone(&domain) {
            return build_snapshot(generation, state, mesh_domain, nameserver, served);
        }
        let serial = served.serials.bump(&domain);
        edits.push(ZoneEdit::Records {
            domain,
            serial,
            records,
        });
    }
    let mut services = None;
    if changes.endpoints {
        let (mut mesh, names) = mesh_zone(state, mesh_domain);
        mesh.serial = served.serials.serial(&mesh.domain, &mesh.records);
        edits.push(ZoneEdit::Replace(mesh));
        services = Some(names);
    }
    // Counted once it is an edit (a zone no longer served falls back to a full build above).
    state.metrics().dns_snapshot_edits.inc();
    let snapshot = current.edit(generation, edits, services.as_deref());
    log_unserved(&snapshot);
    snapshot
}

/// Starts the DNS listeners and the task that keeps them fed.
pub async fn start(
    config: &Config,
    key: Keypair,
    state: StateHandle,
    hypermesh: HypermeshHandle,
    metrics: &crate::metrics::Metrics,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> anyhow::Result<NodeDns> {
    let d = &config.dns;
    let mesh_domain = lower_fqdn(&d.mesh_domain);
    let node_id = key.public().to_peer_id().to_string();
    let nameserver = format!("{}.nodes.{mesh_domain}", node_id.to_ascii_lowercase());
    let forward = if d.forward {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams = d
            .upstream_addrs(&resolv)
            .map_err(|e| anyhow::anyhow!("dns.upstreams: {e}"))?
            .into_iter()
            .filter(|u| *u != d.listen)
            .collect::<Vec<_>>();
        if upstreams.is_empty() {
            warn!(
                "no upstream resolvers (dns.upstreams empty and none in /etc/resolv.conf): names outside the mesh zones are refused"
            );
        }
        Some(voike_dns::ForwardConfig {
            upstreams,
            timeout: d.upstream_timeout,
            cache_size: d.cache_size,
            max_ttl: d.cache_max_ttl,
            max_stale: d.max_stale,
        })
    } else {
        None
    };
    let snrl = Arc::new(Snrl {
        state: state.clone(),
        hypermesh,
        key,
        ttl: d.snrl_ttl,
        mesh_domain: mesh_domain.clone(),
        dns_answers: Mutex::new(HashMap::new()),
    });
    let dns_metrics = Arc::new(voike_dns::Metrics::default());
    metrics.register_with(|r| dns_metrics.register(r));
    let mut served = Served::default();
    // Subscribed before the first build, so that a change made while it builds is rebuilt.
    // Only the documents DNS serves from: a job claim or lease renewal rebuilds nothing.
    let mut docs_rx = state.watch_served_docs();
    let first_version = *docs_rx.borrow_and_update();
    // Everything is read now: what changed from here on is edited in.
    let _ = state.take_served_changes();
    let first = build_snapshot(1, &state, &mesh_domain, &nameserver, &mut served);
    let engine = Arc::new(Engine::new(first, snrl.clone(), forward, dns_metrics));
    let server = DnsServer::start(
        voike_dns::Config {
            listen: d.listen,
            doh: d.doh_addr(),
            doh_tls: d.doh_cert.clone().zip(d.doh_key.clone()),
            udp_workers: d.udp_workers,
            rrl: voike_dns::RrlConfig {
                rate: d.rrl_rate,
                slip: d.rrl_slip,
                ipv4_prefix: d.rrl_ipv4_prefix,
                ipv6_prefix: d.rrl_ipv6_prefix,
                exempt_loopback: d.rrl_exempt_loopback,
            },
            tcp_max_connections: d.tcp_max_connections,
            tcp_idle_timeout: d.tcp_idle_timeout,
            doh_max_connections: d.doh_max_connections,
            doh_idle_timeout: d.doh_idle_timeout,
        },
        engine.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot start DNS (dns.listen {}, dns.doh {})",
            d.listen, d.doh
        )
    })?;
    match server.doh_addr {
        Some(doh) => info!(dns = %server.dns_addr, %doh, "DNS listening"),
        None => info!(dns = %server.dns_addr, doh = "off", "DNS listening"),
    }
    let published = tokio::sync::watch::Sender::new(first_version);
    tracker.spawn({
        let engine = engine.clone();
        let state = state.clone();
        let mesh_domain = mesh_domain.clone();
        let nameserver = nameserver.clone();
        let mut rx = docs_rx;
        let published = published.clone();
        async move {
            let mut generation = 1;
            let mut last_build = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
                // A burst of changes makes one snapshot. A change after a quiet spell is
                // served at once; within a burst, changes wait SNAPSHOT_COALESCE and are
                // edited in together. The delay runs only after a change.
                if last_build.elapsed() < SNAPSHOT_COALESCE * 4 {
                    tokio::time::sleep(SNAPSHOT_COALESCE).await;
                }
                let version = *rx.borrow_and_update();
                let changes = state.take_served_changes();
                generation += 1;
                let (s, m, n) = (state.clone(), mesh_domain.clone(), nameserver.clone());
                let mut taken = std::mem::take(&mut served);
                let current = engine.snapshot();
                let built = tokio::task::spawn_blocking(move || {
                    let snapshot =
                        update_snapshot(generation, &s, &m, &n, &mut taken, &current, changes);
                    (snapshot, taken)
                })
                .await;
                match built {
                    Ok((snapshot, back)) => {
                        served = back;
                        engine.publish(snapshot);
                        published.send_replace(version);
                        last_build = tokio::time::Instant::now();
                    }
                    Err(e) => warn!(error = %e, "building the DNS snapshot failed"),
                }
            }
        }
    });
    Ok(NodeDns {
        server,
        snrl,
        mesh_domain,
        nameserver,
        node_id,
        published,
    })
}

/// The source address the kernel would use towards the outside (no packet is sent).
fn default_route_address(v6: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        (
            ([0u16; 8], 0).into(),
            ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9).into(),
        )
    } else {
        (([0, 0, 0, 0], 0).into(), ([192, 0, 2, 1], 9).into())
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(probe).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Registers this node (`voiked.<mesh_domain>` and so `<node>.nodes.<mesh_domain>`) once its
/// p2p listeners are bound, and removes its registrations for addresses it no longer has.
pub async fn register_self(
    dns: Arc<NodeDns>,
    config: Config,
    state: StateHandle,
    swarm: SwarmHandle,
    cancel: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listen = loop {
        if let Some(info) = swarm.self_info().await
            && !info.listen_addrs.is_empty()
        {
            break info.listen_addrs;
        }
        if tokio::time::Instant::now() > deadline {
            warn!("p2p listeners not bound after 30s; not registering this node in DNS");
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    let mut port = None;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in &listen {
        let Ok(ma) = a.parse::<libp2p::Multiaddr>() else {
            continue;
        };
        for p in ma.iter() {
            match p {
                Protocol::Ip4(ip) => ips.push(IpAddr::V4(ip)),
                Protocol::Ip6(ip) => ips.push(IpAddr::V6(ip)),
                Protocol::Tcp(p) if port.is_none() => port = Some(p),
                _ => {}
            }
        }
    }
    let mut addrs: Vec<IpAddr> = if config.dns.advertise.is_empty() {
        let found: Vec<IpAddr> = ips
            .into_iter()
            .filter_map(|ip| {
                if ip.is_unspecified() {
                    default_route_address(ip.is_ipv6())
                } else {
                    Some(ip)
                }
            })
            .collect();
        // Loopback addresses only when the node has nothing else (a loopback-only node):
        // other hosts cannot reach 127.0.0.1.
        if found.iter().any(|ip| !ip.is_loopback()) {
            found.into_iter().filter(|ip| !ip.is_loopback()).collect()
        } else {
            found
        }
    } else {
        config.dns.advertise.clone()
    };
    addrs.sort();
    addrs.dedup();
    let Some(port) = port.or_else(|| {
        listen
            .iter()
            .find_map(|a| a.rsplit('/').find_map(|p| p.parse::<u16>().ok()))
    }) else {
        warn!("no p2p port found; not registering this node in DNS");
        return;
    };
    let service = dns.node_service();
    let mut keep = Vec::new();
    for ip in addrs {
        let input = EndpointInput {
            service: service.clone(),
            address: ip.to_string(),
            port: u64::from(port),
            region: config.hypermesh.region.clone(),
            capabilities: config.hypermesh.capabilities.clone(),
            weight: voike_protocol::endpoints::DEFAULT_WEIGHT,
        };
        match state.register_endpoint(input).await {
            Ok(e) => keep.push(e.id),
            Err(e) => warn!(error = %e, address = %ip, "cannot register this node"),
        }
    }
    for old in state.endpoints() {
        if old.node == dns.node_id && old.service == service && !keep.contains(&old.id) {
            let _ = state.delete_endpoint(&old.id).await;
        }
    }
    info!(name = %dns.nameserver, %service, "registered this node in DNS");
}
