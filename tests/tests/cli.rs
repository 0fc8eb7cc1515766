//! The `voike` CLI against a real daemon.

use voike_tests::{TestNode, voike, wait_for};

#[test]
fn status_peers_and_invite_work_against_a_running_node() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("cli")?;
    let out = voike(&genesis, &["status"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&genesis.node_id), "{text}");
    assert!(text.contains("admin"), "{text}");

    let out = voike(&genesis, &["invite", "--ttl", "10m"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ticket = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        ticket.starts_with("voike1") && !ticket.contains('\n'),
        "{ticket}"
    );
    let member = TestNode::join("cli-member", &ticket)?;
    wait_for(
        std::time::Duration::from_secs(30),
        "member connected",
        || genesis.sees_connected(&member.node_id),
    )?;

    let out = voike(&genesis, &["peers"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NODE") && header.contains("STATE") && header.contains("RTT_MS"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(&member.node_id))
        .unwrap_or_default();
    assert!(
        row.contains("connected") && row.contains("direct"),
        "{table}"
    );

    let out = voike(&genesis, &["peers", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2));

    let out = voike(&member, &["invite"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only admins"));
    Ok(())
}

#[test]
fn a_wrong_token_is_a_one_line_401() -> anyhow::Result<()> {
    let node = TestNode::genesis("cli-token")?;
    let out = std::process::Command::new(voike_tests::bin("voike"))
        .args(["--api", &node.api, "--token", "wrong", "peers"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.trim().lines().count() == 1,
        "{err}"
    );
    Ok(())
}
