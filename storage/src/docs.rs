//! Signed document changes, kept in the order this node merged them.
//!
//! Key: one byte naming the document, then the big-endian arrival position; value: the postcard
//! encoding of the [`SignedChange`]. Replaying a document's rows in key order rebuilds it.

use redb::ReadableDatabase;
use voike_protocol::docs::{DocId, SignedChange};

use crate::store::{Store, StoreError, Table, WriteOp, storage_read_err, table_def};

/// The key of a document's change at `position`.
pub fn change_key(doc: DocId, position: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(doc.tag());
    k.extend_from_slice(&position.to_be_bytes());
    k
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
    /// Every stored change of `doc` in arrival order, and the next free position.
    pub fn doc_changes(&self, doc: DocId) -> Result<(Vec<SignedChange>, u64), StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::DocChanges))
            .map_err(storage_read_err)?;
        let start = change_key(doc, 0);
        let end = change_key(doc, u64::MAX);
        let mut out = Vec::new();
        let mut next = 0;
        for item in t
            .range(start.as_slice()..=end.as_slice())
            .map_err(storage_read_err)?
        {
            let (k, v) = item.map_err(storage_read_err)?;
            if let Some(pos) = k
                .value()
                .get(1..9)
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
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join");
    }
}
