//! Who may say what in the DNS namespace (issue "Who may say what", items 2 and 3): members
//! create zones only under an admin's grant or an owner's delegation, the mesh domain is no
//! one's, owners add and remove owners, and a claim to another owner's zone — made through the
//! API, or forged with a member's key as if partitioned and stamped far in the future — never
//! wins on any replica.

use std::time::Duration;

use serde_json::json;
use voike_protocol::docs::DocId;
use voike_tests::dns::{self, RecordType, answers};
use voike_tests::forge::{self, Base};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn a_records(node: &TestNode, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(answers(&dns::udp(node.dns_addr()?, name, RecordType::A)?))
}

fn owners(node: &TestNode, zone: &str) -> anyhow::Result<Vec<String>> {
    let r = node.get("/vdns/zones")?;
    Ok(r.body["zones"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|z| z["id"] == zone)
        .flat_map(|z| z["owners"].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o.as_str().map(String::from))
        .collect())
}

fn three(prefix: &str) -> anyhow::Result<(TestNode, TestNode, TestNode)> {
    let a = TestNode::genesis(&format!("{prefix}-a"))?;
    let b = TestNode::join(&format!("{prefix}-b"), &a.invite("10m")?)?;
    let c = TestNode::join(&format!("{prefix}-c"), &a.invite("10m")?)?;
    wait_for(DEADLINE, "all connected", || {
        Ok(a.sees_connected(&b.node_id)?
            && a.sees_connected(&c.node_id)?
            && b.sees_connected(&c.node_id)?)
    })?;
    Ok((a, b, c))
}

