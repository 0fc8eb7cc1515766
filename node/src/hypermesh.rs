//! Hypermesh on a node: PerfWatch samples this machine, health reports go out on gossipsub,
//! MeshSurgeon's detector watches every member's heartbeats, HyperRoute ranks the routes.
//!
//! One task owns the agents. It sleeps until the next of: a PerfWatch sample (every
//! `sample_fast` while values move, doubling up to `sample_slow` when idle), a heartbeat report
//! (`heartbeat_interval` after the last one), or the detector's next possible transition. The
//! swarm loop verifies incoming reports (signature, member, source) before handing them over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::Serialize;
use serde_json::{Value, json};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use voike_protocol::health::{
    Activity, Detector, DetectorConfig, HealthReport, Leave, PeerState, ReportBody, Route,
    RouteInput, Samples, Transition, rank_routes, spawn_advisory, time_to_limit,
};
use voike_protocol::hlc::Hlc;

use crate::config::HypermeshConfig;
use crate::ledger::LedgerHandle;
use crate::metrics::{GossipLabel, Metrics, StateLabel};

/// Events kept for `/hypermesh/events`.
pub const MAX_EVENTS: usize = 1000;
/// Hypermesh events written to the ledger per minute at most (all are kept in the event log).
pub const LEDGER_EVENTS_PER_MINUTE: u32 = 30;
/// Samples kept for overload prediction.
const TREND_POINTS: usize = 30;
const INPUT_QUEUE: usize = 1024;
/// What sysinfo reads for the machine figures on Linux: with /proc mounted `subset=pid` (systemd's
/// `ProcSubset=pid`) none of them exists.
const MACHINE_FILES: [&str; 3] = ["/proc/stat", "/proc/meminfo", "/proc/loadavg"];

/// Why the machine cannot be sampled, in words for `/hypermesh/status` and the log.
fn sampling_unavailable() -> String {
    let unreadable: Vec<&str> = MACHINE_FILES
        .iter()
        .filter(|f| std::fs::File::open(f).is_err())
        .copied()
        .collect();
    if unreadable.is_empty() {
        "unavailable: the system reports no CPU or memory figures".into()
    } else {
        format!("unavailable: {} not readable", unreadable.join(", "))
    }
}

/// What the swarm loop hands to the Hypermesh task.
#[derive(Debug)]
pub enum HyperInput {
    /// A verified report from a member.
    Report { from: PeerId, report: HealthReport },
    /// A ping round trip.
    Ping {
        peer: PeerId,
        rtt: Duration,
        relayed: bool,
    },
    /// Connected p2p connections now (for PerfWatch).
    Connections(u32),
    /// A member's connection was verified (counts as a heartbeat).
    Connected { peer: PeerId },
    /// A member's leave, its signature and mesh verified (it stops cleanly).
    Leave { from: PeerId, leave: Leave },
    /// This node's capabilities changed: report at once.
    CapabilitiesChanged,
}

/// A node work can be placed on (see [`HypermeshHandle::live_nodes`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveNode {
    pub node: String,
    pub health: f64,
    pub region: String,
    pub capabilities: Vec<String>,
}

/// One event of the bounded log: `id`, `atMs` (Unix milliseconds), `kind` and the kind's
/// fields. The body is the one recorded in the ledger (`hypermesh.<kind>`), with the
/// snake_case names it is signed with; `/hypermesh/events` shows its keys in camelCase.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub body: Value,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub name: &'static str,
    pub state: String,
    /// `None` for agents that run when their inputs change (tickless).
    pub interval_ms: Option<u64>,
    /// How long ago the agent last ran (ms).
    pub last_run_ago_ms: Option<u64>,
    pub runs: u64,
}

struct PeerInfo {
    report: Option<HealthReport>,
    rtt_ewma_ms: Option<f64>,
    relayed: bool,
    /// The peer's clock minus this node's, from its last report (ms).
    clock_offset_ms: Option<i64>,
    /// The stamp of its leave and when it arrived (wall ms), while it is gone.
    left: Option<(Hlc, u64)>,
    /// The newest stamp heard from it, report or leave: a leave must be newer.
    seen: Option<Hlc>,
}

