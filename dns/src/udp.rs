//! The UDP listener: one blocking worker thread per core on its own `SO_REUSEPORT` socket.
//!
//! Each worker keeps the encoded answers it has built for the current snapshot, keyed by the
//! lower-cased question and EDNS shape (see [`crate::wire`]); a repeated question costs one
//! parse, one hash lookup and one copy. A new snapshot (any replicated change) empties the
//! worker caches on their next query. Queries for forwarded names go to the tokio runtime when
//! they need an upstream.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hickory_proto::op::{Message, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};

use crate::engine::{Cacheable, Engine, Prepared, encode, udp_limit};
use crate::metrics::{RcodeCounters, Transport};
use crate::rrl::{Action, Rrl};
use crate::wire;

/// Encoded answers kept per worker before the cache is emptied.
const WORKER_CACHE_ENTRIES: usize = 65_536;

/// Response-rate limiting settings (rate 0 turns it off).
#[derive(Clone, Copy, Debug)]
pub struct RrlConfig {
    pub rate: u32,
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Loopback clients (the host's own stub resolvers) are not limited.
    pub exempt_loopback: bool,
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    // Blocking with no timeout: an idle worker sleeps until a packet comes, and is woken for
    // shutdown by `wake_for_shutdown`.
    Ok(s.into())
}

/// Binds `workers` sockets on `addr`. A fixed port that anything else holds is refused: a
/// plain bind is tried first, so `SO_REUSEPORT` never silently shares a port with another
/// process.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<UdpSocket>> {
    let probe = UdpSocket::bind(addr)?;
    let bound = probe.local_addr()?;
    drop(probe);
    (0..workers.max(1))
        .map(|_| reuseport_socket(bound))
        .collect()
}

/// Wakes workers blocked in `recv_from` once `stop` is set: a read shutdown wakes them even on
/// an unconnected UDP socket (Linux), and they see `stop`.
pub fn wake_for_shutdown(sockets: &[Arc<UdpSocket>]) {
    for s in sockets {
        let _ = socket2::SockRef::from(s.as_ref()).shutdown(std::net::Shutdown::Read);
    }
}

/// Runs the workers until `stop` is set (and [`wake_for_shutdown`] is called).
pub fn spawn(
    sockets: Vec<Arc<UdpSocket>>,
    engine: Arc<Engine>,
    rrl: Option<RrlConfig>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let exempt_loopback = rrl.is_some_and(|r| r.exempt_loopback);
    let rrl = rrl.filter(|r| r.rate > 0).map(|r| {
        Arc::new(std::sync::Mutex::new(Rrl::new(
            r.rate,
            r.slip,
            r.ipv4_prefix,
            r.ipv6_prefix,
        )))
    });
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let mut w = Worker {
                out: Sender {
                    socket: socket.clone(),
                    rrl: rrl.clone(),
                    exempt_loopback,
                    engine: engine.clone(),
                    counters: engine.metrics.rcodes(Transport::Udp),
                },
                engine: engine.clone(),
                socket,
                runtime: runtime.clone(),
                cache: HashMap::new(),
                generation: u64::MAX,
            };
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || w.run(&stop))
        })
        .collect()
}

struct Worker {
    engine: Arc<Engine>,
    socket: Arc<UdpSocket>,
    out: Sender,
    runtime: tokio::runtime::Handle,
    cache: HashMap<Vec<u8>, Vec<u8>>,
    generation: u64,
}

/// Sends UDP answers through response-rate limiting and counts them; shared by a worker and
/// the tasks that answer its forwarded queries.
#[derive(Clone)]
struct Sender {
    socket: Arc<UdpSocket>,
    rrl: Option<Arc<std::sync::Mutex<Rrl>>>,
    exempt_loopback: bool,
    engine: Arc<Engine>,
    counters: RcodeCounters,
}

impl Sender {
    fn send(&self, bytes: &[u8], peer: SocketAddr, rcode: ResponseCode, arrived: Instant) {
        if let Some(rrl) = &self.rrl
            && !(self.exempt_loopback && peer.ip().is_loopback())
        {
            let action = rrl
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(peer.ip(), Instant::now());
            let label = |action: &str| crate::metrics::ActionLabel {
                action: action.into(),
            };
            match action {
                Action::Send => {}
                Action::Drop => {
                    self.engine
                        .metrics
                        .rrl
                        .get_or_create(&label("dropped"))
                        .inc();
                    return;
                }
                Action::Slip => {
                    self.engine
                        .metrics
                        .rrl
                        .get_or_create(&label("slipped"))
                        .inc();
                    if let Some(tc) = truncated(bytes) {
                        let _ = self.socket.send_to(&tc, peer);
                    }
                    return;
                }
            }
        }
        // Counted before it is sent, so that a client that has its answer sees it counted.
        self.counters.answered(rcode, arrived);
        let _ = self.socket.send_to(bytes, peer);
    }
}

