//! Signed Automerge documents and the rules that guard them.
//!
//! Each replicated document (`members`, `zones`, `endpoints`, `jobs`) is an Automerge document
//! whose actor ids are the authors' raw ed25519 public keys. Every change is signed by its author
//! over `(document, change hash)` and travels with that signature. A [`Replica`] admits a remote
//! change only after checking, in this order: size, encoding, that the actor is an ed25519 key of a
//! known member, the signature, and that every operation stays inside what the author may write
//! (judged on the document *as of the change's dependencies*, so every replica reaches the same
//! verdict whatever order changes arrive in). A change that fails is dropped and reported with a
//! [`Reject`] reason; nothing of it is merged.
//!
//! Documents are trees of maps holding scalars; lists, text, counters and marks are refused.
//! Write rights, by document:
//! - `members`: admins only.
//! - `zones`: top-level keys are zone ids; a change may create a zone that does not exist (as of
//!   its dependencies) and must then list its author in the zone's `owners` map; anything inside an
//!   existing zone needs its author in that zone's `owners`. Owners can add owners.
//! - `endpoints`, `jobs`: top-level keys are node ids; an author writes only under its own id.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, ExpandedChange, ObjType, ReadDoc,
    ScalarValue, Value,
    transaction::{Transactable, Transaction},
};
use libp2p_identity::{Keypair, PeerId, PublicKey, ed25519};
use serde::{Deserialize, Serialize};

use crate::authority::{Authority, Denied};
use crate::mesh::Role;
use crate::signing::{self, SigningError};

/// Domain of document change signatures.
pub const CHANGE_DOMAIN: &[u8] = b"voike/doc-change/v1\0";
/// Largest encoded change accepted from a peer.
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;
/// Most changes held back waiting for their dependencies.
pub const MAX_PENDING: usize = 100_000;
/// Most bytes of changes held back waiting for their dependencies (a peer sending 100,000
/// changes of 256 KiB each must not take 25 GiB of memory).
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Deepest object path accepted (zone / records / record / field).
pub const MAX_DEPTH: u16 = 6;

/// Length of a jobs epoch: jobs live in the document of the hour they were submitted in.
pub const JOB_EPOCH_MS: u64 = 3_600_000;

/// The replicated documents.
///
/// Grid jobs are split by submission hour into epoch documents ([`DocId::JobEpoch`]), so that
/// a finished hour can be dropped whole after the retention (see `docs/replication.md`,
/// "History, retention and roll-over"). [`DocId::Jobs`] is the single jobs document of earlier
/// versions: still loaded, served and finished, never written with new jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DocId {
    Members,
    Zones,
    Endpoints,
    Jobs,
    /// The jobs submitted in hour `E` (Unix milliseconds / [`JOB_EPOCH_MS`]).
    JobEpoch(u32),
}

impl DocId {
    /// The documents every node holds (epoch documents come and go).
    pub const ALL: [DocId; 4] = [DocId::Members, DocId::Zones, DocId::Endpoints, DocId::Jobs];

    /// The document's kind, for metric labels and logs (`jobs` for every jobs document).
    pub fn as_str(self) -> &'static str {
        match self {
            DocId::Members => "members",
            DocId::Zones => "zones",
            DocId::Endpoints => "endpoints",
            DocId::Jobs | DocId::JobEpoch(_) => "jobs",
        }
    }

    /// The document's full name: `as_str()`, or `jobs/<E>` for an epoch document (the form
    /// ledger entries and revocation cut-offs use).
    pub fn name(self) -> String {
        match self {
            DocId::JobEpoch(e) => format!("jobs/{e}"),
            d => d.as_str().to_string(),
        }
    }

    /// The document named `name` (see [`DocId::name`]).
    pub fn parse(name: &str) -> Option<DocId> {
        if let Some(e) = name.strip_prefix("jobs/") {
            return e.parse().ok().map(DocId::JobEpoch);
        }
        DocId::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Whether this is a jobs document (legacy or epoch).
    pub fn is_jobs(self) -> bool {
        matches!(self, DocId::Jobs | DocId::JobEpoch(_))
    }

    /// The epoch document of jobs submitted at `ms` (Unix milliseconds).
    pub fn job_epoch_at(ms: u64) -> DocId {
        DocId::JobEpoch(u32::try_from(ms / JOB_EPOCH_MS).unwrap_or(u32::MAX))
    }

    /// When the epoch ends (Unix milliseconds); `None` for other documents.
    pub fn epoch_end_ms(self) -> Option<u64> {
        match self {
            DocId::JobEpoch(e) => Some((u64::from(e) + 1) * JOB_EPOCH_MS),
            _ => None,
        }
    }

    /// One byte, for storage keys.
    pub fn tag(self) -> u8 {
        match self {
            DocId::Members => 0,
            DocId::Zones => 1,
            DocId::Endpoints => 2,
            DocId::Jobs => 3,
            DocId::JobEpoch(_) => 4,
        }
    }

    /// The storage key prefix of the document's rows: its tag, then the epoch (big-endian)
    /// for an epoch document.
    pub fn key_prefix(self) -> Vec<u8> {
        let mut k = vec![self.tag()];
        if let DocId::JobEpoch(e) = self {
            k.extend_from_slice(&e.to_be_bytes());
        }
        k
    }
}

impl std::fmt::Display for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// An encoded Automerge change with its author's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    pub doc: DocId,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct ChangeStatement<'a> {
    doc: DocId,
    hash: &'a [u8],
}

impl SignedChange {
    /// Signs `change` of `doc` with `key`.
    pub fn sign(key: &Keypair, doc: DocId, change: &Change) -> Result<Self, SigningError> {
        let hash = change.hash();
        let signature = signing::sign(
            key,
            CHANGE_DOMAIN,
            "document change",
            &ChangeStatement { doc, hash: &hash.0 },
        )?;
        // The uncompressed encoding: compressing every change cost far more memory than it
        // saved (measured with automerge 0.12: hundreds of MB of RSS after a few thousand).
        Ok(SignedChange {
            doc,
            bytes: change.raw_bytes().to_vec(),
            signature,
        })
    }
}

