//! Replicated state on this node: the signed documents in memory (rebuilt from redb at start),
//! local writes, and the merge of what peers send.
//!
//! A local write changes the document, signs the change, and stores it in the same redb
//! transaction as the ledger entry that records it; the caller is answered once both are
//! durable. Remote changes and ledger entries are checked (see [`voike_protocol::docs`]) before
//! they are merged and stored; refusals are counted and recorded as `trust.*` ledger events
//! (at most [`TRUST_EVENTS_PER_MINUTE`], each refused change once).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};
use voike_protocol::authority::{self, Authority, Revocation};
use voike_protocol::docs::{
    DocId, LoadReport, Outcome, Reject, Replica, SignedChange, Unapplied, heads_to_bytes,
};
use voike_protocol::endpoints::{self, Endpoint, EndpointInput};
use voike_protocol::hlc::{Hlc, HlcClock};
use voike_protocol::jobs::{self, JobInput};
use voike_protocol::lease::{LeaseBook, Noted, RenewalBody};
use voike_protocol::ledger::{Entry, heads_hash};
use voike_protocol::mesh::Role;
use voike_protocol::signing::hex;
use voike_protocol::sync::{Digest, MAX_DIGEST_DOCS, MAX_HEADS, PAGE_BYTES};
use voike_protocol::zones::{self, Invalid, Record, RecordInput, Zone};
use voike_storage::docs::put_change;
use voike_storage::{Store, StoreError, WriteOp};

use crate::ledger::LedgerHandle;
use crate::metrics::{DocLabel, Metrics, ReasonLabel};

/// Trust events written per minute at most (refusals are always counted in metrics).
pub const TRUST_EVENTS_PER_MINUTE: u32 = 30;
/// Refused change hashes remembered (so that they are neither re-pulled nor re-counted).
const REJECTED_REMEMBERED: usize = 10_000;
/// Most ledger entries served in one response.
const MAX_ENTRIES_PER_PAGE: usize = 10_000;

/// Errors of state operations, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError::Internal(e.to_string())
    }
}

impl From<voike_protocol::docs::DocError> for StateError {
    fn from(e: voike_protocol::docs::DocError) -> Self {
        StateError::Internal(e.to_string())
    }
}

struct Docs {
    replicas: HashMap<DocId, Replica>,
    /// Jobs documents this node closed after their retention (see `close_expired_jobs`):
    /// never loaded, served or merged again.
    closed: HashSet<DocId>,
    /// The grants and revocations new replicas (jobs epochs) start with.
    authority: Arc<Authority>,
    /// Next storage position per document.
    next: HashMap<DocId, u64>,
    /// Local changes not yet durable: never served to peers (a crash before the commit would
    /// otherwise let this node reuse their sequence numbers for different changes).
    unsaved: HashSet<ChangeHash>,
    /// Stored changes the last rebuild could not apply, per document (see [`Replica::load`]).
    unapplied: HashMap<DocId, Vec<Unapplied>>,
    /// The entries of each jobs document, kept up to date by [`Docs::jobs_index`].
    jobs_index: HashMap<DocId, jobs::JobsIndex>,
    /// The endpoints, kept up to date by [`Docs::endpoints_index`].
    endpoints_index: Option<endpoints::EndpointsIndex>,
    /// Jobs epochs found at start old enough to close whatever they hold: not loaded, held
    /// closed in memory (in `closed`) until `close_expired_jobs` drops them from the store.
    due_unloaded: Vec<DocId>,
}

/// An empty replica of `doc` judged with `authority`.
fn new_replica(doc: DocId, authority: &Arc<Authority>) -> Replica {
    let mut r = Replica::new(doc);
    r.set_authority(authority.clone());
    r
}

impl Docs {
    /// The entries of jobs document `doc` as the replica holds them now: what changed since
    /// the last look is read again (everything, after a reload).
    fn jobs_index(&mut self, doc: DocId) -> &jobs::JobsIndex {
        let Docs {
            replicas,
            jobs_index,
            authority,
            ..
        } = self;
        let replica = replicas
            .entry(doc)
            .or_insert_with(|| new_replica(doc, authority));
        let touched = replica.take_touched();
        let ix = jobs_index.entry(doc).or_default();
        match touched {
            Some(paths) => ix.refresh(replica.doc(), paths),
            None => *ix = jobs::JobsIndex::read(replica.doc()),
        }
        ix
    }

    /// The endpoints as the replica holds them now: those changes wrote are read again
    /// (everything, after a reload).
    fn endpoints_index(&mut self) -> &endpoints::EndpointsIndex {
        let Docs {
            replicas,
            endpoints_index,
            authority,
            ..
        } = self;
        let replica = replicas
            .entry(DocId::Endpoints)
            .or_insert_with(|| new_replica(DocId::Endpoints, authority));
        let touched = replica.take_touched();
        let fresh = touched.is_none() || endpoints_index.is_none();
        let ix = endpoints_index.get_or_insert_with(Default::default);
        match touched {
            Some(paths) if !fresh => ix.refresh(replica.doc(), paths),
            _ => *ix = endpoints::EndpointsIndex::read(replica.doc()),
        }
        ix
    }

    fn replica(&mut self, doc: DocId) -> &mut Replica {
        let auth = &self.authority;
        self.replicas
            .entry(doc)
            .or_insert_with(|| new_replica(doc, auth))
    }

    /// The documents held: the fixed ones, then the open jobs epochs, oldest first.
    fn ids(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = DocId::ALL
            .into_iter()
            .filter(|d| !self.closed.contains(d))
            .collect();
        let mut epochs: Vec<DocId> = self
            .replicas
            .keys()
            .filter(|d| matches!(d, DocId::JobEpoch(_)))
            .copied()
            .collect();
        epochs.sort();
        ids.extend(epochs);
        ids
    }

    /// The jobs documents held (the legacy one and the open epochs).
    fn job_docs(&self) -> Vec<DocId> {
        self.ids().into_iter().filter(|d| d.is_jobs()).collect()
    }

    fn position(&mut self, doc: DocId) -> u64 {
        let n = self.next.entry(doc).or_insert(0);
        let p = *n;
        *n += 1;
        p
    }
}

/// A bounded set of hashes (oldest forgotten first).
#[derive(Default)]
struct Rejected {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Rejected {
    /// Remembers `h`; false if it was already known.
    fn insert(&mut self, h: [u8; 32]) -> bool {
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > REJECTED_REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

struct Inner {
    key: Keypair,
    node_id: String,
    own_author: Vec<u8>,
    docs: Mutex<Docs>,
    store: Store,
    ledger: LedgerHandle,
    metrics: Arc<Metrics>,
    roster: RwLock<HashMap<PeerId, Role>>,
    /// Shared with the ledger actor: notified on every durable local or merged change.
    changed: Arc<Notify>,
    /// Bumped on every durable local or merged document change (DNS rebuilds on it).
    docs_version: tokio::sync::watch::Sender<u64>,
    /// Bumped only on changes of the documents DNS serves from (zones, endpoints, members):
    /// a job claim or lease renewal does not rebuild the DNS snapshot.
    served_version: tokio::sync::watch::Sender<u64>,
    /// What changed in those documents since the DNS task last looked.
    served_changes: Mutex<ServedChanges>,
    clock: Arc<Mutex<HlcClock>>,
    /// The mesh domain: no zone may be created at or under it (see `set_reserved_domain`).
    reserved_domain: Mutex<Option<String>>,
    /// Grants and revocations, read from the members document (see `refresh_authority`).
    authority: RwLock<Arc<Authority>>,
    /// Bumped whenever `authority` changes (the swarm closes revoked links on it).
    authority_version: tokio::sync::watch::Sender<u64>,
    /// Authors whose clock skew was reported (once per author and run).
    skew_reported: Mutex<HashSet<Vec<u8>>>,
    /// Held from making a change until its write is queued in the store (see `local_write`).
    write_order: tokio::sync::Mutex<()>,
    max_future_ms: u64,
    /// `grid.retention`: how long a finished jobs epoch stays live (see `close_expired_jobs`).
    retention_ms: std::sync::atomic::AtomicU64,
    rejected: Mutex<Rejected>,
    /// Refused changes and entries already counted and reported.
    reported: Mutex<Rejected>,
    trust_budget: Mutex<(Instant, u32)>,
    /// Lease renewals of segment claims heard from the runners (not stored; see
    /// [`voike_protocol::lease`]). Locked after `docs`, never before.
    leases: Mutex<LeaseBook>,
}

/// What [`StateHandle::renew_lease`] did with a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The claim's lease now reaches further.
    Renewed,
    /// The claim is held, but the renewal ran out or an equal or later one is held.
    Stale,
    /// No open document holds this runner's claim with this attempt (not arrived yet, already
    /// finished, or never made).
    Unknown,
    /// The renewals held reached their bound.
    Full,
}

impl LeaseOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Renewed => "renewed",
            LeaseOutcome::Stale => "stale",
            LeaseOutcome::Unknown => "unknown",
            LeaseOutcome::Full => "full",
        }
    }
}

/// What changed in the documents DNS serves since [`StateHandle::take_served_changes`] was
/// last called, so that the DNS snapshot is updated by what changed instead of rebuilt.
#[derive(Debug)]
pub struct ServedChanges {
    /// Everything must be read again: at start, after a reload or a revocation, or when the
    /// members document changed (grants and revocations decide what is served).
    pub all: bool,
    /// Zones changed in more than their records (created, claimed, domain, owners).
    pub zones: BTreeSet<String>,
    /// Records changed, as (zone id, record id).
    pub records: BTreeSet<(String, String)>,
    /// The endpoints document changed (the mesh zone and the SNRL service names).
    pub endpoints: bool,
}

impl Default for ServedChanges {
    fn default() -> Self {
        ServedChanges {
            all: true,
            zones: BTreeSet::new(),
            records: BTreeSet::new(),
            endpoints: false,
        }
    }
}

