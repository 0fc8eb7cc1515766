//! DNS figures on one node, next to peers measured in the same run:
//! - UDP queries per second with dnsperf against voiked and, through
//!   `../shared/bench/dns-anchors.sh`, NSD, Knot and dnsmasq serving the same 100-name zone;
//! - DoH queries per second and latency percentiles with h2load (HTTP/2, h2c);
//! - voiked's RSS and CPU time after the run.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-dns -- [SECONDS] [ANCHORS_SCRIPT]` (defaults 10 and
//! `../shared/bench/dns-anchors.sh`). Needs `nsd knot knot-dnsutils dnsperf dnsmasq-base
//! bind9-dnsutils nghttp2-client`. Prints figures; asserts nothing about speed.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use voike_tests::{TestNode, dns, proc_sample};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let script = args
        .next()
        .unwrap_or_else(|| "../shared/bench/dns-anchors.sh".to_string());
    // Response-rate limiting off, as the anchors script does for NSD.
    let node = TestNode::spawn_with_env("bench-dns", &[], &[("VOIKED_DNS__RRL_RATE", "0")])?;
    node.create_zone("bench", "mesh.test.")?;
    let add = |name: String, rtype: &str, value: String| -> anyhow::Result<()> {
        let r = node.post(
            "/vdns/records",
            &json!({ "zoneId": "bench", "record": { "type": rtype, "name": name, "value": value, "ttl": 60 } }),
        )?;
        anyhow::ensure!(r.status == 201, "{}", r.body);
        Ok(())
    };
    // The name server's address first: an apex NS naming a host of the zone needs it.
    add("ns1.mesh.test.".into(), "A", "127.0.0.1".into())?;
    add("mesh.test.".into(), "NS", "ns1.mesh.test.".into())?;
    for i in 1..=100 {
        add(
            format!("svc{i}.mesh.test."),
            "A",
            format!("10.0.{}.{}", i / 250, i % 250 + 1),
        )?;
    }
    let addr = node.dns_addr()?;
    let doh = node.doh_addr()?;
    voike_tests::wait_for(Duration::from_secs(30), "svc100 served", || {
        Ok(
            dns::answers(&dns::udp(addr, "svc100.mesh.test.", dns::RecordType::A)?)
                == ["A 10.0.0.101"],
        )
    })?;
    let pid = node.pid().unwrap_or(0);
    let before = proc_sample(pid);
    println!("voiked DNS on {addr}, DoH on {doh}; {secs} s per server");

    // UDP: the anchors script runs NSD, Knot, dnsmasq and then voiked with the same dnsperf load.
    let out = Command::new("bash")
        .arg(&script)
        .arg(secs.to_string())
        .arg(addr.to_string())
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let after_udp = proc_sample(pid);

    // DoH with h2load: 10 connections × 10 streams, GET of one query; the peer in the same run
    // is dnsdist's DoH frontend (plain HTTP/2 like ours) answering from its packet cache, with
    // voiked as its backend.
    let q = dns::query_message("svc42.mesh.test.", dns::RecordType::A)?;
    let path = format!(
        "/dns-query?dns={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(q)
    );
    h2load("voiked", &format!("http://{doh}{path}"), secs)?;
    let after_doh = proc_sample(pid);
    match dnsdist(addr) {
        Ok((mut child, port)) => {
            h2load("dnsdist", &format!("http://127.0.0.1:{port}{path}"), secs)?;
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(e) => println!("dnsdist: not run ({e})"),
    }
    if let (Ok(b), Ok(u), Ok(e)) = (before, after_udp, after_doh) {
        println!(
            "voiked RSS: {:.1} MiB before, {:.1} MiB after UDP, {:.1} MiB after DoH; CPU {:.1} s during the UDP runs (all four servers take turns)",
            b.2 as f64 / 1024.0,
            u.2 as f64 / 1024.0,
            e.2 as f64 / 1024.0,
            (u.0 - b.0) as f64 / 100.0
        );
    }
    let queries = node.metric("voike_dns_queries_total{transport=\"udp\",rcode=\"NOERROR\"}")?;
    let hits = node.metric("voike_dns_answer_cache_total{result=\"hit\"}")?;
    println!("voiked answered {queries} UDP queries, {hits} from the hot-path cache");
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts dnsdist with a DoH frontend (no TLS) and a packet cache in front of `backend`.
fn dnsdist(backend: std::net::SocketAddr) -> anyhow::Result<(std::process::Child, u16)> {
    let dir = tempfile::tempdir()?;
    let (doh, dns) = (free_port()?, free_port()?);
    let conf = dir.path().join("dnsdist.conf");
    std::fs::write(
        &conf,
        format!(
            "setSecurityPollSuffix(\"\")\nsetLocal(\"127.0.0.1:{dns}\")\nnewServer({{address=\"{backend}\"}})\n\
             addDOHLocal(\"127.0.0.1:{doh}\", nil, nil, \"/dns-query\")\n\
             getPool(\"\"):setCache(newPacketCache(10000))\n"
        ),
    )?;
    let child = Command::new("dnsdist")
        .args(["--supervised", "--disable-syslog", "-C"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    voike_tests::wait_for(Duration::from_secs(10), "dnsdist DoH listening", || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", doh)).is_ok())
    })?;
    std::mem::forget(dir);
    Ok((child, doh))
}

/// Runs h2load against `url` and prints requests per second and latency percentiles.
fn h2load(name: &str, url: &str, secs: u64) -> anyhow::Result<()> {
    let log = tempfile::NamedTempFile::new()?;
    let h2 = Command::new("h2load")
        .args(["-D", &secs.to_string(), "-c", "10", "-m", "10", "-t", "1"])
        .arg("--log-file")
        .arg(log.path())
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&h2.stdout);
    for line in text.lines() {
        if line.starts_with("finished in") || line.starts_with("status codes:") {
            println!("{name} h2load: {line}");
        }
    }
    // Log lines: start time (µs since epoch), status, request time (µs).
    let mut times: Vec<f64> = std::fs::read_to_string(log.path())?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    if !times.is_empty() {
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name} DoH latency: median {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            p(0.5),
            p(0.99),
            times[times.len() - 1],
            times.len()
        );
    }
    Ok(())
}
