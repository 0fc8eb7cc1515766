//! SRV answers (RFC 2782) for SNRL services over real DNS: an `SRV` query at a registered
//! service name answers `0 WEIGHT PORT <node>.nodes.<mesh domain>` for every endpoint that may
//! be served, with the target's address as additional data.

use std::time::Duration;

use serde_json::json;
use voike_tests::dns::{self, Message, RData, RecordType};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// `(priority, weight, port, target)` of the SRV answers, in order.
fn srv(m: &Message) -> Vec<(u16, u16, u16, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect()
}

fn register(node: &TestNode, port: u16, weight: u32) -> anyhow::Result<String> {
    let r = node.post(
        "/snrl/endpoints",
        &json!({ "service": "api.demo.mesh.", "address": "127.0.0.1", "port": port,
                 "weight": weight }),
    )?;
    anyhow::ensure!(r.status == 201, "register {port}: {} {}", r.status, r.body);
    Ok(r.body["endpoint"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn srv_query_at_a_service_answers_its_ports_and_node() -> anyhow::Result<()> {
    let node = TestNode::spawn("srv", &[])?;
    node.create_zone("demo", "demo.mesh.")?;
    register(&node, 8443, 700)?;
    let second = register(&node, 9443, 300)?;
    let target = format!(
        "{}.nodes.voike.internal.",
        node.node_id.to_ascii_lowercase()
    );
    let addr = node.dns_addr()?;
    wait_for(DEADLINE, "both SRV records over UDP", || {
        Ok(srv(&dns::udp(addr, "api.demo.mesh.", RecordType::SRV)?).len() == 2)
    })?;
    let m = dns::udp(addr, "api.demo.mesh.", RecordType::SRV)?;
    assert!(m.metadata.authoritative, "{m:?}");
    assert_eq!(
        srv(&m),
        [
            (0, 700, 8443, target.clone()),
            (0, 300, 9443, target.clone())
        ],
        "heaviest first, the registering node as target"
    );
    // The target's address rides along (the node's own record in the mesh zone), as does the
    // signature TXT.
    wait_for(DEADLINE, "the target's A record as additional data", || {
        let m = dns::udp(addr, "api.demo.mesh.", RecordType::SRV)?;
        Ok(m.additionals.iter().any(|r| {
            r.name.to_ascii() == target && matches!(&r.data, RData::A(a) if a.0.is_loopback())
        }))
    })?;
    assert!(
        m.additionals
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(t) if t.to_string().contains("snrl=v1"))),
        "{m:?}"
    );
    // The same over TCP; the target itself resolves.
    let t = dns::tcp(addr, "api.demo.mesh.", RecordType::SRV)?;
    assert_eq!(srv(&t).len(), 2, "{t:?}");
    let a = dns::udp(addr, &target, RecordType::A)?;
    assert_eq!(dns::answers(&a), ["A 127.0.0.1"]);

    // A removed endpoint leaves the SRV answer.
    let r = node.delete(&format!("/snrl/endpoints/{second}"))?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(DEADLINE, "the removed endpoint's SRV record gone", || {
        Ok(srv(&dns::udp(addr, "api.demo.mesh.", RecordType::SRV)?)
            == [(0, 700, 8443, target.clone())])
    })?;
    Ok(())
}

#[test]
fn srv_query_at_a_name_without_endpoints_is_nxdomain() -> anyhow::Result<()> {
    let node = TestNode::spawn("srv-none", &[])?;
    node.create_zone("demo", "demo.mesh.")?;
    register(&node, 8443, 100)?;
    let addr = node.dns_addr()?;
    wait_for(DEADLINE, "the service's SRV record", || {
        Ok(srv(&dns::udp(addr, "api.demo.mesh.", RecordType::SRV)?).len() == 1)
    })?;
    let m = dns::udp(addr, "other.demo.mesh.", RecordType::SRV)?;
    assert_eq!(
        m.metadata.response_code,
        dns::ResponseCode::NXDomain,
        "{m:?}"
    );
    assert!(srv(&m).is_empty());
    assert!(dns::has_soa(&m), "{m:?}");
    Ok(())
}
