//! Layered configuration for every tally process.
//!
//! Layers, later ones win: defaults in code → one TOML file (`--config` or
//! `TALLY_CONFIG`) → environment variables `TALLY__SECTION__KEY` (for example
//! `TALLY__KAFKA__BROKERS`). Unknown keys are errors, not silently ignored: a typo
//! in a durability setting must not fall back to a default. Every problem found is
//! reported at once, each with the key it concerns, so one run of
//! `tally config check` fixes a whole file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "TALLY_CONFIG";
/// Prefix of environment overrides: `TALLY__<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "TALLY";

/// The whole configuration of a tally deployment; each process reads the sections it needs.
///
/// Sections do not use `deny_unknown_fields`: that stops at the first unknown key,
/// while [`Settings::load`] collects every unknown key with `serde_ignored`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Redis Cluster connection and key layout.
    pub redis: RedisSettings,
    /// Kafka connection, topic names and client tuning.
    pub kafka: KafkaSettings,
    /// tally-producer: the TCP ingest service.
    pub producer: ProducerSettings,
    /// tally-counter: the transactional per-client counter.
    pub counter: CounterSettings,
    /// tally-aggregator: the per-message aggregator.
    pub aggregator: AggregatorSettings,
    /// The `tally` command-line tool.
    pub client: ClientSettings,
    /// Logging of every process.
    pub log: LogSettings,
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisSettings {
    /// Seed nodes of the Redis Cluster as URLs (`redis://host:port`); the rest of the
    /// topology is discovered. Required. In the environment: comma-separated.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub nodes: Vec<String>,
    /// Prefix of every key tally writes (`<prefix>:c:{client}:count`, ...). Lets several
    /// deployments or test runs share one cluster without seeing each other's counts.
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    /// Time allowed to open a connection to a node, in milliseconds.
    #[serde(default = "defaults::redis_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for one command's answer, in milliseconds. Must exceed
    /// `wait_timeout_ms`, or a slow `WAIT` is cut off by the client first.
    #[serde(default = "defaults::redis_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// How often the cluster client retries a command on redirects, failovers and
    /// dropped connections before it reports an error.
    #[serde(default = "defaults::redis_retries")]
    pub retries: u32,
    /// Replicas a write must reach (Redis `WAIT`) before tally treats it as durable.
    /// 0 turns the replication check off, which gives up exactly-once across a Redis
    /// failover; the default 1 matches `min-replicas-to-write 1` on the servers.
    #[serde(default = "defaults::redis_wait_replicas")]
    pub wait_replicas: u32,
    /// Longest a `WAIT` blocks for its replicas, in milliseconds.
    #[serde(default = "defaults::redis_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma-separated `host:port` (Kafka's `bootstrap.servers`). Required.
    pub brokers: String,
    /// Topic the producer flushes client messages to (key = client id).
    #[serde(default = "defaults::client_message_topic")]
    pub client_message_topic: String,
    /// Topic the counter forwards counted messages to (key = message hash).
    #[serde(default = "defaults::message_aggregation_topic")]
    pub message_aggregation_topic: String,
    /// Dead-letter topic for records that cannot be applied, with a reason header.
    #[serde(default = "defaults::dlq_topic")]
    pub dlq_topic: String,
    /// Partitions `tally admin init-topics` creates each topic with.
    #[serde(default = "defaults::partitions")]
    pub partitions: i32,
    /// Replication factor `tally admin init-topics` creates each topic with.
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: i32,
    /// `min.insync.replicas` of the created topics; with `acks=all` a write needs this
    /// many replicas, so one broker may fail without losing an acknowledged record.
    #[serde(default = "defaults::min_insync_replicas")]
    pub min_insync_replicas: i32,
    /// How long the producer keeps retrying one record before reporting it failed
    /// (librdkafka `message.timeout.ms`), in milliseconds.
    #[serde(default = "defaults::delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
    /// Largest producer batch in bytes (`batch.size`).
    #[serde(default = "defaults::batch_bytes")]
    pub batch_bytes: u64,
    /// Compression of produced batches (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    #[serde(default = "defaults::compression")]
    pub compression: String,
    /// Transaction timeout of the transactional producers (`transaction.timeout.ms`):
    /// a transaction left open longer is aborted by the broker.
    #[serde(default = "defaults::transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Consumer group session timeout (`session.timeout.ms`).
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Any further librdkafka properties, passed through as they are (for example
    /// `"security.protocol" = "SASL_SSL"`). Applied last, so they override the above.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// `[producer]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProducerSettings {
    /// Address the TCP line protocol listens on.
    #[serde(default = "defaults::producer_listen")]
    pub listen: String,
    /// Address of the producer's HTTP endpoint: `/metrics` (Prometheus), `/health`,
    /// `/ready`. Port 0 picks a free port (the bound address is logged).
    #[serde(default = "defaults::producer_observe_listen")]
    pub observe_listen: String,
    /// Stable instance id (owner of client stashes). Generated and logged when unset;
    /// set it so a restarted instance re-adopts its clients at once.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Longest accepted message line in bytes; longer lines get `ERR too_long`.
    #[serde(default = "defaults::max_line_bytes")]
    pub max_line_bytes: usize,
    /// Most concurrent client connections; further connections wait for a free slot.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed, in milliseconds.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most lines stashed by one Lua call (one Redis round trip per batch).
    #[serde(default = "defaults::batch_max_lines")]
    pub batch_max_lines: usize,
    /// Most message bytes stashed by one Lua call.
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Un-flushed messages one client may have before its socket is no longer read.
    #[serde(default = "defaults::client_backlog_messages")]
    pub client_backlog_messages: u64,
    /// Un-flushed message bytes one client may hold in memory before its socket is
    /// no longer read.
    #[serde(default = "defaults::client_backlog_bytes")]
    pub client_backlog_bytes: usize,
    /// Un-flushed message bytes all clients together may hold in memory.
    #[serde(default = "defaults::global_backlog_bytes")]
    pub global_backlog_bytes: usize,
    /// Interval of heartbeats into the producer registry; an instance silent for 3
    /// intervals is dead and its clients are adopted, in milliseconds.
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How often Kafka-confirmed progress is written to the stash (`flushed`, trim).
    #[serde(default = "defaults::flush_commit_interval_ms")]
    pub flush_commit_interval_ms: u64,
    /// Graceful shutdown: longest wait for stashes to be flushed before leaving the
    /// rest to survivors, in milliseconds.
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

/// `[counter]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterSettings {
    /// Stable instance id; the transactional id is derived from it. Generated when unset.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Kafka consumer group of the counters.
    #[serde(default = "defaults::counter_group")]
    pub group_id: String,
    /// Address of the counter's HTTP endpoint: `/metrics` (Prometheus), `/health`,
    /// `/ready`. Port 0 picks a free port (the bound address is logged).
    #[serde(default = "defaults::counter_observe_listen")]
    pub observe_listen: String,
    /// Most records applied in one Kafka transaction.
    #[serde(default = "defaults::batch_max_records")]
    pub batch_max_records: usize,
    /// Longest a batch collects records before it is applied, in milliseconds.
    #[serde(default = "defaults::batch_max_ms")]
    pub batch_max_ms: u64,
    /// A client whose records stay in a gap (an sn missing, later ones waiting) this
    /// long is logged as stalled and counted in `tally_counter_stalled_clients`, in
    /// milliseconds. The producer's resend normally fills a gap within seconds.
    #[serde(default = "defaults::stall_after_ms")]
    pub stall_after_ms: u64,
    /// Most per-client Redis scripts of one batch in flight at once.
    #[serde(default = "defaults::apply_concurrency")]
    pub apply_concurrency: usize,
}

/// `[aggregator]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AggregatorSettings {
    /// Kafka consumer group of the aggregators.
    #[serde(default = "defaults::aggregator_group")]
    pub group_id: String,
    /// Address of the aggregator's HTTP endpoint: `/metrics` (Prometheus), `/health`,
    /// `/ready`. Port 0 picks a free port (the bound address is logged).
    #[serde(default = "defaults::aggregator_observe_listen")]
    pub observe_listen: String,
    /// Most records applied per offset commit.
    #[serde(default = "defaults::batch_max_records")]
    pub batch_max_records: usize,
    /// Longest a batch collects records before it is applied, in milliseconds.
    #[serde(default = "defaults::batch_max_ms")]
    pub batch_max_ms: u64,
    /// Most per-message Redis scripts of one batch in flight at once.
    #[serde(default = "defaults::apply_concurrency")]
    pub apply_concurrency: usize,
}

