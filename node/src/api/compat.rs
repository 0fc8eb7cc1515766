//! API names (docs/api.md, "Naming and units"): every key the API sends is camelCase.
//!
//! - [`camel_keys`] renames the keys of bodies built from data that keeps snake_case names
//!   elsewhere (Hypermesh events, recorded in the ledger as they are signed; the swarm's
//!   sessions).
//! - Deprecated duplicates: the snake_case names DESIGN.md §10 gave some response fields before
//!   the API became camelCase are sent too, beside the new ones, for this release only
//!   ([`with_old_names`]). The next release drops them.

use serde::Serialize;
use serde_json::Value;
use voike_protocol::api::camel_case;

use super::ApiError;

/// `GET /mesh/self`: `(camelCase, deprecated snake_case)`.
pub const SELF_FIELDS: &[(&str, &str)] = &[
    ("nodeId", "node_id"),
    ("meshId", "mesh_id"),
    ("listenAddrs", "listen_addrs"),
    ("apiAddr", "api_addr"),
    ("dnsAddr", "dns_addr"),
    ("dohAddr", "doh_addr"),
];

/// Each member of `GET /mesh/nodes`.
pub const NODE_FIELDS: &[(&str, &str)] = &[("nodeId", "node_id"), ("rttMs", "rtt_ms")];

/// `POST /ledger/verify`.
pub const VERIFY_FIELDS: &[(&str, &str)] = &[("headsHash", "heads_hash")];

/// `body` as JSON, with each field of `fields` also under its deprecated name.
pub fn with_old_names(body: &impl Serialize, fields: &[(&str, &str)]) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
    add_old_names(&mut value, fields);
    Ok(value)
}

/// Copies each `(new, old)` field of the object `value` to `old`.
pub fn add_old_names(value: &mut Value, fields: &[(&str, &str)]) {
    if let Value::Object(o) = value {
        for (new, old) in fields {
            if let Some(v) = o.get(*new).cloned() {
                o.insert((*old).to_string(), v);
            }
        }
    }
}

/// `value` with the keys of its top-level object in camelCase (values as they are: nested
/// objects are data, such as a ledger entry's body).
pub fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (camel_case(&k), v)).collect())
        }
        other => other,
    }
}

/// Each item of `items` as JSON, its top-level keys in camelCase ([`camel_keys`]).
pub fn camel_items<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| camel_keys(serde_json::to_value(i).unwrap_or(Value::Null)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_camel_case_and_values_stay() {
        let v = camel_keys(serde_json::json!({
            "kind": "spawn_advisory", "take_over": "a_b", "remote_addr": { "inner_key": 1 }
        }));
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "spawn_advisory", "takeOver": "a_b", "remoteAddr": { "inner_key": 1 }
            })
        );
        assert_eq!(camel_case("last_run_ago_ms"), "lastRunAgoMs");
        assert_eq!(camel_case("nodeId"), "nodeId");
    }

    #[test]
    fn old_names_carry_the_same_values() {
        let mut v = serde_json::json!({ "nodeId": "a", "rttMs": null, "state": "self" });
        add_old_names(&mut v, NODE_FIELDS);
        assert_eq!(
            v,
            serde_json::json!({
                "nodeId": "a", "node_id": "a", "rttMs": null, "rtt_ms": null, "state": "self"
            })
        );
    }
}
