//! `/vvm` and `/grid`: WebAssembly modules and grid jobs (DESIGN.md §9, §10).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use voike_protocol::jobs::JobInput;

use super::{ApiError, ApiState, body_bytes, parse_json};
use crate::grid::{Grid, ModuleError};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn grid(state: &ApiState) -> Result<&std::sync::Arc<Grid>, ApiError> {
    state.grid.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "grid_disabled",
            "grid jobs are off on this node (grid.enabled = false)",
        )
    })
}

/// `POST /vvm/modules`: the body is the module, WebAssembly binary or WAT text. A module over
/// one of the module limits is refused before compiling, 400 `module_over_limit`, the message
/// naming the limit and the value found.
pub async fn add_module(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty body: send the module's bytes"));
    }
    let info = grid(&state)?
        .add_module(body.to_vec())
        .await
        .map_err(|e| match e {
            ModuleError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            ModuleError::OverLimit(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "module_over_limit", m)
            }
            ModuleError::Compile(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_module", m),
            ModuleError::Unusable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "grid_unusable",
                e.to_string(),
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        })?;
    Ok((StatusCode::CREATED, Json(json!({ "module": info }))).into_response())
}

/// `POST /grid/jobs`.
pub async fn submit_job(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: JobInput = parse_json(body, "job", None)?;
    let job = grid(&state)?.submit(input).await?;
    let view = state.state.job(&job.id, now_ms());
    Ok((StatusCode::CREATED, Json(json!({ "job": view }))).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    state: Option<String>,
}

/// `GET /grid/jobs[?state=pending|running|done|failed]`.
pub async fn list_jobs(
    State(state): State<ApiState>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut jobs = state.state.jobs(now_ms());
    if let Some(want) = q.state {
        if !["pending", "running", "done", "failed"].contains(&want.as_str()) {
            return Err(ApiError::bad_request(
                "state must be pending, running, done or failed",
            ));
        }
        jobs.retain(|j| serde_json::to_value(j.state).ok() == Some(json!(want)));
    }
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// `GET /grid/jobs/{id}`.
pub async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.state.job(&id, now_ms()) {
        Some(job) => Ok(Json(json!({ "job": job })).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {id}"),
        )),
    }
}
