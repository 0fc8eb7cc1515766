//! Who may say what (issue 12, items 1 and 2), through a member's API *and* as a modified
//! client would: with member B stopped, the test writes into B's own store changes that B's key
//! signs but B may not make — an endpoint for a name inside A's zone, and zones for `com.` and
//! for the mesh's own `nodes.voike.internal.` — and B serves them when it comes back.
//!
//! Every node keeps answering A's record for the name (the endpoint is never served, and
//! counted), the zones are refused when merged (`not_writer`, a trust event) and listed nowhere,
//! and node names keep resolving to their nodes.

use std::time::Duration;

use serde_json::json;
use voike_protocol::docs::{DocId, Replica, SignedChange};
use voike_protocol::endpoints::{self, EndpointInput};
use voike_protocol::hlc::Hlc;
use voike_protocol::zones;
use voike_storage::docs::put_change;
use voike_storage::{Store, keyfile};
use voike_tests::dns::{self, RecordType, answers};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn hlc() -> Hlc {
    Hlc {
        wall_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 1_000,
        counter: 0,
    }
}

fn one(change: Result<Option<SignedChange>, voike_protocol::docs::DocError>) -> SignedChange {
    change.expect("change").expect("a non-empty change")
}

/// B's key signs what B's own daemon refuses to write.
fn tamper(node: &TestNode) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (store, thread) = Store::open(&node.dir.join("state.redb"))?;
    let (key, _) = keyfile::load_or_create_identity(&node.dir.join("node.key"))?;
    let me = key.public().to_peer_id().to_string();

    let (stored, next_ep) = store.doc_changes(DocId::Endpoints)?;
    let mut r = Replica::new(DocId::Endpoints);
    r.load(stored)?;
    let input = endpoints::check_endpoint(&EndpointInput {
        service: "www.demo.mesh.".into(),
        address: "6.6.6.4".into(),
        port: 80,
        region: String::new(),
        capabilities: Vec::new(),
        weight: 100,
    })?;
    let shadow = one(r.change(&key, |tx| {
        endpoints::put_endpoint(tx, &me, &input, hlc()).map(|_| ())
    }));

    let (stored, next_z) = store.doc_changes(DocId::Zones)?;
    let mut r = Replica::new(DocId::Zones);
    r.load(stored)?;
    // The second builds on the first (one author's changes form a chain), so it falls with it;
    // the top-level-domain rule on its own is covered by the protocol's unit tests.
    let nodes = one(r.change(&key, |tx| {
        zones::create_zone(tx, "nodes", "nodes.voike.internal.", &me, hlc())
    }));
    let tld = one(r.change(&key, |tx| zones::create_zone(tx, "tld", "com.", &me, hlc())));
    rt.block_on(store.write(vec![
        put_change(next_ep, &shadow),
        put_change(next_z, &nodes),
        put_change(next_z + 1, &tld),
    ]))?;
    drop(store);
    thread.join();
    Ok(())
}

fn a_records(node: &TestNode, name: &str) -> anyhow::Result<Vec<String>> {
    let m = dns::udp(node.dns_addr()?, name, RecordType::A)?;
    Ok(answers(&m))
}

fn zone_ids(node: &TestNode) -> anyhow::Result<Vec<String>> {
    Ok(node.get("/vdns/zones")?.body["zones"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|z| z["id"].as_str().map(String::from))
        .collect())
}

#[test]
fn a_member_cannot_shadow_names_it_does_not_own_or_claim_reserved_and_top_level_domains()
-> anyhow::Result<()> {
    let a = TestNode::genesis("auth-a")?;
    let mut b = TestNode::join("auth-b", &a.invite("10m")?)?;
    let c = TestNode::join("auth-c", &a.invite("10m")?)?;
    for n in [&b, &c] {
        wait_for(DEADLINE, &format!("{} connected", n.name), || {
            a.sees_connected(&n.node_id)
        })?;
    }
    a.create_zone("demo", "demo.mesh.")?;
    a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    for n in [&a, &b, &c] {
        wait_for(DEADLINE, &format!("www on {}", n.name), || {
            Ok(a_records(n, "www.demo.mesh.")? == ["A 10.0.0.7"])
        })?;
    }

    // Through B's own API: refused with a reason.
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "www.demo.mesh", "address": "6.6.6.4", "port": 80 }),
    )?;
    assert_eq!(r.status, 403, "endpoint inside A's zone: {}", r.body);
    for (id, domain) in [
        ("tld", "com."),
        ("nodes", "nodes.voike.internal."),
        ("mesh", "voike.internal."),
    ] {
        let r = b.post("/vdns/zones", &json!({ "id": id, "domain": domain }))?;
        assert_eq!(r.status, 403, "zone {domain} by a member: {}", r.body);
    }
    // Even an admin may not take the mesh's node names.
    let r = a.post(
        "/vdns/zones",
        &json!({ "id": "nodes", "domain": "nodes.voike.internal." }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    // Outside every zone, a member's endpoint is fine.
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "api.free.mesh", "address": "10.0.9.9", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);

    // As a modified client: signed by B's key, served by B.
    b.stop()?;
    tamper(&b)?;
    b.restart()?;
    for n in [&a, &c] {
        wait_for(DEADLINE, &format!("{} refuses B's zones", n.name), || {
            Ok(
                n.metric("voike_sync_changes_rejected_total{reason=\"not_writer\"}")? >= 1.0
                    && n.metric("voike_sync_changes_rejected_total{reason=\"schema\"}")? >= 1.0,
            )
        })?;
        // The endpoint change itself is B's to write (its own entries), so it merges — and is
        // never served for a name in A's zone.
        wait_for(
            DEADLINE,
            &format!("{} holds B's endpoint, unserved", n.name),
            || {
                Ok(n.metric("voike_snrl_endpoints_unserved")? >= 1.0
                    || n.get("/snrl/endpoints?service=www.demo.mesh.")?.body["endpoints"]
                        .as_array()
                        .is_some_and(|e| !e.is_empty()))
            },
        )?;
    }
    for n in [&a, &b, &c] {
        assert_eq!(
            a_records(n, "www.demo.mesh.")?,
            ["A 10.0.0.7"],
            "{} lets B's endpoint shadow A's record",
            n.name
        );
        let answer = n.post(
            "/snrl/resolve",
            &json!({ "domain": "www.demo.mesh.", "client": {} }),
        )?;
        assert!(
            !answer.body.to_string().contains("6.6.6.4"),
            "{}: SNRL offers B's endpoint: {}",
            n.name,
            answer.body
        );
    }
    for n in [&a, &c] {
        let ids = zone_ids(n)?;
        assert_eq!(ids, ["demo"], "{}: {ids:?}", n.name);
        // A's node name still answers with A's address.
        let name = format!("{}.nodes.voike.internal.", a.node_id.to_ascii_lowercase());
        let got = a_records(n, &name)?;
        assert!(
            got.iter().all(|r| !r.contains("6.6.6")) && !got.is_empty(),
            "{}: {name} -> {got:?}",
            n.name
        );
    }
    Ok(())
}
