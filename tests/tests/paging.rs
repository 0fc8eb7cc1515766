//! Paged reads (issue "Costs that do not grow with history"): `GET /vdns/records` and
//! `GET /snrl/endpoints` answer pages (`limit`, `after`, `next`); walking the pages while writes
//! go on returns every item that was there all along exactly once, and the CLI follows pages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use voike_tests::TestNode;

#[test]
fn paging_returns_every_record_once_while_writes_go_on() -> anyhow::Result<()> {
    let node = TestNode::genesis("paging")?;
    node.create_zone("demo", "demo.mesh.")?;
    let mut before = BTreeSet::new();
    // More than one default page (1000), so that the CLI has to follow the cursor.
    for i in 0..1010 {
        before.insert(node.add_a("demo", &format!("r{i}.demo.mesh."), "10.0.0.1")?);
    }
    // Writes while the pages are walked.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (api, token) = (node.api.clone(), node.token.clone());
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_defaults();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 200 {
                i += 1;
                let _ = agent
                    .post(&format!("{api}/vdns/records"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .send_json(json!({ "zoneId": "demo", "record": { "type": "A", "name": format!("w{i}.demo.mesh."), "value": "10.0.0.2" } }));
            }
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/vdns/records?zoneId=demo&limit=97&after={a}"),
            None => "/vdns/records?zoneId=demo&limit=97".to_string(),
        };
        let r = node.get(&path)?;
        assert_eq!(r.status, 200, "{}", r.body);
        let ids: Vec<String> = r.body["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["id"].as_str().map(String::from))
            .collect();
        assert!(ids.len() <= 97);
        seen.extend(ids);
        pages += 1;
        match r.body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 1000, "paging does not end");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a record came twice");
    assert!(
        before.is_subset(&unique),
        "a record present all along was missed"
    );
    // Bad limits are refused.
    assert_eq!(node.get("/vdns/records?zoneId=demo&limit=0")?.status, 400);
    assert_eq!(node.get("/snrl/endpoints?limit=100000")?.status, 400);
    // The CLI follows the pages: every record of the zone is listed.
    let total = node.get("/vdns/records?zoneId=demo&limit=10000")?.body["records"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(total > 1000, "{total}");
    let out = voike_tests::voike(&node, &["record", "list", "demo", "--json"])?;
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed["records"].as_array().map_or(0, Vec::len), total);
    Ok(())
}

/// `GET /grid/jobs` is paged by job id too, and `voike job list` lists every job.
#[test]
fn paging_returns_every_job_once() -> anyhow::Result<()> {
    let node = TestNode::genesis("paging-jobs")?;
    let cpu = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/cpu.wat")
        .display()
        .to_string();
    let mut submitted = BTreeSet::new();
    for _ in 0..5 {
        let out = voike_tests::voike(
            &node,
            &["job", "submit", &cpu, "--entry", "spin", "--arg", "1"],
        )?;
        assert!(out.status.success(), "{out:?}");
        submitted.insert(String::from_utf8(out.stdout)?.trim().to_string());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/grid/jobs?limit=2&after={a}"),
            None => "/grid/jobs?limit=2".to_string(),
        };
        let r = node.get(&path)?;
        assert_eq!(r.status, 200, "{}", r.body);
        let ids: Vec<String> = r.body["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_str().map(String::from))
            .collect();
        assert!(ids.len() <= 2, "{ids:?}");
        seen.extend(ids);
        match r.body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(seen.len() <= 10, "paging does not end");
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), submitted);
    assert_eq!(node.get("/grid/jobs?limit=0")?.status, 400);
    let out = voike_tests::voike(&node, &["job", "list", "--json"])?;
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed["jobs"].as_array().map_or(0, Vec::len), 5);
    assert!(listed.get("next").is_none());
    Ok(())
}