/// Why a change was refused; `as_str` is the metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("change is larger than {MAX_CHANGE_BYTES} bytes")]
    TooLarge,
    #[error("change does not decode: {0}")]
    Malformed(String),
    #[error("actor id is not an ed25519 public key")]
    BadActor,
    #[error("author {0} is not a known member")]
    UnknownAuthor(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("author {author} may not write {what}")]
    NotWriter { author: String, what: String },
    #[error("change breaks the document schema: {0}")]
    Schema(String),
    #[error("too many changes are waiting for their dependencies")]
    Backlog,
    #[error(
        "change is stamped {ahead_ms} ms ahead of this node's clock (at most {max_ms} allowed)"
    )]
    Future { ahead_ms: u64, max_ms: u64 },
    #[error(
        "author {author} was revoked; its change {seq} comes after the last one kept ({cutoff})"
    )]
    Revoked {
        author: String,
        seq: u64,
        cutoff: u64,
    },
    #[error("{0}")]
    NoGrant(String),
    #[error("change belongs to {0}, which this node closed after its retention")]
    Expired(String),
}

impl Reject {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Malformed(_) => "malformed",
            Reject::BadActor => "bad_actor",
            Reject::UnknownAuthor(_) => "unknown_author",
            Reject::BadSignature => "bad_signature",
            Reject::NotWriter { .. } => "not_writer",
            Reject::Schema(_) => "schema",
            Reject::Backlog => "backlog",
            Reject::Future { .. } => "future",
            Reject::Revoked { .. } => "revoked",
            Reject::NoGrant(_) => "no_grant",
            Reject::Expired(_) => "expired",
        }
    }

    /// Whether the same change may be accepted later (the author may become known).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Reject::UnknownAuthor(_) | Reject::Backlog | Reject::Future { .. } | Reject::NoGrant(_)
        )
    }

    /// Whether every copy of a change with this hash would be refused the same way: true for
    /// verdicts on the change's content (which its hash covers), false for verdicts on what
    /// travels beside it (the signature) or on this node's situation.
    pub fn holds_for_hash(&self) -> bool {
        matches!(
            self,
            Reject::NotWriter { .. }
                | Reject::Schema(_)
                | Reject::Revoked { .. }
                | Reject::Expired(_)
        )
    }
}

/// Who is a member, and with which role.
pub trait Roster {
    fn role(&self, peer: &PeerId) -> Option<Role>;
}

impl Roster for HashMap<PeerId, Role> {
    fn role(&self, peer: &PeerId) -> Option<Role> {
        self.get(peer).copied()
    }
}

/// The raw ed25519 key of a libp2p keypair: the Automerge actor id of its node.
pub fn actor_of(key: &PublicKey) -> Option<ActorId> {
    key.clone()
        .try_into_ed25519()
        .ok()
        .map(|k| ActorId::from(k.to_bytes()))
}

/// The peer id behind an actor id.
pub fn peer_of_actor(actor: &ActorId) -> Option<(PublicKey, PeerId)> {
    let key = ed25519::PublicKey::try_from_bytes(actor.to_bytes()).ok()?;
    let key = PublicKey::from(key);
    let peer = key.to_peer_id();
    Some((key, peer))
}

/// The Automerge actor of the node `peer` (its raw ed25519 key, when the peer id embeds it).
pub fn actor_of_peer(peer: &PeerId) -> Option<ActorId> {
    let key = PublicKey::try_decode_protobuf(&peer_key_bytes(peer)?).ok()?;
    actor_of(&key)
}

/// The protobuf-encoded public key inlined in an identity-multihash peer id.
fn peer_key_bytes(peer: &PeerId) -> Option<Vec<u8>> {
    let mh = multihash_bytes(peer);
    // identity multihash: code 0x00, then a varint length, then the key.
    let (&code, rest) = mh.split_first()?;
    if code != 0 {
        return None;
    }
    let (&len, key) = rest.split_first()?;
    (usize::from(len) == key.len()).then(|| key.to_vec())
}

fn multihash_bytes(peer: &PeerId) -> Vec<u8> {
    peer.to_bytes()
}

/// An object id as Automerge spells it in ops: (counter, actor).
type ObjKey = (u64, ActorId);

#[derive(Clone, Debug)]
struct ObjInfo {
    /// Depth below the root (a top-level object is 1).
    depth: u16,
    /// The first keys of its path from the root (at most [`TOUCH_DEPTH`]; the first is the
    /// top-level key it lives under). Shared with its siblings and children.
    path: std::sync::Arc<[std::sync::Arc<str>]>,
    /// The top-level object it lives in (itself at depth 1).
    top_obj: ObjKey,
}

/// How many keys of a path [`Replica::take_touched`] reports (for zones: zone, `records`,
/// record id).
pub const TOUCH_DEPTH: usize = 3;

impl ObjInfo {
    fn top(&self) -> &str {
        &self.path[0]
    }

    /// The path of a child object made under `key`.
    fn child_path(&self, key: &str) -> std::sync::Arc<[std::sync::Arc<str>]> {
        if self.path.len() >= TOUCH_DEPTH {
            return self.path.clone();
        }
        let mut p: Vec<std::sync::Arc<str>> = self.path.to_vec();
        p.push(key.into());
        p.into()
    }
}

/// What happened to a batch of received changes.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Changes merged, in the order they were applied (store these).
    pub applied: Vec<SignedChange>,
    /// Changes refused, with their hash (when it could be read) and reason.
    pub rejected: Vec<(Option<ChangeHash>, Reject)>,
    /// Changes already held.
    pub duplicates: usize,
    /// Changes still waiting for dependencies.
    pub pending: usize,
}

/// Errors of local changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    #[error("document change failed: {0}")]
    Automerge(#[from] AutomergeError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("this node's key is not ed25519")]
    KeyType,
    #[error("{0}")]
    Invalid(String),
}

/// What rebuilding a document from the store did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Stored changes applied.
    pub applied: usize,
    /// Stored changes that could not be applied, in stored order.
    pub unapplied: Vec<Unapplied>,
}

/// A stored change that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unapplied {
    /// Its place among the document's stored changes.
    pub index: usize,
    pub hash: Option<ChangeHash>,
    /// The author's actor id (hex) and sequence number.
    pub actor: Option<String>,
    pub seq: Option<u64>,
    pub reason: UnappliedReason,
}

/// Why a stored change could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnappliedReason {
    /// The bytes do not decode as a change.
    Undecodable(String),
    /// Changes it depends on are not stored (it waits for them).
    MissingDeps(Vec<ChangeHash>),
    /// Another applied change already holds its author's sequence number.
    SeqTaken { by: ChangeHash },
    /// Left out on purpose (for example stamped far ahead of the clock).
    Excluded(String),
}

