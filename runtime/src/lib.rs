//! The VVM: WebAssembly workloads for the VOIKE mesh (not built yet).
//!
//! This crate will hold the wasmtime engine (pooling allocator, epoch interruption, fuel),
//! capability grants, per-job memory and time limits, and the module cache. See
//! `docs/ARCHITECTURE.md` for what exists today.
