//! `/vdns`: zones and records of the replicated `zones` document (DESIGN.md §10 shapes).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use voike_protocol::zones::RecordInput;

use super::{ApiError, ApiState, parse_json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    id: String,
    domain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOwner {
    node: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewRecord {
    zone_id: String,
    record: RecordInput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecordQuery {
    zone_id: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

pub async fn list_zones(State(state): State<ApiState>) -> Response {
    Json(json!({ "zones": state.state.zones() })).into_response()
}

pub async fn create_zone(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: NewZone = parse_json(body, "zone", None)?;
    let zone = state.state.create_zone(&req.id, &req.domain).await?;
    Ok((StatusCode::CREATED, Json(json!({ "zone": zone }))).into_response())
}

pub async fn add_owner(
    State(state): State<ApiState>,
    Path(zone): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: NewOwner = parse_json(body, "owner", None)?;
    let zone = state.state.add_owner(&zone, &req.node).await?;
    Ok(Json(json!({ "zone": zone })).into_response())
}

pub async fn remove_owner(
    State(state): State<ApiState>,
    Path((zone, node)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let zone = state.state.remove_owner(&zone, &node).await?;
    Ok(Json(json!({ "zone": zone })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    domain: String,
    node: String,
}

pub async fn add_delegation(
    State(state): State<ApiState>,
    Path(zone): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: Delegation = parse_json(body, "delegation", None)?;
    let zone = state
        .state
        .delegate(&zone, &req.domain, &req.node, true)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "zone": zone }))).into_response())
}

pub async fn remove_delegation(
    State(state): State<ApiState>,
    Path(zone): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: Delegation = parse_json(body, "delegation", None)?;
    let zone = state
        .state
        .delegate(&zone, &req.domain, &req.node, false)
        .await?;
    Ok(Json(json!({ "zone": zone })).into_response())
}

pub async fn list_records(
    State(state): State<ApiState>,
    query: Result<Query<RecordQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let zone = q
        .zone_id
        .ok_or_else(|| ApiError::bad_request("missing `zoneId` query parameter"))?;
    let limit = super::page::limit(q.limit)?;
    // Only the page is read from the document, not the whole zone.
    match state.state.records_page(&zone, q.after.as_deref(), limit) {
        Some((records, more)) => {
            let next = if more {
                records.last().map(|r| r.id.clone())
            } else {
                None
            };
            Ok(Json(json!({ "records": records, "next": next })).into_response())
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no zone {zone}"),
        )),
    }
}

pub async fn add_record(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Whether the request names a TTL (`RecordInput` fills in the default): a record that exists
    // keeps its TTL unless one is given.
    let ttl_given = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .is_some_and(|v| v["record"].get("ttl").is_some());
    let req: NewRecord = parse_json(body, "record request", None)?;
    let (record, before) = state
        .state
        .add_record(&req.zone_id, req.record, !ttl_given)
        .await?;
    let result = match &before {
        None => "added",
        Some(old) if *old == record => "unchanged",
        Some(_) => "updated",
    };
    let mut answer = json!({ "record": record, "result": result });
    if let Some(old) = before.filter(|_| result == "updated") {
        answer["previous"] = json!(old);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn delete_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.state.delete_record(&id).await?;
    Ok(Json(json!({ "record": record })).into_response())
}

/// `GET /vdns/zones/{zone}/export`: the zone as a BIND zone file (by zone id or domain).
pub async fn export_zone(
    State(state): State<ApiState>,
    Path(zone): Path<String>,
) -> Result<Response, ApiError> {
    match state.dns.export(&state.state, &zone).await {
        Some(text) => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/dns; charset=utf-8")],
            text,
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no zone {zone}"),
        )),
    }
}
