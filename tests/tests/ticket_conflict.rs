//! One one-time ticket redeemed twice, on two sides of a partition: X joins through A while B
//! is down, Y joins through B (with the same ticket) while A and X are down. When everyone meets
//! again, every member keeps the same one of the two — the smaller peer id — records the decision
//! (`trust.ticket_conflict`), and lists the same member set; no permanent split.

use std::collections::BTreeSet;
use std::time::Duration;

use voike_tests::{TestNode, wait_for};

fn member_set(node: &TestNode) -> anyhow::Result<BTreeSet<String>> {
    let mut out: BTreeSet<String> = node
        .nodes()?
        .iter()
        .filter_map(|n| n["nodeId"].as_str().map(String::from))
        .collect();
    out.insert(node.node_id.clone());
    Ok(out)
}

fn ledger_kinds(node: &TestNode) -> anyhow::Result<Vec<String>> {
    let r = node.get("/ledger/recent?limit=1000")?;
    Ok(r.body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect())
}

#[test]
fn a_ticket_redeemed_on_both_sides_of_a_partition_ends_with_one_member_set() -> anyhow::Result<()> {
    let mut a = TestNode::spawn_fixed("tc-a", &[])?;
    let t1 = a.invite("10m")?;
    let mut b = TestNode::create("tc-b", &["--join", &t1])?;
    b.fix_ports()?;
    b.start()?;
    wait_for(Duration::from_secs(30), "A and B connected", || {
        Ok(a.sees_connected(&b.node_id)? && b.sees_connected(&a.node_id)?)
    })?;
    let b_addr = b.dial_addrs()?[0].clone();
    let ticket = a.invite("10m")?;

    // Side 1: A admits X while B is down.
    b.stop()?;
    let mut x = TestNode::join("tc-x", &ticket)?;
    wait_for(Duration::from_secs(30), "A to admit X", || {
        a.sees_connected(&x.node_id)
    })?;
    x.stop()?;
    a.stop()?;

    // Side 2: B admits Y, with the same ticket, while A and X are down.
    b.restart()?;
    let y = TestNode::spawn("tc-y", &["--join", &ticket, "--bootstrap", &b_addr])?;
    wait_for(Duration::from_secs(30), "B to admit Y", || {
        b.sees_connected(&y.node_id)
    })?;
    assert_ne!(x.node_id, y.node_id);

    // The heal.
    a.restart()?;
    x.restart()?;
    let (winner, loser) = {
        let px: libp2p_identity::PeerId = x.node_id.parse()?;
        let py: libp2p_identity::PeerId = y.node_id.parse()?;
        if px.to_bytes() < py.to_bytes() {
            (x.node_id.clone(), y.node_id.clone())
        } else {
            (y.node_id.clone(), x.node_id.clone())
        }
    };
    let want: BTreeSet<String> = [a.node_id.clone(), b.node_id.clone(), winner.clone()]
        .into_iter()
        .collect();
    wait_for(
        Duration::from_secs(60),
        "A and B to list the same members",
        || {
            let (ma, mb) = (member_set(&a)?, member_set(&b)?);
            anyhow::ensure!(
                ma == want && mb == want,
                "A lists {ma:?}, B lists {mb:?}, want {want:?}"
            );
            Ok(true)
        },
    )?;
    // The winner is connected to both; the loser to neither.
    wait_for(
        Duration::from_secs(30),
        "the winner connected, the loser not",
        || {
            Ok(a.sees_connected(&winner)?
                && b.sees_connected(&winner)?
                && !a.sees_connected(&loser)?
                && !b.sees_connected(&loser)?)
        },
    )?;
    let recorded = ledger_kinds(&a)?
        .into_iter()
        .chain(ledger_kinds(&b)?)
        .any(|k| k == "trust.ticket_conflict");
    assert!(recorded, "the decision is recorded in the ledger");
    // Restarts do not change the decision.
    a.stop()?;
    a.restart()?;
    wait_for(
        Duration::from_secs(30),
        "A's members after a restart",
        || Ok(member_set(&a)? == want),
    )?;
    drop((x, y));
    Ok(())
}
