//! What one `scripts/bench` run measured, as written to `results.json`.
//!
//! Every figure is kept per run (`runs`); the report shows medians over the runs,
//! and ratios are taken within a run (tally and raw Kafka measured minutes apart
//! on the same machine) before their median is taken, so a noisy neighbour moves
//! both sides of a ratio together.

use serde::{Deserialize, Serialize};

/// The whole benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// The machine it ran on.
    pub machine: Machine,
    /// What was asked for.
    pub config: BenchConfig,
    /// One entry per run (3 by default), in order.
    pub runs: Vec<RunResult>,
    /// Wall time of the whole benchmark, seconds.
    pub elapsed_s: f64,
}

/// The machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// `uname -r`-like kernel release, if known.
    pub kernel: String,
    /// Partitions the Kafka cluster held when the benchmark started (a broker's
    /// CPU per message grows with the partitions it hosts), if it could be read.
    #[serde(default)]
    pub kafka_partitions: Option<usize>,
}

/// The benchmark's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Runs; every figure is the median over them.
    pub runs: usize,
    /// Seconds each raw ceiling is driven for.
    pub raw_seconds: f64,
    /// Bytes of each raw Kafka record's value.
    pub record_bytes: usize,
    /// Client counts of the end-to-end points.
    pub clients: Vec<usize>,
    /// Messages each end-to-end point sends (over all its clients).
    pub messages_per_point: u64,
    /// Client count of the half-rate latency point.
    pub half_rate_clients: usize,
    /// Partitions of every benchmark topic (RF 3, min ISR 2).
    pub partitions: i32,
    /// `tally-counter` processes in the end-to-end pipeline.
    #[serde(default = "one")]
    pub counters: usize,
    /// `tally-aggregator` processes in the end-to-end pipeline.
    #[serde(default = "one")]
    pub aggregators: usize,
    /// Workloads measured, in order.
    #[serde(default = "novel_only")]
    pub workloads: Vec<Workload>,
    /// Records pre-loaded for each consume-only point (`None`: not measured).
    #[serde(default)]
    pub consume_records: Option<u64>,
    /// Clients of the many-clients point (`None`: not measured).
    #[serde(default)]
    pub many_clients: Option<usize>,
}

fn novel_only() -> Vec<Workload> {
    vec![Workload::Novel]
}

fn one() -> usize {
    1
}

/// One run: the raw ceilings, then tally end to end at each client count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// 1-based.
    pub run: usize,
    /// Idempotent acks=all produce ceiling.
    pub kafka_produce: Throughput,
    /// Transactional consume-transform-produce pass-through at the counter's cadence.
    pub kafka_transactional: Throughput,
    /// The Lua scripts with tally's batch shapes and `WAIT 1`.
    pub redis: Vec<RedisScriptResult>,
    /// tally end to end, one per client count, then the half-rate point.
    pub e2e: Vec<E2ePoint>,
    /// The sustained-rate search (`--sustained`), if it ran.
    #[serde(default)]
    pub sustained: Option<SustainedSearch>,
    /// Counters and aggregators cold on a pre-loaded topic, if measured.
    #[serde(default)]
    pub consume_only: Option<ConsumeOnly>,
    /// The all-distinct workload's points (`e2e`, `sustained` and `consume_only`
    /// above are the novel's), if it ran.
    #[serde(default)]
    pub distinct: Option<WorkloadRun>,
    /// The many-clients point (producer memory), if it ran.
    #[serde(default)]
    pub many_clients: Option<ManyClients>,
}

/// One workload's points of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkloadRun {
    /// Full-speed points by client count, then the half-rate point.
    pub e2e: Vec<E2ePoint>,
    /// The sustained-rate search, if it ran.
    #[serde(default)]
    pub sustained: Option<SustainedSearch>,
    /// The consume-only point, if it ran.
    #[serde(default)]
    pub consume_only: Option<ConsumeOnly>,
}

impl RunResult {
    /// The points `workload` has in this run (empty if it did not run).
    pub fn workload(&self, workload: Workload) -> WorkloadRun {
        match workload {
            Workload::Novel => WorkloadRun {
                e2e: self.e2e.clone(),
                sustained: self.sustained.clone(),
                consume_only: self.consume_only.clone(),
            },
            Workload::Distinct => self.distinct.clone().unwrap_or_default(),
        }
    }

