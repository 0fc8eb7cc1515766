use std::collections::HashMap;

use libp2p_identity::PeerId;

use super::*;
use crate::docs::{DocId, MAX_CHANGE_BYTES, Replica};
use crate::mesh::Role;

const MODULE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000_000;

fn hlc(n: u64) -> Hlc {
    Hlc {
        wall_ms: NOW + n,
        counter: 0,
    }
}

fn input() -> JobInput {
    JobInput {
        module: MODULE.into(),
        entry: "_start".into(),
        args: vec!["fib".into()],
        input: String::new(),
        limits: Limits::default(),
        capabilities: Capabilities::default(),
        requirements: Requirements::default(),
        replicas: 1,
        split: 1,
        range: 0,
    }
}

struct Node {
    key: Keypair,
    id: String,
}

fn node() -> Node {
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id().to_string();
    Node { key, id }
}

fn submit(doc: &mut Automerge, submitter: &str, job: &JobInput, t: u64) -> Job {
    let mut tx = doc.transaction();
    let out = put_job(&mut tx, submitter, job, hlc(t), NOW + t).expect("put job");
    tx.commit();
    out
}

fn claim(doc: &mut Automerge, runner: &str, job: &str, segment: u32, until: u64, t: u64) {
    let mut tx = doc.transaction();
    put_claim(&mut tx, runner, job, segment, until, 1, hlc(t)).expect("put claim");
    tx.commit();
}

fn report(doc: &mut Automerge, r: &SegmentResult, t: u64) {
    let mut tx = doc.transaction();
    put_result(&mut tx, &r.runner, r, hlc(t)).expect("put result");
    tx.commit();
}

fn outcome(ret: i64, stdout: &str, finished_ms: u64) -> RunOutcome {
    RunOutcome {
        status: Status::Ok,
        exit_code: None,
        returns: vec![ret],
        stdout: stdout.as_bytes().to_vec(),
        stdout_truncated: false,
        fuel_used: 1234,
        duration_us: 5678,
        finished_ms,
        reason: String::new(),
    }
}

fn signed(n: &Node, job: &str, segment: u32, o: &RunOutcome) -> SegmentResult {
    SegmentResult::sign(&n.key, job, segment, o).expect("sign")
}

