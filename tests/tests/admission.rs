//! Nodes without a valid, unused ticket of this mesh never become members.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use voike_protocol::mesh::Role;
use voike_protocol::ticket::Ticket;
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts a node that is expected to be refused; returns its log after it exited non-zero.
fn refused_join(name: &str, args: &[&str]) -> anyhow::Result<String> {
    Ok(refused_node(name, args)?.log())
}

fn refused_node(name: &str, args: &[&str]) -> anyhow::Result<TestNode> {
    let mut intruder = TestNode::create(name, args)?;
    // Refused before or after its API came up: either way the process must exit non-zero.
    let _ = intruder.start();
    let status = intruder.wait_exit(DEADLINE)?;
    assert!(
        !status.success(),
        "{name} should exit non-zero, got {status}"
    );
    Ok(intruder)
}

fn assert_never_listed(members: &[&TestNode], log: &str) -> anyhow::Result<()> {
    // The intruder's id is in its own log ("starting voiked node=...").
    let id = log
        .split("node=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    for m in members {
        let nodes = m.nodes()?;
        assert!(
            nodes
                .iter()
                .all(|n| n["nodeId"].as_str() != Some(id.as_str())),
            "{} lists the intruder {id}: {nodes:?}",
            m.name
        );
    }
    Ok(())
}

#[test]
fn forged_ticket_is_refused_and_the_intruder_is_never_listed() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let member = TestNode::join("member", &genesis.invite("10m")?)?;
    let mut ticket = Ticket::decode(&genesis.invite("10m")?)?;
    ticket.body.role = Role::Admin; // altered after signing
    let forged = ticket.encode()?;
    let log = refused_join("forged", &["--join", &forged])?;
    assert!(log.contains("forged or altered ticket"), "{log}");
    assert_never_listed(&[&genesis, &member], &log)?;
    Ok(())
}

#[test]
fn expired_ticket_is_refused() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let r = genesis.post("/mesh/invites", &serde_json::json!({"ttl": "1s"}))?;
    assert_eq!(r.status, 201, "{}", r.body);
    let expires_at_ms = r.body["expiresAtMs"].as_u64().unwrap_or(0);
    assert!(
        expires_at_ms > 1_000_000_000_000,
        "milliseconds: {}",
        r.body
    );
    // Tickets hold whole seconds: it is valid through the second of `expiresAtMs`.
    wait_for(Duration::from_secs(5), "the ticket to expire", || {
        Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() > expires_at_ms / 1000)
    })?;
    let log = refused_join(
        "expired",
        &["--join", r.body["ticket"].as_str().unwrap_or_default()],
    )?;
    assert!(log.contains("ticket expired"), "{log}");
    // The expiry as a date, not in Unix seconds.
    let date = voike_protocol::time::rfc3339(expires_at_ms / 1000);
    assert!(log.contains(&format!("ticket expired at {date}")), "{log}");
    assert!(!log.contains(&(expires_at_ms / 1000).to_string()), "{log}");
    assert_never_listed(&[&genesis], &log)?;
    Ok(())
}

#[test]
fn ticket_of_another_mesh_is_refused_by_members() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let member = TestNode::join("member", &genesis.invite("10m")?)?;
    let mut other = TestNode::genesis("other-genesis")?;
    let other_ticket = other.invite("10m")?;
    other.stop()?; // the other mesh is unreachable: only our mesh can answer
    let bootstrap = genesis.dial_addrs()?;
    let log = refused_join(
        "wrong-mesh",
        &["--join", &other_ticket, "--bootstrap", &bootstrap[0]],
    )?;
    assert!(log.contains("join rejected"), "{log}");
    assert!(log.contains("belongs to mesh"), "{log}");
    assert_never_listed(&[&genesis, &member], &log)?;
    Ok(())
}

#[test]
fn reused_ticket_is_refused_and_first_owner_keeps_it() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let ticket = genesis.invite("10m")?;
    let first = TestNode::join("first", &ticket)?;
    wait_for(DEADLINE, "first to join", || {
        genesis.sees_connected(&first.node_id)
    })?;
    let mut second = refused_node("second", &["--join", &ticket])?;
    let log = second.log();
    assert!(log.contains("join rejected"), "{log}");
    assert!(log.contains("already used by node"), "{log}");
    assert_never_listed(&[&genesis, &first], &log)?;
    // Restarted without --join, the refused node resumes its join (and is refused again)
    // instead of quietly founding a mesh of its own.
    let _ = second.restart();
    assert!(!second.wait_exit(DEADLINE)?.success());
    let log = second.log();
    assert!(log.contains("resuming the unfinished join"), "{log}");
    assert!(!log.contains("created a new mesh"), "{log}");
    assert!(genesis.sees_connected(&first.node_id)?);
    Ok(())
}

#[test]
fn garbage_ticket_is_a_clear_error() -> anyhow::Result<()> {
    for bad in ["hello", "voike1!!!!", "voike1AAAA"] {
        let log = refused_join("garbage", &["--join", bad])?;
        assert!(log.contains("invalid --join ticket"), "{bad}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    Ok(())
}

/// Refused peers share one ledger budget, whatever keys they use: fourteen non-members with
/// fresh keys give at most ten `trust.peer_refused` entries, and the rest of the minute's
/// refusals are written as one `trust.peers_refused` entry with their count.
#[test]
fn refusals_of_many_fresh_keys_share_one_ledger_budget() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("budget")?;
    let mut other = TestNode::genesis("budget-other")?;
    let other_ticket = other.invite("10m")?;
    other.stop()?;
    let bootstrap = genesis.dial_addrs()?;
    for i in 0..14 {
        refused_node(
            &format!("intruder{i}"),
            &["--join", &other_ticket, "--bootstrap", &bootstrap[0]],
        )?;
    }
    let kinds = || -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        Ok(genesis.get("/ledger/recent?limit=1000")?.body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e["kind"].as_str()?.to_string(), e["body"].clone())))
            .collect())
    };
    wait_for(
        Duration::from_secs(90),
        "the minute's count in the ledger",
        || Ok(kinds()?.iter().any(|(k, _)| k == "trust.peers_refused")),
    )?;
    let entries = kinds()?;
    let one_by_one = entries
        .iter()
        .filter(|(k, _)| k == "trust.peer_refused")
        .count();
    assert!(one_by_one <= 10, "{one_by_one} individual refusal entries");
    let counted: u64 = entries
        .iter()
        .filter(|(k, _)| k == "trust.peers_refused")
        .filter_map(|(_, b)| b["count"].as_u64())
        .sum();
    assert!(
        one_by_one as u64 + counted >= 14,
        "{one_by_one} recorded + {counted} counted < 14 refusals"
    );
    Ok(())
}
