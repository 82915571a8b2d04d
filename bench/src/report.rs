//! The benchmark's report: a [`Summary`] of [`BenchResults`], `report.md`,
//! `throughput.png`, `latency.png` and a plain-text summary for the terminal.
//!
//! What this module guarantees:
//! - Every figure is the **median over the runs** ([`median`]: non-finite values
//!   are ignored, an even count gives the mean of the middle two). A figure that
//!   some runs lack is the median of the runs that have it.
//! - Ratios to raw Kafka are **taken within a run**, then their median is taken:
//!   each run's best full-speed end-to-end rate divided by the same run's
//!   idempotent acks=all produce rate. It is never a ratio of medians, so a noisy
//!   neighbour that slows one run slows both sides of that run's ratio.
//! - A point is exact only if it was exact in every run, and the throughput
//!   target is met only if every point of every run was exact.
//! - A target whose data is missing is reported as not evaluable (`met: None`,
//!   `n/a`), never as met and never with a panic; nothing here panics on the
//!   results or on IO: file errors come back as a [`ReportError`] naming the path.
//! - The charts render text with the DejaVu Sans bundled in `tally-tests` (see
//!   [`tally_tests::report::ensure_font`]), so they need no system fonts.
//! - [`write_markdown`] writes only `report.md`, [`write_charts`] only
//!   `throughput.png` and `latency.png`, in the directory given (created if
//!   needed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::results::{BenchResults, E2ePoint};

/// Target 1: sustained end-to-end rate, messages/s (every count exact).
pub const TARGET_SUSTAINED_PER_S: f64 = 50_000.0;
/// Target 2: ACK latency p99 at half the sustained rate, ms.
pub const TARGET_ACK_P99_MS: f64 = 20.0;
/// Target 2: end-to-end latency p99 at half the sustained rate, ms.
pub const TARGET_E2E_P99_MS: f64 = 1_000.0;
/// Target 3: tally end to end / raw Kafka acks=all produce, within a run.
pub const TARGET_RATIO: f64 = 0.33;
/// Target 4: producer peak RSS with [`TARGET_PRODUCER_CLIENTS`] clients, MiB.
pub const TARGET_PRODUCER_RSS_MIB: f64 = 150.0;
/// Target 4: the client count the producer RSS target is stated at.
pub const TARGET_PRODUCER_CLIENTS: usize = 1000;
/// Target 4: peak RSS of each counter and each aggregator, MiB.
pub const TARGET_WORKER_RSS_MIB: f64 = 100.0;

/// Errors writing the report and charts: the fault suite's report error (the same
/// files, PNG encoder, plotters and bundled font); its scenario-name variants do
/// not occur here.
pub use tally_tests::report::ReportError;

/// The median of the finite values; `None` if there is none. An even count
/// gives the mean of the two middle values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        // Halves first: no overflow for values near f64::MAX.
        v[n / 2 - 1] / 2.0 + v[n / 2] / 2.0
    })
}

/// Medians over the runs of everything the report shows, and the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Runs the results hold (every median is over at most this many).
    pub runs: usize,
    /// Idempotent acks=all produce ceiling, messages/s.
    pub kafka_produce_per_s: Option<f64>,
    /// Transactional pass-through ceiling, messages/s.
    pub kafka_transactional_per_s: Option<f64>,
    /// Each Lua script, by script name.
    pub redis: BTreeMap<String, ScriptSummary>,
    /// End-to-end points: full speed by client count, then the rate-limited
    /// (half-rate) points by client count.
    pub points: Vec<PointSummary>,
    /// Per run: its best full-speed end-to-end rate / its Kafka produce rate
    /// (`None` where either is missing).
    pub ratio_by_run: Vec<Option<f64>>,
    /// Median of [`Summary::ratio_by_run`].
    pub ratio_to_kafka: Option<f64>,
    /// Every point of every run was exact (and there was at least one point).
    pub all_exact: bool,
    /// The targets of the benchmark, each judged on the medians.
    pub targets: Vec<TargetCheck>,
}

/// One Lua script's medians.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptSummary {
    /// Items per call (as in the first run that has the script).
    pub batch: usize,
    /// Calls in flight (as in the first run that has the script).
    pub concurrency: usize,
    /// How many results the medians are over.
    pub runs: usize,
    /// Items per second.
    pub per_s: Option<f64>,
    /// Call latency p50, ms.
    pub call_p50_ms: Option<f64>,
    /// Call latency p99, ms.
    pub call_p99_ms: Option<f64>,
}

/// One end-to-end point's medians. Points are matched across runs by client
/// count and by whether they are rate-limited (the half-rate point's per-client
/// rate may be derived from each run's own sustained rate, so it is not a key).
#[derive(Debug, Clone, Serialize)]
pub struct PointSummary {
    /// Concurrent clients.
    pub clients: usize,
    /// `false`: as fast as possible (a full-speed point); `true`: the half-rate point.
    pub rate_limited: bool,
    /// Median per-client rate limit, messages/s (`None` at full speed).
    pub rate_per_client: Option<f64>,
    /// Runs that have this point.
    pub runs: usize,
    /// Messages ACKed per second.
    pub ingest_per_s: Option<f64>,
    /// Messages counted exactly per second, end to end.
    pub end_to_end_per_s: Option<f64>,
    /// ACK latency p50, ms.
    pub ack_p50_ms: Option<f64>,
    /// ACK latency p99, ms.
    pub ack_p99_ms: Option<f64>,
    /// ACK → counted latency p50, ms.
    pub e2e_p50_ms: Option<f64>,
    /// ACK → counted latency p99, ms.
    pub e2e_p99_ms: Option<f64>,
    /// Exact in every run that has the point.
    pub exact: bool,
    /// Median over runs of this point's end-to-end rate / the run's Kafka
    /// produce rate (full-speed points only).
    pub ratio_to_kafka: Option<f64>,
    /// Cost by process name.
    pub processes: BTreeMap<String, CostSummary>,
    /// Cost by role, each run's processes of the role summed before the median
    /// (peak RSS summed too: an upper bound of the role's memory at any moment).
    pub roles: BTreeMap<String, CostSummary>,
}

impl PointSummary {
    /// The process cost of every process whose name starts with `prefix`.
    fn processes_named<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a CostSummary)> + 'a {
        self.processes
            .iter()
            .filter(move |(name, _)| name.starts_with(prefix))
    }
}

/// Medians of a process's (or a role's) cost during a point.
#[derive(Debug, Clone, Serialize)]
pub struct CostSummary {
    /// `tally`, `load`, `kafka` or `redis`.
    pub role: String,
    /// How many measurements the medians are over.
    pub runs: usize,
    /// CPU seconds (user + system) during the point.
    pub cpu_s: Option<f64>,
    /// Peak resident set size, MiB.
    pub peak_rss_mib: Option<f64>,
    /// CPU µs per message of the point.
    pub cpu_us_per_message: Option<f64>,
}

/// One target and whether the medians meet it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is measured, e.g. `ACK latency p99 at half rate`.
    pub name: String,
    /// The goal, e.g. `≤ 20 ms`.
    pub target: String,
    /// The median measured, with where it comes from.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not evaluable (missing data,
    /// or not measured under the target's conditions).
    pub met: Option<bool>,
}

#[derive(Default)]
struct CostAcc {
    role: String,
    cpu_s: Vec<f64>,
    rss: Vec<f64>,
    us: Vec<f64>,
}

impl CostAcc {
    fn push(&mut self, role: &str, cpu_s: f64, rss: f64, us: f64) {
        if self.role.is_empty() {
            self.role = role.to_owned();
        }
        self.cpu_s.push(cpu_s);
        self.rss.push(rss);
        self.us.push(us);
    }

    fn summary(&self) -> CostSummary {
        CostSummary {
            role: self.role.clone(),
            runs: self.cpu_s.len(),
            cpu_s: median(&self.cpu_s),
            peak_rss_mib: median(&self.rss),
            cpu_us_per_message: median(&self.us),
        }
    }
}

