//! Hypermesh on real processes with short detector settings: a killed node is declared dead by
//! every survivor and its route disappears; it recovers when it comes back; a stopped (SIGSTOP)
//! node is detected and recovers after SIGCONT without a restart.

use std::time::{Duration, Instant};

use serde_json::Value;
use voike_tests::{TestNode, voike, wait_for};

const CONFIG: &str = r#"
[hypermesh]
region = "eu"
capabilities = ["http"]
heartbeat_interval = "300ms"
sample_fast = "200ms"
sample_slow = "2s"
min_dead = "3s"
"#;
/// The configured bound for "dead" (min_dead) plus slack for phi to cross and for polling.
const DEAD_WITHIN: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(60);

fn state_of(observer: &TestNode, node_id: &str) -> anyhow::Result<Option<String>> {
    let s = observer.get("/hypermesh/status")?.body;
    Ok(s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["nodeId"] == node_id))
        .and_then(|p| p["state"].as_str().map(String::from)))
}

fn has_route(observer: &TestNode, node_id: &str) -> anyhow::Result<bool> {
    let r = observer.get("/hypermesh/routes")?.body;
    Ok(r["routes"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["peer"] == node_id)))
}

fn event_kinds(observer: &TestNode, peer: &str) -> anyhow::Result<Vec<String>> {
    let e = observer.get("/hypermesh/events")?.body;
    Ok(e["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["peer"] == peer || e["failed"] == peer)
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect())
}

fn four_nodes(prefix: &str) -> anyhow::Result<(tempfile::TempDir, Vec<TestNode>)> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("voiked.toml");
    std::fs::write(&cfg, CONFIG)?;
    let cfg = cfg.to_string_lossy().to_string();
    let a = TestNode::spawn_fixed(&format!("{prefix}-a"), &["--config", &cfg])?;
    let mut nodes = vec![a];
    for i in 0..3 {
        let ticket = nodes[0].invite("10m")?;
        let name = format!("{prefix}-{}", (b'b' + i as u8) as char);
        nodes.push(TestNode::spawn_fixed(
            &name,
            &["--config", &cfg, "--join", &ticket],
        )?);
    }
    // Everyone sees everyone alive with a route.
    for o in &nodes {
        for n in &nodes {
            if o.node_id == n.node_id {
                continue;
            }
            wait_for(
                DEADLINE,
                &format!("{} sees {} alive", o.name, n.name),
                || {
                    Ok(state_of(o, &n.node_id)?.as_deref() == Some("alive")
                        && has_route(o, &n.node_id)?)
                },
            )?;
        }
    }
    Ok((dir, nodes))
}

