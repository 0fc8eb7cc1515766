//! The TCP listener (RFC 7766): length-prefixed messages, pipelined queries answered in order,
//! an idle timeout and a cap on concurrent connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::metrics::Transport;

/// The share of `max_connections` one client address may hold: an eighth, at least 4.
pub(crate) fn per_client_cap(max_connections: usize) -> usize {
    (max_connections / 8).max(4).min(max_connections.max(1))
}

/// Accepts connections on `listener` until the task is aborted, at most `max_connections` at
/// once and at most [`per_client_cap`] from one client address (one over a cap is closed at
/// once and counted), so that one client holding connections open cannot lock the others
/// out; each runs `handle` until it ends or `shutdown` is cancelled. Shared by the TCP and DoH
/// listeners.
pub(crate) async fn accept_capped<F, Fut>(
    listener: TcpListener,
    engine: &Engine,
    max_connections: usize,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let per_client = per_client_cap(max_connections);
    let clients: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let ip = peer.ip();
        {
            let mut c = clients.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.entry(ip).or_insert(0);
            if *n >= per_client {
                drop(c);
                engine.metrics.refused_connections.inc();
                drop(stream);
                continue;
            }
            *n += 1;
        }
        let held = ClientSlot {
            clients: clients.clone(),
            ip,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            engine.metrics.refused_connections.inc();
            drop(stream);
            continue;
        };
        let conn = handle(stream);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _held = held;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// One client address's hold on a connection slot, given back when dropped.
struct ClientSlot {
    clients: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Serves `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    max_connections: usize,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let handler = engine.clone();
    accept_capped(
        listener,
        &engine,
        max_connections,
        shutdown,
        move |stream| {
            let engine = handler.clone();
            async move {
                let _ = connection(stream, &engine, idle).await;
            }
        },
    )
    .await;
}

async fn connection(mut s: TcpStream, engine: &Engine, idle: Duration) -> std::io::Result<()> {
    let counters = engine.metrics.rcodes(Transport::Tcp);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(idle, s.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return Ok(()), // idle, closed or reset
        };
        buf.resize(len, 0);
        match tokio::time::timeout(idle, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let arrived = std::time::Instant::now();
        let Some(answer) = engine.answer_packet(&buf).await else {
            return Ok(());
        };
        let (bytes, rcode) = (&answer.bytes, answer.rcode);
        let Ok(len) = u16::try_from(bytes.len()) else {
            return Ok(());
        };
        counters.answered(rcode, arrived);
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(bytes).await?;
    }
}
