//! Self-certifying membership records and the directory that admits them.
//!
//! A node's [`MembershipRecord`] says "key K joined mesh M with role R at time T", signed by K,
//! and carries how K was admitted: either the mesh charter (K is Genesis) or the ticket K redeemed.
//! Any member can check a record offline: the record signature, the ticket signature, that the
//! ticket's issuer is an admin of the same mesh (Genesis, or an admin proven by its own record),
//! that the ticket had not expired, and that its one-time nonce is not already owned by another
//! node.
//!
//! [`Directory`] holds the members a node knows and applies those rules. It is plain data: the
//! node persists what it admits and feeds it back on restart.

use std::collections::{BTreeMap, HashMap};

use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::mesh::{MeshCharter, MeshId, Role};
use crate::signing::{self, RECEIPT_DOMAIN, RECORD_DOMAIN, SigningError};
use crate::ticket::Ticket;

/// How far a fresh record's `joined_at` may be from the verifier's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Deepest chain of admins vouching for admins that a verifier follows.
pub const MAX_ISSUER_DEPTH: usize = 4;

/// How a node came to be a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// The node founded the mesh with this charter.
    Genesis(MeshCharter),
    /// The node redeemed this ticket.
    Ticket(Ticket),
}

/// The signed part of a membership record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    pub mesh_id: MeshId,
    /// Protobuf-encoded ed25519 public key of the member.
    pub node: Vec<u8>,
    pub role: Role,
    pub admission: Admission,
    /// When the node joined, seconds since the Unix epoch (its own clock).
    pub joined_at: u64,
}

/// A member's self-certifying proof of membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub body: RecordBody,
    /// The member's signature over [`RECORD_DOMAIN`] and the body.
    pub signature: Vec<u8>,
}

/// Why a record or ticket was refused. Messages name the node, mesh or time involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("malformed membership data: {0}")]
    Malformed(String),
    #[error("membership record of {node} has an invalid signature")]
    BadRecordSignature { node: String },
    #[error(
        "ticket signature does not verify against its issuer {issuer} (forged or altered ticket)"
    )]
    ForgedTicket { issuer: String },
    #[error("ticket issuer {issuer} is not an admin of mesh {mesh}")]
    IssuerNotAdmin { issuer: String, mesh: MeshId },
    #[error("peer belongs to mesh {found}, not mesh {expected}")]
    WrongMesh { expected: MeshId, found: MeshId },
    /// `now` is the verifier's clock, or the record's `joined_at` for a record checked later
    /// (Unix seconds, written as RFC 3339).
    #[error(
        "ticket expired at {}, {} before it was used ({}): ask an admin for a new ticket",
        crate::time::rfc3339(*.expires_at),
        crate::time::span(.now.saturating_sub(*.expires_at)),
        crate::time::rfc3339(*.now)
    )]
    Expired { expires_at: u64, now: u64 },
    #[error("ticket was already used by node {owner}")]
    NonceReused { owner: String },
    #[error("record claims role {claimed} but the ticket grants {granted}")]
    RoleMismatch { claimed: Role, granted: Role },
    /// Unix seconds, written as RFC 3339.
    #[error(
        "record says it joined at {}, {} from the verifier's clock ({}), more than {} apart: check both clocks",
        crate::time::rfc3339(*.joined_at),
        crate::time::span(.joined_at.abs_diff(*.now)),
        crate::time::rfc3339(*.now),
        crate::time::span(MAX_CLOCK_SKEW_SECS)
    )]
    ClockSkew { joined_at: u64, now: u64 },
    #[error("record presented by {presenter} belongs to {owner}")]
    NotOwnRecord { presenter: String, owner: String },
    #[error("admin chain deeper than {MAX_ISSUER_DEPTH}")]
    ChainTooDeep,
    #[error("node {node} was revoked by an admin")]
    Revoked { node: String },
    #[error("ticket issuer {issuer} was revoked; its tickets admit no one")]
    IssuerRevoked { issuer: String },
}

impl From<SigningError> for AdmissionError {
    fn from(e: SigningError) -> Self {
        AdmissionError::Malformed(e.to_string())
    }
}

impl MembershipRecord {
    /// The record of a Genesis node founding a mesh with `charter`.
    pub fn genesis(
        key: &Keypair,
        charter: MeshCharter,
        joined_at: u64,
    ) -> Result<Self, SigningError> {
        let body = RecordBody {
            mesh_id: charter.id(),
            node: key.public().encode_protobuf(),
            role: Role::Admin,
            admission: Admission::Genesis(charter),
            joined_at,
        };
        Self::sign(key, body)
    }

