//! Integration tests of the VVM through its public API, driven by the programs in
//! `examples/*.wat` (WebAssembly text: no wasm toolchain needed).
//!
//! - `sandbox`: limits and capabilities — every [`Status`] from the example that causes it, and
//!   bad jobs not disturbing good ones.
//! - `entries`: the two entry styles, argument checks, the Fibonacci example's values.
//! - `compile`: size cap, invalid modules, WAT, linking, timeout, content hash, disk cache,
//!   never panicking on arbitrary bytes.
//! - `json`: the serde shape of jobs and outcomes.

mod compile;
mod entries;
mod json;
mod sandbox;

use std::time::Duration;

use voike_runtime::{JobSpec, Module, Outcome, Runtime, RuntimeConfig, Status};

pub const FIB: &str = include_str!("../../../examples/fib.wat");
pub const CPU: &str = include_str!("../../../examples/cpu.wat");
pub const MEMHOG: &str = include_str!("../../../examples/memhog.wat");
pub const FOREVER: &str = include_str!("../../../examples/forever.wat");
pub const HELLO: &str = include_str!("../../../examples/hello.wat");
pub const OPENFILE: &str = include_str!("../../../examples/openfile.wat");
pub const RECURSE: &str = include_str!("../../../examples/recurse.wat");

/// Default settings but a small pool, enough for one test's jobs.
pub fn small() -> RuntimeConfig {
    RuntimeConfig {
        max_instances: 64,
        ..RuntimeConfig::default()
    }
}

/// A runtime with [`small`] settings.
pub fn runtime() -> Runtime {
    runtime_with(small())
}

pub fn runtime_with(cfg: RuntimeConfig) -> Runtime {
    Runtime::new(cfg).expect("runtime starts")
}

pub fn compile(rt: &Runtime, wat: &str) -> Module {
    rt.compile(wat.as_bytes()).expect("example compiles")
}

/// Runs `entry(args)` with default limits.
pub fn call(rt: &Runtime, module: &Module, entry: &str, args: &[&str]) -> Outcome {
    rt.run(module, &JobSpec::call(entry, args))
}

pub fn assert_ok(outcome: &Outcome) {
    assert_eq!(
        outcome.status,
        Status::Ok,
        "stderr: {}",
        String::from_utf8_lossy(&outcome.stderr)
    );
}

/// Generous upper bound for things that should take milliseconds, on a loaded 2-core CI box.
pub const SLACK: Duration = Duration::from_secs(5);

pub const P: u64 = 1_000_000_007;

/// F(n) mod P, the slow obvious way.
pub fn fib_ref(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, (a + b) % P);
    }
    a
}

/// (F(start) + ... + F(end-1)) mod P, the slow obvious way.
pub fn segment_ref(start: u64, end: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    let mut sum = 0;
    for i in 0..end {
        if i >= start {
            sum = (sum + a) % P;
        }
        (a, b) = (b, (a + b) % P);
    }
    sum
}

#[test]
fn runtime_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Runtime>();
    shareable::<Module>();
}
