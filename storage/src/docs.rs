//! Signed document changes, kept in the order this node merged them.
//!
//! Key: the document's prefix ([`DocId::key_prefix`]: one byte naming the document, and for a
//! jobs epoch the epoch, big-endian), then the big-endian arrival position; value: the postcard
//! encoding of the [`SignedChange`]. Replaying a document's rows in key order rebuilds it.

use redb::ReadableDatabase;
use voike_protocol::docs::{DocId, SignedChange};

use crate::store::{Store, StoreError, Table, WriteOp, storage_read_err, table_def};

/// The key of a document's change at `position`.
pub fn change_key(doc: DocId, position: u64) -> Vec<u8> {
    let mut k = doc.key_prefix();
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The write that removes every stored change of `doc` (a closed jobs epoch).
pub fn delete_doc(doc: DocId) -> WriteOp {
    WriteOp::DeleteRange {
        table: Table::DocChanges,
        from: change_key(doc, 0),
        to: change_key(doc, u64::MAX),
    }
}

/// The write that stores `change` at `position`.
pub fn put_change(position: u64, change: &SignedChange) -> WriteOp {
    WriteOp::Put {
        table: Table::DocChanges,
        key: change_key(change.doc, position),
        value: postcard::to_stdvec(change).unwrap_or_default(),
    }
}

impl Store {
    /// The jobs epochs that have stored changes, oldest first.
    pub fn job_epochs(&self) -> Result<Vec<DocId>, StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::DocChanges))
            .map_err(storage_read_err)?;
        let mut out = Vec::new();
        let mut from = change_key(DocId::JobEpoch(0), 0);
        let end = change_key(DocId::JobEpoch(u32::MAX), u64::MAX);
        // One seek per epoch: jump past the rows of each epoch found.
        loop {
            let mut range = t
                .range(from.as_slice()..=end.as_slice())
                .map_err(storage_read_err)?;
            let Some(item) = range.next() else { break };
            let (k, _) = item.map_err(storage_read_err)?;
            let Some(e) = k
                .value()
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
            else {
                break;
            };
            out.push(DocId::JobEpoch(e));
            let Some(next) = e.checked_add(1) else { break };
            from = change_key(DocId::JobEpoch(next), 0);
        }
        Ok(out)
    }

    /// Every stored change of `doc` in arrival order, and the next free position.
    pub fn doc_changes(&self, doc: DocId) -> Result<(Vec<SignedChange>, u64), StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::DocChanges))
            .map_err(storage_read_err)?;
        let start = change_key(doc, 0);
        let end = change_key(doc, u64::MAX);
        let at = doc.key_prefix().len();
        let mut out = Vec::new();
        let mut next = 0;
        for item in t
            .range(start.as_slice()..=end.as_slice())
            .map_err(storage_read_err)?
        {
            let (k, v) = item.map_err(storage_read_err)?;
            if let Some(pos) = k
                .value()
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
            {
                next = u64::from_be_bytes(pos) + 1;
            }
            match postcard::from_bytes::<SignedChange>(v.value()) {
                Ok(c) => out.push(c),
                Err(e) => {
                    tracing::warn!(doc = doc.as_str(), error = %e, "skipping a corrupt stored change")
                }
            }
        }
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_come_back_in_order_per_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, thread) = Store::open(&dir.path().join("db")).expect("open");
        let mk = |doc, b: u8| SignedChange {
            doc,
            bytes: vec![b],
            signature: vec![b],
        };
        let ops = vec![
            put_change(1, &mk(DocId::Zones, 2)),
            put_change(0, &mk(DocId::Zones, 1)),
            put_change(0, &mk(DocId::Jobs, 9)),
        ];
        store.write(ops).await.expect("write");
        let (zones, next) = store.doc_changes(DocId::Zones).expect("read");
        assert_eq!(zones, vec![mk(DocId::Zones, 1), mk(DocId::Zones, 2)]);
        assert_eq!(next, 2);
        let (members, next) = store.doc_changes(DocId::Members).expect("read");
        assert!(members.is_empty());
        assert_eq!(next, 0);
        // Epoch documents keep apart, are listed, and are removed whole.
        let ops = vec![
            put_change(0, &mk(DocId::JobEpoch(7), 1)),
            put_change(1, &mk(DocId::JobEpoch(7), 2)),
            put_change(0, &mk(DocId::JobEpoch(300), 3)),
            put_change(0, &mk(DocId::JobEpoch(u32::MAX), 4)),
        ];
        store.write(ops).await.expect("write");
        assert_eq!(
            store.job_epochs().expect("epochs"),
            vec![
                DocId::JobEpoch(7),
                DocId::JobEpoch(300),
                DocId::JobEpoch(u32::MAX)
            ]
        );
        let (e7, next) = store.doc_changes(DocId::JobEpoch(7)).expect("read");
        assert_eq!(
            e7,
            vec![mk(DocId::JobEpoch(7), 1), mk(DocId::JobEpoch(7), 2)]
        );
        assert_eq!(next, 2);
        store
            .write(vec![delete_doc(DocId::JobEpoch(7))])
            .await
            .expect("delete");
        assert!(
            store
                .doc_changes(DocId::JobEpoch(7))
                .expect("read")
                .0
                .is_empty()
        );
        assert_eq!(
            store
                .doc_changes(DocId::JobEpoch(300))
                .expect("read")
                .0
                .len(),
            1
        );
        assert_eq!(store.doc_changes(DocId::Jobs).expect("read").0.len(), 1);
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
    }
}
