//! The UDP hot path: a bounds-checked parse of plain queries and patching of cached responses.
//!
//! Most queries an authoritative server sees are a header, one question and at most an OPT
//! record. [`parse`] recognises exactly that shape (anything else — compression in the
//! question, other sections, other opcodes, non-IN classes, EDNS versions other than 0 — goes
//! to the full decoder) and produces a cache key: the lower-cased question name in wire form, the
//! type and the EDNS shape. A cached response is the encoded answer to the lower-cased question;
//! [`patch`] copies in the query's id, RD and CD bits and the question bytes as the client wrote
//! them (preserving 0x20 case randomisation), so the answer is byte-for-byte what the full path
//! would produce.

/// What the hot path needs to know about a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plain {
    pub id: u16,
    /// End of the question section (after QTYPE/QCLASS).
    pub question_end: usize,
    /// The client's UDP payload size: 512 without EDNS.
    pub udp_payload: u16,
}

/// EDNS shape of a query, part of the cache key: none, EDNS, EDNS with DO.
fn edns_shape(edns: bool, dnssec_ok: bool) -> u8 {
    match (edns, dnssec_ok) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    }
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Parses a plain query, writing its cache key into `key`; `None` sends it down the full path.
pub fn parse(p: &[u8], key: &mut Vec<u8>) -> Option<Plain> {
    key.clear();
    if p.len() < 17 {
        return None;
    }
    let flags = u16_at(p, 2)?;
    // QR=0, OPCODE=0, TC=0; one question, no answer or authority, at most one additional.
    if flags & 0xFA00 != 0 || u16_at(p, 4)? != 1 || u16_at(p, 6)? != 0 || u16_at(p, 8)? != 0 {
        return None;
    }
    let additionals = u16_at(p, 10)?;
    if additionals > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *p.get(at)? as usize;
        if len == 0 {
            key.push(0);
            at += 1;
            break;
        }
        if len > 63 || key.len() + len + 1 > 255 {
            return None; // compression pointer or over-long name
        }
        let label = p.get(at + 1..at + 1 + len)?;
        key.push(len as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
    }
    let qtype = u16_at(p, at)?;
    if u16_at(p, at + 2)? != 1 {
        return None; // class other than IN
    }
    if matches!(qtype, 0 | 41 | 251 | 252 | 255) {
        return None; // reserved, OPT, IXFR, AXFR, ANY: the full path decides
    }
    at += 4;
    let question_end = at;
    let (edns, dnssec_ok, udp_payload) = if additionals == 1 {
        // OPT: root name, TYPE 41, CLASS = payload, TTL = ext-rcode, version, flags; RDATA.
        if *p.get(at)? != 0 || u16_at(p, at + 1)? != 41 {
            return None;
        }
        let payload = u16_at(p, at + 3)?;
        let version = *p.get(at + 6)?;
        let eflags = u16_at(p, at + 7)?;
        let rdlen = u16_at(p, at + 9)? as usize;
        if version != 0 || at + 11 + rdlen != p.len() {
            return None;
        }
        (true, eflags & 0x8000 != 0, payload.max(512))
    } else {
        if at != p.len() {
            return None;
        }
        (false, false, 512)
    };
    key.extend_from_slice(&qtype.to_be_bytes());
    key.push(edns_shape(edns, dnssec_ok));
    Some(Plain {
        id: u16::from_be_bytes([p[0], p[1]]),
        question_end,
        udp_payload,
    })
}

/// Writes into `out` the cached `response` for `query`: its id, RD and CD bits, and the question
/// as the client spelled it. `None` when the cached response does not fit the query's shape.
pub fn patch(response: &[u8], query: &[u8], plain: &Plain, out: &mut Vec<u8>) -> Option<()> {
    if response.len() < plain.question_end || query.len() < plain.question_end {
        return None;
    }
    out.clear();
    out.extend_from_slice(response);
    out[0..2].copy_from_slice(&plain.id.to_be_bytes());
    out[2] = (out[2] & !0x01) | (query[2] & 0x01); // RD
    out[3] = (out[3] & !0x10) | (query[3] & 0x10); // CD
    out[12..plain.question_end].copy_from_slice(&query[12..plain.question_end]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, opt: Option<(u16, u16)>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        for l in name {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if let Some((size, flags)) = opt {
            p.push(0);
            p.extend_from_slice(&41u16.to_be_bytes());
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&flags.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
        }
        p
    }

    #[test]
    fn plain_queries_parse_with_lower_case_keys() {
        let mut k1 = Vec::new();
        let mut k2 = Vec::new();
        let a = parse(&query(&["WwW", "Demo"], 1, None), &mut k1).expect("plain");
        let b = parse(&query(&["www", "demo"], 1, None), &mut k2).expect("plain");
        assert_eq!(a.question_end, b.question_end);
        assert_eq!(k1, k2);
        assert_eq!(a.id, 0x1234);
        assert_eq!(a.udp_payload, 512);
        let e = parse(&query(&["www", "demo"], 1, Some((1232, 0x8000))), &mut k2).expect("edns");
        assert_eq!(e.udp_payload, 1232);
        assert_ne!(k1, k2, "EDNS shape is part of the key");
    }

    #[test]
    fn anything_unusual_goes_to_the_full_path() {
        let mut k = Vec::new();
        let good = query(&["a", "b"], 1, None);
        assert!(parse(&good, &mut k).is_some());
        assert!(
            parse(&good[..good.len() - 1], &mut k).is_none(),
            "truncated"
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse(&trailing, &mut k).is_none(), "trailing bytes");
        let mut response = good.clone();
        response[2] |= 0x80;
        assert!(parse(&response, &mut k).is_none(), "a response");
        let mut pointer = good.clone();
        pointer[12] = 0xC0;
        assert!(parse(&pointer, &mut k).is_none(), "compression pointer");
        assert!(parse(&query(&["a"], 255, None), &mut k).is_none(), "ANY");
        let mut chaos = good.clone();
        let n = chaos.len();
        chaos[n - 1] = 3;
        assert!(parse(&chaos, &mut k).is_none(), "class CH");
        let mut v1 = query(&["a"], 1, Some((1232, 0)));
        let n = v1.len();
        v1[n - 5] = 1;
        assert!(parse(&v1, &mut k).is_none(), "EDNS version 1");
    }

    #[test]
    fn patch_keeps_the_clients_id_flags_and_spelling() {
        let mut k = Vec::new();
        let q = query(&["WwW", "demo"], 1, None);
        let plain = parse(&q, &mut k).expect("plain");
        let mut cached = query(&["www", "demo"], 1, None);
        cached[0] = 0;
        cached[1] = 0;
        cached[2] = 0x84; // QR, AA, RD clear
        let mut out = Vec::new();
        patch(&cached, &q, &plain, &mut out).expect("fits");
        assert_eq!(&out[0..2], &[0x12, 0x34]);
        assert_eq!(out[2], 0x85);
        assert_eq!(&out[12..plain.question_end], &q[12..plain.question_end]);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut k = Vec::new();
            if let Some(p) = parse(&bytes, &mut k) {
                let mut out = Vec::new();
                let _ = patch(&bytes, &bytes, &p, &mut out);
            }
        }
    }
}
