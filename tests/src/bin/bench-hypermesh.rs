//! Hypermesh figures on loopback:
//! - idle footprint of each node of a 5-node mesh (default settings) after IDLE_SECS: RSS, CPU %,
//!   wake-ups (context switches over all threads) per second, health gossip bytes per second;
//! - gossip bytes per node per second while the machine's load changes every second;
//! - failure detection: kill -9 one node → `peer_down` on every survivor, over TRIALS trials,
//!   with short settings (heartbeat 300 ms, min_dead 1.5 s) and, once, with the defaults
//!   (heartbeat 5 s, min_dead 15 s);
//! - false positives: transitions counted on a steady 4-node mesh (short settings) over
//!   STEADY_SECS.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-hypermesh -- [IDLE_SECS] [TRIALS] [STEADY_SECS]` (defaults 120, 20,
//! 600). Prints figures; asserts nothing about speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use voike_tests::{TestNode, percentile, proc_sample, wait_for};

const SHORT: &str = r#"
[hypermesh]
heartbeat_interval = "300ms"
sample_fast = "200ms"
sample_slow = "2s"
min_dead = "1500ms"
"#;

fn mesh(prefix: &str, n: usize, config: Option<&str>) -> anyhow::Result<Vec<TestNode>> {
    let cfg_args: Vec<String> = match config {
        Some(c) => vec!["--config".into(), c.into()],
        None => vec![],
    };
    let args: Vec<&str> = cfg_args.iter().map(String::as_str).collect();
    let mut nodes = vec![TestNode::spawn_fixed(&format!("{prefix}-0"), &args)?];
    for i in 1..n {
        let ticket = nodes[0].invite("1h")?;
        let mut a = args.clone();
        a.extend(["--join", ticket.as_str()]);
        nodes.push(TestNode::spawn_fixed(&format!("{prefix}-{i}"), &a)?);
    }
    for o in &nodes {
        for p in &nodes {
            if o.node_id != p.node_id {
                wait_for(Duration::from_secs(120), "all alive", || {
                    Ok(state_of(o, &p.node_id)?.as_deref() == Some("alive"))
                })?;
            }
        }
    }
    Ok(nodes)
}

fn state_of(o: &TestNode, id: &str) -> anyhow::Result<Option<String>> {
    let s = o.get("/hypermesh/status")?.body;
    Ok(s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["nodeId"] == id))
        .and_then(|p| p["state"].as_str().map(String::from)))
}

fn gossip_bytes(n: &TestNode) -> anyhow::Result<f64> {
    Ok(
        n.metric("voike_hypermesh_gossip_bytes_total{direction=\"out\"}")?
            + n.metric("voike_hypermesh_gossip_bytes_total{direction=\"in\"}")?,
    )
}

fn transitions(n: &TestNode) -> anyhow::Result<f64> {
    Ok(
        n.metric("voike_hypermesh_transitions_total{state=\"suspect\"}")?
            + n.metric("voike_hypermesh_transitions_total{state=\"dead\"}")?,
    )
}

