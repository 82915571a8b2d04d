//! The observe endpoint of a service over HTTP: `/metrics`, `/health`, `/ready`.
//!
//! Invariant: once per process, the Prometheus recorder is installed before the
//! endpoint answers, so `/metrics` never serves a partial catalogue; every metric
//! carries the `service` label, and the service's counters are there from the
//! start at 0.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{info, warn};

use super::catalogue::{names, Kind, METRICS};
use super::readiness::Readiness;

/// How often the recorder's histograms are maintained.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Histogram buckets of latencies, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Histogram buckets of sizes (lines per batch, calls per round).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

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
        super::catalogue::zero_counters(service);
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
