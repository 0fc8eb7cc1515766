//! The `endpoints` document: the services each node offers, with input validation.
//!
//! Layout (all maps): `root[node_id][endpoint_id] = {service, address, port, region,
//! capabilities: {cap: true}, weight, hlc}`. A node writes only under its own id (the rule
//! [`crate::docs::Replica`] enforces for [`crate::docs::DocId::Endpoints`]). An endpoint's id is
//! derived from `(node, service, address, port)`, so re-announcing the same service address
//! refreshes one entry instead of adding another.
//!
//! Every write puts a whole new map for the endpoint, so concurrent writes leave whole versions
//! side by side and readers take the one with the highest HLC (then the highest Automerge op id),
//! as in [`crate::zones`]. Readers check every entry again as [`check_endpoint`] would and skip
//! those that fail, so a node cannot publish through the document what the API would refuse.

use std::collections::BTreeMap;
use std::net::IpAddr;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::docs::DocError;
use crate::hlc::Hlc;
use crate::signing::hex;
use crate::zones::{self, Invalid, newest_map, pack_hlc, str_of, uint_of, unpack_hlc};

/// Most capabilities one endpoint may list.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest region or capability name.
pub const MAX_LABEL_LEN: usize = 64;
/// Largest endpoint weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Weight of an endpoint that does not give one.
pub const DEFAULT_WEIGHT: u32 = 100;

/// An endpoint as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointInput {
    /// The service's domain name (`api.shop.mesh`); no wildcards.
    pub service: String,
    /// An IPv4 or IPv6 address.
    pub address: String,
    /// 1 to 65535 (taken as a wider integer so that a bad port is reported as such).
    pub port: u64,
    /// Region label; default empty (no region).
    #[serde(default)]
    pub region: String,
    /// Capability labels; default none.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Relative share of traffic, 1 to 1000; default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// An endpoint as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    /// The node offering it (the top-level key it lives under).
    pub node: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    pub region: String,
    pub capabilities: Vec<String>,
    pub weight: u32,
    /// The HLC of the version shown, as `wall_ms.counter`.
    pub hlc: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Lower-cases `value` and checks it is 1 to [`MAX_LABEL_LEN`] bytes of `a-z`, `0-9`, `-`, `_`
/// (and `.` when `dots`).
/// Checks and normalises a region (empty, or a label) and a capability list (at most `max`
/// labels that may hold dots; lower-cased, sorted, deduplicated), naming `fields` in errors.
/// Shared by endpoints and job requirements.
pub(crate) fn check_affinity(
    fields: (&'static str, &'static str),
    region: &str,
    capabilities: &[String],
    max: usize,
) -> Result<(String, Vec<String>), Invalid> {
    let region = if region.trim().is_empty() {
        String::new()
    } else {
        check_label(fields.0, region, false)?
    };
    if capabilities.len() > max {
        return Err(invalid(fields.1, format!("at most {max} are allowed")));
    }
    let mut caps = capabilities
        .iter()
        .map(|c| check_label(fields.1, c, true))
        .collect::<Result<Vec<_>, _>>()?;
    caps.sort();
    caps.dedup();
    Ok((region, caps))
}

pub(crate) fn check_label(field: &'static str, value: &str, dots: bool) -> Result<String, Invalid> {
    let v = value.trim().to_ascii_lowercase();
    if v.is_empty() || v.len() > MAX_LABEL_LEN {
        return Err(invalid(
            field,
            format!("'{v}' must be 1 to {MAX_LABEL_LEN} characters"),
        ));
    }
    let ok = v.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || b == b'_'
            || (dots && b == b'.')
    });
    if !ok {
        let allowed = if dots {
            "a-z, 0-9, '-', '_' and '.'"
        } else {
            "a-z, 0-9, '-' and '_'"
        };
        return Err(invalid(field, format!("'{v}' may hold only {allowed}")));
    }
    Ok(v)
}

