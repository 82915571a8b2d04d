//! Metrics, liveness and readiness of a service, over HTTP.
//!
//! Every service (`tally-producer`, `tally-counter`, `tally-aggregator`) starts an
//! [`Observer`] on its `observe_listen` address. It installs the Prometheus recorder
//! behind the `metrics` facade and serves:
//!
//! - `GET /metrics`: every metric in Prometheus text format, each with the label
//!   `service` (`producer`, `counter`, `aggregator`);
//! - `GET /health`: `200` while the process runs (liveness);
//! - `GET /ready`: `200` only while every readiness condition the service registered
//!   holds, else `503` with the conditions that do not.
//!
//! **Invariant: readiness is never assumed.** A [`Readiness`] with no condition is
//! not ready, a new [`Condition`] starts unmet, and only the service sets it, from
//! evidence: a Redis `PING` answered, Kafka metadata of the service's topic fetched
//! (both re-checked every [`PROBE_INTERVAL`] by [`spawn_probe`]), a non-empty
//! partition assignment. Once shutdown begins ([`Observer::until_shutdown`]) the
//! service is not ready any more, whatever its conditions say, so a load balancer
//! stops sending it work while it drains.
//!
//! Metric names are defined once, in [`names`]; [`METRICS`] describes each, and a
//! test checks every one is in the table of `docs/operations.md`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{info, warn};

/// How often probes re-check Redis and Kafka.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the recorder's histograms are maintained.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Histogram buckets of latencies, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Histogram buckets of sizes (lines per batch, calls per round).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Every metric tally emits. Labels: all carry `service`; others are listed in
/// [`METRICS`].
pub mod names {
    /// Open client connections (gauge).
    pub const PRODUCER_CONNECTIONS: &str = "tally_producer_connections";
    /// Messages stored, replicated and ACKed (counter): the ingest rate.
    pub const PRODUCER_MESSAGES_ACKED: &str = "tally_producer_messages_acked_total";
    /// Messages whose Kafka delivery advanced `flushed` (counter).
    pub const PRODUCER_MESSAGES_FLUSHED: &str = "tally_producer_messages_flushed_total";
    /// Lines answered with `ERR` and not stored, by `reason` (counter).
    pub const PRODUCER_REJECTED_LINES: &str = "tally_producer_rejected_lines_total";
    /// Time from the stash call to its replicated answer, per batch (histogram).
    pub const PRODUCER_ACK_LATENCY: &str = "tally_producer_ack_latency_seconds";
    /// Lines per stash call (histogram).
    pub const PRODUCER_STASH_BATCH_LINES: &str = "tally_producer_stash_batch_lines";
    /// Stash calls that failed: `ERR unavailable` (counter).
    pub const PRODUCER_STASH_ERRORS: &str = "tally_producer_stash_errors_total";
    /// Times a connection waited for backlog room without reading (counter).
    pub const PRODUCER_BACKPRESSURE_WAITS: &str = "tally_producer_backpressure_waits_total";
    /// Kafka deliveries that failed or could not be enqueued (counter).
    pub const PRODUCER_DELIVERY_ERRORS: &str = "tally_producer_delivery_errors_total";
    /// Go-back-N rewinds after a failed delivery (counter).
    pub const PRODUCER_REWINDS: &str = "tally_producer_rewinds_total";
    /// Messages stored but not yet confirmed by Kafka, over owned clients (gauge).
    pub const PRODUCER_FLUSH_LAG: &str = "tally_producer_flush_lag_messages";
    /// Clients whose stash this instance owns (gauge).
    pub const PRODUCER_OWNED_CLIENTS: &str = "tally_producer_owned_clients";
    /// Clients adopted from a dead or restarted instance (counter).
    pub const PRODUCER_TAKEOVERS: &str = "tally_producer_takeovers_total";

