//! Idle footprint on loopback, voiked beside two authoritative DNS servers in the same run:
//! - a 5-node voiked mesh with default settings, idle for IDLE_SECS once every node sees every
//!   other alive (and 10 s more to settle);
//! - knotd and NSD (apt packages `knot` and `nsd`; skipped when not installed), each serving a
//!   small zone on a 127.0.0.1 high port with its default worker settings.
//!
//! Prints per process: RSS and PSS (MiB; NSD's processes summed), CPU %, wake-ups per second
//! (context switches, voluntary and nonvoluntary, summed over every thread); for voiked a
//! breakdown by thread name (mean per node); and the load average (`/proc/loadavg`) at start
//! and end.
//!
//! Run with release binaries: `cargo build --release --workspace --bins && cargo run --release
//! -p voike-tests --bin bench-idle -- [IDLE_SECS]` (default 120). Prints figures; asserts nothing
//! about speed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use voike_tests::{
    TestNode, dns, fixed_ports, proc_sample, switches_by_name, thread_switches, wait_for,
};

/// Settling time after the mesh is up (start-up probes and first syncs end).
const SETTLE: Duration = Duration::from_secs(10);

fn mesh(prefix: &str, n: usize) -> anyhow::Result<Vec<TestNode>> {
    let mut nodes = vec![TestNode::spawn_fixed(&format!("{prefix}-0"), &[])?];
    for i in 1..n {
        let ticket = nodes[0].invite("1h")?;
        nodes.push(TestNode::spawn_fixed(
            &format!("{prefix}-{i}"),
            &["--join", ticket.as_str()],
        )?);
    }
    for o in &nodes {
        for p in &nodes {
            if o.node_id != p.node_id {
                wait_for(Duration::from_secs(120), "all alive", || {
                    let s = o.get("/hypermesh/status")?.body;
                    Ok(s["peers"].as_array().is_some_and(|peers| {
                        peers
                            .iter()
                            .any(|x| x["nodeId"] == p.node_id && x["state"] == "alive")
                    }))
                })?;
            }
        }
    }
    Ok(nodes)
}

/// A DNS server started by this benchmark, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn write_zone(path: &Path) -> anyhow::Result<()> {
    let mut z = String::from(
        "$ORIGIN mesh.test.\n$TTL 60\n@ IN SOA ns1.mesh.test. admin.mesh.test. 1 3600 600 86400 60\n@ IN NS ns1.mesh.test.\nns1 IN A 127.0.0.1\n",
    );
    for i in 1..=100 {
        z.push_str(&format!("svc{i} IN A 10.0.0.{i}\n"));
    }
    Ok(std::fs::write(path, z)?)
}

