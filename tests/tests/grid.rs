//! Grid jobs on real `voiked` processes: the sandbox ends bad jobs with a clear status and
//! never the daemon; split jobs fan out over three nodes and gather a correct result, also when
//! the node running a segment is killed; modules travel between members and a tampered copy
//! is refused; jobs written while a node is cut off run once it rejoins; a long segment is
//! claimed once and kept by lease renewals, not by a change per renewal.

use std::time::Duration;

use serde_json::{Value, json};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(90);
const P: u64 = 1_000_000_007;

/// Short Hypermesh timings and leases so that a killed node's work moves within seconds.
fn env(region: &str, caps: &str) -> Vec<(String, String)> {
    vec![
        (
            "VOIKED_HYPERMESH__HEARTBEAT_INTERVAL".into(),
            "300ms".into(),
        ),
        ("VOIKED_HYPERMESH__SAMPLE_FAST".into(), "200ms".into()),
        ("VOIKED_HYPERMESH__SAMPLE_SLOW".into(), "2s".into()),
        ("VOIKED_HYPERMESH__MIN_DEAD".into(), "3s".into()),
        ("VOIKED_HYPERMESH__REGION".into(), region.into()),
        ("VOIKED_HYPERMESH__CAPABILITIES".into(), caps.into()),
        ("VOIKED_GRID__LEASE".into(), "2s".into()),
    ]
}

fn spawn(name: &str, extra: &[&str], region: &str, caps: &str) -> anyhow::Result<TestNode> {
    let env = env(region, caps);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut node = TestNode::create(name, extra)?;
    node.fix_ports()?;
    node.set_env(&pairs);
    node.start()?;
    Ok(node)
}

fn example(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    Ok(std::fs::read(&path)?)
}

fn upload(node: &TestNode, file: &str) -> anyhow::Result<String> {
    let url = format!("{}/vvm/modules", node.api);
    let mut r = ureq::post(&url)
        .header("Authorization", &format!("Bearer {}", node.token))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&example(file)?[..])?;
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
    anyhow::ensure!(r.status() == 201, "upload {file}: {} {body}", r.status());
    Ok(body["module"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn submit(node: &TestNode, job: Value) -> anyhow::Result<String> {
    let r = node.post("/grid/jobs", &job)?;
    anyhow::ensure!(r.status == 201, "submit: {} {}", r.status, r.body);
    Ok(r.body["job"]["id"].as_str().unwrap_or_default().to_string())
}

fn job(node: &TestNode, id: &str) -> anyhow::Result<Value> {
    let r = node.get(&format!("/grid/jobs/{id}"))?;
    anyhow::ensure!(r.status == 200, "job {id}: {} {}", r.status, r.body);
    Ok(r.body["job"].clone())
}

fn finished(node: &TestNode, id: &str) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    wait_for(
        DEADLINE,
        &format!("job {id} finished on {}", node.name),
        || {
            last = job(node, id)?;
            Ok(last["state"] == "done" || last["state"] == "failed")
        },
    )?;
    Ok(last)
}

fn first_result(job: &Value, segment: usize) -> Value {
    job["segments"][segment]["results"][0].clone()
}

/// Σ F(i) mod P for i in [start, end).
fn fib_sum(start: u64, end: u64) -> u64 {
    let (mut a, mut b, mut sum) = (0u64, 1u64, 0u64);
    for i in 0..end {
        if i >= start {
            sum = (sum + a) % P;
        }
        (a, b) = (b, (a + b) % P);
    }
    sum
}

#[test]
fn sandbox_failures_end_the_job_never_the_daemon() -> anyhow::Result<()> {
    let mut node = TestNode::spawn("grid-sandbox", &[])?;
    let forever = upload(&node, "forever.wat")?;
    let memhog = upload(&node, "memhog.wat")?;
    let openfile = upload(&node, "openfile.wat")?;
    let recurse = upload(&node, "recurse.wat")?;
    let cpu = upload(&node, "cpu.wat")?;
    let fib = upload(&node, "fib.wat")?;
    let loop_id = submit(
        &node,
        json!({ "module": forever, "entry": "run", "limits": { "wallMs": 1500, "fuel": 1_000_000_000_000u64 } }),
    )?;
    // A good job next to the loop: it finishes, and right.
    let good = submit(
        &node,
        json!({ "module": fib, "entry": "fib_segment", "args": ["0", "1000"] }),
    )?;
    let grow = submit(
        &node,
        json!({ "module": memhog, "entry": "grow", "args": ["64"], "limits": { "memoryBytes": 1_048_576 } }),
    )?;
    let open = submit(&node, json!({ "module": openfile }))?;
    let deep = submit(&node, json!({ "module": recurse, "entry": "run" }))?;
    let fuel = submit(
        &node,
        json!({ "module": cpu, "entry": "spin", "args": ["1000000000"], "limits": { "fuel": 1_000_000 } }),
    )?;

    let g = finished(&node, &good)?;
    assert_eq!(g["state"], "done", "{g}");
    assert_eq!(first_result(&g, 0)["returns"], json!([fib_sum(0, 1000)]));
    let r = first_result(&finished(&node, &loop_id)?, 0);
    assert_eq!(r["status"], "timeout", "{r}");
    let r = first_result(&finished(&node, &grow)?, 0);
    assert_eq!(
        r["status"], "ok",
        "memory.grow past the limit fails inside the guest: {r}"
    );
    assert_eq!(r["returns"], json!([-1]), "the guest saw -1: {r}");
    let r = first_result(&finished(&node, &open)?, 0);
    assert_eq!(r["status"], "exit", "{r}");
    assert_ne!(
        r["exitCode"],
        json!(0),
        "opening a file without the capability fails: {r}"
    );
    let r = first_result(&finished(&node, &deep)?, 0);
    assert_eq!(r["status"], "trap", "{r}");
    let r = first_result(&finished(&node, &fuel)?, 0);
    assert_eq!(r["status"], "out_of_fuel", "{r}");
    assert!(r["fuelUsed"].as_u64().unwrap_or(0) > 0);

    assert!(node.try_exit()?.is_none(), "the daemon is still running");
    assert_eq!(node.get("/healthz")?.status, 200);
    assert!(node.metric("voike_vvm_segment_runs_total{state=\"timeout\"}")? >= 1.0);
    // Bad input: an unknown module, a bad field, an invalid module.
    let r = node.post("/grid/jobs", &json!({ "module": "ab".repeat(32) }))?;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = node.post("/grid/jobs", &json!({ "module": fib, "split": 0 }))?;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("split"),
        "{}",
        r.body
    );
    Ok(())
}