fn rcode_of(resp: &[u8]) -> ResponseCode {
    ResponseCode::from(0, resp.get(3).map_or(0, |b| b & 0x0F))
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_535];
        let mut key = Vec::with_capacity(260);
        let mut out = Vec::with_capacity(1500);
        let hits = self
            .engine
            .metrics
            .answer_cache
            .get_or_create(&crate::metrics::ResultLabel {
                result: "hit".into(),
            })
            .clone();
        while !stop.load(Ordering::Relaxed) {
            let (n, peer) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            };
            let arrived = Instant::now();
            let packet = &buf[..n];
            let generation = self.engine.generation();
            if generation != self.generation {
                self.cache.clear();
                self.generation = generation;
            }
            let plain = wire::parse(packet, &mut key);
            if let Some(p) = &plain
                && let Some(cached) = self.cache.get(&key)
                && cached.len() <= usize::from(p.udp_payload.min(crate::engine::EDNS_PAYLOAD))
                && wire::patch(cached, packet, p, &mut out).is_some()
            {
                hits.inc();
                let rcode = rcode_of(&out);
                self.send(&out, peer, rcode, arrived);
                continue;
            }
            self.slow(packet, peer, plain.is_some().then_some(&key), arrived);
        }
    }

    fn send(&self, bytes: &[u8], peer: SocketAddr, rcode: ResponseCode, arrived: Instant) {
        self.out.send(bytes, peer, rcode, arrived);
    }

    fn slow(&mut self, packet: &[u8], peer: SocketAddr, key: Option<&Vec<u8>>, arrived: Instant) {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            // Too short to be DNS, or a response: never answered (no reflection loops).
            self.engine.metrics.malformed.inc();
            return;
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                self.engine.metrics.malformed.inc();
                if let Some(resp) = formerr(packet) {
                    self.send(&resp, peer, ResponseCode::FormErr, arrived);
                }
                return;
            }
        };
        let limit = udp_limit(&req);
        match self.engine.prepare(&req) {
            Prepared::Done(resp, cacheable) => {
                let Ok(full) = resp.to_vec() else { return };
                let bytes = if full.len() <= limit {
                    full.clone()
                } else {
                    resp.truncate().to_vec().unwrap_or_default()
                };
                if bytes.is_empty() {
                    return;
                }
                self.engine
                    .metrics
                    .count(&self.engine.metrics.answer_cache, "miss");
                self.send(&bytes, peer, resp.metadata.response_code, arrived);
                if cacheable == Cacheable::Yes
                    && let Some(k) = key
                {
                    if self.cache.len() >= WORKER_CACHE_ENTRIES {
                        self.cache.clear();
                    }
                    self.cache.insert(k.clone(), full);
                }
            }
            Prepared::Forward(mut resp) => {
                // Bounded: a flood of names to forward gets SERVFAIL, not unbounded tasks.
                let Some(slot) = self.engine.forward_slot() else {
                    resp.metadata.response_code = ResponseCode::ServFail;
                    if let Some(bytes) = encode(&resp, limit) {
                        self.send(&bytes, peer, ResponseCode::ServFail, arrived);
                    }
                    return;
                };
                let engine = self.engine.clone();
                let out = self.out.clone();
                self.runtime.spawn(async move {
                    let _slot = slot;
                    let resp = engine.forward(resp).await;
                    if let Some(bytes) = encode(&resp, limit) {
                        out.send(&bytes, peer, resp.metadata.response_code, arrived);
                    }
                });
            }
        }
    }
}

/// A FORMERR answer to a message that did not decode, when its header is readable and it is a
/// query; `None` means no answer (too short to be DNS, or a response: never answer those).
pub fn formerr(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[0..2].copy_from_slice(&packet[0..2]);
    out[2] = 0x80 | (packet[2] & 0x79); // QR, opcode and RD echoed
    out[3] = 1; // FORMERR
    Some(out)
}

/// The header and question of `resp` with TC set and no records (for RRL slip).
fn truncated(resp: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(resp).ok()?;
    m.truncate().to_vec().ok()
}
