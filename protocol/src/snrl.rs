//! SNRL, the Semantic Network Routing Layer: ranked endpoint candidates for a service name, and
//! the signed answers that carry them.
//!
//! [`rank`] scores the endpoints of the asked service for one client from the answering node's
//! view of the mesh: node health, latency (a relayed path costs more), region match, capability
//! match and the endpoint's weight. Scores are integers and ties are broken by endpoint id, so
//! equal inputs rank alike on every node.
//!
//! A [`SignedAnswer`] holds the query, the candidates, when it was issued and for how long it
//! holds, signed by the answering node over their postcard encoding (domain
//! [`ANSWER_DOMAIN`]). Every field of a candidate is an integer or a string, so an answer survives
//! a JSON round trip bit for bit and can be checked by whoever receives it: the signer's node id
//! inlines its ed25519 key.

use std::collections::HashMap;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::endpoints::Endpoint;
use crate::health::PeerState;
use crate::signing::{self, SigningError};
use crate::zones;

/// Domain of SNRL answer signatures.
pub const ANSWER_DOMAIN: &[u8] = b"voike/snrl-answer/v1\0";
/// The largest score (a perfect candidate).
pub const MAX_SCORE: u32 = 1_000_000;

/// Weights of the score's parts; they sum to 1.
const W_HEALTH: f64 = 0.35;
const W_LATENCY: f64 = 0.20;
const W_REGION: f64 = 0.20;
const W_CAPABILITIES: f64 = 0.15;
const W_WEIGHT: f64 = 0.10;
/// RTT (ms) at which the latency part is one half; also the cost of a relay hop and the RTT
/// assumed when none was measured.
const RTT_SCALE_MS: f64 = 50.0;
/// Health and latency parts of a node the caller knows nothing about.
const NEUTRAL: f64 = 0.5;

/// Who is asking: their region and the capabilities they need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientInfo {
    /// Default empty (no preference).
    #[serde(default)]
    pub region: String,
    /// Default none.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// An SNRL query (`POST /snrl/resolve`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Query {
    /// The service's name (`api.demo.mesh.`; the trailing dot is optional).
    pub domain: String,
    /// Default: no region, no capabilities.
    #[serde(default)]
    pub client: ClientInfo,
}

/// What the answering node knows of another node's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    pub state: PeerState,
    /// Health score in 0..=1 (see [`crate::health::health_score`]).
    pub health: f64,
    /// Round-trip time in milliseconds, when measured.
    pub rtt_ms: Option<f64>,
    /// Whether the path to the node goes through a relay.
    pub relayed: bool,
}

/// One ranked endpoint. Only integers and strings, so JSON round-trips exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub endpoint_id: String,
    pub node: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    pub region: String,
    pub capabilities: Vec<String>,
    pub weight: u32,
    /// 0..=[`MAX_SCORE`] (parts per million); higher is better. Integers, as everything signed
    /// here, so the JSON name says the unit: `scorePpm` (`score` before 0.2).
    #[serde(rename = "scorePpm", alias = "score")]
    pub score: u32,
    /// The node's health in per-mille, 0..=1000 (500 when unknown): the API's 0–1 health
    /// times 1000. JSON `healthPermille` (`health` before 0.2).
    #[serde(rename = "healthPermille", alias = "health")]
    pub health: u32,
    /// Round-trip time to the node in microseconds, when measured (`rttUs`).
    pub rtt_us: Option<u64>,
    /// `"direct"`, `"relayed"` or `"unknown"`.
    pub path: String,
}