/// `[client]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSettings {
    /// Producer address(es) the CLI connects to, comma-separated `host:port`.
    #[serde(default = "defaults::client_producer_addr")]
    pub producer_addr: String,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSettings {
    /// `auto` (pretty on a terminal, plain text otherwise), `pretty`, `plain` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Default filter in `tracing` EnvFilter syntax; `RUST_LOG`, when set, wins.
    #[serde(default = "defaults::log_filter")]
    pub filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, plain otherwise.
    #[default]
    Auto,
    /// Multi-line, coloured, for people.
    Pretty,
    /// One line per event, no colour.
    Plain,
    /// One JSON object per event, for log shippers.
    Json,
}

mod defaults {
    pub fn redis_prefix() -> String {
        "tally".into()
    }
    pub fn redis_connect_timeout_ms() -> u64 {
        2_000
    }
    pub fn redis_response_timeout_ms() -> u64 {
        3_000
    }
    pub fn redis_retries() -> u32 {
        6
    }
    pub fn redis_wait_replicas() -> u32 {
        1
    }
    pub fn redis_wait_timeout_ms() -> u64 {
        1_000
    }
    pub fn client_message_topic() -> String {
        "client_message".into()
    }
    pub fn message_aggregation_topic() -> String {
        "message_aggregation".into()
    }
    pub fn dlq_topic() -> String {
        "tally.dlq".into()
    }
    pub fn partitions() -> i32 {
        12
    }
    pub fn replication_factor() -> i32 {
        3
    }
    pub fn min_insync_replicas() -> i32 {
        2
    }
    pub fn delivery_timeout_ms() -> u64 {
        30_000
    }
    pub fn linger_ms() -> u64 {
        5
    }
    pub fn batch_bytes() -> u64 {
        256 * 1024
    }
    pub fn compression() -> String {
        "lz4".into()
    }
    pub fn transaction_timeout_ms() -> u64 {
        10_000
    }
    pub fn session_timeout_ms() -> u64 {
        10_000
    }
    pub fn producer_listen() -> String {
        "127.0.0.1:7400".into()
    }
    pub fn producer_observe_listen() -> String {
        "127.0.0.1:9464".into()
    }
    pub fn counter_observe_listen() -> String {
        "127.0.0.1:9465".into()
    }
    pub fn aggregator_observe_listen() -> String {
        "127.0.0.1:9466".into()
    }
    pub fn max_line_bytes() -> usize {
        64 * 1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn idle_timeout_ms() -> u64 {
        300_000
    }
    pub fn batch_max_lines() -> usize {
        1_000
    }
    pub fn batch_max_bytes() -> usize {
        1024 * 1024
    }
    pub fn client_backlog_messages() -> u64 {
        100_000
    }
    pub fn client_backlog_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub fn global_backlog_bytes() -> usize {
        256 * 1024 * 1024
    }
    pub fn heartbeat_interval_ms() -> u64 {
        1_000
    }
    pub fn flush_commit_interval_ms() -> u64 {
        50
    }
    pub fn shutdown_timeout_ms() -> u64 {
        10_000
    }
    pub fn counter_group() -> String {
        "tally-counter".into()
    }
    pub fn aggregator_group() -> String {
        "tally-aggregator".into()
    }
    /// 5,000, not 1,000: a transaction's fixed cost (markers on every partition it
    /// touched, the offset commit) is then spread over 5× the records; measured
    /// with scripts/bench on a 2-core box: 3.7k → 9.5k msg/s end to end.
    pub fn batch_max_records() -> usize {
        5_000
    }
    pub fn batch_max_ms() -> u64 {
        100
    }
    pub fn stall_after_ms() -> u64 {
        30_000
    }
    pub fn apply_concurrency() -> usize {
        32
    }
    pub fn client_producer_addr() -> String {
        "127.0.0.1:7400".into()
    }
    pub fn log_filter() -> String {
        "info".into()
    }
}

macro_rules! section_defaults {
    ($($ty:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                deserialize_empty_section()
            }
        }
    )*};
}
section_defaults!(
    ProducerSettings,
    CounterSettings,
    AggregatorSettings,
    ClientSettings,
    LogSettings
);

