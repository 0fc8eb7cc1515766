//! Record rules through the API (issue 12, item 7): what `named-checkzone` would refuse is
//! refused when it is written, with a 400 naming the rule — a CNAME at the apex, a CNAME beside
//! other data (either order), a CNAME loop, control characters in a value, a wildcard zone
//! domain — and the zone that is left exports a file `named-checkzone` accepts; and, as a
//! seeded property over a few hundred random writes and deletes, every zone the API accepted
//! exports a file `named-checkzone` accepts.

use serde_json::json;
use voike_tests::TestNode;
use voike_tests::dns_util::{Rng, exported_data_lines, random_record};

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

/// A few hundred seeded random writes (every record type, odd names, wildcards, the apex,
/// CNAMEs, NS with and without addresses, TXT and CAA values with quotes, backslashes,
/// control characters and non-ASCII text, values up to and past the length limit, TTL edges)
/// and deletes: every answer is 201 or a 400 with a message, and after every batch each zone's
/// export loads into `named-checkzone`, holding every record the API lists but those counted
/// in `voike_dns_records_withheld`.
#[test]
fn any_zone_the_api_accepts_exports_a_file_named_checkzone_accepts() -> anyhow::Result<()> {
    const SEEDS: [u64; 4] = [1, 7, 42, 2024];
    const BATCHES: usize = 8;
    const BATCH: usize = 25;
    let node = TestNode::genesis("rules-prop")?;
    let mut zones: Vec<(String, String)> = Vec::new();
    let (mut accepted, mut refused, mut deleted) = (0, 0, 0);
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let (id, domain) = (format!("p{seed}"), format!("p{seed}.example."));
        node.create_zone(&id, &domain)?;
        zones.push((id.clone(), domain.clone()));
        let mut ids: Vec<String> = Vec::new();
        for batch in 0..BATCHES {
            for _ in 0..BATCH {
                if !ids.is_empty() && rng.below(5) == 0 {
                    let victim = ids.swap_remove(rng.below(ids.len()));
                    let r = node.delete(&format!("/vdns/records/{victim}"))?;
                    assert_eq!(r.status, 200, "seed {seed}: delete {victim}: {}", r.body);
                    deleted += 1;
                    continue;
                }
                let record = random_record(&mut rng, &domain);
                let r = node.post("/vdns/records", &json!({ "zoneId": id, "record": record }))?;
                match r.status {
                    201 => {
                        accepted += 1;
                        let rid = r.body["record"]["id"].as_str().unwrap_or_default();
                        if !ids.iter().any(|i| i == rid) {
                            ids.push(rid.to_string());
                        }
                    }
                    400 => {
                        refused += 1;
                        let message = r.body["error"]["message"].as_str().unwrap_or_default();
                        assert!(
                            !message.is_empty(),
                            "seed {seed}: a 400 without a message for {record}: {}",
                            r.body
                        );
                    }
                    s => panic!("seed {seed}: {record} answered {s}: {}", r.body),
                }
            }
            let mut listed = 0;
            let mut exported = 0;
            for (zid, zdomain) in &zones {
                let text = node.get_text(&format!("/vdns/zones/{zid}/export"))?;
                let out = voike_tests::named_checkzone(zdomain.trim_end_matches('.'), &text)?;
                assert!(
                    out.status.success(),
                    "seed {seed} batch {batch}: named-checkzone refused zone {zid}:\n{}\n{text}",
                    String::from_utf8_lossy(&out.stdout)
                );
                let records = node.get(&format!("/vdns/records?zoneId={zid}"))?;
                listed += records.body["records"].as_array().map_or(0, Vec::len);
                exported += exported_data_lines(&text);
            }
            let withheld = node.metric("voike_dns_records_withheld")? as usize;
            assert_eq!(
                listed,
                exported + withheld,
                "seed {seed} batch {batch}: {listed} records listed, {exported} exported, {withheld} withheld"
            );
        }
    }
    eprintln!("{accepted} accepted, {refused} refused, {deleted} deleted");
    // The generator reaches both sides of the rules.
    assert!(
        accepted > 250 && refused > 150 && deleted > 60,
        "{accepted} accepted, {refused} refused, {deleted} deleted"
    );
    Ok(())
}