#[test]
fn json_input_takes_defaults_and_refuses_unknown_fields() {
    let j: JobInput = serde_json::from_str(&format!(r#"{{"module":"{MODULE}"}}"#)).expect("parse");
    assert_eq!(j.entry, "_start");
    assert!(j.args.is_empty() && j.input.is_empty());
    assert_eq!(j.limits, Limits::default());
    assert_eq!(j.limits.memory_bytes, 64 * 1024 * 1024);
    assert_eq!(j.limits.fuel, 10_000_000_000);
    assert_eq!(j.limits.wall_ms, 30_000);
    assert_eq!(j.limits.max_output_bytes, 65_536);
    assert_eq!(j.capabilities, Capabilities::default());
    assert_eq!(j.requirements, Requirements::default());
    assert_eq!((j.replicas, j.split, j.range), (1, 1, 0));
    assert!(check_job(&j).is_ok());

    let partial: JobInput = serde_json::from_str(&format!(
        r#"{{"module":"{MODULE}","limits":{{"wallMs":5}},"capabilities":{{"env":{{"A":"1"}}}},
            "requirements":{{"region":"eu"}},"split":4,"range":100}}"#
    ))
    .expect("parse");
    assert_eq!(partial.limits.wall_ms, 5);
    assert_eq!(partial.limits.fuel, DEFAULT_FUEL);
    assert_eq!(
        partial.capabilities.env.get("A").map(String::as_str),
        Some("1")
    );
    assert!(!partial.capabilities.clock);
    assert_eq!(partial.requirements.region, "eu");

    for bad in [
        format!(r#"{{"module":"{MODULE}","colour":"red"}}"#),
        format!(r#"{{"module":"{MODULE}","limits":{{"cpu":1}}}}"#),
        format!(r#"{{"module":"{MODULE}","capabilities":{{"network":true}}}}"#),
        format!(r#"{{"module":"{MODULE}","requirements":{{"gpu":true}}}}"#),
        r#"{"entry":"main"}"#.to_string(),
    ] {
        assert!(serde_json::from_str::<JobInput>(&bad).is_err(), "{bad}");
    }
}

#[test]
fn good_input_is_normalised() {
    let j = JobInput {
        module: format!(" {} ", MODULE.to_ascii_uppercase()),
        entry: " main ".into(),
        input: BASE64.encode(b"hello"),
        requirements: Requirements {
            region: " EU-West ".into(),
            capabilities: vec!["GPU".into(), "wasm.simd".into(), "gpu".into()],
        },
        ..input()
    };
    let c = check_job(&j).expect("valid");
    assert_eq!(c.module, MODULE);
    assert_eq!(c.entry, "main");
    assert_eq!(c.input, "aGVsbG8=");
    assert_eq!(c.requirements.region, "eu-west");
    assert_eq!(c.requirements.capabilities, ["gpu", "wasm.simd"]);
    assert_eq!(
        check_job(&c).expect("still valid"),
        c,
        "normalising is stable"
    );
}

#[test]
fn each_bad_field_is_named() {
    let limits = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        JobInput {
            limits: l,
            ..input()
        }
    };
    let env = |name: &str, value: &str| JobInput {
        capabilities: Capabilities {
            env: [(name.to_string(), value.to_string())]
                .into_iter()
                .collect(),
            ..Capabilities::default()
        },
        ..input()
    };
    let cases: Vec<(&str, JobInput)> = vec![
        (
            "module",
            JobInput {
                module: "abc".into(),
                ..input()
            },
        ),
        (
            "module",
            JobInput {
                module: MODULE.replace('a', "g"),
                ..input()
            },
        ),
        (
            "entry",
            JobInput {
                entry: "".into(),
                ..input()
            },
        ),
        (
            "entry",
            JobInput {
                entry: "main fn".into(),
                ..input()
            },
        ),
        (
            "entry",
            JobInput {
                entry: "e".repeat(65),
                ..input()
            },
        ),
        (
            "args",
            JobInput {
                args: vec!["x".into(); 65],
                ..input()
            },
        ),
        (
            "args",
            JobInput {
                args: vec!["x".repeat(1025)],
                ..input()
            },
        ),
        (
            "args",
            JobInput {
                args: vec!["a\0b".into()],
                ..input()
            },
        ),
        (
            "args",
            // Within the count and length bounds, but escapes blow the JSON past its bound.
            JobInput {
                args: vec!["\u{1}".repeat(1024); 64],
                ..input()
            },
        ),
        (
            "input",
            JobInput {
                input: "@@not base64@@".into(),
                ..input()
            },
        ),
        (
            "input",
            JobInput {
                input: BASE64.encode(vec![0_u8; 64 * 1024 + 1]),
                ..input()
            },
        ),
        ("limits.memoryBytes", limits(|l| l.memory_bytes = 0)),
        (
            "limits.memoryBytes",
            limits(|l| l.memory_bytes = (1 << 30) + 1),
        ),
        ("limits.fuel", limits(|l| l.fuel = 0)),
        ("limits.fuel", limits(|l| l.fuel = 1_000_000_000_001)),
        ("limits.wallMs", limits(|l| l.wall_ms = 0)),
        ("limits.wallMs", limits(|l| l.wall_ms = 3_600_001)),
        (
            "limits.maxOutputBytes",
            limits(|l| l.max_output_bytes = 1024 * 1024 + 1),
        ),
        ("capabilities.env", env("", "x")),
        ("capabilities.env", env("A=B", "x")),
        ("capabilities.env", env("1ABC", "x")),
        ("capabilities.env", env("OK", &"v".repeat(1025))),
        ("capabilities.env", env("OK", "a\0b")),
        (
            "capabilities.env",
            JobInput {
                capabilities: Capabilities {
                    env: (0..33).map(|i| (format!("V{i}"), String::new())).collect(),
                    ..Capabilities::default()
                },
                ..input()
            },
        ),
        (
            "requirements.region",
            JobInput {
                requirements: Requirements {
                    region: "eu west".into(),
                    capabilities: vec![],
                },
                ..input()
            },
        ),
        (
            "requirements.capabilities",
            JobInput {
                requirements: Requirements {
                    region: String::new(),
                    capabilities: vec!["no/slash".into()],
                },
                ..input()
            },
        ),
        (
            "requirements.capabilities",
            JobInput {
                requirements: Requirements {
                    region: String::new(),
                    capabilities: (0..33).map(|i| format!("c{i}")).collect(),
                },
                ..input()
            },
        ),
        (
            "replicas",
            JobInput {
                replicas: 0,
                ..input()
            },
        ),
        (
            "replicas",
            JobInput {
                replicas: 6,
                ..input()
            },
        ),
        (
            "split",
            JobInput {
                split: 0,
                ..input()
            },
        ),
        (
            "split",
            JobInput {
                split: 65,
                ..input()
            },
        ),
        (
            "range",
            JobInput {
                split: 8,
                range: 7,
                ..input()
            },
        ),
    ];
    for (field, bad) in cases {
        let err = check_job(&bad).expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }
    // The edges themselves are accepted.
    let edges = JobInput {
        args: vec!["x".repeat(1024); 64],
        input: BASE64.encode(vec![7_u8; 64 * 1024]),
        limits: Limits {
            memory_bytes: 1 << 30,
            fuel: 1_000_000_000_000,
            wall_ms: 3_600_000,
            max_output_bytes: 0,
        },
        replicas: 5,
        split: 64,
        range: 64,
        ..input()
    };
    assert!(check_job(&edges).is_ok());
}

#[test]
fn job_id_depends_on_submitter_hlc_module_entry_and_args() {
    let j = check_job(&input()).expect("valid");
    let id = job_id("node-a", hlc(1), &j);
    assert!(is_job_id(&id), "{id}");
    assert_eq!(job_id("node-a", hlc(1), &j), id);
    let other_limits = JobInput {
        limits: Limits {
            fuel: 5,
            ..Limits::default()
        },
        ..j.clone()
    };
    assert_eq!(job_id("node-a", hlc(1), &other_limits), id);
    assert_ne!(job_id("node-b", hlc(1), &j), id);
    assert_ne!(job_id("node-a", hlc(2), &j), id);
    let other_args = JobInput {
        args: vec!["fib".into(), "1".into()],
        ..j.clone()
    };
    assert_ne!(job_id("node-a", hlc(1), &other_args), id);
    let other_entry = JobInput {
        entry: "main".into(),
        ..j
    };
    assert_ne!(job_id("node-a", hlc(1), &other_entry), id);
}

/// The `[start, end)` ranges of every segment of a job.
fn ranges(range: u64, split: u32) -> Vec<(u64, u64)> {
    let j = JobInput {
        args: vec!["fib".into()],
        split,
        range,
        ..input()
    };
    (0..split)
        .map(|i| {
            let a = segment_args(&j, i);
            assert_eq!(a.len(), 3);
            assert_eq!(a[0], "fib");
            (a[1].parse().expect("start"), a[2].parse().expect("end"))
        })
        .collect()
}

fn assert_covers(r: &[(u64, u64)], range: u64) {
    assert_eq!(r.first().map(|x| x.0), Some(0));
    assert_eq!(r.last().map(|x| x.1), Some(range));
    for w in r.windows(2) {
        assert_eq!(w[0].1, w[1].0, "no gap or overlap: {r:?}");
    }
    assert!(r.iter().all(|(a, b)| a < b), "no empty segment: {r:?}");
}

#[test]
fn segment_ranges_cover_the_range_without_gaps_or_overlaps() {
    let even = ranges(10_000, 8);
    assert_covers(&even, 10_000);
    assert!(even.iter().all(|(a, b)| b - a == 1250), "{even:?}");

    let uneven = ranges(10, 3);
    assert_eq!(uneven, [(0, 3), (3, 6), (6, 10)]);
    assert_covers(&ranges(1001, 64), 1001);
    assert_covers(&ranges(64, 64), 64);
    assert_covers(&ranges(u64::MAX, 64), u64::MAX);
    assert_eq!(ranges(100, 1), [(0, 100)]);

    // No range: every segment runs with the job's own arguments.
    let plain = JobInput {
        split: 4,
        ..input()
    };
    assert_eq!(segment_args(&plain, 3), ["fib"]);
}

#[test]
fn states_follow_claims_leases_and_results() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let job = submit(&mut doc, &a.id, &input(), 1);
    assert!(is_job_id(&job.id));
    assert_eq!(job.submitted_by, a.id);
    assert_eq!(job.hlc, hlc(1).to_string());

    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.job, job);
    assert_eq!(view.state, JobState::Pending);
    assert_eq!(view.segments.len(), 1);
    assert_eq!(view.segments[0].args, ["fib"]);
    assert!(view.result.is_none());

    // B claims the segment: running while the lease is live.
    claim(&mut doc, &b.id, &job.id, 0, NOW + 10_000, 2);
    let view = super::job(&doc, &job.id, NOW + 5_000).expect("job");
    assert_eq!(view.state, JobState::Running);
    assert_eq!(view.segments[0].state, JobState::Running);
    assert_eq!(
        view.segments[0].claims,
        [ClaimView {
            runner: b.id.clone(),
            lease_until_ms: NOW + 10_000,
            attempt: 1
        }]
    );

    // B dies: once the lease runs out the segment is pending again.
    let view = super::job(&doc, &job.id, NOW + 10_000).expect("job");
    assert_eq!(view.state, JobState::Pending);
    assert_eq!(view.segments[0].state, JobState::Pending);
    assert_eq!(view.segments[0].claims.len(), 1, "expired claims are shown");

    // A renews nothing, B comes back and renews; then reports.
    claim(&mut doc, &b.id, &job.id, 0, NOW + 60_000, 3);
    let view = super::job(&doc, &job.id, NOW + 20_000).expect("job");
    assert_eq!(view.state, JobState::Running);
    assert_eq!(
        view.segments[0].claims.len(),
        1,
        "a renewal replaces the claim"
    );
    let r = signed(&b, &job.id, 0, &outcome(55, "fib(10) = 55\n", NOW + 21_000));
    report(&mut doc, &r, 4);
    let mut tx = doc.transaction();
    assert!(delete_claim(&mut tx, &b.id, &job.id, 0).expect("delete"));
    assert!(!delete_claim(&mut tx, &a.id, &job.id, 0).expect("delete"));
    tx.commit();

    let view = super::job(&doc, &job.id, NOW + 22_000).expect("job");
    assert_eq!(view.state, JobState::Done);
    assert_eq!(view.segments[0].state, JobState::Done);
    assert!(view.segments[0].claims.is_empty());
    assert_eq!(view.segments[0].results, std::slice::from_ref(&r));
    assert!(!view.segments[0].mismatch);
    let g = view.result.clone().expect("gathered");
    assert!(g.ok && !g.mismatch);
    assert_eq!(g.combined, 55);
    assert_eq!(g.stdout, "fib(10) = 55\n");
    assert_eq!(g.runners, [b.id.as_str()]);

    // The listing shows the same, and the JSON carries the API's names.
    assert_eq!(jobs(&doc, NOW + 22_000), std::slice::from_ref(&view));
    let json = serde_json::to_string(&view).expect("json");
    for field in [
        "\"id\"",
        "\"submittedBy\"",
        "\"module\"",
        "\"maxOutputBytes\"",
        "\"state\":\"done\"",
        "\"segments\"",
        "\"finishedMs\"",
        "\"stdoutTruncated\"",
        "\"combined\":55",
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let back: JobView = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, view);
    back.segments[0].results[0]
        .verify()
        .expect("still verifies");
}

#[test]
fn failures_fail_the_segment_unless_someone_runs_it_again() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let job = submit(
        &mut doc,
        &a.id,
        &JobInput {
            split: 2,
            ..input()
        },
        1,
    );
    let trap = RunOutcome {
        status: Status::Trap,
        returns: vec![],
        ..outcome(0, "", NOW + 100)
    };
    report(&mut doc, &signed(&a, &job.id, 0, &trap), 2);
    let view = super::job(&doc, &job.id, NOW + 200).expect("job");
    assert_eq!(view.segments[0].state, JobState::Failed);
    assert_eq!(view.segments[1].state, JobState::Pending);
    assert_eq!(view.state, JobState::Failed);
    assert!(view.result.is_none());

    // B retries segment 0 under a live lease: running again.
    claim(&mut doc, &b.id, &job.id, 0, NOW + 10_000, 3);
    let view = super::job(&doc, &job.id, NOW + 200).expect("job");
    assert_eq!(view.segments[0].state, JobState::Running);
    assert_eq!(view.state, JobState::Running);

    // Segment 1 completes with a non-zero exit: done, but the gathered result is not ok.
    let exit = RunOutcome {
        status: Status::Exit,
        exit_code: Some(3),
        ..outcome(0, "", NOW + 300)
    };
    report(&mut doc, &signed(&b, &job.id, 1, &exit), 4);
    let view = super::job(&doc, &job.id, NOW + 20_000).expect("job");
    assert_eq!(view.segments[1].state, JobState::Done);
    assert_eq!(view.state, JobState::Failed);
    let g = view.result.expect("every segment has a result");
    assert!(!g.ok);
    assert_eq!(g.runners, [a.id.clone(), b.id.clone()]);
}

