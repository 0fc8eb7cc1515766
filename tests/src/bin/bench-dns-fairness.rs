//! DNS probe latency while other clients hold connections, next to the same probes on the same
//! node with nobody holding anything (measured in the same run, just before):
//! - client 127.0.0.2 holds `HELD` idle TCP connections (TCP cap raised so that it may);
//! - client 127.0.0.3 holds `HELD` slow DoH connections, each trickling a POST body a byte at a
//!   time (`dns.doh_idle_timeout` 30 s, the default; they are closed and reopened as they go);
//! - a probe from 127.0.0.4 sends `PROBES` queries over a new TCP connection each and `PROBES`
//!   DoH GETs over a new connection each; p50, p99 and max are printed with the load average.
//!
//! Run with release binaries: `cargo build --release -p voiked -p voike-tests --bins` then
//! `target/release/bench-dns-fairness [HELD] [PROBES]` (defaults 1000 and 300). Prints figures;
//! asserts nothing about speed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use voike_tests::{TestNode, dns, percentile};

async fn connect_from(src: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{src}:0").parse()?)?;
    Ok(tokio::time::timeout(Duration::from_secs(5), s.connect(to)).await??)
}

/// One TCP query on a new connection; milliseconds.
async fn tcp_probe(to: SocketAddr, q: &[u8]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut c = connect_from("127.0.0.4", to).await?;
    c.write_all(&(q.len() as u16).to_be_bytes()).await?;
    c.write_all(q).await?;
    let len = c.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    c.read_exact(&mut buf).await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// One DoH GET on a new connection; milliseconds.
async fn doh_probe(to: SocketAddr, path: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut c = connect_from("127.0.0.4", to).await?;
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    anyhow::ensure!(
        out.starts_with(b"HTTP/1.1 200"),
        "DoH answered {:?}",
        String::from_utf8_lossy(&out[..out.len().min(40)])
    );
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn summary(name: &str, mut ms: Vec<f64>, errors: usize) -> String {
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return format!("{name}: no answers ({errors} errors)");
    }
    format!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={}, errors {errors})",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
        ms.len()
    )
}

async fn probes(
    dns_addr: SocketAddr,
    doh: SocketAddr,
    n: usize,
    q: &[u8],
    path: &str,
) -> Vec<String> {
    let (mut t, mut d, mut te, mut de) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..n {
        match tcp_probe(dns_addr, q).await {
            Ok(ms) => t.push(ms),
            Err(_) => te += 1,
        }
        match doh_probe(doh, path).await {
            Ok(ms) => d.push(ms),
            Err(_) => de += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vec![summary("TCP probe", t, te), summary("DoH probe", d, de)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let held: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(300);
    let cap = (held * 8).max(256).to_string();
    let node = TestNode::spawn_with_env(
        "bench-fair",
        &[],
        &[
            ("VOIKED_DNS__TCP_MAX_CONNECTIONS", cap.as_str()),
            ("VOIKED_DNS__DOH_MAX_CONNECTIONS", cap.as_str()),
            ("VOIKED_DNS__TCP_IDLE_TIMEOUT", "120s"),
        ],
    )?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let (dns_addr, doh) = (node.dns_addr()?, node.doh_addr()?);
    let q = dns::query_message("www.demo.mesh.", dns::RecordType::A)?;
    let path = format!(
        "/dns-query?dns={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&q)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!("per-client caps: TCP and DoH {} of {cap} connections each", (held * 8).max(256) / 8);
        let before = loadavg();
        for l in probes(dns_addr, doh, n, &q, &path).await {
            println!("idle node   | {l} | load {before}");
        }
        // The holders.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tcp_held = Vec::new();
        for _ in 0..held {
            if let Ok(c) = connect_from("127.0.0.2", dns_addr).await {
                tcp_held.push(c);
            }
        }
        let doh_open = Arc::new(AtomicUsize::new(0));
        let doh_reopened = Arc::new(AtomicUsize::new(0));
        for _ in 0..held {
            let (stop, open, reopened) = (stop.clone(), doh_open.clone(), doh_reopened.clone());
            tokio::spawn(async move {
                let head = format!("POST /dns-query HTTP/1.1\r\nHost: {doh}\r\nContent-Type: application/dns-message\r\nContent-Length: 65000\r\n\r\n");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = connect_from("127.0.0.3", doh).await else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    if c.write_all(head.as_bytes()).await.is_err() {
                        continue;
                    }
                    open.fetch_add(1, Ordering::Relaxed);
                    while !stop.load(Ordering::Relaxed) && c.write_all(b"x").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        // A closed connection shows when a write fails (after the RST).
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = loadavg();
        let results = probes(dns_addr, doh, n, &q, &path).await;
        let after = loadavg();
        println!(
            "while held  | 127.0.0.2 holds {} idle TCP connections, 127.0.0.3 {} slow DoH connections ({} reopened after the server closed them)",
            tcp_held.len(),
            doh_open.load(Ordering::Relaxed),
            doh_reopened.load(Ordering::Relaxed)
        );
        for l in results {
            println!("while held  | {l} | load {during} -> {after}");
        }
        stop.store(true, Ordering::Relaxed);
        anyhow::Ok(())
    })?;
    println!(
        "refused connections: {}",
        node.metric("voike_dns_refused_connections_total")?
    );
    Ok(())
}
