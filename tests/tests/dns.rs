//! DNS served by real `voiked` processes from their replicas: every record type over UDP, TCP
//! and DoH with hickory's client, negative answers, truncation, replication into DNS on other
//! nodes, serve-stale forwarding, malformed packets, response-rate limiting and connection
//! limits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use voike_tests::dns::{self, Message, RData, RecordType, ResponseCode, answers, has_soa};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn add(
    node: &TestNode,
    zone: &str,
    rtype: &str,
    name: &str,
    value: &str,
    ttl: u64,
) -> anyhow::Result<String> {
    let r = node.post(
        "/vdns/records",
        &json!({ "zoneId": zone, "record": { "type": rtype, "name": name, "value": value, "ttl": ttl } }),
    )?;
    anyhow::ensure!(
        r.status == 201,
        "add {rtype} {name}: {} {}",
        r.status,
        r.body
    );
    Ok(r.body["record"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn serial(m: &Message) -> Option<u32> {
    m.answers
        .iter()
        .chain(m.authorities.iter())
        .find_map(|r| match &r.data {
            RData::SOA(s) => Some(s.serial),
            _ => None,
        })
}

/// (name, type, expected answer text) for every served record type.
const RECORDS: &[(&str, &str, &str, &str)] = &[
    ("www.demo.mesh.", "A", "10.0.0.7", "A 10.0.0.7"),
    ("www.demo.mesh.", "AAAA", "fd00::7", "AAAA fd00::7"),
    (
        "alias.demo.mesh.",
        "CNAME",
        "www.demo.mesh.",
        "CNAME www.demo.mesh.",
    ),
    ("txt.demo.mesh.", "TXT", "hello world", "TXT hello world"),
    (
        "_sip._tcp.demo.mesh.",
        "SRV",
        "1 2 5060 www.demo.mesh.",
        "SRV 1 2 5060 www.demo.mesh.",
    ),
    (
        "demo.mesh.",
        "MX",
        "10 mail.demo.mesh.",
        "MX 10 mail.demo.mesh.",
    ),
    (
        "sub.demo.mesh.",
        "NS",
        "ns1.other.example.",
        "NS ns1.other.example.",
    ),
    (
        "7.0.0.10.demo.mesh.",
        "PTR",
        "www.demo.mesh.",
        "PTR www.demo.mesh.",
    ),
    (
        "demo.mesh.",
        "CAA",
        "0 issue \"ca.example\"",
        "CAA 0 issue \"ca.example\"",
    ),
];

fn demo_zone(node: &TestNode) -> anyhow::Result<()> {
    node.create_zone("demo", "demo.mesh.")?;
    for (name, rtype, value, _) in RECORDS {
        add(node, "demo", rtype, name, value, 300)?;
    }
    add(node, "demo", "A", "*.wild.demo.mesh.", "10.0.0.9", 300)?;
    add(
        node,
        "demo",
        "TXT",
        "big.demo.mesh.",
        &"x".repeat(3000),
        300,
    )?;
    // The DNS snapshot follows the documents within a few tens of milliseconds (a burst of
    // writes makes one); the export waits for it, so after it every record is served.
    node.get_text("/vdns/zones/demo/export")?;
    Ok(())
}

fn rtype(t: &str) -> RecordType {
    t.parse().expect("record type")
}

#[test]
fn every_record_type_over_udp_tcp_and_doh() -> anyhow::Result<()> {
    let node = TestNode::spawn("dns-types", &[])?;
    demo_zone(&node)?;
    let dns_addr = node.dns_addr()?;
    let doh = node.doh_addr()?;
    type Ask = fn(SocketAddr, &str, RecordType) -> anyhow::Result<Message>;
    let transports: [(&str, SocketAddr, Ask); 4] = [
        ("udp", dns_addr, dns::udp),
        ("tcp", dns_addr, dns::tcp),
        ("doh-get", doh, dns::doh_get),
        ("doh-post", doh, dns::doh_post),
    ];
    for (transport, addr, ask) in transports {
        for (name, t, _, expected) in RECORDS {
            let m = ask(addr, name, rtype(t))?;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{transport} {name} {t}"
            );
            let got = answers(&m);
            if *t == "NS" {
                // A delegation: the NS set comes back as a referral.
                let auth: Vec<String> = m
                    .authorities
                    .iter()
                    .map(|r| format!("{} {}", r.record_type(), r.data))
                    .collect();
                assert!(
                    auth.iter().any(|a| a == expected),
                    "{transport} {name} {t}: {auth:?}"
                );
                continue;
            }
            assert!(m.metadata.authoritative, "{transport} {name} {t}: AA");
            assert!(
                got.iter().any(|a| a == expected),
                "{transport} {name} {t}: {got:?}"
            );
        }
        // CNAME chased inside the zone, wildcard, NXDOMAIN and NODATA with the SOA.
        let chased = answers(&ask(addr, "alias.demo.mesh.", RecordType::A)?);
        assert_eq!(
            chased,
            vec!["CNAME www.demo.mesh.", "A 10.0.0.7"],
            "{transport}"
        );
        let wild = ask(addr, "anything.wild.demo.mesh.", RecordType::A)?;
        assert_eq!(answers(&wild), vec!["A 10.0.0.9"], "{transport}");
        assert_eq!(wild.answers[0].name.to_ascii(), "anything.wild.demo.mesh.");
        let nx = ask(addr, "missing.demo.mesh.", RecordType::A)?;
        assert_eq!(
            nx.metadata.response_code,
            ResponseCode::NXDomain,
            "{transport}"
        );
        assert!(nx.answers.is_empty() && has_soa(&nx), "{transport}: {nx:?}");
        let nodata = ask(addr, "www.demo.mesh.", RecordType::MX)?;
        assert_eq!(
            nodata.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(
            nodata.answers.is_empty() && has_soa(&nodata),
            "{transport}: {nodata:?}"
        );
        // Names outside every mesh zone with forwarding off are refused.
        let other = ask(addr, "example.org.", RecordType::A)?;
        assert_eq!(
            other.metadata.response_code,
            ResponseCode::Refused,
            "{transport}"
        );
    }
    // A 3000-byte TXT does not fit a UDP answer: truncated there, whole over TCP and DoH.
    let big_udp = dns::udp(dns_addr, "big.demo.mesh.", RecordType::TXT)?;
    assert!(big_udp.metadata.truncation, "UDP answer must be truncated");
    assert!(big_udp.answers.is_empty());
    let big_tcp = dns::tcp(dns_addr, "big.demo.mesh.", RecordType::TXT)?;
    assert!(!big_tcp.metadata.truncation);
    match &big_tcp.answers[0].data {
        RData::TXT(t) => assert_eq!(t.txt_data.iter().map(|s| s.len()).sum::<usize>(), 3000),
        other => panic!("not TXT: {other:?}"),
    }
    assert_eq!(
        dns::doh_post(doh, "big.demo.mesh.", RecordType::TXT)?
            .answers
            .len(),
        1
    );
    let metrics = node.metrics()?;
    for transport in ["udp", "tcp", "doh"] {
        let n = node.metric(&format!(
            "voike_dns_queries_total{{transport=\"{transport}\",rcode=\"NXDOMAIN\"}}"
        ))?;
        assert!(n >= 1.0, "{transport} NXDOMAIN not counted:\n{metrics}");
    }
    Ok(())
}

#[test]
fn serial_increases_and_export_loads_in_named_checkzone() -> anyhow::Result<()> {
    let node = TestNode::spawn("dns-export", &["--doh", "off"])?;
    demo_zone(&node)?;
    let addr = node.dns_addr()?;
    assert!(
        node.get("/mesh/self")?.body["dohAddr"].is_null(),
        "DoH is off"
    );
    let before = serial(&dns::udp(addr, "demo.mesh.", RecordType::SOA)?).expect("serial");
    add(&node, "demo", "A", "new.demo.mesh.", "10.0.0.10", 60)?;
    wait_for(DEADLINE, "the new record in DNS", || {
        Ok(answers(&dns::udp(addr, "new.demo.mesh.", RecordType::A)?) == ["A 10.0.0.10"])
    })?;
    let after = serial(&dns::udp(addr, "demo.mesh.", RecordType::SOA)?).expect("serial");
    assert!(after > before, "serial {before} → {after}");
    let text = node.get_text("/vdns/zones/demo/export")?;
    assert!(
        text.contains(&format!(" {after} ")),
        "export carries the served serial:\n{text}"
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &text)?;
    let out = std::process::Command::new("named-checkzone")
        .arg("demo.mesh")
        .arg(file.path())
        .output()
        .map_err(|e| anyhow::anyhow!("named-checkzone (apt-get install bind9-utils): {e}"))?;
    assert!(
        out.status.success(),
        "named-checkzone refused the export:\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        node.get_text("/vdns/zones/demo.mesh./export")?,
        text,
        "by domain as by id"
    );
    assert_eq!(node.get("/vdns/zones/nope/export")?.status, 404);
    Ok(())
}

#[test]
fn three_nodes_serve_replicated_changes_without_reload() -> anyhow::Result<()> {
    let a = TestNode::spawn("dns3-a", &[])?;
    let b = TestNode::join("dns3-b", &a.invite("10m")?)?;
    let c = TestNode::join("dns3-c", &a.invite("10m")?)?;
    for n in [&b, &c] {
        wait_for(DEADLINE, &format!("{} connected", n.name), || {
            a.sees_connected(&n.node_id)
        })?;
    }
    a.create_zone("demo", "demo.mesh.")?;
    let r = a.post("/vdns/zones/demo/owners", &json!({ "node": b.node_id }))?;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = add(&a, "demo", "A", "api.demo.mesh.", "10.9.9.9", 60)?;
    let c_dns = c.dns_addr()?;
    wait_for(DEADLINE, "C answers the record written on A", || {
        Ok(answers(&dns::udp(c_dns, "api.demo.mesh.", RecordType::A)?) == ["A 10.9.9.9"])
    })?;
    // B may delete it once B knows it owns the zone.
    wait_for(DEADLINE, "B deletes the record", || {
        let r = b.delete(&format!("/vdns/records/{id}"))?;
        Ok(r.status == 200)
    })?;
    for n in [&a, &b, &c] {
        let addr = n.dns_addr()?;
        wait_for(DEADLINE, &format!("record gone from {}", n.name), || {
            let m = dns::udp(addr, "api.demo.mesh.", RecordType::A)?;
            Ok(m.metadata.response_code == ResponseCode::NXDomain && has_soa(&m))
        })?;
    }
    // Every node registered itself: C answers for A and B under nodes.voike.internal.
    for n in [&a, &b] {
        let name = format!("{}.nodes.voike.internal.", n.node_id.to_ascii_lowercase());
        wait_for(DEADLINE, &format!("{name} on C"), || {
            Ok(answers(&dns::udp(c_dns, &name, RecordType::A)?) == ["A 127.0.0.1"])
        })?;
    }
    Ok(())
}

#[test]
fn forwarded_names_are_served_stale_while_upstreams_are_down() -> anyhow::Result<()> {
    // The upstream is another voiked, authoritative for up.example. with a 1 s TTL.
    let mut up = TestNode::spawn("dns-upstream", &[])?;
    up.create_zone("up", "up.example.")?;
    add(&up, "up", "A", "www.up.example.", "192.0.2.44", 1)?;
    let up_addr = up.dns_addr()?;
    let env_upstream = up_addr.to_string();
    let fwd = TestNode::spawn_with_env(
        "dns-forwarder",
        &[],
        &[
            ("VOIKED_DNS__FORWARD", "true"),
            ("VOIKED_DNS__UPSTREAMS", env_upstream.as_str()),
            ("VOIKED_DNS__UPSTREAM_TIMEOUT", "300ms"),
        ],
    )?;
    fwd.create_zone("own", "own.mesh.")?;
    add(&fwd, "own", "A", "www.own.mesh.", "10.1.1.1", 60)?;
    let addr = fwd.dns_addr()?;
    let first = dns::udp(addr, "www.up.example.", RecordType::A)?;
    assert_eq!(answers(&first), vec!["A 192.0.2.44"]);
    assert!(first.metadata.recursion_available && !first.metadata.authoritative);
    up.kill()?;
    // Past the 1 s TTL the forwarder must ask the (dead) upstream, fail, and answer stale.
    wait_for(DEADLINE, "a stale answer", || {
        let m = dns::udp(addr, "www.up.example.", RecordType::A)?;
        anyhow::ensure!(
            answers(&m) == ["A 192.0.2.44"],
            "lost the cached name: {m:?}"
        );
        Ok(m.answers[0].ttl == 30)
    })?;
    assert!(fwd.metric("voike_dns_forward_cache_total{result=\"stale\"}")? >= 1.0);
    assert!(fwd.metric("voike_dns_upstream_failures_total")? >= 1.0);
    // Never seen: SERVFAIL. Mesh zones: unaffected.
    let unseen = dns::udp(addr, "other.up.example.", RecordType::A)?;
    assert_eq!(unseen.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        answers(&dns::tcp(addr, "www.own.mesh.", RecordType::A)?),
        vec!["A 10.1.1.1"]
    );
    Ok(())
}

fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut q = dns::query_message(name, RecordType::A).expect("query");
    q[0..2].copy_from_slice(&id.to_be_bytes());
    q
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_never_crash() -> anyhow::Result<()> {
    let mut node = TestNode::spawn("dns-fuzz", &[])?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let addr = node.dns_addr()?;
    let wait = Duration::from_millis(300);
    // A compression loop: the question name points at itself.
    let mut looped = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let good = query_bytes(0x4242, "www.demo.mesh.");
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        good[..11].to_vec(),
        good[..good.len() - 3].to_vec(),
        looped.clone(),
        {
            let mut p = good.clone();
            p[2] |= 0x80; // a response: never answered
            p
        },
        {
            let mut p = good.clone();
            p[5] = 9; // claims nine questions
            p
        },
    ];
    for _ in 0..200 {
        let len = (random() % 300) as usize;
        packets.push((0..len).map(|_| random() as u8).collect());
    }
    for p in &packets {
        if let Some(resp) = dns::udp_raw(addr, p, wait)? {
            assert!(resp.len() >= 12, "short answer to {p:?}");
            assert_eq!(&resp[0..2], &p[0..2], "answer id");
            assert!(resp[2] & 0x80 != 0, "answer is a response");
            if Message::from_vec(p).is_err() {
                assert_eq!(resp[3] & 0x0F, 1, "FORMERR for undecodable {p:?}");
            }
        } else {
            assert!(
                p.len() < 12 || p[2] & 0x80 != 0 || Message::from_vec(p).is_ok(),
                "no answer to a decodable query header {p:?}"
            );
        }
    }
    // A well-formed response (an answer bounced back, or a reflection attempt) gets nothing.
    let reply = dns::udp_raw(addr, &good, wait)?.expect("an answer to the good query");
    assert!(
        dns::udp_raw(addr, &reply, wait)?.is_none(),
        "a response was answered"
    );
    // The loop over TCP as well.
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&(looped.len() as u16).to_be_bytes())?;
    s.write_all(&looped)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut resp)?;
    assert_eq!(resp[3] & 0x0F, 1, "FORMERR over TCP");
    assert!(node.try_exit()?.is_none(), "the daemon is still running");
    assert_eq!(
        answers(&dns::udp(addr, "www.demo.mesh.", RecordType::A)?),
        vec!["A 10.0.0.7"]
    );
    assert!(node.metric("voike_dns_malformed_total")? >= 2.0);
    Ok(())
}

