//! Domain-separated signatures over canonical (postcard) encodings.
//!
//! Every signed structure is encoded with postcard, prefixed with a domain string naming what it
//! is, and signed with the node's ed25519 key. The prefix keeps a signature made for one purpose
//! from being replayed as another.

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::Serialize;

/// Domain of ticket signatures.
pub const TICKET_DOMAIN: &[u8] = b"voike/ticket/v1\0";
/// Domain of membership record signatures.
pub const RECORD_DOMAIN: &[u8] = b"voike/member-record/v1\0";
/// Domain of admission receipt signatures.
pub const RECEIPT_DOMAIN: &[u8] = b"voike/admission-receipt/v1\0";
/// Domain of mesh ids (a hash, not a signature).
pub const MESH_DOMAIN: &[u8] = b"voike/mesh/v1\0";

/// Errors from encoding, decoding or checking signed data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    #[error("public key is not a valid ed25519 key: {0}")]
    BadKey(String),
    #[error("could not encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("could not sign {what}: {reason}")]
    Sign { what: &'static str, reason: String },
}

/// The bytes a signature covers: `domain || postcard(value)`.
pub fn signed_bytes<T: Serialize>(
    domain: &[u8],
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, SigningError> {
    let mut out = domain.to_vec();
    let body = postcard::to_stdvec(value).map_err(|e| SigningError::Encode {
        what,
        reason: e.to_string(),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Signs `domain || postcard(value)` with `key`.
pub fn sign<T: Serialize>(
    key: &Keypair,
    domain: &[u8],
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, SigningError> {
    let bytes = signed_bytes(domain, what, value)?;
    key.sign(&bytes).map_err(|e| SigningError::Sign {
        what,
        reason: e.to_string(),
    })
}

/// Checks `signature` over `domain || postcard(value)` against `key`.
pub fn verify<T: Serialize>(
    key: &PublicKey,
    domain: &[u8],
    what: &'static str,
    value: &T,
    signature: &[u8],
) -> Result<bool, SigningError> {
    let bytes = signed_bytes(domain, what, value)?;
    Ok(key.verify(&bytes, signature))
}

/// Decodes a protobuf-encoded libp2p public key and insists that it is ed25519.
pub fn decode_key(bytes: &[u8]) -> Result<PublicKey, SigningError> {
    let key =
        PublicKey::try_decode_protobuf(bytes).map_err(|e| SigningError::BadKey(e.to_string()))?;
    if key.clone().try_into_ed25519().is_err() {
        return Err(SigningError::BadKey("not an ed25519 key".into()));
    }
    Ok(key)
}

/// The peer id of a protobuf-encoded public key.
pub fn peer_id_of(bytes: &[u8]) -> Result<PeerId, SigningError> {
    Ok(decode_key(bytes)?.to_peer_id())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
