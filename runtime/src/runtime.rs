//! [`Runtime`]: the engine, the WASI linker and the epoch ticker of one node, and the job
//! lifecycle — instantiate in a fresh store with the job's limits, call the entry, turn
//! whatever happened into an [`Outcome`].

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use wasmtime::{
    Cache, Engine, Extern, Func, Instance, Linker, Store, Trap, UpdateDeadline, Val, WasmBacktrace,
};
use wasmtime_wasi::I32Exit;

use crate::compile::{self, ArgType, CompileError, EntrySig, Module};
use crate::config::{RuntimeConfig, engine_config};
use crate::job::{JobSpec, Outcome, Status};
use crate::poll::{self, WallTimeExceeded};
use crate::sandbox::{JobIo, JobState};
use crate::scratch::ScratchQuotaExceeded;
use crate::ticker::EpochTicker;

/// The name of the WASI command entry.
pub const COMMAND_ENTRY: &str = "_start";

/// Epoch deadlines beyond this many ticks are treated as "no deadline" (years at any tick).
const MAX_TICKS: u64 = 1 << 40;

/// Why a [`Runtime`] could not be built or an instance could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A setting in [`RuntimeConfig`] is out of range.
    #[error("invalid runtime config: {0}")]
    Config(String),
    /// wasmtime refused the configuration (e.g. the pool does not fit in memory).
    #[error("cannot create the wasmtime engine: {0}")]
    Engine(String),
    /// The compilation cache directory cannot be used.
    #[error("cannot use the module cache at {dir}: {message}")]
    Cache { dir: PathBuf, message: String },
    /// WASI could not be linked.
    #[error("cannot link WASI: {0}")]
    Link(String),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
    /// An instance could not be created.
    #[error("cannot instantiate module {hash}: {message}")]
    Instantiate { hash: String, message: String },
}

/// Compilation-cache counters since this runtime started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Compilations answered from the on-disk cache.
    pub hits: usize,
    /// Compilations that had to run Cranelift (and then filled the cache).
    pub misses: usize,
}

