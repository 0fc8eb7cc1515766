//! The VVM: WebAssembly jobs for the VOIKE mesh, sandboxed by wasmtime.
//!
//! A node builds one [`Runtime`]: a wasmtime engine with the pooling allocator (instances,
//! memories and tables come from preallocated slots, so creating one costs microseconds), fuel
//! metering and epoch interruption, plus one ticker thread that advances the epoch. Modules
//! are submitted as bytes — a wasm binary or WebAssembly text — and [`Runtime::compile`] checks
//! their size and their shape against [`ModuleLimits`] (functions, body size, locals, nesting:
//! what makes Cranelift slow) before validating them and compiling them under a timeout; compiled code is cached on
//! disk by content so a restart does not compile again. [`module_hash`] gives the content
//! address (SHA-256) a module is stored and fetched under.
//!
//! [`Runtime::run`] runs one [`JobSpec`] in a fresh store:
//! * **limits** — memory (growth past it fails inside the guest; an initial memory past it
//!   ends the job as [`Status::MemoryLimit`]), fuel ([`Status::OutOfFuel`]), wall time
//!   ([`Status::Timeout`], to within one epoch tick), output bytes (the rest is dropped),
//!   what the scratch directory holds ([`Status::ScratchQuota`], measured every epoch tick and
//!   when the job ends);
//! * **capabilities** — WASI preview 1 with nothing granted by default: no preopened
//!   directory, no environment, no inherited stdio, a frozen clock. A job may be granted a
//!   real clock, environment variables and one scratch directory (`/scratch`). No job ever
//!   gets a socket;
//! * **entries** — `_start` runs a WASI command (argv, stdin, captured stdout/stderr,
//!   `proc_exit` code); any other name calls that exported function with integer arguments
//!   and returns its integer results.
//!
//! Whatever the guest does — trap, exhaust its stack, loop forever, hog memory — ends that job
//! with a [`Status`]; it never panics the caller or disturbs other jobs. Everything here is
//! synchronous; the node calls it from `spawn_blocking`.
//!
//! Small example programs live in `examples/*.wat` at the workspace root.
//!
//! # Layout
//! - `config.rs`: [`RuntimeConfig`] and the wasmtime configuration built from it
//!   ([`engine_config`]: pool sizing, fuel, epochs, cache).
//! - `runtime.rs`: [`Runtime`] — compile, run, idle instances; entry checks and the mapping
//!   of wasmtime errors to [`Status`].
//! - `compile.rs`: [`Module`], [`CompileError`], [`module_hash`]; size cap, WAT, validation,
//!   compile timeout, linking.
//! - `limits.rs`: [`ModuleLimits`], the scan of a module's shape before it is compiled.
//! - `job.rs`: the serde types a job is described and answered with: [`JobSpec`], [`Limits`],
//!   [`Capabilities`], [`Outcome`], [`Status`].
//! - `sandbox.rs`: per-store state — the memory limiter, the WASI context built from the
//!   capabilities, frozen or real clocks.
//! - `scratch.rs`: the scratch directory's quota and its measurement.
//! - `capture.rs`: bounded in-memory stdout/stderr.
//! - `poll.rs`: a `poll_oneoff` that never sleeps past the job's deadline.
//! - `ticker.rs`: the epoch ticker thread.

mod capture;
mod compile;
mod config;
mod job;
mod limits;
mod poll;
mod runtime;
mod sandbox;
mod scratch;
mod ticker;

pub use compile::{CompileError, Module, module_hash};
pub use config::{RuntimeConfig, engine_config};
pub use job::{Capabilities, JobSpec, Limits, Outcome, Status};
pub use limits::{LimitExceeded, ModuleLimits};
pub use runtime::{COMMAND_ENTRY, CacheStats, IdleInstance, Runtime, RuntimeError};
pub use sandbox::SCRATCH_GUEST_PATH;