/// A section whose every field has a default, built the same way a file would build it,
/// so code defaults and file defaults cannot drift apart.
fn deserialize_empty_section<T: serde::de::DeserializeOwned>() -> T {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    match serde_json::from_value(empty) {
        Ok(v) => v,
        // Only reachable if a field of an all-defaults section loses its default.
        Err(e) => panic!("section with a field lacking a default: {e}"),
    }
}

impl RedisSettings {
    /// Connect timeout as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Response timeout as a [`Duration`].
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

/// One problem found in the configuration, tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `kafka.brokers`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file is missing or is not valid TOML.
    #[error("cannot read configuration {path}: {source}")]
    Source {
        /// The file that was asked for.
        path: PathBuf,
        /// What the loader said.
        source: Box<config::ConfigError>,
    },
    /// The environment could not be read as configuration.
    #[error("cannot read configuration from the environment: {0}")]
    Environment(Box<config::ConfigError>),
    /// The layers merged, but keys are unknown, missing or invalid.
    #[error("invalid configuration ({} problem{}): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, join_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn join_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// The `TALLY__SECTION__KEY` overrides that point another tally process at the
    /// same brokers, Redis nodes, key prefix, topics and consumer groups as these
    /// settings: for tools and tests that start the services as processes.
    pub fn pipeline_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TALLY__REDIS__PREFIX", self.redis.prefix.clone()),
            ("TALLY__REDIS__NODES", self.redis.nodes.join(",")),
            ("TALLY__KAFKA__BROKERS", self.kafka.brokers.clone()),
            (
                "TALLY__KAFKA__CLIENT_MESSAGE_TOPIC",
                self.kafka.client_message_topic.clone(),
            ),
            (
                "TALLY__KAFKA__MESSAGE_AGGREGATION_TOPIC",
                self.kafka.message_aggregation_topic.clone(),
            ),
            ("TALLY__KAFKA__DLQ_TOPIC", self.kafka.dlq_topic.clone()),
            ("TALLY__COUNTER__GROUP_ID", self.counter.group_id.clone()),
            (
                "TALLY__AGGREGATOR__GROUP_ID",
                self.aggregator.group_id.clone(),
            ),
        ]
    }

    /// Loads settings from the process environment: the file is `path`, else
    /// `$TALLY_CONFIG`, else none; then `TALLY__SECTION__KEY` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path);
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__");
        Self::load_from(path.as_deref(), env)
    }

    /// Loads settings from an explicit file and environment source (tests pass a fixed
    /// environment map instead of the process's).
    pub fn load_from(path: Option<&Path>, env: config::Environment) -> Result<Self, ConfigError> {
        let mut file_layer = config::Config::builder();
        if let Some(path) = path {
            file_layer = file_layer.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let file_tree = file_layer
            .build()
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(|source| ConfigError::Source {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                source: Box::new(source),
            })?;
        let env_tree = config::Config::builder()
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(|e| ConfigError::Environment(Box::new(e)))?;
        Self::from_layers(file_tree, env_tree)
    }

    /// Merges the file and environment trees section by section and deserializes each
    /// section on its own, so that a problem in one does not hide problems in another.
    fn from_layers(
        file: config::Map<String, config::Value>,
        env: config::Map<String, config::Value>,
    ) -> Result<Self, ConfigError> {
        let mut issues = Vec::new();
        let mut root = file;
        for (section, value) in env {
            merge(&mut root, section, value);
        }
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                issues.push(ConfigIssue {
                    key: key.clone(),
                    problem: format!("unknown section (expected one of {})", SECTIONS.join(", ")),
                });
            }
        }

        let redis = section::<RedisSettings>(&root, "redis", true, &mut issues);
        let kafka = section::<KafkaSettings>(&root, "kafka", true, &mut issues);
        let producer = section::<ProducerSettings>(&root, "producer", false, &mut issues);
        let counter = section::<CounterSettings>(&root, "counter", false, &mut issues);
        let aggregator = section::<AggregatorSettings>(&root, "aggregator", false, &mut issues);
        let client = section::<ClientSettings>(&root, "client", false, &mut issues);
        let log = section::<LogSettings>(&root, "log", false, &mut issues);

        match (redis, kafka, producer, counter, aggregator, client, log) {
            (
                Some(redis),
                Some(kafka),
                Some(producer),
                Some(counter),
                Some(aggregator),
                Some(client),
                Some(log),
            ) if issues.is_empty() => {
                let settings = Settings {
                    redis,
                    kafka,
                    producer,
                    counter,
                    aggregator,
                    client,
                    log,
                };
                let problems = settings.validate();
                if problems.is_empty() {
                    Ok(settings)
                } else {
                    Err(ConfigError::Invalid(problems))
                }
            }
            _ => Err(ConfigError::Invalid(issues)),
        }
    }

    /// Checks values that parse but make no sense, all of them at once.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut check = |ok: bool, key: &str, problem: &str| {
            if !ok {
                issues.push(ConfigIssue {
                    key: key.into(),
                    problem: problem.into(),
                });
            }
        };
        check(
            !self.redis.nodes.is_empty(),
            "redis.nodes",
            "needs at least one node",
        );
        for node in &self.redis.nodes {
            check(
                node.starts_with("redis://") || node.starts_with("rediss://"),
                "redis.nodes",
                &format!("`{node}` is not a redis:// or rediss:// URL"),
            );
        }
        check(
            crate::keys::is_valid_prefix(&self.redis.prefix),
            "redis.prefix",
            "must be 1-64 characters of [A-Za-z0-9._-]",
        );
        check(
            self.redis.response_timeout_ms > self.redis.wait_timeout_ms,
            "redis.response_timeout_ms",
            "must be greater than redis.wait_timeout_ms",
        );
        check(
            !self.kafka.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one broker",
        );
        for (key, topic) in [
            (
                "kafka.client_message_topic",
                &self.kafka.client_message_topic,
            ),
            (
                "kafka.message_aggregation_topic",
                &self.kafka.message_aggregation_topic,
            ),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
        ] {
            check(
                is_valid_topic(topic),
                key,
                "must be 1-249 characters of [A-Za-z0-9._-]",
            );
        }
        check(
            self.kafka.partitions >= 1,
            "kafka.partitions",
            "must be ≥ 1",
        );
        check(
            self.kafka.replication_factor >= 1,
            "kafka.replication_factor",
            "must be ≥ 1",
        );
        check(
            (1..=self.kafka.replication_factor).contains(&self.kafka.min_insync_replicas),
            "kafka.min_insync_replicas",
            "must be between 1 and kafka.replication_factor",
        );
        check(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.kafka.compression.as_str()),
            "kafka.compression",
            "must be one of none, gzip, snappy, lz4, zstd",
        );
        check(
            self.kafka.delivery_timeout_ms > 0,
            "kafka.delivery_timeout_ms",
            "must be > 0",
        );
        check(
            self.kafka.transaction_timeout_ms > 0,
            "kafka.transaction_timeout_ms",
            "must be > 0",
        );
        check(
            self.producer.listen.parse::<std::net::SocketAddr>().is_ok(),
            "producer.listen",
            "must be an ip:port address",
        );
        for (key, addr) in [
            ("producer.observe_listen", &self.producer.observe_listen),
            ("counter.observe_listen", &self.counter.observe_listen),
            ("aggregator.observe_listen", &self.aggregator.observe_listen),
        ] {
            check(
                addr.parse::<std::net::SocketAddr>().is_ok(),
                key,
                "must be an ip:port address (port 0: any free port)",
            );
        }
        check(
            self.producer.max_line_bytes >= 1,
            "producer.max_line_bytes",
            "must be ≥ 1",
        );
        let p = &self.producer;
        check(
            p.max_connections >= 1,
            "producer.max_connections",
            "must be ≥ 1",
        );
        check(
            p.batch_max_lines >= 1,
            "producer.batch_max_lines",
            "must be ≥ 1",
        );
        check(
            p.batch_max_bytes >= p.max_line_bytes,
            "producer.batch_max_bytes",
            "must be ≥ producer.max_line_bytes (a batch holds at least one line)",
        );
        check(
            p.client_backlog_messages >= p.batch_max_lines as u64,
            "producer.client_backlog_messages",
            "must be ≥ producer.batch_max_lines",
        );
        check(
            p.client_backlog_bytes >= p.batch_max_bytes,
            "producer.client_backlog_bytes",
            "must be ≥ producer.batch_max_bytes",
        );
        check(
            p.global_backlog_bytes >= p.client_backlog_bytes,
            "producer.global_backlog_bytes",
            "must be ≥ producer.client_backlog_bytes",
        );
        for (key, ms) in [
            ("producer.idle_timeout_ms", p.idle_timeout_ms),
            ("producer.heartbeat_interval_ms", p.heartbeat_interval_ms),
            (
                "producer.flush_commit_interval_ms",
                p.flush_commit_interval_ms,
            ),
        ] {
            check(ms > 0, key, "must be > 0");
        }
        for (key, records) in [
            ("counter.batch_max_records", self.counter.batch_max_records),
            (
                "aggregator.batch_max_records",
                self.aggregator.batch_max_records,
            ),
        ] {
            check(records >= 1, key, "must be ≥ 1");
        }
        for (key, n) in [
            ("counter.apply_concurrency", self.counter.apply_concurrency),
            (
                "aggregator.apply_concurrency",
                self.aggregator.apply_concurrency,
            ),
        ] {
            check(n >= 1, key, "must be ≥ 1");
        }
        for (key, ms) in [
            ("counter.batch_max_ms", self.counter.batch_max_ms),
            ("counter.stall_after_ms", self.counter.stall_after_ms),
            ("aggregator.batch_max_ms", self.aggregator.batch_max_ms),
        ] {
            check(ms > 0, key, "must be > 0");
        }
        for (key, id) in [
            ("producer.instance_id", &self.producer.instance_id),
            ("counter.instance_id", &self.counter.instance_id),
        ] {
            if let Some(id) = id {
                check(
                    crate::keys::ClientId::parse(id).is_ok(),
                    key,
                    "must be 1-64 characters of [A-Za-z0-9._:-]",
                );
            }
        }
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_ok(),
            "log.filter",
            "is not a valid tracing filter",
        );
        issues
    }
}

