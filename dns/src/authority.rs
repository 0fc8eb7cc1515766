//! Compiled zones and the authoritative lookup (RFC 1034 §4.3.2), without I/O.
//!
//! A [`Snapshot`] is built from plain [`ZoneData`] (what the replica holds) whenever the replica
//! changes, and is read-only afterwards: the servers swap in a new snapshot atomically, so a
//! record change is answered as soon as it is merged, with no reload. Lookups handle CNAME chains
//! inside the served zones, wildcards (`*.name`), empty non-terminals (NODATA, not NXDOMAIN),
//! delegations below the apex (referrals), minimal ANY (RFC 8482) and negative answers carrying
//! the zone's SOA with the negative TTL of RFC 2308.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, NULL, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// SOA timers of every served zone: refresh, retry, expire, minimum (negative TTL).
pub const SOA_TIMERS: (i32, i32, i32, u32) = (3600, 600, 86400, 60);
/// How many CNAMEs a lookup follows inside the served zones.
pub const MAX_CNAME_HOPS: usize = 8;

/// A zone as the replica holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneData {
    /// Lower-case, fully qualified (`demo.mesh.`).
    pub domain: String,
    /// SOA serial.
    pub serial: u32,
    pub records: Vec<RecordData>,
}

/// One record as the replica holds it (values in the API's text form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordData {
    pub name: String,
    pub rtype: String,
    pub value: String,
    pub ttl: u32,
}

/// Why a record could not be compiled (the replica validated it, so this means a newer writer
/// used a type or form this node does not know; the record is skipped, not fatal).
#[derive(Debug, thiserror::Error)]
#[error("record {name} {rtype} {value:?}: {reason}")]
pub struct CompileError {
    pub name: String,
    pub rtype: String,
    pub value: String,
    pub reason: String,
}

/// A record the replica holds but the snapshot does not serve, because serving it beside the
/// zone's other data would break a rule every name server checks (RFC 1034 §3.6.2, RFC 2181
/// §10.1, RFC 4592 §4.2). Each node writes only what its API accepts, but two nodes writing
/// while apart can merge into such a zone; every node then withholds the same records, so
/// they all answer alike and the export loads into `named-checkzone`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withheld {
    pub name: String,
    pub rtype: String,
    /// The record data in zone-file form.
    pub value: String,
    pub reason: &'static str,
}

/// Why a record is withheld (see [`Withheld`]).
pub mod withheld {
    /// A CNAME at the zone apex, which always holds the SOA and NS.
    pub const CNAME_AT_APEX: &str = "a CNAME cannot be at the zone apex";
    /// A CNAME at a name that has other data: the other data is served.
    pub const CNAME_BESIDE_DATA: &str = "a CNAME at a name that has other data";
    /// A second CNAME at one name: the one whose target sorts first is served.
    pub const SECOND_CNAME: &str = "a second CNAME at one name (the lowest target is served)";
    /// An NS record at a wildcard name.
    pub const WILDCARD_NS: &str = "an NS record cannot be at a wildcard name";
    /// An apex NS naming a host inside the zone that has no A or AAAA record.
    pub const NS_WITHOUT_ADDRESS: &str =
        "an apex NS record naming a host of the zone that has no A or AAAA record";
}

/// The result of an authoritative lookup.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// What a snapshot says about a name.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Not inside any served zone: forward it (or refuse).
    NotAuthoritative,
    /// Answered from the zones.
    Answer(Answer),
    /// A registered SNRL service name: answered with ranked, signed addresses; `soa` is the
    /// enclosing zone's SOA for a NODATA answer.
    Service { soa: Option<Record> },
}

#[derive(Debug, Default)]
struct Node {
    /// Record sets by type; empty for an empty non-terminal.
    sets: BTreeMap<u16, Vec<Record>>,
}

#[derive(Debug)]
struct Zone {
    origin: Name,
    soa: Record,
    nodes: HashMap<Name, Node>,
}

/// All served zones, compiled for lookups.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    zones: HashMap<Name, Zone>,
    services: HashSet<Name>,
    skipped: Vec<CompileError>,
    withheld: Vec<Withheld>,
}