/// The VVM of one node. `Send + Sync`: share it behind an `Arc`. Every method is blocking;
/// call them from `spawn_blocking` or a dedicated thread, not from an async task (WASI calls
/// block on wasmtime-wasi's Tokio runtime).
pub struct Runtime {
    engine: Engine,
    linker: Linker<JobState>,
    cfg: RuntimeConfig,
    cache: Option<Cache>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine and its instance pool, links WASI and starts the epoch ticker (one
    /// thread, stopped when the runtime is dropped).
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (config, cache) = engine_config(&cfg)?;
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, JobState::wasi)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        poll::add_to_linker(&mut linker).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let ticker =
            EpochTicker::start(engine.clone(), cfg.epoch_tick).map_err(RuntimeError::Ticker)?;
        Ok(Self {
            engine,
            linker,
            cfg,
            cache,
            _ticker: ticker,
        })
    }

    /// The settings this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The wasmtime engine, for benchmarks and diagnostics.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compilation-cache counters, or `None` without a `cache_dir`.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| CacheStats {
            hits: c.cache_hits(),
            misses: c.cache_misses(),
        })
    }

    /// Validates and compiles a module given as a wasm binary or as WebAssembly text (anything
    /// not starting with `\0asm`), refusing more than `max_module_bytes` or anything over the
    /// `module_limits` (before validating or compiling it) and giving up after
    /// `compile_timeout`. With a `cache_dir`, a module compiled before (by this process or an
    /// earlier one) is loaded from the cache instead of being recompiled.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, CompileError> {
        let started = Instant::now();
        let module = compile::compile(
            &self.engine,
            &self.linker,
            bytes,
            self.cfg.max_module_bytes,
            self.cfg.module_limits,
            self.cfg.compile_timeout,
        )?;
        tracing::debug!(
            module = %module.hash(),
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "module compiled"
        );
        Ok(module)
    }

    /// Runs one job in a fresh instance with the job's limits and capabilities. Never panics
    /// and never fails: whatever the guest does ends up in [`Outcome::status`].
    pub fn run(&self, module: &Module, job: &JobSpec) -> Outcome {
        match panic::catch_unwind(AssertUnwindSafe(|| self.run_job(module, job))) {
            Ok(outcome) => outcome,
            Err(payload) => Outcome::not_run(Status::HostError(format!(
                "the VVM panicked while running the job: {}",
                panic_message(payload.as_ref())
            ))),
        }
    }

    /// Creates an instance of `module` and keeps it alive, idle, with the default job limits
    /// and no capabilities. For measuring how many instances a node holds (and what each
    /// costs), and the building block of a future warm pool. The instance's pool slot is freed
    /// when the [`IdleInstance`] is dropped.
    pub fn instantiate_idle(&self, module: &Module) -> Result<IdleInstance, RuntimeError> {
        let job = JobSpec::default();
        let instantiate_error = |message: String| RuntimeError::Instantiate {
            hash: module.hash().to_owned(),
            message,
        };
        let memory_bytes = job.limits.memory_bytes.min(self.cfg.max_memory_bytes);
        let (state, _io) = JobState::new(&job, memory_bytes, 0, Instant::now(), module.uses_wasi)
            .map_err(instantiate_error)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(job.limits.fuel)
            .map_err(|e| instantiate_error(format!("{e:#}")))?;
        store.set_epoch_deadline(self.ticks(job.limits.wall_time));
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_error(format!("{e:#}")))?;
        Ok(IdleInstance { store, instance })
    }

    fn ticks(&self, wall_time: Duration) -> u64 {
        let tick = self.cfg.epoch_tick.as_nanos().max(1);
        // One extra tick: the first may come right after the job starts.
        u64::try_from(wall_time.as_nanos().div_ceil(tick))
            .unwrap_or(MAX_TICKS)
            .saturating_add(1)
            .min(MAX_TICKS)
    }

    fn run_job(&self, module: &Module, job: &JobSpec) -> Outcome {
        // The epoch advances only while some job runs (an idle node does not tick).
        let _ticking = self._ticker.running();
        let started = Instant::now();
        let entry = match Entry::resolve(module, job) {
            Ok(entry) => entry,
            Err(message) => return Outcome::not_run(Status::InvalidEntry(message)),
        };
        let memory_bytes = job.limits.memory_bytes.min(self.cfg.max_memory_bytes);
        let scratch_bytes = job.limits.scratch_bytes.min(self.cfg.max_scratch_bytes);
        let (state, io) =
            match JobState::new(job, memory_bytes, scratch_bytes, started, module.uses_wasi) {
                Ok(state) => state,
                Err(message) => return Outcome::not_run(Status::HostError(message)),
            };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if let Err(e) = store.set_fuel(job.limits.fuel) {
            return Outcome::not_run(Status::HostError(format!("cannot set fuel: {e:#}")));
        }
        // wasmtime may clamp very large budgets; count from what it actually holds.
        let fuel_start = store.get_fuel().unwrap_or(job.limits.fuel);
        if store.data().scratch.is_some() {
            // Every tick: the wall-time deadline, then the scratch quota.
            store.epoch_deadline_callback(|mut ctx| {
                let now = Instant::now();
                let state = ctx.data_mut();
                if now >= state.deadline {
                    return Err(WallTimeExceeded.into());
                }
                if let Some(scratch) = state.scratch.as_mut() {
                    scratch.poll(now)?;
                }
                Ok(UpdateDeadline::Continue(1))
            });
            store.set_epoch_deadline(1);
        } else {
            store.set_epoch_deadline(self.ticks(job.limits.wall_time));
        }

        let mut outcome = Outcome::not_run(Status::Ok);
        let instantiated = module.pre.instantiate(&mut store);
        let call_started = Instant::now();
        outcome.instantiate = call_started.duration_since(started);
        match instantiated {
            Ok(instance) => {
                let is_command = matches!(entry, Entry::Command(_));
                let called = entry.call(&mut store, instance, module);
                outcome.duration = call_started.elapsed();
                match called {
                    Ok(returns) => {
                        outcome.returns = returns;
                        if is_command {
                            outcome.exit_code = Some(0);
                        }
                    }
                    Err(error) => {
                        let (status, exit_code) = classify(&error);
                        outcome.status = status;
                        outcome.exit_code = exit_code;
                    }
                }
            }
            Err(error) => {
                outcome.status = if store.data().limiter.memory_refused {
                    Status::MemoryLimit
                } else if is_guest_error(&error) {
                    // The start function ran and failed.
                    classify(&error).0
                } else {
                    Status::HostError(format!("cannot instantiate: {error:#}"))
                };
            }
        }
        // Whatever the guest did last (one big write, then exit) is measured too.
        if let Some(scratch) = &store.data().scratch
            && let Err(exceeded) = scratch.check()
        {
            outcome.status = Status::ScratchQuota(exceeded.quota);
        }
        outcome.fuel_used = fuel_start.saturating_sub(store.get_fuel().unwrap_or(0));
        if let Some(JobIo { stdout, stderr }) = io {
            (outcome.stdout, outcome.stdout_truncated) = stdout.take();
            (outcome.stderr, outcome.stderr_truncated) = stderr.take();
        }
        tracing::debug!(
            module = %module.hash(),
            entry = %job.entry,
            status = %outcome.status,
            fuel = outcome.fuel_used,
            duration_ms = outcome.duration.as_secs_f64() * 1000.0,
            "job finished"
        );
        outcome
    }
}

