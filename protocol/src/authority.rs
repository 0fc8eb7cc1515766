//! Who may say what: the mesh's namespace rules, admin grants and revocations.
//!
//! The `members` document (written only by admins) holds the grants and revocations:
//!
//! ```text
//! root
//! ├── grants:  { <domain>: { <node id>: true } }      the node may create zones at or under it
//! └── revoked: { <node id>: { by, reason, hlc,         who revoked, why, when (packed HLC)
//!                             cutoff: { <what>: seq } } }   the last change kept, per document
//!                                                          ("members", "zones", "endpoints",
//!                                                          "jobs") and for the ledger ("ledger")
//! ```
//!
//! [`Authority`] is that document read into plain data, plus the mesh domain. Every replica
//! holds one and judges every change with it (see [`crate::docs::Replica`]); the API judges
//! local writes with the same functions, so a modified client is refused where its change
//! arrives, not only where it is made.
//!
//! "After a revocation" is defined without the revoked node's clock: the revoking admin records,
//! for each document and for the ledger, the highest sequence number of the revoked node's
//! changes it holds. Changes up to that number stay (they were accepted while the node was a
//! member); any later change is refused on every replica, whatever its timestamp says.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};

use crate::docs::DocError;
use crate::zones::{Zone, is_within, str_of, uint_of};

/// One revocation as the members document holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The admin that revoked the node.
    pub by: String,
    pub reason: String,
    /// Packed HLC of the revocation (the revoking admin's clock; informative only).
    pub hlc: u64,
    /// The last kept sequence number of the node's changes, by document name and `ledger`.
    pub cutoff: BTreeMap<String, u64>,
}

/// The namespace rules and revocations in force on this replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authority {
    /// The mesh domain (normalised): no zone is created at or under it.
    pub mesh_domain: Option<String>,
    /// Admin grants: domain → nodes that may create zones at or under it.
    pub grants: BTreeMap<String, BTreeSet<String>>,
    /// Revoked nodes.
    pub revoked: BTreeMap<String, Revocation>,
    /// The admins (from the member directory; not in the members document).
    pub admins: BTreeSet<String>,
}

fn is_true(doc: &Automerge, obj: &ObjId, key: &str) -> bool {
    matches!(doc.get(obj, key), Ok(Some((Value::Scalar(v), _))) if matches!(v.as_ref(), ScalarValue::Boolean(true)))
}

fn map_of(doc: &Automerge, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), o))) => Some(o),
        _ => None,
    }
}

/// Normalises a domain as DNS compares names: lower case, one trailing dot.
pub fn norm(domain: &str) -> String {
    let mut d = domain.trim().to_ascii_lowercase();
    if !d.ends_with('.') {
        d.push('.');
    }
    d
}

impl Authority {
    /// Reads the grants and revocations of a `members` document.
    pub fn from_members(doc: &Automerge, mesh_domain: Option<String>) -> Authority {
        let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if let Some(g) = map_of(doc, &ROOT, "grants") {
            for domain in doc.keys(&g) {
                let Some(nodes) = map_of(doc, &g, &domain) else {
                    continue;
                };
                let set: BTreeSet<String> = doc
                    .keys(&nodes)
                    .filter(|n| is_true(doc, &nodes, n))
                    .collect();
                if !set.is_empty() {
                    grants.entry(norm(&domain)).or_default().extend(set);
                }
            }
        }
        let mut revoked = BTreeMap::new();
        if let Some(r) = map_of(doc, &ROOT, "revoked") {
            for node in doc.keys(&r) {
                let Some(obj) = map_of(doc, &r, &node) else {
                    continue;
                };
                let mut cutoff = BTreeMap::new();
                if let Some(c) = map_of(doc, &obj, "cutoff") {
                    for what in doc.keys(&c) {
                        if let Some(seq) = uint_of(doc, &c, &what) {
                            cutoff.insert(what, seq);
                        }
                    }
                }
                revoked.insert(
                    node,
                    Revocation {
                        by: str_of(doc, &obj, "by").unwrap_or_default(),
                        reason: str_of(doc, &obj, "reason").unwrap_or_default(),
                        hlc: uint_of(doc, &obj, "hlc").unwrap_or(0),
                        cutoff,
                    },
                );
            }
        }
        Authority {
            mesh_domain,
            grants,
            revoked,
            admins: BTreeSet::new(),
        }
    }

