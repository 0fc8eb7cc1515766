//! PCP (RFC 6887) and NAT-PMP (RFC 6886) port mapping, for routers that offer them instead of
//! (or beside) UPnP IGD: one task per private IPv4 listen address asks the default gateway to
//! map its port (PCP first, NAT-PMP as the fallback, through `crab_nat`), tells the event loop
//! the external address, and renews the mapping at half its lifetime. A gateway that does not
//! answer costs a few UDP packets at start and nothing after.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::mpsc;
use tracing::debug;

use super::event_loop::Command;

/// Lifetime asked for (the gateway may grant less); renewed at half of what it granted.
const LIFETIME_SECS: u32 = 3600;
/// Wait before asking again after a renewal failed.
const RETRY: Duration = Duration::from_secs(60);

/// What a mapping task tells the event loop.
#[derive(Debug)]
pub enum PmpEvent {
    Mapped {
        local: Multiaddr,
        external: Multiaddr,
        via: &'static str,
    },
    Lost {
        external: Multiaddr,
    },
    /// The gateway answered neither PCP nor NAT-PMP for this address.
    Unavailable {
        local: Multiaddr,
        error: String,
    },
}

/// The IPv4 default gateway, from `/proc/net/route`.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            let g = u32::from_str_radix(f[2], 16).ok()?;
            // The file holds the address in host (little-endian) byte order.
            Some(Ipv4Addr::from(g.swap_bytes())).filter(|ip| !ip.is_unspecified())
        } else {
            None
        }
    })
}

/// The private IPv4 address, port and protocol of a listen address UPnP-style mapping can
/// serve (`/ip4/10.x/tcp/P`, `/ip4/10.x/udp/P/quic-v1`).
pub fn mappable(addr: &Multiaddr) -> Option<(Ipv4Addr, InternetProtocol, NonZeroU16)> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) if ip.is_private() => ip,
        _ => return None,
    };
    let (proto, port) = match it.next()? {
        Protocol::Tcp(p) => (InternetProtocol::Tcp, p),
        Protocol::Udp(p) => (InternetProtocol::Udp, p),
        _ => return None,
    };
    Some((ip, proto, NonZeroU16::new(port)?))
}

/// `local` with its IP and port replaced by the external ones.
fn external_addr(local: &Multiaddr, ip: Ipv4Addr, port: u16) -> Multiaddr {
    local
        .iter()
        .map(|p| match p {
            Protocol::Ip4(_) => Protocol::Ip4(ip),
            Protocol::Tcp(_) => Protocol::Tcp(port),
            Protocol::Udp(_) => Protocol::Udp(port),
            other => other,
        })
        .collect()
}

async fn external_ip(m: &PortMapping, gateway: IpAddr) -> Result<Ipv4Addr, String> {
    let ip = match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => external_ip,
        PortMappingType::NatPmp => IpAddr::V4(
            crab_nat::natpmp::external_address(gateway, None)
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        // PCP answers IPv4 as IPv4-mapped IPv6.
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .ok_or_else(|| format!("external address {v6} is not IPv4")),
    }
}

fn via(m: &PortMapping) -> &'static str {
    match m.mapping_type() {
        PortMappingType::Pcp { .. } => "pcp",
        PortMappingType::NatPmp => "nat-pmp",
    }
}

/// Maps `local` on `gateway` and keeps the mapping; reports through `tx` (a weak sender: the
/// task ends with the event loop).
pub fn spawn(gateway: Ipv4Addr, local: Multiaddr, tx: mpsc::WeakSender<Command>) {
    let Some((ip, proto, port)) = mappable(&local) else {
        return;
    };
    tokio::spawn(async move {
        let send = |ev: PmpEvent| {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.try_send(Command::PortMapping(ev));
                true
            } else {
                false
            }
        };
        let gw = IpAddr::V4(gateway);
        let options = PortMappingOptions {
            external_port: Some(port),
            lifetime_seconds: Some(LIFETIME_SECS),
            timeout_config: None,
        };
        let mut mapping = match PortMapping::new(gw, IpAddr::V4(ip), proto, port, options).await {
            Ok(m) => m,
            Err(e) => {
                send(PmpEvent::Unavailable {
                    local,
                    error: e.to_string(),
                });
                return;
            }
        };
        loop {
            let external = match external_ip(&mapping, gw).await {
                Ok(ext) => external_addr(&local, ext, mapping.external_port().get()),
                Err(error) => {
                    send(PmpEvent::Unavailable { local, error });
                    return;
                }
            };
            if !send(PmpEvent::Mapped {
                local: local.clone(),
                external: external.clone(),
                via: via(&mapping),
            }) {
                return;
            }
            // Renew at half the granted lifetime; on failure, report and ask again later.
            loop {
                let half = Duration::from_secs(u64::from(mapping.lifetime().max(2) / 2));
                tokio::time::sleep(half).await;
                match mapping.renew().await {
                    Ok(()) => continue,
                    Err(e) => {
                        debug!(%local, error = %e, "port mapping renewal failed");
                        if !send(PmpEvent::Lost {
                            external: external.clone(),
                        }) {
                            return;
                        }
                        break;
                    }
                }
            }
            loop {
                tokio::time::sleep(RETRY).await;
                match PortMapping::new(gw, IpAddr::V4(ip), proto, port, options).await {
                    Ok(m) => {
                        mapping = m;
                        break;
                    }
                    Err(e) => debug!(%local, error = %e, "port mapping retry failed"),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_ipv4_tcp_and_udp_listen_addresses_are_mapped() {
        let quic: Multiaddr = "/ip4/10.1.2.3/udp/4747/quic-v1".parse().expect("addr");
        let (ip, proto, port) = mappable(&quic).expect("mappable");
        assert_eq!((ip, port.get()), (Ipv4Addr::new(10, 1, 2, 3), 4747));
        assert!(matches!(proto, InternetProtocol::Udp));
        assert_eq!(
            external_addr(&quic, Ipv4Addr::new(198, 51, 100, 1), 5000).to_string(),
            "/ip4/198.51.100.1/udp/5000/quic-v1"
        );
        for other in [
            "/ip4/127.0.0.1/tcp/4747",
            "/ip4/198.51.100.1/tcp/4747",
            "/ip6/fd00::1/tcp/4747",
        ] {
            assert!(mappable(&other.parse().expect("addr")).is_none(), "{other}");
        }
    }
}