impl ServedChanges {
    fn none() -> Self {
        ServedChanges {
            all: false,
            ..ServedChanges::default()
        }
    }
}

/// What `check_recorded_changes` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct ChangeCheck {
    /// Document changes recorded in this node's own chain.
    pub recorded: u64,
    /// Recorded changes that are not stored, or stored and not applied.
    pub faults: Vec<ChangeFault>,
    /// Recorded changes that could not be applied and were written again (`doc.repair`).
    pub repaired: u64,
    /// Recorded changes of jobs documents this node closed after their retention: the ledger
    /// entry is what remains of them, by design.
    pub expired: u64,
}

/// A recorded change this node does not hold.
#[derive(Debug, serde::Serialize)]
pub struct ChangeFault {
    /// The ledger entry that records it.
    pub seq: u64,
    pub kind: String,
    pub doc: String,
    pub change: String,
    pub problem: String,
}

/// The marker of a jobs document this node closed.
fn closed_key(doc: DocId) -> Vec<u8> {
    let mut k = b"closed_doc/".to_vec();
    k.extend_from_slice(&doc.key_prefix());
    k
}

/// The jobs documents this node closed.
fn closed_set(store: &Store) -> Result<HashSet<DocId>, StoreError> {
    Ok(store
        .scan(voike_storage::Table::Meta)?
        .into_iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix(b"closed_doc/".as_slice())?;
            match rest {
                [3] => Some(DocId::Jobs),
                [4, e @ ..] => Some(DocId::JobEpoch(u32::from_be_bytes(
                    <[u8; 4]>::try_from(e).ok()?,
                ))),
                _ => None,
            }
        })
        .collect())
}

/// The changes of `doc` that `repair_orphans` wrote again.
fn repaired_set(store: &Store, doc: DocId) -> Result<HashSet<ChangeHash>, StoreError> {
    let mut prefix = b"repaired_change/".to_vec();
    prefix.extend_from_slice(&doc.key_prefix());
    Ok(store
        .scan(voike_storage::Table::Meta)?
        .into_iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix(prefix.as_slice())?;
            Some(ChangeHash(<[u8; 32]>::try_from(rest).ok()?))
        })
        .collect())
}

/// Which stored changes a rebuild leaves out: those already written again by a repair (so
/// that, once the wall clock passes their stamp, they cannot come back and collide with their
/// replacements), and this node's own changes stamped more than the skew bound ahead of the
/// wall clock (made while its clock was wrong: peers refuse them; they are written again with
/// the corrected clock by `repair_orphans`).
/// Also left out: changes of a revoked member after its cutoff for that document (`cut`, by
/// actor), which this node may have merged before the revocation reached it.
fn exclude_at_load(
    c: &automerge::Change,
    own_actor: &Option<automerge::ActorId>,
    repaired: &HashSet<ChangeHash>,
    max_future_ms: u64,
    cut: &HashMap<automerge::ActorId, u64>,
) -> Option<String> {
    if repaired.contains(&c.hash()) {
        return Some("written again by an earlier repair".into());
    }
    if let Some(&last) = cut.get(c.actor_id())
        && c.seq() > last
    {
        return Some(format!(
            "made by a revoked member after the last change kept ({last})"
        ));
    }
    let stamp = u64::try_from(c.timestamp()).unwrap_or(0);
    let now = now_ms();
    if own_actor.as_ref() == Some(c.actor_id()) && stamp > now + max_future_ms {
        return Some(format!(
            "made by this node with its clock {} ms ahead",
            stamp - now
        ));
    }
    None
}

/// The revoked members' actors and the last change of `doc` kept for each.
fn revoked_cut(auth: &Authority, doc: DocId) -> HashMap<automerge::ActorId, u64> {
    if doc == DocId::Members {
        // Revocations live here; an admin revoked later keeps its earlier ones.
        return HashMap::new();
    }
    auth.revoked
        .keys()
        .filter_map(|node| {
            let peer: PeerId = node.parse().ok()?;
            let actor = voike_protocol::docs::actor_of_peer(&peer)?;
            Some((actor, auth.cutoff(node, &doc.name()).unwrap_or(0)))
        })
        .collect()
}

/// The marker of an orphaned stored change that `repair_orphans` wrote again.
fn repaired_key(doc: DocId, hash: &ChangeHash) -> Vec<u8> {
    let mut k = b"repaired_change/".to_vec();
    k.extend_from_slice(&doc.key_prefix());
    k.extend_from_slice(&hash.0);
    k
}

fn parse_change_hash(s: &str) -> Option<ChangeHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(ChangeHash(out))
}

