//! The Truth Ledger's entry format and chain verification.
//!
//! Each author keeps one append-only chain: entry `seq` (1-based) carries the hash of entry
//! `seq - 1` (zeros for the first), an HLC timestamp, a kind, and a JSON body, all signed by the
//! author. An entry's hash covers its body *and* signature, so the chain commits to every
//! signature before it. Verification walks a chain and reports the first fault.
//!
//! An [`Anchor`] is a signed statement of all chain heads a node holds; its `heads_hash` is equal
//! on two nodes exactly when they hold the same chains.

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::Hlc;
use crate::signing::{self, SigningError, hex};

/// Domain of ledger entry signatures and hashes.
pub const ENTRY_DOMAIN: &[u8] = b"voike/ledger-entry/v1\0";
/// Domain of anchor signatures.
pub const ANCHOR_DOMAIN: &[u8] = b"voike/ledger-anchor/v1\0";
/// Largest entry body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest entry kind.
pub const MAX_KIND_LEN: usize = 64;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The signed part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// Protobuf-encoded ed25519 public key of the author.
    pub author: Vec<u8>,
    /// Position in the author's chain, starting at 1.
    pub seq: u64,
    /// Hash of the previous entry; zeros for `seq == 1`.
    pub prev_hash: Hash,
    pub hlc: Hlc,
    /// What happened, e.g. `zone.create`, `record.add`, `trust.rejected_change`.
    pub kind: String,
    /// JSON details.
    pub body: Vec<u8>,
}

/// A signed ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub body: EntryBody,
    pub signature: Vec<u8>,
}

/// What is wrong with a chain, and where. In JSON (`POST /ledger/verify`, `fault`): the variant
/// name as the key, its fields in camelCase (`{"Gap": {"author", "seq", "expectedSeq"}}`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
#[non_exhaustive]
pub enum ChainFault {
    #[error("entry {seq} of {author}: {reason}")]
    Malformed {
        author: String,
        seq: u64,
        reason: String,
    },
    #[error("entry {seq} of {author} has an invalid signature")]
    BadSignature { author: String, seq: u64 },
    #[error("entry {seq} of {author} follows entry {expected_seq} out of order")]
    Gap {
        author: String,
        seq: u64,
        expected_seq: u64,
    },
    #[error("entry {seq} of {author} does not link to the previous entry's hash")]
    BrokenLink { author: String, seq: u64 },
    #[error("entry {seq} of {author} differs from the stored entry with that seq (a fork)")]
    Fork { author: String, seq: u64 },
    #[error("entry {seq} is by {found}, in the chain of {author}")]
    WrongAuthor {
        author: String,
        seq: u64,
        found: String,
    },
}

/// The newest entry of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    /// The head of an empty chain.
    pub const GENESIS: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

impl Entry {
    /// Signs a new entry that follows `prev` in `key`'s chain.
    pub fn append(
        key: &Keypair,
        prev: Head,
        hlc: Hlc,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Entry, SigningError> {
        let body = EntryBody {
            author: key.public().encode_protobuf(),
            seq: prev.seq + 1,
            prev_hash: prev.hash,
            hlc,
            kind: kind.to_string(),
            body,
        };
        let signature = signing::sign(key, ENTRY_DOMAIN, "ledger entry", &body)?;
        Ok(Entry { body, signature })
    }

    /// The entry's hash: over the domain, the encoded body and the signature.
    pub fn hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(ENTRY_DOMAIN);
        h.update(postcard::to_stdvec(&self.body).unwrap_or_default());
        h.update(&self.signature);
        h.finalize().into()
    }

    /// The entry's head (its seq and hash).
    pub fn head(&self) -> Head {
        Head {
            seq: self.body.seq,
            hash: self.hash(),
        }
    }

