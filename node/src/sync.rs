//! The sync worker: turns digests (gossiped announcements and anti-entropy answers) into pulls.
//!
//! One task handles one digest at a time: for each document whose heads it does not hold, it
//! pulls the missing changes page by page from the peer that announced them; when the ledger
//! heads differ it pulls ledger entries after its own positions. Everything received goes through
//! [`StateHandle`]'s checks. Anti-entropy asks a random connected member for its digest; when the
//! heads match, that is the whole round.

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::debug;
use voike_protocol::docs::DocId;
use voike_protocol::sync::{Digest, SyncRequest, SyncResponse};

use crate::metrics::RoundLabel;
use crate::state::StateHandle;
use crate::swarm::SwarmHandle;

/// Most pages pulled in one round (per document or ledger); the next round continues.
const MAX_PAGES: usize = 1000;
/// Queued sync tasks.
pub const QUEUE: usize = 256;

/// Work for the sync worker.
#[derive(Debug)]
pub enum SyncTask {
    /// `peer` announced (or answered with) `digest`.
    Digest {
        peer: PeerId,
        digest: Digest,
        kind: &'static str,
    },
    /// Run an anti-entropy round with `peer`.
    AntiEntropy { peer: PeerId },
}

/// Serves a pull from the local state (runs on a blocking thread).
pub fn serve(state: &StateHandle, req: SyncRequest) -> SyncResponse {
    match req {
        SyncRequest::Digest(_) => match state.digest() {
            Ok(d) => SyncResponse::Digest(d),
            Err(e) => SyncResponse::Refused(e.to_string()),
        },
        SyncRequest::Changes { doc, heads, offset } => {
            let (changes, more) = state.changes_since(doc, &heads, offset as usize);
            SyncResponse::Changes { changes, more }
        }
        SyncRequest::Ledger { have } => match state.ledger_after(&have) {
            Ok((entries, more)) => SyncResponse::Ledger { entries, more },
            Err(e) => SyncResponse::Refused(e.to_string()),
        },
        SyncRequest::Module { hash } => match state
            .store()
            .get(voike_storage::Table::Modules, hash.as_bytes())
        {
            Ok(bytes) => SyncResponse::Module(bytes),
            Err(e) => SyncResponse::Refused(e.to_string()),
        },
    }
}

/// Runs the worker until every sender is gone.
pub async fn run(state: StateHandle, net: SwarmHandle, mut rx: mpsc::Receiver<SyncTask>) {
    let mut queue: VecDeque<SyncTask> = VecDeque::new();
    // The last digest of each peer that was pulled without gaining anything (it holds only
    // changes this node refuses or defers): announcements of the same digest are skipped;
    // anti-entropy rounds still retry.
    let mut fruitless: HashMap<PeerId, Digest> = HashMap::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(t) => queue.push_back(t),
                None => return,
            }
        }
        while let Ok(t) = rx.try_recv() {
            queue.push_back(t);
        }
        // Of several digests from one peer only the newest matters.
        let Some(task) = queue.pop_front() else {
            continue;
        };
        if let SyncTask::Digest { peer, .. } = &task
            && queue
                .iter()
                .any(|t| matches!(t, SyncTask::Digest { peer: p, .. } if p == peer))
        {
            continue;
        }
        let (kind, peer, digest) = match task {
            SyncTask::Digest { peer, digest, kind } => {
                if kind == "announce" && fruitless.get(&peer) == Some(&digest) {
                    continue;
                }
                (kind, peer, Ok(digest))
            }
            SyncTask::AntiEntropy { peer } => (
                "anti_entropy",
                peer,
                match net.sync(peer, SyncRequest::Digest(mine(&state))).await {
                    Ok(SyncResponse::Digest(d)) => Ok(d),
                    Ok(other) => Err(format!("unexpected answer {}", name(&other))),
                    Err(e) => Err(e),
                },
            ),
        };
        let result = match digest {
            Ok(d) => {
                let r = on_digest(&state, &net, peer, &d).await;
                match r {
                    Ok(Some(0)) => {
                        fruitless.insert(peer, d);
                    }
                    Ok(_) => {
                        fruitless.remove(&peer);
                    }
                    Err(_) => {}
                }
                r
            }
            Err(e) => Err(e),
        };
        if fruitless.len() > 1024 {
            fruitless.clear();
        }
        let result = match result {
            Ok(Some(_)) => "pulled",
            Ok(None) => "in_sync",
            Err(e) => {
                debug!(error = %e, "sync round failed");
                "failed"
            }
        };
        state
            .metrics()
            .rounds
            .get_or_create(&RoundLabel {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }
}

