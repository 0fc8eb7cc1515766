//! Mesh charters, mesh ids and roles.
//!
//! A mesh is born when its first node (Genesis) writes a [`MeshCharter`]: Genesis's public key, a
//! creation time and a random nonce. The [`MeshId`] is the hash of the charter, so anyone holding
//! the charter can check which key founded the mesh without asking anyone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signing::{MESH_DOMAIN, hex};

/// The founding statement of a mesh. Its hash is the mesh id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCharter {
    /// Protobuf-encoded ed25519 public key of the Genesis node, the first admin.
    pub genesis: Vec<u8>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Random bytes so that two meshes founded by the same key differ.
    pub nonce: [u8; 16],
}

impl MeshCharter {
    /// The id of the mesh this charter founds.
    pub fn id(&self) -> MeshId {
        let mut h = Sha256::new();
        h.update(MESH_DOMAIN);
        h.update((self.genesis.len() as u64).to_le_bytes());
        h.update(&self.genesis);
        h.update(self.created_at.to_le_bytes());
        h.update(self.nonce);
        MeshId(h.finalize().into())
    }
}

/// The id of a mesh: SHA-256 over its charter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshId(pub [u8; 32]);

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

/// What a member may do in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May invite nodes and change membership.
    Admin,
    /// An ordinary member.
    Member,
}

impl Role {
    /// The lower-case name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(format!(
                "unknown role {other:?}: expected \"admin\" or \"member\""
            )),
        }
    }
}
