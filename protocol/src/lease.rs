//! Lease renewals of grid segment claims, outside the `jobs` document.
//!
//! A runner claims a segment once, with one change of the job's document whose
//! `lease_until_ms` is its first lease ([`crate::jobs::put_claim`]). While the segment runs it
//! keeps the claim alive with signed renewals ([`LeaseRenewal`]) gossiped to the members,
//! instead of a document change (and a ledger entry) every third of the lease: a long run no
//! longer grows the document, the ledger and every node's memory with it.
//!
//! A renewal says "runner R still runs attempt A of segment S of job J, until T". It is signed
//! with the runner's key (domain [`LEASE_DOMAIN`]), so the runner it speaks for is its
//! signer: a member can renew only its own claims, which it could already do with a change.
//! Receivers keep renewals in memory ([`LeaseBook`]) and only for claims their document holds
//! (the node checks that before [`LeaseBook::note`]), so the book is bounded by the live
//! claims. A reader extends a claim's lease with the renewal of the same runner and attempt
//! ([`LeaseBook::until`]); a renewal for an older attempt, or one that has run out, extends
//! nothing. Nothing here is stored: a node that starts knows no renewal until the next one
//! arrives (the node allows for that, see `grid.rs`).

use std::collections::HashMap;

use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::jobs::{MAX_SPLIT, is_job_id};
use crate::signing::{self, SigningError};

/// Signature domain of lease renewals.
pub const LEASE_DOMAIN: &[u8] = b"voike/lease/v1\0";
/// Largest encoded renewal accepted (a real one is about 250 bytes).
pub const MAX_RENEWAL_BYTES: usize = 1024;
/// How far past the time it is noted a renewal may reach: a later end is cut to this (a
/// runner's `grid.lease` is far shorter; this bounds what a member's renewal can hold).
pub const MAX_AHEAD_MS: u64 = 3_600_000;
/// Most renewals a book holds (one per live claim; a mesh runs far fewer segments at once).
pub const MAX_ENTRIES: usize = 65_536;

/// The signed part of a renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalBody {
    /// Protobuf-encoded public key of the runner.
    pub node: Vec<u8>,
    pub job: String,
    pub segment: u32,
    /// The attempt of the claim renewed (the claim's `attempt`).
    pub attempt: u32,
    /// Unix milliseconds, by the runner's clock: the claim is live until then.
    pub until_ms: u64,
}

/// A renewal and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewal {
    pub body: RenewalBody,
    pub signature: Vec<u8>,
}

/// Why a renewal was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenewalError {
    #[error("renewal larger than {MAX_RENEWAL_BYTES} bytes")]
    TooLarge,
    #[error("renewal does not decode")]
    Malformed,
    #[error("renewal names no valid job segment")]
    BadSegment,
    #[error("renewal key is not ed25519")]
    BadKey,
    #[error("renewal signature does not verify")]
    BadSignature,
}

impl LeaseRenewal {
    /// Signs a renewal of `key`'s claim on `segment` of `job` (attempt `attempt`) until
    /// `until_ms`.
    pub fn sign(
        key: &Keypair,
        job: &str,
        segment: u32,
        attempt: u32,
        until_ms: u64,
    ) -> Result<Self, SigningError> {
        let body = RenewalBody {
            node: key.public().encode_protobuf(),
            job: job.to_string(),
            segment,
            attempt,
            until_ms,
        };
        let signature = signing::sign(key, LEASE_DOMAIN, "lease renewal", &body)?;
        Ok(LeaseRenewal { body, signature })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and checks a renewal; returns it and its signer (the runner).
    pub fn from_bytes(bytes: &[u8]) -> Result<(LeaseRenewal, PeerId), RenewalError> {
        if bytes.len() > MAX_RENEWAL_BYTES {
            return Err(RenewalError::TooLarge);
        }
        let r: LeaseRenewal = postcard::from_bytes(bytes).map_err(|_| RenewalError::Malformed)?;
        if !is_job_id(&r.body.job) || r.body.segment >= MAX_SPLIT {
            return Err(RenewalError::BadSegment);
        }
        let key = signing::decode_key(&r.body.node).map_err(|_| RenewalError::BadKey)?;
        match signing::verify(&key, LEASE_DOMAIN, "lease renewal", &r.body, &r.signature) {
            Ok(true) => Ok((r, key.to_peer_id())),
            _ => Err(RenewalError::BadSignature),
        }
    }
}

/// What [`LeaseBook::note`] did with a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noted {
    /// The claim's lease now reaches further.
    Renewed,
    /// Nothing new: it ran out already, or an equal or later renewal is held.
    Stale,
    /// The book is full (see [`MAX_ENTRIES`]).
    Full,
}

