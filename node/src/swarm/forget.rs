//! [`Forgetful`]: a behaviour wrapper that can let go of a dead connection at once.
//!
//! Closing a connection in libp2p is graceful: the muxer's close waits until what was queued is
//! sent. On a dead TCP link that can take as long as TCP takes to give up (many minutes), and
//! meanwhile the wrapped behaviour keeps using the connection: request-response sends every
//! other request over it (they hang until their timeout), gossipsub may queue messages on it.
//! [`Forgetful::forget`] tells the wrapped behaviour the connection is closed now (so its pending
//! requests fail and new ones go over the live connections); the late real close, and whatever
//! the dead connection's handler still reports, are then swallowed. Connection counts the wrapped
//! behaviour sees (`other_established`, `remaining_established`) leave forgotten ones out.

use std::collections::{HashMap, HashSet};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// Wraps `B`; see the module documentation.
#[allow(
    missing_debug_implementations,
    reason = "libp2p behaviours do not implement Debug"
)]
pub struct Forgetful<B> {
    inner: B,
    /// Connections the wrapped behaviour knows as open.
    live: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    /// Connections it was told are closed while the swarm still has them.
    forgotten: HashSet<ConnectionId>,
}

impl<B: NetworkBehaviour> Forgetful<B> {
    pub fn new(inner: B) -> Self {
        Forgetful {
            inner,
            live: HashMap::new(),
            forgotten: HashSet::new(),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    fn live_count(&self, peer: &PeerId) -> usize {
        self.live.values().filter(|(p, _)| p == peer).count()
    }

    /// Tells the wrapped behaviour that `conn` is closed (the swarm may still be closing it).
    pub fn forget(&mut self, conn: ConnectionId) {
        let Some((peer, endpoint)) = self.live.remove(&conn) else {
            return;
        };
        self.forgotten.insert(conn);
        let remaining = self.live_count(&peer);
        self.inner
            .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: peer,
                connection_id: conn,
                endpoint: &endpoint,
                cause: None,
                remaining_established: remaining,
            }));
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Forgetful<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let other = self.live_count(&e.peer_id);
                self.live
                    .insert(e.connection_id, (e.peer_id, e.endpoint.clone()));
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(
                    ConnectionEstablished {
                        other_established: other,
                        ..e
                    },
                ));
            }
            FromSwarm::ConnectionClosed(e) => {
                if self.forgotten.remove(&e.connection_id) {
                    return;
                }
                self.live.remove(&e.connection_id);
                let remaining = self.live_count(&e.peer_id);
                self.inner
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        remaining_established: remaining,
                        ..e
                    }));
            }
            FromSwarm::AddressChange(e) if self.forgotten.contains(&e.connection_id) => {}
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.forgotten.contains(&connection_id) {
            return;
        }
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
