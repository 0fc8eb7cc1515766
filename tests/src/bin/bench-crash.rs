//! Crash-loop figures: one node, WRITERS clients each looping `POST /vdns/records`, `kill -9` at
//! a varying moment (0–3 s after the first acknowledged write; every fifth round also once
//! during start-up), restart, compare with every record that got a 201. Prints iterations,
//! acknowledged writes and lost writes (which must be 0), with the load average.
//!
//! `cargo build --release --workspace --bins && target/release/bench-crash [ROUNDS] [WRITERS]`
//! (defaults 500 and 8).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use voike_tests::{TestNode, http, wait_for};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let writers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    println!(
        "bench-crash: {rounds} rounds, {writers} writers, load {}",
        loadavg()
    );
    let mut node = TestNode::genesis("bench-crash")?;
    node.create_zone("crash", "crash.test.")?;
    let mut acked: Vec<String> = Vec::new();
    let mut lost_total = 0usize;
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let started = Instant::now();
    for round in 0..rounds {
        let count = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (api, token, counter) = (node.api.clone(), node.token.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut ok = Vec::new();
                    for i in 0.. {
                        let name = format!("r{round}-w{w}-{i}.crash.test.");
                        let body = json!({ "zoneId": "crash", "record": { "type": "A", "name": name, "value": "10.0.0.1" } });
                        match http("POST", &api, "/vdns/records", Some(&token), Some(&body)) {
                            Ok(r) if r.status == 201 => {
                                ok.push(name);
                                counter.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        wait_for(Duration::from_secs(60), "a first write", || {
            Ok(count.load(Ordering::SeqCst) >= 1)
        })?;
        std::thread::sleep(Duration::from_millis(next(3000)));
        node.kill()?;
        for h in handles {
            acked.extend(h.join().map_err(|_| anyhow::anyhow!("writer panicked"))?);
        }
        if round % 5 == 4 {
            node.start_and_kill(Duration::from_millis(20 + next(400)))?;
        }
        node.restart()?;
        acked.sort();
        let names = node.record_names("crash")?;
        let lost = acked
            .iter()
            .filter(|n| names.binary_search(n).is_err())
            .count();
        if lost > 0 {
            println!("round {round}: {lost} acknowledged writes lost");
        }
        lost_total = lost_total.max(lost);
        let v = node.verify()?;
        if v["ok"] != true {
            println!("round {round}: verify {v}");
        }
        if round % 50 == 49 {
            println!(
                "  {} rounds, {} acknowledged, lost {lost_total}, {:.0} s, load {}",
                round + 1,
                acked.len(),
                started.elapsed().as_secs_f64(),
                loadavg()
            );
        }
    }
    println!(
        "bench-crash: {rounds} rounds with {writers} writers: {} acknowledged writes, {lost_total} lost; {:.0} s; load {}",
        acked.len(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}
