//! Listen-port probes run before anything is created or opened in the data directory.
//!
//! A daemon whose port is taken must not found a mesh, create an identity or open the store
//! first and then fail: it would leave a fresh mesh behind in a new data directory and, once the
//! store is open, wait for it to close. So [`check_listen_ports`] binds every fixed (non-zero)
//! port the configuration names once, with plain sockets and no `SO_REUSEPORT` (which libp2p's
//! TCP listeners and the DNS UDP workers set, and which would otherwise let a second daemon share
//! the port), drops them again, and fails naming the address and its config key.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::config::Config;

/// The transport a listen address binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The IP socket address a p2p listen multiaddr binds (`/ip4|ip6/A/tcp/P` or `/ip4|ip6/A/udp/P/...`),
/// or `None` for addresses without a fixed port (`/dns/...`, `/p2p-circuit`, port 0).
pub fn multiaddr_socket(addr: &Multiaddr) -> Option<(Transport, SocketAddr)> {
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(port) if port != 0 => {
                return Some((Transport::Tcp, SocketAddr::new(ip?, port)));
            }
            Protocol::Udp(port) if port != 0 => {
                return Some((Transport::Udp, SocketAddr::new(ip?, port)));
            }
            Protocol::Tcp(_) | Protocol::Udp(_) => return None,
            _ => {}
        }
    }
    None
}

/// Binds `addr` once over `transport` and releases it.
pub fn probe(transport: Transport, addr: SocketAddr) -> std::io::Result<()> {
    match transport {
        Transport::Tcp => TcpListener::bind(addr).map(drop),
        Transport::Udp => UdpSocket::bind(addr).map(drop),
    }
}

/// Fails with `cannot listen on ADDR (KEY): ERROR` for the first fixed listen port that cannot
/// be bound: `p2p.listen` (TCP and QUIC), `api.listen`, `dns.listen` (UDP and TCP) and
/// `dns.doh`. Ports 0 are not probed (the kernel picks a free one).
pub fn check_listen_ports(config: &Config) -> anyhow::Result<()> {
    for addr in &config.p2p.listen {
        if let Some((transport, socket)) = multiaddr_socket(addr)
            && let Err(e) = probe(transport, socket)
        {
            anyhow::bail!("cannot listen on {addr} (p2p.listen): {e}; is another voiked running?");
        }
    }
    let mut services = vec![
        ("api.listen", Transport::Tcp, config.api.listen),
        ("dns.listen", Transport::Udp, config.dns.listen),
        ("dns.listen", Transport::Tcp, config.dns.listen),
    ];
    if let Some(doh) = config.dns.doh_addr() {
        services.push(("dns.doh", Transport::Tcp, doh));
    }
    for (key, transport, addr) in services {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = probe(transport, addr) {
            let proto = match transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            };
            anyhow::bail!(
                "cannot listen on {addr}/{proto} ({key}): {e}; is another voiked running?"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_of_listen_multiaddrs() {
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4747".parse().expect("valid address");
        let quic: Multiaddr = "/ip6/::1/udp/4748/quic-v1".parse().expect("valid address");
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse().expect("valid address");
        let dns: Multiaddr = "/dns4/example.org/tcp/4747".parse().expect("valid address");
        assert_eq!(
            multiaddr_socket(&tcp),
            Some((
                Transport::Tcp,
                "127.0.0.1:4747".parse().expect("valid address")
            ))
        );
        assert_eq!(
            multiaddr_socket(&quic),
            Some((Transport::Udp, "[::1]:4748".parse().expect("valid address")))
        );
        assert_eq!(multiaddr_socket(&any), None);
        assert_eq!(multiaddr_socket(&dns), None);
    }

    #[test]
    fn a_held_port_fails_the_probe() {
        let held = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("local address");
        assert!(probe(Transport::Udp, addr).is_err());
        drop(held);
        assert!(probe(Transport::Udp, addr).is_ok());
    }
}
