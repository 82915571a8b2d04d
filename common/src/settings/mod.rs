//! Layered configuration for every tally process.
//!
//! Layers, later ones win: defaults in code → one TOML file (`--config` or
//! `TALLY_CONFIG`) → environment variables `TALLY__SECTION__KEY` (for example
//! `TALLY__KAFKA__BROKERS`). Unknown keys are errors, not silently ignored: a typo
//! in a durability setting must not fall back to a default. Every problem found is
//! reported at once, each with the key it concerns, so one run of
//! `tally config check` fixes a whole file.
//!
//! Here: the settings and their defaults; `load` reads and layers them, `validate`
//! checks values that parse but make no sense, `namespace` derives the names of a
//! pipeline (key prefix, topics, groups, transactional ids) from one setting,
//! `redact` hides credentials in what is shown.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
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
    /// Top-level `namespace`: the names of this pipeline's keys, topics, consumer
    /// groups and transactional ids are derived from it unless set on their own
    /// (see [`namespace`]). Empty (the default): tally's historical names.
    pub namespace: String,
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
    /// `tally serve`, the read-only HTTP API and dashboard.
    pub serve: ServeSettings,
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
    /// Derived from the namespace unless set.
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
    /// ACL user to authenticate as (Redis 6+). Unset: the user named in the node
    /// URLs, else Redis' `default` user.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is that user's password. Unset: the password in the
    /// node URLs, if any. A file keeps the secret out of configs, the environment
    /// and `tally config show`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) that signed the nodes' certificates, for
    /// `rediss://` nodes. Unset: the system's trusted roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma-separated `host:port` (Kafka's `bootstrap.servers`). Required.
    pub brokers: String,
    /// Topic the producer flushes client messages to (key = client id). Derived from
    /// the namespace unless set, as are the next two.
    #[serde(default = "defaults::client_message_topic")]
    pub client_message_topic: String,
    /// Topic the counter forwards counted messages to (key = message hash).
    #[serde(default = "defaults::message_aggregation_topic")]
    pub message_aggregation_topic: String,
    /// Dead-letter topic for records that cannot be applied, with a reason header.
    #[serde(default = "defaults::dlq_topic")]
    pub dlq_topic: String,
    /// Whether a service that finds its topics missing at start creates them (as
    /// `tally admin init-topics` would). Off: it stops at once, naming the command.
    #[serde(default)]
    pub create_topics: bool,
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
    /// How long a producer waits to fill a batch, in milliseconds: the counter's
    /// `linger.ms`, and the wait before each of the flusher's rounds of sends (its
    /// own Kafka producer lingers only 5 ms, see the producer's `send_window`).
    /// Neither an ACK nor a count waits on it alone: the flusher's records are
    /// already stashed, and a transaction's commit sends at once.
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
    /// Largest producer batch in bytes (`batch.size`); a round of the flusher's
    /// sends hands over at most three quarters of it per partition.
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
    /// How clients talk to the brokers (librdkafka `security.protocol`):
    /// `plaintext` (the default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates
    /// (`ssl.ca.location`). Unset: the system's trusted roots.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
    /// SASL mechanism (`sasl.mechanisms`): `SCRAM-SHA-512` (the default when
    /// `sasl_username` is set), `SCRAM-SHA-256` or `PLAIN`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user (`sasl.username`): this service's principal.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// File whose first line is the SASL user's password (`sasl.password`): a
    /// mounted secret, never shown by `tally config show`.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Any further librdkafka properties, passed through as they are (for example
    /// `"ssl.endpoint.identification.algorithm" = "none"`). Applied last, so they
    /// override the above.
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
    /// `/ready`. Port 0 (the default) picks a free port; the bound address is
    /// logged and published in the instance registry (`tally status`).
    #[serde(default = "defaults::observe_listen")]
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
    /// Most connections one source address may hold at once; further ones get
    /// `ERR too_many_connections` and are closed. `0`: no limit (the default, as
    /// load generators and proxies connect from one address).
    #[serde(default)]
    pub max_connections_per_address: usize,
    /// A new connection must send its first complete line within this long, or it
    /// gets `ERR first_line_timeout` and is closed (a client trickling a line byte by
    /// byte would otherwise hold a connection slot for as long as it likes).
    #[serde(default = "defaults::first_line_timeout_ms")]
    pub first_line_timeout_ms: u64,
    /// Most failed authentications (`ERR unauthorized`) one source address may
    /// make per minute; once reached, its connections get
    /// `ERR too_many_auth_failures` and are closed until the minute ends. `0`: no
    /// limit.
    #[serde(default = "defaults::max_auth_failures_per_minute")]
    pub max_auth_failures_per_minute: u32,
    /// `[producer.auth]`: who may speak for a client id.
    #[serde(default)]
    pub auth: AuthSettings,
    /// `[producer.tls]`: TLS on the ingest listener; absent, the listener speaks
    /// plain TCP.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
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
    /// Kafka consumer group of the counters. Derived from the namespace unless set.
    #[serde(default = "defaults::counter_group")]
    pub group_id: String,
    /// Transactional ids are `<transactional_id_prefix>-<instance_id>`; they are
    /// global to a Kafka cluster, so two pipelines sharing one need different
    /// prefixes. The counter's `group_id` unless set.
    #[serde(default = "defaults::counter_group")]
    pub transactional_id_prefix: String,
    /// Address of the counter's HTTP endpoint: `/metrics` (Prometheus), `/health`,
    /// `/ready`. Port 0 (the default) picks a free port; the bound address is
    /// logged and published in the instance registry (`tally status`).
    #[serde(default = "defaults::observe_listen")]
    pub observe_listen: String,
    /// Most records applied in one Kafka transaction.
    #[serde(default = "defaults::batch_max_records")]
    pub batch_max_records: usize,
    /// Most bytes of record keys and values in one batch (whichever of this and
    /// `batch_max_records` comes first closes it).
    #[serde(default = "defaults::counter_batch_max_bytes")]
    pub batch_max_bytes: usize,
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
    /// Kafka consumer group of the aggregators. Derived from the namespace unless set.
    #[serde(default = "defaults::aggregator_group")]
    pub group_id: String,
    /// Address of the aggregator's HTTP endpoint: `/metrics` (Prometheus), `/health`,
    /// `/ready`. Port 0 (the default) picks a free port; the bound address is
    /// logged and published in the instance registry (`tally status`).
    #[serde(default = "defaults::observe_listen")]
    pub observe_listen: String,
    /// Most records applied per offset commit.
    #[serde(default = "defaults::batch_max_records")]
    pub batch_max_records: usize,
    /// Most bytes of record keys and values in one batch. A counter's packed
    /// record holds up to ~1,500 messages, so this, not `batch_max_records`, is
    /// what bounds a batch's memory.
    #[serde(default = "defaults::aggregator_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Longest a batch collects records before it is applied, in milliseconds.
    #[serde(default = "defaults::batch_max_ms")]
    pub batch_max_ms: u64,
    /// Most per-bucket count scripts of one batch in flight at once.
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

