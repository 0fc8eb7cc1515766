use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn rec(name: &str, rtype: &str, value: &str) -> RecordData {
    RecordData {
        id: format!("{name}/{rtype}/{value}"),
        name: name.into(),
        rtype: rtype.into(),
        value: value.into(),
        ttl: 120,
    }
}

fn snapshot() -> Snapshot {
    let zone = ZoneData {
        domain: "demo.mesh.".into(),
        serial: 7,
        records: vec![
            rec("www.demo.mesh.", "A", "10.0.0.7"),
            rec("www.demo.mesh.", "A", "10.0.0.8"),
            rec("www.demo.mesh.", "AAAA", "fd00::7"),
            rec("alias.demo.mesh.", "CNAME", "www.demo.mesh."),
            rec("loop1.demo.mesh.", "CNAME", "loop2.demo.mesh."),
            rec("loop2.demo.mesh.", "CNAME", "loop1.demo.mesh."),
            rec("out.demo.mesh.", "CNAME", "elsewhere.example."),
            rec("*.wild.demo.mesh.", "A", "10.0.0.9"),
            rec("deep.a.b.demo.mesh.", "TXT", "hello"),
            rec("sub.demo.mesh.", "NS", "ns.sub.demo.mesh."),
            rec("demo.mesh.", "MX", "10 mail.demo.mesh."),
            rec("_sip._tcp.demo.mesh.", "SRV", "1 2 5060 sip.demo.mesh."),
            rec("demo.mesh.", "CAA", "0 issue \"ca.example\""),
            rec("bad.demo.mesh.", "A", "not-an-ip"),
        ],
    };
    Snapshot::build(
        1,
        &[zone],
        "n1.nodes.voike.internal.",
        &["api.demo.mesh.".into()],
    )
}

fn answer(s: &Snapshot, q: &str, t: RecordType) -> Answer {
    match s.lookup(&name(q).expect("name"), t) {
        Lookup::Answer(a) => a,
        other => panic!("{q} {t}: expected an answer, got {other:?}"),
    }
}

fn is_soa(a: &Answer) -> bool {
    a.authorities.len() == 1 && a.authorities[0].record_type() == RecordType::SOA
}

#[test]
fn answers_each_type_case_insensitively() {
    let s = snapshot();
    let a = answer(&s, "WWW.Demo.Mesh.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(a.answers.len(), 2);
    assert_eq!(
        answer(&s, "www.demo.mesh.", RecordType::AAAA).answers.len(),
        1
    );
    assert_eq!(answer(&s, "demo.mesh.", RecordType::MX).answers.len(), 1);
    assert_eq!(answer(&s, "demo.mesh.", RecordType::CAA).answers.len(), 1);
    assert_eq!(
        answer(&s, "_sip._tcp.demo.mesh.", RecordType::SRV)
            .answers
            .len(),
        1
    );
    let soa = answer(&s, "demo.mesh.", RecordType::SOA);
    match &soa.answers[0].data {
        RData::SOA(x) => assert_eq!(x.serial, 7),
        other => panic!("not a SOA: {other:?}"),
    }
    let ns = answer(&s, "demo.mesh.", RecordType::NS);
    assert_eq!(
        ns.answers.len(),
        1,
        "a synthesized NS when the zone has none"
    );
    assert_eq!(s.skipped().len(), 1, "the bad record is skipped, not fatal");
}

#[test]
fn negative_answers_carry_the_soa() {
    let s = snapshot();
    let nx = answer(&s, "nope.demo.mesh.", RecordType::A);
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty() && is_soa(&nx));
    assert_eq!(nx.authorities[0].ttl, SOA_TIMERS.3);
    let nodata = answer(&s, "www.demo.mesh.", RecordType::TXT);
    assert_eq!(nodata.rcode, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && is_soa(&nodata));
    let ent = answer(&s, "a.b.demo.mesh.", RecordType::A);
    assert_eq!(
        ent.rcode,
        ResponseCode::NoError,
        "empty non-terminal is NODATA"
    );
    assert!(is_soa(&ent));
}

#[test]
fn cnames_are_chased_inside_the_zones_and_loops_end() {
    let s = snapshot();
    let a = answer(&s, "alias.demo.mesh.", RecordType::A);
    let types: Vec<RecordType> = a.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, vec![RecordType::CNAME, RecordType::A, RecordType::A]);
    let l = answer(&s, "loop1.demo.mesh.", RecordType::A);
    assert_eq!(
        l.answers.len(),
        2,
        "a loop stops after visiting each name once"
    );
    let out = answer(&s, "out.demo.mesh.", RecordType::A);
    assert_eq!(
        out.answers.len(),
        1,
        "a target outside the zones is left to the client"
    );
    let c = answer(&s, "alias.demo.mesh.", RecordType::CNAME);
    assert_eq!(c.answers.len(), 1);
}

