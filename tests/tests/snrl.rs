//! SNRL on real `voiked` processes: endpoints registered over the API, candidates ranked by
//! region, capability, weight and Hypermesh health, answers signed by the answering node (and
//! refused by the verifier after any change), service names over DNS.

use std::time::Duration;

use serde_json::{Value, json};
use voike_protocol::snrl::SignedAnswer;
use voike_tests::dns::{self, RData, RecordType};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// Short Hypermesh timings so that a killed node is declared dead within seconds.
const ENV: &[(&str, &str)] = &[
    ("VOIKED_HYPERMESH__HEARTBEAT_INTERVAL", "300ms"),
    ("VOIKED_HYPERMESH__SAMPLE_FAST", "200ms"),
    ("VOIKED_HYPERMESH__SAMPLE_SLOW", "2s"),
    ("VOIKED_HYPERMESH__MIN_DEAD", "3s"),
];

fn register(
    node: &TestNode,
    address: &str,
    region: &str,
    caps: &[&str],
    weight: u32,
) -> anyhow::Result<String> {
    let r = node.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh.", "address": address, "port": 443,
                 "region": region, "capabilities": caps, "weight": weight }),
    )?;
    anyhow::ensure!(
        r.status == 201,
        "register {address}: {} {}",
        r.status,
        r.body
    );
    Ok(r.body["endpoint"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn resolve(node: &TestNode, region: &str, caps: &[&str]) -> anyhow::Result<Value> {
    let r = node.post(
        "/snrl/resolve",
        &json!({ "domain": "api.demo.mesh.", "client": { "region": region, "capabilities": caps } }),
    )?;
    anyhow::ensure!(r.status == 200, "resolve: {} {}", r.status, r.body);
    Ok(r.body)
}

fn addresses(answer: &Value) -> Vec<String> {
    answer["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["address"].as_str().map(String::from))
        .collect()
}

#[test]
fn ranking_follows_region_capability_and_weight_and_answers_are_signed() -> anyhow::Result<()> {
    let node = TestNode::spawn("snrl-rank", &[])?;
    register(&node, "10.0.0.1", "us", &["http"], 100)?;
    register(&node, "10.0.0.2", "eu", &["http"], 100)?;
    register(&node, "10.0.0.3", "eu", &[], 100)?;
    register(&node, "10.0.0.4", "eu", &["http"], 1000)?;
    let eu = resolve(&node, "eu", &["http"])?;
    assert_eq!(
        addresses(&eu),
        ["10.0.0.4", "10.0.0.2", "10.0.0.3", "10.0.0.1"],
        "{eu}"
    );
    let us = resolve(&node, "us", &["http"])?;
    assert_eq!(
        addresses(&us)[0],
        "10.0.0.1",
        "the client's region first: {us}"
    );
    let scores: Vec<u64> = eu["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["scorePpm"].as_u64())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "scores descend: {scores:?}"
    );

    // Signed by the answering node; any change breaks the signature.
    let signed: SignedAnswer = serde_json::from_value(eu.clone())?;
    assert_eq!(signed.signer, node.node_id);
    signed.verify()?;
    assert!(eu["issuedAt"].as_u64().is_some() && eu["ttl"].as_u64().is_some());
    let mut tampered = Vec::new();
    for (path, value) in [
        ("/candidates/0/address", json!("10.6.6.6")),
        ("/candidates/1/port", json!(8443)),
        ("/candidates/0/scorePpm", json!(1)),
        ("/issuedAt", json!(1)),
        ("/ttl", json!(86_400)),
        ("/domain", json!("evil.demo.mesh.")),
        ("/client/region", json!("us")),
    ] {
        let mut v = eu.clone();
        *v.pointer_mut(path).expect("field") = value;
        let t: SignedAnswer = serde_json::from_value(v)?;
        tampered.push((path, t.verify().is_err()));
    }
    let mut swapped = eu.clone();
    if let Some(c) = swapped["candidates"].as_array_mut() {
        c.swap(0, 1);
    }
    let t: SignedAnswer = serde_json::from_value(swapped)?;
    tampered.push(("candidate order", t.verify().is_err()));
    assert!(tampered.iter().all(|(_, refused)| *refused), "{tampered:?}");

    // The service name answers over DNS (inside a served zone): ranked A records and the TXT.
    node.create_zone("demo", "demo.mesh.")?;
    let addr = node.dns_addr()?;
    wait_for(DEADLINE, "api.demo.mesh. over DNS", || {
        let m = dns::udp(addr, "api.demo.mesh.", RecordType::A)?;
        Ok(m.answers.len() == 4)
    })?;
    let m = dns::udp(addr, "api.demo.mesh.", RecordType::A)?;
    assert_eq!(
        dns::answers(&m)[0],
        "A 10.0.0.4",
        "heaviest first for a client without a region"
    );
    let txt = m
        .additionals
        .iter()
        .find_map(|r| match &r.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(
        txt.contains(&format!("signer={}", node.node_id)) && txt.contains("sig="),
        "{txt}"
    );
    let t = dns::tcp(addr, "api.demo.mesh.", RecordType::TXT)?;
    assert!(
        dns::answers(&t)[0].contains("snrl=v1"),
        "{:?}",
        dns::answers(&t)
    );

    // Bad input names the field; nothing is written.
    let bad = node.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh.", "address": "nope", "port": 443 }),
    )?;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("address"),
        "{}",
        bad.body
    );
    let bad = node.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh.", "address": "10.0.0.9", "port": 0 }),
    )?;
    assert_eq!(bad.status, 400);
    let bad = node.post("/snrl/resolve", &json!({ "domain": "", "client": {} }))?;
    assert_eq!(bad.status, 400);
    let list = node.get("/snrl/endpoints?service=api.demo.mesh.")?.body;
    assert_eq!(list["endpoints"].as_array().map(Vec::len), Some(4));
    Ok(())
}

#[test]
fn endpoints_replicate_are_owned_and_dead_nodes_drop_out() -> anyhow::Result<()> {
    let a = TestNode::spawn_with_env("snrl-a", &[], ENV)?;
    let mut b = TestNode::spawn_with_env("snrl-b", &["--join", &a.invite("10m")?], ENV)?;
    wait_for(DEADLINE, "b connected", || a.sees_connected(&b.node_id))?;
    register(&a, "10.0.1.1", "eu", &[], 100)?;
    let b_endpoint = register(&b, "10.0.2.2", "eu", &[], 100)?;
    wait_for(DEADLINE, "A ranks both endpoints", || {
        Ok(addresses(&resolve(&a, "eu", &[])?).len() == 2)
    })?;
    // An endpoint belongs to its node: A may not remove B's.
    let r = a.delete(&format!("/snrl/endpoints/{b_endpoint}"))?;
    assert_eq!(r.status, 403, "{}", r.body);
    // B dies: once Hypermesh declares it dead, A stops offering its endpoint.
    b.kill()?;
    wait_for(DEADLINE, "B's endpoint dropped from A's answers", || {
        let answer = resolve(&a, "eu", &[])?;
        anyhow::ensure!(
            addresses(&answer) == ["10.0.1.1"],
            "answer {answer}\nstatus {}",
            a.get("/hypermesh/status")?.body
        );
        Ok(true)
    })?;
    let answer: SignedAnswer = serde_json::from_value(resolve(&a, "eu", &[])?)?;
    answer.verify()?;
    Ok(())
}

#[test]
fn a_service_outside_every_zone_is_registered_with_a_warning() -> anyhow::Result<()> {
    let node = TestNode::spawn("snrl-warn", &[])?;
    let r = node.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh.", "address": "10.0.0.1", "port": 443 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["warning"],
        "no zone holds api.demo.mesh.: DNS will not answer it; SNRL will"
    );
    // SNRL answers it all the same.
    assert_eq!(addresses(&resolve(&node, "", &[])?), ["10.0.0.1"]);
    // The CLI passes the warning on (stderr), the id alone stays on stdout.
    let out = voike_tests::voike(
        &node,
        &["snrl", "register", "api.demo.mesh.", "10.0.0.2", "443"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: no zone holds api.demo.mesh.: DNS will not answer it"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // Inside a served zone (and in the mesh's own domain) there is nothing to warn about.
    node.create_zone("demo", "demo.mesh.")?;
    for service in ["api.demo.mesh.", "web.voike.internal."] {
        let r = node.post(
            "/snrl/endpoints",
            &json!({ "service": service, "address": "10.0.0.3", "port": 443 }),
        )?;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body.get("warning").is_none(), "{service}: {}", r.body);
    }
    let out = voike_tests::voike(
        &node,
        &["snrl", "register", "api.demo.mesh.", "10.0.0.4", "443"],
    )?;
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn snrl_resolve_exits_1_when_there_are_no_candidates() -> anyhow::Result<()> {
    let node = TestNode::spawn("snrl-exit", &[])?;
    node.create_zone("demo", "demo.mesh.")?;
    register(&node, "10.0.0.1", "eu", &[], 100)?;
    let out = voike_tests::voike(&node, &["snrl", "resolve", "nosuch.demo.mesh"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no endpoints for nosuch.demo.mesh"),
        "{stderr}"
    );
    // The signed (empty) answer is still shown and checked.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("signature: verified"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = voike_tests::voike(&node, &["--json", "snrl", "resolve", "nosuch.demo.mesh"])?;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["candidates"], json!([]));
    let out = voike_tests::voike(&node, &["snrl", "resolve", "api.demo.mesh."])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.0.0.1:443"));
    Ok(())
}
