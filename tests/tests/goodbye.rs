//! A clean stop says goodbye: a node stopped with SIGTERM sends its members a signed leave, and
//! they record `peer_left` (event and ledger entry), not `peer_suspect`/`peer_down`, and advise
//! no spawn. A killed node still produces `peer_down`. A goodbye nobody answers does not hold
//! up the shutdown.

use std::time::{Duration, Instant};

use serde_json::Value;
use voike_tests::{TestNode, wait_for};

const CONFIG: &str = r#"
shutdown_timeout = "4s"

[hypermesh]
heartbeat_interval = "300ms"
sample_fast = "200ms"
sample_slow = "2s"
min_dead = "3s"
"#;
const DEADLINE: Duration = Duration::from_secs(60);
/// min_dead plus slack for phi to cross and for polling.
const DEAD_WITHIN: Duration = Duration::from_secs(15);

/// The kinds of `observer`'s events about `peer` (as the peer or the failed node).
fn event_kinds(observer: &TestNode, peer: &str) -> anyhow::Result<Vec<String>> {
    let e = observer.get("/hypermesh/events")?.body;
    Ok(e["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["peer"] == peer || e["failed"] == peer)
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect())
}

/// The kinds of the `hypermesh.*` entries about `peer` in `observer`'s own chain.
fn ledger_kinds(observer: &TestNode, peer: &str) -> anyhow::Result<Vec<String>> {
    let l = observer.get("/ledger/recent?limit=1000")?.body;
    Ok(l["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["author"] == observer.node_id.as_str())
        .filter(|e| e["body"]["peer"] == peer || e["body"]["failed"] == peer)
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .filter(|k| k.starts_with("hypermesh."))
        .collect())
}

fn state_of(observer: &TestNode, node_id: &str) -> anyhow::Result<Option<String>> {
    let s = observer.get("/hypermesh/status")?.body;
    Ok(s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["nodeId"] == node_id))
        .and_then(|p| p["state"].as_str().map(String::from)))
}

fn listed_as_left(observer: &TestNode, node_id: &str) -> anyhow::Result<bool> {
    let s: Value = observer.get("/hypermesh/status")?.body;
    Ok(s["left"]
        .as_array()
        .is_some_and(|l| l.iter().any(|l| l["nodeId"] == node_id)))
}

/// `n` nodes on fixed ports that all see each other alive.
fn mesh(prefix: &str, n: usize) -> anyhow::Result<(tempfile::TempDir, Vec<TestNode>)> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("voiked.toml");
    std::fs::write(&cfg, CONFIG)?;
    let cfg = cfg.to_string_lossy().to_string();
    let mut nodes = vec![TestNode::spawn_fixed(
        &format!("{prefix}-a"),
        &["--config", &cfg],
    )?];
    for i in 1..n {
        let ticket = nodes[0].invite("10m")?;
        let name = format!("{prefix}-{}", (b'a' + i as u8) as char);
        nodes.push(TestNode::spawn_fixed(
            &name,
            &["--config", &cfg, "--join", &ticket],
        )?);
    }
    for o in &nodes {
        for p in &nodes {
            if o.node_id != p.node_id {
                wait_for(
                    DEADLINE,
                    &format!("{} sees {} alive", o.name, p.name),
                    || Ok(state_of(o, &p.node_id)?.as_deref() == Some("alive")),
                )?;
            }
        }
    }
    Ok((dir, nodes))
}

#[test]
fn a_node_stopped_cleanly_is_recorded_as_left_and_a_killed_one_as_down() -> anyhow::Result<()> {
    let (_dir, mut nodes) = mesh("bye", 3)?;
    let leaver = nodes[2].node_id.clone();
    let status = nodes[2].stop()?;
    assert!(status.success(), "a clean stop exits 0: {status}");
    let log = nodes[2].log();
    assert!(
        log.contains("said goodbye to the members") && log.contains("members=2"),
        "both members acknowledged the leave: {log}"
    );
    for o in &nodes[..2] {
        wait_for(DEADLINE, &format!("{} records peer_left", o.name), || {
            Ok(event_kinds(o, &leaver)?.iter().any(|k| k == "peer_left"))
        })?;
        assert!(listed_as_left(o, &leaver)?, "{}: listed as left", o.name);
        assert_eq!(state_of(o, &leaver)?, None, "{}: no longer watched", o.name);
    }

    // Kill b: a declares it dead. b went silent after the leaver did, so by the time a holds b
    // dead, a would have declared the leaver dead too had it still been watching it.
    let killed = nodes[1].node_id.clone();
    nodes[1].kill()?;
    let at = Instant::now();
    wait_for(DEAD_WITHIN, "a declares the killed node dead", || {
        Ok(event_kinds(&nodes[0], &killed)?
            .iter()
            .any(|k| k == "peer_down"))
    })?;
    assert!(at.elapsed() <= DEAD_WITHIN);
    let kinds = event_kinds(&nodes[0], &leaver)?;
    assert_eq!(kinds, ["peer_left"], "a: only peer_left for the leaver");
    wait_for(
        DEADLINE,
        "hypermesh.peer_down of the killed node in a's ledger",
        || {
            Ok(ledger_kinds(&nodes[0], &killed)?
                .iter()
                .any(|k| k == "hypermesh.peer_down"))
        },
    )?;
    let ledger = ledger_kinds(&nodes[0], &leaver)?;
    assert_eq!(
        ledger,
        ["hypermesh.peer_left"],
        "a's ledger: peer_left for the leaver, no peer_down, no spawn_advisory"
    );

    // The leaver comes back: watched and alive again.
    nodes[2].restart()?;
    wait_for(DEADLINE, "a sees the leaver alive again", || {
        Ok(state_of(&nodes[0], &leaver)?.as_deref() == Some("alive")
            && !listed_as_left(&nodes[0], &leaver)?)
    })?;
    Ok(())
}

#[test]
fn a_goodbye_nobody_answers_does_not_hold_up_the_shutdown() -> anyhow::Result<()> {
    let (_dir, mut nodes) = mesh("bye-mute", 2)?;
    // b cannot answer while stopped.
    nodes[1].signal(nix::sys::signal::Signal::SIGSTOP)?;
    let result = (|| -> anyhow::Result<()> {
        let at = Instant::now();
        nodes[0].signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = nodes[0].wait_exit(Duration::from_secs(30))?;
        let took = at.elapsed();
        assert!(status.success(), "{status}");
        // The unit's bound: 2 x shutdown_timeout (4s).
        assert!(took < Duration::from_secs(8), "stopped after {took:?}");
        let log = nodes[0].log();
        assert!(
            log.contains("members did not answer the goodbye in time"),
            "{log}"
        );
        Ok(())
    })();
    nodes[1].signal(nix::sys::signal::Signal::SIGCONT)?;
    result
}
