//! What a job asks for ([`JobSpec`], [`Limits`], [`Capabilities`]) and what it gets back
//! ([`Outcome`], [`Status`]). All of it is serde so that the node can keep it in JSON.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One run of one module.
///
/// Two entry styles:
/// * `entry == "_start"`: a WASI preview 1 command. argv is `["job", args...]`, stdin is
///   `stdin`, stdout and stderr are captured, `proc_exit(n)` sets the exit code.
/// * any other name: the exported function of that name is called. Its parameters must all be
///   `i32` or `i64` and are parsed from `args` (one each, decimal); its `i32`/`i64` results come
///   back in [`Outcome::returns`]. WASI is still linked, so such a function may print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSpec {
    /// Exported function to run. Default `_start`.
    pub entry: String,
    /// Command-line arguments (`_start`) or function arguments (any other entry). Default none.
    pub args: Vec<String>,
    /// Bytes the guest reads from stdin. Default empty.
    pub stdin: Vec<u8>,
    /// Resource limits; see [`Limits`] for the defaults.
    pub limits: Limits,
    /// What the guest may reach beyond its own memory; default nothing.
    pub caps: Capabilities,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            entry: "_start".to_owned(),
            args: Vec::new(),
            stdin: Vec::new(),
            limits: Limits::default(),
            caps: Capabilities::default(),
        }
    }
}

impl JobSpec {
    /// A job that calls the exported function `entry` with `args`, default limits, no
    /// capabilities.
    pub fn call(entry: &str, args: &[&str]) -> Self {
        Self {
            entry: entry.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// A WASI command job (`_start`) with these arguments, default limits, no capabilities.
    pub fn command(args: &[&str]) -> Self {
        Self::call("_start", args)
    }
}

/// Per-job resource limits. Each one ends the job with its own [`Status`] when hit, except
/// memory growth at run time, which the guest sees as a failed `memory.grow` (-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Largest linear memory the guest may have, in bytes; clamped to the node's
    /// `maxMemoryBytes`. Default 64 MiB. An initial memory above it ends the job as
    /// [`Status::MemoryLimit`]; growth above it fails inside the guest.
    pub memory_bytes: u64,
    /// Fuel: roughly one unit per WebAssembly instruction. Default 10 000 000 000.
    pub fuel: u64,
    /// Wall-clock time from the start of the run, instantiation included, enforced to within
    /// one epoch tick. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub wall_time: Duration,
    /// Bytes kept of stdout and, separately, of stderr; the rest is dropped and the
    /// `*_truncated` flag set. The guest's writes always succeed. Default 1 MiB.
    pub max_output_bytes: usize,
    /// What the scratch directory (when granted) may hold, in bytes; clamped to the node's
    /// `maxScratchBytes`. Past it the job ends as [`Status::ScratchQuota`]. Every file,
    /// directory and link counts as its length or its disk blocks, whichever is larger, and
    /// at least 4 KiB. Default 64 MiB.
    pub scratch_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            fuel: 10_000_000_000,
            wall_time: Duration::from_secs(10),
            max_output_bytes: 1 << 20,
            scratch_bytes: 64 << 20,
        }
    }
}

/// What a job may reach outside its sandbox. The default grants nothing: no files, no
/// environment, a frozen clock, and never any network (WASI preview 1 has no way to open a
/// socket, and no socket is ever handed to a guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Capabilities {
    /// Real wall and monotonic clocks. Without it both clocks read 0 (the wall clock says
    /// 1970-01-01T00:00:00Z) and never advance. Default `false`.
    pub clock: bool,
    /// Environment variables the guest sees. Default none.
    pub env: Vec<(String, String)>,
    /// A host directory the guest may read and write, seen by the guest as `/scratch` (the
    /// first preopened directory, fd 3). Default none.
    pub scratch_dir: Option<PathBuf>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Status {
    /// The entry returned, or the command exited with code 0.
    Ok,
    /// The command called `proc_exit` with this non-zero code.
    Exit(i32),
    /// The guest trapped (unreachable, out-of-bounds access, call stack exhausted, ...).
    Trap(String),
    /// The job used all of its fuel.
    OutOfFuel,
    /// The job ran past its wall-time limit.
    Timeout,
    /// The module's initial memory is larger than the job's memory limit.
    MemoryLimit,
    /// The scratch directory held more than the job's scratch quota, in bytes (checked every
    /// epoch tick while the guest runs, and once more when it ends).
    ScratchQuota(u64),
    /// The entry does not exist or does not fit the arguments; the guest never ran.
    InvalidEntry(String),
    /// The node could not run the job (instance pool exhausted, scratch directory missing,
    /// ...); the guest is not at fault and the job may be retried elsewhere.
    HostError(String),
}

impl Status {
    /// Whether the job ran to a normal end (returned or exited with 0).
    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Exit(code) => write!(f, "exited with code {code}"),
            Status::Trap(message) => write!(f, "trapped: {message}"),
            Status::OutOfFuel => f.write_str("ran out of fuel"),
            Status::Timeout => f.write_str("ran past its wall-time limit"),
            Status::MemoryLimit => f.write_str("needs more memory than its limit"),
            Status::ScratchQuota(quota) => write!(f, "scratch quota of {quota} bytes exceeded"),
            Status::InvalidEntry(message) => write!(f, "invalid entry: {message}"),
            Status::HostError(message) => write!(f, "host error: {message}"),
        }
    }
}

/// The result of [`crate::Runtime::run`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// How the job ended.
    pub status: Status,
    /// The command's exit code: `Some(0)` when `_start` returned, `Some(n)` after
    /// `proc_exit(n)`, `None` when the job never exited (function entry, trap, limit).
    pub exit_code: Option<i32>,
    /// Results of a function entry, `i32` sign-extended to `i64`; empty for `_start`.
    pub returns: Vec<i64>,
    /// Captured stdout, at most `limits.maxOutputBytes`.
    pub stdout: Vec<u8>,
    /// Captured stderr, at most `limits.maxOutputBytes`.
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at `limits.maxOutputBytes`.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at `limits.maxOutputBytes`.
    pub stderr_truncated: bool,
    /// Fuel consumed, instantiation included. Exact when the job returns, exits or runs out
    /// of fuel. For a job ended by a trap or by its wall-time limit it is a lower bound:
    /// Cranelift keeps the running function's fuel count in a register and wasmtime does not
    /// write it back when a trap or an epoch interrupt ends the job, so the fuel burnt since
    /// that function's last call is missing (a tight loop that times out reports about 0).
    pub fuel_used: u64,
    /// Time spent running the entry.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Time spent setting up the sandbox and instantiating the module.
    #[serde(with = "humantime_serde")]
    pub instantiate: Duration,
}

impl Outcome {
    /// An outcome for a job that never ran.
    pub(crate) fn not_run(status: Status) -> Self {
        Self {
            status,
            exit_code: None,
            returns: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            fuel_used: 0,
            duration: Duration::ZERO,
            instantiate: Duration::ZERO,
        }
    }
}
