//! Costs as history grows (issue "Costs that do not grow with history"), next to a peer in the
//! same run:
//! - records: one node, records added through the API by 8 writers up to each checkpoint of
//!   RECORDS (default `1000,10000`): CPU per write over the last segment, writes/s, RSS and RSS
//!   per record; `GET /vdns/records` page latency (first page and the last); DNS p99 of UDP
//!   queries for random names. Beside it Knot (`knotd`, from Debian's `knot`) takes the same
//!   records as RFC 2136 dynamic updates (one update message per record, sent by `knsupdate`)
//!   into the same zone, measured the same way.
//! - jobs: one node, JOBS (default `100,2000`) hello.wat jobs submitted 4 at a time; after each
//!   checkpoint, 30 s idle: CPU %, wake-ups/s and RSS. Then the node is restarted with its clock
//!   moved past twice the default retention (libfaketime): its start-up time and RSS once the
//!   finished jobs have left the live state.
//!
//! - endpoints: one node, ENDPOINTS (default none) SNRL endpoints registered through the API by
//!   8 writers, each its own service in a zone of the node: CPU per registration, registrations
//!   per second, RSS and RSS per endpoint, `POST /snrl/resolve` latency for one service. No
//!   peer daemon with a service catalogue could be installed here: run it with RECORDS in the
//!   same invocation, and read it next to the record writes and knotd's updates of that run.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-history -- [RECORDS] [JOBS] [ENDPOINTS]`. Needs `knot knot-dnsutils faketime`.
//! Prints figures, with the load average; asserts nothing about speed.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use voike_tests::{TestNode, libfaketime, percentile, proc_sample, wait_for};

const WRITERS: usize = 8;
const ZONE: &str = "hist.test.";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ticks_per_sec() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on Linux.
    100.0
}

fn list(arg: Option<String>, default: &[usize]) -> anyhow::Result<Vec<usize>> {
    match arg {
        Some(a) => a
            .split(',')
            .map(|v| v.parse().map_err(anyhow::Error::from))
            .collect(),
        None => Ok(default.to_vec()),
    }
}

fn name(i: usize) -> String {
    format!("r{i}.{ZONE}")
}

