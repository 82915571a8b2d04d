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
//! Three parts: the metric catalogue ([`catalogue`]: names, kinds, help), readiness
//! and its probes ([`readiness`]), and the HTTP endpoint ([`http`]).

pub mod catalogue;
pub mod http;
pub mod readiness;

pub use catalogue::{names, Kind, MetricDoc, METRICS};
pub use http::{ObserveError, Observer};
pub use readiness::{
    kafka_probe, redis_probe, spawn_probe, Condition, Probe, Readiness, PROBE_INTERVAL,
};
