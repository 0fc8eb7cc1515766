use std::collections::HashMap;

use automerge::ReadDoc;
use proptest::prelude::*;

use super::*;
use crate::hlc::Hlc;
use crate::zones::{self, RecordInput};

struct Node {
    key: Keypair,
    id: String,
}

fn node() -> Node {
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id().to_string();
    Node { key, id }
}

fn roster(nodes: &[(&Node, Role)]) -> HashMap<PeerId, Role> {
    nodes
        .iter()
        .map(|(n, r)| (n.key.public().to_peer_id(), *r))
        .collect()
}

fn hlc(n: u64) -> Hlc {
    Hlc {
        wall_ms: 1_700_000_000_000 + n,
        counter: 0,
    }
}

fn rec(name: &str, value: &str) -> RecordInput {
    RecordInput {
        rtype: "A".into(),
        name: name.into(),
        value: value.into(),
        ttl: 60,
    }
}

/// A zones replica whose admins granted `mesh.` to `nodes` (members create zones only under a
/// grant).
fn granting(nodes: &[&Node]) -> Replica {
    let mut r = Replica::new(DocId::Zones);
    let mut a = Authority::default();
    a.grants
        .insert("mesh.".into(), nodes.iter().map(|n| n.id.clone()).collect());
    r.set_authority(std::sync::Arc::new(a));
    r
}

fn create_zone(r: &mut Replica, n: &Node, id: &str) -> SignedChange {
    r.change(&n.key, |tx| {
        zones::create_zone(tx, id, &format!("{id}.mesh."), &n.id, hlc(0))
    })
    .expect("change")
    .expect("not empty")
}

fn add_record(
    r: &mut Replica,
    n: &Node,
    zone: &str,
    name: &str,
    value: &str,
    t: u64,
) -> SignedChange {
    let obj = zones::zone_obj(r.doc(), zone).expect("zone");
    let input = zones::check_record(&format!("{zone}.mesh."), &rec(name, value)).expect("valid");
    r.change(&n.key, |tx| {
        zones::put_record(tx, zone, &obj, &input, &n.id, hlc(t)).map(|_| ())
    })
    .expect("change")
    .expect("not empty")
}