    pub fn is_revoked(&self, node: &str) -> bool {
        self.revoked.contains_key(node)
    }

    /// The last kept sequence number of `node`'s changes to `what` (a document name or
    /// `ledger`), when `node` is revoked. A revocation that names no cutoff for `what` keeps
    /// nothing of it (`Some(0)`).
    pub fn cutoff(&self, node: &str, what: &str) -> Option<u64> {
        self.revoked
            .get(node)
            .map(|r| r.cutoff.get(what).copied().unwrap_or(0))
    }

    /// Whether an admin granted `node` a domain at or above `domain`.
    pub fn granted(&self, node: &str, domain: &str) -> bool {
        let domain = norm(domain);
        self.grants
            .iter()
            .any(|(d, nodes)| is_within(&domain, d) && nodes.contains(node))
    }

    /// How strong `creator`'s right to a zone for `domain` is, for choosing between concurrent
    /// claims (lowest stands): an admin's claim (0), then the claim resting on the most specific
    /// right — a grant for a longer domain beats one for a shorter; a claim resting on no grant
    /// (made by an enclosing zone's owner or delegate) counts as specific as its domain. A
    /// revoked node's claim ranks last.
    pub fn claim_rank(&self, creator: &str, domain: &str) -> u32 {
        if self.is_revoked(creator) {
            return u32::MAX;
        }
        if self.admins.contains(creator) {
            return 0;
        }
        let domain = norm(domain);
        let specific = self
            .grants
            .iter()
            .filter(|(d, nodes)| is_within(&domain, d) && nodes.contains(creator))
            .map(|(d, _)| d.len())
            .max()
            .unwrap_or(domain.len() + 1);
        1000u32.saturating_sub(specific as u32)
    }

    /// The grants as (domain, node) pairs.
    pub fn grant_list(&self) -> Vec<(String, String)> {
        self.grants
            .iter()
            .flat_map(|(d, nodes)| nodes.iter().map(move |n| (d.clone(), n.clone())))
            .collect()
    }
}

/// The zone strictly enclosing `domain` (the one with the longest domain containing it).
pub fn enclosing<'a>(zones: &'a [Zone], domain: &str) -> Option<&'a Zone> {
    zones
        .iter()
        .filter(|z| z.domain != domain && is_within(domain, &z.domain))
        .max_by_key(|z| z.domain.len())
}

/// Whether `zone` lets `node` speak for `name`: an owner, or delegated `name` or a domain above
/// it inside the zone.
pub fn speaks_for(zone: &Zone, node: &str, name: &str) -> bool {
    zone.owners.iter().any(|o| o == node)
        || zone
            .delegations
            .iter()
            .any(|(d, nodes)| is_within(name, d) && nodes.iter().any(|n| n == node))
}

/// Who may create zone `id` for `domain` (normalised), given the zones that exist (for a merged
/// change: as of its dependencies). The rules (docs/replication.md, "Who may create which zone"):
///
/// - nobody at or under the mesh domain (its names are the nodes' own);
/// - nobody for a domain another zone already serves;
/// - an admin anywhere else (admins own the namespace);
/// - a member with an admin grant at or above the domain;
/// - a member that owns the zone enclosing the domain, or to whom its owners delegated the
///   domain (or a domain above it).
///
/// The error says what would allow it.
pub fn may_create_zone(
    auth: &Authority,
    zones: &[Zone],
    id: &str,
    domain: &str,
    author: &str,
    is_admin: bool,
) -> Result<(), Denied> {
    let domain = norm(domain);
    if let Some(m) = &auth.mesh_domain
        && is_within(&domain, m)
    {
        return Err(Denied::Forbidden(format!(
            "{domain} is inside {m}, which is reserved for the mesh's node names"
        )));
    }
    if let Some(z) = zones.iter().find(|z| z.domain == domain && z.id != id) {
        return Err(Denied::Forbidden(format!(
            "{domain} is already served by zone {}",
            z.id
        )));
    }
    if is_admin || auth.granted(author, &domain) {
        return Ok(());
    }
    if let Some(e) = enclosing(zones, &domain) {
        if speaks_for(e, author, &domain) {
            return Ok(());
        }
        return Err(Denied::Forbidden(format!(
            "{domain} is inside zone {} ({}); its owners may delegate it \
             (voike zone delegate {} {domain} {author})",
            e.id, e.domain, e.id
        )));
    }
    Err(Denied::NoGrant(format!(
        "creating a zone for {domain} needs an admin's grant (voike grant add {domain} {author})"
    )))
}

