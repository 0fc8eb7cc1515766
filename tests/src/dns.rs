//! A DNS client for tests: hickory's UDP and TCP clients, DoH over HTTP with ureq, and raw
//! sockets for malformed packets.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Edns, Query};
pub use hickory_proto::op::{Message, ResponseCode};
pub use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Queries `server` over UDP with hickory's client (EDNS on).
pub fn udp(server: SocketAddr, name: &str, rtype: RecordType) -> anyhow::Result<Message> {
    runtime()?.block_on(async {
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
            .with_timeout(Some(Duration::from_secs(3)))
            .build();
        let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        let resp = client
            .query(Name::from_str(name)?, DNSClass::IN, rtype)
            .await
            .with_context(|| format!("UDP query {name} {rtype} to {server}"))?;
        Ok(resp.into_message())
    })
}

/// Queries `server` over TCP with hickory's client.
pub fn tcp(server: SocketAddr, name: &str, rtype: RecordType) -> anyhow::Result<Message> {
    runtime()?.block_on(async {
        let (future, sender) = TcpClientStream::new(
            server,
            None,
            Some(Duration::from_secs(3)),
            TokioRuntimeProvider::new(),
        );
        let stream = future
            .await
            .with_context(|| format!("TCP connect to {server}"))?;
        let (mut client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
        tokio::spawn(bg);
        let resp = client
            .query(Name::from_str(name)?, DNSClass::IN, rtype)
            .await
            .with_context(|| format!("TCP query {name} {rtype} to {server}"))?;
        Ok(resp.into_message())
    })
}

/// A query message (id 0, as RFC 8484 recommends for DoH; RD set; EDNS).
pub fn query_message(name: &str, rtype: RecordType) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.id = 0;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name)?, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    Ok(m.to_vec()?)
}

fn doh_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// A DoH answer: HTTP status, content type, body.
#[derive(Debug)]
pub struct DohReply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl DohReply {
    pub fn message(&self) -> anyhow::Result<Message> {
        anyhow::ensure!(self.status == 200, "DoH status {}", self.status);
        anyhow::ensure!(
            self.content_type == "application/dns-message",
            "DoH content type {}",
            self.content_type
        );
        Ok(Message::from_vec(&self.body)?)
    }
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> anyhow::Result<DohReply> {
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok(DohReply {
        status: r.status().as_u16(),
        content_type,
        body: r.body_mut().read_to_vec()?,
    })
}

/// `GET /dns-query?dns=` with a raw (already encoded) message.
pub fn doh_get_raw(doh: SocketAddr, param: &str) -> anyhow::Result<DohReply> {
    let url = format!("http://{doh}/dns-query?dns={param}");
    reply(
        doh_agent()
            .get(&url)
            .header("accept", "application/dns-message")
            .call()?,
    )
}

/// `POST /dns-query` with `body` and `content_type`.
pub fn doh_post_raw(doh: SocketAddr, content_type: &str, body: &[u8]) -> anyhow::Result<DohReply> {
    let url = format!("http://{doh}/dns-query");
    reply(
        doh_agent()
            .post(&url)
            .header("content-type", content_type)
            .send(body)?,
    )
}

/// DoH GET of `name`/`rtype`.
pub fn doh_get(doh: SocketAddr, name: &str, rtype: RecordType) -> anyhow::Result<Message> {
    let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query_message(name, rtype)?);
    doh_get_raw(doh, &q)?.message()
}

/// DoH POST of `name`/`rtype`.
pub fn doh_post(doh: SocketAddr, name: &str, rtype: RecordType) -> anyhow::Result<Message> {
    doh_post_raw(doh, "application/dns-message", &query_message(name, rtype)?)?.message()
}

/// Sends raw bytes over UDP and returns the answer, or `None` when none came within `wait`.
pub fn udp_raw(
    server: SocketAddr,
    packet: &[u8],
    wait: Duration,
) -> anyhow::Result<Option<Vec<u8>>> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(wait))?;
    s.send_to(packet, server)?;
    let mut buf = vec![0u8; 65_535];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The record data of `m`'s answers as text (`A 10.0.0.7`, `TXT ...`).
pub fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect()
}

/// Whether the authority section holds exactly the zone's SOA.
pub fn has_soa(m: &Message) -> bool {
    m.authorities.len() == 1 && m.authorities[0].record_type() == RecordType::SOA
}
