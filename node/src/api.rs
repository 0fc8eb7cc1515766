//! The admin HTTP API (axum), bound to loopback.
//!
//! `GET /healthz` and `GET /readyz` are open; every other path needs the admin token from
//! `<data-dir>/admin.token`, as `Authorization: Bearer TOKEN` or `x-voike-admin-token: TOKEN`.
//! Errors are JSON `{"error": {"code", "message"}}` with the matching status, including 404 for
//! unknown paths, 405 for wrong methods and 400 for bodies that do not parse.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use voike_protocol::api::{ErrorBody, ErrorDetail, Health, InviteRequest, NodesResponse};
use voike_protocol::mesh::Role;

use crate::swarm::{InviteError, SwarmHandle};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest invite lifetime.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct ApiState {
    pub swarm: SwarmHandle,
    pub token: Arc<String>,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// The router with every route, the auth layer and the JSON fallbacks.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/mesh/self", get(mesh_self))
        .route("/mesh/nodes", get(mesh_nodes))
        .route("/mesh/invites", post(mesh_invite))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    bearer.or_else(|| {
        headers
            .get("x-voike-admin-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match presented_token(request.headers()) {
        Some(t) if same(t.as_bytes(), state.token.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing admin token: send `Authorization: Bearer TOKEN` (the token is in <data-dir>/admin.token)",
        )
        .into_response(),
    }
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.swarm.ready().await {
        Json(Health {
            status: "ready".into(),
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready".into(),
            }),
        )
            .into_response()
    }
}

async fn mesh_self(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let info = state
        .swarm
        .self_info()
        .await
        .ok_or_else(ApiError::unavailable)?;
    Ok(Json(info).into_response())
}

async fn mesh_nodes(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let nodes = state
        .swarm
        .nodes()
        .await
        .ok_or_else(ApiError::unavailable)?;
    Ok(Json(NodesResponse { nodes }).into_response())
}

async fn mesh_invite(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, e.body_text())
    })?;
    let req: InviteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InviteRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid invite request: {e}")))?
    };
    let ttl = match req.ttl.as_deref() {
        None => DEFAULT_INVITE_TTL,
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid `ttl` {t:?}: {e} (use e.g. \"1h\" or \"30m\")"
            ))
        })?,
    };
    if ttl < Duration::from_secs(1) || ttl > MAX_INVITE_TTL {
        return Err(ApiError::bad_request("`ttl` must be between 1s and 30days"));
    }
    let role = match req.role.as_deref() {
        None => Role::Member,
        Some(r) => r
            .parse::<Role>()
            .map_err(|e| ApiError::bad_request(format!("invalid `role`: {e}")))?,
    };
    match state
        .swarm
        .invite(ttl, role)
        .await
        .ok_or_else(ApiError::unavailable)?
    {
        Ok(resp) => Ok((StatusCode::CREATED, Json(resp)).into_response()),
        Err(e @ InviteError::NotAdmin(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            e.to_string(),
        )),
        Err(e @ (InviteError::NotMember | InviteError::NoAddress)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}