/// The number of labels of `n`, counting a leading `*` (unlike `Name::num_labels`).
fn labels(n: &Name) -> usize {
    n.iter().count()
}

/// Parses a lower-cased absolute name. Labels are taken as they are (the replica checked them):
/// DNS allows labels that are not host names (`-x`, `_sip`), which hickory's text parser
/// refuses or puts through IDNA.
pub fn name(s: &str) -> Result<Name, String> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    let mut n = if trimmed.is_empty() {
        Name::root()
    } else if trimmed.contains('\\') {
        Name::from_str(s).map_err(|e| e.to_string())?
    } else {
        if trimmed.split('.').any(str::is_empty) {
            return Err(format!("{s:?} has an empty label"));
        }
        Name::from_labels(trimmed.split('.').map(str::as_bytes)).map_err(|e| e.to_string())?
    };
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

/// Splits text into TXT character-strings of at most 255 bytes (on character boundaries).
pub fn txt_chunks(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in value.chars() {
        if cur.len() + ch.len_utf8() > 255 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// The rdata of a record in the API's text form.
pub fn rdata(rtype: &str, value: &str) -> Result<RData, String> {
    let num = |s: &str| s.parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    Ok(match rtype {
        "A" => RData::A(A::from(
            value.parse::<Ipv4Addr>().map_err(|e| e.to_string())?,
        )),
        "AAAA" => RData::AAAA(AAAA::from(
            value.parse::<Ipv6Addr>().map_err(|e| e.to_string())?,
        )),
        "CNAME" => RData::CNAME(CNAME(name(value)?)),
        "NS" => RData::NS(NS(name(value)?)),
        "PTR" => RData::PTR(PTR(name(value)?)),
        "MX" => {
            let (pref, host) = value.split_once(' ').ok_or("expected 'PREFERENCE HOST'")?;
            RData::MX(MX::new(num(pref)?, name(host)?))
        }
        "SRV" => {
            let p: Vec<&str> = value.split_whitespace().collect();
            let [prio, weight, port, target] = p[..] else {
                return Err("expected 'PRIORITY WEIGHT PORT TARGET'".into());
            };
            RData::SRV(SRV::new(
                num(prio)?,
                num(weight)?,
                num(port)?,
                name(target)?,
            ))
        }
        "TXT" => RData::TXT(TXT::new(txt_chunks(value))),
        "CAA" => {
            let (flags, tag, v) = caa_parts(value)?;
            let mut bytes = vec![flags, tag.len() as u8];
            bytes.extend_from_slice(tag.as_bytes());
            bytes.extend_from_slice(v.as_bytes());
            RData::Unknown {
                code: RecordType::CAA,
                rdata: NULL::with(bytes),
            }
        }
        other => return Err(format!("type {other} is not served")),
    })
}

/// `FLAGS TAG VALUE` of a CAA record, the value without surrounding quotes.
pub fn caa_parts(value: &str) -> Result<(u8, &str, &str), String> {
    let mut it = value.splitn(3, ' ');
    let (Some(flags), Some(tag), Some(v)) = (it.next(), it.next(), it.next()) else {
        return Err("expected 'FLAGS TAG \"VALUE\"'".into());
    };
    let flags = flags.parse::<u8>().map_err(|e| e.to_string())?;
    if tag.is_empty() || tag.len() > 15 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("bad CAA tag {tag:?}"));
    }
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    Ok((flags, tag, v))
}

fn soa_record(origin: &Name, mname: &Name, serial: u32, ttl: u32) -> Record {
    let (refresh, retry, expire, minimum) = SOA_TIMERS;
    let rname = origin
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| origin.clone());
    Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(
            mname.clone(),
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        )),
    )
}