/// A NaN-free value in 0..=1.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Ranks the endpoints of `query.domain` for `query.client`, best first.
///
/// Endpoints of other services and on dead nodes are left out; a node missing from `health` is
/// unknown and counts as half healthy at half latency. The score is
/// `0.35·health + 0.20·latency + 0.20·region + 0.15·capabilities + 0.10·weight` scaled to
/// 0..=[`MAX_SCORE`], where latency is `1 / (1 + rtt/50 ms)` (a relay adds 50 ms, an unmeasured
/// RTT counts as 50 ms), region is 1 for the client's region, 0.5 when the client gives none and
/// 0 otherwise, capabilities is the share of the requested ones the endpoint has (1 when none are
/// requested) and weight is relative to the heaviest candidate. Ties go to the lower endpoint id.
pub fn rank(
    endpoints: &[Endpoint],
    query: &Query,
    health: &HashMap<String, NodeHealth>,
) -> Vec<Candidate> {
    let Ok(domain) = zones::normalize_name("domain", &query.domain) else {
        return Vec::new();
    };
    let region = query.client.region.trim().to_ascii_lowercase();
    let mut wanted: Vec<String> = query
        .client
        .capabilities
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    wanted.sort();
    wanted.dedup();

    let live: Vec<(&Endpoint, Option<&NodeHealth>)> = endpoints
        .iter()
        .filter(|e| e.service == domain)
        .map(|e| (e, health.get(&e.node)))
        .filter(|(_, h)| h.is_none_or(|h| h.state != PeerState::Dead))
        .collect();
    let max_weight = live.iter().map(|(e, _)| e.weight).max().unwrap_or(0);

    let mut out: Vec<Candidate> = live
        .into_iter()
        .map(|(e, h)| {
            let (health_part, latency, rtt_us, path) = match h {
                None => (NEUTRAL, NEUTRAL, None, "unknown"),
                Some(h) => {
                    let measured = h.rtt_ms.filter(|r| r.is_finite()).map(|r| r.max(0.0));
                    let rtt = measured.unwrap_or(RTT_SCALE_MS)
                        + if h.relayed { RTT_SCALE_MS } else { 0.0 };
                    let latency = 1.0 / (1.0 + rtt / RTT_SCALE_MS);
                    // Float-to-int casts saturate; the value is finite and non-negative here.
                    let rtt_us = measured.map(|r| (r * 1000.0).round() as u64);
                    let path = if h.relayed { "relayed" } else { "direct" };
                    (unit(h.health), latency, rtt_us, path)
                }
            };
            let region_part = if region.is_empty() {
                0.5
            } else if e.region == region {
                1.0
            } else {
                0.0
            };
            let caps_part = if wanted.is_empty() {
                1.0
            } else {
                let have = wanted.iter().filter(|c| e.capabilities.contains(c)).count();
                have as f64 / wanted.len() as f64
            };
            let weight_part = if max_weight == 0 {
                1.0
            } else {
                f64::from(e.weight) / f64::from(max_weight)
            };
            let score = W_HEALTH * health_part
                + W_LATENCY * unit(latency)
                + W_REGION * region_part
                + W_CAPABILITIES * caps_part
                + W_WEIGHT * unit(weight_part);
            Candidate {
                endpoint_id: e.id.clone(),
                node: e.node.clone(),
                service: e.service.clone(),
                address: e.address.clone(),
                port: e.port,
                region: e.region.clone(),
                capabilities: e.capabilities.clone(),
                weight: e.weight,
                score: (unit(score) * f64::from(MAX_SCORE)).round() as u32,
                health: (health_part * 1000.0).round() as u32,
                rtt_us,
                path: path.into(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then_with(|| a.endpoint_id.cmp(&b.endpoint_id))
    });
    out
}

/// Why an answer does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnrlError {
    #[error("signer {signer} is not an ed25519 node id: {reason}")]
    BadSigner { signer: String, reason: String },
    #[error("signature is not valid base64: {0}")]
    BadEncoding(String),
    #[error("signature does not match the answer of signer {signer}")]
    BadSignature { signer: String },
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// A signed SNRL answer, as `/snrl/resolve` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedAnswer {
    /// The domain as asked.
    pub domain: String,
    /// The client as it described itself.
    pub client: ClientInfo,
    /// Best first.
    pub candidates: Vec<Candidate>,
    /// Unix milliseconds.
    pub issued_at: u64,
    /// Seconds the answer holds after `issued_at`.
    pub ttl: u32,
    /// Node id of the answering node.
    pub signer: String,
    /// Standard base64 of the ed25519 signature.
    pub signature: String,
}

/// What the signature covers: everything but the signature itself.
#[derive(Serialize)]
struct AnswerBody<'a> {
    domain: &'a str,
    client: &'a ClientInfo,
    candidates: &'a [Candidate],
    issued_at: u64,
    ttl: u32,
    signer: &'a str,
}

