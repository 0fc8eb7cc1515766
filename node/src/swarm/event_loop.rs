//! The swarm event loop.
//!
//! Membership handshake: when the first connection to a peer opens, each side sends a
//! [`Hello`] with its membership record. The receiver admits it through the mesh
//! [`Directory`](voike_protocol::membership::Directory) and answers `Welcome` (with the members it
//! knows and a receipt) or `Rejected` (and disconnects). Until a peer's hello has been admitted it
//! is not a member: it is not listed, not synced with, and it is disconnected when
//! `p2p.handshake_timeout` passes.
//!
//! Dialing: known members that are not connected are redialed with exponential backoff up to
//! `p2p.redial_max`; bootstrap addresses (ticket, `--bootstrap`) are dialed the same way while no
//! member is connected. The loop sleeps until the next deadline: an idle node does not tick.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, ping, relay, upnp};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use voike_protocol::api::{InviteResponse, NodeInfo, SelfInfo};
use voike_protocol::health::Leave;
use voike_protocol::membership::{AdmissionReceipt, Admitted};
use voike_protocol::mesh::Role;
use voike_protocol::sync::{Digest, SyncRequest, SyncResponse};
use voike_protocol::ticket::{MAX_BOOTSTRAP_ADDRS, Ticket, TicketBody};
use voike_protocol::wire::{
    Hello, HelloReply, LeaveAck, MAX_ADDRS_PER_MEMBER, MAX_MEMBERS_PER_REPLY, MAX_RECEIPTS,
    MemberInfo, RejectCode,
};

use super::behaviour::{Behaviour, BehaviourEvent};
use crate::config::{P2pConfig, SyncConfig};
use crate::hypermesh::HyperInput;
use crate::mesh::{MeshState, unix_now};
use crate::metrics::GossipLabel;
use crate::metrics::ReasonLabel;
use crate::state::StateHandle;
use crate::sync::{self, SyncTask};

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// A member that was connected within [`RECENT_LINK`] is redialed at least this often (each
/// try is one SYN or QUIC Initial): after a partition heals, links come back within seconds.
const RECENT_REDIAL_MAX: Duration = Duration::from_secs(3);
/// How long after losing a member the short redial interval applies; then the backoff grows to
/// `p2p.redial_max`.
const RECENT_LINK: Duration = Duration::from_secs(600);
/// A member reached only through a relay is dialed directly again after this (doubling up to
/// [`DIRECT_RETRY_MAX`]), and at once when it advertises a new address: a hole punch that
/// failed, a port mapping or an address that appeared later may work now.
const DIRECT_RETRY: Duration = Duration::from_secs(30);
const DIRECT_RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// Dials that failed in a row after which an address that never worked is left out of dials
/// (another NAT's private address, a stale port), unless nothing else is left.
const ADDR_EXPIRE_FAILURES: u32 = 3;
/// How long a rejected peer keeps its connection, so that the rejection reaches it.
const REJECT_LINGER: Duration = Duration::from_secs(2);
const COMMAND_QUEUE: usize = 64;
/// Refused peers written to the ledger one by one per [`REFUSAL_WINDOW`]; the rest of the
/// window's refusals are written as one `trust.peers_refused` entry with their count, so that
/// non-members with fresh keys cannot grow every member's ledger.
const REFUSALS_PER_WINDOW: u32 = 10;
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Local changes within this window are announced together.
const ANNOUNCE_DELAY: Duration = Duration::from_millis(5);

/// A live connection as `GET /trust/sessions` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Session {
    pub peer: String,
    /// The peer passed the membership handshake on this node.
    pub member: bool,
    pub remote_addr: String,
    pub transport: String,
    pub relayed: bool,
    pub security: String,
    /// The TLS key-exchange groups this node offers, most preferred first. libp2p does not
    /// expose the group a connection negotiated; two voiked nodes both put X25519MLKEM768 first.
    pub key_exchange: Vec<String>,
    pub rtt_ms: Option<f64>,
}

/// The key-exchange groups libp2p's TLS offers, by preference.
fn offered_key_exchange(key: &libp2p::identity::Keypair) -> Vec<String> {
    match libp2p::tls::make_client_config(key, None) {
        Ok(c) => c
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Requests served by the event loop.
#[derive(Debug)]
pub enum Command {
    SelfInfo {
        reply: oneshot::Sender<SelfInfo>,
    },
    Nodes {
        reply: oneshot::Sender<Vec<NodeInfo>>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<Session>>,
    },
    Ready {
        reply: oneshot::Sender<bool>,
    },
    Invite {
        ttl: Duration,
        role: Role,
        reply: oneshot::Sender<Result<InviteResponse, InviteError>>,
    },
    /// Sends a sync request to `peer`.
    Sync {
        peer: PeerId,
        req: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, String>>,
    },
    /// A PCP / NAT-PMP mapping task's news (see [`super::pmp`]).
    PortMapping(super::pmp::PmpEvent),
    /// Answers an inbound sync request (computed off the loop).
    SyncRespond {
        channel: ResponseChannel<SyncResponse>,
        resp: SyncResponse,
    },
    /// The node is stopping cleanly: sends a signed leave to every connected member, stops
    /// publishing health reports, and replies once every member answered (or failed to).
    Goodbye {
        reply: oneshot::Sender<Goodbye>,
    },
    /// Publishes a signed lease renewal ([`voike_protocol::lease::LeaseRenewal`]) on the lease
    /// topic.
    PublishLease(Vec<u8>),
}

/// What became of a goodbye (see [`SwarmHandle::goodbye`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Goodbye {
    /// Members the leave was sent to.
    pub sent: usize,
    /// Members that acknowledged it.
    pub acked: usize,
}

/// A goodbye waiting for the members' answers.
#[derive(Debug)]
struct PendingGoodbye {
    waiting: HashSet<OutboundRequestId>,
    outcome: Goodbye,
    reply: oneshot::Sender<Goodbye>,
}

/// Why an invite could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    #[error("only admins can issue invites; this node's role is {0}")]
    NotAdmin(Role),
    #[error("this node has not joined its mesh yet")]
    NotMember,
    #[error("this node has no listen address to put in a ticket")]
    NoAddress,
    #[error("could not sign the ticket: {0}")]
    Sign(String),
}

/// A cloneable handle to the event loop.
#[derive(Clone, Debug)]
pub struct SwarmHandle {
    tx: mpsc::Sender<Command>,
}

impl SwarmHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    pub async fn self_info(&self) -> Option<SelfInfo> {
        self.ask(|reply| Command::SelfInfo { reply }).await
    }

    pub async fn nodes(&self) -> Option<Vec<NodeInfo>> {
        self.ask(|reply| Command::Nodes { reply }).await
    }

    /// Every live connection with what secures it.
    pub async fn sessions(&self) -> Option<Vec<Session>> {
        self.ask(|reply| Command::Sessions { reply }).await
    }

    pub async fn ready(&self) -> bool {
        self.ask(|reply| Command::Ready { reply })
            .await
            .unwrap_or(false)
    }

    /// Sends a sync request and waits for the answer.
    pub async fn sync(&self, peer: PeerId, req: SyncRequest) -> Result<SyncResponse, String> {
        self.ask(|reply| Command::Sync { peer, req, reply })
            .await
            .unwrap_or_else(|| Err("the node is shutting down".into()))
    }

    pub async fn invite(
        &self,
        ttl: Duration,
        role: Role,
    ) -> Option<Result<InviteResponse, InviteError>> {
        self.ask(|reply| Command::Invite { ttl, role, reply }).await
    }

    /// Says goodbye to the connected members (a signed leave) and waits for their answers;
    /// the caller bounds the wait. `None` when the loop has ended.
    pub async fn goodbye(&self) -> Option<Goodbye> {
        self.ask(|reply| Command::Goodbye { reply }).await
    }

    /// Publishes an encoded, signed lease renewal to the members (dropped when the loop is
    /// busy: the next renewal comes a third of a lease later).
    pub fn publish_lease(&self, renewal: Vec<u8>) -> bool {
        self.tx.try_send(Command::PublishLease(renewal)).is_ok()
    }
}

#[derive(Debug, Default)]
struct Peer {
    /// Open connections and their remote addresses.
    connections: HashMap<ConnectionId, Multiaddr>,
    /// Of those, the ones this node dialed directly (their address reaches the peer's
    /// listener: a candidate relay).
    dialed: HashSet<ConnectionId>,
    /// When this node last asked the peer for its members (a hello sent back).
    asked_members_at: Option<Instant>,
    /// When a relay reservation on the peer last failed.
    relay_failed_at: Option<Instant>,
    /// What the peer's last hello said of its reachability ([`Hello::public`]).
    says_public: Option<bool>,
    /// When each open connection last showed it works (opened, or a ping answered).
    alive_at: HashMap<ConnectionId, Instant>,
    /// The peer presented a valid membership record on the current connections.
    verified: bool,
    connected_since: Option<Instant>,
    rtt: Option<Duration>,
    /// Addresses the peer listens on, as it or other members told us.
    addrs: Vec<Multiaddr>,
    /// How dials to each of those went (see [`Peer::dial_addrs`]).
    addr_results: HashMap<Multiaddr, AddrResult>,
    /// While the peer is reached only through relays: when to try a direct dial again.
    direct_retry_at: Option<Instant>,
    direct_backoff: Duration,
    /// The addresses last written to the store (only members' are stored).
    stored_addrs: Vec<Multiaddr>,
    next_dial: Option<Instant>,
    backoff: Duration,
    disconnect_at: Option<Instant>,
    /// When the last connection of a verified member closed.
    lost_at: Option<Instant>,
}

impl Peer {
    /// The peer's last live connection is gone: it must prove membership again, and is due
    /// for a redial soon.
    fn mark_disconnected(&mut self) {
        self.verified = false;
        self.connected_since = None;
        self.disconnect_at = None;
        self.rtt = None;
        self.backoff = INITIAL_BACKOFF;
        self.next_dial = Some(Instant::now() + jitter(INITIAL_BACKOFF));
    }

    fn connected(&self) -> bool {
        !self.connections.is_empty()
    }