impl Zone {
    fn compile(
        data: &ZoneData,
        nameserver: &Name,
        skipped: &mut Vec<CompileError>,
        withheld: &mut Vec<Withheld>,
    ) -> Result<Self, String> {
        let origin = name(&data.domain)?;
        let mut nodes: HashMap<Name, Node> = HashMap::new();
        nodes.insert(origin.clone(), Node::default());
        for r in &data.records {
            let compiled = name(&r.name).and_then(|n| {
                if !origin.zone_of(&n) {
                    return Err(format!("outside {origin}"));
                }
                Ok((n, rdata(&r.rtype, &r.value)?))
            });
            let (owner, rd) = match compiled {
                Ok(x) => x,
                Err(reason) => {
                    skipped.push(CompileError {
                        name: r.name.clone(),
                        rtype: r.rtype.clone(),
                        value: r.value.clone(),
                        reason,
                    });
                    continue;
                }
            };
            // Ancestors up to the apex exist as (possibly empty) non-terminals.
            for k in labels(&origin)..labels(&owner) {
                nodes.entry(owner.trim_to(k)).or_default();
            }
            let rtype = u16::from(rd.record_type());
            let set = nodes
                .entry(owner.clone())
                .or_default()
                .sets
                .entry(rtype)
                .or_default();
            if !set.iter().any(|x| x.data == rd) {
                set.push(Record::from_rdata(owner, r.ttl, rd));
            }
        }
        // Sets in canonical order, so that what is served (the SOA's MNAME is the first apex
        // NS) and exported does not depend on the order the replica lists records in.
        for node in nodes.values_mut() {
            for set in node.sets.values_mut() {
                set.sort_by(|a, b| a.data.cmp(&b.data));
            }
        }
        withhold_broken(&origin, &mut nodes, withheld);
        let apex = nodes.entry(origin.clone()).or_default();
        let ns_code = u16::from(RecordType::NS);
        apex.sets.entry(ns_code).or_insert_with(|| {
            vec![Record::from_rdata(
                origin.clone(),
                3600,
                RData::NS(NS(nameserver.clone())),
            )]
        });
        let mname = match apex
            .sets
            .get(&ns_code)
            .and_then(|s| s.first())
            .map(|r| &r.data)
        {
            Some(RData::NS(ns)) => ns.0.clone(),
            _ => nameserver.clone(),
        };
        let soa = soa_record(&origin, &mname, data.serial, SOA_TIMERS.3);
        apex.sets
            .insert(u16::from(RecordType::SOA), vec![soa.clone()]);
        Ok(Zone { origin, soa, nodes })
    }

    /// The SOA for a negative answer: TTL is min(SOA TTL, MINIMUM) (RFC 2308 §5).
    fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        soa.ttl = soa.ttl.min(SOA_TIMERS.3);
        soa
    }

    fn wildcard(&self, qname: &Name) -> Option<&Node> {
        let origin_labels = labels(&self.origin);
        let mut k = labels(qname);
        while k > origin_labels {
            k -= 1;
            let ce = qname.trim_to(k);
            if self.nodes.contains_key(&ce) {
                return ce.prepend_label("*").ok().and_then(|w| self.nodes.get(&w));
            }
        }
        None
    }

    /// The NS set of a delegation on the way from the apex to `qname`, if any.
    fn delegation(&self, qname: &Name) -> Option<&Vec<Record>> {
        let ns = u16::from(RecordType::NS);
        (labels(&self.origin) + 1..=labels(qname))
            .filter_map(|k| self.nodes.get(&qname.trim_to(k)))
            .find_map(|n| n.sets.get(&ns))
    }
}

