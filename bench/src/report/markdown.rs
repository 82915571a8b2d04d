//! `report.md`: machine and configuration, the targets, the raw ceilings, the
//! end-to-end table, the cost per process and role, mismatches, and links to the
//! charts. Tables are built with `tally-report`'s [`Table`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tally_report::{cell, create_dir, write_file, Align, Table};

use super::format::{
    latency_pair, met_text, method_line, mib, ms, or_dash, rate_text, ratio_text, thousands,
};
use super::summary::{best_full_speed, median, ratio, CostSummary, PointSummary, Summary};
use super::ReportError;
use crate::results::{BenchResults, RunResult, Throughput, Workload};

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
    let workloads: Vec<&str> = c.workloads.iter().map(|w| w.name()).collect();
    let _ = writeln!(
        md,
        "Workloads: {}; consume-only: {}; many clients: {}.\n",
        workloads.join(", "),
        c.consume_records
            .map_or("not measured".to_owned(), |n| format!(
                "{} records",
                thousands(n as f64)
            )),
        c.many_clients
            .map_or("not measured".to_owned(), |n| format!(
                "{} clients",
                thousands(n as f64)
            ))
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
    let distinct = results.for_workload(Workload::Distinct);
    let novel = results.for_workload(Workload::Novel);
    let workloads = [
        (Workload::Novel, &novel, Some(s)),
        (Workload::Distinct, &distinct, s.distinct.as_deref()),
    ];
    for (workload, view, summary) in workloads {
        let Some(summary) = summary else {
            continue;
        };
        let w = workload.name();
        e2e_tables(&mut md, view, summary, w);
        super::sustained::sustained_tables(&mut md, view, w);
        cost_tables(&mut md, summary, w);
    }
    consume_tables(&mut md, results);
    many_clients_table(&mut md, results);

    let mut inexact = [(Workload::Novel, &novel), (Workload::Distinct, &distinct)]
        .into_iter()
        .flat_map(|(w, view)| {
            view.runs
                .iter()
                .flat_map(move |r| r.e2e.iter().map(move |p| (w, r.run, p)))
        })
        .filter(|(_, _, p)| !p.exact)
        .peekable();
    if inexact.peek().is_some() {
        let _ = writeln!(md, "\n## Counts not exact\n");
        for (w, run, p) in inexact {
            let _ = writeln!(
                md,
                "Run {run}, {}, {} clients ({}): first mismatches:\n\n```text",
                w.name(),
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

fn e2e_tables(md: &mut String, results: &BenchResults, s: &Summary, workload: &str) {
    let _ = writeln!(md, "\n## End to end, {workload} (median)\n");
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

fn cost_tables(md: &mut String, s: &Summary, workload: &str) {
    let Some(p) = s.most_clients() else {
        return;
    };
    let _ = writeln!(
        md,
        "\n## Cost at {} clients, full speed, {workload} (median)\n",
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

/// The consume-only points of both workloads, if any run has one.
fn consume_tables(md: &mut String, results: &BenchResults) {
    let rows: Vec<(Workload, Vec<(usize, crate::results::ConsumeOnly)>)> =
        [Workload::Novel, Workload::Distinct]
            .into_iter()
            .map(|w| {
                let points = results
                    .runs
                    .iter()
                    .filter_map(|r| r.workload(w).consume_only.map(|c| (r.run, c)))
                    .collect();
                (w, points)
            })
            .filter(|(_, p): &(Workload, Vec<_>)| !p.is_empty())
            .collect();
    let Some((_, c)) = rows.first().and_then(|(_, points)| points.first()) else {
        return;
    };
    let h = super::headline(results);
    let _ = writeln!(md, "\n## Consume-only (median)\n");
    let _ = writeln!(
        md,
        "{} counter(s) and {} aggregator(s) started cold on a `client_message` topic \
         ({} partitions) pre-loaded with {} records of {} clients (idempotent producer, \
         off the clock): records/s from their start until every client and message \
         count was exact; CPU µs per record of the stack's processes meanwhile.\n",
        c.counters,
        c.aggregators,
        c.partitions,
        thousands(c.records as f64),
        c.clients
    );
    let mut table = run_table("workload", Align::Left, true, results)
        .column("CPU µs/rec: total", Align::Right)
        .column("brokers", Align::Right)
        .column("Redis", Align::Right)
        .column("counter", Align::Right)
        .column("aggregator", Align::Right)
        .column("exact", Align::Center);
    for (w, points) in &rows {
        let per_s: Vec<f64> = points.iter().map(|(_, c)| c.per_s).collect();
        let mut row = vec![
            format!("{} records/s", w.name()),
            or_dash(median(&per_s), thousands),
        ];
        row.extend(results.runs.iter().map(|r| {
            let v = points.iter().find(|(run, _)| *run == r.run);
            or_dash(v.map(|(_, c)| c.per_s), thousands)
        }));
        let cpu = match w {
            Workload::Novel => &h.novel.consume_only_cpu_us_per_rec,
            Workload::Distinct => &h.distinct.consume_only_cpu_us_per_rec,
        };
        for v in [
            cpu.total,
            cpu.brokers,
            cpu.redis,
            cpu.counter,
            cpu.aggregator,
        ] {
            row.push(or_dash(v, |v| format!("{v:.1}")));
        }
        row.push(
            (if points.iter().all(|(_, c)| c.exact) {
                "yes"
            } else {
                "NO"
            })
            .to_owned(),
        );
        table.row(row);
    }
    table.write_to(md);
    for (w, points) in &rows {
        for (run, c) in points.iter().filter(|(_, c)| !c.exact) {
            let _ = writeln!(
                md,
                "\nRun {run}, consume-only {}: first mismatches: {}",
                w.name(),
                cell(&c.mismatches.join("; "))
            );
        }
    }
}

/// The many-clients point, if any run has one.
fn many_clients_table(md: &mut String, results: &BenchResults) {
    let points: Vec<_> = results
        .runs
        .iter()
        .filter_map(|r| r.many_clients.as_ref().map(|m| (r.run, m)))
        .collect();
    let Some((_, first)) = points.first() else {
        return;
    };
    let _ = writeln!(md, "\n## Many clients\n");
    let _ = writeln!(
        md,
        "{} clients connect (at most {} between connecting and their WELCOME at once), \
         say HELLO and send one line each, stay connected, then all leave; the \
         producer's RSS before, with all connected, its peak (sampled every 200 ms), and \
         {} s after the last one left.\n",
        thousands(first.clients as f64),
        crate::many_clients::CONNECT_CONCURRENCY,
        first.settle_s
    );
    let mut table = Table::new()
        .column("run", Align::Right)
        .column("connect s", Align::Right)
        .column("idle MiB", Align::Right)
        .column("connected MiB", Align::Right)
        .column("peak MiB", Align::Right)
        .column("after MiB", Align::Right)
        .column("ERR unavailable / reconnects", Align::Right)
        .column("exact", Align::Center);
    for (run, m) in points {
        table.row([
            run.to_string(),
            format!("{:.1}", m.connect_s),
            mib(m.idle_rss_mib),
            mib(m.connected_rss_mib),
            mib(m.peak_rss_mib),
            mib(m.after_rss_mib),
            format!("{} / {}", m.err_unavailable, m.reconnects),
            (if m.exact { "yes" } else { "NO" }).to_owned(),
        ]);
    }
    table.write_to(md);
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
            row(&md, "ACK latency p99 at half rate (novel)")[2..],
            ["10.0 ms at 25,200 msg/s offered", "yes"]
        );
        assert_eq!(row(&md, "producer RSS")[3], "n/a");
        assert!(md.contains("## End to end, novel (median)"), "{md}");
        assert!(
            md.contains(
                "Workloads: novel; consume-only: not measured; many clients: not measured."
            ),
            "{md}"
        );
        assert!(!md.contains("distinct (median)"), "{md}");
        assert!(!md.contains("## Consume-only") && !md.contains("## Many clients"));
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
        assert_eq!(row(&md, "every point exact")[3], "NO");
        assert_eq!(*row(&md, "10").last().expect("cells"), "NO");
        assert!(md.contains("Run 3, novel, 10 clients (full speed)"), "{md}");
        assert!(md.contains("client c-7: counted 41, sent 42"));
    }

    #[test]
    fn both_workloads_consume_only_and_many_clients_are_reported() {
        use crate::results::{ConsumeOnly, ManyClients, WorkloadRun};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = three_runs();
        for run in &mut r.runs {
            let consume = |per_s: f64| ConsumeOnly {
                records: 500_000,
                clients: 100,
                partitions: 12,
                counters: 1,
                aggregators: 1,
                preload_s: 3.0,
                counted_s: 500_000.0 / per_s,
                per_s,
                exact: true,
                mismatches: Vec::new(),
                cost: vec![
                    cost("kafka-1", "kafka", 4.0, 900.0),
                    cost("redis-7000", "redis", 20.0, 10.0),
                    cost("tally-counter-0", "tally", 2.0, 50.0),
                    cost("tally-aggregator-0", "tally", 3.0, 50.0),
                ],
            };
            run.consume_only = Some(consume(30_000.0));
            run.distinct = Some(WorkloadRun {
                e2e: vec![
                    point(100, None, 9_000.0, 1.0),
                    point(100, Some(45.0), 4_500.0, 1.0),
                ],
                sustained: None,
                consume_only: Some(consume(9_000.0)),
            });
            run.many_clients = Some(ManyClients {
                clients: 10_000,
                connect_s: 9.0,
                idle_rss_mib: 40.0,
                connected_rss_mib: 120.0,
                peak_rss_mib: 130.0,
                after_rss_mib: 50.0,
                settle_s: 5.0,
                exact: true,
                err_unavailable: 0,
                reconnects: 0,
            });
        }
        let s = summarize(&r);
        let md = std::fs::read_to_string(write_markdown(&r, &s, dir.path()).expect("report"))
            .expect("read");
        assert!(md.contains("## End to end, distinct (median)"), "{md}");
        assert!(
            md.contains("## Cost at 100 clients, full speed, distinct (median)"),
            "{md}"
        );
        assert_eq!(
            row(&md, "novel records/s")[1..],
            ["30,000", "30,000", "30,000", "30,000", "29.0", "4.0", "20.0", "2.0", "3.0", "yes"]
        );
        assert_eq!(row(&md, "distinct records/s")[1], "9,000");
        let many = &md[md.find("## Many clients").expect("many-clients section")..];
        assert_eq!(
            row(many, "1")[1..],
            ["9.0", "40.0", "120.0", "130.0", "50.0", "0 / 0", "yes"]
        );
        assert_eq!(row(&md, "producer RSS")[3], "yes");
        assert_eq!(row(&md, "consume-only (distinct)")[3], "NO");
    }
}
