//! Replicated state between real `voiked` processes: records written on one node reach every
//! other, ledgers converge to identical heads, and offline writes merge when nodes meet again.

use std::time::Duration;

use serde_json::json;
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// A Genesis node and `n` members, all connected to Genesis, on fixed ports (so that nodes that
/// restart can find each other again).
fn mesh(prefix: &str, n: usize) -> anyhow::Result<Vec<TestNode>> {
    let genesis = TestNode::spawn_fixed(&format!("{prefix}-a"), &[])?;
    let mut nodes = vec![genesis];
    for i in 0..n {
        let ticket = nodes[0].invite("10m")?;
        let name = format!("{prefix}-{}", (b'b' + i as u8) as char);
        nodes.push(TestNode::spawn_fixed(&name, &["--join", &ticket])?);
    }
    for n in &nodes[1..] {
        wait_for(DEADLINE, &format!("{} connected", n.name), || {
            nodes[0].sees_connected(&n.node_id)
        })?;
    }
    Ok(nodes)
}

/// Waits until every node's ledger verifies and all report the same heads hash.
fn ledgers_converge(nodes: &[&TestNode]) -> anyhow::Result<String> {
    let mut hash = String::new();
    wait_for(DEADLINE, "identical, verified ledgers everywhere", || {
        let mut hashes = Vec::new();
        for n in nodes {
            let v = n.verify()?;
            anyhow::ensure!(v["ok"] == true, "ledger of {} does not verify: {v}", n.name);
            hashes.push(v["headsHash"].as_str().unwrap_or_default().to_string());
        }
        hash = hashes[0].clone();
        Ok(hashes.iter().all(|h| *h == hashes[0]))
    })?;
    Ok(hash)
}

#[test]
fn a_record_written_on_one_node_reaches_five_and_ledgers_match() -> anyhow::Result<()> {
    let nodes = mesh("repl5", 4)?;
    let a = &nodes[0];
    a.create_zone("demo", "demo.mesh.")?;
    a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    for n in &nodes[1..] {
        wait_for(DEADLINE, &format!("record on {}", n.name), || {
            Ok(n.record_names("demo")? == ["www.demo.mesh."])
        })?;
        let zones = n.get("/vdns/zones")?.body;
        assert_eq!(zones["zones"][0]["id"], "demo", "{zones}");
        assert_eq!(zones["zones"][0]["owners"][0], a.node_id.as_str());
    }
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let hash = ledgers_converge(&refs)?;
    assert_eq!(hash.len(), 64);
    // The writes are in A's chain, on every node.
    for n in &nodes {
        let kinds: Vec<String> = n.get("/ledger/recent?limit=200")?.body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|e| e["author"] == a.node_id.as_str())
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect();
        assert!(
            kinds.contains(&"zone.create".to_string()),
            "{}: {kinds:?}",
            n.name
        );
        assert!(
            kinds.contains(&"record.add".to_string()),
            "{}: {kinds:?}",
            n.name
        );
    }
    // Sync is visible in metrics.
    let m = nodes[1].metrics()?;
    assert!(
        m.contains("voike_sync_changes_applied_total{doc=\"zones\"}"),
        "{m}"
    );
    assert!(m.contains("voike_ledger_chain_length{"), "{m}");
    Ok(())
}

