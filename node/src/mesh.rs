//! This node's place in its mesh: founding it, joining it, and remembering its members.
//!
//! The rules live in [`voike_protocol::membership`]; this module loads and persists what they
//! admit. Every admitted record is written to the store before the admission is acknowledged to
//! anyone, and every stored record is verified again on start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use libp2p::identity::Keypair;
use tracing::{info, warn};
use voike_protocol::PeerId;
use voike_protocol::membership::{self, AdmissionReceipt, Admitted, Directory, MembershipRecord};
use voike_protocol::mesh::{MeshCharter, MeshId, Role};
use voike_protocol::ticket::Ticket;
use voike_storage::{Store, Table, WriteOp};

use crate::ledger::LedgerHandle;

const META_CHARTER: &[u8] = b"charter";
const META_SELF_RECORD: &[u8] = b"self_record";
const META_RECEIPTS: &[u8] = b"receipts";
/// The ticket of a join that has not been accepted yet, so that a restart resumes it.
const META_PENDING_JOIN: &[u8] = b"pending_join";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Whether this node is a member yet.
#[derive(Debug, Clone)]
pub enum Membership {
    /// Admitted: the own record is stored and known to at least one other member (or Genesis).
    Member,
    /// Started with `--join`; waiting for a member to accept the record.
    Joining,
}

/// The mesh as this node knows it.
#[derive(Debug)]
pub struct MeshState {
    pub key: Keypair,
    pub peer_id: PeerId,
    pub directory: Directory,
    pub own: MembershipRecord,
    pub membership: Membership,
    pub receipts: Vec<AdmissionReceipt>,
    pub ledger: LedgerHandle,
    store: Store,
}

impl MeshState {
    /// Loads the stored mesh, or founds a new one, or prepares to join with `join`.
    pub async fn open(
        key: Keypair,
        store: Store,
        ledger: LedgerHandle,
        join: Option<&str>,
    ) -> anyhow::Result<MeshState> {
        let peer_id = key.public().to_peer_id();
        let now = unix_now();
        if let Some(charter) = store.get(Table::Meta, META_CHARTER)? {
            let charter: MeshCharter =
                postcard::from_bytes(&charter).context("stored mesh charter is corrupt")?;
            let own_bytes = store
                .get(Table::Meta, META_SELF_RECORD)?
                .context("database has a mesh charter but no membership record of this node")?;
            let own = MembershipRecord::from_bytes(&own_bytes)?;
            if own.peer_id()? != peer_id {
                bail!(
                    "the database belongs to node {}, but the identity key is node {peer_id}; was node.key replaced?",
                    own.peer_id()?
                );
            }
            own.verify(&charter, None)
                .context("this node's stored membership record no longer verifies")?;
            if let Some(text) = join {
                let ticket = Ticket::decode(text).context("invalid --join ticket")?;
                if ticket.body.charter.id() != charter.id() {
                    bail!(
                        "this data directory already belongs to mesh {}; the ticket is for mesh {}: use another --data-dir to join it",
                        charter.id(),
                        ticket.body.charter.id()
                    );
                }
                info!("already a member of mesh {}; ignoring --join", charter.id());
            }
            let mut directory = Directory::new(charter);
            directory.admit_known(own.clone())?;
            for (k, v) in store.scan(Table::Members)? {
                let checked =
                    MembershipRecord::from_bytes(&v).and_then(|r| directory.admit_known(r));
                if let Err(error) = checked {
                    let who = PeerId::from_bytes(&k)
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    warn!(peer = %who, %error, "stored membership record no longer verifies; ignoring it");
                }
            }
            let receipts = match store.get(Table::Meta, META_RECEIPTS)? {
                Some(b) => postcard::from_bytes(&b).unwrap_or_default(),
                None => Vec::new(),
            };
            info!(mesh = %directory.mesh_id(), node = %peer_id, members = directory.len(), "loaded mesh");
            return Ok(MeshState {
                key,
                peer_id,
                directory,
                own,
                membership: Membership::Member,
                receipts,
                ledger,
                store,
            });
        }
        let pending = store
            .get(Table::Meta, META_PENDING_JOIN)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let join = match (join, pending) {
            (Some(text), _) => Some(text.to_string()),
            (None, Some(text)) => {
                info!("resuming the unfinished join of a previous start");
                Some(text)
            }
            (None, None) => None,
        };
        if let Some(text) = join {
            let ticket = Ticket::decode(&text).context("invalid --join ticket")?;
            let charter = ticket.body.charter.clone();
            membership::verify_ticket(&ticket, &charter, 0).context("invalid --join ticket")?;
            membership::check_fresh(&ticket, now).context("invalid --join ticket")?;
            store
                .write(vec![WriteOp::Put {
                    table: Table::Meta,
                    key: META_PENDING_JOIN.to_vec(),
                    value: text.trim().as_bytes().to_vec(),
                }])
                .await?;
            let own = MembershipRecord::redeem(&key, ticket, now)?;
            info!(mesh = %charter.id(), node = %peer_id, "joining mesh");
            return Ok(MeshState {
                key,
                peer_id,
                directory: Directory::new(charter),
                own,
                membership: Membership::Joining,
                receipts: Vec::new(),
                ledger,
                store,
            });
        }
        let charter = MeshCharter {
            genesis: key.public().encode_protobuf(),
            created_at: now,
            nonce: rand::random(),
        };
        let own = MembershipRecord::genesis(&key, charter.clone(), now)?;
        let mut directory = Directory::new(charter.clone());
        directory.admit_known(own.clone())?;
        let state = MeshState {
            key,
            peer_id,
            directory,
            own,
            membership: Membership::Member,
            receipts: Vec::new(),
            ledger,
            store,
        };
        state.persist_self(&charter).await?;
        state
            .ledger
            .append(
                "mesh.create",
                serde_json::json!({ "mesh_id": charter.id().to_string(), "genesis": peer_id.to_string() }),
            )
            .await?;
        info!(mesh = %charter.id(), node = %peer_id, "created a new mesh; this node is its genesis and first admin");
        Ok(state)
    }

