//! Behind NAT for real (issue "Behind NAT for real"): members behind two home routers that drop
//! unsolicited packets join through a public member, reach each other (through a member relay,
//! and directly where the hole punch works), replicate state, and stay reachable when the relay
//! they used — Genesis — stops, through the other public member.

use std::time::Duration;

use serde_json::json;
use voike_tests::natlab::{Nat, NatLab, Upnpd};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(90);

fn path(from: &TestNode, to: &TestNode) -> anyhow::Result<Option<String>> {
    Ok(from
        .nodes()?
        .iter()
        .find(|n| n["nodeId"] == to.node_id.as_str() && n["connected"] == true)
        .and_then(|n| n["connection"].as_str().map(String::from)))
}

fn sees_endpoint(node: &TestNode, service: &str) -> anyhow::Result<bool> {
    Ok(node
        .get(&format!("/snrl/endpoints?service={service}"))?
        .body["endpoints"]
        .as_array()
        .is_some_and(|e| !e.is_empty()))
}

/// Starts a member on public host `h` of the lab: Genesis, or joining through `via`.
fn public_member(
    lab: &NatLab,
    h: usize,
    name: &str,
    via: Option<&TestNode>,
) -> anyhow::Result<TestNode> {
    let ticket = via.map(|v| v.invite("10m")).transpose()?;
    let args: Vec<&str> = match &ticket {
        Some(t) => vec!["--join", t],
        None => Vec::new(),
    };
    let mut node = TestNode::in_netns(name, lab.public_ns(h), &lab.public_ip(h), &args)?;
    node.start()?;
    Ok(node)
}

/// Starts a member behind router `k` of the lab, joining through `via`.
fn behind_nat(lab: &NatLab, k: usize, name: &str, via: &TestNode) -> anyhow::Result<TestNode> {
    let mut node = TestNode::in_netns(
        name,
        lab.private_ns(k),
        &lab.private_ip(k),
        &["--join", &via.invite("10m")?],
    )?;
    node.start()?;
    Ok(node)
}

/// Waits until `node` (behind router 0) says its port is mapped and advertises the mapped
/// address on the router's internet side.
fn wait_mapped(lab: &NatLab, node: &TestNode, mapper: &Upnpd, what: &str) -> anyhow::Result<()> {
    let mapped = format!("/ip4/{}/tcp/4747", lab.internet_ip_of_router(0));
    wait_for(DEADLINE, what, || {
        let me = node.get("/mesh/self")?.body;
        Ok(me["portMapping"] == "mapped"
            && me["externalAddrs"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(mapped.as_str()))))
    })
    .map_err(|e| anyhow::anyhow!("{e}; miniupnpd said: {}", mapper.log()))
}

fn run(nats: [Nat; 2], tag: &str) -> anyhow::Result<()> {
    let lab = NatLab::new(2, &nats)?;
    let mut p = public_member(&lab, 0, &format!("{tag}-p"), None)?;
    let q = public_member(&lab, 1, &format!("{tag}-q"), Some(&p))?;
    let a = behind_nat(&lab, 0, &format!("{tag}-a"), &p)?;
    let b = behind_nat(&lab, 1, &format!("{tag}-b"), &p)?;
    wait_for(DEADLINE, "A and B connected to each other", || {
        Ok(path(&a, &b)?.is_some() && path(&b, &a)?.is_some())
    })?;
    eprintln!("{tag}: A-B path {:?}", path(&a, &b)?);
    // AutoNAT v2: a member dialed P back on an address P was seen on.
    wait_for(DEADLINE, "P's address confirmed by AutoNAT v2", || {
        Ok(p.metric("voike_address_probes_total{reason=\"reachable\"}")? >= 1.0)
    })?;
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
fn members_behind_a_cone_and_a_symmetric_nat_reach_each_other() -> anyhow::Result<()> {
    // Direct if the punch works from the cone side, relayed otherwise: reachable either way.
    voike_tests::require_netns!();
    run([Nat::Cone, Nat::Symmetric], "natm")
}

#[test]
fn members_behind_two_symmetric_nats_reach_each_other_through_a_relay() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    run([Nat::Symmetric, Nat::Symmetric], "nats")
}

