//! JSON bodies of the admin HTTP API, shared by `voiked` and the `voike` CLI.
//!
//! Field names are part of the interface (DESIGN.md §10); add fields, do not rename them. Every
//! body is camelCase, and every quantity has one unit (docs/api.md, "Naming and units"): times
//! and durations in milliseconds (`...Ms`), health as a 0–1 fraction. Responses read by the CLI
//! also accept the snake_case names nodes sent before 0.2 (`alias`), so that a newer CLI works
//! against an older node.

use serde::{Deserialize, Serialize};

/// `GET /mesh/self`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfInfo {
    #[serde(alias = "node_id")]
    pub node_id: String,
    #[serde(alias = "mesh_id")]
    pub mesh_id: String,
    /// Addresses the p2p listeners are bound to (after resolving port 0).
    #[serde(alias = "listen_addrs")]
    pub listen_addrs: Vec<String>,
    /// The admin API's bound address.
    #[serde(alias = "api_addr")]
    pub api_addr: String,
    pub roles: Vec<String>,
    /// Whether this node founded the mesh.
    pub genesis: bool,
    /// `"member"`, or `"joining"` while a `--join` has not been accepted yet.
    pub membership: String,
    pub version: String,
    /// Time since the daemon started. Kept in seconds here (the swarm fills it so); the API
    /// sends milliseconds, `uptimeMs` (older nodes sent seconds, `uptime_secs`: see
    /// [`upgrade_body`]).
    #[serde(rename = "uptimeMs", with = "secs_as_ms")]
    pub uptime_secs: u64,
    /// Members currently connected (not counting this node).
    #[serde(alias = "connected_peers")]
    pub connected_peers: usize,
    /// Members known (counting this node).
    #[serde(alias = "known_members")]
    pub known_members: usize,
    /// The DNS listener's bound address (UDP and TCP).
    #[serde(default, alias = "dns_addr")]
    pub dns_addr: Option<String>,
    /// The DoH listener's bound address, null when DoH is off.
    #[serde(default, alias = "doh_addr")]
    pub doh_addr: Option<String>,
    /// What AutoNAT concluded: `public`, `private` or `unknown`.
    #[serde(default)]
    pub reachability: String,
    /// External addresses: configured (`p2p.external_addresses`) and confirmed by AutoNAT.
    #[serde(default, alias = "external_addrs")]
    pub external_addrs: Vec<String>,
    /// Member relays this node holds a reservation on (node ids).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Port mapping (`p2p.port_mapping`: UPnP IGD, PCP, NAT-PMP): `off`, `searching`, `mapped`,
    /// `no_gateway` (no UPnP gateway, and no PCP / NAT-PMP mapping), `non_routable` (the gateway
    /// is behind another NAT) or `failed`.
    #[serde(default, alias = "port_mapping")]
    pub port_mapping: String,
}

/// One member in `GET /mesh/nodes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[serde(alias = "node_id")]
    pub node_id: String,
    pub addresses: Vec<String>,
    /// Whether a connection to this member is open (always true for this node itself).
    pub connected: bool,
    /// `"direct"`, `"relayed"`, or null when not connected (and for this node itself).
    pub connection: Option<String>,
    /// Last ping round-trip time in milliseconds.
    #[serde(alias = "rtt_ms")]
    pub rtt_ms: Option<f64>,
    /// `"self"`, `"connected"` or `"disconnected"`.
    pub state: String,
    pub roles: Vec<String>,
    /// When the member joined (its own clock), in seconds here; the API sends Unix
    /// milliseconds, `joinedAtMs` (older nodes sent seconds, `joined_at`).
    #[serde(rename = "joinedAtMs", with = "secs_as_ms")]
    pub joined_at: u64,
    #[serde(alias = "is_self")]
    pub is_self: bool,
    /// An admin revoked this member (`voike member revoke`).
    #[serde(default)]
    pub revoked: bool,
}

/// `GET /mesh/nodes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodesResponse {
    pub nodes: Vec<NodeInfo>,
}

/// `POST /mesh/invites` request; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Lifetime as a humantime duration (`"1h"`, `"30m"`); default one hour.
    pub ttl: Option<String>,
    /// `"member"` (default) or `"admin"`.
    pub role: Option<String>,
}

/// `POST /mesh/invites` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteResponse {
    pub ticket: String,
    pub role: String,
    /// Expiry, seconds since the Unix epoch here (as in the ticket); the API sends Unix
    /// milliseconds, `expiresAtMs` (older nodes sent seconds, `expires_at`).
    #[serde(rename = "expiresAtMs", with = "secs_as_ms")]
    pub expires_at: u64,
    pub bootstrap: Vec<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `unauthorized`, `not_found`, `bad_request`, `forbidden`, ...
    pub code: String,
    pub message: String,
}

/// A Truth Ledger entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Hex SHA-256 of the entry (body and signature): `GET /ledger/{id}`.
    pub id: String,
    /// Position in this node's local arrival order (for `?from=`).
    pub position: Option<u64>,
    /// Peer id of the author.
    pub author: String,
    pub seq: u64,
    #[serde(alias = "prev_hash")]
    pub prev_hash: String,
    /// HLC as `"<wall_ms>.<counter>"`.
    pub hlc: String,
    pub kind: String,
    /// The entry's JSON body (a string if it is not JSON), as its author wrote and signed it:
    /// its field names are the entry kind's, not the API's (snake_case).
    pub body: serde_json::Value,
    pub signature: String,
}