#[test]
fn doh_refuses_bad_requests_with_http_errors() -> anyhow::Result<()> {
    let node = TestNode::spawn("dns-doh", &[])?;
    let doh = node.doh_addr()?;
    let q = dns::query_message("x.demo.mesh.", RecordType::A)?;
    assert_eq!(dns::doh_post_raw(doh, "text/plain", &q)?.status, 415);
    assert_eq!(dns::doh_get_raw(doh, "%%%not-base64")?.status, 400);
    assert_eq!(
        dns::doh_post_raw(doh, "application/dns-message", b"junk")?.status,
        400
    );
    assert_eq!(
        dns::doh_post_raw(doh, "application/dns-message", &vec![0u8; 70_000])?.status,
        413
    );
    let ok = dns::doh_post_raw(doh, "application/dns-message", &q)?;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.message()?.metadata.response_code, ResponseCode::Refused);
    Ok(())
}

#[test]
fn response_rate_limiting_drops_and_slips_and_tcp_limits_hold() -> anyhow::Result<()> {
    let node = TestNode::spawn_with_env(
        "dns-rrl",
        &[],
        &[
            ("VOIKED_DNS__RRL_RATE", "5"),
            ("VOIKED_DNS__RRL_EXEMPT_LOOPBACK", "false"),
            ("VOIKED_DNS__RRL_SLIP", "2"),
            ("VOIKED_DNS__TCP_MAX_CONNECTIONS", "2"),
            ("VOIKED_DNS__TCP_IDLE_TIMEOUT", "500ms"),
        ],
    )?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let addr = node.dns_addr()?;
    // A burst of 60 queries from one client: at most a few seconds' worth are answered whole.
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..60u16 {
        s.send_to(&query_bytes(i, "www.demo.mesh."), addr)?;
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n])?;
        if m.metadata.truncation {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    assert!(full < 60, "RRL let every answer through");
    assert!(truncated >= 1, "no slipped (truncated) answers");
    assert!(node.metric("voike_dns_rrl_total{action=\"dropped\"}")? >= 1.0);
    assert!(node.metric("voike_dns_rrl_total{action=\"slipped\"}")? >= 1.0);
    // TCP is not rate limited: a slipped client retries there.
    assert_eq!(
        answers(&dns::tcp(addr, "www.demo.mesh.", RecordType::A)?),
        vec!["A 10.0.0.7"]
    );
    // Two idle connections fill the cap; a third is closed at once; idle ones close.
    let c1 = TcpStream::connect(addr)?;
    let c2 = TcpStream::connect(addr)?;
    let mut c3 = TcpStream::connect(addr)?;
    c3.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut one = [0u8; 1];
    assert_eq!(
        c3.read(&mut one).unwrap_or(0),
        0,
        "third connection closed by the cap"
    );
    for mut c in [c1, c2] {
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        assert_eq!(c.read(&mut one).unwrap_or(0), 0, "idle connection closed");
    }
    assert!(node.metric("voike_dns_refused_connections_total")? >= 1.0);
    Ok(())
}

