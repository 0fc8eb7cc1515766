//! One naming convention across the admin API (docs/api.md, "Naming and units"): every key of
//! every JSON body is camelCase. The exceptions are data, not names: a ledger entry's `body` (as
//! its author signed it), maps keyed by entry kinds, domains or environment variables, and, for
//! this release only, the snake_case duplicates DESIGN.md §10 named (`node_id`, `rtt_ms`,
//! `heads_hash`, ...), which must carry the same values as their camelCase fields.

use std::time::Duration;

use serde_json::{Value, json};
use voike_tests::grid_util::{submit_job, upload_ok};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// Keys whose values are data keyed or named by users or signers, not by the API.
const DATA_KEYS: &[&str] = &["body", "byKind", "byReason", "delegations", "env"];

/// The deprecated duplicates, by JSON path (`*` for any array index) and their camelCase field.
const DEPRECATED: &[(&str, &str, &str)] = &[
    ("GET /mesh/self", "/node_id", "nodeId"),
    ("GET /mesh/self", "/mesh_id", "meshId"),
    ("GET /mesh/self", "/listen_addrs", "listenAddrs"),
    ("GET /mesh/self", "/api_addr", "apiAddr"),
    ("GET /mesh/self", "/dns_addr", "dnsAddr"),
    ("GET /mesh/self", "/doh_addr", "dohAddr"),
    ("GET /mesh/nodes", "/nodes/*/node_id", "nodeId"),
    ("GET /mesh/nodes", "/nodes/*/rtt_ms", "rttMs"),
    ("POST /ledger/verify", "/heads_hash", "headsHash"),
];

/// Every key path of `v` holding `_`, array indexes written `*`, data keys not entered.
fn underscored(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{path}/{k}");
                if k.contains('_') {
                    out.push(p.clone());
                }
                if !DATA_KEYS.contains(&k.as_str()) {
                    underscored(x, &p, out);
                }
            }
        }
        Value::Array(items) => {
            for x in items {
                underscored(x, &format!("{path}/*"), out);
            }
        }
        _ => {}
    }
}

