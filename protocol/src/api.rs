//! JSON bodies of the admin HTTP API, shared by `voiked` and the `voike` CLI.
//!
//! Field names are part of the interface (DESIGN.md §10); add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// `GET /mesh/self`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfInfo {
    pub node_id: String,
    pub mesh_id: String,
    /// Addresses the p2p listeners are bound to (after resolving port 0).
    pub listen_addrs: Vec<String>,
    /// The admin API's bound address.
    pub api_addr: String,
    pub roles: Vec<String>,
    /// Whether this node founded the mesh.
    pub genesis: bool,
    /// `"member"`, or `"joining"` while a `--join` has not been accepted yet.
    pub membership: String,
    pub version: String,
    pub uptime_secs: u64,
    /// Members currently connected (not counting this node).
    pub connected_peers: usize,
    /// Members known (counting this node).
    pub known_members: usize,
    /// The DNS listener's bound address (UDP and TCP).
    #[serde(default)]
    pub dns_addr: Option<String>,
    /// The DoH listener's bound address, null when DoH is off.
    #[serde(default)]
    pub doh_addr: Option<String>,
    /// What AutoNAT concluded: `public`, `private` or `unknown`.
    #[serde(default)]
    pub reachability: String,
    /// External addresses: configured (`p2p.external_addresses`) and confirmed by AutoNAT.
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// Member relays this node holds a reservation on (node ids).
    #[serde(default)]
    pub relays: Vec<String>,
}

/// One member in `GET /mesh/nodes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub addresses: Vec<String>,
    /// Whether a connection to this member is open (always true for this node itself).
    pub connected: bool,
    /// `"direct"`, `"relayed"`, or null when not connected (and for this node itself).
    pub connection: Option<String>,
    /// Last ping round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// `"self"`, `"connected"` or `"disconnected"`.
    pub state: String,
    pub roles: Vec<String>,
    pub joined_at: u64,
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
pub struct InviteResponse {
    pub ticket: String,
    pub role: String,
    /// Expiry, seconds since the Unix epoch.
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
pub struct LedgerEntry {
    /// Hex SHA-256 of the entry (body and signature): `GET /ledger/{id}`.
    pub id: String,
    /// Position in this node's local arrival order (for `?from=`).
    pub position: Option<u64>,
    /// Peer id of the author.
    pub author: String,
    pub seq: u64,
    pub prev_hash: String,
    /// HLC as `"<wall_ms>.<counter>"`.
    pub hlc: String,
    pub kind: String,
    /// The entry's JSON body (a string if it is not JSON).
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
pub struct LedgerAnchor {
    pub heads_hash: String,
    pub authors: u64,
    pub entries: u64,
    pub hlc: String,
    /// Peer id of the signer.
    pub signer: String,
    /// Hex of the signer's protobuf-encoded public key.
    pub signer_key: String,
    /// Hex signature; see `voike_protocol::ledger::Anchor`.
    pub signature: String,
}