#[test]
fn doh_over_tls_with_a_configured_certificate_speaks_http2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = dir.path().join("doh.crt");
    let key = dir.path().join("doh.key");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let node = TestNode::spawn_with_env(
        "dns-doh-tls",
        &[],
        &[
            ("VOIKED_DNS__DOH_CERT", cert.to_str().unwrap_or_default()),
            ("VOIKED_DNS__DOH_KEY", key.to_str().unwrap_or_default()),
        ],
    )?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    let doh = node.doh_addr()?;
    let q = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        dns::query_message("www.demo.mesh.", RecordType::A)?,
    );
    let body = dir.path().join("answer");
    // curl is an independent client: TLS verified against our certificate, h2 by ALPN.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&cert)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version} %{content_type}"])
        .arg(format!(
            "https://localhost:{}/dns-query?dns={q}",
            doh.port()
        ))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", doh.port()))
        .output()
        .map_err(|e| anyhow::anyhow!("curl (apt-get install curl): {e}"))?;
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        status,
        "200 2 application/dns-message",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Message::from_vec(&std::fs::read(&body)?)?;
    assert_eq!(answers(&m), vec!["A 10.0.0.7"]);
    // Plain HTTP on the TLS port is not answered.
    assert!(dns::doh_get_raw(doh, &q).is_err());
    Ok(())
}