    /// The addresses to dial, best first: those that worked (most recently first), then those
    /// not tried or failing less than [`ADDR_EXPIRE_FAILURES`] times in a row, QUIC before
    /// TCP (it survives NAT rebinding better and needs fewer round trips), relay circuits after
    /// direct addresses. Addresses that failed [`ADDR_EXPIRE_FAILURES`] dials in a row are left
    /// out while any other is left. `direct` leaves out relay circuits.
    fn dial_addrs(&self, direct: bool) -> Vec<Multiaddr> {
        type Key = (u8, bool, std::cmp::Reverse<Option<Instant>>, bool);
        let mut ranked: Vec<(Key, Multiaddr)> = self
            .addrs
            .iter()
            .filter(|a| !direct || !is_circuit(a))
            .map(|a| {
                let r = self.addr_results.get(a).copied().unwrap_or_default();
                let class = if r.ok_at.is_some() && r.failures < ADDR_EXPIRE_FAILURES {
                    0
                } else if r.failures < ADDR_EXPIRE_FAILURES {
                    1
                } else {
                    2
                };
                let key = (
                    class,
                    is_circuit(a),
                    std::cmp::Reverse(r.ok_at),
                    !is_quic(a),
                );
                (key, a.clone())
            })
            .collect();
        ranked.sort_by_key(|r| r.0);
        if ranked.iter().any(|r| r.0.0 < 2) {
            ranked.retain(|r| r.0.0 < 2);
        }
        ranked.into_iter().map(|r| r.1).collect()
    }

    fn relayed(&self) -> bool {
        !self.connections.is_empty()
            && self
                .connections
                .values()
                .all(|a| a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
    }
}

/// What dials to one address of a peer did.
#[derive(Clone, Copy, Debug, Default)]
struct AddrResult {
    /// When a dial to it last succeeded.
    ok_at: Option<Instant>,
    /// Dials that failed since (or ever, if none succeeded).
    failures: u32,
}

type HeldWelcome = (Vec<MemberInfo>, Option<AdmissionReceipt>);

/// Where UPnP port mapping stands, as `/mesh/self` `portMapping` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortMapping {
    /// Off by `p2p.port_mapping`, or nothing to map (no listener on a private IPv4 address).
    Off,
    /// Looking for a gateway (or waiting for its answer).
    Searching,
    /// The router maps at least one listen port.
    Mapped,
    /// No gateway answered the search.
    NoGateway,
    /// The gateway's own external address is not public (double NAT).
    NonRoutable,
    /// The router refused or stopped renewing the mappings.
    Failed,
}

impl PortMapping {
    fn as_str(self) -> &'static str {
        match self {
            PortMapping::Off => "off",
            PortMapping::Searching => "searching",
            PortMapping::Mapped => "mapped",
            PortMapping::NoGateway => "no_gateway",
            PortMapping::NonRoutable => "non_routable",
            PortMapping::Failed => "failed",
        }
    }
}

/// Who told us a peer's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The peer itself (identify, hello).
    Peer,
    /// Another member's member list.
    Relayed,
}

#[derive(Debug)]
struct Bootstrap {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next_dial: Instant,
    backoff: Duration,
}

/// Owns the swarm and the mesh state.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    mesh: MeshState,
    config: P2pConfig,
    rx: mpsc::Receiver<Command>,
    peers: HashMap<PeerId, Peer>,
    bootstrap: Vec<Bootstrap>,
    listen_addrs: Vec<Multiaddr>,
    /// Listeners that have not reported an address yet (readiness waits for them).
    listeners_pending: HashSet<ListenerId>,
    /// The current refusal window: its start, refusals written one by one, and refusals only
    /// counted (written as one entry when the window ends).
    refusals: (Instant, u32, u64),
    /// Welcomes received before the sender's own hello was checked.
    held_welcomes: HashMap<PeerId, HeldWelcome>,
    api_addr: String,
    started: Instant,
    state: StateHandle,
    sync_config: SyncConfig,
    sync_tx: mpsc::Sender<SyncTask>,
    /// For answers computed off the loop (weak: the loop ends when every handle is gone).
    cmd_tx: mpsc::WeakSender<Command>,
    /// Sync requests in flight, with the peer they went to.
    sync_pending:
        HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<SyncResponse, String>>)>,
    /// Per-peer token buckets for inbound sync requests: (tokens, last refill).
    sync_buckets: HashMap<PeerId, (f64, Instant)>,
    announce_at: Option<Instant>,
    next_anti_entropy: Instant,
    topic: gossipsub::IdentTopic,
    health_topic: gossipsub::IdentTopic,
    /// Lease renewals of grid segment claims.
    lease_topic: gossipsub::IdentTopic,
    hyper_tx: mpsc::Sender<HyperInput>,
    health_rx: mpsc::Receiver<Vec<u8>>,
    /// The directory generation last published to the state (`u64::MAX`: none yet).
    roster_len: u64,
    /// The grants and revocations of the state, and the version last applied.
    authority_rx: tokio::sync::watch::Receiver<u64>,
    /// `p2p.external_addresses`.
    external_addrs: Vec<Multiaddr>,
    /// What AutoNAT last concluded about this node.
    nat_status: autonat::NatStatus,
    /// Where UPnP port mapping stands (`p2p.port_mapping`).
    port_mapping: PortMapping,
    /// The default gateway PCP / NAT-PMP requests go to, when port mapping is on.
    pmp_gateway: Option<std::net::Ipv4Addr>,
    /// Listen addresses a PCP / NAT-PMP task was started for.
    pmp_started: HashSet<Multiaddr>,
    /// Relays this node holds (or asked for) a reservation on, with the listener it made.
    relays: HashMap<PeerId, ListenerId>,
    relay_config: crate::config::RelayConfig,
    /// When to tell the members that this node's view of the members changed.
    announce_members_at: Option<Instant>,
    /// The directory hash and the advertised addresses last announced.
    announced_hash: Vec<u8>,
    announced_addrs: Vec<Multiaddr>,
    /// When the members were last asked for addresses after a failed dial.
    asked_addrs_at: Option<Instant>,
    /// Set by a goodbye: the node is stopping, its health reports are no longer published (a
    /// report after the leave would make the members take it for alive again).
    leaving: bool,
    goodbye: Option<PendingGoodbye>,
}

/// Sync-related parts of the event loop.
#[derive(Debug)]
pub struct SyncParts {
    pub state: StateHandle,
    pub config: SyncConfig,
    pub tx: mpsc::Sender<SyncTask>,
    /// Verified health reports and pings go to Hypermesh on `hyper_tx`; its reports to
    /// publish come back on `health_rx`.
    pub hyper_tx: mpsc::Sender<HyperInput>,
    pub health_rx: mpsc::Receiver<Vec<u8>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", &self.mesh.peer_id)
            .finish_non_exhaustive()
    }
}

/// The peer an address leads to: its last `/p2p/` part (for a relayed address
/// `.../p2p/RELAY/p2p-circuit/p2p/NODE`, the node behind the relay).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// `addr` ending in `/p2p/<peer>` (a relayed address keeps its relay's id inside).
fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(addr).is_some() {
        addr.clone()
    } else {
        addr.clone().with(Protocol::P2p(peer))
    }
}

/// `addr` without its trailing `/p2p/<peer>`; a relay's id inside a relayed address stays.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// AutoNAT's verdict for the log: `public (ADDR)`, `private` or `unknown`.
fn nat_text(status: &autonat::NatStatus) -> String {
    match status {
        autonat::NatStatus::Public(addr) => format!("public ({addr})"),
        autonat::NatStatus::Private => "private".into(),
        autonat::NatStatus::Unknown => "unknown".into(),
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs
        .iter()
        .take(MAX_ADDRS_PER_MEMBER)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .map(|a| without_peer(&a))
        .collect()
}

/// libp2p's TCP listeners set `SO_REUSEPORT` (for hole punching), so a second daemon on the same
/// port would start and share connections with the first. Probe the port without it first.
fn check_port_free(addr: &Multiaddr) -> anyhow::Result<()> {
    let mut ip = None;
    let mut tcp_port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(port) => tcp_port = Some(port),
            _ => {}
        }
    }
    if let (Some(ip), Some(port)) = (ip, tcp_port)
        && port != 0
        && let Err(e) = std::net::TcpListener::bind((ip, port))
    {
        anyhow::bail!("cannot listen on {addr} (p2p.listen): {e}; is another voiked running?");
    }
    Ok(())
}

/// gossipsub peer scoring: a message this node rejects (bad signature, undecodable, a report
/// its publisher did not sign) costs its forwarder 100 points per invalid message, squared, so a
/// single one takes it below the graylist threshold (-80) and its messages are ignored for a
/// second or two; repeated ones keep it there (the count decays by 0.9 per second). Scores that would punish honest idle or co-located peers (mesh
/// delivery deficits, many peers behind one address) are switched off.
fn peer_score_params(topics: &[&gossipsub::IdentTopic]) -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    gossipsub::PeerScoreParams {
        topics: topics.iter().map(|t| (t.hash(), topic.clone())).collect(),
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    }
}

fn peer_score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        ..gossipsub::PeerScoreThresholds::default()
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + rand::random::<f64>() * 0.4)
}