#[test]
fn owner_changes_replicate_and_non_owner_changes_are_rejected() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut ra = granting(&[&b]);
    let mut rb = granting(&[&b]);
    let c1 = create_zone(&mut ra, &a, "demo");
    let c2 = add_record(&mut ra, &a, "demo", "www.demo.mesh.", "10.0.0.1", 1);
    let out = rb
        .receive(vec![c2.clone(), c1.clone()], &ros)
        .expect("receive");
    assert_eq!(out.applied.len(), 2, "{out:?}");
    assert!(out.rejected.is_empty());
    assert_eq!(rb.heads(), ra.heads());

    // B writes into A's zone on its own replica (where nothing stops it) and sends the change.
    let mut rogue = Replica::new(DocId::Zones);
    rogue.load(vec![c1, c2]).expect("load");
    let bad = add_record(&mut rogue, &b, "demo", "evil.demo.mesh.", "10.6.6.6", 2);
    let out = ra.receive(vec![bad.clone()], &ros).expect("receive");
    assert!(out.applied.is_empty());
    assert!(
        matches!(out.rejected[0].1, Reject::NotWriter { .. }),
        "{out:?}"
    );
    let recs = zones::records(ra.doc(), "demo").expect("zone");
    assert_eq!(recs.len(), 1, "content unchanged");

    // A forged signature, an unknown author and a change for another document.
    let mut forged = bad.clone();
    forged.signature[3] ^= 1;
    let stranger = node();
    let mut sr = Replica::new(DocId::Zones);
    let sc = create_zone(&mut sr, &stranger, "other");
    let mut wrong_doc = sc.clone();
    wrong_doc.doc = DocId::Jobs;
    let ros2 = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let out = ra
        .receive(vec![forged, sc, wrong_doc], &ros2)
        .expect("receive");
    let reasons: Vec<&str> = out.rejected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons, ["bad_signature", "unknown_author", "schema"]);

    // A member may create its own zone; the owner can add owners, who may then write.
    // A change that builds on a rejected one waits for it forever; B's honest replica does not.
    let on_bad = create_zone(&mut rogue, &b, "bzone");
    let out = ra.receive(vec![on_bad], &ros).expect("receive");
    assert!(out.applied.is_empty() && out.pending == 1, "{out:?}");
    let c3 = create_zone(&mut rb, &b, "bzone");
    let out = ra.receive(vec![c3], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
    let zone = zones::zone_obj(ra.doc(), "demo").expect("zone");
    let grant = ra
        .change(&a.key, |tx| zones::add_owner(tx, &zone, &b.id))
        .expect("grant")
        .expect("not empty");
    let mut rb2 = granting(&[&b]);
    let all = ra.changes_since(&[], 0, usize::MAX).0;
    rb2.receive(all, &ros).expect("receive");
    let _ = grant;
    let ok = add_record(&mut rb2, &b, "demo", "b.demo.mesh.", "10.0.0.2", 3);
    let out = ra.receive(vec![ok], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
}

#[test]
fn endpoints_entries_belong_to_their_author() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut ra = Replica::new(DocId::Endpoints);
    let mut rb = Replica::new(DocId::Endpoints);
    let own = rb
        .change(&b.key, |tx| {
            use automerge::transaction::Transactable;
            let o = tx.put_object(automerge::ROOT, b.id.as_str(), ObjType::Map)?;
            tx.put(&o, "api", "10.0.0.9:80")?;
            Ok(())
        })
        .expect("change")
        .expect("some");
    let foreign = rb
        .change(&b.key, |tx| {
            use automerge::transaction::Transactable;
            let o = tx.put_object(automerge::ROOT, a.id.as_str(), ObjType::Map)?;
            tx.put(&o, "api", "10.6.6.6:80")?;
            Ok(())
        })
        .expect("change")
        .expect("some");
    let out = ra.receive(vec![own, foreign], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1);
    assert_eq!(out.rejected[0].1.as_str(), "not_writer");
    // Members: admins only.
    let mut rm = Replica::new(DocId::Members);
    let by_member = rm
        .change(&b.key, |tx| {
            use automerge::transaction::Transactable;
            tx.put_object(automerge::ROOT, "x", ObjType::Map)?;
            Ok(())
        })
        .expect("change")
        .expect("some");
    let out = Replica::new(DocId::Members)
        .receive(vec![by_member], &ros)
        .expect("receive");
    assert_eq!(out.rejected[0].1.as_str(), "not_writer");
}

#[test]
fn lists_text_and_oversized_changes_are_refused() {
    let a = node();
    let ros = roster(&[(&a, Role::Admin)]);
    let mut src = Replica::new(DocId::Members);
    let list = src
        .change(&a.key, |tx| {
            use automerge::transaction::Transactable;
            let o = tx.put_object(automerge::ROOT, "m", ObjType::Map)?;
            tx.put_object(&o, "l", ObjType::List)?;
            Ok(())
        })
        .expect("change")
        .expect("some");
    let out = Replica::new(DocId::Members)
        .receive(vec![list], &ros)
        .expect("receive");
    assert_eq!(out.rejected[0].1.as_str(), "schema");
    let big = SignedChange {
        doc: DocId::Members,
        bytes: vec![0; MAX_CHANGE_BYTES + 1],
        signature: vec![],
    };
    let garbage = SignedChange {
        doc: DocId::Members,
        bytes: vec![1, 2, 3],
        signature: vec![],
    };
    let out = Replica::new(DocId::Members)
        .receive(vec![big, garbage], &ros)
        .expect("receive");
    let reasons: Vec<&str> = out.rejected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons, ["too_large", "malformed"]);
}

