//! Foundation figures: time from `voiked --join` to "connected on every member", and the idle
//! footprint of a node in a 3-node loopback mesh.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-foundation -- [TRIALS] [IDLE_SECS]` (defaults 10 and 60).
//! Prints figures; asserts nothing about speed.

use std::time::{Duration, Instant};

use voike_tests::{TestNode, percentile, proc_sample, wait_for};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let idle_secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    println!("voiked binary: {}", voike_tests::bin("voiked").display());

    let genesis = TestNode::genesis("bench-genesis")?;
    let b = TestNode::join("bench-b", &genesis.invite("1h")?)?;
    wait_for(Duration::from_secs(30), "b connected", || {
        genesis.sees_connected(&b.node_id)
    })?;

    let mut times = Vec::new();
    for i in 0..trials {
        let ticket = genesis.invite("1h")?;
        let started = Instant::now();
        let mut c = TestNode::join(&format!("bench-c{i}"), &ticket)?;
        wait_for(
            Duration::from_secs(30),
            "c listed as connected on every member",
            || {
                Ok(genesis.sees_connected(&c.node_id)?
                    && b.sees_connected(&c.node_id)?
                    && c.sees_connected(&genesis.node_id)?
                    && c.sees_connected(&b.node_id)?)
            },
        )?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("join trial {i}: {ms:.1} ms");
        times.push(ms);
        if i + 1 < trials {
            c.stop()?;
        } else {
            // The last joiner stays: this mesh also has departed members it keeps redialing.
            println!(
                "idle, 3 live nodes plus {} departed members being redialed:",
                trials - 1
            );
            let pids = [genesis.pid(), b.pid(), c.pid()];
            idle(&pids, idle_secs)?;
        }
    }
    drop((genesis, b));

    // A clean 3-node mesh: nothing departed, nothing to redial.
    let g = TestNode::genesis("idle-genesis")?;
    let n1 = TestNode::join("idle-1", &g.invite("1h")?)?;
    let n2 = TestNode::join("idle-2", &g.invite("1h")?)?;
    wait_for(Duration::from_secs(30), "clean mesh", || {
        Ok(g.sees_connected(&n1.node_id)?
            && g.sees_connected(&n2.node_id)?
            && n1.sees_connected(&n2.node_id)?)
    })?;
    println!("idle, clean 3-node mesh:");
    idle(&[g.pid(), n1.pid(), n2.pid()], idle_secs)?;
    times.sort_by(f64::total_cmp);
    println!(
        "join → connected on all members (3 nodes, loopback, includes process start): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} trials",
        percentile(&times, 0.5),
        times[0],
        times[times.len() - 1],
        times.len()
    );
    Ok(())
}

fn idle(pids: &[Option<u32>], secs: u64) -> anyhow::Result<()> {
    let ticks = 100.0; // USER_HZ on Linux
    let pids: Vec<u32> = pids.iter().flatten().copied().collect();
    let before: Vec<_> = pids
        .iter()
        .map(|p| proc_sample(*p))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = started.elapsed().as_secs_f64();
    for (pid, (cpu0, sw0, _)) in pids.iter().zip(before) {
        let (cpu1, sw1, rss) = proc_sample(*pid)?;
        println!(
            "idle node pid {pid} over {elapsed:.0} s: RSS {:.1} MiB, CPU {:.3} %, {:.2} wake-ups (context switches, all threads)/s",
            rss as f64 / 1024.0,
            (cpu1 - cpu0) as f64 / ticks / elapsed * 100.0,
            (sw1 - sw0) as f64 / elapsed
        );
    }
    Ok(())
}
