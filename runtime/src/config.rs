//! [`RuntimeConfig`]: the node-wide settings of the VVM, and the wasmtime [`Config`] built from
//! them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{
    Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

use crate::limits::ModuleLimits;
use crate::runtime::RuntimeError;

/// Node-wide VVM settings. Per-job limits live in [`crate::Limits`] and are clamped to these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Largest module accepted by [`crate::Runtime::compile`], in bytes, binary or text.
    /// Default 8 MiB.
    pub max_module_bytes: usize,
    /// Bounds on a module's shape (functions, body size, locals, nesting), checked by a scan
    /// before anything is compiled; see [`ModuleLimits`] for the defaults. The field names are
    /// snake_case, as in the node's `[grid.module_limits]`, and refusals name them.
    pub module_limits: ModuleLimits,
    /// The most bytes one job may write into its scratch directory; a job's larger
    /// `scratchBytes` is lowered to this. Default 64 MiB.
    pub max_scratch_bytes: u64,
    /// How long one compilation may take before `compile` gives up. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub compile_timeout: Duration,
    /// Size of the pooling allocator: how many instances (and linear memories, and tables) can
    /// be alive at once on this node. Default 12 000, so that 10 000 concurrent instances fit
    /// with room to spare.
    pub max_instances: u32,
    /// The most linear memory one job may ever have, in bytes; also the per-instance address
    /// space reserved by the pool (plus a guard region). Default 64 MiB.
    pub max_memory_bytes: u64,
    /// How often the epoch ticker interrupts running guests to check their deadline; a job's
    /// wall-time limit is enforced to within one tick. Default `10ms`.
    #[serde(with = "humantime_serde")]
    pub epoch_tick: Duration,
    /// Where compiled modules are cached on disk so that a restart does not recompile them,
    /// e.g. `<data-dir>/wasm-cache`. `None` (the default) keeps compiled code in memory only.
    /// The directory must be writable by this process only: its contents are loaded as code.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: 8 << 20,
            module_limits: ModuleLimits::default(),
            max_scratch_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(30),
            max_instances: 12_000,
            max_memory_bytes: 64 << 20,
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
        }
    }
}

/// Pool slots reserved for tables: enough for the function tables of ordinary toolchain
/// output. The pool reserves `8 * TABLE_ELEMENTS` bytes of address space per instance.
const TABLE_ELEMENTS: usize = 10_000;

/// Guard region after each linear memory in the pool. Loads and stores with a constant offset
/// below it need no explicit bounds check.
const MEMORY_GUARD_BYTES: u64 = 2 << 20;

/// Builds the wasmtime configuration the VVM runs with: Cranelift, the pooling allocator sized
/// by `cfg`, fuel, epoch interruption and, when `cfg.cache_dir` is set, the on-disk
/// compilation cache (returned too, so that its hit counters can be read).
///
/// Public so that benchmarks can measure raw wasmtime with exactly the VVM's engine settings.
pub fn engine_config(cfg: &RuntimeConfig) -> Result<(Config, Option<Cache>), RuntimeError> {
    let max_memory = usize::try_from(cfg.max_memory_bytes).map_err(|_| {
        RuntimeError::Config(format!(
            "maxMemoryBytes {} does not fit in this platform's address space",
            cfg.max_memory_bytes
        ))
    })?;
    if cfg.max_instances == 0 {
        return Err(RuntimeError::Config(
            "maxInstances must be at least 1".to_owned(),
        ));
    }
    if cfg.epoch_tick.is_zero() {
        return Err(RuntimeError::Config(
            "epochTick must be longer than zero".to_owned(),
        ));
    }

    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(cfg.max_instances)
        .total_memories(cfg.max_instances)
        .total_tables(cfg.max_instances)
        // Jobs run synchronously on the caller's thread: no fiber stacks, no components.
        .total_stacks(0)
        .total_component_instances(0)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(max_memory);

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .epoch_interruption(true)
        // Each pool slot reserves only what a job may ever use (plus the guard), so that
        // `max_instances` slots fit in the address space; Cranelift adds bounds checks.
        .memory_reservation(cfg.max_memory_bytes)
        .memory_guard_size(MEMORY_GUARD_BYTES)
        .memory_reservation_for_growth(0)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .parallel_compilation(true);

    let cache = match &cfg.cache_dir {
        None => None,
        Some(dir) => {
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = Cache::new(cache_config).map_err(|e| RuntimeError::Cache {
                dir: dir.clone(),
                message: format!("{e:#}"),
            })?;
            Some(cache)
        }
    };
    config.cache(cache.clone());
    Ok((config, cache))
}