#[test]
fn split_jobs_spread_over_three_nodes_and_survive_a_killed_runner() -> anyhow::Result<()> {
    let a = spawn("grid3-a", &[], "eu", "")?;
    let mut b = spawn("grid3-b", &["--join", &a.invite("10m")?], "eu", "")?;
    let mut c = spawn("grid3-c", &["--join", &a.invite("10m")?], "eu", "")?;
    let nodes = [&a, &b, &c];
    for n in &nodes[1..] {
        wait_for(DEADLINE, &format!("{} connected", n.name), || {
            a.sees_connected(&n.node_id)
        })?;
    }
    wait_for(DEADLINE, "every node sees the others alive", || {
        for n in nodes {
            let s = n.get("/hypermesh/status")?.body;
            if s["mesh"]["alive"] != 2 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    // Fibonacci split in 6 over [0, 10000): the sum of the segments is Σ F(i), i < 10000.
    let fib = upload(&a, "fib.wat")?;
    let expected: u64 = (0..6u64)
        .map(|s| fib_sum(10000 * s / 6, 10000 * (s + 1) / 6))
        .sum();
    // Placement is rendezvous hashing over random job ids: all six segments land on one of
    // three nodes with probability 3/729 per job, so up to three jobs are tried for spread.
    let mut id = String::new();
    let mut spread = Vec::new();
    for _ in 0..3 {
        id = submit(
            &a,
            json!({ "module": fib, "entry": "fib_segment", "split": 6, "range": 10000 }),
        )?;
        let done = finished(&a, &id)?;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["result"]["combined"], json!(expected), "{done}");
        let runners: std::collections::HashSet<String> = done["result"]["runners"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        spread.push(runners.len());
        if runners.len() > 1 {
            break;
        }
    }
    assert!(
        spread.last().is_some_and(|n| *n > 1),
        "segments ran on more than one node: distinct runners per job {spread:?}"
    );
    // Every node holds the same verdict, and B fetched the module from A to run its share.
    for n in &nodes[1..] {
        wait_for(DEADLINE, &format!("job done on {}", n.name), || {
            Ok(job(n, &id)?["state"] == "done")
        })?;
    }

    // Now segments that take seconds: kill the node that holds one, the job still completes.
    let cpu = upload(&a, "cpu.wat")?;
    let iterations = "2500000000";
    let slow = submit(
        &a,
        json!({ "module": cpu, "entry": "spin", "args": [iterations], "split": 6,
                "limits": { "fuel": 1_000_000_000_000u64, "wallMs": 120_000 } }),
    )?;
    // Kill a node other than A (the observer) while it holds a live claim on an unfinished
    // segment; remember which segments it held.
    let (b_id, c_id) = (b.node_id.clone(), c.node_id.clone());
    let mut victim = String::new();
    let mut held: Vec<usize> = Vec::new();
    wait_for(DEADLINE, "B or C holds a live claim", || {
        let j = job(&a, &slow)?;
        for who in [&b_id, &c_id] {
            held = j["segments"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s["results"].as_array().is_some_and(|r| r.is_empty())
                        && s["claims"]
                            .as_array()
                            .is_some_and(|cl| cl.iter().any(|x| x["runner"] == who.as_str()))
                })
                .map(|(i, _)| i)
                .collect();
            if !held.is_empty() {
                victim = who.clone();
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    if victim == b_id {
        b.kill()?;
    } else {
        c.kill()?;
    }
    let j = finished(&a, &slow)?;
    assert_eq!(j["state"], "done", "{j}");
    // Every segment spins the same: all results agree.
    let one = first_result(&j, 0)["returns"][0]
        .as_i64()
        .unwrap_or_default();
    assert_eq!(j["result"]["combined"], json!(one.wrapping_mul(6)), "{j}");
    assert_eq!(j["result"]["mismatch"], false);
    // What the victim was running when it died was run again by another node.
    for s in held {
        let r = first_result(&j, s);
        assert_ne!(r["runner"], victim.as_str(), "segment {s}: {j}");
        assert_eq!(r["status"], "ok", "segment {s}: {j}");
    }
    Ok(())
}

#[test]
fn modules_are_fetched_by_hash_and_tampered_copies_refused() -> anyhow::Result<()> {
    let mut a = spawn("gridmod-a", &[], "eu", "")?;
    let b = spawn("gridmod-b", &["--join", &a.invite("10m")?], "eu", "b-only")?;
    wait_for(DEADLINE, "b connected", || a.sees_connected(&b.node_id))?;
    wait_for(DEADLINE, "a sees b alive with its capability", || {
        let s = a.get("/hypermesh/status")?.body;
        Ok(s["mesh"]["alive"] == 1)
    })?;
    let hello = upload(&a, "hello.wat")?;
    // Only B may run it: B fetches the module from A.
    let id = submit(
        &a,
        json!({ "module": hello, "requirements": { "capabilities": ["b-only"] } }),
    )?;
    let j = finished(&a, &id)?;
    let r = first_result(&j, 0);
    assert_eq!(r["runner"], b.node_id.as_str(), "{j}");
    assert_eq!(r["status"], "ok", "{j}");
    assert_eq!(j["result"]["stdout"], "hello from the VVM\n");
    assert!(b.metric("voike_vvm_module_fetches_total{result=\"fetched\"}")? >= 1.0);

    // A's copy of another module is altered on disk: B refuses it by its hash.
    let fib = upload(&a, "fib.wat")?;
    a.stop()?;
    {
        let db = redb::Database::open(a.dir.join("state.redb"))?;
        let txn = db.begin_write()?;
        {
            let def: redb::TableDefinition<'_, &[u8], &[u8]> =
                redb::TableDefinition::new("modules_v1");
            let mut t = txn.open_table(def)?;
            let tampered = example("hello.wat")?;
            t.insert(fib.as_bytes(), &tampered[..])?;
        }
        txn.commit()?;
    }
    a.restart()?;
    // Both ways, and B counts A alive again (A said goodbye when it stopped): B fetches from
    // the members it holds alive.
    wait_for(DEADLINE, "b reconnected", || {
        Ok(a.sees_connected(&b.node_id)?
            && b.sees_connected(&a.node_id)?
            && b.get("/hypermesh/status")?.body["mesh"]["alive"] == 1)
    })?;
    let id = submit(
        &a,
        json!({ "module": fib, "entry": "fib", "args": ["10"], "requirements": { "capabilities": ["b-only"] } }),
    )?;
    wait_for(DEADLINE, "B refuses the tampered module", || {
        Ok(b.metric("voike_vvm_module_fetches_total{result=\"hash_mismatch\"}")? >= 1.0)
    })?;
    wait_for(DEADLINE, "B reports the module unavailable", || {
        let j = job(&a, &id)?;
        Ok(first_result(&j, 0)["status"] == "module_unavailable")
    })?;
    let stored = b.get("/grid/jobs")?;
    assert_eq!(stored.status, 200);
    Ok(())
}

#[test]
fn jobs_written_offline_run_once_the_node_rejoins() -> anyhow::Result<()> {
    let mut a = spawn("gridoff-a", &[], "eu", "runner")?;
    let mut c = spawn("gridoff-c", &["--join", &a.invite("10m")?], "eu", "")?;
    wait_for(DEADLINE, "c connected", || a.sees_connected(&c.node_id))?;
    let fib = upload(&c, "fib.wat")?;
    // C is cut off: A goes down. C accepts a job only A can run; it waits.
    a.stop()?;
    let id = submit(
        &c,
        json!({ "module": fib, "entry": "fib", "args": ["90"], "requirements": { "capabilities": ["runner"] } }),
    )?;
    let pending = job(&c, &id)?;
    assert_eq!(pending["state"], "pending", "{pending}");
    a.restart()?;
    let j = finished(&c, &id)?;
    assert_eq!(j["state"], "done", "{j}");
    let r = first_result(&j, 0);
    assert_eq!(r["runner"], a.node_id.as_str());
    // F(90) mod P.
    let (mut x, mut y) = (0u64, 1u64);
    for _ in 0..90 {
        (x, y) = (y, (x + y) % P);
    }
    assert_eq!(r["returns"], json!([x]));
    c.stop()?;
    Ok(())
}

/// A segment that runs for four leases is claimed once: its runner keeps the claim alive with
/// signed renewals outside the jobs document, so the segment stays `running` on every node past
/// the claim's own lease and no other eligible node takes it, and the runner's ledger holds one
/// `job.claim` for it (before, a change and a ledger entry every third of the lease). Then the
/// other node restarts mid-run, with no renewal heard yet, and still does not take it.
#[test]
fn a_long_segment_is_claimed_once_and_kept_by_renewals() -> anyhow::Result<()> {
    let mut a = spawn("grid-lease-a", &[], "eu", "")?;
    let mut b = spawn("grid-lease-b", &["--join", &a.invite("10m")?], "eu", "")?;
    wait_for(DEADLINE, "B connected", || a.sees_connected(&b.node_id))?;
    // Each knows the other runs grid jobs (from its health report): placement agrees.
    wait_for(DEADLINE, "both see the other as a grid runner", || {
        for n in [&a, &b] {
            let routes = n.get("/hypermesh/routes")?.body["routes"].clone();
            let ok = routes.as_array().is_some_and(|l| {
                l.iter().any(|r| {
                    r["capabilities"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|x| x == "grid"))
                })
            });
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let forever = upload(&a, "forever.wat")?;
    // Grid leases are 2 s (see `env`): the run takes 8 s, four leases.
    let (id, runner, seen) = submit_one_claimant(&a, &[&a, &b], &forever, 8_000)?;
    let running_late = watch_one_claimant(&[&a, &b], &id, &runner, seen)?;
    assert!(
        running_late >= 2,
        "the segment was not seen running past its first lease ({running_late} looks)"
    );
    let (r, other) = if runner == a.node_id {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let j = job(r, &id)?;
    assert_eq!(first_result(&j, 0)["status"], "timeout", "{j}");
    assert_eq!(first_result(&j, 0)["runner"], runner.as_str(), "{j}");
    // One claim in the runner's ledger for this job: the renewals wrote nothing.
    let entries = r.get("/ledger/recent?limit=1000")?.body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let claims = entries
        .iter()
        .filter(|e| e["kind"] == "job.claim" && e["body"]["job"] == id.as_str())
        .count();
    assert_eq!(claims, 1, "job.claim entries for {id}: {entries:?}");
    // The runner sent renewals and the other node took them.
    let sent = r.metric("voike_grid_lease_renewals_total{result=\"sent\"}")?;
    assert!(sent >= 6.0, "renewals sent: {sent}");
    let renewed = other.metric("voike_grid_lease_renewals_total{result=\"renewed\"}")?;
    assert!(
        renewed >= 6.0,
        "renewals taken by the other node: {renewed}"
    );
    // The timeout failed the segment on the runner; the other node may retry it. Stop it.
    cancel(&a, &id)?;

    // A node that restarts while the other runs a segment has heard no renewal yet and finds
    // the claim's lease in the document long run out: it still does not take the segment.
    let (id, holder, seen) = submit_one_claimant(&a, &[&a, &b], &forever, 10_000)?;
    // Until the document's own lease has run out.
    std::thread::sleep(Duration::from_millis(2_500));
    let other = if holder == a.node_id { &mut b } else { &mut a };
    other.stop()?;
    other.restart()?;
    watch_one_claimant(&[&a, &b], &id, &holder, seen)?;
    let mut j = Value::Null;
    wait_for(DEADLINE, "A holds the second job's first result", || {
        j = job(&a, &id)?;
        Ok(j["segments"][0]["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty()))
    })?;
    assert_eq!(first_result(&j, 0)["runner"], holder.as_str(), "{j}");
    cancel(&a, &id)
}

fn cancel(node: &TestNode, id: &str) -> anyhow::Result<()> {
    let r = node.post(&format!("/grid/jobs/{id}/cancel"), &json!({}))?;
    anyhow::ensure!(r.status == 200, "cancel {id}: {} {}", r.status, r.body);
    Ok(())
}

/// The claimants of segment 0 of job `id` as `node` shows them.
fn claimants(node: &TestNode, id: &str) -> anyhow::Result<(Value, Vec<String>)> {
    let j = job(node, id)?;
    let who = j["segments"][0]["claims"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| c["runner"].as_str().unwrap_or_default().to_string())
        .collect();
    Ok((j, who))
}

/// Submits a one-segment `forever` job that runs `wall_ms` and returns it once one node
/// claimed it: its id, the runner and when the claim was first seen. Two nodes that place a
/// job at the same moment from views that differ (a health report on its way) may both claim
/// it at once, which the design allows (both results are kept, see protocol.md "Placement");
/// such a job is cancelled and another submitted, so that what follows watches a single
/// claimant.
fn submit_one_claimant(
    submitter: &TestNode,
    nodes: &[&TestNode],
    module: &str,
    wall_ms: u64,
) -> anyhow::Result<(String, String, std::time::Instant)> {
    for _ in 0..3 {
        let id = submit(
            submitter,
            json!({ "module": module, "entry": "run",
                    "limits": { "wallMs": wall_ms, "fuel": 1_000_000_000_000u64 } }),
        )?;
        let mut runner = String::new();
        wait_for(DEADLINE, "the job claimed", || {
            for n in nodes {
                if let Some(who) = claimants(n, &id)?.1.first() {
                    runner = who.clone();
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        let seen = std::time::Instant::now();
        // A second claim made at the same moment arrives within a few milliseconds.
        let mut both = false;
        while seen.elapsed() < Duration::from_millis(500) && !both {
            for n in nodes {
                // A node may not have merged the job yet.
                both |= claimants(n, &id).is_ok_and(|(_, who)| who.len() > 1);
            }
        }
        if !both {
            return Ok((id, runner, seen));
        }
        cancel(submitter, &id)?;
    }
    anyhow::bail!("three jobs in a row were claimed by two nodes at once")
}

/// Watches job `id` (one segment) on `nodes` until its first result: no look may show a claim
/// by another node than `runner`. Returns how many looks, two leases or more after the claim
/// was first `seen`, showed the segment `running`.
fn watch_one_claimant(
    nodes: &[&TestNode],
    id: &str,
    runner: &str,
    seen: std::time::Instant,
) -> anyhow::Result<usize> {
    let mut running_late = 0;
    wait_for(DEADLINE, "the segment's first result", || {
        for n in nodes {
            // A node that is restarting does not answer: look at the others.
            let Ok((j, who)) = claimants(n, id) else {
                continue;
            };
            let seg = &j["segments"][0];
            if seg["results"].as_array().is_some_and(|r| !r.is_empty()) {
                return Ok(true);
            }
            assert!(
                who.iter().all(|w| w == runner),
                "another node claimed a segment whose runner is alive and running it: {j}"
            );
            // Two leases after the claim, the document's own lease has run out: the segment
            // still runs, for every node, by the renewals.
            if seen.elapsed() > Duration::from_secs(4) && seg["state"] == "running" {
                running_late += 1;
            }
        }
        Ok(false)
    })?;
    Ok(running_late)
}
