//! The `jobs` document: grid jobs, their placement, leases and signed results, with input
//! validation.
//!
//! Grid jobs run WebAssembly on the mesh without a coordinator. A job is written once into the
//! replicated `jobs` document by the node that accepted it; every node then decides placement the
//! same way, with weighted [`rendezvous`] hashing over the live nodes that are [`eligible`]. The
//! chosen node claims a segment with a lease that it renews while running (with signed renewals
//! outside the document, [`crate::lease`]); when it dies the lease runs out and the next node in
//! rendezvous order claims the segment. Results are signed by their
//! runner ([`SegmentResult::sign`]); when a partition made two nodes run one segment both results
//! are kept and a difference between them is flagged as a mismatch.
//!
//! Layout (all maps). The document lets a node write only under its own id (the rule
//! [`crate::docs::Replica`] enforces for [`crate::docs::DocId::Jobs`]), so everything a node
//! writes lives in `root[node_id]`:
//! - `job:<job_id>` → `{module, entry, args, input, limits, capabilities, req_region, req_caps,
//!   replicas, split, range, submitted_by, submitted_ms, hlc}`, written by the submitting node;
//!   `args`, `limits`, `capabilities` and `req_caps` hold JSON, `input` standard base64.
//! - `claim:<job_id>:<segment>` → `{job, segment, runner, lease_until_ms, attempt, hlc}`, written
//!   by the node running the segment.
//! - `result:<job_id>:<segment>` → `{job, segment, runner, status, exit_code, returns, stdout,
//!   stdout_truncated, fuel_used, duration_us, finished_ms, reason, signature, hlc}`, written by
//!   the runner; `returns` holds JSON, `stdout` and `signature` standard base64, and
//!   `exit_code` is absent when there is none, `reason` (why the run ended so, signed with the
//!   rest) when there is none or the result predates it.
//! - `result:<job_id>:64` ([`CANCEL_SEGMENT`]) with status `cancelled`: a cancel marker, a
//!   signed result written by the node that cancels the job. It counts when its writer is the
//!   job's submitter (every reader checks this against the job) or an admin (checked by the
//!   node against its member directory, [`JobView::honour_admins`]); runners then start no
//!   segment of the job and stop those they run, each recording a `cancelled` result. Readers
//!   older than the marker skip it (unknown status, segment out of range).
//!
//! Every write puts a whole new map, so concurrent writes leave whole versions side by side and
//! readers take the one with the highest HLC (then the highest Automerge op id), as in
//! [`crate::zones`]. Readers check every entry again (jobs as [`check_job`] would, results and
//! claims against their key and author) and skip those that fail, so a node cannot publish
//! through the document what the API would refuse. Readers do not check result signatures
//! (the document already binds each result to its runner); [`SegmentResult::verify`] is there
//! for whoever receives a result outside the document.
//!
//! When more segments fall to one node than it runs at once, [`FairShare`] orders them:
//! least-recently-served submitter first, so that one submitter's backlog does not hold back
//! another's job.
//!
//! Sizes are bounded so that the largest job or result fits in one document change
//! ([`crate::docs::MAX_CHANGE_BYTES`]): the document keeps at most [`MAX_RESULT_STDOUT`] bytes
//! of a segment's output, whatever the job's `maxOutputBytes`.

use std::collections::BTreeMap;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::docs::DocError;
use crate::hlc::Hlc;
use crate::lease::LeaseBook;
use crate::signing::{self, SigningError, hex};
use crate::snrl::{self, SnrlError};
use crate::zones::{Invalid, newest_map, pack_hlc, str_of, uint_of, unpack_hlc};

mod fair;
pub use fair::FairShare;

/// Domain of segment result signatures.
pub const RESULT_DOMAIN: &[u8] = b"voike/job-result/v1\0";

/// Most arguments a job may pass.
pub const MAX_ARGS: usize = 64;
/// Longest argument, in bytes.
pub const MAX_ARG_BYTES: usize = 1024;
/// Largest JSON encoding of all the arguments together (escapes can make it grow).
pub const MAX_ARGS_JSON: usize = 96 * 1024;
/// Largest standard input, decoded.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Smallest memory limit: one WebAssembly page.
pub const MIN_MEMORY_BYTES: u64 = 64 * 1024;
/// Default memory limit.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// Largest memory limit.
pub const MAX_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Default fuel.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Largest fuel.
pub const MAX_FUEL: u64 = 1_000_000_000_000;
/// Default wall-clock limit.
pub const DEFAULT_WALL_MS: u64 = 30_000;
/// Largest wall-clock limit (one hour).
pub const MAX_WALL_MS: u64 = 3_600_000;
/// Default bound on captured output.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;
/// Largest bound on captured output.
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Most environment variables a job may be granted.
pub const MAX_ENV: usize = 32;
/// Longest environment variable name.
pub const MAX_ENV_NAME: usize = 128;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE: usize = 1024;
/// Largest JSON encoding of a job's capabilities.
pub const MAX_CAPABILITIES_JSON: usize = 16 * 1024;
/// Most capabilities a job may require of its nodes.
pub const MAX_REQUIRED_CAPABILITIES: usize = 32;
/// Longest region or capability name.
pub const MAX_LABEL_LEN: usize = 64;
/// Most nodes that run each segment.
pub const MAX_REPLICAS: u32 = 5;
/// Most segments of a job.
pub const MAX_SPLIT: u32 = 64;
/// Most output bytes of one segment the document keeps (a change is at most 256 KiB).
pub const MAX_RESULT_STDOUT: usize = 64 * 1024;
/// Most return values of one segment the document keeps.
pub const MAX_RETURNS: usize = 64;
/// Longest entry point name.
pub const MAX_ENTRY_LEN: usize = 64;
/// Weight given to nodes whose weight is zero, negative or not a number.
pub const MIN_WEIGHT: f64 = 1e-9;
/// Longest reason a result carries, in bytes (longer ones are cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 1024;
/// The segment number of a job's cancel marker: a `cancelled` result stored as
/// `result:<job>:64`, one past the last segment any job can have, so that no run ever writes
/// the same key (see [`JobView::cancelled`]).
pub const CANCEL_SEGMENT: u32 = MAX_SPLIT;

/// A grid job as submitted (`POST /grid/jobs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobInput {
    /// The module's content hash: 64 hex characters of its sha256.
    pub module: String,
    /// The exported function to call; default `_start`. 1 to 64 of `A-Z a-z 0-9 _ . $ -`.
    #[serde(default = "default_entry")]
    pub entry: String,
    /// Arguments; default none. At most 64, each at most 1024 bytes, no NUL.
    #[serde(default)]
    pub args: Vec<String>,
    /// Standard input, standard base64, at most 64 KiB decoded; default empty.
    #[serde(default)]
    pub input: String,
    /// Resource limits; defaults as in [`Limits`].
    #[serde(default)]
    pub limits: Limits,
    /// What the sandbox grants; default nothing.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// What a node must offer to run the job; default anything.
    #[serde(default)]
    pub requirements: Requirements,
    /// How many different nodes run each segment, 1 to 5; default 1.
    #[serde(default = "default_one")]
    pub replicas: u32,
    /// How many segments the job fans out into, 1 to 64; default 1.
    #[serde(default = "default_one")]
    pub split: u32,
    /// Default 0 (none). When above 0, segment `i` gets two more arguments, `start end` =
    /// `range*i/split` and `range*(i+1)/split`; then `range` must be at least `split`.
    #[serde(default)]
    pub range: u64,
}

