//! Grid figures on loopback with release daemons:
//! - time from `POST /grid/jobs` to the job being done (all segments gathered) for a 6-segment
//!   split Fibonacci job on a 3-node mesh, over TRIALS jobs (median, p99), with where the
//!   segments ran;
//! - jobs per second through one daemon: JOBS single-segment jobs submitted at once, time until
//!   all are done (every job is a signed document change, a ledger entry, a claim and a result).
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-grid -- [TRIALS] [JOBS]` (defaults 20, 200). Prints figures;
//! asserts nothing about speed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use voike_tests::{TestNode, percentile, wait_for};

fn upload(node: &TestNode, file: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let url = format!("{}/vvm/modules", node.api);
    let mut r = ureq::post(&url)
        .header("Authorization", &format!("Bearer {}", node.token))
        .send(&std::fs::read(path)?[..])?;
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
    Ok(body["module"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn state(node: &TestNode, id: &str) -> anyhow::Result<Value> {
    Ok(node.get(&format!("/grid/jobs/{id}"))?.body["job"].clone())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let jobs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let a = TestNode::spawn("bench-grid-a", &[])?;
    let b = TestNode::spawn("bench-grid-b", &["--join", &a.invite("10m")?])?;
    let c = TestNode::spawn("bench-grid-c", &["--join", &a.invite("10m")?])?;
    for n in [&b, &c] {
        wait_for(Duration::from_secs(60), "connected", || {
            a.sees_connected(&n.node_id)
        })?;
    }
    wait_for(Duration::from_secs(60), "all alive", || {
        Ok(a.get("/hypermesh/status")?.body["mesh"]["alive"] == 2)
    })?;
    let fib = upload(&a, "fib.wat")?;
    // Warm-up: every node fetches and compiles the module once.
    let warm = a.post(
        "/grid/jobs",
        &json!({ "module": fib, "entry": "fib_segment", "split": 6, "range": 600 }),
    )?;
    let warm = warm.body["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_for(Duration::from_secs(60), "warm-up done", || {
        Ok(state(&a, &warm)?["state"] == "done")
    })?;

    let mut times = Vec::new();
    let mut spread: HashMap<usize, usize> = HashMap::new();
    for t in 0..trials {
        let started = Instant::now();
        let r = a.post(
            "/grid/jobs",
            &json!({ "module": fib, "entry": "fib_segment", "split": 6, "range": 60_000 + t }),
        )?;
        let id = r.body["job"]["id"].as_str().unwrap_or_default().to_string();
        let mut last = Value::Null;
        wait_for(Duration::from_secs(60), "split job done", || {
            last = state(&a, &id)?;
            Ok(last["state"] == "done")
        })?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let runners: std::collections::HashSet<String> = last["result"]["runners"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        *spread.entry(runners.len()).or_default() += 1;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "6-segment split job, 3 nodes, submit → gathered result: median {:.1} ms, p99 {:.1} ms, min {:.1}, max {:.1} (n={trials}; polled every 50 ms)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[0],
        times[times.len() - 1]
    );
    let mut spread: Vec<_> = spread.into_iter().collect();
    spread.sort();
    println!("distinct runner nodes per job: {spread:?} (count of nodes, jobs)");

    // Throughput of one daemon: single-segment jobs, submitted back to back.
    let one = TestNode::spawn("bench-grid-one", &[])?;
    let fib1 = upload(&one, "fib.wat")?;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..jobs {
        let r = one.post(
            "/grid/jobs",
            &json!({ "module": fib1, "entry": "fib", "args": [(i % 90).to_string()] }),
        )?;
        ids.push(r.body["job"]["id"].as_str().unwrap_or_default().to_string());
    }
    let submitted = started.elapsed();
    wait_for(Duration::from_secs(600), "all jobs done", || {
        let r = one.get("/grid/jobs?state=done")?;
        Ok(r.body["jobs"].as_array().map_or(0, Vec::len) == jobs)
    })?;
    let all = started.elapsed();
    println!(
        "one node, {jobs} jobs: submitted in {:.2} s, all done after {:.2} s → {:.1} jobs/s end to end",
        submitted.as_secs_f64(),
        all.as_secs_f64(),
        jobs as f64 / all.as_secs_f64()
    );
    let m = one.metrics()?;
    for line in m.lines().filter(|l| {
        l.starts_with("voike_vvm_instantiate_seconds_sum")
            || l.starts_with("voike_vvm_instantiate_seconds_count")
            || l.starts_with("voike_vvm_run_seconds_sum")
            || l.starts_with("voike_vvm_run_seconds_count")
    }) {
        println!("  {line}");
    }
    Ok(())
}
