//! The composed libp2p behaviour of a node and how the swarm is built.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, gossipsub,
    identify, identity::Keypair, noise, ping, relay, request_response, tcp, tls, upnp, yamux,
};
use voike_protocol::health::Leave;
use voike_protocol::sync::{MAX_DIGEST_BYTES, SYNC_PROTOCOL};
use voike_protocol::wire::{self, Hello, HelloReply, LeaveAck};

use super::codec::SyncCodec;
use super::forget::Forgetful;
use crate::metrics::Metrics;

/// Connections being set up from outside at once (a flood of handshakes waits its turn).
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Established connections from outside (members' and not-yet-verified peers').
pub const MAX_ESTABLISHED_INCOMING: u32 = 512;
/// Connections per peer (TCP and QUIC, plus a dead one still closing, with room to spare).
pub const MAX_PER_PEER: u32 = 8;
/// Interval of the gossipsub heartbeat (mesh maintenance, lazy gossip of message ids).
pub const GOSSIP_HEARTBEAT: Duration = Duration::from_secs(10);
/// identify protocol version string (informational: membership proofs decide who is meshed with).
pub const IDENTIFY_PROTOCOL: &str = "/voike/1.0.0";

/// Every behaviour of the swarm, polled by the one event loop.
#[allow(
    missing_debug_implementations,
    reason = "libp2p behaviours do not implement Debug"
)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a connection over the limits is refused before any other behaviour
    /// spends anything on it.
    pub limits: connection_limits::Behaviour,
    pub relay: relay::client::Behaviour,
    /// The circuit-relay v2 server every member runs for members only: gated, so a peer's
    /// reservation and circuit requests are looked at only once it proved membership.
    pub relay_server: Forgetful<relay::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub member: Forgetful<request_response::cbor::Behaviour<Hello, HelloReply>>,
    /// The goodbye of a node that stops cleanly (`/voike/leave/1`); the event loop takes a
    /// leave only from a verified member.
    pub leave: Forgetful<request_response::cbor::Behaviour<Leave, LeaveAck>>,
    pub autonat: autonat::Behaviour,
    /// AutoNAT v2: tests each candidate address (identify's observed ones) and confirms those
    /// a member could dial back; v1 above gives the overall verdict relays are chosen by.
    pub autonat_v2: autonat::v2::client::Behaviour<rand010::rngs::StdRng>,
    /// Its server side, for members only (a dial-back is work done for the asker).
    pub autonat_v2_server: Forgetful<autonat::v2::server::Behaviour<rand010::rngs::StdRng>>,
    pub dcutr: dcutr::Behaviour,
    pub gossipsub: Forgetful<gossipsub::Behaviour>,
    pub sync: Forgetful<request_response::Behaviour<SyncCodec>>,
    /// UPnP IGD port mapping (`p2p.port_mapping`), present only where there is something to
    /// map (see [`port_mapping_useful`]): it searches for a gateway as soon as it is made.
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

/// Whether asking the router for port mappings can help: some listener is on a private IPv4
/// address, or on `0.0.0.0` (which includes the host's LAN addresses). UPnP IGD maps IPv4
/// only, and a node on loopback or a public address has nothing to map — such a node never
/// sends a gateway search.
pub fn port_mapping_useful(listen: &[Multiaddr]) -> bool {
    listen.iter().any(|a| {
        matches!(a.iter().next(), Some(Protocol::Ip4(ip)) if ip.is_unspecified() || ip.is_private())
    })
}

/// Settings of [`build`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub handshake_timeout: Duration,
    pub sync_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub relay: RelayLimits,
    /// Map the listen ports on the router (UPnP IGD).
    pub port_mapping: bool,
}

/// What a member relays for other members (`[p2p.relay]`).
#[derive(Clone, Debug)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub reservation_duration: Duration,
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
}