    /// Counter records by `outcome`: `applied`, `duplicate`, `gap`, `dlq` (counter).
    pub const COUNTER_RECORDS: &str = "tally_counter_records_total";
    /// Committed counter transactions (counter).
    pub const COUNTER_TXN_COMMITS: &str = "tally_counter_txn_commits_total";
    /// Failed (aborted or abandoned) counter transactions (counter).
    pub const COUNTER_TXN_ABORTS: &str = "tally_counter_txn_aborts_total";
    /// Time to apply and commit one batch (histogram).
    pub const COUNTER_BATCH_SECONDS: &str = "tally_counter_batch_seconds";
    /// Batches dropped and the group rejoined after a stall (counter).
    pub const COUNTER_REJOINS: &str = "tally_counter_rejoins_total";
    /// Rewinds to the committed offsets (counter).
    pub const COUNTER_REWINDS: &str = "tally_counter_rewinds_total";
    /// Transactional producers recreated after a fatal error or timeout (counter).
    pub const COUNTER_PRODUCER_RECREATIONS: &str = "tally_counter_producer_recreations_total";
    /// Failed count scripts, retried (counter).
    pub const COUNTER_REDIS_ERRORS: &str = "tally_counter_redis_errors_total";
    /// Clients left in a gap longer than `counter.stall_after_ms` (gauge).
    pub const COUNTER_STALLED_CLIENTS: &str = "tally_counter_stalled_clients";

    /// Aggregator records by `outcome`: `applied`, `duplicate`, `dlq` (counter).
    pub const AGGREGATOR_RECORDS: &str = "tally_aggregator_records_total";
    /// Time to apply and commit one batch (histogram).
    pub const AGGREGATOR_BATCH_SECONDS: &str = "tally_aggregator_batch_seconds";
    /// Failed offset commits, rewound (counter).
    pub const AGGREGATOR_COMMIT_ERRORS: &str = "tally_aggregator_commit_errors_total";
    /// Failed count scripts, retried (counter).
    pub const AGGREGATOR_REDIS_ERRORS: &str = "tally_aggregator_redis_errors_total";

    /// Records between the read position and the end (last stable offset) of each
    /// assigned partition, by `partition` (gauge).
    pub const CONSUMER_LAG: &str = "tally_consumer_lag_records";
    /// Partitions currently assigned to this member (gauge).
    pub const CONSUMER_ASSIGNED_PARTITIONS: &str = "tally_consumer_assigned_partitions";
    /// Rebalance events by `kind`: `assign`, `revoke` (counter).
    pub const REBALANCES: &str = "tally_rebalances_total";
    /// Replicated script calls per write-combiner round (histogram).
    pub const REDIS_ROUND_CALLS: &str = "tally_redis_round_calls";
    /// 1 while `/ready` answers 200, else 0 (gauge).
    pub const READY: &str = "tally_ready";
}

