//! Prometheus metrics (`GET /metrics`), named `voike_<subsystem>_<name>_<unit>[_total]`.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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
    /// This node's clock minus the median of its peers' (from their health reports), ms;
    /// exported as `voike_clock_offset_seconds`.
    pub clock_offset_ms: Gauge,
    /// Endpoints not served because their node has no right to the service name.
    pub snrl_endpoints_unserved: Gauge,
    pub members_revoked: Gauge,
    /// Jobs documents closed after their retention.
    pub job_docs_closed: Counter,
    /// Jobs documents held (open epochs, and the legacy one while it lasts).
    pub job_docs_open: Gauge,
    pub relay_reservations_total: Family<ReasonLabel, Counter>,
    pub relay_circuits_total: Counter,
    pub dns_snapshot_builds: Counter,
    pub dns_snapshot_edits: Counter,
    pub hole_punches_total: Family<ReasonLabel, Counter>,
    /// AutoNAT v2 tests of this node's addresses, by result.
    pub address_probes_total: Family<ReasonLabel, Counter>,
    /// Remote document changes and ledger entries stamped beyond `sync.max_future_skew`.
    pub clock_future_total: Family<ReasonLabel, Counter>,
    /// Modules accepted by `POST /vvm/modules`.
    pub vvm_modules: Counter,
    /// Compiled-module lookups: `hit` (in memory) or `miss` (loaded or fetched and compiled).
    pub vvm_module_cache_total: Family<ResultLabel, Counter>,
    /// Module fetches from members: `fetched`, `hash_mismatch`, `absent`, `refused`, `failed`.
    pub vvm_fetches: Family<ResultLabel, Counter>,
    pub vvm_jobs_submitted: Counter,
    /// Lease renewals of segment claims: `sent` by this node's runs, and those heard from
    /// members by what became of them (`renewed`, `stale`, `unknown`, `full`, `not_member`,
    /// `invalid`).
    pub grid_lease_renewals: Family<ResultLabel, Counter>,
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
            job_docs_closed: Counter::default(),
            job_docs_open: Gauge::default(),
            relay_reservations_total: Family::default(),
            relay_circuits_total: Counter::default(),
            dns_snapshot_builds: Counter::default(),
            dns_snapshot_edits: Counter::default(),
            hole_punches_total: Family::default(),
            address_probes_total: Family::default(),
            clock_future_total: Family::default(),
            vvm_modules: Counter::default(),
            vvm_module_cache_total: Family::default(),
            vvm_fetches: Family::default(),
            vvm_jobs_submitted: Counter::default(),
            grid_lease_renewals: Family::default(),
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
            "voike_grid_lease_renewals",
            "Lease renewals of segment claims: sent by this node, or heard from members by outcome (renewed, stale, unknown, full, not_member, invalid)",
            m.grid_lease_renewals.clone(),
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
        // The runtime the metrics were made in (`worker_threads`); 0 outside one.
        let workers: Gauge = Gauge::default();
        workers.set(
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers() as i64),
        );
        r.register(
            "voike_runtime_worker_threads",
            "Worker threads of the async runtime (worker_threads)",
            workers,
        );
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
            "voike_dns_snapshot_builds",
            "DNS snapshots built by reading every served zone (at start, and after a zone, grant or revocation changed)",
            m.dns_snapshot_builds.clone(),
        );
        r.register(
            "voike_dns_snapshot_edits",
            "DNS snapshots made by editing only the records and endpoints that changed (one per burst of changes)",
            m.dns_snapshot_edits.clone(),
        );
        r.register(
            "voike_hole_punches",
            "Attempts to upgrade a relayed connection to a direct one (DCUtR), by result: direct or failed",
            m.hole_punches_total.clone(),
        );
        r.register(
            "voike_address_probes",
            "AutoNAT v2 tests of this node's candidate addresses by members, by result: reachable or unreachable",
            m.address_probes_total.clone(),
        );
        r.register(
            "voike_members_revoked",
            "Members revoked by an admin (in the members document this node holds)",
            m.members_revoked.clone(),
        );
        r.register(
            "voike_jobs_documents_closed",
            "Jobs documents (hourly epochs) dropped from the live state after grid.retention",
            m.job_docs_closed.clone(),
        );
        r.register(
            "voike_jobs_documents_open",
            "Jobs documents (hourly epochs, and the jobs document of earlier versions) holding changes in the live state",
            m.job_docs_open.clone(),
        );
        // Kept in milliseconds where Hypermesh sets it, exported in seconds (base units).
        r.register_collector(Box::new(ClockOffset(m.clock_offset_ms.clone())));
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
        r.register_collector(Box::new(ProcessCollector));
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

    /// The OpenMetrics 1.0 exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Prometheus => to_prometheus_text(&self.encode()),
        }
    }
}

