//! Partition-heal figures in a network-namespace lab (root, `ip`, `nft`): three nodes on a
//! bridge, one cut off with an nftables drop for CUT seconds while all three write; after the
//! heal, the time until records and ledger heads are identical on all three. Repeated HEALS
//! times on one mesh; prints median and max, with the load average.
//!
//! `cargo build --release --workspace --bins && target/release/bench-partition [HEALS] [CUT]`
//! (defaults 10 and 30).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use voike_tests::netns::NetLab;
use voike_tests::{TestNode, http, wait_for};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn records(node: &TestNode) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for z in ["za", "zb", "zc"] {
        for n in node.record_names(z)? {
            out.insert(n);
        }
    }
    Ok(out)
}

fn heads(node: &TestNode) -> anyhow::Result<String> {
    Ok(node.verify()?["headsHash"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = voike_tests::netns::unavailable() {
        anyhow::bail!("network namespaces unavailable: {why}");
    }
    let mut args = std::env::args().skip(1);
    let heals: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let cut: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    println!(
        "bench-partition: {heals} heals after {cut} s cuts, load {}",
        loadavg()
    );
    let lab = NetLab::new(3)?;
    let mut a = TestNode::in_netns("bp-a", lab.ns(0), &lab.ip(0), &[])?;
    a.start()?;
    let mut b = TestNode::in_netns(
        "bp-b",
        lab.ns(1),
        &lab.ip(1),
        &["--join", &a.invite("10m")?],
    )?;
    b.start()?;
    let mut c = TestNode::in_netns(
        "bp-c",
        lab.ns(2),
        &lab.ip(2),
        &["--join", &a.invite("10m")?],
    )?;
    c.start()?;
    for (n, z) in [(&a, "za"), (&b, "zb"), (&c, "zc")] {
        n.create_zone(z, &format!("{z}.mesh."))?;
    }
    let mut times = Vec::new();
    for heal in 0..heals {
        wait_for(Duration::from_secs(60), "all connected", || {
            Ok(a.sees_connected(&c.node_id)? && b.sees_connected(&c.node_id)?)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = [(&a, "za"), (&b, "zb"), (&c, "zc")]
            .into_iter()
            .map(|(n, z)| {
                let (api, token, stop, z) =
                    (n.api.clone(), n.token.clone(), stop.clone(), z.to_string());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let name = format!("h{heal}-{i}.{z}.mesh.");
                        let body = json!({ "zoneId": z, "record": { "type": "A", "name": name, "value": "10.0.0.1" } });
                        let _ = http("POST", &api, "/vdns/records", Some(&token), Some(&body));
                        i += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        lab.isolate(2)?;
        let cut_at = Instant::now();
        wait_for(Duration::from_secs(cut + 5), "the cut", || {
            Ok(cut_at.elapsed() >= Duration::from_secs(cut))
        })?;
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            let _ = w.join();
        }
        lab.heal(2)?;
        let healed = Instant::now();
        wait_for(Duration::from_secs(120), "convergence", || {
            let ra = records(&a)?;
            if records(&b)? != ra || records(&c)? != ra {
                return Ok(false);
            }
            let h = heads(&a)?;
            Ok(heads(&b)? == h && heads(&c)? == h)
        })?;
        let t = healed.elapsed().as_secs_f64();
        println!("  heal {heal}: identical records and heads after {t:.2} s");
        times.push(t);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "bench-partition: {heals} heals: median {:.2} s, max {:.2} s; load {}",
        times[times.len() / 2],
        times[times.len() - 1],
        loadavg()
    );
    Ok(())
}