/// Kills the last node; returns ms until every survivor lists it dead.
fn detect(nodes: &mut [TestNode], deadline: Duration) -> anyhow::Result<f64> {
    let last = nodes.len() - 1;
    let victim = nodes[last].node_id.clone();
    nodes[last].kill()?;
    let t = Instant::now();
    let (survivors, _) = nodes.split_at(last);
    let poll_all = || -> anyhow::Result<bool> {
        for o in survivors {
            if state_of(o, &victim)?.as_deref() != Some("dead") {
                return Ok(false);
            }
        }
        Ok(true)
    };
    while !poll_all()? {
        anyhow::ensure!(t.elapsed() < deadline, "not detected within {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let idle_secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(120);
    let trials: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let steady_secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(600);
    println!("voiked binary: {}", voike_tests::bin("voiked").display());
    let dir = tempfile::tempdir()?;
    let short = dir.path().join("short.toml");
    std::fs::write(&short, SHORT)?;
    let short = short.to_string_lossy().to_string();

    // ---- idle footprint, defaults ------------------------------------------------------
    let mut nodes = mesh("bhm-idle", 5, None)?;
    let ticks = 100.0; // USER_HZ
    let before: Vec<(u64, u64, u64)> = nodes
        .iter()
        .map(|n| proc_sample(n.pid().unwrap_or(0)))
        .collect::<anyhow::Result<_>>()?;
    let bytes_before: Vec<f64> = nodes
        .iter()
        .map(gossip_bytes)
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let secs = t.elapsed().as_secs_f64();
    println!("idle, 5-node mesh, default settings, {idle_secs} s:");
    for (i, n) in nodes.iter().enumerate() {
        let (cpu1, sw1, rss) = proc_sample(n.pid().unwrap_or(0))?;
        let (cpu0, sw0, _) = before[i];
        let b = gossip_bytes(n)? - bytes_before[i];
        println!(
            "  {}: RSS {:.1} MiB, CPU {:.3} %, {:.1} wake-ups/s, health gossip {:.0} B/s",
            n.name,
            rss as f64 / 1024.0,
            (cpu1 - cpu0) as f64 / ticks / secs * 100.0,
            (sw1 - sw0) as f64 / secs,
            b / secs
        );
    }

    // ---- gossip with changing load ---------------------------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // Busy during odd seconds, idle during even ones.
                if start.elapsed().as_secs() % 2 == 1 {
                    std::hint::black_box((0..10_000u64).sum::<u64>());
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let bytes_before: Vec<f64> = nodes
        .iter()
        .map(gossip_bytes)
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = burner.join();
    let rates: Vec<String> = nodes
        .iter()
        .zip(&bytes_before)
        .map(|(n, b)| Ok(format!("{:.0}", (gossip_bytes(n)? - b) / secs)))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "health gossip with the machine's load switching every second (30 s), B/s per node: {}",
        rates.join(", ")
    );

    // ---- detection, defaults (one trial) -------------------------------------------------
    let ms = detect(&mut nodes, Duration::from_secs(120))?;
    println!("detection with defaults (heartbeat 5 s, min_dead 15 s), 1 trial: {ms:.0} ms");
    drop(nodes);

    // ---- detection, short settings ------------------------------------------------------
    let mut times = Vec::new();
    let mut base = mesh("bhm-det", 3, Some(&short))?;
    for i in 0..trials {
        let ticket = base[0].invite("1h")?;
        let victim = TestNode::spawn_fixed(
            &format!("bhm-v{i}"),
            &["--config", &short, "--join", &ticket],
        )?;
        base.push(victim);
        for o in &base[..3] {
            let id = base[3].node_id.clone();
            wait_for(Duration::from_secs(60), "victim alive", || {
                Ok(state_of(o, &id)?.as_deref() == Some("alive"))
            })?;
        }
        let ms = detect(&mut base, Duration::from_secs(60))?;
        println!("  trial {i}: {ms:.0} ms");
        times.push(ms);
        base.pop();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "detection (kill -9 → dead on all 3 survivors), short settings (heartbeat 300 ms, min_dead 1.5 s), {trials} trials: median {:.0} ms, max {:.0} ms",
        percentile(&times, 0.5),
        times[times.len() - 1]
    );
    drop(base);

    // ---- false positives ----------------------------------------------------------------
    let steady = mesh("bhm-steady", 4, Some(&short))?;
    let before: Vec<f64> = steady
        .iter()
        .map(transitions)
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_secs(steady_secs));
    let after: Vec<f64> = steady
        .iter()
        .map(transitions)
        .collect::<anyhow::Result<_>>()?;
    let fp: f64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    println!(
        "false positives, steady 4-node mesh, short settings, {steady_secs} s: {fp} suspect/dead transitions in total"
    );
    Ok(())
}
