//! Truth Ledger storage: per-author chains in redb.
//!
//! Tables: `ledger_v1` maps (author, seq) to the encoded entry; `ledger_heads_v1` holds each
//! chain's head; `ledger_index_v1` maps entry hashes to their key (for look-ups by id);
//! `ledger_log_v1` lists entry keys in local arrival order (for "recent" and tailing). Nothing is
//! kept in memory: verification streams each chain from disk.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use voike_protocol::ledger::{AuthorHead, ChainFault, Entry, Hash, Head, heads_hash};
use voike_protocol::signing::{self, hex};

use crate::store::{Store, StoreError, Table, storage_err, storage_read_err, table_def};

/// Key of an entry: author length (u16, big-endian), author key bytes, seq (u64, big-endian).
pub fn entry_key(author: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + author.len() + 8);
    k.extend_from_slice(&(author.len() as u16).to_be_bytes());
    k.extend_from_slice(author);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn author_name(author: &[u8]) -> String {
    signing::peer_id_of(author)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| hex(author))
}

/// Heads and the log position as changed by the current batch (not yet visible in tables).
#[derive(Clone, Debug, Default)]
pub(crate) struct Overlay {
    heads: HashMap<Vec<u8>, Head>,
    next_log: Option<u64>,
}

impl Overlay {
    /// Writes the heads moved by this batch (once per chain, not once per entry).
    pub(crate) fn flush(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if self.heads.is_empty() {
            return Ok(());
        }
        let mut t = txn
            .open_table(table_def(Table::LedgerHeads))
            .map_err(storage_err)?;
        for (author, head) in &self.heads {
            let bytes = postcard::to_stdvec(head).map_err(storage_err)?;
            t.insert(author.as_slice(), bytes.as_slice())
                .map_err(storage_err)?;
        }
        Ok(())
    }
}

fn decode_head(bytes: &[u8]) -> Result<Head, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Read(format!("corrupt ledger head: {e}")))
}

/// Checks that `entry` links to its chain's head. `Ok(Ok(true))`: append it; `Ok(Ok(false))`:
/// already stored; `Ok(Err(fault))`: refused.
pub(crate) fn check_append(
    txn: &WriteTransaction,
    staged: &mut Overlay,
    entry: &Entry,
) -> Result<Result<bool, ChainFault>, StoreError> {
    let author = &entry.body.author;
    let head = match staged.heads.get(author) {
        Some(h) => *h,
        None => {
            let t = txn
                .open_table(table_def(Table::LedgerHeads))
                .map_err(storage_err)?;
            let h = t.get(author.as_slice()).map_err(storage_err)?;
            match h {
                Some(v) => decode_head(v.value())?,
                None => Head::GENESIS,
            }
        }
    };
    let seq = entry.body.seq;
    if seq >= 1 && seq <= head.seq {
        let t = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_err)?;
        let stored = t
            .get(entry_key(author, seq).as_slice())
            .map_err(storage_err)?;
        let same = stored
            .map(|v| {
                Entry::from_bytes(v.value())
                    .map(|e| e.hash() == entry.hash())
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        return Ok(if same {
            Ok(false)
        } else {
            Err(ChainFault::Fork {
                author: author_name(author),
                seq,
            })
        });
    }
    if seq != head.seq + 1 {
        return Ok(Err(ChainFault::Gap {
            author: author_name(author),
            seq,
            expected_seq: head.seq + 1,
        }));
    }
    if entry.body.prev_hash != head.hash {
        return Ok(Err(ChainFault::BrokenLink {
            author: author_name(author),
            seq,
        }));
    }
    staged.heads.insert(author.clone(), entry.head());
    Ok(Ok(true))
}

/// Writes a checked entry, its index and its log position (its chain's head is in `staged`,
/// written by [`Overlay::flush`] at the end of the batch).
pub(crate) fn write_entry(
    txn: &WriteTransaction,
    staged: &mut Overlay,
    entry: &Entry,
) -> Result<(), StoreError> {
    let key = entry_key(&entry.body.author, entry.body.seq);
    let hash = entry.hash();
    {
        let mut t = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_err)?;
        t.insert(key.as_slice(), entry.to_bytes().as_slice())
            .map_err(storage_err)?;
    }
    {
        let mut t = txn
            .open_table(table_def(Table::LedgerIndex))
            .map_err(storage_err)?;
        t.insert(hash.as_slice(), key.as_slice())
            .map_err(storage_err)?;
    }
    let mut log = txn
        .open_table(table_def(Table::LedgerLog))
        .map_err(storage_err)?;
    let pos = match staged.next_log {
        Some(p) => p,
        None => match log.last().map_err(storage_err)? {
            Some((k, _)) => u64::from_be_bytes(k.value().try_into().unwrap_or([0; 8])) + 1,
            None => 0,
        },
    };
    log.insert(pos.to_be_bytes().as_slice(), key.as_slice())
        .map_err(storage_err)?;
    staged.next_log = Some(pos + 1);
    Ok(())
}