    /// Every end-to-end point, search window and consume-only point of both
    /// workloads, and the many-clients point: what must all be exact.
    pub fn all_exact(&self) -> (usize, usize) {
        let mut points = 0;
        let mut inexact = 0;
        let mut count = |exact: bool| {
            points += 1;
            inexact += usize::from(!exact);
        };
        for w in [Workload::Novel, Workload::Distinct] {
            let run = self.workload(w);
            let windows = run
                .sustained
                .iter()
                .flat_map(|s| &s.steps)
                .map(|w| &w.point);
            for p in run.e2e.iter().chain(windows) {
                count(p.exact);
            }
            if let Some(c) = &run.consume_only {
                count(c.exact);
            }
        }
        if let Some(m) = &self.many_clients {
            count(m.exact);
        }
        (points, inexact)
    }
}

impl BenchResults {
    /// The results as if only `workload` had been measured: every run's e2e
    /// points, search and consume-only point are that workload's (the raw
    /// ceilings and the many-clients point are shared by both).
    pub fn for_workload(&self, workload: Workload) -> BenchResults {
        let mut out = self.clone();
        for run in &mut out.runs {
            let w = run.workload(workload);
            run.e2e = w.e2e;
            run.sustained = w.sustained;
            run.consume_only = w.consume_only;
            run.distinct = None;
        }
        out
    }
}

/// Counters and aggregators started cold on a `client_message` topic pre-loaded
/// with `records` records of `clients` clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumeOnly {
    /// Records pre-loaded (every one counted once per client and once per message).
    pub records: u64,
    /// Clients the records belong to.
    pub clients: usize,
    /// Partitions of the topics.
    pub partitions: i32,
    /// `tally-counter` processes.
    pub counters: usize,
    /// `tally-aggregator` processes.
    pub aggregators: usize,
    /// Seconds the pre-load took (idempotent producer, off the clock).
    pub preload_s: f64,
    /// Seconds from starting the services until every count was exact.
    pub counted_s: f64,
    /// `records / counted_s`.
    pub per_s: f64,
    /// Every client and message count exact.
    pub exact: bool,
    /// First mismatches when not exact.
    pub mismatches: Vec<String>,
    /// CPU and memory of every process while counting (µs per record).
    pub cost: Vec<ProcessCost>,
}

/// The producer's memory with many connected clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManyClients {
    /// Clients connected at once (each said HELLO and sent one line).
    pub clients: usize,
    /// Seconds until every client was connected and its line ACKed.
    pub connect_s: f64,
    /// Producer RSS before the clients connected, MiB.
    pub idle_rss_mib: f64,
    /// Producer RSS with every client connected, MiB.
    pub connected_rss_mib: f64,
    /// Highest producer RSS sampled while they connected, stayed and left, MiB.
    pub peak_rss_mib: f64,
    /// Producer RSS once every client left and a settle time passed, MiB.
    pub after_rss_mib: f64,
    /// Seconds waited after the last client left before `after_rss_mib`.
    pub settle_s: f64,
    /// Every client's count (1) and its line's count exact.
    pub exact: bool,
    /// `ERR unavailable` answers the clients got.
    pub err_unavailable: u64,
    /// Reconnects over the clients.
    pub reconnects: u64,
}

/// What the clients send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Every client replays the novel: many texts repeat.
    #[default]
    Novel,
    /// Every line salted with its client and sn (`tally mtc --distinct`): every
    /// text is sent once.
    Distinct,
}

impl Workload {
    /// `novel` or `distinct`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Novel => "novel",
            Self::Distinct => "distinct",
        }
    }

    /// The workload called `name` ([`Workload::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Novel, Self::Distinct]
            .into_iter()
            .find(|w| w.name() == name.trim())
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The search for the highest offered rate the pipeline carries for a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SustainedSearch {
    /// What the clients sent.
    pub workload: Workload,
    /// Concurrent clients of every window.
    pub clients: usize,
    /// Seconds each window sends for.
    pub window_s: f64,
    /// The search's bounds, msg/s offered (the high one is the run's raw produce ceiling).
    pub low_msg_s: f64,
    /// Upper bound, msg/s offered.
    pub high_msg_s: f64,
    /// Every window tried, in order.
    pub steps: Vec<SustainStep>,
    /// The highest offered rate carried (`None`: not even the low bound was).
    pub rate_msg_s: Option<f64>,
}