impl PeerInfo {
    fn new() -> Self {
        PeerInfo {
            report: None,
            rtt_ewma_ms: None,
            relayed: false,
            clock_offset_ms: None,
            left: None,
            seen: None,
        }
    }
}

struct Inner {
    detector: Detector,
    peers: HashMap<PeerId, PeerInfo>,
    samples: Samples,
    /// The samples of this node's last published report: what the others weigh it by.
    published: Option<Samples>,
    activity: Activity,
    sample_interval: Duration,
    events: VecDeque<Event>,
    next_event: u64,
    routes: Vec<Route>,
    agents: [AgentRun; 3],
    /// Whether this node's clock was last found beyond the bound from its peers'.
    clock_skewed: bool,
    /// Why PerfWatch cannot sample the machine (`None`: it can).
    sampling: Option<String>,
    /// What this node advertises: `hypermesh.capabilities`, less what was withdrawn (see
    /// [`HypermeshHandle::withdraw_capability`]).
    capabilities: Vec<String>,
}

#[derive(Clone, Copy, Default)]
struct AgentRun {
    last: Option<Instant>,
    runs: u64,
}

/// Read access for the API, and the sender the swarm loop feeds.
#[derive(Clone)]
pub struct HypermeshHandle {
    inner: Arc<Mutex<Inner>>,
    pub tx: mpsc::Sender<HyperInput>,
    started: Instant,
    node_id: String,
    config: HypermeshConfig,
}

impl std::fmt::Debug for HypermeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HypermeshHandle").finish_non_exhaustive()
    }
}