/// Why a write is not allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Never, whatever arrives later.
    Forbidden(String),
    /// Not without an admin's grant, which may not have reached this node yet.
    NoGrant(String),
}

impl Denied {
    pub fn message(&self) -> &str {
        match self {
            Denied::Forbidden(m) | Denied::NoGrant(m) => m,
        }
    }
}

/// Whether `node` may have an endpoint for `service` served: inside a zone, an owner of that
/// zone or a node the owners delegated the name to; outside every zone, any member (no zone
/// record can be shadowed there). A revoked node's endpoints are never served.
pub fn may_serve_endpoint(auth: &Authority, zones: &[Zone], node: &str, service: &str) -> bool {
    if auth.is_revoked(node) {
        return false;
    }
    let service = norm(service);
    crate::zones::zone_for(zones, &service).is_none_or(|z| speaks_for(z, node, &service))
}

// ---- members document writes ------------------------------------------------------------

fn ensure_map(tx: &mut Transaction<'_>, parent: &ObjId, key: &str) -> Result<ObjId, DocError> {
    Ok(match tx.get(parent, key)? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(parent, key, ObjType::Map)?,
    })
}

/// Grants `node` the right to create zones at or under `domain` (normalised).
pub fn put_grant(tx: &mut Transaction<'_>, domain: &str, node: &str) -> Result<(), DocError> {
    let grants = ensure_map(tx, &ROOT, "grants")?;
    let nodes = ensure_map(tx, &grants, domain)?;
    tx.put(&nodes, node, true)?;
    Ok(())
}

/// Removes a grant; false when it was not there.
pub fn delete_grant(tx: &mut Transaction<'_>, domain: &str, node: &str) -> Result<bool, DocError> {
    let Some((Value::Object(ObjType::Map), grants)) = tx.get(&ROOT, "grants")? else {
        return Ok(false);
    };
    let Some((Value::Object(ObjType::Map), nodes)) = tx.get(&grants, domain)? else {
        return Ok(false);
    };
    if tx.get(&nodes, node)?.is_none() {
        return Ok(false);
    }
    tx.delete(&nodes, node)?;
    Ok(true)
}

