//! Ledger figures: signed durable appends per second with concurrent writers (group commit), as
//! the ledger grows; verification speed; process memory. Beside it, in the same run, the peer
//! being improved on: redb with one `Durability::Immediate` transaction per write.
//!
//! `cargo run --release -p voike-tests --bin bench-ledger -- [ENTRIES] [WRITERS]`
//! (defaults 1000000 and 64). Prints figures; asserts nothing about speed.

use std::time::Instant;

use voike_protocol::Keypair;
use voike_protocol::hlc::{Hlc, HlcClock};
use voike_protocol::ledger::{Entry, Head};
use voike_storage::{Store, WriteOp};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let writers: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let dir = tempfile::tempdir()?;
    let (store, thread) = Store::open(&dir.path().join("ledger.redb"))?;
    println!(
        "ledger bench: {total} entries, {writers} concurrent writers (one chain each), 100-byte JSON bodies"
    );

    let segment = (total / 10).max(writers);
    let mut written = 0u64;
    let mut keys: Vec<(Keypair, Head)> = (0..writers)
        .map(|_| (Keypair::generate_ed25519(), Head::GENESIS))
        .collect();
    let body = format!(
        "{{\"zone\":\"demo\",\"record\":\"www.demo.mesh. A 10.0.0.7\",\"ttl\":60,\"pad\":\"{}\"}}",
        "x".repeat(30)
    )
    .into_bytes();
    while written < total {
        let per_writer = segment / writers;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (key, head) in keys.drain(..) {
            let store = store.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut clock = HlcClock::new(60_000);
                let mut head = head;
                for i in 0..per_writer {
                    let e = Entry::append(&key, head, clock.tick(i), "bench.append", body.clone())?;
                    head = e.head();
                    store.write(vec![WriteOp::AppendEntry(Box::new(e))]).await?;
                }
                anyhow::Ok((key, head))
            }));
        }
        for t in tasks {
            keys.push(t.await??);
        }
        let n = per_writer * writers;
        written += n;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  entries {:>8}..{:>8}: {:>8.0} signed durable appends/s, RSS {:.1} MiB",
            written - n,
            written,
            n as f64 / secs,
            rss_mib()
        );
    }

    let started = Instant::now();
    let report = store.ledger_verify()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "verify: {} entries, {} authors, ok={} in {:.2} s = {:.0} entries/s (links + ed25519 signatures, one by one), RSS {:.1} MiB",
        report.entries,
        report.authors,
        report.ok,
        secs,
        report.entries as f64 / secs,
        rss_mib()
    );

    // The peer: redb with one durable transaction per write, same writers, same entry bytes.
    let peer_n = 2_000u64.min(total);
    let db = std::sync::Arc::new(redb::Database::create(dir.path().join("naive.redb"))?);
    let table: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("t");
    let bytes = Entry::append(
        &keys[0].0,
        Head::GENESIS,
        Hlc::default(),
        "bench.append",
        body.clone(),
    )?
    .to_bytes();
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers.min(8) {
        let db = db.clone();
        let bytes = bytes.clone();
        let n = peer_n / writers.min(8);
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            for i in 0..n {
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::Immediate)?;
                {
                    let mut t = txn.open_table(table)?;
                    let key = [w.to_be_bytes(), i.to_be_bytes()].concat();
                    t.insert(key.as_slice(), bytes.as_slice())?;
                }
                txn.commit()?;
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "peer (same run): redb, one Durability::Immediate transaction per write, {} writers: {:.0} writes/s (unsigned)",
        writers.min(8),
        peer_n as f64 / secs
    );
    let mut clock = HlcClock::new(0);
    let started = Instant::now();
    let mut head = Head::GENESIS;
    for i in 0..20_000 {
        head = Entry::append(
            &keys[0].0,
            head,
            clock.tick(i),
            "bench.append",
            body.clone(),
        )?
        .head();
    }
    println!(
        "signing alone (one core): {:.0} entries/s",
        20_000.0 / started.elapsed().as_secs_f64()
    );
    drop(store);
    thread.join();
    Ok(())
}
