//! Simulated networks of VOIKE mesh nodes (not built yet).
//!
//! This crate will drive the sans-I/O state machines of `voike-protocol` for many nodes over a
//! simulated network (latency, loss, partitions, NAT, churn) on a virtual clock, with seeded,
//! deterministic scenarios and reports. See `docs/ARCHITECTURE.md` for what exists today.