/// A non-member cannot use a member relay: a libp2p client with a fresh key asks a public
/// member (whose relay serves members: a member behind NAT holds a reservation on it) for a
/// reservation, and never gets one; the member drops it for lacking a membership proof.
#[test]
fn a_non_member_cannot_reserve_a_slot_on_a_member_relay() -> anyhow::Result<()> {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, multiaddr::Protocol, noise, relay, tcp, yamux};

    voike_tests::require_netns!();
    let lab = NatLab::new(2, &[Nat::Cone])?;
    let p = public_member(&lab, 0, "natr-p", None)?;
    let _q = public_member(&lab, 1, "natr-q", Some(&p))?;
    let a = behind_nat(&lab, 0, "natr-a", &p)?;
    // P's relay serves: the member behind NAT got its reservations.
    wait_for(DEADLINE, "A's reservations accepted", || {
        Ok(a.metric("voike_relay_reservations_total{reason=\"accepted\"}")? >= 1.0)
    })?;
    let p_id: libp2p::PeerId = p.node_id.parse()?;
    let relay_addr: Multiaddr = format!("/ip4/{}/tcp/4747", lab.public_ip(0)).parse()?;
    let circuit = relay_addr
        .clone()
        .with(Protocol::P2p(p_id))
        .with(Protocol::P2pCircuit);
    let rt = tokio::runtime::Runtime::new()?;
    let (accepted, closed) = rt.block_on(async move {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(|_, relay| relay)?
            .build();
        swarm.listen_on(circuit)?;
        let (mut accepted, mut closed) = (false, false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) => {
                        accepted = true;
                    }
                    SwarmEvent::ListenerClosed { .. } | SwarmEvent::ConnectionClosed { .. } => {
                        closed = true;
                        break;
                    }
                    _ => {}
                },
            }
        }
        anyhow::Ok((accepted, closed))
    })?;
    assert!(!accepted, "a non-member got a relay reservation");
    assert!(
        closed,
        "the member kept serving a non-member's reservation request"
    );
    assert_eq!(p.metric("voike_relay_circuits_total")?, 0.0);
    Ok(())
}

/// NAT rebinding: the router behind which A sits forgets every mapping (`conntrack -F`, as a
/// router reboot would). The mesh re-forms within 30 s: A and B connected again and writes on
/// one reach the other.
#[test]
fn the_mesh_re_forms_after_a_router_forgets_its_mappings() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    if std::process::Command::new("conntrack")
        .arg("--version")
        .output()
        .is_err()
    {
        // .ci/run installs it; a developer machine without it skips with the reason.
        eprintln!("SKIPPED: conntrack is not installed (apt-get install conntrack)");
        return Ok(());
    }
    let lab = NatLab::new(1, &[Nat::Cone, Nat::Cone])?;
    let p = public_member(&lab, 0, "natf-p", None)?;
    let a = behind_nat(&lab, 0, "natf-a", &p)?;
    let b = behind_nat(&lab, 1, "natf-b", &p)?;
    wait_for(DEADLINE, "A and B connected", || {
        Ok(path(&a, &b)?.is_some() && path(&b, &a)?.is_some())
    })?;
    lab.flush_router(0)?;
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "after.free.mesh", "address": "10.0.0.3", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for(Duration::from_secs(30), "the mesh re-formed", || {
        Ok(path(&a, &b)?.is_some()
            && path(&b, &a)?.is_some()
            && sees_endpoint(&a, "after.free.mesh")?)
    })?;
    eprintln!("rebinding: A-B path {:?}", path(&a, &b)?);
    Ok(())
}

