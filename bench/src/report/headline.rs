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
//! - `exact` is `true` only if every point of the workload in every run (burst
//!   points, the half-rate point, every window of the search and the
//!   consume-only point) was exact; `null` if there was no point at all.
//! - A workload no run measured has every figure `null` (the raw ceilings too).
//! - The `summary:` line is one line: the novel workload's figures, then the
//!   all-distinct workload's, then the many-clients point's, separated by ` | `.

use std::fmt::Write as _;

use serde::Serialize;

use super::summary::median;
use crate::results::{BenchResults, E2ePoint, ProcessCost, RunResult, Workload};

/// What `summary.json` holds: the novel workload's figures at the top level, the
/// all-distinct workload's under `distinct` (all `null` when it was not
/// measured), the many-clients point under `many_clients`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Headline {
    /// The novel replayed by every client.
    #[serde(flatten)]
    pub novel: WorkloadHeadline,
    /// Every line unique (salted with its client and sn).
    pub distinct: WorkloadHeadline,
    /// The producer's memory with many clients (medians; `null` if not measured).
    pub many_clients: Option<ManyClientsHeadline>,
}

/// The many-clients point, medians over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManyClientsHeadline {
    /// Clients connected at once.
    pub clients: usize,
    /// Seconds until every client was connected and its line ACKed.
    pub connect_s: Option<f64>,
    /// Producer RSS before they connected, MiB.
    pub idle_rss_mib: Option<f64>,
    /// Producer RSS with every client connected, MiB.
    pub connected_rss_mib: Option<f64>,
    /// Producer peak RSS during the point, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Producer RSS after they all left and a settle time, MiB.
    pub after_rss_mib: Option<f64>,
    /// Exact in every run.
    pub exact: bool,
    /// `ERR unavailable` answers over the runs.
    pub err_unavailable: u64,
    /// Reconnects over the runs.
    pub reconnects: u64,
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
    /// Counters and aggregators cold on a pre-loaded topic, records/s.
    pub consume_only_rec_s: Option<f64>,
    /// CPU µs per record of the consume-only point (`producer` stays empty: none
    /// runs; `load` is the bench reading the counts).
    pub consume_only_cpu_us_per_rec: CpuPerMessage,
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
/// [`CpuPerMessage`]'s order after the total); `None` for a component with no
/// process at the point (the total has one if any component has).
fn cpu_of(costs: &[ProcessCost]) -> [Option<f64>; 7] {
    let mut c: [Option<f64>; 7] = [None; 7];
    for cost in costs {
        let slot = match (cost.role.as_str(), cost.name.as_str()) {
            ("kafka", _) => 1,
            ("redis", _) => 2,
            (_, n) if n.starts_with("tally-producer") => 3,
            (_, n) if n.starts_with("tally-counter") => 4,
            (_, n) if n.starts_with("tally-aggregator") => 5,
            ("load", _) => 6,
            _ => continue,
        };
        *c[slot].get_or_insert(0.0) += cost.cpu_us_per_message;
    }
    let parts: Vec<f64> = c[1..6].iter().flatten().copied().collect();
    c[0] = (!parts.is_empty()).then(|| parts.iter().sum());
    c
}

fn cpu_medians(points: &[&[ProcessCost]]) -> CpuPerMessage {
    let per_run: Vec<[Option<f64>; 7]> = points.iter().map(|p| cpu_of(p)).collect();
    let m = |i: usize| median(&per_run.iter().filter_map(|c| c[i]).collect::<Vec<_>>());
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
    Headline {
        novel: workload_headline(&results.for_workload(Workload::Novel)),
        distinct: workload_headline(&results.for_workload(Workload::Distinct)),
        many_clients: many_clients_headline(results),
    }
}

