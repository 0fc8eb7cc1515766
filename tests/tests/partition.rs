//! Partitions in a network-namespace lab: three hosts on a bridge, one cut off with nftables
//! (every packet to and from the others dropped, unanswered) while all three write.
//!
//! During the cut no node lists the cut-off one as connected (a dead link is closed once its
//! ping fails, not kept until TCP gives up); after the heal, records and ledger heads are
//! identical on all three within 10 s, and in the minute after it neither of the two that stayed
//! together suspects the third (health reports flow again over a fresh connection).
//!
//! A cut of one link only (A–C, both still reaching B): the health reports of each reach the
//! other through B's gossipsub mesh, so neither declares the other down.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use voike_tests::netns::NetLab;
use voike_tests::{TestNode, http, wait_for};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn all_connected(nodes: &[&TestNode]) -> anyhow::Result<bool> {
    for a in nodes {
        for b in nodes {
            if a.node_id != b.node_id && !a.sees_connected(&b.node_id)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Every zone's record names, as one set, on `node`.
fn records(node: &TestNode, zones: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for z in zones {
        for n in node.record_names(z)? {
            out.insert(format!("{z}/{n}"));
        }
    }
    Ok(out)
}

fn heads(node: &TestNode) -> anyhow::Result<String> {
    let v = node.verify()?;
    anyhow::ensure!(v["ok"] == true, "verify: {v}");
    Ok(v["headsHash"].as_str().unwrap_or_default().to_string())
}

fn events(node: &TestNode) -> anyhow::Result<Vec<Value>> {
    let r = node.get("/hypermesh/events?since=0&limit=1000")?;
    Ok(r.body["events"].as_array().cloned().unwrap_or_default())
}

#[test]
fn a_cut_off_node_converges_within_ten_seconds_of_the_heal() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    let lab = NetLab::new(3)?;
    let mut a = TestNode::in_netns("part-a", lab.ns(0), &lab.ip(0), &[])?;
    a.start()?;
    let t1 = a.invite("10m")?;
    let mut b = TestNode::in_netns("part-b", lab.ns(1), &lab.ip(1), &["--join", &t1])?;
    b.start()?;
    let t2 = a.invite("10m")?;
    let mut c = TestNode::in_netns("part-c", lab.ns(2), &lab.ip(2), &["--join", &t2])?;
    c.start()?;
    wait_for(Duration::from_secs(60), "all three connected", || {
        all_connected(&[&a, &b, &c])
    })?;
    let zones = ["za", "zb", "zc"];
    a.grant_to(&b, "zb.mesh.")?;
    a.grant_to(&c, "zc.mesh.")?;
    for (node, z) in [(&a, "za"), (&b, "zb"), (&c, "zc")] {
        node.create_zone(z, &format!("{z}.mesh."))?;
    }
    wait_for(Duration::from_secs(30), "every zone everywhere", || {
        Ok([&a, &b, &c].iter().all(|n| {
            zones.iter().all(|z| {
                n.get(&format!("/vdns/zones/{z}/export"))
                    .is_ok_and(|r| r.status == 200)
            })
        }))
    })?;

    // Writers on all three, through the cut.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let writers: Vec<_> = [(&a, "za"), (&b, "zb"), (&c, "zc")]
        .into_iter()
        .map(|(node, z)| {
            let (api, token, stop, acked, z) = (
                node.api.clone(),
                node.token.clone(),
                stop.clone(),
                acked.clone(),
                z.to_string(),
            );
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("w{i}.{z}.mesh.");
                    let body = json!({ "zoneId": z, "record": { "type": "A", "name": name, "value": "10.0.0.1" } });
                    if let Ok(r) = http("POST", &api, "/vdns/records", Some(&token), Some(&body))
                        && r.status == 201
                    {
                        acked.lock().expect("lock").insert(format!("{z}/{name}"));
                    }
                    i += 1;
                    // Pace the writers (a write every ~100 ms per node), not a wait for a state.
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();

    lab.isolate(2)?;
    let cut_at = Instant::now();
    // A dead link is noticed: nobody lists the other side as connected during the cut.
    wait_for(
        Duration::from_secs(28),
        "the cut to be noticed on both sides",
        || {
            Ok(!a.sees_connected(&c.node_id)?
                && !b.sees_connected(&c.node_id)?
                && !c.sees_connected(&a.node_id)?
                && !c.sees_connected(&b.node_id)?
                && a.sees_connected(&b.node_id)?)
        },
    )?;
    let noticed = cut_at.elapsed();
    wait_for(Duration::from_secs(35), "30 s of partition", || {
        Ok(cut_at.elapsed() >= Duration::from_secs(30))
    })?;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.iter().any(|n| n.starts_with("zc/")),
        "C wrote during the cut"
    );

    lab.heal(2)?;
    let healed_at = Instant::now();
    let healed_ms = unix_ms();
    wait_for(
        Duration::from_secs(10),
        "identical records and ledger heads on all three",
        || {
            // Differences are errors, so that a timeout names the last one seen.
            let ra = records(&a, &zones)?;
            let (rb, rc) = (records(&b, &zones)?, records(&c, &zones)?);
            anyhow::ensure!(
                acked.is_subset(&ra) && rb == ra && rc == ra,
                "records differ: A {} B {} C {} (acknowledged {}, missing on A {})",
                ra.len(),
                rb.len(),
                rc.len(),
                acked.len(),
                acked.difference(&ra).count()
            );
            let (ha, hb, hc) = (heads(&a)?, heads(&b)?, heads(&c)?);
            anyhow::ensure!(
                ha == hb && hb == hc,
                "ledger heads differ: A {ha} B {hb} C {hc}"
            );
            Ok(true)
        },
    )?;
    let converged = healed_at.elapsed();
    eprintln!(
        "cut noticed after {noticed:?}; identical records and heads {converged:?} after the heal"
    );

    // The minute after the heal: C stays connected, and once A and B have seen it recover,
    // neither suspects it again.
    wait_for(Duration::from_secs(75), "60 s after the heal", || {
        anyhow::ensure!(
            a.sees_connected(&c.node_id)? && b.sees_connected(&c.node_id)?,
            "C disconnected after the heal"
        );
        Ok(healed_at.elapsed() >= Duration::from_secs(60))
    })?;
    for (name, node) in [("A", &a), ("B", &b)] {
        let evs: Vec<Value> = events(node)?
            .into_iter()
            .filter(|e| e["peer"] == c.node_id.as_str())
            .filter(|e| e["atMs"].as_u64().unwrap_or(0) >= healed_ms)
            .collect();
        let recovered = evs.iter().position(|e| e["kind"] == "peer_recovered");
        let after: Vec<&Value> = match recovered {
            Some(i) => evs[i + 1..].iter().collect(),
            None => evs.iter().collect(),
        };
        let false_suspicions: Vec<&&Value> = after
            .iter()
            .filter(|e| e["kind"] == "peer_suspect" || e["kind"] == "peer_down")
            .collect();
        assert!(
            false_suspicions.is_empty(),
            "{name} suspected the healthy, connected C after the heal: {false_suspicions:?}"
        );
    }
    Ok(())
}

/// `observer`'s failure detector's view of `who`.
fn state_of(observer: &TestNode, who: &str) -> anyhow::Result<Option<String>> {
    let s = observer.get("/hypermesh/status")?.body;
    Ok(s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["nodeId"] == who))
        .and_then(|p| p["state"].as_str().map(String::from)))
}

/// Health reports reach a member through the others when its own link to their author is cut
/// (gossipsub's mesh forwards them): with only the link between A and C cut, C keeps hearing A
/// through B, and neither declares the other down, while the cut link is still open (unused)
/// and after it is closed as dead.
#[test]
fn a_member_that_loses_one_link_is_still_heard_through_the_others() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    let lab = NetLab::new(3)?;
    // Fast heartbeats and a detector that declares a member down after 1.5 s of silence; pings
    // slow enough that the cut link stays open (and unused) for a while.
    let env = [
        ("VOIKED_HYPERMESH__HEARTBEAT_INTERVAL", "300ms"),
        ("VOIKED_HYPERMESH__MIN_DEAD", "1500ms"),
        ("VOIKED_P2P__PING_INTERVAL", "5s"),
        ("VOIKED_P2P__PING_TIMEOUT", "5s"),
    ];
    let mut a = TestNode::in_netns("link-a", lab.ns(0), &lab.ip(0), &[])?;
    a.set_env(&env);
    a.start()?;
    let t1 = a.invite("10m")?;
    let mut b = TestNode::in_netns("link-b", lab.ns(1), &lab.ip(1), &["--join", &t1])?;
    b.set_env(&env);
    b.start()?;
    let t2 = a.invite("10m")?;
    let mut c = TestNode::in_netns("link-c", lab.ns(2), &lab.ip(2), &["--join", &t2])?;
    c.set_env(&env);
    c.start()?;
    let nodes = [&a, &b, &c];
    wait_for(Duration::from_secs(60), "all three connected", || {
        all_connected(&nodes)
    })?;
    let cut_ms = unix_ms();
    lab.cut(0, 2)?;
    // Twenty seconds of the cut: the link itself stays open until its pings go unanswered for
    // 10 s, and the failure detector would declare a silent member down after 1.5 s.
    let start = Instant::now();
    wait_for(Duration::from_secs(25), "20 s of the cut", || {
        for (o, w, name) in [
            (&a, &c, "A sees C"),
            (&c, &a, "C sees A"),
            (&b, &a, "B sees A"),
        ] {
            let s = state_of(o, &w.node_id)?;
            if s.as_deref() != Some("alive") && s.as_deref() != Some("suspect") {
                panic!("{name}: {s:?} during the cut");
            }
        }
        Ok(start.elapsed() >= Duration::from_secs(20))
    })?;
    // The cut was real: the link between A and C was found dead and closed, while both kept
    // their links to B.
    wait_for(Duration::from_secs(15), "the cut link to be closed", || {
        Ok(!a.sees_connected(&c.node_id)?
            && !c.sees_connected(&a.node_id)?
            && a.sees_connected(&b.node_id)?
            && c.sees_connected(&b.node_id)?)
    })?;
    for (o, w, name) in [(&a, &c, "A"), (&c, &a, "C")] {
        let down: Vec<Value> = events(o)?
            .into_iter()
            .filter(|e| e["peer"] == w.node_id.as_str() && e["kind"] == "peer_down")
            .filter(|e| e["atMs"].as_u64().unwrap_or(0) >= cut_ms)
            .collect();
        assert!(
            down.is_empty(),
            "{name} declared a member heard through B down: {down:?}"
        );
    }
    Ok(())
}
