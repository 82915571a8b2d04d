//! Statistics over the runs: every figure's median, the within-run ratios to raw
//! Kafka, and which points were exact.
//!
//! Invariants (the module doc of [`crate::report`] states them for the reader):
//! every figure is the median over the runs of the finite values ([`median`]); a
//! ratio to raw Kafka is taken within a run, then its median; a point is exact
//! only if it was exact in every run that has it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::targets::{targets, TargetCheck};
use crate::results::{BenchResults, E2ePoint, Workload};

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
    /// Every end-to-end point of every run was exact (and there was at least one).
    pub all_exact: bool,
    /// The all-distinct workload's points, summarized alike (its `distinct` and
    /// `targets` are empty), if any run measured it; the fields above are the
    /// novel workload's.
    pub distinct: Option<Box<Summary>>,
    /// The targets of the benchmark (both workloads), each judged on the medians.
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
    pub(super) fn processes_named<'a>(
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
pub(super) fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// Medians over the runs of every figure, the within-run ratios to raw Kafka and
/// the target checks (see the module doc for the rules), for the novel workload
/// and, under `distinct`, the all-distinct one.
pub fn summarize(results: &BenchResults) -> Summary {
    let mut summary = summarize_points(&results.for_workload(Workload::Novel));
    let distinct = results.for_workload(Workload::Distinct);
    if distinct.runs.iter().any(|r| !r.e2e.is_empty()) {
        summary.distinct = Some(Box::new(summarize_points(&distinct)));
    }
    summary.targets = targets(results, &summary);
    summary
}

/// [`summarize`] of one workload's results, without targets.
fn summarize_points(results: &BenchResults) -> Summary {
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

    Summary {
        runs: runs.len(),
        kafka_produce_per_s: median(&produce),
        kafka_transactional_per_s: median(&txn),
        redis,
        points,
        ratio_by_run,
        ratio_to_kafka: median(&ratios),
        all_exact,
        distinct: None,
        targets: Vec::new(),
    }
}

/// The full-speed point of a run with the highest finite end-to-end rate.
pub(super) fn best_full_speed(points: &[E2ePoint]) -> Option<&E2ePoint> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

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
}
