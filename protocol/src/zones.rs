//! The `zones` document: DNS zones, their owners and records, with input validation.
//!
//! Layout (all maps): `root[zone_id] = {domain, created_by, owners: {node_id: true},
//! records: {record_id: {type, name, value, ttl, author, hlc}}}`. A record's id is derived from
//! `(zone, name, type, value)`, so records form a set keyed by name/type/value: two nodes adding
//! the same record concurrently add the same key. When concurrent writes leave several versions
//! of a record (or of a zone), readers take the one with the highest HLC (then the highest
//! Automerge op id): TTL and metadata are last-writer-wins by HLC.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::docs::DocError;
use crate::hlc::Hlc;
use crate::signing::hex;

/// Record types this version stores.
pub const RECORD_TYPES: [&str; 9] = ["A", "AAAA", "CNAME", "TXT", "SRV", "MX", "NS", "PTR", "CAA"];
/// Largest TTL (RFC 2181: 2^31 - 1).
pub const MAX_TTL: u64 = 2_147_483_647;
/// Longest record value accepted.
pub const MAX_VALUE_LEN: usize = 4000;

/// A zone as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Zone {
    pub id: String,
    pub domain: String,
    pub owners: Vec<String>,
    pub created_by: String,
    pub records: usize,
    /// Names inside the zone its owners delegated: domain → nodes that may create zones at or
    /// under it and register endpoints for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegations: BTreeMap<String, Vec<String>>,
}

/// A record as the API shows it (`type`, `name`, `value`, `ttl` as in DESIGN.md §10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub zone_id: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub value: String,
    pub ttl: u64,
    pub author: String,
    pub hlc: String,
}

/// A record as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordInput {
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub value: String,
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

fn default_ttl() -> u64 {
    300
}

/// Bad input, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a zone id: 1–63 of `a-z`, `0-9`, `-`, `_`.
pub fn check_zone_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 63 {
        return Err(invalid("id", "must be 1 to 63 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid("id", "may hold only a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

/// Normalises a domain name to lower case with a trailing dot, checking label rules.
pub fn normalize_name(field: &'static str, name: &str) -> Result<String, Invalid> {
    let mut n = name.trim().to_ascii_lowercase();
    if n.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if !n.ends_with('.') {
        n.push('.');
    }
    if n == "." {
        return Ok(n);
    }
    if n.len() > 254 {
        return Err(invalid(field, "is longer than 253 characters"));
    }
    for (i, label) in n.trim_end_matches('.').split('.').enumerate() {
        if label.is_empty() {
            return Err(invalid(field, "has an empty label"));
        }
        if label.len() > 63 {
            return Err(invalid(field, format!("label '{label}' is longer than 63")));
        }
        let wildcard = i == 0 && label == "*";
        if !wildcard
            && !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                field,
                format!("label '{label}' has invalid characters"),
            ));
        }
    }
    Ok(n)
}

/// Whether `name` is `domain` or inside it (both normalised).
pub fn is_within(name: &str, domain: &str) -> bool {
    domain == "." || name == domain || name.ends_with(&format!(".{domain}"))
}

/// The zone that holds `name`: the one with the longest domain containing it.
pub fn zone_for<'a>(zones: &'a [Zone], name: &str) -> Option<&'a Zone> {
    zones
        .iter()
        .filter(|z| is_within(name, &z.domain))
        .max_by_key(|z| z.domain.len())
}