/// Section names, in the order they appear in a file.
const SECTIONS: [&str; 7] = [
    "redis",
    "kafka",
    "producer",
    "counter",
    "aggregator",
    "client",
    "log",
];

/// Overlays `value` onto `root[key]`, recursing through tables so an environment
/// variable replaces one key, not its whole section.
fn merge(root: &mut config::Map<String, config::Value>, key: String, value: config::Value) {
    match (root.get_mut(&key), value.kind.clone()) {
        (Some(existing), config::ValueKind::Table(overlay)) => {
            if let config::ValueKind::Table(ref mut base) = existing.kind {
                for (k, v) in overlay {
                    merge(base, k, v);
                }
            } else {
                *existing = value;
            }
        }
        _ => {
            root.insert(key, value);
        }
    }
}

/// Deserializes `root[name]`, recording unknown keys and type or missing-field errors
/// with their full dotted path. Returns `None` when the section is unusable.
fn section<T: serde::de::DeserializeOwned>(
    root: &config::Map<String, config::Value>,
    name: &str,
    required: bool,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    let value = match root.get(name) {
        Some(v) => v.clone(),
        None if required => {
            issues.push(ConfigIssue {
                key: name.into(),
                problem: "missing section".into(),
            });
            return None;
        }
        None => config::Value::new(None, config::ValueKind::Table(config::Map::new())),
    };
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(value, &mut note_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for key in unknown {
        issues.push(ConfigIssue {
            key: format!("{name}.{key}"),
            problem: "unknown key".into(),
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let (key, problem) = describe_serde_error(name, &path, &inner);
            issues.push(ConfigIssue { key, problem });
            None
        }
    }
}

/// Turns a serde message into (dotted key, problem): a missing field is reported
/// against the field itself, not against its section.
fn describe_serde_error(section: &str, path: &str, message: &str) -> (String, String) {
    let base = if path == "." || path.is_empty() {
        section.to_string()
    } else {
        format!("{section}.{path}")
    };
    // serde says "missing field `x`", the config crate "missing configuration field \"x\"".
    for (opening, closing) in [
        ("missing field `", '`'),
        ("missing configuration field \"", '"'),
    ] {
        if let Some(field) = message
            .strip_prefix(opening)
            .and_then(|r| r.split(closing).next())
        {
            return (format!("{base}.{field}"), "required but not set".into());
        }
    }
    (base, message.to_string())
}

fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Accepts a TOML list, or a comma-separated string (how a list arrives from the
/// environment).
fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> config::Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(map))
    }

    fn file(body: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        f.write_all(body.as_bytes()).expect("write temp file");
        f
    }

    const MINIMAL: &str = r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
[kafka]
brokers = "127.0.0.1:9092"
"#;

    fn issues(err: ConfigError) -> Vec<ConfigIssue> {
        match err {
            ConfigError::Invalid(issues) => issues,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn defaults_fill_everything_not_required() {
        let f = file(MINIMAL);
        let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
        assert_eq!(s.redis.prefix, "tally");
        assert_eq!(s.redis.wait_replicas, 1);
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.kafka.client_message_topic, "client_message");
        assert_eq!(s.counter.group_id, "tally-counter");
        assert_eq!(s.counter.batch_max_records, 5000);
        assert_eq!(s.counter.batch_max_ms, 100);
        assert_eq!(s.producer.max_line_bytes, 65536);
        assert_eq!(s.log.format, LogFormat::Auto);
    }

    #[test]
    fn environment_overrides_file_key_by_key() {
        let f = file(
            r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
prefix = "from-file"
wait_timeout_ms = 500
[kafka]
brokers = "127.0.0.1:9092"
[counter]
batch_max_records = 10
"#,
        );
        let s = Settings::load_from(
            Some(f.path()),
            env(&[
                ("TALLY__REDIS__PREFIX", "from-env"),
                ("TALLY__COUNTER__BATCH_MAX_RECORDS", "250"),
                (
                    "TALLY__REDIS__NODES",
                    "redis://127.0.0.1:7001, redis://127.0.0.1:7002",
                ),
                ("TALLY__PRODUCER__INSTANCE_ID", "1234"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.redis.prefix, "from-env");
        // A key the environment does not name keeps the file's value.
        assert_eq!(s.redis.wait_timeout_ms, 500);
        assert_eq!(s.counter.batch_max_records, 250);
        assert_eq!(
            s.redis.nodes,
            vec!["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]
        );
        // A numeric-looking value still reads as a string where a string is wanted.
        assert_eq!(s.producer.instance_id.as_deref(), Some("1234"));
    }

    #[test]
    fn environment_alone_is_enough() {
        let s = Settings::load_from(
            None,
            env(&[
                ("TALLY__REDIS__NODES", "redis://127.0.0.1:7000"),
                ("TALLY__KAFKA__BROKERS", "127.0.0.1:9092"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
    }

    #[test]
    fn unknown_keys_are_all_reported_with_their_path() {
        let f = file(
            r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
wait_replica = 1
[kafka]
brokers = "127.0.0.1:9092"
partitons = 3
[produce]
listen = "0.0.0.0:1"
"#,
        );
        let found = issues(
            Settings::load_from(Some(f.path()), env(&[("TALLY__COUNTER__BATCH_SIZE", "5")]))
                .unwrap_err(),
        );
        let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
        for expected in [
            "redis.wait_replica",
            "kafka.partitons",
            "produce",
            "counter.batch_size",
        ] {
            assert!(
                keys.contains(&expected),
                "{expected} missing from {found:?}"
            );
        }
    }

    #[test]
    fn missing_required_fields_are_named() {
        let f = file("[redis]\nprefix = \"x\"\n[kafka]\n");
        let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
        let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"redis.nodes"), "{found:?}");
        assert!(keys.contains(&"kafka.brokers"), "{found:?}");
        assert!(found.iter().all(|i| i.problem == "required but not set"));
    }

    #[test]
    fn missing_section_is_named() {
        let f = file("[redis]\nnodes = [\"redis://127.0.0.1:7000\"]\n");
        let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
        assert_eq!(
            found,
            vec![ConfigIssue {
                key: "kafka".into(),
                problem: "missing section".into()
            }]
        );
    }

    #[test]
    fn type_errors_and_invalid_values_come_together() {
        let f = file(&format!(
            "{MINIMAL}\n[counter]\nbatch_max_ms = \"soon\"\n[producer]\nlisten = \"nowhere\"\n"
        ));
        let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
        assert!(
            found.iter().any(|i| i.key == "counter.batch_max_ms"),
            "{found:?}"
        );
        // Value checks run only once every section parsed, so fix types first:
        let f = file(&format!(
            "{MINIMAL}\n[producer]\nlisten = \"nowhere\"\n[log]\nfilter = \"[[\"\n"
        ));
        let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
        let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"producer.listen"), "{found:?}");
        assert!(keys.contains(&"log.filter"), "{found:?}");
    }

    #[test]
    fn observe_listen_is_per_service_and_port_0_is_allowed() {
        let f = file(MINIMAL);
        let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
        // Distinct defaults, so the three services can share a host and a file.
        let defaults = [
            &s.producer.observe_listen,
            &s.counter.observe_listen,
            &s.aggregator.observe_listen,
        ];
        assert_eq!(
            defaults
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3
        );
        let s = Settings::load_from(
            Some(f.path()),
            env(&[("TALLY__COUNTER__OBSERVE_LISTEN", "0.0.0.0:0")]),
        )
        .expect("port 0 is valid");
        assert_eq!(s.counter.observe_listen, "0.0.0.0:0");
        let err = Settings::load_from(
            Some(f.path()),
            env(&[("TALLY__AGGREGATOR__OBSERVE_LISTEN", "localhost")]),
        )
        .unwrap_err();
        let found = issues(err);
        assert!(
            found.iter().any(|i| i.key == "aggregator.observe_listen"),
            "{found:?}"
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err =
            Settings::load_from(Some(Path::new("/nonexistent/tally.toml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tally.toml"), "{err}");
    }

    #[test]
    fn local_stack_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/tally.toml");
        let s = Settings::load_from(Some(&path), env(&[])).expect("deploy/local/tally.toml");
        assert_eq!(s.redis.nodes.len(), 6);
        assert_eq!(s.kafka.brokers.split(',').count(), 3);
    }

    #[test]
    fn every_key_is_documented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
        let f = file(MINIMAL);
        let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
        let tree = serde_json::to_value(&s).expect("serializable");
        let sections = tree.as_object().expect("table");
        for (section, keys) in sections {
            assert!(
                doc.contains(&format!("## `[{section}]`")),
                "section [{section}] undocumented"
            );
            for key in keys.as_object().expect("section table").keys() {
                assert!(
                    doc.contains(&format!("| `{key}` |")),
                    "{section}.{key} undocumented"
                );
            }
        }
    }
}
