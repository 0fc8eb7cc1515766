//! The Truth Ledger actor: appends this node's entries to its own chain.
//!
//! One task owns the chain head and the HLC: it signs entries in order and hands them to the
//! store's group-commit writer without waiting, so concurrent appends share fsyncs; each caller is
//! answered once its entry is durable. If a write fails, the actor reloads its head from the store
//! before signing the next entry. Reads go straight to the store.

use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::identity::Keypair;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, warn};
use voike_protocol::api::{LedgerAnchor, LedgerEntry};
use voike_protocol::hlc::HlcClock;
use voike_protocol::ledger::{Anchor, Entry, Head};
use voike_protocol::signing::{self, hex};
use voike_storage::{Store, StoreError, WriteOp};

/// How far ahead of the local clock a remote entry's HLC may be (milliseconds).
pub const MAX_DRIFT_MS: u64 = 60_000;
const QUEUE: usize = 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum LedgerMsg {
    Append {
        kind: String,
        body: serde_json::Value,
        /// Written in the same transaction as the entry.
        extra: Vec<WriteOp>,
        /// Told once the entry holds its place in the store's queue (or failed to).
        queued: Option<oneshot::Sender<()>>,
        reply: Option<oneshot::Sender<Result<Entry, StoreError>>>,
    },
    Anchor {
        reply: oneshot::Sender<Result<Anchor, StoreError>>,
    },
    Resync,
}

/// Cloneable handle to the ledger.
#[derive(Clone, Debug)]
pub struct LedgerHandle {
    tx: mpsc::Sender<LedgerMsg>,
    store: Store,
    clock: Arc<Mutex<HlcClock>>,
}

impl std::fmt::Debug for LedgerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerMsg")
    }
}

impl LedgerHandle {
    /// Starts the actor for `key`'s chain.
    pub fn spawn(key: Keypair, store: Store) -> Result<LedgerHandle, StoreError> {
        Self::spawn_with_notify(key, store, Arc::new(Notify::new()))
    }

    /// Starts the actor; `changed` is notified after each durable append.
    pub fn spawn_with_notify(
        key: Keypair,
        store: Store,
        changed: Arc<Notify>,
    ) -> Result<LedgerHandle, StoreError> {
        let author = key.public().encode_protobuf();
        let head = store.ledger_head(&author)?;
        let mut clock = HlcClock::new(MAX_DRIFT_MS);
        let mut reset = None;
        if let Some(last) = store.ledger_range(&author, head.seq, 1)?.first() {
            // The clock continues after the chain's last stamp, so stamps keep increasing even
            // if the wall clock stepped back a little. A last stamp beyond the drift bound ahead
            // of the wall clock means the clock was wrong when it was made: continuing from it
            // would keep every new stamp that far ahead (refused by every peer) until the wall
            // clock caught up. The clock starts from the wall clock instead, and the step back
            // is recorded (`clock.reset`).
            let now = now_ms();
            if last.body.hlc.wall_ms > now + MAX_DRIFT_MS {
                warn!(last = %last.body.hlc, now_ms = now, "the ledger's last stamp is far ahead of the wall clock; the clock restarts from the wall clock");
                reset = Some((last.body.hlc, now));
            } else {
                clock.restore(last.body.hlc);
            }
        }
        let clock = Arc::new(Mutex::new(clock));
        let (tx, rx) = mpsc::channel(QUEUE);
        let actor = LedgerActor {
            key,
            author,
            head,
            clock: clock.clone(),
            store: store.clone(),
            rx,
            tx: tx.downgrade(),
            changed,
        };
        tokio::spawn(actor.run());
        let handle = LedgerHandle { tx, store, clock };
        if let Some((last, now)) = reset {
            handle.record(
                "clock.reset",
                serde_json::json!({ "last_stamp": last.to_string(), "wall_ms": now }),
            );
        }
        Ok(handle)
    }

    /// Appends an entry and waits until it is durable.
    pub async fn append(&self, kind: &str, body: serde_json::Value) -> Result<Entry, StoreError> {
        self.append_with(kind, body, Vec::new()).await
    }

    /// Appends an entry together with `extra` writes, atomically; waits until both are durable.
    pub async fn append_with(
        &self,
        kind: &str,
        body: serde_json::Value,
        extra: Vec<WriteOp>,
    ) -> Result<Entry, StoreError> {
        self.submit_with(kind, body, extra).await?.wait().await
    }

