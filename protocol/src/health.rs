//! Hypermesh health, without I/O: signed health reports, signed leave messages (a clean stop's
//! goodbye), the MeshSurgeon failure detector (phi accrual over heartbeat arrivals), overload
//! prediction, spawn advisories, and the HyperRoute ranking.
//!
//! Everything here is driven by `(now, input)`: the node feeds report arrivals and pings in and
//! polls [`Detector::tick`] for state transitions, so the same code runs under a fake clock in
//! tests and in `simnet`.

use std::collections::{BTreeMap, VecDeque};

use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::signing::{self, SigningError};

/// Domain of health report signatures.
pub const REPORT_DOMAIN: &[u8] = b"voike/health-report/v1\0";
/// Largest encoded report accepted.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;
/// Domain of leave message signatures.
pub const LEAVE_DOMAIN: &[u8] = b"voike/leave/v1\0";

/// What PerfWatch samples.
///
/// When PerfWatch cannot sample the machine (for instance /proc mounted `subset=pid`, where
/// `/proc/stat`, `/proc/meminfo` and `/proc/loadavg` do not exist), it sends every machine
/// figure as 0 and `mem_total_bytes` 0, which no machine has: the samples are then *unknown*
/// ([`Samples::machine_known`]), and the node's health is [`UNKNOWN_HEALTH`], not that of an
/// idle machine. (A marker in the existing layout, so reports stay readable by older nodes.)
///
/// Its serde names are the API's (`/hypermesh/status`, camelCase); reports carry it in postcard,
/// which does not encode names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Samples {
    /// Whole-machine CPU use, percent (0–100).
    pub cpu_pct: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub load1: f32,
    /// Resident memory of `voiked`.
    pub rss_bytes: u64,
    /// Open p2p connections.
    pub connections: u32,
}

impl Samples {
    /// Whether the machine figures (CPU, memory, load) were sampled at all.
    pub fn machine_known(&self) -> bool {
        self.mem_total_bytes > 0
    }

    pub fn mem_pct(&self) -> f32 {
        if self.mem_total_bytes == 0 {
            0.0
        } else {
            (self.mem_used_bytes as f64 * 100.0 / self.mem_total_bytes as f64) as f32
        }
    }
}

/// PerfWatch's view of the node: `Sleep` while nothing moves, `Active` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Sleep,
    Active,
}

/// The signed part of a health report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportBody {
    /// Protobuf-encoded public key of the reporting node.
    pub node: Vec<u8>,
    /// Increases with every report of this node (wall-clock milliseconds, with the counter
    /// breaking ties); receivers ignore a report not newer than the last one they took.
    pub hlc: Hlc,
    pub samples: Samples,
    pub activity: Activity,
    pub region: String,
    pub capabilities: Vec<String>,
    pub addrs: Vec<String>,
    pub version: String,
}

/// A health report and its signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub body: ReportBody,
    pub signature: Vec<u8>,
}

/// Why a report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("report does not decode")]
    Malformed,
    #[error("report key is not ed25519")]
    BadKey,
    #[error("report signature does not verify")]
    BadSignature,
}

impl HealthReport {
    pub fn sign(key: &Keypair, body: ReportBody) -> Result<Self, SigningError> {
        let signature = signing::sign(key, REPORT_DOMAIN, "health report", &body)?;
        Ok(HealthReport { body, signature })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and checks the signature; returns the report and its author.
    pub fn from_bytes(bytes: &[u8]) -> Result<(HealthReport, PeerId), ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge);
        }
        let r: HealthReport = postcard::from_bytes(bytes).map_err(|_| ReportError::Malformed)?;
        let key = signing::decode_key(&r.body.node).map_err(|_| ReportError::BadKey)?;
        match signing::verify(&key, REPORT_DOMAIN, "health report", &r.body, &r.signature) {
            Ok(true) => Ok((r, key.to_peer_id())),
            _ => Err(ReportError::BadSignature),
        }
    }
}

