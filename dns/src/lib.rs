//! DNS for the VOIKE mesh (not built yet).
//!
//! This crate will answer DNS for mesh zones from the node's local replica: a hickory-server
//! request handler over the replicated zones, UDP/TCP and DNS-over-HTTPS listeners, forwarding with
//! a serve-stale cache for other names, SNRL answers and BIND zone export. It reads zones through a
//! trait and never imports `voiked`. See `docs/ARCHITECTURE.md` for what exists today.
