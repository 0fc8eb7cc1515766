//! Nothing is published to a peer before it proves membership (issue "Who may say what", item
//! 6): a libp2p client with a fresh key dials a member over TCP, subscribes to the mesh's
//! gossip topics (whose names hold the mesh id, which is no secret), and never sends a
//! membership hello. While the member announces a stream of changes, the client receives no
//! gossip at all until the member drops it for lacking a proof.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, gossipsub, noise, tcp, yamux};
use voike_tests::TestNode;

#[test]
fn a_peer_that_has_not_proven_membership_receives_no_gossip() -> anyhow::Result<()> {
    let a = TestNode::genesis("gate-a")?;
    a.create_zone("demo", "demo.mesh.")?;
    let mesh_id = a.get("/mesh/self")?.body["meshId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let addr: Multiaddr = a
        .dial_addrs()?
        .into_iter()
        .find(|x| x.contains("/tcp/"))
        .ok_or_else(|| anyhow::anyhow!("no TCP address"))?
        .parse()?;

    // Keep the member announcing: a record every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let api = a.api.clone();
        let token = a.token.clone();
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_defaults();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = agent
                    .post(&format!("{api}/vdns/records"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .send_json(serde_json::json!({
                        "zoneId": "demo",
                        "record": { "type": "A", "name": format!("n{i}.demo.mesh."), "value": "10.0.0.1" }
                    }));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let rt = tokio::runtime::Runtime::new()?;
    let (connected, messages, closed) = rt.block_on(async move {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|key| {
                gossipsub::Behaviour::<
                    gossipsub::IdentityTransform,
                    gossipsub::AllowAllSubscriptionFilter,
                >::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .expect("gossipsub")
            })?
            .build();
        for t in ["sync", "health"] {
            swarm
                .behaviour_mut()
                .subscribe(&gossipsub::IdentTopic::new(format!(
                    "voike/{t}/1/{mesh_id}"
                )))?;
        }
        swarm.dial(addr)?;
        let (mut connected, mut messages, mut closed) = (false, 0u32, false);
        // The member's handshake timeout is 10 s; watch until it drops us, or 15 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { .. } => connected = true,
                    SwarmEvent::ConnectionClosed { .. } => { closed = true; break; }
                    SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) => messages += 1,
                    SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) => messages += 1,
                    _ => {}
                },
            }
        }
        anyhow::Ok((connected, messages, closed))
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    assert!(connected, "the client never connected");
    assert_eq!(
        messages, 0,
        "a peer without a membership proof received gossip (messages or subscriptions)"
    );
    assert!(closed, "the member kept a peer without a membership proof");
    // The member itself kept announcing: its changes were written the whole time.
    assert!(a.record_names("demo")?.len() > 10);
    Ok(())
}
