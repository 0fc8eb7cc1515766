//! `/trust`, and the admin writes of the members document: who may say what on this mesh.
//!
//! - `GET /trust/status`: revoked members, grants, refusal counts, unapplied changes, clock.
//! - `GET /trust/events`: recent trust events from the ledger, with counts by kind and reason.
//! - `GET /trust/anchors`: this node's chain heads and a signed anchor over them.
//! - `GET /trust/sessions`: every live link, its transport and what secures it.
//! - `GET|POST|DELETE /mesh/grants`, `POST /mesh/members/{node}/revoke`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, parse_json, storage_error};
use crate::ledger::{anchor_json, entry_json};

/// Ledger entries `GET /trust/events` looks through at most (newest first).
const EVENTS_SCANNED: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    domain: String,
    node: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    reason: String,
}

/// Whether a ledger entry kind is a trust event.
fn is_trust_kind(kind: &str) -> bool {
    kind.starts_with("trust.")
        || kind.starts_with("clock.")
        || matches!(kind, "member.revoke" | "member.grant" | "member.ungrant")
}

pub async fn grants(State(state): State<ApiState>) -> Response {
    let grants: Vec<Value> = state
        .state
        .authority()
        .grant_list()
        .into_iter()
        .map(|(domain, node)| json!({ "domain": domain, "node": node }))
        .collect();
    Json(json!({ "grants": grants })).into_response()
}

pub async fn add_grant(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: GrantBody = parse_json(body, "grant", None)?;
    state.state.grant(&req.domain, &req.node, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "grant": { "domain": voike_protocol::authority::norm(&req.domain), "node": req.node } })),
    )
        .into_response())
}

pub async fn remove_grant(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: GrantBody = parse_json(body, "grant", None)?;
    state.state.grant(&req.domain, &req.node, false).await?;
    Ok(Json(json!({ "removed": { "domain": voike_protocol::authority::norm(&req.domain), "node": req.node } })).into_response())
}

pub async fn revoke(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: RevokeBody = parse_json(body, "revocation", Some(RevokeBody::default()))?;
    let r = state.state.revoke(&node, &req.reason).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "revoked": { "node": node, "by": r.by, "reason": r.reason, "cutoff": r.cutoff } })),
    )
        .into_response())
}

fn revoked_json(state: &ApiState) -> Vec<Value> {
    state
        .state
        .authority()
        .revoked
        .iter()
        .map(|(node, r)| {
            json!({
                "node": node,
                "by": r.by,
                "reason": r.reason,
                "hlc": voike_protocol::zones::unpack_hlc_text(r.hlc),
                "cutoff": r.cutoff,
            })
        })
        .collect()
}

pub async fn status(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.ledger.store().clone();
    let counts = tokio::task::spawn_blocking(move || store.ledger_recent(EVENTS_SCANNED))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(storage_error)?;
    let (by_kind, by_reason) = count_events(counts.iter().map(|(_, e)| e));
    let auth = state.state.authority();
    let sessions = state.swarm.sessions().await.unwrap_or_default();
    Ok(Json(json!({
        "revoked": revoked_json(&state),
        "grants": auth.grant_list().len(),
        "events": { "byKind": by_kind, "byReason": by_reason, "scanned": counts.len() },
        "unapplied": state.state.unapplied(),
        "sessions": {
            "total": sessions.len(),
            "members": sessions.iter().filter(|s| s.member).count(),
            "relayed": sessions.iter().filter(|s| s.relayed).count(),
        },
    }))
    .into_response())
}

type Counts = (BTreeMap<String, u64>, BTreeMap<String, u64>);

fn count_events<'a>(entries: impl Iterator<Item = &'a voike_protocol::ledger::Entry>) -> Counts {
    let mut by_kind = BTreeMap::new();
    let mut by_reason = BTreeMap::new();
    for e in entries {
        if !is_trust_kind(&e.body.kind) {
            continue;
        }
        // Aggregated entries (refusal counts) say how many they stand for.
        let body: Value = serde_json::from_slice(&e.body.body).unwrap_or(Value::Null);
        let n = body["count"].as_u64().unwrap_or(1);
        *by_kind.entry(e.body.kind.clone()).or_insert(0) += n;
        if let Some(r) = body["reason"].as_str() {
            *by_reason.entry(format!("{}:{r}", e.body.kind)).or_insert(0) += n;
        }
    }
    (by_kind, by_reason)
}

pub async fn events(
    State(state): State<ApiState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("`limit` must be between 1 and 1000"))?,
    };
    let store = state.ledger.store().clone();
    let rows = tokio::task::spawn_blocking(move || store.ledger_recent(EVENTS_SCANNED))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(storage_error)?;
    let (by_kind, by_reason) = count_events(rows.iter().map(|(_, e)| e));
    let events: Vec<_> = rows
        .iter()
        .filter(|(_, e)| is_trust_kind(&e.body.kind))
        .take(limit)
        .map(|(pos, e)| entry_json(e, Some(*pos)))
        .collect();
    Ok(Json(json!({
        "events": events,
        "counts": { "byKind": by_kind, "byReason": by_reason },
        "scanned": rows.len(),
    }))
    .into_response())
}

pub async fn anchors(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.ledger.store().clone();
    let heads = tokio::task::spawn_blocking(move || store.ledger_heads())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(storage_error)?;
    let chains: Vec<Value> = heads
        .iter()
        .map(|h| {
            json!({
                "author": voike_protocol::signing::peer_id_of(&h.author)
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                "seq": h.head.seq,
                "head": voike_protocol::signing::hex(&h.head.hash),
            })
        })
        .collect();
    let anchor = state.ledger.anchor().await.map_err(storage_error)?;
    Ok(Json(json!({ "chains": chains, "anchor": anchor_json(&anchor) })).into_response())
}

pub async fn sessions(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let sessions = state
        .swarm
        .sessions()
        .await
        .ok_or_else(ApiError::unavailable)?;
    // The swarm's sessions keep Rust's snake_case names: the API's are camelCase.
    let sessions = super::compat::camel_items(&sessions);
    Ok(Json(json!({ "sessions": sessions })).into_response())
}