/// Writes the revocation of `node`.
pub fn put_revocation(
    tx: &mut Transaction<'_>,
    node: &str,
    r: &Revocation,
) -> Result<(), DocError> {
    let revoked = ensure_map(tx, &ROOT, "revoked")?;
    let obj = tx.put_object(&revoked, node, ObjType::Map)?;
    tx.put(&obj, "by", r.by.as_str())?;
    tx.put(&obj, "reason", r.reason.as_str())?;
    tx.put(&obj, "hlc", r.hlc)?;
    let c = tx.put_object(&obj, "cutoff", ObjType::Map)?;
    for (what, seq) in &r.cutoff {
        tx.put(&c, what.as_str(), *seq)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str, domain: &str, owners: &[&str]) -> Zone {
        Zone {
            id: id.into(),
            domain: domain.into(),
            owners: owners.iter().map(|s| s.to_string()).collect(),
            created_by: owners.first().map(|s| s.to_string()).unwrap_or_default(),
            records: 0,
            delegations: BTreeMap::new(),
        }
    }

    fn auth() -> Authority {
        let mut a = Authority {
            mesh_domain: Some("voike.internal.".into()),
            ..Default::default()
        };
        a.grants
            .entry("team.example.".into())
            .or_default()
            .insert("b".into());
        a
    }

    #[test]
    fn members_need_a_grant_or_a_delegation() {
        let a = auth();
        let zones = vec![zone("demo", "demo.mesh.", &["a"])];
        // No grant: refused, for now (the grant may still be on its way).
        assert!(matches!(
            may_create_zone(&a, &zones, "x", "other.example.", "b", false),
            Err(Denied::NoGrant(_))
        ));
        // Granted domain and below.
        may_create_zone(&a, &zones, "t", "team.example.", "b", false).expect("ok");
        may_create_zone(&a, &zones, "t2", "x.team.example.", "b", false).expect("ok");
        // Inside another owner's zone: forbidden without its delegation.
        assert!(matches!(
            may_create_zone(&a, &zones, "s", "sub.demo.mesh.", "b", false),
            Err(Denied::Forbidden(_))
        ));
        let mut delegated = zones.clone();
        delegated[0]
            .delegations
            .insert("sub.demo.mesh.".into(), vec!["b".into()]);
        may_create_zone(&a, &delegated, "s", "deep.sub.demo.mesh.", "b", false).expect("ok");
        // The owner itself may nest zones.
        may_create_zone(&a, &zones, "s", "sub.demo.mesh.", "a", false).expect("ok");
        // Admins anywhere outside the mesh domain, TLDs included.
        may_create_zone(&a, &zones, "com", "com.", "adm", true).expect("ok");
    }

    #[test]
    fn nobody_takes_the_mesh_domain_or_a_served_domain() {
        let a = auth();
        let zones = vec![zone("demo", "demo.mesh.", &["a"])];
        for d in [
            "voike.internal.",
            "nodes.voike.internal.",
            "x.NODES.voike.internal",
        ] {
            assert!(matches!(
                may_create_zone(&a, &zones, "n", d, "adm", true),
                Err(Denied::Forbidden(_))
            ));
        }
        assert!(matches!(
            may_create_zone(&a, &zones, "other", "demo.mesh.", "adm", true),
            Err(Denied::Forbidden(_))
        ));
        // Replacing one's own zone of that id is not a second zone for the domain.
        may_create_zone(&a, &zones, "demo", "demo.mesh.", "adm", true).expect("ok");
    }

    #[test]
    fn revoked_nodes_serve_nothing() {
        // (What a revoked node may still have written is decided by its cutoff, at merge.)
        let mut a = auth();
        a.revoked.insert("b".into(), Revocation::default());
        assert!(!may_serve_endpoint(&a, &[], "b", "svc.team.example"));
        assert!(may_serve_endpoint(&a, &[], "c", "svc.team.example"));
        assert_eq!(a.cutoff("b", "zones"), Some(0));
        assert_eq!(a.cutoff("c", "zones"), None);
    }

    #[test]
    fn endpoints_inside_a_zone_need_its_owners() {
        let a = auth();
        let mut zones = vec![zone("demo", "demo.mesh.", &["a"])];
        assert!(may_serve_endpoint(&a, &zones, "a", "www.demo.mesh"));
        assert!(!may_serve_endpoint(&a, &zones, "b", "www.demo.mesh"));
        zones[0]
            .delegations
            .insert("api.demo.mesh.".into(), vec!["b".into()]);
        assert!(may_serve_endpoint(&a, &zones, "b", "api.demo.mesh"));
        assert!(!may_serve_endpoint(&a, &zones, "b", "www.demo.mesh"));
    }

    #[test]
    fn grants_and_revocations_round_trip_through_the_document() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        put_grant(&mut tx, "team.example.", "b").expect("ok");
        put_grant(&mut tx, "team.example.", "c").expect("ok");
        put_revocation(
            &mut tx,
            "c",
            &Revocation {
                by: "a".into(),
                reason: "key leaked".into(),
                hlc: 7,
                cutoff: BTreeMap::from([("zones".into(), 3)]),
            },
        )
        .expect("ok");
        tx.commit();
        let mut tx = doc.transaction();
        assert!(delete_grant(&mut tx, "team.example.", "c").expect("ok"));
        assert!(!delete_grant(&mut tx, "nope.", "c").expect("ok"));
        tx.commit();
        let a = Authority::from_members(&doc, None);
        assert_eq!(a.grant_list(), vec![("team.example.".into(), "b".into())]);
        assert_eq!(a.cutoff("c", "zones"), Some(3));
        assert_eq!(a.cutoff("c", "ledger"), Some(0));
        assert_eq!(a.revoked["c"].reason, "key leaked");
    }
}