/// Checks the rules about what may share a name before `new` (a checked record of zone
/// `domain`, with id `new_id`) is written: no CNAME at the apex, nothing else at a name that
/// has a CNAME (and one CNAME per name), no CNAME chain that loops back, and an apex NS naming
/// a host of the zone only once that host has an address. `at` returns the zone's records at
/// one name: the rules read the names they concern, never the whole zone.
pub fn check_cname_rules(
    domain: &str,
    at: &dyn Fn(&str) -> Vec<Record>,
    new: &RecordInput,
    new_id: &str,
) -> Result<(), Invalid> {
    let others: Vec<Record> = at(&new.name)
        .into_iter()
        .filter(|r| r.id != new_id)
        .collect();
    if new.rtype == "CNAME" {
        if new.name == domain {
            return Err(invalid(
                "record.name",
                "a CNAME cannot be at the zone apex (RFC 1034 §3.6.2)",
            ));
        }
        if let Some(o) = others.first() {
            return Err(invalid(
                "record.type",
                format!(
                    "{} already has a {} record; a CNAME must be the only record at its name",
                    new.name, o.rtype
                ),
            ));
        }
        // Follow the chain from the new target inside the zone.
        let cname_of = |name: &str| -> Option<String> {
            if name == new.name {
                return Some(new.value.clone());
            }
            at(name)
                .into_iter()
                .find(|r| r.rtype == "CNAME")
                .map(|r| r.value)
        };
        let mut hop = new.value.clone();
        for _ in 0..64 {
            if hop == new.name {
                return Err(invalid("record.value", "would make a CNAME loop"));
            }
            if !is_within(&hop, domain) {
                break;
            }
            match cname_of(&hop) {
                Some(next) => hop = next,
                None => break,
            }
        }
    } else if others.iter().any(|r| r.rtype == "CNAME") {
        return Err(invalid(
            "record.type",
            format!(
                "{} has a CNAME; a CNAME must be the only record at its name",
                new.name
            ),
        ));
    }
    if new.rtype == "NS" && new.name == domain && is_within(&new.value, domain) {
        // An apex NS naming a host of the zone needs that host's address in the zone (unless
        // the host is below a delegation, where the child zone answers for it).
        let target = new.value.as_str();
        let mut delegated = false;
        let mut n = target;
        while n != domain && is_within(n, domain) {
            if at(n).iter().any(|r| r.rtype == "NS" && r.id != new_id) {
                delegated = true;
                break;
            }
            n = match n.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => parent,
                _ => break,
            };
        }
        let is_address = |r: &Record| matches!(r.rtype.as_str(), "A" | "AAAA");
        let here = at(target);
        let addressed = here.iter().any(is_address)
            || here.is_empty()
                && target
                    .split_once('.')
                    .is_some_and(|(_, parent)| at(&format!("*.{parent}")).iter().any(is_address));
        if !delegated && !addressed {
            return Err(invalid(
                "record.value",
                format!(
                    "{target} is inside the zone and has no A or AAAA record; add its address first"
                ),
            ));
        }
    }
    Ok(())
}

/// The records of zone `zone_id` at `name` in `replica` (the zones document).
pub fn records_at(replica: &crate::docs::Replica, zone_id: &str, name: &str) -> Vec<Record> {
    let ranked = replica.ranked();
    replica
        .record_ids_at(zone_id, name)
        .into_iter()
        .filter_map(|id| record(&ranked, zone_id, &id))
        .filter(|r| r.name == name)
        .collect()
}