fn default_entry() -> String {
    "_start".into()
}

fn default_one() -> u32 {
    1
}

/// Resource limits of each segment's run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Linear memory, 64 KiB to 1 GiB; default 64 MiB.
    #[serde(default = "default_memory")]
    pub memory_bytes: u64,
    /// Fuel (roughly, WebAssembly instructions), 1 to 10^12; default 10^10.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock time, 1 ms to 1 hour; default 30 s.
    #[serde(default = "default_wall_ms")]
    pub wall_ms: u64,
    /// Output captured, 0 to 1 MiB; default 64 KiB.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_BYTES
}

fn default_fuel() -> u64 {
    DEFAULT_FUEL
}

fn default_wall_ms() -> u64 {
    DEFAULT_WALL_MS
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            fuel: DEFAULT_FUEL,
            wall_ms: DEFAULT_WALL_MS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// What the sandbox grants a job beyond computing; default nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    /// Whether the job may read the wall clock; default false.
    #[serde(default)]
    pub clock: bool,
    /// Environment variables; default none. At most 32; names are 1 to 128 of `A-Z a-z 0-9 _`
    /// not starting with a digit, values at most 1024 bytes without NUL.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the job gets an empty scratch directory; default false.
    #[serde(default)]
    pub scratch: bool,
}

/// What a node must offer to run a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirements {
    /// The node's region; default empty (any region).
    #[serde(default)]
    pub region: String,
    /// Capabilities the node must all have; default none.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Whether `id` has the form of a job id: 24 lower-case hex characters.
pub fn is_job_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_range(field: &'static str, v: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, format!("must be {min} to {max}")))
    }
}

fn check_limits(l: &Limits) -> Result<(), Invalid> {
    check_range(
        "limits.memoryBytes",
        l.memory_bytes,
        MIN_MEMORY_BYTES,
        MAX_MEMORY_BYTES,
    )?;
    check_range("limits.fuel", l.fuel, 1, MAX_FUEL)?;
    check_range("limits.wallMs", l.wall_ms, 1, MAX_WALL_MS)?;
    check_range(
        "limits.maxOutputBytes",
        l.max_output_bytes,
        0,
        MAX_OUTPUT_BYTES,
    )
}

fn check_capabilities(c: &Capabilities) -> Result<(), Invalid> {
    const FIELD: &str = "capabilities.env";
    if c.env.len() > MAX_ENV {
        return Err(invalid(
            FIELD,
            format!("at most {MAX_ENV} variables are allowed"),
        ));
    }
    for (name, value) in &c.env {
        let good_name = !name.is_empty()
            && name.len() <= MAX_ENV_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !good_name {
            return Err(invalid(
                FIELD,
                format!(
                    "name '{name}' must be 1 to {MAX_ENV_NAME} of A-Z, a-z, 0-9 and '_', not \
                     starting with a digit"
                ),
            ));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(invalid(
                FIELD,
                format!("value of {name} must be at most {MAX_ENV_VALUE} bytes without NUL"),
            ));
        }
    }
    let json = serde_json::to_string(c).map_err(|e| invalid(FIELD, e.to_string()))?;
    if json.len() > MAX_CAPABILITIES_JSON {
        return Err(invalid(
            FIELD,
            format!("encodes to more than {MAX_CAPABILITIES_JSON} bytes of JSON"),
        ));
    }
    Ok(())
}

fn check_requirements(r: &Requirements) -> Result<Requirements, Invalid> {
    let (region, capabilities) = crate::endpoints::check_affinity(
        ("requirements.region", "requirements.capabilities"),
        &r.region,
        &r.capabilities,
        MAX_REQUIRED_CAPABILITIES,
    )?;
    Ok(Requirements {
        region,
        capabilities,
    })
}

/// Checks and normalises a job: the module hash lower-cased, the input in canonical base64,
/// required region and capabilities lower-cased, capabilities sorted and deduplicated. The error
/// names the field: `module`, `entry`, `args`, `input`, `limits.memoryBytes`, `limits.fuel`,
/// `limits.wallMs`, `limits.maxOutputBytes`, `capabilities.env`, `requirements.region`,
/// `requirements.capabilities`, `replicas`, `split` or `range`.
pub fn check_job(input: &JobInput) -> Result<JobInput, Invalid> {
    let module = input.module.trim().to_ascii_lowercase();
    if module.len() != 64 || !module.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "module",
            "must be the 64 hex characters of the module's sha256",
        ));
    }
    let entry = input.entry.trim();
    if entry.is_empty() || entry.len() > MAX_ENTRY_LEN {
        return Err(invalid(
            "entry",
            format!("must be 1 to {MAX_ENTRY_LEN} characters"),
        ));
    }
    if !entry
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$' | b'-'))
    {
        return Err(invalid(
            "entry",
            "may hold only A-Z, a-z, 0-9, '_', '.', '$' and '-'",
        ));
    }
    if input.args.len() > MAX_ARGS {
        return Err(invalid(
            "args",
            format!("at most {MAX_ARGS} arguments are allowed"),
        ));
    }
    for (i, a) in input.args.iter().enumerate() {
        if a.len() > MAX_ARG_BYTES {
            return Err(invalid(
                "args",
                format!("argument {i} is longer than {MAX_ARG_BYTES} bytes"),
            ));
        }
        if a.contains('\0') {
            return Err(invalid("args", format!("argument {i} holds a NUL byte")));
        }
    }
    let args_json =
        serde_json::to_string(&input.args).map_err(|e| invalid("args", e.to_string()))?;
    if args_json.len() > MAX_ARGS_JSON {
        return Err(invalid(
            "args",
            format!("encode to more than {MAX_ARGS_JSON} bytes of JSON"),
        ));
    }
    let stdin = BASE64
        .decode(input.input.trim().as_bytes())
        .map_err(|_| invalid("input", "is not standard base64"))?;
    if stdin.len() > MAX_INPUT_BYTES {
        return Err(invalid(
            "input",
            format!("is longer than {MAX_INPUT_BYTES} bytes once decoded"),
        ));
    }
    check_limits(&input.limits)?;
    check_capabilities(&input.capabilities)?;
    let requirements = check_requirements(&input.requirements)?;
    if !(1..=MAX_REPLICAS).contains(&input.replicas) {
        return Err(invalid("replicas", format!("must be 1 to {MAX_REPLICAS}")));
    }
    if !(1..=MAX_SPLIT).contains(&input.split) {
        return Err(invalid("split", format!("must be 1 to {MAX_SPLIT}")));
    }
    if input.range != 0 && input.range < u64::from(input.split) {
        return Err(invalid(
            "range",
            "must be 0 or at least split, so that no segment gets an empty range",
        ));
    }
    Ok(JobInput {
        module,
        entry: entry.to_string(),
        args: input.args.clone(),
        input: BASE64.encode(stdin),
        limits: input.limits.clone(),
        capabilities: input.capabilities.clone(),
        requirements,
        replicas: input.replicas,
        split: input.split,
        range: input.range,
    })
}