/// This node's clock minus the median of its peers' clocks, from their last reports.
fn clock_offset(peers: &HashMap<PeerId, PeerInfo>) -> Option<i64> {
    let mut offsets: Vec<i64> = peers.values().filter_map(|i| i.clock_offset_ms).collect();
    if offsets.is_empty() {
        return None;
    }
    offsets.sort_unstable();
    let mid = offsets.len() / 2;
    let median = if offsets.len().is_multiple_of(2) {
        (offsets[mid - 1] + offsets[mid]) / 2
    } else {
        offsets[mid]
    };
    Some(-median)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl HypermeshHandle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `GET /hypermesh/status`.
    pub fn status(&self) -> Value {
        let now = self.mono_ms();
        let h = self.lock();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let peers: Vec<Value> = h
            .detector
            .peers(now)
            .into_iter()
            .map(|(p, state, phi, silent)| {
                *counts.entry(state_name(state)).or_default() += 1;
                let info = h.peers.get(&p);
                json!({
                    "nodeId": p.to_string(),
                    "state": state_name(state),
                    "phi": (phi * 100.0).round() / 100.0,
                    "silentMs": silent,
                    "rttMs": info.and_then(|i| i.rtt_ewma_ms),
                    "samples": info.and_then(|i| i.report.as_ref()).map(|r| &r.body.samples),
                    "samplesKnown": info
                        .and_then(|i| i.report.as_ref())
                        .is_some_and(|r| r.body.samples.machine_known()),
                    "activity": info.and_then(|i| i.report.as_ref()).map(|r| r.body.activity),
                    "region": info.and_then(|i| i.report.as_ref()).map(|r| r.body.region.clone()),
                    "clockOffsetMs": info.and_then(|i| i.clock_offset_ms),
                })
            })
            .collect();
        let bound = self.config.clock_bound.as_millis() as i64;
        let offset = clock_offset(&h.peers);
        let left: Vec<Value> = h
            .peers
            .iter()
            .filter_map(|(p, i)| i.left.map(|(_, at)| (p, at)))
            .map(|(p, at)| json!({ "nodeId": p.to_string(), "leftAtMs": at }))
            .collect();
        json!({
            "nodeId": self.node_id,
            "clock": {
                "offsetMs": offset,
                "boundMs": bound,
                "skewed": offset.is_some_and(|o| o.abs() > bound),
                "peers": h.peers.values().filter(|i| i.clock_offset_ms.is_some()).count(),
            },
            "activity": h.activity,
            "samples": h.samples,
            "samplesKnown": h.sampling.is_none(),
            "sampling": h.sampling.as_deref().unwrap_or("ok"),
            "region": self.config.region,
            "capabilities": h.capabilities,
            "sampleIntervalMs": h.sample_interval.as_millis() as u64,
            "mesh": {
                "alive": counts.get("alive").copied().unwrap_or(0),
                "suspect": counts.get("suspect").copied().unwrap_or(0),
                "dead": counts.get("dead").copied().unwrap_or(0),
                "left": left.len(),
            },
            "peers": peers,
            "left": left,
        })
    }

    /// The nodes the grid may place work on: this node and every peer the failure detector
    /// holds alive, with health score, region and capabilities (from their reports).
    pub fn live_nodes(&self) -> Vec<LiveNode> {
        let now = self.mono_ms();
        let h = self.lock();
        let mut out: Vec<LiveNode> = h
            .detector
            .peers(now)
            .into_iter()
            .filter(|(_, state, _, _)| *state == PeerState::Alive)
            .map(|(p, _, _, _)| {
                let id = p.to_string();
                let report = h.peers.get(&p).and_then(|i| i.report.as_ref());
                let health = h
                    .routes
                    .iter()
                    .find(|r| r.peer == id)
                    .map_or(0.5, |r| r.health);
                LiveNode {
                    node: id,
                    health,
                    region: report.map(|r| r.body.region.clone()).unwrap_or_default(),
                    capabilities: report
                        .map(|r| r.body.capabilities.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        // Weighed by what it last published, as the others weigh it, so that every node
        // computes the same placement (current samples would put it first on its own view
        // more often than on the others').
        let own = h.published.as_ref().unwrap_or(&h.samples);
        out.push(LiveNode {
            node: self.node_id.clone(),
            health: voike_protocol::health::health_of(PeerState::Alive, Some(own)),
            region: self.config.region.clone(),
            capabilities: h.capabilities.clone(),
        });
        out
    }

    /// Health of every known node (this one included) for SNRL ranking.
    pub fn node_health(&self) -> HashMap<String, voike_protocol::snrl::NodeHealth> {
        use voike_protocol::snrl::NodeHealth;
        let now = self.mono_ms();
        let h = self.lock();
        let routes: HashMap<&str, &Route> = h.routes.iter().map(|r| (r.peer.as_str(), r)).collect();
        let mut out: HashMap<String, NodeHealth> = h
            .detector
            .peers(now)
            .into_iter()
            .map(|(p, state, _, _)| {
                let id = p.to_string();
                let route = routes.get(id.as_str());
                let health = NodeHealth {
                    state,
                    health: route.map_or(if state == PeerState::Dead { 0.0 } else { 0.5 }, |r| {
                        r.health
                    }),
                    rtt_ms: route.and_then(|r| r.rtt_ms),
                    relayed: route.is_some_and(|r| r.path == "relayed"),
                };
                (id, health)
            })
            .collect();
        // A member that left is not there: nothing is routed to it, its claims are free.
        for (p, _) in h.peers.iter().filter(|(_, i)| i.left.is_some()) {
            out.insert(
                p.to_string(),
                NodeHealth {
                    state: PeerState::Dead,
                    health: 0.0,
                    rtt_ms: None,
                    relayed: false,
                },
            );
        }
        out.insert(
            self.node_id.clone(),
            NodeHealth {
                state: PeerState::Alive,
                health: voike_protocol::health::health_of(PeerState::Alive, Some(&h.samples)),
                rtt_ms: Some(0.0),
                relayed: false,
            },
        );
        out
    }

    /// Stops advertising `capability` (the grid does so when this node cannot run
    /// WebAssembly); the next health report, sent at once, no longer lists it.
    pub fn withdraw_capability(&self, capability: &str) {
        let removed = {
            let mut h = self.lock();
            let before = h.capabilities.len();
            h.capabilities.retain(|c| c != capability);
            h.capabilities.len() != before
        };
        if removed {
            let _ = self.tx.try_send(HyperInput::CapabilitiesChanged);
        }
    }

    /// `GET /hypermesh/routes`.
    pub fn routes(&self) -> Vec<Route> {
        self.lock().routes.clone()
    }

    /// `GET /hypermesh/events?since=ID`: events with an id above `since`, oldest first.
    pub fn events(&self, since: Option<u64>, limit: usize) -> Vec<Event> {
        let h = self.lock();
        h.events
            .iter()
            .filter(|e| since.is_none_or(|s| e.id > s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// `GET /hypermesh/agents`.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let h = self.lock();
        let names = ["perfwatch", "meshsurgeon", "hyperroute"];
        let intervals = [Some(h.sample_interval), None, None];
        names
            .iter()
            .zip(h.agents.iter())
            .zip(intervals)
            .map(|((name, run), interval)| AgentInfo {
                name,
                state: match *name {
                    "perfwatch" => match h.activity {
                        Activity::Sleep => "sleep".into(),
                        Activity::Active => "active".into(),
                    },
                    "meshsurgeon" => "watching (wakes at the next possible transition)".into(),
                    _ => "event-driven (recomputed when an input changes)".into(),
                },
                interval_ms: interval.map(|i| i.as_millis() as u64),
                last_run_ago_ms: run.last.map(|l| l.elapsed().as_millis() as u64),
                runs: run.runs,
            })
            .collect()
    }
}

fn state_name(s: PeerState) -> &'static str {
    match s {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        PeerState::Dead => "dead",
    }
}

/// The Hypermesh task.
pub struct Hypermesh {
    handle: HypermeshHandle,
    rx: mpsc::Receiver<HyperInput>,
    key: Keypair,
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
    publish: mpsc::Sender<Vec<u8>>,
    system: System,
    pid: Option<Pid>,
    connections: u32,
    trend: VecDeque<(u64, f64)>,
    last_report: Option<Instant>,
    last_published: Option<Samples>,
    last_overload: Option<Instant>,
    last_hlc: Option<voike_protocol::hlc::Hlc>,
    /// Ledger entries written this minute (at most `LEDGER_EVENTS_PER_MINUTE`).
    ledger_budget: (Instant, u32),
}

impl std::fmt::Debug for Hypermesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypermesh").finish_non_exhaustive()
    }
}

impl Hypermesh {
    /// Creates the task; `publish` carries encoded reports to the swarm loop.
    pub fn new(
        config: HypermeshConfig,
        key: Keypair,
        ledger: LedgerHandle,
        metrics: Arc<Metrics>,
        publish: mpsc::Sender<Vec<u8>>,
    ) -> (Hypermesh, HypermeshHandle) {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let detector = Detector::new(DetectorConfig {
            suspect_phi: config.suspect_phi,
            dead_phi: config.dead_phi,
            min_dead_ms: config.min_dead.as_millis() as u64,
            min_std_ms: (config.heartbeat_interval.as_millis() as f64 / 4.0).max(50.0),
            window: 32,
            expected_interval_ms: config.heartbeat_interval.as_millis() as f64,
        });
        let handle = HypermeshHandle {
            inner: Arc::new(Mutex::new(Inner {
                detector,
                peers: HashMap::new(),
                samples: Samples::default(),
                published: None,
                activity: Activity::Active,
                sample_interval: config.sample_fast,
                events: VecDeque::new(),
                // Ids keep increasing across restarts (a follower's `since` stays valid).
                next_event: wall_ms() * 1000,
                routes: Vec::new(),
                agents: [AgentRun::default(); 3],
                clock_skewed: false,
                sampling: None,
                capabilities: config.capabilities.clone(),
            })),
            tx,
            started: Instant::now(),
            node_id: key.public().to_peer_id().to_string(),
            config,
        };
        let task = Hypermesh {
            handle: handle.clone(),
            rx,
            key,
            ledger,
            metrics,
            publish,
            system: System::new(),
            pid: sysinfo::get_current_pid().ok(),
            connections: 0,
            trend: VecDeque::new(),
            last_report: None,
            last_published: None,
            last_overload: None,
            last_hlc: None,
            ledger_budget: (Instant::now(), 0),
        };
        (task, handle)
    }

    fn config(&self) -> &HypermeshConfig {
        &self.handle.config
    }

    /// Runs until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        // The first CPU figure needs two refreshes.
        self.system.refresh_cpu_usage();
        let mut next_sample = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            let now = self.handle.mono_ms();
            let detector_at = self.handle.lock().detector.next_deadline(now).map(|ms| {
                tokio::time::Instant::from_std(self.handle.started + Duration::from_millis(ms))
            });
            let heartbeat_at = match self.last_report {
                Some(at) => tokio::time::Instant::from_std(at + self.config().heartbeat_interval),
                None => tokio::time::Instant::now(),
            };
            let mut wake = next_sample.min(heartbeat_at);
            if let Some(d) = detector_at {
                wake = wake.min(d + Duration::from_millis(5));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                input = self.rx.recv() => match input {
                    Some(i) => self.on_input(i),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => {
                    let t = tokio::time::Instant::now();
                    if t >= next_sample {
                        let interval = self.sample();
                        next_sample = t + interval;
                    }
                    if t >= heartbeat_at {
                        self.report(false);
                    }
                    self.tick();
                }
            }
        }
    }

    fn on_input(&mut self, input: HyperInput) {
        let now = self.handle.mono_ms();
        match input {
            HyperInput::Report { from, report } => {
                let transition = {
                    let mut h = self.handle.lock();
                    // A replayed or reordered report is not a heartbeat. (A last report stamped
                    // beyond the skew bound ahead came from a clock that was wrong: once the
                    // peer's clock is corrected its reports are older than that one, and must
                    // count.)
                    let bound = self.handle.config.clock_bound.as_millis() as u64;
                    let stale = h
                        .peers
                        .get(&from)
                        .and_then(|i| i.report.as_ref())
                        .is_some_and(|old| {
                            report.body.hlc <= old.body.hlc
                                && old.body.hlc.wall_ms <= wall_ms() + bound
                        });
                    if stale {
                        return;
                    }
                    // A report made before the peer's leave (late, or relayed late) does not bring
                    // it back; a newer one does (it restarted).
                    if h.peers
                        .get(&from)
                        .and_then(|i| i.left)
                        .is_some_and(|(at, _)| report.body.hlc <= at)
                    {
                        return;
                    }
                    let t = h.detector.heartbeat(from, now);
                    let info = h.peers.entry(from).or_insert_with(PeerInfo::new);
                    info.left = None;
                    info.seen = Some(report.body.hlc);
                    // A report is published as soon as it is made: its stamp, against this
                    // node's clock on arrival, gives the peer's clock offset (within the
                    // gossip delay, far below the skew bound).
                    info.clock_offset_ms = Some(report.body.hlc.wall_ms as i64 - wall_ms() as i64);
                    info.report = Some(report);
                    t
                };
                self.check_clock();
                if let Some(t) = transition {
                    self.on_transition(t);
                }
                self.recompute_routes();
            }
            HyperInput::Ping { peer, rtt, relayed } => {
                let ms = rtt.as_secs_f64() * 1000.0;
                self.metrics.hm_rtt.observe(rtt.as_secs_f64());
                let transition = {
                    let mut h = self.handle.lock();
                    // A ping answered while a peer that left closes its connection is no sign
                    // that it is back.
                    let known = h.peers.get(&peer).is_some_and(|i| i.left.is_none());
                    let t = if known {
                        h.detector.heartbeat(peer, now)
                    } else {
                        None
                    };
                    if let Some(info) = h.peers.get_mut(&peer) {
                        info.rtt_ewma_ms = Some(match info.rtt_ewma_ms {
                            Some(old) => old * 0.8 + ms * 0.2,
                            None => ms,
                        });
                        info.relayed = relayed;
                    }
                    t
                };
                if let Some(t) = transition {
                    self.on_transition(t);
                }
                self.recompute_routes();
            }
            HyperInput::Connections(n) => self.connections = n,
            HyperInput::Leave { from, leave } => self.on_leave(from, leave),
            HyperInput::CapabilitiesChanged => {
                self.report(true);
                self.recompute_routes();
            }
            HyperInput::Connected { peer } => {
                let transition = {
                    let mut h = self.handle.lock();
                    // A member that left and connects again (its handshake verified) is back.
                    h.peers.entry(peer).or_insert_with(PeerInfo::new).left = None;
                    h.detector.heartbeat(peer, now)
                };
                if let Some(t) = transition {
                    self.on_transition(t);
                }
                self.recompute_routes();
            }
        }
    }

    /// A verified leave: taken when newer than all heard from the peer and within the clock
    /// bound; the peer is then no longer watched (no suspect, no down, no spawn advisory).
    fn on_leave(&mut self, from: PeerId, leave: Leave) {
        let bound = self.handle.config.clock_bound.as_millis() as u64;
        let now_wall = wall_ms();
        let taken = {
            let mut h = self.handle.lock();
            let seen = h.peers.get(&from).and_then(|i| i.seen);
            match leave.check_fresh(seen, now_wall, bound) {
                Ok(()) => {
                    let info = h.peers.entry(from).or_insert_with(PeerInfo::new);
                    info.left = Some((leave.body.hlc, now_wall));
                    info.seen = Some(leave.body.hlc);
                    info.clock_offset_ms = None;
                    info.rtt_ewma_ms = None;
                    Some(h.detector.leave(from))
                }
                Err(error) => {
                    warn!(peer = %from, %error, "refused a leave message");
                    None
                }
            }
        };
        if let Some(t) = taken {
            self.on_transition(t);
            self.recompute_routes();
        }
    }

    /// PerfWatch: one sample; returns the interval until the next.
    fn sample(&mut self) -> Duration {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let mut rss = 0;
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory(),
            );
            rss = self.system.process(pid).map_or(0, |p| p.memory());
        }
        // Without the machine's figures sysinfo says 0 (no memory, no CPU, idle): that is
        // reported as unknown (`mem_total_bytes` 0, see `Samples`), never as an idle machine.
        let blind = self.system.total_memory() == 0 || self.system.cpus().is_empty();
        let samples = if blind {
            Samples {
                rss_bytes: rss,
                connections: self.connections,
                ..Samples::default()
            }
        } else {
            Samples {
                cpu_pct: self.system.global_cpu_usage(),
                mem_used_bytes: self.system.used_memory(),
                mem_total_bytes: self.system.total_memory(),
                load1: System::load_average().one as f32,
                rss_bytes: rss,
                connections: self.connections,
            }
        };
        self.note_sampling(blind);
        let now = self.handle.mono_ms();
        if !blind {
            self.trend
                .push_back((now, f64::from(samples.cpu_pct.max(samples.mem_pct()))));
            if self.trend.len() > TREND_POINTS {
                self.trend.pop_front();
            }
        }
        let (fast, slow) = (self.config().sample_fast, self.config().sample_slow);
        let interval = {
            let mut h = self.handle.lock();
            let moved = (samples.cpu_pct - h.samples.cpu_pct).abs() > 5.0
                || (samples.mem_pct() - h.samples.mem_pct()).abs() > 2.0;
            // Only movement samples fast: a machine that is busy but steady (a long build, a
            // loaded server) has nothing new to say, and its node backs off like an idle one.
            h.activity = if moved {
                Activity::Active
            } else {
                Activity::Sleep
            };
            h.sample_interval = if h.activity == Activity::Active {
                fast
            } else {
                (h.sample_interval * 2).clamp(fast, slow)
            };
            h.samples = samples.clone();
            h.agents[0].last = Some(Instant::now());
            h.agents[0].runs += 1;
            h.sample_interval
        };
        self.metrics.hm_sample_interval.set(interval.as_secs_f64());
        // A material change is reported at once; otherwise the heartbeat carries it.
        let material = self.last_published.as_ref().is_none_or(|p| {
            (p.cpu_pct - samples.cpu_pct).abs() > 10.0
                || (p.mem_pct() - samples.mem_pct()).abs() > 5.0
        });
        if material {
            self.report(true);
        }
        self.predict_overload();
        interval
    }

    /// Says once, when it changes, whether PerfWatch can sample the machine.
    fn note_sampling(&mut self, blind: bool) {
        let mut h = self.handle.lock();
        match (blind, h.sampling.is_some()) {
            (true, false) => {
                let why = sampling_unavailable();
                warn!(
                    sampling = %why,
                    "cannot sample this machine's CPU, memory and load; health reports say unknown (is /proc mounted with subset=pid, e.g. systemd ProcSubset=pid?)"
                );
                h.sampling = Some(why);
            }
            (false, true) => {
                info!("machine sampling works again");
                h.sampling = None;
            }
            _ => {}
        }
    }

    fn predict_overload(&mut self) {
        let points: Vec<(u64, f64)> = self.trend.iter().copied().collect();
        let limit = self.config().overload_limit_pct;
        let horizon = self.config().overload_horizon;
        let Some(eta) = time_to_limit(&points, limit) else {
            return;
        };
        if Duration::from_millis(eta) > horizon {
            return;
        }
        if self
            .last_overload
            .is_some_and(|t| t.elapsed() < Duration::from_secs(300))
        {
            return;
        }
        self.last_overload = Some(Instant::now());
        let body = json!({
            "kind": "overload_predicted",
            "node": self.handle.node_id,
            "limit_pct": limit,
            "eta_ms": eta,
        });
        self.push_event(body);
    }

    /// Publishes a signed health report (a heartbeat).
    fn report(&mut self, material: bool) {
        let (samples, activity, capabilities) = {
            let h = self.handle.lock();
            (h.samples.clone(), h.activity, h.capabilities.clone())
        };
        let mut hlc = voike_protocol::hlc::Hlc {
            wall_ms: wall_ms(),
            counter: 0,
        };
        if let Some(last) = self.last_hlc
            && hlc <= last
        {
            hlc = voike_protocol::hlc::Hlc {
                wall_ms: last.wall_ms,
                counter: last.counter + 1,
            };
        }
        self.last_hlc = Some(hlc);
        let body = ReportBody {
            node: self.key.public().encode_protobuf(),
            hlc,
            samples: samples.clone(),
            activity,
            region: self.config().region.clone(),
            capabilities,
            addrs: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match HealthReport::sign(&self.key, body) {
            Ok(r) => {
                if self.publish.try_send(r.to_bytes()).is_ok() {
                    self.metrics
                        .hm_gossip
                        .get_or_create(&GossipLabel {
                            direction: "out".into(),
                            result: if material { "changed" } else { "heartbeat" }.into(),
                        })
                        .inc();
                }
                self.last_report = Some(Instant::now());
                self.handle.lock().published = Some(samples.clone());
                self.last_published = Some(samples);
            }
            Err(e) => warn!(error = %e, "cannot sign a health report"),
        }
    }

    /// MeshSurgeon: re-evaluates every peer.
    fn tick(&mut self) {
        let now = self.handle.mono_ms();
        let transitions = {
            let mut h = self.handle.lock();
            h.agents[1].last = Some(Instant::now());
            h.agents[1].runs += 1;
            h.detector.tick(now)
        };
        let any = !transitions.is_empty();
        for t in transitions {
            self.on_transition(t);
        }
        if any {
            self.recompute_routes();
        }
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for (_, s, _, _) in self.handle.lock().detector.peers(now) {
            *counts.entry(state_name(s)).or_default() += 1;
        }
        for s in ["alive", "suspect", "dead"] {
            self.metrics
                .hm_peers
                .get_or_create(&StateLabel { state: s.into() })
                .set(counts.get(s).copied().unwrap_or(0));
        }
    }

    /// Compares this node's clock with its peers' (the median offset of their last reports) and
    /// says so, once per change, when it is beyond `sync.max_future_skew`.
    fn check_clock(&mut self) {
        let bound = self.handle.config.clock_bound.as_millis() as i64;
        let (offset, peers, changed) = {
            let mut h = self.handle.lock();
            let Some(offset) = clock_offset(&h.peers) else {
                return;
            };
            let skewed = offset.abs() > bound;
            let changed = skewed != h.clock_skewed;
            h.clock_skewed = skewed;
            (offset, h.peers.len(), changed.then_some(skewed))
        };
        self.metrics.clock_offset_ms.set(offset);
        match changed {
            Some(true) => {
                warn!(
                    offset_ms = offset,
                    peers,
                    bound_ms = bound,
                    "this node's clock is beyond the skew bound from its peers'; its changes are refused until it is corrected"
                );
                self.ledger.record(
                    "clock.skewed",
                    json!({ "offset_ms": offset, "peers": peers, "bound_ms": bound }),
                );
            }
            Some(false) => {
                info!(
                    offset_ms = offset,
                    peers, "this node's clock is back within the skew bound"
                )
            }
            None => {}
        }
    }

    fn on_transition(&mut self, t: Transition) {
        let (kind, peer, to) = match &t {
            Transition::PeerSuspect { peer } => ("peer_suspect", peer.clone(), "suspect"),
            Transition::PeerDown { peer } => ("peer_down", peer.clone(), "dead"),
            Transition::PeerRecovered { peer } => ("peer_recovered", peer.clone(), "alive"),
            Transition::PeerLeft { peer } => ("peer_left", peer.clone(), "left"),
        };
        self.metrics
            .hm_transitions
            .get_or_create(&StateLabel { state: to.into() })
            .inc();
        match kind {
            "peer_down" => warn!(%peer, "peer down"),
            "peer_recovered" => info!(%peer, "peer recovered"),
            "peer_left" => info!(%peer, "peer left (stopped cleanly)"),
            _ => debug!(%peer, "peer suspect"),
        }
        self.push_event(json!({ "kind": kind, "peer": peer }));
        if kind == "peer_down" {
            self.recompute_routes();
            let routes = self.handle.routes();
            if let Some(to) = spawn_advisory(&routes, &peer) {
                self.push_event(
                    json!({ "kind": "spawn_advisory", "failed": peer, "take_over": to }),
                );
            }
        }
    }

    fn push_event(&mut self, body: Value) {
        let kind = body["kind"].as_str().unwrap_or("event").to_string();
        {
            let mut h = self.handle.lock();
            let id = h.next_event;
            h.next_event += 1;
            h.events.push_back(Event {
                id,
                at_ms: wall_ms(),
                body: body.clone(),
            });
            if h.events.len() > MAX_EVENTS {
                h.events.pop_front();
            }
        }
        if self.ledger_budget.0.elapsed() >= Duration::from_secs(60) {
            self.ledger_budget = (Instant::now(), 0);
        }
        if self.ledger_budget.1 < LEDGER_EVENTS_PER_MINUTE {
            self.ledger_budget.1 += 1;
            self.ledger.record(&format!("hypermesh.{kind}"), body);
        }
    }

    /// HyperRoute: the ranked table for this node's own region and capabilities.
    fn recompute_routes(&mut self) {
        let now = self.handle.mono_ms();
        let mut h = self.handle.lock();
        let inputs: Vec<RouteInput> = h
            .detector
            .peers(now)
            .into_iter()
            .map(|(p, state, _, _)| {
                let info = h.peers.get(&p);
                let report = info.and_then(|i| i.report.as_ref());
                RouteInput {
                    peer: p.to_string(),
                    state,
                    rtt_ms: info.and_then(|i| i.rtt_ewma_ms),
                    relayed: info.is_some_and(|i| i.relayed),
                    cpu_pct: report.map_or(0.0, |r| r.body.samples.cpu_pct),
                    mem_pct: report.map_or(0.0, |r| r.body.samples.mem_pct()),
                    samples_known: report.is_some_and(|r| r.body.samples.machine_known()),
                    region: report.map(|r| r.body.region.clone()).unwrap_or_default(),
                    capabilities: report
                        .map(|r| r.body.capabilities.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        h.routes = rank_routes(&inputs, &self.handle.config.region, &h.capabilities);
        h.agents[2].last = Some(Instant::now());
        h.agents[2].runs += 1;
    }
}