/// The two expositions `GET /metrics` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`), the default.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: Prometheus text when `text/plain` has a higher
    /// q-value than `application/openmetrics-text` (so `Accept: text/plain` alone gets it),
    /// OpenMetrics otherwise (no header, `*/*`, or OpenMetrics preferred or tied).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let (mut openmetrics, mut text) = (None::<f64>, None::<f64>);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" => &mut text,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
        match (text, openmetrics) {
            (Some(t), om) if t > 0.0 && t > om.unwrap_or(0.0) => Format::Prometheus,
            _ => Format::OpenMetrics,
        }
    }
}

/// Rewrites an OpenMetrics exposition as Prometheus text 0.0.4: a counter's `# HELP` and
/// `# TYPE` name its `_total` samples (OpenMetrics names the family without the suffix, which
/// leaves the text format's samples without help), `# UNIT` and `# EOF` are dropped, and so are
/// `_created` samples of counters. Samples, labels and escaping are the same in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, t)| t.trim() == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}"));
                out.push('\n');
                continue;
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            if name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Linux's `USER_HZ`: the unit of the CPU times and the start time in `/proc/PID/stat`. It is
/// part of the kernel's ABI and 100 on every architecture Rust's Linux targets run on except
/// Alpha, so it is not read with `sysconf(_SC_CLK_TCK)` (which would need `unsafe` or a crate).
const USER_HZ: f64 = 100.0;

/// One reading of `/proc/self` (and `btime` of `/proc/stat`), taken at scrape time.
#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    open_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl ProcessSample {
    fn read() -> ProcessSample {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let system = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX));
        ProcessSample {
            open_fds,
            ..Self::parse(&stat, &status, &system)
        }
    }

    /// `stat` is `/proc/self/stat`, `status` `/proc/self/status`, `system` `/proc/stat`; what
    /// cannot be read is left out (not reported as zero).
    fn parse(stat: &str, status: &str, system: &str) -> ProcessSample {
        // Fields after the command name's closing parenthesis start at field 3 (state).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(utime, stime)| (utime + stime) / USER_HZ);
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib * 1024.0);
        let boot = system
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let start_time_seconds = boot
            .zip(field(22))
            .map(|(boot, ticks)| boot + ticks / USER_HZ);
        ProcessSample {
            cpu_seconds,
            resident_bytes,
            open_fds: None,
            start_time_seconds,
        }
    }
}

/// `voike_clock_offset_seconds`, from the millisecond gauge Hypermesh sets.
#[derive(Debug)]
struct ClockOffset(Gauge);

impl Collector for ClockOffset {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(self.0.get() as f64 / 1000.0);
        g.encode(encoder.encode_descriptor(
            "voike_clock_offset",
            "This node's clock minus the median of its peers' clocks (from their health reports)",
            Some(&Unit::Seconds),
            g.metric_type(),
        )?)
    }
}

/// The standard `process_*` metrics of Prometheus client libraries, read at every scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = ProcessSample::read();
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        if let Some(v) = p.resident_bytes {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
        }
        if let Some(v) = p.open_fds {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(v) = p.start_time_seconds {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_picks_the_format() {
        use Format::*;
        for (accept, want) in [
            (None, OpenMetrics),
            (Some("*/*"), OpenMetrics),
            (Some("text/plain"), Prometheus),
            (Some("text/plain;version=0.0.4"), Prometheus),
            (
                Some("application/openmetrics-text;version=1.0.0"),
                OpenMetrics,
            ),
            // Prometheus 2.x and 3.x scrapers: OpenMetrics preferred.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            // A scraper with OpenMetrics turned off.
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), Prometheus),
            (Some("text/plain;q=0"), OpenMetrics),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn prometheus_text_names_counter_help_and_type_after_the_samples() {
        let om = "# HELP voike_x Things done.\n# TYPE voike_x counter\nvoike_x_total{a=\"b\"} 3\nvoike_x_created 1.5\n# HELP voike_t Time.\n# TYPE voike_t_seconds histogram\n# UNIT voike_t_seconds seconds\nvoike_t_seconds_sum 0.5\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP voike_x_total Things done.\n# TYPE voike_x_total counter\nvoike_x_total{a=\"b\"} 3\n# HELP voike_t Time.\n# TYPE voike_t_seconds histogram\nvoike_t_seconds_sum 0.5\n"
        );
    }

    #[test]
    fn process_sample_reads_proc_fields_and_leaves_out_what_is_missing() {
        let stat = "4242 (voiked (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 1000 200";
        let status = "Name:\tvoiked\nVmRSS:\t  2048 kB\n";
        let p = ProcessSample::parse(stat, status, "cpu 1 2 3\nbtime 1700000000\n");
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.resident_bytes, Some(2048.0 * 1024.0));
        assert_eq!(p.start_time_seconds, Some(1_700_000_123.45));
        // /proc/stat hidden (ProcSubset=pid): no start time rather than a wrong one.
        let p = ProcessSample::parse(stat, status, "");
        assert_eq!(p.start_time_seconds, None);
        assert_eq!(ProcessSample::parse("", "", ""), ProcessSample::default());
    }

    #[test]
    fn process_metrics_are_exposed() {
        let text = Metrics::new().encode_as(Format::Prometheus);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name}: {text}");
        }
    }
}
