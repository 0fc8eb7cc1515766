//! A NAT lab in network namespaces: an "internet" bridge with public hosts, and routers that
//! masquerade a private LAN each, the way home routers do — unsolicited inbound packets are
//! *dropped* (not rejected), established flows come back. The test process (root namespace,
//! `10.S.0.254`) reaches every host's admin API: routes to the LANs go through their routers,
//! which let in only the API port from the test's address. Traffic only goes to addresses the
//! lab created; everything is removed when the lab is dropped.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{ns_run, run};

/// How a router maps a LAN host's flows to its public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (Linux masquerade keeps the source port when it can):
    /// what hole punching needs.
    Cone,
    /// A new random public port for every flow (`masquerade random`): endpoint-dependent,
    /// "symmetric".
    Symmetric,
}

/// Public hosts `10.S.0.1..` on a bridge; router `k` at `10.S.0.(101+k)` with its LAN
/// `10.S.(k+1).0/24`, host `10.S.(k+1).2` behind it.
#[derive(Debug)]
pub struct NatLab {
    bridge: String,
    pub subnet: u8,
    public: Vec<String>,
    routers: Vec<String>,
    private: Vec<String>,
}

impl NatLab {
    /// `public` hosts on the internet bridge, and one private host behind a router per entry of
    /// `nats`.
    pub fn new(public: usize, nats: &[Nat]) -> anyhow::Result<NatLab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        // 10.150.0.0 - 10.199.0.0 (NetLab uses 10.200 and up).
        let subnet = 150 + (id % 50) as u8;
        let tag = format!("vn{id}");
        let bridge = format!("{tag}br");
        let mut lab = NatLab {
            bridge: bridge.clone(),
            subnet,
            public: Vec::new(),
            routers: Vec::new(),
            private: Vec::new(),
        };
        let s = subnet;
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.{s}.0.254/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        let _ = std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0");
        let attach = |ns: &str, veth: &str, ip: &str| -> anyhow::Result<()> {
            run(&[
                "ip", "link", "add", veth, "type", "veth", "peer", "name", "wan", "netns", ns,
            ])?;
            run(&["ip", "link", "set", veth, "master", &bridge])?;
            run(&["ip", "link", "set", veth, "up"])?;
            ns_run(ns, &["ip", "link", "set", "lo", "up"])?;
            ns_run(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan"],
            )?;
            ns_run(ns, &["ip", "link", "set", "wan", "up"])
        };
        for h in 0..public {
            let ns = format!("{tag}p{h}");
            run(&["ip", "netns", "add", &ns])?;
            lab.public.push(ns.clone());
            attach(&ns, &format!("{tag}pv{h}"), &format!("10.{s}.0.{}", h + 1))?;
        }
        for (k, nat) in nats.iter().enumerate() {
            let r = format!("{tag}r{k}");
            let h = format!("{tag}h{k}");
            run(&["ip", "netns", "add", &r])?;
            lab.routers.push(r.clone());
            run(&["ip", "netns", "add", &h])?;
            lab.private.push(h.clone());
            let wan_ip = format!("10.{s}.0.{}", 101 + k);
            attach(&r, &format!("{tag}rv{k}"), &wan_ip)?;
            // The LAN: a veth between the router and its host.
            run(&[
                "ip", "link", "add", "lan", "netns", &r, "type", "veth", "peer", "name", "eth0",
                "netns", &h,
            ])?;
            let lan = format!("10.{s}.{}", k + 1);
            ns_run(
                &r,
                &["ip", "addr", "add", &format!("{lan}.1/24"), "dev", "lan"],
            )?;
            ns_run(&r, &["ip", "link", "set", "lan", "up"])?;
            ns_run(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            ns_run(&h, &["ip", "link", "set", "lo", "up"])?;
            ns_run(
                &h,
                &["ip", "addr", "add", &format!("{lan}.2/24"), "dev", "eth0"],
            )?;
            ns_run(&h, &["ip", "link", "set", "eth0", "up"])?;
            ns_run(
                &h,
                &["ip", "route", "add", "default", "via", &format!("{lan}.1")],
            )?;
            let random = if *nat == Nat::Symmetric {
                " random"
            } else {
                ""
            };
            let rules = format!(
                "table ip vknat {{\n\
                 chain masq {{ type nat hook postrouting priority 100; oifname \"wan\" masquerade{random}; }}\n\
                 chain filter_in {{ type filter hook input priority 0; policy drop;
                   ct state established,related accept; iifname \"lo\" accept; iifname \"lan\" accept;
                 }}
                 chain filter_fw {{ type filter hook forward priority 0; policy drop;\n\
                   ct state established,related accept;\n\
                   ct status dnat accept;\n\
                   iifname \"lan\" oifname \"wan\" accept;\n\
                   ip saddr 10.{s}.0.254 ip daddr {lan}.2 tcp dport 8080 accept;\n\
                 }}\n\
                 }}\n"
            );
            let path = std::env::temp_dir().join(format!("{tag}-r{k}.nft"));
            std::fs::write(&path, rules)?;
            ns_run(&r, &["nft", "-f", &path.to_string_lossy()])?;
            // The test reaches the host's API through the router.
            run(&["ip", "route", "add", &format!("{lan}.0/24"), "via", &wan_ip])?;
        }
        Ok(lab)
    }

