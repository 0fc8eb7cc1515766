//! The VVM and grid jobs on the node: WebAssembly modules stored by content hash and fetched
//! from members, and a scheduler with no coordinator.
//!
//! Every node runs the same placement over the replicated `jobs` document: for each segment
//! that still needs a run, the live nodes meeting the job's requirements are ordered by weighted
//! rendezvous hashing (weight = Hypermesh health); walking that order, nodes that already hold a
//! live claim or a result are counted, and a node claims the segment when its turn comes before
//! `replicas` runners are counted. A claim is a lease (`grid.lease`): one change of the jobs
//! document, then kept alive while the segment runs by signed renewals gossiped every third of
//! the lease ([`voike_protocol::lease`]; no change, no ledger entry). A claim whose lease ran
//! out, or whose runner Hypermesh declares dead, no longer counts, so the next node in the order
//! takes the segment. A node that has just started has heard no renewal yet: for two leases it
//! still counts the claims of runners not known dead. Results are signed by the runner.
//!
//! One member cannot exhaust the others: a module is scanned against the runtime's module
//! limits before it is compiled (at upload, and on a runner that fetched it), the compiled
//! modules kept are bounded in bytes ([`MODULE_CACHE_BYTES`]), a job's scratch directory is
//! bounded by the runtime's scratch quota and removed after the run, and when more segments
//! fall to this node than it runs at once they start in [`jobs::FairShare`] order
//! (least-recently-served submitter first).
//!
//! A job is cancelled by a cancel marker in the document ([`Grid::cancel`], written by the
//! submitter or an admin; see [`jobs::CANCEL_SEGMENT`]): the scheduler then starts none of its
//! segments, and a segment this node runs is stopped at once for the mesh (a `cancelled`
//! result, the claim dropped), its slot held until the module's thread ends (the runtime cannot
//! interrupt a run from outside; its fuel and wall-time limits still end it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use voike_protocol::jobs::{self, FairShare, JobState, JobView, RunOutcome, SegmentResult, Status};
use voike_protocol::lease::LeaseRenewal;
use voike_protocol::sync::{MAX_MODULE_BYTES, SyncRequest, SyncResponse};
use voike_runtime::{CompileError, Module, Runtime, RuntimeConfig};
use voike_storage::{Table, WriteOp};

use crate::hypermesh::{HypermeshHandle, LiveNode};
use crate::metrics::Metrics;
use crate::state::{StateError, StateHandle};
use crate::swarm::SwarmHandle;

/// How often the scheduler looks again, while some segment is unfinished, when nothing changed
/// (a node became live or dead); lease expiries wake it on time. No segment unfinished: no
/// timer at all.
const RESCAN: Duration = Duration::from_secs(2);
/// How long the scheduler lets document changes accumulate before a pass.
const COALESCE: Duration = Duration::from_millis(10);