/// The id of a job: lower-case hex of the first 12 bytes of a sha256 over the submitter, the
/// submission HLC (packed as stored), the module, the entry and the arguments as JSON.
pub fn job_id(submitter: &str, hlc: Hlc, job: &JobInput) -> String {
    let args = serde_json::to_string(&job.args).unwrap_or_default();
    let packed = pack_hlc(hlc).to_string();
    let mut h = Sha256::new();
    for part in [submitter, &packed, &job.module, &job.entry, &args] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d: [u8; 32] = h.finalize().into();
    hex(&d[..12])
}

/// The arguments segment `segment` of `job` runs with: the job's arguments, then `start end`
/// when the job has a range (`range*i/split` and `range*(i+1)/split`, so the segments cover
/// `[0, range)` without gaps or overlaps).
pub fn segment_args(job: &JobInput, segment: u32) -> Vec<String> {
    let mut args = job.args.clone();
    if job.range > 0 {
        let split = u128::from(job.split.max(1));
        let range = u128::from(job.range);
        let i = u128::from(segment);
        args.push((range * i / split).to_string());
        args.push((range * (i + 1) / split).to_string());
    }
    args
}

/// A job as stored: who submitted it and when, and what it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    /// The node that accepted the job (the top-level key it lives under).
    pub submitted_by: String,
    /// Unix milliseconds.
    pub submitted_ms: u64,
    /// The submission HLC, as `wall_ms.counter`.
    pub hlc: String,
    /// What the job runs (normalised as [`check_job`] does).
    #[serde(flatten)]
    pub spec: JobInput,
}

/// Where a job or a segment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Nobody runs it and nothing has been reported.
    Pending,
    /// A live lease is held, or (for a job) some segments have results and others not yet.
    Running,
    /// Ran to completion (status `ok` or `exit`); for a job, every segment did.
    Done,
    /// Every result is a failure and nobody is running it again; for a job, some segment failed.
    Failed,
    /// The job was cancelled (by its submitter, or by an admin) before every segment was done;
    /// for a segment, it was not done when the job was cancelled.
    Cancelled,
}

/// How a segment's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The entry returned.
    Ok,
    /// The module called `proc_exit`; the code is in `exit_code`.
    Exit,
    /// The module trapped.
    Trap,
    /// The fuel ran out.
    OutOfFuel,
    /// The wall-clock limit passed.
    Timeout,
    /// The module asked for more memory than allowed.
    MemoryLimit,
    /// The entry is not an exported function the runtime can call.
    InvalidEntry,
    /// The runner could not find or compile the module (the reason, e.g. the module limit it
    /// is over, is in `stdout`).
    ModuleUnavailable,
    /// The job's scratch directory held more than the runner's scratch quota (the reason,
    /// `scratch quota of N bytes exceeded`, is in `stdout`). Readers older than this status
    /// skip such results, as they skip any status they do not know.
    ScratchQuota,
    /// The run was stopped (or never started) because the job was cancelled; also the status
    /// of a job's cancel marker ([`CANCEL_SEGMENT`]). Readers older than this status skip such
    /// results, so to them a cancelled job stays as it was.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::Exit,
        Status::Trap,
        Status::OutOfFuel,
        Status::Timeout,
        Status::MemoryLimit,
        Status::InvalidEntry,
        Status::ModuleUnavailable,
        Status::ScratchQuota,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Exit => "exit",
            Status::Trap => "trap",
            Status::OutOfFuel => "out_of_fuel",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::InvalidEntry => "invalid_entry",
            Status::ModuleUnavailable => "module_unavailable",
            Status::ScratchQuota => "scratch_quota",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the module ran to completion (`ok` or `exit`, whatever the exit code).
    pub fn completed(self) -> bool {
        matches!(self, Status::Ok | Status::Exit)
    }
}

/// What a runner observed, before it is bounded and signed into a [`SegmentResult`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    /// The entry's return values (only the first [`MAX_RETURNS`] are kept).
    pub returns: Vec<i64>,
    /// Captured output (only the first [`MAX_RESULT_STDOUT`] bytes are kept).
    pub stdout: Vec<u8>,
    /// Whether the runtime already cut the output at the job's `maxOutputBytes`.
    pub stdout_truncated: bool,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// Unix milliseconds.
    pub finished_ms: u64,
    /// Why the run ended as it did, in words (the runtime's message: the missing argument of
    /// an `invalid_entry`, the trap, the host error); empty when there is nothing to add. Only
    /// the first [`MAX_REASON_BYTES`] bytes are kept.
    pub reason: String,
}

/// The signed result of one run of one segment. Only integers, strings and booleans, so it
/// survives a JSON round trip bit for bit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentResult {
    pub job: String,
    pub segment: u32,
    /// Node id of the node that ran it and signed this.
    pub runner: String,
    /// One of the [`Status`] names (`ok`, `exit`, `trap`, `out_of_fuel`, `timeout`,
    /// `memory_limit`, `invalid_entry`, `module_unavailable`, `scratch_quota`).
    pub status: String,
    pub exit_code: Option<i32>,
    pub returns: Vec<i64>,
    /// Standard base64 of the captured output, at most [`MAX_RESULT_STDOUT`] bytes decoded.
    pub stdout: String,
    /// Whether the output was cut short (by the job's limit or by [`MAX_RESULT_STDOUT`]).
    pub stdout_truncated: bool,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// Unix milliseconds.
    pub finished_ms: u64,
    /// Why the run ended as it did ([`RunOutcome::reason`]); empty (or absent, in results
    /// signed before it existed) when there is nothing to add.
    #[serde(default)]
    pub reason: String,
    /// Standard base64 of the runner's ed25519 signature (domain [`RESULT_DOMAIN`]).
    pub signature: String,
}