type LogItem<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// The result of walking every chain (`POST /ledger/verify` shows it, camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: u64,
    pub authors: u64,
    /// Hex of [`heads_hash`] over every chain head.
    pub heads_hash: String,
    /// The first fault found, if any.
    pub fault: Option<ChainFault>,
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    Entry::from_bytes(bytes).map_err(|e| StoreError::Read(format!("corrupt ledger entry: {e}")))
}

impl Store {
    /// The head of `author`'s chain (`Head::GENESIS` if it has none).
    pub fn ledger_head(&self, author: &[u8]) -> Result<Head, StoreError> {
        match self.get(Table::LedgerHeads, author)? {
            Some(b) => decode_head(&b),
            None => Ok(Head::GENESIS),
        }
    }

    /// Every chain head.
    pub fn ledger_heads(&self) -> Result<Vec<AuthorHead>, StoreError> {
        self.scan(Table::LedgerHeads)?
            .into_iter()
            .map(|(author, v)| {
                Ok(AuthorHead {
                    author,
                    head: decode_head(&v)?,
                })
            })
            .collect()
    }

    /// Up to `limit` entries of `author`'s chain starting at `from_seq`.
    pub fn ledger_range(
        &self,
        author: &[u8],
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_read_err)?;
        let start = entry_key(author, from_seq.max(1));
        let end = entry_key(author, u64::MAX);
        let mut out = Vec::new();
        for item in t
            .range(start.as_slice()..=end.as_slice())
            .map_err(storage_read_err)?
        {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(storage_read_err)?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
    }

    /// The `limit` most recently stored entries, newest first, with their log positions.
    pub fn ledger_recent(&self, limit: usize) -> Result<Vec<(u64, Entry)>, StoreError> {
        self.ledger_log(0, limit, true)
    }

    /// Entries stored at log position `from` or later (oldest first), for tailing and export.
    pub fn ledger_since(&self, from: u64, limit: usize) -> Result<Vec<(u64, Entry)>, StoreError> {
        self.ledger_log(from, limit, false)
    }

