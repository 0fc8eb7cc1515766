//! Network-namespace labs: hosts on a bridge, each a namespace with its own address, and
//! partitions made with nftables inside a host's namespace. Needs root, `ip` (iproute2) and
//! `nft` (nftables); [`NetLab::new`] says why when they are missing, and tests then skip with
//! that message (`.ci/run` fails when every namespace test skipped). Every lab removes what it
//! created when dropped. Traffic only goes to addresses the lab created.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// A bridge in the root namespace (`10.<n>.0.254/24`) with hosts `10.<n>.0.1`, `.2`, ...
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    bridge: String,
    pub subnet: u8,
    hosts: Vec<String>,
}

/// Runs a command; its stderr in the error when it fails.
pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command inside namespace `ns`.
pub(crate) fn ns_run(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Why namespace tests cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = format!("vkprobe{}", std::process::id());
    if let Err(e) = run(&["ip", "netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = run(&["ip", "netns", "del", &probe]);
    None
}

/// Skips the calling test (returns from it) with a message when namespaces are unavailable;
/// records the skip in `target/netns-skipped` for `.ci/run`.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(why) = $crate::netns::unavailable() {
            eprintln!("SKIPPED (network namespaces unavailable: {why})");
            $crate::netns::record_skip(&why);
            return Ok(());
        }
        $crate::netns::record_ran();
    };
}

fn marker_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/netns-tests")
}

/// Notes that a namespace test was skipped (read by `.ci/run`).
pub fn record_skip(why: &str) {
    let d = marker_dir();
    let _ = std::fs::create_dir_all(&d);
    let _ = std::fs::write(d.join(format!("skipped-{}", std::process::id())), why);
}

/// Notes that a namespace test ran (read by `.ci/run`).
pub fn record_ran() {
    let d = marker_dir();
    let _ = std::fs::create_dir_all(&d);
    let _ = std::fs::write(d.join(format!("ran-{}", std::process::id())), "");
}

impl NetLab {
    /// A bridge with `hosts` namespaces on it.
    pub fn new(hosts: usize) -> anyhow::Result<NetLab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        // 10.200.0.0 - 10.249.0.0: one /24 per lab.
        let subnet = 200 + (id % 50) as u8;
        let tag = format!("vk{id}");
        let bridge = format!("{tag}br");
        let mut lab = NetLab {
            tag: tag.clone(),
            bridge: bridge.clone(),
            subnet,
            hosts: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.{subnet}.0.254/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for h in 0..hosts {
            let ns = format!("{tag}h{h}");
            let veth = format!("{tag}v{h}");
            run(&["ip", "netns", "add", &ns])?;
            lab.hosts.push(ns.clone());
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &bridge])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            ns_run(&ns, &["ip", "link", "set", "lo", "up"])?;
            ns_run(
                &ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.{subnet}.0.{}/24", h + 1),
                    "dev",
                    "eth0",
                ],
            )?;
            ns_run(&ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        // Bridged frames must not go through the root namespace's firewall.
        let _ = std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0");
        Ok(lab)
    }

    /// The namespace name of host `h`.
    pub fn ns(&self, h: usize) -> &str {
        &self.hosts[h]
    }

    /// The address of host `h`.
    pub fn ip(&self, h: usize) -> String {
        format!("10.{}.0.{}", self.subnet, h + 1)
    }

    /// The root namespace's address on the bridge (where tests talk to the hosts' APIs from).
    pub fn gateway(&self) -> String {
        format!("10.{}.0.254", self.subnet)
    }

    /// Cuts host `h` off from the other hosts (not from the gateway, so the test can still use
    /// its API): every packet between them is dropped, both ways, with no answer.
    pub fn isolate(&self, h: usize) -> anyhow::Result<()> {
        let others: Vec<String> = (0..self.hosts.len())
            .filter(|o| *o != h)
            .map(|o| self.ip(o))
            .collect();
        let set = others.join(", ");
        let rules = format!(
            "table inet vkcut {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-cut-{h}.nft", self.tag));
        std::fs::write(&path, rules)?;
        ns_run(&self.hosts[h], &["nft", "-f", &path.to_string_lossy()])
    }

    /// Cuts the link between hosts `h` and `o` only (both keep reaching the others): every
    /// packet between the two is dropped in `h`'s namespace, both ways, with no answer.
    pub fn cut(&self, h: usize, o: usize) -> anyhow::Result<()> {
        let ip = self.ip(o);
        let rules = format!(
            "table inet vklink{o} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; ip saddr {ip} drop; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; ip daddr {ip} drop; }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-cut-{h}-{o}.nft", self.tag));
        std::fs::write(&path, rules)?;
        ns_run(&self.hosts[h], &["nft", "-f", &path.to_string_lossy()])
    }

    /// Undoes [`NetLab::isolate`].
    pub fn heal(&self, h: usize) -> anyhow::Result<()> {
        ns_run(&self.hosts[h], &["nft", "delete", "table", "inet", "vkcut"])
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