/// The values at `path` (`*`: every array item).
fn at<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut here = vec![v];
    for part in path.split('/').filter(|p| !p.is_empty()) {
        here = here
            .into_iter()
            .flat_map(|x| match (part, x) {
                ("*", Value::Array(items)) => items.iter().collect::<Vec<_>>(),
                (k, Value::Object(o)) => o.get(k).into_iter().collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    here
}

/// The snake_case keys of `body` that are not deprecated duplicates of `what`, and checks that
/// each duplicate holds its camelCase field's value.
fn misnamed(what: &str, body: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    underscored(body, "", &mut keys);
    keys.sort();
    keys.dedup();
    let deprecated: Vec<&(&str, &str, &str)> =
        DEPRECATED.iter().filter(|(w, _, _)| *w == what).collect();
    for (_, old, new) in &deprecated {
        let parent = old.rsplit_once('/').map_or("", |(p, _)| p);
        for obj in at(body, parent) {
            let name = old.rsplit('/').next().unwrap_or_default();
            assert_eq!(
                obj.get(name),
                obj.get(*new),
                "{what}: {old} = {new} in {body}"
            );
        }
    }
    keys.retain(|k| !deprecated.iter().any(|(_, old, _)| k == old));
    keys
}

/// Everything but a 2xx is a failure of the test's own requests.
fn ok(what: &str, r: voike_tests::Api) -> Value {
    assert!(
        (200..300).contains(&r.status),
        "{what}: {} {}",
        r.status,
        r.body
    );
    r.body
}

#[test]
fn every_api_body_names_its_fields_in_camel_case() -> anyhow::Result<()> {
    let a = TestNode::genesis("a")?;
    let mut b = TestNode::join("b", &a.invite("10m")?)?;
    // Fill every list, so that the keys of their items are seen too.
    wait_for(DEADLINE, "a sees b with a ping time and a route", || {
        let peers = a.get("/hypermesh/status")?.body;
        let routes = a.get("/hypermesh/routes")?.body;
        let sessions = a.get("/trust/sessions")?.body;
        Ok(a.nodes()?.iter().any(|n| n["rttMs"].is_number())
            && at(&peers, "/peers/*/rttMs").iter().any(|r| r.is_number())
            && at(&peers, "/peers/*/samples").iter().any(|s| s.is_object())
            && routes["routes"].as_array().is_some_and(|r| !r.is_empty())
            && sessions["sessions"]
                .as_array()
                .is_some_and(|s| !s.is_empty()))
    })?;
    let mut bodies: Vec<(String, Value)> = Vec::new();
    let mut post = |what: &str, path: &str, body: &Value| -> anyhow::Result<Value> {
        let v = ok(what, a.post(path, body)?);
        bodies.push((what.to_string(), v.clone()));
        Ok(v)
    };
    post("POST /mesh/invites", "/mesh/invites", &json!({"ttl": "5m"}))?;
    post(
        "POST /vdns/zones",
        "/vdns/zones",
        &json!({"id": "demo", "domain": "demo.mesh."}),
    )?;
    post(
        "POST /vdns/zones/{zone}/delegations",
        "/vdns/zones/demo/delegations",
        &json!({"domain": "team.demo.mesh.", "node": b.node_id}),
    )?;
    post(
        "POST /vdns/records",
        "/vdns/records",
        &json!({"zoneId": "demo", "record": {"type": "A", "name": "www.demo.mesh.", "value": "10.0.0.7"}}),
    )?;
    post(
        "POST /snrl/endpoints",
        "/snrl/endpoints",
        &json!({"service": "api.demo.mesh.", "address": "10.0.0.8", "port": 443}),
    )?;
    post(
        "POST /snrl/resolve",
        "/snrl/resolve",
        &json!({"domain": "api.demo.mesh.", "client": {"region": "eu"}}),
    )?;
    post(
        "POST /mesh/grants",
        "/mesh/grants",
        &json!({"domain": "b.example.", "node": b.node_id}),
    )?;
    post("POST /ledger/verify", "/ledger/verify", &json!({}))?;
    post("POST /ledger/anchor", "/ledger/anchor", &json!({}))?;
    let module = upload_ok(&a, include_bytes!("../../examples/hello.wat"))?;
    let job = submit_job(
        &a,
        &json!({"module": module, "capabilities": {"env": {"GREETING_TEXT": "hi"}}}),
    )?;
    // An event in the Hypermesh log: b stops cleanly, a records `peer_left`.
    b.stop()?;
    wait_for(DEADLINE, "a records that b left", || {
        Ok(at(&a.get("/hypermesh/events")?.body, "/events/*/kind")
            .iter()
            .any(|k| *k == "peer_left"))
    })?;
    let entry = a.get("/ledger/recent?limit=1")?.body["entries"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for path in [
        "/healthz".to_string(),
        "/readyz".into(),
        "/mesh/self".into(),
        "/mesh/nodes".into(),
        "/mesh/grants".into(),
        "/ledger/recent".into(),
        format!("/ledger/{entry}"),
        "/hypermesh/status".into(),
        "/hypermesh/routes".into(),
        "/hypermesh/events".into(),
        "/hypermesh/agents".into(),
        "/vdns/zones".into(),
        "/vdns/records?zoneId=demo".into(),
        "/snrl/endpoints".into(),
        "/grid/jobs".into(),
        format!("/grid/jobs/{job}"),
        "/trust/status".into(),
        "/trust/events".into(),
        "/trust/anchors".into(),
        "/trust/sessions".into(),
    ] {
        let what = match path.split('?').next().unwrap_or_default() {
            p if p.starts_with("/ledger/") && p.len() > 20 => "GET /ledger/{id}".to_string(),
            p if p.starts_with("/grid/jobs/") => "GET /grid/jobs/{id}".to_string(),
            p => format!("GET {p}"),
        };
        bodies.push((what.clone(), ok(&what, a.get(&path)?)));
    }
    let mut wrong = Vec::new();
    for (what, body) in &bodies {
        assert!(body.is_object(), "{what}: not a JSON object: {body}");
        for key in misnamed(what, body) {
            wrong.push(format!("{what}: {key}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "keys that are not camelCase:\n{}",
        wrong.join("\n")
    );
    // Every deprecated duplicate is there (and, checked above, equal to its camelCase field).
    for (what, old, _) in DEPRECATED {
        let (_, body) = bodies
            .iter()
            .find(|(w, _)| w == what)
            .expect("every endpoint with duplicates was fetched");
        assert!(!at(body, old).is_empty(), "{what}: no {old} in {body}");
    }
    Ok(())
}

/// The units docs/api.md names: times and durations in milliseconds, health 0–1 (per-mille in
/// the signed SNRL answer, under a name that says so).
#[test]
fn times_are_milliseconds_and_health_is_a_fraction() -> anyhow::Result<()> {
    let a = TestNode::genesis("a")?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let invite = ok("invite", a.post("/mesh/invites", &json!({"ttl": "1h"}))?);
    let expires = invite["expiresAtMs"].as_u64().unwrap_or(0);
    assert!(
        expires.abs_diff(now_ms + 3_600_000) < 60_000,
        "expiresAtMs is an hour from now in ms: {invite}"
    );
    let me = ok("self", a.get("/mesh/self")?);
    assert!(me["uptimeMs"].as_u64().is_some(), "{me}");
    let nodes = ok("nodes", a.get("/mesh/nodes")?);
    let joined = nodes["nodes"][0]["joinedAtMs"].as_u64().unwrap_or(0);
    assert!(
        joined.abs_diff(now_ms) < 600_000,
        "joinedAtMs is Unix ms: {nodes}"
    );
    ok(
        "endpoint",
        a.post(
            "/snrl/endpoints",
            &json!({"service": "api.demo.mesh.", "address": "10.0.0.8", "port": 443}),
        )?,
    );
    let answer = ok(
        "resolve",
        a.post("/snrl/resolve", &json!({"domain": "api.demo.mesh."}))?,
    );
    let c = &answer["candidates"][0];
    assert!(
        c["healthPermille"].as_u64().is_some_and(|h| h <= 1000) && c.get("health").is_none(),
        "{answer}"
    );
    assert!(
        c["scorePpm"].as_u64().is_some_and(|s| s <= 1_000_000) && c.get("score").is_none(),
        "{answer}"
    );
    Ok(())
}
