//! Fault injection for black-box tests, compiled only with the `fault-injection` feature (the
//! test crate turns it on; `cargo build` and release builds do not have it).
//!
//! `VOIKE_FAULT_HOLD_WRITE=TEXT` holds every local write whose ledger body contains `TEXT` for
//! `VOIKE_FAULT_HOLD_MS` milliseconds (default 10,000) after its change was made and before it
//! is queued in the store: the window in which a concurrent write could overtake it. The daemon
//! logs `fault injection: holding a write` when it starts holding one, so a test can act then.

use std::time::Duration;

use tracing::warn;

/// Holds a write described by `body` if the environment asks for it.
pub async fn before_queue(kind: &str, body: &serde_json::Value) {
    let Ok(text) = std::env::var("VOIKE_FAULT_HOLD_WRITE") else {
        return;
    };
    if text.is_empty() || !body.to_string().contains(&text) {
        return;
    }
    let ms = std::env::var("VOIKE_FAULT_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    warn!(kind, ms, "fault injection: holding a write");
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
