//! Compiled zones and the authoritative lookup (RFC 1034 §4.3.2), without I/O.
//!
//! A [`Snapshot`] is built from plain [`ZoneData`] (what the replica holds) whenever the replica
//! changes, and is read-only afterwards: the servers swap in a new snapshot atomically, so a
//! record change is answered as soon as it is merged, with no reload. Lookups handle CNAME chains
//! inside the served zones, wildcards (`*.name`), empty non-terminals (NODATA, not NXDOMAIN),
//! delegations below the apex (referrals), minimal ANY (RFC 8482) and negative answers carrying
//! the zone's SOA with the negative TTL of RFC 2308.

use std::collections::{HashMap, HashSet};
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
    /// The replica's id for it: an edit names the record it changes by this id.
    pub id: String,
    pub name: String,
    pub rtype: String,
    pub value: String,
    pub ttl: u32,
}

/// Why a record could not be compiled (the replica validated it, so this means a newer writer
/// used a type or form this node does not know; the record is skipped, not fatal).
#[derive(Clone, Debug, thiserror::Error)]
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

/// Record sets by type code, in type order: a name holds one or two sets, so a sorted vector
/// (one allocation) rather than a tree (a node of eleven slots per name).
#[derive(Clone, Debug, Default)]
struct Sets(Vec<(u16, Vec<Record>)>);

impl Sets {
    fn get(&self, code: &u16) -> Option<&Vec<Record>> {
        self.0.iter().find(|(c, _)| c == code).map(|(_, s)| s)
    }

    fn contains_key(&self, code: &u16) -> bool {
        self.get(code).is_some()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Vec<Record>> {
        self.0.iter().map(|(_, s)| s)
    }

    fn iter(&self) -> impl Iterator<Item = (&u16, &Vec<Record>)> {
        self.0.iter().map(|(c, s)| (c, s))
    }

    fn remove(&mut self, code: &u16) -> Option<Vec<Record>> {
        let i = self.0.iter().position(|(c, _)| c == code)?;
        Some(self.0.remove(i).1)
    }

    fn insert(&mut self, code: u16, set: Vec<Record>) {
        match self.0.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => self.0[i].1 = set,
            Err(i) => self.0.insert(i, (code, set)),
        }
    }

    fn entry(&mut self, code: u16) -> &mut Vec<Record> {
        let i = match self.0.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (code, Vec::new()));
                i
            }
        };
        &mut self.0[i].1
    }
}