/// `GET /ledger/recent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntries {
    pub entries: Vec<LedgerEntry>,
}

/// `POST /ledger/anchor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerAnchor {
    #[serde(alias = "heads_hash")]
    pub heads_hash: String,
    pub authors: u64,
    pub entries: u64,
    pub hlc: String,
    /// Peer id of the signer.
    pub signer: String,
    /// Hex of the signer's protobuf-encoded public key.
    #[serde(alias = "signer_key")]
    pub signer_key: String,
    /// Hex signature; see `voike_protocol::ledger::Anchor`.
    pub signature: String,
}

/// A time or duration kept in seconds in Rust and sent in milliseconds (the API's one unit).
/// Reading takes milliseconds; the seconds an older node sent under the old name are converted
/// first, by [`upgrade_body`] (an alias cannot say which name matched).
mod secs_as_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(secs.saturating_mul(1000))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(u64::deserialize(d)? / 1000)
    }
}

/// The fields older nodes sent in seconds under a snake_case name, and their camelCase
/// millisecond names: `(old, new)`.
pub const SECONDS_FIELDS: [(&str, &str); 3] = [
    ("uptime_secs", "uptimeMs"),
    ("joined_at", "joinedAtMs"),
    ("expires_at", "expiresAtMs"),
];

/// Makes a body from any node version read as today's: the deprecated snake_case duplicates a
/// node of this release also sends (`node_id` beside `nodeId`) are dropped, since serde's
/// aliases would see the field twice, and the fields an older node sent in seconds
/// ([`SECONDS_FIELDS`]) become their millisecond names. Applies to `body` and to the objects of
/// its arrays (`{"nodes": [...]}`); other snake_case names are left to the aliases.
pub fn upgrade_body(body: &mut serde_json::Value) {
    match body {
        serde_json::Value::Object(o) => {
            for (old, new) in SECONDS_FIELDS {
                if !o.contains_key(new)
                    && let Some(secs) = o.remove(old).and_then(|v| v.as_u64())
                {
                    o.insert(new.into(), secs.saturating_mul(1000).into());
                }
            }
            let duplicates: Vec<String> = o
                .keys()
                .filter(|k| k.contains('_') && o.contains_key(&camel_case(k)))
                .cloned()
                .collect();
            for k in duplicates {
                o.remove(&k);
            }
            for v in o.values_mut().filter(|v| v.is_array()) {
                upgrade_body(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(upgrade_body),
        _ => {}
    }
}

/// `rtt_ms` → `rttMs` (the API's field names from their old snake_case spelling).
pub fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_info_reads_the_same_from_this_release_and_from_before_0_2() {
        // As 0.1 sent it (snake_case, uptime in seconds).
        let mut old = serde_json::json!({
            "node_id": "12D3KooWA", "mesh_id": "ab", "listen_addrs": ["/ip4/127.0.0.1/tcp/1"],
            "api_addr": "127.0.0.1:2", "roles": ["admin"], "genesis": true,
            "membership": "member", "version": "0.1.0", "uptime_secs": 20,
            "connected_peers": 1, "known_members": 2, "dns_addr": "127.0.0.1:3",
            "doh_addr": null
        });
        upgrade_body(&mut old);
        let old: SelfInfo = serde_json::from_value(old).expect("0.1 body");
        assert_eq!(old.uptime_secs, 20);
        assert_eq!(old.node_id, "12D3KooWA");
        // As this release sends it: camelCase, milliseconds, and the deprecated duplicates.
        let mut new = serde_json::to_value(&old).expect("json");
        assert_eq!(new["uptimeMs"], 20_000);
        for (camel, snake) in [("nodeId", "node_id"), ("apiAddr", "api_addr")] {
            new[snake] = new[camel].clone();
        }
        assert!(serde_json::from_value::<SelfInfo>(new.clone()).is_err());
        upgrade_body(&mut new);
        assert_eq!(
            serde_json::from_value::<SelfInfo>(new).expect("0.2 body"),
            old
        );
    }

    #[test]
    fn member_list_and_invite_of_a_0_1_node_read_in_milliseconds() {
        let mut nodes = serde_json::json!({"nodes": [{
            "node_id": "a", "addresses": [], "connected": true, "connection": null,
            "rtt_ms": 0.5, "state": "self", "roles": [], "joined_at": 1_795_629_822,
            "is_self": true
        }]});
        upgrade_body(&mut nodes);
        let nodes: NodesResponse = serde_json::from_value(nodes).expect("nodes");
        assert_eq!(nodes.nodes[0].joined_at, 1_795_629_822);
        assert_eq!(nodes.nodes[0].rtt_ms, Some(0.5));
        let mut invite = serde_json::json!({
            "ticket": "voike1x", "role": "member", "expires_at": 1_795_630_443, "bootstrap": []
        });
        upgrade_body(&mut invite);
        assert_eq!(invite["expiresAtMs"], 1_795_630_443_000_u64);
        let invite: InviteResponse = serde_json::from_value(invite).expect("invite");
        assert_eq!(invite.expires_at, 1_795_630_443);
    }
}
