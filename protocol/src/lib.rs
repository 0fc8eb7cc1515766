//! The VOIKE mesh protocol, without I/O.
//!
//! Everything two nodes (or a node and its admin client) must agree on lives here: mesh ids,
//! admission tickets, self-certifying membership records and the rules that check them, the
//! messages exchanged when two peers connect, and the JSON types of the admin API. Nothing here
//! reads a clock, a file or a socket: callers pass `now` in, which keeps the rules testable and
//! lets `simnet` drive them.
//!
//! # Layout
//! - [`mesh`]: mesh charters, mesh ids and roles.
//! - [`signing`]: domain-separated signatures and the key/peer id encodings used on the wire.
//! - [`ticket`]: invitation tickets (`voike1...` strings) signed by an admin.
//! - [`membership`]: membership records and the [`membership::Directory`] that admits them.
//! - [`wire`]: the membership handshake messages peers exchange on every new connection.
//! - [`hlc`]: hybrid logical clocks with a bound on remote drift.
//! - [`ledger`]: Truth Ledger entries, per-author hash chains, verification and anchors.
//! - [`docs`]: signed Automerge documents, their write rights and the merge of remote changes.
//! - [`authority`]: who may say what: namespace rules, admin grants and revocations.
//! - [`zones`]: the `zones` document's layout, record validation and typed reads.
//! - [`endpoints`]: the `endpoints` document's layout, endpoint validation and typed reads.
//! - [`jobs`]: the `jobs` document's layout, job validation, rendezvous placement, leases and
//!   signed segment results.
//! - [`lease`]: signed lease renewals of segment claims, kept in memory outside the document.
//! - [`sync`]: digests and pull messages of state sync.
//! - [`time`]: Unix times as people read them (RFC 3339, "in 59 min"), for messages.
//! - [`health`]: Hypermesh health reports, the phi-accrual failure detector, overload
//!   prediction and route ranking.
//! - [`snrl`]: SNRL candidate ranking and signed answers.
//! - [`api`]: request and response bodies of the admin HTTP API, shared with the `voike` CLI.

pub mod api;
pub mod authority;
pub mod docs;
pub mod endpoints;
pub mod health;
pub mod hlc;
pub mod jobs;
pub mod lease;
pub mod ledger;
pub mod membership;
pub mod mesh;
pub mod signing;
pub mod snrl;
pub mod sync;
pub mod ticket;
pub mod time;
pub mod wire;
pub mod zones;

pub use libp2p_identity::{Keypair, PeerId, PublicKey};
