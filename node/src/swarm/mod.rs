//! The libp2p swarm and its one event loop.
//!
//! [`EventLoop`] owns the `Swarm` and the [`MeshState`](crate::mesh::MeshState); everything else
//! talks to it through a [`SwarmHandle`] (rust-libp2p's `file-sharing` example pattern).
//!
//! # Layout
//! - [`behaviour`]: the composed `NetworkBehaviour` and the transport stack.
//! - [`codec`]: the size-capped postcard codec of `/voike/sync/1`.
//! - [`event_loop`]: connection handling, the membership handshake, dialing with backoff and the
//!   commands served to the admin API.

pub mod behaviour;
pub mod codec;
pub mod event_loop;
pub mod forget;
pub mod pmp;

pub use event_loop::{Command, EventLoop, InviteError, Session, SwarmHandle, SyncParts};
