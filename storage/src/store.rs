//! The redb database and its writer thread.
//!
//! Tables hold opaque bytes keyed by bytes; each table's name carries its schema version
//! (`members_v1`). The `meta_v1` table records the schema version of the whole file; a file written
//! by a newer, incompatible version is refused with a clear error instead of being misread.
//!
//! Writes go through one thread: it takes every write waiting in its queue (up to
//! [`MAX_BATCH`]), applies them in one transaction with `Durability::Immediate`, commits, and only
//! then acknowledges each of them. Concurrent writers therefore share one fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use voike_protocol::ledger::{ChainFault, Entry};

use crate::ledger::{self, Overlay};
use tokio::sync::{mpsc, oneshot};

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// redb page cache: bounded, so memory does not grow with the database.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Depth of the write queue.
const QUEUE_DEPTH: usize = 8192;
const SCHEMA_KEY: &[u8] = b"schema_version";

/// The tables of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Table {
    /// Node-level facts: schema version, mesh charter, own membership record.
    Meta,
    /// Membership records by peer id bytes.
    Members,
    /// Last known addresses of peers by peer id bytes.
    PeerAddrs,
    /// Ledger entries by (author, seq).
    Ledger,
    /// Ledger chain heads by author.
    LedgerHeads,
    /// Ledger entry keys by entry hash.
    LedgerIndex,
    /// Ledger entry keys in local arrival order (big-endian position).
    LedgerLog,
    /// Signed document changes by (document tag, big-endian arrival position).
    DocChanges,
    /// WebAssembly modules (as submitted: wasm or WAT bytes) by content hash (hex sha256).
    Modules,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(match self {
            Table::Meta => "meta_v1",
            Table::Members => "members_v1",
            Table::PeerAddrs => "peer_addrs_v1",
            Table::Ledger => "ledger_v1",
            Table::LedgerHeads => "ledger_heads_v1",
            Table::LedgerIndex => "ledger_index_v1",
            Table::LedgerLog => "ledger_log_v1",
            Table::DocChanges => "doc_changes_v1",
            Table::Modules => "modules_v1",
        })
    }
}

/// A key and its value, as read from a table.
pub type Row = (Vec<u8>, Vec<u8>);

/// One write.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    /// Removes every row with a key in `from..=to`.
    DeleteRange {
        table: Table,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Appends a ledger entry to its author's chain. The writer checks that it links to the
    /// current head (an entry already stored is accepted again as a no-op); a request holding an
    /// entry that does not link is refused as a whole. Signatures are the caller's to check.
    AppendEntry(Box<Entry>),
}

/// Errors from the store. Messages name the database file.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "database {path} was written by a newer voiked (schema version {found}, this build understands up to {supported}); upgrade voiked or use another --data-dir"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database read failed: {0}")]
    Read(String),
    #[error("database write failed: {0}")]
    Write(String),
    #[error("the store is closed")]
    Closed,
    #[error("ledger append refused: {0}")]
    Chain(#[from] ChainFault),
}

