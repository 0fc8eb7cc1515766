//! Replication figures on loopback:
//! - propagation: a record written on A → visible through the API of all other nodes of a
//!   5-node mesh, median and p99 over WRITES writes; next to it, in the same run, the floor of a
//!   plain admin API round trip and the time A takes to acknowledge the write;
//! - catch-up: a node offline while ENTRIES ledger entries and RECORDS records were written →
//!   time from its restart until it holds every record and the same ledger heads as A.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-sync -- [WRITES] [RECORDS] [ENTRIES]` (defaults 100, 10000,
//! 100000). Prints figures; asserts nothing about speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use voike_protocol::hlc::Hlc;
use voike_protocol::ledger::Entry;
use voike_storage::{Store, WriteOp, keyfile};
use voike_tests::{TestNode, http, wait_for};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: median {:.2} ms, p99 {:.2} ms, min {:.2}, max {:.2} (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

/// Polls `node` until zone `demo` holds `name`; returns when it does.
fn has_record(node: &TestNode, name: &str) -> bool {
    node.get("/vdns/records?zoneId=demo&limit=10000")
        .map(|r| {
            r.body["records"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["name"] == name))
        })
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let records: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let entries: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    println!("voiked binary: {}", voike_tests::bin("voiked").display());
    let deadline = Duration::from_secs(120);

    // ---- propagation on 5 nodes ---------------------------------------------------------
    let a = TestNode::genesis("bsync-a")?;
    let mut others = Vec::new();
    for i in 0..4 {
        let n = TestNode::join(&format!("bsync-{i}"), &a.invite("1h")?)?;
        others.push(n);
    }
    for n in &others {
        wait_for(deadline, "connected", || a.sees_connected(&n.node_id))?;
    }
    a.create_zone("demo", "demo.mesh.")?;
    for n in &others {
        wait_for(deadline, "zone everywhere", || {
            Ok(n.get("/vdns/zones")?.body["zones"][0]["id"] == "demo")
        })?;
    }
    let mut floor = Vec::new();
    let mut ack = Vec::new();
    let mut visible = Vec::new();
    for i in 0..writes {
        let t = Instant::now();
        let _ = a.get("/vdns/zones")?;
        floor.push(t.elapsed().as_secs_f64() * 1000.0);

        let name = format!("p{i}.demo.mesh.");
        let started = Instant::now();
        a.add_a("demo", &name, "10.0.0.1")?;
        ack.push(started.elapsed().as_secs_f64() * 1000.0);
        // One poller per node; the write is visible when the last one sees it.
        let done: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = others
                .iter()
                .map(|n| {
                    let name = name.clone();
                    s.spawn(move || {
                        let until = Instant::now() + Duration::from_secs(30);
                        while Instant::now() < until {
                            if has_record(n, &name) {
                                return started.elapsed().as_secs_f64() * 1000.0;
                            }
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        f64::INFINITY
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(f64::INFINITY))
                .collect()
        });
        visible.push(done.into_iter().fold(0.0, f64::max));
    }
    println!("propagation, 5 loopback nodes, {writes} writes on A:");
    summary("  plain API round trip on A (floor)", floor);
    summary("  write acknowledged by A (durable)", ack);
    summary("  write visible on all 4 other nodes", visible);
    drop(others);
    drop(a);

    // ---- catch-up -----------------------------------------------------------------------
    let mut a = TestNode::spawn_fixed("bcatch-a", &[])?;
    let mut e = TestNode::join("bcatch-e", &a.invite("1h")?)?;
    wait_for(deadline, "connected", || a.sees_connected(&e.node_id))?;
    a.create_zone("demo", "demo.mesh.")?;
    wait_for(deadline, "zone on e", || {
        Ok(e.get("/vdns/zones")?.body["zones"][0]["id"] == "demo")
    })?;
    e.stop()?;

    // Ledger entries beyond those of the record writes go straight into A's chain while A is
    // stopped (as if A had been busy for a long time).
    let extra = entries.saturating_sub(records as u64);
    a.stop()?;
    {
        let rt = tokio::runtime::Runtime::new()?;
        let (store, thread) = Store::open(&a.dir.join("state.redb"))?;
        let (key, _) = keyfile::load_or_create_identity(&a.dir.join("node.key"))?;
        let author = key.public().encode_protobuf();
        let mut head = store.ledger_head(&author)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let mut written = 0u64;
        while written < extra {
            let mut ops = Vec::new();
            for _ in 0..2000.min(extra - written) {
                let hlc = Hlc {
                    wall_ms: now,
                    counter: (written % 1_000_000) as u32 + 1,
                };
                let body = format!("{{\"bench\":{written},\"pad\":\"{}\"}}", "x".repeat(60));
                let entry = Entry::append(&key, head, hlc, "bench.event", body.into_bytes())?;
                head = entry.head();
                ops.push(WriteOp::AppendEntry(Box::new(entry)));
                written += 1;
            }
            rt.block_on(store.write(ops))?;
        }
        drop(store);
        thread.join();
    }
    a.restart()?;
    let started = Instant::now();
    let (api, token) = (a.api.clone(), a.token.clone());
    let failed = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for w in 0..8 {
            let (api, token, failed) = (api.clone(), token.clone(), failed.clone());
            s.spawn(move || {
                for i in (w..records).step_by(8) {
                    let body = json!({ "zoneId": "demo", "record": { "type": "A", "name": format!("c{i}.demo.mesh."), "value": "10.0.0.2" } });
                    match http("POST", &api, "/vdns/records", Some(&token), Some(&body)) {
                        Ok(r) if r.status == 201 => {}
                        _ => failed.store(true, Ordering::SeqCst),
                    }
                }
            });
        }
    });
    anyhow::ensure!(!failed.load(Ordering::SeqCst), "some record writes failed");
    let write_secs = started.elapsed().as_secs_f64();
    let a_ledger = a.verify()?;
    println!(
        "catch-up: A wrote {records} records in {write_secs:.1} s ({:.0}/s over the API, 8 clients); A's ledger holds {} entries",
        records as f64 / write_secs,
        a_ledger["entries"]
    );
    let want = records;
    let rss = |n: &TestNode| -> u64 {
        n.pid()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let started = Instant::now();
    e.restart()?;
    let mut records_at = None;
    wait_for(Duration::from_secs(600), "e fully synced", || {
        if records_at.is_none() {
            let n = e.get("/vdns/records?zoneId=demo&limit=10000")?.body["records"]
                .as_array()
                .map_or(0, |a| a.len());
            if n >= want {
                records_at = Some(started.elapsed());
            }
        }
        // Anchors carry the heads hash without walking the chains (a verify of 100k entries
        // takes seconds and would dominate the figure).
        let anchor = |n: &TestNode| -> anyhow::Result<serde_json::Value> {
            Ok(n.post("/ledger/anchor", &json!({}))?.body["anchor"]["headsHash"].clone())
        };
        Ok(records_at.is_some() && anchor(&a)? == anchor(&e)?)
    })?;
    let total = started.elapsed();
    let (va, ve) = (a.verify()?, e.verify()?);
    anyhow::ensure!(
        ve["ok"] == true && va["headsHash"] == ve["headsHash"],
        "E's ledger does not verify or differs: {ve}"
    );
    println!(
        "catch-up of the offline node (restart included): all {want} records after {:.2} s, identical ledger heads after {:.2} s (then verified); RSS A {} KiB, E {} KiB",
        records_at.unwrap_or(total).as_secs_f64(),
        total.as_secs_f64(),
        rss(&a),
        rss(&e)
    );
    let m = e.metrics()?;
    for l in m.lines().filter(|l| {
        l.starts_with("voike_sync_received_bytes_total")
            || l.starts_with("voike_sync_changes_applied_total")
            || l.starts_with("voike_sync_ledger_entries_applied_total")
    }) {
        println!("  E: {l}");
    }
    Ok(())
}