#[test]
fn different_results_of_one_segment_are_flagged_and_identical_ones_are_not() {
    let (a, b, c) = (node(), node(), node());
    let mut doc = Automerge::new();
    let job = submit(
        &mut doc,
        &a.id,
        &JobInput {
            replicas: 3,
            ..input()
        },
        1,
    );
    // B and C ran the segment on both sides of a partition, with the same outcome.
    let rb = signed(&b, &job.id, 0, &outcome(42, "x", NOW + 500));
    let rc = signed(&c, &job.id, 0, &outcome(42, "x", NOW + 400));
    report(&mut doc, &rb, 2);
    report(&mut doc, &rc, 3);
    let view = super::job(&doc, &job.id, NOW + 1_000).expect("job");
    let seg = &view.segments[0];
    assert_eq!(seg.results.len(), 2, "both results are kept");
    assert_eq!(seg.results[0], rc, "the earliest result comes first");
    assert!(!seg.mismatch);
    let g = view.result.expect("gathered");
    assert!(!g.mismatch);
    assert_eq!(g.runners, [c.id.as_str()]);

    // A's own run says something else.
    let ra = signed(&a, &job.id, 0, &outcome(41, "x", NOW + 600));
    report(&mut doc, &ra, 4);
    let view = super::job(&doc, &job.id, NOW + 1_000).expect("job");
    assert_eq!(view.segments[0].results.len(), 3);
    assert!(view.segments[0].mismatch);
    assert_eq!(view.state, JobState::Done);
    assert!(view.result.expect("gathered").mismatch);

    // Output alone also counts.
    let mut doc2 = Automerge::new();
    let job2 = submit(&mut doc2, &a.id, &input(), 1);
    report(
        &mut doc2,
        &signed(&b, &job2.id, 0, &outcome(1, "x", NOW)),
        2,
    );
    report(
        &mut doc2,
        &signed(&c, &job2.id, 0, &outcome(1, "y", NOW)),
        3,
    );
    let view = super::job(&doc2, &job2.id, NOW).expect("job");
    assert!(view.segments[0].mismatch);
}

#[test]
fn gathered_result_sums_and_concatenates_segments_in_order() {
    let nodes: Vec<Node> = (0..3).map(|_| node()).collect();
    let mut doc = Automerge::new();
    let job = submit(
        &mut doc,
        &nodes[0].id,
        &JobInput {
            split: 4,
            range: 40,
            ..input()
        },
        1,
    );
    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.segments[2].args, ["fib", "20", "30"]);
    for seg in 0..4_u32 {
        let n = &nodes[seg as usize % 3];
        // Reported out of order, by different nodes.
        let o = outcome(
            i64::from(seg) * 10 + 1,
            &format!("part{seg};"),
            NOW + 100 - u64::from(seg),
        );
        report(
            &mut doc,
            &signed(n, &job.id, 3 - seg, &o),
            2 + u64::from(seg),
        );
        let so_far = super::job(&doc, &job.id, NOW + 200).expect("job");
        if seg < 3 {
            assert!(so_far.result.is_none());
            assert_eq!(so_far.state, JobState::Running);
        }
    }
    let view = super::job(&doc, &job.id, NOW + 200).expect("job");
    assert_eq!(view.state, JobState::Done);
    let g = view.result.expect("gathered");
    assert!(g.ok);
    assert_eq!(g.combined, 1 + 11 + 21 + 31);
    assert_eq!(g.stdout, "part3;part2;part1;part0;");
    assert_eq!(
        g.runners,
        [
            nodes[0].id.as_str(),
            nodes[2].id.as_str(),
            nodes[1].id.as_str(),
            nodes[0].id.as_str()
        ]
    );

    // The sum wraps instead of overflowing; a segment with no return value adds 0.
    let mut doc = Automerge::new();
    let job = submit(
        &mut doc,
        &nodes[0].id,
        &JobInput {
            split: 3,
            ..input()
        },
        1,
    );
    let none = RunOutcome {
        returns: vec![],
        ..outcome(0, "", NOW)
    };
    report(
        &mut doc,
        &signed(&nodes[0], &job.id, 0, &outcome(i64::MAX, "", NOW)),
        2,
    );
    report(
        &mut doc,
        &signed(&nodes[0], &job.id, 1, &outcome(2, "", NOW)),
        3,
    );
    report(&mut doc, &signed(&nodes[0], &job.id, 2, &none), 4);
    let g = super::job(&doc, &job.id, NOW)
        .and_then(|v| v.result)
        .expect("gathered");
    assert_eq!(g.combined, i64::MIN + 1);
}