/// The headline of `results` as one workload's ([`BenchResults::for_workload`]).
fn workload_headline(results: &BenchResults) -> WorkloadHeadline {
    let runs = &results.runs;
    let measured = runs
        .iter()
        .any(|r| !r.e2e.is_empty() || r.sustained.is_some() || r.consume_only.is_some());
    if !measured {
        return WorkloadHeadline::default();
    }
    let values = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Option<f64> {
        median(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let sustained = |r: &RunResult| r.sustained.as_ref().and_then(|s| s.rate_msg_s);
    let at_rate: Vec<&[ProcessCost]> = runs
        .iter()
        .filter_map(|r| r.sustained.as_ref()?.at_rate().map(|s| &s.point.cost[..]))
        .collect();
    let halves: Vec<&E2ePoint> = runs.iter().filter_map(half_point).collect();
    let half_costs: Vec<&[ProcessCost]> = halves.iter().map(|p| &p.cost[..]).collect();
    let half = |f: &dyn Fn(&E2ePoint) -> Option<f64>| {
        median(&halves.iter().filter_map(|p| f(p)).collect::<Vec<_>>())
    };
    let consume_costs: Vec<&[ProcessCost]> = runs
        .iter()
        .filter_map(|r| r.consume_only.as_ref().map(|c| &c.cost[..]))
        .collect();

    let mut points = Vec::new();
    for run in runs {
        for p in &run.e2e {
            points.push(health(run.run, point_name(p), p));
        }
        for step in run.sustained.iter().flat_map(|s| &s.steps) {
            let name = format!("search {:.0} msg/s", step.offered_msg_s);
            points.push(health(run.run, name, &step.point));
        }
        if let Some(c) = &run.consume_only {
            points.push(PointHealth {
                run: run.run,
                point: format!("consume-only {} records", c.records),
                err_unavailable: 0,
                reconnects: 0,
                exact: c.exact,
            });
        }
    }
    WorkloadHeadline {
        sustained_msg_s: values(&sustained),
        raw_produce_rec_s: values(&|r| Some(r.kafka_produce.per_s)),
        raw_txn_passthrough_rec_s: values(&|r| Some(r.kafka_transactional.per_s)),
        sustained_over_raw: values(&|r| {
            let raw = r.kafka_produce.per_s;
            sustained(r).filter(|_| raw > 0.0).map(|s| s / raw)
        }),
        consume_only_rec_s: values(&|r| r.consume_only.as_ref().map(|c| c.per_s)),
        consume_only_cpu_us_per_rec: cpu_medians(&consume_costs),
        cpu_us_per_msg: cpu_medians(&at_rate),
        cpu_us_per_msg_half: cpu_medians(&half_costs),
        half_rate_msg_s: half(&offered_msg_s),
        ack_p50_ms_half: half(&|p| Some(p.ack_p50_ms)),
        ack_p99_ms_half: half(&|p| Some(p.ack_p99_ms)),
        e2e_p50_ms_half: half(&|p| p.e2e_p50_ms),
        e2e_p99_ms_half: half(&|p| p.e2e_p99_ms),
        exact: (!points.is_empty()).then(|| points.iter().all(|p| p.exact)),
        err_unavailable: points.iter().map(|p| p.err_unavailable).sum(),
        reconnects: points.iter().map(|p| p.reconnects).sum(),
        points,
    }
}

fn many_clients_headline(results: &BenchResults) -> Option<ManyClientsHeadline> {
    let points: Vec<_> = results
        .runs
        .iter()
        .filter_map(|r| r.many_clients.as_ref())
        .collect();
    let first = points.first()?;
    let m = |f: &dyn Fn(&crate::results::ManyClients) -> f64| {
        median(&points.iter().map(|p| f(p)).collect::<Vec<_>>())
    };
    Some(ManyClientsHeadline {
        clients: first.clients,
        connect_s: m(&|p| p.connect_s),
        idle_rss_mib: m(&|p| p.idle_rss_mib),
        connected_rss_mib: m(&|p| p.connected_rss_mib),
        peak_rss_mib: m(&|p| p.peak_rss_mib),
        after_rss_mib: m(&|p| p.after_rss_mib),
        exact: points.iter().all(|p| p.exact),
        err_unavailable: points.iter().map(|p| p.err_unavailable).sum(),
        reconnects: points.iter().map(|p| p.reconnects).sum(),
    })
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

/// The benchmark's last line, one line: `summary: novel: sustained N msg/s (R×
/// raw produce) · consume-only N rec/s · N µs CPU/msg · ACK p99 N ms · e2e p99 N
/// ms at half rate · exact | distinct: … | 10,000 clients: producer RSS N MiB
/// (peak N), N MiB after · exact` (`NOT exact` where a point was not); `n/a`
/// where a figure is missing. A workload that was not measured reads `distinct:
/// not measured`; the many-clients part is left out when it did not run.
pub fn headline_line(h: &Headline) -> String {
    let mut line = String::from("summary: ");
    let _ = write!(line, "novel: {}", workload_line(&h.novel));
    let _ = write!(line, " | distinct: {}", workload_line(&h.distinct));
    if let Some(m) = &h.many_clients {
        let _ = write!(
            line,
            " | {} clients: producer RSS {} MiB (peak {}), {} MiB after · {}",
            super::format::thousands(m.clients as f64),
            or_na(m.connected_rss_mib, &|v| format!("{v:.0}")),
            or_na(m.peak_rss_mib, &|v| format!("{v:.0}")),
            or_na(m.after_rss_mib, &|v| format!("{v:.0}")),
            if m.exact { "exact" } else { "NOT exact" }
        );
    }
    line
}

fn or_na(v: Option<f64>, f: &dyn Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".into(), f)
}

/// One workload's part of the `summary:` line.
fn workload_line(n: &WorkloadHeadline) -> String {
    if *n == WorkloadHeadline::default() {
        return "not measured".to_owned();
    }
    let int = |v: f64| super::format::thousands(v);
    format!(
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
    )
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
            "summary: novel: not measured | distinct: not measured"
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
        assert!(headline_line(&h).starts_with("summary: novel: sustained n/a msg/s"));
        assert!(headline_line(&h).ends_with(" | distinct: not measured"));
        assert_eq!(h.distinct, WorkloadHeadline::default());
        assert_eq!(h.many_clients, None);
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
            "summary: novel: sustained 40,000 msg/s (0.30× raw produce) · consume-only n/a rec/s · \
             31 µs CPU/msg · ACK p99 10.0 ms · e2e p99 250 ms at half rate · exact \
             | distinct: not measured"
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
        assert!(headline_line(&h).contains("at half rate · NOT exact | distinct"));
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

    #[test]
    fn the_distinct_workload_consume_only_and_many_clients_have_their_keys() {
        use crate::results::{ConsumeOnly, ManyClients, WorkloadRun};
        let mut r = three_runs();
        for (i, run) in r.runs.iter_mut().enumerate() {
            let consume = |per_s: f64, exact: bool| ConsumeOnly {
                records: 500_000,
                clients: 100,
                partitions: 12,
                counters: 1,
                aggregators: 1,
                preload_s: 3.0,
                counted_s: 500_000.0 / per_s,
                per_s,
                exact,
                mismatches: Vec::new(),
                cost: vec![
                    cost("kafka-1", "kafka", 4.0, 900.0),
                    cost("redis-7000", "redis", 20.0, 10.0),
                    cost("tally-counter-0", "tally", 2.0, 50.0),
                ],
            };
            run.consume_only = Some(consume(30_000.0 + i as f64, true));
            run.sustained = Some(searched(20_000.0));
            run.distinct = Some(WorkloadRun {
                e2e: vec![point(100, None, 9_000.0, 1.0)],
                sustained: Some(searched(12_000.0 + i as f64)),
                consume_only: Some(consume(9_000.0, i != 1)),
            });
            run.many_clients = Some(ManyClients {
                clients: 10_000,
                connect_s: 9.0,
                idle_rss_mib: 40.0,
                connected_rss_mib: 120.0 + i as f64,
                peak_rss_mib: 130.0,
                after_rss_mib: 50.0,
                settle_s: 5.0,
                exact: true,
                err_unavailable: 0,
                reconnects: 0,
            });
        }
        let h = headline(&r);
        assert_eq!(h.novel.consume_only_rec_s, Some(30_001.0));
        assert_eq!(h.distinct.consume_only_rec_s, Some(9_000.0));
        assert_eq!(h.distinct.sustained_msg_s, Some(12_001.0));
        assert_eq!(h.distinct.raw_produce_rec_s, Some(200_000.0));
        // µs per record of the consume-only point: cost() gives cpu_s µs each.
        let co = &h.novel.consume_only_cpu_us_per_rec;
        assert_eq!(
            (co.total, co.redis, co.counter),
            (Some(26.0), Some(20.0), Some(2.0))
        );
        assert_eq!((co.producer, co.load), (None, None));
        // One inexact consume-only run makes the distinct workload not exact.
        assert_eq!(h.novel.exact, Some(true));
        assert_eq!(h.distinct.exact, Some(false));
        let many = h.many_clients.as_ref().expect("many clients");
        assert_eq!(many.connected_rss_mib, Some(121.0));
        let json = serde_json::to_value(&h).expect("serializes");
        for key in ["sustained_msg_s", "consume_only_rec_s", "exact"] {
            assert!(!json[key].is_null(), "{key}: {json:#}");
            assert!(!json["distinct"][key].is_null(), "distinct {key}: {json:#}");
        }
        assert!(json["distinct"]["cpu_us_per_msg"]["total"].is_number());
        assert_eq!(json["many_clients"]["clients"], 10_000);
        let line = headline_line(&h);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("summary: novel: sustained 20,000 msg/s"),
            "{line}"
        );
        assert!(
            line.contains(" | distinct: sustained 12,001 msg/s (0.06× raw produce) · consume-only 9,000 rec/s"),
            "{line}"
        );
        assert!(
            line.ends_with(
                " | 10,000 clients: producer RSS 121 MiB (peak 130), 50 MiB after · exact"
            ),
            "{line}"
        );
    }
}
