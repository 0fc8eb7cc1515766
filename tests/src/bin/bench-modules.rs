//! What many large modules cost a runner: the resident memory (VmRSS) of one release daemon
//! - after it started and ran one small job (the baseline),
//! - after RUNS runs of one large module (the same-run comparison: one module compiled once),
//! - after MODULES distinct large modules, each uploaded (compiled) and run once: the compiled
//!   module cache is bounded at `MODULE_CACHE_BYTES`, so this should level off rather than
//!   grow by MODULES times a module's compiled size;
//!
//! with each module's size (wasm and compiled, measured in-process with the VVM's engine
//! settings), the median upload (compile) time, and the load average next to the figures.
//!
//! Run with release binaries: `cargo build --release -p voiked --bin voiked && cargo run
//! --release -p voike-tests --bin bench-modules -- [MODULES] [RUNS] [FUNCTIONS]` (defaults 100,
//! 100, 2000). Prints figures; asserts nothing about speed.

use std::time::{Duration, Instant};

use serde_json::json;
use voike_tests::grid_util::{first_result, job_finished, submit_job, upload_ok};
use voike_tests::{TestNode, percentile, proc_sample};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    leb(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// A wasm binary of `functions` functions `(i32) -> i32`, each a chain of 100 arithmetic steps
/// on constants drawn from `seed` (so that every seed gives a distinct module); function 0 is
/// exported as `run`. Within the default module limits.
fn large_module(seed: u64, functions: u32) -> Vec<u8> {
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(&mut wasm, 1, &[1, 0x60, 1, 0x7f, 1, 0x7f]);
    let mut funcs = Vec::new();
    leb(&mut funcs, u64::from(functions));
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    section(&mut wasm, 3, &funcs);
    section(&mut wasm, 7, &[1, 3, b'r', b'u', b'n', 0, 0]);
    let mut code = Vec::new();
    leb(&mut code, u64::from(functions));
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..functions {
        let mut body = vec![0u8, 0x20, 0]; // no locals; local.get 0
        for step in 0..100u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push(0x41); // i32.const
            sleb(&mut body, i64::from(x as i32));
            body.push([0x6a, 0x6c, 0x73][(step % 3) as usize]); // i32.add, i32.mul, i32.xor
        }
        body.push(0x0b);
        leb(&mut code, body.len() as u64);
        code.extend_from_slice(&body);
    }
    section(&mut wasm, 10, &code);
    wasm
}

fn rss_kib(node: &TestNode) -> anyhow::Result<u64> {
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node not running"))?;
    Ok(proc_sample(pid)?.2)
}

fn run_once(node: &TestNode, module: &str) -> anyhow::Result<()> {
    let id = submit_job(
        node,
        &json!({ "module": module, "entry": "run", "args": ["7"] }),
    )?;
    let j = job_finished(node, &id, Duration::from_secs(120))?;
    anyhow::ensure!(
        j["state"] == "done",
        "job {id}: {}",
        first_result(&j, 0)["status"]
    );
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let modules: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let functions: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);

    // A module's compiled size with the VVM's own engine settings.
    let probe = large_module(0, functions);
    let rt = voike_runtime::Runtime::new(voike_runtime::RuntimeConfig {
        max_instances: 4,
        ..voike_runtime::RuntimeConfig::default()
    })?;
    let compiled = rt.compile(&probe)?.code_bytes();
    drop(rt);

    let node = TestNode::spawn("bench-modules", &[])?;
    let fib = upload_ok(
        &node,
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fib.wat"),
        )?,
    )?;
    let id = submit_job(
        &node,
        &json!({ "module": fib, "entry": "fib", "args": ["20"] }),
    )?;
    job_finished(&node, &id, Duration::from_secs(60))?;
    let baseline = rss_kib(&node)?;
    let load0 = loadavg();

    // The comparison point: one large module, compiled once, run RUNS times.
    let one = upload_ok(&node, &large_module(1, functions))?;
    for _ in 0..runs {
        run_once(&node, &one)?;
    }
    let after_one = rss_kib(&node)?;
    let load1 = loadavg();

    // MODULES distinct large modules, each compiled at upload and run once.
    let mut uploads = Vec::new();
    let mut peak = after_one;
    let mut samples = Vec::new();
    for seed in 0..modules {
        let wasm = large_module(1000 + seed, functions);
        let started = Instant::now();
        let hash = upload_ok(&node, &wasm)?;
        uploads.push(started.elapsed().as_secs_f64() * 1000.0);
        run_once(&node, &hash)?;
        let rss = rss_kib(&node)?;
        peak = peak.max(rss);
        if (seed + 1) % 25 == 0 {
            samples.push(format!("{}: {:.0} MiB", seed + 1, mib(rss)));
        }
    }
    let after_many = rss_kib(&node)?;
    let load2 = loadavg();
    uploads.sort_by(f64::total_cmp);

    println!(
        "module: {functions} functions, {} KiB wasm, {:.1} MiB compiled; cache bound {} MiB \
         ({:.0} such modules)",
        probe.len() / 1024,
        compiled as f64 / (1 << 20) as f64,
        voiked::grid::MODULE_CACHE_BYTES >> 20,
        voiked::grid::MODULE_CACHE_BYTES as f64 / compiled.max(1) as f64
    );
    println!(
        "RSS baseline (started, one fib job): {:.0} MiB  [load {load0}]",
        mib(baseline)
    );
    println!(
        "RSS after {runs} runs of one large module: {:.0} MiB  [load {load1}]",
        mib(after_one)
    );
    println!(
        "RSS after {modules} distinct large modules (each compiled and run once): {:.0} MiB, \
         peak {:.0} MiB  [load {load2}]",
        mib(after_many),
        mib(peak)
    );
    println!("RSS along the way: {}", samples.join(", "));
    println!(
        "upload (compile) time per module: median {:.0} ms, p99 {:.0} ms",
        percentile(&uploads, 0.5),
        percentile(&uploads, 0.99)
    );
    println!(
        "cache: {} hits, {} misses",
        node.metric("voike_vvm_module_cache_total{result=\"hit\"}")
            .unwrap_or(0.0),
        node.metric("voike_vvm_module_cache_total{result=\"miss\"}")
            .unwrap_or(0.0)
    );
    Ok(())
}
