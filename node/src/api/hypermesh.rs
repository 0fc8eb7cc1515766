//! `/hypermesh`: this node's samples and the mesh's health as this node sees it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState, numeric_query};

/// Most events one request returns.
pub const MAX_EVENTS_PAGE: usize = 1000;

pub async fn status(State(state): State<ApiState>) -> Response {
    Json(state.hypermesh.status()).into_response()
}

pub async fn routes(State(state): State<ApiState>) -> Response {
    Json(json!({ "routes": state.hypermesh.routes() })).into_response()
}

/// `?since=ID` (events after that id) and `?limit=N` (default and most: 1000). The events'
/// keys are camelCase; the ledger records the same bodies with their snake_case names.
pub async fn events(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let num = numeric_query(&q, &["since", "limit"])?;
    let since = num("since")?;
    let limit = num("limit")?.unwrap_or(MAX_EVENTS_PAGE as u64);
    if limit == 0 || limit > MAX_EVENTS_PAGE as u64 {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_EVENTS_PAGE}"
        )));
    }
    let events = super::compat::camel_items(&state.hypermesh.events(since, limit as usize));
    Ok(Json(json!({ "events": events })).into_response())
}

pub async fn agents(State(state): State<ApiState>) -> Response {
    Json(json!({ "agents": state.hypermesh.agents() })).into_response()
}