    /// The root namespace's end of public host `h`'s link (its byte counters are the host's
    /// traffic).
    pub fn public_link(&self, h: usize) -> String {
        format!("{}pv{h}", self.bridge.trim_end_matches("br"))
    }

    pub fn public_ns(&self, h: usize) -> &str {
        &self.public[h]
    }

    pub fn public_ip(&self, h: usize) -> String {
        format!("10.{}.0.{}", self.subnet, h + 1)
    }

    pub fn private_ns(&self, k: usize) -> &str {
        &self.private[k]
    }

    pub fn private_ip(&self, k: usize) -> String {
        format!("10.{}.{}.2", self.subnet, k + 1)
    }

    /// The "internet" address of public host `h` or router `k` in a lab with
    /// [`NatLab::start_upnp`]: `11.S.0.x`. UPnP gateways (miniupnpd) and clients (libp2p-upnp)
    /// refuse to map ports behind a private or reserved external address — they take it for
    /// double NAT — so the lab's WAN side also gets addresses that count as public. They exist
    /// only on the lab's WAN interfaces (not in the root namespace, whose routes stay as they
    /// are), so traffic to them never leaves the lab.
    pub fn internet_ip_of_public(&self, h: usize) -> String {
        format!("11.{}.0.{}", self.subnet, h + 1)
    }

    pub fn internet_ip_of_router(&self, k: usize) -> String {
        format!("11.{}.0.{}", self.subnet, 101 + k)
    }

    /// Runs a UPnP IGD gateway (miniupnpd, nftables backend) on router `k`, as a home router
    /// offers one: its LAN host may map ports of its own address. Gives every WAN interface of
    /// the lab its internet address first. Skips (returns `Ok(None)`) when miniupnpd is not
    /// installed; `.ci/run` installs it.
    pub fn start_upnp(&self, k: usize) -> anyhow::Result<Option<Upnpd>> {
        self.start_port_mapper(k, true)
    }