#[test]
fn members_create_zones_only_under_a_grant_or_a_delegation() -> anyhow::Result<()> {
    let (a, b, c) = three("ns")?;
    a.create_zone("demo", "demo.mesh.")?;
    a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    wait_for(DEADLINE, "B has demo", || {
        Ok(!owners(&b, "demo")?.is_empty())
    })?;

    // Without a grant, a member creates no zone; inside A's zone it needs A's delegation.
    let r = b.post(
        "/vdns/zones",
        &json!({ "id": "bz", "domain": "b.example." }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.to_string().contains("voike grant add"), "{}", r.body);
    let r = b.post(
        "/vdns/zones",
        &json!({ "id": "sub", "domain": "sub.demo.mesh." }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.to_string().contains("delegate"), "{}", r.body);
    // Only admins grant.
    let r = b.post(
        "/mesh/grants",
        &json!({ "domain": "b.example.", "node": b.node_id }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    // Nobody is granted the mesh domain.
    let r = a.post(
        "/mesh/grants",
        &json!({ "domain": "x.nodes.voike.internal.", "node": b.node_id }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);

    // A grant, through the CLI: B creates zones at and under it, nowhere else.
    let out = voike_tests::voike(&a, &["grant", "add", "b.example.", &b.node_id])?;
    assert!(out.status.success(), "{out:?}");
    wait_for(DEADLINE, "B holds the grant", || {
        Ok(b.get("/mesh/grants")?.body["grants"]
            .as_array()
            .is_some_and(|g| g.iter().any(|x| x["node"] == b.node_id.as_str())))
    })?;
    b.create_zone("bz", "b.example.")?;
    b.add_a("bz", "www.b.example.", "10.0.1.1")?;
    b.create_zone("bdeep", "deep.team.b.example.")?;
    let r = b.post(
        "/vdns/zones",
        &json!({ "id": "other", "domain": "other.example." }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    wait_for(DEADLINE, "C answers B's record", || {
        Ok(a_records(&c, "www.b.example.")? == ["A 10.0.1.1"])
    })?;

    // A delegation inside A's zone: B may register endpoints and create zones there, and only
    // there.
    let r = a.post(
        "/vdns/zones/demo/delegations",
        &json!({ "domain": "api.demo.mesh.", "node": b.node_id }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for(DEADLINE, "B sees the delegation", || {
        let z = b.get("/vdns/zones")?;
        Ok(z.body.to_string().contains("api.demo.mesh."))
    })?;
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh", "address": "10.0.2.2", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "www.demo.mesh", "address": "6.6.6.4", "port": 80 }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    b.create_zone("api", "v2.api.demo.mesh.")?;
    for n in [&a, &c] {
        wait_for(
            DEADLINE,
            &format!("{} answers B's endpoint", n.name),
            || Ok(a_records(n, "api.demo.mesh.")? == ["A 10.0.2.2"]),
        )?;
        assert_eq!(a_records(n, "www.demo.mesh.")?, ["A 10.0.0.7"]);
    }

    // Owners add and remove owners; the last one stays.
    let r = a.post("/vdns/zones/demo/owners", &json!({ "node": c.node_id }))?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(DEADLINE, "C owns demo", || {
        Ok(owners(&c, "demo")?.contains(&c.node_id))
    })?;
    let r = c.delete(&format!("/vdns/zones/demo/owners/{}", a.node_id))?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.delete(&format!("/vdns/zones/demo/owners/{}", c.node_id))?;
    assert_eq!(r.status, 409, "the last owner stays: {}", r.body);
    // An admin recovers a zone it no longer owns.
    wait_for(DEADLINE, "A sees C alone owning demo", || {
        Ok(owners(&a, "demo")? == [c.node_id.clone()])
    })?;
    let r = a.post("/vdns/zones/demo/owners", &json!({ "node": a.node_id }))?;
    assert_eq!(r.status, 200, "admin recovery: {}", r.body);
    Ok(())
}

#[test]
fn a_claim_to_another_owners_zone_never_wins_on_any_replica() -> anyhow::Result<()> {
    let (a, mut b, mut c) = three("claim")?;
    a.create_zone("demo", "demo.mesh.")?;
    a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    // B holds a broad grant that covers A's domain; C holds none.
    a.grant_to(&b, "mesh.")?;
    for n in [&b, &c] {
        wait_for(DEADLINE, &format!("{} has demo", n.name), || {
            Ok(owners(n, "demo")? == [a.node_id.clone()])
        })?;
    }
    // Through the API: refused.
    let r = b.post(
        "/vdns/zones",
        &json!({ "id": "demo", "domain": "demo.mesh." }),
    )?;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = b.post(
        "/vdns/zones",
        &json!({ "id": "demo2", "domain": "demo.mesh." }),
    )?;
    assert_eq!(r.status, 409, "{}", r.body);

    // As modified clients that claim A's zone as if they had never seen it, stamped a day
    // ahead: B (whose grant covers the domain) and C (no grant).
    let applied_before = a.metric("voike_sync_changes_applied_total{doc=\"zones\"}")?;
    b.stop()?;
    c.stop()?;
    forge::forge(&b, DocId::Zones, Base::Nothing, |r, key, me| {
        Ok(vec![forge::claim_zone(
            r,
            key,
            me,
            "demo",
            "demo.mesh.",
            86_400_000,
        )?])
    })?;
    forge::forge(&c, DocId::Zones, Base::Nothing, |r, key, me| {
        Ok(vec![forge::claim_zone(
            r,
            key,
            me,
            "demo",
            "demo.mesh.",
            86_400_000,
        )?])
    })?;
    b.restart()?;
    c.restart()?;
    // C's claim is refused (no grant) where it arrives; B's is valid as of what it depends on
    // and is merged — and still does not take the zone.
    for n in [&a, &b] {
        wait_for(DEADLINE, &format!("{} refuses C's claim", n.name), || {
            Ok(n.metric("voike_sync_changes_rejected_total{reason=\"no_grant\"}")? >= 1.0)
        })?;
    }
    wait_for(DEADLINE, "A merges B's claim", || {
        Ok(a.metric("voike_sync_changes_applied_total{doc=\"zones\"}")? > applied_before)
    })?;
    let events = a.get("/trust/events")?;
    assert!(
        events.body["counts"]["byReason"]["trust.change_rejected:no_grant"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{}",
        events.body
    );
    for n in [&a, &b, &c] {
        assert_eq!(
            owners(n, "demo")?,
            std::slice::from_ref(&a.node_id),
            "{}",
            n.name
        );
        assert_eq!(
            a_records(n, "www.demo.mesh.")?,
            ["A 10.0.0.7"],
            "{}",
            n.name
        );
    }
    // A still writes its zone; B does not.
    a.add_a("demo", "new.demo.mesh.", "10.0.0.8")?;
    let r = b.post(
        "/vdns/records",
        &json!({ "zoneId": "demo", "record": { "type": "A", "name": "x.demo.mesh.", "value": "6.6.6.6" } }),
    )?;
    assert_eq!(r.status, 403, "{}", r.body);
    wait_for(DEADLINE, "C answers A's new record", || {
        Ok(a_records(&c, "new.demo.mesh.")? == ["A 10.0.0.8"])
    })?;
    Ok(())
}
