//! Durable state of a `voiked` node.
//!
//! One redb file per data directory, owned by a dedicated writer thread that batches concurrent
//! writes into one `Durability::Immediate` transaction (group commit): a write is acknowledged only
//! after the transaction holding it has been fsynced. Reads open their own read transactions.
//! The node's identity key lives beside the database in its own file.
//!
//! # Layout
//! - [`store`]: the redb database, its versioned tables and the writer thread.
//! - [`ledger`]: Truth Ledger chains: append with link checks, ranges, recent entries, verify.
//! - [`docs`]: signed document changes in the order they were merged.
//! - [`keyfile`]: loading and creating the node's ed25519 identity key and other secret files.

pub mod docs;
pub mod keyfile;
pub mod ledger;
pub mod store;

pub use store::{PendingWrite, Store, StoreError, Table, WriteOp};
