//! Acting as a modified client: changes signed with a member's own key that its daemon would
//! never make, written into the member's store while it is stopped. When it starts again it
//! offers them to the others like any change of its own, so what the others do with them is
//! what they would do with the same bytes from a client someone rewrote.

use voike_protocol::docs::{DocId, Replica, SignedChange};
use voike_protocol::hlc::Hlc;
use voike_protocol::{Keypair, zones};
use voike_storage::docs::put_change;
use voike_storage::{Store, keyfile};

use crate::TestNode;

/// Where a forged change starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// The member's stored document: the change depends on everything the member holds.
    Stored,
    /// An empty document: the change depends on nothing, as if the member had been cut off
    /// since before anything was written (a partition, or a client that hides what it saw).
    Nothing,
}

/// An HLC `ahead_ms` in the future (a writer chooses its own stamps).
pub fn hlc_ahead(ahead_ms: u64) -> Hlc {
    Hlc {
        wall_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + ahead_ms,
        counter: 0,
    }
}

/// Makes changes of `doc` with the key of `node` (which must be stopped) and stores them after
/// its own, as its daemon would have. `build` gets the replica, the key and the node id, and
/// returns the signed changes in order.
pub fn forge(
    node: &TestNode,
    doc: DocId,
    base: Base,
    build: impl FnOnce(&mut Replica, &Keypair, &str) -> anyhow::Result<Vec<SignedChange>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (store, thread) = Store::open(&node.dir.join("state.redb"))?;
    let (key, _) = keyfile::load_or_create_identity(&node.dir.join("node.key"))?;
    let me = key.public().to_peer_id().to_string();
    let (stored, next) = store.doc_changes(doc)?;
    let mut r = Replica::new(doc);
    if base == Base::Stored {
        r.load(stored)?;
    }
    let changes = build(&mut r, &key, &me)?;
    let ops = changes
        .iter()
        .enumerate()
        .map(|(i, c)| put_change(next + i as u64, c))
        .collect();
    rt.block_on(store.write(ops))?;
    drop(store);
    thread.join();
    Ok(())
}

/// One change: `f` on the replica, which must change something.
pub fn one(
    r: &mut Replica,
    key: &Keypair,
    f: impl FnOnce(
        &mut automerge::transaction::Transaction<'_>,
    ) -> Result<(), voike_protocol::docs::DocError>,
) -> anyhow::Result<SignedChange> {
    r.change(key, f)?
        .ok_or_else(|| anyhow::anyhow!("the forged change changed nothing"))
}

/// A forged claim of zone `id` for `domain` by `me`, stamped `ahead_ms` in the future.
pub fn claim_zone(
    r: &mut Replica,
    key: &Keypair,
    me: &str,
    id: &str,
    domain: &str,
    ahead_ms: u64,
) -> anyhow::Result<SignedChange> {
    one(r, key, |tx| {
        zones::create_zone(tx, id, domain, me, hlc_ahead(ahead_ms))
    })
}
