//! Record rules through the API (issue 12, item 7): what `named-checkzone` would refuse is
//! refused when it is written, with a 400 naming the rule — a CNAME at the apex, a CNAME beside
//! other data (either order), a CNAME loop, control characters in a value, a wildcard zone
//! domain — and the zone that is left exports a file `named-checkzone` accepts.

use serde_json::json;
use voike_tests::TestNode;

fn add(node: &TestNode, rtype: &str, name: &str, value: &str) -> anyhow::Result<(u16, String)> {
    let r = node.post(
        "/vdns/records",
        &json!({ "zoneId": "demo", "record": { "type": rtype, "name": name, "value": value, "ttl": 60 } }),
    )?;
    Ok((r.status, r.body.to_string()))
}

#[test]
fn records_named_checkzone_would_refuse_are_refused_at_the_api() -> anyhow::Result<()> {
    let node = TestNode::genesis("rules")?;
    node.create_zone("demo", "demo.mesh.")?;
    let (s, b) = add(&node, "CNAME", "demo.mesh.", "other.example.")?;
    assert_eq!(s, 400, "CNAME at the apex: {b}");
    assert!(b.contains("apex"), "{b}");

    assert_eq!(add(&node, "A", "www.demo.mesh.", "10.0.0.7")?.0, 201);
    let (s, b) = add(&node, "CNAME", "www.demo.mesh.", "web.demo.mesh.")?;
    assert_eq!(s, 400, "CNAME beside an A: {b}");
    assert_eq!(
        add(&node, "CNAME", "alias.demo.mesh.", "www.demo.mesh.")?.0,
        201
    );
    let (s, b) = add(&node, "TXT", "alias.demo.mesh.", "hello")?;
    assert_eq!(s, 400, "data beside a CNAME: {b}");
    let (s, b) = add(&node, "CNAME", "alias.demo.mesh.", "elsewhere.demo.mesh.")?;
    assert_eq!(s, 400, "a second CNAME at one name: {b}");

    assert_eq!(add(&node, "CNAME", "a.demo.mesh.", "b.demo.mesh.")?.0, 201);
    let (s, b) = add(&node, "CNAME", "b.demo.mesh.", "a.demo.mesh.")?;
    assert_eq!(s, 400, "CNAME loop: {b}");
    assert!(b.contains("loop"), "{b}");
    let (s, b) = add(&node, "CNAME", "self.demo.mesh.", "self.demo.mesh.")?;
    assert_eq!(s, 400, "CNAME to itself: {b}");

    let (s, b) = add(&node, "CAA", "demo.mesh.", "0 issue \"ca.example\nevil\"")?;
    assert_eq!(s, 400, "CAA with a newline: {b}");
    let (s, b) = add(&node, "TXT", "t.demo.mesh.", "line1\nline2")?;
    assert_eq!(s, 400, "TXT with a newline: {b}");

    let r = node.post("/vdns/zones", &json!({ "id": "wild", "domain": "*.mesh." }))?;
    assert_eq!(r.status, 400, "wildcard zone domain: {}", r.body);

    let text = node.get_text("/vdns/zones/demo/export")?;
    let out = voike_tests::named_checkzone("demo.mesh", &text)?;
    assert!(
        out.status.success(),
        "named-checkzone refused the export:\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}