    async fn persist_self(&self, charter: &MeshCharter) -> anyhow::Result<()> {
        let own = self.own.to_bytes()?;
        self.store
            .write(vec![
                WriteOp::Put {
                    table: Table::Meta,
                    key: META_CHARTER.to_vec(),
                    value: postcard::to_stdvec(charter)?,
                },
                WriteOp::Put {
                    table: Table::Meta,
                    key: META_SELF_RECORD.to_vec(),
                    value: own.clone(),
                },
                WriteOp::Put {
                    table: Table::Members,
                    key: self.peer_id.to_bytes(),
                    value: own,
                },
                WriteOp::Put {
                    table: Table::Meta,
                    key: META_RECEIPTS.to_vec(),
                    value: postcard::to_stdvec(&self.receipts)?,
                },
                WriteOp::Delete {
                    table: Table::Meta,
                    key: META_PENDING_JOIN.to_vec(),
                },
            ])
            .await?;
        Ok(())
    }

    pub fn mesh_id(&self) -> MeshId {
        self.directory.mesh_id()
    }

    pub fn is_member(&self) -> bool {
        matches!(self.membership, Membership::Member)
    }

    pub fn is_genesis(&self) -> bool {
        self.directory.charter().genesis == self.own.body.node
    }

    pub fn role(&self) -> Role {
        self.own.body.role
    }

    /// While joining, signs the own record again with the current time, so that a joiner that
    /// waits long for a reachable member is not refused for clock skew.
    pub fn refresh_pending_record(&mut self) -> anyhow::Result<()> {
        if self.is_member() {
            return Ok(());
        }
        if let voike_protocol::membership::Admission::Ticket(t) = &self.own.body.admission {
            self.own = MembershipRecord::redeem(&self.key, t.clone(), unix_now())?;
        }
        Ok(())
    }

    /// Stores a newly admitted member's record.
    pub async fn persist_member(&self, record: &MembershipRecord) -> anyhow::Result<()> {
        self.store
            .write(vec![WriteOp::Put {
                table: Table::Members,
                key: record.peer_id()?.to_bytes(),
                value: record.to_bytes()?,
            }])
            .await?;
        Ok(())
    }

    /// Admits a record relayed by a member and stores it if new.
    pub async fn admit_relayed(&mut self, record: MembershipRecord) -> anyhow::Result<Admitted> {
        let admitted = self.directory.admit_known(record.clone())?;
        match admitted {
            Admitted::New => self.persist_member(&record).await?,
            Admitted::Replaced { evicted } => self.persist_replacement(&record, evicted).await?,
            Admitted::Known => {}
        }
        Ok(admitted)
    }

    /// Stores `record`, which took its ticket from `evicted`, and forgets `evicted`, in one write.
    pub async fn persist_replacement(
        &self,
        record: &MembershipRecord,
        evicted: libp2p::PeerId,
    ) -> anyhow::Result<()> {
        self.store
            .write(vec![
                WriteOp::Delete {
                    table: Table::Members,
                    key: evicted.to_bytes(),
                },
                WriteOp::Put {
                    table: Table::Members,
                    key: record.peer_id()?.to_bytes(),
                    value: record.to_bytes()?,
                },
            ])
            .await?;
        Ok(())
    }

    /// Completes a join after a member welcomed this node: stores the mesh, the own record and
    /// the receipt.
    pub async fn complete_join(&mut self, receipt: Option<AdmissionReceipt>) -> anyhow::Result<()> {
        if let Some(r) = receipt {
            self.receipts.push(r);
        }
        if self.is_member() {
            return self.persist_receipts().await;
        }
        self.directory.admit_known(self.own.clone())?;
        let charter = self.directory.charter().clone();
        self.persist_self(&charter).await?;
        self.membership = Membership::Member;
        self.ledger.record(
            "member.join",
            serde_json::json!({
                "mesh_id": self.mesh_id().to_string(),
                "node": self.peer_id.to_string(),
                "role": self.role().as_str(),
            }),
        );
        info!(mesh = %self.mesh_id(), node = %self.peer_id, "joined mesh");
        Ok(())
    }

    async fn persist_receipts(&mut self) -> anyhow::Result<()> {
        self.receipts.truncate(voike_protocol::wire::MAX_RECEIPTS);
        self.store
            .write(vec![WriteOp::Put {
                table: Table::Meta,
                key: META_RECEIPTS.to_vec(),
                value: postcard::to_stdvec(&self.receipts)?,
            }])
            .await?;
        Ok(())
    }

    /// Stores the last known addresses of `peer`.
    pub async fn persist_addrs(&self, peer: &PeerId, addrs: &[String]) -> anyhow::Result<()> {
        self.store
            .write(vec![WriteOp::Put {
                table: Table::PeerAddrs,
                key: peer.to_bytes(),
                value: postcard::to_stdvec(addrs)?,
            }])
            .await?;
        Ok(())
    }

    /// Last known addresses of every peer, as stored.
    pub fn stored_addrs(&self) -> anyhow::Result<Vec<(PeerId, Vec<String>)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Table::PeerAddrs)? {
            if let (Ok(p), Ok(a)) = (
                PeerId::from_bytes(&k),
                postcard::from_bytes::<Vec<String>>(&v),
            ) {
                out.push((p, a));
            }
        }
        Ok(out)
    }
}
