//! Start-up checks, configuration validation and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Context;

use voike_tests::TestNode;

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn identity_readable_by_others_refuses_to_start() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("perm")?;
    let id = node.node_id.clone();
    node.stop()?;
    let key = node.dir.join("node.key");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(node.dir.join("admin.token"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    assert!(node.start().is_err(), "must not start with a 0644 key");
    let status = node.wait_exit(DEADLINE)?;
    assert!(!status.success());
    assert!(node.log().contains("chmod 600"), "{}", node.log());
    // Fixing the mode brings back the same node.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    node.start()?;
    assert_eq!(node.node_id, id);
    Ok(())
}

#[test]
fn corrupt_identity_refuses_to_start() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("corrupt")?;
    node.stop()?;
    let key = node.dir.join("node.key");
    std::fs::write(&key, b"garbage")?;
    assert!(node.start().is_err());
    assert!(!node.wait_exit(DEADLINE)?.success());
    assert!(node.log().contains("is corrupt"), "{}", node.log());
    assert!(!node.log().contains("panicked"), "{}", node.log());
    Ok(())
}

#[test]
fn sigterm_shuts_down_gracefully_and_state_survives() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("term")?;
    let me = node.get("/mesh/self")?.body;
    let started = std::time::Instant::now();
    let status = node.stop()?;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
    let log = node.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("store closed"), "{log}");
    assert!(!node.dir.join("api.addr").exists());
    node.restart()?;
    let again = node.get("/mesh/self")?.body;
    assert_eq!(again["nodeId"], me["nodeId"]);
    assert_eq!(again["meshId"], me["meshId"]);
    Ok(())
}

#[test]
fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let mut node = TestNode::spawn("json", &["--log-format", "json"])?;
    node.stop()?;
    let log = node.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        assert!(v["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    Ok(())
}

/// Starts `voiked` in a fresh data directory with `listen` as its p2p addresses (everything else
/// on port 0) and returns its output, how long it ran and the data directory.
fn start_on(
    listen: &[String],
) -> anyhow::Result<(std::process::Output, Duration, tempfile::TempDir)> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("data");
    let dir = dir.to_str().context("temp path is not UTF-8")?.to_string();
    let mut args = vec![
        "--data-dir",
        &dir,
        "--api",
        "127.0.0.1:0",
        "--dns",
        "127.0.0.1:0",
        "--doh",
        "off",
    ];
    for a in listen {
        args.extend(["--listen", a.as_str()]);
    }
    let started = std::time::Instant::now();
    let out = voike_tests::voiked_output(&args, DEADLINE)?;
    Ok((out, started.elapsed(), temp))
}

/// What a user checks after a start on a busy port: it failed at once, said which port, and
/// left no mesh (identity, token, database) in the new data directory.
fn assert_refused_cleanly(
    out: &std::process::Output,
    took: Duration,
    temp: &tempfile::TempDir,
    port: u16,
) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {stderr}");
    assert!(stderr.contains(&format!("/{port}")), "{stderr}");
    assert!(stderr.contains("p2p.listen"), "{stderr}");
    assert!(!stderr.contains("shutdown timeout"), "{stderr}");
    let dir = temp.path().join("data");
    for f in ["state.redb", "node.key", "admin.token"] {
        assert!(!dir.join(f).exists(), "{f} was created: {stderr}");
    }
}

#[test]
fn busy_tcp_port_exits_at_once_without_founding_a_mesh() -> anyhow::Result<()> {
    let held = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = held.local_addr()?.port();
    let (out, took, temp) = start_on(&[
        format!("/ip4/127.0.0.1/tcp/{port}"),
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
    ])?;
    assert_refused_cleanly(&out, took, &temp, port);
    Ok(())
}

#[test]
fn busy_udp_port_exits_at_once_without_founding_a_mesh() -> anyhow::Result<()> {
    let held = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = held.local_addr()?.port();
    let (out, took, temp) = start_on(&[
        "/ip4/127.0.0.1/tcp/0".into(),
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
    ])?;
    assert_refused_cleanly(&out, took, &temp, port);
    Ok(())
}