/// Why a result cannot be signed or does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    #[error("runner {runner} is not an ed25519 node id: {reason}")]
    BadSigner { runner: String, reason: String },
    #[error("signature is not valid base64: {0}")]
    BadEncoding(String),
    #[error("signature does not match the result of runner {runner}")]
    BadSignature { runner: String },
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// What the signature covers: everything but the signature itself. An empty `reason` is left
/// out, so results signed before it existed (and results without one) sign the same bytes.
#[derive(Serialize)]
struct ResultBody<'a> {
    job: &'a str,
    segment: u32,
    runner: &'a str,
    status: &'a str,
    exit_code: Option<i32>,
    returns: &'a [i64],
    stdout: &'a str,
    stdout_truncated: bool,
    fuel_used: u64,
    duration_us: u64,
    finished_ms: u64,
    #[serde(skip_serializing_if = "is_empty")]
    reason: &'a str,
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl SegmentResult {
    fn body(&self) -> ResultBody<'_> {
        ResultBody {
            job: &self.job,
            segment: self.segment,
            runner: &self.runner,
            status: &self.status,
            exit_code: self.exit_code,
            returns: &self.returns,
            stdout: &self.stdout,
            stdout_truncated: self.stdout_truncated,
            fuel_used: self.fuel_used,
            duration_us: self.duration_us,
            finished_ms: self.finished_ms,
            reason: &self.reason,
        }
    }

    /// Bounds `outcome` (output and return values, see [`RunOutcome`]) and signs it as the
    /// result of segment `segment` of job `job`, run by the node `key` belongs to.
    pub fn sign(
        key: &Keypair,
        job: &str,
        segment: u32,
        outcome: &RunOutcome,
    ) -> Result<Self, ResultError> {
        let runner = key.public().to_peer_id().to_string();
        if key.public().try_into_ed25519().is_err() {
            return Err(ResultError::BadSigner {
                runner,
                reason: "its key is not ed25519".into(),
            });
        }
        let cut = outcome.stdout.len() > MAX_RESULT_STDOUT;
        let stdout = &outcome.stdout[..outcome.stdout.len().min(MAX_RESULT_STDOUT)];
        let returns = &outcome.returns[..outcome.returns.len().min(MAX_RETURNS)];
        let mut result = SegmentResult {
            job: job.to_string(),
            segment,
            runner,
            status: outcome.status.as_str().to_string(),
            exit_code: outcome.exit_code,
            returns: returns.to_vec(),
            stdout: BASE64.encode(stdout),
            stdout_truncated: outcome.stdout_truncated || cut,
            fuel_used: outcome.fuel_used,
            duration_us: outcome.duration_us,
            finished_ms: outcome.finished_ms,
            reason: cut_str(outcome.reason.trim(), MAX_REASON_BYTES).to_string(),
            signature: String::new(),
        };
        let sig = signing::sign(key, RESULT_DOMAIN, "job result", &result.body())?;
        result.signature = BASE64.encode(sig);
        Ok(result)
    }

    /// Checks the signature against the key inlined in `runner`. Says nothing of whether the
    /// runner is a member or the job exists.
    pub fn verify(&self) -> Result<(), ResultError> {
        let key = snrl::signer_key(&self.runner).map_err(|e| ResultError::BadSigner {
            runner: self.runner.clone(),
            reason: match e {
                SnrlError::BadSigner { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        let sig = BASE64
            .decode(self.signature.as_bytes())
            .map_err(|e| ResultError::BadEncoding(e.to_string()))?;
        if signing::verify(&key, RESULT_DOMAIN, "job result", &self.body(), &sig)? {
            Ok(())
        } else {
            Err(ResultError::BadSignature {
                runner: self.runner.clone(),
            })
        }
    }

    /// The status, when it is one this version knows.
    pub fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    /// Whether the module ran to completion (`ok` or `exit`).
    pub fn completed(&self) -> bool {
        self.status().is_some_and(Status::completed)
    }

    /// Whether the run succeeded: `ok`, or `exit` with code 0.
    pub fn succeeded(&self) -> bool {
        match self.status() {
            Some(Status::Ok) => true,
            Some(Status::Exit) => self.exit_code == Some(0),
            _ => false,
        }
    }

    /// The captured output, decoded; `None` when `stdout` is not base64.
    pub fn stdout_bytes(&self) -> Option<Vec<u8>> {
        BASE64.decode(self.stdout.as_bytes()).ok()
    }

    /// Whether `other` reports a different outcome (status, exit code, return values or output).
    pub fn differs_from(&self, other: &SegmentResult) -> bool {
        (&self.status, self.exit_code, &self.returns, &self.stdout)
            != (
                &other.status,
                other.exit_code,
                &other.returns,
                &other.stdout,
            )
    }

    /// Why the result may not be stored, if it may not.
    fn problem(&self) -> Option<String> {
        if !is_job_id(&self.job) {
            return Some(format!("job id {} is malformed", self.job));
        }
        let marker = self.segment == CANCEL_SEGMENT;
        if self.segment > CANCEL_SEGMENT {
            return Some(format!("segment {} is out of range", self.segment));
        }
        match self.status() {
            None => return Some(format!("status {} is unknown", self.status)),
            Some(s) if marker && s != Status::Cancelled => {
                return Some(format!(
                    "segment {CANCEL_SEGMENT} holds only a cancel marker, not {}",
                    self.status
                ));
            }
            Some(_) => {}
        }
        if self.reason.len() > MAX_REASON_BYTES {
            return Some(format!("reason is longer than {MAX_REASON_BYTES} bytes"));
        }
        if self.returns.len() > MAX_RETURNS {
            return Some(format!("more than {MAX_RETURNS} return values"));
        }
        match self.stdout_bytes() {
            None => return Some("stdout is not base64".into()),
            Some(b) if b.len() > MAX_RESULT_STDOUT => {
                return Some(format!("stdout is longer than {MAX_RESULT_STDOUT} bytes"));
            }
            Some(_) => {}
        }
        if self.signature.is_empty() || self.signature.len() > 256 {
            return Some("signature is missing or too long".into());
        }
        None
    }
}

/// A lease on a segment, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub runner: String,
    /// Unix milliseconds; the lease is live while this is after now.
    pub lease_until_ms: u64,
    pub attempt: u32,
}

/// One segment of a job, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentView {
    pub index: u32,
    /// The arguments the segment runs with (see [`segment_args`]).
    pub args: Vec<String>,
    pub state: JobState,
    /// Every runner's newest claim, live or not, by runner.
    pub claims: Vec<ClaimView>,
    /// Every runner's newest result, first result first (earliest `finished_ms`, then runner;
    /// `module_unavailable` results last).
    pub results: Vec<SegmentResult>,
    /// Whether two results differ (see [`SegmentResult::differs_from`]).
    pub mismatch: bool,
}

/// A job's segments gathered into one result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gathered {
    /// Whether every segment's first result succeeded (`ok`, or `exit` with code 0).
    pub ok: bool,
    /// Wrapping sum over segments of the first result's first return value (0 when none).
    pub combined: i64,
    /// The first results' outputs in segment order, as UTF-8 (invalid sequences replaced).
    pub stdout: String,
    /// The runner of each segment's first result, in segment order.
    pub runners: Vec<String>,
    /// Whether any segment has a mismatch.
    pub mismatch: bool,
}

/// A job with where it stands, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub state: JobState,
    pub segments: Vec<SegmentView>,
    /// Present once every segment has at least one result.
    pub result: Option<Gathered>,
    /// Who cancelled the job, when and why; absent unless its submitter cancelled it or (once
    /// [`JobView::honour_admins`] has run) an admin did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancel>,
    /// Why nothing runs the job's pending segments, when the node that shows the job knows no
    /// live node able to (`no live node has capability gpu`); absent otherwise. Set by the
    /// node from its live nodes ([`no_eligible_node`]), not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Cancel markers written by nodes other than the submitter: they count only for an admin
    /// ([`JobView::honour_admins`]). Not shown.
    #[serde(skip)]
    pub cancel_requests: Vec<Cancel>,
}

/// A job's cancellation, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancel {
    /// The node that cancelled it: the submitter or an admin.
    pub by: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Why, in words; may be empty.
    #[serde(default)]
    pub reason: String,
}