/// Three writers make concurrent changes; every replica receives all of them in a different
/// order, with duplicates, and must end with the same heads and the same records.
fn scenario(writes: &[(usize, u8)]) -> (Vec<SignedChange>, HashMap<PeerId, Role>) {
    let nodes = [node(), node(), node()];
    let ros = roster(&[
        (&nodes[0], Role::Admin),
        (&nodes[1], Role::Member),
        (&nodes[2], Role::Member),
    ]);
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::new(DocId::Zones)).collect();
    let mut all = vec![create_zone(&mut replicas[0], &nodes[0], "demo")];
    let zone = zones::zone_obj(replicas[0].doc(), "demo").expect("zone");
    for who in 1..3 {
        all.push(
            replicas[0]
                .change(&nodes[0].key, |tx| {
                    zones::add_owner(tx, &zone, &nodes[who].id)
                })
                .expect("grant")
                .expect("some"),
        );
    }
    for r in &mut replicas[1..] {
        r.receive(all.clone(), &ros).expect("receive");
    }
    for (i, (who, v)) in writes.iter().enumerate() {
        let who = who % 3;
        let name = format!("h{}.demo.mesh.", v % 4);
        let c = add_record(
            &mut replicas[who],
            &nodes[who],
            "demo",
            &name,
            &format!("10.0.0.{v}"),
            i as u64 + 10,
        );
        all.push(c);
    }
    (all, ros)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_order_with_duplicates_converges(
        writes in proptest::collection::vec((0usize..3, any::<u8>()), 1..12),
        seed in any::<u64>(),
    ) {
        let (all, ros) = scenario(&writes);
        let mut first = Replica::new(DocId::Zones);
        first.receive(all.clone(), &ros).expect("receive");
        // A second replica gets a shuffled copy with duplicates, in small batches.
        let mut shuffled: Vec<SignedChange> = all.iter().chain(all.iter().step_by(2)).cloned().collect();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut second = Replica::new(DocId::Zones);
        for batch in shuffled.chunks(3) {
            second.receive(batch.to_vec(), &ros).expect("receive");
        }
        prop_assert_eq!(first.len(), all.len());
        let mut h1 = first.heads(); h1.sort();
        let mut h2 = second.heads(); h2.sort();
        prop_assert_eq!(h1, h2);
        prop_assert_eq!(
            zones::records(first.doc(), "demo"),
            zones::records(second.doc(), "demo")
        );
        prop_assert_eq!(first.doc().length(automerge::ROOT), 1);
    }
}

#[test]
fn an_author_signing_two_changes_with_one_seq_cannot_break_a_replica() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut b1 = Replica::new(DocId::Zones);
    let mut b2 = Replica::new(DocId::Zones);
    let one = create_zone(&mut b1, &b, "one");
    let two = create_zone(&mut b2, &b, "two");
    let mut ra = granting(&[&b]);
    let out = ra
        .receive(vec![one.clone(), two.clone()], &ros)
        .expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
    assert_eq!(out.rejected.len(), 1, "{out:?}");
    // The replica keeps working, and loading both from a store skips the second.
    create_zone(&mut ra, &a, "three");
    assert_eq!(zones::zones(ra.doc()).len(), 2);
    let mut loaded = Replica::new(DocId::Zones);
    let report = loaded.load(vec![one, two]).expect("load");
    assert_eq!(report.applied, 1);
    assert_eq!(report.unapplied.len(), 1, "{report:?}");
    assert_eq!(report.unapplied[0].reason.as_str(), "sequence_taken");
}

