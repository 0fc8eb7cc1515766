//! Response-rate limiting under a flood from many sources, with real packets: what a
//! legitimate client sending three times `dns.rrl_rate` gets answered (full answers per second,
//! and truncated ones), first alone and then while a flood comes from 100,000 distinct /24s,
//! next to the configured limit, with the load average.
//!
//! voiked runs in a network namespace of a [`NetLab`] host; inside it, an AnyIP route (`ip route
//! add local 16.0.0.0/6 dev lo`) lets the flooder (this binary again, run in the namespace with
//! `flood`) bind any address of 16.0.0.0/6, so each packet really comes from its own /24. The
//! legitimate client sends from the root namespace over the lab's bridge. Needs root, `ip` and
//! `nft`.
//!
//! Run with release binaries: `cargo build --release -p voiked -p voike-tests --bins` then
//! `target/release/bench-dns-rrl [SECONDS] [RATE]` (defaults 10 and 200). Prints figures; asserts
//! nothing about speed.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use voike_tests::netns::NetLab;
use voike_tests::{TestNode, dns, wait_for};

/// Distinct /24s the flood comes from.
const PREFIXES: u32 = 100_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Sends queries from a new address of 16.0.0.0/6 each, one /24 after another, for `secs`.
fn flood(target: SocketAddr, secs: u64) -> anyhow::Result<()> {
    let q = dns::query_message("www.demo.mesh.", dns::RecordType::A)?;
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut sent, mut i) = (0u64, 0u32);
    while Instant::now() < end {
        for _ in 0..256 {
            let p = i % PREFIXES;
            let src = Ipv4Addr::from(0x1000_0000u32 + (p << 8) + 1 + (i / PREFIXES) % 250);
            i = i.wrapping_add(1);
            if let Ok(s) = UdpSocket::bind((src, 0))
                && s.send_to(&q, target).is_ok()
            {
                sent += 1;
            }
        }
    }
    println!("{sent}");
    Ok(())
}

/// Sends `qps` queries a second from `socket` for `secs`; returns (full answers, truncated
/// answers) per second.
fn legit(
    socket: &UdpSocket,
    target: SocketAddr,
    qps: u32,
    secs: u64,
) -> anyhow::Result<(f64, f64)> {
    let q = dns::query_message("www.demo.mesh.", dns::RecordType::A)?;
    socket.set_read_timeout(Some(Duration::from_millis(1)))?;
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(qps));
    let (mut full, mut tc, mut n) = (0u64, 0u64, 0u64);
    let mut buf = [0u8; 1500];
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end {
        // Every query that is due (the loop may have slept past several).
        while Instant::now() >= start + interval * (n as u32) {
            socket.send_to(&q, target)?;
            n += 1;
        }
        while let Ok((len, _)) = socket.recv_from(&mut buf) {
            if len >= 12 {
                if buf[2] & 0x02 != 0 {
                    tc += 1;
                } else {
                    full += 1;
                }
            }
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!("  (sent {:.0}/s)", n as f64 / s);
    Ok((full as f64 / s, tc as f64 / s))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("flood") {
        let target: SocketAddr = args.next().unwrap_or_default().parse()?;
        let secs: u64 = args.next().unwrap_or_default().parse()?;
        return flood(target, secs);
    }
    let secs: u64 = first.map(|a| a.parse()).transpose()?.unwrap_or(10);
    let rate: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    if let Some(why) = voike_tests::netns::unavailable() {
        anyhow::bail!("network namespaces unavailable ({why})");
    }
    let lab = NetLab::new(1)?;
    let ns = lab.ns(0).to_string();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .status()?;
        anyhow::ensure!(st.success(), "{args:?} failed");
        Ok(())
    };
    run(&["ip", "route", "add", "local", "16.0.0.0/6", "dev", "lo"])?;
    let rate_s = rate.to_string();
    let mut node = TestNode::in_netns("bench-rrl", &ns, &lab.ip(0), &[])?;
    node.set_env(&[("VOIKED_DNS__RRL_RATE", rate_s.as_str())]);
    node.start()?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let target: SocketAddr = format!("{}:1053", lab.ip(0)).parse()?;
    let socket = UdpSocket::bind((lab.gateway().parse::<Ipv4Addr>()?, 0))?;
    wait_for(Duration::from_secs(30), "the record served", || {
        Ok(
            dns::answers(&dns::udp(target, "www.demo.mesh.", dns::RecordType::A)?)
                == ["A 10.0.0.7"],
        )
    })?;
    std::thread::sleep(Duration::from_secs(2)); // the bucket refills
    println!(
        "dns.rrl_rate {rate}/s per /24, slip 2; legitimate client sends {}/s from {}",
        rate * 3,
        lab.gateway()
    );
    let l0 = loadavg();
    let (full, tc) = legit(&socket, target, rate * 3, secs)?;
    println!(
        "no flood      | full answers {full:.1}/s ({:+.1} % of the limit), truncated {tc:.1}/s | load {l0}",
        (full / f64::from(rate) - 1.0) * 100.0
    );
    std::thread::sleep(Duration::from_secs(2));
    let flooder = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .args(["flood", &target.to_string(), &(secs + 2).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let dropped0 = node.metric("voike_dns_rrl_total{action=\"dropped\"}")?;
    let answered0 = node.metric("voike_dns_queries_total{transport=\"udp\",rcode=\"NOERROR\"}")?;
    let l1 = loadavg();
    let (full, tc) = legit(&socket, target, rate * 3, secs)?;
    let l2 = loadavg();
    let dropped = node.metric("voike_dns_rrl_total{action=\"dropped\"}")? - dropped0;
    let answered =
        node.metric("voike_dns_queries_total{transport=\"udp\",rcode=\"NOERROR\"}")? - answered0;
    let out = flooder.wait_with_output()?;
    let sent: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    println!(
        "during flood  | full answers {full:.1}/s ({:+.1} % of the limit), truncated {tc:.1}/s | load {l1} -> {l2}",
        (full / f64::from(rate) - 1.0) * 100.0
    );
    println!(
        "flood: {:.0} packets/s from {PREFIXES} /24s of 16.0.0.0/6 ({sent:.0} in {} s); voiked answered {:.0}/s and RRL dropped {:.0}/s over the measured {secs} s",
        sent / (secs + 2) as f64,
        secs + 2,
        answered / secs as f64,
        dropped / secs as f64
    );
    Ok(())
}