/// Checks and normalises a record for `domain`.
pub fn check_record(domain: &str, input: &RecordInput) -> Result<RecordInput, Invalid> {
    let rtype = input.rtype.trim().to_ascii_uppercase();
    if !RECORD_TYPES.contains(&rtype.as_str()) {
        return Err(invalid(
            "record.type",
            format!("must be one of {}", RECORD_TYPES.join(", ")),
        ));
    }
    let name = normalize_name("record.name", &input.name)?;
    if !(name == domain || name.ends_with(&format!(".{domain}"))) {
        return Err(invalid("record.name", format!("must be inside {domain}")));
    }
    if input.ttl > MAX_TTL {
        return Err(invalid("record.ttl", format!("must be at most {MAX_TTL}")));
    }
    if rtype == "NS" && name.starts_with("*.") {
        return Err(invalid(
            "record.name",
            "an NS record cannot be at a wildcard name (RFC 4592 §4.2)",
        ));
    }
    let value = input.value.trim();
    if value.is_empty() {
        return Err(invalid("record.value", "must not be empty"));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid(
            "record.value",
            format!("is longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        // A newline or other control character would break the zone file (and the record).
        return Err(invalid(
            "record.value",
            "must not contain control characters",
        ));
    }
    let bad = |what: &str| invalid("record.value", format!("is not {what}"));
    let value = match rtype.as_str() {
        "A" => value
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("an IPv4 address"))?
            .to_string(),
        "AAAA" => value
            .parse::<Ipv6Addr>()
            .map_err(|_| bad("an IPv6 address"))?
            .to_string(),
        "CNAME" | "NS" | "PTR" => normalize_name("record.value", value)?,
        "MX" => {
            let (pref, host) = value
                .split_once(' ')
                .ok_or_else(|| bad("'PREFERENCE HOST'"))?;
            let pref: u16 = pref.parse().map_err(|_| bad("'PREFERENCE HOST'"))?;
            format!("{pref} {}", normalize_name("record.value", host)?)
        }
        "SRV" => {
            let parts: Vec<&str> = value.split_whitespace().collect();
            let [p, w, port, target] = parts[..] else {
                return Err(bad("'PRIORITY WEIGHT PORT TARGET'"));
            };
            let nums: Result<Vec<u16>, _> = [p, w, port].iter().map(|s| s.parse()).collect();
            let nums = nums.map_err(|_| bad("'PRIORITY WEIGHT PORT TARGET'"))?;
            format!(
                "{} {} {} {}",
                nums[0],
                nums[1],
                nums[2],
                normalize_name("record.value", target)?
            )
        }
        "CAA" => {
            let mut it = value.splitn(3, ' ');
            let (Some(flags), Some(tag), Some(v)) = (it.next(), it.next(), it.next()) else {
                return Err(bad("'FLAGS TAG \"VALUE\"'"));
            };
            let flags: u8 = flags.parse().map_err(|_| bad("'FLAGS TAG \"VALUE\"'"))?;
            if !matches!(tag, "issue" | "issuewild" | "iodef") {
                return Err(bad("a CAA record with tag issue, issuewild or iodef"));
            }
            // One spelling per record (quoted), so `0 issue ca.example` and `0 issue
            // "ca.example"` are the same record, as they are the same data.
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v);
            format!("{flags} {tag} \"{v}\"")
        }
        _ => value.to_string(), // TXT: any text
    };
    Ok(RecordInput {
        rtype,
        name,
        value,
        ttl: input.ttl,
    })
}

/// The id of a record: a hash of its zone, name, type and value.
pub fn record_id(zone: &str, r: &RecordInput) -> String {
    let mut h = Sha256::new();
    for part in [zone, &r.name, &r.rtype, &r.value] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d: [u8; 32] = h.finalize().into();
    hex(&d[..12])
}

/// Packs an HLC into one sortable integer.
pub fn pack_hlc(h: Hlc) -> u64 {
    (h.wall_ms << 20) | u64::from(h.counter.min((1 << 20) - 1))
}

/// A packed HLC as the API shows it (`"<wall_ms>.<counter>"`).
pub fn unpack_hlc_text(v: u64) -> String {
    unpack_hlc(v).to_string()
}

pub(crate) fn unpack_hlc(v: u64) -> Hlc {
    Hlc {
        wall_ms: v >> 20,
        counter: (v & ((1 << 20) - 1)) as u32,
    }
}

pub(crate) fn str_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(v), _) => match v.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn uint_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<u64> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(v), _) => match v.as_ref() {
            ScalarValue::Uint(n) => Some(*n),
            ScalarValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Among conflicting map objects under `key`, the one with the highest `hlc` (then op id).
pub(crate) fn newest_map(doc: &Automerge, parent: &ObjId, key: &str) -> Option<ObjId> {
    let all = doc.get_all(parent, key).ok()?;
    all.into_iter()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
        .map(|(_, id)| (uint_of(doc, &id, "hlc").unwrap_or(0), id))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(_, id)| id)
}

