use proptest::prelude::*;

use super::*;

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

/// Feeds heartbeats every `period ± jitter` ms (from `jitters`) and ticks every 50 ms until
/// `until`; returns the transitions with their times.
fn run(
    d: &mut Detector,
    p: PeerId,
    period: u64,
    jitters: &[i64],
    until: u64,
) -> Vec<(u64, Transition)> {
    let mut out = Vec::new();
    let mut next_beat = 0u64;
    let mut i = 0;
    let mut now = 0u64;
    while now <= until {
        if now >= next_beat {
            if let Some(t) = d.heartbeat(p, now) {
                out.push((now, t));
            }
            let j = jitters.get(i % jitters.len().max(1)).copied().unwrap_or(0);
            i += 1;
            next_beat = (now as i64 + period as i64 + j).max(now as i64 + 1) as u64;
        }
        for t in d.tick(now) {
            out.push((now, t));
        }
        now += 50;
    }
    out
}

#[test]
fn a_silent_peer_becomes_suspect_then_dead_within_bounds_and_recovers() {
    let config = DetectorConfig::default();
    let mut d = Detector::new(config);
    let p = peer();
    // 60 s of steady 1 s heartbeats, then silence.
    let before = run(&mut d, p, 1000, &[0], 60_000);
    assert!(before.is_empty(), "{before:?}");
    let mut suspect_at = None;
    let mut dead_at = None;
    let mut now = 60_000;
    while now < 90_000 && dead_at.is_none() {
        now += 50;
        for t in d.tick(now) {
            match t {
                Transition::PeerSuspect { .. } => suspect_at = Some(now),
                Transition::PeerDown { .. } => dead_at = Some(now),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let last = 60_000;
    let suspect = suspect_at.expect("suspect") - last;
    let dead = dead_at.expect("dead") - last;
    assert!(
        (1_200..=4_000).contains(&suspect),
        "suspect after {suspect} ms"
    );
    assert!(
        dead >= config.min_dead_ms && dead <= 6_000,
        "dead after {dead} ms"
    );
    assert_eq!(d.state(&p), Some(PeerState::Dead));
    // Dead stays dead until a heartbeat; then it recovers.
    assert!(d.tick(now + 60_000).is_empty());
    assert_eq!(
        d.heartbeat(p, now + 61_000),
        Some(Transition::PeerRecovered {
            peer: p.to_string()
        })
    );
    assert_eq!(d.state(&p), Some(PeerState::Alive));
}

#[test]
fn the_next_deadline_is_when_the_transition_happens() {
    let mut d = Detector::new(DetectorConfig::default());
    let p = peer();
    run(&mut d, p, 1000, &[0, 40, -40], 20_000);
    let now = 20_000;
    let at = d.next_deadline(now).expect("tracked");
    assert!(at > now);
    assert!(d.tick(at - 20).is_empty(), "nothing before the deadline");
    assert_eq!(d.tick(at).len(), 1, "suspect at the deadline");
    let dead_at = d.next_deadline(at).expect("tracked");
    assert!(dead_at >= 19_000 + d.config().min_dead_ms);
    assert!(matches!(d.tick(dead_at)[..], [Transition::PeerDown { .. }]));
    assert_eq!(d.next_deadline(dead_at + 1), None, "nothing left to watch");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Steady heartbeats with up to ±30% jitter never produce a peer_down.
    #[test]
    fn jittery_heartbeats_never_produce_peer_down(
        jitters in proptest::collection::vec(-300i64..300, 1..64),
        period in 500u64..2000,
    ) {
        let mut d = Detector::new(DetectorConfig {
            expected_interval_ms: period as f64,
            ..DetectorConfig::default()
        });
        let p = peer();
        let scaled: Vec<i64> = jitters.iter().map(|j| j * period as i64 / 1000).collect();
        let events = run(&mut d, p, period, &scaled, 120_000);
        prop_assert!(
            !events.iter().any(|(_, t)| matches!(t, Transition::PeerDown { .. })),
            "{:?}", events
        );
    }
}

#[test]
fn reports_verify_and_tampering_is_caught() {
    let key = Keypair::generate_ed25519();
    let body = ReportBody {
        node: key.public().encode_protobuf(),
        hlc: Hlc {
            wall_ms: 1,
            counter: 0,
        },
        samples: Samples {
            cpu_pct: 12.5,
            ..Samples::default()
        },
        activity: Activity::Active,
        region: "eu".into(),
        capabilities: vec!["http".into()],
        addrs: vec![],
        version: "0.1.0".into(),
    };
    let r = HealthReport::sign(&key, body).expect("sign");
    let (back, who) = HealthReport::from_bytes(&r.to_bytes()).expect("verify");
    assert_eq!(who, key.public().to_peer_id());
    assert_eq!(back, r);
    let mut bad = r.clone();
    bad.body.samples.cpu_pct = 1.0;
    assert_eq!(
        HealthReport::from_bytes(&bad.to_bytes()).err(),
        Some(ReportError::BadSignature)
    );
    assert_eq!(
        HealthReport::from_bytes(&[1, 2, 3]).err(),
        Some(ReportError::Malformed)
    );
    assert_eq!(
        HealthReport::from_bytes(&vec![0; MAX_REPORT_BYTES + 1]).err(),
        Some(ReportError::TooLarge)
    );
}

#[test]
fn rising_load_is_predicted_and_flat_load_is_not() {
    let rising: Vec<(u64, f64)> = (0..10).map(|i| (i * 1000, 50.0 + 4.0 * i as f64)).collect();
    // 86% at t=9s, +4%/s: 90% in about 1 s.
    let eta = time_to_limit(&rising, 90.0).expect("rising");
    assert!((900..=1100).contains(&eta), "{eta}");
    let flat: Vec<(u64, f64)> = (0..10).map(|i| (i * 1000, 50.0)).collect();
    assert_eq!(time_to_limit(&flat, 90.0), None);
    assert_eq!(time_to_limit(&rising[..2], 90.0), None, "too few points");
}

fn input(
    peer: &str,
    state: PeerState,
    rtt: f64,
    cpu: f32,
    region: &str,
    caps: &[&str],
) -> RouteInput {
    RouteInput {
        peer: peer.into(),
        state,
        rtt_ms: Some(rtt),
        relayed: false,
        cpu_pct: cpu,
        mem_pct: 10.0,
        samples_known: true,
        region: region.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    }
}

#[test]
fn routes_rank_by_health_latency_region_and_capabilities() {
    let inputs = vec![
        input("far", PeerState::Alive, 80.0, 10.0, "us", &["http"]),
        input("near", PeerState::Alive, 2.0, 10.0, "eu", &["http"]),
        input("busy", PeerState::Alive, 2.0, 95.0, "eu", &["http"]),
        input("nocap", PeerState::Alive, 2.0, 10.0, "eu", &[]),
        input("gone", PeerState::Dead, 1.0, 0.0, "eu", &["http"]),
        input("shaky", PeerState::Suspect, 2.0, 10.0, "eu", &["http"]),
    ];
    let routes = rank_routes(&inputs, "eu", &["http".to_string()]);
    let order: Vec<&str> = routes.iter().map(|r| r.peer.as_str()).collect();
    assert_eq!(order[0], "near");
    assert!(!order.contains(&"gone"), "dead peers have no route");
    let pos = |p: &str| order.iter().position(|x| *x == p).expect("listed");
    assert!(pos("near") < pos("busy"));
    assert!(pos("near") < pos("nocap"));
    assert!(pos("near") < pos("far"));
    assert!(pos("busy") < pos("shaky") || pos("nocap") < pos("shaky"));
    assert_eq!(spawn_advisory(&routes, "near").as_deref(), Some(order[1]));
}

const MESH: [u8; 32] = [7; 32];

#[test]
fn a_signed_leave_verifies_for_its_mesh_and_names_its_node() {
    let key = Keypair::generate_ed25519();
    let leave = Leave::sign(&key, &MESH, 1_000).expect("signs");
    assert_eq!(leave.verify(&MESH), Ok(key.public().to_peer_id()));
    assert_eq!(leave.verify(&[8; 32]), Err(LeaveError::WrongMesh));
}

#[test]
fn a_forged_leave_is_refused() {
    let victim = Keypair::generate_ed25519();
    let forger = Keypair::generate_ed25519();
    // Signed by another key but naming the victim.
    let mut forged = Leave::sign(&forger, &MESH, 1_000).expect("signs");
    forged.body.node = victim.public().encode_protobuf();
    assert_eq!(forged.verify(&MESH), Err(LeaveError::BadSignature));
    // The victim's own leave with its stamp changed.
    let mut altered = Leave::sign(&victim, &MESH, 1_000).expect("signs");
    altered.body.hlc.wall_ms += 1;
    assert_eq!(altered.verify(&MESH), Err(LeaveError::BadSignature));
    let mut junk = Leave::sign(&victim, &MESH, 1_000).expect("signs");
    junk.body.node = vec![1, 2, 3];
    assert_eq!(junk.verify(&MESH), Err(LeaveError::BadKey));
}

#[test]
fn a_replayed_leave_is_refused_once_the_node_was_heard_again() {
    let key = Keypair::generate_ed25519();
    let bound = 5_000;
    let leave = Leave::sign(&key, &MESH, 10_000).expect("signs");
    // The last report came in the same millisecond: the leave still sorts after it.
    let report = Hlc {
        wall_ms: 10_000,
        counter: 3,
    };
    assert_eq!(leave.check_fresh(Some(report), 10_010, bound), Ok(()));
    // Taken once; the same leave again is a replay.
    assert!(matches!(
        leave.check_fresh(Some(leave.body.hlc), 10_020, bound),
        Err(LeaveError::Replayed { .. })
    ));
    // The node came back and reported: its old leave is a replay.
    let back = Hlc {
        wall_ms: 12_000,
        counter: 0,
    };
    assert!(matches!(
        leave.check_fresh(Some(back), 12_100, bound),
        Err(LeaveError::Replayed { .. })
    ));
    // A receiver that never heard of the node refuses an old leave.
    assert!(matches!(
        leave.check_fresh(None, 10_000 + bound + 1, bound),
        Err(LeaveError::OutOfWindow { .. })
    ));
    assert_eq!(leave.check_fresh(None, 10_000 + bound, bound), Ok(()));
}

#[test]
fn a_peer_that_left_is_neither_suspect_nor_dead_and_is_tracked_anew_when_back() {
    let mut d = Detector::new(DetectorConfig::default());
    let p = peer();
    for t in (0..=5_000).step_by(1_000) {
        d.heartbeat(p, t);
    }
    assert_eq!(
        d.leave(p),
        Transition::PeerLeft {
            peer: p.to_string()
        }
    );
    assert!(
        d.tick(60_000).is_empty(),
        "a peer that left has no transitions"
    );
    assert_eq!(d.state(&p), None);
    assert_eq!(
        d.heartbeat(p, 70_000),
        None,
        "back: tracked anew, not recovered"
    );
    assert_eq!(d.state(&p), Some(PeerState::Alive));
}

#[test]
fn unknown_samples_are_not_taken_for_an_idle_machine() {
    let blind = Samples {
        rss_bytes: 30 << 20,
        connections: 2,
        ..Samples::default()
    };
    assert!(!blind.machine_known());
    assert_eq!(health_of(PeerState::Alive, Some(&blind)), UNKNOWN_HEALTH);
    assert_eq!(health_of(PeerState::Alive, None), UNKNOWN_HEALTH);
    let idle = Samples {
        mem_used_bytes: 1 << 30,
        mem_total_bytes: 16 << 30,
        ..Samples::default()
    };
    assert!(health_of(PeerState::Alive, Some(&idle)) > UNKNOWN_HEALTH);
    let mut unknown = input("blind", PeerState::Alive, 2.0, 0.0, "eu", &["http"]);
    unknown.samples_known = false;
    unknown.mem_pct = 0.0;
    let known = input("idle", PeerState::Alive, 2.0, 0.0, "eu", &["http"]);
    let routes = rank_routes(&[unknown, known], "eu", &[]);
    assert_eq!(routes[0].peer, "idle");
    assert_eq!(routes[1].health, UNKNOWN_HEALTH);
}