/// The kind of a metric, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; rates are taken with `rate()`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric's documentation.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Labels besides `service`.
    pub labels: &'static [&'static str],
    /// What it measures (the `# HELP` text).
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric, described. `docs/operations.md` has the same table for people.
pub const METRICS: &[MetricDoc] = {
    use names::*;
    use Kind::*;
    &[
        doc(PRODUCER_CONNECTIONS, Gauge, &[], "open client connections"),
        doc(
            PRODUCER_MESSAGES_ACKED,
            Counter,
            &[],
            "messages stored, replicated and ACKed",
        ),
        doc(
            PRODUCER_MESSAGES_FLUSHED,
            Counter,
            &[],
            "messages confirmed by Kafka in sn order (flushed advanced)",
        ),
        doc(
            PRODUCER_REJECTED_LINES,
            Counter,
            &["reason"],
            "lines answered with ERR and not stored",
        ),
        doc(
            PRODUCER_ACK_LATENCY,
            Histogram,
            &[],
            "stash call to replicated answer (Lua + WAIT), per batch",
        ),
        doc(
            PRODUCER_STASH_BATCH_LINES,
            Histogram,
            &[],
            "lines per stash call",
        ),
        doc(
            PRODUCER_STASH_ERRORS,
            Counter,
            &[],
            "stash calls that failed (ERR unavailable)",
        ),
        doc(
            PRODUCER_BACKPRESSURE_WAITS,
            Counter,
            &[],
            "waits for backlog room without reading the socket",
        ),
        doc(
            PRODUCER_DELIVERY_ERRORS,
            Counter,
            &[],
            "Kafka deliveries that failed or could not be enqueued",
        ),
        doc(
            PRODUCER_REWINDS,
            Counter,
            &[],
            "go-back-N rewinds after a failed delivery",
        ),
        doc(
            PRODUCER_FLUSH_LAG,
            Gauge,
            &[],
            "messages stored but not yet confirmed by Kafka, over owned clients",
        ),
        doc(
            PRODUCER_OWNED_CLIENTS,
            Gauge,
            &[],
            "clients whose stash this instance owns",
        ),
        doc(
            PRODUCER_TAKEOVERS,
            Counter,
            &[],
            "clients adopted from a dead or restarted instance",
        ),
        doc(
            COUNTER_RECORDS,
            Counter,
            &["outcome"],
            "committed client_message records: applied, duplicate, gap, dlq",
        ),
        doc(
            COUNTER_TXN_COMMITS,
            Counter,
            &[],
            "committed Kafka transactions",
        ),
        doc(
            COUNTER_TXN_ABORTS,
            Counter,
            &[],
            "failed Kafka transactions (aborted or producer recreated)",
        ),
        doc(
            COUNTER_BATCH_SECONDS,
            Histogram,
            &[],
            "time to apply and commit one batch",
        ),
        doc(
            COUNTER_REJOINS,
            Counter,
            &[],
            "batches dropped and group rejoined after a stall",
        ),
        doc(
            COUNTER_REWINDS,
            Counter,
            &[],
            "rewinds to the committed offsets",
        ),
        doc(
            COUNTER_PRODUCER_RECREATIONS,
            Counter,
            &[],
            "transactional producers recreated",
        ),
        doc(
            COUNTER_REDIS_ERRORS,
            Counter,
            &[],
            "failed count scripts (retried)",
        ),
        doc(
            COUNTER_STALLED_CLIENTS,
            Gauge,
            &[],
            "clients left in a gap longer than counter.stall_after_ms",
        ),
        doc(
            AGGREGATOR_RECORDS,
            Counter,
            &["outcome"],
            "committed message_aggregation records: applied, duplicate, dlq",
        ),
        doc(
            AGGREGATOR_BATCH_SECONDS,
            Histogram,
            &[],
            "time to apply and commit one batch",
        ),
        doc(
            AGGREGATOR_COMMIT_ERRORS,
            Counter,
            &[],
            "failed offset commits (rewound)",
        ),
        doc(
            AGGREGATOR_REDIS_ERRORS,
            Counter,
            &[],
            "failed count scripts (retried)",
        ),
        doc(
            CONSUMER_LAG,
            Gauge,
            &["partition"],
            "records not read yet (position to last stable offset), per assigned partition",
        ),
        doc(
            CONSUMER_ASSIGNED_PARTITIONS,
            Gauge,
            &[],
            "partitions assigned to this member",
        ),
        doc(
            REBALANCES,
            Counter,
            &["kind"],
            "rebalance events: assign, revoke",
        ),
        doc(
            REDIS_ROUND_CALLS,
            Histogram,
            &[],
            "replicated script calls per write-combiner round (one WAIT each)",
        ),
        doc(READY, Gauge, &[], "1 while /ready answers 200"),
    ]
};

/// Why the observer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be built or installed (a second one).
    #[error("metrics recorder: {0}")]
    Recorder(#[from] BuildError),
}

/// The readiness conditions of one service. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    conditions: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    stopping: AtomicBool,
}

/// One readiness condition; starts unmet. Cheap to clone.
#[derive(Clone)]
pub struct Condition {
    name: &'static str,
    met: Arc<AtomicBool>,
}

impl Condition {
    /// Records whether the condition holds now; logs changes.
    pub fn set(&self, met: bool) {
        let was = self.met.swap(met, Ordering::AcqRel);
        if was != met {
            if met {
                info!(condition = self.name, "ready condition met");
            } else {
                warn!(condition = self.name, "ready condition lost");
            }
        }
    }

    /// Whether it holds.
    pub fn is_met(&self) -> bool {
        self.met.load(Ordering::Acquire)
    }
}

impl Readiness {
    /// Registers a condition, unmet, and returns its handle.
    pub fn condition(&self, name: &'static str) -> Condition {
        let met = Arc::new(AtomicBool::new(false));
        let mut conditions = match self.inner.conditions.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        conditions.push((name, met.clone()));
        Condition { name, met }
    }