#[derive(Default)]
struct PointAcc {
    runs: usize,
    not_exact: bool,
    rate: Vec<f64>,
    ingest: Vec<f64>,
    e2e: Vec<f64>,
    ack50: Vec<f64>,
    ack99: Vec<f64>,
    e50: Vec<f64>,
    e99: Vec<f64>,
    ratio: Vec<f64>,
    processes: BTreeMap<String, CostAcc>,
    roles: BTreeMap<String, CostAcc>,
}

impl PointAcc {
    fn add(&mut self, p: &E2ePoint, kafka_per_s: f64) {
        self.runs += 1;
        self.not_exact |= !p.exact;
        if let Some(r) = p.rate_per_client {
            self.rate.push(r);
        }
        self.ingest.push(p.ingest_per_s);
        self.e2e.push(p.end_to_end_per_s);
        self.ack50.push(p.ack_p50_ms);
        self.ack99.push(p.ack_p99_ms);
        self.e50.extend(p.e2e_p50_ms);
        self.e99.extend(p.e2e_p99_ms);
        if p.rate_per_client.is_none() {
            self.ratio.extend(ratio(p.end_to_end_per_s, kafka_per_s));
        }
        let mut roles: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
        for c in &p.cost {
            self.processes.entry(c.name.clone()).or_default().push(
                &c.role,
                c.cpu_s,
                c.peak_rss_mib,
                c.cpu_us_per_message,
            );
            let sum = roles.entry(c.role.as_str()).or_default();
            sum.0 += c.cpu_s;
            sum.1 += c.peak_rss_mib;
            sum.2 += c.cpu_us_per_message;
        }
        for (role, (cpu, rss, us)) in roles {
            self.roles
                .entry(role.to_owned())
                .or_default()
                .push(role, cpu, rss, us);
        }
    }

    fn summary(&self, clients: usize, rate_limited: bool) -> PointSummary {
        PointSummary {
            clients,
            rate_limited,
            rate_per_client: median(&self.rate),
            runs: self.runs,
            ingest_per_s: median(&self.ingest),
            end_to_end_per_s: median(&self.e2e),
            ack_p50_ms: median(&self.ack50),
            ack_p99_ms: median(&self.ack99),
            e2e_p50_ms: median(&self.e50),
            e2e_p99_ms: median(&self.e99),
            exact: !self.not_exact,
            ratio_to_kafka: median(&self.ratio),
            processes: self
                .processes
                .iter()
                .map(|(k, v)| (k.clone(), v.summary()))
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(k, v)| (k.clone(), v.summary()))
                .collect(),
        }
    }
}

/// `a / b` when both are finite and `b > 0`.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// Medians over the runs of every figure, the within-run ratios to raw Kafka and
/// the target checks (see the module doc for the rules).
pub fn summarize(results: &BenchResults) -> Summary {
    let runs = &results.runs;
    let produce: Vec<f64> = runs.iter().map(|r| r.kafka_produce.per_s).collect();
    let txn: Vec<f64> = runs.iter().map(|r| r.kafka_transactional.per_s).collect();

    // Per script: its shape (from the first run that has it) and every value.
    struct ScriptAcc {
        batch: usize,
        concurrency: usize,
        per_s: Vec<f64>,
        p50: Vec<f64>,
        p99: Vec<f64>,
    }
    let mut scripts: BTreeMap<String, ScriptAcc> = BTreeMap::new();
    for s in runs.iter().flat_map(|r| &r.redis) {
        let acc = scripts
            .entry(s.script.clone())
            .or_insert_with(|| ScriptAcc {
                batch: s.batch,
                concurrency: s.concurrency,
                per_s: Vec::new(),
                p50: Vec::new(),
                p99: Vec::new(),
            });
        acc.per_s.push(s.throughput.per_s);
        acc.p50.push(s.call_p50_ms);
        acc.p99.push(s.call_p99_ms);
    }
    let redis = scripts
        .into_iter()
        .map(|(name, acc)| {
            let summary = ScriptSummary {
                batch: acc.batch,
                concurrency: acc.concurrency,
                runs: acc.per_s.len(),
                per_s: median(&acc.per_s),
                call_p50_ms: median(&acc.p50),
                call_p99_ms: median(&acc.p99),
            };
            (name, summary)
        })
        .collect();

    // (rate-limited, clients): full-speed points sort first.
    let mut accs: BTreeMap<(bool, usize), PointAcc> = BTreeMap::new();
    let mut ratio_by_run = Vec::with_capacity(runs.len());
    for run in runs {
        let kafka = run.kafka_produce.per_s;
        for p in &run.e2e {
            accs.entry((p.rate_per_client.is_some(), p.clients))
                .or_default()
                .add(p, kafka);
        }
        let best = best_full_speed(&run.e2e).map(|p| p.end_to_end_per_s);
        ratio_by_run.push(best.and_then(|b| ratio(b, kafka)));
    }
    let points: Vec<PointSummary> = accs
        .iter()
        .map(|(&(limited, clients), acc)| acc.summary(clients, limited))
        .collect();
    let all_exact = !points.is_empty() && points.iter().all(|p| p.exact);
    let ratios: Vec<f64> = ratio_by_run.iter().flatten().copied().collect();

    let mut summary = Summary {
        runs: runs.len(),
        kafka_produce_per_s: median(&produce),
        kafka_transactional_per_s: median(&txn),
        redis,
        points,
        ratio_by_run,
        ratio_to_kafka: median(&ratios),
        all_exact,
        targets: Vec::new(),
    };
    summary.targets = targets(results, &summary);
    summary
}

/// The full-speed point of a run with the highest finite end-to-end rate.
fn best_full_speed(points: &[E2ePoint]) -> Option<&E2ePoint> {
    points
        .iter()
        .filter(|p| p.rate_per_client.is_none() && p.end_to_end_per_s.is_finite())
        .max_by(|a, b| a.end_to_end_per_s.total_cmp(&b.end_to_end_per_s))
}

impl Summary {
    /// Full-speed points, by client count.
    pub fn full_speed(&self) -> impl Iterator<Item = &PointSummary> {
        self.points.iter().filter(|p| !p.rate_limited)
    }

    /// The half-rate latency point: the rate-limited point at `clients` if there
    /// is one, else the first rate-limited point.
    pub fn half_rate(&self, clients: usize) -> Option<&PointSummary> {
        let mut limited = self.points.iter().filter(|p| p.rate_limited);
        let first = limited.clone().next();
        limited.find(|p| p.clients == clients).or(first)
    }