fn addr_of(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// A DNS query for `name` A, id `id`, without EDNS.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// p50 and p99 (ms) of `n` sequential UDP queries for random names below `upto`; and how many
/// got no answer within a second, or an answer without the record (counted as lost too).
fn dns_latency(server: SocketAddr, upto: usize, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut times = Vec::with_capacity(n);
    let mut lost = 0;
    let mut buf = [0u8; 1500];
    for k in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % upto as u64) as usize;
        let id = k as u16;
        let q = query(id, &name(i));
        let t = Instant::now();
        s.send_to(&q, server)?;
        loop {
            match s.recv_from(&mut buf) {
                Ok((len, _)) if len >= 2 && buf[..2] == id.to_be_bytes() => {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    // NOERROR with one answer.
                    if !(len > 12 && buf[3] & 0x0f == 0 && buf[7] == 1) {
                        lost += 1;
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    if times.is_empty() {
        return Ok((0.0, 0.0, lost));
    }
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), lost))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Knot {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_knot() -> anyhow::Result<Knot> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let port = free_port()?;
    std::fs::write(
        d.join("hist.test.zone"),
        format!(
            "$ORIGIN {ZONE}\n$TTL 60\n@ IN SOA ns1 admin 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
        ),
    )?;
    let conf = format!(
        r#"server:
  listen: 127.0.0.1@{port}
  rundir: "{d}"
  udp-workers: 2
  tcp-workers: 1
  background-workers: 1
database:
  storage: "{d}"
log:
  - target: stderr
    any: error
acl:
  - id: local_update
    address: 127.0.0.1
    action: update
zone:
  - domain: {ZONE}
    file: "{d}/hist.test.zone"
    acl: local_update
    zonefile-sync: -1
    journal-content: changes
"#,
        d = d.display()
    );
    std::fs::write(d.join("knot.conf"), conf)?;
    let child = Command::new("knotd")
        .arg("-c")
        .arg(d.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_for(Duration::from_secs(10), "knotd answering", || {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.send_to(&query(1, &format!("ns1.{ZONE}")), server)?;
        let mut buf = [0u8; 512];
        Ok(s.recv_from(&mut buf).is_ok())
    })?;
    Ok(Knot {
        child,
        port,
        _dir: dir,
    })
}

/// Sends records `from..to` to knotd as one RFC 2136 update each, from WRITERS knsupdate
/// processes side by side.
fn knot_updates(port: u16, from: usize, to: usize, dir: &Path) -> anyhow::Result<()> {
    let mut children = Vec::new();
    for w in 0..WRITERS {
        let mut script = format!("server 127.0.0.1 {port}\nzone {ZONE}\n");
        for i in (from..to).filter(|i| i % WRITERS == w) {
            script.push_str(&format!(
                "update add {} 60 A {}\nsend\n",
                name(i),
                addr_of(i)
            ));
        }
        let path = dir.join(format!("upd-{w}.txt"));
        std::fs::write(&path, script)?;
        children.push(
            Command::new("knsupdate")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?,
        );
    }
    for c in children {
        let out = c.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "knsupdate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Posts `body(i)` to `path` for every `i` in `from..to`, from [`WRITERS`] threads; every
/// answer must be 201.
fn post_all(
    node: &TestNode,
    path: &str,
    what: &str,
    from: usize,
    to: usize,
    body: impl Fn(usize) -> serde_json::Value + Sync,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(from);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return;
                    }
                    if !node.post(path, &body(i)).is_ok_and(|r| r.status == 201) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let f = failed.load(Ordering::Relaxed);
    anyhow::ensure!(f == 0, "{f} {what} failed");
    Ok(())
}

fn voiked_writes(node: &TestNode, from: usize, to: usize) -> anyhow::Result<()> {
    post_all(
        node,
        "/vdns/records",
        "record writes",
        from,
        to,
        |i| json!({ "zoneId": "hist", "record": { "type": "A", "name": name(i), "value": addr_of(i), "ttl": 60 } }),
    )
}

fn voiked_registrations(node: &TestNode, from: usize, to: usize) -> anyhow::Result<()> {
    post_all(
        node,
        "/snrl/endpoints",
        "endpoint registrations",
        from,
        to,
        |i| json!({ "service": format!("e{i}.{ZONE}"), "address": addr_of(i), "port": 8080, "region": "eu" }),
    )
}

fn endpoints(checkpoints: &[usize]) -> anyhow::Result<()> {
    println!(
        "endpoints: {WRITERS} writers, checkpoints {checkpoints:?}; load {}",
        loadavg()
    );
    let node = TestNode::spawn_with_env("bench-hist-ep", &[], &[("VOIKED_DNS__RRL_RATE", "0")])?;
    node.create_zone("hist", ZONE)?;
    let pid = node.pid().unwrap_or(0);
    let (_, _, rss0) = proc_sample(pid)?;
    let mut done = 0;
    for &upto in checkpoints {
        let n = upto - done;
        let (c0, _, _) = proc_sample(pid)?;
        let t = Instant::now();
        voiked_registrations(&node, done, upto)?;
        let secs = t.elapsed().as_secs_f64();
        let (c1, _, rss) = proc_sample(pid)?;
        done = upto;
        let cpu_ms = (c1 - c0) as f64 / ticks_per_sec() * 1000.0 / n as f64;
        let mut v = Vec::new();
        for k in 0..50 {
            let body = json!({ "domain": format!("e{}.{ZONE}", (k * 7919) % upto) });
            let t = Instant::now();
            let r = node.post("/snrl/resolve", &body)?;
            anyhow::ensure!(r.status == 200, "resolve: {} {}", r.status, r.body);
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        v.sort_by(f64::total_cmp);
        println!(
            "  {upto} endpoints (load {}): {:.2} ms CPU/registration, {:.0} registrations/s, RSS {:.1} MiB ({:.2} KiB/endpoint), POST /snrl/resolve p50 {:.2} ms p99 {:.2} ms",
            loadavg(),
            cpu_ms,
            n as f64 / secs,
            rss as f64 / 1024.0,
            (rss.saturating_sub(rss0)) as f64 / upto as f64,
            percentile(&v, 0.5),
            percentile(&v, 0.99),
        );
    }
    Ok(())
}

fn page_ms(node: &TestNode, path: &str) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = node.get(path)?;
        anyhow::ensure!(r.status == 200, "{path}: {}", r.status);
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(percentile(&v, 0.5))
}

fn records(checkpoints: &[usize]) -> anyhow::Result<()> {
    println!(
        "records: {WRITERS} writers, checkpoints {checkpoints:?}; load {}",
        loadavg()
    );
    let node = TestNode::spawn_with_env("bench-hist-rec", &[], &[("VOIKED_DNS__RRL_RATE", "0")])?;
    node.create_zone("hist", ZONE)?;
    let knot = start_knot()?;
    let knot_addr: SocketAddr = format!("127.0.0.1:{}", knot.port).parse()?;
    let scratch = tempfile::tempdir()?;
    let pid = node.pid().unwrap_or(0);
    let kpid = knot.child.id();
    let (_, _, rss0) = proc_sample(pid)?;
    let (_, _, krss0) = proc_sample(kpid)?;
    let mut done = 0;
    for &upto in checkpoints {
        let n = upto - done;
        let (c0, _, _) = proc_sample(pid)?;
        let t = Instant::now();
        voiked_writes(&node, done, upto)?;
        let secs = t.elapsed().as_secs_f64();
        let (c1, _, rss) = proc_sample(pid)?;
        let (k0, _, _) = proc_sample(kpid)?;
        let kt = Instant::now();
        knot_updates(knot.port, done, upto, scratch.path())?;
        let ksecs = kt.elapsed().as_secs_f64();
        let (k1, _, krss) = proc_sample(kpid)?;
        done = upto;
        let last = name(upto - 1);
        wait_for(Duration::from_secs(60), "the last record served", || {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.send_to(&query(7, &last), node.dns_addr()?)?;
            let mut buf = [0u8; 512];
            let (len, _) = s.recv_from(&mut buf)?;
            // NOERROR with one answer.
            Ok(len > 12 && buf[3] & 0x0f == 0 && buf[7] == 1)
        })?;
        let cpu_ms = (c1 - c0) as f64 / ticks_per_sec() * 1000.0 / n as f64;
        let kcpu_ms = (k1 - k0) as f64 / ticks_per_sec() * 1000.0 / n as f64;
        let first = page_ms(&node, "/vdns/records?zoneId=hist&limit=1000")?;
        let (p50, p99, lost) = dns_latency(node.dns_addr()?, upto, 2000)?;
        let (kp50, kp99, klost) = dns_latency(knot_addr, upto, 2000)?;
        println!(
            "  {upto} records (load {}):\n    voiked: {:.2} ms CPU/write, {:.0} writes/s, RSS {:.1} MiB ({:.2} KiB/record), GET /vdns/records first page (1000) {:.1} ms, DNS p50 {:.3} ms p99 {:.3} ms ({lost} lost)\n    knotd:  {:.2} ms CPU/update, {:.0} updates/s, RSS {:.1} MiB ({:.2} KiB/record), DNS p50 {:.3} ms p99 {:.3} ms ({klost} lost)",
            loadavg(),
            cpu_ms,
            n as f64 / secs,
            rss as f64 / 1024.0,
            (rss.saturating_sub(rss0)) as f64 / upto as f64,
            first,
            p50,
            p99,
            kcpu_ms,
            n as f64 / ksecs,
            krss as f64 / 1024.0,
            (krss.saturating_sub(krss0)) as f64 / upto as f64,
            kp50,
            kp99,
        );
    }
    Ok(())
}

fn idle(node: &TestNode, secs: u64) -> anyhow::Result<(f64, f64, f64)> {
    let pid = node.pid().unwrap_or(0);
    let (c0, w0, _) = proc_sample(pid)?;
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, w1, rss) = proc_sample(pid)?;
    Ok((
        (c1 - c0) as f64 / ticks_per_sec() / secs as f64 * 100.0,
        // Summed over live threads: one that ended takes its count with it.
        w1.saturating_sub(w0) as f64 / secs as f64,
        rss as f64 / 1024.0,
    ))
}

fn jobs(checkpoints: &[usize]) -> anyhow::Result<()> {
    println!(
        "jobs: hello.wat, 4 submitters, checkpoints {checkpoints:?}; load {}",
        loadavg()
    );
    let mut node = TestNode::spawn_fixed("bench-hist-jobs", &[])?;
    let wasm = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.wat"))?;
    let url = format!("{}/vvm/modules", node.api);
    let mut r = ureq::post(&url)
        .header("Authorization", &format!("Bearer {}", node.token))
        .send(&wasm[..])?;
    let body: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
    let module = body["module"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (_, _, rss0) = proc_sample(node.pid().unwrap_or(0))?;
    let mut done = 0;
    for &upto in checkpoints {
        let t = Instant::now();
        let next = Arc::new(AtomicUsize::new(done));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let next = next.clone();
                let node = &node;
                let module = &module;
                s.spawn(move || {
                    while next.fetch_add(1, Ordering::Relaxed) < upto {
                        let _ = node.post("/grid/jobs", &json!({ "module": module }));
                    }
                });
            }
        });
        let rate = (upto - done) as f64 / t.elapsed().as_secs_f64();
        done = upto;
        wait_for(Duration::from_secs(1800), "every job done", || {
            Ok(node.metric("voike_vvm_jobs{state=\"done\"}")? as usize >= upto)
        })?;
        let (cpu, wakes, rss) = idle(&node, 30)?;
        println!(
            "  {upto} jobs (load {}): submitted {rate:.1} jobs/s; idle after: CPU {cpu:.2} %, {wakes:.1} wake-ups/s, RSS {rss:.1} MiB (at start {:.1})",
            loadavg(),
            rss0 as f64 / 1024.0
        );
    }
    let Some(lib) = libfaketime() else {
        println!("  (libfaketime missing: the run past the retention is skipped)");
        return Ok(());
    };
    node.stop()?;
    let lib = lib.to_string_lossy().into_owned();
    node.set_env(&[
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "+50h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ]);
    let t = Instant::now();
    node.restart()?;
    let started = t.elapsed().as_secs_f64();
    wait_for(Duration::from_secs(60), "every epoch closed", || {
        Ok(node.metric("voike_jobs_documents_open")? == 0.0)
    })?;
    let listed = node.get("/grid/jobs?limit=10")?.body["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    let (cpu, wakes, rss) = idle(&node, 30)?;
    println!(
        "  50 h later (past twice the 24 h retention; load {}): restart {started:.2} s, {listed} jobs listed; idle: CPU {cpu:.2} %, {wakes:.1} wake-ups/s, RSS {rss:.1} MiB",
        loadavg()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let recs = list(args.next(), &[1000, 10_000])?;
    let js = list(args.next(), &[100, 2000])?;
    let eps = list(args.next(), &[0])?;
    if !recs.is_empty() && recs[0] > 0 {
        records(&recs)?;
    }
    if !js.is_empty() && js[0] > 0 {
        jobs(&js)?;
    }
    if !eps.is_empty() && eps[0] > 0 {
        endpoints(&eps)?;
    }
    Ok(())
}
