//! BIND zone files (RFC 1035 master format) from a compiled zone: what the node serves, with
//! absolute names, so `named-checkzone` and other servers load it as is.

use std::fmt::Write;

use hickory_proto::rr::{RData, Record};

use crate::authority::Snapshot;

/// Escapes one TXT character-string: quotes, backslashes and non-printable bytes.
fn quoted(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7E => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

pub(crate) fn rdata_text(data: &RData) -> Option<String> {
    Some(match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(n) => n.0.to_ascii(),
        RData::NS(n) => n.0.to_ascii(),
        RData::PTR(n) => n.0.to_ascii(),
        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange.to_ascii()),
        RData::SRV(s) => format!(
            "{} {} {} {}",
            s.priority,
            s.weight,
            s.port,
            s.target.to_ascii()
        ),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|c| quoted(c))
            .collect::<Vec<_>>()
            .join(" "),
        RData::SOA(s) => format!(
            "{} {} {} {} {} {} {}",
            s.mname.to_ascii(),
            s.rname.to_ascii(),
            s.serial,
            s.refresh,
            s.retry,
            s.expire,
            s.minimum
        ),
        RData::Unknown { rdata, .. } => {
            // CAA, kept as its wire form: flags, tag length, tag, value.
            let b = rdata.anything.as_slice();
            let (&flags, rest) = b.split_first()?;
            let (&tag_len, rest) = rest.split_first()?;
            let tag = rest.get(..usize::from(tag_len))?;
            let value = rest.get(usize::from(tag_len)..)?;
            format!("{flags} {} {}", String::from_utf8_lossy(tag), quoted(value))
        }
        _ => return None,
    })
}

/// One record as a zone-file line.
pub fn line(r: &Record) -> Option<String> {
    Some(format!(
        "{}\t{}\tIN\t{}\t{}",
        r.name.to_ascii(),
        r.ttl,
        r.record_type(),
        rdata_text(&r.data)?
    ))
}

/// The zone file of `domain`, or `None` when it is not served.
pub fn zone_file(snapshot: &Snapshot, domain: &str) -> Option<String> {
    let records = snapshot.zone_records(domain)?;
    let origin = records.first().map(|r| r.name.to_ascii())?;
    let mut out = format!("; zone {origin} exported by voiked\n$ORIGIN {origin}\n");
    for r in &records {
        if let Some(l) = line(r) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    Some(out)
}