    /// The full-speed point with the highest median end-to-end rate.
    pub fn best_full_speed(&self) -> Option<&PointSummary> {
        self.full_speed()
            .filter_map(|p| p.end_to_end_per_s.map(|v| (p, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, _)| p)
    }

    /// The full-speed point with the most clients.
    pub fn most_clients(&self) -> Option<&PointSummary> {
        self.full_speed().max_by_key(|p| p.clients)
    }
}

fn check(name: &str, target: &str, measured: String, met: Option<bool>) -> TargetCheck {
    TargetCheck {
        name: name.to_owned(),
        target: target.to_owned(),
        measured,
        met,
    }
}

/// A point's rate condition in words, e.g. `100 clients × 250/s = 25,000 msg/s offered`.
fn offered(p: &PointSummary) -> String {
    match p.rate_per_client {
        Some(r) => format!(
            "{} clients × {}/s = {} msg/s offered",
            p.clients,
            small_rate(r),
            thousands(r * p.clients as f64)
        ),
        None if p.rate_limited => format!("{} clients, rate-limited", p.clients),
        None => format!("{} clients, full speed", p.clients),
    }
}

/// The largest median peak RSS over every point of the processes named `prefix…`.
fn max_rss<'a>(summary: &'a Summary, prefix: &'a str) -> Option<(f64, &'a str, &'a PointSummary)> {
    summary
        .points
        .iter()
        .flat_map(|p| {
            p.processes_named(prefix)
                .filter_map(move |(name, c)| c.peak_rss_mib.map(|v| (v, name.as_str(), p)))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// A point in words: `100 clients` or `100 clients, half rate`.
fn point_name(p: &PointSummary) -> String {
    if p.rate_limited {
        format!("{} clients, half rate", p.clients)
    } else {
        format!("{} clients", p.clients)
    }
}

fn targets(results: &BenchResults, s: &Summary) -> Vec<TargetCheck> {
    let mut out = Vec::new();

    let goal = format!(
        "≥ {} msg/s, every count exact",
        thousands(TARGET_SUSTAINED_PER_S)
    );
    let best = s
        .best_full_speed()
        .and_then(|p| p.end_to_end_per_s.map(|v| (p, v)));
    out.push(match best {
        None => check(
            "sustained end-to-end throughput",
            &goal,
            "no full-speed point measured".into(),
            None,
        ),
        Some((p, v)) => {
            let inexact: Vec<String> = s
                .points
                .iter()
                .filter(|p| !p.exact)
                .map(|p| p.clients.to_string())
                .collect();
            let exactness = if inexact.is_empty() {
                "all exact".to_owned()
            } else {
                format!("NOT exact at {} clients", inexact.join(", "))
            };
            check(
                "sustained end-to-end throughput",
                &goal,
                format!(
                    "{} msg/s at {} clients, {exactness}",
                    thousands(v),
                    p.clients
                ),
                Some(v >= TARGET_SUSTAINED_PER_S && s.all_exact),
            )
        }
    });

    let half = s.half_rate(results.config.half_rate_clients);
    let ack_goal = format!("≤ {} ms", TARGET_ACK_P99_MS);
    out.push(match half {
        None => check(
            "ACK latency p99 at half rate",
            &ack_goal,
            "no half-rate point measured".into(),
            None,
        ),
        Some(p) => match p.ack_p99_ms {
            None => check(
                "ACK latency p99 at half rate",
                &ack_goal,
                format!("no ACK latency ({})", offered(p)),
                None,
            ),
            Some(v) => check(
                "ACK latency p99 at half rate",
                &ack_goal,
                format!("{} ms ({})", ms(v), offered(p)),
                Some(v <= TARGET_ACK_P99_MS),
            ),
        },
    });
    out.push(match half {
        None => check(
            "end-to-end latency p99 at half rate",
            "≤ 1 s",
            "no half-rate point measured".into(),
            None,
        ),
        Some(p) => match p.e2e_p99_ms {
            None => check(
                "end-to-end latency p99 at half rate",
                "≤ 1 s",
                format!("no end-to-end samples ({})", offered(p)),
                None,
            ),
            Some(v) => check(
                "end-to-end latency p99 at half rate",
                "≤ 1 s",
                format!("{} ms ({})", ms(v), offered(p)),
                Some(v <= TARGET_E2E_P99_MS),
            ),
        },
    });

    let ratio_goal = format!("≥ {TARGET_RATIO} × Kafka acks=all produce, same run");
    out.push(match s.ratio_to_kafka {
        None => check(
            "tally / raw Kafka throughput",
            &ratio_goal,
            "no run has both rates".into(),
            None,
        ),
        Some(r) => check(
            "tally / raw Kafka throughput",
            &ratio_goal,
            format!(
                "{} (median of {} within-run ratios)",
                ratio_text(r),
                s.ratio_by_run.iter().flatten().count()
            ),
            Some(r >= TARGET_RATIO),
        ),
    });

    let producer_goal = format!(
        "≤ {} MiB with {} clients",
        TARGET_PRODUCER_RSS_MIB, TARGET_PRODUCER_CLIENTS
    );
    let producer = s.most_clients().map(|p| {
        let rss = p
            .processes_named("tally-producer")
            .filter_map(|(_, c)| c.peak_rss_mib)
            .max_by(f64::total_cmp);
        (p.clients, rss)
    });
    out.push(match producer {
        None => check(
            "producer RSS",
            &producer_goal,
            "no full-speed point measured".into(),
            None,
        ),
        Some((clients, None)) => check(
            "producer RSS",
            &producer_goal,
            format!("no tally-producer process measured at {clients} clients"),
            None,
        ),
        Some((clients, Some(v))) if clients < TARGET_PRODUCER_CLIENTS => check(
            "producer RSS",
            &producer_goal,
            format!("{} MiB at {clients} clients (most measured; the target needs {TARGET_PRODUCER_CLIENTS})", mib(v)),
            None,
        ),
        Some((clients, Some(v))) => check(
            "producer RSS",
            &producer_goal,
            format!("{} MiB at {clients} clients", mib(v)),
            Some(v <= TARGET_PRODUCER_RSS_MIB),
        ),
    });

    for (name, prefix) in [
        ("counter RSS", "tally-counter"),
        ("aggregator RSS", "tally-aggregator"),
    ] {
        let goal = format!("≤ {} MiB each", TARGET_WORKER_RSS_MIB);
        out.push(match max_rss(s, prefix) {
            None => check(name, &goal, format!("no {prefix} process measured"), None),
            Some((v, process, p)) => check(
                name,
                &goal,
                format!("{} MiB max ({process} at {})", mib(v), point_name(p)),
                Some(v <= TARGET_WORKER_RSS_MIB),
            ),
        });
    }
    out
}

// ---------------------------------------------------------------- formatting

/// An integer with thousands separators: `52,345`.
fn thousands(v: f64) -> String {
    let r = v.round();
    if !r.is_finite() {
        return "–".to_owned();
    }
    if r.abs() >= 1e18 {
        return format!("{r:.0}");
    }
    let digits = (r.abs() as u64).to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if r < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate that may be small (a per-client limit): one decimal below 100.
fn small_rate(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:.1}")
    } else {
        thousands(v)
    }
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

fn mib(v: f64) -> String {
    format!("{v:.1}")
}

fn ratio_text(v: f64) -> String {
    format!("{v:.2}×")
}

/// `–` for a missing value, else `f` of it.
fn or_dash(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

fn met_text(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "n/a",
    }
}

/// Text for a markdown table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The rate column of a point.
fn rate_text(p: &PointSummary) -> String {
    match (p.rate_limited, p.rate_per_client) {
        (false, _) => "full speed".to_owned(),
        (true, Some(r)) => format!(
            "half rate: {}/s per client ({} msg/s)",
            small_rate(r),
            thousands(r * p.clients as f64)
        ),
        (true, None) => "half rate".to_owned(),
    }
}

fn latency_pair(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", or_dash(a, ms), or_dash(b, ms))
}

// ------------------------------------------------------------------ markdown

/// Writes `dir/report.md` (creating `dir` if needed) and returns its path.
///
/// Sections: machine, configuration and elapsed time; the targets (target |
/// goal | measured (median) | met: `yes`, `NO` or `n/a`); the raw ceilings
/// (median and each run's value) and the Redis call latencies; the end-to-end
/// table (clients | rate | ingest | end to end | ratio to raw Kafka | ACK p50/p99 |
/// e2e p50/p99 | exact) and each run's end-to-end rate with its within-run ratio;
/// the cost per process and per role at the full-speed point with the most
/// clients; the mismatches of any inexact point; links to `throughput.png` and
/// `latency.png` (written by [`write_charts`]).
pub fn write_markdown(
    results: &BenchResults,
    summary: &Summary,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    create_dir(dir)?;
    let md = markdown(results, summary);
    let path = dir.join("report.md");
    let io_error = |source| ReportError::Io {
        path: path.clone(),
        source,
    };
    let file = File::create(&path).map_err(io_error)?;
    let mut out = BufWriter::new(file);
    out.write_all(md.as_bytes()).map_err(io_error)?;
    out.flush().map_err(io_error)?;
    Ok(path)
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The line every report carries about how its figures are made.
fn method_line(runs: usize) -> String {
    format!(
        "Medians over {runs} run{}; ratios computed within each run, then the median.",
        if runs == 1 { "" } else { "s" }
    )
}

fn markdown(results: &BenchResults, s: &Summary) -> String {
    let m = &results.machine;
    let c = &results.config;
    let mut md = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(md, "# tally benchmark\n");
    let _ = writeln!(
        md,
        "Started {}, took {} s ({:.1} min).\n",
        cell(&results.started_at),
        thousands(results.elapsed_s),
        results.elapsed_s / 60.0
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {} MiB memory, kernel {}; the Kafka cluster held {} partitions \
         at the start.\n",
        m.cpus,
        thousands(m.memory_mib as f64),
        cell(&m.kernel),
        m.kafka_partitions
            .map_or("an unknown number of".to_owned(), |n| thousands(n as f64))
    );
    let clients: Vec<String> = c.clients.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        md,
        "Configuration: {} runs; raw ceilings driven {} s each with {}-byte Kafka records; \
         end-to-end points at {} clients, {} messages each; half-rate latency point at {} \
         clients; {} partitions per topic (RF 3, min ISR 2); pipeline: 1 producer, {} \
         counter(s), {} aggregator(s).\n",
        c.runs,
        c.raw_seconds,
        c.record_bytes,
        clients.join(", "),
        thousands(c.messages_per_point as f64),
        c.half_rate_clients,
        c.partitions,
        c.counters,
        c.aggregators
    );
    let _ = write!(md, "{}", method_line(s.runs));
    if s.runs != c.runs {
        let _ = write!(md, " ({} runs were asked for.)", c.runs);
    }
    let _ = writeln!(md, "\n");

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | goal | measured (median) | met |");
    let _ = writeln!(md, "|---|---|---|:---:|");
    for t in &s.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            cell(&t.name),
            cell(&t.target),
            cell(&t.measured),
            met_text(t.met)
        );
    }

    raw_tables(&mut md, results, s);
    e2e_tables(&mut md, results, s);
    cost_tables(&mut md, s);

    let mut inexact = results
        .runs
        .iter()
        .flat_map(|r| r.e2e.iter().map(move |p| (r.run, p)))
        .filter(|(_, p)| !p.exact)
        .peekable();
    if inexact.peek().is_some() {
        let _ = writeln!(md, "\n## Counts not exact\n");
        for (run, p) in inexact {
            let _ = writeln!(
                md,
                "Run {run}, {} clients ({}): first mismatches:\n\n```text",
                p.clients,
                if p.rate_per_client.is_some() {
                    "half rate"
                } else {
                    "full speed"
                }
            );
            if p.mismatches.is_empty() {
                let _ = writeln!(md, "(no mismatch lines recorded)");
            }
            for line in &p.mismatches {
                let _ = writeln!(md, "{}", line.replace("```", "'''"));
            }
            let _ = writeln!(md, "```\n");
        }
    }

    let _ = writeln!(md, "\n## Charts\n");
    let _ = writeln!(md, "![throughput against client count](throughput.png)\n");
    let _ = writeln!(md, "![latency against client count](latency.png)");
    md
}

/// A table header: `first`, `median` (if `with_median`), then one column per run.
fn run_header(
    md: &mut String,
    first: &str,
    first_rule: &str,
    with_median: bool,
    results: &BenchResults,
) {
    let _ = write!(md, "| {first} |");
    if with_median {
        let _ = write!(md, " median |");
    }
    for r in &results.runs {
        let _ = write!(md, " run {} |", r.run);
    }
    let _ = write!(md, "\n|{first_rule}|");
    if with_median {
        let _ = write!(md, "---:|");
    }
    for _ in &results.runs {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
}

fn raw_tables(md: &mut String, results: &BenchResults, s: &Summary) {
    let _ = writeln!(md, "\n## Raw ceilings (msg/s)\n");
    run_header(md, "ceiling", "---", true, results);
    let first = results.runs.first();
    let detail = |d: Option<&String>| match d {
        Some(d) if !d.is_empty() => format!(" ({})", cell(d)),
        _ => String::new(),
    };
    let _ = write!(
        md,
        "| Kafka idempotent acks=all produce{} | {} |",
        detail(first.map(|r| &r.kafka_produce.detail)),
        or_dash(s.kafka_produce_per_s, thousands)
    );
    for r in &results.runs {
        let _ = write!(md, " {} |", thousands(r.kafka_produce.per_s));
    }
    let _ = write!(
        md,
        "\n| Kafka transactional pass-through{} | {} |",
        detail(first.map(|r| &r.kafka_transactional.detail)),
        or_dash(s.kafka_transactional_per_s, thousands)
    );
    for r in &results.runs {
        let _ = write!(md, " {} |", thousands(r.kafka_transactional.per_s));
    }
    md.push('\n');
    for (name, sc) in &s.redis {
        let _ = write!(
            md,
            "| Redis `{}` (batch {}, {} in flight, `WAIT 1`) | {} |",
            cell(name),
            sc.batch,
            sc.concurrency,
            or_dash(sc.per_s, thousands)
        );
        for r in &results.runs {
            let v = r.redis.iter().find(|x| &x.script == name);
            let _ = write!(
                md,
                " {} |",
                or_dash(v.map(|x| x.throughput.per_s), thousands)
            );
        }
        md.push('\n');
    }
    if !s.redis.is_empty() {
        let _ = writeln!(md, "\nRedis call latency (median, incl. `WAIT 1`):\n");
        let _ = writeln!(md, "| script | call p50 ms | call p99 ms |");
        let _ = writeln!(md, "|---|---:|---:|");
        for (name, sc) in &s.redis {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} |",
                cell(name),
                or_dash(sc.call_p50_ms, ms),
                or_dash(sc.call_p99_ms, ms)
            );
        }
    }
}

