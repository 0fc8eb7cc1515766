//! Starting and stopping a node: files in the data directory, the store, the swarm, the API,
//! signals and graceful shutdown.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use voike_storage::{Store, keyfile};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::hypermesh::Hypermesh;
use crate::ledger::LedgerHandle;
use crate::mesh::MeshState;
use crate::metrics::Metrics;
use crate::state::StateHandle;
use crate::swarm::{EventLoop, SyncParts, behaviour};
use crate::sync;

/// File names inside the data directory.
pub const KEY_FILE: &str = "node.key";
pub const TOKEN_FILE: &str = "admin.token";
pub const DB_FILE: &str = "state.redb";
/// Written at start with the bound admin API address, removed on clean shutdown.
pub const API_ADDR_FILE: &str = "api.addr";

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!("cannot create data directory {} (data_dir)", dir.display())
            })?;
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!(
            "data directory {} is not a directory (data_dir)",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o002 != 0 {
        anyhow::bail!(
            "data directory {} is writable by everyone; run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Runs a node until SIGINT/SIGTERM (returns `Ok`) or a fatal error such as a refused join.
///
/// The listen ports are probed first, before anything in the data directory is created or
/// opened, so a busy port ends start-up at once and leaves no new mesh behind.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::ports::check_listen_ports(&config)?;
    let data_dir = config.data_dir();
    prepare_data_dir(&data_dir)?;
    // Absolute from here on: the module cache and the scratch directories need absolute paths,
    // and a relative `--data-dir` must keep meaning the directory it named at start.
    let data_dir = std::fs::canonicalize(&data_dir)
        .with_context(|| format!("cannot resolve data directory {}", data_dir.display()))?;
    let (key, created) = keyfile::load_or_create_identity(&data_dir.join(KEY_FILE))?;
    let token = keyfile::load_or_create_token(&data_dir.join(TOKEN_FILE))?;
    let peer_id = key.public().to_peer_id();
    info!(node = %peer_id, data_dir = %data_dir.display(), new_identity = created, "starting voiked");

    let (store, store_thread) = Store::open(&data_dir.join(DB_FILE))?;
    let result = run_with_store(&config, &data_dir, key, token, store).await;

    // Every Store clone is gone once run_with_store returned: the writer drains and exits.
    let joined = tokio::task::spawn_blocking(move || store_thread.join());
    if tokio::time::timeout(config.shutdown_timeout, joined)
        .await
        .is_err()
    {
        error!("store did not close within the shutdown timeout");
    } else {
        info!("store closed");
    }
    let _ = std::fs::remove_file(data_dir.join(API_ADDR_FILE));
    result
}

async fn run_with_store(
    config: &Config,
    data_dir: &Path,
    key: libp2p::identity::Keypair,
    token: String,
    store: Store,
) -> anyhow::Result<()> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let ledger = LedgerHandle::spawn_with_notify(key.clone(), store.clone(), changed.clone())?;
    let metrics = Arc::new(Metrics::new());
    let state = StateHandle::open(
        key.clone(),
        store.clone(),
        ledger.clone(),
        metrics.clone(),
        changed,
        config.sync.max_future_skew,
        config.grid.retention,
    )
    .map_err(|e| anyhow::anyhow!("cannot load replicated state: {e}"))?;
    state.set_reserved_domain(&crate::dns::lower_fqdn(&config.dns.mesh_domain));
    state.repair_orphans().await;
    let mesh = MeshState::open(
        key.clone(),
        store,
        ledger.clone(),
        config.p2p.join.as_deref(),
    )
    .await?;
    let listener = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot bind the admin API to {} (api.listen)",
                config.api.listen
            )
        })?;
    let api_addr = listener.local_addr()?;
    let swarm = behaviour::build(
        key.clone(),
        behaviour::BuildOptions {
            ping_interval: config.p2p.ping_interval,
            ping_timeout: config.p2p.ping_timeout,
            handshake_timeout: config.p2p.handshake_timeout,
            sync_timeout: config.sync.request_timeout,
            metrics: metrics.clone(),
            relay: behaviour::RelayLimits {
                max_reservations: if config.p2p.relay.serve {
                    config.p2p.relay.max_reservations
                } else {
                    0
                },
                max_circuits: if config.p2p.relay.serve {
                    config.p2p.relay.max_circuits
                } else {
                    0
                },
                max_circuits_per_peer: config.p2p.relay.max_circuits_per_peer,
                reservation_duration: config.p2p.relay.reservation_duration,
                max_circuit_duration: config.p2p.relay.circuit_duration,
                max_circuit_bytes: config.p2p.relay.circuit_bytes,
            },
            port_mapping: config.p2p.port_mapping
                && behaviour::port_mapping_useful(&config.p2p.listen),
        },
    )?;
    let (sync_tx, sync_rx) = tokio::sync::mpsc::channel(sync::QUEUE);
    let (health_tx, health_rx) = tokio::sync::mpsc::channel(16);
    // Nodes with the grid on say so in their health reports: segments go only to them.
    let mut hypermesh_config = config.hypermesh.clone();
    hypermesh_config.clock_bound = config.sync.max_future_skew;
    if config.grid.enabled
        && !hypermesh_config
            .capabilities
            .iter()
            .any(|c| c == crate::grid::GRID_CAPABILITY)
    {
        hypermesh_config
            .capabilities
            .push(crate::grid::GRID_CAPABILITY.to_string());
    }
    let (hypermesh, hyper_handle) = Hypermesh::new(
        hypermesh_config,
        key.clone(),
        ledger.clone(),
        metrics.clone(),
        health_tx,
    );
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let node_dns = Arc::new(
        crate::dns::start(
            config,
            key.clone(),
            state.clone(),
            hyper_handle.clone(),
            &metrics,
            &tracker,
            cancel.child_token(),
        )
        .await?,
    );
    let (event_loop, handle) = EventLoop::new(
        swarm,
        mesh,
        config.p2p.clone(),
        api_addr.to_string(),
        SyncParts {
            state: state.clone(),
            config: config.sync.clone(),
            tx: sync_tx,
            hyper_tx: hyper_handle.tx.clone(),
            health_rx,
        },
    )?;
    // Written whole or not at all (a reader never sees an empty file): a temporary file,
    // then a rename.
    let tmp = data_dir.join(format!("{API_ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{api_addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, data_dir.join(API_ADDR_FILE)))
        .with_context(|| format!("cannot write {}", data_dir.join(API_ADDR_FILE).display()))?;
    info!(%api_addr, "admin API listening");

    let mut swarm_task = tracker.spawn(event_loop.run(cancel.child_token()));
    tracker.spawn(hypermesh.run(cancel.child_token()));
    tracker.spawn(state.clone().run_retention(cancel.child_token()));
    let sync_cancel = cancel.child_token();
    let sync_worker = sync::run(state.clone(), handle.clone(), sync_rx);
    tracker.spawn(async move {
        tokio::select! {
            _ = sync_cancel.cancelled() => {}
            _ = sync_worker => {}
        }
    });
    let grid = if config.grid.enabled {
        let g = &config.grid;
        let grid = crate::grid::Grid::new(
            key.clone(),
            state.clone(),
            hyper_handle.clone(),
            handle.clone(),
            metrics.clone(),
            crate::grid::GridConfig {
                lease: g.lease,
                max_parallel: if g.max_parallel == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    g.max_parallel
                },
                scratch_root: data_dir.join("scratch"),
            },
            g.runtime_config(data_dir),
            cancel.child_token(),
        )?;
        tracker.spawn(grid.clone().run(cancel.child_token()));
        Some(grid)
    } else {
        None
    };
    tracker.spawn(crate::dns::register_self(
        node_dns.clone(),
        config.clone(),
        state.clone(),
        handle.clone(),
        cancel.child_token(),
    ));
    let app = api::router(ApiState {
        grid,
        dns: node_dns,
        swarm: handle.clone(),
        ledger,
        state,
        hypermesh: hyper_handle,
        token: Arc::new(token),
    });
    let api_cancel = cancel.child_token();
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { api_cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            error!(%error, "admin API failed");
        }
    });
    tracker.close();

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => { info!("SIGINT received; shutting down"); Ok(()) }
        _ = sigterm.recv() => { info!("SIGTERM received; shutting down"); Ok(()) }
        res = &mut swarm_task => match res {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("swarm task failed: {e}")),
        },
    };
    say_goodbye(&handle, config.shutdown_timeout).await;
    cancel.cancel();
    if tokio::time::timeout(config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            timeout = %humantime::format_duration(config.shutdown_timeout),
            "tasks did not stop within the shutdown timeout"
        );
    }
    result
}

/// A clean stop says goodbye before anything is cancelled: a signed leave to every connected
/// member, so that they record `peer_left` rather than a failure. The wait for their answers is
/// bounded by `/voike/leave/1`'s timeout and by half the shutdown timeout: a node that nobody
/// answers still stops in time.
async fn say_goodbye(swarm: &crate::swarm::SwarmHandle, shutdown_timeout: std::time::Duration) {
    let wait = (shutdown_timeout / 2).min(std::time::Duration::from_millis(
        voike_protocol::wire::LEAVE_TIMEOUT_MS,
    ));
    match tokio::time::timeout(wait, swarm.goodbye()).await {
        Ok(Some(g)) if g.acked == g.sent => {
            if g.sent > 0 {
                info!(members = g.sent, "said goodbye to the members");
            }
        }
        Ok(Some(g)) => warn!(
            members = g.sent,
            acked = g.acked,
            "members did not answer the goodbye in time; stopping anyway"
        ),
        Ok(None) => {}
        Err(_) => warn!(
            wait_ms = wait.as_millis() as u64,
            "members did not answer the goodbye in time; stopping anyway"
        ),
    }
}