#[test]
fn wildcards_synthesize_the_query_name() {
    let s = snapshot();
    let a = answer(&s, "anything.wild.demo.mesh.", RecordType::A);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(
        a.answers[0].name,
        name("anything.wild.demo.mesh.").expect("name")
    );
    let deeper = answer(&s, "x.y.wild.demo.mesh.", RecordType::A);
    assert_eq!(deeper.answers.len(), 1);
    let nodata = answer(&s, "anything.wild.demo.mesh.", RecordType::AAAA);
    assert!(nodata.answers.is_empty() && nodata.rcode == ResponseCode::NoError);
}

#[test]
fn delegations_refer_any_type_minimal_and_other_names_are_not_ours() {
    let s = snapshot();
    let r = answer(&s, "host.sub.demo.mesh.", RecordType::A);
    assert!(!r.authoritative);
    assert_eq!(r.authorities[0].record_type(), RecordType::NS);
    let any = answer(&s, "www.demo.mesh.", RecordType::ANY);
    let first = any.answers[0].record_type();
    assert!(
        any.answers.iter().all(|x| x.record_type() == first),
        "one RRset only"
    );
    assert!(matches!(
        s.lookup(&name("example.com.").expect("name"), RecordType::A),
        Lookup::NotAuthoritative
    ));
    assert!(matches!(
        s.lookup(&name("API.demo.mesh.").expect("name"), RecordType::A),
        Lookup::Service { soa: Some(_) }
    ));
}