/// The damage a crash left when a change reached the store before the change it depends on:
/// `c2` is stored, its parent `c1` is not. Loading reports `c2` instead of hiding it, and the
/// author's next changes (which reuse `c1`'s and then `c2`'s sequence numbers) are kept on
/// every later load instead of colliding with `c2` in Automerge's queue.
#[test]
fn a_stored_change_without_its_parent_is_reported_and_never_eats_later_writes() {
    let a = node();
    let mut ra = Replica::new(DocId::Zones);
    let zone = create_zone(&mut ra, &a, "crash");
    let c1 = add_record(&mut ra, &a, "crash", "one.crash.mesh.", "10.0.0.1", 1);
    let c2 = add_record(&mut ra, &a, "crash", "two.crash.mesh.", "10.0.0.2", 2);
    let c2_hash = automerge::Change::try_from(&c2.bytes[..])
        .expect("decode")
        .hash();
    let _ = c1;

    // First start after the crash: c1 is gone.
    let mut stored = vec![zone, c2];
    let mut first = Replica::new(DocId::Zones);
    let report = first.load(stored.clone()).expect("load");
    assert_eq!(report.applied, 1);
    assert_eq!(report.unapplied.len(), 1, "{report:?}");
    assert_eq!(report.unapplied[0].hash, Some(c2_hash));
    assert_eq!(report.unapplied[0].reason.as_str(), "missing_dependencies");
    assert!(first.is_pending(&c2_hash));

    // New writes after the crash, each followed by a restart.
    for i in 3..6u8 {
        let name = format!("n{i}.crash.mesh.");
        let change = add_record(
            &mut first,
            &a,
            "crash",
            &name,
            &format!("10.0.0.{i}"),
            i as u64,
        );
        stored.push(change);
        first = Replica::new(DocId::Zones);
        let report = first.load(stored.clone()).expect("load");
        assert_eq!(
            report.unapplied.len(),
            1,
            "only c2 stays unapplied: {report:?}"
        );
        let names: Vec<String> = zones::records(first.doc(), "crash")
            .expect("zone")
            .into_iter()
            .map(|r| r.name)
            .collect();
        for j in 3..=i {
            assert!(
                names.contains(&format!("n{j}.crash.mesh.")),
                "n{j} lost after restart {i}: {names:?}"
            );
        }
    }
}

/// Stored out of dependency order (a child before its parent): both are applied.
#[test]
fn stored_changes_apply_whatever_their_stored_order() {
    let a = node();
    let mut ra = Replica::new(DocId::Zones);
    let zone = create_zone(&mut ra, &a, "demo");
    let c1 = add_record(&mut ra, &a, "demo", "one.demo.mesh.", "10.0.0.1", 1);
    let c2 = add_record(&mut ra, &a, "demo", "two.demo.mesh.", "10.0.0.2", 2);
    let mut loaded = Replica::new(DocId::Zones);
    let report = loaded.load(vec![c2, zone, c1]).expect("load");
    assert_eq!(report.applied, 3, "{report:?}");
    assert!(report.unapplied.is_empty());
    assert_eq!(loaded.heads(), ra.heads());
}

/// The namespace rules hold at merge, whatever client made the change: a member's zone for a
/// top-level domain, anyone's zone inside the reserved mesh domain.
#[test]
fn zones_for_top_level_or_reserved_domains_are_refused_when_merged() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut rb = Replica::new(DocId::Zones);
    let tld = rb
        .change(&b.key, |tx| {
            zones::create_zone(tx, "tld", "COM", &b.id, hlc(0))
        })
        .expect("change")
        .expect("not empty");
    let mut rb2 = Replica::new(DocId::Zones);
    let reserved = rb2
        .change(&b.key, |tx| {
            zones::create_zone(tx, "n", "nodes.voike.internal.", &b.id, hlc(0))
        })
        .expect("change")
        .expect("not empty");
    let mut ra = Replica::new(DocId::Zones);
    ra.set_reserved_domain(Some("voike.internal.".into()));
    // A member's TLD needs an admin's grant (which may still arrive: refused for now); the
    // reserved domain is refused for good.
    let out = ra.receive(vec![tld], &ros).expect("receive");
    assert!(out.applied.is_empty(), "{out:?}");
    assert!(matches!(out.rejected[0].1, Reject::NoGrant(_)), "{out:?}");
    let out = ra.receive(vec![reserved], &ros).expect("receive");
    assert!(out.applied.is_empty(), "{out:?}");
    assert!(
        matches!(out.rejected[0].1, Reject::NotWriter { .. }),
        "{out:?}"
    );
    assert!(zones::zones(ra.doc()).is_empty());
    // An admin may create a zone for a top-level domain, not inside the reserved one.
    let mut ra2 = Replica::new(DocId::Zones);
    let ok = ra2
        .change(&a.key, |tx| {
            zones::create_zone(tx, "t", "test.", &a.id, hlc(0))
        })
        .expect("change")
        .expect("not empty");
    let out = ra.receive(vec![ok], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
}