/// `[producer.auth]`: who may speak for a client id (see `common::auth`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthSettings {
    /// `none` (anyone reaching the port may use any id: a trusted network only),
    /// `token` (`HELLO <id> <token>`, the token minted by `tally admin token`) or
    /// `mtls` (the client certificate names the ids it may use; needs
    /// `[producer.tls]` with `client_ca_file`).
    #[serde(default)]
    pub mode: AuthMode,
    /// The secret tokens are minted under (≥ 32 bytes); required by `token`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// A second secret still accepted while tokens are rotated to a new one.
    #[serde(default)]
    pub previous_secret_file: Option<PathBuf>,
}

/// `[producer.tls]`: the producer's certificate and, for client certificates, the
/// CA they must chain to (see `common::tls`). Reloaded on SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsSettings {
    /// The producer's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) a client certificate must chain to. Set, every client
    /// must present one; required by `producer.auth.mode = "mtls"`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// How a producer authenticates clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication.
    #[default]
    None,
    /// `HELLO <id> <token>` with an HMAC token of the id.
    Token,
    /// `HELLO <id>` over TLS with a client certificate that names the id (a SAN
    /// dNSName equal to it, or `prefix*` covering it).
    Mtls,
}

/// `[serve]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeSettings {
    /// File holding the bearer token `tally serve` requires of every request (one
    /// line, at least 16 characters). Without one, `tally serve` listens only on
    /// loopback addresses.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
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
    use super::namespace::DerivedNames;

    pub fn redis_prefix() -> String {
        DerivedNames::of("").redis_prefix
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
        DerivedNames::of("").client_message_topic
    }
    pub fn message_aggregation_topic() -> String {
        DerivedNames::of("").message_aggregation_topic
    }
    pub fn dlq_topic() -> String {
        DerivedNames::of("").dlq_topic
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
    /// Fewer, larger produce requests. At moderate rates each small request woke
    /// the followers' and consumers' fetches and librdkafka's broker threads: with
    /// 5 ms, at 4,000 msg/s the stack spent ~400 µs of CPU per message and ACK p99
    /// was ~110 ms; with 50 ms, ~240 µs and ~13 ms (docs/benchmarks.md).
    pub fn linger_ms() -> u64 {
        50
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
    /// Loopback, any free port: several instances of a service can share a host
    /// with the defaults; each publishes the bound address (`common::registry`).
    pub fn observe_listen() -> String {
        "127.0.0.1:0".into()
    }
    pub fn max_line_bytes() -> usize {
        64 * 1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_auth_failures_per_minute() -> u32 {
        20
    }
    pub fn first_line_timeout_ms() -> u64 {
        30_000
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
        DerivedNames::of("").counter_group
    }
    pub fn aggregator_group() -> String {
        DerivedNames::of("").aggregator_group
    }
    /// 20,000: a transaction's fixed cost (markers on every partition it touched,
    /// the offset commit, and the wait for the previous transaction's markers) is
    /// spread over that many records. Measured on a 2-core box: 1,000 → 5,000 took
    /// end to end from 3.7k to 9.5k msg/s; 5,000 → 20,000 took consume-only
    /// (500,000 records, 1 counter + 1 aggregator, two runs) from 17.1 / 19.8 s to
    /// 14.6 / 18.2 s with all-distinct messages and from 10.2 / 11.2 s to 8.2 /
    /// 9.2 s with the novel, and halved the brokers' CPU (docs/benchmarks.md). A
    /// batch also closes after `batch_max_ms`, so at moderate rates batches stay
    /// small and latency does not grow.
    pub fn batch_max_records() -> usize {
        20_000
    }
    pub fn batch_max_ms() -> u64 {
        100
    }
    /// 20,000 compact records of the novel take ~1.8 MB: the record count closes
    /// the counter's batches; this bounds them when lines are long.
    pub fn counter_batch_max_bytes() -> usize {
        4 * 1024 * 1024
    }
    /// ~24,000 sightings of ~86 bytes: about what 20,000 single records held
    /// before the counter packed its forwards.
    pub fn aggregator_batch_max_bytes() -> usize {
        2 * 1024 * 1024
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
    ServeSettings,
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
    /// The `TALLY__…` overrides that point another tally process at the same
    /// brokers, Redis nodes, key prefix, topics, consumer groups and
    /// transactional-id prefix as these settings: for tools and tests that start
    /// the services as processes. Every derived name is passed explicitly (it may
    /// have been changed after loading), so the child's file cannot re-derive it.
    pub fn pipeline_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TALLY__NAMESPACE", self.namespace.clone()),
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
                "TALLY__COUNTER__TRANSACTIONAL_ID_PREFIX",
                self.counter.transactional_id_prefix.clone(),
            ),
            (
                "TALLY__AGGREGATOR__GROUP_ID",
                self.aggregator.group_id.clone(),
            ),
        ]
    }
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

mod load;
pub mod namespace;
pub mod redact;
mod validate;

#[cfg(test)]
mod tests;