fn e2e_tables(md: &mut String, results: &BenchResults, s: &Summary) {
    let _ = writeln!(md, "\n## End to end (median)\n");
    let _ = writeln!(
        md,
        "| clients | rate | ingest msg/s | end-to-end msg/s | ratio to raw Kafka | ACK p50 / p99 ms | e2e p50 / p99 ms | exact |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|:---:|");
    for p in &s.points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.clients,
            rate_text(p),
            or_dash(p.ingest_per_s, thousands),
            or_dash(p.end_to_end_per_s, thousands),
            or_dash(p.ratio_to_kafka, ratio_text),
            latency_pair(p.ack_p50_ms, p.ack_p99_ms),
            latency_pair(p.e2e_p50_ms, p.e2e_p99_ms),
            if p.exact { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(
        md,
        "\nIngest: first line sent to last ACK. End to end: first line sent until \
         `tally verify` found every count exact. Ratio: the point's end-to-end rate / \
         the same run's Kafka acks=all produce rate, median over runs. ACK latency over \
         every message; e2e latency (ACK → counted by the aggregator) over probe messages."
    );

    let full: Vec<&PointSummary> = s.full_speed().collect();
    if full.is_empty() || results.runs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nEach run's end-to-end msg/s at full speed (ratio to that run's Kafka produce):\n"
    );
    run_header(md, "clients", "---:", false, results);
    for p in &full {
        let _ = write!(md, "| {} |", p.clients);
        for r in &results.runs {
            let v = r
                .e2e
                .iter()
                .find(|x| x.rate_per_client.is_none() && x.clients == p.clients);
            let text = match v {
                None => "–".to_owned(),
                Some(x) => format!(
                    "{} ({})",
                    thousands(x.end_to_end_per_s),
                    or_dash(ratio(x.end_to_end_per_s, r.kafka_produce.per_s), ratio_text)
                ),
            };
            let _ = write!(md, " {text} |");
        }
        md.push('\n');
    }
    let _ = write!(md, "| **best / Kafka produce** |");
    for (r, ratio) in results.runs.iter().zip(&s.ratio_by_run) {
        let best = best_full_speed(&r.e2e).map(|p| p.end_to_end_per_s);
        let _ = write!(
            md,
            " {} / {} = **{}** |",
            or_dash(best, thousands),
            thousands(r.kafka_produce.per_s),
            or_dash(*ratio, ratio_text)
        );
    }
    let _ = writeln!(
        md,
        "\n\nRatio to raw Kafka (median of the runs' best / Kafka produce): **{}**.",
        or_dash(s.ratio_to_kafka, ratio_text)
    );
}

fn cost_tables(md: &mut String, s: &Summary) {
    let Some(p) = s.most_clients() else {
        return;
    };
    let _ = writeln!(
        md,
        "\n## Cost at {} clients, full speed (median)\n",
        p.clients
    );
    let _ = writeln!(md, "| process | role | CPU s | peak RSS MiB | CPU µs/msg |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    let mut processes: Vec<(&String, &CostSummary)> = p.processes.iter().collect();
    processes.sort_by(|a, b| a.1.role.cmp(&b.1.role).then(a.0.cmp(b.0)));
    for (name, c) in processes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            cell(name),
            cell(&c.role),
            or_dash(c.cpu_s, |v| format!("{v:.2}")),
            or_dash(c.peak_rss_mib, mib),
            or_dash(c.cpu_us_per_message, |v| format!("{v:.1}"))
        );
    }
    let _ = writeln!(md, "\nPer role (its processes summed within a run):\n");
    let _ = writeln!(
        md,
        "| role | CPU s | peak RSS MiB (sum of peaks) | CPU µs/msg |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (role, c) in &p.roles {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            cell(role),
            or_dash(c.cpu_s, |v| format!("{v:.2}")),
            or_dash(c.peak_rss_mib, mib),
            or_dash(c.cpu_us_per_message, |v| format!("{v:.1}"))
        );
    }
}

