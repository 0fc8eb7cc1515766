//! Joining a mesh and staying connected without Genesis.

use std::time::Duration;

use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

fn all_see_all(nodes: &[&TestNode]) -> anyhow::Result<bool> {
    for a in nodes {
        for b in nodes {
            if a.node_id != b.node_id && !a.sees_connected(&b.node_id)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[test]
fn three_nodes_join_and_list_each_other_as_connected() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let b = TestNode::join("b", &genesis.invite("10m")?)?;
    let c = TestNode::join("c", &genesis.invite("10m")?)?;
    wait_for(
        DEADLINE,
        "every node to list all three as connected",
        || all_see_all(&[&genesis, &b, &c]),
    )?;
    for n in [&genesis, &b, &c] {
        let nodes = n.nodes()?;
        assert_eq!(nodes.len(), 3, "{}: {nodes:?}", n.name);
        for entry in &nodes {
            if entry["isSelf"] == true {
                assert_eq!(entry["nodeId"], n.node_id.as_str());
                continue;
            }
            assert_eq!(entry["connection"], "direct", "{entry}");
            assert!(
                entry["addresses"].as_array().is_some_and(|a| !a.is_empty()),
                "{entry}"
            );
        }
        let me = n.get("/mesh/self")?.body;
        assert_eq!(me["meshId"], genesis.get("/mesh/self")?.body["meshId"]);
        assert_eq!(me["membership"], "member");
        assert_eq!(n.get("/readyz")?.status, 200);
    }
    assert_eq!(genesis.get("/mesh/self")?.body["roles"][0], "admin");
    assert_eq!(b.get("/mesh/self")?.body["roles"][0], "member");
    // RTT appears once a ping has gone round.
    wait_for(DEADLINE, "an rttMs on b's view of genesis", || {
        Ok(b.nodes()?
            .iter()
            .any(|n| n["nodeId"] == genesis.node_id.as_str() && n["rttMs"].is_number()))
    })?;
    Ok(())
}

#[test]
fn members_stay_connected_without_genesis_and_genesis_rejoins_with_its_id() -> anyhow::Result<()> {
    let mut genesis = TestNode::genesis("genesis")?;
    let mut b = TestNode::join("b", &genesis.invite("10m")?)?;
    let c = TestNode::join("c", &genesis.invite("10m")?)?;
    wait_for(DEADLINE, "full mesh", || all_see_all(&[&genesis, &b, &c]))?;

    let genesis_id = genesis.node_id.clone();
    let status = genesis.stop()?;
    assert!(status.success(), "graceful stop exits 0, got {status}");
    wait_for(DEADLINE, "b and c to see genesis disconnected", || {
        Ok(!b.sees_connected(&genesis_id)? && !c.sees_connected(&genesis_id)?)
    })?;
    assert!(
        b.sees_connected(&c.node_id)?,
        "b lost c when genesis stopped"
    );
    assert!(
        c.sees_connected(&b.node_id)?,
        "c lost b when genesis stopped"
    );
    // A member restart without Genesis: b comes back to c alone.
    b.stop()?;
    b.restart()?;
    wait_for(DEADLINE, "b and c to reconnect without genesis", || {
        all_see_all(&[&b, &c])
    })?;

    genesis.restart()?;
    assert_eq!(genesis.node_id, genesis_id, "restart keeps the node id");
    wait_for(DEADLINE, "genesis to rejoin", || {
        all_see_all(&[&genesis, &b, &c])
    })?;
    Ok(())
}

#[test]
fn a_member_invited_as_admin_can_invite_others() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("genesis")?;
    let r = genesis.post(
        "/mesh/invites",
        &serde_json::json!({"ttl": "10m", "role": "admin"}),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    let admin = TestNode::join("admin", r.body["ticket"].as_str().unwrap_or_default())?;
    // Joined on both sides: Genesis admitted it, and it applied Genesis's welcome (only then
    // may it issue tickets).
    wait_for(DEADLINE, "admin joined", || {
        Ok(genesis.sees_connected(&admin.node_id)?
            && admin.get("/mesh/self")?.body["membership"] == "member")
    })?;
    let member = TestNode::join("member", &admin.invite("10m")?)?;
    wait_for(DEADLINE, "everyone connected", || {
        all_see_all(&[&genesis, &admin, &member])
    })?;
    // A plain member cannot invite.
    let r = member.post("/mesh/invites", &serde_json::json!({}))?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");
    Ok(())
}

#[test]
fn a_joiner_keeps_dialing_until_its_bootstrap_peer_is_up() -> anyhow::Result<()> {
    // Genesis on fixed ports, so that the ticket's addresses are valid again after a restart.
    let mut genesis = TestNode::spawn_fixed("genesis", &[])?;
    let ticket = genesis.invite("10m")?;
    genesis.stop()?;

    let joiner = TestNode::join("joiner", &ticket)?;
    let me = joiner.get("/mesh/self")?.body;
    assert_eq!(me["membership"], "joining", "{me}");
    assert_eq!(joiner.get("/readyz")?.status, 503);
    genesis.restart()?;
    // The joiner's next attempt may be up to `p2p.redial_max` (30s) away, and a QUIC dial started
    // while genesis was down stays pending until its handshake times out: allow for both.
    wait_for(
        DEADLINE * 3,
        "the joiner to get in once genesis is back",
        || {
            Ok(genesis.sees_connected(&joiner.node_id)?
                && joiner.sees_connected(&genesis.node_id)?
                && joiner.get("/mesh/self")?.body["membership"] == "member")
        },
    )?;
    assert_eq!(joiner.get("/readyz")?.status, 200);
    Ok(())
}