/// Zone identity is not decided by the claimant's clock: a member without a grant cannot claim
/// an id at all, and of two concurrent claims by members with the right, every replica keeps the
/// same one whatever HLC either carries, in any arrival order.
#[test]
fn a_concurrent_claim_with_a_later_clock_does_not_take_a_zone() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut ra = Replica::new(DocId::Zones);
    let mine = create_zone(&mut ra, &a, "demo");
    // B, "partitioned" (no dependencies), claims the same id stamped far in the future.
    let claim = |t: u64| {
        let mut rb = Replica::new(DocId::Zones);
        rb.change(&b.key, |tx| {
            zones::create_zone(tx, "demo", "demo.mesh.", &b.id, hlc(t))
        })
        .expect("change")
        .expect("not empty")
    };
    let out = ra.receive(vec![claim(1 << 40)], &ros).expect("receive");
    assert!(
        matches!(out.rejected[..], [(_, Reject::NoGrant(_))]),
        "{out:?}"
    );
    assert_eq!(
        zones::zone(ra.doc(), "demo").expect("zone").owners,
        std::slice::from_ref(&a.id)
    );
    // With a grant both claims are valid; the one kept does not depend on the stamps.
    let mut winners = Vec::new();
    for t in [0, 1 << 40] {
        for order in [0, 1] {
            let mut r = granting(&[&b]);
            let theirs = claim(t);
            let batch = if order == 0 {
                vec![mine.clone(), theirs]
            } else {
                vec![theirs, mine.clone()]
            };
            for c in batch {
                r.receive(vec![c], &ros).expect("receive");
            }
            winners.push(zones::zone(r.doc(), "demo").expect("zone").owners);
        }
    }
    assert!(winners.windows(2).all(|w| w[0] == w[1]), "{winners:?}");
}