    /// The entry id used by the API: lower-case hex of its hash.
    pub fn id(&self) -> String {
        hex(&self.hash())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, String> {
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }

    /// The author's public key and peer id.
    pub fn author(&self) -> Result<(PublicKey, PeerId), SigningError> {
        let key = signing::decode_key(&self.body.author)?;
        let peer = key.to_peer_id();
        Ok((key, peer))
    }

    /// Checks size limits and the signature (not the link to the previous entry).
    pub fn verify_alone(&self) -> Result<(), ChainFault> {
        let seq = self.body.seq;
        let (key, peer) = self.author().map_err(|e| ChainFault::Malformed {
            author: "?".into(),
            seq,
            reason: e.to_string(),
        })?;
        let malformed = |reason: String| ChainFault::Malformed {
            author: peer.to_string(),
            seq,
            reason,
        };
        if self.body.body.len() > MAX_BODY_BYTES {
            return Err(malformed(format!(
                "body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        if self.body.kind.is_empty() || self.body.kind.len() > MAX_KIND_LEN {
            return Err(malformed(format!("kind must be 1 to {MAX_KIND_LEN} bytes")));
        }
        if seq == 0 {
            return Err(malformed("seq starts at 1".into()));
        }
        match signing::verify(
            &key,
            ENTRY_DOMAIN,
            "ledger entry",
            &self.body,
            &self.signature,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ChainFault::BadSignature {
                author: peer.to_string(),
                seq,
            }),
            Err(e) => Err(malformed(e.to_string())),
        }
    }

    /// Checks this entry as the successor of `prev` in `author`'s chain.
    pub fn verify_after(&self, author: &[u8], prev: Head) -> Result<(), ChainFault> {
        let name = || {
            signing::peer_id_of(author)
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        if self.body.author != author {
            return Err(ChainFault::WrongAuthor {
                author: name(),
                seq: self.body.seq,
                found: self
                    .author()
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_else(|_| "?".into()),
            });
        }
        if self.body.seq != prev.seq + 1 {
            return Err(ChainFault::Gap {
                author: name(),
                seq: self.body.seq,
                expected_seq: prev.seq + 1,
            });
        }
        if self.body.prev_hash != prev.hash {
            return Err(ChainFault::BrokenLink {
                author: name(),
                seq: self.body.seq,
            });
        }
        self.verify_alone()
    }
}

/// Walks `author`'s chain from its first entry; returns the head or the first fault.
pub fn verify_chain<'a>(
    author: &[u8],
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<Head, ChainFault> {
    let mut head = Head::GENESIS;
    for e in entries {
        e.verify_after(author, head)?;
        head = e.head();
    }
    Ok(head)
}

/// One author's head, as listed in an anchor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorHead {
    /// Protobuf-encoded public key.
    pub author: Vec<u8>,
    pub head: Head,
}

/// Hash over all chain heads, sorted by author: equal on two nodes exactly when they hold the same
/// chains (up to SHA-256 collisions).
pub fn heads_hash(heads: &[AuthorHead]) -> Hash {
    let mut sorted: Vec<&AuthorHead> = heads.iter().collect();
    sorted.sort_by(|a, b| a.author.cmp(&b.author));
    let mut h = Sha256::new();
    h.update(ANCHOR_DOMAIN);
    for a in sorted {
        h.update((a.author.len() as u64).to_le_bytes());
        h.update(&a.author);
        h.update(a.head.seq.to_le_bytes());
        h.update(a.head.hash);
    }
    h.finalize().into()
}

/// A signed statement of every chain head a node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub heads_hash: Hash,
    pub authors: u64,
    pub entries: u64,
    pub hlc: Hlc,
    /// Protobuf-encoded public key of the signer.
    pub signer: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct AnchorSigned<'a> {
    heads_hash: &'a Hash,
    authors: u64,
    entries: u64,
    hlc: Hlc,
    signer: &'a [u8],
}

impl Anchor {
    /// Signs the heads in `heads`.
    pub fn sign(key: &Keypair, heads: &[AuthorHead], hlc: Hlc) -> Result<Anchor, SigningError> {
        let heads_hash = heads_hash(heads);
        let entries = heads.iter().map(|h| h.head.seq).sum();
        let signer = key.public().encode_protobuf();
        let signed = AnchorSigned {
            heads_hash: &heads_hash,
            authors: heads.len() as u64,
            entries,
            hlc,
            signer: &signer,
        };
        let signature = signing::sign(key, ANCHOR_DOMAIN, "ledger anchor", &signed)?;
        Ok(Anchor {
            heads_hash,
            authors: heads.len() as u64,
            entries,
            hlc,
            signer,
            signature,
        })
    }

    /// Whether the signature is the signer's.
    pub fn verify(&self) -> bool {
        let Ok(key) = signing::decode_key(&self.signer) else {
            return false;
        };
        let signed = AnchorSigned {
            heads_hash: &self.heads_hash,
            authors: self.authors,
            entries: self.entries,
            hlc: self.hlc,
            signer: &self.signer,
        };
        signing::verify(
            &key,
            ANCHOR_DOMAIN,
            "ledger anchor",
            &signed,
            &self.signature,
        )
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chain(key: &Keypair, n: u64) -> Vec<Entry> {
        let mut head = Head::GENESIS;
        (0..n)
            .map(|i| {
                let e = Entry::append(
                    key,
                    head,
                    Hlc {
                        wall_ms: 1000 + i,
                        counter: 0,
                    },
                    "test.event",
                    format!("{{\"i\":{i}}}").into_bytes(),
                )
                .expect("sign");
                head = e.head();
                e
            })
            .collect()
    }

    #[test]
    fn a_fresh_chain_verifies() {
        let key = Keypair::generate_ed25519();
        let c = chain(&key, 20);
        let head = verify_chain(&key.public().encode_protobuf(), &c).expect("valid");
        assert_eq!(head.seq, 20);
        assert_eq!(head, c[19].head());
    }

    #[test]
    fn reordered_dropped_and_foreign_entries_are_found() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let author = key.public().encode_protobuf();
        let mut c = chain(&key, 5);
        c.swap(1, 2);
        assert!(matches!(
            verify_chain(&author, &c),
            Err(ChainFault::Gap { seq: 3, .. })
        ));
        let mut c = chain(&key, 5);
        c.remove(2);
        assert!(matches!(
            verify_chain(&author, &c),
            Err(ChainFault::Gap { .. })
        ));
        let mut c = chain(&key, 3);
        c[1] = chain(&other, 2).remove(1);
        assert!(matches!(
            verify_chain(&author, &c),
            Err(ChainFault::WrongAuthor { .. })
        ));
        // Same seq, re-signed with different content: the next link breaks.
        let mut c = chain(&key, 3);
        c[1] = Entry::append(
            &key,
            c[0].head(),
            Hlc::default(),
            "test.event",
            b"{}".to_vec(),
        )
        .expect("sign");
        assert!(matches!(
            verify_chain(&author, &c),
            Err(ChainFault::BrokenLink { seq: 3, .. })
        ));
    }

    #[test]
    fn anchors_sign_heads_and_detect_difference() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let ca = chain(&a, 3);
        let cb = chain(&b, 2);
        let heads = vec![
            AuthorHead {
                author: a.public().encode_protobuf(),
                head: ca[2].head(),
            },
            AuthorHead {
                author: b.public().encode_protobuf(),
                head: cb[1].head(),
            },
        ];
        let mut reversed = heads.clone();
        reversed.reverse();
        assert_eq!(heads_hash(&heads), heads_hash(&reversed));
        let shorter = vec![
            heads[0].clone(),
            AuthorHead {
                author: b.public().encode_protobuf(),
                head: cb[0].head(),
            },
        ];
        assert_ne!(heads_hash(&heads), heads_hash(&shorter));
        let anchor = Anchor::sign(&a, &heads, Hlc::default()).expect("sign");
        assert!(anchor.verify());
        assert_eq!(anchor.entries, 5);
        let mut forged = anchor.clone();
        forged.entries = 6;
        assert!(!forged.verify());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// A chain whose encoded form has any single corrupted byte fails to decode or to verify.
        #[test]
        fn any_single_corrupted_byte_fails_verification(entry in 0usize..6, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = Keypair::generate_ed25519();
            let author = key.public().encode_protobuf();
            let c = chain(&key, 6);
            let mut bytes = c[entry].to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(bad) = Entry::from_bytes(&bytes) && bad != c[entry] {
                let mut tampered = c.clone();
                tampered[entry] = bad;
                prop_assert!(verify_chain(&author, &tampered).is_err());
            }
        }
    }
}
