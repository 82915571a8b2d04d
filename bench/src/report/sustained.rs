//! `report.md`'s section on the sustained-rate search: every window of every
//! run (offered and ACKed rate, counting lag early and at the end, end-to-end
//! p99, exact, carried or why not) and the rate each run found. Nothing is
//! written when no run searched.

use std::fmt::Write as _;

use tally_report::{cell, Align, Table};

use super::format::{ms, or_dash, thousands};
use crate::results::BenchResults;

/// Appends the section to `md` if any run has a search.
pub(super) fn sustained_tables(md: &mut String, results: &BenchResults, workload: &str) {
    let searches: Vec<_> = results
        .runs
        .iter()
        .filter_map(|r| r.sustained.as_ref().map(|s| (r.run, s)))
        .collect();
    let Some((_, first)) = searches.first() else {
        return;
    };
    let _ = writeln!(md, "\n## Sustained rate (search), {workload}\n");
    let _ = writeln!(
        md,
        "{} clients, windows of {} s, bisected between {} msg/s and the run's raw produce \
         ceiling. A window is carried when ≥ 95 % of the offered rate was ACKed, the \
         counting lag at the end is not above the early lag plus one counter batch, \
         end-to-end p99 ≤ 1 s and every count is exact.\n",
        first.clients,
        first.window_s,
        thousands(first.low_msg_s)
    );
    let mut table = Table::new()
        .column("run", Align::Right)
        .column("offered msg/s", Align::Right)
        .column("ACKed msg/s", Align::Right)
        .column("lag early → end", Align::Right)
        .column("e2e p99 ms", Align::Right)
        .column("exact", Align::Center)
        .column("carried", Align::Left);
    for (run, search) in &searches {
        for step in &search.steps {
            let p = &step.point;
            table.row([
                run.to_string(),
                thousands(step.offered_msg_s),
                thousands(p.ingest_per_s),
                format!(
                    "{} → {}",
                    step.lag_early
                        .map_or("–".to_owned(), |l| thousands(l as f64)),
                    thousands(step.lag_end as f64)
                ),
                or_dash(p.e2e_p99_ms, ms),
                (if p.exact { "yes" } else { "NO" }).to_owned(),
                if step.carried {
                    "yes".to_owned()
                } else {
                    cell(&format!("no: {}", step.why_not.join("; ")))
                },
            ]);
        }
    }
    table.write_to(md);
    let found: Vec<String> = searches
        .iter()
        .map(|(run, s)| {
            format!(
                "run {run}: {}",
                s.rate_msg_s
                    .map_or("nothing carried".to_owned(), |r| format!(
                        "{} msg/s",
                        thousands(r)
                    ))
            )
        })
        .collect();
    let _ = writeln!(md, "\nSustained rate per run: {}.", found.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::results::{SustainStep, SustainedSearch, Workload};

    #[test]
    fn lists_every_window_and_the_rate_found() {
        let mut r = three_runs();
        let mut md = String::new();
        sustained_tables(&mut md, &r, "novel");
        assert!(md.is_empty(), "no search, no section: {md}");
        let step = |offered: f64, carried: bool| SustainStep {
            offered_msg_s: offered,
            lag_early: Some(1_200),
            lag_end: 40_000,
            carried,
            why_not: if carried {
                Vec::new()
            } else {
                vec!["counting lag grew to 40000 (allowed 6200)".to_owned()]
            },
            point: point(100, Some(offered / 100.0), offered, 1.0),
        };
        r.runs[1].sustained = Some(SustainedSearch {
            workload: Workload::Novel,
            clients: 100,
            window_s: 60.0,
            low_msg_s: 1_000.0,
            high_msg_s: 200_000.0,
            steps: vec![step(15_000.0, true), step(58_000.0, false)],
            rate_msg_s: Some(15_000.0),
        });
        sustained_tables(&mut md, &r, "novel");
        assert!(md.contains("## Sustained rate (search), novel"), "{md}");
        assert!(md.contains("| 2 | 58,000 |"), "{md}");
        assert!(md.contains("1,200 → 40,000"), "{md}");
        assert!(md.contains("no: counting lag grew"), "{md}");
        assert!(md.contains("run 2: 15,000 msg/s."), "{md}");
    }
}