#[test]
fn listing_orders_by_submission_and_single_reads_agree() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let later = submit(&mut doc, &a.id, &input(), 9);
    let earlier = submit(&mut doc, &b.id, &input(), 3);
    let other = submit(
        &mut doc,
        &a.id,
        &JobInput {
            split: 2,
            ..input()
        },
        5,
    );
    claim(&mut doc, &b.id, &other.id, 1, NOW + 100, 10);
    report(
        &mut doc,
        &signed(&a, &later.id, 0, &outcome(1, "", NOW)),
        11,
    );
    let all = jobs(&doc, NOW);
    let ids: Vec<&str> = all.iter().map(|v| v.job.id.as_str()).collect();
    assert_eq!(ids, [&earlier.id, &other.id, &later.id]);
    for v in &all {
        assert_eq!(super::job(&doc, &v.job.id, NOW).as_ref(), Some(v));
    }
    assert_eq!(all[1].segments[1].claims.len(), 1);
    assert!(super::job(&doc, "0123456789abcdef01234567", NOW).is_none());
    assert!(super::job(&doc, "not an id", NOW).is_none());
}

#[test]
fn concurrent_versions_resolve_to_the_newest_hlc() {
    let (a, b) = (node(), node());
    let mut base = Automerge::new();
    let job = submit(&mut base, &a.id, &input(), 1);
    claim(&mut base, &b.id, &job.id, 0, NOW + 1_000, 2);
    let mut older = base.fork();
    let mut newer = base.fork();
    claim(&mut newer, &b.id, &job.id, 0, NOW + 9_000, 9);
    claim(&mut older, &b.id, &job.id, 0, NOW + 5_000, 5);
    for (mut left, mut right) in [(older.fork(), newer.fork()), (newer.fork(), older.fork())] {
        left.merge(&mut right).expect("merge");
        let view = super::job(&left, &job.id, NOW).expect("job");
        assert_eq!(view.segments[0].claims.len(), 1);
        assert_eq!(view.segments[0].claims[0].lease_until_ms, NOW + 9_000);
    }
}

/// Writes `fields` into a new map under `parent[key]`.
fn raw_entry(tx: &mut Transaction<'_>, parent: &ObjId, key: &str, fields: &[(&str, ScalarValue)]) {
    let obj = tx.put_object(parent, key, ObjType::Map).expect("obj");
    for (k, v) in fields {
        tx.put(&obj, *k, v.clone()).expect("put");
    }
}

fn node_obj(tx: &mut Transaction<'_>, node: &str) -> ObjId {
    match tx.get(ROOT, node).expect("get") {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(ROOT, node, ObjType::Map).expect("obj"),
    }
}

#[test]
fn invalid_stored_entries_are_skipped() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let job = submit(&mut doc, &a.id, &input(), 1);
    let spec = check_job(&input()).expect("valid");
    let good = signed(&b, &job.id, 0, &outcome(1, "", NOW));
    let job_fields = |hlc_n: u64, limits: &str| -> Vec<(&'static str, ScalarValue)> {
        vec![
            ("module", MODULE.into()),
            ("entry", "_start".into()),
            ("args", "[\"fib\"]".into()),
            ("input", "".into()),
            ("limits", limits.into()),
            ("capabilities", "{}".into()),
            ("req_region", "".into()),
            ("req_caps", "[]".into()),
            ("replicas", 1_u64.into()),
            ("split", 1_u64.into()),
            ("range", 0_u64.into()),
            ("submitted_by", a.id.as_str().into()),
            ("submitted_ms", NOW.into()),
            ("hlc", pack_hlc(hlc(hlc_n)).into()),
        ]
    };
    let good_limits = serde_json::to_string(&Limits::default()).expect("json");
    let result_fields = |runner: &str, status: &str| -> Vec<(&'static str, ScalarValue)> {
        vec![
            ("job", job.id.as_str().into()),
            ("segment", 0_u64.into()),
            ("runner", runner.into()),
            ("status", status.into()),
            ("returns", "[1]".into()),
            ("stdout", "".into()),
            ("stdout_truncated", false.into()),
            ("fuel_used", 1_u64.into()),
            ("duration_us", 1_u64.into()),
            ("finished_ms", NOW.into()),
            ("signature", good.signature.as_str().into()),
            ("hlc", 1_u64.into()),
        ]
    };

    let mut tx = doc.transaction();
    let mine = node_obj(&mut tx, &a.id);
    // Written raw, a job reads back: the helpers below differ from it in one thing each.
    let raw_id = job_id(&a.id, hlc(7), &spec);
    raw_entry(
        &mut tx,
        &mine,
        &job_key(&raw_id),
        &job_fields(7, &good_limits),
    );
    // A copy under another id, and a job with its id right but a limit out of range.
    raw_entry(
        &mut tx,
        &mine,
        "job:0123456789abcdef01234567",
        &job_fields(1, &good_limits),
    );
    let bad_id = job_id(&a.id, hlc(8), &spec);
    raw_entry(
        &mut tx,
        &mine,
        &job_key(&bad_id),
        &job_fields(8, r#"{"fuel":0}"#),
    );
    // A result naming another runner than the node it is stored under, and one with an unknown
    // status stored under its runner.
    raw_entry(
        &mut tx,
        &mine,
        &result_key(&job.id, 0),
        &result_fields(&b.id, "ok"),
    );
    let theirs = node_obj(&mut tx, &b.id);
    raw_entry(
        &mut tx,
        &theirs,
        &result_key(&job.id, 0),
        &result_fields(&b.id, "exploded"),
    );
    // A claim for another segment than its key says, one spelled with a leading zero, and
    // stray values.
    let claim_fields = |segment: u64| -> Vec<(&'static str, ScalarValue)> {
        vec![
            ("job", job.id.as_str().into()),
            ("segment", segment.into()),
            ("runner", b.id.as_str().into()),
            ("lease_until_ms", (NOW + 1_000).into()),
            ("attempt", 1_u64.into()),
            ("hlc", 1_u64.into()),
        ]
    };
    raw_entry(&mut tx, &theirs, &claim_key(&job.id, 0), &claim_fields(1));
    raw_entry(
        &mut tx,
        &theirs,
        &format!("claim:{}:00", job.id),
        &claim_fields(0),
    );
    tx.put(&mine, "junk", "text").expect("put");
    tx.put(&mine, job_key("abc").as_str(), "text").expect("put");
    tx.commit();

    let all = jobs(&doc, NOW);
    let ids: Vec<&str> = all.iter().map(|v| v.job.id.as_str()).collect();
    // Ordered by submission time: the raw job says it was submitted at NOW.
    assert_eq!(ids, [raw_id.as_str(), job.id.as_str()], "{all:?}");
    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert!(view.segments[0].claims.is_empty(), "{view:?}");
    assert!(view.segments[0].results.is_empty(), "{view:?}");
    assert_eq!(view.state, JobState::Pending);
    assert!(super::job(&doc, &bad_id, NOW).is_none());

    // The same result written properly is read.
    let mut tx = doc.transaction();
    raw_entry(
        &mut tx,
        &theirs,
        &result_key(&job.id, 0),
        &result_fields(&b.id, "ok"),
    );
    raw_entry(&mut tx, &theirs, &claim_key(&job.id, 0), &claim_fields(0));
    tx.commit();
    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.segments[0].claims.len(), 1);
    assert_eq!(view.segments[0].results.len(), 1);
}