// ----------------------------------------------------------------- text

/// A short plain-text summary for the terminal: the targets (`met`, `NOT MET`,
/// `n/a`), the raw ceilings and the end-to-end medians.
pub fn summary_text(results: &BenchResults, summary: &Summary) -> String {
    let s = summary;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "tally bench: {} CPUs, {} s. {}",
        results.machine.cpus,
        thousands(results.elapsed_s),
        method_line(s.runs)
    );
    let _ = writeln!(t, "targets:");
    let name_w = s
        .targets
        .iter()
        .map(|x| x.name.chars().count())
        .max()
        .unwrap_or(0);
    for x in &s.targets {
        let status = match x.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a",
        };
        let _ = writeln!(
            t,
            "  {status:<7}  {:<name_w$}  {} (goal {})",
            x.name, x.measured, x.target
        );
    }
    let _ = writeln!(t, "raw ceilings (median msg/s):");
    let _ = writeln!(
        t,
        "  Kafka acks=all produce  {:>12}",
        or_dash(s.kafka_produce_per_s, thousands)
    );
    let _ = writeln!(
        t,
        "  Kafka transactional     {:>12}",
        or_dash(s.kafka_transactional_per_s, thousands)
    );
    for (name, sc) in &s.redis {
        let _ = writeln!(
            t,
            "  Redis {:<17} {:>12}  call p50/p99 {} ms",
            name,
            or_dash(sc.per_s, thousands),
            latency_pair(sc.call_p50_ms, sc.call_p99_ms)
        );
    }
    let _ = writeln!(t, "end to end (median):");
    let _ = writeln!(
        t,
        "  {:>7}  {:<10}  {:>10}  {:>10}  {:>6}  {:>15}  {:>15}  exact",
        "clients", "rate", "ingest/s", "e2e/s", "ratio", "ACK p50/p99 ms", "e2e p50/p99 ms"
    );
    for p in &s.points {
        let rate = match (p.rate_limited, p.rate_per_client) {
            (false, _) => "full".to_owned(),
            (true, Some(r)) => format!("{}/s each", small_rate(r)),
            (true, None) => "half".to_owned(),
        };
        let _ = writeln!(
            t,
            "  {:>7}  {:<10}  {:>10}  {:>10}  {:>6}  {:>15}  {:>15}  {}",
            p.clients,
            rate,
            or_dash(p.ingest_per_s, thousands),
            or_dash(p.end_to_end_per_s, thousands),
            or_dash(p.ratio_to_kafka, ratio_text),
            latency_pair(p.ack_p50_ms, p.ack_p99_ms),
            latency_pair(p.e2e_p50_ms, p.e2e_p99_ms),
            if p.exact { "yes" } else { "NO" }
        );
    }
    t
}

// ------------------------------------------------------------------- charts

/// Chart size in pixels.
const CHART_SIZE: (u32, u32) = (1280, 720);
/// Height of the band above the plot that holds the title.
const HEADER_H: u32 = 56;
/// Width of the legend panel right of the plot.
const LEGEND_W: u32 = 330;
const TEXT_COLOR: RGBColor = RGBColor(20, 20, 20);
const INGEST_COLOR: RGBColor = RGBColor(31, 119, 180);
const E2E_COLOR: RGBColor = RGBColor(255, 127, 14);
const KAFKA_COLOR: RGBColor = RGBColor(148, 103, 189);
const TXN_COLOR: RGBColor = RGBColor(140, 86, 75);
const TARGET_COLOR: RGBColor = RGBColor(127, 127, 127);
const ACK_P50_COLOR: RGBColor = RGBColor(31, 119, 180);
const ACK_P99_COLOR: RGBColor = RGBColor(44, 160, 44);
const E2E_P50_COLOR: RGBColor = RGBColor(255, 127, 14);
const E2E_P99_COLOR: RGBColor = RGBColor(214, 39, 40);

/// A line's points: (clients, value).
type Points = Vec<(f64, f64)>;

/// A chart: lines against client count, standalone markers and horizontal
/// reference lines, each with its legend label.
struct Plot {
    title: String,
    y_desc: &'static str,
    y_log: bool,
    lines: Vec<(String, RGBColor, Points)>,
    markers: Vec<(String, RGBColor, (f64, f64))>,
    hlines: Vec<(String, RGBColor, f64)>,
}

impl Plot {
    /// Keeps only the points both axes can take (clients > 0; y > 0 on a log
    /// axis), and drops empty series.
    fn drawable(mut self) -> Self {
        let x_ok = |x: f64| x.is_finite() && x > 0.0;
        let y_log = self.y_log;
        let y_ok = |y: f64| y.is_finite() && (if y_log { y > 0.0 } else { y >= 0.0 });
        for (_, _, pts) in &mut self.lines {
            pts.retain(|&(x, y)| x_ok(x) && y_ok(y));
        }
        self.lines.retain(|l| !l.2.is_empty());
        self.markers.retain(|m| x_ok(m.2 .0) && y_ok(m.2 .1));
        self.hlines.retain(|h| y_ok(h.2));
        self
    }

    /// The x range: the clients drawn, widened by 1.5× either way (log axis).
    fn x_range(&self) -> (f64, f64) {
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.0))
            .chain(self.markers.iter().map(|m| m.2 .0));
        let (lo, hi) = xs.fold((f64::INFINITY, 0.0_f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo.is_finite() && hi > 0.0 {
            (lo / 1.5, hi * 1.5)
        } else {
            (1.0, 10.0)
        }
    }

    /// The y range; expects [`Plot::drawable`] to have removed what the axis cannot take.
    fn y_range(&self) -> (f64, f64) {
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.1))
            .chain(self.markers.iter().map(|m| m.2 .1))
            .chain(self.hlines.iter().map(|h| h.2))
            .collect();
        let hi = ys.iter().copied().fold(0.0_f64, f64::max);
        if self.y_log {
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            if lo.is_finite() && lo > 0.0 {
                (lo / 2.0, hi * 2.0)
            } else {
                (0.1, 1000.0)
            }
        } else if hi > 0.0 {
            (0.0, hi * 1.15)
        } else {
            (0.0, 1.0)
        }
    }
}

/// Writes `dir/throughput.png` and `dir/latency.png` (creating `dir` if needed)
/// and returns their paths.
///
/// - `throughput.png`: x = clients (log), y = msg/s; the full-speed points'
///   median ingest and end-to-end rates, and horizontal lines for the raw Kafka
///   produce and transactional medians and the 50,000 msg/s target.
/// - `latency.png`: x = clients (log), y = ms (log); the full-speed points'
///   median ACK p50/p99 and e2e p50/p99, the half-rate point's four values as
///   triangles, and the 20 ms and 1 s targets.
///
/// Values an axis cannot show (missing, non-finite, or ≤ 0 on a log axis) are
/// left out; a chart with nothing to show still gets its axes and title.
pub fn write_charts(
    results: &BenchResults,
    summary: &Summary,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    tally_tests::report::ensure_font().map_err(|_| ReportError::Font)?;
    create_dir(dir)?;
    let mut written = Vec::new();
    for (name, plot) in [
        ("throughput.png", throughput_plot(summary)),
        ("latency.png", latency_plot(results, summary)),
    ] {
        let path = dir.join(name);
        write_png(&plot.drawable(), &path)?;
        written.push(path);
    }
    Ok(written)
}

fn series(s: &Summary, f: impl Fn(&PointSummary) -> Option<f64>) -> Vec<(f64, f64)> {
    s.full_speed()
        .filter_map(|p| f(p).map(|v| (p.clients as f64, v)))
        .collect()
}

