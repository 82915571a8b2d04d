//! The benchmark's targets, each judged on the medians of a [`Summary`]: met,
//! not met, or not evaluable (missing data, or not measured under the target's
//! conditions), never met by default and never a panic.

use super::format::{mib, ms, ratio_text, small_rate, thousands};
use super::summary::{median, PointSummary, Summary};
use crate::results::BenchResults;
use serde::Serialize;

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

/// The sustained-rate target judged on the search's rate (median over the runs
/// that searched; a search that carried nothing counts as not met), if any run
/// searched.
fn searched_check(results: &BenchResults, s: &Summary, goal: &str) -> Option<TargetCheck> {
    let searches: Vec<_> = results
        .runs
        .iter()
        .filter_map(|r| r.sustained.as_ref())
        .collect();
    let first = searches.first()?;
    let rates: Vec<f64> = searches.iter().filter_map(|x| x.rate_msg_s).collect();
    let windows_exact = searches
        .iter()
        .flat_map(|x| &x.steps)
        .all(|w| w.point.exact);
    let name = "sustained rate (search)";
    Some(match median(&rates) {
        None => check(name, goal, "nothing carried".into(), Some(false)),
        Some(v) => check(
            name,
            goal,
            format!(
                "{} msg/s carried for {} s at {} clients, {}",
                thousands(v),
                first.window_s,
                first.clients,
                if windows_exact && s.all_exact {
                    "all exact"
                } else {
                    "NOT all exact"
                }
            ),
            Some(v >= TARGET_SUSTAINED_PER_S && windows_exact && s.all_exact),
        ),
    })
}

pub(super) fn targets(results: &BenchResults, s: &Summary) -> Vec<TargetCheck> {
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

    if let Some(check) = searched_check(results, s, &goal) {
        out.push(check);
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::summarize;

    fn target<'a>(s: &'a Summary, name: &str) -> &'a TargetCheck {
        s.targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no target {name}: {:?}", s.targets))
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

    #[test]
    fn the_searched_rate_is_its_own_target() {
        use crate::results::{SustainStep, SustainedSearch, Workload};
        let mut r = crate::report::fixtures::three_runs();
        let name = "sustained rate (search)";
        let s = crate::report::summary::summarize(&r);
        assert!(
            s.targets.iter().all(|t| t.name != name),
            "no search, no row"
        );
        let search = |rate: Option<f64>| SustainedSearch {
            workload: Workload::Novel,
            clients: 100,
            window_s: 60.0,
            low_msg_s: 1_000.0,
            high_msg_s: 200_000.0,
            steps: vec![SustainStep {
                offered_msg_s: 60_000.0,
                lag_early: Some(0),
                lag_end: 0,
                carried: rate.is_some(),
                why_not: Vec::new(),
                point: crate::report::fixtures::point(100, Some(600.0), 60_000.0, 1.0),
            }],
            rate_msg_s: rate,
        };
        r.runs[0].sustained = Some(search(Some(60_000.0)));
        let s = crate::report::summary::summarize(&r);
        let t = s.targets.iter().find(|t| t.name == name).expect("row");
        assert_eq!(t.met, Some(true), "{t:?}");
        assert!(
            t.measured.starts_with("60,000 msg/s carried for 60 s"),
            "{t:?}"
        );
        r.runs[0].sustained = Some(search(None));
        let s = crate::report::summary::summarize(&r);
        let t = s.targets.iter().find(|t| t.name == name).expect("row");
        assert_eq!(
            (t.met, t.measured.as_str()),
            (Some(false), "nothing carried")
        );
    }
}