/// Cloneable handle to the node's replicated state.
#[derive(Clone)]
pub struct StateHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("node", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Logs every stored change a rebuild could not apply, and sets the gauge.
fn report_unapplied(doc: DocId, report: &LoadReport, metrics: &Metrics) {
    for u in &report.unapplied {
        if let voike_protocol::docs::UnappliedReason::Excluded(why) = &u.reason {
            // Absent fields (a change that does not decode has no hash) are left out.
            info!(doc = doc.as_str(), change = u.hash.map(|h| h.to_string()), %why, "a stored change is left out");
            continue;
        }
        error!(
            doc = doc.as_str(),
            position = u.index,
            change = u.hash.map(|h| h.to_string()),
            actor = u.actor.as_deref(),
            seq = u.seq,
            reason = %u.reason,
            "a stored change cannot be applied"
        );
    }
    metrics
        .doc_changes_unapplied
        .get_or_create(&DocLabel {
            doc: doc.as_str().into(),
        })
        .set(report.unapplied.len() as i64);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateHandle {
    /// Rebuilds every document from the store.
    pub fn open(
        key: Keypair,
        store: Store,
        ledger: LedgerHandle,
        metrics: Arc<Metrics>,
        changed: Arc<Notify>,
        max_future_skew: Duration,
        retention: Duration,
    ) -> Result<StateHandle, StateError> {
        let closed = closed_set(&store)?;
        let mut docs = Docs {
            replicas: HashMap::new(),
            closed: closed.clone(),
            authority: Arc::new(Authority::default()),
            next: HashMap::new(),
            unsaved: HashSet::new(),
            unapplied: HashMap::new(),
            jobs_index: HashMap::new(),
            endpoints_index: None,
            due_unloaded: Vec::new(),
        };
        let max_future_ms = max_future_skew.as_millis() as u64;
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let own_actor = voike_protocol::docs::actor_of(&key.public());
        let mut auth = Authority::default();
        let mut ids = DocId::ALL.to_vec();
        ids.extend(store.job_epochs()?);
        for doc in ids {
            if closed.contains(&doc) {
                continue;
            }
            // An epoch twice the retention past its end closes whatever it holds: loading it
            // (after a long stop, hours of jobs) only to drop it would cost the time and leave
            // the memory with the allocator.
            if doc
                .epoch_end_ms()
                .is_some_and(|end| now >= end.saturating_add(retention_ms.saturating_mul(2)))
            {
                docs.closed.insert(doc);
                docs.due_unloaded.push(doc);
                continue;
            }
            let started = Instant::now();
            let (changes, next) = store.doc_changes(doc)?;
            let mut replica = Replica::new(doc);
            let repaired = repaired_set(&store, doc)?;
            // The members document comes first: its revocations decide what of the others
            // is left out.
            let cut = revoked_cut(&auth, doc);
            let report = replica.load_excluding(changes, |c| {
                exclude_at_load(c, &own_actor, &repaired, max_future_ms, &cut)
            })?;
            if doc == DocId::Members {
                auth = Authority::from_members(replica.doc(), None);
            }
            if report.applied > 0 {
                info!(
                    doc = %doc,
                    changes = report.applied,
                    took_ms = started.elapsed().as_millis() as u64,
                    "loaded document"
                );
            }
            report_unapplied(doc, &report, &metrics);
            docs.unapplied.insert(doc, report.unapplied);
            docs.replicas.insert(doc, replica);
            docs.next.insert(doc, next);
        }
        let handle = StateHandle {
            inner: Arc::new(Inner {
                node_id: key.public().to_peer_id().to_string(),
                own_author: key.public().encode_protobuf(),
                key,
                docs: Mutex::new(docs),
                leases: Mutex::new(LeaseBook::default()),
                store,
                clock: ledger.clock(),
                write_order: tokio::sync::Mutex::new(()),
                skew_reported: Mutex::new(HashSet::new()),
                reserved_domain: Mutex::new(None),
                authority: RwLock::new(Arc::new(Authority::default())),
                authority_version: tokio::sync::watch::Sender::new(0),
                ledger,
                metrics,
                roster: RwLock::new(HashMap::new()),
                changed,
                docs_version: tokio::sync::watch::Sender::new(0),
                served_version: tokio::sync::watch::Sender::new(0),
                served_changes: Mutex::new(ServedChanges::default()),
                max_future_ms,
                retention_ms: std::sync::atomic::AtomicU64::new(retention_ms),
                rejected: Mutex::new(Rejected::default()),
                reported: Mutex::new(Rejected::default()),
                trust_budget: Mutex::new((Instant::now(), 0)),
            }),
        };
        handle.refresh_authority();
        Ok(handle)
    }

    /// Reads the grants and revocations from the members document and hands them to every
    /// replica; bumps `authority_version` when they changed. A document holding changes that a
    /// new revocation does not keep (merged before the revocation arrived) is rebuilt without
    /// them, in the background (`drop_revoked_changes`).
    fn refresh_authority(&self) {
        let reserved = lock(&self.inner.reserved_domain).clone();
        let mut docs = self.docs();
        let mut fresh = Authority::from_members(docs.replica(DocId::Members).doc(), reserved);
        fresh.admins = self
            .inner
            .roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| **r == Role::Admin)
            .map(|(p, _)| p.to_string())
            .collect();
        let current = self.authority();
        if *current == fresh {
            return;
        }
        let fresh = Arc::new(fresh);
        docs.authority = fresh.clone();
        for doc in docs.ids() {
            docs.replica(doc).set_authority(fresh.clone());
        }
        let newly: Vec<&String> = fresh
            .revoked
            .keys()
            .filter(|n| !current.revoked.contains_key(*n))
            .collect();
        let mut rebuild = Vec::new();
        for node in &newly {
            warn!(%node, by = %fresh.revoked[*node].by, reason = %fresh.revoked[*node].reason, "member revoked");
            let Ok(peer) = node.parse::<PeerId>() else {
                continue;
            };
            for doc in docs.ids() {
                let cutoff = fresh.cutoff(node, &doc.name()).unwrap_or(0);
                if doc != DocId::Members
                    && docs.replica(doc).max_seq_of(&peer) > cutoff
                    && !rebuild.contains(&doc)
                {
                    rebuild.push(doc);
                }
            }
        }
        drop(docs);
        self.inner
            .metrics
            .members_revoked
            .set(fresh.revoked.len() as i64);
        *self
            .inner
            .authority
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        self.inner.authority_version.send_modify(|v| *v += 1);
        if !rebuild.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let me = self.clone();
            rt.spawn(async move { me.drop_revoked_changes(rebuild).await });
        }
    }

    /// Rebuilds `docs` from the store without the changes revocations do not keep, then
    /// writes again this node's own changes that depended on them (`repair_orphans`).
    async fn drop_revoked_changes(&self, docs: Vec<DocId>) {
        {
            // No change is made while the documents are rebuilt, and every write queued before
            // is committed first (the store commits in order), so the rebuild reads them all.
            let _order = self.inner.write_order.lock().await;
            match self.inner.store.submit(Vec::new()).await {
                Ok(p) => {
                    if let Err(e) = p.wait().await {
                        error!(error = %e, "cannot flush the store before dropping revoked changes");
                        return;
                    }
                }
                Err(e) => {
                    error!(error = %e, "cannot flush the store before dropping revoked changes");
                    return;
                }
            }
            for doc in &docs {
                info!(
                    doc = doc.as_str(),
                    "rebuilding the document without a revoked member's later changes"
                );
                self.reload(*doc);
            }
        }
        self.repair_orphans().await;
        self.inner.changed.notify_one();
        self.bump_versions(None);
    }

    /// The grants and revocations in force.
    pub fn authority(&self) -> Arc<Authority> {
        self.inner
            .authority
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever grants or revocations change.
    pub fn watch_authority(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.authority_version.subscribe()
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Replaces the set of known members and their roles.
    pub fn set_roster(&self, roster: HashMap<PeerId, Role>) {
        *self.inner.roster.write().unwrap_or_else(|e| e.into_inner()) = roster;
        // Admins rank first among concurrent zone claims.
        self.refresh_authority();
    }

    /// A copy of the current members and roles.
    fn roster(&self) -> HashMap<PeerId, Role> {
        self.inner
            .roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once local state changed since the last call (a single waiter: the swarm loop).
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    fn docs(&self) -> MutexGuard<'_, Docs> {
        lock(&self.inner.docs)
    }

    fn tick(&self) -> Hlc {
        lock(&self.inner.clock).tick(now_ms())
    }

    // ---- local writes -------------------------------------------------------------------

    /// Makes a local change of `doc` with `f` and stores it with a ledger entry of `kind`.
    ///
    /// The change, its storage position and its ledger entry are fixed in one step: under
    /// `write_order`, the change is made and the write is queued in the store before the next
    /// change of any document can be made, so the store receives (and commits) changes in the
    /// order they depend on each other. Only the wait for durability runs concurrently, so
    /// concurrent writers still share group commits.
    async fn local_write<T>(
        &self,
        doc: DocId,
        kind: &str,
        f: impl FnOnce(
            &mut Replica,
            &Keypair,
            Hlc,
        ) -> Result<(Option<SignedChange>, T, serde_json::Value), StateError>,
    ) -> Result<T, StateError> {
        self.local_write_with(doc, kind, Vec::new(), f).await
    }

    /// [`StateHandle::local_write`], with `extra` writes in the same transaction.
    async fn local_write_with<T>(
        &self,
        doc: DocId,
        kind: &str,
        extra: Vec<WriteOp>,
        f: impl FnOnce(
            &mut Replica,
            &Keypair,
            Hlc,
        ) -> Result<(Option<SignedChange>, T, serde_json::Value), StateError>,
    ) -> Result<T, StateError> {
        let order = self.inner.write_order.lock().await;
        let hlc = self.tick();
        let (change, value, mut body, position, hash) = {
            let mut docs = self.docs();
            if docs.closed.contains(&doc) {
                return Err(StateError::NotFound(format!(
                    "{doc} was closed after its retention"
                )));
            }
            docs.replica(doc).set_time(hlc.wall_ms);
            let (change, value, body) = f(docs.replica(doc), &self.inner.key, hlc)?;
            let Some(change) = change else {
                return Ok(value);
            };
            let hash = automerge::Change::try_from(&change.bytes[..])
                .map(|c| c.hash())
                .map_err(|e| StateError::Internal(e.to_string()))?;
            let position = docs.position(doc);
            docs.unsaved.insert(hash);
            (change, value, body, position, hash)
        };
        if let Some(obj) = body.as_object_mut() {
            obj.insert("doc".into(), json!(doc.name()));
            obj.insert("change".into(), json!(hash.to_string()));
        }
        #[cfg(feature = "fault-injection")]
        crate::faults::before_queue(kind, &body).await;
        let submitted = self
            .inner
            .ledger
            .submit_with(kind, body, {
                let mut ops = extra;
                ops.push(put_change(position, &change));
                ops
            })
            .await;
        drop(order);
        let result = match submitted {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        self.docs().unsaved.remove(&hash);
        match result {
            Ok(_) => {
                self.inner
                    .metrics
                    .changes_applied
                    .get_or_create(&DocLabel {
                        doc: doc.as_str().into(),
                    })
                    .inc();
                if doc == DocId::Members {
                    self.refresh_authority();
                }
                self.inner.changed.notify_one();
                self.bump_versions(Some(doc));
                Ok(value)
            }
            Err(e) => {
                // The change is in memory but not on disk: rebuild the document from the store
                // so that memory never holds what a restart would lose.
                error!(doc = doc.as_str(), error = %e, "local write failed; reloading the document");
                self.reload(doc);
                Err(e.into())
            }
        }
    }

    fn reload(&self, doc: DocId) {
        match self.inner.store.doc_changes(doc) {
            Ok((changes, next)) => {
                let mut replica = Replica::new(doc);
                let own_actor = voike_protocol::docs::actor_of(&self.inner.key.public());
                let repaired = repaired_set(&self.inner.store, doc).unwrap_or_default();
                let max_future_ms = self.inner.max_future_ms;
                let cut = revoked_cut(&self.authority(), doc);
                let report = match replica.load_excluding(changes, |c| {
                    exclude_at_load(c, &own_actor, &repaired, max_future_ms, &cut)
                }) {
                    Ok(r) => r,
                    Err(e) => {
                        error!(doc = doc.as_str(), error = %e, "cannot reload document");
                        return;
                    }
                };
                report_unapplied(doc, &report, &self.inner.metrics);
                replica.set_authority(self.authority());
                let mut docs = self.docs();
                docs.unapplied.insert(doc, report.unapplied);
                docs.replicas.insert(doc, replica);
                docs.next.insert(doc, next);
                docs.unsaved.clear();
            }
            Err(e) => error!(doc = doc.as_str(), error = %e, "cannot reload document"),
        }
    }

    /// Writes again the content of this node's own stored changes whose dependencies are not
    /// stored (left by a crash of a version that could store a change before its parent): each
    /// becomes a new change, recorded as `doc.repair` with the hash it replaces. The orphan
    /// stays stored, and is marked repaired so that this happens once. Its parent was never
    /// durable, so it was never served: no peer can hold it, and it cannot arrive later.
    pub async fn repair_orphans(&self) {
        let ids = self.docs().ids();
        for doc in ids {
            let Some(actor) = voike_protocol::docs::actor_of(&self.inner.key.public()) else {
                return;
            };
            let orphans = self.docs().replica(doc).pending_of(&actor);
            for orphan in orphans {
                let hash = orphan.hash();
                let marker = repaired_key(doc, &hash);
                match self.inner.store.get(voike_storage::Table::Meta, &marker) {
                    Ok(Some(_)) => {
                        self.docs().replica(doc).drop_pending(&hash);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error!(error = %e, "cannot read repair markers");
                        return;
                    }
                }
                let mark = WriteOp::Put {
                    table: voike_storage::Table::Meta,
                    key: marker,
                    value: Vec::new(),
                };
                let result = self
                    .local_write_with(doc, "doc.repair", vec![mark], |r, key, hlc| {
                        let (change, skipped) =
                            r.replay(key, &orphan, Some(zones::pack_hlc(hlc)))?;
                        r.drop_pending(&hash);
                        Ok((
                            change,
                            skipped,
                            json!({ "replaces": hash.to_string(), "skipped_ops": skipped }),
                        ))
                    })
                    .await;
                match result {
                    Ok(skipped) => {
                        warn!(doc = doc.as_str(), replaced = %hash, skipped_ops = skipped, "repaired: wrote an orphaned stored change again")
                    }
                    Err(e) => {
                        error!(doc = doc.as_str(), change = %hash, error = %e, "cannot repair an orphaned stored change")
                    }
                }
            }
            let left: Vec<Unapplied> = {
                let docs = self.docs();
                docs.unapplied
                    .get(&doc)
                    .into_iter()
                    .flatten()
                    .filter(|u| {
                        u.hash.is_none_or(|h| {
                            self.inner
                                .store
                                .get(voike_storage::Table::Meta, &repaired_key(doc, &h))
                                .map(|v| v.is_none())
                                .unwrap_or(true)
                        })
                    })
                    .cloned()
                    .collect()
            };
            self.inner
                .metrics
                .doc_changes_unapplied
                .get_or_create(&DocLabel {
                    doc: doc.as_str().into(),
                })
                .set(left.len() as i64);
            self.docs().unapplied.insert(doc, left);
        }
    }

    /// Sets the mesh domain (`dns.mesh_domain`, normalised): no zone is created or merged at or
    /// under it, by anyone.
    pub fn set_reserved_domain(&self, domain: &str) {
        *lock(&self.inner.reserved_domain) = Some(domain.to_string());
        self.refresh_authority();
    }

    fn own_role(&self) -> Option<Role> {
        let me: PeerId = self.inner.node_id.parse().ok()?;
        self.inner
            .roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&me)
            .copied()
    }

    /// Endpoints that may be served: those whose node may answer for the service name (see
    /// [`authority::may_serve_endpoint`]); the others are counted (`voike_snrl_endpoints_unserved`).
    pub fn served_endpoints(&self) -> Vec<Endpoint> {
        // Every zone, served or not, keeps its names from others.
        let zones = self.zones_meta();
        let auth = self.authority();
        let (ok, refused): (Vec<Endpoint>, Vec<Endpoint>) = self
            .endpoints()
            .into_iter()
            .partition(|e| authority::may_serve_endpoint(&auth, &zones, &e.node, &e.service));
        self.inner
            .metrics
            .snrl_endpoints_unserved
            .set(refused.len() as i64);
        ok
    }

    /// Zones that may be served: those with an owner that is not revoked (a revoked member's
    /// zones stop answering; an admin can add an owner to recover one).
    pub fn served_zones(&self) -> Vec<Zone> {
        let auth = self.authority();
        self.zones_meta()
            .into_iter()
            .filter(|z| z.owners.iter().any(|o| !auth.is_revoked(o)))
            .collect()
    }

    /// Creates zone `id` for `domain`, owned by this node.
    pub async fn create_zone(&self, id: &str, domain: &str) -> Result<Zone, StateError> {
        zones::check_zone_id(id)?;
        let domain = zones::normalize_name("domain", domain)?;
        if domain.split('.').any(|label| label.contains('*')) {
            return Err(Invalid {
                field: "domain",
                message: "must not contain a wildcard label (wildcards are records inside a zone)"
                    .into(),
            }
            .into());
        }
        if domain == "." {
            return Err(Invalid {
                field: "domain",
                message: "must not be the root".into(),
            }
            .into());
        }
        let is_admin = self.own_role() == Some(Role::Admin);
        let auth = self.authority();
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        self.local_write(DocId::Zones, "zone.create", move |r, key, hlc| {
            if zones::zone_obj(&r.ranked(), &id).is_some() {
                return Err(StateError::Conflict(format!("zone {id} already exists")));
            }
            let all = zones::zones(&r.ranked());
            if let Some(z) = all.iter().find(|z| z.domain == domain) {
                return Err(StateError::Conflict(format!(
                    "domain {domain} is already served by zone {}",
                    z.id
                )));
            }
            authority::may_create_zone(&auth, &all, &id, &domain, &me, is_admin)
                .map_err(|d| StateError::Forbidden(d.message().to_string()))?;
            let change = r.change(key, |tx| zones::create_zone(tx, &id, &domain, &me, hlc))?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            Ok((change, zone, json!({ "zone": id, "domain": domain })))
        })
        .await
    }

    /// Adds `node` to the owners of zone `id` (only an owner may).
    pub async fn add_owner(&self, id: &str, node: &str) -> Result<Zone, StateError> {
        let peer: PeerId = node.parse().map_err(|_| Invalid {
            field: "node",
            message: "is not a node id".into(),
        })?;
        let is_member = self
            .inner
            .roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&peer);
        if !is_member {
            return Err(Invalid {
                field: "node",
                message: format!("{peer} is not a member this node knows"),
            }
            .into());
        }
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        let node = peer.to_string();
        let is_admin = self.own_role() == Some(Role::Admin);
        self.local_write(DocId::Zones, "zone.owner_add", move |r, key, _| {
            let obj = zones::zone_obj(&r.ranked(), &id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {id}")))?;
            if !is_admin && !zones::is_owner(&r.ranked(), &id, &me) {
                return Err(StateError::Forbidden(format!(
                    "this node does not own zone {id}"
                )));
            }
            let change = r.change(key, |tx| zones::add_owner(tx, &obj, &node))?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            Ok((change, zone, json!({ "zone": id, "owner": node })))
        })
        .await
    }

    /// Removes `node` from the owners of zone `id` (an owner or an admin may; the last owner
    /// is kept, so that a zone always has someone who may write it).
    pub async fn remove_owner(&self, id: &str, node: &str) -> Result<Zone, StateError> {
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        let node = node.to_string();
        let is_admin = self.own_role() == Some(Role::Admin);
        self.local_write(DocId::Zones, "zone.owner_remove", move |r, key, _| {
            let obj = zones::zone_obj(&r.ranked(), &id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {id}")))?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            if !is_admin && !zone.owners.contains(&me) {
                return Err(StateError::Forbidden(format!(
                    "this node does not own zone {id}"
                )));
            }
            if !zone.owners.contains(&node) {
                return Err(StateError::NotFound(format!(
                    "{node} does not own zone {id}"
                )));
            }
            if zone.owners.len() == 1 {
                return Err(StateError::Conflict(format!(
                    "{node} is the last owner of zone {id}; add another owner first"
                )));
            }
            let change = r.change(key, |tx| zones::remove_owner(tx, &obj, &node).map(|_| ()))?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            Ok((change, zone, json!({ "zone": id, "owner": node })))
        })
        .await
    }

    /// Delegates `domain` inside zone `id` to `node` (`on`), or withdraws the delegation: the
    /// node may then create zones at or under `domain` and register endpoints for its names.
    pub async fn delegate(
        &self,
        id: &str,
        domain: &str,
        node: &str,
        on: bool,
    ) -> Result<Zone, StateError> {
        let peer: PeerId = node.parse().map_err(|_| Invalid {
            field: "node",
            message: "is not a node id".into(),
        })?;
        let domain = zones::normalize_name("domain", domain)?;
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        let node = peer.to_string();
        let is_admin = self.own_role() == Some(Role::Admin);
        let kind = if on {
            "zone.delegate"
        } else {
            "zone.undelegate"
        };
        self.local_write(DocId::Zones, kind, move |r, key, _| {
            let obj = zones::zone_obj(&r.ranked(), &id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {id}")))?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            if !is_admin && !zone.owners.contains(&me) {
                return Err(StateError::Forbidden(format!(
                    "this node does not own zone {id}"
                )));
            }
            if domain == zone.domain || !zones::is_within(&domain, &zone.domain) {
                return Err(Invalid {
                    field: "domain",
                    message: format!("must be a name inside {} (below its apex)", zone.domain),
                }
                .into());
            }
            let change = r.change(key, |tx| {
                zones::set_delegation(tx, &obj, &domain, &node, on)
            })?;
            let zone = zones::zone(&r.ranked(), &id)
                .ok_or_else(|| StateError::Internal("zone vanished".into()))?;
            Ok((
                change,
                zone,
                json!({ "zone": id, "domain": domain, "node": node, "on": on }),
            ))
        })
        .await
    }

    fn require_admin(&self) -> Result<(), StateError> {
        if self.own_role() != Some(Role::Admin) {
            return Err(StateError::Forbidden(
                "only an admin may change grants and revocations".into(),
            ));
        }
        Ok(())
    }

    fn known_member(&self, node: &str) -> Result<PeerId, StateError> {
        let peer: PeerId = node.parse().map_err(|_| Invalid {
            field: "node",
            message: "is not a node id".into(),
        })?;
        if !self
            .inner
            .roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&peer)
        {
            return Err(Invalid {
                field: "node",
                message: format!("{peer} is not a member this node knows"),
            }
            .into());
        }
        Ok(peer)
    }

    /// Grants (`on`) or withdraws an admin grant: `node` may create zones at or under `domain`.
    pub async fn grant(&self, domain: &str, node: &str, on: bool) -> Result<(), StateError> {
        self.require_admin()?;
        let peer = self.known_member(node)?;
        let domain = zones::normalize_name("domain", domain)?;
        if domain == "." {
            return Err(Invalid {
                field: "domain",
                message: "must not be the root".into(),
            }
            .into());
        }
        if let Some(m) = lock(&self.inner.reserved_domain).clone()
            && zones::is_within(&domain, &m)
        {
            return Err(StateError::Forbidden(format!(
                "{domain} is inside {m}, which is reserved for the mesh's node names"
            )));
        }
        let node = peer.to_string();
        let kind = if on { "member.grant" } else { "member.ungrant" };
        self.local_write(DocId::Members, kind, move |r, key, _| {
            let change = if on {
                r.change(key, |tx| authority::put_grant(tx, &domain, &node))?
            } else {
                let mut found = false;
                let c = r.change(key, |tx| {
                    found = authority::delete_grant(tx, &domain, &node)?;
                    Ok(())
                })?;
                if !found {
                    return Err(StateError::NotFound(format!(
                        "no grant of {domain} to {node}"
                    )));
                }
                c
            };
            Ok((change, (), json!({ "domain": domain, "node": node })))
        })
        .await
    }

    /// Revokes member `node` (admins only): its changes after the ones this node holds are
    /// refused everywhere, its links closed and refused, its names and endpoints not served.
    pub async fn revoke(&self, node: &str, reason: &str) -> Result<Revocation, StateError> {
        self.require_admin()?;
        let peer = self.known_member(node)?;
        let node = peer.to_string();
        if node == self.inner.node_id {
            return Err(StateError::Conflict(
                "a node cannot revoke itself; ask another admin".into(),
            ));
        }
        if reason.len() > 512 || reason.chars().any(char::is_control) {
            return Err(Invalid {
                field: "reason",
                message: "must be at most 512 characters, without control characters".into(),
            }
            .into());
        }
        if let Some(r) = self.authority().revoked.get(&node) {
            return Ok(r.clone());
        }
        // What is kept: the node's changes and ledger entries this node holds now.
        let ledger_seq = self
            .inner
            .store
            .ledger_heads()?
            .into_iter()
            .find(|h| voike_protocol::signing::peer_id_of(&h.author).is_ok_and(|p| p == peer))
            .map_or(0, |h| h.head.seq);
        let me = self.inner.node_id.clone();
        let reason = reason.to_string();
        let mut cutoff = std::collections::BTreeMap::from([("ledger".to_string(), ledger_seq)]);
        {
            let mut docs = self.docs();
            for doc in docs.ids() {
                cutoff.insert(doc.name(), docs.replica(doc).max_seq_of(&peer));
            }
        }
        self.local_write(DocId::Members, "member.revoke", move |r, key, hlc| {
            let rev = Revocation {
                by: me,
                reason,
                hlc: zones::pack_hlc(hlc),
                cutoff,
            };
            let change = r.change(key, |tx| authority::put_revocation(tx, &node, &rev))?;
            Ok((
                change,
                rev.clone(),
                json!({ "node": node, "reason": rev.reason, "cutoff": rev.cutoff }),
            ))
        })
        .await
    }

    /// Adds a record to zone `zone_id` (this node must own the zone), or updates the record
    /// that has its zone, name, type and value. With `keep_ttl` (the request named no TTL), an
    /// existing record keeps its TTL instead of taking `input.ttl`.
    ///
    /// Returns the record as stored and the version it replaced: `None` when the record is new.
    /// A record posted as it is stored already writes nothing (no change, no ledger entry), and
    /// the two returned versions are equal.
    pub async fn add_record(
        &self,
        zone_id: &str,
        input: RecordInput,
        keep_ttl: bool,
    ) -> Result<(Record, Option<Record>), StateError> {
        let me = self.inner.node_id.clone();
        let zone_id = zone_id.to_string();
        self.local_write(DocId::Zones, "record.add", move |r, key, hlc| {
            let zone = zones::zone_meta(&r.ranked(), &zone_id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {zone_id}")))?;
            let checked = zones::check_record(&zone.domain, &input)?;
            let new_id = zones::record_id(&zone_id, &checked);
            // The rules read the records at the names they concern (the replica keeps the
            // zones' record ids by name), never the whole zone.
            {
                let at = |name: &str| zones::records_at(r, &zone_id, name);
                zones::check_cname_rules(&zone.domain, &at, &checked, &new_id)?;
            }
            let existing = zones::record(&r.ranked(), &zone_id, &new_id);
            if !zone.owners.contains(&me) {
                return Err(StateError::Forbidden(format!(
                    "this node does not own zone {zone_id} (owners: {})",
                    zone.owners.join(", ")
                )));
            }
            let mut input = checked;
            if let Some(old) = &existing {
                if keep_ttl {
                    input.ttl = old.ttl;
                }
                if old.ttl == input.ttl {
                    return Ok((None, (old.clone(), existing.clone()), json!({})));
                }
            }
            let obj = zones::zone_obj(&r.ranked(), &zone_id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {zone_id}")))?;
            let mut record = None;
            let change = r.change(key, |tx| {
                record = Some(zones::put_record(tx, &zone_id, &obj, &input, &me, hlc)?);
                Ok(())
            })?;
            let record = record.ok_or_else(|| StateError::Internal("no record".into()))?;
            let body = json!({
                "zone": zone_id, "record": record.id, "type": record.rtype,
                "name": record.name, "value": record.value, "ttl": record.ttl,
            });
            Ok((change, (record, existing), body))
        })
        .await
    }

    /// Deletes record `id` (this node must own its zone).
    pub async fn delete_record(&self, id: &str) -> Result<Record, StateError> {
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        self.local_write(DocId::Zones, "record.delete", move |r, key, _| {
            let record = zones::find_record(&r.ranked(), &id)
                .ok_or_else(|| StateError::NotFound(format!("no record {id}")))?;
            if !zones::is_owner(&r.ranked(), &record.zone_id, &me) {
                return Err(StateError::Forbidden(format!(
                    "this node does not own zone {}",
                    record.zone_id
                )));
            }
            let obj = zones::zone_obj(&r.ranked(), &record.zone_id)
                .ok_or_else(|| StateError::NotFound(format!("no zone {}", record.zone_id)))?;
            let change = r.change(key, |tx| zones::delete_record(tx, &obj, &id).map(|_| ()))?;
            let body = json!({ "zone": record.zone_id, "record": id });
            Ok((change, record, body))
        })
        .await
    }

    /// Registers (or refreshes) a service endpoint of this node. Registering an endpoint that
    /// is already there unchanged writes nothing.
    pub async fn register_endpoint(&self, input: EndpointInput) -> Result<Endpoint, StateError> {
        let input = endpoints::check_endpoint(&input)?;
        let me = self.inner.node_id.clone();
        let zones_now = self.zones_meta();
        if !authority::may_serve_endpoint(&self.authority(), &zones_now, &me, &input.service) {
            let zone = zones::zone_for(&zones_now, &authority::norm(&input.service))
                .map(|z| z.id.clone())
                .unwrap_or_default();
            return Err(StateError::Forbidden(format!(
                "{} is inside zone {zone}, which this node does not own: only its owners (or a \
                 node they delegated the name to: voike zone delegate) may register endpoints \
                 for its names",
                input.service
            )));
        }
        self.local_write(DocId::Endpoints, "endpoint.register", move |r, key, hlc| {
            let id = endpoints::endpoint_id(&me, &input);
            if let Some(old) = endpoints::find_endpoint(r.doc(), &id)
                && old.node == me
                && old.region == input.region
                && old.capabilities == input.capabilities
                && old.weight == input.weight
            {
                return Ok((None, old, json!({})));
            }
            let mut endpoint = None;
            let change = r.change(key, |tx| {
                endpoint = Some(endpoints::put_endpoint(tx, &me, &input, hlc)?);
                Ok(())
            })?;
            let endpoint = endpoint.ok_or_else(|| StateError::Internal("no endpoint".into()))?;
            let body = json!({
                "endpoint": endpoint.id, "service": endpoint.service,
                "address": endpoint.address, "port": endpoint.port,
            });
            Ok((change, endpoint, body))
        })
        .await
    }

    /// Removes endpoint `id` (only this node's own endpoints).
    pub async fn delete_endpoint(&self, id: &str) -> Result<Endpoint, StateError> {
        let me = self.inner.node_id.clone();
        let id = id.to_string();
        self.local_write(DocId::Endpoints, "endpoint.delete", move |r, key, _| {
            let endpoint = endpoints::find_endpoint(r.doc(), &id)
                .ok_or_else(|| StateError::NotFound(format!("no endpoint {id}")))?;
            if endpoint.node != me {
                return Err(StateError::Forbidden(format!(
                    "endpoint {id} belongs to node {}",
                    endpoint.node
                )));
            }
            let change = r.change(key, |tx| {
                endpoints::delete_endpoint(tx, &me, &id).map(|_| ())
            })?;
            Ok((change, endpoint, json!({ "endpoint": id })))
        })
        .await
    }

    /// Stores a grid job submitted to this node.
    pub async fn submit_job(&self, input: JobInput) -> Result<jobs::Job, StateError> {
        let input = jobs::check_job(&input)?;
        let me = self.inner.node_id.clone();
        let now = now_ms();
        let doc = DocId::job_epoch_at(now);
        if self.docs().closed.contains(&doc) {
            return Err(StateError::Internal(format!(
                "this node's clock is back in {doc}, which it closed; check the clock"
            )));
        }
        self.local_write(doc, "job.submit", move |r, key, hlc| {
            let mut job = None;
            let change = r.change(key, |tx| {
                job = Some(jobs::put_job(tx, &me, &input, hlc, now)?);
                Ok(())
            })?;
            let job = job.ok_or_else(|| StateError::Internal("no job".into()))?;
            let body = json!({
                "job": job.id, "module": job.spec.module, "entry": job.spec.entry,
                "split": job.spec.split, "replicas": job.spec.replicas,
            });
            Ok((change, job, body))
        })
        .await
    }

    /// Claims segment `segment` of job `job`, with a lease until `lease_until_ms` (renewals
    /// go outside the document: [`StateHandle::renew_lease`]).
    pub async fn claim_segment(
        &self,
        job: &str,
        segment: u32,
        lease_until_ms: u64,
        attempt: u32,
    ) -> Result<(), StateError> {
        let me = self.inner.node_id.clone();
        let doc = self.job_doc(job)?;
        let job = job.to_string();
        self.local_write(doc, "job.claim", move |r, key, hlc| {
            let change = r.change(key, |tx| {
                jobs::put_claim(tx, &me, &job, segment, lease_until_ms, attempt, hlc).map(|_| ())
            })?;
            let body = json!({ "job": job, "segment": segment, "lease_until_ms": lease_until_ms, "attempt": attempt });
            Ok((change, (), body))
        })
        .await
    }

    /// Records this node's signed result of a segment and drops its claim, in one change.
    pub async fn finish_segment(&self, result: jobs::SegmentResult) -> Result<(), StateError> {
        let me = self.inner.node_id.clone();
        let doc = self.job_doc(&result.job)?;
        self.local_write(doc, "job.result", move |r, key, hlc| {
            let change = r.change(key, |tx| {
                jobs::put_result(tx, &me, &result, hlc)?;
                jobs::delete_claim(tx, &me, &result.job, result.segment)?;
                Ok(())
            })?;
            let body = json!({
                "job": result.job, "segment": result.segment, "status": result.status,
                "fuel_used": result.fuel_used, "duration_us": result.duration_us,
            });
            Ok((change, (), body))
        })
        .await
    }

    // ---- retention ----------------------------------------------------------------------

    fn retention_ms(&self) -> u64 {
        self.inner
            .retention_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes every jobs document whose time is up: an epoch closes once `grid.retention` has
    /// passed since its hour ended and every job in it is done, failed or cancelled, and at the
    /// latest when twice the retention has passed (a job still pending then is dropped with
    /// it). The legacy `jobs` document counts from its newest job. Closing drops the document
    /// from memory and from `state.redb` and marks it closed, so that it is never merged or
    /// served again; the ledger entries of its changes stay. Each node decides by its own clock.
    ///
    /// Returns when a close may next be due: `(at, on_change)`: the earliest time, and whether
    /// a document is only waiting for its jobs to end (then any job change may make it due).
    pub async fn close_expired_jobs(&self) -> (Option<u64>, bool) {
        let now = now_ms();
        let retention = self.retention_ms();
        let mut next: Option<u64> = None;
        let mut on_change = false;
        let mut due = Vec::new();
        {
            let mut docs = self.docs();
            // Those not even loaded (see `open`): their changes are not counted.
            for doc in std::mem::take(&mut docs.due_unloaded) {
                due.push((doc, None, None));
            }
            for doc in docs.job_docs() {
                let r = docs.replica(doc);
                if r.is_empty() {
                    continue;
                }
                let views = jobs::jobs(r.doc(), now);
                let end = doc
                    .epoch_end_ms()
                    .unwrap_or_else(|| views.iter().map(|v| v.job.submitted_ms).max().unwrap_or(0));
                let soft = end.saturating_add(retention);
                let hard = soft.saturating_add(retention);
                let ended = views.iter().all(|v| {
                    matches!(
                        v.state,
                        jobs::JobState::Done | jobs::JobState::Failed | jobs::JobState::Cancelled
                    )
                });
                if now >= hard || (now >= soft && ended) {
                    due.push((doc, Some(views.len()), Some(r.len())));
                    continue;
                }
                let at = if now < soft { soft } else { hard };
                on_change |= now >= soft;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for (doc, jobs, changes) in due {
            let order = self.inner.write_order.lock().await;
            let held = {
                let mut docs = self.docs();
                docs.closed.insert(doc);
                docs.next.remove(&doc);
                docs.unapplied.remove(&doc);
                docs.jobs_index.remove(&doc);
                docs.replicas.remove(&doc)
            };
            // Queued after every write of the document (the store commits in order).
            let written = self
                .inner
                .store
                .write(vec![
                    voike_storage::docs::delete_doc(doc),
                    WriteOp::Put {
                        table: voike_storage::Table::Meta,
                        key: closed_key(doc),
                        value: now.to_be_bytes().to_vec(),
                    },
                ])
                .await;
            match written {
                Ok(()) => {
                    drop(order);
                    self.inner.metrics.job_docs_closed.inc();
                    info!(doc = %doc, jobs, changes, loaded = jobs.is_some(), "closed a jobs document after its retention");
                }
                Err(e) if jobs.is_none() => {
                    // Never loaded: held closed in memory, tried again on the next pass.
                    error!(doc = %doc, error = %e, "cannot close a jobs document; trying again");
                    self.docs().due_unloaded.push(doc);
                    drop(order);
                    next = Some(now + 60_000);
                }
                Err(e) => {
                    error!(doc = %doc, error = %e, "cannot close a jobs document; keeping it");
                    let mut docs = self.docs();
                    docs.closed.remove(&doc);
                    if let Some(r) = held {
                        docs.replicas.insert(doc, r);
                    }
                    drop(docs);
                    drop(order);
                    self.reload(doc);
                }
            }
            self.bump_versions(Some(doc));
        }
        let open = {
            let mut docs = self.docs();
            docs.job_docs()
                .into_iter()
                .filter(|d| !docs.replica(*d).is_empty())
                .count()
        };
        self.inner.metrics.job_docs_open.set(open as i64);
        (next, on_change)
    }

    /// Closes jobs documents as their time comes (see `close_expired_jobs`): sleeps until the
    /// next deadline, or until a document change when one only waits for its jobs to end, and
    /// not at all while no jobs document is open.
    pub async fn run_retention(self, cancel: tokio_util::sync::CancellationToken) {
        let mut docs = self.watch_docs();
        loop {
            let (next, on_change) = self.close_expired_jobs().await;
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep => {}
                r = docs.changed(), if on_change || next.is_none() => {
                    if r.is_err() {
                        return;
                    }
                    // A burst of job changes is judged once.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    docs.borrow_and_update();
                }
            }
        }
    }

    // ---- reads --------------------------------------------------------------------------

    /// The jobs document that holds job `id` (claims and results go where their job is).
    fn job_doc(&self, id: &str) -> Result<DocId, StateError> {
        let mut docs = self.docs();
        for doc in docs.job_docs().into_iter().rev() {
            if jobs::job(docs.replica(doc).doc(), id, 0).is_some() {
                return Ok(doc);
            }
        }
        Err(StateError::NotFound(format!("no job {id}")))
    }

    /// Every grid job with its derived state at `now_ms` (of every open jobs document), leases
    /// moved on by the renewals heard.
    pub fn jobs(&self, now_ms: u64) -> Vec<jobs::JobView> {
        let mut docs = self.docs();
        let leases = self.leases();
        let mut out = Vec::new();
        for doc in docs.job_docs() {
            out.extend(docs.jobs_index(doc).views_with(now_ms, Some(&leases)));
        }
        out
    }

    /// One grid job, leases moved on by the renewals heard.
    pub fn job(&self, id: &str, now_ms: u64) -> Option<jobs::JobView> {
        let mut docs = self.docs();
        let leases = self.leases();
        docs.job_docs()
            .into_iter()
            .rev()
            .find_map(|doc| jobs::job_with(docs.replica(doc).doc(), id, now_ms, Some(&leases)))
    }

    fn leases(&self) -> MutexGuard<'_, LeaseBook> {
        lock(&self.inner.leases)
    }

    /// Takes `runner`'s renewal of its claim (signature checked by the caller): kept only when
    /// an open jobs document holds that runner's claim with the same attempt, so the renewals
    /// held are bounded by the live claims.
    pub fn renew_lease(&self, runner: &str, renewal: &RenewalBody, now_ms: u64) -> LeaseOutcome {
        let mut docs = self.docs();
        let held = docs.job_docs().into_iter().rev().find_map(|doc| {
            jobs::claim(
                docs.replica(doc).doc(),
                runner,
                &renewal.job,
                renewal.segment,
            )
        });
        match held {
            Some(c) if c.attempt == renewal.attempt => {}
            _ => return LeaseOutcome::Unknown,
        }
        let mut leases = self.leases();
        if leases.len() > 256 {
            leases.prune(now_ms);
        }
        match leases.note(runner, renewal, now_ms) {
            Noted::Renewed => LeaseOutcome::Renewed,
            Noted::Stale => LeaseOutcome::Stale,
            Noted::Full => LeaseOutcome::Full,
        }
    }

    /// Every registered endpoint.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.docs().endpoints_index().endpoints()
    }

    /// Resolves when a document changed (locally or by merging) after the last seen version.
    /// Changes whenever a document DNS serves from (zones, endpoints, members) changed.
    pub fn watch_served_docs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.served_version.subscribe()
    }

    fn bump_versions(&self, doc: Option<DocId>) {
        self.inner.docs_version.send_modify(|v| *v += 1);
        if doc.is_some_and(|d| d.is_jobs()) {
            return;
        }
        // Where the zones document was written, taken before the version moves so that the
        // DNS task woken by it finds them.
        let touched = match doc {
            Some(DocId::Zones) => Some(self.docs().replica(DocId::Zones).take_touched()),
            _ => None,
        };
        {
            let mut c = lock(&self.inner.served_changes);
            match (doc, touched) {
                (Some(DocId::Zones), Some(Some(paths))) => {
                    for p in paths {
                        match p.as_slice() {
                            [zone, records, id] if records == "records" => {
                                c.records.insert((zone.clone(), id.clone()));
                            }
                            [zone, ..] => {
                                c.zones.insert(zone.clone());
                            }
                            [] => c.all = true,
                        }
                    }
                }
                (Some(DocId::Endpoints), _) => c.endpoints = true,
                _ => c.all = true,
            }
        }
        self.inner.served_version.send_modify(|v| *v += 1);
    }

    /// What changed in the documents DNS serves since the last call (everything, the first
    /// time).
    pub fn take_served_changes(&self) -> ServedChanges {
        std::mem::replace(&mut lock(&self.inner.served_changes), ServedChanges::none())
    }

    /// Record `record_id` of zone `zone_id`, if both exist.
    pub fn record(&self, zone_id: &str, record_id: &str) -> Option<Record> {
        zones::record(
            &self.docs().replica(DocId::Zones).ranked(),
            zone_id,
            record_id,
        )
    }

    pub fn watch_docs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.docs_version.subscribe()
    }

    pub fn zones(&self) -> Vec<Zone> {
        zones::zones(&self.docs().replica(DocId::Zones).ranked())
    }

    /// [`StateHandle::zones`] without record counts (see [`zones::zones_meta`]).
    pub fn zones_meta(&self) -> Vec<Zone> {
        zones::zones_meta(&self.docs().replica(DocId::Zones).ranked())
    }

    pub fn zone(&self, id: &str) -> Option<Zone> {
        zones::zone(&self.docs().replica(DocId::Zones).ranked(), id)
    }

    pub fn records(&self, zone_id: &str) -> Option<Vec<Record>> {
        zones::records(&self.docs().replica(DocId::Zones).ranked(), zone_id)
    }

    /// A page of a zone's records ordered by id (see [`zones::records_page`]).
    pub fn records_page(
        &self,
        zone_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(Vec<Record>, bool)> {
        zones::records_page(
            &self.docs().replica(DocId::Zones).ranked(),
            zone_id,
            after,
            limit,
        )
    }

    /// Checks that every document change this node's own ledger chain records is stored and
    /// applied (see `POST /ledger/verify`). Reads the chain and the stored changes from disk.
    pub fn check_recorded_changes(&self) -> Result<ChangeCheck, StateError> {
        let author = self.inner.own_author.clone();
        let head = self.inner.store.ledger_head(&author)?;
        let mut check = ChangeCheck::default();
        let mut stored: HashMap<DocId, HashSet<ChangeHash>> = HashMap::new();
        let mut next = 1;
        while next <= head.seq {
            let batch = self.inner.store.ledger_range(&author, next, 1024)?;
            let Some(last) = batch.last() else { break };
            next = last.body.seq + 1;
            for e in batch {
                // Trust events name changes this node refused, not changes it made.
                if e.body.kind.starts_with("trust.") {
                    continue;
                }
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&e.body.body) else {
                    continue;
                };
                let (Some(doc), Some(change)) = (body["doc"].as_str(), body["change"].as_str())
                else {
                    continue;
                };
                let Some(doc) = DocId::parse(doc) else {
                    continue;
                };
                if self.docs().closed.contains(&doc) {
                    // Dropped with its jobs epoch after the retention: the ledger entry is
                    // what remains of it, by design.
                    check.expired += 1;
                    continue;
                }
                let Some(hash) = parse_change_hash(change) else {
                    continue;
                };
                check.recorded += 1;
                let (held, reason) = {
                    let mut docs = self.docs();
                    let held = docs.replica(doc).has(&hash);
                    let reason = docs
                        .unapplied
                        .get(&doc)
                        .and_then(|u| u.iter().find(|u| u.hash == Some(hash)))
                        .map(|u| u.reason.to_string());
                    (held, reason)
                };
                if held {
                    continue;
                }
                let set = match stored.entry(doc) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let (changes, _) = self.inner.store.doc_changes(doc)?;
                        v.insert(
                            changes
                                .iter()
                                .filter_map(|c| automerge::Change::try_from(&c.bytes[..]).ok())
                                .map(|c| c.hash())
                                .collect(),
                        )
                    }
                };
                let problem = if set.contains(&hash) {
                    format!(
                        "stored but not applied: {}",
                        reason.unwrap_or_else(|| "not applied at start".into())
                    )
                } else {
                    "not stored".into()
                };
                check.faults.push(ChangeFault {
                    seq: e.body.seq,
                    kind: e.body.kind.clone(),
                    doc: doc.name(),
                    change: hash.to_string(),
                    problem,
                });
            }
        }
        let faults = std::mem::take(&mut check.faults);
        for f in faults {
            let repaired = parse_change_hash(&f.change).is_some_and(|h| {
                DocId::parse(&f.doc)
                    .and_then(|d| {
                        self.inner
                            .store
                            .get(voike_storage::Table::Meta, &repaired_key(d, &h))
                            .ok()
                            .flatten()
                    })
                    .is_some()
            });
            if repaired {
                check.repaired += 1;
            } else {
                check.faults.push(f);
            }
        }
        Ok(check)
    }

    /// Stored changes the last rebuild could not apply, as one line per change.
    pub fn unapplied(&self) -> Vec<String> {
        let docs = self.docs();
        let mut out = Vec::new();
        for doc in docs.ids() {
            for u in docs.unapplied.get(&doc).into_iter().flatten() {
                out.push(format!(
                    "{}: stored change {} (position {}) cannot be applied: {}",
                    doc,
                    u.hash.map(|h| h.to_string()).unwrap_or_else(|| "?".into()),
                    u.index,
                    u.reason
                ));
            }
        }
        out
    }

    /// Number of changes held per document.
    pub fn doc_sizes(&self) -> Vec<(DocId, usize)> {
        let mut docs = self.docs();
        docs.ids()
            .into_iter()
            .map(|d| (d, docs.replica(d).len()))
            .collect()
    }

    // ---- sync ---------------------------------------------------------------------------

    /// What this node holds.
    pub fn digest(&self) -> Result<Digest, StateError> {
        let docs = {
            let mut d = self.docs();
            let mut ids = d.ids();
            // The newest epochs first when there are more than a digest lists.
            if ids.len() > MAX_DIGEST_DOCS {
                ids.drain(DocId::ALL.len()..ids.len() - (MAX_DIGEST_DOCS - DocId::ALL.len()));
            }
            ids.into_iter()
                .filter_map(|doc| {
                    let r = d.replica(doc);
                    if doc.epoch_end_ms().is_some() && r.is_empty() {
                        return None;
                    }
                    let mut heads = heads_to_bytes(&r.heads());
                    // A digest lists at most MAX_HEADS per document; the pull that follows
                    // sends whatever the listed heads do not cover.
                    heads.truncate(MAX_HEADS);
                    Some((doc, heads))
                })
                .collect()
        };
        let heads = self.inner.store.ledger_heads()?;
        Ok(Digest {
            docs,
            ledger: heads_hash(&heads),
            ledger_entries: heads.iter().map(|h| h.head.seq).sum(),
        })
    }

    /// Documents for which `theirs` lists heads this node neither holds nor refused.
    pub fn docs_behind(&self, theirs: &Digest) -> Vec<DocId> {
        let docs = self.docs();
        let rejected = lock(&self.inner.rejected);
        let now = now_ms();
        theirs
            .docs
            .iter()
            .filter(|(doc, heads)| {
                if doc.is_jobs() && !self.may_open(&docs, *doc, now) {
                    return false;
                }
                let r = docs.replicas.get(doc);
                heads.iter().any(|h| {
                    let h = ChangeHash(*h);
                    !r.is_some_and(|r| r.has(&h)) && !rejected.set.contains(&h.0)
                })
            })
            .map(|(doc, _)| *doc)
            .collect()
    }

    /// Whether changes of jobs epoch `doc` are taken: not closed here, begun (allowing for the
    /// skew bound), and not so old that it would close at once (see `close_expired_jobs`).
    fn may_open(&self, docs: &Docs, doc: DocId, now: u64) -> bool {
        if docs.closed.contains(&doc) {
            return false;
        }
        if docs.replicas.contains_key(&doc) {
            return true;
        }
        let Some(end) = doc.epoch_end_ms() else {
            return true;
        };
        let retention = self.retention_ms();
        end - voike_protocol::docs::JOB_EPOCH_MS <= now + self.inner.max_future_ms
            && end.saturating_add(retention.saturating_mul(2)) > now
    }

    pub fn heads(&self, doc: DocId) -> Vec<[u8; 32]> {
        self.docs()
            .replicas
            .get(&doc)
            .map(|r| heads_to_bytes(&r.heads()))
            .unwrap_or_default()
    }

    /// A page of the changes of `doc` that a holder of `heads` lacks.
    pub fn changes_since(
        &self,
        doc: DocId,
        heads: &[[u8; 32]],
        offset: usize,
    ) -> (Vec<SignedChange>, bool) {
        let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
        let mut docs = self.docs();
        if doc.epoch_end_ms().is_some() && !docs.replicas.contains_key(&doc) {
            // Closed here, or never held: nothing to send (and no document is opened for it).
            return (Vec::new(), false);
        }
        let unsaved = docs.unsaved.clone();
        let (mut changes, more) = docs.replica(doc).changes_since(&heads, offset, PAGE_BYTES);
        if !unsaved.is_empty()
            && let Some(first) = changes.iter().position(|c| {
                automerge::Change::try_from(&c.bytes[..])
                    .map(|ch| unsaved.contains(&ch.hash()))
                    .unwrap_or(true)
            })
        {
            // Not durable yet: the page ends before it; the announcement made once it is
            // durable brings the asker back for the rest.
            changes.truncate(first);
            return (changes, false);
        }
        (changes, more)
    }

    /// Checks and merges changes of `doc` received from `from`; returns how many were merged.
    pub async fn receive_changes(
        &self,
        from: PeerId,
        doc: DocId,
        changes: Vec<SignedChange>,
    ) -> Result<usize, StateError> {
        let roster = self.roster();
        // Merged changes take their place in the store's queue in the order they were merged,
        // before any later change (which may depend on them) is made; see `local_write`.
        let order = self.inner.write_order.lock().await;
        let (outcome, ops): (Outcome, Vec<WriteOp>) = {
            let mut docs = self.docs();
            if doc.is_jobs() && !self.may_open(&docs, doc, now_ms()) {
                drop(docs);
                let start = doc
                    .epoch_end_ms()
                    .map_or(0, |end| end - voike_protocol::docs::JOB_EPOCH_MS);
                let now = now_ms();
                for c in &changes {
                    let hash = automerge::Change::try_from(&c.bytes[..])
                        .ok()
                        .map(|c| c.hash());
                    if start > now {
                        let reason = Reject::Future {
                            ahead_ms: start - now,
                            max_ms: self.inner.max_future_ms,
                        };
                        self.change_rejected(from, doc, hash, &reason);
                    } else {
                        // A peer that keeps the hour longer (its own retention) is no fault:
                        // counted, not reported as a trust event.
                        if let Some(h) = hash {
                            lock(&self.inner.rejected).insert(h.0);
                        }
                        self.inner
                            .metrics
                            .changes_rejected
                            .get_or_create(&ReasonLabel {
                                reason: "expired".into(),
                            })
                            .inc();
                    }
                }
                debug!(%from, doc = %doc, changes = changes.len(), "changes of a closed or expired jobs document left out");
                return Ok(0);
            }
            let outcome = docs.replica(doc).receive_at(
                changes,
                &roster,
                now_ms(),
                self.inner.max_future_ms,
            )?;
            let ops = outcome
                .applied
                .iter()
                .map(|c| {
                    let p = docs.position(doc);
                    put_change(p, c)
                })
                .collect();
            (outcome, ops)
        };
        for (hash, reason) in &outcome.rejected {
            self.change_rejected(from, doc, *hash, reason);
        }
        let n = outcome.applied.len();
        if n == 0 {
            return Ok(0);
        }
        let written = match self.inner.store.submit(ops).await {
            Ok(pending) => {
                drop(order);
                pending.wait().await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Never keep in memory what the store does not hold.
            error!(doc = doc.as_str(), error = %e, "cannot store merged changes; reloading the document");
            self.reload(doc);
            return Err(e.into());
        }
        self.inner
            .metrics
            .changes_applied
            .get_or_create(&DocLabel {
                doc: doc.as_str().into(),
            })
            .inc_by(n as u64);
        if doc == DocId::Members {
            self.refresh_authority();
        }
        self.inner.changed.notify_one();
        self.bump_versions(Some(doc));
        debug!(%from, doc = doc.as_str(), merged = n, pending = outcome.pending, "merged changes");
        Ok(n)
    }

    fn change_rejected(&self, from: PeerId, doc: DocId, hash: Option<ChangeHash>, r: &Reject) {
        // A change refused for what its hash covers is remembered so that it is not pulled
        // again (a bad signature is not: the next copy may carry the right one); every refused
        // change is counted and reported once (one refused only for now, because its author is
        // not known here yet, may still be merged later).
        if let Some(h) = hash {
            if r.holds_for_hash() {
                lock(&self.inner.rejected).insert(h.0);
            }
            if !lock(&self.inner.reported).insert(h.0) {
                return;
            }
        }
        self.inner
            .metrics
            .changes_rejected
            .get_or_create(&ReasonLabel {
                reason: r.as_str().into(),
            })
            .inc();
        if matches!(r, Reject::Future { .. }) {
            self.inner
                .metrics
                .clock_future_total
                .get_or_create(&ReasonLabel {
                    reason: "change".into(),
                })
                .inc();
        }
        warn!(%from, doc = doc.as_str(), change = hash.map(|h| h.to_string()), reason = %r, "refused a document change");
        self.trust_event(
            "trust.change_rejected",
            json!({
                "doc": doc.as_str(),
                "from": from.to_string(),
                "change": hash.map(|h| h.to_string()),
                "reason": r.as_str(),
                "detail": r.to_string(),
            }),
        );
    }

    fn trust_event(&self, kind: &str, body: serde_json::Value) {
        let mut budget = lock(&self.inner.trust_budget);
        if budget.0.elapsed() >= Duration::from_secs(60) {
            *budget = (Instant::now(), 0);
        }
        if budget.1 >= TRUST_EVENTS_PER_MINUTE {
            return;
        }
        budget.1 += 1;
        self.inner.ledger.record(kind, body);
    }

    /// This node's ledger positions, for a pull.
    pub fn ledger_have(&self) -> Result<Vec<(Vec<u8>, u64)>, StateError> {
        Ok(self
            .inner
            .store
            .ledger_heads()?
            .into_iter()
            .map(|h| (h.author, h.head.seq))
            .collect())
    }

    /// Entries a holder of `have` lacks, up to a page; and whether more remain. An author listed
    /// with `u64::MAX` is skipped.
    pub fn ledger_after(&self, have: &[(Vec<u8>, u64)]) -> Result<(Vec<Entry>, bool), StateError> {
        let theirs: HashMap<&[u8], u64> = have.iter().map(|(a, s)| (a.as_slice(), *s)).collect();
        let mut out = Vec::new();
        let mut size = 0usize;
        for h in self.inner.store.ledger_heads()? {
            let from = theirs.get(h.author.as_slice()).copied().unwrap_or(0);
            let mut next = from.saturating_add(1);
            while next <= h.head.seq {
                let batch = self.inner.store.ledger_range(&h.author, next, 256)?;
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    let len = e.body.body.len() + e.body.kind.len() + e.body.author.len() + 128;
                    if !out.is_empty()
                        && (size + len > PAGE_BYTES || out.len() >= MAX_ENTRIES_PER_PAGE)
                    {
                        return Ok((out, true));
                    }
                    next = e.body.seq + 1;
                    size += len;
                    out.push(e);
                }
            }
        }
        Ok((out, false))
    }

    /// Checks and appends ledger entries received from `from`; returns how many were new, and
    /// the authors whose chains this node cannot take from this batch (refused or deferred), so
    /// that the next page skips them.
    pub async fn receive_entries(
        &self,
        from: PeerId,
        entries: Vec<Entry>,
    ) -> Result<(usize, Vec<Vec<u8>>), StateError> {
        let roster = self.roster();
        let auth = self.authority();
        let now = now_ms();
        let mut ops = Vec::new();
        let mut heads: HashMap<Vec<u8>, voike_protocol::ledger::Head> = HashMap::new();
        let mut broken: HashSet<Vec<u8>> = HashSet::new();
        for e in entries {
            let author = e.body.author.clone();
            if broken.contains(&author) {
                continue;
            }
            if author == self.inner.own_author {
                // This node's own chain is written by this node only.
                broken.insert(author);
                continue;
            }
            let reject = |reason: &str, detail: String| {
                self.entry_rejected(from, &e, reason, detail);
            };
            let peer = match e.author() {
                Ok((_, p)) => p,
                Err(err) => {
                    reject("malformed", err.to_string());
                    broken.insert(author);
                    continue;
                }
            };
            if !roster.contains_key(&peer) {
                debug!(%from, author = %peer, "ledger entries of an unknown author deferred");
                broken.insert(author);
                continue;
            }
            if let Some(cutoff) = auth.cutoff(&peer.to_string(), "ledger")
                && e.body.seq > cutoff
            {
                reject(
                    "revoked",
                    format!("{peer} was revoked; entries after {cutoff} are refused"),
                );
                broken.insert(author);
                continue;
            }
            let head = match heads.get(&author) {
                Some(h) => *h,
                None => {
                    let h = self.inner.store.ledger_head(&author)?;
                    heads.insert(author.clone(), h);
                    h
                }
            };
            if e.body.seq <= head.seq {
                // Already held: it must be the very same entry.
                let stored = self.inner.store.ledger_range(&author, e.body.seq, 1)?;
                if stored.first().is_some_and(|s| s.hash() != e.hash()) {
                    reject(
                        "fork",
                        format!("entry {} differs from the stored one", e.body.seq),
                    );
                    broken.insert(author);
                }
                continue;
            }
            if let Err(fault) = e.verify_after(&author, head) {
                let reason = match fault {
                    voike_protocol::ledger::ChainFault::BadSignature { .. } => "bad_signature",
                    voike_protocol::ledger::ChainFault::Gap { .. } => "gap",
                    voike_protocol::ledger::ChainFault::BrokenLink { .. } => "broken_link",
                    _ => "malformed",
                };
                reject(reason, fault.to_string());
                broken.insert(author);
                continue;
            }
            if e.body.hlc.wall_ms > now + self.inner.max_future_ms {
                // A chain cannot be rewritten: refusing its entries would keep the ledgers
                // apart until the wall clock passes the stamp (an hour for a clock an hour
                // ahead), even after the author's clock is corrected. The entry is kept as
                // what its author claims; it does not move this node's clock, and the skew is
                // counted and reported once per author.
                self.inner
                    .metrics
                    .clock_future_total
                    .get_or_create(&ReasonLabel {
                        reason: "entry".into(),
                    })
                    .inc();
                if lock(&self.inner.skew_reported).insert(author.clone()) {
                    warn!(%from, author = %peer, seq = e.body.seq, ahead_ms = e.body.hlc.wall_ms - now, "a member's ledger entry is stamped beyond the skew bound; its clock is ahead");
                    self.trust_event(
                        "trust.clock_skew",
                        json!({
                            "author": peer.to_string(),
                            "seq": e.body.seq,
                            "ahead_ms": e.body.hlc.wall_ms - now,
                            "bound_ms": self.inner.max_future_ms,
                        }),
                    );
                }
            } else {
                let _ = lock(&self.inner.clock).observe(e.body.hlc, now);
            }
            heads.insert(author, e.head());
            ops.push(WriteOp::AppendEntry(Box::new(e)));
        }
        let n = ops.len();
        if n > 0 {
            self.inner.store.write(ops).await?;
            self.inner.metrics.ledger_applied.inc_by(n as u64);
            self.inner.changed.notify_one();
        }
        Ok((n, broken.into_iter().collect()))
    }

    fn entry_rejected(&self, from: PeerId, e: &Entry, reason: &str, detail: String) {
        if !lock(&self.inner.reported).insert(e.hash()) {
            return;
        }
        self.inner
            .metrics
            .ledger_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
        let author = e
            .author()
            .map(|(_, p)| p.to_string())
            .unwrap_or_else(|_| "?".into());
        warn!(%from, %author, seq = e.body.seq, reason, %detail, "refused a ledger entry");
        self.trust_event(
            "trust.entry_rejected",
            json!({
                "from": from.to_string(),
                "author": author,
                "seq": e.body.seq,
                "entry": hex(&e.hash()),
                "reason": reason,
                "detail": detail,
            }),
        );
    }

    /// Refreshes the per-author chain length gauges (called when metrics are scraped).
    pub fn refresh_gauges(&self) {
        if let Ok(heads) = self.inner.store.ledger_heads() {
            for h in heads {
                let author = voike_protocol::signing::peer_id_of(&h.author)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|_| hex(&h.author));
                self.inner
                    .metrics
                    .ledger_chain_length
                    .get_or_create(&crate::metrics::AuthorLabel { author })
                    .set(h.head.seq as i64);
            }
        }
    }
}