struct WriteRequest {
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A queued write; [`PendingWrite::wait`] returns once it is durable (or refused).
#[derive(Debug)]
pub struct PendingWrite {
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl PendingWrite {
    pub async fn wait(self) -> Result<(), StoreError> {
        self.rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
    tx: mpsc::Sender<WriteRequest>,
}

/// The writer thread; [`StoreThread::join`] waits until every queued write is committed.
#[derive(Debug)]
pub struct StoreThread {
    handle: JoinHandle<()>,
}

impl StoreThread {
    /// Waits for the writer to drain its queue and exit. Call after dropping every [`Store`].
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Read(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

impl Store {
    /// Opens (or creates) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<(Store, StoreThread), StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        let db = Arc::new(db);
        {
            let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
            {
                let mut meta = txn
                    .open_table(Table::Meta.def())
                    .map_err(|e| open_err(e.to_string()))?;
                let found = meta
                    .get(SCHEMA_KEY)
                    .map_err(|e| open_err(e.to_string()))?
                    .map(|v| {
                        let b = v.value();
                        <[u8; 4]>::try_from(b).map(u32::from_le_bytes)
                    });
                match found {
                    Some(Ok(v)) if v > SCHEMA_VERSION => {
                        return Err(StoreError::TooNew {
                            path: path.to_path_buf(),
                            found: v,
                            supported: SCHEMA_VERSION,
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return Err(open_err("schema version entry is corrupt".into())),
                    None => {
                        meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())
                            .map_err(|e| open_err(e.to_string()))?;
                    }
                }
                for t in [
                    Table::Members,
                    Table::PeerAddrs,
                    Table::Ledger,
                    Table::LedgerHeads,
                    Table::LedgerIndex,
                    Table::LedgerLog,
                    Table::DocChanges,
                    Table::Modules,
                ] {
                    txn.open_table(t.def())
                        .map_err(|e| open_err(e.to_string()))?;
                }
            }
            txn.commit().map_err(|e| open_err(e.to_string()))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("voike-store".into())
            .spawn(move || writer_loop(writer_db, rx))
            .map_err(|e| open_err(e.to_string()))?;
        Ok((Store { db, tx }, StoreThread { handle }))
    }

    /// Applies `ops` atomically; returns once they are durable.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.submit(ops).await?.wait().await
    }

    /// Queues `ops` and returns once they are queued (in call order), without waiting for the
    /// commit: a caller that must keep its writes in order submits them one after another and
    /// awaits the [`PendingWrite`]s elsewhere.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<PendingWrite, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteRequest { ops, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(PendingWrite { rx })
    }

    /// Reads one value.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(table.def()).map_err(read_err)?;
        Ok(t.get(key).map_err(read_err)?.map(|v| v.value().to_vec()))
    }

    /// Reads a whole table, in key order.
    pub fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(table.def()).map_err(read_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let outcome = commit(&db, &batch);
        let results: Vec<Result<(), StoreError>> = match outcome {
            Ok(per_request) => per_request,
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "store commit failed");
                vec![Err(e); batch.len()]
            }
        };
        for (req, result) in batch.into_iter().zip(results) {
            let _ = req.reply.send(result);
        }
    }
}

/// Applies every request that is valid in one transaction; returns each request's result, or an
/// error for all when the transaction itself fails.
fn commit(
    db: &Database,
    batch: &[WriteRequest],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(write_err)?;
    let mut overlay = Overlay::default();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        results.push(apply(&txn, &mut overlay, &req.ops)?);
    }
    overlay.flush(&txn)?;
    txn.commit().map_err(write_err)?;
    Ok(results)
}

/// Applies one request: its ledger appends are checked first, so that a refused request writes
/// nothing. Returns `Err` only for storage failures (which abort the whole batch).
fn apply(
    txn: &WriteTransaction,
    overlay: &mut Overlay,
    ops: &[WriteOp],
) -> Result<Result<(), StoreError>, StoreError> {
    let mut staged = overlay.clone();
    let mut appends = Vec::new();
    for op in ops {
        if let WriteOp::AppendEntry(entry) = op {
            match ledger::check_append(txn, &mut staged, entry)? {
                Ok(true) => appends.push(entry.as_ref()),
                Ok(false) => {}
                Err(fault) => return Ok(Err(StoreError::Chain(fault))),
            }
        }
    }
    for op in ops {
        match op {
            WriteOp::Put { table, key, value } => {
                let mut t = txn.open_table(table.def()).map_err(write_err)?;
                t.insert(key.as_slice(), value.as_slice())
                    .map_err(write_err)?;
            }
            WriteOp::Delete { table, key } => {
                let mut t = txn.open_table(table.def()).map_err(write_err)?;
                t.remove(key.as_slice()).map_err(write_err)?;
            }
            WriteOp::DeleteRange { table, from, to } => {
                let mut t = txn.open_table(table.def()).map_err(write_err)?;
                t.retain_in(from.as_slice()..=to.as_slice(), |_, _| false)
                    .map_err(write_err)?;
            }
            WriteOp::AppendEntry(_) => {}
        }
    }
    for entry in appends {
        ledger::write_entry(txn, &mut staged, entry)?;
    }
    *overlay = staged;
    Ok(Ok(()))
}

pub(crate) fn table_def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    t.def()
}

pub(crate) fn storage_err(e: impl std::fmt::Display) -> StoreError {
    write_err(e)
}

pub(crate) fn storage_read_err(e: impl std::fmt::Display) -> StoreError {
    read_err(e)
}

/// Reads that need the database itself (see `ledger.rs`).
impl Store {
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(table: Table, k: &str, v: &str) -> WriteOp {
        WriteOp::Put {
            table,
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn writes_are_visible_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let (store, thread) = Store::open(&path).expect("open");
            let mut tasks = Vec::new();
            for i in 0..100 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    s.write(vec![put(Table::Members, &format!("k{i:03}"), "v")])
                        .await
                }));
            }
            for t in tasks {
                t.await.expect("join").expect("write");
            }
            store
                .write(vec![WriteOp::Delete {
                    table: Table::Members,
                    key: b"k000".to_vec(),
                }])
                .await
                .expect("delete");
            drop(store);
            thread.join();
        }
        let (store, thread) = Store::open(&path).expect("reopen");
        let rows = store.scan(Table::Members).expect("scan");
        assert_eq!(rows.len(), 99);
        assert_eq!(rows[0].0, b"k001");
        assert_eq!(
            store.get(Table::Members, b"k050").expect("get"),
            Some(b"v".to_vec())
        );
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let (store, thread) = Store::open(&path).expect("open");
            store
                .write(vec![WriteOp::Put {
                    table: Table::Meta,
                    key: SCHEMA_KEY.to_vec(),
                    value: (SCHEMA_VERSION + 1).to_le_bytes().to_vec(),
                }])
                .await
                .expect("write");
            drop(store);
            thread.join();
        }
        let err = Store::open(&path).expect_err("must refuse");
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer voiked"));
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        std::fs::write(&path, vec![0xAB; 8192]).expect("write");
        assert!(Store::open(&path).is_err());
    }
}
