//! The DNS client of `voike resolve`: one query to a node's DNS listener over UDP (retried over
//! TCP when the answer is truncated) or TCP, built and parsed with hickory-proto, and the answer as
//! dig-like text or JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::Serialize;

/// How long one exchange (UDP or TCP) may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// The UDP payload size advertised with EDNS (the DNS Flag Day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// The record types `voike resolve` asks for.
pub const TYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "TXT", "SRV", "MX", "NS", "PTR", "CAA", "SOA", "ANY",
];

/// Parses a record type of [`TYPES`], in any case.
pub fn parse_type(s: &str) -> Result<RecordType, String> {
    let upper = s.trim().to_ascii_uppercase();
    if !TYPES.contains(&upper.as_str()) {
        return Err(format!("must be one of {}", TYPES.join(", ")));
    }
    RecordType::from_str(&upper).map_err(|e| e.to_string())
}

/// Parses `name` as an absolute name (a missing trailing dot is added, as dig does).
pub fn parse_name(name: &str) -> anyhow::Result<Name> {
    let mut n = Name::from_str(name).with_context(|| format!("{name:?} is not a domain name"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// The answer to one query and how it came.
#[derive(Debug)]
pub struct Exchange {
    pub message: Message,
    /// `"udp"` or `"tcp"`.
    pub transport: &'static str,
    /// Whether a truncated UDP answer made us ask again over TCP.
    pub retried_over_tcp: bool,
}

/// Asks `server` for `name`/`rtype`: over TCP when `tcp`, else over UDP and again over TCP when
/// the UDP answer is truncated.
pub fn exchange(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    tcp: bool,
) -> anyhow::Result<Exchange> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    query.set_edns(edns);
    let id = query.metadata.id;
    let packet = query.to_vec().context("encoding the query")?;
    if tcp {
        return Ok(Exchange {
            message: over_tcp(server, &packet, id)?,
            transport: "tcp",
            retried_over_tcp: false,
        });
    }
    let message = over_udp(server, &packet, id)?;
    if !message.metadata.truncation {
        return Ok(Exchange {
            message,
            transport: "udp",
            retried_over_tcp: false,
        });
    }
    Ok(Exchange {
        message: over_tcp(server, &packet, id)?,
        transport: "tcp",
        retried_over_tcp: true,
    })
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Sends `packet` over UDP and waits for the answer with `id` from `server`; other answers (stray,
/// spoofed or undecodable) are skipped until [`TIMEOUT`].
fn over_udp(server: SocketAddr, packet: &[u8], id: u16) -> anyhow::Result<Message> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).context("binding a UDP socket")?;
    // Connected: datagrams from other addresses are dropped by the kernel, and an ICMP "port
    // unreachable" comes back as "connection refused" instead of a silent timeout.
    socket
        .connect(server)
        .with_context(|| format!("cannot reach {server} over UDP"))?;
    socket
        .send(packet)
        .with_context(|| format!("sending the query to {server} over UDP"))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; 65_535];
    let mut skipped: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no answer from {server} over UDP within {}s{}",
                TIMEOUT.as_secs(),
                skipped.map(|s| format!(" ({s})")).unwrap_or_default()
            );
        }
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if timed_out(&e) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                bail!("nothing listens at {server} over UDP (connection refused)")
            }
            Err(e) => return Err(e).with_context(|| format!("reading the answer from {server}")),
        };
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response => {
                return Ok(m);
            }
            Ok(m) => {
                skipped = Some(format!("skipped an answer with id {}", m.metadata.id));
            }
            Err(e) => skipped = Some(format!("skipped an undecodable answer: {e}")),
        }
    }
}

/// Sends `packet` over TCP (with its two-byte length prefix) and reads one answer, which must
/// carry `id`.
fn over_tcp(server: SocketAddr, packet: &[u8], id: u16) -> anyhow::Result<Message> {
    let wrap = |e: std::io::Error, what: &str| {
        if timed_out(&e) {
            anyhow!(
                "no answer from {server} over TCP within {}s",
                TIMEOUT.as_secs()
            )
        } else {
            anyhow!("{what} {server} over TCP: {e}")
        }
    };
    let mut stream =
        TcpStream::connect_timeout(&server, TIMEOUT).map_err(|e| wrap(e, "connecting to"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let len = u16::try_from(packet.len()).context("query longer than 65535 bytes")?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream
        .write_all(&framed)
        .map_err(|e| wrap(e, "sending the query to"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .map_err(|e| wrap(e, "reading the answer from"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut buf)
        .map_err(|e| wrap(e, "reading the answer from"))?;
    let m = Message::from_vec(&buf)
        .map_err(|e| anyhow!("undecodable answer from {server} over TCP: {e}"))?;
    if m.metadata.id != id {
        bail!(
            "answer from {server} over TCP has id {} instead of {id}",
            m.metadata.id
        );
    }
    Ok(m)
}

/// The status as dig names it (`NOERROR`, `NXDOMAIN`, ...).
pub fn status(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// The header flags that are set, as dig lists them (`qr aa rd`).
pub fn flags(m: &Message) -> String {
    let h = &m.metadata;
    [
        (h.message_type == MessageType::Response, "qr"),
        (h.authoritative, "aa"),
        (h.truncation, "tc"),
        (h.recursion_desired, "rd"),
        (h.recursion_available, "ra"),
        (h.authentic_data, "ad"),
        (h.checking_disabled, "cd"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, f)| *f)
    .collect::<Vec<_>>()
    .join(" ")
}

/// One record as `voike resolve` shows it.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub ttl: u32,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
}

/// A TXT character-string in zone-file quotes.
fn quoted(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for c in String::from_utf8_lossy(bytes).chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The records of a section (without EDNS's OPT), TXT strings quoted as dig does.
pub fn rows(records: &[Record]) -> Vec<Row> {
    records
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(|r| Row {
            name: r.name.to_string(),
            ttl: r.ttl,
            rtype: r.record_type().to_string(),
            data: match &r.data {
                RData::TXT(t) => t
                    .txt_data
                    .iter()
                    .map(|s| quoted(s))
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            },
        })
        .collect()
}

/// Prints `NAME TTL IN TYPE DATA` lines with aligned columns.
pub fn print_rows(rows: &[Row]) {
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let ttl_w = rows
        .iter()
        .map(|r| r.ttl.to_string().len())
        .max()
        .unwrap_or(0);
    let type_w = rows.iter().map(|r| r.rtype.len()).max().unwrap_or(0);
    for r in rows {
        println!(
            "{:<name_w$}  {:>ttl_w$}  IN  {:<type_w$}  {}",
            r.name, r.ttl, r.rtype, r.data
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_types_parse_in_any_case_and_others_are_refused() {
        assert_eq!(parse_type("aaaa"), Ok(RecordType::AAAA));
        assert_eq!(parse_type("ANY"), Ok(RecordType::ANY));
        let err = parse_type("AXFR").expect_err("AXFR is not offered");
        assert!(err.contains("SOA, ANY"), "{err}");
    }

    #[test]
    fn txt_strings_are_quoted_and_escaped() {
        assert_eq!(quoted(b"hello world"), "\"hello world\"");
        assert_eq!(quoted(br#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn names_are_made_absolute() -> anyhow::Result<()> {
        assert_eq!(parse_name("www.demo.mesh")?.to_string(), "www.demo.mesh.");
        assert_eq!(parse_name("www.demo.mesh.")?.to_string(), "www.demo.mesh.");
        Ok(())
    }
}