/// The node that created the object `obj` (the author of the change that made it).
pub fn creator_of(obj: &ObjId) -> Option<String> {
    match obj {
        ObjId::Id(_, actor, _) => crate::docs::peer_of_actor(actor).map(|(_, p)| p.to_string()),
        ObjId::Root => None,
    }
}

/// A zones document as it is read: the document, and how concurrent claims to one zone id or
/// domain rank ([`crate::authority::Authority::claim_rank`] for a node's replica; every claim
/// ranks the same for a bare [`Automerge`]).
pub trait ZoneDoc {
    fn am(&self) -> &Automerge;
    /// The rank of a claim by `creator` for `domain`: the lowest stands.
    fn rank(&self, _creator: &str, _domain: &str) -> u32 {
        0
    }
}

impl ZoneDoc for Automerge {
    fn am(&self) -> &Automerge {
        self
    }
}

/// A zones document read with the grants, admins and revocations of a replica.
#[derive(Debug)]
pub struct Ranked<'a> {
    pub doc: &'a Automerge,
    pub auth: &'a crate::authority::Authority,
}

impl ZoneDoc for Ranked<'_> {
    fn am(&self) -> &Automerge {
        self.doc
    }
    fn rank(&self, creator: &str, domain: &str) -> u32 {
        self.auth.claim_rank(creator, domain)
    }
}

/// Which of two concurrent claims to one zone id (or one domain) stands: the one whose
/// creator's right is strongest ([`ZoneDoc::rank`]: an admin, then the most specific right),
/// then the smaller node id, then the smaller op id. Nothing a writer chooses per change (its
/// clock, its HLC, its dependencies) decides it, and a claim is merged only from a node with a
/// right to the domain ([`crate::authority::may_create_zone`]).
fn claim_key(doc: &impl ZoneDoc, o: &ObjId) -> (u32, Option<String>) {
    let creator = creator_of(o);
    let domain = str_of(doc.am(), o, "domain")
        .map(|d| crate::authority::norm(&d))
        .unwrap_or_default();
    let rank = creator
        .as_deref()
        .map_or(u32::MAX, |c| doc.rank(c, &domain));
    (rank, creator)
}

fn claim_order(doc: &impl ZoneDoc, a: &ObjId, b: &ObjId) -> std::cmp::Ordering {
    claim_key(doc, a)
        .cmp(&claim_key(doc, b))
        .then_with(|| a.cmp(b))
}

/// The object of zone `id`: among concurrent claims, the one [`claim_order`] puts first.
pub fn zone_obj(doc: &impl ZoneDoc, id: &str) -> Option<ObjId> {
    let all = doc.am().get_all(ROOT, id).ok()?;
    all.into_iter()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
        .map(|(_, o)| o)
        .min_by(|a, b| claim_order(doc, a, b))
}

fn true_keys(doc: &Automerge, obj: &ObjId, heads: Option<&[automerge::ChangeHash]>) -> Vec<String> {
    let keys: Vec<String> = match heads {
        Some(h) => doc.keys_at(obj, h).collect(),
        None => doc.keys(obj).collect(),
    };
    keys.into_iter()
        .filter(|k| {
            let v = match heads {
                Some(h) => doc.get_at(obj, k.as_str(), h),
                None => doc.get(obj, k.as_str()),
            };
            matches!(v, Ok(Some((Value::Scalar(v), _))) if matches!(v.as_ref(), ScalarValue::Boolean(true)))
        })
        .collect()
}

fn map_at(
    doc: &Automerge,
    obj: &ObjId,
    key: &str,
    heads: Option<&[automerge::ChangeHash]>,
) -> Option<ObjId> {
    let v = match heads {
        Some(h) => doc.get_at(obj, key, h),
        None => doc.get(obj, key),
    };
    match v {
        Ok(Some((Value::Object(ObjType::Map), o))) => Some(o),
        _ => None,
    }
}

fn owners(doc: &Automerge, zone: &ObjId) -> Vec<String> {
    map_at(doc, zone, "owners", None)
        .map(|o| true_keys(doc, &o, None))
        .unwrap_or_default()
}