/// Checks and normalises an endpoint: the service as a lower-case name with a trailing dot, the
/// address in its canonical form, region and capabilities lower-cased, capabilities sorted and
/// deduplicated.
pub fn check_endpoint(input: &EndpointInput) -> Result<EndpointInput, Invalid> {
    let service = zones::normalize_name("service", &input.service)?;
    if service == "." {
        return Err(invalid("service", "must name a service, not the root"));
    }
    if service.split('.').any(|l| l == "*") {
        return Err(invalid("service", "must not hold a wildcard label"));
    }
    let address = input
        .address
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| invalid("address", "is not an IPv4 or IPv6 address"))?
        .to_string();
    if !(1..=u64::from(u16::MAX)).contains(&input.port) {
        return Err(invalid("port", "must be 1 to 65535"));
    }
    let (region, capabilities) = check_affinity(
        ("region", "capabilities"),
        &input.region,
        &input.capabilities,
        MAX_CAPABILITIES,
    )?;
    if !(1..=MAX_WEIGHT).contains(&input.weight) {
        return Err(invalid("weight", format!("must be 1 to {MAX_WEIGHT}")));
    }
    Ok(EndpointInput {
        service,
        address,
        port: input.port,
        region,
        capabilities,
        weight: input.weight,
    })
}

/// The id of `node`'s endpoint: a hash of the node, service, address and port.
pub fn endpoint_id(node: &str, e: &EndpointInput) -> String {
    let mut h = Sha256::new();
    for part in [node, &e.service, &e.address, &e.port.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d: [u8; 32] = h.finalize().into();
    hex(&d[..12])
}

/// Adds (or refreshes) `node`'s checked endpoint `e`; returns it.
pub fn put_endpoint(
    tx: &mut Transaction<'_>,
    node: &str,
    e: &EndpointInput,
    hlc: Hlc,
) -> Result<Endpoint, DocError> {
    let port = u16::try_from(e.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| DocError::Invalid(format!("port {} is not 1 to 65535", e.port)))?;
    let parent = match tx.get(ROOT, node)? {
        Some((Value::Object(ObjType::Map), o)) => o,
        _ => tx.put_object(ROOT, node, ObjType::Map)?,
    };
    let id = endpoint_id(node, e);
    // A new version of the whole endpoint, replacing the versions this node has seen.
    let obj = tx.put_object(&parent, id.as_str(), ObjType::Map)?;
    tx.put(&obj, "service", e.service.as_str())?;
    tx.put(&obj, "address", e.address.as_str())?;
    tx.put(&obj, "port", u64::from(port))?;
    tx.put(&obj, "region", e.region.as_str())?;
    let caps = tx.put_object(&obj, "capabilities", ObjType::Map)?;
    for c in &e.capabilities {
        tx.put(&caps, c.as_str(), true)?;
    }
    tx.put(&obj, "weight", u64::from(e.weight))?;
    tx.put(&obj, "hlc", pack_hlc(hlc))?;
    Ok(Endpoint {
        id,
        node: node.to_string(),
        service: e.service.clone(),
        address: e.address.clone(),
        port,
        region: e.region.clone(),
        capabilities: e.capabilities.clone(),
        weight: e.weight,
        hlc: hlc.to_string(),
    })
}

/// Deletes `node`'s endpoint `id`; false when it is not there.
pub fn delete_endpoint(tx: &mut Transaction<'_>, node: &str, id: &str) -> Result<bool, DocError> {
    let parents: Vec<ObjId> = tx
        .get_all(ROOT, node)?
        .into_iter()
        .filter(|(v, _)| matches!(v, Value::Object(ObjType::Map)))
        .map(|(_, o)| o)
        .collect();
    let mut found = false;
    for parent in parents {
        if tx.get(&parent, id)?.is_some() {
            tx.delete(&parent, id)?;
            found = true;
        }
    }
    Ok(found)
}

/// Every valid endpoint, ordered by id.
pub fn endpoints(doc: &Automerge) -> Vec<Endpoint> {
    EndpointsIndex::read(doc).endpoints()
}

/// Every node map of the document (two replicas of one node that each created its map leave
/// both side by side: read them all), with the node id.
fn node_maps(doc: &Automerge) -> Vec<(String, ObjId)> {
    let mut out = Vec::new();
    for node in doc.keys(ROOT) {
        let Ok(parents) = doc.get_all(ROOT, node.as_str()) else {
            continue;
        };
        for (v, parent) in parents {
            if matches!(v, Value::Object(ObjType::Map)) {
                out.push((node.clone(), parent));
            }
        }
    }
    out
}

/// The newest valid version of endpoint `id` under any node (an id is derived from its node,
/// so only that node's entry is valid; the others are checked all the same).
fn read_one(doc: &Automerge, maps: &[(String, ObjId)], id: &str) -> Option<(u64, Endpoint)> {
    let mut best: Option<(u64, Endpoint)> = None;
    for (node, parent) in maps {
        let Some(found) = newest_map(doc, parent, id).and_then(|o| endpoint_of(doc, node, id, &o))
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(hlc, _)| found.0 > *hlc) {
            best = Some(found);
        }
    }
    best
}

