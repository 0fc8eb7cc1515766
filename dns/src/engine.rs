//! Answering one DNS message: authoritative data, SNRL services, forwarding with serve-stale.
//!
//! The engine is shared by the UDP, TCP and DoH listeners. [`Engine::prepare`] answers what can
//! be answered at once (authoritative data, cached forwarded answers, errors);
//! [`Engine::resolve`] also waits for upstreams.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::authority::{Answer, Lookup, Snapshot, txt_chunks};
use crate::cache::{Cache, Hit};
use crate::metrics::Metrics;
use crate::wire;

/// How long a query with a stale cached answer waits for upstreams before the stale answer is
/// sent (RFC 8767's suggested client response timer).
pub const STALE_ANSWER_AFTER: Duration = Duration::from_millis(1800);

/// Our EDNS UDP payload size (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// A ranked, signed answer for an SNRL service name.
#[derive(Clone, Debug, Default)]
pub struct ServiceAnswer {
    /// Addresses, best first.
    pub addrs: Vec<IpAddr>,
    /// SRV targets (RFC 2782), best first: the answer to an `SRV` query at the service name.
    pub srv: Vec<ServiceTarget>,
    /// TXT text describing the signature (who signed, when, the signature).
    pub txt: String,
    pub ttl: u32,
}

/// One SRV record of a service: `priority weight port target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// An absolute host name (`node.nodes.voike.internal.`).
    pub target: String,
}

/// The source of SNRL answers (the node ranks with Hypermesh data and signs).
pub trait Services: Send + Sync + 'static {
    fn answer(&self, domain: &str) -> Option<ServiceAnswer>;
}

/// Upstream forwarding settings.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    /// Time allowed for one upstream before trying the next.
    pub timeout: Duration,
    pub cache_size: usize,
    pub max_ttl: Duration,
    pub max_stale: Duration,
}

/// Whether an answer may be kept by the hot path (it depends only on the snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cacheable {
    Yes,
    No,
}

/// What [`Engine::prepare`] decided.
#[derive(Debug)]
pub enum Prepared {
    Done(Message, Cacheable),
    /// Needs an upstream round trip.
    Forward(Message),
}

/// The shared answering state.
pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    services: Arc<dyn Services>,
    forward: Option<ForwardConfig>,
    cache: Mutex<Cache>,
    forward_slots: Arc<tokio::sync::Semaphore>,
    /// Encoded authoritative answers shared by the TCP and DoH listeners (UDP workers keep
    /// their own), for the snapshot generation they were built from.
    shared_answers: Mutex<SharedAnswers>,
    pub metrics: Arc<Metrics>,
}

/// An encoded answer and the smallest TTL in it (for DoH's Cache-Control).
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub min_ttl: u32,
    pub rcode: ResponseCode,
}

/// The snapshot generation and the encoded answers built from it, by question key.
type SharedAnswers = (u64, HashMap<Vec<u8>, Arc<Encoded>>);

/// Entries of the shared encoded-answer cache before it is emptied.
const SHARED_ANSWERS: usize = 65_536;

/// Forwarded UDP queries waiting for an upstream at once; more get SERVFAIL.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 1024;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.snapshot.load().generation())
            .field("forward", &self.forward)
            .finish_non_exhaustive()
    }
}

/// The response skeleton for `req`: same id, opcode, RD and CD, question echoed, EDNS answered.
pub fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.add_queries(req.queries.iter().cloned());
    if let Some(e) = &req.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        edns.set_rcode_high(rcode.high());
        m.set_edns(edns);
    }
    m
}

/// Encodes `resp`, truncating (TC=1, no records) when it does not fit `limit` bytes.
pub fn encode(resp: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.truncate().to_vec().ok()
}

/// The UDP size limit for a request: 512 without EDNS, else the client's size capped by ours.
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

fn fill(m: &mut Message, a: Answer) {
    m.metadata.authoritative = a.authoritative;
    m.metadata.response_code = a.rcode;
    m.answers = a.answers;
    m.authorities = a.authorities;
    m.additionals = a.additionals;
}