/// The signed part of a leave message: "node N of mesh M stops cleanly at `hlc`".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaveBody {
    /// Protobuf-encoded public key of the leaving node.
    pub node: Vec<u8>,
    /// The mesh id (32 bytes): a leave is not valid in another mesh.
    pub mesh: Vec<u8>,
    /// When the node stopped. Its counter is `u32::MAX`, so that the leave sorts after every
    /// report the node made in the same millisecond.
    pub hlc: Hlc,
}

/// A leave message and its signature, sent by a node that stops cleanly to every member it is
/// connected to (`/voike/leave/1`, see `wire`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    pub body: LeaveBody,
    pub signature: Vec<u8>,
}

/// Why a leave message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaveError {
    #[error("leave key is not ed25519")]
    BadKey,
    #[error("leave signature does not verify")]
    BadSignature,
    #[error("leave is for another mesh")]
    WrongMesh,
    /// Not newer than a report or a leave already taken from the node: a replay.
    #[error("leave stamped {leave} is not newer than {seen}, already heard from the node")]
    Replayed { leave: Hlc, seen: Hlc },
    /// Stamped too far from this node's clock: an old leave replayed to a node that has no
    /// memory of the sender, or a clock beyond the skew bound.
    #[error("leave stamped {leave} is {off_ms} ms from this node's clock (at most {bound_ms} ms)")]
    OutOfWindow {
        leave: Hlc,
        off_ms: u64,
        bound_ms: u64,
    },
}

impl Leave {
    /// Signs a leave for `mesh` at wall-clock `now_ms`.
    pub fn sign(key: &Keypair, mesh: &[u8], now_ms: u64) -> Result<Self, SigningError> {
        let body = LeaveBody {
            node: key.public().encode_protobuf(),
            mesh: mesh.to_vec(),
            hlc: Hlc {
                wall_ms: now_ms,
                counter: u32::MAX,
            },
        };
        let signature = signing::sign(key, LEAVE_DOMAIN, "leave", &body)?;
        Ok(Leave { body, signature })
    }

    /// Checks the signature and the mesh; returns the leaving node.
    pub fn verify(&self, mesh: &[u8]) -> Result<PeerId, LeaveError> {
        let key = signing::decode_key(&self.body.node).map_err(|_| LeaveError::BadKey)?;
        match signing::verify(&key, LEAVE_DOMAIN, "leave", &self.body, &self.signature) {
            Ok(true) => {}
            _ => return Err(LeaveError::BadSignature),
        }
        if self.body.mesh != mesh {
            return Err(LeaveError::WrongMesh);
        }
        Ok(key.to_peer_id())
    }

    /// Whether a verified leave is to be taken: it must be newer than everything already heard
    /// from its node (`seen`: the last report's or leave's stamp), and within `bound_ms` of
    /// `now_ms` (this node's wall clock). A replayed leave fails one or the other: once the node
    /// is back, its reports are newer than the old leave; a receiver that never heard of the
    /// node refuses a leave older than the bound.
    pub fn check_fresh(
        &self,
        seen: Option<Hlc>,
        now_ms: u64,
        bound_ms: u64,
    ) -> Result<(), LeaveError> {
        let leave = self.body.hlc;
        if let Some(seen) = seen
            && leave <= seen
        {
            return Err(LeaveError::Replayed { leave, seen });
        }
        let off_ms = leave.wall_ms.abs_diff(now_ms);
        if off_ms > bound_ms {
            return Err(LeaveError::OutOfWindow {
                leave,
                off_ms,
                bound_ms,
            });
        }
        Ok(())
    }
}

/// Liveness of a peer as the detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    Suspect,
    Dead,
}