#[test]
fn offline_writes_on_both_sides_merge_when_nodes_meet() -> anyhow::Result<()> {
    let mut nodes = mesh("offline", 2)?;
    nodes[0].create_zone("demo", "demo.mesh.")?;
    let b_id = nodes[1].node_id.clone();
    let r = nodes[0].post("/vdns/zones/demo/owners", &json!({ "node": b_id }))?;
    assert_eq!(r.status, 200, "{}", r.body);
    for n in &nodes[1..] {
        wait_for(
            DEADLINE,
            &format!("zone with two owners on {}", n.name),
            || {
                let z = n.get("/vdns/zones")?.body;
                Ok(z["zones"][0]["owners"].as_array().map(|o| o.len()) == Some(2))
            },
        )?;
    }

    // B and C go away; A writes alone, then goes away too. (B and C come back on their ports:
    // they must find each other without A.)
    nodes[1].stop()?;
    nodes[2].stop()?;
    nodes[0].add_a("demo", "a.demo.mesh.", "10.0.0.1")?;
    nodes[0].stop()?;

    // B and C come back without A; B writes.
    nodes[1].restart()?;
    nodes[2].restart()?;
    let (b, c) = (&nodes[1], &nodes[2]);
    wait_for(DEADLINE, "B and C reconnect", || {
        b.sees_connected(&c.node_id)
    })?;
    b.add_a("demo", "b.demo.mesh.", "10.0.0.2")?;
    wait_for(DEADLINE, "B's write on C", || {
        Ok(c.record_names("demo")? == ["b.demo.mesh."])
    })?;

    // A returns: everyone ends with both writes and the same verified ledger.
    nodes[0].restart()?;
    for n in &nodes {
        wait_for(DEADLINE, &format!("both writes on {}", n.name), || {
            Ok(n.record_names("demo")? == ["a.demo.mesh.", "b.demo.mesh."])
        })?;
    }
    let refs: Vec<&TestNode> = nodes.iter().collect();
    ledgers_converge(&refs)?;
    Ok(())
}

#[test]
fn bad_input_is_refused_with_the_field_named_and_nothing_written() -> anyhow::Result<()> {
    let a = TestNode::genesis("vdns-input")?;
    a.create_zone("demo", "demo.mesh.")?;
    let before = a.verify()?["entries"].as_u64().unwrap_or(0);
    let bad = [
        (
            json!({ "zoneId": "demo", "record": { "type": "A", "name": "x.demo.mesh.", "value": "300.1.1.1" } }),
            "record.value",
        ),
        (
            json!({ "zoneId": "demo", "record": { "type": "BOGUS", "name": "x.demo.mesh.", "value": "1.1.1.1" } }),
            "record.type",
        ),
        (
            json!({ "zoneId": "demo", "record": { "type": "A", "name": "x.other.mesh.", "value": "1.1.1.1" } }),
            "record.name",
        ),
        (
            json!({ "zoneId": "demo", "record": { "type": "A", "name": "x.demo.mesh.", "value": "1.1.1.1", "ttl": 4_294_967_296u64 } }),
            "record.ttl",
        ),
        (
            json!({ "zoneId": "demo", "record": { "type": "A", "name": "x..demo.mesh.", "value": "1.1.1.1" } }),
            "record.name",
        ),
    ];
    for (body, field) in bad {
        let r = a.post("/vdns/records", &body)?;
        assert_eq!(r.status, 400, "{body} → {}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "{body}: message {msg:?} should name {field}"
        );
    }
    let r = a.post("/vdns/records", &json!({ "zoneId": "nope", "record": { "type": "A", "name": "x.nope.", "value": "1.1.1.1" } }))?;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = a.post("/vdns/records", &json!({ "zoneId": "demo" }))?;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = a.post(
        "/vdns/zones",
        &json!({ "id": "Bad Id", "domain": "x.mesh." }),
    )?;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = a.post(
        "/vdns/zones",
        &json!({ "id": "demo", "domain": "demo2.mesh." }),
    )?;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(a.get("/vdns/records")?.status, 400);
    assert_eq!(a.get("/vdns/records?zoneId=nope")?.status, 404);
    assert!(a.record_names("demo")?.is_empty(), "nothing was written");
    assert_eq!(a.verify()?["entries"].as_u64().unwrap_or(0), before);

    // A good record, then its deletion.
    let id = a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    assert_eq!(a.record_names("demo")?, ["www.demo.mesh."]);
    let r = a.delete(&format!("/vdns/records/{id}"))?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(a.record_names("demo")?.is_empty());
    assert_eq!(a.delete(&format!("/vdns/records/{id}"))?.status, 404);
    Ok(())
}