/// A live instance held in its own store, doing nothing. See [`Runtime::instantiate_idle`].
pub struct IdleInstance {
    store: Store<JobState>,
    instance: Instance,
}

impl std::fmt::Debug for IdleInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleInstance").finish_non_exhaustive()
    }
}

impl IdleInstance {
    /// Whether the instance exports a function called `name`.
    pub fn has_entry(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }
}

/// How the job's entry is called, checked against the module before anything is instantiated.
enum Entry<'a> {
    /// `_start`, a WASI command.
    Command(&'a EntrySig),
    /// An exported function with its parsed arguments.
    Call { sig: &'a EntrySig, params: Vec<Val> },
}

impl<'a> Entry<'a> {
    fn resolve(module: &'a Module, job: &JobSpec) -> Result<Self, String> {
        let name = job.entry.as_str();
        let Some(sig) = module.entry(name) else {
            if module.inner().get_export(name).is_some() {
                return Err(format!("export `{name}` is not a function"));
            }
            return Err(format!(
                "the module has no exported function `{name}` (it has: {})",
                module.entries().join(", ")
            ));
        };
        if name == COMMAND_ENTRY {
            if !sig.params.is_empty() || !sig.results.is_empty() {
                return Err(format!("`{COMMAND_ENTRY}` must take and return nothing"));
            }
            return Ok(Entry::Command(sig));
        }

        if sig.params.len() != job.args.len() {
            return Err(format!(
                "`{name}` takes {} argument(s) ({}), the job gives {}",
                sig.params.len(),
                type_list(&sig.params),
                job.args.len()
            ));
        }
        let mut params = Vec::with_capacity(sig.params.len());
        for (i, (ty, arg)) in sig.params.iter().zip(&job.args).enumerate() {
            let value = match ty {
                ArgType::I32 => parse_i32(arg).map(Val::I32),
                ArgType::I64 => parse_i64(arg).map(Val::I64),
                ArgType::Other(_) => {
                    return Err(format!(
                        "`{name}` takes a {ty} as argument {}; only i32 and i64 are supported",
                        i + 1
                    ));
                }
            };
            params.push(value.ok_or_else(|| {
                format!(
                    "argument {} of `{name}` is `{arg}`, which is not an {ty}",
                    i + 1
                )
            })?);
        }
        if let Some(ty) = sig.results.iter().find(|t| matches!(t, ArgType::Other(_))) {
            return Err(format!(
                "`{name}` returns a {ty}; only i32 and i64 results are supported"
            ));
        }
        Ok(Entry::Call { sig, params })
    }

    fn call(
        self,
        store: &mut Store<JobState>,
        instance: Instance,
        module: &Module,
    ) -> wasmtime::Result<Vec<i64>> {
        let func = |store: &mut Store<JobState>, sig: &EntrySig| {
            instance
                .get_module_export(&mut *store, &sig.export)
                .and_then(Extern::into_func)
                .ok_or_else(|| wasmtime::Error::msg(format!("no function `{}`", sig.name)))
        };
        match self {
            Entry::Command(sig) => {
                let start = func(store, sig)?.typed::<(), ()>(&*store)?;
                start.call(&mut *store, ())?;
                Ok(Vec::new())
            }
            Entry::Call { sig, params } => {
                if let Some(init) = &module.initialize {
                    // A WASI reactor must be initialised before any other export is called.
                    let init = instance
                        .get_module_export(&mut *store, init)
                        .and_then(Extern::into_func)
                        .ok_or_else(|| wasmtime::Error::msg("no function `_initialize`"))?;
                    init.typed::<(), ()>(&*store)?.call(&mut *store, ())?;
                }
                let func = func(store, sig)?;
                call_func(store, func, &params, &sig.results)
            }
        }
    }
}

/// Calls `func`, through a typed (statically checked, cheaper) call for the common shapes and
/// a dynamically checked one for the rest.
fn call_func(
    store: &mut Store<JobState>,
    func: Func,
    params: &[Val],
    results: &[ArgType],
) -> wasmtime::Result<Vec<i64>> {
    use ArgType::{I32, I64};
    match (params, results) {
        ([], []) => {
            func.typed::<(), ()>(&*store)?.call(&mut *store, ())?;
            Ok(Vec::new())
        }
        ([], [I32]) => {
            let r = func.typed::<(), i32>(&*store)?.call(&mut *store, ())?;
            Ok(vec![i64::from(r)])
        }
        ([], [I64]) => {
            let r = func.typed::<(), i64>(&*store)?.call(&mut *store, ())?;
            Ok(vec![r])
        }
        ([Val::I32(a)], [I32]) => {
            let r = func.typed::<i32, i32>(&*store)?.call(&mut *store, *a)?;
            Ok(vec![i64::from(r)])
        }
        ([Val::I64(a)], [I64]) => {
            let r = func.typed::<i64, i64>(&*store)?.call(&mut *store, *a)?;
            Ok(vec![r])
        }
        ([Val::I64(a), Val::I64(b)], [I64]) => {
            let r = func
                .typed::<(i64, i64), i64>(&*store)?
                .call(&mut *store, (*a, *b))?;
            Ok(vec![r])
        }
        _ => {
            let mut out: Vec<Val> = results
                .iter()
                .map(|t| match t {
                    I64 => Val::I64(0),
                    _ => Val::I32(0),
                })
                .collect();
            func.call(&mut *store, params, &mut out)?;
            Ok(out
                .iter()
                .map(|v| match v {
                    Val::I32(x) => i64::from(*x),
                    Val::I64(x) => *x,
                    _ => 0,
                })
                .collect())
        }
    }
}

fn type_list(types: &[ArgType]) -> String {
    types
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decimal, signed or unsigned (an unsigned value above `i32::MAX` keeps its bits).
fn parse_i32(arg: &str) -> Option<i32> {
    let arg = arg.trim();
    arg.parse::<i32>()
        .ok()
        .or_else(|| arg.parse::<u32>().ok().map(|u| u as i32))
}

/// Decimal, signed or unsigned (an unsigned value above `i64::MAX` keeps its bits).
fn parse_i64(arg: &str) -> Option<i64> {
    let arg = arg.trim();
    arg.parse::<i64>()
        .ok()
        .or_else(|| arg.parse::<u64>().ok().map(|u| u as i64))
}

/// Whether an error came from running guest code (a trap or an exit) rather than from the host.
fn is_guest_error(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<I32Exit>().is_some()
        || error.downcast_ref::<WallTimeExceeded>().is_some()
        || error.downcast_ref::<ScratchQuotaExceeded>().is_some()
}

/// Maps an error that ended a running job to its status and exit code.
fn classify(error: &wasmtime::Error) -> (Status, Option<i32>) {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        let status = if exit.0 == 0 {
            Status::Ok
        } else {
            Status::Exit(exit.0)
        };
        return (status, Some(exit.0));
    }
    if error.downcast_ref::<WallTimeExceeded>().is_some() {
        return (Status::Timeout, None);
    }
    if let Some(exceeded) = error.downcast_ref::<ScratchQuotaExceeded>() {
        return (Status::ScratchQuota(exceeded.quota), None);
    }
    let status = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Status::OutOfFuel,
        Some(Trap::Interrupt) => Status::Timeout,
        Some(trap) => {
            let trap = trap.to_string();
            let trap = trap.strip_prefix("wasm trap: ").unwrap_or(&trap);
            let function = error
                .downcast_ref::<WasmBacktrace>()
                .and_then(|bt| bt.frames().first().and_then(|f| f.func_name()));
            match function {
                Some(function) => Status::Trap(format!("{trap} in function `{function}`")),
                None => Status::Trap(trap.to_string()),
            }
        }
        // A host function failed in a way that ends the job (wasmtime-wasi reports some guest
        // misuse like this).
        None => Status::Trap(format!("{error:#}")),
    };
    (status, None)
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}