    /// Appends an entry together with `extra` writes, atomically, and returns once they hold
    /// their place in the store's write queue: writes submitted one after another reach the
    /// store, and become durable, in that order. [`PendingAppend::wait`] returns once they are.
    pub async fn submit_with(
        &self,
        kind: &str,
        body: serde_json::Value,
        extra: Vec<WriteOp>,
    ) -> Result<PendingAppend, StoreError> {
        let (reply, rx) = oneshot::channel();
        let (queued, queued_rx) = oneshot::channel();
        self.tx
            .send(LedgerMsg::Append {
                kind: kind.to_string(),
                body,
                extra,
                queued: Some(queued),
                reply: Some(reply),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        // Dropped unsent when the actor failed before queueing: the reply says why.
        let _ = queued_rx.await;
        Ok(PendingAppend { rx })
    }

    /// Appends an entry without waiting (for events recorded from the swarm loop).
    pub fn record(&self, kind: &str, body: serde_json::Value) {
        let msg = LedgerMsg::Append {
            kind: kind.to_string(),
            body,
            extra: Vec::new(),
            queued: None,
            reply: None,
        };
        if self.tx.try_send(msg).is_err() {
            warn!(kind, "ledger queue full or closed; event not recorded");
        }
    }

    /// A signed anchor over every chain head.
    pub async fn anchor(&self) -> Result<Anchor, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(LedgerMsg::Anchor { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's one hybrid logical clock: it stamps ledger entries and replicated values, and
    /// observes the timestamps of merged remote entries.
    pub fn clock(&self) -> Arc<Mutex<HlcClock>> {
        self.clock.clone()
    }
}

/// An append in the store's queue; see [`LedgerHandle::submit_with`].
#[derive(Debug)]
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<Entry, StoreError>>,
}

impl PendingAppend {
    /// Waits until the entry (and what was written with it) is durable, or refused.
    pub async fn wait(self) -> Result<Entry, StoreError> {
        self.rx.await.map_err(|_| StoreError::Closed)?
    }
}

struct LedgerActor {
    key: Keypair,
    author: Vec<u8>,
    head: Head,
    clock: Arc<Mutex<HlcClock>>,
    store: Store,
    rx: mpsc::Receiver<LedgerMsg>,
    /// Weak, so that the actor ends once every handle is dropped.
    tx: mpsc::WeakSender<LedgerMsg>,
    changed: Arc<Notify>,
}

impl LedgerActor {
    fn tick(&self) -> voike_protocol::hlc::Hlc {
        self.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick(now_ms())
    }

    async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                LedgerMsg::Append {
                    kind,
                    body,
                    extra,
                    queued,
                    reply,
                } => {
                    self.append(kind, body, extra, reply).await;
                    if let Some(q) = queued {
                        let _ = q.send(());
                    }
                }
                LedgerMsg::Anchor { reply } => {
                    let hlc = self.tick();
                    let result = self.store.ledger_heads().and_then(|heads| {
                        Anchor::sign(&self.key, &heads, hlc)
                            .map_err(|e| StoreError::Write(e.to_string()))
                    });
                    let _ = reply.send(result);
                }
                LedgerMsg::Resync => match self.store.ledger_head(&self.author) {
                    Ok(h) => self.head = h,
                    Err(e) => error!(error = %e, "cannot reload the ledger head"),
                },
            }
        }
    }

    async fn append(
        &mut self,
        kind: String,
        body: serde_json::Value,
        extra: Vec<WriteOp>,
        reply: Option<oneshot::Sender<Result<Entry, StoreError>>>,
    ) {
        let hlc = self.tick();
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let entry = match Entry::append(&self.key, self.head, hlc, &kind, bytes) {
            Ok(e) => e,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(StoreError::Write(e.to_string())));
                }
                return;
            }
        };
        // Queue in chain order here; only the wait for durability runs concurrently, so that
        // concurrent appends share group commits without reaching the writer out of order.
        let mut ops = extra;
        ops.push(WriteOp::AppendEntry(Box::new(entry.clone())));
        let pending = match self.store.submit(ops).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                return;
            }
        };
        self.head = entry.head();
        let tx = self.tx.clone();
        let changed = self.changed.clone();
        tokio::spawn(async move {
            let result = pending.wait().await.map(|()| entry);
            if result.is_ok() {
                changed.notify_one();
            }
            if let Err(e) = &result {
                error!(%kind, error = %e, "ledger append failed");
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(LedgerMsg::Resync).await;
                }
            }
            if let Some(r) = reply {
                let _ = r.send(result);
            }
        });
    }
}

/// The API form of an entry.
pub fn entry_json(entry: &Entry, position: Option<u64>) -> LedgerEntry {
    let body = serde_json::from_slice(&entry.body.body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&entry.body.body).into_owned())
    });
    LedgerEntry {
        id: entry.id(),
        position,
        author: signing::peer_id_of(&entry.body.author)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        seq: entry.body.seq,
        prev_hash: hex(&entry.body.prev_hash),
        hlc: entry.body.hlc.to_string(),
        kind: entry.body.kind.clone(),
        body,
        signature: hex(&entry.signature),
    }
}

/// The API form of an anchor.
pub fn anchor_json(a: &Anchor) -> LedgerAnchor {
    LedgerAnchor {
        heads_hash: hex(&a.heads_hash),
        authors: a.authors,
        entries: a.entries,
        hlc: a.hlc.to_string(),
        signer: signing::peer_id_of(&a.signer)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        signer_key: hex(&a.signer),
        signature: hex(&a.signature),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn back_to_back_appends_all_land_in_order_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, thread) = Store::open(&dir.path().join("db")).expect("open");
        let key = Keypair::generate_ed25519();
        let ledger = LedgerHandle::spawn(key.clone(), store.clone()).expect("spawn");
        for i in 0..300 {
            ledger.record("test.event", serde_json::json!({ "i": i }));
        }
        let last = ledger
            .append("test.last", serde_json::json!({}))
            .await
            .expect("append");
        assert_eq!(
            last.body.seq, 301,
            "every recorded event got its place in the chain"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.ledger_len().expect("len") < 301 {
            assert!(tokio::time::Instant::now() < deadline, "entries lost");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = store.ledger_verify().expect("verify");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 301);

        // After a restart the clock continues past the chain's last timestamp.
        drop(ledger);
        let ledger = LedgerHandle::spawn(key, store.clone()).expect("respawn");
        let next = ledger
            .append("test.after", serde_json::json!({}))
            .await
            .expect("append");
        assert!(next.body.hlc > last.body.hlc);
        assert_eq!(next.body.seq, 302);
        drop((ledger, store));
        // The actor must get to run and drop its store handle: join off the runtime thread.
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
    }
}