/// When the scheduler must look again without a change (see `Grid::schedule`).
fn next_wake(all: &[JobView], now: u64) -> Option<Duration> {
    let unfinished = all.iter().filter(|j| !j.is_cancelled()).flat_map(|j| {
        j.segments.iter().filter(|s| {
            matches!(s.state, JobState::Pending | JobState::Running)
                // Only "module unavailable" so far: another node may still run it.
                || (!s.results.is_empty()
                    && s.results
                        .iter()
                        .all(|r| r.status() == Some(Status::ModuleUnavailable)))
        })
    });
    let mut wake: Option<Duration> = None;
    for seg in unfinished {
        let mut at = RESCAN;
        for c in &seg.claims {
            if c.lease_until_ms > now {
                // Just after the lease runs out (clocks of the runner and this node agree to
                // within the skew bound; a renewal moves it again).
                at = at.min(Duration::from_millis(c.lease_until_ms - now + 50));
            }
        }
        wake = Some(wake.map_or(at, |w| w.min(at)));
    }
    wake
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bytes of compiled code the module cache holds at most; a module larger than this is used
/// and not kept.
pub const MODULE_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Compiled modules by hash, least recently used evicted first, bounded by compiled size, so
/// that members naming many (or huge) modules cannot grow a runner's memory without bound.
struct ModuleCache {
    lru: lru::LruCache<String, Arc<Module>>,
    bytes: usize,
    max_bytes: usize,
}

impl ModuleCache {
    fn new(max_bytes: usize) -> Self {
        ModuleCache {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            max_bytes,
        }
    }

    fn get(&mut self, hash: &str) -> Option<Arc<Module>> {
        self.lru.get(hash).cloned()
    }

    fn insert(&mut self, hash: String, module: Arc<Module>) {
        let size = module.code_bytes();
        if size > self.max_bytes {
            tracing::info!(%hash, size, max = self.max_bytes, "compiled module larger than the cache; not kept");
            return;
        }
        if let Some(old) = self.lru.put(hash, module) {
            self.bytes = self.bytes.saturating_sub(old.code_bytes());
        }
        self.bytes += size;
        while self.bytes > self.max_bytes {
            let Some((_, evicted)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(evicted.code_bytes());
        }
    }
}

/// Settings of the grid.
#[derive(Clone, Debug)]
pub struct GridConfig {
    /// Length of a claim's lease; renewed (by a signed renewal) every third of it while the
    /// segment runs.
    pub lease: Duration,
    /// Segments this node runs at once.
    pub max_parallel: usize,
    /// Where jobs granted a scratch directory get one (`<job>-<segment>`, removed after the run).
    pub scratch_root: std::path::PathBuf,
}

/// Why a module was not accepted or found.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Over one of the module limits (`[grid.module_limits]`); refused before compiling.
    #[error("{0}")]
    OverLimit(String),
    #[error("{0}")]
    Compile(String),
    #[error("no module {0} on this node or its connected members")]
    NotFound(String),
    #[error("{0}")]
    Store(String),
    /// This node cannot run WebAssembly at all (see [`Grid::unusable`]): not the module's fault.
    #[error(
        "this node cannot compile WebAssembly ({0}); upload the module to a node with the grid capability"
    )]
    Unusable(String),
}

/// What `POST /vvm/modules` answers.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleInfo {
    pub hash: String,
    pub size: usize,
    pub entries: Vec<String>,
    pub wasi: bool,
}

/// The VVM and scheduler of one node.
pub struct Grid {
    key: Keypair,
    node_id: String,
    state: StateHandle,
    hypermesh: HypermeshHandle,
    swarm: SwarmHandle,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    config: GridConfig,
    /// Compiled modules, least recently used first out, bounded in bytes of compiled code.
    compiled: Mutex<ModuleCache>,
    /// Segments this node is running: (job, segment), each with the token that stops it when
    /// its job is cancelled.
    running: Mutex<HashMap<(String, u32), CancellationToken>>,
    /// Segments this node gave up on for now (module not found), with when to retry.
    backoff: Mutex<HashMap<(String, u32), u64>>,
    /// Which submitter this node started a segment for when: the order of the next starts.
    fair: Mutex<FairShare>,
    /// Ends the segment tasks at shutdown (a running module is left to finish on its thread,
    /// holding nothing but the runtime).
    cancel: CancellationToken,
    /// Why this node cannot run WebAssembly (found at start by compiling [`PROBE_MODULE`]):
    /// it then runs no segment and does not advertise [`GRID_CAPABILITY`].
    unusable: Option<String>,
    /// Until then (Unix ms; two leases after the start) claims whose lease ran out by the
    /// document still count: their runners' renewals have not had time to arrive.
    heard_renewals_from_ms: u64,
}

/// The smallest module with an entry, compiled at start: a runtime that cannot compile it (no
/// executable memory under `MemoryDenyWriteExecute=yes` or `PR_SET_MDWE`) cannot run any job.
const PROBE_MODULE: &str = r#"(module (func (export "run") (result i32) i32.const 1))"#;

/// The capability every node with the grid on advertises in its health reports; the scheduler
/// places segments only on nodes that advertise it.
pub const GRID_CAPABILITY: &str = "grid";

