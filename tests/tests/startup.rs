//! Start-up checks, configuration validation and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

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
    assert_eq!(again["node_id"], me["node_id"]);
    assert_eq!(again["mesh_id"], me["mesh_id"]);
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
