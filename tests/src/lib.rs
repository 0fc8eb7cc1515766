//! Black-box test harness: starts real `voiked` processes and talks to them like users do.
//!
//! [`TestNode::spawn`] starts a daemon on loopback with ephemeral ports and a temporary data
//! directory, waits for its admin API, and kills it on drop (printing its log if the test failed).
//! Binaries come from the cargo target directory next to the test executable (`cargo test
//! --workspace` builds them), or from `VOIKE_BIN_DIR`.
//!
//! # Layout
//! Everything is in this file: [`TestNode`], [`Api`] responses, [`wait_for`] and [`bin`].

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod dns;
pub mod dns_util;
pub mod forge;
pub mod grid_util;
pub mod natlab;
pub mod netns;

use anyhow::{Context, bail};
use serde_json::Value;

/// Loopback listen flags with ephemeral ports.
pub const LOOPBACK: &[&str] = &[
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
    "--api",
    "127.0.0.1:0",
    "--dns",
    "127.0.0.1:0",
    "--doh",
    "127.0.0.1:0",
];

/// The API, DNS and DoH flags of [`LOOPBACK`] (used with fixed p2p ports).
const LOOPBACK_SERVICES: usize = 6;

/// A TCP and a UDP port on 127.0.0.1, both free now and below the kernel's ephemeral port range,
/// so that no outgoing connection takes them while their node is down (on loopback, a dial to a
/// closed port in the ephemeral range can even connect to itself and hold the port).
pub fn fixed_ports() -> anyhow::Result<(u16, u16)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (start, end) = (10_000u32, low.max(12_000));
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (start + (seed.wrapping_add(n.wrapping_mul(7919))) % (end - start)) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok((port, port));
        }
    }
    bail!("no free port below the ephemeral range")
}

/// Path of a workspace binary (`voiked` or `voike`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VOIKE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, bench binaries from target/<profile>/.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => p.clone(),
        None => panic!(
            "{name} not found next to {}: run the tests with `cargo test --workspace` (which builds it) or set VOIKE_BIN_DIR",
            exe.display()
        ),
    }
}

/// An error that stops [`wait_for`] at once instead of being retried.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Polls `check` until it returns `Ok(true)`; panics naming `what` when `timeout` passes.
/// Errors from `check` are retried (a daemon may not be listening yet) unless they are [`Fatal`].
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.is::<Fatal>() => return Err(e),
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            // Panic rather than return: unwinding drops the test's nodes, which print their logs.
            match last_err {
                Some(e) => {
                    panic!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response: status and parsed JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug, Clone)]