/// Takes out of `nodes` what would break the zone's rules (see [`Withheld`]), the same way on
/// every node whatever order the records came in: first the CNAME rules, then the NS rules
/// (which look at the addresses left).
fn withhold_broken(origin: &Name, nodes: &mut HashMap<Name, Node>, out: &mut Vec<Withheld>) {
    let cname = u16::from(RecordType::CNAME);
    let ns = u16::from(RecordType::NS);
    let mut take = |owner: &Name, set: Vec<Record>, reason: &'static str| {
        for r in set {
            out.push(Withheld {
                name: owner.to_ascii(),
                rtype: r.record_type().to_string(),
                value: crate::export::rdata_text(&r.data).unwrap_or_default(),
                reason,
            });
        }
    };
    let mut owners: Vec<Name> = nodes.keys().cloned().collect();
    owners.sort();
    for owner in &owners {
        let Some(node) = nodes.get_mut(owner) else {
            continue;
        };
        if let Some(mut set) = node.sets.remove(&cname) {
            if owner == origin {
                take(owner, set, withheld::CNAME_AT_APEX);
            } else if !node.sets.is_empty() {
                take(owner, set, withheld::CNAME_BESIDE_DATA);
            } else {
                // Sets are in canonical order: the first is the lowest target.
                let rest = set.split_off(1);
                take(owner, rest, withheld::SECOND_CNAME);
                node.sets.insert(cname, set);
            }
        }
        if owner.is_wildcard()
            && let Some(set) = node.sets.remove(&ns)
        {
            take(owner, set, withheld::WILDCARD_NS);
        }
    }
    // An apex NS naming a host of this zone (not at or below a delegation) needs its address
    // here, or no resolver can reach that server.
    let cut = |n: &Name| {
        (labels(origin) + 1..=labels(n)).any(|k| {
            nodes
                .get(&n.trim_to(k))
                .is_some_and(|x| x.sets.contains_key(&ns))
        })
    };
    let has_address = |n: &Name| {
        let node = nodes.get(n).or_else(|| {
            // A name that does not exist is matched by the closest wildcard (RFC 4592).
            let mut k = labels(n);
            while k > labels(origin) {
                k -= 1;
                let ce = n.trim_to(k);
                if nodes.contains_key(&ce) {
                    return ce.prepend_label("*").ok().and_then(|w| nodes.get(&w));
                }
            }
            None
        });
        node.is_some_and(|x| {
            x.sets.contains_key(&u16::from(RecordType::A))
                || x.sets.contains_key(&u16::from(RecordType::AAAA))
        })
    };
    let lame: Vec<Record> = nodes
        .get(origin)
        .and_then(|apex| apex.sets.get(&ns))
        .map(|set| {
            set.iter()
                .filter(|r| match &r.data {
                    RData::NS(target) => {
                        let t = target.0.to_lowercase();
                        origin.zone_of(&t) && !cut(&t) && !has_address(&t)
                    }
                    _ => false,
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !lame.is_empty()
        && let Some(set) = nodes
            .get_mut(origin)
            .and_then(|apex| apex.sets.get_mut(&ns))
    {
        set.retain(|r| !lame.contains(r));
        if set.is_empty() {
            // The node's own name server is served in their place (as for a zone with no NS).
            nodes.get_mut(origin).map(|apex| apex.sets.remove(&ns));
        }
        take(origin, lame, withheld::NS_WITHOUT_ADDRESS);
    }
}

fn renamed<'a>(set: &'a [Record], owner: Option<&Name>) -> impl Iterator<Item = Record> + 'a {
    let owner = owner.cloned();
    set.iter().map(move |r| match &owner {
        Some(o) => {
            let mut r = r.clone();
            r.name = o.clone();
            r
        }
        None => r.clone(),
    })
}

impl Snapshot {
    /// Compiles `zones`; `nameserver` names this node in synthesized NS and SOA records when a
    /// zone has no NS of its own; `services` are the registered SNRL service names.
    pub fn build(
        generation: u64,
        zones: &[ZoneData],
        nameserver: &str,
        services: &[String],
    ) -> Self {
        let ns = name(nameserver).unwrap_or_else(|_| Name::root());
        let mut skipped = Vec::new();
        let mut withheld = Vec::new();
        let mut compiled = HashMap::new();
        for z in zones {
            match Zone::compile(z, &ns, &mut skipped, &mut withheld) {
                Ok(zone) => {
                    compiled.insert(zone.origin.clone(), zone);
                }
                Err(reason) => skipped.push(CompileError {
                    name: z.domain.clone(),
                    rtype: "zone".into(),
                    value: String::new(),
                    reason,
                }),
            }
        }
        let services = services.iter().filter_map(|s| name(s).ok()).collect();
        Snapshot {
            generation,
            zones: compiled,
            services,
            skipped,
            withheld,
        }
    }

    /// An empty snapshot (nothing served).
    pub fn empty() -> Self {
        Self::build(0, &[], ".", &[])
    }

    /// Increases with every rebuild; caches keyed on a snapshot compare it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that could not be compiled.
    pub fn skipped(&self) -> &[CompileError] {
        &self.skipped
    }

    /// Records held by the replica but not served (see [`Withheld`]).
    pub fn withheld(&self) -> &[Withheld] {
        &self.withheld
    }

    /// Number of served zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    fn zone_for(&self, qname: &Name) -> Option<&Zone> {
        (0..=labels(qname))
            .rev()
            .find_map(|k| self.zones.get(&qname.trim_to(k)))
    }

    /// Every record of the zone `domain` in canonical order (SOA first), for export.
    pub fn zone_records(&self, domain: &str) -> Option<Vec<Record>> {
        let zone = self.zones.get(&name(domain).ok()?)?;
        let mut names: Vec<&Name> = zone.nodes.keys().collect();
        names.sort();
        let mut out = vec![zone.soa.clone()];
        for n in names {
            for (code, set) in &zone.nodes[n].sets {
                if *code != u16::from(RecordType::SOA) {
                    out.extend(set.iter().cloned());
                }
            }
        }
        Some(out)
    }

    /// Answers `qname`/`qtype` (class IN) from the zones.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let qname = qname.to_lowercase();
        let Some(zone) = self.zone_for(&qname) else {
            return Lookup::NotAuthoritative;
        };
        if self.services.contains(&qname) {
            if matches!(
                qtype,
                RecordType::A
                    | RecordType::AAAA
                    | RecordType::TXT
                    | RecordType::SRV
                    | RecordType::ANY
            ) {
                return Lookup::Service {
                    soa: Some(zone.negative_soa()),
                };
            }
            if !zone.nodes.contains_key(&qname) {
                // The name exists (as a service): other types are NODATA, not NXDOMAIN.
                return Lookup::Answer(Answer {
                    authoritative: true,
                    authorities: vec![zone.negative_soa()],
                    ..Answer::default()
                });
            }
        }
        let mut ans = Answer {
            authoritative: true,
            ..Answer::default()
        };
        let mut zone = zone;
        let mut qname = qname;
        for _ in 0..=MAX_CNAME_HOPS {
            match self.step(zone, &qname, qtype, &mut ans) {
                Some(next) => match self.zone_for(&next) {
                    Some(z) => {
                        zone = z;
                        qname = next;
                    }
                    None => break, // the target is elsewhere: the client chases it
                },
                None => break,
            }
        }
        Lookup::Answer(ans)
    }

    /// One step of the lookup; returns the CNAME target to follow, if any.
    fn step(&self, zone: &Zone, qname: &Name, qtype: RecordType, ans: &mut Answer) -> Option<Name> {
        if let Some(ns) = zone.delegation(qname) {
            if ans.answers.is_empty() {
                ans.authoritative = false;
            }
            ans.authorities = ns.clone();
            return None;
        }
        let (node, owner) = match zone.nodes.get(qname) {
            Some(n) => (n, None),
            None => match zone.wildcard(qname) {
                Some(n) => (n, Some(qname)),
                None => {
                    ans.rcode = ResponseCode::NXDomain;
                    ans.authorities = vec![zone.negative_soa()];
                    return None;
                }
            },
        };
        if qtype == RecordType::ANY {
            // RFC 8482: one RRset is enough.
            match node.sets.values().next() {
                Some(set) => ans.answers.extend(renamed(set, owner)),
                None => ans.authorities = vec![zone.negative_soa()],
            }
            return None;
        }
        if let Some(set) = node.sets.get(&u16::from(qtype)) {
            ans.answers.extend(renamed(set, owner));
            return None;
        }
        if qtype != RecordType::CNAME
            && let Some(set) = node.sets.get(&u16::from(RecordType::CNAME))
        {
            ans.answers.extend(renamed(set, owner));
            if let Some(RData::CNAME(target)) = set.first().map(|r| &r.data) {
                let target = target.0.to_lowercase();
                if ans.answers.iter().filter(|r| r.name == target).count() == 0 {
                    return Some(target);
                }
            }
            return None;
        }
        ans.authorities = vec![zone.negative_soa()];
        None
    }
}

#[cfg(test)]
mod tests;