    /// From now on not ready: shutdown began.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let conditions = match self.inner.conditions.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut missing: Vec<&'static str> = conditions
            .iter()
            .filter(|(_, met)| !met.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect();
        if conditions.is_empty() {
            missing.push("starting");
        }
        if self.inner.stopping.load(Ordering::Acquire) {
            missing.push("shutting-down");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// A service's running `/metrics`, `/health`, `/ready` endpoint.
pub struct Observer {
    addr: SocketAddr,
    readiness: Readiness,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

impl Observer {
    /// Installs the Prometheus recorder (labelling everything `service`), binds
    /// `listen` (port 0: any free port) and serves the endpoints; logs the bound
    /// address. Once per process: a second recorder cannot be installed.
    pub async fn start(listen: &str, service: &'static str) -> Result<Self, ObserveError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ObserveError::Bind {
                addr: listen.to_owned(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ObserveError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
        let handle = recorder(service)?.install_recorder()?;
        describe();
        let readiness = Readiness::default();
        let state = AppState {
            metrics: handle.clone(),
            readiness: readiness.clone(),
        };
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/health", get(|| async { "ok\n" }))
            .route("/ready", get(ready_page))
            .with_state(state);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!("observe endpoint stopped: {e}");
            }
        });
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
        info!(%addr, service, "metrics on http://{addr}/metrics, health on /health, readiness on /ready");
        Ok(Self {
            addr,
            readiness,
            tasks: vec![server, upkeep],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service's readiness, to register conditions on.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Wraps a shutdown future: when it completes, the service stops being ready.
    pub fn until_shutdown(&self, shutdown: impl Future<Output = ()>) -> impl Future<Output = ()> {
        let readiness = self.readiness.clone();
        async move {
            shutdown.await;
            readiness.stop();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The recorder configuration: the `service` label on everything, and buckets so
/// histograms render as Prometheus histograms (aggregatable across instances).
fn recorder(service: &'static str) -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_lines".into()), SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_calls".into()), SIZE_BUCKETS)
}

/// Registers the `# HELP` text of every metric.
fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

async fn metrics_page(State(state): State<AppState>) -> impl IntoResponse {
    // Published on scrape, so the gauge is never stale.
    let ready = state.readiness.check().is_ok();
    metrics::gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_page(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        ),
    }
}

/// A background re-check of one condition; stops when dropped.
pub struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets `condition` to the result of `check` now and every [`PROBE_INTERVAL`]
/// until the returned [`Probe`] is dropped.
pub fn spawn_probe<F, Fut>(condition: Condition, check: F) -> Probe
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    Probe(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = tokio::time::timeout(PROBE_INTERVAL, check())
                .await
                .unwrap_or(false);
            condition.set(ok);
        }
    }))
}

/// Probes Redis Cluster with `PING` to a random master.
pub fn redis_probe(conn: redis::cluster_async::ClusterConnection, condition: Condition) -> Probe {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    spawn_probe(condition, move || {
        let mut conn = conn.clone();
        async move {
            conn.route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .is_ok()
        }
    })
}

/// Probes Kafka by fetching the metadata of `topic`: ready when the topic exists
/// with at least one partition and no error. `client` is any rdkafka client
/// (`producer.client()`, `consumer.client()`), reached through `get`.
pub fn kafka_probe<T, C>(
    owner: Arc<T>,
    get: fn(&T) -> &rdkafka::client::Client<C>,
    topic: String,
    condition: Condition,
) -> Probe
where
    T: Send + Sync + 'static,
    C: rdkafka::ClientContext + 'static,
{
    spawn_probe(condition, move || {
        let (owner, topic) = (owner.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                match get(&owner).fetch_metadata(Some(&topic), PROBE_INTERVAL) {
                    Ok(metadata) => metadata.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }),
                    Err(_) => false,
                }
            })
            .await
            .unwrap_or(false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_condition_and_all_of_them() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err(vec!["starting"]));
        let redis = r.condition("redis");
        let kafka = r.condition("kafka");
        assert_eq!(r.check(), Err(vec!["redis", "kafka"]));
        redis.set(true);
        assert_eq!(r.check(), Err(vec!["kafka"]));
        kafka.set(true);
        assert_eq!(r.check(), Ok(()));
        redis.set(false);
        assert_eq!(r.check(), Err(vec!["redis"]));
        redis.set(true);
        r.stop();
        assert_eq!(r.check(), Err(vec!["shutting-down"]));
    }

    #[test]
    fn metric_names_are_unique_prefixed_and_typed_by_suffix() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("tally_"), "{}", m.name);
            let total = m.name.ends_with("_total");
            assert_eq!(
                total,
                m.kind == Kind::Counter,
                "{}: counters, and only they, end in _total",
                m.name
            );
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        for m in METRICS {
            assert!(
                doc.contains(&format!("| `{}` |", m.name)),
                "{} not in docs/operations.md",
                m.name
            );
        }
    }
}
