//! `summary.json` and the one `summary:` line the benchmark ends with: the
//! steady-state figures of issue 17, from the run's results alone.
//!
//! Invariants:
//! - A pure function of [`BenchResults`]: a figure whose data is missing (no
//!   sustained search, a run without a half-rate point, a workload not measured)
//!   is `null` in the JSON and `n/a` in the line, never a panic or a zero.
//! - Every figure is the median over the runs that have it ([`median`]); a ratio
//!   (sustained / raw produce) is taken within a run, then its median.
//! - `cpu_us_per_msg.total` is the whole stack: brokers + Redis + producer +
//!   counter + aggregator; the load generator is listed apart, outside the total.
//! - `exact` is `true` only if every point of every run (burst points, the
//!   half-rate point and every window of the search) was exact; `null` if there
//!   was no point at all.

use std::fmt::Write as _;

use serde::Serialize;

use super::summary::median;
use crate::results::{BenchResults, E2ePoint, RunResult};

/// What `summary.json` holds: the novel workload's figures at the top level, the
/// all-distinct workload's under `distinct` (all `null` when it was not measured).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Headline {
    /// The novel replayed by every client.
    #[serde(flatten)]
    pub novel: WorkloadHeadline,
    /// Every line unique (not measured by this benchmark yet: all `null`).
    pub distinct: WorkloadHeadline,
}

/// One workload's steady-state figures (medians over the runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkloadHeadline {
    /// Highest offered rate carried for the whole window, msg/s.
    pub sustained_msg_s: Option<f64>,
    /// Kafka idempotent acks=all produce ceiling, records/s.
    pub raw_produce_rec_s: Option<f64>,
    /// Kafka transactional pass-through ceiling, records/s.
    pub raw_txn_passthrough_rec_s: Option<f64>,
    /// Sustained rate / raw produce ceiling, within a run.
    pub sustained_over_raw: Option<f64>,
    /// Counters and aggregators cold on a pre-loaded topic, records/s (not
    /// measured by this benchmark yet: `null`).
    pub consume_only_rec_s: Option<f64>,
    /// CPU µs per message at the sustained rate.
    pub cpu_us_per_msg: CpuPerMessage,
    /// CPU µs per message at the half-rate point.
    pub cpu_us_per_msg_half: CpuPerMessage,
    /// Offered rate of the half-rate point, msg/s.
    pub half_rate_msg_s: Option<f64>,
    /// ACK latency p50 at the half-rate point, ms.
    pub ack_p50_ms_half: Option<f64>,
    /// ACK latency p99 at the half-rate point, ms.
    pub ack_p99_ms_half: Option<f64>,
    /// ACK → counted latency p50 at the half-rate point, ms.
    pub e2e_p50_ms_half: Option<f64>,
    /// ACK → counted latency p99 at the half-rate point, ms.
    pub e2e_p99_ms_half: Option<f64>,
    /// Every point of every run exact (`None`: no point).
    pub exact: Option<bool>,
    /// `ERR unavailable` answers over every point of every run.
    pub err_unavailable: u64,
    /// Client reconnects over every point of every run.
    pub reconnects: u64,
    /// The same two counts per point.
    pub points: Vec<PointHealth>,
}

/// CPU µs per message by component (medians over the runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuPerMessage {
    /// Brokers + Redis + producer + counter + aggregator.
    pub total: Option<f64>,
    /// Every Kafka broker.
    pub brokers: Option<f64>,
    /// Every Redis node.
    pub redis: Option<f64>,
    /// `tally-producer`.
    pub producer: Option<f64>,
    /// Every `tally-counter`.
    pub counter: Option<f64>,
    /// Every `tally-aggregator`.
    pub aggregator: Option<f64>,
    /// The load generator (`tally-bench` itself), outside the total.
    pub load: Option<f64>,
}

/// Client trouble at one point of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointHealth {
    /// 1-based run.
    pub run: usize,
    /// `100 clients full speed`, `100 clients at 10,000 msg/s`, `search 15,000 msg/s`.
    pub point: String,
    /// `ERR unavailable` answers.
    pub err_unavailable: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Counts exact at the end.
    pub exact: bool,
}