impl std::fmt::Debug for Grid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grid")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn status_of(s: &voike_runtime::Status) -> Status {
    match s {
        voike_runtime::Status::Ok => Status::Ok,
        voike_runtime::Status::Exit(_) => Status::Exit,
        voike_runtime::Status::Trap(_) => Status::Trap,
        voike_runtime::Status::OutOfFuel => Status::OutOfFuel,
        voike_runtime::Status::Timeout => Status::Timeout,
        voike_runtime::Status::MemoryLimit => Status::MemoryLimit,
        voike_runtime::Status::InvalidEntry(_) => Status::InvalidEntry,
        voike_runtime::Status::ScratchQuota(_) => Status::ScratchQuota,
        // Not the guest's fault (pool full, scratch directory missing): recorded like a module
        // this node cannot provide, which the next node in the order retries.
        _ => Status::ModuleUnavailable,
    }
}

impl Grid {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: Keypair,
        state: StateHandle,
        hypermesh: HypermeshHandle,
        swarm: SwarmHandle,
        metrics: Arc<Metrics>,
        config: GridConfig,
        runtime_config: RuntimeConfig,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<Grid>> {
        let runtime = Runtime::new(runtime_config)
            .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly runtime: {e}"))?;
        let unusable = runtime
            .compile(PROBE_MODULE.as_bytes())
            .err()
            .map(|e| e.to_string());
        if let Some(error) = &unusable {
            tracing::error!(
                %error,
                "this node cannot run WebAssembly (wasmtime needs executable memory: is the process under MemoryDenyWriteExecute=yes or PR_SET_MDWE?); grid jobs are not run here and the grid capability is not advertised"
            );
            hypermesh.withdraw_capability(GRID_CAPABILITY);
        }
        // Scratch directories left by a run that did not end (a crash, a kill): no job runs
        // yet, so all of them are stale.
        if config.scratch_root.exists()
            && let Err(e) = std::fs::remove_dir_all(&config.scratch_root)
        {
            warn!(dir = %config.scratch_root.display(), error = %e, "cannot remove stale scratch directories");
        }
        // Two leases: the connections and the gossip mesh form first, then a renewal comes
        // within a third of a lease.
        let heard_renewals_from_ms = now_ms() + 2 * config.lease.as_millis() as u64;
        Ok(Arc::new(Grid {
            node_id: key.public().to_peer_id().to_string(),
            key,
            state,
            hypermesh,
            swarm,
            runtime: Arc::new(runtime),
            metrics,
            config,
            compiled: Mutex::new(ModuleCache::new(MODULE_CACHE_BYTES)),
            running: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            heard_renewals_from_ms,
            fair: Mutex::new(FairShare::new()),
            cancel,
            unusable,
        }))
    }

    fn compile(&self, bytes: Vec<u8>) -> impl Future<Output = Result<Module, ModuleError>> + use<> {
        let runtime = self.runtime.clone();
        async move {
            tokio::task::spawn_blocking(move || runtime.compile(&bytes))
                .await
                .map_err(|e| ModuleError::Compile(e.to_string()))?
                .map_err(|e| match e {
                    CompileError::OverLimit(_) => ModuleError::OverLimit(e.to_string()),
                    other => ModuleError::Compile(other.to_string()),
                })
        }
    }

