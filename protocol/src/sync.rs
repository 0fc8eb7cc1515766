//! Messages of state sync: head digests (gossiped and exchanged in anti-entropy rounds) and the
//! request-response pulls of document changes and ledger ranges (`/voike/sync/1`).
//!
//! All messages are postcard-encoded. Readers cap a message's size *before* decoding it
//! ([`MAX_REQUEST_BYTES`], [`MAX_RESPONSE_BYTES`], [`MAX_DIGEST_BYTES`]); responders fill a page up
//! to [`PAGE_BYTES`] and say whether more remains.

use serde::{Deserialize, Serialize};

use crate::docs::{DocId, SignedChange};
use crate::ledger::{Entry, Hash};

/// Request-response protocol name.
pub const SYNC_PROTOCOL: &str = "/voike/sync/1";
/// Largest request read.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Largest response read (a module travels whole in one response, so modules are capped below
/// this: see [`MAX_MODULE_BYTES`]).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest WebAssembly module a node accepts, stores or fetches.
pub const MAX_MODULE_BYTES: usize = 4 * 1024 * 1024;
/// Largest gossiped digest.
pub const MAX_DIGEST_BYTES: usize = 48 * 1024;
/// Most documents a digest lists: the four fixed ones and the open jobs epochs (newest first;
/// a node holding more lists the newest, and anti-entropy pulls on the others when asked).
pub const MAX_DIGEST_DOCS: usize = 4 + 192;
/// Target size of one response page.
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Most heads listed per document in a digest (a document rarely has more than a few).
pub const MAX_HEADS: usize = 64;

/// What a node holds: each document's heads and the ledger's heads hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub docs: Vec<(DocId, Vec<[u8; 32]>)>,
    /// `heads_hash` over all ledger chains.
    pub ledger: Hash,
    /// Entries in the ledger (a hint of who is ahead).
    pub ledger_entries: u64,
}

impl Digest {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Digest> {
        if b.len() > MAX_DIGEST_BYTES {
            return None;
        }
        let d: Digest = postcard::from_bytes(b).ok()?;
        (d.docs.len() <= MAX_DIGEST_DOCS && d.docs.iter().all(|(_, h)| h.len() <= MAX_HEADS))
            .then_some(d)
    }

    /// The heads listed for `doc`.
    pub fn heads(&self, doc: DocId) -> &[[u8; 32]] {
        self.docs
            .iter()
            .find(|(d, _)| *d == doc)
            .map_or(&[], |(_, h)| h.as_slice())
    }
}

/// A pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// "Here is what I hold; what do you hold?" (anti-entropy).
    Digest(Digest),
    /// Changes of `doc` not covered by `heads`, skipping the first `offset`.
    Changes {
        doc: DocId,
        heads: Vec<[u8; 32]>,
        offset: u32,
    },
    /// Ledger entries after the listed `(author, seq)` positions (missing authors: from 1).
    Ledger { have: Vec<(Vec<u8>, u64)> },
    /// The WebAssembly module with content hash `hash` (hex sha256 of its bytes).
    Module { hash: String },
}

/// The answer to a pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    Digest(Digest),
    Changes {
        changes: Vec<SignedChange>,
        more: bool,
    },
    Ledger {
        entries: Vec<Entry>,
        more: bool,
    },
    /// The module's bytes, `None` when the responder does not hold it. The asker checks the
    /// hash before using them.
    Module(Option<Vec<u8>>),
    /// The responder is rate-limiting this peer; try later.
    Busy,
    /// Not served (e.g. the asker is not a member).
    Refused(String),
}
