//! `/snrl`: service endpoints and signed, ranked resolution (DESIGN.md §7, §10).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use voike_protocol::endpoints::EndpointInput;

use super::{ApiError, ApiState, parse_json};
use crate::state::StateError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointQuery {
    service: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /snrl/endpoints[?service=NAME]`.
pub async fn list_endpoints(
    State(state): State<ApiState>,
    query: Result<Query<EndpointQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut endpoints = state.state.endpoints();
    if let Some(service) = q.service {
        let service = voike_protocol::zones::normalize_name("service", &service)
            .map_err(|e| ApiError::from(StateError::from(e)))?;
        endpoints.retain(|e| e.service == service);
    }
    let limit = super::page::limit(q.limit)?;
    let (endpoints, next) =
        super::page::page(endpoints, |e| e.id.as_str(), q.after.as_deref(), limit);
    Ok(Json(json!({ "endpoints": endpoints, "next": next })).into_response())
}

/// `POST /snrl/endpoints`: registers an endpoint of this node; the answer carries a `warning`
/// when no served zone holds the service's name (DNS will not answer it).
pub async fn register_endpoint(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: EndpointInput = parse_json(body, "endpoint", None)?;
    let endpoint = state.state.register_endpoint(input).await?;
    let mut body = json!({ "endpoint": endpoint });
    // Accepted (SNRL ranks it), but a name outside every zone never reaches DNS: say so.
    if !state.dns.answers_service(&state.state, &endpoint.service) {
        body["warning"] = json!(format!(
            "no zone holds {}: DNS will not answer it; SNRL will",
            endpoint.service
        ));
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /snrl/endpoints/{id}`.
pub async fn delete_endpoint(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let endpoint = state.state.delete_endpoint(&id).await?;
    Ok(Json(json!({ "endpoint": endpoint })).into_response())
}

/// `POST /snrl/resolve {domain, client: {region, capabilities}}`: ranked candidates signed by
/// this node.
pub async fn resolve(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let query: voike_protocol::snrl::Query = parse_json(body, "resolve request", None)?;
    voike_protocol::zones::normalize_name("domain", &query.domain)
        .map_err(|e| ApiError::from(StateError::from(e)))?;
    let answer =
        state.dns.snrl.resolve(&query).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
    Ok(Json(answer).into_response())
}
