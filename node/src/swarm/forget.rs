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
//!
//! A gated wrapper ([`Forgetful::gated`]) also holds back what the wrapped behaviour sends to a
//! peer, and what that peer's handlers report, until the peer is [`Forgetful::allow`]ed (it
//! passed the membership handshake): gossipsub then publishes nothing — not its subscriptions,
//! not a digest, not a health report — to a peer that has not proven it is a member.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Events held per peer and direction until the peer is allowed (the oldest go first beyond it;
/// gossip is best effort, anti-entropy carries the state).
const HELD_PER_PEER: usize = 64;

/// Wraps `B`; see the module documentation.
#[allow(
    missing_debug_implementations,
    reason = "libp2p behaviours do not implement Debug"
)]
pub struct Forgetful<B: NetworkBehaviour> {
    inner: B,
    /// Connections the wrapped behaviour knows as open.
    live: HashMap<ConnectionId, (PeerId, ConnectedPoint)>,
    /// Connections it was told are closed while the swarm still has them.
    forgotten: HashSet<ConnectionId>,
    /// `Some` when gated: the peers allowed, and what is held for the others.
    gate: Option<Gate<B>>,
}

#[allow(
    missing_debug_implementations,
    reason = "handler events do not implement Debug"
)]
struct Gate<B: NetworkBehaviour> {
    allowed: HashSet<PeerId>,
    out: HashMap<PeerId, VecDeque<(NotifyHandler, THandlerInEvent<B>)>>,
    inbound: HashMap<PeerId, VecDeque<(ConnectionId, THandlerOutEvent<B>)>>,
    ready: VecDeque<(PeerId, NotifyHandler, THandlerInEvent<B>)>,
    /// Connections whose establishment the wrapped behaviour has not been told of yet (it
    /// greets a peer, e.g. with its subscriptions, when told).
    unannounced: HashSet<ConnectionId>,
    waker: Option<Waker>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= HELD_PER_PEER {
        q.pop_front();
    }
    q.push_back(item);
}

impl<B: NetworkBehaviour> Forgetful<B> {
    pub fn new(inner: B) -> Self {
        Forgetful {
            inner,
            live: HashMap::new(),
            forgotten: HashSet::new(),
            gate: None,
        }
    }

    /// A wrapper that holds back everything to and from a peer until it is allowed.
    pub fn gated(inner: B) -> Self {
        let mut f = Self::new(inner);
        f.gate = Some(Gate {
            allowed: HashSet::new(),
            out: HashMap::new(),
            inbound: HashMap::new(),
            ready: VecDeque::new(),
            unannounced: HashSet::new(),
            waker: None,
        });
        f
    }

    /// Lets `peer` through (it proved membership): what was held is delivered now.
    pub fn allow(&mut self, peer: PeerId) {
        let Some(gate) = &mut self.gate else {
            return;
        };
        if !gate.allowed.insert(peer) {
            return;
        }
        if let Some(q) = gate.out.remove(&peer) {
            gate.ready.extend(q.into_iter().map(|(h, e)| (peer, h, e)));
        }
        let inbound = gate.inbound.remove(&peer).unwrap_or_default();
        if let Some(w) = gate.waker.take() {
            w.wake();
        }
        // The peer's connections, announced now, one by one.
        let mut held: Vec<(ConnectionId, ConnectedPoint)> = self
            .live
            .iter()
            .filter(|(c, (p, _))| *p == peer && gate.unannounced.contains(*c))
            .map(|(c, (_, e))| (*c, e.clone()))
            .collect();
        held.sort_by_key(|(c, _)| *c);
        for (conn, endpoint) in held {
            let other = self.announced_count(&peer);
            if let Some(gate) = &mut self.gate {
                gate.unannounced.remove(&conn);
            }
            self.inner
                .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                    peer_id: peer,
                    connection_id: conn,
                    endpoint: &endpoint,
                    failed_addresses: &[],
                    other_established: other,
                }));
        }
        for (conn, event) in inbound {
            if self.live.contains_key(&conn) {
                self.inner.on_connection_handler_event(peer, conn, event);
            }
        }
    }

    /// Holds `peer` back again (its membership is no longer established).
    pub fn disallow(&mut self, peer: &PeerId) {
        if let Some(gate) = &mut self.gate {
            gate.allowed.remove(peer);
            gate.out.remove(peer);
            gate.inbound.remove(peer);
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

    /// Live connections of `peer` the wrapped behaviour was told of.
    fn announced_count(&self, peer: &PeerId) -> usize {
        self.live
            .iter()
            .filter(|(c, (p, _))| {
                p == peer
                    && !self
                        .gate
                        .as_ref()
                        .is_some_and(|g| g.unannounced.contains(*c))
            })
            .count()
    }

    /// Tells the wrapped behaviour that `conn` is closed (the swarm may still be closing it).
    pub fn forget(&mut self, conn: ConnectionId) {
        let Some((peer, endpoint)) = self.live.remove(&conn) else {
            return;
        };
        self.forgotten.insert(conn);
        if let Some(gate) = &mut self.gate {
            gate.unannounced.remove(&conn);
        }
        let remaining = self.announced_count(&peer);
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
                let other = self.announced_count(&e.peer_id);
                self.live
                    .insert(e.connection_id, (e.peer_id, e.endpoint.clone()));
                if let Some(gate) = &mut self.gate
                    && !gate.allowed.contains(&e.peer_id)
                {
                    gate.unannounced.insert(e.connection_id);
                    return;
                }
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
                if let Some(gate) = &mut self.gate {
                    gate.unannounced.remove(&e.connection_id);
                }
                let remaining = self.announced_count(&e.peer_id);
                if self.live_count(&e.peer_id) == 0
                    && let Some(gate) = &mut self.gate
                {
                    gate.out.remove(&e.peer_id);
                    gate.inbound.remove(&e.peer_id);
                }
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
        if let Some(gate) = &mut self.gate
            && !gate.allowed.contains(&peer_id)
        {
            push_bounded(
                gate.inbound.entry(peer_id).or_default(),
                (connection_id, event),
            );
            return;
        }
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let Some(gate) = &mut self.gate else {
            return self.inner.poll(cx);
        };
        if let Some((peer_id, handler, event)) = gate.ready.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler,
                event,
            });
        }
        gate.waker = Some(cx.waker().clone());
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id,
                    handler,
                    event,
                }) if !gate.allowed.contains(&peer_id) => {
                    push_bounded(gate.out.entry(peer_id).or_default(), (handler, event));
                }
                other => return other,
            }
        }
    }
}