fn delegations_at(
    doc: &Automerge,
    zone: &ObjId,
    heads: Option<&[automerge::ChangeHash]>,
) -> BTreeMap<String, Vec<String>> {
    let Some(d) = map_at(doc, zone, "delegations", heads) else {
        return BTreeMap::new();
    };
    let keys: Vec<String> = match heads {
        Some(h) => doc.keys_at(&d, h).collect(),
        None => doc.keys(&d).collect(),
    };
    keys.into_iter()
        .filter_map(|k| {
            let nodes = true_keys(doc, &map_at(doc, &d, &k, heads)?, heads);
            (!nodes.is_empty()).then_some((k, nodes))
        })
        .collect()
}

/// The zones as of `heads` (domains, owners and delegations; no record counts), for judging a
/// change against the state it was made in.
pub fn zones_at(ranked: &impl ZoneDoc, heads: &[automerge::ChangeHash]) -> Vec<Zone> {
    let doc = ranked.am();
    doc.keys_at(ROOT, heads)
        .filter_map(|id| {
            let obj = doc
                .get_all_at(ROOT, id.as_str(), heads)
                .ok()?
                .into_iter()
                .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
                .map(|(_, o)| o)
                .min_by(|a, b| claim_order(ranked, a, b))?;
            let domain = match doc.get_at(&obj, "domain", heads) {
                Ok(Some((Value::Scalar(v), _))) => match v.as_ref() {
                    ScalarValue::Str(s) => s.to_string(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            Some(Zone {
                id: id.clone(),
                domain: crate::authority::norm(&domain),
                owners: map_at(doc, &obj, "owners", Some(heads))
                    .map(|o| true_keys(doc, &o, Some(heads)))
                    .unwrap_or_default(),
                created_by: creator_of(&obj).unwrap_or_default(),
                records: 0,
                delegations: delegations_at(doc, &obj, Some(heads)),
            })
        })
        .collect()
}

/// Zone `id` at `obj`; its record count only when `count` (counting reads every key of the
/// records map: the API shows it, the write path does not need it).
fn zone_of(doc: &Automerge, id: &str, obj: &ObjId, count: bool) -> Zone {
    let records = match doc.get(obj, "records") {
        Ok(Some((Value::Object(ObjType::Map), r))) if count => doc.length(&r),
        _ => 0,
    };
    Zone {
        id: id.to_string(),
        domain: str_of(doc, obj, "domain").unwrap_or_default(),
        owners: owners(doc, obj),
        created_by: str_of(doc, obj, "created_by").unwrap_or_default(),
        records,
        delegations: delegations_at(doc, obj, None),
    }
}

/// Every zone, by id. Of two zones for one domain (claimed concurrently), only the one
/// [`claim_order`] puts first is listed.
pub fn zones(doc: &impl ZoneDoc) -> Vec<Zone> {
    zones_counted(doc, true)
}

/// [`zones`] without their record counts (`records` is 0): what the write path and DNS read,
/// at a cost that does not grow with the records.
pub fn zones_meta(doc: &impl ZoneDoc) -> Vec<Zone> {
    zones_counted(doc, false)
}

fn zones_counted(doc: &impl ZoneDoc, count: bool) -> Vec<Zone> {
    let am = doc.am();
    let mut by_domain: BTreeMap<String, (ObjId, Zone)> = BTreeMap::new();
    for id in am.keys(ROOT) {
        let Some(o) = zone_obj(doc, &id) else {
            continue;
        };
        let z = zone_of(am, &id, &o, count);
        match by_domain.get(&z.domain) {
            Some((other, _)) if claim_order(doc, other, &o).is_le() => {}
            _ => {
                by_domain.insert(z.domain.clone(), (o, z));
            }
        }
    }
    let mut out: Vec<Zone> = by_domain.into_values().map(|(_, z)| z).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// One zone.
pub fn zone(doc: &impl ZoneDoc, id: &str) -> Option<Zone> {
    zone_obj(doc, id).map(|o| zone_of(doc.am(), id, &o, true))
}

/// [`zone`] without its record count (`records` is 0).
pub fn zone_meta(doc: &impl ZoneDoc, id: &str) -> Option<Zone> {
    zone_obj(doc, id).map(|o| zone_of(doc.am(), id, &o, false))
}

/// Whether `node` owns zone `id`.
pub fn is_owner(doc: &impl ZoneDoc, id: &str, node: &str) -> bool {
    zone_obj(doc, id).is_some_and(|o| owners(doc.am(), &o).iter().any(|n| n == node))
}

fn records_obj(doc: &Automerge, zone: &ObjId) -> Option<ObjId> {
    match doc.get(zone, "records") {
        Ok(Some((Value::Object(ObjType::Map), r))) => Some(r),
        _ => None,
    }
}

fn record_of(doc: &Automerge, zone_id: &str, id: &str, obj: &ObjId) -> Record {
    Record {
        id: id.to_string(),
        zone_id: zone_id.to_string(),
        rtype: str_of(doc, obj, "type").unwrap_or_default(),
        name: str_of(doc, obj, "name").unwrap_or_default(),
        value: str_of(doc, obj, "value").unwrap_or_default(),
        ttl: uint_of(doc, obj, "ttl").unwrap_or(0),
        author: str_of(doc, obj, "author").unwrap_or_default(),
        hlc: unpack_hlc(uint_of(doc, obj, "hlc").unwrap_or(0)).to_string(),
    }
}

/// The records of zone `zone_id`, ordered by id; `None` when the zone does not exist.
pub fn records(doc: &impl ZoneDoc, zone_id: &str) -> Option<Vec<Record>> {
    let zone = zone_obj(doc, zone_id)?;
    let doc = doc.am();
    let Some(recs) = records_obj(doc, &zone) else {
        return Some(Vec::new());
    };
    Some(
        doc.keys(&recs)
            .filter_map(|id| newest_map(doc, &recs, &id).map(|o| record_of(doc, zone_id, &id, &o)))
            .collect(),
    )
}

/// A page of zone `zone_id`'s records ordered by id: at most `limit` with an id after `after`,
/// and whether more follow; `None` when the zone does not exist. Reads only the page and one
/// more record (the records map is kept in key order), not the whole zone.
pub fn records_page(
    doc: &impl ZoneDoc,
    zone_id: &str,
    after: Option<&str>,
    limit: usize,
) -> Option<(Vec<Record>, bool)> {
    use std::ops::Bound;
    let zone = zone_obj(doc, zone_id)?;
    let doc = doc.am();
    let Some(recs) = records_obj(doc, &zone) else {
        return Some((Vec::new(), false));
    };
    let from = match after {
        Some(a) => Bound::Excluded(a.to_string()),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for item in doc.map_range(&recs, (from, Bound::Unbounded)) {
        let Some(o) = newest_map(doc, &recs, &item.key) else {
            continue;
        };
        if out.len() == limit {
            return Some((out, true));
        }
        out.push(record_of(doc, zone_id, &item.key, &o));
    }
    Some((out, false))
}

/// Record `record_id` of zone `zone_id`, if both exist.
pub fn record(doc: &impl ZoneDoc, zone_id: &str, record_id: &str) -> Option<Record> {
    let zone = zone_obj(doc, zone_id)?;
    let am = doc.am();
    let recs = records_obj(am, &zone)?;
    newest_map(am, &recs, record_id).map(|o| record_of(am, zone_id, record_id, &o))
}

/// Finds a record by id in any zone.
pub fn find_record(doc: &impl ZoneDoc, record_id: &str) -> Option<Record> {
    let am = doc.am();
    am.keys(ROOT).find_map(|z| {
        let zone = zone_obj(doc, &z)?;
        let recs = records_obj(am, &zone)?;
        newest_map(am, &recs, record_id).map(|o| record_of(am, &z, record_id, &o))
    })
}

/// Creates zone `id` for `domain` owned by `owner`.
pub fn create_zone(
    tx: &mut Transaction<'_>,
    id: &str,
    domain: &str,
    owner: &str,
    hlc: Hlc,
) -> Result<(), DocError> {
    let z = tx.put_object(ROOT, id, ObjType::Map)?;
    tx.put(&z, "domain", domain)?;
    tx.put(&z, "created_by", owner)?;
    tx.put(&z, "hlc", pack_hlc(hlc))?;
    let o = tx.put_object(&z, "owners", ObjType::Map)?;
    tx.put(&o, owner, true)?;
    tx.put_object(&z, "records", ObjType::Map)?;
    Ok(())
}

/// Adds `node` to the owners of the zone at `zone`.
pub fn add_owner(tx: &mut Transaction<'_>, zone: &ObjId, node: &str) -> Result<(), DocError> {
    let o = match tx.get(zone, "owners")? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(zone, "owners", ObjType::Map)?,
    };
    tx.put(&o, node, true)?;
    Ok(())
}

/// Removes `node` from the owners of the zone at `zone`; false when it was not one.
pub fn remove_owner(tx: &mut Transaction<'_>, zone: &ObjId, node: &str) -> Result<bool, DocError> {
    let Some((Value::Object(ObjType::Map), o)) = tx.get(zone, "owners")? else {
        return Ok(false);
    };
    if tx.get(&o, node)?.is_none() {
        return Ok(false);
    }
    tx.delete(&o, node)?;
    Ok(true)
}

/// Delegates `domain` (inside the zone) to `node`, or withdraws it (`on = false`).
pub fn set_delegation(
    tx: &mut Transaction<'_>,
    zone: &ObjId,
    domain: &str,
    node: &str,
    on: bool,
) -> Result<(), DocError> {
    let d = match tx.get(zone, "delegations")? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(zone, "delegations", ObjType::Map)?,
    };
    let nodes = match tx.get(&d, domain)? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(&d, domain, ObjType::Map)?,
    };
    if on {
        tx.put(&nodes, node, true)?;
    } else if tx.get(&nodes, node)?.is_some() {
        tx.delete(&nodes, node)?;
    }
    Ok(())
}

/// Adds (or refreshes) a checked record in the zone at `zone`; returns it.
pub fn put_record(
    tx: &mut Transaction<'_>,
    zone_id: &str,
    zone: &ObjId,
    r: &RecordInput,
    author: &str,
    hlc: Hlc,
) -> Result<Record, DocError> {
    let recs = match tx.get(zone, "records")? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(zone, "records", ObjType::Map)?,
    };
    let id = record_id(zone_id, r);
    // Every write makes a new version of the record (replacing the versions this node has
    // seen), so concurrent writes leave whole versions side by side and readers pick the newest
    // by HLC, instead of Automerge merging their fields one by one.
    let obj = tx.put_object(&recs, id.as_str(), ObjType::Map)?;
    tx.put(&obj, "type", r.rtype.as_str())?;
    tx.put(&obj, "name", r.name.as_str())?;
    tx.put(&obj, "value", r.value.as_str())?;
    tx.put(&obj, "ttl", r.ttl)?;
    tx.put(&obj, "author", author)?;
    tx.put(&obj, "hlc", pack_hlc(hlc))?;
    Ok(Record {
        id,
        zone_id: zone_id.to_string(),
        rtype: r.rtype.clone(),
        name: r.name.clone(),
        value: r.value.clone(),
        ttl: r.ttl,
        author: author.to_string(),
        hlc: hlc.to_string(),
    })
}

/// Deletes record `id` from the zone at `zone`; false when it is not there.
pub fn delete_record(tx: &mut Transaction<'_>, zone: &ObjId, id: &str) -> Result<bool, DocError> {
    let Some((Value::Object(ObjType::Map), recs)) = tx.get(zone, "records")? else {
        return Ok(false);
    };
    if tx.get(&recs, id)?.is_none() {
        return Ok(false);
    }
    tx.delete(&recs, id)?;
    Ok(true)
}