impl SignedAnswer {
    fn body(&self) -> AnswerBody<'_> {
        AnswerBody {
            domain: &self.domain,
            client: &self.client,
            candidates: &self.candidates,
            issued_at: self.issued_at,
            ttl: self.ttl,
            signer: &self.signer,
        }
    }

    /// Signs the answer to `query` with `key`, as the node `key` belongs to.
    pub fn sign(
        key: &Keypair,
        query: &Query,
        candidates: Vec<Candidate>,
        issued_at: u64,
        ttl: u32,
    ) -> Result<Self, SigningError> {
        let mut answer = SignedAnswer {
            domain: query.domain.clone(),
            client: query.client.clone(),
            candidates,
            issued_at,
            ttl,
            signer: key.public().to_peer_id().to_string(),
            signature: String::new(),
        };
        let sig = signing::sign(key, ANSWER_DOMAIN, "snrl answer", &answer.body())?;
        answer.signature = BASE64.encode(sig);
        Ok(answer)
    }

    /// Checks the signature against the key inlined in `signer`. Says nothing of expiry (see
    /// [`SignedAnswer::is_expired`]) or of whether the signer is a member.
    pub fn verify(&self) -> Result<(), SnrlError> {
        let key = signer_key(&self.signer)?;
        let sig = BASE64
            .decode(self.signature.as_bytes())
            .map_err(|e| SnrlError::BadEncoding(e.to_string()))?;
        if signing::verify(&key, ANSWER_DOMAIN, "snrl answer", &self.body(), &sig)? {
            Ok(())
        } else {
            Err(SnrlError::BadSignature {
                signer: self.signer.clone(),
            })
        }
    }

    /// Whether the answer no longer holds at `now_ms` (Unix milliseconds): from `issued_at + ttl`
    /// on.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let ttl_ms = u64::from(self.ttl).saturating_mul(1000);
        now_ms >= self.issued_at.saturating_add(ttl_ms)
    }
}

