//! DNS metrics, registered into the node's Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use std::time::Instant;

use hickory_proto::op::ResponseCode;

/// The transport a query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Doh,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Doh => "doh",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    pub transport: String,
    pub rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

/// Every DNS metric.
#[derive(Debug)]
pub struct Metrics {
    /// `voike_dns_queries_total{transport, rcode}`.
    pub queries: Family<QueryLabel, Counter>,
    /// `voike_dns_answer_cache_total{result=hit|miss}`: the UDP hot path's encoded answers.
    pub answer_cache: Family<ResultLabel, Counter>,
    /// `voike_dns_forward_cache_total{result=hit|miss|stale}`.
    pub forward_cache: Family<ResultLabel, Counter>,
    /// `voike_dns_upstream_failures_total`.
    pub upstream_failures: Counter,
    /// `voike_dns_rrl_total{action=dropped|slipped}`.
    pub rrl: Family<ActionLabel, Counter>,
    /// `voike_dns_malformed_total`: packets that did not decode.
    pub malformed: Counter,
    /// `voike_dns_refused_connections_total`: TCP/DoH connections over the cap.
    pub refused_connections: Counter,
    /// `voike_dns_records_withheld`: records of the replica the served snapshot leaves out
    /// because they break a zone rule after a merge (see [`crate::authority::Withheld`]).
    pub records_withheld: Gauge,
    /// `voike_dns_answer_seconds`: from a query's arrival (its last byte read) to its answer
    /// being ready to send, for every answered query of every transport.
    pub answer_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            queries: Family::default(),
            answer_cache: Family::default(),
            forward_cache: Family::default(),
            upstream_failures: Counter::default(),
            rrl: Family::default(),
            malformed: Counter::default(),
            refused_connections: Counter::default(),
            records_withheld: Gauge::default(),
            // 10 µs to 2.6 s: cached UDP answers at the bottom, forwarded ones at the top.
            answer_seconds: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
        }
    }
}

/// Counter handles for one transport, indexed by rcode, so the hot path does no map lookups,
/// and the answer latency histogram.
#[derive(Clone, Debug)]
pub struct RcodeCounters {
    by_rcode: Vec<Counter>,
    other: Counter,
    answer_seconds: Histogram,
}

impl RcodeCounters {
    /// Counts one answered query and observes how long it took since `arrived`.
    pub fn answered(&self, rcode: ResponseCode, arrived: Instant) {
        match self.by_rcode.get(usize::from(u16::from(rcode))) {
            Some(c) => c.inc(),
            None => self.other.inc(),
        };
        self.answer_seconds.observe(arrived.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "voike_dns_queries",
            "DNS queries answered, by transport and response code",
            self.queries.clone(),
        );
        registry.register(
            "voike_dns_answer_cache",
            "Encoded authoritative answers reused by the UDP hot path",
            self.answer_cache.clone(),
        );
        registry.register(
            "voike_dns_forward_cache",
            "Forwarded names answered from the cache (hit), upstream (miss) or stale cache",
            self.forward_cache.clone(),
        );
        registry.register(
            "voike_dns_upstream_failures",
            "Upstream queries that failed or timed out",
            self.upstream_failures.clone(),
        );
        registry.register(
            "voike_dns_rrl",
            "Responses dropped or slipped (sent truncated) by response-rate limiting",
            self.rrl.clone(),
        );
        registry.register(
            "voike_dns_malformed",
            "DNS messages that did not decode",
            self.malformed.clone(),
        );
        registry.register(
            "voike_dns_refused_connections",
            "TCP and DoH connections closed because the connection cap was reached",
            self.refused_connections.clone(),
        );
        registry.register(
            "voike_dns_records_withheld",
            "Records not served because, merged with the zone's other data, they break a zone rule",
            self.records_withheld.clone(),
        );
        registry.register_with_unit(
            "voike_dns_answer",
            "Time from a DNS query's arrival to its answer being sent, every transport",
            Unit::Seconds,
            self.answer_seconds.clone(),
        );
    }

    /// Counter handles for `transport`.
    pub fn rcodes(&self, transport: Transport) -> RcodeCounters {
        let get = |rcode: &str| {
            self.queries
                .get_or_create(&QueryLabel {
                    transport: transport.as_str().into(),
                    rcode: rcode.into(),
                })
                .clone()
        };
        RcodeCounters {
            by_rcode: [
                "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
            ]
            .iter()
            .map(|r| get(r))
            .collect(),
            other: get("OTHER"),
            answer_seconds: self.answer_seconds.clone(),
        }
    }

    pub fn count(&self, family: &Family<ResultLabel, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}
