//! The admin API's authentication and error shapes.

use serde_json::json;
use voike_tests::{TestNode, http};

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/mesh/self"),
    ("GET", "/mesh/nodes"),
    ("POST", "/mesh/invites"),
];

#[test]
fn every_protected_path_needs_the_token() -> anyhow::Result<()> {
    let node = TestNode::genesis("api")?;
    for (method, path) in PROTECTED {
        let none = http(method, &node.api, path, None, None)?;
        assert_eq!(
            none.status, 401,
            "{method} {path} without token: {}",
            none.body
        );
        assert_eq!(none.body["error"]["code"], "unauthorized", "{}", none.body);
        let wrong = http(method, &node.api, path, Some("not-the-token"), None)?;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let ok = http(method, &node.api, path, Some(&node.token), None)?;
        assert!(
            ok.status == 200 || ok.status == 201,
            "{method} {path}: {} {}",
            ok.status,
            ok.body
        );
    }
    // The alternative header works too.
    let r = ureq::get(&format!("{}/mesh/self", node.api))
        .header("x-voike-admin-token", &node.token)
        .call()?;
    assert_eq!(r.status().as_u16(), 200);
    // Liveness and readiness need no token.
    assert_eq!(http("GET", &node.api, "/healthz", None, None)?.status, 200);
    assert_eq!(http("GET", &node.api, "/readyz", None, None)?.status, 200);
    Ok(())
}

#[test]
fn unknown_paths_and_methods_get_json_errors() -> anyhow::Result<()> {
    let node = TestNode::genesis("api")?;
    let r = http("GET", &node.api, "/no/such/path", Some(&node.token), None)?;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "not_found");
    let r = http("GET", &node.api, "/no/such/path", None, None)?;
    assert_eq!(r.status, 404);
    let r = http("DELETE", &node.api, "/mesh/self", Some(&node.token), None)?;
    assert_eq!(r.status, 405);
    assert_eq!(r.body["error"]["code"], "method_not_allowed");
    Ok(())
}

#[test]
fn bad_invite_requests_are_400_and_name_the_field() -> anyhow::Result<()> {
    let node = TestNode::genesis("api")?;
    for (body, field) in [
        (json!({"ttl": "soon"}), "ttl"),
        (json!({"ttl": "0s"}), "ttl"),
        (json!({"ttl": "400days"}), "ttl"),
        (json!({"role": "king"}), "role"),
        (json!({"colour": "blue"}), "colour"),
        (json!([1, 2, 3]), "invite request"),
    ] {
        let r = node.post("/mesh/invites", &body)?;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "bad_request");
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let r = node.post("/mesh/invites", &json!({"ttl": "2h", "role": "member"}))?;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body["ticket"]
            .as_str()
            .is_some_and(|t| t.starts_with("voike1"))
    );
    let self_addrs = node.dial_addrs()?;
    let bootstrap = r.body["bootstrap"].as_array().cloned().unwrap_or_default();
    assert!(
        self_addrs
            .iter()
            .all(|a| bootstrap.iter().any(|b| b == a.as_str())),
        "{bootstrap:?}"
    );
    Ok(())
}

#[test]
fn token_header_variants_are_accepted_and_oversized_bodies_get_json_413() -> anyhow::Result<()> {
    let node = TestNode::genesis("api")?;
    let url = format!("{}/mesh/self", node.api);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let lower = agent
        .get(&url)
        .header("Authorization", &format!("bearer {}", node.token))
        .call()?;
    assert_eq!(lower.status().as_u16(), 200);
    let fallback = agent
        .get(&url)
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .header("x-voike-admin-token", &node.token)
        .call()?;
    assert_eq!(fallback.status().as_u16(), 200);
    let big = serde_json::json!({"ttl": "x".repeat(100 * 1024)});
    let r = node.post("/mesh/invites", &big)?;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "payload_too_large");
    Ok(())
}