impl<'a> IntoIterator for &'a Sets {
    type Item = (&'a u16, &'a Vec<Record>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (u16, Vec<Record>)>,
        fn(&'a (u16, Vec<Record>)) -> (&'a u16, &'a Vec<Record>),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(c, s)| (c, s))
    }
}

#[derive(Clone, Debug, Default)]
struct Node {
    /// Served record sets by type, each in canonical order; empty for an empty non-terminal.
    sets: Sets,
    /// Records held at this name but not served: withheld (with why, see [`Withheld`]), or
    /// (`None`) a second copy of a record served already.
    aside: Vec<(Record, Option<&'static str>)>,
    /// Names below this one that hold records: an empty non-terminal exists while this is
    /// more than zero.
    below: u32,
}

impl Node {
    fn holds(&self) -> bool {
        !self.sets.is_empty() || !self.aside.is_empty()
    }
}

/// A compiled zone. Its maps are persistent (shared between snapshots), so that a snapshot
/// with a few records changed costs what the change does, not what the zone holds.
#[derive(Clone, Debug)]
struct Zone {
    origin: Name,
    soa: Record,
    serial: u32,
    /// This node's name, served as the zone's nameserver while the zone has no (servable) NS.
    nameserver: Name,
    /// Whether the apex NS set is `nameserver`, synthesized.
    ns_synth: bool,
    nodes: imbl::OrdMap<Name, Node>,
    /// Every record by the replica's record id: its owner name and [`fingerprint`] (`None`:
    /// it could not be compiled, see `skipped`).
    ids: imbl::OrdMap<Box<str>, Option<(Name, u64)>>,
    skipped: imbl::OrdMap<String, CompileError>,
    /// Names holding withheld records.
    withheld_at: imbl::OrdSet<Name>,
}

/// All served zones, compiled for lookups.
#[derive(Clone, Debug)]
pub struct Snapshot {
    generation: u64,
    nameserver: Name,
    zones: HashMap<Name, Zone>,
    services: HashSet<Name>,
    /// Zones that could not be compiled at all.
    bad_zones: Vec<CompileError>,
}

/// A change to the served zones, for [`Snapshot::edit`].
#[derive(Clone, Debug)]
pub enum ZoneEdit {
    /// The zone as a whole (new, or changed in more than its records): compiled anew.
    Replace(ZoneData),
    /// Some records of a served zone changed, by record id: the record as it is now, or `None`
    /// when it is gone. A zone not served is left alone (replace it instead).
    Records {
        domain: String,
        serial: u32,
        records: Vec<(String, Option<RecordData>)>,
    },
    /// The zone is no longer served.
    Remove(String),
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

/// Tells one record at a name from the others: its type, data and TTL.
fn fingerprint(r: &Record) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (u16::from(r.record_type()), &r.data, r.ttl).hash(&mut h);
    h.finish()
}

/// Compiles one record of the zone at `origin`.
fn compile_record(origin: &Name, r: &RecordData) -> Result<Record, CompileError> {
    name(&r.name)
        .and_then(|n| {
            if !origin.zone_of(&n) {
                return Err(format!("outside {origin}"));
            }
            Ok(Record::from_rdata(n, r.ttl, rdata(&r.rtype, &r.value)?))
        })
        .map_err(|reason| CompileError {
            name: r.name.clone(),
            rtype: r.rtype.clone(),
            value: r.value.clone(),
            reason,
        })
}

/// Splits the records held at `owner` into served sets and records set aside, by the rules
/// that concern one name alone: one copy of each record (the lowest TTL), the CNAME rules
/// (RFC 1034 §3.6.2, RFC 2181 §10.1) and no NS at a wildcard (RFC 4592 §4.2). The result
/// does not depend on the order the records came in.
#[allow(clippy::type_complexity)]
fn settle(
    origin: &Name,
    owner: &Name,
    mut raw: Vec<Record>,
) -> (Sets, Vec<(Record, Option<&'static str>)>) {
    raw.sort_by(|a, b| {
        (u16::from(a.record_type()), &a.data, a.ttl).cmp(&(
            u16::from(b.record_type()),
            &b.data,
            b.ttl,
        ))
    });
    let mut sets = Sets::default();
    let mut aside = Vec::new();
    for r in raw {
        let set = sets.entry(u16::from(r.record_type()));
        if set.last().is_some_and(|x| x.data == r.data) {
            aside.push((r, None));
        } else {
            set.push(r);
        }
    }
    let cname = u16::from(RecordType::CNAME);
    if let Some(mut set) = sets.remove(&cname) {
        if owner == origin {
            aside.extend(set.into_iter().map(|r| (r, Some(withheld::CNAME_AT_APEX))));
        } else if !sets.is_empty() {
            aside.extend(
                set.into_iter()
                    .map(|r| (r, Some(withheld::CNAME_BESIDE_DATA))),
            );
        } else {
            // Sets are in canonical order: the first is the lowest target.
            let rest = set.split_off(1);
            aside.extend(rest.into_iter().map(|r| (r, Some(withheld::SECOND_CNAME))));
            sets.insert(cname, set);
        }
    }
    let ns = u16::from(RecordType::NS);
    if owner.is_wildcard()
        && let Some(set) = sets.remove(&ns)
    {
        aside.extend(set.into_iter().map(|r| (r, Some(withheld::WILDCARD_NS))));
    }
    (sets, aside)
}

impl Zone {
    fn new(data: &ZoneData, nameserver: &Name) -> Result<Self, String> {
        let origin = name(&data.domain)?;
        let mut nodes = imbl::OrdMap::new();
        nodes.insert(origin.clone(), Node::default());
        let mut zone = Zone {
            soa: soa_record(&origin, nameserver, data.serial, SOA_TIMERS.3),
            origin,
            serial: data.serial,
            nameserver: nameserver.clone(),
            ns_synth: false,
            nodes,
            ids: imbl::OrdMap::new(),
            skipped: imbl::OrdMap::new(),
            withheld_at: imbl::OrdSet::new(),
        };
        let records = data
            .records
            .iter()
            .map(|r| (r.id.clone(), Some(r.clone())))
            .collect();
        zone.apply(data.serial, records);
        Ok(zone)
    }

    /// Every record held at `owner`, served or not (the apex's SOA and synthesized NS are not
    /// records of the replica).
    fn held(&self, owner: &Name) -> Vec<Record> {
        let Some(node) = self.nodes.get(owner) else {
            return Vec::new();
        };
        let apex = *owner == self.origin;
        let (soa, ns) = (u16::from(RecordType::SOA), u16::from(RecordType::NS));
        node.sets
            .iter()
            .filter(|(t, _)| !(apex && (**t == soa || (**t == ns && self.ns_synth))))
            .flat_map(|(_, set)| set.iter().cloned())
            .chain(node.aside.iter().map(|(r, _)| r.clone()))
            .collect()
    }

    /// Applies record changes by id, then the rules that concern the whole zone.
    fn apply(&mut self, serial: u32, changes: Vec<(String, Option<RecordData>)>) {
        let mut held: HashMap<Name, Vec<Record>> = HashMap::new();
        for (id, data) in changes {
            self.skipped.remove(&id);
            let id: Box<str> = id.into();
            if let Some(Some((owner, print))) = self.ids.remove(&id) {
                let set = held.entry(owner).or_insert_with_key(|o| self.held(o));
                if let Some(i) = set.iter().position(|r| fingerprint(r) == print) {
                    set.swap_remove(i);
                }
            }
            let Some(data) = data else {
                continue;
            };
            match compile_record(&self.origin, &data) {
                Ok(rec) => {
                    held.entry(rec.name.clone())
                        .or_insert_with_key(|o| self.held(o))
                        .push(rec.clone());
                    self.ids
                        .insert(id, Some((rec.name.clone(), fingerprint(&rec))));
                }
                Err(e) => {
                    self.skipped.insert(id.to_string(), e);
                    self.ids.insert(id, None);
                }
            }
        }
        for (owner, records) in held {
            self.settle_owner(owner, records);
        }
        self.serial = serial;
        self.settle_apex();
    }

    /// Serves `records` at `owner` (see [`settle`]), keeping the empty non-terminals above it.
    fn settle_owner(&mut self, owner: Name, records: Vec<Record>) {
        let (sets, aside) = settle(&self.origin, &owner, records);
        if aside.iter().any(|(_, why)| why.is_some()) {
            self.withheld_at.insert(owner.clone());
        } else {
            self.withheld_at.remove(&owner);
        }
        if owner == self.origin {
            // The sets are the replica's records alone now: `settle_apex` adds the SOA and,
            // if still needed, the synthesized NS.
            let apex = self.nodes.entry(owner).or_default();
            apex.sets = sets;
            apex.aside = aside;
            self.ns_synth = false;
            return;
        }
        let node = self.nodes.entry(owner.clone()).or_default();
        let had = node.holds();
        node.sets = sets;
        node.aside = aside;
        let has = node.holds();
        let keep = has || node.below > 0;
        if !keep {
            self.nodes.remove(&owner);
        }
        if had == has {
            return;
        }
        for k in labels(&self.origin)..labels(&owner) {
            let up = owner.trim_to(k);
            let n = self.nodes.entry(up.clone()).or_default();
            if has {
                n.below += 1;
            } else {
                n.below = n.below.saturating_sub(1);
                if n.below == 0 && !n.holds() && up != self.origin {
                    self.nodes.remove(&up);
                }
            }
        }
    }

    /// The rules that look across names: an apex NS naming a host of this zone (not at or
    /// below a delegation) needs that host's address here, or no resolver can reach that
    /// server. Then the synthesized NS (when no NS is left) and the SOA, whose MNAME is the
    /// first apex NS.
    fn settle_apex(&mut self) {
        let ns = u16::from(RecordType::NS);
        let origin = self.origin.clone();
        let Some(apex) = self.nodes.get_mut(&origin) else {
            return;
        };
        let mut set: Vec<Record> = if self.ns_synth {
            Vec::new()
        } else {
            apex.sets.remove(&ns).unwrap_or_default()
        };
        apex.sets.remove(&ns);
        apex.aside.retain(|(r, why)| {
            if *why == Some(withheld::NS_WITHOUT_ADDRESS) {
                set.push(r.clone());
                false
            } else {
                true
            }
        });
        set.sort_by(|a, b| a.data.cmp(&b.data));
        let nodes = &self.nodes;
        let (lame, served): (Vec<Record>, Vec<Record>) =
            set.into_iter().partition(|r| match &r.data {
                RData::NS(target) => {
                    let t = target.0.to_lowercase();
                    origin.zone_of(&t)
                        && !cut(&origin, nodes, &t)
                        && !has_address(&origin, nodes, &t)
                }
                _ => false,
            });
        let apex = self.nodes.entry(origin.clone()).or_default();
        if !lame.is_empty() {
            apex.aside.extend(
                lame.into_iter()
                    .map(|r| (r, Some(withheld::NS_WITHOUT_ADDRESS))),
            );
        }
        self.ns_synth = served.is_empty();
        let served = if self.ns_synth {
            // The node's own name server is served in their place (as for a zone with no NS).
            vec![Record::from_rdata(
                origin.clone(),
                3600,
                RData::NS(NS(self.nameserver.clone())),
            )]
        } else {
            served
        };
        let mname = match served.first().map(|r| &r.data) {
            Some(RData::NS(n)) => n.0.clone(),
            _ => self.nameserver.clone(),
        };
        apex.sets.insert(ns, served);
        let withheld_here = apex.aside.iter().any(|(_, why)| why.is_some());
        self.soa = soa_record(&origin, &mname, self.serial, SOA_TIMERS.3);
        apex.sets
            .insert(u16::from(RecordType::SOA), vec![self.soa.clone()]);
        if withheld_here {
            self.withheld_at.insert(origin);
        } else {
            self.withheld_at.remove(&origin);
        }
    }

    fn withheld(&self, out: &mut Vec<Withheld>) {
        for owner in &self.withheld_at {
            let Some(node) = self.nodes.get(owner) else {
                continue;
            };
            for (r, why) in &node.aside {
                if let Some(reason) = why {
                    out.push(Withheld {
                        name: owner.to_ascii(),
                        rtype: r.record_type().to_string(),
                        value: crate::export::rdata_text(&r.data).unwrap_or_default(),
                        reason,
                    });
                }
            }
        }
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

/// Whether `n` is at or below a delegation of the zone at `origin`.
fn cut(origin: &Name, nodes: &imbl::OrdMap<Name, Node>, n: &Name) -> bool {
    let ns = u16::from(RecordType::NS);
    (labels(origin) + 1..=labels(n)).any(|k| {
        nodes
            .get(&n.trim_to(k))
            .is_some_and(|x| x.sets.contains_key(&ns))
    })
}

/// Whether `n` has an address in the zone at `origin` (a name that does not exist is matched
/// by the closest wildcard, RFC 4592).
fn has_address(origin: &Name, nodes: &imbl::OrdMap<Name, Node>, n: &Name) -> bool {
    let node = nodes.get(n).or_else(|| {
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
        let empty = Snapshot {
            generation,
            nameserver: name(nameserver).unwrap_or_else(|_| Name::root()),
            zones: HashMap::new(),
            services: HashSet::new(),
            bad_zones: Vec::new(),
        };
        empty.edit(
            generation,
            zones.iter().cloned().map(ZoneEdit::Replace).collect(),
            Some(services),
        )
    }

    /// This snapshot with `edits` applied (and the SNRL service names replaced, when given).
    /// Zones not edited are shared with this snapshot, and an edit of some records costs what
    /// they do, not what the zone holds.
    pub fn edit(&self, generation: u64, edits: Vec<ZoneEdit>, services: Option<&[String]>) -> Self {
        let mut next = self.clone();
        next.generation = generation;
        if let Some(services) = services {
            next.services = services.iter().filter_map(|s| name(s).ok()).collect();
        }
        for e in edits {
            match e {
                ZoneEdit::Replace(z) => {
                    next.bad_zones.retain(|b| b.name != z.domain);
                    if let Ok(origin) = name(&z.domain) {
                        next.zones.remove(&origin);
                    }
                    match Zone::new(&z, &next.nameserver) {
                        Ok(zone) => {
                            next.zones.insert(zone.origin.clone(), zone);
                        }
                        Err(reason) => next.bad_zones.push(CompileError {
                            name: z.domain.clone(),
                            rtype: "zone".into(),
                            value: String::new(),
                            reason,
                        }),
                    }
                }
                ZoneEdit::Records {
                    domain,
                    serial,
                    records,
                } => {
                    if let Some(zone) = name(&domain).ok().and_then(|o| next.zones.get_mut(&o)) {
                        zone.apply(serial, records);
                    }
                }
                ZoneEdit::Remove(domain) => {
                    next.bad_zones.retain(|b| b.name != domain);
                    if let Ok(origin) = name(&domain) {
                        next.zones.remove(&origin);
                    }
                }
            }
        }
        next
    }

    /// Whether the zone `domain` is served.
    pub fn has_zone(&self, domain: &str) -> bool {
        name(domain).is_ok_and(|o| self.zones.contains_key(&o))
    }

    /// An empty snapshot (nothing served).
    pub fn empty() -> Self {
        Self::build(0, &[], ".", &[])
    }

    /// Increases with every rebuild; caches keyed on a snapshot compare it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records (and zones) that could not be compiled.
    pub fn skipped(&self) -> Vec<CompileError> {
        let mut out = self.bad_zones.clone();
        for z in self.zones.values() {
            out.extend(z.skipped.values().cloned());
        }
        out
    }

    /// Records held by the replica but not served (see [`Withheld`]), by zone and name.
    pub fn withheld(&self) -> Vec<Withheld> {
        let mut zones: Vec<&Zone> = self.zones.values().collect();
        zones.sort_by(|a, b| a.origin.cmp(&b.origin));
        let mut out = Vec::new();
        for z in zones {
            z.withheld(&mut out);
        }
        out
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