#[test]
fn a_bad_doh_certificate_is_a_clear_startup_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("doh.crt");
    std::fs::write(&cert, "not a certificate")?;
    let cert = cert.to_string_lossy().to_string();
    let mut node = TestNode::create("dns-doh-bad", &[])?;
    node.set_env(&[
        ("VOIKED_DNS__DOH_CERT", cert.as_str()),
        ("VOIKED_DNS__DOH_KEY", cert.as_str()),
    ]);
    assert!(node.start().is_err(), "started with a bad certificate");
    let status = node.wait_exit(DEADLINE)?;
    assert!(!status.success());
    let log = node.log();
    assert!(log.contains("DoH TLS") && log.contains("doh.crt"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

/// The zone data of an export, without what each node writes for itself (the SOA, with its
/// per-node serial, and the apex NS naming the node).
fn zone_data(export: &str) -> Vec<String> {
    export
        .lines()
        .filter(|l| !l.starts_with(';') && !l.contains("\tSOA\t"))
        .filter(|l| !(l.contains("\tNS\t") && l.contains(".nodes.")))
        .map(String::from)
        .collect()
}

#[test]
fn records_written_apart_that_break_the_cname_rules_merge_into_one_valid_zone_everywhere()
-> anyhow::Result<()> {
    let mut a = TestNode::spawn_fixed("merge-a", &[])?;
    let ticket = a.invite("10m")?;
    let mut b = TestNode::spawn_fixed("merge-b", &["--join", &ticket])?;
    wait_for(DEADLINE, "B connected", || a.sees_connected(&b.node_id))?;
    a.create_zone("demo", "demo.mesh.")?;
    let r = a.post("/vdns/zones/demo/owners", &json!({ "node": b.node_id }))?;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(DEADLINE, "B owns the zone", || {
        let z = b.get("/vdns/zones")?.body;
        Ok(z["zones"][0]["owners"].as_array().map(Vec::len) == Some(2))
    })?;

    // Apart, each writes what its own view allows: A an address and a CNAME, B a CNAME at the
    // address's name and another CNAME at A's CNAME's name.
    b.stop()?;
    add(&a, "demo", "A", "www.demo.mesh.", "10.0.0.7", 60)?;
    add(&a, "demo", "CNAME", "two.demo.mesh.", "b.example.", 60)?;
    a.stop()?;
    b.restart()?;
    add(&b, "demo", "CNAME", "www.demo.mesh.", "web.example.", 60)?;
    add(&b, "demo", "CNAME", "two.demo.mesh.", "a.example.", 60)?;
    a.restart()?;
    for n in [&a, &b] {
        wait_for(
            DEADLINE,
            &format!("both sides' writes on {}", n.name),
            || {
                Ok(n.get("/vdns/records?zoneId=demo")?.body["records"]
                    .as_array()
                    .map(Vec::len)
                    == Some(4))
            },
        )?;
    }

    // Both serve the same: the address (the CNAME beside it withheld) and, of the two CNAMEs,
    // the one whose target sorts first; the export loads into named-checkzone.
    let mut exports = Vec::new();
    for n in [&a, &b] {
        let addr = n.dns_addr()?;
        wait_for(
            DEADLINE,
            &format!("the merged zone served by {}", n.name),
            || {
                Ok(
                    answers(&dns::udp(addr, "www.demo.mesh.", RecordType::A)?) == ["A 10.0.0.7"]
                        && answers(&dns::udp(addr, "two.demo.mesh.", RecordType::CNAME)?)
                            == ["CNAME a.example."],
                )
            },
        )?;
        let cname = dns::tcp(addr, "www.demo.mesh.", RecordType::CNAME)?;
        assert!(answers(&cname).is_empty() && has_soa(&cname), "{cname:?}");
        assert_eq!(n.metric("voike_dns_records_withheld")?, 2.0, "{}", n.name);
        let text = n.get_text("/vdns/zones/demo/export")?;
        let out = voike_tests::named_checkzone("demo.mesh", &text)?;
        assert!(
            out.status.success(),
            "{}: named-checkzone refused the merged zone:\n{}\n{text}",
            n.name,
            String::from_utf8_lossy(&out.stdout)
        );
        exports.push(zone_data(&text));
    }
    assert_eq!(
        exports[0], exports[1],
        "both nodes export the same zone data"
    );
    assert!(
        exports[0].iter().any(|l| l.ends_with("\tA\t10.0.0.7"))
            && !exports[0].iter().any(|l| l.contains("web.example.")),
        "{:?}",
        exports[0]
    );
    Ok(())
}
