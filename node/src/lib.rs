//! `voiked`, the VOIKE mesh daemon, as a library: the binary in `main.rs` parses flags and calls
//! [`daemon::run`].
//!
//! # Layout
//! - [`config`]: defaults, TOML file, `VOIKED_*` environment and flag layering.
//! - [`daemon`]: data directory, identity, store, swarm and API start-up; signals and shutdown.
//! - [`hypermesh`]: PerfWatch, health gossip, the MeshSurgeon detector and HyperRoute.
//! - [`ledger`]: the Truth Ledger actor that appends this node's entries.
//! - [`mesh`]: founding or joining a mesh and persisting its members.
//! - [`state`]: the signed documents in memory, local writes and the merge of remote changes.
//! - [`sync`]: the worker that turns digests into pulls (announce and anti-entropy).
//! - [`metrics`]: Prometheus metrics.
//! - [`ports`]: listen-port probes run before the data directory is touched.
//! - [`swarm`]: the libp2p behaviour and the one event loop that owns the swarm.
//! - [`api`]: the admin HTTP API.
//! - `faults`: test-only fault injection (feature `fault-injection`).

pub mod api;
pub mod config;
pub mod daemon;
pub mod dns;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod grid;
pub mod hypermesh;
pub mod ledger;
pub mod mesh;
pub mod metrics;
pub mod ports;
pub mod state;
pub mod swarm;
pub mod sync;
