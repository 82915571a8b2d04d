//! The benchmark's targets (issue 17, "Targets"), each judged on the medians of
//! a [`Summary`] and the [`headline`] figures: met, not met, or not evaluable
//! (missing data, or not measured under the target's conditions), never met by
//! default and never a panic. Rows that depend on the workload come once per
//! workload (novel, then all-distinct).

use super::format::{mib, ms, thousands};
use super::headline::{headline, Headline, WorkloadHeadline};
use super::summary::{median, PointSummary, Summary};
use crate::results::{BenchResults, Workload};
use serde::Serialize;

/// Sustained end-to-end rate with the novel, messages/s (every count exact).
pub const TARGET_SUSTAINED_PER_S: f64 = 45_000.0;
/// Sustained end-to-end rate with all-distinct messages, messages/s.
pub const TARGET_SUSTAINED_DISTINCT_PER_S: f64 = 35_000.0;
/// Consume-only rate with the novel, records/s.
pub const TARGET_CONSUME_PER_S: f64 = 75_000.0;
/// Consume-only rate with all-distinct messages, records/s.
pub const TARGET_CONSUME_DISTINCT_PER_S: f64 = 50_000.0;
/// Whole-stack CPU (brokers + Redis + tally) per message at the sustained rate, µs.
pub const TARGET_CPU_US_PER_MSG: f64 = 40.0;
/// ACK latency p99 at half the sustained rate, ms.
pub const TARGET_ACK_P99_MS: f64 = 25.0;
/// End-to-end latency p99 at half the sustained rate, ms.
pub const TARGET_E2E_P99_MS: f64 = 500.0;
/// Producer peak RSS with [`TARGET_PRODUCER_CLIENTS`] connected clients, MiB.
pub const TARGET_PRODUCER_RSS_MIB: f64 = 150.0;
/// The client count the producer RSS target is stated at.
pub const TARGET_PRODUCER_CLIENTS: usize = 10_000;
/// "Back near its idle size": the producer's RSS once the clients left may
/// exceed its idle RSS by at most this much, MiB.
pub const TARGET_PRODUCER_AFTER_SLACK_MIB: f64 = 20.0;
/// Peak RSS of each counter and each aggregator, MiB.
pub const TARGET_WORKER_RSS_MIB: f64 = 100.0;

/// One target and whether the medians meet it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is measured, e.g. `ACK latency p99 at half rate (novel)`.
    pub name: String,
    /// The goal, e.g. `≤ 25 ms`.
    pub target: String,
    /// The median measured, with where it comes from.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` not met, `None` not evaluable (missing data,
    /// or not measured under the target's conditions).
    pub met: Option<bool>,
}

fn check(name: &str, target: &str, measured: String, met: Option<bool>) -> TargetCheck {
    TargetCheck {
        name: name.to_owned(),
        target: target.to_owned(),
        measured,
        met,
    }
}

/// A target on one optional figure: `None` is not evaluable with `missing`,
/// else `measured(v)` and whether `ok(v)`.
fn on_figure(
    name: &str,
    goal: &str,
    figure: Option<f64>,
    missing: &str,
    measured: impl Fn(f64) -> String,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    match figure {
        None => check(name, goal, missing.to_owned(), None),
        Some(v) => check(name, goal, measured(v), Some(ok(v))),
    }
}