/// Detector settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Phi above which a peer is suspect.
    pub suspect_phi: f64,
    /// Phi above which a suspect peer is dead...
    pub dead_phi: f64,
    /// ...but never before this long without a heartbeat (ms).
    pub min_dead_ms: u64,
    /// Floor of the interval deviation used by phi (ms), so that very regular heartbeats do not
    /// make phi explode at the first small delay.
    pub min_std_ms: f64,
    /// Heartbeat intervals remembered per peer.
    pub window: usize,
    /// Interval assumed before any was measured (ms): the expected heartbeat period.
    pub expected_interval_ms: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            suspect_phi: 5.0,
            dead_phi: 12.0,
            min_dead_ms: 3_000,
            min_std_ms: 250.0,
            window: 32,
            expected_interval_ms: 1_000.0,
        }
    }
}

#[derive(Clone, Debug)]
struct Track {
    last_ms: u64,
    intervals: VecDeque<f64>,
    state: PeerState,
}

/// A transition worth telling operators about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transition {
    PeerSuspect {
        peer: String,
    },
    PeerDown {
        peer: String,
    },
    PeerRecovered {
        peer: String,
    },
    /// The peer said goodbye (a verified [`Leave`]): it stopped cleanly, it did not fail.
    PeerLeft {
        peer: String,
    },
}

/// Phi-accrual failure detector (Hayashibara et al.): for each peer, the mean and deviation of
/// recent heartbeat intervals give the probability that a heartbeat is merely late; phi is
/// `-log10` of that probability.
#[derive(Clone, Debug)]
pub struct Detector {
    config: DetectorConfig,
    peers: BTreeMap<PeerId, Track>,
}