/// A revocation keeps the revoked node's changes up to its cutoff and refuses every later one,
/// whatever the change's timestamp.
#[test]
fn changes_after_a_revocation_cutoff_are_refused() {
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let mut rb = granting(&[&b]);
    let first = create_zone(&mut rb, &b, "bzone");
    let second = add_record(&mut rb, &b, "bzone", "x.bzone.mesh.", "10.0.0.9", 1);
    let mut ra = granting(&[&b]);
    let mut auth = ra.authority().clone();
    auth.revoked.insert(
        b.id.clone(),
        crate::authority::Revocation {
            by: a.id.clone(),
            cutoff: [("zones".to_string(), 1)].into(),
            ..Default::default()
        },
    );
    ra.set_authority(std::sync::Arc::new(auth));
    let out = ra.receive(vec![first, second], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
    assert!(
        matches!(
            out.rejected[..],
            [(
                _,
                Reject::Revoked {
                    seq: 2,
                    cutoff: 1,
                    ..
                }
            )]
        ),
        "{out:?}"
    );
}

/// Changes waiting for their dependencies are bounded in bytes, not only in count: a peer that
/// sends large orphans is refused (`backlog`) once the bound is reached, and the bytes are given
/// back when the waiting changes are merged.
#[test]
fn waiting_changes_are_bounded_in_bytes() {
    let a = node();
    let ros = roster(&[(&a, Role::Admin)]);
    let mut src = Replica::new(DocId::Zones);
    let first = create_zone(&mut src, &a, "big");
    let value = "x".repeat(3000);
    let mut orphans = Vec::new();
    for i in 0..6 {
        let obj = zones::zone_obj(src.doc(), "big").expect("zone");
        let c = src
            .change(&a.key, |tx| {
                for j in 0..8 {
                    let r = RecordInput {
                        rtype: "TXT".into(),
                        name: format!("r{i}-{j}.big.mesh."),
                        value: value.clone(),
                        ttl: 60,
                    };
                    zones::put_record(tx, "big", &obj, &r, &a.id, hlc(i))?;
                }
                Ok(())
            })
            .expect("change")
            .expect("not empty");
        orphans.push(c);
    }
    let size = orphans[0].bytes.len() + orphans[0].signature.len();
    let mut r = Replica::new(DocId::Zones);
    r.max_pending_bytes = size * 3 + size / 2;
    let out = r.receive(orphans.clone(), &ros).expect("receive");
    assert_eq!(out.pending, 3, "{out:?}");
    assert_eq!(
        out.rejected
            .iter()
            .filter(|(_, why)| matches!(why, Reject::Backlog))
            .count(),
        3,
        "{out:?}"
    );
    assert!(r.pending_bytes() <= r.max_pending_bytes);
    // The missing parent arrives: the waiting ones merge and their bytes are given back; the
    // refused ones come again (a later round) and merge too.
    let out = r.receive(vec![first], &ros).expect("receive");
    assert_eq!(out.applied.len(), 4, "{out:?}");
    assert_eq!(r.pending_bytes(), 0);
    let out = r.receive(orphans, &ros).expect("receive");
    assert_eq!(out.applied.len(), 3, "{out:?}");
}

/// A catch-up walk over many pages returns every change exactly once, in an order a fresh
/// replica can apply, also when the document changes in the middle of the walk (the list the
/// pages are cut from is kept between pages and computed again when the document moved).
#[test]
fn a_catch_up_walk_returns_every_change_once() {
    let a = node();
    let ros = roster(&[(&a, Role::Admin)]);
    let mut src = Replica::new(DocId::Zones);
    create_zone(&mut src, &a, "walk");
    for i in 0..40 {
        add_record(
            &mut src,
            &a,
            "walk",
            &format!("r{i}.walk.mesh."),
            "10.0.0.1",
            i,
        );
    }
    let mut got: Vec<SignedChange> = Vec::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let (page, more) = src.changes_since(&[], offset, 1);
        offset += page.len();
        got.extend(page);
        pages += 1;
        if pages == 10 {
            // A write in the middle of the walk.
            add_record(&mut src, &a, "walk", "late.walk.mesh.", "10.0.0.2", 99);
        }
        if !more {
            break;
        }
        assert!(pages < 1000);
    }
    let hashes: HashSet<_> = got
        .iter()
        .map(|c| Change::try_from(&c.bytes[..]).expect("change").hash())
        .collect();
    assert_eq!(hashes.len(), got.len(), "a change came twice");
    assert_eq!(got.len(), src.len(), "every change, the late one too");
    let mut dst = Replica::new(DocId::Zones);
    let out = dst.receive(got, &ros).expect("receive");
    assert_eq!(out.applied.len(), src.len(), "{out:?}");
    assert_eq!(dst.heads(), src.heads());
}