    /// The record of a node redeeming `ticket` at `joined_at`.
    pub fn redeem(key: &Keypair, ticket: Ticket, joined_at: u64) -> Result<Self, SigningError> {
        let body = RecordBody {
            mesh_id: ticket.body.charter.id(),
            node: key.public().encode_protobuf(),
            role: ticket.body.role,
            admission: Admission::Ticket(ticket),
            joined_at,
        };
        Self::sign(key, body)
    }

    fn sign(key: &Keypair, body: RecordBody) -> Result<Self, SigningError> {
        let signature = signing::sign(key, RECORD_DOMAIN, "membership record", &body)?;
        Ok(MembershipRecord { body, signature })
    }

    /// The member's peer id.
    pub fn peer_id(&self) -> Result<PeerId, AdmissionError> {
        Ok(signing::peer_id_of(&self.body.node)?)
    }

    /// The ticket nonce this record owns, if it was admitted by ticket.
    pub fn nonce(&self) -> Option<[u8; 16]> {
        match &self.body.admission {
            Admission::Ticket(t) => Some(t.body.nonce),
            Admission::Genesis(_) => None,
        }
    }

    /// Canonical bytes, as stored and compared.
    pub fn to_bytes(&self) -> Result<Vec<u8>, AdmissionError> {
        postcard::to_stdvec(self).map_err(|e| AdmissionError::Malformed(e.to_string()))
    }