/// Builds the swarm: QUIC, and TCP with TLS (preferred) or noise, both multiplexed with yamux;
/// relay client transport for NAT traversal.
pub fn build(key: Keypair, opts: BuildOptions) -> anyhow::Result<Swarm<Behaviour>> {
    let BuildOptions {
        ping_interval,
        ping_timeout,
        handshake_timeout,
        sync_timeout,
        metrics,
        relay: relay_limits,
        port_mapping,
    } = opts;
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (tls::Config::new, noise::Config::new),
            yamux::Config::default,
        )?
        // QUIC's own keep-alive (5 s by default) is not needed where libp2p pings every
        // connection: a connection stays open while pings are answered, and closes as idle
        // when no packet came for a ping interval plus the ping timeout (the same bound the
        // event loop applies to pings).
        .with_quic_config(|mut c| {
            let idle = ping_interval + ping_timeout;
            c.max_idle_timeout = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
            c.keep_alive_interval = ping_interval.min(idle / 2);
            c
        })
        .with_relay_client(
            (tls::Config::new, noise::Config::new),
            yamux::Config::default,
        )?
        .with_behaviour(|key, relay| {
            let peer = key.public().to_peer_id();
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("voiked/{}", env!("CARGO_PKG_VERSION")))
                    .with_interval(Duration::from_secs(15 * 60))
                    .with_push_listen_addr_updates(true),
            );
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(ping_interval)
                    .with_timeout(ping_timeout),
            );
            let member = request_response::cbor::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(wire::MAX_HELLO_BYTES)
                    .set_response_size_maximum(wire::MAX_REPLY_BYTES),
                [(
                    StreamProtocol::new(wire::MEMBER_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(handshake_timeout),
            );
            let leave = request_response::cbor::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(wire::MAX_LEAVE_BYTES)
                    .set_response_size_maximum(wire::MAX_LEAVE_ACK_BYTES),
                [(
                    StreamProtocol::new(wire::LEAVE_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_millis(wire::LEAVE_TIMEOUT_MS)),
            );
            // Probes start soon after the first connections and test any address, not only
            // global ones (a lab or a private network has no other kind).
            let autonat = autonat::Behaviour::new(
                peer,
                autonat::Config {
                    boot_delay: Duration::from_secs(2),
                    retry_interval: Duration::from_secs(20),
                    refresh_interval: Duration::from_secs(5 * 60),
                    confidence_max: 2,
                    only_global_ips: false,
                    ..autonat::Config::default()
                },
            );
            let autonat_v2 = autonat::v2::client::Behaviour::new(
                rand010::make_rng::<rand010::rngs::StdRng>(),
                autonat::v2::client::Config::default().with_probe_interval(Duration::from_secs(15)),
            );
            let autonat_v2_server =
                autonat::v2::server::Behaviour::new(rand010::make_rng::<rand010::rngs::StdRng>());
            let relay_server = relay::Behaviour::new(
                peer,
                relay::Config {
                    max_reservations: relay_limits.max_reservations,
                    max_reservations_per_peer: 2,
                    reservation_duration: relay_limits.reservation_duration,
                    max_circuits: relay_limits.max_circuits,
                    max_circuits_per_peer: relay_limits.max_circuits_per_peer,
                    max_circuit_duration: relay_limits.max_circuit_duration,
                    max_circuit_bytes: relay_limits.max_circuit_bytes,
                    ..relay::Config::default()
                },
            );
            let dcutr = dcutr::Behaviour::new(peer);
            // Digests and health reports are small and published to every subscribed peer
            // (flood publish), so the gossipsub mesh only forwards them to members that are not
            // connected to their author. The heartbeat only maintains that mesh, so it can be
            // slow (each one wakes the node), and a small mesh forwards fewer duplicates (each
            // one a message every member receives and drops).
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(GOSSIP_HEARTBEAT)
                .mesh_n(3)
                .mesh_n_low(2)
                .mesh_n_high(4)
                .mesh_outbound_min(1)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_DIGEST_BYTES + 1024)
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            let sync = request_response::Behaviour::with_codec(
                SyncCodec::new(metrics),
                [(
                    StreamProtocol::new(SYNC_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(sync_timeout)
                    .with_max_concurrent_streams(64),
            );
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                    .with_max_established_per_peer(Some(MAX_PER_PEER)),
            );
            Ok(Behaviour {
                limits,
                relay,
                relay_server: Forgetful::gated(relay_server),
                identify,
                ping,
                member: Forgetful::new(member),
                leave: Forgetful::new(leave),
                autonat,
                autonat_v2,
                autonat_v2_server: Forgetful::gated(autonat_v2_server),
                dcutr,
                gossipsub: Forgetful::gated(gossipsub),
                sync: Forgetful::new(sync),
                upnp: Toggle::from(port_mapping.then(upnp::tokio::Behaviour::default)),
            })
        })?
        // Members stay connected; connections are closed by the mesh logic, not by idleness.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}