#[test]
fn jobs_epochs_are_named_keyed_and_refused_before_they_begin() {
    // Names, keys and parsing.
    let e = DocId::job_epoch_at(7 * JOB_EPOCH_MS + 5);
    assert_eq!(e, DocId::JobEpoch(7));
    assert_eq!(e.name(), "jobs/7");
    assert_eq!(e.as_str(), "jobs");
    assert_eq!(DocId::parse("jobs/7"), Some(e));
    assert_eq!(DocId::parse("jobs"), Some(DocId::Jobs));
    assert_eq!(DocId::parse("jobs/x"), None);
    assert_eq!(e.epoch_end_ms(), Some(8 * JOB_EPOCH_MS));
    assert_eq!(e.key_prefix(), vec![4, 0, 0, 0, 7]);
    assert!(e.is_jobs() && DocId::Jobs.is_jobs() && !DocId::Zones.is_jobs());

    // A member writes under its own id in an epoch document, as in `jobs`.
    let (a, b) = (node(), node());
    let ros = roster(&[(&a, Role::Admin), (&b, Role::Member)]);
    let now = 1_700_000_000_000u64;
    let this_hour = DocId::job_epoch_at(now);
    let write = |doc: DocId, under: &str| {
        let mut r = Replica::new(doc);
        r.set_time(now);
        r.change(&b.key, |tx| {
            use automerge::transaction::Transactable;
            let o = tx.put_object(automerge::ROOT, under, ObjType::Map)?;
            tx.put(&o, "x", 1u64)?;
            Ok(())
        })
        .expect("change")
        .expect("some")
    };
    let out = Replica::new(this_hour)
        .receive_at(vec![write(this_hour, &b.id)], &ros, now, 60_000)
        .expect("receive");
    assert_eq!(out.applied.len(), 1);
    let out = Replica::new(this_hour)
        .receive_at(vec![write(this_hour, &a.id)], &ros, now, 60_000)
        .expect("receive");
    assert_eq!(out.rejected[0].1.as_str(), "not_writer");
    // An hour that begins beyond the skew bound is not opened, whatever the change's stamp.
    let DocId::JobEpoch(h) = this_hour else {
        panic!("not an epoch")
    };
    let far = DocId::JobEpoch(h + 100);
    let out = Replica::new(far)
        .receive_at(vec![write(far, &b.id)], &ros, now, 60_000)
        .expect("receive");
    assert!(out.applied.is_empty());
    assert_eq!(out.rejected[0].1.as_str(), "future");
    // The next hour is taken once it is within the skew bound.
    let next = DocId::JobEpoch(h + 1);
    let start = (u64::from(h) + 1) * JOB_EPOCH_MS;
    let out = Replica::new(next)
        .receive_at(vec![write(next, &b.id)], &ros, start - 30_000, 60_000)
        .expect("receive");
    assert_eq!(out.applied.len(), 1);
    // A change signed for one epoch is refused by another (the signature covers the doc).
    let mut moved = write(this_hour, &b.id);
    moved.doc = next;
    let out = Replica::new(next)
        .receive_at(vec![moved], &ros, start, 60_000)
        .expect("receive");
    assert!(out.applied.is_empty());
}

#[test]
fn a_page_of_records_is_the_same_slice_as_the_whole_zone_read() {
    let a = node();
    let mut r = granting(&[&a]);
    create_zone(&mut r, &a, "z");
    for i in 0..57u64 {
        add_record(&mut r, &a, "z", &format!("h{i}.z.mesh."), "10.0.0.1", i);
    }
    let all = zones::records(&r.ranked(), "z").expect("zone");
    let mut ids: Vec<String> = all.iter().map(|x| x.id.clone()).collect();
    ids.sort();
    for limit in [1, 7, 56, 57, 58] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) =
                zones::records_page(&r.ranked(), "z", after.as_deref(), limit).expect("zone");
            assert!(page.len() <= limit);
            seen.extend(page.iter().map(|x| x.id.clone()));
            if !more {
                break;
            }
            after = page.last().map(|x| x.id.clone());
        }
        assert_eq!(seen, ids, "pages of {limit}");
    }
    assert!(zones::records_page(&r.ranked(), "nope", None, 10).is_none());
}

