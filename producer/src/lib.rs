//! `tally-producer`: accepts client lines over TCP, numbers and stashes them in
//! Redis Cluster, ACKs them once replicated, and flushes them to Kafka.
//!
//! Exactly-once on this side rests on the invariants in `docs/architecture.md`:
//! one Lua call assigns sns and appends per batch (1); nothing is ACKed or sent to
//! Kafka before `WAIT` confirms the stash on a replica (2); `flushed` advances only
//! over contiguous Kafka confirmations, failures rewind (3); every client has one
//! fenced owner, and dead owners' clients are adopted (6).
//!
//! The library's entry point is [`run`]: it serves a bound listener until the
//! shutdown future completes, then drains. `main.rs` only parses arguments.
//!
//! Each rule has one module: `connection` (read, stash, ACK, hand over),
//! `flush_state` (one client's go-back-N flush state, pure), `flusher` (the task
//! that does the flush state's I/O), `ownership` (claim, adopt, release, fence),
//! `takeover` (heartbeats and when to adopt whom), `budget` (memory reservations),
//! `registry` (client slots), `shared` (what the tasks share), `tls` (the
//! listener's TLS configuration, its reload and handshakes). This file only
//! wires them together; no module imports it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tally_common::observe::{self, Readiness};
use tally_common::redis::{connect, RedisOpError, Replication};
use tally_common::service::Role;
use tally_common::stash::StashStore;
use tally_common::{Keys, Settings};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::budget::MemoryBudget;
use crate::ownership::Ownership;
use crate::shared::Shared;

mod budget;
mod connection;
mod delivery;
mod flush_state;
mod flusher;
pub use flusher::SILENT_KAFKA;
pub mod limits;
mod memory_release;
mod ownership;
pub use tally_common::protocol;
mod registry;
mod send_window;
mod shared;
mod takeover;
mod tls;

/// Capacity of the queue from connections to the flusher, in batches.
const FLUSH_QUEUE: usize = 1_024;

/// Why the producer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// Redis Cluster could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis operation failed at start-up.
    #[error("redis: {0}")]
    RedisOp(#[from] RedisOpError),
    /// The Kafka producer could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The client-token secrets cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] tally_common::auth::AuthError),
    /// `[producer.tls]` cannot be used.
    #[error("tls: {0}")]
    Tls(#[from] tally_common::tls::TlsError),
}

/// The configured instance id, or a generated one (`p-<pid>-<random>`; the
/// binary's skeleton has already written its generated one into the settings).
pub fn instance_id(settings: &Settings) -> String {
    settings
        .producer
        .instance_id
        .clone()
        .unwrap_or_else(|| Role::Producer.generate_instance_id())
}

/// Serves `listener` until `shutdown` completes, then shuts down gracefully: stop
/// accepting, finish in-flight batches, flush stashes within
/// `producer.shutdown_timeout_ms`, release clients and leave the registry.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProducerError> {
    run_with_readiness(settings, listener, shutdown, Readiness::default()).await
}

/// [`run`], reporting readiness: `redis` (a master answers `PING`) and `kafka`
/// (the `client_message` topic's metadata is fetched).
pub async fn run_with_readiness(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
) -> Result<(), ProducerError> {
    let (redis_ready, kafka_ready) = (readiness.condition("redis"), readiness.condition("kafka"));
    let instance = instance_id(&settings);
    let auth = tally_common::auth::from_settings(&settings.producer.auth)?;
    let tls = match &settings.producer.tls {
        Some(tls) => Some(Arc::new(tls::ServerTls::load(tls)?)),
        None => None,
    };
    if settings.producer.auth.mode == tally_common::settings::AuthMode::None {
        warn!("producer.auth.mode = \"none\": anyone who reaches {} may store messages under any client id (docs/security.md)", settings.producer.listen);
    }
    let conn = connect(&settings.redis).await?;
    let _redis_probe = observe::redis_probe(conn.clone(), redis_ready);
    let store = StashStore::new(
        conn,
        Keys::new(&settings.redis.prefix),
        Replication::from_settings(&settings.redis),
    )
    .await?;
    let kafka = flusher::flush_producer(&settings.kafka, flusher::silent_kafka_armed())?;
    let _kafka_probe = observe::kafka_probe(
        kafka.0.clone(),
        |p| p.client(),
        settings.kafka.client_message_topic.clone(),
        kafka_ready,
    );
    let (flush_tx, flush_rx) = mpsc::channel(FLUSH_QUEUE);
    let max_auth_failures = settings.producer.max_auth_failures_per_minute;
    let shared = Arc::new(Shared {
        instance: instance.clone(),
        memory: MemoryBudget::new(settings.producer.global_backlog_bytes),
        ownership: Ownership::new(instance.clone(), store.clone()),
        settings,
        store,
        flusher: flush_tx,
        auth,
        auth_failures: limits::AuthFailures::new(max_auth_failures),
    });
    info!(instance = %instance, listen = %listener.local_addr()?, tls = tls.is_some(), auth = ?shared.settings.producer.auth.mode, "tally-producer starting");

    let (remaining_tx, mut remaining) = watch::channel(0usize);
    let stop_flusher = CancellationToken::new();
    let flusher_task = tokio::spawn(
        flusher::Flusher::new(shared.clone(), kafka, remaining_tx)
            .run(flush_rx, stop_flusher.clone()),
    );

    shared.store.heartbeat(&instance).await?;
    let readopted = takeover::adopt_from(&shared, &instance, None).await;
    if readopted > 0 {
        info!(
            readopted,
            "re-adopted this instance's clients from its previous run"
        );
    }
    let stop_ownership = CancellationToken::new();
    let ownership_task = tokio::spawn(takeover::run(shared.clone(), stop_ownership.clone()));

    let stop_reloads = CancellationToken::new();
    let reload_task = tokio::spawn(tls::reload_on_sighup(tls.clone(), stop_reloads.clone()));

    // Accept until shutdown.
    let stop_connections = CancellationToken::new();
    let connections = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(shared.settings.producer.max_connections));
    let per_address =
        limits::AddressLimit::new(shared.settings.producer.max_connections_per_address);
    let next_conn_id = AtomicU64::new(1);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let accepted = connection::Accepted {
                    address_slot: per_address.admit(peer.ip()),
                    socket,
                    peer,
                    conn_id: next_conn_id.fetch_add(1, Ordering::Relaxed),
                };
                let (shared, tls, stop) = (shared.clone(), tls.clone(), stop_connections.clone());
                connections.spawn(async move {
                    connection::handle(shared, tls, accepted, stop).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    info!("shutting down: no new connections; finishing in-flight batches");
    drop(listener);
    stop_reloads.cancel();
    let _ = reload_task.await;
    stop_connections.cancel();
    connections.close();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(shared.settings.producer.shutdown_timeout_ms);
    let _ = tokio::time::timeout_at(deadline, connections.wait()).await;

    info!("flushing stashes");
    let drained = tokio::time::timeout_at(deadline, remaining.wait_for(|&n| n == 0))
        .await
        .is_ok();
    stop_ownership.cancel();
    let _ = ownership_task.await;
    stop_flusher.cancel();
    let _ = flusher_task.await;
    if drained {
        shared.store.forget_producer(&instance).await?;
        info!("all clients flushed and released; left the producer registry");
    } else {
        // Let survivors adopt what is left now rather than after 3 heartbeats.
        shared.store.leave_for_adoption(&instance).await?;
        warn!(
            clients = *remaining.borrow(),
            "shutdown deadline passed; survivors adopt the remaining clients"
        );
    }
    Ok(())
}
