//! `tally-bench`: the driver behind `scripts/bench`.
//!
//! One run measures, on the same machine within minutes, the ceilings of the
//! parts tally is built from (an idempotent acks=all Kafka producer, a
//! transactional pass-through at the counter's cadence, tally's Lua scripts with
//! `WAIT 1`) and then tally end to end at several client counts, every point
//! checked exact by `tally verify` (a benchmark that loses data is not a result).
//! Each workload (the novel replayed by every client, and all-distinct
//! messages) gets its end-to-end points, sustained-rate search, half-rate point
//! and consume-only point (counters and aggregators cold on a pre-loaded topic);
//! a many-clients point measures the producer's memory.
//! Figures are medians over runs; ratios are taken within a run.

pub mod cleanup;
pub mod consume_only;
pub mod e2e;
pub mod many_clients;
pub mod procstat;
pub mod raw_kafka;
pub mod raw_redis;
pub mod report;
pub mod results;
pub mod search;

/// A latency histogram in µs, 1 µs to 1 h at 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid")
}

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A Kafka call failed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// The call.
        what: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A Redis call failed.
    #[error("redis: {0}")]
    Redis(#[from] tally_common::redis::RedisOpError),
    /// Topic setup failed.
    #[error(transparent)]
    Topics(#[from] tally_common::kafka::TopicSetupError),
    /// A service process could not be started, or exited during a point.
    #[error(transparent)]
    Service(#[from] tally_harness::HarnessError),
    /// A file or process could not be read, written or started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A measurement could not be taken as asked (lost records, a service that
    /// did not come up, counts that are not exact).
    #[error("{0}")]
    Check(String),
    /// A blocking task panicked.
    #[error("task failed: {0}")]
    Task(String),
}

impl BenchError {
    /// A Kafka error with the call it came from.
    pub fn kafka(what: &'static str, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka { what, source }
    }

    /// An IO error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
