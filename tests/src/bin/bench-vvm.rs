//! VVM figures: instantiating and running a trivial precompiled job (median, p99, jobs per
//! second) and the memory of idle instances, each next to raw wasmtime measured in the same
//! run with the same engine settings.
//!
//! `cargo run --release -p voike-tests --bin bench-vvm -- [ITERATIONS] [INSTANCES]`
//! (defaults 20000 and 10000). Prints figures; asserts nothing about speed.
//!
//! The trivial job is `(module (func (export "run") (result i32) i32.const 42))`.
//! * "wasmtime (pooling)": the VVM's engine settings without fuel and epochs; per iteration a
//!   new `Store`, `InstancePre::instantiate`, look up and call `run`.
//! * "wasmtime (pooling + fuel + epochs)": exactly the VVM's engine; the store also gets its fuel
//!   and epoch deadline.
//! * "VVM": `Runtime::run` with the default job limits (fresh store, limiter, fuel, deadline,
//!   entry check, outcome).
//!
//! The three are measured in interleaved rounds so that drift on a shared machine hits each
//! alike. Memory is measured in child processes (this program re-run with `--hold`), one per
//! variant, so that one variant's freed memory does not flatter the next: each holds INSTANCES
//! idle instances and reports its VmRSS growth.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use voike_runtime::{JobSpec, Runtime, RuntimeConfig, Status, engine_config};
use wasmtime::{Engine, Instance, InstancePre, Linker, Module, Store};

const TRIVIAL: &str = r#"(module (func (export "run") (result i32) i32.const 42))"#;
const HELLO: &str = include_str!("../../../examples/hello.wat");
const ROUNDS: usize = 20;
const WARMUP: usize = 1_000;

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hold") {
        let variant = args.get(1).context("--hold needs raw or vvm")?;
        let count: usize = args.get(2).context("--hold needs a count")?.parse()?;
        return hold(variant, count);
    }
    let iterations: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let instances: usize = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);

    let cfg = RuntimeConfig::default();
    println!(
        "vvm bench: wasmtime 41, pool of {} instances, {} MiB per memory slot, epoch tick {:?}",
        cfg.max_instances,
        cfg.max_memory_bytes >> 20,
        cfg.epoch_tick
    );
    println!(
        "trivial job, {iterations} iterations per variant in {ROUNDS} interleaved rounds, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let bare = RawBench::new(&cfg, false)?;
    let metered = RawBench::new(&cfg, true)?;
    let rt = Runtime::new(cfg.clone())?;
    let module = rt.compile(TRIVIAL.as_bytes())?;
    let job = JobSpec::call("run", &[]);
    let outcome = rt.run(&module, &job);
    if outcome.status != Status::Ok || outcome.returns != [42] {
        bail!("the trivial job failed: {:?}", outcome.status);
    }

    for _ in 0..WARMUP {
        bare.once()?;
        metered.once()?;
        rt.run(&module, &job);
    }
    let per_round = iterations.div_ceil(ROUNDS);
    let (mut t_bare, mut t_metered, mut t_vvm) = (Vec::new(), Vec::new(), Vec::new());
    let mut vvm_busy = Duration::ZERO;
    for _ in 0..ROUNDS {
        for _ in 0..per_round {
            let started = Instant::now();
            bare.once()?;
            t_bare.push(started.elapsed());
        }
        for _ in 0..per_round {
            let started = Instant::now();
            metered.once()?;
            t_metered.push(started.elapsed());
        }
        let round = Instant::now();
        for _ in 0..per_round {
            let started = Instant::now();
            let outcome = rt.run(&module, &job);
            t_vvm.push(started.elapsed());
            if outcome.returns.first() != Some(&42) {
                bail!("the trivial job failed: {:?}", outcome.status);
            }
        }
        vvm_busy += round.elapsed();
    }

    let bare_stats = Stats::of(&mut t_bare);
    let metered_stats = Stats::of(&mut t_metered);
    let vvm_stats = Stats::of(&mut t_vvm);
    println!();
    println!("instantiate + call, per job           median       p99");
    bare_stats.print("wasmtime (pooling)");
    metered_stats.print("wasmtime (pooling + fuel + epochs)");
    vvm_stats.print("VVM Runtime::run");
    println!(
        "VVM / wasmtime (pooling): median {:.2}x, p99 {:.2}x   (goal: at most 1.25x)",
        ratio(vvm_stats.median, bare_stats.median),
        ratio(vvm_stats.p99, bare_stats.p99)
    );
    println!(
        "VVM / wasmtime (same engine): median {:.2}x, p99 {:.2}x",
        ratio(vvm_stats.median, metered_stats.median),
        ratio(vvm_stats.p99, metered_stats.p99)
    );
    println!(
        "VVM jobs per second, one thread: {:.0}",
        t_vvm.len() as f64 / vvm_busy.as_secs_f64()
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (jobs, elapsed) = parallel_jobs(&rt, &module, &job, threads, iterations);
    println!(
        "VVM jobs per second, {threads} threads: {:.0}",
        jobs as f64 / elapsed.as_secs_f64()
    );

    // A WASI command for scale: building its WASI context and capturing its output.
    let hello = rt.compile(HELLO.as_bytes())?;
    let command = JobSpec::command(&[]);
    let mut t_hello = Vec::with_capacity(iterations.min(5_000));
    for _ in 0..iterations.min(5_000) {
        let started = Instant::now();
        let outcome = rt.run(&hello, &command);
        t_hello.push(started.elapsed());
        if !outcome.status.is_ok() {
            bail!("hello failed: {:?}", outcome.status);
        }
    }
    Stats::of(&mut t_hello).print("VVM hello.wat (WASI _start)");
    drop(rt);

    println!();
    println!("idle instances of the trivial module, each in its own store ({instances} asked)");
    let raw = measure_hold("raw", instances)?;
    let vvm = measure_hold("vvm", instances)?;
    raw.print("wasmtime (pooling + fuel + epochs)");
    vvm.print("VVM Runtime::instantiate_idle");
    if raw.held > 0 && vvm.held > 0 {
        println!(
            "VVM / wasmtime memory per instance: {:.2}x   (goal: at least 10000 instances at no more than 1.2x)",
            vvm.kib_per_instance() / raw.kib_per_instance()
        );
    }
    Ok(())
}

/// Raw wasmtime with the VVM's engine settings, optionally without fuel and epochs.
struct RawBench {
    engine: Engine,
    pre: InstancePre<()>,
    metered: bool,
}

impl RawBench {
    fn new(cfg: &RuntimeConfig, metered: bool) -> anyhow::Result<Self> {
        let (mut config, _cache) = engine_config(cfg)?;
        if !metered {
            config.consume_fuel(false).epoch_interruption(false);
        }
        let engine = Engine::new(&config)?;
        let module = Module::new(&engine, TRIVIAL)?;
        let pre = Linker::new(&engine).instantiate_pre(&module)?;
        Ok(Self {
            engine,
            pre,
            metered,
        })
    }

    fn store(&self) -> anyhow::Result<Store<()>> {
        let mut store = Store::new(&self.engine, ());
        if self.metered {
            store.set_fuel(10_000_000_000)?;
            store.set_epoch_deadline(1_000);
        }
        Ok(store)
    }

    fn once(&self) -> anyhow::Result<i32> {
        let mut store = self.store()?;
        let instance = self.pre.instantiate(&mut store)?;
        let run = instance.get_typed_func::<(), i32>(&mut store, "run")?;
        run.call(&mut store, ())
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Self {
            median: at(0.5),
            p99: at(0.99),
        }
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<36} {:>7.2} µs {:>7.2} µs",
            micros(self.median),
            micros(self.p99)
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn parallel_jobs(
    rt: &Runtime,
    module: &voike_runtime::Module,
    job: &JobSpec,
    threads: usize,
    per_thread: usize,
) -> (usize, Duration) {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    rt.run(module, job);
                }
            });
        }
    });
    (threads * per_thread, started.elapsed())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a `--hold` child reports.