impl Engine {
    pub fn new(
        snapshot: Snapshot,
        services: Arc<dyn Services>,
        forward: Option<ForwardConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = match &forward {
            Some(f) => Cache::new(f.cache_size, f.max_ttl, f.max_stale),
            None => Cache::new(1, Duration::ZERO, Duration::ZERO),
        };
        metrics
            .records_withheld
            .set(i64::try_from(snapshot.withheld().len()).unwrap_or(i64::MAX));
        Engine {
            snapshot: ArcSwap::from_pointee(snapshot),
            services,
            forward: forward.filter(|f| !f.upstreams.is_empty()),
            cache: Mutex::new(cache),
            forward_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
            shared_answers: Mutex::new((0, HashMap::new())),
            metrics,
        }
    }

    /// Serves `snapshot` from now on.
    pub fn publish(&self, snapshot: Snapshot) {
        self.metrics
            .records_withheld
            .set(i64::try_from(snapshot.withheld().len()).unwrap_or(i64::MAX));
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The generation of the snapshot being served (cheap).
    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation()
    }

    /// A slot for one UDP query waiting on upstreams, `None` when all are taken.
    pub fn forward_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.forward_slots.clone().try_acquire_owned().ok()
    }

    pub fn forwarding(&self) -> bool {
        self.forward.is_some()
    }

    /// Answers what can be answered without waiting.
    pub fn prepare(&self, req: &Message) -> Prepared {
        let done = |m| Prepared::Done(m, Cacheable::No);
        if req.metadata.message_type != MessageType::Query {
            return done(response_to(req, ResponseCode::FormErr));
        }
        if req.metadata.op_code != OpCode::Query {
            return done(response_to(req, ResponseCode::NotImp));
        }
        if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return done(response_to(req, ResponseCode::BADVERS));
        }
        let [q] = &req.queries[..] else {
            return done(response_to(req, ResponseCode::FormErr));
        };
        let mut resp = response_to(req, ResponseCode::NoError);
        resp.metadata.recursion_available = self.forwarding();
        if q.query_class() != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::Refused;
            return done(resp);
        }
        if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
            resp.metadata.response_code = ResponseCode::Refused;
            return done(resp);
        }
        let snapshot = self.snapshot.load();
        match snapshot.lookup(q.name(), q.query_type()) {
            Lookup::Answer(a) => {
                fill(&mut resp, a);
                Prepared::Done(resp, Cacheable::Yes)
            }
            Lookup::Service { soa } => {
                self.service_answer(&mut resp, q, soa);
                done(resp)
            }
            Lookup::NotAuthoritative => {
                if !self.forwarding() {
                    resp.metadata.response_code = ResponseCode::Refused;
                    return done(resp);
                }
                match self.cached(q) {
                    Some(Hit::Fresh(e)) => {
                        self.metrics.count(&self.metrics.forward_cache, "hit");
                        resp.metadata.response_code = e.rcode;
                        resp.answers = e.answers;
                        resp.authorities = e.authorities;
                        done(resp)
                    }
                    _ => Prepared::Forward(resp),
                }
            }
        }
    }

    fn service_answer(&self, resp: &mut Message, q: &Query, soa: Option<Record>) {
        resp.metadata.authoritative = true;
        let domain = q.name().to_lowercase().to_ascii();
        let Some(ans) = self.services.answer(&domain) else {
            resp.authorities.extend(soa);
            return;
        };
        let owner = q.name().clone();
        let txt = Record::from_rdata(
            owner.clone(),
            ans.ttl,
            RData::TXT(TXT::new(txt_chunks(&ans.txt))),
        );
        let qtype = q.query_type();
        for ip in &ans.addrs {
            let data = match ip {
                IpAddr::V4(v4) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                    RData::A(A::from(*v4))
                }
                IpAddr::V6(v6) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                    RData::AAAA(AAAA::from(*v6))
                }
                _ => continue,
            };
            resp.answers
                .push(Record::from_rdata(owner.clone(), ans.ttl, data));
        }
        if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            for t in &ans.srv {
                let Ok(target) = Name::from_ascii(&t.target) else {
                    continue;
                };
                let srv = SRV::new(t.priority, t.weight, t.port, target.clone());
                resp.answers
                    .push(Record::from_rdata(owner.clone(), ans.ttl, RData::SRV(srv)));
                // The target's addresses, when this node serves them (RFC 2782's additional data).
                if qtype == RecordType::SRV {
                    let snapshot = self.snapshot.load();
                    for rtype in [RecordType::A, RecordType::AAAA] {
                        if let Lookup::Answer(a) = snapshot.lookup(&target, rtype) {
                            for r in a.answers {
                                if !resp.additionals.contains(&r) {
                                    resp.additionals.push(r);
                                }
                            }
                        }
                    }
                }
            }
        }
        if qtype == RecordType::TXT {
            resp.answers.push(txt);
        } else if resp.answers.is_empty() {
            resp.authorities.extend(soa);
        } else {
            resp.additionals.push(txt);
        }
    }

    fn cache_key(q: &Query) -> (String, u16) {
        (
            q.name().to_lowercase().to_ascii(),
            u16::from(q.query_type()),
        )
    }

    fn cached(&self, q: &Query) -> Option<Hit> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&Self::cache_key(q), Instant::now())
    }

    /// Answers the raw query `packet` for TCP and DoH (no size limit): from the shared cache of
    /// encoded answers when the question was seen for this snapshot, else in full (caching
    /// authoritative answers). `None` when the packet does not decode and deserves no answer.
    pub async fn answer_packet(&self, packet: &[u8]) -> Option<Arc<Encoded>> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            // Too short to be DNS, or a response: never answered (no reflection loops).
            self.metrics.malformed.inc();
            return None;
        }
        let mut key = Vec::new();
        let plain = wire::parse(packet, &mut key);
        let generation = self.generation();
        if let Some(p) = &plain {
            let hit = {
                let cache = self
                    .shared_answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                (cache.0 == generation)
                    .then(|| cache.1.get(&key).cloned())
                    .flatten()
            };
            if let Some(hit) = hit {
                let mut out = Vec::with_capacity(hit.bytes.len());
                if wire::patch(&hit.bytes, packet, p, &mut out).is_some() {
                    return Some(Arc::new(Encoded {
                        bytes: out,
                        min_ttl: hit.min_ttl,
                        rcode: hit.rcode,
                    }));
                }
            }
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                self.metrics.malformed.inc();
                let bytes = crate::udp::formerr(packet)?;
                return Some(Arc::new(Encoded {
                    bytes,
                    min_ttl: 0,
                    rcode: ResponseCode::FormErr,
                }));
            }
        };
        let (resp, cacheable) = match self.prepare(&req) {
            Prepared::Done(m, c) => (m, c),
            Prepared::Forward(resp) => (self.forward(resp).await, Cacheable::No),
        };
        let encoded = Arc::new(Encoded {
            bytes: resp.to_vec().ok()?,
            min_ttl: resp
                .answers
                .iter()
                .chain(resp.authorities.iter())
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0),
            rcode: resp.metadata.response_code,
        });
        if cacheable == Cacheable::Yes && plain.is_some() {
            let mut cache = self
                .shared_answers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cache.0 != generation || cache.1.len() >= SHARED_ANSWERS {
                cache.1.clear();
                cache.0 = generation;
            }
            cache.1.insert(key, encoded.clone());
        }
        Some(encoded)
    }

    /// Answers `req` completely, asking upstreams when needed.
    pub async fn resolve(&self, req: &Message) -> Message {
        match self.prepare(req) {
            Prepared::Done(m, _) => m,
            Prepared::Forward(resp) => self.forward(resp).await,
        }
    }

    /// Asks the upstreams for `resp`'s question; falls back to stale cache, then SERVFAIL.
    pub async fn forward(&self, mut resp: Message) -> Message {
        let Some(cfg) = &self.forward else {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        };
        let Some(q) = resp.queries.first().cloned() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        let key = Self::cache_key(&q);
        // RFC 8767 §5: with a stale answer at hand, wait for upstreams only so long.
        let asked = if matches!(self.cached(&q), Some(Hit::Stale(_))) {
            tokio::time::timeout(STALE_ANSWER_AFTER, ask_upstreams(cfg, &q))
                .await
                .unwrap_or(Err(ForwardError::Timeout))
        } else {
            ask_upstreams(cfg, &q).await
        };
        match asked {
            Ok(up) => {
                self.metrics.count(&self.metrics.forward_cache, "miss");
                {
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.put(
                        key,
                        up.metadata.response_code,
                        up.answers.clone(),
                        up.authorities.clone(),
                        Instant::now(),
                    );
                }
                resp.metadata.response_code = up.metadata.response_code;
                resp.answers = up.answers;
                resp.authorities = up.authorities;
                resp
            }
            Err(e) => {
                self.metrics.upstream_failures.inc();
                tracing::debug!(name = %key.0, error = %e, "upstreams failed");
                match self.cached(&q) {
                    Some(Hit::Stale(entry) | Hit::Fresh(entry)) => {
                        self.metrics.count(&self.metrics.forward_cache, "stale");
                        resp.metadata.response_code = entry.rcode;
                        resp.answers = entry.answers;
                        resp.authorities = entry.authorities;
                    }
                    None => resp.metadata.response_code = ResponseCode::ServFail,
                }
                resp
            }
        }
    }
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream answered within the timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("upstream answered {0}")]
    Rcode(ResponseCode),
    #[error("upstream answer did not decode: {0}")]
    Decode(String),
}

