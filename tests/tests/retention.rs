//! Jobs leave the live state after `grid.retention` (issue "Costs that do not grow with
//! history"): jobs live in the document of the hour they were submitted in, and an hour whose
//! jobs are all finished is dropped by every node once its retention has passed — from memory,
//! from `state.redb` and from `GET /grid/jobs` — while the ledger entries that recorded its
//! changes stay on every node and still verify. A member that keeps the hour longer (its own,
//! longer retention) cannot bring it back to the others, and a node that joins afterwards ends
//! with the same live state as the rest.
//!
//! Time passes with libfaketime (Debian's `faketime`): the mesh is stopped after the first job
//! and started again an hour later, as if it had been switched off overnight.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use voike_tests::{TestNode, libfaketime, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn hello() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/hello.wat")
        .display()
        .to_string()
}

/// Submits hello.wat through the CLI and waits for it to end; returns the job id.
fn run_hello(node: &TestNode) -> anyhow::Result<String> {
    let out = voike_tests::voike(node, &["job", "submit", &hello(), "--wait"])?;
    anyhow::ensure!(out.status.success(), "job submit --wait: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .split_whitespace()
        .skip_while(|w| *w != "job")
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches(',')
        .to_string();
    anyhow::ensure!(id.len() == 24, "no job id in {err:?}");
    Ok(id)
}

/// The ids of every job `node` lists, following pages.
fn job_ids(node: &TestNode) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/grid/jobs?limit=100&after={a}"),
            None => "/grid/jobs?limit=100".into(),
        };
        let r = node.get(&path)?;
        anyhow::ensure!(r.status == 200, "{path}: {} {}", r.status, r.body);
        for j in r.body["jobs"].as_array().into_iter().flatten() {
            out.push(j["id"].as_str().unwrap_or_default().to_string());
        }
        match r.body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(out),
        }
    }
}

fn job_state(node: &TestNode, id: &str) -> anyhow::Result<Option<Value>> {
    let r = node.get(&format!("/grid/jobs/{id}"))?;
    match r.status {
        200 => Ok(Some(r.body["job"]["state"].clone())),
        404 => Ok(None),
        s => anyhow::bail!("job {id} on {}: {s} {}", node.name, r.body),
    }
}

/// Whether `node`'s ledger holds the `job.submit` entry of job `id`.
fn ledger_records_submit(node: &TestNode, id: &str) -> anyhow::Result<bool> {
    let r = node.get("/ledger/recent?limit=1000")?;
    Ok(r.body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["kind"] == "job.submit" && e["body"]["job"].as_str() == Some(id)))
}

