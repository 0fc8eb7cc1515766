//! Invitation tickets.
//!
//! An admin issues a [`Ticket`]: the mesh charter, the role granted, an expiry, a one-time nonce
//! and the bootstrap addresses to dial, signed by the admin. It travels as one copy-pasteable
//! string, `voike1` followed by URL-safe base64 of its postcard encoding. A ticket issued by an
//! admin other than Genesis carries that admin's own membership record as proof of its role.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::membership::MembershipRecord;
use crate::mesh::{MeshCharter, Role};
use crate::signing::{self, SigningError, TICKET_DOMAIN};

/// Text prefix of an encoded ticket; the digit is the format version.
pub const TICKET_PREFIX: &str = "voike1";
/// Longest ticket string accepted, checked before decoding.
pub const MAX_TICKET_LEN: usize = 16 * 1024;
/// Most bootstrap addresses a ticket may carry.
pub const MAX_BOOTSTRAP_ADDRS: usize = 16;

/// The signed part of a ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// The charter of the mesh this ticket admits to.
    pub charter: MeshCharter,
    /// Role granted to the node that redeems the ticket.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// One-time nonce: the first node that joins with it owns it.
    pub nonce: [u8; 16],
    /// Multiaddrs (with `/p2p/<id>`) of members to dial when joining.
    pub bootstrap: Vec<String>,
    /// Protobuf-encoded public key of the admin that issued the ticket.
    pub issuer: Vec<u8>,
}

/// A signed invitation to a mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub body: TicketBody,
    /// Issuer's signature over [`TICKET_DOMAIN`] and the body.
    pub signature: Vec<u8>,
    /// The issuer's membership record when the issuer is not Genesis, proving its admin role.
    pub issuer_proof: Option<Box<MembershipRecord>>,
}

/// What a ticket that does not decode says to do: it was almost always cut or changed when it
/// was copied.
const COPY_WHOLE: &str = "it was probably cut or changed when copied: copy the whole ticket \
     (one line, starting with voike1) and quote it, e.g. --join \"$TICKET\"";

/// Errors from reading a ticket string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    #[error("ticket does not start with {TICKET_PREFIX:?}; {COPY_WHOLE}")]
    Prefix,
    #[error("ticket is {len} bytes long, more than the {MAX_TICKET_LEN} allowed")]
    TooLong { len: usize },
    #[error("ticket is not valid base64 ({0}); {COPY_WHOLE}")]
    Base64(String),
    #[error("ticket is malformed ({0}); {COPY_WHOLE}")]
    Decode(String),
    #[error(
        "ticket carries {count} bootstrap addresses, more than the {MAX_BOOTSTRAP_ADDRS} allowed"
    )]
    TooManyAddrs { count: usize },
    #[error(transparent)]
    Signing(#[from] SigningError),
}

impl Ticket {
    /// Signs `body` with `issuer`; `issuer_proof` must be given when the issuer is not Genesis.
    pub fn issue(
        issuer: &Keypair,
        mut body: TicketBody,
        issuer_proof: Option<MembershipRecord>,
    ) -> Result<Ticket, TicketError> {
        body.issuer = issuer.public().encode_protobuf();
        body.bootstrap.truncate(MAX_BOOTSTRAP_ADDRS);
        let signature = signing::sign(issuer, TICKET_DOMAIN, "ticket", &body)?;
        Ok(Ticket {
            body,
            signature,
            issuer_proof: issuer_proof.map(Box::new),
        })
    }

    /// Whether the signature is the issuer's over the body. Says nothing about the issuer's role.
    pub fn signature_valid(&self) -> Result<bool, SigningError> {
        let key = signing::decode_key(&self.body.issuer)?;
        signing::verify(&key, TICKET_DOMAIN, "ticket", &self.body, &self.signature)
    }

    /// The copy-pasteable text form.
    pub fn encode(&self) -> Result<String, TicketError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| TicketError::Decode(e.to_string()))?;
        Ok(format!("{TICKET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Parses the text form; surrounding whitespace is ignored. Does not check signatures.
    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong { len: text.len() });
        }
        let rest = text
            .strip_prefix(TICKET_PREFIX)
            .ok_or(TicketError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|e| TicketError::Base64(e.to_string().trim_end_matches('.').to_string()))?;
        let ticket: Ticket =
            postcard::from_bytes(&bytes).map_err(|e| TicketError::Decode(e.to_string()))?;
        if ticket.body.bootstrap.len() > MAX_BOOTSTRAP_ADDRS {
            return Err(TicketError::TooManyAddrs {
                count: ticket.body.bootstrap.len(),
            });
        }
        Ok(ticket)
    }
}
