//! DNS-over-HTTPS (RFC 8484) on its own listener: `GET /dns-query?dns=` (base64url) and
//! `POST /dns-query` (`application/dns-message`), HTTP/1.1 and HTTP/2 (h2c, or h2 over TLS
//! when a certificate is configured), bodies capped at 65,535 bytes, a cap on concurrent
//! connections (and on one client's share of them), and an idle timeout: a connection that has
//! not had a request answered for `idle` is closed, whether it sends nothing, answers HTTP/2
//! pings forever, or trickles a request body a byte at a time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use hickory_proto::op::Message;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::engine::Engine;
use crate::metrics::{RcodeCounters, Transport};

/// The DoH media type.
pub const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message.
pub const MAX_MESSAGE: usize = 65_535;

/// Loads a PEM certificate chain and private key into a TLS acceptor offering h2 and HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[derive(Clone)]
struct DohState {
    engine: Arc<Engine>,
    counters: RcodeCounters,
}

/// The DoH routes.
pub fn router(engine: Arc<Engine>) -> Router {
    let counters = engine.metrics.rcodes(Transport::Doh);
    Router::new()
        .route("/dns-query", get(doh_get).post(doh_post))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE))
        .with_state(DohState { engine, counters })
}

fn problem(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{message}\n"),
    )
        .into_response()
}

async fn doh_get(
    State(st): State<DohState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(dns) = q.get("dns") else {
        return problem(StatusCode::BAD_REQUEST, "missing the dns query parameter");
    };
    let trimmed = dns.trim_end_matches('=');
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed) {
        Ok(bytes) if bytes.len() <= MAX_MESSAGE => answer(&st, &bytes).await,
        Ok(_) => problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "dns message longer than 65535 bytes",
        ),
        Err(_) => problem(StatusCode::BAD_REQUEST, "dns parameter is not base64url"),
    }
}

async fn doh_post(State(st): State<DohState>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case(DNS_MESSAGE)
    {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/dns-message",
        );
    }
    answer(&st, &body).await
}

async fn answer(st: &DohState, bytes: &[u8]) -> Response {
    let arrived = Instant::now();
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        st.engine.metrics.malformed.inc();
        return problem(StatusCode::BAD_REQUEST, "not a DNS query");
    }
    let Some(answer) = st.engine.answer_packet(bytes).await else {
        return problem(StatusCode::BAD_REQUEST, "not a DNS message");
    };
    if answer.rcode == hickory_proto::op::ResponseCode::FormErr && Message::from_vec(bytes).is_err()
    {
        return problem(StatusCode::BAD_REQUEST, "not a DNS message");
    }
    st.counters.answered(answer.rcode, arrived);
    let mut r = (StatusCode::OK, answer.bytes.clone()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", answer.min_ttl)) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r
}

/// Serves DoH on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = router(engine.clone());
    crate::tcp::accept_capped(
        listener,
        &engine,
        max_connections,
        shutdown,
        move |stream| {
            let _ = stream.set_nodelay(true);
            serve_connection(stream, app.clone(), tls.clone(), idle)
        },
    )
    .await;
}

/// When a connection last had a request answered.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Returns once `idle` has passed since the last answer (or the start).
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let since = last.elapsed();
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    tls: Option<TlsAcceptor>,
    idle: Duration,
) {
    use tower::ServiceExt;
    let activity = Activity::new();
    let svc = TowerToHyperService::new(
        ServiceExt::<axum::http::Request<hyper::body::Incoming>>::map_response(app, {
            let activity = activity.clone();
            move |r| {
                activity.touch();
                r
            }
        }),
    );
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle))
        .keep_alive_timeout(idle);
    // The connection ends when it has gone `idle` without an answer: dropping it closes the
    // socket (hyper's own timers only cover reading HTTP/1 headers and unanswered pings).
    match tls {
        Some(acceptor) => {
            let Ok(Ok(stream)) = tokio::time::timeout(idle, acceptor.accept(stream)).await else {
                return;
            };
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                _ = activity.idle_for(idle) => {}
            }
        }
        None => {
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                _ = activity.idle_for(idle) => {}
            }
        }
    }
}