struct Held {
    held: usize,
    grown_kib: u64,
    error: Option<String>,
}

impl Held {
    fn kib_per_instance(&self) -> f64 {
        self.grown_kib as f64 / self.held.max(1) as f64
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<36} {:>6} held, RSS +{:>7} KiB, {:>6.2} KiB per instance{}",
            self.held,
            self.grown_kib,
            self.kib_per_instance(),
            self.error
                .as_deref()
                .map(|e| format!(" (stopped: {e})"))
                .unwrap_or_default()
        );
    }
}

fn measure_hold(variant: &str, count: usize) -> anyhow::Result<Held> {
    let exe = std::env::current_exe().context("path of this bench")?;
    let output = Command::new(exe)
        .args(["--hold", variant, &count.to_string()])
        .output()
        .context("run the --hold child")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "--hold {variant} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HELD "))
        .with_context(|| format!("--hold {variant} printed no result: {stdout}"))?;
    let mut fields = line.splitn(3, ' ');
    let held = fields.next().unwrap_or("0").parse()?;
    let grown_kib = fields.next().unwrap_or("0").parse()?;
    let error = fields.next().map(str::to_owned).filter(|e| !e.is_empty());
    Ok(Held {
        held,
        grown_kib,
        error,
    })
}

/// Child process: hold `count` idle instances of the trivial module and print
/// `HELD <held> <rss growth KiB> [error]`.
fn hold(variant: &str, count: usize) -> anyhow::Result<()> {
    let cfg = RuntimeConfig::default();
    let mut error = String::new();
    match variant {
        "raw" => {
            let bench = RawBench::new(&cfg, true)?;
            // One instance first so that lazily created engine state is not counted.
            bench.once()?;
            let before = rss_kib();
            let mut held: Vec<(Store<()>, Instance)> = Vec::with_capacity(count);
            for _ in 0..count {
                let mut store = bench.store()?;
                match bench.pre.instantiate(&mut store) {
                    Ok(instance) => held.push((store, instance)),
                    Err(e) => {
                        error = format!("{e:#}");
                        break;
                    }
                }
            }
            let grown = rss_kib().saturating_sub(before);
            println!("HELD {} {grown} {error}", held.len());
        }
        "vvm" => {
            let rt = Runtime::new(cfg)?;
            let module = rt.compile(TRIVIAL.as_bytes())?;
            drop(rt.instantiate_idle(&module)?);
            let before = rss_kib();
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                match rt.instantiate_idle(&module) {
                    Ok(instance) => held.push(instance),
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
            let grown = rss_kib().saturating_sub(before);
            println!("HELD {} {grown} {error}", held.len());
        }
        other => bail!("unknown --hold variant {other}: use raw or vvm"),
    }
    Ok(())
}