async fn ask_upstreams(cfg: &ForwardConfig, q: &Query) -> Result<Message, ForwardError> {
    let mut last = ForwardError::Timeout;
    for up in &cfg.upstreams {
        match tokio::time::timeout(cfg.timeout, ask(*up, q)).await {
            Ok(Ok(m)) => match m.metadata.response_code {
                ResponseCode::NoError | ResponseCode::NXDomain => return Ok(m),
                rc => last = ForwardError::Rcode(rc),
            },
            Ok(Err(e)) => last = e,
            Err(_) => last = ForwardError::Timeout,
        }
    }
    Err(last)
}

fn upstream_query(q: &Query) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    m.set_edns(edns);
    m
}

fn matches(req: &Message, resp: &Message) -> bool {
    resp.metadata.id == req.metadata.id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && req.queries.first().is_some_and(|q| {
            let r = &resp.queries[0];
            r.name().to_lowercase() == q.name().to_lowercase() && r.query_type() == q.query_type()
        })
}

async fn ask(up: SocketAddr, q: &Query) -> Result<Message, ForwardError> {
    let req = upstream_query(q);
    let bytes = req
        .to_vec()
        .map_err(|e| ForwardError::Decode(e.to_string()))?;
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if !matches(&req, &resp) {
            continue; // not ours: keep waiting for the real answer
        }
        if resp.metadata.truncation {
            return ask_tcp(up, &req).await;
        }
        return Ok(resp);
    }
}

async fn ask_tcp(up: SocketAddr, req: &Message) -> Result<Message, ForwardError> {
    let bytes = req
        .to_vec()
        .map_err(|e| ForwardError::Decode(e.to_string()))?;
    let mut s = TcpStream::connect(up).await?;
    let len =
        u16::try_from(bytes.len()).map_err(|_| ForwardError::Decode("query too long".into()))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(&bytes).await?;
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    let resp = Message::from_vec(&buf).map_err(|e| ForwardError::Decode(e.to_string()))?;
    if !matches(req, &resp) {
        return Err(ForwardError::Decode(
            "answer does not match the question".into(),
        ));
    }
    Ok(resp)
}
