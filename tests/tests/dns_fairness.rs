//! One DNS client cannot lock the others out (issue 12, item 5): a client holding as many idle
//! TCP and DoH connections as it can (from 127.0.0.2) gets at most its share of the cap, and a
//! probe from another address keeps being answered over TCP and DoH; and a DoH connection
//! that has no request answered for the idle timeout (silent, or trickling a request body a
//! byte at a time) is closed.

use std::time::Duration;

use voike_tests::TestNode;
use voike_tests::dns::{self, RecordType, answers};

async fn hold(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(s) = tokio::net::TcpSocket::new_v4() else {
            break;
        };
        if s.bind("127.0.0.2:0".parse().expect("addr")).is_err() {
            break;
        }
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), s.connect(addr)).await {
            held.push(c);
        }
    }
    held
}

/// How many of `held` the server has closed (read returns 0 or an error at once).
async fn closed(held: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    for c in held.iter_mut() {
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), c.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => n += 1,
            _ => {}
        }
    }
    n
}

#[test]
fn a_client_holding_connections_gets_its_share_and_others_are_served() -> anyhow::Result<()> {
    let node = TestNode::spawn_with_env(
        "dns-fair",
        &[],
        &[
            ("VOIKED_DNS__TCP_MAX_CONNECTIONS", "64"),
            ("VOIKED_DNS__DOH_MAX_CONNECTIONS", "64"),
            ("VOIKED_DNS__TCP_IDLE_TIMEOUT", "60s"),
            ("VOIKED_DNS__DOH_IDLE_TIMEOUT", "60s"),
        ],
    )?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let (addr, doh) = (node.dns_addr()?, node.doh_addr()?);
    let rt = tokio::runtime::Runtime::new()?;
    // 64 of each from one address: 8 (an eighth of the cap) are kept, the rest closed at once.
    let (mut tcp_held, mut doh_held) =
        rt.block_on(async { (hold(addr, 64).await, hold(doh, 64).await) });
    let (tcp_closed, doh_closed) =
        rt.block_on(async { (closed(&mut tcp_held).await, closed(&mut doh_held).await) });
    assert!(tcp_closed >= 64 - 8, "TCP: only {tcp_closed} of 64 refused");
    assert!(doh_closed >= 64 - 8, "DoH: only {doh_closed} of 64 refused");
    assert!(node.metric("voike_dns_refused_connections_total")? >= 100.0);
    // Others are still served while those are held.
    for _ in 0..10 {
        assert_eq!(
            answers(&dns::tcp(addr, "www.demo.mesh.", RecordType::A)?),
            ["A 10.0.0.7"]
        );
        assert_eq!(
            answers(&dns::doh_get(doh, "www.demo.mesh.", RecordType::A)?),
            ["A 10.0.0.7"]
        );
    }
    drop((tcp_held, doh_held));
    Ok(())
}

/// Whether the server closed `c` within `within`, while `trickle` bytes are written to it every
/// 100 ms (none when empty).
fn closed_by_server(c: &mut std::net::TcpStream, trickle: &[u8], within: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + within;
    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    let mut i = 0;
    while std::time::Instant::now() < deadline {
        if !trickle.is_empty() && c.write_all(&trickle[i % trickle.len()..][..1]).is_err() {
            return true;
        }
        i += 1;
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_doh_connection_without_an_answered_request_is_closed_after_the_idle_timeout()
-> anyhow::Result<()> {
    use std::io::Write;
    let node =
        TestNode::spawn_with_env("doh-idle", &[], &[("VOIKED_DNS__DOH_IDLE_TIMEOUT", "1s")])?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let doh = node.doh_addr()?;

    // Silent: never sends a request.
    let mut silent = std::net::TcpStream::connect(doh)?;
    assert!(
        closed_by_server(&mut silent, &[], Duration::from_secs(4)),
        "a silent connection stays open"
    );

    // Slow: complete headers, then a body of 100 bytes at 10 a second (the whole request would
    // take 10 s). HTTP/1's header timeout does not cover it.
    let mut slow = std::net::TcpStream::connect(doh)?;
    slow.write_all(
        format!("POST /dns-query HTTP/1.1\r\nHost: {doh}\r\nContent-Type: application/dns-message\r\nContent-Length: 100\r\n\r\n").as_bytes(),
    )?;
    let started = std::time::Instant::now();
    assert!(
        closed_by_server(&mut slow, b"x", Duration::from_secs(5)),
        "a connection trickling its request body stays open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed before the idle timeout"
    );

    // Answered, then quiet: kept while it asks, closed once it stops.
    let mut kept = std::net::TcpStream::connect(doh)?;
    let q = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        dns::query_message("www.demo.mesh.", RecordType::A)?,
    );
    let get = format!("GET /dns-query?dns={q} HTTP/1.1\r\nHost: {doh}\r\n\r\n");
    for _ in 0..4 {
        kept.write_all(get.as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !closed_by_server(&mut kept, &[], Duration::from_millis(200)),
        "closed while answering"
    );
    assert!(
        closed_by_server(&mut kept, &[], Duration::from_secs(4)),
        "a quiet connection stays open"
    );

    // Others are served all along.
    assert_eq!(
        answers(&dns::doh_get(doh, "www.demo.mesh.", RecordType::A)?),
        ["A 10.0.0.7"]
    );
    Ok(())
}