impl SustainedSearch {
    /// The window at the found rate (the last one carried at that rate).
    pub fn at_rate(&self) -> Option<&SustainStep> {
        let rate = self.rate_msg_s?;
        self.steps
            .iter()
            .rev()
            .find(|s| s.carried && s.offered_msg_s == rate)
    }
}

/// One window of the sustained-rate search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SustainStep {
    /// Offered rate over all clients, msg/s.
    pub offered_msg_s: f64,
    /// Messages ACKed but not yet counted by the counters, 10 s into the window
    /// (`None` for a window shorter than that).
    pub lag_early: Option<u64>,
    /// The same when the window's last line was ACKed.
    pub lag_end: u64,
    /// Whether the window met every condition (`crate::search::judge`).
    pub carried: bool,
    /// Why not, when not carried.
    pub why_not: Vec<String>,
    /// The window's figures (exact at the end, latencies, cost).
    pub point: E2ePoint,
}

/// Items moved in a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Records (or messages) completed.
    pub items: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// `items / seconds`.
    pub per_s: f64,
    /// Extra detail, e.g. transactions committed or the batch shape.
    pub detail: String,
}

/// One Lua script driven as fast as possible.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisScriptResult {
    /// `stash_append`, `count_client` or `count_messages`.
    pub script: String,
    /// Items per call (lines, sns, or sightings).
    pub batch: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Items per second (messages the script accounts for).
    pub throughput: Throughput,
    /// Latency of one call incl. its share of `WAIT`, ms.
    pub call_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub call_p99_ms: f64,
}

/// tally end to end at one client count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2ePoint {
    /// Concurrent clients.
    pub clients: usize,
    /// Per-client rate limit (messages/s), `None` = as fast as possible.
    pub rate_per_client: Option<f64>,
    /// Messages sent and ACKed (all of them, or the point fails).
    pub messages: u64,
    /// Seconds from the first line sent to the last ACK.
    pub ingest_s: f64,
    /// `messages / ingest_s`.
    pub ingest_per_s: f64,
    /// Seconds from the first line sent until every count was exact.
    pub counted_s: f64,
    /// `messages / counted_s`: the end-to-end (sustained) rate.
    pub end_to_end_per_s: f64,
    /// ACK latency percentiles over every message, ms.
    pub ack_p50_ms: f64,
    /// 99th percentile ACK latency, ms.
    pub ack_p99_ms: f64,
    /// Sampled ACK → counted-by-the-aggregator latency, ms (`None` without samples).
    pub e2e_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub e2e_p99_ms: Option<f64>,
    /// How many probe messages the end-to-end latency is from.
    pub e2e_samples: u64,
    /// `tally verify` found every client and message count exact.
    pub exact: bool,
    /// First mismatches when not exact.
    pub mismatches: Vec<String>,
    /// CPU and memory of every process during the point.
    pub cost: Vec<ProcessCost>,
    /// `ERR unavailable` answers the load's clients and the probe got.
    #[serde(default)]
    pub err_unavailable: u64,
    /// Reconnections over the load's clients.
    #[serde(default)]
    pub reconnects: u64,
}

/// One process's cost during an end-to-end point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessCost {
    /// `tally-producer`, `tally-counter`, `tally-aggregator`, `load (tally-bench)`,
    /// `kafka-1`, `redis-7000`, ...
    pub name: String,
    /// `tally`, `load`, `kafka` or `redis`: what it is part of.
    pub role: String,
    /// User + system CPU seconds spent during the point.
    pub cpu_s: f64,
    /// Highest resident set size seen during the point (sampled), MiB.
    pub peak_rss_mib: f64,
    /// `cpu_s` per message of the point, µs.
    pub cpu_us_per_message: f64,
}