/// One run's CPU per message by component at one point: (total, components in
/// [`CpuPerMessage`]'s order after the total).
fn cpu_of(p: &E2ePoint) -> [f64; 7] {
    let mut c = [0.0; 7];
    for cost in &p.cost {
        let slot = match (cost.role.as_str(), cost.name.as_str()) {
            ("kafka", _) => 1,
            ("redis", _) => 2,
            (_, n) if n.starts_with("tally-producer") => 3,
            (_, n) if n.starts_with("tally-counter") => 4,
            (_, n) if n.starts_with("tally-aggregator") => 5,
            ("load", _) => 6,
            _ => continue,
        };
        c[slot] += cost.cpu_us_per_message;
    }
    c[0] = c[1..6].iter().sum();
    c
}

fn cpu_medians(points: &[&E2ePoint]) -> CpuPerMessage {
    let per_run: Vec<[f64; 7]> = points.iter().map(|p| cpu_of(p)).collect();
    let m = |i: usize| median(&per_run.iter().map(|c| c[i]).collect::<Vec<_>>());
    CpuPerMessage {
        total: m(0),
        brokers: m(1),
        redis: m(2),
        producer: m(3),
        counter: m(4),
        aggregator: m(5),
        load: m(6),
    }
}

/// The run's half-rate point: its last rate-limited end-to-end point.
fn half_point(run: &RunResult) -> Option<&E2ePoint> {
    run.e2e.iter().rev().find(|p| p.rate_per_client.is_some())
}

fn offered_msg_s(p: &E2ePoint) -> Option<f64> {
    p.rate_per_client.map(|r| r * p.clients as f64)
}

fn point_name(p: &E2ePoint) -> String {
    match offered_msg_s(p) {
        Some(r) => format!("{} clients at {r:.0} msg/s", p.clients),
        None => format!("{} clients full speed", p.clients),
    }
}

