//! `report.md`: machine and configuration, the targets, the raw ceilings, the
//! end-to-end table, the cost per process and role, mismatches, and links to the
//! charts. Tables are built with `tally-report`'s [`Table`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tally_report::{cell, create_dir, write_file, Align, Table};

use super::format::{
    latency_pair, met_text, method_line, mib, ms, or_dash, rate_text, ratio_text, thousands,
};
use super::summary::{best_full_speed, ratio, CostSummary, PointSummary, Summary};
use super::ReportError;
use crate::results::{BenchResults, RunResult, Throughput};

/// Writes `dir/report.md` (creating `dir` if needed) and returns its path.
///
/// Sections: machine, configuration and elapsed time; the targets (target |
/// goal | measured (median) | met: `yes`, `NO` or `n/a`); the raw ceilings
/// (median and each run's value) and the Redis call latencies; the end-to-end
/// table (clients | rate | ingest | end to end | ratio to raw Kafka | ACK p50/p99 |
/// e2e p50/p99 | exact) and each run's end-to-end rate with its within-run ratio;
/// the sustained-rate search's windows, if any run searched; the cost per process and per role at the full-speed point with the most
/// clients; the mismatches of any inexact point; links to `throughput.png` and
/// `latency.png` (written by [`write_charts`]).
pub fn write_markdown(
    results: &BenchResults,
    summary: &Summary,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    create_dir(dir)?;
    let path = dir.join("report.md");
    write_file(&path, &markdown(results, summary))?;
    Ok(path)
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
    let mut targets = Table::new()
        .column("target", Align::Left)
        .column("goal", Align::Left)
        .column("measured (median)", Align::Left)
        .column("met", Align::Center);
    for t in &s.targets {
        targets.row([
            cell(&t.name),
            cell(&t.target),
            cell(&t.measured),
            met_text(t.met).to_owned(),
        ]);
    }
    targets.write_to(&mut md);

    raw_tables(&mut md, results, s);
    e2e_tables(&mut md, results, s);
    super::sustained::sustained_tables(&mut md, results);
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

/// A table whose columns are `first` (aligned `align`), `median` (if
/// `with_median`), then one per run.
fn run_table(first: &str, align: Align, with_median: bool, results: &BenchResults) -> Table {
    let mut table = Table::new().column(first, align);
    if with_median {
        table = table.column("median", Align::Right);
    }
    for r in &results.runs {
        table = table.column(format!("run {}", r.run), Align::Right);
    }
    table
}

/// Where a run keeps one of the Kafka ceilings.
type KafkaCeiling = fn(&RunResult) -> &Throughput;

fn raw_tables(md: &mut String, results: &BenchResults, s: &Summary) {
    let _ = writeln!(md, "\n## Raw ceilings (msg/s)\n");
    let mut ceilings = run_table("ceiling", Align::Left, true, results);
    let first = results.runs.first();
    let detail = |d: Option<&String>| match d {
        Some(d) if !d.is_empty() => format!(" ({})", cell(d)),
        _ => String::new(),
    };
    // One row per Kafka ceiling: name (with the first run's detail), median, runs.
    let kafka_rows: [(&str, Option<f64>, KafkaCeiling); 2] = [
        (
            "Kafka idempotent acks=all produce",
            s.kafka_produce_per_s,
            |r| &r.kafka_produce,
        ),
        (
            "Kafka transactional pass-through",
            s.kafka_transactional_per_s,
            |r| &r.kafka_transactional,
        ),
    ];
    for (name, median, of) in kafka_rows {
        let mut row = vec![
            format!("{name}{}", detail(first.map(|r| &of(r).detail))),
            or_dash(median, thousands),
        ];
        row.extend(results.runs.iter().map(|r| thousands(of(r).per_s)));
        ceilings.row(row);
    }
    for (name, sc) in &s.redis {
        let mut row = vec![
            format!(
                "Redis `{}` (batch {}, {} in flight, `WAIT 1`)",
                cell(name),
                sc.batch,
                sc.concurrency
            ),
            or_dash(sc.per_s, thousands),
        ];
        row.extend(results.runs.iter().map(|r| {
            let v = r.redis.iter().find(|x| &x.script == name);
            or_dash(v.map(|x| x.throughput.per_s), thousands)
        }));
        ceilings.row(row);
    }
    ceilings.write_to(md);
    if !s.redis.is_empty() {
        let _ = writeln!(md, "\nRedis call latency (median, incl. `WAIT 1`):\n");
        let mut latency = Table::new()
            .column("script", Align::Left)
            .column("call p50 ms", Align::Right)
            .column("call p99 ms", Align::Right);
        for (name, sc) in &s.redis {
            latency.row([
                format!("`{}`", cell(name)),
                or_dash(sc.call_p50_ms, ms),
                or_dash(sc.call_p99_ms, ms),
            ]);
        }
        latency.write_to(md);
    }
}

fn e2e_tables(md: &mut String, results: &BenchResults, s: &Summary) {
    let _ = writeln!(md, "\n## End to end (median)\n");
    let mut points = Table::new()
        .column("clients", Align::Right)
        .column("rate", Align::Left)
        .column("ingest msg/s", Align::Right)
        .column("end-to-end msg/s", Align::Right)
        .column("ratio to raw Kafka", Align::Right)
        .column("ACK p50 / p99 ms", Align::Right)
        .column("e2e p50 / p99 ms", Align::Right)
        .column("exact", Align::Center);
    for p in &s.points {
        points.row([
            p.clients.to_string(),
            rate_text(p),
            or_dash(p.ingest_per_s, thousands),
            or_dash(p.end_to_end_per_s, thousands),
            or_dash(p.ratio_to_kafka, ratio_text),
            latency_pair(p.ack_p50_ms, p.ack_p99_ms),
            latency_pair(p.e2e_p50_ms, p.e2e_p99_ms),
            (if p.exact { "yes" } else { "NO" }).to_owned(),
        ]);
    }
    points.write_to(md);
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
    let mut by_run = run_table("clients", Align::Right, false, results);
    for p in &full {
        let mut row = vec![p.clients.to_string()];
        row.extend(results.runs.iter().map(|r| {
            let v = r
                .e2e
                .iter()
                .find(|x| x.rate_per_client.is_none() && x.clients == p.clients);
            match v {
                None => "–".to_owned(),
                Some(x) => format!(
                    "{} ({})",
                    thousands(x.end_to_end_per_s),
                    or_dash(ratio(x.end_to_end_per_s, r.kafka_produce.per_s), ratio_text)
                ),
            }
        }));
        by_run.row(row);
    }
    let mut best_row = vec!["**best / Kafka produce**".to_owned()];
    best_row.extend(results.runs.iter().zip(&s.ratio_by_run).map(|(r, ratio)| {
        let best = best_full_speed(&r.e2e).map(|p| p.end_to_end_per_s);
        format!(
            "{} / {} = **{}**",
            or_dash(best, thousands),
            thousands(r.kafka_produce.per_s),
            or_dash(*ratio, ratio_text)
        )
    }));
    by_run.row(best_row);
    by_run.write_to(md);
    let _ = writeln!(
        md,
        "\nRatio to raw Kafka (median of the runs' best / Kafka produce): **{}**.",
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
    let mut by_process = Table::new()
        .column("process", Align::Left)
        .column("role", Align::Left)
        .column("CPU s", Align::Right)
        .column("peak RSS MiB", Align::Right)
        .column("CPU µs/msg", Align::Right);
    let mut processes: Vec<(&String, &CostSummary)> = p.processes.iter().collect();
    processes.sort_by(|a, b| a.1.role.cmp(&b.1.role).then(a.0.cmp(b.0)));
    for (name, c) in processes {
        by_process.row([
            cell(name),
            cell(&c.role),
            or_dash(c.cpu_s, |v| format!("{v:.2}")),
            or_dash(c.peak_rss_mib, mib),
            or_dash(c.cpu_us_per_message, |v| format!("{v:.1}")),
        ]);
    }
    by_process.write_to(md);
    let _ = writeln!(md, "\nPer role (its processes summed within a run):\n");
    let mut by_role = Table::new()
        .column("role", Align::Left)
        .column("CPU s", Align::Right)
        .column("peak RSS MiB (sum of peaks)", Align::Right)
        .column("CPU µs/msg", Align::Right);
    for (role, c) in &p.roles {
        by_role.row([
            cell(role),
            or_dash(c.cpu_s, |v| format!("{v:.2}")),
            or_dash(c.peak_rss_mib, mib),
            or_dash(c.cpu_us_per_message, |v| format!("{v:.1}")),
        ]);
    }
    by_role.write_to(md);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::summarize;

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
}
