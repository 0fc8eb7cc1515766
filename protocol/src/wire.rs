//! Messages of the membership handshake (`/voike/member/1`).
//!
//! On every new connection each side sends a [`Hello`] carrying its membership record; the other
//! side verifies it and answers [`HelloReply::Welcome`] with the members it knows (so records and
//! addresses spread) or [`HelloReply::Rejected`] with the reason, then disconnects. A peer that has
//! not presented a valid record is never synced with and is disconnected after a short deadline.
//!
//! A node that stops cleanly sends a signed [`Leave`](crate::health::Leave) to every member it
//! is connected to (`/voike/leave/1`) and waits, up to [`LEAVE_TIMEOUT_MS`], for their
//! [`LeaveAck`]s before it closes its connections.

use serde::{Deserialize, Serialize};

use crate::membership::{AdmissionReceipt, MembershipRecord};

/// Protocol name of the handshake.
pub const MEMBER_PROTOCOL: &str = "/voike/member/1";
/// Largest handshake request accepted, in bytes.
pub const MAX_HELLO_BYTES: u64 = 64 * 1024;
/// Largest handshake reply accepted, in bytes.
pub const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;
/// Most members listed in one reply.
pub const MAX_MEMBERS_PER_REPLY: usize = 1024;
/// Most receipts a hello may carry.
pub const MAX_RECEIPTS: usize = 8;
/// Most addresses listed per member.
pub const MAX_ADDRS_PER_MEMBER: usize = 16;
/// Protocol name of the goodbye of a node that stops cleanly.
pub const LEAVE_PROTOCOL: &str = "/voike/leave/1";
/// Largest leave request accepted, in bytes.
pub const MAX_LEAVE_BYTES: u64 = 1024;
/// Largest leave answer accepted, in bytes.
pub const MAX_LEAVE_ACK_BYTES: u64 = 64;
/// How long a stopping node waits for the members' answers to its leave (ms).
pub const LEAVE_TIMEOUT_MS: u64 = 2_000;

/// Answer to a [`Leave`](crate::health::Leave): the member received it (whether it took it is
/// its own business: a refused leave changes nothing for the leaving node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveAck {
    pub received: bool,
}

/// A peer's proof of membership, sent when a connection opens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub record: MembershipRecord,
    /// Addresses the sender listens on.
    pub listen_addrs: Vec<String>,
    /// Receipts from members that admitted the sender (see [`AdmissionReceipt`]).
    pub receipts: Vec<AdmissionReceipt>,
    /// A hash over the members the sender knows and their addresses: a receiver whose own
    /// differs sends a hello back, and learns them from the welcome. Absent from older nodes.
    #[serde(default)]
    pub directory_hash: Option<Vec<u8>>,
    /// What AutoNAT concluded about the sender: `true` when members can dial it (it is a
    /// useful relay for members behind NAT), `false` when it is behind NAT itself (a member
    /// that reached it by a hole punch or on its LAN must not take it for a relay). Absent
    /// while unknown, and from older nodes.
    #[serde(default)]
    pub public: Option<bool>,
}

/// A member known to the replying node, with addresses to reach it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    pub record: MembershipRecord,
    pub addrs: Vec<String>,
}

/// Why a hello was refused, in a form the refused node can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// The record or its ticket does not verify (forged, malformed, unknown issuer).
    Invalid,
    /// The ticket expired before it was redeemed.
    Expired,
    /// The peer belongs to another mesh.
    WrongMesh,
    /// The ticket's nonce is already owned by another node.
    NonceReused,
}

/// Answer to a [`Hello`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        members: Vec<MemberInfo>,
        /// The replier's receipt for the hello's sender.
        receipt: Option<AdmissionReceipt>,
    },
    Rejected {
        code: RejectCode,
        reason: String,
    },
}

impl RejectCode {
    /// The code for an admission error.
    pub fn of(error: &crate::membership::AdmissionError) -> RejectCode {
        use crate::membership::AdmissionError as E;
        match error {
            E::Expired { .. } => RejectCode::Expired,
            E::WrongMesh { .. } => RejectCode::WrongMesh,
            E::NonceReused { .. } => RejectCode::NonceReused,
            _ => RejectCode::Invalid,
        }
    }
}