impl UnappliedReason {
    /// A short label (for metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            UnappliedReason::Undecodable(_) => "undecodable",
            UnappliedReason::MissingDeps(_) => "missing_dependencies",
            UnappliedReason::SeqTaken { .. } => "sequence_taken",
            UnappliedReason::Excluded(_) => "excluded",
        }
    }
}

impl std::fmt::Display for UnappliedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnappliedReason::Undecodable(e) => write!(f, "does not decode: {e}"),
            UnappliedReason::MissingDeps(deps) => {
                write!(f, "depends on changes that are not stored:")?;
                for d in deps {
                    write!(f, " {d}")?;
                }
                Ok(())
            }
            UnappliedReason::SeqTaken { by } => {
                write!(f, "its author's sequence number is held by change {by}")
            }
            UnappliedReason::Excluded(why) => write!(f, "left out: {why}"),
        }
    }
}

/// What a peer lacks, as of its heads and ours (see [`Replica::changes_since`]).
#[derive(Debug)]
struct SinceCache {
    theirs: Vec<ChangeHash>,
    ours: Vec<ChangeHash>,
    list: Vec<ChangeHash>,
}

/// One replicated document with the signatures of all its changes.
#[derive(Debug)]
pub struct Replica {
    id: DocId,
    doc: Automerge,
    sigs: HashMap<ChangeHash, Vec<u8>>,
    objects: HashMap<ObjKey, ObjInfo>,
    pending: HashMap<ChangeHash, (SignedChange, Change)>,
    /// The change list of the last `changes_since` walk (see there).
    since_cache: std::sync::Mutex<Option<SinceCache>>,
    /// Encoded bytes of the changes in `pending`, and their bound.
    pending_bytes: usize,
    max_pending_bytes: usize,
    /// Stamp (Unix ms) of the next local change; see [`Replica::set_time`].
    time_ms: i64,
    /// The namespace rules and revocations every change is judged with.
    authority: std::sync::Arc<Authority>,
    /// Where the changes registered since the last [`Replica::take_touched`] wrote, when
    /// tracked (see [`Replica::track_touched`]).
    touched: Option<BTreeSet<Vec<String>>>,
    /// The zones document's record ids by name (see [`NameIndex`]).
    names: Option<NameIndex>,
}

/// Record ids by zone and name in the zones document, kept as changes are registered, so that
/// the rules about what may share a name (CNAME) read the records at one name instead of the
/// whole zone. A hint: a record rewritten concurrently, or in a zone that lost a claim, may
/// leave an id listed under a name it no longer has, so readers check each record they read
/// (see [`crate::zones::records_at`]).
#[derive(Debug, Default)]
struct NameIndex {
    /// (zone, name) → record ids.
    by_name: HashMap<(Shared, Box<str>), Vec<Shared>>,
    /// (zone, record id) → name.
    name_of: HashMap<(Shared, Shared), Box<str>>,
}

/// A key shared between objects' paths and the name index.
type Shared = std::sync::Arc<str>;

impl NameIndex {
    fn remove(&mut self, zone: &std::sync::Arc<str>, id: &std::sync::Arc<str>) {
        if let Some(old) = self.name_of.remove(&(zone.clone(), id.clone())) {
            let key = (zone.clone(), old);
            if let Some(ids) = self.by_name.get_mut(&key) {
                ids.retain(|x| x != id);
                if ids.is_empty() {
                    self.by_name.remove(&key);
                }
            }
        }
    }

    fn set(&mut self, zone: &std::sync::Arc<str>, id: &std::sync::Arc<str>, name: &str) {
        self.remove(zone, id);
        self.name_of.insert((zone.clone(), id.clone()), name.into());
        self.by_name
            .entry((zone.clone(), name.into()))
            .or_default()
            .push(id.clone());
    }
}

impl Replica {
    pub fn new(id: DocId) -> Self {
        Replica {
            id,
            doc: Automerge::new(),
            sigs: HashMap::new(),
            objects: HashMap::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            max_pending_bytes: MAX_PENDING_BYTES,
            since_cache: std::sync::Mutex::new(None),
            time_ms: 0,
            authority: Default::default(),
            touched: None,
            names: (id == DocId::Zones).then(NameIndex::default),
        }
    }