/// `P(X > x)` for a normal distribution, via the logistic approximation used by Akka and
/// Cassandra (accurate to about 1e-4, and never exactly 0).
fn phi_of(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -p.max(f64::MIN_POSITIVE).log10()
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        Detector {
            config,
            peers: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// A heartbeat (a report, a ping answer) from `peer` at `now_ms`; returns a recovery when
    /// the peer was suspect or dead.
    pub fn heartbeat(&mut self, peer: PeerId, now_ms: u64) -> Option<Transition> {
        let window = self.config.window;
        let track = self.peers.entry(peer).or_insert(Track {
            last_ms: now_ms,
            intervals: VecDeque::new(),
            state: PeerState::Alive,
        });
        let was = track.state;
        if now_ms > track.last_ms && was == PeerState::Alive {
            track.intervals.push_back((now_ms - track.last_ms) as f64);
            if track.intervals.len() > window {
                track.intervals.pop_front();
            }
        }
        // A gap that ended in a failure says nothing about the normal interval, so it is not
        // recorded; the history from before the failure is kept (clearing it would fall back to
        // the configured interval, which may not be the peer's, and could make it flap).
        track.last_ms = now_ms;
        track.state = PeerState::Alive;
        (was != PeerState::Alive).then(|| Transition::PeerRecovered {
            peer: peer.to_string(),
        })
    }

    /// Forgets a peer (it left the mesh).
    pub fn remove(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// A peer stopped cleanly (its [`Leave`] was verified and fresh): it is no longer watched,
    /// so its silence makes it neither suspect nor dead; its next heartbeat tracks it anew.
    /// Returns `PeerLeft`, whatever state it was in.
    pub fn leave(&mut self, peer: PeerId) -> Transition {
        self.peers.remove(&peer);
        Transition::PeerLeft {
            peer: peer.to_string(),
        }
    }

    /// Phi of `peer` at `now_ms` (0 for unknown peers).
    pub fn phi(&self, peer: &PeerId, now_ms: u64) -> f64 {
        self.peers
            .get(peer)
            .map_or(0.0, |t| self.phi_track(t, now_ms))
    }

    fn phi_track(&self, t: &Track, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(t.last_ms) as f64;
        let n = t.intervals.len() as f64;
        let (mean, var) = if t.intervals.is_empty() {
            (self.config.expected_interval_ms, 0.0)
        } else {
            let mean = t.intervals.iter().sum::<f64>() / n;
            let var = t.intervals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            (mean, var)
        };
        let std = var.sqrt().max(self.config.min_std_ms);
        phi_of(elapsed, mean, std)
    }

    pub fn state(&self, peer: &PeerId) -> Option<PeerState> {
        self.peers.get(peer).map(|t| t.state)
    }

    /// Every tracked peer with its state, phi and time since its last heartbeat.
    pub fn peers(&self, now_ms: u64) -> Vec<(PeerId, PeerState, f64, u64)> {
        self.peers
            .iter()
            .map(|(p, t)| {
                (
                    *p,
                    t.state,
                    self.phi_track(t, now_ms),
                    now_ms.saturating_sub(t.last_ms),
                )
            })
            .collect()
    }

    /// Re-evaluates every peer at `now_ms`; returns the transitions.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        let updates: Vec<(PeerId, PeerState)> = self
            .peers
            .iter()
            .filter_map(|(p, t)| {
                let phi = self.phi_track(t, now_ms);
                let silent = now_ms.saturating_sub(t.last_ms);
                let next = if t.state != PeerState::Alive
                    && phi >= self.config.dead_phi
                    && silent >= self.config.min_dead_ms
                    || t.state == PeerState::Dead
                {
                    PeerState::Dead
                } else if phi >= self.config.suspect_phi {
                    PeerState::Suspect
                } else {
                    t.state
                };
                (next != t.state).then_some((*p, next))
            })
            .collect();
        for (p, next) in updates {
            if let Some(t) = self.peers.get_mut(&p) {
                t.state = next;
            }
            let peer = p.to_string();
            out.push(match next {
                PeerState::Suspect => Transition::PeerSuspect { peer },
                PeerState::Dead => Transition::PeerDown { peer },
                PeerState::Alive => Transition::PeerRecovered { peer },
            });
        }
        out
    }

    /// When the next transition could happen at the earliest (ms), for a tickless caller: the
    /// soonest time any alive peer's phi reaches `suspect_phi`, or a suspect one may be declared
    /// dead. `None` when nothing is tracked.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        self.peers
            .values()
            .filter(|t| t.state != PeerState::Dead)
            .map(|t| {
                let target = if t.state == PeerState::Alive {
                    self.config.suspect_phi
                } else {
                    self.config.dead_phi
                };
                // Phi only grows with silence: binary-search the crossing to within 10 ms.
                let probe = |at: u64| self.phi_track(t, at) >= target;
                let at = if probe(now_ms) {
                    now_ms
                } else {
                    let (mut lo, mut hi) = (now_ms, now_ms + 3_600_000);
                    while hi - lo > 10 {
                        let mid = lo + (hi - lo) / 2;
                        if probe(mid) {
                            hi = mid;
                        } else {
                            lo = mid;
                        }
                    }
                    hi
                };
                if t.state == PeerState::Suspect {
                    at.max(t.last_ms + self.config.min_dead_ms)
                } else {
                    at
                }
            })
            .min()
    }
}

/// Predicts when a rising series reaches `limit`: least squares over `(t_ms, value)` points;
/// returns the ms from the last point until the limit, when the trend is rising.
pub fn time_to_limit(points: &[(u64, f64)], limit: f64) -> Option<u64> {
    if points.len() < 3 {
        return None;
    }
    let t0 = points[0].0 as f64;
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, v)| (a + (*t as f64 - t0), b + v));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        let x = *t as f64 - t0 - mx;
        num += x * (v - my);
        den += x * x;
    }
    if den <= 0.0 {
        return None;
    }
    let slope = num / den; // per ms
    if slope <= 0.0 {
        return None;
    }
    let last = points.last()?;
    let at_last = my + slope * (last.0 as f64 - t0 - mx);
    if at_last >= limit {
        return Some(0);
    }
    Some(((limit - at_last) / slope) as u64)
}

/// A peer's inputs to the route table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteInput {
    pub peer: String,
    pub state: PeerState,
    /// EWMA of ping RTTs (ms), when measured.
    pub rtt_ms: Option<f64>,
    pub relayed: bool,
    pub cpu_pct: f32,
    pub mem_pct: f32,
    /// Whether `cpu_pct` and `mem_pct` were sampled (false when the peer has not reported yet
    /// or cannot sample its machine): the health is then [`UNKNOWN_HEALTH`].
    pub samples_known: bool,
    pub region: String,
    pub capabilities: Vec<String>,
}