impl JobView {
    /// Marks the job cancelled by `c` (the earliest cancellation wins): its segments that are
    /// not done and have no run of their own to show become `cancelled`, and so does the job
    /// unless every segment was done already.
    fn apply_cancel(&mut self, c: Cancel) {
        match &self.cancelled {
            Some(old) if (old.at_ms, &old.by) <= (c.at_ms, &c.by) => {}
            _ => self.cancelled = Some(c),
        }
        let stopped = |r: &SegmentResult| {
            matches!(
                r.status(),
                Some(Status::Cancelled | Status::ModuleUnavailable)
            )
        };
        for s in &mut self.segments {
            if s.state != JobState::Done && s.results.iter().all(stopped) {
                s.state = JobState::Cancelled;
            }
        }
        if self.state != JobState::Done {
            self.state = JobState::Cancelled;
        }
    }

    /// Applies the cancel markers of the nodes that `is_admin` says are admins (the member
    /// directory, which the document does not hold); the others stay ignored.
    pub fn honour_admins(&mut self, is_admin: impl Fn(&str) -> bool) {
        for c in std::mem::take(&mut self.cancel_requests) {
            if is_admin(&c.by) {
                self.apply_cancel(c);
            }
        }
    }

    /// Whether the job is cancelled (as far as this view knows: see [`JobView::honour_admins`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_some()
    }
}

fn job_key(id: &str) -> String {
    format!("job:{id}")
}

fn claim_key(id: &str, segment: u32) -> String {
    format!("claim:{id}:{segment}")
}

fn result_key(id: &str, segment: u32) -> String {
    format!("result:{id}:{segment}")
}

/// The map of `node` in the document, created when missing.
fn node_map(tx: &mut Transaction<'_>, node: &str) -> Result<ObjId, DocError> {
    Ok(match tx.get(ROOT, node)? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(ROOT, node, ObjType::Map)?,
    })
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String, DocError> {
    serde_json::to_string(value).map_err(|e| DocError::Invalid(format!("{what}: {e}")))
}

/// Checks `input` ([`check_job`]) and writes it as a job submitted by `submitter` at `hlc` and
/// `now_ms` (Unix milliseconds); returns the stored job.
pub fn put_job(
    tx: &mut Transaction<'_>,
    submitter: &str,
    input: &JobInput,
    hlc: Hlc,
    now_ms: u64,
) -> Result<Job, DocError> {
    let spec = check_job(input).map_err(|e| DocError::Invalid(e.to_string()))?;
    let id = job_id(submitter, hlc, &spec);
    let parent = node_map(tx, submitter)?;
    let obj = tx.put_object(&parent, job_key(&id).as_str(), ObjType::Map)?;
    tx.put(&obj, "module", spec.module.as_str())?;
    tx.put(&obj, "entry", spec.entry.as_str())?;
    tx.put(&obj, "args", to_json("args", &spec.args)?)?;
    tx.put(&obj, "input", spec.input.as_str())?;
    tx.put(&obj, "limits", to_json("limits", &spec.limits)?)?;
    tx.put(
        &obj,
        "capabilities",
        to_json("capabilities", &spec.capabilities)?,
    )?;
    tx.put(&obj, "req_region", spec.requirements.region.as_str())?;
    tx.put(
        &obj,
        "req_caps",
        to_json("requirements", &spec.requirements.capabilities)?,
    )?;
    tx.put(&obj, "replicas", u64::from(spec.replicas))?;
    tx.put(&obj, "split", u64::from(spec.split))?;
    tx.put(&obj, "range", spec.range)?;
    tx.put(&obj, "submitted_by", submitter)?;
    tx.put(&obj, "submitted_ms", now_ms)?;
    tx.put(&obj, "hlc", pack_hlc(hlc))?;
    Ok(Job {
        id,
        submitted_by: submitter.to_string(),
        submitted_ms: now_ms,
        hlc: unpack_hlc(pack_hlc(hlc)).to_string(),
        spec,
    })
}

/// Writes (or renews) `runner`'s lease on segment `segment` of job `job_id`, live until
/// `lease_until_ms` (Unix milliseconds); `attempt` counts this runner's tries.
pub fn put_claim(
    tx: &mut Transaction<'_>,
    runner: &str,
    job_id: &str,
    segment: u32,
    lease_until_ms: u64,
    attempt: u32,
    hlc: Hlc,
) -> Result<ClaimView, DocError> {
    if !is_job_id(job_id) {
        return Err(DocError::Invalid(format!("job id {job_id} is malformed")));
    }
    if segment >= MAX_SPLIT {
        return Err(DocError::Invalid(format!(
            "segment {segment} is out of range"
        )));
    }
    let parent = node_map(tx, runner)?;
    let obj = tx.put_object(&parent, claim_key(job_id, segment).as_str(), ObjType::Map)?;
    tx.put(&obj, "job", job_id)?;
    tx.put(&obj, "segment", u64::from(segment))?;
    tx.put(&obj, "runner", runner)?;
    tx.put(&obj, "lease_until_ms", lease_until_ms)?;
    tx.put(&obj, "attempt", u64::from(attempt))?;
    tx.put(&obj, "hlc", pack_hlc(hlc))?;
    Ok(ClaimView {
        runner: runner.to_string(),
        lease_until_ms,
        attempt,
    })
}

/// Deletes `runner`'s claim on segment `segment` of job `job_id`; false when it is not there.
pub fn delete_claim(
    tx: &mut Transaction<'_>,
    runner: &str,
    job_id: &str,
    segment: u32,
) -> Result<bool, DocError> {
    let key = claim_key(job_id, segment);
    let parents: Vec<ObjId> = tx
        .get_all(ROOT, runner)?
        .into_iter()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
        .map(|(_, o)| o)
        .collect();
    let mut found = false;
    for parent in parents {
        if tx.get(&parent, key.as_str())?.is_some() {
            tx.delete(&parent, key.as_str())?;
            found = true;
        }
    }
    Ok(found)
}

/// Writes `result`, which `runner` signed; refuses a result of another runner or one readers
/// would skip (unknown status, malformed job id, oversized output).
pub fn put_result(
    tx: &mut Transaction<'_>,
    runner: &str,
    result: &SegmentResult,
    hlc: Hlc,
) -> Result<(), DocError> {
    if result.runner != runner {
        return Err(DocError::Invalid(format!(
            "result of {} cannot be stored by {runner}",
            result.runner
        )));
    }
    if let Some(problem) = result.problem() {
        return Err(DocError::Invalid(problem));
    }
    let parent = node_map(tx, runner)?;
    let key = result_key(&result.job, result.segment);
    let obj = tx.put_object(&parent, key.as_str(), ObjType::Map)?;
    tx.put(&obj, "job", result.job.as_str())?;
    tx.put(&obj, "segment", u64::from(result.segment))?;
    tx.put(&obj, "runner", runner)?;
    tx.put(&obj, "status", result.status.as_str())?;
    if let Some(code) = result.exit_code {
        tx.put(&obj, "exit_code", i64::from(code))?;
    }
    tx.put(&obj, "returns", to_json("returns", &result.returns)?)?;
    tx.put(&obj, "stdout", result.stdout.as_str())?;
    tx.put(&obj, "stdout_truncated", result.stdout_truncated)?;
    tx.put(&obj, "fuel_used", result.fuel_used)?;
    tx.put(&obj, "duration_us", result.duration_us)?;
    tx.put(&obj, "finished_ms", result.finished_ms)?;
    if !result.reason.is_empty() {
        tx.put(&obj, "reason", result.reason.as_str())?;
    }
    tx.put(&obj, "signature", result.signature.as_str())?;
    tx.put(&obj, "hlc", pack_hlc(hlc))?;
    Ok(())
}

