//! Acknowledged writes survive `kill -9`: a client writes records in a loop while the daemon is
//! killed, twenty times; after every restart the database opens and holds every acknowledged
//! record, and the ledger verifies.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use voike_tests::{TestNode, http, wait_for};

#[test]
fn acknowledged_writes_survive_kill_9_twenty_times() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("kill9")?;
    node.create_zone("demo", "demo.mesh.")?;
    let mut acked: Vec<String> = Vec::new();
    for round in 0..20 {
        let count = Arc::new(AtomicUsize::new(0));
        let (api, token, counter) = (node.api.clone(), node.token.clone(), count.clone());
        let writer = std::thread::spawn(move || {
            let mut ok = Vec::new();
            for i in 0.. {
                let name = format!("r{round}-{i}.demo.mesh.");
                let body = json!({ "zoneId": "demo", "record": { "type": "A", "name": name, "value": "10.0.0.1" } });
                match http("POST", &api, "/vdns/records", Some(&token), Some(&body)) {
                    Ok(r) if r.status == 201 => {
                        ok.push(name);
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => break, // the daemon is gone
                }
            }
            ok
        });
        // Kill after a varying number of acknowledged writes, while the writer keeps going.
        let target = 3 + (round * 7) % 20;
        wait_for(Duration::from_secs(60), "writes acknowledged", || {
            Ok(count.load(Ordering::SeqCst) >= target)
        })?;
        node.kill()?;
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        acked.extend(written);
        node.restart()?;
        let names = node.record_names("demo")?;
        let missing: Vec<&String> = acked.iter().filter(|n| !names.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: lost acknowledged writes {missing:?}"
        );
        let v = node.verify()?;
        assert_eq!(v["ok"], true, "round {round}: {v}");
    }
    assert!(acked.len() >= 20 * 3);
    Ok(())
}
