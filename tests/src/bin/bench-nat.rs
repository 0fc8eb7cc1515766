//! NAT traversal figures in the NAT lab (root, `ip`, `nft`): per trial, a fresh lab with two
//! public members P (Genesis) and Q and two members A and B behind their own routers; the time
//! from B's start until A and B are connected, whether the link ends up direct (hole punched)
//! or relayed, the time until it is direct, and after P stops, the time until A and B are
//! connected again (relay fallback). TRIALS trials per scenario (cone/cone, symmetric/
//! symmetric); prints rates and medians with the load average. Asserts nothing.
//!
//! `cargo build --release --workspace --bins && target/release/bench-nat [TRIALS]` (default 20).

use std::time::{Duration, Instant};

use voike_tests::natlab::{Nat, NatLab};
use voike_tests::{TestNode, wait_for};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn path(from: &TestNode, to: &TestNode) -> Option<String> {
    from.nodes()
        .ok()?
        .iter()
        .find(|n| n["node_id"] == to.node_id.as_str() && n["connected"] == true)
        .and_then(|n| n["connection"].as_str().map(String::from))
}

struct Trial {
    connected: Duration,
    direct: Option<Duration>,
    fallback: Option<Duration>,
}

fn trial(nats: [Nat; 2], tag: &str) -> anyhow::Result<Trial> {
    let lab = NatLab::new(2, &nats)?;
    let mut p = TestNode::in_netns(
        &format!("{tag}-p"),
        lab.public_ns(0),
        &lab.public_ip(0),
        &[],
    )?;
    p.start()?;
    let mut q = TestNode::in_netns(
        &format!("{tag}-q"),
        lab.public_ns(1),
        &lab.public_ip(1),
        &["--join", &p.invite("10m")?],
    )?;
    q.start()?;
    let mut a = TestNode::in_netns(
        &format!("{tag}-a"),
        lab.private_ns(0),
        &lab.private_ip(0),
        &["--join", &p.invite("10m")?],
    )?;
    a.start()?;
    let ticket = p.invite("10m")?;
    let t0 = Instant::now();
    let mut b = TestNode::in_netns(
        &format!("{tag}-b"),
        lab.private_ns(1),
        &lab.private_ip(1),
        &["--join", &ticket],
    )?;
    b.start()?;
    wait_for(Duration::from_secs(90), "A and B connected", || {
        Ok(path(&a, &b).is_some() && path(&b, &a).is_some())
    })?;
    let connected = t0.elapsed();
    // Direct within 30 s of the join, or not.
    let deadline = t0 + Duration::from_secs(30);
    let mut direct = None;
    while Instant::now() < deadline {
        if path(&a, &b).as_deref() == Some("direct") {
            direct = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p.stop()?;
    let t1 = Instant::now();
    // The link may drop (it went through P) and come back, through Q or directly.
    std::thread::sleep(Duration::from_millis(200));
    let mut fallback = None;
    while t1.elapsed() < Duration::from_secs(60) {
        if path(&a, &b).is_some() && path(&b, &a).is_some() {
            fallback = Some(t1.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((a, b, q));
    Ok(Trial {
        connected,
        direct,
        fallback,
    })
}

fn median(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    format!("{:.2} s", v[v.len() / 2].as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = voike_tests::netns::unavailable() {
        anyhow::bail!("network namespaces unavailable: {why}");
    }
    let trials: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    println!(
        "bench-nat: {trials} trials per scenario; load before {}",
        loadavg()
    );
    for (name, nats) in [
        ("cone/cone", [Nat::Cone, Nat::Cone]),
        ("symmetric/symmetric", [Nat::Symmetric, Nat::Symmetric]),
    ] {
        let mut results = Vec::new();
        let mut failures = 0;
        for i in 0..trials {
            match trial(nats, &format!("bn{i}")) {
                Ok(t) => results.push(t),
                Err(e) => {
                    failures += 1;
                    eprintln!("{name} trial {i}: {e:#}");
                }
            }
        }
        let reached = results.len();
        let direct: Vec<Duration> = results.iter().filter_map(|t| t.direct).collect();
        let fallback: Vec<Duration> = results.iter().filter_map(|t| t.fallback).collect();
        println!(
            "{name}: reachable {reached}/{trials}, direct {}/{trials}, join->connected median {}, \
             join->direct median {}, relay loss->connected {}/{reached} median {} (failures {failures}); load {}",
            direct.len(),
            median(results.iter().map(|t| t.connected).collect()),
            median(direct.clone()),
            fallback.len(),
            median(fallback.clone()),
            loadavg()
        );
    }
    Ok(())
}
