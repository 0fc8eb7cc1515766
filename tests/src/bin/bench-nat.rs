//! NAT traversal figures in the NAT lab (root, `ip`, `nft`): per trial, a fresh lab with two
//! public members P (Genesis) and Q and two members A and B behind their own routers; the time
//! from B's start until A and B are connected, whether the link ends up direct (hole punched)
//! or relayed, the time until it is direct, and after P stops, the time until A and B are
//! connected again (relay fallback). TRIALS trials per scenario (cone/cone, cone/symmetric,
//! symmetric/symmetric, and symmetric/symmetric where A's router offers UPnP — miniupnpd);
//! prints rates and medians with the load average. In the first trials of each scenario it also
//! counts P's idle traffic (bytes on its link, both ways, over 30 s from 90 s after B's start):
//! where A and B are relayed through P, the excess over the direct scenarios is what relaying
//! their idle link costs. Asserts nothing.
//!
//! `cargo build --release --workspace --bins && target/release/bench-nat [TRIALS [SCENARIO...]]`
//! (default 20, every scenario; scenarios: `cone`, `mixed`, `symmetric`, `upnp`).

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
        .find(|n| n["nodeId"] == to.node_id.as_str() && n["connected"] == true)
        .and_then(|n| n["connection"].as_str().map(String::from))
}

/// Trials of each scenario that also measure P's idle traffic, once the mesh has settled
/// (catch-up, AutoNAT probes and reservations done) `IDLE_SETTLE` after B's start.
const IDLE_TRIALS: usize = 3;
const IDLE_SETTLE: Duration = Duration::from_secs(90);
const IDLE_WINDOW: Duration = Duration::from_secs(30);

fn link_bytes(veth: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{f}")).ok()
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

struct Trial {
    /// P's idle traffic, bytes per second, when measured.
    idle_bps: Option<f64>,
    connected: Duration,
    direct: Option<Duration>,
    fallback: Option<Duration>,
}

fn trial(nats: [Nat; 2], upnp: bool, measure_idle: bool, tag: &str) -> anyhow::Result<Trial> {
    let lab = NatLab::new(2, &nats)?;
    let _upnpd = if upnp {
        Some(
            lab.start_upnp(0)?
                .ok_or_else(|| anyhow::anyhow!("miniupnpd is not installed"))?,
        )
    } else {
        None
    };
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
    let idle_bps = if measure_idle {
        let veth = lab.public_link(0);
        std::thread::sleep((t0 + IDLE_SETTLE).saturating_duration_since(Instant::now()));
        let before = link_bytes(&veth);
        std::thread::sleep(IDLE_WINDOW);
        Some((link_bytes(&veth) - before) as f64 / IDLE_WINDOW.as_secs_f64())
    } else {
        None
    };
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
        idle_bps,
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
    let chosen: Vec<String> = std::env::args().skip(2).collect();
    println!(
        "bench-nat: {trials} trials per scenario; load before {}",
        loadavg()
    );
    for (key, name, nats, upnp) in [
        ("cone", "cone/cone", [Nat::Cone, Nat::Cone], false),
        (
            "mixed",
            "cone/symmetric",
            [Nat::Cone, Nat::Symmetric],
            false,
        ),
        (
            "symmetric",
            "symmetric/symmetric",
            [Nat::Symmetric, Nat::Symmetric],
            false,
        ),
        (
            "upnp",
            "symmetric/symmetric, UPnP on A's router",
            [Nat::Symmetric, Nat::Symmetric],
            true,
        ),
    ] {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == key) {
            continue;
        }
        let mut results = Vec::new();
        let mut failures = 0;
        for i in 0..trials {
            match trial(nats, upnp, i < IDLE_TRIALS, &format!("bn{i}")) {
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
        let idle: Vec<f64> = results.iter().filter_map(|t| t.idle_bps).collect();
        let idle = if idle.is_empty() {
            "-".to_string()
        } else {
            let mut v = idle.clone();
            v.sort_by(f64::total_cmp);
            format!("{:.0} B/s (median of {})", v[v.len() / 2], v.len())
        };
        println!(
            "{name}: P's idle traffic {idle}; reachable {reached}/{trials}, direct {}/{trials}, join->connected median {}, \
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