/// A node on fixed ports (so that the others find it again after a restart).
fn spawn(name: &str, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<TestNode> {
    let mut node = TestNode::create(name, extra)?;
    node.fix_ports()?;
    node.set_env(env);
    node.start()?;
    Ok(node)
}

#[test]
fn finished_jobs_leave_every_node_after_the_retention_and_stay_in_every_ledger()
-> anyhow::Result<()> {
    let Some(lib) = libfaketime() else {
        // .ci/run installs faketime; a developer machine without it skips with the reason.
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return Ok(());
    };
    let lib = lib.to_string_lossy().into_owned();
    let retention = [("VOIKED_GRID__RETENTION", "4s")];
    let mut a = spawn("ret-a", &[], &retention)?;
    let mut b = spawn("ret-b", &["--join", &a.invite("2h")?], &retention)?;
    let mut c = spawn("ret-c", &["--join", &a.invite("2h")?], &retention)?;
    // D keeps jobs for two hours: longer than the hour the mesh is off.
    let mut d = spawn(
        "ret-d",
        &["--join", &a.invite("2h")?],
        &[("VOIKED_GRID__RETENTION", "2h")],
    )?;
    for n in [&b, &c, &d] {
        wait_for(DEADLINE, &format!("A sees {}", n.name), || {
            a.sees_connected(&n.node_id)
        })?;
    }

    let old = run_hello(&a)?;
    for n in [&a, &b, &c, &d] {
        wait_for(
            DEADLINE,
            &format!("the first job done on {}", n.name),
            || Ok(job_state(n, &old)?.is_some_and(|s| s == "done")),
        )?;
        wait_for(
            DEADLINE,
            &format!("its submission in {}'s ledger", n.name),
            || ledger_records_submit(n, &old),
        )?;
    }

    // An hour later (the mesh was off): the first job's hour ended more than 4 s ago.
    for n in [&mut a, &mut b, &mut c, &mut d] {
        n.stop()?;
    }
    let later = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "+1h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = later.to_vec();
        env.extend_from_slice(extra);
        env
    };
    for n in [&mut a, &mut b, &mut c] {
        n.set_env(&with(&retention));
        n.restart()?;
    }
    for n in [&a, &b, &c] {
        wait_for(
            DEADLINE,
            &format!("the first job gone from {}", n.name),
            || Ok(job_state(n, &old)?.is_none() && !job_ids(n)?.contains(&old)),
        )?;
        assert!(
            n.metric("voike_jobs_documents_closed_total")? >= 1.0,
            "{} closed no jobs document",
            n.name
        );
        assert!(
            n.log()
                .contains("closed a jobs document after its retention"),
            "{} does not log the close",
            n.name
        );
        // An hour twice the retention past its end is closed without being loaded first.
        let log = n.log();
        let loaded: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("loaded document") && l.contains("jobs/"))
            .collect();
        assert!(
            loaded.is_empty(),
            "{} loaded a jobs hour it closes at once: {loaded:?}",
            n.name
        );
        // Still in the ledger, which still verifies.
        assert!(
            ledger_records_submit(n, &old)?,
            "{}'s ledger lost the job's submission",
            n.name
        );
        let v = n.verify()?;
        assert_eq!(v["ok"], true, "{} verify: {v}", n.name);
    }
    // A recorded the submission in its own chain: that change is now counted as expired.
    let v = a.verify()?;
    assert!(
        v["changes"]["expired"].as_u64().is_some_and(|e| e >= 1),
        "A's verify does not count the dropped change: {v}"
    );

    // A job of the new hour runs as usual.
    let new = run_hello(&b)?;
    for n in [&a, &b, &c] {
        wait_for(DEADLINE, &format!("the new job done on {}", n.name), || {
            Ok(job_state(n, &new)?.is_some_and(|s| s == "done"))
        })?;
    }

    // D comes back holding the old hour (its retention is two hours) and gets the new one;
    // the others do not take the old hour back from it.
    d.set_env(&with(&[("VOIKED_GRID__RETENTION", "2h")]));
    d.restart()?;
    wait_for(DEADLINE, "D gets the new job", || {
        Ok(job_state(&d, &new)?.is_some_and(|s| s == "done"))
    })?;
    assert!(
        job_state(&d, &old)?.is_some(),
        "D dropped the old job before its own retention"
    );
    // Several digests from D (it announces what it holds on every change and on connect)
    // have reached the others by now; make one more change to be sure one more goes round.
    let marker = run_hello(&d)?;
    for n in [&a, &b, &c] {
        wait_for(DEADLINE, &format!("{} gets D's job", n.name), || {
            Ok(job_state(n, &marker)?.is_some_and(|s| s == "done"))
        })?;
        assert!(
            job_state(n, &old)?.is_none(),
            "{} took the closed hour back from D",
            n.name
        );
    }

    // A node that joins now catches up to the same live state as the others.
    let e = TestNode::spawn_with_env("ret-e", &["--join", &a.invite("1h")?], &with(&retention))?;
    let mut want = job_ids(&a)?;
    want.sort();
    assert_eq!(want, {
        let mut w = vec![new.clone(), marker.clone()];
        w.sort();
        w
    });
    wait_for(DEADLINE, "E holds the live jobs and no more", || {
        let mut got = job_ids(&e)?;
        got.sort();
        Ok(got == want)
    })?;
    for n in [&b, &c] {
        let mut got = job_ids(n)?;
        got.sort();
        assert_eq!(got, want, "{} lists other jobs than A", n.name);
    }
    wait_for(
        DEADLINE,
        "E's ledger holds the old job's submission",
        || ledger_records_submit(&e, &old),
    )?;
    assert_eq!(job_state(&e, &old)?, None, "E took the closed hour from D");
    let v = e.verify()?;
    assert_eq!(v["ok"], true, "E verify: {v}");
    Ok(())
}
