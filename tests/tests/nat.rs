//! Behind NAT for real (issue "Behind NAT for real"): members behind two home routers that drop
//! unsolicited packets join through a public member, reach each other (through a member relay,
//! and directly where the hole punch works), replicate state, and stay reachable when the relay
//! they used — Genesis — stops, through the other public member.

use std::time::Duration;

use serde_json::json;
use voike_tests::natlab::{Nat, NatLab};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(90);

fn path(from: &TestNode, to: &TestNode) -> anyhow::Result<Option<String>> {
    Ok(from
        .nodes()?
        .iter()
        .find(|n| n["node_id"] == to.node_id.as_str() && n["connected"] == true)
        .and_then(|n| n["connection"].as_str().map(String::from)))
}

fn sees_endpoint(node: &TestNode, service: &str) -> anyhow::Result<bool> {
    Ok(node
        .get(&format!("/snrl/endpoints?service={service}"))?
        .body["endpoints"]
        .as_array()
        .is_some_and(|e| !e.is_empty()))
}

fn run(nats: [Nat; 2], tag: &str) -> anyhow::Result<()> {
    let lab = NatLab::new(2, &nats)?;
    let mut p = TestNode::in_netns(
        &format!("{tag}-p"),
        lab.public_ns(0),
        &lab.public_ip(0),
        &[],
    )?;
    p.start()?;
    let mut q = TestNode::in_netns(
        &format!("{tag}-q"),
        lab.public_ns(1),
        &lab.public_ip(1),
        &["--join", &p.invite("10m")?],
    )?;
    q.start()?;
    let mut a = TestNode::in_netns(
        &format!("{tag}-a"),
        lab.private_ns(0),
        &lab.private_ip(0),
        &["--join", &p.invite("10m")?],
    )?;
    a.start()?;
    let mut b = TestNode::in_netns(
        &format!("{tag}-b"),
        lab.private_ns(1),
        &lab.private_ip(1),
        &["--join", &p.invite("10m")?],
    )?;
    b.start()?;
    wait_for(DEADLINE, "A and B connected to each other", || {
        Ok(path(&a, &b)?.is_some() && path(&b, &a)?.is_some())
    })?;
    eprintln!("{tag}: A-B path {:?}", path(&a, &b)?);
    // State flows between them.
    let r = a.post(
        "/snrl/endpoints",
        &json!({ "service": "a.free.mesh", "address": "10.0.0.1", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for(DEADLINE, "B sees A's endpoint", || {
        sees_endpoint(&b, "a.free.mesh")
    })?;

    // The relay they met through (Genesis) stops: they stay reachable, directly or through Q.
    p.stop()?;
    wait_for(DEADLINE, "A and B connected after Genesis stopped", || {
        Ok(path(&a, &b)?.is_some() && path(&b, &a)?.is_some())
    })?;
    eprintln!("{tag}: A-B path after the relay loss {:?}", path(&a, &b)?);
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "b.free.mesh", "address": "10.0.0.2", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for(DEADLINE, "A sees B's endpoint", || {
        sees_endpoint(&a, "b.free.mesh")
    })?;
    drop(q);
    Ok(())
}

#[test]
fn members_behind_two_cone_nats_reach_each_other_and_survive_losing_a_relay() -> anyhow::Result<()>
{
    voike_tests::require_netns!();
    run([Nat::Cone, Nat::Cone], "natc")
}

#[test]
fn members_behind_two_symmetric_nats_reach_each_other_through_a_relay() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    run([Nat::Symmetric, Nat::Symmetric], "nats")
}
