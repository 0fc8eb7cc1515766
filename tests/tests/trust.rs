//! Changes that break the rules are refused by every replica that receives them.
//!
//! Node B plays a compromised member: with B stopped, the test writes into B's own database
//! changes that B's key may not make (a record in a zone B does not own), a change with a
//! forged signature, a change by a key that never joined, and a ledger entry altered after it
//! was signed. B's store is trusted by B, so B serves them when it comes back; A and C must
//! refuse each one, count it, record a trust event, and keep their content unchanged.

use std::time::Duration;

use libp2p_identity::Keypair;
use voike_protocol::docs::{DocId, Replica, SignedChange};
use voike_protocol::hlc::Hlc;
use voike_protocol::ledger::Entry;
use voike_protocol::zones::{self, RecordInput};
use voike_storage::docs::put_change;
use voike_storage::{Store, WriteOp, keyfile};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn hlc() -> Hlc {
    Hlc {
        wall_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        counter: 0,
    }
}

fn one(change: Result<Option<SignedChange>, voike_protocol::docs::DocError>) -> SignedChange {
    change.expect("change").expect("a non-empty change")
}

/// Writes the four bad items into the stopped node's database.
fn tamper(node: &TestNode) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (store, thread) = Store::open(&node.dir.join("state.redb"))?;
    let (key, _) = keyfile::load_or_create_identity(&node.dir.join("node.key"))?;
    let me = key.public().to_peer_id().to_string();
    let (stored, next) = store.doc_changes(DocId::Zones)?;
    let base = || -> anyhow::Result<Replica> {
        let mut r = Replica::new(DocId::Zones);
        r.load(stored.clone())?;
        Ok(r)
    };

    // 1. A record in A's zone, signed by B (a member, but not an owner of the zone).
    let mut r = base()?;
    let obj = zones::zone_obj(r.doc(), "demo").ok_or_else(|| anyhow::anyhow!("no zone"))?;
    let input = zones::check_record(
        "demo.mesh.",
        &RecordInput {
            rtype: "A".into(),
            name: "evil.demo.mesh.".into(),
            value: "10.6.6.6".into(),
            ttl: 60,
        },
    )?;
    let not_owner = one(r.change(&key, |tx| {
        zones::put_record(tx, "demo", &obj, &input, &me, hlc()).map(|_| ())
    }));
    // 2. A zone B could create, but with a forged signature (B's next change, so that B's own
    //    store can hold both).
    let mut forged = one(r.change(&key, |tx| {
        zones::create_zone(tx, "forged", "forged.mesh.", &me, hlc())
    }));
    forged.signature[0] ^= 0x55;
    // 3. A zone created by a key that never joined the mesh.
    let stranger = Keypair::generate_ed25519();
    let stranger_id = stranger.public().to_peer_id().to_string();
    let mut r = base()?;
    let unknown = one(r.change(&stranger, |tx| {
        zones::create_zone(tx, "stranger", "stranger.mesh.", &stranger_id, hlc())
    }));
    // 4. An entry in B's chain whose body was changed after signing.
    let author = key.public().encode_protobuf();
    let head = store.ledger_head(&author)?;
    let mut entry = Entry::append(
        &key,
        head,
        hlc(),
        "record.add",
        br#"{"zone":"demo"}"#.to_vec(),
    )?;
    entry.body.body = br#"{"zone":"evil"}"#.to_vec();

    rt.block_on(store.write(vec![
        put_change(next, &not_owner),
        put_change(next + 1, &forged),
        put_change(next + 2, &unknown),
        WriteOp::AppendEntry(Box::new(entry)),
    ]))?;
    drop(store);
    thread.join();
    Ok(())
}

#[test]
fn forged_unauthorised_and_tampered_changes_are_refused_by_every_replica() -> anyhow::Result<()> {
    let a = TestNode::genesis("trust-a")?;
    let mut b = TestNode::join("trust-b", &a.invite("10m")?)?;
    let c = TestNode::join("trust-c", &a.invite("10m")?)?;
    for n in [&b, &c] {
        wait_for(DEADLINE, &format!("{} connected", n.name), || {
            a.sees_connected(&n.node_id)
        })?;
    }
    a.create_zone("demo", "demo.mesh.")?;
    a.add_a("demo", "www.demo.mesh.", "10.0.0.7")?;
    for n in [&b, &c] {
        wait_for(DEADLINE, &format!("record on {}", n.name), || {
            Ok(n.record_names("demo")? == ["www.demo.mesh."])
        })?;
    }
    b.stop()?;
    tamper(&b)?;
    b.restart()?;

    for n in [&a, &c] {
        wait_for(
            DEADLINE,
            &format!("{} refuses every bad item", n.name),
            || {
                Ok(
                    n.metric("voike_sync_changes_rejected_total{reason=\"not_writer\"}")? >= 1.0
                        && n.metric("voike_sync_changes_rejected_total{reason=\"bad_signature\"}")?
                            >= 1.0
                        && n.metric(
                            "voike_sync_changes_rejected_total{reason=\"unknown_author\"}",
                        )? >= 1.0
                        && n.metric(
                            "voike_sync_ledger_entries_rejected_total{reason=\"bad_signature\"}",
                        )? >= 1.0,
                )
            },
        )?;
        assert_eq!(n.record_names("demo")?, ["www.demo.mesh."], "{}", n.name);
        let zones = n.get("/vdns/zones")?.body;
        let ids: Vec<&str> = zones["zones"]
            .as_array()
            .map(|z| z.iter().filter_map(|z| z["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, ["demo"], "{}", n.name);
        let v = n.verify()?;
        assert_eq!(v["ok"], true, "{}: {v}", n.name);
        // The refusals are counted at once; their trust events become visible once the
        // ledger has committed them.
        let kinds = || -> anyhow::Result<Vec<String>> {
            Ok(n.get("/ledger/recent?limit=200")?.body["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|e| e["author"] == n.node_id.as_str())
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect())
        };
        wait_for(
            DEADLINE,
            &format!("{}: trust events in the ledger", n.name),
            || {
                let k = kinds()?;
                Ok(k.iter().any(|x| x == "trust.change_rejected")
                    && k.iter().any(|x| x == "trust.entry_rejected"))
            },
        )?;
        let kinds = kinds()?;
        for k in ["trust.change_rejected", "trust.entry_rejected"] {
            assert!(
                kinds.iter().any(|x| x == k),
                "{}: no {k} in {kinds:?}",
                n.name
            );
        }
    }
    Ok(())
}