/// The ed25519 key an ed25519 node id inlines (identity multihash of the protobuf-encoded key).
pub(crate) fn signer_key(signer: &str) -> Result<PublicKey, SnrlError> {
    let bad = |reason: String| SnrlError::BadSigner {
        signer: signer.to_string(),
        reason,
    };
    let peer = PeerId::from_str(signer).map_err(|e| bad(e.to_string()))?;
    let hash = peer.as_ref();
    if hash.code() != 0 {
        return Err(bad("it does not inline its public key".into()));
    }
    let key = signing::decode_key(hash.digest()).map_err(|e| bad(e.to_string()))?;
    if key.to_peer_id() != peer {
        return Err(bad("its key does not give back the same id".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, node: &str, region: &str, caps: &[&str], weight: u32) -> Endpoint {
        Endpoint {
            id: id.into(),
            node: node.into(),
            service: "api.demo.mesh.".into(),
            address: "10.0.0.1".into(),
            port: 443,
            region: region.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            weight,
            hlc: "1700000000000.0000".into(),
        }
    }

    fn alive(health: f64, rtt_ms: f64) -> NodeHealth {
        NodeHealth {
            state: PeerState::Alive,
            health,
            rtt_ms: Some(rtt_ms),
            relayed: false,
        }
    }

    fn query(region: &str, caps: &[&str]) -> Query {
        Query {
            domain: "API.demo.mesh".into(),
            client: ClientInfo {
                region: region.into(),
                capabilities: caps.iter().map(|c| c.to_string()).collect(),
            },
        }
    }

    fn healthy(nodes: &[&str]) -> HashMap<String, NodeHealth> {
        nodes
            .iter()
            .map(|n| (n.to_string(), alive(0.9, 10.0)))
            .collect()
    }

    fn ids(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.endpoint_id.as_str()).collect()
    }

    #[test]
    fn same_region_ranks_first() {
        let eps = [
            endpoint("a", "n1", "us", &[], 100),
            endpoint("b", "n2", "eu", &[], 100),
        ];
        let h = healthy(&["n1", "n2"]);
        assert_eq!(ids(&rank(&eps, &query("eu", &[]), &h)), ["b", "a"]);
        assert_eq!(ids(&rank(&eps, &query("US", &[]), &h)), ["a", "b"]);
        // No region asked: both get the same half share, so the id decides.
        let r = rank(&eps, &query("", &[]), &h);
        assert_eq!(r[0].score, r[1].score);
        assert_eq!(ids(&r), ["a", "b"]);
    }

    #[test]
    fn more_matching_capabilities_rank_first() {
        let eps = [
            endpoint("a", "n1", "", &["http"], 100),
            endpoint("b", "n2", "", &["gpu", "http"], 100),
            endpoint("c", "n3", "", &[], 100),
        ];
        let h = healthy(&["n1", "n2", "n3"]);
        let r = rank(&eps, &query("", &["HTTP", "gpu"]), &h);
        assert_eq!(ids(&r), ["b", "a", "c"]);
        // Nothing requested: every endpoint matches fully.
        let r = rank(&eps, &query("", &[]), &h);
        assert!(r.iter().all(|c| c.score == r[0].score), "{r:?}");
    }

    #[test]
    fn heavier_endpoint_ranks_first_at_equal_health() {
        let eps = [
            endpoint("a", "n1", "", &[], 10),
            endpoint("b", "n2", "", &[], 1000),
            endpoint("c", "n3", "", &[], 500),
        ];
        let h = healthy(&["n1", "n2", "n3"]);
        let r = rank(&eps, &query("", &[]), &h);
        assert_eq!(ids(&r), ["b", "c", "a"]);
    }

    #[test]
    fn healthier_and_closer_nodes_rank_first() {
        let eps = [
            endpoint("a", "n1", "", &[], 100),
            endpoint("b", "n2", "", &[], 100),
            endpoint("c", "n3", "", &[], 100),
        ];
        let mut h = HashMap::new();
        h.insert("n1".to_string(), alive(0.3, 10.0));
        h.insert("n2".to_string(), alive(0.9, 10.0));
        h.insert(
            "n3".to_string(),
            NodeHealth {
                relayed: true,
                ..alive(0.9, 10.0)
            },
        );
        let r = rank(&eps, &query("", &[]), &h);
        assert_eq!(ids(&r), ["b", "c", "a"]);
        assert_eq!(r[0].path, "direct");
        assert_eq!(r[1].path, "relayed");
        assert_eq!(r[0].health, 900);
        assert_eq!(r[0].rtt_us, Some(10_000));
    }

    #[test]
    fn endpoints_on_dead_nodes_and_other_services_are_left_out() {
        let mut other = endpoint("z", "n1", "", &[], 100);
        other.service = "db.demo.mesh.".into();
        let eps = [
            endpoint("a", "n1", "", &[], 100),
            endpoint("b", "n2", "", &[], 100),
            other,
        ];
        let mut h = healthy(&["n1"]);
        h.insert(
            "n2".to_string(),
            NodeHealth {
                state: PeerState::Dead,
                ..alive(0.0, 10.0)
            },
        );
        assert_eq!(ids(&rank(&eps, &query("", &[]), &h)), ["a"]);
        let bad_domain = Query {
            domain: "not a name".into(),
            client: ClientInfo::default(),
        };
        assert!(rank(&eps, &bad_domain, &h).is_empty());
    }

    #[test]
    fn unknown_node_gets_neutral_health_and_latency() {
        let eps = [endpoint("a", "n1", "", &[], 100)];
        let r = rank(&eps, &query("", &[]), &HashMap::new());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "unknown");
        assert_eq!(r[0].health, 500);
        assert_eq!(r[0].rtt_us, None);
        // 0.35·0.5 + 0.20·0.5 + 0.20·0.5 + 0.15·1 + 0.10·1
        assert_eq!(r[0].score, 625_000);
        // A known node measured at 50 ms with health 0.5 scores the same.
        let mut h = HashMap::new();
        h.insert("n1".to_string(), alive(0.5, 50.0));
        assert_eq!(rank(&eps, &query("", &[]), &h)[0].score, 625_000);
    }

    #[test]
    fn ties_are_broken_by_endpoint_id_whatever_the_input_order() {
        let eps = [
            endpoint("c", "n1", "", &[], 100),
            endpoint("a", "n1", "", &[], 100),
            endpoint("b", "n1", "", &[], 100),
        ];
        let h = healthy(&["n1"]);
        let forward = rank(&eps, &query("", &[]), &h);
        let mut reversed = eps.clone();
        reversed.reverse();
        assert_eq!(ids(&forward), ["a", "b", "c"]);
        assert_eq!(forward, rank(&reversed, &query("", &[]), &h));
    }

    #[test]
    fn odd_health_inputs_stay_in_range() {
        let eps = [endpoint("a", "n1", "", &[], 100)];
        let mut h = HashMap::new();
        h.insert(
            "n1".to_string(),
            NodeHealth {
                state: PeerState::Suspect,
                health: f64::NAN,
                rtt_ms: Some(f64::INFINITY),
                relayed: false,
            },
        );
        let r = rank(&eps, &query("", &[]), &h);
        assert_eq!(r[0].health, 0);
        assert_eq!(r[0].rtt_us, None);
        assert!(r[0].score <= MAX_SCORE);
        h.insert("n1".to_string(), alive(7.0, -3.0));
        let r = rank(&eps, &query("", &[]), &h);
        assert_eq!(r[0].health, 1000);
        assert_eq!(r[0].score, MAX_SCORE - 100_000); // region unasked: half of 0.20
    }

    fn answer(key: &Keypair) -> SignedAnswer {
        let eps = [
            endpoint("a", "n1", "eu", &["http"], 100),
            endpoint("b", "n2", "us", &[], 200),
        ];
        let q = query("eu", &["http"]);
        let candidates = rank(&eps, &q, &healthy(&["n1", "n2"]));
        SignedAnswer::sign(key, &q, candidates, 1_700_000_000_000, 30).expect("sign")
    }

    #[test]
    fn signed_answer_verifies() {
        let key = Keypair::generate_ed25519();
        let a = answer(&key);
        assert_eq!(a.signer, key.public().to_peer_id().to_string());
        assert_eq!(a.candidates.len(), 2);
        a.verify().expect("verifies");
    }

    #[test]
    fn any_change_to_a_signed_answer_breaks_it() {
        let key = Keypair::generate_ed25519();
        let a = answer(&key);
        let other = Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string();
        type Tamper = Box<dyn Fn(&mut SignedAnswer)>;
        let tampers: Vec<(&str, Tamper)> = vec![
            ("domain", Box::new(|a| a.domain = "evil.demo.mesh.".into())),
            (
                "address",
                Box::new(|a| a.candidates[0].address = "10.6.6.6".into()),
            ),
            ("port", Box::new(|a| a.candidates[0].port = 444)),
            ("score", Box::new(|a| a.candidates[1].score += 1)),
            ("order", Box::new(|a| a.candidates.reverse())),
            (
                "dropped",
                Box::new(|a| {
                    a.candidates.pop();
                }),
            ),
            ("issuedAt", Box::new(|a| a.issued_at += 1)),
            ("ttl", Box::new(|a| a.ttl = 3600)),
            ("client region", Box::new(|a| a.client.region = "us".into())),
            ("signer", Box::new(move |a| a.signer = other.clone())),
            (
                "signature bytes",
                Box::new(|a| {
                    let mut sig = BASE64.decode(&a.signature).expect("base64");
                    sig[5] ^= 1;
                    a.signature = BASE64.encode(sig);
                }),
            ),
        ];
        for (what, tamper) in tampers {
            let mut bad = a.clone();
            tamper(&mut bad);
            assert_ne!(bad, a, "{what} changed nothing");
            assert!(
                matches!(bad.verify(), Err(SnrlError::BadSignature { .. })),
                "{what}: {:?}",
                bad.verify()
            );
        }
    }

    #[test]
    fn malformed_signer_or_signature_is_reported() {
        let key = Keypair::generate_ed25519();
        let a = answer(&key);
        for signer in [
            "",
            "not-a-peer-id",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            let bad = SignedAnswer {
                signer: signer.into(),
                ..a.clone()
            };
            assert!(
                matches!(bad.verify(), Err(SnrlError::BadSigner { .. })),
                "{signer}: {:?}",
                bad.verify()
            );
        }
        let bad = SignedAnswer {
            signature: "@@not base64@@".into(),
            ..a.clone()
        };
        assert!(matches!(bad.verify(), Err(SnrlError::BadEncoding(_))));
        let short = SignedAnswer {
            signature: BASE64.encode([1, 2, 3]),
            ..a
        };
        assert!(matches!(
            short.verify(),
            Err(SnrlError::BadSignature { .. })
        ));
    }

    #[test]
    fn answer_survives_json_and_still_verifies() {
        let key = Keypair::generate_ed25519();
        let a = answer(&key);
        let json = serde_json::to_string(&a).expect("json");
        for field in [
            "issuedAt",
            "endpointId",
            "rttUs",
            "scorePpm",
            "healthPermille",
            "signer",
            "signature",
        ] {
            assert!(json.contains(&format!("\"{field}\"")), "{field} in {json}");
        }
        let back: SignedAnswer = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, a);
        back.verify().expect("verifies after json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("value");
        let again: SignedAnswer = serde_json::from_value(value).expect("from value");
        again.verify().expect("verifies after json value");
        // An answer from a node before 0.2 (`score`, `health`) reads the same and verifies.
        let old = json
            .replace("\"scorePpm\"", "\"score\"")
            .replace("\"healthPermille\"", "\"health\"");
        let old: SignedAnswer = serde_json::from_str(&old).expect("old names");
        assert_eq!(old, a);
        old.verify().expect("verifies with old names");
    }

    #[test]
    fn answer_expires_after_its_ttl() {
        let key = Keypair::generate_ed25519();
        let a = answer(&key);
        assert!(!a.is_expired(a.issued_at));
        assert!(!a.is_expired(a.issued_at + 29_999));
        assert!(a.is_expired(a.issued_at + 30_000));
        let forever = SignedAnswer {
            issued_at: u64::MAX,
            ttl: u32::MAX,
            ..a
        };
        assert!(!forever.is_expired(u64::MAX - 1));
    }

    #[test]
    fn query_json_matches_the_api() {
        let q: Query = serde_json::from_str(
            r#"{"domain": "api.demo.mesh.", "client": {"region": "eu", "capabilities": ["http"]}}"#,
        )
        .expect("parse");
        assert_eq!(q.client.region, "eu");
        let bare: Query = serde_json::from_str(r#"{"domain": "api.demo.mesh."}"#).expect("parse");
        assert_eq!(bare.client, ClientInfo::default());
        assert!(serde_json::from_str::<Query>(r#"{"domain": "x", "extra": 1}"#).is_err());
    }
}