/// One ranked route, as `/hypermesh/routes` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub peer: String,
    /// 0..=1; higher is better.
    pub score: f64,
    /// The peer's health, 0..=1 ([`health_score`]).
    pub health: f64,
    /// EWMA of ping round-trip times, milliseconds.
    pub rtt_ms: Option<f64>,
    /// `"direct"` or `"relayed"`.
    pub path: String,
    pub region: String,
    pub capabilities: Vec<String>,
}

/// The health of a node whose load is not known (it cannot sample its machine, or has not
/// reported yet): neither idle nor busy.
pub const UNKNOWN_HEALTH: f64 = 0.5;

/// The health of a node from its samples: [`health_score`] when they are known, else
/// [`UNKNOWN_HEALTH`] (kept by a quarter while suspect, 0 when dead).
pub fn health_of(state: PeerState, samples: Option<&Samples>) -> f64 {
    match samples.filter(|s| s.machine_known()) {
        Some(s) => health_score(state, s.cpu_pct, s.mem_pct()),
        None => match state {
            PeerState::Alive => UNKNOWN_HEALTH,
            PeerState::Suspect => UNKNOWN_HEALTH * 0.25,
            PeerState::Dead => 0.0,
        },
    }
}

/// A node's health score in 0..=1: 1 when idle, falling with CPU and memory pressure; 0.25 of
/// it is kept by suspect peers.
pub fn health_score(state: PeerState, cpu_pct: f32, mem_pct: f32) -> f64 {
    let load = (f64::from(cpu_pct).max(f64::from(mem_pct)) / 100.0).clamp(0.0, 1.0);
    let base = 1.0 - 0.8 * load;
    match state {
        PeerState::Alive => base,
        PeerState::Suspect => base * 0.25,
        PeerState::Dead => 0.0,
    }
}

/// Ranks the routes to live peers for a client in `region` wanting `capabilities`: health,
/// latency (a direct path is preferred to a relayed one), region and capability affinity. Dead
/// peers have no route. Ties are broken by peer id, so every node ranks the same inputs alike.
pub fn rank_routes(inputs: &[RouteInput], region: &str, capabilities: &[String]) -> Vec<Route> {
    let mut routes: Vec<Route> = inputs
        .iter()
        .filter(|i| i.state != PeerState::Dead)
        .map(|i| {
            let health = if i.samples_known {
                health_score(i.state, i.cpu_pct, i.mem_pct)
            } else {
                health_of(i.state, None)
            };
            let rtt = i.rtt_ms.unwrap_or(50.0).max(0.0) + if i.relayed { 50.0 } else { 0.0 };
            let latency = 1.0 / (1.0 + rtt / 50.0);
            let region_match = if !region.is_empty() && i.region == region {
                1.0
            } else {
                0.0
            };
            let caps = if capabilities.is_empty() {
                1.0
            } else {
                capabilities
                    .iter()
                    .filter(|c| i.capabilities.contains(c))
                    .count() as f64
                    / capabilities.len() as f64
            };
            let score = 0.45 * health + 0.25 * latency + 0.15 * region_match + 0.15 * caps;
            Route {
                peer: i.peer.clone(),
                score,
                health,
                rtt_ms: i.rtt_ms,
                path: if i.relayed { "relayed" } else { "direct" }.into(),
                region: i.region.clone(),
                capabilities: i.capabilities.clone(),
            }
        })
        .collect();
    routes.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.peer.cmp(&b.peer))
    });
    routes
}

/// Which live node should take over the work of `failed`: the best-ranked route other than it.
pub fn spawn_advisory(routes: &[Route], failed: &str) -> Option<String> {
    routes
        .iter()
        .find(|r| r.peer != failed && r.health > 0.0)
        .map(|r| r.peer.clone())
}

#[cfg(test)]
mod tests;