pub struct Api {
    pub status: u16,
    pub body: Value,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// Sends a request to `base` + `path` with an optional bearer token and JSON body.
pub fn http(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Api> {
    let url = format!("{base}{path}");
    let a = agent();
    let resp = match method {
        "GET" => {
            let mut r = a.get(&url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        "POST" => {
            let mut r = a.post(&url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
        "DELETE" => {
            let mut r = a.delete(&url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
        other => bail!("unsupported method {other}"),
    };
    let mut resp = resp.with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Api {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}

/// A running (or stopped) `voiked` with its own data directory.
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    args: Vec<String>,
    pub api: String,
    pub token: String,
    pub node_id: String,
    /// Listen addresses to use instead of ephemeral ports (see [`TestNode::fix_ports`]).
    fixed_listen: Option<Vec<String>>,
    /// Extra environment variables for the process (config keys such as `VOIKED_DNS__RRL_RATE`).
    env: Vec<(String, String)>,
    /// The network namespace the process runs in (see [`netns`]), with its address.
    netns: Option<(String, String)>,
}

impl TestNode {
    /// Starts a node with a fresh data directory; `extra` are added to the loopback flags.
    pub fn spawn(name: &str, extra: &[&str]) -> anyhow::Result<TestNode> {
        let mut node = Self::create(name, extra)?;
        node.start()?;
        Ok(node)
    }

    /// A node with a fresh data directory that has not been started yet.
    pub fn create(name: &str, extra: &[&str]) -> anyhow::Result<TestNode> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("voike-{name}-"))
            .tempdir()?;
        let dir = temp.path().join("data");
        Ok(TestNode {
            name: name.to_string(),
            dir,
            _temp: Some(temp),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            api: String::new(),
            token: String::new(),
            node_id: String::new(),
            fixed_listen: None,
            env: Vec::new(),
            netns: None,
        })
    }

    /// Sets extra environment variables (config keys) for the next start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts a node with extra environment variables (config keys).
    pub fn spawn_with_env(
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestNode> {
        let mut node = Self::create(name, extra)?;
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.start()?;
        Ok(node)
    }

    /// A node (not started) that runs in namespace `ns` with address `ip` (see [`netns`]).
    pub fn in_netns(name: &str, ns: &str, ip: &str, extra: &[&str]) -> anyhow::Result<TestNode> {
        let mut node = Self::create(name, extra)?;
        node.netns = Some((ns.to_string(), ip.to_string()));
        Ok(node)
    }

    /// Starts a Genesis node (a new mesh).
    pub fn genesis(name: &str) -> anyhow::Result<TestNode> {
        Self::spawn(name, &[])
    }

    /// Starts a node that joins with `ticket`.
    pub fn join(name: &str, ticket: &str) -> anyhow::Result<TestNode> {
        Self::spawn(name, &["--join", ticket])
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_file_name(format!("{}.log", self.name))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A `voiked` command with this node's data dir, loopback flags and extra args.
    pub fn command(&self) -> Command {
        if let Some((ns, ip)) = &self.netns {
            // A host of a namespace lab: fixed ports on its own address, the API reachable from
            // the root namespace over the bridge.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("voiked"));
            c.arg("--data-dir").arg(&self.dir);
            c.args(["--listen", &format!("/ip4/{ip}/tcp/4747")]);
            c.args(["--listen", &format!("/ip4/{ip}/udp/4747/quic-v1")]);
            c.args([
                "--api",
                &format!("{ip}:8080"),
                "--dns",
                &format!("{ip}:1053"),
            ]);
            c.args(["--doh", "off"]);
            c.args(&self.args);
            c.env("VOIKED_API__ALLOW_REMOTE", "true");
            c.env("VOIKED_DNS__FORWARD", "false");
            c.env("VOIKED_LOG", "info,voiked=debug,libp2p=warn");
            c.env_remove("VOIKED_CONFIG");
            c.envs(self.env.iter().map(|(k, v)| (k, v)));
            return c;
        }
        let mut c = Command::new(bin("voiked"));
        c.arg("--data-dir").arg(&self.dir);
        let defaults = match &self.fixed_listen {
            Some(addrs) => {
                for a in addrs {
                    c.arg("--listen").arg(a);
                }
                &LOOPBACK[LOOPBACK.len() - LOOPBACK_SERVICES..]
            }
            None => LOOPBACK,
        };
        // Loopback defaults, except flags the test gives itself (such as `--doh off`).
        for pair in defaults.chunks(2) {
            if pair[0] == "--listen" || !self.args.iter().any(|a| a == pair[0]) {
                c.args(pair);
            }
        }
        c.args(&self.args);
        // Tests never send DNS to the machine's resolvers; a test that forwards names sets
        // `VOIKED_DNS__UPSTREAMS` and `VOIKED_DNS__FORWARD=true` itself.
        c.env("VOIKED_DNS__FORWARD", "false");
        c.env("VOIKED_LOG", "info,voiked=debug,libp2p=warn");
        c.env_remove("VOIKED_CONFIG");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Spawns the daemon with its output appended to the node's log (a stale `api.addr` removed
    /// first, so that waiting for it waits for this process).
    fn spawn_logged(&self) -> anyhow::Result<Child> {
        let _ = fs::remove_file(self.dir.join("api.addr"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning voiked")
    }

    /// Starts the process and waits until its admin API answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let child = self.spawn_logged()?;
        self.child = Some(child);
        let addr_file = self.dir.join("api.addr");
        wait_for(
            Duration::from_secs(30),
            &format!("{} to write api.addr", self.name),
            || {
                self.fail_if_exited()?;
                // Whole: an address, not a file being written.
                Ok(fs::read_to_string(&addr_file).is_ok_and(|t| t.ends_with('\n')))
            },
        )?;
        self.api = format!("http://{}", fs::read_to_string(&addr_file)?.trim());
        self.token = fs::read_to_string(self.dir.join("admin.token"))?
            .trim()
            .to_string();
        wait_for(
            Duration::from_secs(30),
            &format!("{} API", self.name),
            || {
                self.fail_if_exited()?;
                Ok(http("GET", &self.api, "/healthz", None, None)?.status == 200)
            },
        )?;
        let me = self.get("/mesh/self")?;
        self.node_id = me.body["nodeId"].as_str().unwrap_or_default().to_string();
        Ok(())
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A [`Fatal`] error carrying the log if the process has already exited.
    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        match self.try_exit()? {
            Some(status) => {
                Err(Fatal(format!("voiked exited early with {status}: {}", self.log())).into())
            }
            None => Ok(()),
        }
    }

    /// Whether the process has exited (and with what).
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut status = None;
        wait_for(timeout, &format!("{} to exit", self.name), || {
            status = self.try_exit()?;
            Ok(status.is_some())
        })?;
        self.child = None;
        status.context("exit status")
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Api> {
        http("GET", &self.api, path, Some(&self.token), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Api> {
        http("POST", &self.api, path, Some(&self.token), Some(body))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Api> {
        http("DELETE", &self.api, path, Some(&self.token), None)
    }

    /// The DNS listener's address (UDP and TCP), from `/mesh/self`.
    pub fn dns_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let me = self.get("/mesh/self")?;
        me.body["dnsAddr"]
            .as_str()
            .context("no dnsAddr in /mesh/self")?
            .parse()
            .context("dnsAddr")
    }

    /// The DoH listener's address, from `/mesh/self`.
    pub fn doh_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let me = self.get("/mesh/self")?;
        me.body["dohAddr"]
            .as_str()
            .context("no dohAddr in /mesh/self")?
            .parse()
            .context("dohAddr")
    }

    /// `GET path` as text (for non-JSON answers such as zone exports).
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.api);
        let mut resp = agent()
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| url.clone())?;
        anyhow::ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
        Ok(resp.body_mut().read_to_string()?)
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.api);
        let mut resp = agent().get(&url).call().with_context(|| url.clone())?;
        Ok(resp.body_mut().read_to_string()?)
    }

    /// The value of the metric sample `name{labels}` (exact text before the value), or 0.
    pub fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// Creates zone `id` for `domain`.
    pub fn create_zone(&self, id: &str, domain: &str) -> anyhow::Result<()> {
        let r = self.post(
            "/vdns/zones",
            &serde_json::json!({ "id": id, "domain": domain }),
        )?;
        if r.status != 201 {
            bail!("create zone {id}: {} {}", r.status, r.body);
        }
        Ok(())
    }

    /// As an admin, grants `domain` to `to` (which may then create zones at or under it) and
    /// waits until `to` holds the grant.
    pub fn grant_to(&self, to: &TestNode, domain: &str) -> anyhow::Result<()> {
        let r = self.post(
            "/mesh/grants",
            &serde_json::json!({ "domain": domain, "node": to.node_id }),
        )?;
        if r.status != 201 {
            bail!("grant {domain}: {} {}", r.status, r.body);
        }
        wait_for(Duration::from_secs(30), "the grant to arrive", || {
            let g = to.get("/mesh/grants")?;
            Ok(g.body["grants"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["node"] == to.node_id.as_str())))
        })
    }

    /// Adds an A record `name` → `value` to `zone`; returns its id.
    pub fn add_a(&self, zone: &str, name: &str, value: &str) -> anyhow::Result<String> {
        let r = self.post(
            "/vdns/records",
            &serde_json::json!({ "zoneId": zone, "record": { "type": "A", "name": name, "value": value, "ttl": 60 } }),
        )?;
        if r.status != 201 {
            bail!("add record {name}: {} {}", r.status, r.body);
        }
        Ok(r.body["record"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Names of the records of `zone` (empty when the zone is unknown here).
    pub fn record_names(&self, zone: &str) -> anyhow::Result<Vec<String>> {
        // Every page (the answer is paged: `next` is the cursor of the following one).
        let mut names: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/vdns/records?zoneId={zone}&limit=10000&after={a}"),
                None => format!("/vdns/records?zoneId={zone}&limit=10000"),
            };
            let r = self.get(&path)?;
            names.extend(
                r.body["records"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|r| r["name"].as_str().map(String::from)),
            );
            match r.body["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        names.sort();
        Ok(names)
    }

    /// `POST /ledger/verify`.
    pub fn verify(&self) -> anyhow::Result<Value> {
        let r = self.post("/ledger/verify", &serde_json::json!({}))?;
        if r.status != 200 {
            bail!("ledger verify: {} {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Issues an invite and returns the ticket.
    pub fn invite(&self, ttl: &str) -> anyhow::Result<String> {
        let r = self.post("/mesh/invites", &serde_json::json!({ "ttl": ttl }))?;
        if r.status != 201 {
            bail!("invite failed: {} {}", r.status, r.body);
        }
        Ok(r.body["ticket"].as_str().context("ticket")?.to_string())
    }

    /// `GET /mesh/nodes` → `nodes`.
    pub fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let r = self.get("/mesh/nodes")?;
        if r.status != 200 {
            bail!("/mesh/nodes: {} {}", r.status, r.body);
        }
        Ok(r.body["nodes"].as_array().cloned().unwrap_or_default())
    }

    /// Whether this node lists `node_id` as a connected member.
    pub fn sees_connected(&self, node_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .nodes()?
            .iter()
            .any(|n| n["nodeId"] == node_id && n["connected"] == true))
    }

    /// Whether `node_id` appears in this node's member list at all.
    pub fn lists(&self, node_id: &str) -> anyhow::Result<bool> {
        Ok(self.nodes()?.iter().any(|n| n["nodeId"] == node_id))
    }

    /// This node's p2p listen addresses with `/p2p/<id>`.
    pub fn dial_addrs(&self) -> anyhow::Result<Vec<String>> {
        let me = self.get("/mesh/self")?;
        Ok(me.body["listenAddrs"]
            .as_array()
            .context("listenAddrs")?
            .iter()
            .filter_map(|a| a.as_str())
            .map(|a| format!("{a}/p2p/{}", self.node_id))
            .collect())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("node is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Makes the node listen on fixed ports (kept across restarts, as a node with configured
    /// ports does) instead of ephemeral ones; call before `start`.
    pub fn fix_ports(&mut self) -> anyhow::Result<()> {
        let (tcp, udp) = fixed_ports()?;
        self.fixed_listen = Some(vec![
            format!("/ip4/127.0.0.1/tcp/{tcp}"),
            format!("/ip4/127.0.0.1/udp/{udp}/quic-v1"),
        ]);
        Ok(())
    }

    /// Creates and starts a node on fixed ports; `extra` as for [`TestNode::spawn`].
    pub fn spawn_fixed(name: &str, extra: &[&str]) -> anyhow::Result<TestNode> {
        let mut node = Self::create(name, extra)?;
        node.fix_ports()?;
        node.start()?;
        Ok(node)
    }

    /// A node (not started) whose data directory is a copy of `src` (a fixture), with the
    /// permissions `voiked` expects of a data directory.
    pub fn from_data_dir(name: &str, src: &std::path::Path) -> anyhow::Result<TestNode> {
        use std::os::unix::fs::PermissionsExt;
        let node = Self::create(name, &[])?;
        fs::create_dir_all(&node.dir)?;
        fs::set_permissions(&node.dir, fs::Permissions::from_mode(0o700))?;
        for f in ["node.key", "admin.token", "state.redb"] {
            let to = node.dir.join(f);
            fs::copy(src.join(f), &to).with_context(|| format!("copying {f}"))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
        }
        Ok(node)
    }

    /// Starts the process and SIGKILLs it after `after`, wherever its start-up is then (a
    /// crash during start-up); the next [`TestNode::start`] finds the data directory as left.
    pub fn start_and_kill(&mut self, after: Duration) -> anyhow::Result<()> {
        let mut child = self.spawn_logged()?;
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Starts the node again with the same data directory (and no `--join`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.args.retain(|a| !a.starts_with("voike1"));
        if let Some(i) = self.args.iter().position(|a| a == "--join") {
            self.args.remove(i);
        }
        self.start()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines = std::env::var("VOIKE_TEST_LOG_LINES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            eprintln!("---- log of {} (last {} lines) ----", self.name, tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Runs `voike` with `args` against `node` and returns its output.
pub fn voike(node: &TestNode, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin("voike"))
        .arg("--data-dir")
        .arg(&node.dir)
        .args(args)
        .env_remove("VOIKE_API")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .output()?)
}

/// Runs `voiked` to completion (for commands and start-ups that must fail).
pub fn voiked_output(args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    let child = Command::new(bin("voiked"))
        .args(args)
        .env_remove("VOIKED_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("voiked {args:?} did not exit within {timeout:?}")
        }
    }
}

/// libfaketime's multi-threaded library (Debian's `faketime`), for clocks moved or skewed in
/// tests; `None` where it is not installed.
pub fn libfaketime() -> Option<PathBuf> {
    for d in std::fs::read_dir("/usr/lib").ok()?.flatten() {
        let p = d.path().join("faketime/libfaketimeMT.so.1");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

/// (utime + stime in clock ticks, voluntary + involuntary context switches, VmRSS in KiB).
pub fn proc_sample(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields after ")" start at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    let field = |status: &str, name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Context switches are per thread: sum them over every thread of the process.
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        switches += field(&status, "voluntary_ctxt_switches:")
            + field(&status, "nonvoluntary_ctxt_switches:");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok((utime + stime, switches, field(&status, "VmRSS:")))
}

/// Context switches (voluntary plus nonvoluntary) of every thread of `pid`, by thread id, with
/// the thread's name (`/proc/PID/task/TID/comm`). A thread that ends between two calls takes its
/// count with it; one that starts counts from zero.
pub fn thread_switches(pid: u32) -> anyhow::Result<std::collections::BTreeMap<u32, (String, u64)>> {
    let mut out = std::collections::BTreeMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let Some(tid) = task
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // A thread can end while it is read.
        let (Ok(comm), Ok(status)) = (
            fs::read_to_string(task.join("comm")),
            fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        let n: u64 = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        out.insert(tid, (comm.trim().to_string(), n));
    }
    Ok(out)
}

/// Context switches per thread name between two [`thread_switches`] samples of one process, with
/// the number of threads of that name at the end. Names are grouped without a trailing number
/// (`dns-udp-0` and `dns-udp-1` are `dns-udp`).
pub fn switches_by_name(
    before: &std::collections::BTreeMap<u32, (String, u64)>,
    after: &std::collections::BTreeMap<u32, (String, u64)>,
) -> std::collections::BTreeMap<String, (usize, u64)> {
    let mut out: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for (tid, (comm, n)) in after {
        let start = match before.get(tid) {
            Some((c, b)) if c == comm => *b,
            _ => 0,
        };
        let name = comm
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['-', '_', '#'])
            .to_string();
        let e = out.entry(name).or_default();
        e.0 += 1;
        e.1 += n.saturating_sub(start);
    }
    out
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `named-checkzone ORIGIN FILE` (Debian's bind9-utils) on `text`; an error only when it
/// cannot be run.
pub fn named_checkzone(origin: &str, text: &str) -> anyhow::Result<Output> {
    let file = tempfile::NamedTempFile::new()?;
    fs::write(file.path(), text)?;
    Command::new("named-checkzone")
        .arg(origin)
        .arg(file.path())
        .output()
        .map_err(|e| anyhow::anyhow!("named-checkzone (apt-get install bind9-utils): {e}"))
}