    /// The ids of the records of zone `zone` that may be at `name` (a hint: check each).
    pub fn record_ids_at(&self, zone: &str, name: &str) -> Vec<String> {
        let Some(ix) = &self.names else {
            return Vec::new();
        };
        ix.by_name
            .get(&(std::sync::Arc::<str>::from(zone), name.into()))
            .map(|ids| ids.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default()
    }

    /// From now on, records where each merged or local change writes: the first
    /// [`TOUCH_DEPTH`] keys of the path of every key it puts or deletes. A reader that keeps a
    /// view of the document (the DNS snapshot) updates only what changed.
    pub fn track_touched(&mut self) {
        self.touched.get_or_insert_with(BTreeSet::new);
    }

    /// The paths written since the last call (see [`Replica::track_touched`]), or `None` when
    /// they were not tracked (tracking starts now): the reader must then read everything.
    pub fn take_touched(&mut self) -> Option<BTreeSet<Vec<String>>> {
        match &mut self.touched {
            Some(t) => Some(std::mem::take(t)),
            None => {
                self.track_touched();
                None
            }
        }
    }

    /// Sets the domain no zone may be created in (the mesh domain); see
    /// [`crate::authority::may_create_zone`].
    pub fn set_reserved_domain(&mut self, domain: Option<String>) {
        let mut a = (*self.authority).clone();
        a.mesh_domain = domain;
        self.authority = std::sync::Arc::new(a);
    }

    /// Sets the grants and revocations (read from the members document) that changes are
    /// judged with from now on.
    pub fn set_authority(&mut self, authority: std::sync::Arc<Authority>) {
        self.authority = authority;
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The document read with this replica's authority (see [`crate::zones::ZoneDoc`]).
    pub fn ranked(&self) -> crate::zones::Ranked<'_> {
        crate::zones::Ranked {
            doc: &self.doc,
            auth: &self.authority,
        }
    }

    /// Sets the time (Unix milliseconds, this node's HLC) that the next local changes carry:
    /// receivers refuse a change stamped too far ahead of their own clock.
    pub fn set_time(&mut self, time_ms: u64) {
        self.time_ms = i64::try_from(time_ms).unwrap_or(i64::MAX);
    }

    pub fn id(&self) -> DocId {
        self.id
    }

    /// Read access to the merged document.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// Whether the change is held (merged).
    pub fn has(&self, hash: &ChangeHash) -> bool {
        self.sigs.contains_key(hash)
    }

    /// Loads changes read back from this node's own store, in the order they were stored. They
    /// were checked when they arrived, so only their encoding is checked again.
    ///
    /// A stored change is applied once every change it depends on is applied (whatever the
    /// stored order), and never when it claims an author's sequence number that an applied change
    /// already holds. What cannot be applied is reported, never silently dropped: each such
    /// change is listed with its reason, and the ones waiting for dependencies stay pending, so
    /// they are merged if their dependencies ever arrive from a peer. Nothing unapplied enters
    /// Automerge's own queue, where it could later collide with this node's new changes.
    pub fn load(&mut self, changes: Vec<SignedChange>) -> Result<LoadReport, DocError> {
        self.load_excluding(changes, |_| None)
    }

    /// [`Replica::load`], leaving out every change for which `exclude` gives a reason (its
    /// dependants wait too). Left-out changes are reported and kept pending like the others.
    pub fn load_excluding(
        &mut self,
        changes: Vec<SignedChange>,
        exclude: impl Fn(&Change) -> Option<String>,
    ) -> Result<LoadReport, DocError> {
        let mut report = LoadReport::default();
        let mut decoded: Vec<Option<(SignedChange, Change)>> = Vec::with_capacity(changes.len());
        let mut seen: HashSet<ChangeHash> = HashSet::new();
        for (index, sc) in changes.into_iter().enumerate() {
            match Change::try_from(&sc.bytes[..]) {
                Ok(change) => {
                    if self.sigs.contains_key(&change.hash()) || !seen.insert(change.hash()) {
                        decoded.push(None);
                        continue;
                    }
                    if let Some(why) = exclude(&change) {
                        report.unapplied.push(Unapplied {
                            index,
                            hash: Some(change.hash()),
                            actor: Some(change.actor_id().to_hex_string()),
                            seq: Some(change.seq()),
                            reason: UnappliedReason::Excluded(why),
                        });
                        if self.has_room(&sc) {
                            self.pend(change.hash(), sc, change);
                        }
                        decoded.push(None);
                        continue;
                    }
                    decoded.push(Some((sc, change)));
                }
                Err(e) => {
                    report.unapplied.push(Unapplied {
                        index,
                        hash: None,
                        actor: None,
                        seq: None,
                        reason: UnappliedReason::Undecodable(e.to_string()),
                    });
                    decoded.push(None);
                }
            }
        }
        // Decide the order: a change goes in once its dependencies are in, and an author's
        // sequence numbers are taken once.
        let mut present: HashSet<ChangeHash> = self.sigs.keys().copied().collect();
        let mut taken: HashMap<(ActorId, u64), ChangeHash> = HashMap::new();
        for h in self.sigs.keys() {
            if let Some(c) = self.doc.get_change_by_hash(h) {
                taken.insert((c.actor_id().clone(), c.seq()), *h);
            }
        }
        let mut waiting: HashMap<ChangeHash, Vec<usize>> = HashMap::new();
        let mut missing_count: HashMap<usize, usize> = HashMap::new();
        let mut order: Vec<usize> = Vec::new();
        let mut conflicts: Vec<(usize, ChangeHash)> = Vec::new();
        let mut ready: Vec<usize> = Vec::new();
        for idx in 0..decoded.len() {
            let Some((_, change)) = &decoded[idx] else {
                continue;
            };
            let missing: Vec<ChangeHash> = change
                .deps()
                .iter()
                .filter(|d| !present.contains(d))
                .copied()
                .collect();
            if !missing.is_empty() {
                missing_count.insert(idx, missing.len());
                for d in missing {
                    waiting.entry(d).or_default().push(idx);
                }
                continue;
            }
            ready.push(idx);
            while let Some(i) = ready.pop() {
                let Some((_, c)) = &decoded[i] else { continue };
                let key = (c.actor_id().clone(), c.seq());
                if let Some(other) = taken.get(&key) {
                    conflicts.push((i, *other));
                    continue;
                }
                taken.insert(key, c.hash());
                present.insert(c.hash());
                order.push(i);
                if let Some(ws) = waiting.remove(&c.hash()) {
                    for w in ws {
                        if let Some(n) = missing_count.get_mut(&w) {
                            *n -= 1;
                            if *n == 0 {
                                missing_count.remove(&w);
                                ready.push(w);
                            }
                        }
                    }
                }
            }
        }
        let batch: Vec<Change> = order
            .iter()
            .filter_map(|i| decoded[*i].as_ref().map(|(_, c)| c.clone()))
            .collect();
        if let Err(e) = self.doc.apply_changes(batch) {
            return Err(DocError::Invalid(format!(
                "stored changes of {} do not apply: {e}",
                self.id.as_str()
            )));
        }
        for i in &order {
            if let Some((sc, change)) = decoded[*i].take() {
                self.register(&change);
                self.sigs.insert(change.hash(), sc.signature);
                report.applied += 1;
            }
        }
        for (i, other) in conflicts {
            if let Some((_, c)) = decoded[i].take() {
                report.unapplied.push(Unapplied {
                    index: i,
                    hash: Some(c.hash()),
                    actor: Some(c.actor_id().to_hex_string()),
                    seq: Some(c.seq()),
                    reason: UnappliedReason::SeqTaken { by: other },
                });
            }
        }
        // Whatever is left waits for a dependency that is not stored.
        for (i, slot) in decoded.iter_mut().enumerate() {
            let Some((sc, c)) = slot.take() else { continue };
            let missing: Vec<ChangeHash> = c
                .deps()
                .iter()
                .filter(|d| !self.sigs.contains_key(d))
                .copied()
                .collect();
            report.unapplied.push(Unapplied {
                index: i,
                hash: Some(c.hash()),
                actor: Some(c.actor_id().to_hex_string()),
                seq: Some(c.seq()),
                reason: UnappliedReason::MissingDeps(missing),
            });
            if self.has_room(&sc) {
                self.pend(c.hash(), sc, c);
            }
        }
        report.unapplied.sort_by_key(|u| u.index);
        Ok(report)
    }

    /// Stored changes by `actor` still waiting for dependencies (see [`Replica::load`]).
    pub fn pending_of(&self, actor: &ActorId) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .pending
            .values()
            .filter(|(_, c)| c.actor_id() == actor)
            .map(|(_, c)| c.clone())
            .collect();
        out.sort_by_key(|c| c.seq());
        out
    }