#[test]
fn written_entries_are_checked() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let bad = JobInput {
        split: 0,
        ..input()
    };
    assert!(matches!(
        put_job(&mut tx, &a.id, &bad, hlc(1), NOW),
        Err(DocError::Invalid(_))
    ));
    assert!(put_claim(&mut tx, &a.id, "nope", 0, NOW, 1, hlc(1)).is_err());
    assert!(
        put_claim(
            &mut tx,
            &a.id,
            "0123456789abcdef01234567",
            64,
            NOW,
            1,
            hlc(1)
        )
        .is_err()
    );
    let r = signed(&b, "0123456789abcdef01234567", 0, &outcome(1, "", NOW));
    assert!(
        put_result(&mut tx, &a.id, &r, hlc(1)).is_err(),
        "a node stores only its own results"
    );
    let mut big = r.clone();
    big.stdout = BASE64.encode(vec![0_u8; MAX_RESULT_STDOUT + 1]);
    assert!(put_result(&mut tx, &b.id, &big, hlc(1)).is_err());
    tx.commit();
    assert!(jobs(&doc, NOW).is_empty());
}

fn nodes(weights: &[(&str, f64)]) -> Vec<(String, f64)> {
    weights.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

#[test]
fn rendezvous_order_does_not_depend_on_input_order() {
    let set = nodes(&[
        ("n1", 1.0),
        ("n2", 2.0),
        ("n3", 0.5),
        ("n4", 1.0),
        ("n5", 3.0),
    ]);
    for seg in 0..20 {
        let want = rendezvous("0123456789abcdef01234567", seg, &set);
        assert_eq!(want.len(), 5);
        let mut reversed = set.clone();
        reversed.reverse();
        assert_eq!(rendezvous("0123456789abcdef01234567", seg, &reversed), want);
        let mut rotated = set.clone();
        rotated.rotate_left(2);
        assert_eq!(rendezvous("0123456789abcdef01234567", seg, &rotated), want);
    }
    // Different segments of one job land on different nodes.
    let firsts: std::collections::BTreeSet<String> = (0..20)
        .filter_map(|seg| {
            rendezvous("0123456789abcdef01234567", seg, &set)
                .into_iter()
                .next()
        })
        .collect();
    assert!(firsts.len() >= 3, "{firsts:?}");
}

#[test]
fn rendezvous_picks_nodes_in_proportion_to_weight() {
    let set = nodes(&[("light-a", 1.0), ("light-b", 1.0), ("heavy", 2.0)]);
    let mut wins: HashMap<String, u32> = HashMap::new();
    let rounds = 4000;
    for i in 0..rounds {
        let id = format!("job-{i}");
        let first = rendezvous(&id, 0, &set).into_iter().next().expect("a node");
        *wins.entry(first).or_default() += 1;
    }
    let share = |n: &str| f64::from(wins.get(n).copied().unwrap_or(0)) / f64::from(rounds);
    // Expected 25 % / 25 % / 50 %.
    assert!((0.45..=0.55).contains(&share("heavy")), "{wins:?}");
    assert!((0.20..=0.30).contains(&share("light-a")), "{wins:?}");
    assert!((0.20..=0.30).contains(&share("light-b")), "{wins:?}");
    let ratio = share("heavy") / share("light-a");
    assert!((1.6..=2.4).contains(&ratio), "{wins:?}");
}

#[test]
fn removing_the_first_node_promotes_the_second_and_moves_nothing_else() {
    let names: Vec<String> = (0..8).map(|i| format!("node-{i}")).collect();
    let set: Vec<(String, f64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), 1.0 + i as f64))
        .collect();
    for i in 0..50 {
        let id = format!("job-{i}");
        let order = rendezvous(&id, 3, &set);
        let without: Vec<(String, f64)> = set
            .iter()
            .filter(|(n, _)| *n != order[0])
            .cloned()
            .collect();
        let after = rendezvous(&id, 3, &without);
        assert_eq!(after, order[1..], "job {id}");
        // Removing a node from the middle leaves the others in place too.
        let without_mid: Vec<(String, f64)> = set
            .iter()
            .filter(|(n, _)| *n != order[4])
            .cloned()
            .collect();
        let mut expect = order.clone();
        expect.remove(4);
        assert_eq!(rendezvous(&id, 3, &without_mid), expect);
    }
}

#[test]
fn rendezvous_survives_odd_weights_and_duplicates() {
    let set = nodes(&[
        ("nan", f64::NAN),
        ("neg", -5.0),
        ("zero", 0.0),
        ("inf", f64::INFINITY),
        ("max", f64::MAX),
        ("one", 1.0),
        ("one", 0.0),
    ]);
    let order = rendezvous("job", 0, &set);
    assert_eq!(order.len(), 6, "{order:?}");
    let mut swapped = set.clone();
    swapped.swap(5, 6);
    swapped.reverse();
    assert_eq!(rendezvous("job", 0, &swapped), order);
    // Huge weights outrank the others; nodes with no usable weight come last (almost surely).
    let pos = |n: &str| order.iter().position(|x| x == n).expect("present");
    assert!(
        pos("inf") < pos("one") && pos("max") < pos("one"),
        "{order:?}"
    );
    assert!(rendezvous("job", 0, &[]).is_empty());
}

#[test]
fn eligibility_needs_the_region_and_every_capability() {
    let none = Requirements::default();
    assert!(eligible(&none, "", &[]));
    assert!(eligible(&none, "us", &["gpu".into()]));
    let req = check_job(&JobInput {
        requirements: Requirements {
            region: "EU".into(),
            capabilities: vec!["gpu".into(), "wasm.simd".into()],
        },
        ..input()
    })
    .expect("valid")
    .requirements;
    let caps = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(eligible(&req, "eu", &caps(&["GPU", "wasm.simd", "ssd"])));
    assert!(!eligible(&req, "us", &caps(&["gpu", "wasm.simd"])));
    assert!(!eligible(&req, "", &caps(&["gpu", "wasm.simd"])));
    assert!(!eligible(&req, "eu", &caps(&["gpu"])));
}