fn scalar_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(v), _) => Some(v.into_owned()),
        _ => None,
    }
}

fn bool_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<bool> {
    match scalar_of(doc, obj, key)? {
        ScalarValue::Boolean(b) => Some(b),
        _ => None,
    }
}

fn int_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<i64> {
    match scalar_of(doc, obj, key)? {
        ScalarValue::Int(n) => Some(n),
        ScalarValue::Uint(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

fn u32_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<u32> {
    u32::try_from(uint_of(doc, obj, key)?).ok()
}

fn json_of<T: for<'de> Deserialize<'de>>(doc: &Automerge, obj: &ObjId, key: &str) -> Option<T> {
    serde_json::from_str(&str_of(doc, obj, key)?).ok()
}

/// Reads one version of a job stored under `node` as `job:<id>`; `None` when it fails
/// [`check_job`], names another submitter or is stored under another id than [`job_id`] gives.
fn job_of(doc: &Automerge, node: &str, id: &str, obj: &ObjId) -> Option<(u64, Job)> {
    let stored = JobInput {
        module: str_of(doc, obj, "module")?,
        entry: str_of(doc, obj, "entry")?,
        args: json_of(doc, obj, "args")?,
        input: str_of(doc, obj, "input")?,
        limits: json_of(doc, obj, "limits")?,
        capabilities: json_of(doc, obj, "capabilities")?,
        requirements: Requirements {
            region: str_of(doc, obj, "req_region")?,
            capabilities: json_of(doc, obj, "req_caps")?,
        },
        replicas: u32_of(doc, obj, "replicas")?,
        split: u32_of(doc, obj, "split")?,
        range: uint_of(doc, obj, "range")?,
    };
    let spec = check_job(&stored).ok()?;
    if str_of(doc, obj, "submitted_by")? != node {
        return None;
    }
    let hlc = uint_of(doc, obj, "hlc")?;
    if job_id(node, unpack_hlc(hlc), &spec) != id {
        return None;
    }
    Some((
        hlc,
        Job {
            id: id.to_string(),
            submitted_by: node.to_string(),
            submitted_ms: uint_of(doc, obj, "submitted_ms")?,
            hlc: unpack_hlc(hlc).to_string(),
            spec,
        },
    ))
}

/// Reads one version of `node`'s claim stored as `claim:<job>:<segment>`.
fn claim_of(
    doc: &Automerge,
    node: &str,
    job: &str,
    segment: u32,
    obj: &ObjId,
) -> Option<(u64, ClaimView)> {
    let ok = str_of(doc, obj, "job")? == job
        && u32_of(doc, obj, "segment")? == segment
        && str_of(doc, obj, "runner")? == node;
    if !ok {
        return None;
    }
    Some((
        uint_of(doc, obj, "hlc").unwrap_or(0),
        ClaimView {
            runner: node.to_string(),
            lease_until_ms: uint_of(doc, obj, "lease_until_ms")?,
            attempt: u32_of(doc, obj, "attempt")?,
        },
    ))
}

/// Reads one version of `node`'s result stored as `result:<job>:<segment>`.
fn result_of(
    doc: &Automerge,
    node: &str,
    job: &str,
    segment: u32,
    obj: &ObjId,
) -> Option<(u64, SegmentResult)> {
    let exit_code = match doc.get(obj, "exit_code").ok()? {
        None => None,
        Some(_) => Some(i32::try_from(int_of(doc, obj, "exit_code")?).ok()?),
    };
    let result = SegmentResult {
        job: str_of(doc, obj, "job")?,
        segment: u32_of(doc, obj, "segment")?,
        runner: str_of(doc, obj, "runner")?,
        status: str_of(doc, obj, "status")?,
        exit_code,
        returns: json_of(doc, obj, "returns")?,
        stdout: str_of(doc, obj, "stdout")?,
        stdout_truncated: bool_of(doc, obj, "stdout_truncated")?,
        fuel_used: uint_of(doc, obj, "fuel_used")?,
        duration_us: uint_of(doc, obj, "duration_us")?,
        finished_ms: uint_of(doc, obj, "finished_ms")?,
        // Absent in results written before reasons existed.
        reason: match doc.get(obj, "reason").ok()? {
            None => String::new(),
            Some(_) => str_of(doc, obj, "reason")?,
        },
        signature: str_of(doc, obj, "signature")?,
    };
    if result.job != job || result.segment != segment || result.runner != node {
        return None;
    }
    if result.problem().is_some() {
        return None;
    }
    Some((uint_of(doc, obj, "hlc").unwrap_or(0), result))
}

/// What an entry key names.
enum Entry<'a> {
    Job(&'a str),
    Claim(&'a str, u32),
    Result(&'a str, u32),
}

/// `<job>:<segment>`, with the segment in its canonical spelling so one segment has one key.
fn job_and_segment(rest: &str) -> Option<(&str, u32)> {
    let (job, seg) = rest.split_once(':')?;
    let n: u32 = seg.parse().ok()?;
    (n.to_string() == seg).then_some((job, n))
}

fn parse_key(key: &str) -> Option<Entry<'_>> {
    if let Some(id) = key.strip_prefix("job:") {
        return Some(Entry::Job(id));
    }
    if let Some(rest) = key.strip_prefix("claim:") {
        let (job, seg) = job_and_segment(rest)?;
        return Some(Entry::Claim(job, seg));
    }
    if let Some(rest) = key.strip_prefix("result:") {
        let (job, seg) = job_and_segment(rest)?;
        return Some(Entry::Result(job, seg));
    }
    None
}

/// Keeps `found` under `key` unless a version with a higher (or equal) HLC is there already.
fn keep_newest<K: Ord, V>(map: &mut BTreeMap<K, (u64, V)>, key: K, found: (u64, V)) {
    match map.get(&key) {
        Some((hlc, _)) if *hlc >= found.0 => {}
        _ => {
            map.insert(key, found);
        }
    }
}

/// Everything the document says, newest version of each entry.
#[derive(Debug, Default)]
struct Scan {
    jobs: BTreeMap<String, (u64, Job)>,
    claims: BTreeMap<(String, u32, String), (u64, ClaimView)>,
    results: BTreeMap<(String, u32, String), (u64, SegmentResult)>,
    /// Cancel markers ([`CANCEL_SEGMENT`]) by (job, writer).
    cancels: BTreeMap<(String, String), (u64, SegmentResult)>,
}

impl Scan {
    fn read_entry(&mut self, doc: &Automerge, node: &str, parent: &ObjId, key: &str) {
        let Some(entry) = parse_key(key) else {
            return;
        };
        let Some(obj) = newest_map(doc, parent, key) else {
            return;
        };
        match entry {
            Entry::Job(id) => {
                if let Some(found) = job_of(doc, node, id, &obj) {
                    keep_newest(&mut self.jobs, id.to_string(), found);
                }
            }
            Entry::Claim(job, seg) => {
                if let Some(found) = claim_of(doc, node, job, seg, &obj) {
                    let k = (job.to_string(), seg, node.to_string());
                    keep_newest(&mut self.claims, k, found);
                }
            }
            Entry::Result(job, seg) => {
                if let Some(found) = result_of(doc, node, job, seg, &obj) {
                    if seg == CANCEL_SEGMENT {
                        let k = (job.to_string(), node.to_string());
                        keep_newest(&mut self.cancels, k, found);
                    } else {
                        let k = (job.to_string(), seg, node.to_string());
                        keep_newest(&mut self.results, k, found);
                    }
                }
            }
        }
    }

    /// Reads every node's map (two replicas of one node that each created it leave both side by
    /// side: read them all); with `only`, just the entries of that job.
    fn read(doc: &Automerge, only: Option<&str>) -> Scan {
        let mut scan = Scan::default();
        for node in doc.keys(ROOT) {
            let Ok(parents) = doc.get_all(ROOT, node.as_str()) else {
                continue;
            };
            for (v, parent) in parents {
                if !matches!(v, Value::Object(ObjType::Map)) {
                    continue;
                }
                match only {
                    None => {
                        for key in doc.keys(&parent) {
                            scan.read_entry(doc, &node, &parent, &key);
                        }
                    }
                    Some(id) => {
                        scan.read_entry(doc, &node, &parent, &job_key(id));
                        for prefix in [format!("claim:{id}:"), format!("result:{id}:")] {
                            let keys: Vec<String> = doc
                                .map_range(&parent, prefix.clone()..)
                                .map(|item| item.key.into_owned())
                                .take_while(|k| k.starts_with(&prefix))
                                .collect();
                            for key in keys {
                                scan.read_entry(doc, &node, &parent, &key);
                            }
                        }
                    }
                }
            }
        }
        scan
    }

    fn view(&self, job: &Job, now_ms: u64, leases: Option<&LeaseBook>) -> JobView {
        let segments: Vec<SegmentView> = (0..job.spec.split)
            .map(|i| self.segment(job, i, now_ms, leases))
            .collect();
        let states: Vec<JobState> = segments.iter().map(|s| s.state).collect();
        let state = if states.contains(&JobState::Failed) {
            JobState::Failed
        } else if states.iter().all(|s| *s == JobState::Done) {
            JobState::Done
        } else if states.contains(&JobState::Running) || states.contains(&JobState::Done) {
            JobState::Running
        } else {
            JobState::Pending
        };
        let result = gather(&segments);
        let mut view = JobView {
            job: job.clone(),
            state,
            segments,
            result,
            cancelled: None,
            waiting: None,
            cancel_requests: Vec::new(),
        };
        let lo = (job.id.clone(), String::new());
        let markers: Vec<Cancel> = self
            .cancels
            .range(lo..)
            .take_while(|((j, _), _)| *j == job.id)
            .map(|(_, (_, r))| Cancel {
                by: r.runner.clone(),
                at_ms: r.finished_ms,
                reason: r.reason.clone(),
            })
            .collect();
        for c in markers {
            if c.by == job.submitted_by {
                view.apply_cancel(c);
            } else {
                view.cancel_requests.push(c);
            }
        }
        view
    }

    fn segment(
        &self,
        job: &Job,
        index: u32,
        now_ms: u64,
        leases: Option<&LeaseBook>,
    ) -> SegmentView {
        let lo = (job.id.clone(), index, String::new());
        let claims: Vec<ClaimView> = self
            .claims
            .range(lo.clone()..)
            .take_while(|((j, s, _), _)| *j == job.id && *s == index)
            .map(|(_, (_, c))| {
                let mut c = c.clone();
                // A renewal of the same attempt seen outside the document moves the lease on.
                if let Some(until) =
                    leases.and_then(|b| b.until(&job.id, index, &c.runner, c.attempt))
                {
                    c.lease_until_ms = c.lease_until_ms.max(until);
                }
                c
            })
            .collect();
        let mut results: Vec<SegmentResult> = self
            .results
            .range(lo..)
            .take_while(|((j, s, _), _)| *j == job.id && *s == index)
            .map(|(_, (_, r))| r.clone())
            .collect();
        // "Module unavailable" (this node could not run it) says nothing about the segment:
        // such results go last, so the first result is a real run whenever there is one.
        let unavailable = |r: &SegmentResult| r.status() == Some(Status::ModuleUnavailable);
        results.sort_by(|a, b| {
            unavailable(a)
                .cmp(&unavailable(b))
                .then_with(|| a.finished_ms.cmp(&b.finished_ms))
                .then_with(|| a.runner.cmp(&b.runner))
        });
        let live = claims.iter().any(|c| c.lease_until_ms > now_ms);
        let state = if results.iter().any(SegmentResult::completed) {
            JobState::Done
        } else if live {
            JobState::Running
        } else if !results.is_empty() {
            JobState::Failed
        } else {
            JobState::Pending
        };
        let ran: Vec<&SegmentResult> = results.iter().filter(|r| !unavailable(r)).collect();
        let mismatch = ran
            .iter()
            .enumerate()
            .any(|(i, a)| ran[i + 1..].iter().any(|b| a.differs_from(b)));
        SegmentView {
            index,
            args: segment_args(&job.spec, index),
            state,
            claims,
            results,
            mismatch,
        }
    }
}

/// Gathers the segments' first results; `None` until every segment has one.
fn gather(segments: &[SegmentView]) -> Option<Gathered> {
    let firsts: Vec<&SegmentResult> = segments
        .iter()
        .map(|s| s.results.first())
        .collect::<Option<_>>()?;
    let mut stdout = Vec::new();
    for r in &firsts {
        stdout.extend(r.stdout_bytes().unwrap_or_default());
    }
    Some(Gathered {
        ok: firsts.iter().all(|r| r.succeeded()),
        combined: firsts
            .iter()
            .map(|r| r.returns.first().copied().unwrap_or(0))
            .fold(0_i64, i64::wrapping_add),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        runners: firsts.iter().map(|r| r.runner.clone()).collect(),
        mismatch: segments.iter().any(|s| s.mismatch),
    })
}

/// Every valid job with where it stands at `now_ms` (Unix milliseconds), ordered by submission
/// time, then id.
pub fn jobs(doc: &Automerge, now_ms: u64) -> Vec<JobView> {
    JobsIndex::read(doc).views(now_ms)
}

/// Job `id` with where it stands at `now_ms` (Unix milliseconds).
pub fn job(doc: &Automerge, id: &str, now_ms: u64) -> Option<JobView> {
    job_with(doc, id, now_ms, None)
}

/// [`job`], with the claims' leases moved on by the renewals of `leases`.
pub fn job_with(
    doc: &Automerge,
    id: &str,
    now_ms: u64,
    leases: Option<&LeaseBook>,
) -> Option<JobView> {
    if !is_job_id(id) {
        return None;
    }
    let scan = Scan::read(doc, Some(id));
    let (_, job) = scan.jobs.get(id)?;
    Some(scan.view(job, now_ms, leases))
}

/// `runner`'s claim on segment `segment` of job `job`, if the document holds one (a result
/// drops the claim).
pub fn claim(doc: &Automerge, runner: &str, job: &str, segment: u32) -> Option<ClaimView> {
    let mut scan = Scan::default();
    for (v, parent) in doc.get_all(ROOT, runner).ok()? {
        if matches!(v, Value::Object(ObjType::Map)) {
            scan.read_entry(doc, runner, &parent, &claim_key(job, segment));
        }
    }
    scan.claims
        .remove(&(job.to_string(), segment, runner.to_string()))
        .map(|(_, c)| c)
}

/// Every entry of a jobs document (newest version of each), kept up to date from where changes
/// wrote ([`crate::docs::Replica::take_touched`]) instead of read again from the document on
/// every look: the scheduler looks after every change, and a read of the whole document grew
/// with the hour's jobs.
#[derive(Debug, Default)]
pub struct JobsIndex {
    scan: Scan,
}

impl JobsIndex {
    /// Reads every entry of `doc`.
    pub fn read(doc: &Automerge) -> Self {
        JobsIndex {
            scan: Scan::read(doc, None),
        }
    }

    /// Reads again the entries `paths` name (node id, then entry key; a node id alone reads
    /// all of that node's entries). Entries are never deleted and a newer version always
    /// replaces an older, so reading the written entries again keeps the index equal to a
    /// fresh [`JobsIndex::read`].
    pub fn refresh(&mut self, doc: &Automerge, paths: impl IntoIterator<Item = Vec<String>>) {
        for p in paths {
            let Some(node) = p.first() else {
                continue;
            };
            let Ok(parents) = doc.get_all(ROOT, node.as_str()) else {
                continue;
            };
            for (v, parent) in parents {
                if !matches!(v, Value::Object(ObjType::Map)) {
                    continue;
                }
                match p.get(1) {
                    Some(key) => self.scan.read_entry(doc, node, &parent, key),
                    None => {
                        for key in doc.keys(&parent) {
                            self.scan.read_entry(doc, node, &parent, &key);
                        }
                    }
                }
            }
        }
    }

    /// Every valid job with where it stands at `now_ms`, ordered by submission time, then id.
    pub fn views(&self, now_ms: u64) -> Vec<JobView> {
        self.views_with(now_ms, None)
    }

    /// [`JobsIndex::views`], with the claims' leases moved on by the renewals of `leases`.
    pub fn views_with(&self, now_ms: u64, leases: Option<&LeaseBook>) -> Vec<JobView> {
        let mut out: Vec<JobView> = self
            .scan
            .jobs
            .values()
            .map(|(_, job)| self.scan.view(job, now_ms, leases))
            .collect();
        out.sort_by(|a, b| {
            a.job
                .submitted_ms
                .cmp(&b.job.submitted_ms)
                .then_with(|| a.job.id.cmp(&b.job.id))
        });
        out
    }

    /// Job `id` with where it stands at `now_ms`.
    pub fn view(&self, id: &str, now_ms: u64) -> Option<JobView> {
        let (_, job) = self.scan.jobs.get(id)?;
        Some(self.scan.view(job, now_ms, None))
    }
}

/// Whether a node in `region` with capabilities `caps` may run a job with requirements `req`:
/// the region matches (or none is required) and every required capability is offered
/// (compared without case).
pub fn eligible(req: &Requirements, region: &str, caps: &[String]) -> bool {
    let wanted_region = req.region.trim();
    let region_ok = wanted_region.is_empty() || wanted_region.eq_ignore_ascii_case(region.trim());
    region_ok
        && req.capabilities.iter().all(|want| {
            caps.iter()
                .any(|have| have.trim().eq_ignore_ascii_case(want.trim()))
        })
}

/// Why no node of `nodes` (the live nodes that run grid jobs, as `(region, capabilities)`)
/// may run a job with requirements `req`; `None` when one may. The reason names what is
/// missing: `no live node runs grid jobs`, `no live node is in region eu`, `no live node has
/// capability gpu`, `no live node in region eu has capabilities gpu, ssd`, `no live node has
/// all of capabilities gpu, ssd`.
pub fn no_eligible_node(req: &Requirements, nodes: &[(&str, &[String])]) -> Option<String> {
    if nodes
        .iter()
        .any(|(region, caps)| eligible(req, region, caps))
    {
        return None;
    }
    if nodes.is_empty() {
        return Some("no live node runs grid jobs".into());
    }
    let region = req.region.trim();
    let in_region: Vec<&[String]> = nodes
        .iter()
        .filter(|(r, _)| region.is_empty() || region.eq_ignore_ascii_case(r.trim()))
        .map(|(_, caps)| *caps)
        .collect();
    if in_region.is_empty() {
        return Some(format!("no live node is in region {region}"));
    }
    let where_ = if region.is_empty() {
        String::new()
    } else {
        format!(" in region {region}")
    };
    let missing: Vec<&str> = req
        .capabilities
        .iter()
        .map(|c| c.trim())
        .filter(|want| {
            !in_region.iter().any(|caps| {
                caps.iter()
                    .any(|have| have.trim().eq_ignore_ascii_case(want))
            })
        })
        .collect();
    Some(match missing.as_slice() {
        [one] => format!("no live node{where_} has capability {one}"),
        [] => format!(
            "no live node{where_} has all of capabilities {}",
            req.capabilities.join(", ")
        ),
        many => format!("no live node{where_} has capabilities {}", many.join(", ")),
    })
}

/// A uniform number in the open interval (0, 1) drawn from sha256(job, segment, node).
fn unit_hash(job_id: &str, segment: u32, node: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(job_id.as_bytes());
    h.update([0]);
    h.update(segment.to_be_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut top = [0_u8; 8];
    top.copy_from_slice(&d[..8]);
    // 52 bits plus one half, over 2^52: exact in an f64 and never 0 or 1.
    let bits = u64::from_be_bytes(top) >> 12;
    (bits as f64 + 0.5) / (1_u64 << 52) as f64
}

fn usable_weight(w: f64) -> f64 {
    if w.is_nan() || w <= 0.0 {
        MIN_WEIGHT
    } else {
        w.min(f64::MAX)
    }
}

/// The nodes in the order they should run segment `segment` of job `job_id`: weighted
/// rendezvous hashing, each node scoring `-weight / ln(u)` with `u` in (0, 1) drawn from
/// sha256(job id, segment, node), highest score first, ties by node id. A node wins first place
/// with probability proportional to its weight; weights that are zero, negative or not a number
/// count as [`MIN_WEIGHT`]. A node listed twice counts once, with its larger weight.
///
/// The order depends only on the set of nodes, not on the order they are given in, and removing
/// a node leaves the order of the others unchanged: when the first node leaves, the second takes
/// its place and nothing else moves.
pub fn rendezvous(job_id: &str, segment: u32, nodes: &[(String, f64)]) -> Vec<String> {
    let mut weights: BTreeMap<&str, f64> = BTreeMap::new();
    for (node, w) in nodes {
        let w = usable_weight(*w);
        let slot = weights.entry(node.as_str()).or_insert(w);
        if w > *slot {
            *slot = w;
        }
    }
    let mut scored: Vec<(f64, &str)> = weights
        .into_iter()
        .map(|(node, w)| (-w / unit_hash(job_id, segment, node).ln(), node))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, n)| n.to_string()).collect()
}

#[cfg(test)]
mod tests;