    fn ledger_log(
        &self,
        from: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<(u64, Entry)>, StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let log = txn
            .open_table(table_def(Table::LedgerLog))
            .map_err(storage_read_err)?;
        let entries = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_read_err)?;
        let start = from.to_be_bytes();
        let range = log.range(start.as_slice()..).map_err(storage_read_err)?;
        let mut out = Vec::new();
        let mut push = |item: LogItem<'_>| -> Result<bool, StoreError> {
            if out.len() >= limit {
                return Ok(false);
            }
            let (k, v) = item.map_err(storage_read_err)?;
            let pos = u64::from_be_bytes(k.value().try_into().unwrap_or([0; 8]));
            if let Some(e) = entries.get(v.value()).map_err(storage_read_err)? {
                out.push((pos, decode_entry(e.value())?));
            }
            Ok(true)
        };
        if newest_first {
            for item in range.rev() {
                if !push(item)? {
                    break;
                }
            }
        } else {
            for item in range {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The entry with this hash.
    pub fn ledger_get(&self, hash: &Hash) -> Result<Option<Entry>, StoreError> {
        let Some(key) = self.get(Table::LedgerIndex, hash)? else {
            return Ok(None);
        };
        self.get(Table::Ledger, &key)?
            .map(|b| decode_entry(&b))
            .transpose()
    }

    /// Number of stored entries.
    pub fn ledger_len(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_read_err)?;
        t.len().map_err(storage_read_err)
    }

    /// Walks every chain from disk, checking links and signatures; memory does not grow with the
    /// ledger's length.
    pub fn ledger_verify(&self) -> Result<VerifyReport, StoreError> {
        let heads = self.ledger_heads()?;
        self.verify_upto(&heads)
    }

    /// Walks every chain up to `heads` (read before the walk: appends may land in between).
    fn verify_upto(&self, heads: &[AuthorHead]) -> Result<VerifyReport, StoreError> {
        let txn = self.db().begin_read().map_err(storage_read_err)?;
        let t = txn
            .open_table(table_def(Table::Ledger))
            .map_err(storage_read_err)?;
        let mut entries = 0u64;
        let mut fault = None;
        'authors: for ah in heads {
            let mut head = Head::GENESIS;
            // The walk stops at the head read above: entries appended since (the heads and the
            // walk are two reads) are left to the next verify. Walking to the end made a
            // verify that raced an append report a gap that is not there.
            if ah.head.seq == 0 {
                continue;
            }
            let start = entry_key(&ah.author, 1);
            let end = entry_key(&ah.author, ah.head.seq);
            for item in t
                .range(start.as_slice()..=end.as_slice())
                .map_err(storage_read_err)?
            {
                let (_, v) = item.map_err(storage_read_err)?;
                let entry = match Entry::from_bytes(v.value()) {
                    Ok(e) => e,
                    Err(reason) => {
                        fault = Some(ChainFault::Malformed {
                            author: author_name(&ah.author),
                            seq: head.seq + 1,
                            reason,
                        });
                        break 'authors;
                    }
                };
                if let Err(f) = entry.verify_after(&ah.author, head) {
                    fault = Some(f);
                    break 'authors;
                }
                head = entry.head();
                entries += 1;
            }
            if head != ah.head {
                fault = Some(ChainFault::Gap {
                    author: author_name(&ah.author),
                    seq: head.seq,
                    expected_seq: ah.head.seq,
                });
                break;
            }
        }
        Ok(VerifyReport {
            ok: fault.is_none(),
            entries,
            authors: heads.len() as u64,
            heads_hash: hex(&heads_hash(heads)),
            fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use voike_protocol::Keypair;
    use voike_protocol::hlc::Hlc;

    use super::*;
    use crate::store::WriteOp;

    fn entry(key: &Keypair, prev: Head, i: u64) -> Entry {
        Entry::append(
            key,
            prev,
            Hlc {
                wall_ms: i,
                counter: 0,
            },
            "test.event",
            b"{}".to_vec(),
        )
        .expect("sign")
    }

    /// Signs entry `i` after `prev` and stores it.
    async fn append(store: &Store, key: &Keypair, prev: Head, i: u64) -> Entry {
        let e = entry(key, prev, i);
        store
            .write(vec![WriteOp::AppendEntry(Box::new(e.clone()))])
            .await
            .expect("append");
        e
    }

    /// A verify whose heads were read before an append that lands before its walk checks the
    /// chains up to those heads (it reported a gap that is not there: seen in the 50-kill test,
    /// where the node appends at start while the test verifies).
    #[tokio::test]
    async fn a_verify_racing_an_append_checks_up_to_the_heads_it_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, thread) = Store::open(&dir.path().join("db")).expect("open");
        let a = Keypair::generate_ed25519();
        let mut head = Head::GENESIS;
        for i in 0..3 {
            head = append(&store, &a, head, i).await.head();
        }
        let heads = store.ledger_heads().expect("heads");
        append(&store, &a, head, 3).await;
        let report = store.verify_upto(&heads).expect("verify");
        assert!(report.ok, "{:?}", report.fault);
        assert_eq!(report.entries, 3);
        let report = store.ledger_verify().expect("verify");
        assert!(report.ok && report.entries == 4, "{:?}", report.fault);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn chains_append_verify_and_refuse_bad_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, thread) = Store::open(&dir.path().join("db")).expect("open");
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let mut heads = [Head::GENESIS, Head::GENESIS];
        let mut all = Vec::new();
        for i in 0..50 {
            let (k, h) = if i % 3 == 0 {
                (&b, &mut heads[1])
            } else {
                (&a, &mut heads[0])
            };
            let e = entry(k, *h, i);
            *h = e.head();
            all.push(e.clone());
            store
                .write(vec![WriteOp::AppendEntry(Box::new(e))])
                .await
                .expect("append");
        }
        // Re-appending a stored entry is a no-op.
        store
            .write(vec![WriteOp::AppendEntry(Box::new(all[0].clone()))])
            .await
            .expect("duplicate");
        // A gap and a fork are refused, and nothing of their request is written.
        let gap = entry(
            &a,
            Head {
                seq: heads[0].seq + 5,
                hash: heads[0].hash,
            },
            99,
        );
        let err = store
            .write(vec![
                WriteOp::Put {
                    table: Table::Meta,
                    key: b"x".to_vec(),
                    value: b"y".to_vec(),
                },
                WriteOp::AppendEntry(Box::new(gap)),
            ])
            .await
            .expect_err("gap");
        assert!(
            matches!(err, StoreError::Chain(ChainFault::Gap { .. })),
            "{err}"
        );
        assert_eq!(store.get(Table::Meta, b"x").expect("get"), None);
        let fork = entry(&a, Head::GENESIS, 12345);
        assert!(matches!(
            store
                .write(vec![WriteOp::AppendEntry(Box::new(fork))])
                .await,
            Err(StoreError::Chain(ChainFault::Fork { .. }))
        ));

        let report = store.ledger_verify().expect("verify");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 50);
        assert_eq!(report.authors, 2);
        assert_eq!(store.ledger_len().expect("len"), 50);
        let recent = store.ledger_recent(3).expect("recent");
        assert_eq!(recent[0].1, all[49]);
        assert_eq!(recent[2].1, all[47]);
        let since = store.ledger_since(recent[1].0 + 1, 10).expect("since");
        assert_eq!(since.len(), 1);
        assert_eq!(
            store.ledger_get(&all[7].hash()).expect("get"),
            Some(all[7].clone())
        );
        let a_key = a.public().encode_protobuf();
        let range = store.ledger_range(&a_key, 2, 5).expect("range");
        assert_eq!(
            range.iter().map(|e| e.body.seq).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn a_tampered_stored_entry_fails_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, thread) = Store::open(&dir.path().join("db")).expect("open");
        let a = Keypair::generate_ed25519();
        let mut head = Head::GENESIS;
        let mut entries = Vec::new();
        for i in 0..5 {
            let e = append(&store, &a, head, i).await;
            head = e.head();
            entries.push(e);
        }
        let mut bad = entries[2].clone();
        bad.body.body = b"{\"tampered\":true}".to_vec();
        store
            .write(vec![WriteOp::Put {
                table: Table::Ledger,
                key: entry_key(&a.public().encode_protobuf(), 3),
                value: bad.to_bytes(),
            }])
            .await
            .expect("overwrite");
        let report = store.ledger_verify().expect("verify");
        assert!(!report.ok);
        assert!(
            matches!(report.fault, Some(ChainFault::BadSignature { seq: 3, .. })),
            "{report:?}"
        );
        drop(store);
        thread.join();
    }
}
