//! [`JobState`]: what a job's wasmtime `Store` holds — its memory limiter, its WASI context
//! built from the job's capabilities, its captured output and its deadline.

use std::time::{Duration, Instant, SystemTime};

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{DirPerms, FilePerms, HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::capture::Capture;
use crate::job::JobSpec;
use crate::scratch::ScratchQuota;

/// Guest path of the scratch directory granted by `caps.scratchDir`.
pub const SCRATCH_GUEST_PATH: &str = "/scratch";

/// Table growth a job may ask for (elements), in line with the pool's table slots.
const MAX_TABLE_ELEMENTS: usize = 10_000;

/// Per-store state of one job.
pub(crate) struct JobState {
    pub(crate) limiter: JobLimiter,
    /// Built only when the module imports WASI; see [`JobState::wasi`]. Boxed: the context is
    /// large, and a store without it should be cheap to create.
    wasi: Option<Box<WasiP1Ctx>>,
    pub(crate) clock: JobClock,
    /// When the job's wall time runs out; host calls that wait (poll_oneoff) stop here.
    pub(crate) deadline: Instant,
    /// The quota of the scratch directory, when one is granted.
    pub(crate) scratch: Option<ScratchQuota>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("limiter", &self.limiter)
            .field("wasi", &self.wasi.is_some())
            .field("clock", &self.clock)
            .field("deadline", &self.deadline)
            .field("scratch", &self.scratch)
            .finish()
    }
}

/// The captured streams of a job with WASI.
#[derive(Debug)]
pub(crate) struct JobIo {
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
}

impl JobState {
    /// State for a job; `with_wasi` says whether the module imports WASI at all (a module that
    /// does not is spared building a WASI context).
    /// `scratch_bytes` is the job's scratch quota, already clamped to the node's.
    pub(crate) fn new(
        job: &JobSpec,
        memory_bytes: u64,
        scratch_bytes: u64,
        started: Instant,
        with_wasi: bool,
    ) -> Result<(Self, Option<JobIo>), String> {
        let clock = if job.caps.clock {
            JobClock::Real { start: started }
        } else {
            JobClock::Frozen
        };
        let (wasi, io) = if with_wasi {
            let io = JobIo {
                stdout: Capture::new(job.limits.max_output_bytes),
                stderr: Capture::new(job.limits.max_output_bytes),
            };
            (Some(Box::new(wasi_ctx(job, clock, &io)?)), Some(io))
        } else {
            (None, None)
        };
        // Without WASI the guest cannot reach the directory at all.
        let scratch = match (&job.caps.scratch_dir, with_wasi) {
            (Some(dir), true) => Some(ScratchQuota::new(dir.clone(), scratch_bytes)),
            _ => None,
        };
        let state = Self {
            limiter: JobLimiter::new(memory_bytes),
            wasi,
            scratch,
            clock,
            deadline: started
                .checked_add(job.limits.wall_time)
                .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600)),
        };
        Ok((state, io))
    }

    /// The job's WASI context. The linker asks for it only when the guest calls a WASI
    /// function, which only a module that imports WASI can do; should it ever be asked for
    /// without one, an empty context that grants nothing is created rather than panicking.
    pub(crate) fn wasi(&mut self) -> &mut WasiP1Ctx {
        self.wasi
            .get_or_insert_with(|| Box::new(sealed_builder(JobClock::Frozen).build_p1()))
    }
}

/// A builder that grants nothing: no args, env, stdio, preopens or network, and the job's clock.
fn sealed_builder(clock: JobClock) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .wall_clock(clock)
        .monotonic_clock(clock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true);
    builder
}

fn wasi_ctx(job: &JobSpec, clock: JobClock, io: &JobIo) -> Result<WasiP1Ctx, String> {
    let mut builder = sealed_builder(clock);
    builder.arg("job");
    for arg in &job.args {
        builder.arg(arg);
    }
    builder
        .envs(job.caps.env.as_slice())
        .stdin(MemoryInputPipe::new(job.stdin.clone()))
        .stdout(io.stdout.clone())
        .stderr(io.stderr.clone());
    if let Some(dir) = &job.caps.scratch_dir {
        builder
            .preopened_dir(dir, SCRATCH_GUEST_PATH, DirPerms::all(), FilePerms::all())
            .map_err(|e| format!("scratch dir {} cannot be opened: {e:#}", dir.display()))?;
    }
    Ok(builder.build_p1())
}

/// The clocks a guest sees.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobClock {
    /// No clock capability: wall time reads the Unix epoch and monotonic time reads 0, forever.
    Frozen,
    /// The host's clocks; monotonic time counts from the start of the job.
    Real { start: Instant },
}

impl JobClock {
    /// Wall-clock time since the Unix epoch, in nanoseconds.
    pub(crate) fn wall_nanos(&self) -> u64 {
        match self {
            JobClock::Frozen => 0,
            JobClock::Real { .. } => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }

    /// Monotonic time since the start of the job, in nanoseconds.
    pub(crate) fn monotonic_nanos(&self) -> u64 {
        match self {
            JobClock::Frozen => 0,
            JobClock::Real { start } => {
                u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
            }
        }
    }
}

impl HostWallClock for JobClock {
    fn resolution(&self) -> Duration {
        match self {
            JobClock::Frozen => Duration::from_secs(1),
            JobClock::Real { .. } => Duration::from_nanos(1),
        }
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.wall_nanos())
    }
}

impl HostMonotonicClock for JobClock {
    fn resolution(&self) -> u64 {
        match self {
            JobClock::Frozen => 1_000_000_000,
            JobClock::Real { .. } => 1,
        }
    }

    fn now(&self) -> u64 {
        self.monotonic_nanos()
    }
}

/// Enforces a job's memory limit and remembers whether it refused anything, so that a refused
/// initial memory can be reported as [`crate::Status::MemoryLimit`]. Refused growth at run time
/// makes `memory.grow` return -1 in the guest (no trap).
#[derive(Debug)]
pub(crate) struct JobLimiter {
    memory_bytes: u64,
    pub(crate) memory_refused: bool,
}

impl JobLimiter {
    fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let fits = u64::try_from(desired).is_ok_and(|d| d <= self.memory_bytes);
        if !fits {
            self.memory_refused = true;
        }
        Ok(fits)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}
