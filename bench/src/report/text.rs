//! The plain-text summary `tally-bench` prints to the terminal.

use std::fmt::Write as _;

use super::format::{latency_pair, method_line, or_dash, ratio_text, small_rate, thousands};
use super::summary::Summary;
use crate::results::BenchResults;

/// A short plain-text summary for the terminal: the targets (`met`, `NOT MET`,
/// `n/a`), the raw ceilings, the end-to-end medians of each workload, the
/// consume-only rates and the many-clients point.
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
    for (workload, points) in
        std::iter::once(("novel", s)).chain(s.distinct.as_deref().map(|d| ("distinct", d)))
    {
        if points.points.is_empty() {
            continue;
        }
        let _ = writeln!(t, "end to end, {workload} (median):");
        let _ = writeln!(
            t,
            "  {:>7}  {:<10}  {:>10}  {:>10}  {:>6}  {:>15}  {:>15}  exact",
            "clients", "rate", "ingest/s", "e2e/s", "ratio", "ACK p50/p99 ms", "e2e p50/p99 ms"
        );
        for p in &points.points {
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
    }
    let h = super::headline(results);
    for (workload, w) in [("novel", &h.novel), ("distinct", &h.distinct)] {
        if let Some(per_s) = w.consume_only_rec_s {
            let _ = writeln!(
                t,
                "consume-only, {workload}: {} records/s, {} µs CPU/record",
                thousands(per_s),
                or_dash(w.consume_only_cpu_us_per_rec.total, |v| format!("{v:.1}"))
            );
        }
    }
    if let Some(m) = &h.many_clients {
        let _ = writeln!(
            t,
            "{} clients: producer RSS {} MiB idle, {} connected (peak {}), {} after they left",
            thousands(m.clients as f64),
            or_dash(m.idle_rss_mib, |v| format!("{v:.1}")),
            or_dash(m.connected_rss_mib, |v| format!("{v:.1}")),
            or_dash(m.peak_rss_mib, |v| format!("{v:.1}")),
            or_dash(m.after_rss_mib, |v| format!("{v:.1}"))
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::summarize;

    #[test]
    fn summary_text_lists_targets_and_points() {
        let mut r = three_runs();
        for run in &mut r.runs {
            run.e2e[4].ack_p99_ms = 30.0;
        }
        let s = summarize(&r);
        let text = summary_text(&r, &s);
        assert!(text.contains("Medians over 3 runs"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("NOT MET")
                && l.contains("ACK latency p99 at half rate (novel)")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("met") && l.contains("counter RSS")),
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
}