/// The largest median peak RSS over every point of the processes named `prefix…`.
fn max_rss<'a>(summary: &'a Summary, prefix: &'a str) -> Option<(f64, String)> {
    summary
        .points
        .iter()
        .flat_map(|p| {
            p.processes_named(prefix).filter_map(move |(name, c)| {
                c.peak_rss_mib
                    .map(|v| (v, format!("{name} at {}", point_name(p))))
            })
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

/// The median over the runs of the consume-only point's largest peak RSS of the
/// processes named `prefix…`, for `workload`.
fn consume_rss(results: &BenchResults, workload: Workload, prefix: &str) -> Option<(f64, String)> {
    let peaks: Vec<f64> = results
        .runs
        .iter()
        .filter_map(|r| {
            r.workload(workload).consume_only.and_then(|c| {
                c.cost
                    .iter()
                    .filter(|p| p.name.starts_with(prefix))
                    .map(|p| p.peak_rss_mib)
                    .max_by(f64::total_cmp)
            })
        })
        .collect();
    median(&peaks).map(|v| (v, format!("consume-only, {}", workload.name())))
}

/// Whether any run searched the sustained rate with `workload`.
fn searched(results: &BenchResults, workload: Workload) -> bool {
    results
        .runs
        .iter()
        .any(|r| r.workload(workload).sustained.is_some())
}

/// The per-workload rows.
fn workload_targets(
    results: &BenchResults,
    workload: Workload,
    h: &WorkloadHeadline,
    out: &mut Vec<TargetCheck>,
) {
    let w = workload.name();
    let (sustained_goal, consume_goal) = match workload {
        Workload::Novel => (TARGET_SUSTAINED_PER_S, TARGET_CONSUME_PER_S),
        Workload::Distinct => (
            TARGET_SUSTAINED_DISTINCT_PER_S,
            TARGET_CONSUME_DISTINCT_PER_S,
        ),
    };
    let exact = h.exact == Some(true);
    let exactness = if exact { "all exact" } else { "NOT all exact" };
    let name = format!("sustained rate ({w})");
    let goal = format!("≥ {} msg/s, exact", thousands(sustained_goal));
    out.push(match (searched(results, workload), h.sustained_msg_s) {
        (false, _) => check(&name, &goal, "not searched (--sustained)".into(), None),
        (true, None) => check(&name, &goal, "nothing carried".into(), Some(false)),
        (true, Some(v)) => check(
            &name,
            &goal,
            format!("{} msg/s, {exactness}", thousands(v)),
            Some(v >= sustained_goal && exact),
        ),
    });
    out.push(on_figure(
        &format!("consume-only ({w})"),
        &format!("≥ {} records/s", thousands(consume_goal)),
        h.consume_only_rec_s,
        "not measured",
        |v| format!("{} records/s", thousands(v)),
        |v| v >= consume_goal,
    ));
    out.push(on_figure(
        &format!("whole-stack CPU at the sustained rate ({w})"),
        &format!("≤ {TARGET_CPU_US_PER_MSG} µs/msg (brokers + Redis + tally)"),
        h.cpu_us_per_msg.total,
        "no sustained rate",
        |v| format!("{v:.1} µs/msg"),
        |v| v <= TARGET_CPU_US_PER_MSG,
    ));
    let at = |v: f64| match h.half_rate_msg_s {
        Some(r) => format!("{} ms at {} msg/s offered", ms(v), thousands(r)),
        None => format!("{} ms", ms(v)),
    };
    out.push(on_figure(
        &format!("ACK latency p99 at half rate ({w})"),
        &format!("≤ {TARGET_ACK_P99_MS} ms"),
        h.ack_p99_ms_half,
        "no half-rate point",
        at,
        |v| v <= TARGET_ACK_P99_MS,
    ));
    out.push(on_figure(
        &format!("end-to-end latency p99 at half rate ({w})"),
        &format!("≤ {TARGET_E2E_P99_MS} ms"),
        h.e2e_p99_ms_half,
        "no half-rate point with probes",
        at,
        |v| v <= TARGET_E2E_P99_MS,
    ));
}

pub(super) fn targets(results: &BenchResults, s: &Summary) -> Vec<TargetCheck> {
    let h: Headline = headline(results);
    let mut out = Vec::new();
    workload_targets(results, Workload::Novel, &h.novel, &mut out);
    workload_targets(results, Workload::Distinct, &h.distinct, &mut out);

    let producer_goal = format!(
        "≤ {} MiB with {} clients",
        TARGET_PRODUCER_RSS_MIB,
        thousands(TARGET_PRODUCER_CLIENTS as f64)
    );
    let after_goal = format!("≤ idle + {TARGET_PRODUCER_AFTER_SLACK_MIB} MiB");
    match &h.many_clients {
        None => {
            out.push(check(
                "producer RSS",
                &producer_goal,
                "no many-clients point".into(),
                None,
            ));
            out.push(check(
                "producer RSS once the clients left",
                &after_goal,
                "no many-clients point".into(),
                None,
            ));
        }
        Some(m) => {
            let enough = m.clients >= TARGET_PRODUCER_CLIENTS;
            out.push(on_figure(
                "producer RSS",
                &producer_goal,
                m.peak_rss_mib,
                "not read",
                |v| {
                    format!(
                        "{} MiB peak ({} connected) at {} clients{}",
                        mib(v),
                        m.connected_rss_mib.map_or("–".into(), mib),
                        thousands(m.clients as f64),
                        if enough {
                            ""
                        } else {
                            " (the target needs more)"
                        }
                    )
                },
                |v| v <= TARGET_PRODUCER_RSS_MIB,
            ));
            out.push(match (m.idle_rss_mib, m.after_rss_mib) {
                (Some(idle), Some(after)) => check(
                    "producer RSS once the clients left",
                    &after_goal,
                    format!("{} MiB after, {} MiB idle", mib(after), mib(idle)),
                    Some(after <= idle + TARGET_PRODUCER_AFTER_SLACK_MIB),
                ),
                _ => check(
                    "producer RSS once the clients left",
                    &after_goal,
                    "not read".into(),
                    None,
                ),
            });
            if !enough {
                for t in out.iter_mut().rev().take(2) {
                    t.met = None;
                }
            }
        }
    }

    let summaries: Vec<&Summary> = std::iter::once(s).chain(s.distinct.as_deref()).collect();
    for (name, prefix) in [
        ("counter RSS", "tally-counter"),
        ("aggregator RSS", "tally-aggregator"),
    ] {
        let goal = format!("≤ {} MiB each", TARGET_WORKER_RSS_MIB);
        let worst = summaries
            .iter()
            .filter_map(|s| max_rss(s, prefix))
            .chain(
                [Workload::Novel, Workload::Distinct]
                    .into_iter()
                    .filter_map(|w| consume_rss(results, w, prefix)),
            )
            .max_by(|a, b| a.0.total_cmp(&b.0));
        out.push(match worst {
            None => check(name, &goal, format!("no {prefix} process measured"), None),
            Some((v, at)) => check(
                name,
                &goal,
                format!("{} MiB max ({at})", mib(v)),
                Some(v <= TARGET_WORKER_RSS_MIB),
            ),
        });
    }

    let many = h.many_clients.as_ref();
    let unavailable = h.novel.err_unavailable
        + h.distinct.err_unavailable
        + many.map_or(0, |m| m.err_unavailable);
    let reconnects = h.novel.reconnects + h.distinct.reconnects + many.map_or(0, |m| m.reconnects);
    let (points, inexact) = results
        .runs
        .iter()
        .map(|r| r.all_exact())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    out.push(if points == 0 {
        check(
            "client trouble",
            "0 ERR unavailable, 0 reconnects",
            "no point".into(),
            None,
        )
    } else {
        check(
            "client trouble",
            "0 ERR unavailable, 0 reconnects",
            format!("{unavailable} ERR unavailable, {reconnects} reconnects over {points} points"),
            Some(unavailable == 0 && reconnects == 0),
        )
    });
    out.push(if points == 0 {
        check("every point exact", "exact", "no point".into(), None)
    } else {
        check(
            "every point exact",
            "exact",
            if inexact == 0 {
                format!("all {points} exact")
            } else {
                format!("{inexact} of {points} NOT exact")
            },
            Some(inexact == 0),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::summarize;
    use crate::results::{ManyClients, SustainStep, SustainedSearch, WorkloadRun};

    fn target<'a>(s: &'a Summary, name: &str) -> &'a TargetCheck {
        s.targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name}: {:?}", s.targets))
    }

    fn search(rate: Option<f64>) -> SustainedSearch {
        SustainedSearch {
            workload: Workload::Novel,
            clients: 100,
            window_s: 60.0,
            low_msg_s: 1_000.0,
            high_msg_s: 200_000.0,
            steps: vec![SustainStep {
                offered_msg_s: rate.unwrap_or(60_000.0),
                lag_early: Some(0),
                lag_end: 0,
                carried: rate.is_some(),
                why_not: Vec::new(),
                point: point(100, Some(600.0), 60_000.0, 1.0),
            }],
            rate_msg_s: rate,
        }
    }

    fn many(clients: usize, peak: f64, after: f64) -> ManyClients {
        ManyClients {
            clients,
            connect_s: 9.0,
            idle_rss_mib: 40.0,
            connected_rss_mib: peak - 5.0,
            peak_rss_mib: peak,
            after_rss_mib: after,
            settle_s: 5.0,
            exact: true,
            err_unavailable: 0,
            reconnects: 0,
        }
    }

    #[test]
    fn the_issue_targets_per_workload() {
        let s = summarize(&three_runs());
        let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 16, "{names:?}");
        assert_eq!(names[0], "sustained rate (novel)");
        assert_eq!(names[5], "sustained rate (distinct)");
        // No search, no consume-only, no many-clients point: n/a, not met.
        assert_eq!(target(&s, "sustained rate (novel)").met, None);
        assert_eq!(target(&s, "consume-only (novel)").met, None);
        assert_eq!(target(&s, "producer RSS").met, None);
        // Half rate: ACK p99 5 + 100/20 = 10 ms ≤ 25; e2e p99 250 ms ≤ 500.
        let ack = target(&s, "ACK latency p99 at half rate (novel)");
        assert_eq!(ack.met, Some(true), "{ack:?}");
        assert!(ack.measured.contains("at 25,200 msg/s offered"), "{ack:?}");
        assert_eq!(
            target(&s, "end-to-end latency p99 at half rate (novel)").met,
            Some(true)
        );
        // The distinct workload did not run: all its rows n/a.
        assert!(
            s.targets[5..10].iter().all(|t| t.met.is_none()),
            "{:?}",
            s.targets
        );
        assert_eq!(target(&s, "counter RSS").met, Some(true));
        assert!(target(&s, "counter RSS")
            .measured
            .contains("tally-counter-2"));
        assert_eq!(target(&s, "client trouble").met, Some(true));
        assert_eq!(target(&s, "every point exact").met, Some(true));

        let mut r = three_runs();
        for run in &mut r.runs {
            run.e2e[4].ack_p99_ms = 30.0;
            run.e2e[3].cost[2].peak_rss_mib = 101.0;
            run.sustained = Some(search(Some(46_000.0)));
            run.many_clients = Some(many(10_000, 140.0, 55.0));
            run.distinct = Some(WorkloadRun {
                e2e: vec![point(100, Some(100.0), 9_000.0, 1.0)],
                sustained: Some(search(Some(30_000.0))),
                consume_only: None,
            });
        }
        r.runs[1].e2e[0].exact = false;
        r.runs[2].e2e[1].reconnects = 2;
        let s = summarize(&r);
        assert_eq!(
            target(&s, "ACK latency p99 at half rate (novel)").met,
            Some(false)
        );
        assert_eq!(target(&s, "counter RSS").met, Some(false));
        // 46,000 ≥ 45,000 but one point is not exact.
        let t = target(&s, "sustained rate (novel)");
        assert_eq!(t.met, Some(false), "{t:?}");
        assert!(t.measured.contains("46,000 msg/s, NOT all exact"), "{t:?}");
        let t = target(&s, "sustained rate (distinct)");
        assert_eq!(
            (t.met, t.measured.as_str()),
            (Some(false), "30,000 msg/s, all exact")
        );
        // The fixture's costs: 8 + 1 + 10 + 5 + 5 + 2 = 31 µs/msg ≤ 40.
        assert_eq!(
            target(&s, "whole-stack CPU at the sustained rate (distinct)").met,
            Some(true)
        );
        assert_eq!(target(&s, "producer RSS").met, Some(true));
        let after = target(&s, "producer RSS once the clients left");
        assert_eq!(after.met, Some(true), "{after:?}");
        let trouble = target(&s, "client trouble");
        assert_eq!(trouble.met, Some(false));
        assert!(trouble.measured.contains("2 reconnects"), "{trouble:?}");
        let exact = target(&s, "every point exact");
        assert_eq!(exact.met, Some(false));
        assert!(exact.measured.starts_with("1 of "), "{exact:?}");

        // Too few clients for the producer target; RSS not back near idle.
        let mut r = three_runs();
        for run in &mut r.runs {
            run.many_clients = Some(many(500, 60.0, 45.0));
        }
        let s = summarize(&r);
        assert_eq!(target(&s, "producer RSS").met, None);
        let mut r = three_runs();
        for run in &mut r.runs {
            run.many_clients = Some(many(10_000, 200.0, 180.0));
            run.sustained = Some(search(None));
        }
        let s = summarize(&r);
        assert_eq!(target(&s, "producer RSS").met, Some(false));
        assert_eq!(
            target(&s, "producer RSS once the clients left").met,
            Some(false)
        );
        let t = target(&s, "sustained rate (novel)");
        assert_eq!(
            (t.met, t.measured.as_str()),
            (Some(false), "nothing carried")
        );

        let s = summarize(&results(Vec::new()));
        assert_eq!(s.targets.len(), 16);
        assert!(s.targets.iter().all(|t| t.met.is_none()), "{:?}", s.targets);
        assert!(!s.all_exact);
    }
}