fn start_nsd(work: &Path, zone: &Path) -> anyhow::Result<(Server, u16)> {
    let (port, _) = fixed_ports()?;
    let dir = work.join("nsd");
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        r#"server:
  ip-address: 127.0.0.1@{port}
  pidfile: "{d}/nsd.pid"
  xfrdfile: "{d}/xfrd.state"
  zonelistfile: "{d}/zone.list"
  database: ""
  username: ""
  chroot: ""
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: mesh.test
  zonefile: "{}"
"#,
        zone.display()
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    let log = std::fs::File::create(dir.join("nsd.log"))?;
    let child = Command::new("nsd")
        .args(["-d", "-c"])
        .arg(dir.join("nsd.conf"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start nsd")?;
    Ok((Server { name: "nsd", child }, port))
}

fn start_knot(work: &Path, zone: &Path) -> anyhow::Result<(Server, u16)> {
    let (port, _) = fixed_ports()?;
    let dir = work.join("knot");
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        r#"server:
  listen: 127.0.0.1@{port}
  rundir: "{d}"
database:
  storage: "{d}"
log:
  - target: stderr
    any: error
zone:
  - domain: mesh.test
    file: "{}"
    journal-content: none
    zonefile-load: whole
"#,
        zone.display()
    );
    std::fs::write(dir.join("knot.conf"), conf)?;
    let log = std::fs::File::create(dir.join("knot.log"))?;
    let child = Command::new("knotd")
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start knotd")?;
    Ok((
        Server {
            name: "knotd",
            child,
        },
        port,
    ))
}

/// `pid` and every process below it (NSD forks its xfrd and server processes).
fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if let Some(pp) = ppid {
                parents.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU ticks and context switches of a process tree, and its processes' ids.
#[derive(Clone, Debug, Default)]
struct Sample {
    cpu: u64,
    switches: u64,
    pids: usize,
}

fn sample(pid: u32) -> anyhow::Result<Sample> {
    let mut s = Sample::default();
    for p in tree(pid) {
        let Ok((cpu, sw, _)) = proc_sample(p) else {
            continue;
        };
        s.cpu += cpu;
        s.switches += sw;
        s.pids += 1;
    }
    Ok(s)
}

/// RSS and PSS (KiB) of a process tree, and RssAnon of its first process.
fn memory(pid: u32) -> (u64, u64, u64) {
    let pids = tree(pid);
    let rss = pids.iter().map(|p| kib(*p, "status", "VmRSS:")).sum();
    let pss = pids.iter().map(|p| kib(*p, "smaps_rollup", "Pss:")).sum();
    (rss, pss, kib(pid, "status", "RssAnon:"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let idle_secs: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(120);
    println!("voiked binary: {}", voike_tests::bin("voiked").display());
    let work = tempfile::tempdir()?;
    let zone = work.path().join("mesh.test.zone");
    write_zone(&zone)?;

    let mut servers = Vec::new();
    for (cmd, start) in [
        (
            "knotd",
            start_knot as fn(&Path, &Path) -> anyhow::Result<(Server, u16)>,
        ),
        ("nsd", start_nsd),
    ] {
        if !installed(cmd) {
            println!("{cmd}: not installed (apt-get install -y knot nsd), skipped");
            continue;
        }
        let (server, port) = start(work.path(), &zone)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(Duration::from_secs(20), "the server answers", || {
            let m = dns::udp(addr, "svc1.mesh.test.", dns::RecordType::A)?;
            Ok(!dns::answers(&m).is_empty())
        })
        .with_context(|| format!("{cmd} on {addr}"))?;
        println!("{cmd} serves mesh.test. on {addr}");
        servers.push(server);
    }

    let nodes = mesh("bidle", 5)?;
    std::thread::sleep(SETTLE);
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.pid().context("node not running"))
        .collect::<anyhow::Result<_>>()?;
    let load_start = loadavg();
    let server_before: Vec<Sample> = servers
        .iter()
        .map(|s| sample(s.child.id()))
        .collect::<anyhow::Result<_>>()?;
    let node_before: Vec<Sample> = pids
        .iter()
        .map(|p| sample(*p))
        .collect::<anyhow::Result<_>>()?;
    let threads_before: Vec<_> = pids
        .iter()
        .map(|p| thread_switches(*p))
        .collect::<anyhow::Result<_>>()?;
    let metrics_before = nodes[0].metrics()?;
    let t = Instant::now();
    // The measurement window: nothing to do.
    std::thread::sleep(Duration::from_secs(idle_secs));
    let secs = t.elapsed().as_secs_f64();
    let node_after: Vec<Sample> = pids
        .iter()
        .map(|p| sample(*p))
        .collect::<anyhow::Result<_>>()?;
    let threads_after: Vec<_> = pids
        .iter()
        .map(|p| thread_switches(*p))
        .collect::<anyhow::Result<_>>()?;
    let server_after: Vec<Sample> = servers
        .iter()
        .map(|s| sample(s.child.id()))
        .collect::<anyhow::Result<_>>()?;
    let load_end = loadavg();
    let metrics_after = nodes[0].metrics()?;
    let sessions: Vec<usize> = nodes
        .iter()
        .map(|n| {
            let s = n.get("/trust/sessions")?;
            Ok(s.body["sessions"].as_array().map_or(0, |a| a.len()))
        })
        .collect::<anyhow::Result<_>>()?;

    let ticks = 100.0; // USER_HZ
    let line = |name: &str, pid: u32, b: &Sample, a: &Sample| {
        let (rss, pss, anon) = memory(pid);
        println!(
            "  {name}: RSS {:.1} MiB (anon {:.1}), PSS {:.1} MiB, CPU {:.3} %, {:.2} wake-ups/s{}",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            pss as f64 / 1024.0,
            (a.cpu - b.cpu) as f64 / ticks / secs * 100.0,
            (a.switches.saturating_sub(b.switches)) as f64 / secs,
            if a.pids > 1 {
                format!(" ({} processes summed)", a.pids)
            } else {
                String::new()
            }
        );
    };
    println!("load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}");
    println!("idle, 5-node voiked mesh, default settings, {idle_secs} s:");
    for (i, n) in nodes.iter().enumerate() {
        line(&n.name, pids[i], &node_before[i], &node_after[i]);
    }
    println!("same run, authoritative DNS servers, one small zone, default workers:");
    for (i, s) in servers.iter().enumerate() {
        line(s.name, s.child.id(), &server_before[i], &server_after[i]);
    }

    // Mean wake-ups per node by thread name.
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (b, a) in threads_before.iter().zip(&threads_after) {
        for (name, (count, n)) in switches_by_name(b, a) {
            let e = by_name.entry(name).or_default();
            e.0 += count;
            e.1 += n;
        }
    }
    let mut rows: Vec<_> = by_name.into_iter().collect();
    rows.sort_by(|x, y| y.1.1.cmp(&x.1.1).then(x.0.cmp(&y.0)));
    let n = nodes.len() as f64;
    println!("voiked wake-ups/s by thread name, mean per node (threads per node):");
    for (name, (count, sw)) in rows {
        println!(
            "  {name:<18} {:>6.2}/s  ({:.1} threads)",
            sw as f64 / n / secs,
            count as f64 / n
        );
    }
    println!("connections held per node (members are 4): {sessions:?}");
    if std::env::var_os("BENCH_IDLE_SESSIONS").is_some() {
        let s = nodes[0].get("/trust/sessions")?;
        for x in s.body["sessions"].as_array().into_iter().flatten() {
            println!("  {} {} {}", x["peer"], x["transport"], x["remoteAddr"]);
        }
    }
    println!("{}: counters that moved during the window:", nodes[0].name);
    for (name, d) in counter_deltas(&metrics_before, &metrics_after) {
        println!("  {name} +{d}");
    }
    Ok(())
}

/// Counters (`*_total` samples) that grew between two `/metrics` texts, and by how much.
fn counter_deltas(before: &str, after: &str) -> Vec<(String, f64)> {
    let parse = |text: &str| -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                let name = name.to_string();
                (name.contains("_total") || name.contains("_count"))
                    .then(|| Some((name, value.parse().ok()?)))
                    .flatten()
            })
            .collect()
    };
    let b = parse(before);
    parse(after)
        .into_iter()
        .filter_map(|(name, a)| {
            let d = a - b.get(&name).copied().unwrap_or(0.0);
            (d > 0.0).then_some((name, d))
        })
        .collect()
}