/// The public address of A's router changes (a new lease from the ISP): the flows through the
/// old address die, and the mesh re-forms — A and B connected again, writes flowing.
#[test]
fn the_mesh_re_forms_after_a_router_gets_a_new_public_address() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    let lab = NatLab::new(1, &[Nat::Cone, Nat::Cone])?;
    let p = public_member(&lab, 0, "natn-p", None)?;
    let a = behind_nat(&lab, 0, "natn-a", &p)?;
    let b = behind_nat(&lab, 1, "natn-b", &p)?;
    wait_for(DEADLINE, "A and B connected", || {
        Ok(path(&a, &b)?.is_some() && path(&b, &a)?.is_some())
    })?;
    let new = lab.renumber_router(0)?;
    let since = std::time::Instant::now();
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "renumbered.free.mesh", "address": "10.0.0.5", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    // The dead links are noticed by their pings (`p2p.ping_interval` + `p2p.ping_timeout`).
    wait_for(Duration::from_secs(60), "the mesh re-formed", || {
        Ok(path(&a, &b)?.is_some()
            && path(&b, &a)?.is_some()
            && sees_endpoint(&a, "renumbered.free.mesh")?)
    })?;
    eprintln!(
        "renumbered to {new}: re-formed in {:.1} s, A-B path {:?}",
        since.elapsed().as_secs_f64(),
        path(&a, &b)?
    );
    Ok(())
}

/// Port mapping: A sits behind a symmetric NAT whose router offers UPnP IGD (miniupnpd), B
/// behind another symmetric NAT without it. Without a mapping they meet only through a relay
/// (the symmetric/symmetric test); with it, A's router forwards A's port, A advertises the
/// mapped address, and B reaches A directly — still after the public member stops.
#[test]
fn a_member_behind_a_router_with_upnp_is_reached_directly() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    let lab = NatLab::new(1, &[Nat::Symmetric, Nat::Symmetric])?;
    let Some(upnpd) = lab.start_upnp(0)? else {
        // .ci/run installs it; a developer machine without it skips with the reason.
        eprintln!("SKIPPED: miniupnpd is not installed (apt-get install miniupnpd-nftables)");
        return Ok(());
    };
    let mut p = public_member(&lab, 0, "natu-p", None)?;
    let a = behind_nat(&lab, 0, "natu-a", &p)?;
    let b = behind_nat(&lab, 1, "natu-b", &p)?;
    wait_mapped(&lab, &a, &upnpd, "A's router mapped A's port")?;
    wait_for(DEADLINE, "B connected to A directly", || {
        Ok(path(&b, &a)?.as_deref() == Some("direct"))
    })?;
    // B's own router offers nothing: it says so once its search gives up.
    wait_for(DEADLINE, "B says no gateway answered", || {
        Ok(b.get("/mesh/self")?.body["portMapping"] == "no_gateway")
    })?;

    p.stop()?;
    let r = b.post(
        "/snrl/endpoints",
        &json!({ "service": "upnp.free.mesh", "address": "10.0.0.4", "port": 80 }),
    )?;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_for(DEADLINE, "A sees B's endpoint without Genesis", || {
        sees_endpoint(&a, "upnp.free.mesh")
    })?;
    assert_eq!(path(&b, &a)?.as_deref(), Some("direct"));
    Ok(())
}

/// PCP / NAT-PMP: A's router offers only those (miniupnpd with UPnP IGD off), B sits behind a
/// symmetric NAT: A maps its port by PCP (NAT-PMP as the fallback) and B reaches A directly.
#[test]
fn a_member_behind_a_router_with_only_pcp_and_nat_pmp_is_reached_directly() -> anyhow::Result<()> {
    voike_tests::require_netns!();
    let lab = NatLab::new(1, &[Nat::Symmetric, Nat::Symmetric])?;
    let Some(mapper) = lab.start_port_mapper(0, false)? else {
        eprintln!("SKIPPED: miniupnpd is not installed (apt-get install miniupnpd-nftables)");
        return Ok(());
    };
    let p = public_member(&lab, 0, "natp-p", None)?;
    let a = behind_nat(&lab, 0, "natp-a", &p)?;
    let b = behind_nat(&lab, 1, "natp-b", &p)?;
    wait_mapped(
        &lab,
        &a,
        &mapper,
        "A's router mapped A's port by PCP or NAT-PMP",
    )?;
    assert!(
        a.log().contains("via=pcp") || a.log().contains("via=nat-pmp"),
        "the mapping was not made by PCP or NAT-PMP"
    );
    wait_for(DEADLINE, "B connected to A directly", || {
        Ok(path(&b, &a)?.as_deref() == Some("direct"))
    })?;
    Ok(())
}
