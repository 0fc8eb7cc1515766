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
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use voike_protocol::api::{
    ErrorBody, ErrorDetail, Health, InviteRequest, LedgerEntries, NodesResponse,
};
use voike_protocol::mesh::Role;

use crate::ledger::{LedgerHandle, anchor_json, entry_json};
use crate::state::{StateError, StateHandle};
use crate::swarm::{InviteError, SwarmHandle};

mod compat;
mod grid;
mod hypermesh;
mod page;
mod snrl;
mod trust;
mod vdns;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest invite lifetime.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct ApiState {
    pub swarm: SwarmHandle,
    pub ledger: LedgerHandle,
    pub state: StateHandle,
    pub hypermesh: crate::hypermesh::HypermeshHandle,
    pub dns: Arc<crate::dns::NodeDns>,
    /// `None` when `grid.enabled = false`.
    pub grid: Option<Arc<crate::grid::Grid>>,
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

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn unavailable() -> Self {
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
        .route("/ledger/recent", get(ledger_recent))
        .route("/ledger/verify", post(ledger_verify))
        .route("/ledger/anchor", post(ledger_anchor))
        .route("/ledger/{id}", get(ledger_get))
        .route("/hypermesh/status", get(hypermesh::status))
        .route("/hypermesh/routes", get(hypermesh::routes))
        .route("/hypermesh/events", get(hypermesh::events))
        .route("/hypermesh/agents", get(hypermesh::agents))
        .route("/vdns/zones", get(vdns::list_zones).post(vdns::create_zone))
        .route("/vdns/zones/{zone}/owners", post(vdns::add_owner))
        .route(
            "/vdns/zones/{zone}/owners/{node}",
            axum::routing::delete(vdns::remove_owner),
        )
        .route(
            "/vdns/zones/{zone}/delegations",
            post(vdns::add_delegation).delete(vdns::remove_delegation),
        )
        .route(
            "/mesh/grants",
            get(trust::grants)
                .post(trust::add_grant)
                .delete(trust::remove_grant),
        )
        .route("/mesh/members/{node}/revoke", post(trust::revoke))
        .route("/trust/status", get(trust::status))
        .route("/trust/events", get(trust::events))
        .route("/trust/anchors", get(trust::anchors))
        .route("/trust/sessions", get(trust::sessions))
        .route("/vdns/zones/{zone}/export", get(vdns::export_zone))
        .route(
            "/snrl/endpoints",
            get(snrl::list_endpoints).post(snrl::register_endpoint),
        )
        .route(
            "/snrl/endpoints/{id}",
            axum::routing::delete(snrl::delete_endpoint),
        )
        .route("/snrl/resolve", post(snrl::resolve))
        .route(
            "/vvm/modules",
            post(grid::add_module).layer(DefaultBodyLimit::max(
                voike_protocol::sync::MAX_MODULE_BYTES,
            )),
        )
        .route(
            "/grid/jobs",
            get(grid::list_jobs)
                .post(grid::submit_job)
                .layer(DefaultBodyLimit::max(256 * 1024)),
        )
        .route("/grid/jobs/{id}", get(grid::get_job))
        .route("/grid/jobs/{id}/cancel", post(grid::cancel_job))
        .route(
            "/vdns/records",
            get(vdns::list_records).post(vdns::add_record),
        )
        .route(
            "/vdns/records/{id}",
            axum::routing::delete(vdns::delete_record),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            StateError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            StateError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StateError::Invalid(i) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("invalid `{}`: {}", i.field, i.message),
            ),
            StateError::Internal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

/// Checks that `q` holds only `allowed` keys; returns a reader of non-negative integer values.
pub(crate) fn numeric_query<'a>(
    q: &'a std::collections::HashMap<String, String>,
    allowed: &[&str],
) -> Result<impl Fn(&str) -> Result<Option<u64>, ApiError> + 'a, ApiError> {
    for key in q.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{key}` (use {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(move |name: &str| -> Result<Option<u64>, ApiError> {
        q.get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "`{name}` must be a non-negative integer, got {v:?}"
                    ))
                })
            })
            .transpose()
    })
}

/// The request body, or the error for a body that could not be read (413 when too large).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, e.body_text())
    })
}

/// Reads a JSON body; an empty body is `default` when given, else an error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
    default: Option<T>,
) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return default.ok_or_else(|| ApiError::bad_request(format!("missing {what} (JSON body)")));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))
}

/// The metrics (no token: loopback only, no secrets): OpenMetrics 1.0, or the Prometheus text
/// format 0.0.4 when the `Accept` header prefers `text/plain` (see [`crate::metrics::Format`]).
async fn metrics(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let format = crate::metrics::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let s = state.state.clone();
    let text = tokio::task::spawn_blocking(move || {
        s.refresh_gauges();
        s.metrics().encode_as(format)
    })
    .await
    .unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        text,
    )
        .into_response()
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.swarm.ready().await {
        // Ready, and serving; stored changes that could not be applied are named here (and in
        // the log and `voike_doc_changes_unapplied`) until they are dealt with.
        let problems = state.state.unapplied();
        if problems.is_empty() {
            return Json(Health {
                status: "ready".into(),
            })
            .into_response();
        }
        Json(serde_json::json!({ "status": "ready", "problems": problems })).into_response()
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
    let mut info = state
        .swarm
        .self_info()
        .await
        .ok_or_else(ApiError::unavailable)?;
    info.dns_addr = Some(state.dns.server.dns_addr.to_string());
    info.doh_addr = state.dns.server.doh_addr.map(|a| a.to_string());
    Ok(Json(compat::with_old_names(&info, compat::SELF_FIELDS)?).into_response())
}

async fn mesh_nodes(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let nodes = state
        .swarm
        .nodes()
        .await
        .ok_or_else(ApiError::unavailable)?;
    let mut body = compat::with_old_names(&NodesResponse { nodes }, &[])?;
    for node in body["nodes"].as_array_mut().into_iter().flatten() {
        compat::add_old_names(node, compat::NODE_FIELDS);
    }
    Ok(Json(body).into_response())
}

async fn mesh_invite(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: InviteRequest = parse_json(body, "invite request", Some(InviteRequest::default()))?;
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

/// Most entries one `GET /ledger/recent` returns.
pub const MAX_LEDGER_PAGE: usize = 1000;

fn storage_error(e: voike_storage::StoreError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
}

/// `?limit=N` (default 50, at most 1000) and `?from=POS` (entries stored at that local position
/// or later, oldest first; without it, the newest first).
async fn ledger_recent(
    State(state): State<ApiState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let num = numeric_query(&q, &["limit", "from"])?;
    let limit = num("limit")?.unwrap_or(50);
    if limit == 0 || limit > MAX_LEDGER_PAGE as u64 {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LEDGER_PAGE}"
        )));
    }
    let store = state.ledger.store().clone();
    let from = num("from")?;
    let rows = tokio::task::spawn_blocking(move || match from {
        Some(a) => store.ledger_since(a, limit as usize),
        None => store.ledger_recent(limit as usize),
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(storage_error)?;
    let entries = rows
        .iter()
        .map(|(pos, e)| entry_json(e, Some(*pos)))
        .collect();
    Ok(Json(LedgerEntries { entries }).into_response())
}

async fn ledger_get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut hash = [0u8; 32];
    let valid = id.len() == 64
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id
            .as_bytes()
            .chunks(2)
            .zip(hash.iter_mut())
            .all(|(pair, out)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map(|b| *out = b)
                    .is_some()
            });
    if !valid {
        return Err(ApiError::bad_request(
            "ledger entry id must be 64 hex characters",
        ));
    }
    match state
        .ledger
        .store()
        .ledger_get(&hash)
        .map_err(storage_error)?
    {
        Some(e) => Ok(Json(serde_json::json!({ "entry": entry_json(&e, None) })).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no ledger entry {id}"),
        )),
    }
}

/// Verifies every chain, and that every document change this node's chain records is stored
/// and applied; `ok` is false on any fault of either kind.
async fn ledger_verify(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.ledger.store().clone();
    let docs = state.state.clone();
    let (report, changes) = tokio::task::spawn_blocking(move || {
        let report = store.ledger_verify().map_err(storage_error)?;
        let changes = docs.check_recorded_changes().map_err(ApiError::from)?;
        Ok::<_, ApiError>((report, changes))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let mut body = compat::with_old_names(&report, compat::VERIFY_FIELDS)?;
    body["ok"] = serde_json::json!(report.ok && changes.faults.is_empty());
    body["changes"] = serde_json::json!({
        "recorded": changes.recorded,
        "repaired": changes.repaired,
        "expired": changes.expired,
        "faults": changes.faults,
    });
    Ok(Json(body).into_response())
}

async fn ledger_anchor(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let anchor = state.ledger.anchor().await.map_err(storage_error)?;
    Ok(Json(serde_json::json!({ "anchor": anchor_json(&anchor) })).into_response())
}