    /// Decodes canonical bytes. Does not verify.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        postcard::from_bytes(bytes).map_err(|e| AdmissionError::Malformed(e.to_string()))
    }

    /// Checks everything that can be checked without knowing other members: signatures, mesh,
    /// the issuer chain, role, and that the ticket was valid when the node joined. With
    /// `fresh_at = Some(now)` the ticket must also be unexpired now and `joined_at` near `now`:
    /// that is how a node joining for the first time is checked.
    pub fn verify(
        &self,
        charter: &MeshCharter,
        fresh_at: Option<u64>,
    ) -> Result<(), AdmissionError> {
        self.verify_depth(charter, fresh_at, 0)
    }

    fn verify_depth(
        &self,
        charter: &MeshCharter,
        fresh_at: Option<u64>,
        depth: usize,
    ) -> Result<(), AdmissionError> {
        if depth > MAX_ISSUER_DEPTH {
            return Err(AdmissionError::ChainTooDeep);
        }
        let mesh = charter.id();
        if self.body.mesh_id != mesh {
            return Err(AdmissionError::WrongMesh {
                expected: mesh,
                found: self.body.mesh_id,
            });
        }
        let key = signing::decode_key(&self.body.node)?;
        let node = key.to_peer_id();
        if !signing::verify(
            &key,
            RECORD_DOMAIN,
            "membership record",
            &self.body,
            &self.signature,
        )? {
            return Err(AdmissionError::BadRecordSignature {
                node: node.to_string(),
            });
        }
        match &self.body.admission {
            Admission::Genesis(c) => {
                if c != charter || c.genesis != self.body.node || self.body.role != Role::Admin {
                    return Err(AdmissionError::IssuerNotAdmin {
                        issuer: node.to_string(),
                        mesh,
                    });
                }
            }
            Admission::Ticket(ticket) => {
                verify_ticket(ticket, charter, depth)?;
                if ticket.body.role != self.body.role {
                    return Err(AdmissionError::RoleMismatch {
                        claimed: self.body.role,
                        granted: ticket.body.role,
                    });
                }
                if self.body.joined_at > ticket.body.expires_at {
                    return Err(AdmissionError::Expired {
                        expires_at: ticket.body.expires_at,
                        now: self.body.joined_at,
                    });
                }
                if let Some(now) = fresh_at {
                    check_fresh(ticket, now)?;
                    if self.body.joined_at.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
                        return Err(AdmissionError::ClockSkew {
                            joined_at: self.body.joined_at,
                            now,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a ticket's mesh, signature and issuer chain (not its expiry).
pub fn verify_ticket(
    ticket: &Ticket,
    charter: &MeshCharter,
    depth: usize,
) -> Result<(), AdmissionError> {
    let mesh = charter.id();
    let found = ticket.body.charter.id();
    if found != mesh {
        return Err(AdmissionError::WrongMesh {
            expected: mesh,
            found,
        });
    }
    let issuer = signing::peer_id_of(&ticket.body.issuer)?;
    if !ticket.signature_valid()? {
        return Err(AdmissionError::ForgedTicket {
            issuer: issuer.to_string(),
        });
    }
    if ticket.body.issuer == charter.genesis {
        return Ok(());
    }
    match &ticket.issuer_proof {
        Some(proof) if proof.body.node == ticket.body.issuer && proof.body.role == Role::Admin => {
            proof.verify_depth(charter, None, depth + 1)
        }
        _ => Err(AdmissionError::IssuerNotAdmin {
            issuer: issuer.to_string(),
            mesh,
        }),
    }
}

/// Checks that a ticket can still be redeemed at `now`.
pub fn check_fresh(ticket: &Ticket, now: u64) -> Result<(), AdmissionError> {
    if now > ticket.body.expires_at {
        return Err(AdmissionError::Expired {
            expires_at: ticket.body.expires_at,
            now,
        });
    }
    Ok(())
}

/// A member's signed statement that it admitted `node` while the node's ticket was valid.
///
/// A joining node keeps the receipts it got from the members that welcomed it and presents them
/// later, so that a member that has not heard of it yet can admit it after its ticket expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionReceipt {
    pub mesh_id: MeshId,
    /// Protobuf-encoded public key of the admitted node.
    pub node: Vec<u8>,
    /// When the admitter admitted it, seconds since the Unix epoch (admitter's clock).
    pub admitted_at: u64,
    /// Protobuf-encoded public key of the admitting member.
    pub admitter: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct ReceiptSigned<'a> {
    mesh_id: &'a MeshId,
    node: &'a [u8],
    admitted_at: u64,
    admitter: &'a [u8],
}

impl AdmissionReceipt {
    /// `admitter` vouches that it admitted the member of `record` at `now`.
    pub fn issue(
        admitter: &Keypair,
        record: &MembershipRecord,
        now: u64,
    ) -> Result<Self, SigningError> {
        let admitter_key = admitter.public().encode_protobuf();
        let signed = ReceiptSigned {
            mesh_id: &record.body.mesh_id,
            node: &record.body.node,
            admitted_at: now,
            admitter: &admitter_key,
        };
        let signature = signing::sign(admitter, RECEIPT_DOMAIN, "admission receipt", &signed)?;
        Ok(AdmissionReceipt {
            mesh_id: record.body.mesh_id,
            node: record.body.node.clone(),
            admitted_at: now,
            admitter: admitter_key,
            signature,
        })
    }

    /// The admitter's peer id if the signature is valid.
    pub fn verified_admitter(&self) -> Option<PeerId> {
        let key = signing::decode_key(&self.admitter).ok()?;
        let signed = ReceiptSigned {
            mesh_id: &self.mesh_id,
            node: &self.node,
            admitted_at: self.admitted_at,
            admitter: &self.admitter,
        };
        match signing::verify(
            &key,
            RECEIPT_DOMAIN,
            "admission receipt",
            &signed,
            &self.signature,
        ) {
            Ok(true) => Some(key.to_peer_id()),
            _ => None,
        }
    }
}

/// What [`Directory::admit_presented`] and [`Directory::admit_known`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The record is new and was added: persist it.
    New,
    /// The record was already known.
    Known,
    /// The record is new and took its ticket from `evicted`, which had redeemed the same
    /// one-time ticket (see [`Directory`]): persist it and forget `evicted`.
    Replaced { evicted: PeerId },
}

/// The members this node knows, with the rules that admit new ones.
#[derive(Debug, Clone)]
pub struct Directory {
    charter: MeshCharter,
    mesh_id: MeshId,
    members: BTreeMap<PeerId, MembershipRecord>,
    nonces: HashMap<[u8; 16], PeerId>,
    /// Bumped whenever a member is added, replaced or revoked.
    generation: u64,
    /// Members an admin revoked: kept (their earlier changes still verify), never admitted
    /// again, and not [`Directory::contains`]ed.
    revoked: std::collections::BTreeSet<PeerId>,
}

impl Directory {
    /// Changes every time the member set changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// An empty directory of the mesh founded by `charter`.
    pub fn new(charter: MeshCharter) -> Self {
        let mesh_id = charter.id();
        Directory {
            charter,
            mesh_id,
            members: BTreeMap::new(),
            nonces: HashMap::new(),
            generation: 0,
            revoked: Default::default(),
        }
    }

    pub fn charter(&self) -> &MeshCharter {
        &self.charter
    }

    pub fn mesh_id(&self) -> MeshId {
        self.mesh_id
    }

    /// Admits a record that `presenter` showed on a connection it opened or accepted.
    ///
    /// A known member is re-verified. A node new to this directory that joined by ticket is
    /// checked as a fresh join: its ticket must be unexpired now and `joined_at` near `now`,
    /// unless one of `receipts` shows that a member this node knows admitted it in time.
    pub fn admit_presented(
        &mut self,
        record: MembershipRecord,
        presenter: PeerId,
        receipts: &[AdmissionReceipt],
        now: u64,
    ) -> Result<Admitted, AdmissionError> {
        let node = record.peer_id()?;
        if presenter != node {
            return Err(AdmissionError::NotOwnRecord {
                presenter: presenter.to_string(),
                owner: node.to_string(),
            });
        }
        if self.revoked.contains(&node) {
            return Err(AdmissionError::Revoked {
                node: node.to_string(),
            });
        }
        if self.members.contains_key(&node) {
            return self.admit_known(record);
        }
        if let Admission::Ticket(t) = &record.body.admission
            && let Ok(issuer) = signing::peer_id_of(&t.body.issuer)
            && self.revoked.contains(&issuer)
        {
            return Err(AdmissionError::IssuerRevoked {
                issuer: issuer.to_string(),
            });
        }
        let vouched = match &record.body.admission {
            Admission::Ticket(t) => receipts.iter().any(|r| {
                r.mesh_id == self.mesh_id
                    && r.node == record.body.node
                    && r.admitted_at <= t.body.expires_at.saturating_add(MAX_CLOCK_SKEW_SECS)
                    && r.verified_admitter()
                        .is_some_and(|a| a != node && self.members.contains_key(&a))
            }),
            Admission::Genesis(_) => false,
        };
        let fresh_at = if vouched { None } else { Some(now) };
        record.verify(&self.charter, fresh_at)?;
        // A node presenting a ticket this directory knows as used is refused, whatever its id:
        // only records admitted elsewhere (relayed) may take a ticket over.
        self.insert(node, record, false)
    }

    /// Admits a record read back from storage or relayed by another member: it was admitted
    /// somewhere already, so only signatures, mesh, issuer chain and nonce ownership are checked.
    /// When it redeemed the same ticket as a member this directory holds (each was admitted by a
    /// member that did not know of the other), the smaller peer id keeps the ticket on every
    /// replica ([`Admitted::Replaced`]).
    pub fn admit_known(&mut self, record: MembershipRecord) -> Result<Admitted, AdmissionError> {
        let node = record.peer_id()?;
        if let Some(known) = self.members.get(&node) {
            if *known != record {
                // A member showing a different record (for example re-joined with a new ticket)
                // keeps the one first admitted; the new one must still be valid.
                record.verify(&self.charter, None)?;
            }
            return Ok(Admitted::Known);
        }
        record.verify(&self.charter, None)?;
        self.insert(node, record, true)
    }

    fn insert(
        &mut self,
        node: PeerId,
        record: MembershipRecord,
        may_replace: bool,
    ) -> Result<Admitted, AdmissionError> {
        if let Some(nonce) = record.nonce() {
            if let Some(owner) = self.nonces.get(&nonce).copied()
                && owner != node
            {
                // Two nodes redeemed one ticket, each admitted by a different member (on two
                // sides of a partition, say). Which one keeps it must not depend on the order
                // a replica heard of them: the smaller peer id (as bytes) wins everywhere.
                if may_replace && node.to_bytes() < owner.to_bytes() {
                    self.members.remove(&owner);
                    self.nonces.insert(nonce, node);
                    self.members.insert(node, record);
                    self.generation += 1;
                    return Ok(Admitted::Replaced { evicted: owner });
                }
                return Err(AdmissionError::NonceReused {
                    owner: owner.to_string(),
                });
            }
            self.nonces.insert(nonce, node);
        }
        self.members.insert(node, record);
        self.generation += 1;
        Ok(Admitted::New)
    }

    /// Whether `peer` is a known member (and not revoked).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer) && !self.revoked.contains(peer)
    }

    /// Whether an admin revoked `peer`.
    pub fn is_revoked(&self, peer: &PeerId) -> bool {
        self.revoked.contains(peer)
    }

    /// Sets the revoked members (from the members document); returns those newly revoked.
    pub fn set_revoked(&mut self, revoked: std::collections::BTreeSet<PeerId>) -> Vec<PeerId> {
        let newly: Vec<PeerId> = revoked.difference(&self.revoked).copied().collect();
        if revoked != self.revoked {
            self.revoked = revoked;
            self.generation += 1;
        }
        newly
    }

    pub fn get(&self, peer: &PeerId) -> Option<&MembershipRecord> {
        self.members.get(peer)
    }

    /// All known members, ordered by peer id.
    pub fn members(&self) -> impl Iterator<Item = (&PeerId, &MembershipRecord)> {
        self.members.iter()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests;
