//! Idle means idle (issue "Costs that do not grow with history"): on a node with nothing to do,
//! the threads that used to wake on a timer — the VVM's epoch ticker (100 times a second) and
//! the DNS UDP workers (4 times a second each) — sleep until there is work: a packet, a job, or
//! shutdown. Counted from the kernel's voluntary context switches of each thread.

use std::collections::BTreeMap;
use std::time::Duration;

use voike_tests::{TestNode, wait_for};

/// Voluntary context switches of the threads of `pid` whose name starts with one of `names`.
fn switches(pid: u32, names: &[&str]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm"))?
            .trim()
            .to_string();
        if !names.iter().any(|n| comm.starts_with(n)) {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status"))?;
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(
            format!(
                "{comm}/{}",
                task.file_name().unwrap_or_default().to_string_lossy()
            ),
            n,
        );
    }
    Ok(out)
}

#[test]
fn an_idle_node_does_not_wake_its_epoch_ticker_or_dns_workers() -> anyhow::Result<()> {
    let node = TestNode::genesis("idle")?;
    let pid = node.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let names = ["vvm-epoch", "dns-udp"];
    wait_for(Duration::from_secs(30), "the threads started", || {
        Ok(switches(pid, &names)?.len() >= 2)
    })?;
    let before = switches(pid, &names)?;
    // The measurement window: two seconds of nothing to do.
    std::thread::sleep(Duration::from_secs(2));
    let after = switches(pid, &names)?;
    for (thread, n) in &after {
        let woke = n - before.get(thread).copied().unwrap_or(*n);
        assert!(
            woke <= 2,
            "{thread} woke {woke} times in 2 s on an idle node (a timer without work)"
        );
    }
    // And the DNS workers still answer.
    let m = voike_tests::dns::udp(
        node.dns_addr()?,
        &format!(
            "{}.nodes.voike.internal.",
            node.node_id.to_ascii_lowercase()
        ),
        voike_tests::dns::RecordType::A,
    )?;
    assert!(!voike_tests::dns::answers(&m).is_empty());
    Ok(())
}

/// Jobs do not rebuild DNS: a job's submission, claim and result are changes of the jobs
/// document only, and DNS rebuilds its snapshot only for the documents it serves from (before,
/// one version for all documents made every lease renewal rebuild every record). A record write
/// is edited into the snapshot (it reads that record, not the zone); only a zone change reads
/// every zone again.
#[test]
fn grid_jobs_do_not_rebuild_the_dns_snapshot_and_records_are_edited_in() -> anyhow::Result<()> {
    use voike_tests::grid_util::{job_finished, submit_job, upload_ok};
    let node = TestNode::genesis("idle-dns")?;
    node.create_zone("demo", "demo.mesh.")?;
    let builds = || node.metric("voike_dns_snapshot_builds_total");
    let edits = || node.metric("voike_dns_snapshot_edits_total");
    let both = || Ok::<_, anyhow::Error>((builds()?, edits()?));
    // Settled: the start-up changes are built.
    wait_for(Duration::from_secs(30), "a settled snapshot", || {
        let a = both()?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(both()? == a && a.0 >= 1.0)
    })?;
    let before = both()?;
    let fib = upload_ok(&node, include_bytes!("../../examples/fib.wat"))?;
    for _ in 0..3 {
        let id = submit_job(
            &node,
            &serde_json::json!({ "module": fib, "entry": "fib", "args": ["20"] }),
        )?;
        let j = job_finished(&node, &id, Duration::from_secs(60))?;
        assert_eq!(j["state"], "done", "{j}");
    }
    assert_eq!(both()?, before, "grid jobs rebuilt the DNS snapshot");
    for i in 0..5 {
        node.add_a("demo", &format!("www{i}.demo.mesh."), "10.0.0.7")?;
    }
    wait_for(Duration::from_secs(10), "the records are served", || {
        let m = voike_tests::dns::udp(
            node.dns_addr()?,
            "www4.demo.mesh.",
            voike_tests::dns::RecordType::A,
        )?;
        Ok(!voike_tests::dns::answers(&m).is_empty())
    })?;
    let after = both()?;
    assert!(after.1 > before.1, "records were not edited in: {after:?}");
    assert_eq!(after.0, before.0, "a record write read every zone again");
    Ok(())
}

/// Threads of `pid` named `tokio-rt-worker` (the runtime's workers and its blocking threads).
fn runtime_threads(pid: u32) -> anyhow::Result<usize> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        if comm.trim() == "tokio-rt-worker" {
            n += 1;
        }
    }
    Ok(n)
}

/// The runtime runs `worker_threads` workers: one by default (an idle node wakes less), as many
/// as configured otherwise, and the node works either way.
#[test]
fn the_runtime_runs_the_configured_number_of_workers() -> anyhow::Result<()> {
    let one = TestNode::genesis("workers-default")?;
    let two = TestNode::spawn_with_env("workers-two", &[], &[("VOIKED_WORKER_THREADS", "2")])?;
    for (node, want) in [(&one, 1.0), (&two, 2.0)] {
        wait_for(Duration::from_secs(30), "the node to answer", || {
            Ok(node.get("/readyz")?.status == 200)
        })?;
        assert_eq!(
            node.metric("voike_runtime_worker_threads")?,
            want,
            "{}",
            node.name
        );
        let pid = node.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        assert!(runtime_threads(pid)? >= want as usize, "{}", node.name);
        let m = voike_tests::dns::udp(
            node.dns_addr()?,
            &format!(
                "{}.nodes.voike.internal.",
                node.node_id.to_ascii_lowercase()
            ),
            voike_tests::dns::RecordType::A,
        )?;
        assert!(!voike_tests::dns::answers(&m).is_empty(), "{}", node.name);
    }
    // A bad value is a config error naming the key, before anything starts.
    let out = std::process::Command::new(voike_tests::bin("voiked"))
        .args(["--data-dir", "/nonexistent/voike-workers-bad"])
        .env("VOIKED_WORKER_THREADS", "100000")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`worker_threads`"), "{err}");
    assert!(
        !std::path::Path::new("/nonexistent/voike-workers-bad").exists(),
        "nothing created"
    );
    Ok(())
}