    /// Why this node cannot run WebAssembly, if it cannot.
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    /// `POST /vvm/modules`: checks, compiles and stores a module (wasm or WAT bytes).
    pub async fn add_module(&self, bytes: Vec<u8>) -> Result<ModuleInfo, ModuleError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(ModuleError::TooLarge {
                size: bytes.len(),
                limit: MAX_MODULE_BYTES,
            });
        }
        if let Some(why) = &self.unusable {
            return Err(ModuleError::Unusable(why.clone()));
        }
        let size = bytes.len();
        let module = self.compile(bytes.clone()).await?;
        let hash = module.hash().to_string();
        self.state
            .store()
            .write(vec![WriteOp::Put {
                table: Table::Modules,
                key: hash.clone().into_bytes(),
                value: bytes,
            }])
            .await
            .map_err(|e| ModuleError::Store(e.to_string()))?;
        let info = ModuleInfo {
            hash: hash.clone(),
            size,
            entries: module.entries(),
            wasi: module.uses_wasi(),
        };
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, Arc::new(module));
        self.metrics.vvm_modules.inc();
        Ok(info)
    }

    /// Whether this node stores module `hash`.
    pub fn has_module(&self, hash: &str) -> bool {
        matches!(
            self.state.store().get(Table::Modules, hash.as_bytes()),
            Ok(Some(_))
        )
    }

    /// The compiled module `hash`: from memory, the local store, or a connected member (whose
    /// bytes must hash to `hash`).
    pub async fn module(&self, hash: &str) -> Result<Arc<Module>, ModuleError> {
        if let Some(m) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            self.metrics.vvm_module_cache("hit");
            return Ok(m);
        }
        let bytes = match self.state.store().get(Table::Modules, hash.as_bytes()) {
            Ok(Some(b)) => b,
            _ => self.fetch(hash).await?,
        };
        self.metrics.vvm_module_cache("miss");
        let module = self.compile(bytes.clone()).await?;
        if module.hash() != hash {
            return Err(ModuleError::Compile(format!(
                "stored module {hash} hashes to {}",
                module.hash()
            )));
        }
        let module = Arc::new(module);
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), module.clone());
        Ok(module)
    }

    /// Asks connected members for module `hash` until one sends bytes that hash to it.
    async fn fetch(&self, hash: &str) -> Result<Vec<u8>, ModuleError> {
        let peers: Vec<PeerId> = self
            .hypermesh
            .live_nodes()
            .into_iter()
            .filter(|n| n.node != self.node_id)
            .filter_map(|n| n.node.parse().ok())
            .collect();
        for peer in peers {
            let req = SyncRequest::Module {
                hash: hash.to_string(),
            };
            match self.swarm.sync(peer, req).await {
                Ok(SyncResponse::Module(Some(bytes))) => {
                    let got = voike_runtime::module_hash(&bytes);
                    if got != hash || bytes.len() > MAX_MODULE_BYTES {
                        self.metrics.vvm_fetch("hash_mismatch");
                        warn!(%peer, module = hash, got, "refused a module whose bytes do not match its hash");
                        continue;
                    }
                    self.state
                        .store()
                        .write(vec![WriteOp::Put {
                            table: Table::Modules,
                            key: hash.as_bytes().to_vec(),
                            value: bytes.clone(),
                        }])
                        .await
                        .map_err(|e| ModuleError::Store(e.to_string()))?;
                    self.metrics.vvm_fetch("fetched");
                    info!(%peer, module = hash, bytes = bytes.len(), "fetched a module");
                    return Ok(bytes);
                }
                Ok(SyncResponse::Module(None)) => self.metrics.vvm_fetch("absent"),
                Ok(other) => {
                    let answer = match &other {
                        SyncResponse::Busy => "busy".to_string(),
                        SyncResponse::Refused(why) => format!("refused: {why}"),
                        _ => "not a module".to_string(),
                    };
                    debug!(%peer, %answer, "module request not served");
                    self.metrics.vvm_fetch("refused");
                }
                Err(e) => {
                    debug!(%peer, error = %e, "module request failed");
                    self.metrics.vvm_fetch("failed");
                }
            }
        }
        Err(ModuleError::NotFound(hash.to_string()))
    }

    /// Submits a job (its module must be stored on this node, so members can fetch it).
    pub async fn submit(&self, input: jobs::JobInput) -> Result<jobs::Job, StateError> {
        let input = jobs::check_job(&input)?;
        if !self.has_module(&input.module) {
            return Err(StateError::Invalid(voike_protocol::zones::Invalid {
                field: "module",
                message: format!(
                    "no module {} on this node: upload it first (POST /vvm/modules)",
                    input.module
                ),
            }));
        }
        let job = self.state.submit_job(input).await?;
        self.metrics.vvm_jobs_submitted.inc();
        Ok(job)
    }

    /// Runs the scheduler until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if self.unusable.is_some() {
            // Nothing to schedule: this node takes no segment (others do, it is not eligible).
            cancel.cancelled().await;
            return;
        }
        let mut docs = self.state.watch_docs();
        loop {
            let wake = self.schedule();
            let rescan = async {
                match wake {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = docs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Coalesce a burst of changes (a batch of submissions, results arriving
                    // together) into one pass over the jobs.
                    tokio::time::sleep(COALESCE).await;
                    docs.borrow_and_update();
                }
                _ = rescan => {}
            }
        }
    }

    fn refresh_gauges(&self, jobs: &[JobView]) {
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for j in jobs {
            *counts.entry(state_name(j.state)).or_default() += 1;
        }
        for s in ["pending", "running", "done", "failed", "cancelled"] {
            self.metrics
                .vvm_jobs(s)
                .set(counts.get(s).copied().unwrap_or(0));
        }
    }

    /// One pass over every unfinished job: claims and starts what falls to this node, in
    /// fair-share order (least-recently-served submitter first) while slots are free. Returns
    /// when to look again without a change: at the next lease expiry, and at most [`RESCAN`]
    /// later while a segment is unfinished; `None` when every segment is finished.
    fn schedule(self: &Arc<Self>) -> Option<Duration> {
        let now = now_ms();
        let admins = self.state.authority().admins.clone();
        let mut all = self.state.jobs(now);
        for job in &mut all {
            job.honour_admins(|n| admins.contains(n));
        }
        self.refresh_gauges(&all);
        self.stop_cancelled(&all);
        let mut wake = next_wake(&all, now);
        // A run here, or a retry waiting out its backoff: look again in a while even when no
        // segment is pending elsewhere.
        let local = !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || self
                .backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|until| *until > now);
        if local {
            wake = Some(wake.map_or(RESCAN, |w| w.min(RESCAN)));
        }
        let active: HashSet<&str> = all
            .iter()
            .filter(|j| !matches!(j.state, JobState::Done | JobState::Cancelled))
            .map(|j| j.job.submitted_by.as_str())
            .collect();
        self.fair
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|who| active.contains(who));
        if self.running.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.config.max_parallel
        {
            return wake;
        }
        let live = self.hypermesh.live_nodes();
        // Claims count while their lease runs, unless Hypermesh holds the runner dead (a
        // suspect runner keeps its claims).
        let dead: HashSet<String> = self
            .hypermesh
            .node_health()
            .into_iter()
            .filter(|(_, h)| h.state == voike_protocol::health::PeerState::Dead)
            .map(|(n, _)| n)
            .collect();
        // What falls to this node, in submission order (`jobs` is sorted so).
        let mut ready: Vec<(Arc<JobView>, u32)> = Vec::new();
        for job in all {
            // A failed job may still have segments to run (one segment's trap does not stop
            // the others, and a "module unavailable" result is retried elsewhere).
            if job.state == JobState::Done || job.is_cancelled() {
                continue;
            }
            let eligible: Vec<(String, f64)> = live
                .iter()
                .filter(|n| n.capabilities.iter().any(|c| c == GRID_CAPABILITY))
                .filter(|n| jobs::eligible(&job.job.spec.requirements, &n.region, &n.capabilities))
                .map(|n: &LiveNode| (n.node.clone(), n.health))
                .collect();
            let job = Arc::new(job);
            for seg in &job.segments {
                if self.should_run(&job, seg, &eligible, &dead, now) {
                    ready.push((job.clone(), seg.index));
                }
            }
        }
        let ordered = self
            .fair
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order(ready, |(job, _)| job.job.submitted_by.as_str());
        for (job, segment) in ordered {
            if !self.start(&job, segment) {
                break;
            }
        }
        wake
    }

    /// Stops the segments this node runs of jobs that are cancelled.
    fn stop_cancelled(&self, all: &[JobView]) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_empty() {
            return;
        }
        for job in all.iter().filter(|j| j.is_cancelled()) {
            for ((id, _), stop) in running.iter() {
                if *id == job.job.id && !stop.is_cancelled() {
                    stop.cancel();
                }
            }
        }
    }

    /// Job `id` as this node sees it: admins' cancellations applied and, when nothing can run
    /// its pending segments, why ([`annotate`]).
    pub fn job_view(&self, id: &str) -> Option<JobView> {
        let mut view = self.state.job(id, now_ms())?;
        annotate(
            &mut view,
            &self.hypermesh.live_nodes(),
            &self.state.authority().admins,
        );
        Some(view)
    }

    /// `POST /grid/jobs/{id}/cancel`: writes this node's cancel marker for job `id` when this
    /// node submitted it or is an admin. Cancelling a cancelled job changes nothing.
    pub async fn cancel(&self, id: &str) -> Result<JobView, CancelError> {
        let view = self
            .job_view(id)
            .ok_or_else(|| CancelError::NotFound(id.to_string()))?;
        if view.is_cancelled() {
            return Ok(view);
        }
        if view.state == JobState::Done {
            return Err(CancelError::Done(id.to_string()));
        }
        let reason = if view.job.submitted_by == self.node_id {
            "cancelled by its submitter".to_string()
        } else if self.state.authority().admins.contains(&self.node_id) {
            format!("cancelled by admin {}", self.node_id)
        } else {
            return Err(CancelError::Forbidden {
                job: id.to_string(),
                submitter: view.job.submitted_by.clone(),
            });
        };
        let marker = RunOutcome {
            status: Status::Cancelled,
            exit_code: None,
            returns: Vec::new(),
            stdout: Vec::new(),
            stdout_truncated: false,
            fuel_used: 0,
            duration_us: 0,
            finished_ms: now_ms(),
            reason,
        };
        self.record(id, jobs::CANCEL_SEGMENT, &marker).await?;
        info!(job = %id, "cancelled a job");
        self.job_view(id)
            .ok_or_else(|| CancelError::NotFound(id.to_string()))
    }

    fn should_run(
        &self,
        job: &JobView,
        seg: &jobs::SegmentView,
        eligible: &[(String, f64)],
        dead: &HashSet<String>,
        now: u64,
    ) -> bool {
        let key = (job.job.id.clone(), seg.index);
        if self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return false;
        }
        if let Some(until) = self
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *until > now
        {
            return false;
        }
        // Runs that count: results other than "module unavailable" (which another node may
        // still complete), and live leases of runners not known dead.
        let finished: HashSet<&str> = seg
            .results
            .iter()
            .filter(|r| r.status() != Some(Status::ModuleUnavailable))
            .map(|r| r.runner.as_str())
            .collect();
        let tried: HashSet<&str> = seg.results.iter().map(|r| r.runner.as_str()).collect();
        if tried.contains(self.node_id.as_str()) {
            return false;
        }
        // Just after the start, renewals of others' claims may not have arrived yet.
        let young = now < self.heard_renewals_from_ms;
        let claimed: HashSet<&str> = seg
            .claims
            .iter()
            .filter(|c| {
                (c.lease_until_ms > now || (young && c.runner != self.node_id))
                    && !dead.contains(&c.runner)
            })
            .map(|c| c.runner.as_str())
            .collect();
        let replicas = job.job.spec.replicas as usize;
        let mut counted =
            finished.len() + claimed.iter().filter(|c| !finished.contains(*c)).count();
        if counted >= replicas {
            return false;
        }
        for node in jobs::rendezvous(&job.job.id, seg.index, eligible) {
            if tried.contains(node.as_str()) || claimed.contains(node.as_str()) {
                continue; // already counted (or gave up)
            }
            if node == self.node_id {
                return true;
            }
            // A live eligible node ahead of this one will claim it on its own pass.
            counted += 1;
            if counted >= replicas {
                return false;
            }
        }
        false
    }

    /// Starts segment `segment` of `job` unless every slot is taken (then `false`).
    fn start(self: &Arc<Self>, job: &JobView, segment: u32) -> bool {
        let key = (job.job.id.clone(), segment);
        let stop = CancellationToken::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.len() >= self.config.max_parallel {
                return false;
            }
            if running.contains_key(&key) {
                return true;
            }
            running.insert(key.clone(), stop.clone());
        }
        self.fair
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .served(&job.job.submitted_by);
        let grid = self.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let id = key.0.clone();
            if let Err(e) = grid.run_segment(&job, segment, stop).await {
                warn!(job = %id, segment, error = %e, "segment run not recorded");
            }
            grid.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        });
        true
    }

    async fn run_segment(
        self: &Arc<Self>,
        job: &JobView,
        segment: u32,
        stop: CancellationToken,
    ) -> Result<(), StateError> {
        let id = job.job.id.clone();
        let lease = self.config.lease;
        let attempt = job
            .segments
            .get(segment as usize)
            .map_or(0, |s| s.claims.len() as u32 + s.results.len() as u32);
        self.state
            .claim_segment(&id, segment, now_ms() + lease.as_millis() as u64, attempt)
            .await?;
        info!(job = %id, segment, "claimed a segment");
        let module = match self.module(&job.job.spec.module).await {
            Ok(m) => m,
            Err(e) => {
                warn!(job = %id, segment, error = %e, "module unavailable");
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((id.clone(), segment), now_ms() + 5_000);
                let outcome = RunOutcome {
                    status: Status::ModuleUnavailable,
                    exit_code: None,
                    returns: Vec::new(),
                    stdout: e.to_string().into_bytes(),
                    stdout_truncated: false,
                    fuel_used: 0,
                    duration_us: 0,
                    finished_ms: now_ms(),
                    reason: e.to_string(),
                };
                return self.record(&id, segment, &outcome).await;
            }
        };
        // Removed when this function returns, whatever happens to the run.
        let scratch =
            job.job.spec.capabilities.scratch.then(|| {
                ScratchDir::create(self.config.scratch_root.join(format!("{id}-{segment}")))
            });
        let spec = self.job_spec(job, segment, scratch.as_ref());
        let runtime = self.runtime.clone();
        let mut run = tokio::task::spawn_blocking(move || runtime.run(&module, &spec));
        // Renew the lease while the segment runs: signed renewals to the members, not changes.
        let outcome = loop {
            tokio::select! {
                done = &mut run => break done,
                _ = self.cancel.cancelled() => return Ok(()),
                _ = stop.cancelled() => {
                    info!(job = %id, segment, "job cancelled; segment stopped");
                    let stopped = RunOutcome {
                        status: Status::Cancelled,
                        exit_code: None,
                        returns: Vec::new(),
                        stdout: Vec::new(),
                        stdout_truncated: false,
                        fuel_used: 0,
                        duration_us: 0,
                        finished_ms: now_ms(),
                        reason: "the job was cancelled while this segment ran".into(),
                    };
                    let recorded = self.record(&id, segment, &stopped).await;
                    // The slot stays taken until the module's thread is done with it.
                    drop(scratch);
                    let _ = run.await;
                    return recorded;
                }
                _ = tokio::time::sleep(lease / 3) => {
                    self.renew(&id, segment, attempt, now_ms() + lease.as_millis() as u64);
                }
            }
        };
        drop(scratch);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                warn!(job = %id, segment, error = %e, "segment run panicked");
                return Ok(());
            }
        };
        self.metrics.vvm_run(&outcome);
        let status = status_of(&outcome.status);
        let result = RunOutcome {
            status,
            exit_code: outcome.exit_code,
            returns: outcome.returns.clone(),
            // For these the runtime's reason (the error, the quota) is what the submitter needs.
            stdout: if matches!(status, Status::ModuleUnavailable | Status::ScratchQuota) {
                outcome.status.to_string().into_bytes()
            } else {
                outcome.stdout.clone()
            },
            stdout_truncated: outcome.stdout_truncated,
            fuel_used: outcome.fuel_used,
            duration_us: outcome.duration.as_micros() as u64,
            finished_ms: now_ms(),
            // The runtime's words: the missing argument, the trap, the host error.
            reason: if outcome.status.is_ok() {
                String::new()
            } else {
                outcome.status.to_string()
            },
        };
        info!(job = %id, segment, status = %outcome.status, "segment finished");
        self.record(&id, segment, &result).await
    }

    /// Renews this node's claim on `segment` of `job` (attempt `attempt`) until `until_ms`:
    /// noted here and gossiped to the members.
    fn renew(&self, job: &str, segment: u32, attempt: u32, until_ms: u64) {
        match LeaseRenewal::sign(&self.key, job, segment, attempt, until_ms) {
            Ok(r) => {
                self.state.renew_lease(&self.node_id, &r.body, now_ms());
                if self.swarm.publish_lease(r.to_bytes()) {
                    self.metrics
                        .grid_lease_renewals
                        .get_or_create(&crate::metrics::ResultLabel {
                            result: "sent".into(),
                        })
                        .inc();
                } else {
                    debug!(%job, segment, "lease renewal not sent (the event loop is busy)");
                }
            }
            Err(e) => warn!(%job, segment, error = %e, "cannot sign a lease renewal"),
        }
    }

    async fn record(
        &self,
        job: &str,
        segment: u32,
        outcome: &RunOutcome,
    ) -> Result<(), StateError> {
        let result = SegmentResult::sign(&self.key, job, segment, outcome)
            .map_err(|e| StateError::Internal(e.to_string()))?;
        self.state.finish_segment(result).await
    }

    fn job_spec(
        &self,
        job: &JobView,
        segment: u32,
        scratch: Option<&ScratchDir>,
    ) -> voike_runtime::JobSpec {
        let spec = &job.job.spec;
        let stdin = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &spec.input)
            .unwrap_or_default();
        let scratch_dir = scratch.map(|s| s.path.clone());
        voike_runtime::JobSpec {
            entry: spec.entry.clone(),
            args: jobs::segment_args(spec, segment),
            stdin,
            limits: voike_runtime::Limits {
                memory_bytes: spec.limits.memory_bytes,
                fuel: spec.limits.fuel,
                wall_time: Duration::from_millis(spec.limits.wall_ms),
                max_output_bytes: spec.limits.max_output_bytes as usize,
                // The node's quota (`grid.scratch_quota_bytes`); jobs do not choose their own.
                scratch_bytes: self.runtime.config().max_scratch_bytes,
            },
            caps: voike_runtime::Capabilities {
                clock: spec.capabilities.clock,
                env: spec
                    .capabilities
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                scratch_dir,
            },
        }
    }
}