fn runs_text(s: &Summary) -> String {
    format!(
        "median of {} run{}",
        s.runs,
        if s.runs == 1 { "" } else { "s" }
    )
}

fn throughput_plot(s: &Summary) -> Plot {
    let mut hlines = Vec::new();
    if let Some(v) = s.kafka_produce_per_s {
        hlines.push((
            format!("raw Kafka acks=all produce ({})", thousands(v)),
            KAFKA_COLOR,
            v,
        ));
    }
    if let Some(v) = s.kafka_transactional_per_s {
        hlines.push((
            format!("raw Kafka transactional ({})", thousands(v)),
            TXN_COLOR,
            v,
        ));
    }
    hlines.push((
        format!("target {} msg/s", thousands(TARGET_SUSTAINED_PER_S)),
        TARGET_COLOR,
        TARGET_SUSTAINED_PER_S,
    ));
    Plot {
        title: format!("tally throughput against clients ({})", runs_text(s)),
        y_desc: "messages/s",
        y_log: false,
        lines: vec![
            (
                "ingest (ACKed)".to_owned(),
                INGEST_COLOR,
                series(s, |p| p.ingest_per_s),
            ),
            (
                "end to end (counted exactly)".to_owned(),
                E2E_COLOR,
                series(s, |p| p.end_to_end_per_s),
            ),
        ],
        markers: Vec::new(),
        hlines,
    }
}

fn latency_plot(results: &BenchResults, s: &Summary) -> Plot {
    let mut markers = Vec::new();
    if let Some(h) = s.half_rate(results.config.half_rate_clients) {
        let x = h.clients as f64;
        let label = |what: &str| format!("{what}, half rate ({} clients)", h.clients);
        let values = [
            ("ACK p50", ACK_P50_COLOR, h.ack_p50_ms),
            ("ACK p99", ACK_P99_COLOR, h.ack_p99_ms),
            ("e2e p50", E2E_P50_COLOR, h.e2e_p50_ms),
            ("e2e p99", E2E_P99_COLOR, h.e2e_p99_ms),
        ];
        for (what, color, v) in values {
            if let Some(v) = v {
                markers.push((label(what), color, (x, v)));
            }
        }
    }
    Plot {
        title: format!("tally latency against clients ({})", runs_text(s)),
        y_desc: "ms (log scale)",
        y_log: true,
        lines: vec![
            (
                "ACK p50".to_owned(),
                ACK_P50_COLOR,
                series(s, |p| p.ack_p50_ms),
            ),
            (
                "ACK p99".to_owned(),
                ACK_P99_COLOR,
                series(s, |p| p.ack_p99_ms),
            ),
            (
                "e2e p50".to_owned(),
                E2E_P50_COLOR,
                series(s, |p| p.e2e_p50_ms),
            ),
            (
                "e2e p99".to_owned(),
                E2E_P99_COLOR,
                series(s, |p| p.e2e_p99_ms),
            ),
        ],
        markers,
        hlines: vec![
            (
                format!("target ACK p99 {} ms", TARGET_ACK_P99_MS),
                TARGET_COLOR,
                TARGET_ACK_P99_MS,
            ),
            (
                "target e2e p99 1 s".to_owned(),
                TARGET_COLOR,
                TARGET_E2E_P99_MS,
            ),
        ],
    }
}

fn write_png(plot: &Plot, path: &Path) -> Result<(), ReportError> {
    let (w, h) = CHART_SIZE;
    let mut pixels = vec![0u8; (w as usize) * (h as usize) * 3];
    draw_plot(plot, &mut pixels, (w, h)).map_err(|message| ReportError::Draw {
        path: path.to_path_buf(),
        message,
    })?;
    tally_tests::report::write_rgb_png(&pixels, (w, h), path)
}

/// plotters' errors as text (its error type borrows the backend).
fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// Draws the chart into an RGB buffer.
fn draw_plot(plot: &Plot, pixels: &mut [u8], size: (u32, u32)) -> Result<(), String> {
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (header, rest) = root.split_vertically(HEADER_H);
    let title_style = ("sans-serif", 26).into_font().color(&TEXT_COLOR);
    header
        .draw_text(&plot.title, &title_style, (16, 14))
        .map_err(e)?;
    let (body, legend) = rest.split_horizontally(size.0.saturating_sub(LEGEND_W));
    draw_legend(&legend, plot)?;

    let (x_lo, x_hi) = plot.x_range();
    let (y_lo, y_hi) = plot.y_range();
    let x = (x_lo..x_hi).log_scale();
    if plot.y_log {
        draw_body(&body, plot, x, (y_lo..y_hi).log_scale(), (x_lo, x_hi))?;
    } else {
        draw_body(&body, plot, x, y_lo..y_hi, (x_lo, x_hi))?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Axes, grid, lines, markers and reference lines.
fn draw_body<Y>(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    plot: &Plot,
    x: impl AsRangedCoord<CoordDescType = LogCoord<f64>, Value = f64>,
    y: Y,
    (x_lo, x_hi): (f64, f64),
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(16)
        .margin_bottom(12)
        .margin_top(8)
        .x_label_area_size(48)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc(plot.y_desc)
        .label_style(("sans-serif", 14).into_font().color(&TEXT_COLOR))
        .axis_desc_style(("sans-serif", 16).into_font().color(&TEXT_COLOR))
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(e)?;

    for (_, color, y) in &plot.hlines {
        chart
            .draw_series(DashedLineSeries::new(
                [(x_lo, *y), (x_hi, *y)],
                12,
                8,
                color.stroke_width(2),
            ))
            .map_err(e)?;
    }
    for (_, color, pts) in &plot.lines {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(3)))
            .map_err(e)?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(e)?;
    }
    for (_, color, p) in &plot.markers {
        // A dark triangle under a smaller coloured one: an outlined marker.
        chart
            .draw_series([
                TriangleMarker::new(*p, 12, TEXT_COLOR.filled()),
                TriangleMarker::new(*p, 8, color.filled()),
            ])
            .map_err(e)?;
    }
    Ok(())
}