#[test]
fn signed_result_verifies_and_any_change_breaks_it() {
    let n = node();
    let r = signed(&n, "0123456789abcdef01234567", 2, &outcome(7, "out", NOW));
    assert_eq!(r.runner, n.id);
    assert_eq!(r.status, "ok");
    assert_eq!(r.stdout_bytes().as_deref(), Some(&b"out"[..]));
    r.verify().expect("verifies");

    let other = node().id;
    type Tamper = Box<dyn Fn(&mut SegmentResult)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "job",
            Box::new(|r| r.job = "0123456789abcdef01234568".into()),
        ),
        ("segment", Box::new(|r| r.segment = 3)),
        ("runner", Box::new(move |r| r.runner = other.clone())),
        ("status", Box::new(|r| r.status = "trap".into())),
        ("exitCode", Box::new(|r| r.exit_code = Some(0))),
        ("returns", Box::new(|r| r.returns = vec![8])),
        ("stdout", Box::new(|r| r.stdout = BASE64.encode(b"oops"))),
        ("stdoutTruncated", Box::new(|r| r.stdout_truncated = true)),
        ("fuelUsed", Box::new(|r| r.fuel_used += 1)),
        ("durationUs", Box::new(|r| r.duration_us += 1)),
        ("finishedMs", Box::new(|r| r.finished_ms += 1)),
        ("reason", Box::new(|r| r.reason = "made up".into())),
        (
            "signature bytes",
            Box::new(|r| {
                let mut sig = BASE64.decode(&r.signature).expect("base64");
                sig[5] ^= 1;
                r.signature = BASE64.encode(sig);
            }),
        ),
    ];
    for (what, tamper) in tampers {
        let mut bad = r.clone();
        tamper(&mut bad);
        assert_ne!(bad, r, "{what} changed nothing");
        assert!(
            matches!(bad.verify(), Err(ResultError::BadSignature { .. })),
            "{what}: {:?}",
            bad.verify()
        );
    }
    let bad_runner = SegmentResult {
        runner: "not-a-peer-id".into(),
        ..r.clone()
    };
    assert!(matches!(
        bad_runner.verify(),
        Err(ResultError::BadSigner { .. })
    ));
    let bad_sig = SegmentResult {
        signature: "@@".into(),
        ..r
    };
    assert!(matches!(bad_sig.verify(), Err(ResultError::BadEncoding(_))));
}

#[test]
fn signed_result_survives_json_and_still_verifies() {
    let n = node();
    let o = RunOutcome {
        status: Status::Exit,
        exit_code: Some(-1),
        returns: vec![i64::MIN, -1, i64::MAX],
        stdout: vec![0xff, 0, b'a'],
        ..outcome(0, "", u64::MAX)
    };
    let r = signed(&n, "0123456789abcdef01234567", 63, &o);
    let json = serde_json::to_string(&r).expect("json");
    for field in [
        "exitCode",
        "stdoutTruncated",
        "fuelUsed",
        "durationUs",
        "finishedMs",
    ] {
        assert!(json.contains(&format!("\"{field}\"")), "{field} in {json}");
    }
    let back: SegmentResult = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, r);
    back.verify().expect("verifies after json");
    let value: serde_json::Value = serde_json::from_str(&json).expect("value");
    let again: SegmentResult = serde_json::from_value(value).expect("from value");
    again.verify().expect("verifies after json value");
}

#[test]
fn signing_bounds_output_and_return_values() {
    let n = node();
    let o = RunOutcome {
        returns: (0..100).collect(),
        stdout: vec![b'x'; MAX_RESULT_STDOUT + 10],
        ..outcome(0, "", NOW)
    };
    let r = signed(&n, "0123456789abcdef01234567", 0, &o);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout_bytes().map(|b| b.len()), Some(MAX_RESULT_STDOUT));
    assert_eq!(r.returns.len(), MAX_RETURNS);
    r.verify().expect("verifies");
    let small = signed(&n, "0123456789abcdef01234567", 0, &outcome(0, "x", NOW));
    assert!(!small.stdout_truncated);
    assert_eq!(Status::parse("out_of_fuel"), Some(Status::OutOfFuel));
    for s in Status::ALL {
        assert_eq!(Status::parse(s.as_str()), Some(s));
        assert_eq!(
            serde_json::to_string(&s).expect("json"),
            format!("\"{}\"", s.as_str())
        );
    }
}

fn roster(members: &[&Node]) -> HashMap<PeerId, Role> {
    members
        .iter()
        .map(|n| (n.key.public().to_peer_id(), Role::Member))
        .collect()
}

#[test]
fn entries_under_another_nodes_id_are_rejected() {
    let (a, b) = (node(), node());
    let ros = roster(&[&a, &b]);
    let mut ra = Replica::new(DocId::Jobs);
    let mut job = None;
    let own = ra
        .change(&a.key, |tx| {
            job = Some(put_job(tx, &a.id, &input(), hlc(1), NOW)?);
            Ok(())
        })
        .expect("change")
        .expect("not empty");
    let job = job.expect("job");
    // Each foreign write made on its own copy of A's replica, so that none depends on another.
    let forge = |f: &dyn Fn(&mut Transaction<'_>) -> Result<(), DocError>| {
        let mut rogue = Replica::new(DocId::Jobs);
        rogue.load(vec![own.clone()]).expect("load");
        rogue.change(&a.key, f).expect("change").expect("not empty")
    };
    let foreign_job = forge(&|tx| put_job(tx, &b.id, &input(), hlc(2), NOW).map(|_| ()));
    let foreign_claim =
        forge(&|tx| put_claim(tx, &b.id, &job.id, 0, NOW + 1_000, 1, hlc(3)).map(|_| ()));
    // A result signed by B but written by A under B's key.
    let r = signed(&b, &job.id, 0, &outcome(1, "", NOW));
    let foreign_result = forge(&|tx| put_result(tx, &b.id, &r, hlc(4)));

    let mut rb = Replica::new(DocId::Jobs);
    let out = rb
        .receive(vec![own, foreign_job, foreign_claim, foreign_result], &ros)
        .expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
    assert_eq!(out.rejected.len(), 3, "{out:?}");
    assert!(
        out.rejected.iter().all(|(_, r)| r.as_str() == "not_writer"),
        "{out:?}"
    );
    let seen = jobs(rb.doc(), NOW);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].job, job);
    assert_eq!(seen[0].state, JobState::Pending);

    // B writes its own claim and result: accepted.
    let mut rb2 = Replica::new(DocId::Jobs);
    let base = ra.changes_since(&[], 0, usize::MAX).0;
    rb2.receive(base.clone(), &ros).expect("receive");
    let mine = rb2
        .change(&b.key, |tx| put_result(tx, &b.id, &r, hlc(5)))
        .expect("change")
        .expect("not empty");
    let out = rb.receive(vec![mine], &ros).expect("receive");
    assert_eq!(out.applied.len(), 1, "{out:?}");
    assert_eq!(
        super::job(rb.doc(), &job.id, NOW).map(|v| v.state),
        Some(JobState::Done)
    );
}