fn mine(state: &StateHandle) -> voike_protocol::sync::Digest {
    state.digest().unwrap_or(Digest {
        docs: Vec::new(),
        ledger: [0; 32],
        ledger_entries: 0,
    })
}

fn name(r: &SyncResponse) -> &'static str {
    match r {
        SyncResponse::Digest(_) => "digest",
        SyncResponse::Changes { .. } => "changes",
        SyncResponse::Ledger { .. } => "ledger",
        SyncResponse::Module(_) => "module",
        SyncResponse::Busy => "busy",
        SyncResponse::Refused(_) => "refused",
    }
}

/// Pulls whatever `theirs` shows this node lacks; returns `None` when nothing was missing, else
/// how many changes and entries were merged.
async fn on_digest(
    state: &StateHandle,
    net: &SwarmHandle,
    peer: PeerId,
    theirs: &Digest,
) -> Result<Option<usize>, String> {
    let behind = state.docs_behind(theirs);
    let own = mine(state);
    let ledger_differs = theirs.ledger != own.ledger && theirs.ledger_entries > 0;
    if behind.is_empty() && !ledger_differs {
        return Ok(None);
    }
    let mut merged = 0;
    for doc in behind {
        merged += pull_changes(state, net, peer, doc).await?;
    }
    if ledger_differs {
        merged += pull_ledger(state, net, peer).await?;
    }
    Ok(Some(merged))
}

async fn pull_changes(
    state: &StateHandle,
    net: &SwarmHandle,
    peer: PeerId,
    doc: DocId,
) -> Result<usize, String> {
    let heads = state.heads(doc);
    let mut offset = 0u32;
    let mut merged = 0;
    for _ in 0..MAX_PAGES {
        let req = SyncRequest::Changes {
            doc,
            heads: heads.clone(),
            offset,
        };
        match net.sync(peer, req).await? {
            SyncResponse::Changes { changes, more } => {
                let n = changes.len();
                merged += state
                    .receive_changes(peer, doc, changes)
                    .await
                    .map_err(|e| e.to_string())?;
                if !more || n == 0 {
                    return Ok(merged);
                }
                offset = offset.saturating_add(n as u32);
            }
            other => return Err(format!("{peer} answered {}", name(&other))),
        }
    }
    Ok(merged)
}

async fn pull_ledger(
    state: &StateHandle,
    net: &SwarmHandle,
    peer: PeerId,
) -> Result<usize, String> {
    let mut merged = 0;
    // Chains this node cannot take from this peer now (refused or deferred): skipped in the
    // following pages so that they do not hide the other chains.
    let mut skip: Vec<Vec<u8>> = Vec::new();
    for _ in 0..MAX_PAGES {
        let mut have = state.ledger_have().map_err(|e| e.to_string())?;
        have.retain(|(a, _)| !skip.contains(a));
        have.extend(skip.iter().map(|a| (a.clone(), u64::MAX)));
        match net.sync(peer, SyncRequest::Ledger { have }).await? {
            SyncResponse::Ledger { entries, more } => {
                let (n, broken) = state
                    .receive_entries(peer, entries)
                    .await
                    .map_err(|e| e.to_string())?;
                merged += n;
                let skipped = skip.len();
                for a in broken {
                    if !skip.contains(&a) {
                        skip.push(a);
                    }
                }
                if !more || (n == 0 && skip.len() == skipped) {
                    return Ok(merged);
                }
            }
            other => return Err(format!("{peer} answered {}", name(&other))),
        }
    }
    Ok(merged)
}
