use super::*;
use crate::ticket::{Ticket, TicketBody};

const NOW: u64 = 1_800_000_000;

fn charter(genesis: &Keypair, nonce: u8) -> MeshCharter {
    MeshCharter {
        genesis: genesis.public().encode_protobuf(),
        created_at: NOW - 100,
        nonce: [nonce; 16],
    }
}

fn ticket(
    issuer: &Keypair,
    charter: &MeshCharter,
    role: Role,
    expires_at: u64,
    nonce: u8,
) -> Ticket {
    Ticket::issue(
        issuer,
        TicketBody {
            charter: charter.clone(),
            role,
            expires_at,
            nonce: [nonce; 16],
            bootstrap: vec!["/ip4/127.0.0.1/tcp/4747".into()],
            issuer: Vec::new(),
        },
        None,
    )
    .expect("sign ticket")
}

fn mesh() -> (Keypair, MeshCharter, Directory) {
    let g = Keypair::generate_ed25519();
    let c = charter(&g, 1);
    let mut d = Directory::new(c.clone());
    let rec = MembershipRecord::genesis(&g, c.clone(), NOW - 100).expect("genesis record");
    assert_eq!(d.admit_known(rec), Ok(Admitted::New));
    (g, c, d)
}

/// A second directory of the mesh of `g` and `c` (another replica).
fn mesh_with(g: &Keypair, c: &MeshCharter) -> (Keypair, MeshCharter, Directory) {
    let mut d = Directory::new(c.clone());
    let rec = MembershipRecord::genesis(g, c.clone(), NOW - 100).expect("genesis record");
    assert_eq!(d.admit_known(rec), Ok(Admitted::New));
    (g.clone(), c.clone(), d)
}