/// A job's scratch directory, created empty and removed when dropped.
struct ScratchDir {
    path: std::path::PathBuf,
}

impl ScratchDir {
    /// Creates `path` empty (whatever was there is removed first). A failure is logged: the
    /// runtime then reports the missing directory as a host error, retried elsewhere.
    fn create(path: std::path::PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            warn!(dir = %path.display(), error = %e, "cannot create a scratch directory");
        }
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %self.path.display(), error = %e, "cannot remove a scratch directory");
        }
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// Why a job was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {0} is done; there is nothing to cancel")]
    Done(String),
    #[error(
        "job {job} may be cancelled only by the node that accepted it ({submitter}) or an admin"
    )]
    Forbidden { job: String, submitter: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Completes a job view as a node shows it: cancel markers of `admins` applied
/// ([`JobView::honour_admins`]) and, while a segment is pending and no node of `live` that
/// runs grid jobs meets the job's requirements, why in [`JobView::waiting`].
pub fn annotate(view: &mut JobView, live: &[LiveNode], admins: &BTreeSet<String>) {
    view.honour_admins(|n| admins.contains(n));
    let pending = matches!(view.state, JobState::Pending | JobState::Running)
        && view.segments.iter().any(|s| s.state == JobState::Pending);
    if !pending {
        return;
    }
    let runners: Vec<(&str, &[String])> = live
        .iter()
        .filter(|n| n.capabilities.iter().any(|c| c == GRID_CAPABILITY))
        .map(|n| (n.region.as_str(), n.capabilities.as_slice()))
        .collect();
    view.waiting = jobs::no_eligible_node(&view.job.spec.requirements, &runners);
}