    /// Forgets a pending change (once its content was written again by [`Replica::replay`]).
    pub fn drop_pending(&mut self, hash: &ChangeHash) {
        self.unpend(hash);
    }

    /// Writes the content of `orphan` — a change of this node whose dependencies are lost, or
    /// that was left out at load — again as a new local change: its values are put into the same
    /// objects (those it creates are created anew), and `hlc` values become `restamp` when given.
    /// Operations on objects this replica does not hold are skipped and counted. Returns the new
    /// change (none when nothing could be written) and the skipped count.
    pub fn replay(
        &mut self,
        key: &Keypair,
        orphan: &Change,
        restamp: Option<u64>,
    ) -> Result<(Option<SignedChange>, usize), DocError> {
        let expanded = orphan.decode();
        let start = expanded.start_op.get();
        let actor = expanded.actor_id.clone();
        // Objects the orphan writes into that this replica holds.
        let mut held: HashMap<ObjKey, automerge::ObjId> = HashMap::new();
        for op in &expanded.operations {
            if let automerge::legacy::ObjectId::Id(id) = &op.obj
                && let Ok(o) = self.doc.import_obj(&format!("{}@{}", id.0, id.1))
                && self.doc.object_type(&o).is_ok()
            {
                held.insert((id.0, id.1.clone()), o);
            }
        }
        let mut skipped = 0usize;
        let change = self.change(key, |tx| {
            let mut made: HashMap<ObjKey, automerge::ObjId> = HashMap::new();
            for (i, op) in expanded.operations.iter().enumerate() {
                let automerge::legacy::Key::Map(k) = &op.key else {
                    skipped += 1;
                    continue;
                };
                let obj = match &op.obj {
                    automerge::legacy::ObjectId::Root => Some(automerge::ROOT),
                    automerge::legacy::ObjectId::Id(id) => {
                        let key = (id.0, id.1.clone());
                        made.get(&key).or_else(|| held.get(&key)).cloned()
                    }
                };
                let Some(obj) = obj else {
                    skipped += 1;
                    continue;
                };
                match &op.action {
                    automerge::legacy::OpType::Make(ObjType::Map) => {
                        let new = tx.put_object(&obj, k.as_str(), ObjType::Map)?;
                        made.insert((start + i as u64, actor.clone()), new);
                    }
                    automerge::legacy::OpType::Put(v) => match (restamp, v) {
                        // Values carry their writer's HLC under `hlc`: a replayed value is
                        // written now, so it carries the new stamp.
                        (Some(stamp), ScalarValue::Uint(_)) if k == "hlc" => {
                            tx.put(&obj, k.as_str(), stamp)?
                        }
                        _ => tx.put(&obj, k.as_str(), v.clone())?,
                    },
                    automerge::legacy::OpType::Delete => {
                        if tx.get(&obj, k.as_str())?.is_some() {
                            tx.delete(&obj, k.as_str())?;
                        }
                    }
                    _ => skipped += 1,
                }
            }
            Ok(())
        })?;
        Ok((change, skipped))
    }

    /// Whether a change waits for dependencies this replica does not hold.
    /// The highest sequence number of `peer`'s changes in this document (0 when it has none).
    pub fn max_seq_of(&self, peer: &PeerId) -> u64 {
        let Some(actor) = actor_of_peer(peer) else {
            return 0;
        };
        self.doc
            .get_changes(&[])
            .into_iter()
            .filter(|c| c.actor_id() == &actor)
            .map(|c| c.seq())
            .max()
            .unwrap_or(0)
    }

    /// Whether one more change may wait for its dependencies (by count and by bytes).
    fn has_room(&self, sc: &SignedChange) -> bool {
        self.pending.len() < MAX_PENDING
            && self.pending_bytes + sc.bytes.len() + sc.signature.len() <= self.max_pending_bytes
    }

    fn pend(&mut self, hash: ChangeHash, sc: SignedChange, change: Change) {
        let size = sc.bytes.len() + sc.signature.len();
        if let Some((old, _)) = self.pending.insert(hash, (sc, change)) {
            self.pending_bytes -= old.bytes.len() + old.signature.len();
        }
        self.pending_bytes += size;
    }

    fn unpend(&mut self, hash: &ChangeHash) -> Option<(SignedChange, Change)> {
        let out = self.pending.remove(hash);
        if let Some((sc, _)) = &out {
            self.pending_bytes -= sc.bytes.len() + sc.signature.len();
        }
        out
    }

