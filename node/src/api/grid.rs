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
use crate::grid::{CancelError, Grid, ModuleError, annotate};

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

/// A job view as this node shows it: admins' cancellations applied and the waiting hint set
/// from the live nodes this node knows ([`annotate`]).
fn shown(
    state: &ApiState,
    mut view: voike_protocol::jobs::JobView,
) -> voike_protocol::jobs::JobView {
    annotate(
        &mut view,
        &state.hypermesh.live_nodes(),
        &state.state.authority().admins,
    );
    view
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
    let view = state.state.job(&job.id, now_ms()).map(|v| shown(&state, v));
    Ok((StatusCode::CREATED, Json(json!({ "job": view }))).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    state: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /grid/jobs[?state=pending|running|done|failed|cancelled][&limit=N&after=ID]`: paged by
/// job id (see [`super::page`]); `next` is the cursor of the following page.
pub async fn list_jobs(
    State(state): State<ApiState>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let live = state.hypermesh.live_nodes();
    let admins = state.state.authority().admins.clone();
    let mut jobs = state.state.jobs(now_ms());
    for j in &mut jobs {
        annotate(j, &live, &admins);
    }
    if let Some(want) = q.state {
        if !["pending", "running", "done", "failed", "cancelled"].contains(&want.as_str()) {
            return Err(ApiError::bad_request(
                "state must be pending, running, done, failed or cancelled",
            ));
        }
        jobs.retain(|j| serde_json::to_value(j.state).ok() == Some(json!(want)));
    }
    let limit = super::page::limit(q.limit)?;
    let (jobs, next) = super::page::page(jobs, |j| j.job.id.as_str(), q.after.as_deref(), limit);
    Ok(Json(json!({ "jobs": jobs, "next": next })).into_response())
}

/// `GET /grid/jobs/{id}`.
pub async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.state.job(&id, now_ms()) {
        Some(job) => Ok(Json(json!({ "job": shown(&state, job) })).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {id}"),
        )),
    }
}

/// `POST /grid/jobs/{id}/cancel`: this node cancels job `id`, when it accepted the job or is an
/// admin (403 `forbidden` otherwise; 404 `not_found`; 409 `job_done` when every segment is
/// done). Answers the job, state `cancelled`; cancelling it again answers the same.
pub async fn cancel_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = grid(&state)?.cancel(&id).await.map_err(|e| match e {
        CancelError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        CancelError::Done(_) => ApiError::new(StatusCode::CONFLICT, "job_done", e.to_string()),
        CancelError::Forbidden { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        CancelError::State(e) => e.into(),
    })?;
    Ok(Json(json!({ "job": view })).into_response())
}