/// The newest renewal of each claim, in memory: (job, segment, runner) → (attempt, until).
#[derive(Clone, Debug, Default)]
pub struct LeaseBook {
    entries: HashMap<(String, u32, String), (u32, u64)>,
}

impl LeaseBook {
    /// Takes `runner`'s renewal `r` at `now_ms` (Unix milliseconds). The caller has checked
    /// the signature and that its document holds `runner`'s claim with the same attempt. A
    /// renewal of a later attempt replaces that of an earlier one.
    pub fn note(&mut self, runner: &str, r: &RenewalBody, now_ms: u64) -> Noted {
        if r.until_ms <= now_ms {
            return Noted::Stale;
        }
        let until = r.until_ms.min(now_ms.saturating_add(MAX_AHEAD_MS));
        let key = (r.job.clone(), r.segment, runner.to_string());
        match self.entries.get(&key) {
            Some((attempt, held))
                if *attempt > r.attempt || (*attempt == r.attempt && *held >= until) =>
            {
                return Noted::Stale;
            }
            Some(_) => {}
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.prune(now_ms);
                }
                if self.entries.len() >= MAX_ENTRIES {
                    return Noted::Full;
                }
            }
        }
        self.entries.insert(key, (r.attempt, until));
        Noted::Renewed
    }

    /// Until when `runner`'s renewals keep attempt `attempt` of its claim on `segment` of
    /// `job` alive, if a renewal of that attempt is held.
    pub fn until(&self, job: &str, segment: u32, runner: &str, attempt: u32) -> Option<u64> {
        // Keys are owned strings; a lookup without allocating would need a borrowed key type,
        // and books hold one entry per running segment.
        let key = (job.to_string(), segment, runner.to_string());
        match self.entries.get(&key) {
            Some((a, until)) if *a == attempt => Some(*until),
            _ => None,
        }
    }

    /// Drops the renewals that ran out by `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.entries.retain(|_, (_, until)| *until > now_ms);
    }

    /// Renewals held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0123456789abcdef01234567";

    fn body(job: &str, segment: u32, attempt: u32, until_ms: u64) -> RenewalBody {
        RenewalBody {
            node: Vec::new(),
            job: job.into(),
            segment,
            attempt,
            until_ms,
        }
    }

    fn job_id() -> String {
        JOB.to_string()
    }

    #[test]
    fn a_renewal_verifies_as_its_signer_and_nothing_else() {
        let key = Keypair::generate_ed25519();
        let id = job_id();
        let r = LeaseRenewal::sign(&key, &id, 3, 1, 10_000).expect("sign");
        let (back, who) = LeaseRenewal::from_bytes(&r.to_bytes()).expect("verifies");
        assert_eq!(back, r);
        assert_eq!(who, key.public().to_peer_id());

        // Another member re-signs a renewal naming the runner's key: refused.
        let other = Keypair::generate_ed25519();
        let mut forged = LeaseRenewal::sign(&other, &id, 3, 1, 10_000).expect("sign");
        forged.body.node = key.public().encode_protobuf();
        assert_eq!(
            LeaseRenewal::from_bytes(&forged.to_bytes()),
            Err(RenewalError::BadSignature)
        );
        // A signed renewal whose end was moved later: refused.
        let mut moved = r.clone();
        moved.body.until_ms += 60_000;
        assert_eq!(
            LeaseRenewal::from_bytes(&moved.to_bytes()),
            Err(RenewalError::BadSignature)
        );
        // A health report's signature does not make a renewal (domains differ).
        let sig = signing::sign(&key, b"voike/health-report/v1\0", "x", &r.body).expect("sign");
        let cross = LeaseRenewal {
            body: r.body.clone(),
            signature: sig,
        };
        assert_eq!(
            LeaseRenewal::from_bytes(&cross.to_bytes()),
            Err(RenewalError::BadSignature)
        );
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        let key = Keypair::generate_ed25519();
        assert_eq!(
            LeaseRenewal::from_bytes(&[0u8; MAX_RENEWAL_BYTES + 1]),
            Err(RenewalError::TooLarge)
        );
        assert_eq!(
            LeaseRenewal::from_bytes(&[0xff, 0xff, 0xff]),
            Err(RenewalError::Malformed)
        );
        let not_a_job = LeaseRenewal::sign(&key, "../../etc", 0, 0, 1).expect("sign");
        assert_eq!(
            LeaseRenewal::from_bytes(&not_a_job.to_bytes()),
            Err(RenewalError::BadSegment)
        );
        let past_split = LeaseRenewal::sign(&key, &job_id(), MAX_SPLIT, 0, 1).expect("sign");
        assert_eq!(
            LeaseRenewal::from_bytes(&past_split.to_bytes()),
            Err(RenewalError::BadSegment)
        );
        let mut bad_key = LeaseRenewal::sign(&key, &job_id(), 0, 0, 1).expect("sign");
        bad_key.body.node = vec![1, 2, 3];
        assert_eq!(
            LeaseRenewal::from_bytes(&bad_key.to_bytes()),
            Err(RenewalError::BadKey)
        );
    }

    #[test]
    fn the_book_keeps_the_latest_renewal_of_the_latest_attempt() {
        let mut book = LeaseBook::default();
        assert_eq!(
            book.note("r", &body(JOB, 0, 0, 5_000), 1_000),
            Noted::Renewed
        );
        assert_eq!(book.until(JOB, 0, "r", 0), Some(5_000));
        // Older or equal: nothing moves (a replay extends nothing).
        assert_eq!(book.note("r", &body(JOB, 0, 0, 4_000), 1_000), Noted::Stale);
        assert_eq!(book.note("r", &body(JOB, 0, 0, 5_000), 1_000), Noted::Stale);
        assert_eq!(book.until(JOB, 0, "r", 0), Some(5_000));
        // Run out already.
        assert_eq!(book.note("r", &body(JOB, 1, 0, 900), 1_000), Noted::Stale);
        assert_eq!(book.until(JOB, 1, "r", 0), None);
        // Another runner, another segment: separate.
        assert_eq!(
            book.note("s", &body(JOB, 0, 0, 6_000), 1_000),
            Noted::Renewed
        );
        assert_eq!(book.until(JOB, 0, "r", 0), Some(5_000));
        assert_eq!(book.until(JOB, 0, "s", 0), Some(6_000));
        // A later attempt replaces the earlier; the earlier's renewals no longer count.
        assert_eq!(
            book.note("r", &body(JOB, 0, 2, 3_000), 1_000),
            Noted::Renewed
        );
        assert_eq!(book.until(JOB, 0, "r", 0), None);
        assert_eq!(book.until(JOB, 0, "r", 2), Some(3_000));
        assert_eq!(book.note("r", &body(JOB, 0, 0, 9_000), 1_000), Noted::Stale);
        // Far ends are cut.
        assert_eq!(
            book.note("t", &body(JOB, 0, 0, u64::MAX), 1_000),
            Noted::Renewed
        );
        assert_eq!(book.until(JOB, 0, "t", 0), Some(1_000 + MAX_AHEAD_MS));
        // Pruning drops what ran out.
        book.prune(5_500);
        assert_eq!(book.until(JOB, 0, "r", 2), None);
        assert_eq!(book.until(JOB, 0, "s", 0), Some(6_000));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn a_full_book_takes_no_new_claim_until_some_run_out() {
        let mut book = LeaseBook::default();
        for i in 0..MAX_ENTRIES {
            assert_eq!(
                book.note(&format!("r{i}"), &body(JOB, 0, 0, 2_000), 1_000),
                Noted::Renewed
            );
        }
        assert_eq!(
            book.note("late", &body(JOB, 0, 0, 9_000), 1_000),
            Noted::Full
        );
        // A held claim still renews.
        assert_eq!(
            book.note("r7", &body(JOB, 0, 0, 3_000), 1_000),
            Noted::Renewed
        );
        // Once the others ran out, room again.
        assert_eq!(
            book.note("late", &body(JOB, 0, 0, 9_000), 2_500),
            Noted::Renewed
        );
        assert_eq!(book.len(), 2);
    }
}