#[test]
fn export_lists_every_served_record() {
    let s = snapshot();
    let text = crate::export::zone_file(&s, "demo.mesh.").expect("zone");
    assert!(text.contains("$ORIGIN demo.mesh."));
    assert!(
        text.lines().nth(2).is_some_and(|l| l.contains("\tSOA\t")),
        "SOA first: {text}"
    );
    for needle in [
        "10.0.0.7",
        "fd00::7",
        "CNAME\twww.demo.mesh.",
        "\"hello\"",
        "0 issue \"ca.example\"",
        "1 2 5060 sip.demo.mesh.",
        "10 mail.demo.mesh.",
        "*.wild.demo.mesh.",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(!text.contains("not-an-ip"));
    assert!(crate::export::zone_file(&s, "other.").is_none());
}

#[test]
fn long_txt_values_are_split_into_strings() {
    let long = "x".repeat(600);
    let chunks = txt_chunks(&long);
    assert_eq!(
        chunks.iter().map(String::len).collect::<Vec<_>>(),
        vec![255, 255, 90]
    );
    assert_eq!(txt_chunks(""), vec![String::new()]);
}

fn merged(records: Vec<RecordData>) -> Snapshot {
    let zone = ZoneData {
        domain: "demo.mesh.".into(),
        serial: 1,
        records,
    };
    Snapshot::build(1, &[zone], "n1.nodes.voike.internal.", &[])
}

/// Two nodes writing apart can merge a CNAME beside an A, two CNAMEs at one name, a CNAME at
/// the apex, a wildcard NS and an apex NS whose host has no address; whatever order the
/// records come in, the same ones are served and the same ones withheld.
#[test]
fn merged_records_that_break_zone_rules_are_withheld_the_same_way_in_any_order() {
    let records = vec![
        rec("www.demo.mesh.", "A", "10.0.0.7"),
        rec("www.demo.mesh.", "CNAME", "web.example."),
        rec("two.demo.mesh.", "CNAME", "b.example."),
        rec("two.demo.mesh.", "CNAME", "a.example."),
        rec("demo.mesh.", "CNAME", "apex.example."),
        rec("*.demo.mesh.", "NS", "ns.example."),
        rec("demo.mesh.", "NS", "ns1.demo.mesh."),
        rec("demo.mesh.", "NS", "ns2.demo.mesh."),
        rec("ns2.demo.mesh.", "AAAA", "fd00::2"),
        rec("demo.mesh.", "NS", "ns.sub.demo.mesh."),
        rec("sub.demo.mesh.", "NS", "ns.example."),
    ];
    let mut reversed = records.clone();
    reversed.reverse();
    let (a, b) = (merged(records), merged(reversed));
    let text = crate::export::zone_file(&a, "demo.mesh.").expect("zone");
    assert_eq!(
        text,
        crate::export::zone_file(&b, "demo.mesh.").expect("zone")
    );
    let mut withheld: Vec<(String, String, &str)> = a
        .withheld()
        .iter()
        .map(|w| (w.name.clone(), w.value.clone(), w.reason))
        .collect();
    withheld.sort();
    assert_eq!(
        withheld,
        vec![
            (
                "*.demo.mesh.".into(),
                "ns.example.".into(),
                withheld::WILDCARD_NS
            ),
            (
                "demo.mesh.".into(),
                "apex.example.".into(),
                withheld::CNAME_AT_APEX
            ),
            (
                "demo.mesh.".into(),
                "ns1.demo.mesh.".into(),
                withheld::NS_WITHOUT_ADDRESS
            ),
            (
                "two.demo.mesh.".into(),
                "b.example.".into(),
                withheld::SECOND_CNAME
            ),
            (
                "www.demo.mesh.".into(),
                "web.example.".into(),
                withheld::CNAME_BESIDE_DATA
            ),
        ]
    );
    assert_eq!(b.withheld().len(), 5);
    assert_eq!(
        answer(&a, "www.demo.mesh.", RecordType::A).answers.len(),
        1,
        "the A is served"
    );
    let two = answer(&a, "two.demo.mesh.", RecordType::A);
    assert_eq!(two.answers.len(), 1);
    assert_eq!(two.answers[0].data.to_string(), "a.example.");
    // The apex keeps the NS records whose hosts can be reached (ns2 has an address; ns.sub is
    // below a delegation, where its address is the child's business).
    let ns = answer(&a, "demo.mesh.", RecordType::NS);
    let mut hosts: Vec<String> = ns.answers.iter().map(|r| r.data.to_string()).collect();
    hosts.sort();
    assert_eq!(hosts, ["ns.sub.demo.mesh.", "ns2.demo.mesh."]);
}

#[test]
fn a_zone_whose_every_apex_ns_is_withheld_is_served_with_the_node_as_its_nameserver() {
    let s = merged(vec![rec("demo.mesh.", "NS", "ns1.demo.mesh.")]);
    let ns = answer(&s, "demo.mesh.", RecordType::NS);
    assert_eq!(ns.answers.len(), 1);
    assert_eq!(ns.answers[0].data.to_string(), "n1.nodes.voike.internal.");
    assert_eq!(s.withheld().len(), 1);
}

/// Labels DNS allows but host names do not are served and exported as written.
#[test]
fn labels_that_are_not_host_names_are_served_and_exported() {
    let s = merged(vec![
        rec("-dash.demo.mesh.", "A", "10.0.0.1"),
        rec("x_y.demo.mesh.", "TXT", "t"),
        rec("_sip._tcp.demo.mesh.", "SRV", "1 1 5060 -dash.demo.mesh."),
    ]);
    assert!(s.skipped().is_empty(), "{:?}", s.skipped());
    assert_eq!(
        answer(&s, "-dash.demo.mesh.", RecordType::A).answers.len(),
        1
    );
    let text = crate::export::zone_file(&s, "demo.mesh.").expect("zone");
    assert!(text.contains("x_y.demo.mesh."), "{text}");
}

/// What a snapshot serves for `domain`, in a form two snapshots can be compared by: every
/// name that exists (empty non-terminals included) with its served sets, the SOA, and what is
/// withheld and skipped.
fn served(s: &Snapshot, domain: &str) -> (Vec<String>, String, Vec<String>, Vec<String>) {
    let zone = &s.zones[&name(domain).expect("name")];
    let mut names: Vec<String> = zone
        .nodes
        .iter()
        .map(|(n, node)| {
            let sets: Vec<String> = node
                .sets
                .values()
                .flatten()
                .map(|r| format!("{} {} {}", r.record_type(), r.ttl, r.data))
                .collect();
            format!("{n}: {}", sets.join(", "))
        })
        .collect();
    names.sort();
    let mut withheld: Vec<String> = s
        .withheld()
        .iter()
        .map(|w| format!("{} {} {} {}", w.name, w.rtype, w.value, w.reason))
        .collect();
    withheld.sort();
    let mut skipped: Vec<String> = s.skipped().iter().map(|e| e.to_string()).collect();
    skipped.sort();
    (names, zone.soa.to_string(), withheld, skipped)
}

/// The records a random edit draws from: names at several depths (a wildcard, a delegation,
/// the apex), and values that collide, break the CNAME and NS rules, or do not compile.
fn pool() -> Vec<RecordData> {
    let mut v = vec![
        rec("demo.mesh.", "NS", "ns1.demo.mesh."),
        rec("demo.mesh.", "NS", "ns2.demo.mesh."),
        rec("demo.mesh.", "NS", "ns.sub.demo.mesh."),
        rec("demo.mesh.", "CNAME", "apex.example."),
        rec("demo.mesh.", "MX", "10 mail.demo.mesh."),
        rec("ns1.demo.mesh.", "A", "10.0.0.1"),
        rec("ns2.demo.mesh.", "AAAA", "fd00::2"),
        rec("*.demo.mesh.", "A", "10.0.0.9"),
        rec("*.demo.mesh.", "NS", "ns.example."),
        rec("sub.demo.mesh.", "NS", "ns.example."),
        rec("www.demo.mesh.", "A", "10.0.0.7"),
        rec("www.demo.mesh.", "A", "10.0.0.8"),
        rec("www.demo.mesh.", "CNAME", "web.example."),
        rec("two.demo.mesh.", "CNAME", "a.example."),
        rec("two.demo.mesh.", "CNAME", "b.example."),
        rec("deep.a.b.demo.mesh.", "TXT", "hello"),
        rec("x.a.b.demo.mesh.", "TXT", "there"),
        rec("a.demo.mesh.", "A", "10.0.0.3"),
        rec("bad.demo.mesh.", "A", "not-an-ip"),
        rec("elsewhere.example.", "A", "10.0.0.4"),
    ];
    // Two ids for one record (a value written two ways by two writers): served once.
    let mut twin = rec("www.demo.mesh.", "A", "10.0.0.7");
    twin.id = "twin".into();
    twin.ttl = 30;
    v.push(twin);
    v
}

proptest! {
    /// Any sequence of record changes applied one edit at a time serves exactly what a
    /// snapshot built at once from the resulting records serves.
    #[test]
    fn edits_serve_what_a_fresh_build_serves(
        steps in proptest::collection::vec(
            proptest::collection::vec((0usize..21, any::<bool>(), 0u32..3), 1..4),
            1..30,
        )
    ) {
        let pool = pool();
        let mut live: BTreeMap<String, RecordData> = BTreeMap::new();
        let mut s = merged(Vec::new());
        for (i, step) in steps.iter().enumerate() {
            let mut records = Vec::new();
            for (k, add, ttl) in step {
                let mut r = pool[*k].clone();
                r.ttl = 60 * (ttl + 1);
                if *add {
                    live.insert(r.id.clone(), r.clone());
                    records.push((r.id.clone(), Some(r)));
                } else {
                    live.remove(&r.id);
                    records.push((r.id.clone(), None));
                }
            }
            s = s.edit(
                i as u64 + 2,
                vec![ZoneEdit::Records { domain: "demo.mesh.".into(), serial: 1, records }],
                None,
            );
            let fresh = merged(live.values().cloned().collect());
            prop_assert_eq!(served(&s, "demo.mesh."), served(&fresh, "demo.mesh."));
        }
    }
}

#[test]
fn an_edit_leaves_the_snapshot_it_was_made_from_as_it_was() {
    let before = snapshot();
    let after = before.edit(
        2,
        vec![ZoneEdit::Records {
            domain: "demo.mesh.".into(),
            serial: 8,
            records: vec![
                ("www.demo.mesh./A/10.0.0.7".into(), None),
                ("new".into(), Some(rec("new.demo.mesh.", "A", "10.0.0.10"))),
            ],
        }],
        None,
    );
    assert_eq!(
        answer(&before, "www.demo.mesh.", RecordType::A)
            .answers
            .len(),
        2
    );
    assert_eq!(
        answer(&after, "www.demo.mesh.", RecordType::A)
            .answers
            .len(),
        1
    );
    assert!(
        answer(&before, "new.demo.mesh.", RecordType::A)
            .answers
            .is_empty()
    );
    assert_eq!(
        answer(&after, "new.demo.mesh.", RecordType::A)
            .answers
            .len(),
        1
    );
    let serial = |s: &Snapshot| match &s.zones[&name("demo.mesh.").expect("name")].soa.data {
        RData::SOA(soa) => soa.serial,
        _ => 0,
    };
    assert_eq!((serial(&before), serial(&after)), (7, 8));
    let removed = after.edit(3, vec![ZoneEdit::Remove("demo.mesh.".into())], None);
    assert!(!removed.has_zone("demo.mesh."));
    assert!(after.has_zone("demo.mesh."));
}