/// The legend panel: one row per drawn line, marker and reference line.
fn draw_legend(area: &DrawingArea<BitMapBackend<'_>, Shift>, plot: &Plot) -> Result<(), String> {
    let style = ("sans-serif", 15).into_font().color(&TEXT_COLOR);
    let row_h = 26;
    let mut y = 24;
    let sx = 8;
    let tx = sx + 48;
    for (label, color, _) in &plot.lines {
        area.draw(&PathElement::new(
            vec![(sx, y), (sx + 36, y)],
            color.stroke_width(3),
        ))
        .map_err(e)?;
        area.draw(&Circle::new((sx + 18, y), 5, color.filled()))
            .map_err(e)?;
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    for (label, color, _) in &plot.markers {
        area.draw(&TriangleMarker::new((sx + 18, y), 12, TEXT_COLOR.filled()))
            .map_err(e)?;
        area.draw(&TriangleMarker::new((sx + 18, y), 8, color.filled()))
            .map_err(e)?;
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    for (label, color, _) in &plot.hlines {
        for dash in [0, 16, 32] {
            area.draw(&PathElement::new(
                vec![(sx + dash, y), (sx + dash + 8, y)],
                color.stroke_width(2),
            ))
            .map_err(e)?;
        }
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    Ok(())
}

/// A tick label on a log or linear axis: thousands separators from 10 up, else
/// up to two decimals without trailing zeros.
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 {
        thousands(v)
    } else {
        let s = format!("{v:.2}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{
        BenchConfig, E2ePoint, Machine, ProcessCost, RedisScriptResult, RunResult, Throughput,
    };

    fn tp(per_s: f64) -> Throughput {
        Throughput {
            items: (per_s * 10.0) as u64,
            seconds: 10.0,
            per_s,
            detail: "batch 16".to_owned(),
        }
    }

    fn cost(name: &str, role: &str, cpu_s: f64, rss: f64) -> ProcessCost {
        ProcessCost {
            name: name.to_owned(),
            role: role.to_owned(),
            cpu_s,
            peak_rss_mib: rss,
            cpu_us_per_message: cpu_s * 1.0,
        }
    }

    /// A point; the end-to-end rate is `e2e`, ingest 10% above, latencies grow
    /// with the client count, RSS with `rss_scale`.
    fn point(clients: usize, rate: Option<f64>, e2e: f64, rss_scale: f64) -> E2ePoint {
        let c = clients as f64;
        E2ePoint {
            clients,
            rate_per_client: rate,
            messages: 1_000_000,
            ingest_s: 1.0,
            ingest_per_s: e2e * 1.1,
            counted_s: 1.0,
            end_to_end_per_s: e2e,
            ack_p50_ms: 1.0 + c / 100.0,
            ack_p99_ms: 5.0 + c / 20.0,
            e2e_p50_ms: Some(50.0 + c / 10.0),
            e2e_p99_ms: Some(200.0 + c / 2.0),
            e2e_samples: 100,
            exact: true,
            mismatches: Vec::new(),
            cost: vec![
                cost("tally-producer", "tally", 10.0, 40.0 + c / 10.0 * rss_scale),
                cost("tally-counter-1", "tally", 5.0, 60.0 * rss_scale),
                cost("tally-counter-2", "tally", 5.0, 62.0 * rss_scale),
                cost("tally-aggregator-1", "tally", 2.0, 30.0),
                cost("load (tally-bench)", "load", 3.0, 20.0),
                cost("kafka-1", "kafka", 8.0, 900.0),
                cost("redis-7000", "redis", 1.0, 10.0),
            ],
        }
    }

    fn run(n: usize, kafka: f64, e2e_by_clients: [f64; 4]) -> RunResult {
        let clients = [1, 10, 100, 1000];
        let mut e2e: Vec<E2ePoint> = clients
            .iter()
            .zip(e2e_by_clients)
            .map(|(&c, v)| point(c, None, v, 1.0))
            .collect();
        e2e.push(point(100, Some(250.0 + n as f64), 25_000.0, 1.0));
        RunResult {
            run: n,
            kafka_produce: tp(kafka),
            kafka_transactional: tp(kafka / 2.0),
            redis: vec![
                RedisScriptResult {
                    script: "stash_append".to_owned(),
                    batch: 64,
                    concurrency: 8,
                    throughput: tp(300_000.0 + n as f64),
                    call_p50_ms: 1.0,
                    call_p99_ms: 3.0 + n as f64,
                },
                RedisScriptResult {
                    script: "count_message".to_owned(),
                    batch: 256,
                    concurrency: 4,
                    throughput: tp(400_000.0),
                    call_p50_ms: 2.0,
                    call_p99_ms: 4.0,
                },
            ],
            e2e,
        }
    }

    fn results(runs: Vec<RunResult>) -> BenchResults {
        BenchResults {
            started_at: "2025-01-01T00:00:00Z".to_owned(),
            machine: Machine {
                cpus: 2,
                memory_mib: 7_953,
                kernel: "6.1.0".to_owned(),
                kafka_partitions: Some(420),
            },
            config: BenchConfig {
                runs: 3,
                raw_seconds: 30.0,
                record_bytes: 100,
                clients: vec![1, 10, 100, 1000],
                messages_per_point: 1_000_000,
                half_rate_clients: 100,
                partitions: 12,
                counters: 1,
                aggregators: 1,
            },
            runs,
            elapsed_s: 1234.5,
        }
    }

    /// Three runs whose Kafka and tally rates do not move together, so the
    /// median of ratios (0.40) differs from the ratio of medians (50/200 = 0.25).
    fn three_runs() -> BenchResults {
        results(vec![
            run(1, 100_000.0, [10_000.0, 30_000.0, 50_000.0, 45_000.0]),
            run(2, 200_000.0, [10_000.0, 30_000.0, 40_000.0, 35_000.0]),
            run(3, 300_000.0, [10_000.0, 60_000.0, 120_000.0, 100_000.0]),
        ])
    }

    fn target<'a>(s: &'a Summary, name: &str) -> &'a TargetCheck {
        s.targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name}: {:?}", s.targets))
    }

    #[test]
    fn median_cases() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, f64::INFINITY]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(
            median(&[1.0, f64::NAN, 5.0, f64::NEG_INFINITY, 3.0]),
            Some(3.0)
        );
        assert_eq!(median(&[f64::MAX, f64::MAX]), Some(f64::MAX));
    }

    #[test]
    fn ratio_is_pairwise_not_a_ratio_of_medians() {
        let r = three_runs();
        let s = summarize(&r);
        assert_eq!(s.runs, 3);
        assert_eq!(s.kafka_produce_per_s, Some(200_000.0));
        assert_eq!(s.kafka_transactional_per_s, Some(100_000.0));
        // Best full-speed per run: 50k (100 clients), 40k (100), 120k (100).
        assert_eq!(s.ratio_by_run, vec![Some(0.5), Some(0.2), Some(0.4)]);
        assert_eq!(s.ratio_to_kafka, Some(0.4));
        let best_median = s.best_full_speed().and_then(|p| p.end_to_end_per_s);
        assert_eq!(best_median, Some(50_000.0));
        // The ratio of medians would be 0.25: not what is reported.
        assert_ne!(s.ratio_to_kafka, Some(50_000.0 / 200_000.0));
        // Per client count, also pair by pair: 10 clients: 0.3, 0.15, 0.2.
        let p10 = s.points.iter().find(|p| p.clients == 10 && !p.rate_limited);
        let p10 = p10.expect("10 clients");
        assert_eq!(p10.ratio_to_kafka, Some(0.2));
        // The half-rate point has no ratio.
        let half = s.half_rate(100).expect("half rate");
        assert_eq!(half.ratio_to_kafka, None);
    }

    #[test]
    fn points_are_medians_keyed_by_clients_and_rate_limit() {
        let s = summarize(&three_runs());
        let keys: Vec<(usize, bool)> = s
            .points
            .iter()
            .map(|p| (p.clients, p.rate_limited))
            .collect();
        assert_eq!(
            keys,
            [
                (1, false),
                (10, false),
                (100, false),
                (1000, false),
                (100, true)
            ]
        );
        let half = s.half_rate(100).expect("half rate");
        // Per-client rates 251, 252, 253 differ per run but are one point.
        assert_eq!(half.runs, 3);
        assert_eq!(half.rate_per_client, Some(252.0));
        let p1000 = s.most_clients().expect("most clients");
        assert_eq!(p1000.clients, 1000);
        assert_eq!(p1000.end_to_end_per_s, Some(45_000.0));
        assert_eq!(p1000.ingest_per_s, Some(45_000.0 * 1.1));
        assert!(p1000.exact);
        let producer = &p1000.processes["tally-producer"];
        assert_eq!(producer.peak_rss_mib, Some(140.0));
        assert_eq!(producer.runs, 3);
        let tally = &p1000.roles["tally"];
        assert_eq!(tally.cpu_s, Some(22.0));
        assert_eq!(tally.peak_rss_mib, Some(140.0 + 60.0 + 62.0 + 30.0));
        let stash = &s.redis["stash_append"];
        assert_eq!((stash.batch, stash.concurrency), (64, 8));
        assert_eq!(stash.per_s, Some(300_002.0));
        assert_eq!(stash.call_p99_ms, Some(5.0));
    }

    #[test]
    fn targets_met_not_met_and_not_evaluable() {
        let s = summarize(&three_runs());
        assert_eq!(s.targets.len(), 7);
        let t = target(&s, "sustained end-to-end throughput");
        assert_eq!(t.met, Some(true), "{t:?}");
        assert!(t.measured.contains("50,000 msg/s at 100 clients"), "{t:?}");
        // ACK p99 at half rate: 5 + 100/20 = 10 ms; e2e p99 250 ms.
        assert_eq!(target(&s, "ACK latency p99 at half rate").met, Some(true));
        assert_eq!(
            target(&s, "end-to-end latency p99 at half rate").met,
            Some(true)
        );
        assert_eq!(target(&s, "tally / raw Kafka throughput").met, Some(true));
        let producer = target(&s, "producer RSS");
        assert_eq!(producer.met, Some(true), "{producer:?}");
        assert!(producer.measured.contains("140.0 MiB at 1000 clients"));
        assert_eq!(target(&s, "counter RSS").met, Some(true));
        assert!(target(&s, "counter RSS")
            .measured
            .contains("tally-counter-2"));
        assert_eq!(target(&s, "aggregator RSS").met, Some(true));

        // One inexact point anywhere fails the throughput target; a slow half
        // rate fails the ACK target; memory over the line fails RSS.
        let mut r = three_runs();
        r.runs[1].e2e[0].exact = false;
        r.runs[1].e2e[0].mismatches = vec!["client c-1: counted 9, sent 10".to_owned()];
        for run in &mut r.runs {
            run.e2e[4].ack_p99_ms = 25.0;
            run.e2e[3].cost[2].peak_rss_mib = 101.0;
        }
        let s = summarize(&r);
        assert!(!s.all_exact);
        let t = target(&s, "sustained end-to-end throughput");
        assert_eq!(t.met, Some(false));
        assert!(t.measured.contains("NOT exact at 1 clients"), "{t:?}");
        assert_eq!(target(&s, "ACK latency p99 at half rate").met, Some(false));
        assert_eq!(target(&s, "counter RSS").met, Some(false));
        assert!(!s.points[0].exact);

        // Too few clients for the producer target; no half-rate point; no e2e
        // samples; no runs at all: n/a, not a panic.
        let mut r = three_runs();
        for run in &mut r.runs {
            run.e2e
                .retain(|p| p.clients <= 100 && p.rate_per_client.is_none());
        }
        let s = summarize(&r);
        let producer = target(&s, "producer RSS");
        assert_eq!(producer.met, None);
        assert!(producer.measured.contains("at 100 clients"), "{producer:?}");
        assert_eq!(target(&s, "ACK latency p99 at half rate").met, None);
        assert_eq!(target(&s, "end-to-end latency p99 at half rate").met, None);

        let mut r = three_runs();
        for run in &mut r.runs {
            run.e2e[4].e2e_p99_ms = None;
        }
        let s = summarize(&r);
        assert_eq!(target(&s, "end-to-end latency p99 at half rate").met, None);

        let s = summarize(&results(Vec::new()));
        assert_eq!(s.targets.len(), 7);
        assert!(s.targets.iter().all(|t| t.met.is_none()), "{:?}", s.targets);
        assert!(!s.all_exact);
    }

    /// The cells of the markdown table rows whose first cell is `first`.
    fn row<'a>(md: &'a str, first: &str) -> Vec<&'a str> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {first} |")))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{md}"))
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect()
    }

    #[test]
    fn markdown_has_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = three_runs();
        let s = summarize(&r);
        let out = dir.path().join("results");
        let path = write_markdown(&r, &s, &out).expect("report");
        assert_eq!(path, out.join("report.md"));
        let md = std::fs::read_to_string(&path).expect("read");

        assert!(
            md.contains("Medians over 3 runs; ratios computed within each run, then the median.")
        );
        assert!(
            md.contains("2 CPUs, 7,953 MiB memory, kernel 6.1.0"),
            "{md}"
        );
        assert_eq!(
            row(&md, "tally / raw Kafka throughput")[2..],
            ["0.40× (median of 3 within-run ratios)", "yes"]
        );
        assert_eq!(row(&md, "producer RSS")[3], "yes");
        assert_eq!(
            row(&md, "Kafka idempotent acks=all produce (batch 16)")[1..],
            ["200,000", "100,000", "200,000", "300,000"]
        );
        assert_eq!(row(&md, "`stash_append`")[1..], ["1.0", "5.0"]);
        assert_eq!(
            row(&md, "1000"),
            [
                "1000",
                "full speed",
                "49,500",
                "45,000",
                "0.33×",
                "11.0 / 55.0",
                "150.0 / 700.0",
                "yes"
            ]
        );
        let half: Vec<&str> = md
            .lines()
            .find(|l| l.starts_with("| 100 | half rate"))
            .expect("half-rate row")
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect();
        assert_eq!(half[1], "half rate: 252/s per client (25,200 msg/s)");
        assert_eq!(half[4], "–");
        assert!(
            md.contains("| **best / Kafka produce** | 50,000 / 100,000 = **0.50×** |"),
            "{md}"
        );
        assert_eq!(
            row(&md, "tally-producer")[1..],
            ["tally", "10.00", "140.0", "10.0"]
        );
        assert_eq!(row(&md, "tally")[2], "292.0");
        assert!(md.contains("](throughput.png)") && md.contains("](latency.png)"));
        assert!(!md.contains("not exact"));

        let mut r = three_runs();
        r.runs[2].e2e[1].exact = false;
        r.runs[2].e2e[1].mismatches = vec!["client c-7: counted 41, sent 42".to_owned()];
        let s = summarize(&r);
        let md = std::fs::read_to_string(write_markdown(&r, &s, dir.path()).expect("report"))
            .expect("read");
        assert_eq!(row(&md, "sustained end-to-end throughput")[3], "NO");
        assert_eq!(*row(&md, "10").last().expect("cells"), "NO");
        assert!(md.contains("Run 3, 10 clients (full speed)"), "{md}");
        assert!(md.contains("client c-7: counted 41, sent 42"));
    }

    #[test]
    fn summary_text_lists_targets_and_points() {
        let mut r = three_runs();
        for run in &mut r.runs {
            run.e2e[4].ack_p99_ms = 25.0;
        }
        let s = summarize(&r);
        let text = summary_text(&r, &s);
        assert!(text.contains("Medians over 3 runs"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("NOT MET")
                && l.contains("ACK latency p99 at half rate")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("met") && l.contains("producer RSS")),
            "{text}"
        );
        assert!(text.contains("200,000"), "{text}");
        assert!(text.contains("stash_append"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("1000 ") && l.contains("45,000")),
            "{text}"
        );
    }

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).expect("read png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn count(img: &(u32, u32, Vec<u8>), c: RGBColor) -> usize {
        img.2
            .chunks_exact(3)
            .filter(|p| p == &[c.0, c.1, c.2])
            .count()
    }

    #[test]
    fn charts_are_pngs_with_their_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = three_runs();
        let s = summarize(&r);
        let paths = write_charts(&r, &s, &dir.path().join("charts")).expect("charts");
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["throughput.png", "latency.png"]);

        let tput = decode(&paths[0]);
        assert_eq!((tput.0, tput.1), CHART_SIZE);
        for c in [INGEST_COLOR, E2E_COLOR, KAFKA_COLOR, TXN_COLOR] {
            assert!(count(&tput, c) > 300, "throughput: colour {c:?} missing");
        }
        let lat = decode(&paths[1]);
        for c in [ACK_P50_COLOR, ACK_P99_COLOR, E2E_P50_COLOR, E2E_P99_COLOR] {
            assert!(count(&lat, c) > 300, "latency: colour {c:?} missing");
        }
        // Some dark text (title, ticks, legend) is drawn.
        assert!(
            lat.2
                .chunks_exact(3)
                .filter(|p| p.iter().all(|&v| v < 80))
                .count()
                > 1000
        );
    }

    #[test]
    fn charts_survive_one_client_count_zeros_and_no_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One client count, a zero and a missing latency, a zero Kafka rate.
        let mut one = run(1, 0.0, [0.0; 4]);
        one.e2e.retain(|p| p.clients == 1);
        one.e2e[0].ack_p50_ms = 0.0;
        one.e2e[0].e2e_p99_ms = None;
        one.e2e[0].end_to_end_per_s = f64::NAN;
        let r = results(vec![one]);
        let s = summarize(&r);
        assert_eq!(s.ratio_to_kafka, None);
        for p in write_charts(&r, &s, dir.path()).expect("charts") {
            decode(&p);
        }
        // No runs at all.
        let r = results(Vec::new());
        let s = summarize(&r);
        for p in write_charts(&r, &s, &dir.path().join("empty")).expect("charts") {
            decode(&p);
        }
        write_markdown(&r, &s, &dir.path().join("empty")).expect("markdown");
        summary_text(&r, &s);
        // A directory that cannot be created is an error naming it.
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let err = write_charts(&r, &s, &file.join("sub")).expect_err("not a dir");
        assert!(matches!(err, ReportError::Io { .. }), "{err}");
    }

    #[test]
    fn thousands_and_ticks() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(thousands(f64::NAN), "–");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(20_000.0), "20,000");
    }
}
