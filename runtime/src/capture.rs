//! [`Capture`]: a guest's stdout or stderr, kept in memory up to a byte limit.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, which traps the guest when it is full, a capture
//! accepts every write, keeps the first `limit` bytes and remembers that it dropped the rest:
//! a chatty job still finishes, and its outcome says the output was truncated.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much a guest may hand over in one write; it is told this much room is always free.
const WRITE_BUDGET: usize = 64 << 10;

/// A bounded in-memory sink shared between the guest's stream and the host.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                bytes: Vec::new(),
                limit,
                truncated: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panic while holding the lock cannot leave the buffer inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, data: &[u8]) {
        let mut captured = self.lock();
        let room = captured.limit.saturating_sub(captured.bytes.len());
        if data.len() > room {
            captured.truncated = true;
        }
        let kept = data.len().min(room);
        captured.bytes.extend_from_slice(&data[..kept]);
    }

    /// Takes what was captured so far, and whether anything was dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut captured = self.lock();
        (std::mem::take(&mut captured.bytes), captured.truncated)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::Capture;

    #[test]
    fn capture_keeps_the_first_bytes_and_flags_the_rest() {
        let capture = Capture::new(5);
        capture.push(b"hel");
        capture.push(b"lo world");
        let (bytes, truncated) = capture.take();
        assert_eq!(bytes, b"hello");
        assert!(truncated);
    }

    #[test]
    fn capture_within_its_limit_is_not_truncated() {
        let capture = Capture::new(5);
        capture.push(b"hello");
        assert_eq!(capture.take(), (b"hello".to_vec(), false));
    }
}
