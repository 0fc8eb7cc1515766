//! Member revocation (issue "Who may say what", item 4): an admin revokes a member with
//! `voike member revoke`; every replica that gets the signed record closes and refuses the
//! member's links within seconds, refuses its later changes, lists it as revoked, stops serving
//! its zones, endpoints and node name, and a ticket it issued admits no one.

use std::time::Duration;

use serde_json::json;
use voike_tests::dns::{self, RecordType, answers};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn a_records(node: &TestNode, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(answers(&dns::udp(node.dns_addr()?, name, RecordType::A)?))
}

fn listed_revoked(node: &TestNode, id: &str) -> anyhow::Result<bool> {
    Ok(node
        .nodes()?
        .iter()
        .any(|n| n["nodeId"] == id && n["revoked"] == true))
}

#[test]
fn a_revoked_member_is_cut_off_everywhere() -> anyhow::Result<()> {
    let a = TestNode::genesis("rev-a")?;
    // B is an admin, so that it can issue a ticket before it is revoked.
    let r = a.post("/mesh/invites", &json!({ "ttl": "10m", "role": "admin" }))?;
    assert_eq!(r.status, 201, "{}", r.body);
    let b = TestNode::join("rev-b", r.body["ticket"].as_str().unwrap_or_default())?;
    let mut c = TestNode::join("rev-c", &a.invite("10m")?)?;
    wait_for(DEADLINE, "all connected, B joined", || {
        Ok(a.sees_connected(&b.node_id)?
            && a.sees_connected(&c.node_id)?
            && b.sees_connected(&c.node_id)?
            && b.get("/mesh/self")?.body["membership"] == "member")
    })?;
    let b_ticket = b.invite("10m")?;
    b.create_zone("bz", "b.example.")?;
    b.add_a("bz", "www.b.example.", "10.0.1.1")?;
    let b_name = format!("{}.nodes.voike.internal.", b.node_id.to_ascii_lowercase());
    for n in [&a, &c] {
        wait_for(DEADLINE, &format!("{} answers B's names", n.name), || {
            Ok(a_records(n, "www.b.example.")? == ["A 10.0.1.1"]
                && !a_records(n, &b_name)?.is_empty())
        })?;
    }

    // C is away while A revokes B.
    c.stop()?;
    let out = voike_tests::voike(
        &a,
        &["member", "revoke", &b.node_id, "--reason", "key leaked"],
    )?;
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(10), "A drops B", || {
        Ok(!a.sees_connected(&b.node_id)? && listed_revoked(&a, &b.node_id)?)
    })?;
    // B keeps writing locally; nothing of it is taken in.
    b.add_a("bz", "late.b.example.", "10.0.1.2")?;
    c.restart()?;
    wait_for(DEADLINE, "C learns of the revocation and drops B", || {
        Ok(listed_revoked(&c, &b.node_id)? && !c.sees_connected(&b.node_id)?)
    })?;
    for n in [&a, &c] {
        wait_for(
            DEADLINE,
            &format!("{} stops serving B's names", n.name),
            || Ok(a_records(n, "www.b.example.")?.is_empty() && a_records(n, &b_name)?.is_empty()),
        )?;
        let names = n.record_names("bz")?;
        assert!(
            !names.iter().any(|x| x == "late.b.example."),
            "{} took B's change after the revocation: {names:?}",
            n.name
        );
        let status = n.get("/trust/status")?;
        assert_eq!(
            status.body["revoked"][0]["node"], b.node_id,
            "{}: {}",
            n.name, status.body
        );
        assert_eq!(status.body["revoked"][0]["reason"], "key leaked");
    }
    // A ticket B issued before it was revoked admits no one who knows of the revocation: the
    // new node is refused (by B too, once B has the record) and never listed by A or C.
    let mut d = TestNode::create("rev-d", &["--join", &b_ticket])?;
    let _ = d.start();
    wait_for(DEADLINE, "D refused", || {
        if d.log().contains("revoked") {
            return Ok(true);
        }
        let ev = a.get("/trust/events?limit=1000")?;
        Ok(ev.body["events"].as_array().is_some_and(|e| {
            e.iter().any(|x| {
                x["kind"] == "trust.peer_refused"
                    && x["body"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("revoked"))
            })
        }))
    })?;
    for n in [&a, &c] {
        let listed = n.nodes()?;
        assert_eq!(listed.len(), 3, "{}: {listed:?}", n.name);
    }
    Ok(())
}