    /// Like [`NatLab::start_upnp`], with UPnP IGD off when `upnp` is false: the router then
    /// offers only PCP and NAT-PMP.
    pub fn start_port_mapper(&self, k: usize, upnp: bool) -> anyhow::Result<Option<Upnpd>> {
        let binary = ["/usr/sbin/miniupnpd", "/usr/local/sbin/miniupnpd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            return Ok(None);
        };
        let s = self.subnet;
        for (h, ns) in self.public.iter().enumerate() {
            let ip = self.internet_ip_of_public(h);
            let _ = ns_run(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan"],
            );
        }
        for (j, ns) in self.routers.iter().enumerate() {
            let ip = self.internet_ip_of_router(j);
            let _ = ns_run(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan"],
            );
        }
        let r = &self.routers[k];
        // The chains miniupnpd fills (as its nft_init.sh makes them); the lab's own filter
        // still drops unsolicited inbound packets, except those a mapping translated.
        let tables = concat!(
            "table inet filter {\n",
            "chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n",
            "chain miniupnpd { }\n",
            "chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n",
            "chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n",
            "chain prerouting_miniupnpd { }\n",
            "chain postrouting_miniupnpd { }\n",
            "}\n",
        );
        let tag = &self.bridge;
        let dir = std::env::temp_dir();
        let nft = dir.join(format!("{tag}-upnp{k}.nft"));
        std::fs::write(&nft, tables)?;
        ns_run(r, &["nft", "-f", &nft.to_string_lossy()])?;
        let lan = format!("10.{s}.{}", k + 1);
        let conf = format!(
            concat!(
                "ext_ifname=wan\n",
                "ext_ip={ext}\n",
                "listening_ip=lan\n",
                "http_port=0\n",
                "enable_upnp={upnp}\n",
                "enable_natpmp=yes\n",
                "secure_mode=yes\n",
                "system_uptime=yes\n",
                "uuid=3f6e4a70-0000-4000-8000-0000000000{k:02}\n",
                "allow 1024-65535 {lan}.0/24 1024-65535\n",
                "deny 0-65535 0.0.0.0/0 0-65535\n",
            ),
            ext = self.internet_ip_of_router(k),
            upnp = if upnp { "yes" } else { "no" },
            k = k,
            lan = lan,
        );
        let conf_path = dir.join(format!("{tag}-upnp{k}.conf"));
        std::fs::write(&conf_path, conf)?;
        let pid_path = dir.join(format!("{tag}-upnp{k}.pid"));
        let log_path = dir.join(format!("{tag}-upnp{k}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", r, binary, "-d", "-f"])
            .arg(&conf_path)
            .arg("-P")
            .arg(&pid_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let upnpd = Upnpd {
            child,
            log: log_path,
        };
        // Up once it listens on the LAN side.
        crate::wait_for(
            std::time::Duration::from_secs(10),
            "miniupnpd listening",
            || Ok(upnpd.log().contains("Listening for NAT-PMP/PCP traffic")),
        )
        .map_err(|e| anyhow::anyhow!("{e}; miniupnpd said: {}", upnpd.log()))?;
        Ok(Some(upnpd))
    }

    /// Gives router `k` a new public address (as an ISP's new DHCP lease would) and removes the
    /// old one; the kernel drops the flows masqueraded to the old address. Returns the new one.
    pub fn renumber_router(&self, k: usize) -> anyhow::Result<String> {
        let s = self.subnet;
        let (old, new) = (
            format!("10.{s}.0.{}", 101 + k),
            format!("10.{s}.0.{}", 151 + k),
        );
        let r = &self.routers[k];
        // The new address is a secondary one until the old goes; keep it then.
        ns_run(
            r,
            &["sysctl", "-qw", "net.ipv4.conf.wan.promote_secondaries=1"],
        )?;
        ns_run(
            r,
            &["ip", "addr", "add", &format!("{new}/24"), "dev", "wan"],
        )?;
        ns_run(
            r,
            &["ip", "addr", "del", &format!("{old}/24"), "dev", "wan"],
        )?;
        run(&[
            "ip",
            "route",
            "replace",
            &format!("10.{s}.{}.0/24", k + 1),
            "via",
            &new,
        ])?;
        Ok(new)
    }

    /// Forgets every NAT mapping of router `k` (`conntrack -F`, as a router reboot would): the
    /// LAN host's flows get new public ports.
    pub fn flush_router(&self, k: usize) -> anyhow::Result<()> {
        ns_run(&self.routers[k], &["conntrack", "-F"])
    }
}

/// A running UPnP gateway on a lab router; stopped when dropped.
#[derive(Debug)]
pub struct Upnpd {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Upnpd {
    /// What miniupnpd logged (with `-d` it logs every request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for k in 0..self.routers.len() {
            let _ = run(&[
                "ip",
                "route",
                "del",
                &format!("10.{}.{}.0/24", self.subnet, k + 1),
            ]);
        }
        for ns in self.public.iter().chain(&self.routers).chain(&self.private) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