/// The headline of the whole benchmark (see the module doc for the rules).
pub fn headline(results: &BenchResults) -> Headline {
    let runs = &results.runs;
    let values = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Option<f64> {
        median(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let sustained = |r: &RunResult| r.sustained.as_ref().and_then(|s| s.rate_msg_s);
    let at_rate: Vec<&E2ePoint> = runs
        .iter()
        .filter_map(|r| r.sustained.as_ref()?.at_rate().map(|s| &s.point))
        .collect();
    let halves: Vec<&E2ePoint> = runs.iter().filter_map(half_point).collect();
    let half = |f: &dyn Fn(&E2ePoint) -> Option<f64>| {
        median(&halves.iter().filter_map(|p| f(p)).collect::<Vec<_>>())
    };

    let mut points = Vec::new();
    for run in runs {
        for p in &run.e2e {
            points.push(health(run.run, point_name(p), p));
        }
        for step in run.sustained.iter().flat_map(|s| &s.steps) {
            let name = format!("search {:.0} msg/s", step.offered_msg_s);
            points.push(health(run.run, name, &step.point));
        }
    }
    let novel = WorkloadHeadline {
        sustained_msg_s: values(&sustained),
        raw_produce_rec_s: values(&|r| Some(r.kafka_produce.per_s)),
        raw_txn_passthrough_rec_s: values(&|r| Some(r.kafka_transactional.per_s)),
        sustained_over_raw: values(&|r| {
            let raw = r.kafka_produce.per_s;
            sustained(r).filter(|_| raw > 0.0).map(|s| s / raw)
        }),
        consume_only_rec_s: None,
        cpu_us_per_msg: cpu_medians(&at_rate),
        cpu_us_per_msg_half: cpu_medians(&halves),
        half_rate_msg_s: half(&offered_msg_s),
        ack_p50_ms_half: half(&|p| Some(p.ack_p50_ms)),
        ack_p99_ms_half: half(&|p| Some(p.ack_p99_ms)),
        e2e_p50_ms_half: half(&|p| p.e2e_p50_ms),
        e2e_p99_ms_half: half(&|p| p.e2e_p99_ms),
        exact: (!points.is_empty()).then(|| points.iter().all(|p| p.exact)),
        err_unavailable: points.iter().map(|p| p.err_unavailable).sum(),
        reconnects: points.iter().map(|p| p.reconnects).sum(),
        points,
    };
    Headline {
        novel,
        distinct: WorkloadHeadline::default(),
    }
}

fn health(run: usize, point: String, p: &E2ePoint) -> PointHealth {
    PointHealth {
        run,
        point,
        err_unavailable: p.err_unavailable,
        reconnects: p.reconnects,
        exact: p.exact,
    }
}

/// The benchmark's last line: `summary: sustained N msg/s (R× raw produce) ·
/// consume-only N rec/s · N µs CPU/msg · ACK p99 N ms · e2e p99 N ms at half
/// rate · exact` (or `NOT exact`), the novel workload's figures; `n/a` where a
/// figure is missing. A benchmark with no point at all is `NOT exact`.
pub fn headline_line(h: &Headline) -> String {
    let n = &h.novel;
    let or_na = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "n/a".into(), f);
    let int = |v: f64| super::format::thousands(v);
    let mut line = String::from("summary: ");
    let _ = write!(
        line,
        "sustained {} msg/s ({}× raw produce) · consume-only {} rec/s · {} µs CPU/msg · \
         ACK p99 {} ms · e2e p99 {} ms at half rate · {}",
        or_na(n.sustained_msg_s, &int),
        or_na(n.sustained_over_raw, &|v| format!("{v:.2}")),
        or_na(n.consume_only_rec_s, &int),
        or_na(n.cpu_us_per_msg.total, &|v| format!("{v:.0}")),
        or_na(n.ack_p99_ms_half, &|v| format!("{v:.1}")),
        or_na(n.e2e_p99_ms_half, &int),
        if n.exact == Some(true) {
            "exact"
        } else {
            "NOT exact"
        }
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::results::{SustainStep, SustainedSearch, Workload};

    fn step(offered: f64, carried: bool) -> SustainStep {
        let mut point = point(100, Some(offered / 100.0), offered, 1.0);
        point.reconnects = 1;
        SustainStep {
            offered_msg_s: offered,
            lag_early: Some(100),
            lag_end: 200,
            carried,
            why_not: Vec::new(),
            point,
        }
    }

    fn searched(rate: f64) -> SustainedSearch {
        SustainedSearch {
            workload: Workload::Novel,
            clients: 100,
            window_s: 60.0,
            low_msg_s: 1_000.0,
            high_msg_s: 200_000.0,
            steps: vec![
                step(14_000.0, true),
                step(rate, true),
                step(53_000.0, false),
            ],
            rate_msg_s: Some(rate),
        }
    }

    #[test]
    fn missing_figures_are_null_not_a_panic() {
        let empty = results(Vec::new());
        let h = headline(&empty);
        assert_eq!(h.novel.sustained_msg_s, None);
        assert_eq!(h.novel.raw_produce_rec_s, None);
        assert_eq!(h.novel.cpu_us_per_msg, CpuPerMessage::default());
        assert_eq!(h.novel.exact, None);
        let json = serde_json::to_value(&h).expect("serializes");
        for key in [
            "sustained_msg_s",
            "raw_produce_rec_s",
            "raw_txn_passthrough_rec_s",
            "sustained_over_raw",
            "consume_only_rec_s",
            "ack_p99_ms_half",
            "e2e_p99_ms_half",
            "exact",
        ] {
            assert!(json[key].is_null(), "{key}: {json:#}");
            assert!(json["distinct"][key].is_null(), "distinct {key}: {json:#}");
        }
        assert!(json["cpu_us_per_msg"]["total"].is_null(), "{json:#}");
        assert_eq!(
            headline_line(&h),
            "summary: sustained n/a msg/s (n/a× raw produce) · consume-only n/a rec/s · \
             n/a µs CPU/msg · ACK p99 n/a ms · e2e p99 n/a ms at half rate · NOT exact"
        );
        // Runs without a search: the raw ceilings and the half-rate point are
        // there, the sustained figures are not.
        let h = headline(&three_runs());
        assert_eq!(h.novel.sustained_msg_s, None);
        assert_eq!(h.novel.sustained_over_raw, None);
        assert_eq!(h.novel.raw_produce_rec_s, Some(200_000.0));
        assert_eq!(h.novel.raw_txn_passthrough_rec_s, Some(100_000.0));
        assert_eq!(h.novel.ack_p99_ms_half, Some(10.0));
        assert_eq!(h.novel.exact, Some(true));
        assert!(headline_line(&h).starts_with("summary: sustained n/a msg/s"));
    }

    #[test]
    fn sustained_figures_are_medians_with_ratios_within_a_run() {
        let mut r = three_runs();
        // Raw produce per run: 100k, 200k, 300k; sustained 30k, 40k, 90k: ratios
        // 0.3, 0.2, 0.3 → median 0.3, not the ratio of medians (40k / 200k).
        for (run, rate) in r.runs.iter_mut().zip([30_000.0, 40_000.0, 90_000.0]) {
            run.sustained = Some(searched(rate));
        }
        let h = headline(&r);
        assert_eq!(h.novel.sustained_msg_s, Some(40_000.0));
        assert_eq!(h.novel.sustained_over_raw, Some(0.3));
        // The fixture's costs: kafka 8 + redis 1 + producer 10 + counters 5 + 5
        // + aggregator 2 = 31 µs/msg in the total, load 3 apart.
        let cpu = &h.novel.cpu_us_per_msg;
        assert_eq!(cpu.total, Some(31.0));
        assert_eq!(cpu.brokers, Some(8.0));
        assert_eq!(cpu.counter, Some(10.0));
        assert_eq!(cpu.load, Some(3.0));
        assert_eq!(h.novel.cpu_us_per_msg_half.total, Some(31.0));
        // Half point: 100 clients × 252/s (median), p99 5 + 100/20 = 10 ms.
        assert_eq!(h.novel.half_rate_msg_s, Some(25_200.0));
        assert_eq!(h.novel.e2e_p99_ms_half, Some(250.0));
        // Every point of every run, the search's windows included: 5 + 3 each.
        assert_eq!(h.novel.points.len(), 24);
        assert_eq!(h.novel.reconnects, 9);
        assert_eq!(h.novel.exact, Some(true));
        assert_eq!(
            headline_line(&h),
            "summary: sustained 40,000 msg/s (0.30× raw produce) · consume-only n/a rec/s · \
             31 µs CPU/msg · ACK p99 10.0 ms · e2e p99 250 ms at half rate · exact"
        );
    }

    #[test]
    fn one_inexact_window_makes_the_whole_not_exact() {
        let mut r = three_runs();
        let mut s = searched(30_000.0);
        s.steps[2].point.exact = false;
        s.steps[2].point.err_unavailable = 4;
        r.runs[1].sustained = Some(s);
        let h = headline(&r);
        assert_eq!(h.novel.exact, Some(false));
        assert_eq!(h.novel.err_unavailable, 4);
        let bad = h
            .novel
            .points
            .iter()
            .find(|p| !p.exact)
            .expect("the window");
        assert_eq!((bad.run, bad.point.as_str()), (2, "search 53000 msg/s"));
        assert!(headline_line(&h).ends_with("at half rate · NOT exact"));
    }

    #[test]
    fn a_search_that_carried_nothing_has_no_sustained_figures() {
        let mut r = three_runs();
        let mut s = searched(30_000.0);
        s.rate_msg_s = None;
        for step in &mut s.steps {
            step.carried = false;
        }
        r.runs[0].sustained = Some(s);
        let h = headline(&r);
        assert_eq!(h.novel.sustained_msg_s, None);
        assert_eq!(h.novel.cpu_us_per_msg.total, None);
    }
}
