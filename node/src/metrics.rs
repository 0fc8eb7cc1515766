//! Prometheus metrics (`GET /metrics`), named `voike_<subsystem>_<name>_<unit>[_total]`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocLabel {
    pub doc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabel {
    /// `announce` or `anti_entropy`.
    pub kind: String,
    /// `in_sync` (nothing to pull), `pulled`, or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorLabel {
    pub author: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabel {
    /// `in` or `out`.
    pub direction: String,
    /// out: `changed` or `heartbeat`; in: `accepted` or `invalid`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub changes_applied: Family<DocLabel, Counter>,
    /// Stored changes the last rebuild of a document could not apply (0 when healthy).
    pub doc_changes_unapplied: Family<DocLabel, Gauge>,
    pub changes_rejected: Family<ReasonLabel, Counter>,
    pub ledger_applied: Counter,
    pub ledger_rejected: Family<ReasonLabel, Counter>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub rounds: Family<RoundLabel, Counter>,
    pub requests_refused: Family<ReasonLabel, Counter>,
    pub ledger_chain_length: Family<AuthorLabel, Gauge>,
    pub hm_peers: Family<StateLabel, Gauge>,
    pub hm_transitions: Family<StateLabel, Counter>,
    pub hm_gossip: Family<GossipLabel, Counter>,
    pub hm_gossip_bytes: Family<DirectionLabel, Counter>,
    pub hm_rtt: Histogram,
    pub hm_sample_interval: Gauge<f64, AtomicU64>,
    /// This node's clock minus the median of its peers' (from their health reports), ms.
    pub clock_offset_ms: Gauge,
    /// Endpoints not served because their node has no right to the service name.
    pub snrl_endpoints_unserved: Gauge,
    pub members_revoked: Gauge,
    pub relay_reservations_total: Family<ReasonLabel, Counter>,
    pub relay_circuits_total: Counter,
    pub hole_punches_total: Family<ReasonLabel, Counter>,
    /// Remote document changes and ledger entries stamped beyond `sync.max_future_skew`.
    pub clock_future_total: Family<ReasonLabel, Counter>,
    /// Modules accepted by `POST /vvm/modules`.
    pub vvm_modules: Counter,
    /// Compiled-module lookups: `hit` (in memory) or `miss` (loaded or fetched and compiled).
    pub vvm_module_cache_total: Family<ResultLabel, Counter>,
    /// Module fetches from members: `fetched`, `hash_mismatch`, `absent`, `refused`, `failed`.
    pub vvm_fetches: Family<ResultLabel, Counter>,
    pub vvm_jobs_submitted: Counter,
    /// Jobs by state, as this node sees them.
    pub vvm_jobs_by_state: Family<StateLabel, Gauge>,
    /// Segment runs on this node by status.
    pub vvm_runs: Family<StateLabel, Counter>,
    pub vvm_run_seconds: Histogram,
    pub vvm_instantiate_seconds: Histogram,
    pub vvm_fuel: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            changes_applied: Family::default(),
            doc_changes_unapplied: Family::default(),
            changes_rejected: Family::default(),
            ledger_applied: Counter::default(),
            ledger_rejected: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            rounds: Family::default(),
            requests_refused: Family::default(),
            ledger_chain_length: Family::default(),
            hm_peers: Family::default(),
            hm_transitions: Family::default(),
            hm_gossip: Family::default(),
            hm_gossip_bytes: Family::default(),
            hm_rtt: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            hm_sample_interval: Gauge::default(),
            clock_offset_ms: Gauge::default(),
            snrl_endpoints_unserved: Gauge::default(),
            members_revoked: Gauge::default(),
            relay_reservations_total: Family::default(),
            relay_circuits_total: Counter::default(),
            hole_punches_total: Family::default(),
            clock_future_total: Family::default(),
            vvm_modules: Counter::default(),
            vvm_module_cache_total: Family::default(),
            vvm_fetches: Family::default(),
            vvm_jobs_submitted: Counter::default(),
            vvm_jobs_by_state: Family::default(),
            vvm_runs: Family::default(),
            vvm_run_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 12)),
            vvm_instantiate_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
            vvm_fuel: Counter::default(),
        };
        r.register(
            "voike_vvm_modules_added",
            "WebAssembly modules accepted by POST /vvm/modules",
            m.vvm_modules.clone(),
        );
        r.register(
            "voike_vvm_module_cache",
            "Compiled-module lookups: hit (in memory) or miss (loaded or fetched, then compiled)",
            m.vvm_module_cache_total.clone(),
        );
        r.register(
            "voike_vvm_module_fetches",
            "Module fetches from members, by result (fetched, hash_mismatch, absent, refused, failed)",
            m.vvm_fetches.clone(),
        );
        r.register(
            "voike_vvm_jobs_submitted",
            "Grid jobs submitted to this node",
            m.vvm_jobs_submitted.clone(),
        );
        r.register(
            "voike_vvm_jobs",
            "Grid jobs by state, as this node sees them",
            m.vvm_jobs_by_state.clone(),
        );
        r.register(
            "voike_vvm_segment_runs",
            "Job segments run on this node, by status",
            m.vvm_runs.clone(),
        );
        r.register_with_unit(
            "voike_vvm_run",
            "Run time of job segments on this node",
            Unit::Seconds,
            m.vvm_run_seconds.clone(),
        );
        r.register_with_unit(
            "voike_vvm_instantiate",
            "Instantiation time of job segments on this node",
            Unit::Seconds,
            m.vvm_instantiate_seconds.clone(),
        );
        r.register(
            "voike_vvm_fuel_used",
            "Fuel consumed by job segments on this node",
            m.vvm_fuel.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("voike_build_info", "Build of this voiked", build);
        r.register(
            "voike_sync_changes_applied",
            "Document changes merged, by document (local and remote)",
            m.changes_applied.clone(),
        );
        r.register(
            "voike_doc_changes_unapplied",
            "Stored document changes that could not be applied at the last rebuild, by document",
            m.doc_changes_unapplied.clone(),
        );
        r.register(
            "voike_snrl_endpoints_unserved",
            "Registered endpoints not served (DNS, SNRL) because their node does not own the zone that holds the service name",
            m.snrl_endpoints_unserved.clone(),
        );
        r.register(
            "voike_relay_reservations",
            "Relay reservations this node obtained on member relays (reason=accepted)",
            m.relay_reservations_total.clone(),
        );
        r.register(
            "voike_relay_circuits",
            "Circuits this node relayed between members",
            m.relay_circuits_total.clone(),
        );
        r.register(
            "voike_hole_punches",
            "Attempts to upgrade a relayed connection to a direct one (DCUtR), by result: direct or failed",
            m.hole_punches_total.clone(),
        );
        r.register(
            "voike_members_revoked",
            "Members revoked by an admin (in the members document this node holds)",
            m.members_revoked.clone(),
        );
        r.register(
            "voike_clock_offset_ms",
            "This node's clock minus the median of its peers' clocks (from their health reports), in milliseconds",
            m.clock_offset_ms.clone(),
        );
        r.register(
            "voike_clock_future",
            "Remote document changes (reason=change) and ledger entries (reason=entry) stamped more than sync.max_future_skew ahead of this node's clock",
            m.clock_future_total.clone(),
        );
        r.register(
            "voike_sync_changes_rejected",
            "Remote document changes refused, by reason",
            m.changes_rejected.clone(),
        );
        r.register(
            "voike_sync_ledger_entries_applied",
            "Remote ledger entries appended",
            m.ledger_applied.clone(),
        );
        r.register(
            "voike_sync_ledger_entries_rejected",
            "Remote ledger entries refused, by reason",
            m.ledger_rejected.clone(),
        );
        r.register_with_unit(
            "voike_sync_received",
            "Sync bytes received (requests, responses and digests)",
            Unit::Bytes,
            m.bytes_received.clone(),
        );
        r.register_with_unit(
            "voike_sync_sent",
            "Sync bytes sent (requests, responses and digests)",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        r.register(
            "voike_sync_rounds",
            "Sync rounds with a peer, by trigger and result",
            m.rounds.clone(),
        );
        r.register(
            "voike_sync_requests_refused",
            "Inbound sync requests not served, by reason",
            m.requests_refused.clone(),
        );
        r.register(
            "voike_ledger_chain_length",
            "Entries in each author's ledger chain held by this node",
            m.ledger_chain_length.clone(),
        );
        r.register(
            "voike_hypermesh_peers",
            "Members by detector state",
            m.hm_peers.clone(),
        );
        r.register(
            "voike_hypermesh_transitions",
            "Detector transitions, by the state entered",
            m.hm_transitions.clone(),
        );
        r.register(
            "voike_hypermesh_gossip_messages",
            "Health reports sent and received",
            m.hm_gossip.clone(),
        );
        r.register_with_unit(
            "voike_hypermesh_gossip",
            "Health report payload bytes published and received (gossipsub framing and relaying not included)",
            Unit::Bytes,
            m.hm_gossip_bytes.clone(),
        );
        r.register_with_unit(
            "voike_hypermesh_rtt",
            "Ping round-trip times to members",
            Unit::Seconds,
            m.hm_rtt.clone(),
        );
        r.register_with_unit(
            "voike_hypermesh_perfwatch_interval",
            "PerfWatch's current sampling interval",
            Unit::Seconds,
            m.hm_sample_interval.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    pub fn vvm_module_cache(&self, result: &str) {
        self.vvm_module_cache_total
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn vvm_fetch(&self, result: &str) {
        self.vvm_fetches
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn vvm_jobs(&self, state: &str) -> Gauge {
        self.vvm_jobs_by_state
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .clone()
    }

    /// Records one segment run.
    pub fn vvm_run(&self, o: &voike_runtime::Outcome) {
        let status = match &o.status {
            voike_runtime::Status::Ok => "ok",
            voike_runtime::Status::Exit(_) => "exit",
            voike_runtime::Status::Trap(_) => "trap",
            voike_runtime::Status::OutOfFuel => "out_of_fuel",
            voike_runtime::Status::Timeout => "timeout",
            voike_runtime::Status::MemoryLimit => "memory_limit",
            voike_runtime::Status::InvalidEntry(_) => "invalid_entry",
            voike_runtime::Status::ScratchQuota(_) => "scratch_quota",
            _ => "host_error",
        };
        self.vvm_runs
            .get_or_create(&StateLabel {
                state: status.into(),
            })
            .inc();
        self.vvm_run_seconds.observe(o.duration.as_secs_f64());
        self.vvm_instantiate_seconds
            .observe(o.instantiate.as_secs_f64());
        self.vvm_fuel.inc_by(o.fuel_used);
    }

    /// Registers more metrics (another crate's) into the registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
