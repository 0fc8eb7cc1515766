//! The Truth Ledger through the admin API and the CLI: membership events are recorded, chains
//! verify, anchors are signed, entries are found by id and exported.

use std::time::Duration;

use voike_tests::{TestNode, voike, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

fn kinds(node: &TestNode) -> anyhow::Result<Vec<String>> {
    let r = node.get("/ledger/recent?limit=100")?;
    anyhow::ensure!(r.status == 200, "{}", r.body);
    Ok(r.body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect())
}

#[test]
fn membership_events_are_recorded_and_the_ledger_verifies() -> anyhow::Result<()> {
    // Fixed p2p ports: the node's DNS self-registration (which names its p2p port) is the same
    // after the restart below, so the restart adds no ledger entry.
    let mut genesis = TestNode::spawn_fixed("ledger-genesis", &[])?;
    let member = TestNode::join("ledger-member", &genesis.invite("10m")?)?;
    wait_for(DEADLINE, "member connected", || {
        genesis.sees_connected(&member.node_id)
    })?;
    wait_for(DEADLINE, "member.admit on genesis", || {
        Ok(kinds(&genesis)?.iter().any(|k| k == "member.admit"))
    })?;
    assert!(kinds(&genesis)?.iter().any(|k| k == "mesh.create"));
    wait_for(DEADLINE, "member.join on the member", || {
        Ok(kinds(&member)?.iter().any(|k| k == "member.join"))
    })?;
    // Both nodes registered themselves in DNS (a ledger entry each) and genesis has both.
    wait_for(DEADLINE, "both self-registrations on genesis", || {
        Ok(kinds(&genesis)?
            .iter()
            .filter(|k| *k == "endpoint.register")
            .count()
            == 2)
    })?;

    // Newest first (entries replicated from other members included); an entry is found by id.
    let recent = genesis.get("/ledger/recent?limit=100")?.body;
    let newest = recent["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["author"] == genesis.node_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(newest["author"], genesis.node_id.as_str(), "{recent}");
    let id = newest["id"].as_str().unwrap_or_default();
    let by_id = genesis.get(&format!("/ledger/{id}"))?;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.body["entry"]["id"], id);
    assert_eq!(
        genesis.get(&format!("/ledger/{}", "0".repeat(64)))?.status,
        404
    );
    assert_eq!(genesis.get("/ledger/not-hex")?.status, 400);
    assert_eq!(genesis.get("/ledger/recent?limit=0")?.status, 400);
    assert_eq!(genesis.get("/ledger/recent?limt=5")?.status, 400);

    // Both ledgers hold the same entries before the figures are taken (the member's last
    // entries may still be on their way).
    let heads = |n: &TestNode| -> anyhow::Result<serde_json::Value> {
        Ok(n.post("/ledger/verify", &serde_json::json!({}))?.body["headsHash"].clone())
    };
    wait_for(DEADLINE, "the same ledger on both nodes", || {
        Ok(heads(&genesis)? == heads(&member)?)
    })?;
    let v = genesis.post("/ledger/verify", &serde_json::json!({}))?.body;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["entries"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert_eq!(v["fault"], serde_json::Value::Null);

    // The anchor is signed by the node over the same heads that verify reports.
    let a = genesis.post("/ledger/anchor", &serde_json::json!({}))?.body;
    assert_eq!(a["anchor"]["signer"], genesis.node_id.as_str());
    assert_eq!(a["anchor"]["headsHash"], v["headsHash"]);

    // CLI: verify, tail and export agree with the API.
    let out = voike(&genesis, &["ledger", "verify"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger ok"));
    let out = voike(&genesis, &["ledger", "tail", "-n", "5"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("member.admit"));
    let file = genesis.dir.with_file_name("export.jsonl");
    let out = voike(
        &genesis,
        &["ledger", "export", file.to_str().unwrap_or_default()],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len() as u64, v["entries"].as_u64().unwrap_or(0));
    assert_eq!(lines[0]["kind"], "mesh.create");

    // Entries survive a restart and still verify.
    let before_restart = genesis.get("/ledger/recent?limit=1000")?.body;
    genesis.stop()?;
    genesis.restart()?;
    wait_for(DEADLINE, "the member back", || {
        genesis.sees_connected(&member.node_id)
    })?;
    wait_for(DEADLINE, "the same ledger on both nodes again", || {
        Ok(heads(&genesis)? == heads(&member)?)
    })?;
    let again = genesis.post("/ledger/verify", &serde_json::json!({}))?.body;
    assert_eq!(again["ok"], true, "{again}");
    // Genesis's clean stop made the member record `hypermesh.peer_left` (its goodbye, see
    // tests/goodbye.rs); that is the only entry the restart adds: Genesis's own restart adds
    // none, and every earlier entry is still there.
    let by_genesis = |body: &serde_json::Value| {
        body["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["author"] == genesis.node_id.as_str())
            .count()
    };
    let recent = genesis.get("/ledger/recent?limit=1000")?.body;
    let added: Vec<&serde_json::Value> = recent["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .take(
            (again["entries"].as_u64().unwrap_or(0))
                .saturating_sub(v["entries"].as_u64().unwrap_or(0)) as usize,
        )
        .collect();
    assert!(
        added
            .iter()
            .all(|e| e["kind"] == "hypermesh.peer_left" && e["author"] == member.node_id.as_str()),
        "the restart added {added:?}"
    );
    assert_eq!(by_genesis(&recent), by_genesis(&before_restart));
    Ok(())
}