/// A reader keeping a view of the zones (the DNS snapshot) learns where each local or merged
/// change wrote: the record's (zone, `records`, id), or the zone for anything else.
#[test]
fn changes_report_the_paths_they_wrote() {
    let n = node();
    let mut w = granting(&[&n]);
    let mut r = granting(&[&n]);
    assert_eq!(
        w.take_touched(),
        None,
        "not tracked before: read everything"
    );
    let zone = create_zone(&mut w, &n, "demo");
    let record = add_record(&mut w, &n, "demo", "www.demo.mesh.", "10.0.0.7", 1);
    let local = w.take_touched().expect("tracked");
    let id = zones::record_id(
        "demo",
        &zones::check_record("demo.mesh.", &rec("www.demo.mesh.", "10.0.0.7")).expect("valid"),
    );
    let record_path = vec!["demo".to_string(), "records".to_string(), id];
    assert!(local.contains(&record_path), "{local:?}");
    assert!(
        local.iter().any(|p| p.len() < 3 && p[0] == "demo"),
        "{local:?}"
    );
    r.track_touched();
    let roster = roster(&[(&n, Role::Member)]);
    r.receive(vec![zone], &roster).expect("receive");
    let merged = r.take_touched().expect("tracked");
    assert!(
        merged
            .iter()
            .all(|p| p[0] == "demo" && p.get(1).is_none_or(|k| k != "records" || p.len() < 3)),
        "{merged:?}"
    );
    r.receive(vec![record], &roster).expect("receive");
    let merged = r.take_touched().expect("tracked");
    assert!(merged.contains(&record_path), "{merged:?}");
    assert!(
        merged.iter().all(|p| p.len() == 3),
        "only the record: {merged:?}"
    );
    assert!(r.take_touched().expect("tracked").is_empty());
}

/// The record ids by name that the CNAME rules read follow adds and deletes, local or merged.
#[test]
fn records_at_a_name_follow_adds_and_deletes() {
    let n = node();
    let mut w = granting(&[&n]);
    let mut r = granting(&[&n]);
    let roster = roster(&[(&n, Role::Member)]);
    let mut changes = vec![create_zone(&mut w, &n, "demo")];
    changes.push(add_record(
        &mut w,
        &n,
        "demo",
        "www.demo.mesh.",
        "10.0.0.7",
        1,
    ));
    changes.push(add_record(
        &mut w,
        &n,
        "demo",
        "www.demo.mesh.",
        "10.0.0.8",
        2,
    ));
    changes.push(add_record(
        &mut w,
        &n,
        "demo",
        "ftp.demo.mesh.",
        "10.0.0.9",
        3,
    ));
    let values = |rep: &Replica, name: &str| {
        let mut v: Vec<String> = zones::records_at(rep, "demo", name)
            .into_iter()
            .map(|x| x.value)
            .collect();
        v.sort();
        v
    };
    assert_eq!(values(&w, "www.demo.mesh."), ["10.0.0.7", "10.0.0.8"]);
    let gone = zones::records_at(&w, "demo", "www.demo.mesh.")
        .into_iter()
        .find(|x| x.value == "10.0.0.7")
        .expect("record");
    let obj = zones::zone_obj(w.doc(), "demo").expect("zone");
    let del = w
        .change(&n.key, |tx| {
            zones::delete_record(tx, &obj, &gone.id).map(|_| ())
        })
        .expect("change")
        .expect("not empty");
    changes.push(del);
    assert_eq!(values(&w, "www.demo.mesh."), ["10.0.0.8"]);
    r.receive(changes, &roster).expect("receive");
    assert_eq!(values(&r, "www.demo.mesh."), ["10.0.0.8"]);
    assert_eq!(values(&r, "ftp.demo.mesh."), ["10.0.0.9"]);
    assert!(values(&r, "nothing.demo.mesh.").is_empty());
}
