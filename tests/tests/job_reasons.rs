//! Failed or stuck grid jobs say why, and jobs can be cancelled: a segment's result carries the
//! runtime's reason (shown by `voike job show`, `job submit --wait` and `GET /grid/jobs/{id}`),
//! a job no live node may run says so, and `voike job cancel` (the submitter, or an admin) ends a
//! job `cancelled` with its running segment stopped, on every replica.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use voike_tests::{TestNode, voike, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A node whose grid runs two segments at once and whose leases are short.
fn spawn(name: &str, extra: &[&str]) -> anyhow::Result<TestNode> {
    let mut node = TestNode::create(name, extra)?;
    node.set_env(&[
        ("VOIKED_GRID__MAX_PARALLEL", "2"),
        ("VOIKED_GRID__LEASE", "2s"),
        ("VOIKED_HYPERMESH__HEARTBEAT_INTERVAL", "300ms"),
    ]);
    node.start()?;
    Ok(node)
}

/// Runs `voike args` and requires success; returns stdout.
fn ok(node: &TestNode, args: &[&str]) -> anyhow::Result<String> {
    let out = voike(node, args)?;
    anyhow::ensure!(
        out.status.success(),
        "voike {args:?} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    Ok(stdout(&out))
}

/// Runs `voike args` and requires exit status 1; returns stdout and stderr.
fn fails(node: &TestNode, args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = voike(node, args)?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "voike {args:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    Ok((stdout(&out), stderr(&out)))
}

/// `value` of the `key   value` line of `job show`'s output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

fn job(node: &TestNode, id: &str) -> anyhow::Result<Value> {
    let r = node.get(&format!("/grid/jobs/{id}"))?;
    anyhow::ensure!(r.status == 200, "job {id}: {} {}", r.status, r.body);
    Ok(r.body["job"].clone())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether segment `segment` of `job` has a live lease.
fn leased(job: &Value, segment: usize) -> bool {
    job["segments"][segment]["claims"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["leaseUntilMs"].as_u64().unwrap_or(0) > now_ms())
        })
}

/// Submits `examples/forever.wat` (runs until its ten-minute wall time) on `node`, with `extra`
/// flags; returns its id.
fn submit_forever(node: &TestNode, extra: &[&str]) -> anyhow::Result<String> {
    let forever = example("forever.wat");
    let mut args = vec![
        "job",
        "submit",
        &forever,
        "--entry",
        "run",
        "--fuel",
        "1000000000000",
        "--wall-ms",
        "600000",
    ];
    args.extend_from_slice(extra);
    Ok(ok(node, &args)?.trim().to_string())
}

#[test]
fn a_job_missing_its_argument_fails_with_the_runtimes_reason() -> anyhow::Result<()> {
    let node = spawn("reasons-arg", &[])?;
    // cpu.wat's only function is `spin(iterations: i64)`; no --arg is given.
    let (text, err) = fails(
        &node,
        &[
            "job",
            "submit",
            &example("cpu.wat"),
            "--wait",
            "--timeout",
            "60",
        ],
    )?;
    let last = err.lines().last().unwrap_or_default();
    let why = "`spin` takes 1 argument(s) (i64), the job gives 0";
    assert!(
        last.starts_with("Error: ") && last.contains("failed: segment 0 invalid_entry ("),
        "{err}"
    );
    assert!(
        last.contains(why),
        "the failure line names the reason: {err}"
    );
    let id = field(&text, "job").unwrap_or_default().to_string();

    // The API: the signed result carries it.
    let j = job(&node, &id)?;
    assert_eq!(j["state"], "failed", "{j}");
    let r = &j["segments"][0]["results"][0];
    assert_eq!(r["status"], "invalid_entry", "{j}");
    assert_eq!(r["reason"], format!("invalid entry: {why}").as_str(), "{j}");

    // `job show` (which exits 1 when a signature does not verify) prints it.
    let shown = ok(&node, &["job", "show", &id])?;
    assert_eq!(field(&shown, "state"), Some("failed"), "{shown}");
    let runner = &node.node_id[node.node_id.len() - 8..];
    assert_eq!(
        field(&shown, "reason"),
        Some(format!("segment 0 by {runner}: invalid entry: {why}").as_str()),
        "{shown}"
    );
    Ok(())
}