fn presented(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

#[test]
fn valid_ticket_admits_a_new_member_once() {
    let (g, c, mut d) = mesh();
    let n = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&n, ticket(&g, &c, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    assert_eq!(
        d.admit_presented(rec.clone(), presented(&n), &[], NOW),
        Ok(Admitted::New)
    );
    assert_eq!(
        d.admit_presented(rec, presented(&n), &[], NOW + 10_000),
        Ok(Admitted::Known)
    );
    assert!(d.contains(&n.public().to_peer_id()));
    assert_eq!(d.len(), 2);
}

#[test]
fn ticket_survives_text_round_trip_and_rejects_garbage() {
    let (g, c, _) = mesh();
    let t = ticket(&g, &c, Role::Admin, NOW + 60, 3);
    let text = t.encode().expect("encode");
    assert!(text.starts_with("voike1"));
    assert_eq!(Ticket::decode(&format!("  {text}\n")).expect("decode"), t);
    assert!(Ticket::decode("voike1!!!").is_err());
    assert!(Ticket::decode("hello").is_err());
    assert!(Ticket::decode(&text[..text.len() / 2]).is_err());
    assert!(Ticket::decode(&"voike1".repeat(10_000)).is_err());
}

#[test]
fn forged_ticket_is_rejected() {
    let (g, c, mut d) = mesh();
    let n = Keypair::generate_ed25519();
    let mut t = ticket(&g, &c, Role::Member, NOW + 60, 7);
    t.body.role = Role::Admin; // altered after signing
    let rec = MembershipRecord::redeem(&n, t, NOW).expect("record");
    assert!(matches!(
        d.admit_presented(rec, presented(&n), &[], NOW),
        Err(AdmissionError::ForgedTicket { .. })
    ));
    assert!(!d.contains(&n.public().to_peer_id()));
}

#[test]
fn ticket_signed_by_a_non_admin_is_rejected() {
    let (_g, c, mut d) = mesh();
    let stranger = Keypair::generate_ed25519();
    let n = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&n, ticket(&stranger, &c, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    assert!(matches!(
        d.admit_presented(rec, presented(&n), &[], NOW),
        Err(AdmissionError::IssuerNotAdmin { .. })
    ));
}

#[test]
fn expiry_and_skew_errors_show_dates_not_unix_seconds() {
    let expired = AdmissionError::Expired {
        expires_at: NOW - 180,
        now: NOW,
    }
    .to_string();
    assert_eq!(
        expired,
        "ticket expired at 2027-01-15T07:57:00Z, 3 min before it was used \
         (2027-01-15T08:00:00Z): ask an admin for a new ticket"
    );
    let skew = AdmissionError::ClockSkew {
        joined_at: NOW + 720,
        now: NOW,
    }
    .to_string();
    assert!(
        skew.contains(
            "2027-01-15T08:12:00Z, 12 min from the verifier's clock (2027-01-15T08:00:00Z)"
        ),
        "{skew}"
    );
    assert!(!skew.contains(&NOW.to_string()), "{skew}");
}

#[test]
fn expired_ticket_is_rejected_when_fresh_but_old_members_stay_valid() {
    let (g, c, mut d) = mesh();
    let n = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&n, ticket(&g, &c, Role::Member, NOW - 1, 7), NOW)
        .expect("record");
    assert!(matches!(
        d.admit_presented(rec.clone(), presented(&n), &[], NOW),
        Err(AdmissionError::Expired { .. })
    ));
    // Backdating joined_at does not help a fresh join.
    let rec = MembershipRecord::redeem(&n, ticket(&g, &c, Role::Member, NOW - 1000, 7), NOW - 1001)
        .expect("record");
    assert!(matches!(
        d.admit_presented(rec, presented(&n), &[], NOW),
        Err(AdmissionError::Expired { .. })
    ));
    // A member admitted while the ticket was valid stays valid after it expires.
    let m = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&m, ticket(&g, &c, Role::Member, NOW + 10, 8), NOW)
        .expect("record");
    assert_eq!(d.admit_known(rec), Ok(Admitted::New));
}

#[test]
fn ticket_of_another_mesh_is_rejected() {
    let (_g, _c, mut d) = mesh();
    let g2 = Keypair::generate_ed25519();
    let c2 = charter(&g2, 2);
    let n = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&n, ticket(&g2, &c2, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    assert!(matches!(
        d.admit_presented(rec, presented(&n), &[], NOW),
        Err(AdmissionError::WrongMesh { .. })
    ));
}

/// A ticket redeemed twice (on two sides of a partition): whatever order a directory hears of
/// the two records in, it keeps the same one (the smaller peer id) and refuses the other.
#[test]
fn a_ticket_redeemed_twice_is_kept_by_the_same_node_in_every_order() {
    let (g, c, _) = mesh();
    let t = ticket(&g, &c, Role::Member, NOW + 60, 7);
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
    let (winner, loser) = if pa.to_bytes() < pb.to_bytes() {
        (pa, pb)
    } else {
        (pb, pa)
    };
    let ra = MembershipRecord::redeem(&a, t.clone(), NOW).expect("record");
    let rb = MembershipRecord::redeem(&b, t, NOW).expect("record");
    for (first, second) in [(ra.clone(), rb.clone()), (rb, ra)] {
        // Presented to a member that knows the ticket is used: refused, whatever the id.
        let (_, _, mut fresh) = mesh_with(&g, &c);
        assert_eq!(fresh.admit_known(first.clone()), Ok(Admitted::New));
        let presenter = second.peer_id().expect("id");
        assert!(matches!(
            fresh.admit_presented(second.clone(), presenter, &[], NOW),
            Err(AdmissionError::NonceReused { .. })
        ));
        // Relayed (admitted elsewhere): the smaller id keeps it, in either order.
        let (_, _, mut d) = mesh_with(&g, &c);
        let second_id = second.peer_id().expect("id");
        assert_eq!(d.admit_known(first), Ok(Admitted::New));
        let before = d.generation();
        let outcome = d.admit_known(second);
        if second_id == winner {
            assert_eq!(outcome, Ok(Admitted::Replaced { evicted: loser }));
            assert!(d.generation() > before);
        } else {
            assert!(
                matches!(outcome, Err(AdmissionError::NonceReused { .. })),
                "{outcome:?}"
            );
        }
        assert!(d.contains(&winner), "the smaller id keeps the ticket");
        assert!(!d.contains(&loser));
    }
}

#[test]
fn record_presented_by_someone_else_is_rejected() {
    let (g, c, mut d) = mesh();
    let a = Keypair::generate_ed25519();
    let thief = Keypair::generate_ed25519();
    let ra = MembershipRecord::redeem(&a, ticket(&g, &c, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    assert!(matches!(
        d.admit_presented(ra, presented(&thief), &[], NOW),
        Err(AdmissionError::NotOwnRecord { .. })
    ));
}

#[test]
fn tampered_record_signature_is_rejected() {
    let (g, c, mut d) = mesh();
    let a = Keypair::generate_ed25519();
    let mut ra = MembershipRecord::redeem(&a, ticket(&g, &c, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    ra.body.joined_at += 1;
    assert!(matches!(
        d.admit_presented(ra, presented(&a), &[], NOW),
        Err(AdmissionError::BadRecordSignature { .. })
    ));
}

#[test]
fn admin_chain_lets_a_second_admin_invite() {
    let (g, c, mut d) = mesh();
    let admin = Keypair::generate_ed25519();
    let admin_rec = MembershipRecord::redeem(&admin, ticket(&g, &c, Role::Admin, NOW + 60, 7), NOW)
        .expect("record");
    let member = Keypair::generate_ed25519();
    let mut t = Ticket::issue(
        &admin,
        TicketBody {
            charter: c.clone(),
            role: Role::Member,
            expires_at: NOW + 60,
            nonce: [9; 16],
            bootstrap: vec![],
            issuer: vec![],
        },
        Some(admin_rec.clone()),
    )
    .expect("ticket");
    let rec = MembershipRecord::redeem(&member, t.clone(), NOW).expect("record");
    assert_eq!(
        d.admit_presented(rec, presented(&member), &[], NOW),
        Ok(Admitted::New)
    );

    // A member-role proof does not make its holder an admin.
    let plain = Keypair::generate_ed25519();
    let plain_rec =
        MembershipRecord::redeem(&plain, ticket(&g, &c, Role::Member, NOW + 60, 10), NOW)
            .expect("record");
    t = Ticket::issue(
        &plain,
        TicketBody {
            charter: c,
            role: Role::Member,
            expires_at: NOW + 60,
            nonce: [11; 16],
            bootstrap: vec![],
            issuer: vec![],
        },
        Some(plain_rec),
    )
    .expect("ticket");
    let other = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&other, t, NOW).expect("record");
    assert!(matches!(
        d.admit_presented(rec, presented(&other), &[], NOW),
        Err(AdmissionError::IssuerNotAdmin { .. })
    ));
}

#[test]
fn receipt_from_a_known_member_admits_after_expiry_and_forged_receipts_do_not() {
    let (g, c, mut d) = mesh();
    let n = Keypair::generate_ed25519();
    let rec = MembershipRecord::redeem(&n, ticket(&g, &c, Role::Member, NOW + 60, 7), NOW)
        .expect("record");
    let later = NOW + 86_400;
    let by_genesis = AdmissionReceipt::issue(&g, &rec, NOW + 1).expect("receipt");
    let stranger = Keypair::generate_ed25519();
    let by_stranger = AdmissionReceipt::issue(&stranger, &rec, NOW + 1).expect("receipt");
    let mut tampered = by_genesis.clone();
    tampered.admitted_at = NOW + 2;
    let by_self = AdmissionReceipt::issue(&n, &rec, NOW + 1).expect("receipt");
    for bad in [by_stranger, tampered, by_self] {
        assert!(matches!(
            d.clone()
                .admit_presented(rec.clone(), presented(&n), &[bad], later),
            Err(AdmissionError::Expired { .. })
        ));
    }
    assert_eq!(
        d.admit_presented(rec, presented(&n), &[by_genesis], later),
        Ok(Admitted::New)
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any single flipped byte in an encoded record either fails to decode or fails to verify.
        #[test]
        fn any_corrupted_byte_fails_verification(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (g, c, _) = mesh();
            let n = Keypair::generate_ed25519();
            let rec = MembershipRecord::redeem(&n, ticket(&g, &c, Role::Member, NOW + 60, 7), NOW).expect("record");
            let mut bytes = rec.to_bytes().expect("encode");
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(bad) = MembershipRecord::from_bytes(&bytes)
                && bad != rec
            {
                prop_assert!(bad.verify(&c, Some(NOW)).is_err());
            }
        }
    }
}