#[test]
fn a_killed_node_is_declared_dead_everywhere_and_recovers_when_back() -> anyhow::Result<()> {
    let (_dir, mut nodes) = four_nodes("hm-kill")?;
    let victim = nodes[3].node_id.clone();
    nodes[3].kill()?;
    let killed = Instant::now();
    for o in &nodes[..3] {
        wait_for(
            DEAD_WITHIN,
            &format!("{} declares the victim dead", o.name),
            || Ok(state_of(o, &victim)?.as_deref() == Some("dead")),
        )?;
        assert!(
            !has_route(o, &victim)?,
            "{}: a dead node keeps no route",
            o.name
        );
        let kinds = event_kinds(o, &victim)?;
        assert!(
            kinds.iter().any(|k| k == "peer_down"),
            "{}: {kinds:?}",
            o.name
        );
        assert!(
            kinds.iter().any(|k| k == "spawn_advisory"),
            "{}: {kinds:?}",
            o.name
        );
    }
    let detected = killed.elapsed();
    assert!(detected <= DEAD_WITHIN, "{detected:?}");

    nodes[3].restart()?;
    for o in &nodes[..3] {
        wait_for(
            DEADLINE,
            &format!("{} sees the victim recover", o.name),
            || Ok(state_of(o, &victim)?.as_deref() == Some("alive") && has_route(o, &victim)?),
        )?;
        let kinds = event_kinds(o, &victim)?;
        assert!(
            kinds.iter().any(|k| k == "peer_recovered"),
            "{}: {kinds:?}",
            o.name
        );
    }
    // The events are in the observers' ledgers too (once committed).
    wait_for(DEADLINE, "hypermesh.peer_down in the ledger", || {
        let ledger = nodes[0].get("/ledger/recent?limit=500")?.body;
        Ok(ledger["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "hypermesh.peer_down")))
    })?;
    let m = nodes[0].metrics()?;
    assert!(
        m.contains("voike_hypermesh_transitions_total{state=\"dead\"}"),
        "{m}"
    );

    // The same through the CLI.
    let out = voike(&nodes[0], &["mesh", "events"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("peer_down") && text.contains(&victim),
        "{text}"
    );
    let out = voike(&nodes[0], &["mesh", "routes"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&victim), "{text}");
    let out = voike(&nodes[0], &["mesh", "status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("3 alive"), "{text}");
    Ok(())
}

#[test]
fn a_stopped_node_is_detected_and_recovers_after_sigcont() -> anyhow::Result<()> {
    let (_dir, nodes) = four_nodes("hm-stop")?;
    let victim = nodes[2].node_id.clone();
    nodes[2].signal(nix::sys::signal::Signal::SIGSTOP)?;
    let result = (|| -> anyhow::Result<()> {
        for o in [&nodes[0], &nodes[1], &nodes[3]] {
            wait_for(
                DEAD_WITHIN,
                &format!("{} notices the stopped node", o.name),
                || {
                    Ok(matches!(
                        state_of(o, &victim)?.as_deref(),
                        Some("suspect" | "dead")
                    ))
                },
            )?;
        }
        Ok(())
    })();
    nodes[2].signal(nix::sys::signal::Signal::SIGCONT)?;
    result?;
    for o in [&nodes[0], &nodes[1], &nodes[3]] {
        wait_for(DEADLINE, &format!("{} sees it alive again", o.name), || {
            Ok(state_of(o, &victim)?.as_deref() == Some("alive"))
        })?;
    }
    // Its own view and agents are served.
    let status: Value = nodes[2].get("/hypermesh/status")?.body;
    assert!(
        status["samples"]["memTotalBytes"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
    let agents = nodes[2].get("/hypermesh/agents")?.body;
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["perfwatch", "meshsurgeon", "hyperroute"]);
    assert_eq!(nodes[0].get("/hypermesh/events?since=x")?.status, 400);
    Ok(())
}

/// A peer that is not a member connects to publish health reports: one signed with its own key,
/// one claiming to be a member with a forged signature. The member never tells it its
/// subscriptions nor takes its gossip before it proves membership (it never does), so neither
/// report is published, validated or shown in the node's view of the mesh. (Forged reports from
/// members are refused by signature: `voike_protocol::health` unit tests.)
#[test]
fn non_member_reports_never_reach_the_member() -> anyhow::Result<()> {
    use voike_protocol::health::{Activity, HealthReport, ReportBody, Samples};
    use voike_protocol::hlc::Hlc;

    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("voiked.toml");
    std::fs::write(&cfg, CONFIG)?;
    let cfg = cfg.to_string_lossy().to_string();
    let a = TestNode::spawn_fixed("hm-rogue-a", &["--config", &cfg])?;
    let b = TestNode::spawn_fixed(
        "hm-rogue-b",
        &["--config", &cfg, "--join", &a.invite("10m")?],
    )?;
    wait_for(DEADLINE, "b alive on a", || {
        Ok(state_of(&a, &b.node_id)?.as_deref() == Some("alive"))
    })?;
    let mesh_id = a.get("/mesh/self")?.body["meshId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let addr: libp2p::Multiaddr = a
        .dial_addrs()?
        .into_iter()
        .find(|x| x.contains("/tcp/"))
        .ok_or_else(|| anyhow::anyhow!("no tcp address"))?
        .parse()?;

    let rogue = libp2p::identity::Keypair::generate_ed25519();
    let b_key_bytes = {
        let (k, _) = voike_storage::keyfile::load_or_create_identity(&b.dir.join("node.key"))?;
        k.public().encode_protobuf()
    };
    let body = |node: Vec<u8>| ReportBody {
        node,
        hlc: Hlc {
            wall_ms: 1,
            counter: 0,
        },
        samples: Samples::default(),
        activity: Activity::Sleep,
        region: "evil".into(),
        capabilities: vec![],
        addrs: vec![],
        version: "0".into(),
    };
    let own = HealthReport::sign(&rogue, body(rogue.public().encode_protobuf()))?;
    let mut forged = HealthReport::sign(&rogue, body(b_key_bytes))?;
    forged.signature[0] ^= 1;

    // Two rogue peers, one report each: one of its own, one claiming to be B. Neither has a
    // membership proof, so the member never tells them its subscriptions (and never takes
    // gossip from them) before dropping them; they cannot even publish.
    let rt = tokio::runtime::Runtime::new()?;
    let rogue2 = libp2p::identity::Keypair::generate_ed25519();
    for (key, report) in [(rogue, own), (rogue2, forged)] {
        let published = rt.block_on(publish_as(key, addr.clone(), &mesh_id, report.to_bytes()))?;
        assert!(!published, "a non-member got to publish a health report");
    }
    assert_eq!(
        a.metric("voike_hypermesh_gossip_messages_total{direction=\"in\",result=\"invalid\"}")?,
        0.0,
        "nothing from a non-member reaches validation"
    );
    let status = a.get("/hypermesh/status")?.body;
    let peers: Vec<&str> = status["peers"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["nodeId"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(peers, [b.node_id.as_str()], "{status}");
    assert!(
        !status.to_string().contains("evil"),
        "no report content was taken: {status}"
    );
    Ok(())
}

/// Connects to `addr` as `key`, waits for the node's subscription to the health topic and
/// publishes `data` there; returns false when the node dropped the connection first (it tells
/// its subscriptions only to proven members).
async fn publish_as(
    key: libp2p::identity::Keypair,
    addr: libp2p::Multiaddr,
    mesh_id: &str,
    data: Vec<u8>,
) -> anyhow::Result<bool> {
    use futures::StreamExt;
    use libp2p::{SwarmBuilder, gossipsub, noise, swarm::SwarmEvent, tcp, yamux};

    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let b: gossipsub::Behaviour = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::Config::default(),
            )?;
            Ok(b)
        })?
        .build();
    let topic = gossipsub::IdentTopic::new(format!("voike/health/1/{mesh_id}"));
    swarm.behaviour_mut().subscribe(&topic)?;
    swarm.dial(addr)?;
    // The node's handshake timeout is 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await?;
        match event {
            SwarmEvent::Behaviour(gossipsub::Event::Subscribed { topic: t, .. })
                if t == topic.hash() =>
            {
                break;
            }
            SwarmEvent::ConnectionClosed { .. } => return Ok(false),
            _ => {}
        }
    }
    swarm.behaviour_mut().publish(topic, data)?;
    // Keep the connection serviced for a moment so that the message leaves.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::timeout_at(until, swarm.select_next_some())
        .await
        .is_ok()
    {}
    Ok(true)
}