/// Every valid endpoint of the document, kept up to date from where changes wrote
/// ([`crate::docs::Replica::take_touched`]) instead of read again on every look: DNS reads the
/// endpoints after each change and SNRL on each query, and a read of the whole document grew
/// with the endpoints.
#[derive(Clone, Debug, Default)]
pub struct EndpointsIndex {
    by_id: BTreeMap<String, (u64, Endpoint)>,
}

impl EndpointsIndex {
    /// Reads every endpoint of `doc`.
    pub fn read(doc: &Automerge) -> Self {
        let mut by_id: BTreeMap<String, (u64, Endpoint)> = BTreeMap::new();
        for (node, parent) in node_maps(doc) {
            for id in doc.keys(&parent) {
                let Some(found) =
                    newest_map(doc, &parent, &id).and_then(|o| endpoint_of(doc, &node, &id, &o))
                else {
                    continue;
                };
                match by_id.get(&id) {
                    Some((hlc, _)) if *hlc >= found.0 => {}
                    _ => {
                        by_id.insert(id, found);
                    }
                }
            }
        }
        EndpointsIndex { by_id }
    }

    /// Reads again the endpoints `paths` name (node id, then endpoint id; a node id alone
    /// reads everything again). An endpoint no longer in the document (deleted) leaves the
    /// index, so the index stays equal to a fresh [`EndpointsIndex::read`].
    pub fn refresh(&mut self, doc: &Automerge, paths: impl IntoIterator<Item = Vec<String>>) {
        let mut ids: Vec<String> = Vec::new();
        for p in paths {
            match p.get(1) {
                Some(id) => ids.push(id.clone()),
                None if !p.is_empty() => {
                    *self = EndpointsIndex::read(doc);
                    return;
                }
                None => {}
            }
        }
        if ids.is_empty() {
            return;
        }
        ids.sort();
        ids.dedup();
        let maps = node_maps(doc);
        for id in ids {
            match read_one(doc, &maps, &id) {
                Some(found) => {
                    self.by_id.insert(id, found);
                }
                None => {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// Every endpoint, ordered by id.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.by_id.values().map(|(_, e)| e.clone()).collect()
    }

    /// Endpoint `id`.
    pub fn get(&self, id: &str) -> Option<&Endpoint> {
        self.by_id.get(id).map(|(_, e)| e)
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The endpoints of `service` (compared after normalisation), ordered by id; none when `service`
/// is not a valid name.
pub fn endpoints_for(doc: &Automerge, service: &str) -> Vec<Endpoint> {
    let Ok(service) = zones::normalize_name("service", service) else {
        return Vec::new();
    };
    endpoints(doc)
        .into_iter()
        .filter(|e| e.service == service)
        .collect()
}

/// Finds an endpoint by id (reads that id under each node, not every endpoint).
pub fn find_endpoint(doc: &Automerge, id: &str) -> Option<Endpoint> {
    read_one(doc, &node_maps(doc), id).map(|(_, e)| e)
}

fn capabilities_of(doc: &Automerge, obj: &ObjId) -> Vec<String> {
    let Ok(Some((Value::Object(ObjType::Map), caps))) = doc.get(obj, "capabilities") else {
        return Vec::new();
    };
    doc.keys(&caps)
        .filter(|k| {
            matches!(doc.get(&caps, k.as_str()), Ok(Some((Value::Scalar(v), _))) if matches!(v.as_ref(), ScalarValue::Boolean(true)))
        })
        .collect()
}

/// Reads one version of an endpoint (normalised) with its packed HLC; `None` when it fails
/// [`check_endpoint`] or is stored under another id than [`endpoint_id`] gives.
fn endpoint_of(doc: &Automerge, node: &str, id: &str, obj: &ObjId) -> Option<(u64, Endpoint)> {
    let stored = EndpointInput {
        service: str_of(doc, obj, "service")?,
        address: str_of(doc, obj, "address")?,
        port: uint_of(doc, obj, "port")?,
        region: str_of(doc, obj, "region").unwrap_or_default(),
        capabilities: capabilities_of(doc, obj),
        weight: u32::try_from(uint_of(doc, obj, "weight")?).ok()?,
    };
    let e = check_endpoint(&stored).ok()?;
    if endpoint_id(node, &e) != id {
        return None;
    }
    let hlc = uint_of(doc, obj, "hlc").unwrap_or(0);
    Some((
        hlc,
        Endpoint {
            id: id.to_string(),
            node: node.to_string(),
            service: e.service,
            address: e.address,
            port: u16::try_from(e.port).ok()?,
            region: e.region,
            capabilities: e.capabilities,
            weight: e.weight,
            hlc: unpack_hlc(hlc).to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use libp2p_identity::{Keypair, PeerId};

    use super::*;
    use crate::docs::{DocId, Replica};
    use crate::mesh::Role;

    fn hlc(n: u64) -> Hlc {
        Hlc {
            wall_ms: 1_700_000_000_000 + n,
            counter: 0,
        }
    }

    fn input() -> EndpointInput {
        EndpointInput {
            service: "API.Shop.Mesh".into(),
            address: "10.0.0.7".into(),
            port: 8080,
            region: "EU-West".into(),
            capabilities: vec!["GPU".into(), "http2".into(), "gpu".into()],
            weight: 100,
        }
    }

    fn put(doc: &mut Automerge, node: &str, e: &EndpointInput, t: u64) -> Endpoint {
        let mut tx = doc.transaction();
        let out = put_endpoint(&mut tx, node, e, hlc(t)).expect("put");
        tx.commit();
        out
    }

    #[test]
    fn good_input_is_normalised() {
        let e = check_endpoint(&input()).expect("valid");
        assert_eq!(e.service, "api.shop.mesh.");
        assert_eq!(e.address, "10.0.0.7");
        assert_eq!(e.region, "eu-west");
        assert_eq!(e.capabilities, ["gpu", "http2"]);
        let v6 = EndpointInput {
            address: " 2001:DB8:0:0::1 ".into(),
            region: String::new(),
            capabilities: vec![],
            ..input()
        };
        let v6 = check_endpoint(&v6).expect("valid");
        assert_eq!(v6.address, "2001:db8::1");
        assert_eq!(v6.region, "");
    }

    #[test]
    fn json_input_takes_defaults_and_refuses_unknown_fields() {
        let e: EndpointInput =
            serde_json::from_str(r#"{"service":"a.mesh","address":"10.0.0.1","port":80}"#)
                .expect("parse");
        assert_eq!(e.weight, DEFAULT_WEIGHT);
        assert!(e.region.is_empty() && e.capabilities.is_empty());
        let bad = serde_json::from_str::<EndpointInput>(
            r#"{"service":"a.mesh","address":"10.0.0.1","port":80,"colour":"red"}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, EndpointInput)> = vec![
            (
                "service",
                EndpointInput {
                    service: "".into(),
                    ..input()
                },
            ),
            (
                "service",
                EndpointInput {
                    service: "*.shop.mesh".into(),
                    ..input()
                },
            ),
            (
                "service",
                EndpointInput {
                    service: "bad name.mesh".into(),
                    ..input()
                },
            ),
            (
                "address",
                EndpointInput {
                    address: "shop.example".into(),
                    ..input()
                },
            ),
            (
                "address",
                EndpointInput {
                    address: "10.0.0.1:80".into(),
                    ..input()
                },
            ),
            ("port", EndpointInput { port: 0, ..input() }),
            (
                "port",
                EndpointInput {
                    port: 65_536,
                    ..input()
                },
            ),
            (
                "region",
                EndpointInput {
                    region: "eu west".into(),
                    ..input()
                },
            ),
            (
                "region",
                EndpointInput {
                    region: "r".repeat(65),
                    ..input()
                },
            ),
            (
                "capabilities",
                EndpointInput {
                    capabilities: vec!["ok".into(), "".into()],
                    ..input()
                },
            ),
            (
                "capabilities",
                EndpointInput {
                    capabilities: vec!["no/slash".into()],
                    ..input()
                },
            ),
            (
                "capabilities",
                EndpointInput {
                    capabilities: (0..33).map(|i| format!("c{i}")).collect(),
                    ..input()
                },
            ),
            (
                "weight",
                EndpointInput {
                    weight: 0,
                    ..input()
                },
            ),
            (
                "weight",
                EndpointInput {
                    weight: 1001,
                    ..input()
                },
            ),
        ];
        for (field, bad) in cases {
            let err = check_endpoint(&bad).expect_err(field);
            assert_eq!(err.field, field, "{bad:?}: {err}");
        }
        let dotted = EndpointInput {
            capabilities: vec!["tls.1-3".into()],
            ..input()
        };
        assert!(check_endpoint(&dotted).is_ok());
    }

    #[test]
    fn endpoint_id_depends_on_node_service_address_and_port_only() {
        let e = check_endpoint(&input()).expect("valid");
        let id = endpoint_id("node-a", &e);
        assert_eq!(id.len(), 24);
        let reweighted = EndpointInput {
            weight: 7,
            ..e.clone()
        };
        assert_eq!(endpoint_id("node-a", &reweighted), id);
        assert_ne!(endpoint_id("node-b", &e), id);
        let other_port = EndpointInput { port: 8081, ..e };
        assert_ne!(endpoint_id("node-a", &other_port), id);
    }

    #[test]
    fn endpoint_put_reads_back_and_deletes() {
        let mut doc = Automerge::new();
        let e = check_endpoint(&input()).expect("valid");
        let other = check_endpoint(&EndpointInput {
            service: "db.shop.mesh".into(),
            ..input()
        })
        .expect("valid");
        let put_a = put(&mut doc, "node-a", &e, 1);
        let put_b = put(&mut doc, "node-b", &other, 2);
        assert_eq!(put_a.port, 8080);
        assert_eq!(put_a.hlc, hlc(1).to_string());

        let mut all = vec![put_a.clone(), put_b.clone()];
        all.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(endpoints(&doc), all);
        assert_eq!(endpoints_for(&doc, "API.shop.mesh"), vec![put_a.clone()]);
        assert_eq!(endpoints_for(&doc, "db.shop.mesh."), vec![put_b.clone()]);
        assert!(endpoints_for(&doc, "nothing.mesh").is_empty());
        assert!(endpoints_for(&doc, "bad name").is_empty());
        assert_eq!(find_endpoint(&doc, &put_a.id), Some(put_a.clone()));

        // Re-announcing refreshes the one entry.
        let heavier = EndpointInput {
            weight: 300,
            ..e.clone()
        };
        put(&mut doc, "node-a", &heavier, 3);
        let found = find_endpoint(&doc, &put_a.id).expect("still there");
        assert_eq!(found.weight, 300);
        assert_eq!(endpoints(&doc).len(), 2);

        let mut tx = doc.transaction();
        assert!(!delete_endpoint(&mut tx, "node-b", &put_a.id).expect("delete"));
        assert!(delete_endpoint(&mut tx, "node-a", &put_a.id).expect("delete"));
        assert!(!delete_endpoint(&mut tx, "node-a", &put_a.id).expect("delete"));
        tx.commit();
        assert_eq!(find_endpoint(&doc, &put_a.id), None);
        assert_eq!(endpoints(&doc), [put_b]);
    }

    #[test]
    fn concurrent_versions_resolve_to_the_newest_hlc() {
        let e = check_endpoint(&input()).expect("valid");
        let mut base = Automerge::new();
        let first = put(&mut base, "node-a", &e, 1);
        let mut older = base.fork();
        let mut newer = base.fork();
        put(
            &mut newer,
            "node-a",
            &EndpointInput {
                weight: 9,
                ..e.clone()
            },
            9,
        );
        put(
            &mut older,
            "node-a",
            &EndpointInput {
                weight: 5,
                ..e.clone()
            },
            5,
        );
        // Whichever side merges the other, the version with the higher HLC is read.
        for (mut left, mut right) in [(older.fork(), newer.fork()), (newer.fork(), older.fork())] {
            left.merge(&mut right).expect("merge");
            let found = find_endpoint(&left, &first.id).expect("present");
            assert_eq!(found.weight, 9);
            assert_eq!(found.hlc, hlc(9).to_string());
            assert_eq!(endpoints(&left).len(), 1);
        }

        // Two forks that each created the node's map: both are read, newest entry wins.
        let mut x = Automerge::new();
        let mut y = Automerge::new();
        put(
            &mut x,
            "node-a",
            &EndpointInput {
                weight: 2,
                ..e.clone()
            },
            2,
        );
        put(
            &mut y,
            "node-a",
            &EndpointInput {
                weight: 4,
                ..e.clone()
            },
            4,
        );
        let other = check_endpoint(&EndpointInput {
            port: 9090,
            ..input()
        })
        .expect("valid");
        put(&mut x, "node-a", &other, 3);
        x.merge(&mut y).expect("merge");
        let all = endpoints(&x);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(find_endpoint(&x, &first.id).map(|f| f.weight), Some(4));
    }

    #[test]
    fn invalid_stored_entries_are_skipped() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let node = tx.put_object(ROOT, "node-a", ObjType::Map).expect("node");
        let e = check_endpoint(&input()).expect("valid");
        let id = endpoint_id("node-a", &e);
        let obj = tx
            .put_object(&node, id.as_str(), ObjType::Map)
            .expect("obj");
        tx.put(&obj, "service", "api.shop.mesh.").expect("put");
        tx.put(&obj, "address", "10.0.0.7").expect("put");
        tx.put(&obj, "port", 0_u64).expect("put");
        tx.put(&obj, "weight", 100_u64).expect("put");
        let wrong_id = tx.put_object(&node, "abc", ObjType::Map).expect("obj");
        tx.put(&wrong_id, "service", "api.shop.mesh.").expect("put");
        tx.put(&wrong_id, "address", "10.0.0.7").expect("put");
        tx.put(&wrong_id, "port", 8080_u64).expect("put");
        tx.put(&wrong_id, "weight", 100_u64).expect("put");
        tx.put(&node, "junk", "text").expect("put");
        tx.commit();
        assert!(endpoints(&doc).is_empty());
    }

    fn member() -> (Keypair, String) {
        let key = Keypair::generate_ed25519();
        let id = key.public().to_peer_id().to_string();
        (key, id)
    }

    /// An admin and a member, and the roster that holds them.
    fn admin_and_member() -> ((Keypair, String), (Keypair, String), HashMap<PeerId, Role>) {
        let (a, b) = (member(), member());
        let roster = [
            (a.0.public().to_peer_id(), Role::Admin),
            (b.0.public().to_peer_id(), Role::Member),
        ]
        .into_iter()
        .collect();
        (a, b, roster)
    }

    #[test]
    fn endpoint_under_another_nodes_id_is_rejected() {
        let ((a_key, a_id), (_, b_id), roster) = admin_and_member();
        let e = check_endpoint(&input()).expect("valid");
        let mut ra = Replica::new(DocId::Endpoints);
        let own = ra
            .change(&a_key, |tx| put_endpoint(tx, &a_id, &e, hlc(1)).map(|_| ()))
            .expect("change")
            .expect("not empty");
        let foreign = ra
            .change(&a_key, |tx| put_endpoint(tx, &b_id, &e, hlc(2)).map(|_| ()))
            .expect("change")
            .expect("not empty");
        let mut rb = Replica::new(DocId::Endpoints);
        let out = rb.receive(vec![own, foreign], &roster).expect("receive");
        assert_eq!(out.applied.len(), 1, "{out:?}");
        assert_eq!(out.rejected.len(), 1, "{out:?}");
        assert_eq!(out.rejected[0].1.as_str(), "not_writer");
        let seen = endpoints(rb.doc());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].node, a_id);
        assert_eq!(seen[0].id, endpoint_id(&a_id, &e));
    }

    #[test]
    fn the_index_follows_puts_re_puts_and_deletes_as_a_fresh_read_would() {
        let ((a_key, a_id), (b_key, b_id), roster) = admin_and_member();
        let mut ra = Replica::new(DocId::Endpoints);
        let mut rb = Replica::new(DocId::Endpoints);
        rb.track_touched();
        let mut ix = EndpointsIndex::read(rb.doc());
        let mut at = 0;
        let mut step =
            |ra: &mut Replica,
             rb: &mut Replica,
             key: &Keypair,
             f: &dyn Fn(&mut Transaction<'_>, u64) -> Result<(), DocError>| {
                at += 1;
                let t = at;
                let c = ra
                    .change(key, |tx| f(tx, t))
                    .expect("change")
                    .expect("not empty");
                let out = rb.receive(vec![c], &roster).expect("receive");
                assert_eq!(out.applied.len(), 1, "{out:?}");
            };
        let e = |port: u64, weight: u32| EndpointInput {
            port,
            weight,
            ..check_endpoint(&input()).expect("valid")
        };
        // A's first endpoint (creates A's map), a second, then B's.
        step(&mut ra, &mut rb, &a_key, &|tx, t| {
            put_endpoint(tx, &a_id, &e(80, 100), hlc(t)).map(|_| ())
        });
        step(&mut ra, &mut rb, &a_key, &|tx, t| {
            put_endpoint(tx, &a_id, &e(81, 100), hlc(t)).map(|_| ())
        });
        step(&mut ra, &mut rb, &b_key, &|tx, t| {
            put_endpoint(tx, &b_id, &e(80, 100), hlc(t)).map(|_| ())
        });
        let touched = rb.take_touched().expect("tracked");
        ix.refresh(rb.doc(), touched);
        assert_eq!(ix.endpoints(), endpoints(rb.doc()));
        assert_eq!(ix.len(), 3);
        // Re-announced with another weight: one entry, the new weight.
        step(&mut ra, &mut rb, &a_key, &|tx, t| {
            put_endpoint(tx, &a_id, &e(80, 7), hlc(t)).map(|_| ())
        });
        let touched = rb.take_touched().expect("tracked");
        assert!(
            touched.iter().all(|p| p.len() >= 2),
            "an endpoint write names its entry: {touched:?}"
        );
        ix.refresh(rb.doc(), touched);
        assert_eq!(ix.endpoints(), endpoints(rb.doc()));
        let id = endpoint_id(&a_id, &e(80, 7));
        assert_eq!(ix.get(&id).map(|x| x.weight), Some(7));
        // Deleted: gone from the index too.
        let gone = endpoint_id(&a_id, &e(81, 100));
        step(&mut ra, &mut rb, &a_key, &|tx, _| {
            delete_endpoint(tx, &a_id, &gone).map(|_| ())
        });
        let touched = rb.take_touched().expect("tracked");
        ix.refresh(rb.doc(), touched);
        assert_eq!(ix.endpoints(), endpoints(rb.doc()));
        assert!(ix.get(&gone).is_none());
        assert_eq!(ix.len(), 2);
        assert_eq!(find_endpoint(rb.doc(), &id).map(|x| x.weight), Some(7));
        assert_eq!(find_endpoint(rb.doc(), &gone), None);
    }
}