#[test]
fn largest_job_and_result_fit_in_one_change() {
    let a = node();
    // Escapes make each argument's JSON grow: fill up to the JSON bound.
    let heavy_arg = "\u{1}".repeat(170); // 1020 bytes of JSON
    let big = JobInput {
        args: vec![heavy_arg; 64],
        input: BASE64.encode(vec![0xa5_u8; MAX_INPUT_BYTES]),
        capabilities: Capabilities {
            clock: true,
            scratch: true,
            env: (0..MAX_ENV)
                .map(|i| (format!("VAR_{i:0>120}"), "\u{2}".repeat(60)))
                .collect(),
        },
        requirements: Requirements {
            region: "r".repeat(64),
            capabilities: (0..32).map(|i| format!("{i:0>64}")).collect(),
        },
        split: 64,
        replicas: 5,
        range: u64::MAX,
        ..input()
    };
    let checked = check_job(&big).expect("the largest job is valid");
    assert!(serde_json::to_string(&checked.args).expect("json").len() > 60_000);
    let mut r = Replica::new(DocId::Jobs);
    let mut id = String::new();
    let change = r
        .change(&a.key, |tx| {
            id = put_job(tx, &a.id, &big, hlc(1), NOW)?.id;
            Ok(())
        })
        .expect("change")
        .expect("not empty");
    assert!(
        change.bytes.len() <= MAX_CHANGE_BYTES,
        "{} bytes",
        change.bytes.len()
    );

    let o = RunOutcome {
        returns: vec![i64::MIN; MAX_RETURNS],
        stdout: (0..MAX_RESULT_STDOUT)
            .map(|i| (i * 7919 % 251) as u8)
            .collect(),
        ..outcome(0, "", NOW)
    };
    let result = SegmentResult::sign(&a.key, &id, 63, &o).expect("sign");
    let change = r
        .change(&a.key, |tx| put_result(tx, &a.id, &result, hlc(2)))
        .expect("change")
        .expect("not empty");
    assert!(
        change.bytes.len() <= MAX_CHANGE_BYTES,
        "{} bytes",
        change.bytes.len()
    );
    let view = super::job(r.doc(), &id, NOW).expect("job");
    assert_eq!(view.segments.len(), 64);
    assert_eq!(view.segments[63].results, [result]);
}

proptest::proptest! {
    #[test]
    fn any_segmentation_covers_its_range_exactly(range in 1_u64.., split in 1_u32..=64) {
        let range = range.max(u64::from(split));
        assert_covers(&ranges(range, split), range);
    }

    #[test]
    fn checking_never_panics_and_is_stable(
        module in "[0-9a-fA-F]{60,66}",
        entry in "[ -~]{0,70}",
        args in proptest::collection::vec(".{0,40}", 0..70),
        stdin in "[A-Za-z0-9+/=]{0,24}",
        region in "[ -~]{0,10}",
        caps in proptest::collection::vec("[a-z.]{0,8}", 0..4),
        replicas in 0_u32..8,
        split in 0_u32..70,
        range in 0_u64..100,
    ) {
        let j = JobInput {
            module,
            entry,
            args,
            input: stdin,
            requirements: Requirements { region, capabilities: caps },
            replicas,
            split,
            range,
            ..input()
        };
        if let Ok(ok) = check_job(&j) {
            proptest::prop_assert_eq!(check_job(&ok).ok(), Some(ok.clone()));
            proptest::prop_assert!(is_job_id(&job_id("n", hlc(1), &ok)));
        }
    }

    #[test]
    fn rendezvous_is_a_permutation_of_distinct_nodes(
        nodes in proptest::collection::vec(("[a-d]{1,2}", proptest::num::f64::ANY), 0..12),
        seed in 0_u32..1000,
    ) {
        let order = rendezvous("job", seed, &nodes);
        let distinct: std::collections::BTreeSet<&String> = nodes.iter().map(|(n, _)| n).collect();
        proptest::prop_assert_eq!(order.len(), distinct.len());
        let mut reversed = nodes.clone();
        reversed.reverse();
        proptest::prop_assert_eq!(rendezvous("job", seed, &reversed), order);
    }
}

#[test]
fn a_reason_is_signed_and_results_without_one_verify_as_before() {
    let n = node();
    let with = RunOutcome {
        status: Status::InvalidEntry,
        reason: "invalid entry: fib needs 1 argument, got 0".into(),
        ..outcome(0, "", NOW)
    };
    let r = signed(&n, "0123456789abcdef01234567", 0, &with);
    r.verify().expect("verifies");
    assert_eq!(r.reason, with.reason);
    let json = serde_json::to_string(&r).expect("json");
    let back: SegmentResult = serde_json::from_str(&json).expect("decode");
    back.verify().expect("verifies after a JSON round trip");

    // A result signed before reasons existed: no field in the JSON, and the same signature.
    let old = signed(&n, "0123456789abcdef01234567", 0, &outcome(1, "x", NOW));
    let mut value = serde_json::to_value(&old).expect("json");
    value.as_object_mut().expect("object").remove("reason");
    let decoded: SegmentResult = serde_json::from_value(value).expect("decodes without reason");
    assert_eq!(decoded.reason, "");
    decoded.verify().expect("an old result still verifies");

    // Stored in the document and read back.
    let mut doc = Automerge::new();
    let job = submit(&mut doc, &n.id, &input(), 1);
    let r = signed(&n, &job.id, 0, &with);
    report(&mut doc, &r, 2);
    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.segments[0].results[0].reason, with.reason);
    view.segments[0].results[0].verify().expect("verifies");
}

fn cancel_marker(n: &Node, job: &str, at: u64) -> SegmentResult {
    let o = RunOutcome {
        status: Status::Cancelled,
        returns: Vec::new(),
        reason: "cancelled by its submitter".into(),
        ..outcome(0, "", NOW + at)
    };
    signed(n, job, CANCEL_SEGMENT, &o)
}

#[test]
fn a_job_cancelled_by_its_submitter_is_cancelled_and_others_need_to_be_admins() {
    let (a, b, c) = (node(), node(), node());
    let mut doc = Automerge::new();
    let spec = JobInput {
        split: 2,
        ..input()
    };
    let job = submit(&mut doc, &a.id, &spec, 1);
    report(&mut doc, &signed(&b, &job.id, 0, &outcome(1, "", NOW)), 2);

    // A stranger's marker changes nothing unless the node says it is an admin.
    report(&mut doc, &cancel_marker(&c, &job.id, 3), 3);
    let mut view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.state, JobState::Running);
    assert!(!view.is_cancelled());
    assert_eq!(view.cancel_requests.len(), 1);
    view.clone().honour_admins(|_| false);
    view.honour_admins(|n| n == c.id);
    assert_eq!(view.state, JobState::Cancelled);
    assert_eq!(
        view.cancelled.as_ref().map(|x| x.by.as_str()),
        Some(c.id.as_str())
    );

    // The submitter's marker counts on every reader; the done segment stays done.
    report(&mut doc, &cancel_marker(&a, &job.id, 4), 4);
    let view = super::job(&doc, &job.id, NOW).expect("job");
    assert_eq!(view.state, JobState::Cancelled);
    assert_eq!(view.segments[0].state, JobState::Done);
    assert_eq!(view.segments[1].state, JobState::Cancelled);
    assert_eq!(view.segments.len(), 2, "the marker is not a segment");
    let json = serde_json::to_value(&view).expect("json");
    assert_eq!(json["state"], "cancelled");
    assert_eq!(json["cancelled"]["by"], a.id.as_str());
}