impl EventLoop {
    /// Creates the loop and starts listening. `extra_bootstrap` comes from config and flags.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        mesh: MeshState,
        config: P2pConfig,
        api_addr: String,
        sync_parts: SyncParts,
    ) -> anyhow::Result<(EventLoop, SwarmHandle)> {
        let topic = gossipsub::IdentTopic::new(format!("voike/sync/1/{}", mesh.mesh_id()));
        swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .subscribe(&topic)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to the sync topic: {e}"))?;
        let health_topic = gossipsub::IdentTopic::new(format!("voike/health/1/{}", mesh.mesh_id()));
        swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .subscribe(&health_topic)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to the health topic: {e}"))?;
        let lease_topic = gossipsub::IdentTopic::new(format!("voike/lease/1/{}", mesh.mesh_id()));
        swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .subscribe(&lease_topic)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to the lease topic: {e}"))?;
        swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .with_peer_score(
                peer_score_params(&[&topic, &health_topic, &lease_topic]),
                peer_score_thresholds(),
            )
            .map_err(|e| anyhow::anyhow!("gossipsub peer scoring: {e}"))?;
        let mut listeners_pending = HashSet::new();
        for addr in &config.listen {
            check_port_free(addr)?;
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (p2p.listen): {e}"))?;
            listeners_pending.insert(id);
        }
        let now = Instant::now();
        let mut bootstrap_addrs: Vec<Multiaddr> = config.bootstrap.clone();
        if let voike_protocol::membership::Admission::Ticket(t) = &mesh.own.body.admission
            && !mesh.is_member()
        {
            bootstrap_addrs.extend(t.body.bootstrap.iter().filter_map(|a| a.parse().ok()));
        }
        let bootstrap = bootstrap_addrs
            .into_iter()
            .filter(|a| peer_of(a) != Some(mesh.peer_id))
            .map(|addr| Bootstrap {
                peer: peer_of(&addr),
                addr,
                next_dial: now,
                backoff: INITIAL_BACKOFF,
            })
            .collect();
        let mut peers: HashMap<PeerId, Peer> = HashMap::new();
        for (peer, addrs) in mesh.stored_addrs()? {
            if peer != mesh.peer_id {
                let p = peers.entry(peer).or_default();
                p.addrs = parse_addrs(&addrs);
                p.stored_addrs = p.addrs.clone();
                p.next_dial = Some(now);
                p.backoff = INITIAL_BACKOFF;
            }
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let external_addrs = config.external_addresses.clone();
        let port_mapping_on = swarm.behaviour().upnp.is_enabled();
        let relay_config = config.relay.clone();
        let mut authority_rx = sync_parts.state.watch_authority();
        // Apply the revocations already stored on the first turn of the loop.
        authority_rx.mark_changed();
        Ok((
            EventLoop {
                swarm,
                mesh,
                config,
                rx,
                peers,
                bootstrap,
                listen_addrs: Vec::new(),
                listeners_pending,
                held_welcomes: HashMap::new(),
                refusals: (Instant::now(), 0, 0),
                api_addr,
                started: now,
                state: sync_parts.state,
                next_anti_entropy: now + jitter(sync_parts.config.anti_entropy_interval),
                sync_config: sync_parts.config,
                sync_tx: sync_parts.tx,
                cmd_tx: tx.downgrade(),
                sync_pending: HashMap::new(),
                sync_buckets: HashMap::new(),
                announce_at: None,
                topic,
                health_topic,
                lease_topic,
                hyper_tx: sync_parts.hyper_tx,
                health_rx: sync_parts.health_rx,
                roster_len: u64::MAX,
                authority_rx,
                external_addrs,
                nat_status: autonat::NatStatus::Unknown,
                port_mapping: if port_mapping_on {
                    PortMapping::Searching
                } else {
                    PortMapping::Off
                },
                pmp_gateway: if port_mapping_on {
                    super::pmp::default_gateway()
                } else {
                    None
                },
                pmp_started: HashSet::new(),
                relays: HashMap::new(),
                relay_config,
                announce_members_at: None,
                announced_hash: Vec::new(),
                announced_addrs: Vec::new(),
                asked_addrs_at: None,
                leaving: false,
                goodbye: None,
            },
            SwarmHandle { tx },
        ))
    }

    /// Runs until `cancel` fires (returns `Ok`) or a join is refused (returns the reason).
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let result = loop {
            self.apply_revocations();
            self.publish_roster();
            let wake = self.maintain();
            tokio::select! {
                _ = state.changed() => {
                    self.announce_at.get_or_insert(Instant::now() + ANNOUNCE_DELAY);
                }
                Some(report) = self.health_rx.recv() => self.publish_health(report),
                _ = cancel.cancelled() => break Ok(()),
                event = self.swarm.select_next_some() => {
                    if let Err(e) = self.on_swarm_event(event).await {
                        break Err(e);
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break Ok(()),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        };
        self.close().await;
        result
    }

    /// Closes every connection and listener before the swarm is dropped.
    async fn close(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in &peers {
            let _ = self.swarm.disconnect_peer_id(*p);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = self.swarm.select_next_some() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        info!(peers = peers.len(), "closed p2p connections");
    }

    fn connected_members(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.verified && p.connected())
            .count()
    }

    /// Dials whoever is due, disconnects whoever overstayed, and returns the next deadline.
    fn maintain(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(3600);
        let redial_max = self.config.redial_max;
        let handshake = self.config.handshake_timeout;

        // Connections whose pings stopped being answered: libp2p reports only the second failed
        // ping (up to a minute late), so a link counts as dead once no ping was answered for a
        // ping interval plus the ping timeout. Pings answered on time push this deadline on, so
        // it wakes the loop only for a link that has gone quiet.
        let stale_after = self.config.ping_interval + self.config.ping_timeout;
        let mut dead_links = Vec::new();
        for (id, p) in &self.peers {
            for (conn, at) in &p.alive_at {
                let due = *at + stale_after;
                if due <= now {
                    dead_links.push((*id, *conn, p.connections.get(conn).cloned()));
                } else {
                    next = next.min(due);
                }
            }
        }
        for (peer, conn, remote) in dead_links {
            let remote = remote
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into());
            let silent_ms = stale_after.as_millis() as u64;
            info!(%peer, %remote, silent_ms, "closing a connection whose pings are not answered");
            self.let_go_of(peer, conn);
        }

        // Unverified or rejected connections past their deadline.
        let mut to_drop = Vec::new();
        for (id, p) in &self.peers {
            if !p.connected() {
                continue;
            }
            let deadline = match (p.disconnect_at, p.verified, p.connected_since) {
                (Some(at), _, _) => Some(at),
                (None, false, Some(since)) => Some(since + handshake),
                _ => None,
            };
            if let Some(at) = deadline {
                if at <= now {
                    to_drop.push(*id);
                } else {
                    next = next.min(at);
                }
            }
        }
        for id in to_drop {
            debug!(peer = %id, "disconnecting peer without a valid membership proof");
            let _ = self.swarm.disconnect_peer_id(id);
            if let Some(p) = self.peers.get_mut(&id) {
                p.disconnect_at = None;
                p.connected_since = None;
            }
        }

        if self.refusals.2 > 0 {
            // Work waiting: the count of this window's refusals goes to the ledger when it ends.
            let end = self.refusals.0 + REFUSAL_WINDOW;
            if end <= now {
                self.flush_refusals(now);
            } else {
                next = next.min(end);
            }
        }
        if let Some(at) = self.announce_at {
            if at <= now {
                self.announce_at = None;
                self.announce();
            } else {
                next = next.min(at);
            }
        }
        if self.next_anti_entropy <= now {
            self.next_anti_entropy = now + jitter(self.sync_config.anti_entropy_interval);
            let candidates: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.verified && p.connected())
                .map(|(id, _)| *id)
                .collect();
            if !candidates.is_empty() {
                let peer = candidates[rand::random_range(0..candidates.len())];
                let _ = self.sync_tx.try_send(SyncTask::AntiEntropy { peer });
            }
        }
        next = next.min(self.next_anti_entropy);

        if let Some(at) = self.announce_members_at {
            if at <= now {
                self.announce_members_at = None;
                self.announce_members();
            } else {
                next = next.min(at);
            }
        }
        if let Some(at) = self.keep_relays(now) {
            next = next.min(at);
        }

        // Dial only once every listener has its address: the hello sent on each new connection
        // carries our listen addresses, which is how members find us again after a restart.
        if !self.listeners_pending.is_empty() {
            return next;
        }

        // Known members that are not connected.
        let mut budget = self
            .config
            .max_peers
            .saturating_sub(self.connected_members());
        let members: Vec<PeerId> = self
            .mesh
            .directory
            .members()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.mesh.peer_id && !self.mesh.directory.is_revoked(id))
            .collect();
        for id in members {
            let p = self.peers.entry(id).or_insert_with(|| Peer {
                backoff: INITIAL_BACKOFF,
                next_dial: Some(now),
                ..Peer::default()
            });
            if p.connected() && p.relayed() && p.verified {
                // Reached only through a relay: try the direct addresses now and then.
                let due = *p.direct_retry_at.get_or_insert(now + DIRECT_RETRY);
                if due > now {
                    next = next.min(due);
                    continue;
                }
                let backoff = p.direct_backoff.max(DIRECT_RETRY);
                p.direct_retry_at = Some(now + jitter(backoff));
                p.direct_backoff = (backoff * 2).min(DIRECT_RETRY_MAX);
                next = next.min(now + backoff);
                let addrs = p.dial_addrs(true);
                if !addrs.is_empty() {
                    debug!(peer = %id, "relayed only: dialing its direct addresses");
                    let opts = DialOpts::peer_id(id)
                        .addresses(addrs)
                        .condition(PeerCondition::NotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(peer = %id, error = %e, "dial not started");
                    }
                }
                continue;
            }
            if p.connected() || p.addrs.is_empty() || budget == 0 {
                continue;
            }
            let due = *p.next_dial.get_or_insert(now);
            if due > now {
                next = next.min(due);
                continue;
            }
            // `NotDialing`, not `DisconnectedAndNotDialing`: a dead connection that is still
            // closing (which can take as long as TCP takes to give up) must not block a new one.
            let opts = DialOpts::peer_id(id)
                .addresses(p.dial_addrs(false))
                .condition(PeerCondition::NotDialing)
                .build();
            let cap = if p
                .lost_at
                .is_some_and(|t| now.duration_since(t) < RECENT_LINK)
            {
                RECENT_REDIAL_MAX.min(redial_max)
            } else {
                redial_max
            };
            p.next_dial = Some(now + jitter(p.backoff.min(cap)));
            p.backoff = (p.backoff * 2).min(redial_max);
            next = next.min(p.next_dial.unwrap_or(next));
            budget -= 1;
            if let Err(e) = self.swarm.dial(opts) {
                debug!(peer = %id, error = %e, "dial not started");
            }
        }

        // Bootstrap addresses while no member is connected (or while joining).
        if self.connected_members() == 0 || !self.mesh.is_member() {
            for b in &mut self.bootstrap {
                if b.peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                    continue;
                }
                if b.next_dial > now {
                    next = next.min(b.next_dial);
                    continue;
                }
                b.next_dial = now + jitter(b.backoff);
                b.backoff = (b.backoff * 2).min(redial_max);
                next = next.min(b.next_dial);
                let opts = match b.peer {
                    Some(p) => DialOpts::peer_id(p)
                        .addresses(vec![without_peer(&b.addr)])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                    None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
                };
                debug!(addr = %b.addr, "dialing bootstrap peer");
                if let Err(e) = self.swarm.dial(opts) {
                    debug!(addr = %b.addr, error = %e, "bootstrap dial not started");
                }
            }
        }
        next
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> anyhow::Result<()> {
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                info!(%address, "listening");
                if let Some(gateway) = self.pmp_gateway
                    && super::pmp::mappable(&address).is_some()
                    && self.pmp_started.insert(address.clone())
                {
                    super::pmp::spawn(gateway, address.clone(), self.cmd_tx.clone());
                }
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.listeners_pending.remove(&listener_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                let reason = match &reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                let addrs: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
                warn!(%reason, addresses = %addrs.join(" "), "listener closed");
                self.listeners_pending.remove(&listener_id);
                if let Some((relay, _)) = self
                    .relays
                    .iter()
                    .find(|(_, l)| **l == listener_id)
                    .map(|(r, l)| (*r, *l))
                {
                    // The relay went away or refused: another one is picked at once.
                    self.relays.remove(&relay);
                    if let Some(p) = self.peers.get_mut(&relay) {
                        p.relay_failed_at = Some(Instant::now());
                    }
                }
                self.listen_addrs.retain(|a| !addresses.contains(a));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    // A connection that came in through a relay shows only the peer's id as
                    // its remote address; its circuit listen address says how it came.
                    ConnectedPoint::Listener { local_addr, .. } if is_circuit(local_addr) => {
                        local_addr.clone()
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                debug!(peer = %peer_id, %remote, "connection established");
                let p = self.peers.entry(peer_id).or_default();
                if endpoint.is_dialer() {
                    let r = p.addr_results.entry(without_peer(&remote)).or_default();
                    r.ok_at = Some(Instant::now());
                    r.failures = 0;
                }
                if !is_circuit(&remote) {
                    // Direct again: the next relayed spell starts with the shortest wait.
                    p.direct_retry_at = None;
                    p.direct_backoff = DIRECT_RETRY;
                }
                if endpoint.is_dialer() && !is_circuit(&remote) {
                    p.dialed.insert(connection_id);
                }
                p.connections.insert(connection_id, remote);
                p.alive_at.insert(connection_id, Instant::now());
                // The first live connection (a dead one may still be closing: the swarm counts
                // it in `num_established`, this node does not) starts the membership check.
                if p.connections.len() == 1 {
                    p.connected_since = Some(Instant::now());
                    p.verified = false;
                    self.swarm.behaviour_mut().gossipsub.disallow(&peer_id);
                    self.swarm.behaviour_mut().relay_server.disallow(&peer_id);
                    self.swarm
                        .behaviour_mut()
                        .autonat_v2_server
                        .disallow(&peer_id);
                }
                // Every new connection carries a hello, not only a peer's first: the other side
                // may have let go of the older connections (a dead link, a NAT rebinding) and
                // then needs this proof before it treats the peer as a member again.
                let hello = self.hello();
                self.swarm
                    .behaviour_mut()
                    .member
                    .inner_mut()
                    .send_request(&peer_id, hello);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                let is_member = self.mesh.directory.contains(&peer_id);
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    let was_live = p.connections.remove(&connection_id).is_some();
                    p.alive_at.remove(&connection_id);
                    p.dialed.remove(&connection_id);
                    // A dead link was already let go of when it was found dead.
                    if was_live && p.connections.is_empty() {
                        self.held_welcomes.remove(&peer_id);
                        self.sync_buckets.remove(&peer_id);
                        if p.verified {
                            let cause = cause
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "closed".into());
                            info!(peer = %peer_id, %cause, "member disconnected");
                            p.lost_at = Some(Instant::now());
                        }
                        p.mark_disconnected();
                        self.swarm.behaviour_mut().gossipsub.disallow(&peer_id);
                        self.swarm.behaviour_mut().relay_server.disallow(&peer_id);
                        self.swarm
                            .behaviour_mut()
                            .autonat_v2_server
                            .disallow(&peer_id);
                        if !is_member && p.addrs.is_empty() {
                            self.peers.remove(&peer_id);
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let (Some(peer), libp2p::swarm::DialError::Transport(failed)) = (peer_id, &error)
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    for (addr, _) in failed {
                        let addr = without_peer(addr);
                        if p.addrs.contains(&addr) {
                            let r = p.addr_results.entry(addr).or_default();
                            r.failures = r.failures.saturating_add(1);
                        }
                    }
                }
                if self.mesh.is_member() {
                    let peer = peer_id.map(|p| p.to_string()).unwrap_or_default();
                    debug!(%peer, %error, "dial failed");
                    if peer_id.is_some_and(|p| self.mesh.directory.contains(&p)) {
                        self.ask_for_addrs();
                    }
                } else {
                    let peer = peer_id.map(|p| p.to_string()).unwrap_or_default();
                    info!(%peer, %error, "cannot reach bootstrap peer yet; will retry");
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event).await?,
            _ => {}
        }
        Ok(())
    }

    /// Closes a dead connection and stops counting it at once: closing it gracefully can take
    /// as long as the dead link takes to fail, and meanwhile the peer must neither be listed as
    /// connected nor be kept from being redialed. When it was the peer's last live connection,
    /// the peer is treated as disconnected now.
    fn let_go_of(&mut self, peer: PeerId, conn: ConnectionId) {
        self.swarm.close_connection(conn);
        let b = self.swarm.behaviour_mut();
        b.sync.forget(conn);
        b.member.forget(conn);
        b.leave.forget(conn);
        b.gossipsub.forget(conn);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.alive_at.remove(&conn);
        p.dialed.remove(&conn);
        if p.connections.remove(&conn).is_none() || !p.connections.is_empty() {
            return;
        }
        if p.verified {
            info!(%peer, "member disconnected (dead link)");
            p.lost_at = Some(Instant::now());
        }
        // Requests on the dead link would wait for their timeout and hold the sync worker.
        let stuck: Vec<OutboundRequestId> = self
            .sync_pending
            .iter()
            .filter(|(_, (to, _))| *to == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            if let Some((_, reply)) = self.sync_pending.remove(&id) {
                let _ = reply.send(Err(format!("the link to {peer} is dead")));
            }
        }
        self.held_welcomes.remove(&peer);
        self.sync_buckets.remove(&peer);
        p.mark_disconnected();
        self.swarm.behaviour_mut().gossipsub.disallow(&peer);
        self.swarm.behaviour_mut().relay_server.disallow(&peer);
        self.swarm.behaviour_mut().autonat_v2_server.disallow(&peer);
    }

    /// `kept` and `evicted` redeemed the same one-time ticket; every replica keeps `kept` (see
    /// `Directory`). The evicted node is no longer a member here: it is disconnected, its
    /// changes are refused as `unknown_author`, and the decision is recorded.
    fn ticket_conflict(
        &mut self,
        kept: &voike_protocol::membership::MembershipRecord,
        evicted: PeerId,
    ) {
        let kept_id = kept.peer_id().map(|p| p.to_string()).unwrap_or_default();
        if evicted == self.mesh.peer_id {
            tracing::error!(kept = %kept_id, "another node redeemed this node's join ticket and keeps it: this node is no longer a member; join again with a new ticket");
        } else {
            warn!(%evicted, kept = %kept_id, "two nodes redeemed one ticket; the one with the smaller id keeps it, the other is no longer a member");
        }
        self.mesh.ledger.record(
            "trust.ticket_conflict",
            serde_json::json!({
                "kept": kept_id,
                "evicted": evicted.to_string(),
                "rule": "smaller peer id keeps a ticket redeemed twice",
            }),
        );
        if evicted != self.mesh.peer_id {
            let _ = self.swarm.disconnect_peer_id(evicted);
            self.peers.remove(&evicted);
        }
    }

    /// Ends the refusal window if it is over, writing the count of refusals it only counted.
    fn flush_refusals(&mut self, now: Instant) {
        if now.duration_since(self.refusals.0) < REFUSAL_WINDOW {
            return;
        }
        if self.refusals.2 > 0 {
            self.mesh.ledger.record(
                "trust.peers_refused",
                serde_json::json!({
                    "count": self.refusals.2,
                    "window_s": REFUSAL_WINDOW.as_secs(),
                    "also_recorded_one_by_one": self.refusals.1,
                }),
            );
        }
        self.refusals = (now, 0, 0);
    }

    fn hello(&mut self) -> Hello {
        if let Err(error) = self.mesh.refresh_pending_record() {
            warn!(%error, "could not re-sign the joining record");
        }
        Hello {
            record: self.mesh.own.clone(),
            listen_addrs: self
                .advertised_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            receipts: self
                .mesh
                .receipts
                .iter()
                .take(MAX_RECEIPTS)
                .cloned()
                .collect(),
            directory_hash: Some(self.directory_hash()),
            public: match self.nat_status {
                autonat::NatStatus::Public(_) => Some(true),
                autonat::NatStatus::Private => Some(false),
                autonat::NatStatus::Unknown => None,
            },
        }
    }

    /// What members are told to dial: configured and AutoNAT-confirmed external addresses
    /// first, then relayed (`/p2p-circuit`) listen addresses, then the bound ones — never an
    /// unspecified address.
    fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = Vec::new();
        let external = self
            .external_addrs
            .iter()
            .cloned()
            .chain(self.swarm.external_addresses().cloned());
        let relayed = self.listen_addrs.iter().filter(|a| is_circuit(a)).cloned();
        // Loopback addresses only reach this host: advertised only by a node that has nothing
        // else (nodes on one host, as in a test), never beside real ones.
        let only_loopback = self
            .listen_addrs
            .iter()
            .filter(|a| !is_circuit(a))
            .all(is_loopback);
        let bound = self
            .listen_addrs
            .iter()
            .filter(|a| !is_circuit(a) && (only_loopback || !is_loopback(a)))
            .cloned();
        for a in external.chain(relayed).chain(bound) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out.truncate(MAX_ADDRS_PER_MEMBER);
        out
    }

    /// A hash over the members this node knows (not revoked); see [`Hello::directory_hash`].
    /// Addresses are not in it (every node holds its own mix of them): they travel with every
    /// hello, an address change is announced, and a failed dial asks the members for fresh
    /// ones (`ask_for_addrs`).
    fn directory_hash(&self) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (id, _) in self.mesh.directory.members() {
            if !self.mesh.directory.is_revoked(id) {
                h.update(id.to_bytes());
            }
        }
        h.finalize().to_vec()
    }

    /// A dial to a member failed: ask the connected members for the addresses they hold (a
    /// member behind NAT is reached through the relays it lists), at most every 5 s.
    fn ask_for_addrs(&mut self) {
        let now = Instant::now();
        if self
            .asked_addrs_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(5))
        {
            return;
        }
        self.asked_addrs_at = Some(now);
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verified && p.connected())
            .map(|(id, _)| *id)
            .collect();
        for peer in peers {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.asked_members_at = None;
            }
            self.ask_members(peer);
        }
    }

    /// Sends `peer` a hello so that it answers with the members it knows (at most every 5 s).
    fn ask_members(&mut self, peer: PeerId) {
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.asked_members_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(5))
        {
            return;
        }
        p.asked_members_at = Some(now);
        let hello = self.hello();
        self.swarm
            .behaviour_mut()
            .member
            .inner_mut()
            .send_request(&peer, hello);
    }

    /// Tells every verified member that this node's view of the members changed: each sends a
    /// hello back when its own differs (see [`Hello::directory_hash`]).
    fn announce_members(&mut self) {
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verified && p.connected())
            .map(|(id, _)| *id)
            .collect();
        for peer in peers {
            let hello = self.hello();
            self.swarm
                .behaviour_mut()
                .member
                .inner_mut()
                .send_request(&peer, hello);
        }
    }

    async fn on_behaviour_event(&mut self, event: BehaviourEvent) -> anyhow::Result<()> {
        match event {
            BehaviourEvent::Member(event) => self.on_member_event(event).await?,
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Leave(event) => self.on_leave_event(event),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                if message.topic == self.health_topic.hash() {
                    self.on_health(propagation_source, message_id, message)
                } else if message.topic == self.lease_topic.hash() {
                    self.on_lease_renewal(propagation_source, message_id, message)
                } else {
                    self.on_gossip(propagation_source, message_id, message)
                }
            }
            BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.state
                    .metrics()
                    .relay_reservations_total
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "accepted".into(),
                    })
                    .inc();
            }
            BehaviourEvent::Relay(event) => debug!(?event, "relay client"),
            BehaviourEvent::RelayServer(event) => {
                debug!(?event, "relay server");
                if let relay::Event::ReservationReqAccepted {
                    src_peer_id,
                    renewed: false,
                } = &event
                {
                    info!(peer = %src_peer_id, "relaying for a member");
                }
                if let relay::Event::CircuitReqAccepted { .. } = &event {
                    self.state.metrics().relay_circuits_total.inc();
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                info!(old = %nat_text(&old), new = %nat_text(&new), "reachability changed (AutoNAT)");
                self.nat_status = new;
                // The members choose relays by it: tell them (one round of hellos).
                self.announce_members_at
                    .get_or_insert(Instant::now() + Duration::from_secs(1));
            }
            BehaviourEvent::Upnp(event) => self.on_upnp_event(event),
            BehaviourEvent::AutonatV2(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                let outcome = match &result {
                    Ok(()) => {
                        info!(address = %tested_addr, %server, "a member reached this address (AutoNAT v2)");
                        "reachable"
                    }
                    Err(error) => {
                        debug!(address = %tested_addr, %server, %error, "a member could not reach this address (AutoNAT v2)");
                        "unreachable"
                    }
                };
                self.state
                    .metrics()
                    .address_probes_total
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: outcome.into(),
                    })
                    .inc();
            }
            BehaviourEvent::AutonatV2Server(event) => {
                debug!(client = %event.client, address = %event.tested_addr, "dial-back for a member (AutoNAT v2)");
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                let outcome = match &result {
                    Ok(_) => {
                        info!(peer = %remote_peer_id, "hole punched: direct connection");
                        "direct"
                    }
                    Err(error) => {
                        info!(peer = %remote_peer_id, %error, "hole punch failed; staying relayed");
                        "failed"
                    }
                };
                self.state
                    .metrics()
                    .hole_punches_total
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: outcome.into(),
                    })
                    .inc();
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != super::behaviour::IDENTIFY_PROTOCOL {
                    debug!(peer = %peer_id, version = %info.protocol_version, "peer speaks another protocol version");
                }
                // Merged in front of what the peer's hello said (which also lists its confirmed
                // external addresses, which identify does not): neither replaces the other.
                let addrs: Vec<Multiaddr> = info.listen_addrs.iter().map(without_peer).collect();
                self.learn_addrs(peer_id, addrs, Source::Relayed).await;
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(ping::Failure::Unsupported),
            }) => {
                // Not a voiked (members all answer pings): no liveness to track on it; the
                // membership handshake decides what happens to it.
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.alive_at.remove(&connection);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            }) => {
                // libp2p keeps a connection whose pings fail; a dead link would then look
                // connected until TCP gave up (many minutes). Close it: the member is redialed.
                let remote = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.connections.get(&connection))
                    .map(|a| a.to_string());
                let remote = remote.unwrap_or_else(|| "unknown".into());
                info!(%peer, %remote, %error, "closing a connection whose ping failed");
                self.let_go_of(peer, connection);
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            }) => {
                let mut relayed = false;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.alive_at.insert(connection, Instant::now());
                    p.rtt = Some(rtt);
                    relayed = p.relayed();
                }
                if self.mesh.directory.contains(&peer) {
                    let _ = self
                        .hyper_tx
                        .try_send(HyperInput::Ping { peer, rtt, relayed });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The router's answers to port mapping. A mapped address is confirmed as external by the
    /// behaviour itself (so it is advertised, and AutoNAT tests it); here it is only reported.
    fn on_upnp_event(&mut self, event: upnp::Event) {
        match event {
            upnp::Event::NewExternalAddr {
                local_addr,
                external_addr,
            } => {
                info!(%local_addr, %external_addr, "the router mapped a port (UPnP)");
                self.port_mapping = PortMapping::Mapped;
            }
            upnp::Event::ExpiredExternalAddr {
                local_addr,
                external_addr,
            } => {
                warn!(%local_addr, %external_addr, "the router no longer maps this port (UPnP)");
                let still_mapped = self
                    .swarm
                    .external_addresses()
                    .any(|a| *a != external_addr && !self.external_addrs.contains(a));
                if !still_mapped {
                    self.port_mapping = PortMapping::Failed;
                }
            }
            upnp::Event::GatewayNotFound => {
                info!(
                    "no UPnP gateway answered (members reach this node directly, by hole punching or through a member relay, unless PCP or NAT-PMP maps a port)"
                );
                if self.port_mapping != PortMapping::Mapped {
                    self.port_mapping = PortMapping::NoGateway;
                }
            }
            upnp::Event::NonRoutableGateway => {
                info!(
                    "the UPnP gateway has no public address (another NAT is in front of it): no UPnP mapping"
                );
                if self.port_mapping != PortMapping::Mapped {
                    self.port_mapping = PortMapping::NonRoutable;
                }
            }
        }
    }

    /// PCP / NAT-PMP results: a mapped address is added as a confirmed external address.
    fn on_pmp_event(&mut self, event: super::pmp::PmpEvent) {
        use super::pmp::PmpEvent;
        match event {
            PmpEvent::Mapped {
                local,
                external,
                via,
            } => {
                info!(%local, %external, %via, "the router mapped a port");
                self.swarm.add_external_address(external);
                self.port_mapping = PortMapping::Mapped;
            }
            PmpEvent::Lost { external } => {
                warn!(%external, "the router no longer maps this port (PCP / NAT-PMP)");
                self.swarm.remove_external_address(&external);
            }
            PmpEvent::Unavailable { local, error } => {
                debug!(%local, %error, "no PCP or NAT-PMP mapping");
            }
        }
    }

    /// Remembers a member's listen addresses (persisted when they change). What the peer says
    /// itself (`Source::Peer`) replaces what we knew; what another member relays is merged in
    /// front of it. New addresses of a disconnected member make it due for a dial at once.
    async fn learn_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, source: Source) {
        if peer == self.mesh.peer_id || addrs.is_empty() {
            return;
        }
        // Only dialable addresses: a transport first (an inbound relayed connection's remote
        // address is a bare `/p2p/<id>`), at most one relay hop (libp2p dials no more).
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter(|a| {
                a.iter()
                    .filter(|p| matches!(p, Protocol::P2pCircuit))
                    .count()
                    <= 1
            })
            .filter(|a| {
                matches!(
                    a.iter().next(),
                    Some(
                        Protocol::Ip4(_)
                            | Protocol::Ip6(_)
                            | Protocol::Dns(_)
                            | Protocol::Dns4(_)
                            | Protocol::Dns6(_)
                    )
                )
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        let is_member = self.mesh.directory.contains(&peer);
        let p = self.peers.entry(peer).or_default();
        let mut merged = addrs.clone();
        if source == Source::Relayed {
            merged.extend(p.addrs.iter().filter(|a| !addrs.contains(a)).cloned());
        }
        let mut seen = Vec::with_capacity(merged.len());
        merged.retain(|a| {
            let fresh = !seen.contains(a);
            seen.push(a.clone());
            fresh
        });
        merged.truncate(MAX_ADDRS_PER_MEMBER);
        let has_new = merged.iter().any(|a| !p.addrs.contains(a));
        if has_new && !p.connected() {
            p.next_dial = Some(Instant::now());
            p.backoff = INITIAL_BACKOFF;
        }
        if has_new && p.relayed() {
            // A new address of a member reached only through a relay: try it at once.
            p.direct_retry_at = Some(Instant::now());
        }
        p.addr_results.retain(|a, _| merged.contains(a));
        p.addrs = merged.clone();
        // Addresses learned before the peer proved membership (identify often arrives first)
        // are stored once it has.
        if is_member && p.stored_addrs != merged {
            p.stored_addrs = merged.clone();
            let text: Vec<String> = merged.iter().map(|a| a.to_string()).collect();
            if let Err(error) = self.mesh.persist_addrs(&peer, &text).await {
                warn!(%peer, %error, "could not store peer addresses");
            }
        }
    }

    async fn on_member_event(
        &mut self,
        event: request_response::Event<Hello, HelloReply>,
    ) -> anyhow::Result<()> {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_hello(peer, request, channel).await,
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            } => return self.on_hello_reply(peer, response).await,
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "membership hello failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "membership hello from peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
        Ok(())
    }

    async fn on_hello(&mut self, peer: PeerId, hello: Hello, channel: ResponseChannel<HelloReply>) {
        let now = unix_now();
        let receipts: Vec<AdmissionReceipt> =
            hello.receipts.into_iter().take(MAX_RECEIPTS).collect();
        let record = hello.record;
        // A joining node checks the members it meets only structurally: it cannot judge freshness
        // before it knows the mesh, and no fake member can make it a member.
        let result = if self.mesh.is_member() {
            self.mesh
                .directory
                .admit_presented(record.clone(), peer, &receipts, now)
        } else if record.peer_id().ok() == Some(peer) {
            self.mesh.directory.admit_known(record.clone())
        } else {
            Err(voike_protocol::membership::AdmissionError::NotOwnRecord {
                presenter: peer.to_string(),
                owner: record.peer_id().map(|p| p.to_string()).unwrap_or_default(),
            })
        };
        let reply = match result {
            Ok(admitted) => {
                if admitted != Admitted::Known {
                    let stored = match admitted {
                        Admitted::Replaced { evicted } => {
                            self.mesh.persist_replacement(&record, evicted).await
                        }
                        _ => self.mesh.persist_member(&record).await,
                    };
                    if let Admitted::Replaced { evicted } = admitted {
                        self.ticket_conflict(&record, evicted);
                    }
                    if let Err(error) = stored {
                        warn!(%peer, %error, "could not store membership record; refusing the peer for now");
                        self.mesh_reject(
                            peer,
                            channel,
                            RejectCode::Invalid,
                            "the member could not store the record; try again".into(),
                        );
                        return;
                    }
                    info!(%peer, role = %record.body.role, "admitted new member");
                    if self.mesh.is_member() {
                        self.mesh.ledger.record(
                            "member.admit",
                            serde_json::json!({
                                "node": peer.to_string(),
                                "role": record.body.role.as_str(),
                                "joined_at": record.body.joined_at,
                            }),
                        );
                    }
                }
                let addrs = parse_addrs(&hello.listen_addrs);
                let mut newly = false;
                if let Some(p) = self.peers.get_mut(&peer) {
                    newly = !p.verified;
                    p.verified = true;
                    p.says_public = hello.public;
                    p.disconnect_at = None;
                    p.backoff = INITIAL_BACKOFF;
                }
                // Gossip and relaying for the peer start only now (see `Forgetful::gated`).
                self.swarm.behaviour_mut().gossipsub.allow(peer);
                self.swarm.behaviour_mut().relay_server.allow(peer);
                self.swarm.behaviour_mut().autonat_v2_server.allow(peer);
                // The peer knows other members than we do: ask it, by a hello of our own,
                // which it answers with its members.
                if hello.directory_hash.is_some()
                    && hello.directory_hash != Some(self.directory_hash())
                {
                    self.ask_members(peer);
                }
                self.learn_addrs(peer, addrs, Source::Peer).await;
                if newly {
                    info!(%peer, "member connected");
                    // A verified member connection is a sign of life: the failure detector
                    // starts watching the member now, not only after its first health report.
                    let _ = self.hyper_tx.try_send(HyperInput::Connected { peer });
                    // Catch up with a member as soon as it connects, both ways.
                    let _ = self.sync_tx.try_send(SyncTask::AntiEntropy { peer });
                } else {
                    debug!(%peer, "hello from a connected member (an announcement)");
                }
                if let Some((members, receipt)) = self.held_welcomes.remove(&peer)
                    && let Err(error) = self.on_welcome(peer, members, receipt).await
                {
                    warn!(%peer, %error, "could not apply a held welcome");
                }
                let receipt = if self.mesh.is_member() {
                    AdmissionReceipt::issue(&self.mesh.key, &record, now).ok()
                } else {
                    None
                };
                HelloReply::Welcome {
                    members: self.member_list(),
                    receipt,
                }
            }
            Err(error) => {
                warn!(%peer, %error, "refused peer: not a member of this mesh");
                // One budget for every refused peer, however many keys they use: the first
                // few of a window one by one, the rest as a count.
                if self.mesh.is_member() {
                    self.flush_refusals(Instant::now());
                    if self.refusals.1 < REFUSALS_PER_WINDOW {
                        self.refusals.1 += 1;
                        self.mesh.ledger.record(
                            "trust.peer_refused",
                            serde_json::json!({ "peer": peer.to_string(), "reason": error.to_string() }),
                        );
                    } else {
                        self.refusals.2 += 1;
                    }
                }
                self.mesh_reject(peer, channel, RejectCode::of(&error), error.to_string());
                return;
            }
        };
        if self
            .swarm
            .behaviour_mut()
            .member
            .inner_mut()
            .send_response(channel, reply)
            .is_err()
        {
            debug!(%peer, "peer left before the welcome was sent");
        }
    }

    fn mesh_reject(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<HelloReply>,
        code: RejectCode,
        reason: String,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .member
            .inner_mut()
            .send_response(channel, HelloReply::Rejected { code, reason });
        if let Some(p) = self.peers.get_mut(&peer) {
            p.verified = false;
            p.disconnect_at = Some(Instant::now() + REJECT_LINGER);
        }
        self.swarm.behaviour_mut().gossipsub.disallow(&peer);
        self.swarm.behaviour_mut().relay_server.disallow(&peer);
        self.swarm.behaviour_mut().autonat_v2_server.disallow(&peer);
    }

    async fn on_hello_reply(&mut self, peer: PeerId, reply: HelloReply) -> anyhow::Result<()> {
        match reply {
            HelloReply::Welcome { members, receipt } => {
                // Only a peer that proved its own membership can admit us or tell us about
                // members; if its hello has not been checked yet, keep the welcome until it is.
                if !self.peers.get(&peer).is_some_and(|p| p.verified) {
                    debug!(%peer, "welcome before the peer's own proof; holding it");
                    self.held_welcomes.insert(peer, (members, receipt));
                    return Ok(());
                }
                self.on_welcome(peer, members, receipt).await?;
            }
            HelloReply::Rejected { code, reason } => {
                if !self.mesh.is_member() {
                    anyhow::bail!("join rejected by {peer} ({code:?}): {reason}");
                }
                warn!(%peer, ?code, %reason, "peer refused our membership proof");
            }
        }
        Ok(())
    }

    async fn on_welcome(
        &mut self,
        peer: PeerId,
        members: Vec<MemberInfo>,
        receipt: Option<AdmissionReceipt>,
    ) -> anyhow::Result<()> {
        let receipt = receipt.filter(|r| {
            r.node == self.mesh.own.body.node
                && r.mesh_id == self.mesh.mesh_id()
                && r.verified_admitter() == Some(peer)
        });
        if !self.mesh.is_member() {
            self.mesh.complete_join(receipt).await?;
        } else if let Some(r) = receipt
            && self.mesh.receipts.len() < MAX_RECEIPTS
            && !self.mesh.receipts.iter().any(|x| x.admitter == r.admitter)
        {
            self.mesh.complete_join(Some(r)).await?;
        }
        for info in members.into_iter().take(MAX_MEMBERS_PER_REPLY) {
            let Ok(id) = info.record.peer_id() else {
                continue;
            };
            if id == self.mesh.peer_id {
                continue;
            }
            let record = info.record.clone();
            match self.mesh.admit_relayed(info.record).await {
                Ok(Admitted::New) => info!(peer = %id, via = %peer, "learned of member"),
                Ok(Admitted::Replaced { evicted }) => {
                    info!(peer = %id, via = %peer, "learned of member");
                    self.ticket_conflict(&record, evicted);
                }
                Ok(Admitted::Known) => {}
                Err(error) => {
                    warn!(peer = %id, via = %peer, %error, "ignored relayed membership record")
                }
            }
            if self.mesh.directory.contains(&id) {
                self.learn_addrs(id, parse_addrs(&info.addrs), Source::Relayed)
                    .await;
            }
        }
        Ok(())
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        self.mesh
            .directory
            .members()
            .take(MAX_MEMBERS_PER_REPLY)
            .map(|(id, record)| {
                let addrs: Vec<String> = if *id == self.mesh.peer_id {
                    self.listen_addrs.iter().map(|a| a.to_string()).collect()
                } else {
                    self.peers
                        .get(id)
                        .map(|p| p.addrs.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default()
                };
                MemberInfo {
                    record: record.clone(),
                    addrs,
                }
            })
            .collect()
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SelfInfo { reply } => {
                let _ = reply.send(self.self_info());
            }
            Command::PortMapping(event) => self.on_pmp_event(event),
            Command::Nodes { reply } => {
                let _ = reply.send(self.nodes());
            }
            Command::Sessions { reply } => {
                let _ = reply.send(self.sessions());
            }
            Command::Goodbye { reply } => self.say_goodbye(reply),
            Command::PublishLease(renewal) => {
                if self.mesh.is_member() && !self.leaving {
                    let topic = self.lease_topic.clone();
                    self.publish(topic, renewal, "lease renewal");
                }
            }
            Command::Ready { reply } => {
                let _ = reply.send(self.mesh.is_member() && self.listeners_pending.is_empty());
            }
            Command::Invite { ttl, role, reply } => {
                let _ = reply.send(self.invite(ttl, role));
            }
            Command::Sync { peer, req, reply } => {
                if !self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.verified && p.connected())
                {
                    let _ = reply.send(Err(format!("{peer} is not a connected member")));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .inner_mut()
                    .send_request(&peer, req);
                self.sync_pending.insert(id, (peer, reply));
            }
            Command::SyncRespond { channel, resp } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .inner_mut()
                    .send_response(channel, resp)
                    .is_err()
                {
                    debug!("peer left before a sync answer was sent");
                }
            }
        }
    }

    /// Applies revocations that arrived in the members document: the revoked members' links are
    /// closed at once, and the directory refuses them (and tickets they issued) from now on.
    fn apply_revocations(&mut self) {
        if !self.authority_rx.has_changed().unwrap_or(false) {
            return;
        }
        self.authority_rx.mark_unchanged();
        let auth = self.state.authority();
        let set = auth
            .revoked
            .keys()
            .filter_map(|n| n.parse::<PeerId>().ok())
            .collect();
        for peer in self.mesh.directory.set_revoked(set) {
            warn!(%peer, "member revoked: closing its links");
            let _ = self.swarm.disconnect_peer_id(peer);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.next_dial = None;
            }
        }
    }

    /// Keeps the state's view of members and roles up to date (the directory only grows), and
    /// tells the members when this node's view of them changed.
    fn publish_roster(&mut self) {
        let hash = self.directory_hash();
        let addrs = self.advertised_addrs();
        if hash != self.announced_hash || addrs != self.announced_addrs {
            self.announced_hash = hash;
            self.announced_addrs = addrs;
            // A moment later, so that a burst of changes makes one round of hellos.
            self.announce_members_at
                .get_or_insert(Instant::now() + Duration::from_secs(1));
        }
        let n = self.mesh.directory.generation();
        if n == self.roster_len {
            return;
        }
        self.roster_len = n;
        self.state.set_roster(
            self.mesh
                .directory
                .members()
                .map(|(id, r)| (*id, r.body.role))
                .collect(),
        );
    }

    fn publish_health(&mut self, report: Vec<u8>) {
        if !self.mesh.is_member() || self.leaving {
            return;
        }
        let n = self.swarm.connected_peers().count() as u32;
        let _ = self.hyper_tx.try_send(HyperInput::Connections(n));
        self.state
            .metrics()
            .hm_gossip_bytes
            .get_or_create(&crate::metrics::DirectionLabel {
                direction: "out".into(),
            })
            .inc_by(report.len() as u64);
        let topic = self.health_topic.clone();
        self.publish(topic, report, "health report");
    }

    /// Publishes on a gossipsub topic; having no subscribed peer yet is not an error.
    fn publish(&mut self, topic: gossipsub::IdentTopic, data: Vec<u8>, what: &str) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .publish(topic, data)
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(error) => debug!(%error, "{what} not published"),
        }
    }

    /// Sends a signed leave to every connected member; `reply` gets the outcome once all
    /// answered (see [`SwarmHandle::goodbye`]).
    fn say_goodbye(&mut self, reply: oneshot::Sender<Goodbye>) {
        self.leaving = true;
        let members: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verified && p.connected())
            .map(|(id, _)| *id)
            .collect();
        if !self.mesh.is_member() || members.is_empty() || self.goodbye.is_some() {
            let _ = reply.send(Goodbye::default());
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let leave = match Leave::sign(&self.mesh.key, &self.mesh.mesh_id().0, now_ms) {
            Ok(l) => l,
            Err(error) => {
                warn!(%error, "cannot sign a leave message");
                let _ = reply.send(Goodbye::default());
                return;
            }
        };
        let waiting: HashSet<OutboundRequestId> = members
            .iter()
            .map(|peer| {
                self.swarm
                    .behaviour_mut()
                    .leave
                    .inner_mut()
                    .send_request(peer, leave.clone())
            })
            .collect();
        info!(members = waiting.len(), "saying goodbye to the members");
        self.goodbye = Some(PendingGoodbye {
            outcome: Goodbye {
                sent: waiting.len(),
                acked: 0,
            },
            waiting,
            reply,
        });
    }

    fn on_leave_event(&mut self, event: request_response::Event<Leave, LeaveAck>) {
        let done = match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.on_leave(peer, request);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .leave
                    .inner_mut()
                    .send_response(channel, LeaveAck { received: true });
                None
            }
            request_response::Event::Message {
                message: request_response::Message::Response { request_id, .. },
                ..
            } => Some((request_id, true)),
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "leave not acknowledged");
                Some((request_id, false))
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "leave from peer failed");
                None
            }
            request_response::Event::ResponseSent { .. } => None,
        };
        let Some((id, acked)) = done else {
            return;
        };
        let Some(g) = self.goodbye.as_mut() else {
            return;
        };
        if g.waiting.remove(&id) && acked {
            g.outcome.acked += 1;
        }
        if g.waiting.is_empty()
            && let Some(g) = self.goodbye.take()
        {
            let _ = g.reply.send(g.outcome);
        }
    }

    /// A member's leave: taken only through a verified member, signed by a member of this mesh
    /// (not this node); Hypermesh then checks it is newer than all it heard from that member.
    fn on_leave(&mut self, via: PeerId, leave: Leave) {
        let via_verified = self.peers.get(&via).is_some_and(|p| p.verified);
        let author = if !self.mesh.is_member() || !via_verified {
            Err("not sent by a verified member".to_string())
        } else {
            match leave.verify(&self.mesh.mesh_id().0) {
                Ok(author) if author == self.mesh.peer_id => Err("signed by this node".into()),
                Ok(author) if !self.mesh.directory.contains(&author) => {
                    Err(format!("signed by {author}, not a member"))
                }
                Ok(author) => Ok(author),
                Err(error) => Err(error.to_string()),
            }
        };
        match author {
            Ok(from) => {
                debug!(%via, node = %from, "leave received");
                let _ = self.hyper_tx.try_send(HyperInput::Leave { from, leave });
            }
            Err(reason) => warn!(%via, %reason, "refused a leave message"),
        }
    }

    /// A health report: accepted only from a member, signed by that member's key.
    fn on_health(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        self.state
            .metrics()
            .hm_gossip_bytes
            .get_or_create(&crate::metrics::DirectionLabel {
                direction: "in".into(),
            })
            .inc_by(message.data.len() as u64);
        // A report that does not verify, or that its publisher did not sign, is rejected (a
        // gossipsub penalty); one from a node that is not (yet) a member here, or relayed by a
        // peer whose handshake is not done, is ignored.
        let via_verified = self.peers.get(&via).is_some_and(|p| p.verified);
        let (verified, acceptance) =
            match voike_protocol::health::HealthReport::from_bytes(&message.data) {
                Ok((report, author)) if Some(author) == message.source => {
                    if via_verified
                        && author != self.mesh.peer_id
                        && self.mesh.directory.contains(&author)
                    {
                        (Some((report, author)), gossipsub::MessageAcceptance::Accept)
                    } else {
                        (None, gossipsub::MessageAcceptance::Ignore)
                    }
                }
                _ => (None, gossipsub::MessageAcceptance::Reject),
            };
        if verified.is_none() {
            let source = message.source.map(|p| p.to_string()).unwrap_or_default();
            debug!(%via, %source, "refused a health report");
        }
        self.state
            .metrics()
            .hm_gossip
            .get_or_create(&GossipLabel {
                direction: "in".into(),
                result: if verified.is_some() {
                    "accepted"
                } else {
                    "invalid"
                }
                .into(),
            })
            .inc();
        self.swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .report_message_validation_result(&id, &via, acceptance);
        if let Some((report, from)) = verified {
            let _ = self.hyper_tx.try_send(HyperInput::Report { from, report });
        }
    }

    /// A lease renewal: accepted only from a member, signed by that member's key, for a
    /// claim of that member the documents hold ([`StateHandle::renew_lease`]).
    fn on_lease_renewal(
        &mut self,
        via: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let via_verified = self.peers.get(&via).is_some_and(|p| p.verified);
        let (outcome, acceptance) =
            match voike_protocol::lease::LeaseRenewal::from_bytes(&message.data) {
                Ok((renewal, author)) if Some(author) == message.source => {
                    if via_verified
                        && author != self.mesh.peer_id
                        && self.mesh.directory.contains(&author)
                    {
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        let outcome =
                            self.state
                                .renew_lease(&author.to_string(), &renewal.body, now_ms);
                        // A renewal of a claim not (yet) merged here is passed on all the
                        // same: the claim may be on its way to this node and others.
                        (outcome.as_str(), gossipsub::MessageAcceptance::Accept)
                    } else {
                        ("not_member", gossipsub::MessageAcceptance::Ignore)
                    }
                }
                Ok(_) => ("invalid", gossipsub::MessageAcceptance::Reject),
                Err(error) => {
                    debug!(%via, %error, "refused a lease renewal");
                    ("invalid", gossipsub::MessageAcceptance::Reject)
                }
            };
        self.state
            .metrics()
            .grid_lease_renewals
            .get_or_create(&crate::metrics::ResultLabel {
                result: outcome.into(),
            })
            .inc();
        self.swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .report_message_validation_result(&id, &via, acceptance);
    }

    /// Publishes this node's digest on the sync topic.
    fn announce(&mut self) {
        if !self.mesh.is_member() {
            return;
        }
        let digest = match self.state.digest() {
            Ok(d) => d,
            Err(error) => {
                warn!(%error, "cannot compute the sync digest");
                return;
            }
        };
        let bytes = digest.to_bytes();
        self.state.metrics().bytes_sent.inc_by(bytes.len() as u64);
        let topic = self.topic.clone();
        self.publish(topic, bytes, "announce");
    }

    fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        self.state
            .metrics()
            .bytes_received
            .inc_by(message.data.len() as u64);
        // Reject (a gossipsub penalty for the forwarder) only what is invalid in itself; a
        // digest from a node this one does not count as a member (yet) is ignored, since an
        // honest member may forward one from a member admitted elsewhere a moment ago.
        let decoded = Digest::from_bytes(&message.data);
        let from_member = message
            .source
            .is_some_and(|s| s != self.mesh.peer_id && self.mesh.directory.contains(&s))
            && self.peers.get(&via).is_some_and(|p| p.verified);
        let (digest, acceptance) = match decoded {
            Some(d) if from_member => (Some(d), gossipsub::MessageAcceptance::Accept),
            Some(_) => (None, gossipsub::MessageAcceptance::Ignore),
            None => (None, gossipsub::MessageAcceptance::Reject),
        };
        if digest.is_none() {
            self.state
                .metrics()
                .requests_refused
                .get_or_create(&ReasonLabel {
                    reason: "invalid_announce".into(),
                })
                .inc();
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .inner_mut()
            .report_message_validation_result(&id, &via, acceptance);
        let (Some(digest), Some(source)) = (digest, message.source) else {
            return;
        };
        // Pull from the node that made the change when it is connected; else from the relay.
        let peer = if self
            .peers
            .get(&source)
            .is_some_and(|p| p.verified && p.connected())
        {
            source
        } else {
            via
        };
        let _ = self.sync_tx.try_send(SyncTask::Digest {
            peer,
            digest,
            kind: "announce",
        });
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_sync_request(peer, request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, reply)) = self.sync_pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((_, reply)) = self.sync_pending.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let refuse = |this: &mut Self, reason: &str, resp: SyncResponse, channel| {
            this.state
                .metrics()
                .requests_refused
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            let _ = this
                .swarm
                .behaviour_mut()
                .sync
                .inner_mut()
                .send_response(channel, resp);
        };
        if !self.peers.get(&peer).is_some_and(|p| p.verified) {
            refuse(
                self,
                "not_member",
                SyncResponse::Refused("not a member of this mesh".into()),
                channel,
            );
            return;
        }
        // Token bucket per peer.
        let now = Instant::now();
        let rate = f64::from(self.sync_config.peer_request_rate);
        let burst = f64::from(self.sync_config.peer_request_burst);
        let (tokens, last) = self.sync_buckets.entry(peer).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens < 1.0 {
            refuse(self, "rate_limited", SyncResponse::Busy, channel);
            return;
        }
        *tokens -= 1.0;
        if let SyncRequest::Digest(d) = &request {
            let _ = self.sync_tx.try_send(SyncTask::Digest {
                peer,
                digest: d.clone(),
                kind: "anti_entropy",
            });
        }
        let state = self.state.clone();
        let cmd_tx = self.cmd_tx.clone();
        tokio::task::spawn_blocking(move || {
            let resp = sync::serve(&state, request);
            if let Some(tx) = cmd_tx.upgrade() {
                let _ = tx.blocking_send(Command::SyncRespond { channel, resp });
            }
        });
    }

    fn self_info(&self) -> SelfInfo {
        SelfInfo {
            node_id: self.mesh.peer_id.to_string(),
            mesh_id: self.mesh.mesh_id().to_string(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            api_addr: self.api_addr.clone(),
            roles: vec![self.mesh.role().to_string()],
            genesis: self.mesh.is_genesis(),
            membership: if self.mesh.is_member() {
                "member"
            } else {
                "joining"
            }
            .to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            connected_peers: self.connected_members(),
            known_members: self.mesh.directory.len(),
            dns_addr: None,
            doh_addr: None,
            reachability: match self.nat_status {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            }
            .into(),
            external_addrs: self
                .external_addrs
                .iter()
                .chain(self.swarm.external_addresses())
                .map(|a| a.to_string())
                .collect(),
            relays: self.relays.keys().map(|p| p.to_string()).collect(),
            port_mapping: self.port_mapping.as_str().into(),
        }
    }

    /// Holds reservations on up to `p2p.relay.relays` member relays while AutoNAT says this
    /// node is behind NAT (private), so that members that cannot dial it reach it through them
    /// (its `/p2p-circuit` listen addresses are advertised like any other); lets them go when
    /// it is no longer private. A relay is a member this node dialed directly.
    /// Returns when to look again (a relay that failed may be retried then), if anything waits.
    fn keep_relays(&mut self, now: Instant) -> Option<Instant> {
        const RETRY: Duration = Duration::from_secs(5);
        if !self.relay_config.reserve {
            return None;
        }
        // Only once AutoNAT found this node unreachable: a node that is public (or not known
        // yet) holds no reservations, so meshes on one network see no relay traffic at all.
        let private = matches!(self.nat_status, autonat::NatStatus::Private);
        if !private {
            for (relay, listener) in std::mem::take(&mut self.relays) {
                info!(%relay, "not known to be behind NAT: releasing the relay reservation");
                self.swarm.remove_listener(listener);
            }
            return None;
        }
        if self.relays.len() >= self.relay_config.relays || !self.listeners_pending.is_empty() {
            return None;
        }
        let mut retry_at: Option<Instant> = None;
        let mut candidates: Vec<(PeerId, Multiaddr, (bool, Duration))> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.verified
                    // A member behind NAT itself (reached by a hole punch, or on this LAN)
                    // relays for nobody outside.
                    && p.says_public != Some(false)
                    && !self.relays.contains_key(id)
                    && !self.mesh.directory.is_revoked(id)
                    && p.relay_failed_at
                        .is_none_or(|at| now.duration_since(at) > RETRY)
            })
            .filter_map(|(id, p)| {
                let conn = p.dialed.iter().next()?;
                let addr = p.connections.get(conn).filter(|a| !is_circuit(a))?;
                // Members that say they are public first, then the nearest.
                Some((
                    *id,
                    without_peer(addr),
                    (
                        p.says_public != Some(true),
                        p.rtt.unwrap_or(Duration::from_secs(1)),
                    ),
                ))
            })
            .collect();
        candidates.sort_by_key(|(id, _, rank)| (*rank, *id));
        for (relay, addr, _) in candidates {
            if self.relays.len() >= self.relay_config.relays {
                break;
            }
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    info!(%relay, addr = %circuit, "reserving a slot on a member relay");
                    self.relays.insert(relay, listener);
                }
                Err(error) => {
                    warn!(%relay, %error, "cannot listen through a member relay");
                    if let Some(p) = self.peers.get_mut(&relay) {
                        p.relay_failed_at = Some(now);
                    }
                }
            }
        }
        if self.relays.len() < self.relay_config.relays {
            // Relays in their retry pause: wake when the first one may be tried again.
            for p in self.peers.values() {
                if let Some(at) = p.relay_failed_at
                    && p.verified
                    && now.duration_since(at) <= RETRY
                {
                    let due = at + RETRY + Duration::from_millis(10);
                    retry_at = Some(retry_at.map_or(due, |r| r.min(due)));
                }
            }
        }
        retry_at
    }

    fn sessions(&self) -> Vec<Session> {
        let kx = offered_key_exchange(&self.mesh.key);
        let mut out: Vec<Session> = self
            .peers
            .iter()
            .flat_map(|(id, p)| {
                let kx = kx.clone();
                p.connections.values().map(move |addr| {
                    let text = addr.to_string();
                    let relayed = text.contains("/p2p-circuit");
                    let transport = if text.contains("/quic") {
                        "quic"
                    } else if text.contains("/tcp/") {
                        "tcp"
                    } else {
                        "other"
                    };
                    Session {
                        peer: id.to_string(),
                        member: p.verified,
                        remote_addr: text,
                        transport: transport.into(),
                        relayed,
                        // QUIC always runs TLS 1.3; over TCP both sides offer TLS before noise
                        // (multistream-select takes the dialer's first choice the other side
                        // supports), so two voiked nodes agree on TLS.
                        security: if transport == "quic" {
                            "tls1.3".into()
                        } else {
                            "tls1.3 (preferred over noise)".into()
                        },
                        key_exchange: kx.clone(),
                        rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer).then(a.remote_addr.cmp(&b.remote_addr)));
        out
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.mesh
            .directory
            .members()
            .map(|(id, record)| {
                let roles = vec![record.body.role.to_string()];
                if *id == self.mesh.peer_id {
                    return NodeInfo {
                        node_id: id.to_string(),
                        addresses: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
                        connected: true,
                        connection: None,
                        rtt_ms: None,
                        state: "self".into(),
                        roles,
                        joined_at: record.body.joined_at,
                        is_self: true,
                        revoked: self.mesh.directory.is_revoked(id),
                    };
                }
                let p = self.peers.get(id);
                let connected = p.is_some_and(|p| p.connected() && p.verified);
                NodeInfo {
                    node_id: id.to_string(),
                    addresses: p
                        .map(|p| p.addrs.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default(),
                    connected,
                    connection: p
                        .filter(|_| connected)
                        .map(|p| if p.relayed() { "relayed" } else { "direct" }.to_string()),
                    rtt_ms: p
                        .filter(|_| connected)
                        .and_then(|p| p.rtt)
                        .map(|r| r.as_secs_f64() * 1000.0),
                    state: if connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                    .into(),
                    roles,
                    joined_at: record.body.joined_at,
                    is_self: false,
                    revoked: self.mesh.directory.is_revoked(id),
                }
            })
            .collect()
    }

    fn invite(&self, ttl: Duration, role: Role) -> Result<InviteResponse, InviteError> {
        if !self.mesh.is_member() {
            return Err(InviteError::NotMember);
        }
        if self.mesh.role() != Role::Admin {
            return Err(InviteError::NotAdmin(self.mesh.role()));
        }
        let me = self.mesh.peer_id;
        let mut bootstrap: Vec<String> = self
            .listen_addrs
            .iter()
            .map(|a| with_peer(a, me).to_string())
            .collect();
        if bootstrap.is_empty() {
            return Err(InviteError::NoAddress);
        }
        for (id, p) in &self.peers {
            if p.verified && p.connected() {
                bootstrap.extend(
                    p.addrs
                        .iter()
                        .take(2)
                        .map(|a| with_peer(a, *id).to_string()),
                );
            }
        }
        bootstrap.truncate(MAX_BOOTSTRAP_ADDRS);
        let expires_at = unix_now().saturating_add(ttl.as_secs().max(1));
        let body = TicketBody {
            charter: self.mesh.directory.charter().clone(),
            role,
            expires_at,
            nonce: rand::random(),
            bootstrap: bootstrap.clone(),
            issuer: Vec::new(),
        };
        let proof = (!self.mesh.is_genesis()).then(|| self.mesh.own.clone());
        let ticket = Ticket::issue(&self.mesh.key, body, proof)
            .map_err(|e| InviteError::Sign(e.to_string()))?;
        let text = ticket
            .encode()
            .map_err(|e| InviteError::Sign(e.to_string()))?;
        info!(%role, expires = %voike_protocol::time::rfc3339(expires_at), "issued invite");
        Ok(InviteResponse {
            ticket: text,
            role: role.to_string(),
            expires_at,
            bootstrap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn dial_addresses_rank_what_worked_first_then_quic_and_leave_out_what_only_failed() {
        let tcp_ok = addr("/ip4/198.51.100.7/tcp/4747");
        let quic_new = addr("/ip4/198.51.100.7/udp/4747/quic-v1");
        let tcp_new = addr("/ip4/198.51.100.8/tcp/4747");
        let private_dead = addr("/ip4/10.9.1.2/udp/4747/quic-v1");
        let circuit = addr(
            "/ip4/198.51.100.1/tcp/4747/p2p/12D3KooWGiXfYBJWBpWHkUAsGUKz3Xq1cBfHRuqgeb8mwE7tNrT5/p2p-circuit",
        );
        let mut p = Peer {
            addrs: vec![
                private_dead.clone(),
                tcp_new.clone(),
                circuit.clone(),
                quic_new.clone(),
                tcp_ok.clone(),
            ],
            ..Peer::default()
        };
        p.addr_results.insert(
            tcp_ok.clone(),
            AddrResult {
                ok_at: Some(Instant::now()),
                failures: 0,
            },
        );
        p.addr_results.insert(
            private_dead.clone(),
            AddrResult {
                ok_at: None,
                failures: ADDR_EXPIRE_FAILURES,
            },
        );
        assert_eq!(
            p.dial_addrs(false),
            vec![
                tcp_ok.clone(),
                quic_new.clone(),
                tcp_new.clone(),
                circuit.clone()
            ]
        );
        assert_eq!(
            p.dial_addrs(true),
            vec![tcp_ok.clone(), quic_new.clone(), tcp_new.clone()]
        );
        // When nothing else is left, even an address that only failed is tried.
        let only_dead = Peer {
            addrs: vec![private_dead.clone()],
            addr_results: p.addr_results.clone(),
            ..Peer::default()
        };
        assert_eq!(only_dead.dial_addrs(false), vec![private_dead]);
    }
}