    /// Bytes of changes waiting for their dependencies.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn is_pending(&self, hash: &ChangeHash) -> bool {
        self.pending.contains_key(hash)
    }

    /// Makes a local change with `key` as author; returns the signed change, or `None` when `f`
    /// changed nothing. `f`'s error leaves the document untouched.
    pub fn change<F>(&mut self, key: &Keypair, f: F) -> Result<Option<SignedChange>, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), DocError>,
    {
        let actor = actor_of(&key.public()).ok_or(DocError::KeyType)?;
        if self.doc.get_actor() != &actor {
            self.doc.set_actor(actor);
        }
        let mut tx = self.doc.transaction();
        if let Err(e) = f(&mut tx) {
            tx.rollback();
            return Err(e);
        }
        let (hash, _) = tx
            .commit_with(automerge::transaction::CommitOptions::default().with_time(self.time_ms));
        let Some(hash) = hash else {
            return Ok(None);
        };
        let change = self
            .doc
            .get_last_local_change()
            .filter(|c| c.hash() == hash)
            .ok_or_else(|| DocError::Invalid("committed change is missing".into()))?;
        let signed = SignedChange::sign(key, self.id, &change)?;
        self.register(&change);
        self.sigs.insert(hash, signed.signature.clone());
        Ok(Some(signed))
    }

    /// Checks and merges received changes (any order, duplicates allowed). Changes whose
    /// dependencies have not arrived wait (up to [`MAX_PENDING`]).
    pub fn receive(
        &mut self,
        changes: Vec<SignedChange>,
        roster: &impl Roster,
    ) -> Result<Outcome, DocError> {
        self.receive_at(changes, roster, 0, u64::MAX)
    }

    /// [`Replica::receive`], refusing (for now: [`Reject::Future`] is transient) every change
    /// stamped more than `max_future_ms` ahead of `now_ms`.
    pub fn receive_at(
        &mut self,
        changes: Vec<SignedChange>,
        roster: &impl Roster,
        now_ms: u64,
        max_future_ms: u64,
    ) -> Result<Outcome, DocError> {
        let mut out = Outcome::default();
        if let Some(end) = self.id.epoch_end_ms()
            && end - JOB_EPOCH_MS > now_ms.saturating_add(max_future_ms)
        {
            // An epoch that has not begun yet, even allowing for the skew bound: nothing of
            // it is taken (a member must not open documents for far-away hours).
            let ahead_ms = end - JOB_EPOCH_MS - now_ms;
            for sc in changes {
                let hash = Change::try_from(&sc.bytes[..]).ok().map(|c| c.hash());
                out.rejected.push((
                    hash,
                    Reject::Future {
                        ahead_ms,
                        max_ms: max_future_ms,
                    },
                ));
            }
            return Ok(out);
        }
        let mut ready = Vec::new();
        for sc in changes {
            match self.precheck(sc, roster, now_ms, max_future_ms) {
                Ok(Some((sc, change))) => ready.push((sc, change)),
                Ok(None) => out.duplicates += 1,
                Err(e) => out.rejected.push(e),
            }
        }
        // Changes usually arrive in causal order: merge each as soon as its dependencies are in,
        // and park the rest.
        for (sc, change) in ready {
            let hash = change.hash();
            if self.pending.contains_key(&hash) || self.sigs.contains_key(&hash) {
                out.duplicates += 1;
                continue;
            }
            if change.deps().iter().all(|d| self.sigs.contains_key(d)) {
                self.merge(sc, change, roster, &mut out)?;
                continue;
            }
            if !self.has_room(&sc) {
                out.rejected.push((Some(hash), Reject::Backlog));
                continue;
            }
            self.pend(hash, sc, change);
        }
        self.drain_pending(roster, &mut out)?;
        out.pending = self.pending.len();
        Ok(out)
    }

    /// Size, encoding, author and signature: everything that does not need the dependencies.
    #[allow(clippy::type_complexity)]
    fn precheck(
        &self,
        sc: SignedChange,
        roster: &impl Roster,
        now_ms: u64,
        max_future_ms: u64,
    ) -> Result<Option<(SignedChange, Change)>, (Option<ChangeHash>, Reject)> {
        if sc.bytes.len() > MAX_CHANGE_BYTES {
            return Err((None, Reject::TooLarge));
        }
        if sc.doc != self.id {
            return Err((
                None,
                Reject::Schema(format!("change for {}", sc.doc.as_str())),
            ));
        }
        let change = Change::try_from(&sc.bytes[..])
            .map_err(|e| (None, Reject::Malformed(e.to_string())))?;
        let hash = change.hash();
        if self.sigs.contains_key(&hash) {
            return Ok(None);
        }
        let fail = |r| (Some(hash), r);
        let (key, peer) = peer_of_actor(change.actor_id()).ok_or(fail(Reject::BadActor))?;
        if roster.role(&peer).is_none() {
            return Err(fail(Reject::UnknownAuthor(peer.to_string())));
        }
        let statement = ChangeStatement {
            doc: self.id,
            hash: &hash.0,
        };
        match signing::verify(
            &key,
            CHANGE_DOMAIN,
            "document change",
            &statement,
            &sc.signature,
        ) {
            Ok(true) => {}
            _ => return Err(fail(Reject::BadSignature)),
        }
        let stamp = u64::try_from(change.timestamp()).unwrap_or(0);
        let ahead_ms = stamp.saturating_sub(now_ms);
        if ahead_ms > max_future_ms {
            return Err(fail(Reject::Future {
                ahead_ms,
                max_ms: max_future_ms,
            }));
        }
        Ok(Some((sc, change)))
    }

    fn drain_pending(&mut self, roster: &impl Roster, out: &mut Outcome) -> Result<(), DocError> {
        loop {
            let mut ready: Vec<ChangeHash> = self
                .pending
                .iter()
                .filter(|(_, (_, c))| c.deps().iter().all(|d| self.sigs.contains_key(d)))
                .map(|(h, _)| *h)
                .collect();
            if ready.is_empty() {
                break;
            }
            // A fixed order, so that replicas behave the same; every dependency is merged
            // already, so the order among ready changes does not change the result.
            ready.sort();
            for hash in ready {
                if let Some((sc, change)) = self.unpend(&hash) {
                    self.merge(sc, change, roster, out)?;
                }
            }
        }
        // A change refused for good can never be merged, so neither can its dependants: drop
        // them too. (Dependants of a change refused for now keep waiting.)
        let mut rejected: HashSet<ChangeHash> = out
            .rejected
            .iter()
            .filter(|(_, r)| !r.is_transient())
            .filter_map(|(h, _)| *h)
            .collect();
        while !rejected.is_empty() {
            let doomed: Vec<ChangeHash> = self
                .pending
                .iter()
                .filter(|(_, (_, c))| c.deps().iter().any(|d| rejected.contains(d)))
                .map(|(h, _)| *h)
                .collect();
            rejected.clear();
            for h in doomed {
                self.unpend(&h);
                rejected.insert(h);
                out.rejected.push((
                    Some(h),
                    Reject::Schema("depends on a rejected change".into()),
                ));
            }
        }
        Ok(())
    }

    fn merge(
        &mut self,
        sc: SignedChange,
        change: Change,
        roster: &impl Roster,
        out: &mut Outcome,
    ) -> Result<(), DocError> {
        let hash = change.hash();
        let expanded = change.decode();
        if let Err(r) = self.authorize(&change, &expanded, roster) {
            out.rejected.push((Some(hash), r));
            return Ok(());
        }
        if let Err(e) = self.doc.apply_changes([change]) {
            // E.g. an author that signed two different changes with one sequence number.
            out.rejected
                .push((Some(hash), Reject::Malformed(e.to_string())));
            return Ok(());
        }
        self.register_expanded(&expanded);
        self.sigs.insert(hash, sc.signature.clone());
        out.applied.push(sc);
        Ok(())
    }

    /// Checks every operation of `change` against the author's rights as of its dependencies.
    fn authorize(
        &self,
        change: &Change,
        expanded: &ExpandedChange,
        roster: &impl Roster,
    ) -> Result<(), Reject> {
        let actor = change.actor_id();
        let (_, peer) = peer_of_actor(actor).ok_or(Reject::BadActor)?;
        let role = roster
            .role(&peer)
            .ok_or_else(|| Reject::UnknownAuthor(peer.to_string()))?;
        let author = peer.to_string();
        let not_writer = |what: String| Reject::NotWriter {
            author: author.clone(),
            what,
        };
        if let Some(cutoff) = self.authority.cutoff(&author, &self.id.name())
            && change.seq() > cutoff
        {
            return Err(Reject::Revoked {
                author,
                seq: change.seq(),
                cutoff,
            });
        }
        if self.id == DocId::Members && role != Role::Admin {
            return Err(not_writer("the members document".into()));
        }
        let is_admin = role == Role::Admin;
        let deps = change.deps();
        // The zones as of the dependencies, read once when a zone's domain is written.
        let mut zones_then: Option<Vec<crate::zones::Zone>> = None;
        let start = expanded.start_op.get();
        let mut created: HashMap<ObjKey, ObjInfo> = HashMap::new();
        // Zones this change may write into (created here, or owned as of the dependencies).
        let mut allowed_zones: HashSet<ObjKey> = HashSet::new();
        for (i, op) in expanded.operations.iter().enumerate() {
            let op_id: ObjKey = (start + i as u64, actor.clone());
            let automerge::legacy::Key::Map(key) = &op.key else {
                return Err(Reject::Schema("only maps are allowed".into()));
            };
            if op.insert {
                return Err(Reject::Schema("only maps are allowed".into()));
            }
            let parent: Option<ObjInfo> = match &op.obj {
                automerge::legacy::ObjectId::Root => None,
                automerge::legacy::ObjectId::Id(id) => {
                    let k = (id.0, id.1.clone());
                    let info = created
                        .get(&k)
                        .or_else(|| self.objects.get(&k))
                        .ok_or_else(|| {
                            Reject::Schema(format!("unknown object {}@{}", id.0, id.1))
                        })?;
                    Some(info.clone())
                }
            };
            match &op.action {
                automerge::legacy::OpType::Make(ObjType::Map) => {
                    let depth = parent.as_ref().map_or(1, |p| p.depth + 1);
                    if depth > MAX_DEPTH {
                        return Err(Reject::Schema("objects nest too deep".into()));
                    }
                    let info = match &parent {
                        None => ObjInfo {
                            depth,
                            path: vec![std::sync::Arc::<str>::from(key.as_str())].into(),
                            top_obj: op_id.clone(),
                        },
                        Some(p) => ObjInfo {
                            depth,
                            path: p.child_path(key),
                            top_obj: p.top_obj.clone(),
                        },
                    };
                    created.insert(op_id.clone(), info);
                }
                automerge::legacy::OpType::Put(v) => {
                    if parent.is_none() {
                        return Err(Reject::Schema("top-level values must be maps".into()));
                    }
                    if matches!(v, ScalarValue::Counter(_)) {
                        return Err(Reject::Schema("counters are not allowed".into()));
                    }
                    // A zone's domain decides which names it answers for: the namespace rules
                    // hold for every writer, whatever its client, judged with the zones as of
                    // the change's dependencies and the grants this replica holds.
                    if self.id == DocId::Zones
                        && parent.as_ref().is_some_and(|p| p.depth == 1)
                        && key.as_str() == "domain"
                    {
                        let ScalarValue::Str(domain) = v else {
                            return Err(Reject::Schema("a zone's domain must be a string".into()));
                        };
                        let zones = zones_then
                            .get_or_insert_with(|| crate::zones::zones_at(&self.ranked(), deps));
                        let id = parent.as_ref().map_or("", |p| p.top());
                        crate::authority::may_create_zone(
                            &self.authority,
                            zones,
                            id,
                            domain,
                            &author,
                            is_admin,
                        )
                        .map_err(|d| match d {
                            Denied::Forbidden(m) => not_writer(m),
                            Denied::NoGrant(m) => Reject::NoGrant(m),
                        })?;
                    }
                }
                automerge::legacy::OpType::Delete => {}
                _ => return Err(Reject::Schema("only maps of scalars are allowed".into())),
            }
            let top = parent.as_ref().map_or(key.as_str(), |p| p.top());
            match self.id {
                DocId::Members => {}
                DocId::Endpoints | DocId::Jobs | DocId::JobEpoch(_) => {
                    if top != author {
                        return Err(not_writer(format!("entries of {top}")));
                    }
                }
                DocId::Zones => match &parent {
                    None => {
                        // Creating, replacing or deleting a zone: allowed when no zone of that
                        // id exists as of the dependencies, or when the author owns it.
                        let existing = self
                            .doc
                            .get_all_at(automerge::ROOT, key.as_str(), deps)
                            .map_err(|e| Reject::Schema(e.to_string()))?;
                        for (_, obj) in existing {
                            if !is_admin && !self.owns_at(&obj, &author, deps) {
                                return Err(not_writer(format!("zone {key}")));
                            }
                        }
                        if let automerge::legacy::OpType::Make(_) = op.action {
                            allowed_zones.insert(op_id.clone());
                        }
                    }
                    Some(p) => {
                        if !allowed_zones.contains(&p.top_obj) {
                            if created.contains_key(&p.top_obj) {
                                allowed_zones.insert(p.top_obj.clone());
                            } else {
                                let zone = self
                                    .doc
                                    .import_obj(&format!("{}@{}", p.top_obj.0, p.top_obj.1))
                                    .map_err(|e| Reject::Schema(e.to_string()))?;
                                if !is_admin && !self.owns_at(&zone, &author, deps) {
                                    return Err(not_writer(format!("zone {}", p.top())));
                                }
                                allowed_zones.insert(p.top_obj.clone());
                            }
                        }
                    }
                },
            }
        }
        if self.id == DocId::Zones {
            // A zone created here must name its creator as an owner.
            for (obj, info) in &created {
                if info.depth == 1 && !self.created_with_owner(expanded, obj, &author) {
                    return Err(Reject::Schema(format!(
                        "zone {} must list its creator in owners",
                        info.top()
                    )));
                }
            }
        }
        Ok(())
    }

    fn owns_at(&self, zone: &automerge::ObjId, author: &str, heads: &[ChangeHash]) -> bool {
        let Ok(Some((Value::Object(ObjType::Map), owners))) =
            self.doc.get_at(zone, "owners", heads)
        else {
            return false;
        };
        matches!(
            self.doc.get_at(&owners, author, heads),
            Ok(Some((Value::Scalar(v), _))) if matches!(v.as_ref(), ScalarValue::Boolean(true))
        )
    }

    /// Whether `expanded` puts `owners[author] = true` into the zone object `zone` it creates.
    fn created_with_owner(&self, expanded: &ExpandedChange, zone: &ObjKey, author: &str) -> bool {
        let start = expanded.start_op.get();
        let actor = &zone.1;
        let mut owners_obj = None;
        for (i, op) in expanded.operations.iter().enumerate() {
            let id = (start + i as u64, actor.clone());
            let in_obj = |o: &ObjKey| matches!(&op.obj, automerge::legacy::ObjectId::Id(x) if x.0 == o.0 && x.1 == o.1);
            match (&op.action, &op.key) {
                (automerge::legacy::OpType::Make(ObjType::Map), automerge::legacy::Key::Map(k))
                    if in_obj(zone) && k == "owners" =>
                {
                    owners_obj = Some(id);
                }
                (
                    automerge::legacy::OpType::Put(ScalarValue::Boolean(true)),
                    automerge::legacy::Key::Map(k),
                ) if owners_obj.as_ref().is_some_and(in_obj) && k == author => return true,
                _ => {}
            }
        }
        false
    }

    fn register(&mut self, change: &Change) {
        let expanded = change.decode();
        self.register_expanded(&expanded);
    }

    /// Records the objects a merged change created, so later changes can be placed, and (when
    /// tracked) where it wrote.
    fn register_expanded(&mut self, expanded: &ExpandedChange) {
        let start = expanded.start_op.get();
        for (i, op) in expanded.operations.iter().enumerate() {
            let automerge::legacy::Key::Map(key) = &op.key else {
                continue;
            };
            let parent = match &op.obj {
                automerge::legacy::ObjectId::Root => None,
                automerge::legacy::ObjectId::Id(p) => match self.objects.get(&(p.0, p.1.clone())) {
                    Some(parent) => Some(parent),
                    None => continue,
                },
            };
            if let Some(touched) = &mut self.touched {
                let mut path: Vec<String> = parent
                    .map(|p| p.path.iter().map(|k| k.to_string()).collect())
                    .unwrap_or_default();
                if path.len() < TOUCH_DEPTH {
                    path.push(key.to_string());
                }
                touched.insert(path);
            }
            if let (Some(ix), Some(p)) = (&mut self.names, parent)
                && p.path.len() >= 2
                && &*p.path[1] == "records"
            {
                match (p.depth, &op.action) {
                    (3, automerge::legacy::OpType::Put(ScalarValue::Str(name)))
                        if key.as_str() == "name" =>
                    {
                        ix.set(&p.path[0], &p.path[2], name.as_str());
                    }
                    (2, automerge::legacy::OpType::Delete) => {
                        ix.remove(&p.path[0], &std::sync::Arc::from(key.as_str()));
                    }
                    _ => {}
                }
            }
            let automerge::legacy::OpType::Make(_) = op.action else {
                continue;
            };
            let id: ObjKey = (start + i as u64, expanded.actor_id.clone());
            let info = match parent {
                None => ObjInfo {
                    depth: 1,
                    path: vec![std::sync::Arc::<str>::from(key.as_str())].into(),
                    top_obj: id.clone(),
                },
                Some(parent) => ObjInfo {
                    depth: parent.depth + 1,
                    path: parent.child_path(key),
                    top_obj: parent.top_obj.clone(),
                },
            };
            self.objects.insert(id, info);
        }
    }

    /// Changes the holder of `their_heads` lacks, in causal order, from `offset`, up to about
    /// `max_bytes`; and whether more remain.
    pub fn changes_since(
        &self,
        their_heads: &[ChangeHash],
        offset: usize,
        max_bytes: usize,
    ) -> (Vec<SignedChange>, bool) {
        let known: Vec<ChangeHash> = their_heads
            .iter()
            .filter(|h| self.sigs.contains_key(h))
            .copied()
            .collect();
        // The list of what the holder lacks is computed once per walk and kept for its later
        // pages (a walk asks for offsets 0, n, 2n, ... with the same heads while this document
        // is unchanged): catching up costs the list once, not once per page.
        let mut cache = self.since_cache.lock().unwrap_or_else(|e| e.into_inner());
        let ours = self.doc.get_heads();
        let fresh = match cache.as_ref() {
            Some(c) => c.theirs != known || c.ours != ours || offset == 0,
            None => true,
        };
        if fresh {
            let list: Vec<ChangeHash> = self
                .doc
                .get_changes(&known)
                .into_iter()
                .map(|c| c.hash())
                .collect();
            *cache = Some(SinceCache {
                theirs: known.clone(),
                ours,
                list,
            });
        }
        let list: &[ChangeHash] = cache.as_ref().map_or(&[], |c| c.list.as_slice());
        let mut out = Vec::new();
        let mut size = 0;
        let mut more = false;
        for hash in list.iter().skip(offset) {
            let Some(change) = self.doc.get_change_by_hash(hash) else {
                continue;
            };
            if size >= max_bytes && !out.is_empty() {
                more = true;
                break;
            }
            let Some(sig) = self.sigs.get(&change.hash()) else {
                continue;
            };
            let bytes = change.raw_bytes().to_vec();
            size += bytes.len() + sig.len();
            out.push(SignedChange {
                doc: self.id,
                bytes,
                signature: sig.clone(),
            });
        }
        (out, more)
    }
}

/// Converts wire heads to Automerge hashes, dropping malformed ones.
pub fn heads_from_bytes(heads: &[[u8; 32]]) -> Vec<ChangeHash> {
    heads.iter().map(|h| ChangeHash(*h)).collect()
}

/// Converts Automerge hashes to wire heads.
pub fn heads_to_bytes(heads: &[ChangeHash]) -> Vec<[u8; 32]> {
    heads.iter().map(|h| h.0).collect()
}

#[cfg(test)]
mod tests;