#[test]
fn a_job_needing_a_capability_nobody_has_says_why_it_waits() -> anyhow::Result<()> {
    let node = spawn("reasons-wait", &[])?;
    let hello = example("hello.wat");
    let (text, err) = fails(
        &node,
        &[
            "job",
            "submit",
            &hello,
            "--cap",
            "gpu",
            "--wait",
            "--timeout",
            "3",
        ],
    )?;
    let hint = "no live node has capability gpu";
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("waiting: ") && l.contains(hint))
            .count(),
        1,
        "--wait says it once:\n{err}"
    );
    assert!(err.contains("did not finish within 3s"), "{err}");
    let id = field(&text, "job").unwrap_or_default().to_string();

    let j = job(&node, &id)?;
    assert_eq!(j["state"], "pending", "{j}");
    assert_eq!(j["waiting"], hint, "{j}");
    let shown = ok(&node, &["job", "show", &id])?;
    assert_eq!(field(&shown, "waiting"), Some(hint), "{shown}");
    assert_eq!(field(&shown, "state"), Some("pending"), "{shown}");

    // A job this node may run has no such hint.
    let out = ok(
        &node,
        &["job", "submit", &hello, "--wait", "--timeout", "60"],
    )?;
    let done = field(&out, "job").unwrap_or_default().to_string();
    let j = job(&node, &done)?;
    assert_eq!(j["state"], "done", "{j}");
    assert!(j.get("waiting").is_none(), "{j}");
    Ok(())
}

#[test]
fn a_long_job_cancelled_by_its_author_ends_cancelled_and_its_segment_stops() -> anyhow::Result<()> {
    let node = spawn("reasons-cancel", &[])?;
    let id = submit_forever(&node, &[])?;
    wait_for(DEADLINE, "the segment runs", || {
        Ok(leased(&job(&node, &id)?, 0))
    })?;

    let said = ok(&node, &["job", "cancel", &id])?;
    assert!(said.contains(&format!("job {id} cancelled")), "{said}");
    let mut j = Value::Null;
    wait_for(DEADLINE, "the segment stopped", || {
        j = job(&node, &id)?;
        let stopped = j["segments"][0]["results"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["status"] == "cancelled"));
        Ok(stopped && !leased(&j, 0))
    })?;
    assert_eq!(j["state"], "cancelled", "{j}");
    assert_eq!(j["segments"][0]["state"], "cancelled", "{j}");
    assert_eq!(j["cancelled"]["by"], node.node_id.as_str(), "{j}");
    let r = &j["segments"][0]["results"][0];
    assert_eq!(r["runner"], node.node_id.as_str(), "{j}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("cancelled")),
        "{j}"
    );

    // The scheduler has passed over the job since (a later job ran to its end): nothing
    // started it again.
    let out = ok(
        &node,
        &[
            "job",
            "submit",
            &example("hello.wat"),
            "--wait",
            "--timeout",
            "60",
        ],
    )?;
    assert_eq!(field(&out, "state"), Some("done"), "{out}");
    let again = job(&node, &id)?;
    assert_eq!(again["state"], "cancelled", "{again}");
    assert_eq!(
        again["segments"][0]["results"].as_array().map(Vec::len),
        Some(1),
        "{again}"
    );
    assert!(!leased(&again, 0), "{again}");

    let shown = ok(&node, &["job", "show", &id])?;
    assert_eq!(field(&shown, "state"), Some("cancelled"), "{shown}");
    assert!(
        field(&shown, "cancelled").is_some_and(|c| c.starts_with(&format!("by {}", node.node_id))),
        "{shown}"
    );
    let listed = ok(&node, &["job", "list", "--state", "cancelled"])?;
    assert!(listed.contains(&id), "{listed}");
    // A job that is done cannot be cancelled.
    let done = field(&out, "job").unwrap_or_default().to_string();
    let (_, err) = fails(&node, &["job", "cancel", &done])?;
    assert!(err.contains("is done"), "{err}");
    Ok(())
}

#[test]
fn a_member_cannot_cancel_another_nodes_job_and_an_admin_can() -> anyhow::Result<()> {
    let a = spawn("reasons-admin-a", &[])?;
    let b = spawn("reasons-admin-b", &["--join", &a.invite("10m")?])?;
    wait_for(DEADLINE, "b connected", || a.sees_connected(&b.node_id))?;

    // A job of the admin's: the member may not cancel it.
    let on_a = submit_forever(&a, &["--cap", "nobody"])?;
    wait_for(DEADLINE, "b holds a's job", || {
        Ok(b.get(&format!("/grid/jobs/{on_a}"))?.status == 200)
    })?;
    let r = b.post(&format!("/grid/jobs/{on_a}/cancel"), &Value::Null)?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden", "{}", r.body);
    assert_eq!(job(&a, &on_a)?["state"], "pending");

    // A job of the member's: the admin cancels it, and both replicas show it cancelled.
    let on_b = submit_forever(&b, &["--cap", "nobody"])?;
    wait_for(DEADLINE, "a holds b's job", || {
        Ok(a.get(&format!("/grid/jobs/{on_b}"))?.status == 200)
    })?;
    let said = ok(&a, &["job", "cancel", &on_b])?;
    assert!(said.contains("cancelled"), "{said}");
    wait_for(DEADLINE, "b sees the admin's cancel", || {
        Ok(job(&b, &on_b)?["state"] == "cancelled")
    })?;
    let j = job(&b, &on_b)?;
    assert_eq!(j["cancelled"]["by"], a.node_id.as_str(), "{j}");
    assert!(
        j.get("waiting").is_none(),
        "a cancelled job waits for nothing: {j}"
    );
    Ok(())
}