#[test]
fn a_cancel_marker_holds_only_the_cancelled_status() {
    let n = node();
    let o = outcome(0, "", NOW);
    let not_cancel = signed(&n, "0123456789abcdef01234567", CANCEL_SEGMENT, &o);
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    assert!(put_result(&mut tx, &n.id, &not_cancel, hlc(1)).is_err());
    let beyond = signed(
        &n,
        "0123456789abcdef01234567",
        CANCEL_SEGMENT + 1,
        &RunOutcome {
            status: Status::Cancelled,
            ..o
        },
    );
    assert!(put_result(&mut tx, &n.id, &beyond, hlc(1)).is_err());
}

#[test]
fn no_eligible_node_names_what_is_missing() {
    let gpu = vec!["grid".to_string(), "gpu".to_string()];
    let plain = vec!["grid".to_string()];
    let req = |region: &str, caps: &[&str]| Requirements {
        region: region.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    let nodes: Vec<(&str, &[String])> = vec![("eu", &plain), ("us", &gpu)];
    assert_eq!(no_eligible_node(&req("", &["gpu"]), &nodes), None);
    assert_eq!(
        no_eligible_node(&req("", &["tpu"]), &nodes).as_deref(),
        Some("no live node has capability tpu")
    );
    assert_eq!(
        no_eligible_node(&req("eu", &["gpu"]), &nodes).as_deref(),
        Some("no live node in region eu has capability gpu")
    );
    assert_eq!(
        no_eligible_node(&req("ap", &[]), &nodes).as_deref(),
        Some("no live node is in region ap")
    );
    let ssd = vec!["ssd".to_string()];
    let split: Vec<(&str, &[String])> = vec![("eu", &ssd), ("eu", &gpu)];
    assert_eq!(
        no_eligible_node(&req("", &["gpu", "ssd"]), &split).as_deref(),
        Some("no live node has all of capabilities gpu, ssd")
    );
    assert_eq!(
        no_eligible_node(&req("", &[]), &[]).as_deref(),
        Some("no live node runs grid jobs")
    );
}

proptest::proptest! {
    /// The scheduler's index, refreshed after every change from the paths it wrote, shows what a
    /// fresh read of the whole document shows: submissions, claims, renewals and results by
    /// three nodes, local or merged.
    #[test]
    fn an_index_refreshed_from_written_paths_equals_a_fresh_read(
        steps in proptest::collection::vec((0usize..3, 0u8..4, 0usize..4, 1u64..50), 1..25usize)
    ) {
        let nodes = [node(), node(), node()];
        let mut w = Replica::new(DocId::JobEpoch(1));
        let roster = roster(&[&nodes[0], &nodes[1], &nodes[2]]);
        let mut r = Replica::new(DocId::JobEpoch(1));
        let mut ix = JobsIndex::read(r.doc());
        r.track_touched();
        let mut ids: Vec<String> = Vec::new();
        for (t, (who, what, pick, dt)) in steps.into_iter().enumerate() {
            let n = &nodes[who];
            let t = t as u64 * 100 + dt;
            let job = ids.get(pick % ids.len().max(1)).cloned();
            let change = w.change(&n.key, |tx| {
                match (what, &job) {
                    (0, _) | (_, None) => {
                        let mut i = input();
                        i.args = vec![format!("{t}")];
                        let j = put_job(tx, &n.id, &i, hlc(t), NOW + t)?;
                        ids.push(j.id);
                    }
                    (1, Some(j)) => {
                        put_claim(tx, &n.id, j, 0, NOW + t + 1000, 1, hlc(t))?;
                    }
                    (2, Some(j)) => {
                        put_claim(tx, &n.id, j, 0, NOW + t + 5000, 1, hlc(t))?;
                    }
                    (_, Some(j)) => {
                        let res = signed(n, j, 0, &outcome(t as i64, "out", NOW + t));
                        put_result(tx, &n.id, &res, hlc(t))?;
                    }
                }
                Ok(())
            }).expect("change").expect("not empty");
            r.receive(vec![change], &roster).expect("receive");
            let paths = r.take_touched().expect("tracked");
            ix.refresh(r.doc(), paths);
            let now = NOW + t + 2000;
            let fresh = jobs(r.doc(), now);
            let kept = ix.views(now);
            proptest::prop_assert_eq!(format!("{kept:?}"), format!("{fresh:?}"));
        }
    }
}

#[test]
fn renewals_outside_the_document_keep_a_claim_running() {
    let (a, b) = (node(), node());
    let mut doc = Automerge::new();
    let job = submit(&mut doc, &a.id, &input(), 1);
    // B claims once (attempt 1), with a 10 s lease.
    claim(&mut doc, &b.id, &job.id, 0, NOW + 10_000, 2);
    let mut book = LeaseBook::default();
    let renew = |book: &mut LeaseBook, runner: &str, attempt: u32, until: u64, now: u64| {
        let body = crate::lease::RenewalBody {
            node: Vec::new(),
            job: job.id.clone(),
            segment: 0,
            attempt,
            until_ms: until,
        };
        book.note(runner, &body, now)
    };
    // Past the claim's own lease, with no renewal: pending again.
    let view = job_with(&doc, &job.id, NOW + 12_000, Some(&book)).expect("job");
    assert_eq!(view.segments[0].state, JobState::Pending);
    // B's renewal at 8 s carries the lease to 18 s: running at 12 s, through both readers.
    assert_eq!(
        renew(&mut book, &b.id, 1, NOW + 18_000, NOW + 8_000),
        crate::lease::Noted::Renewed
    );
    let view = job_with(&doc, &job.id, NOW + 12_000, Some(&book)).expect("job");
    assert_eq!(view.state, JobState::Running);
    assert_eq!(view.segments[0].state, JobState::Running);
    assert_eq!(view.segments[0].claims[0].lease_until_ms, NOW + 18_000);
    let ix = JobsIndex::read(&doc);
    assert_eq!(
        ix.views_with(NOW + 12_000, Some(&book))[0].segments[0].state,
        JobState::Running
    );
    // Without the book (what the document alone says): pending.
    assert_eq!(
        ix.views(NOW + 12_000)[0].segments[0].state,
        JobState::Pending
    );
    // Once the renewal ran out too: pending.
    let view = job_with(&doc, &job.id, NOW + 18_000, Some(&book)).expect("job");
    assert_eq!(view.segments[0].state, JobState::Pending);

    // A renewal of another attempt, or by another runner, does not extend B's claim.
    let mut other = LeaseBook::default();
    renew(&mut other, &b.id, 0, NOW + 30_000, NOW + 8_000);
    renew(&mut other, &a.id, 1, NOW + 30_000, NOW + 8_000);
    let view = job_with(&doc, &job.id, NOW + 12_000, Some(&other)).expect("job");
    assert_eq!(view.segments[0].state, JobState::Pending);
    assert_eq!(view.segments[0].claims[0].lease_until_ms, NOW + 10_000);
    // A renewal never shortens the claim's own lease.
    let mut early = LeaseBook::default();
    renew(&mut early, &b.id, 1, NOW + 5_000, NOW + 1_000);
    let view = job_with(&doc, &job.id, NOW + 7_000, Some(&early)).expect("job");
    assert_eq!(view.segments[0].state, JobState::Running);
    assert_eq!(view.segments[0].claims[0].lease_until_ms, NOW + 10_000);
}
