//! `tally-bench` (what `scripts/bench` runs) on the real stack with a tiny
//! workload: one run completes with both workloads (the novel and all-distinct
//! messages), every end-to-end, consume-only and many-clients point is exact and
//! carries its figures, and the report, charts and JSON (`summary.json` with the
//! same keys for both workloads) are written. The figures themselves
//! are not judged here: performance lives in the benchmark, not in timed asserts.

use std::process::Command;

use serde_json::Value;
use tally_tests::{binary, local_config, repo_root};

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(binary("tally-bench"))
        .arg("--config")
        .arg(local_config())
        .arg("--input")
        .arg(repo_root().join("data/pride-and-prejudice.txt"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run tally-bench: {e}"))
}

#[test]
fn a_small_benchmark_run_is_exact_and_writes_its_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let dir = out.path().to_str().expect("utf-8 temp dir");
    let output = bench(&[
        "--out",
        dir,
        "--runs",
        "1",
        "--clients",
        "2,20",
        "--messages",
        "1000",
        "--raw-seconds",
        "1",
        "--half-rate-clients",
        "5",
        "--half-rate-seconds",
        "3",
        "--partitions",
        "3",
        "--workloads",
        "novel,distinct",
        "--consume-records",
        "2000",
        "--consume-clients",
        "10",
        "--many-clients",
        "100",
        "--many-settle-seconds",
        "1",
        "--warmup-seconds",
        "2",
        "--warmup-rate",
        "500",
    ]);
    let shown = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown}");
    // The warm-up ran first, exact (a warm-up that is not exact fails the run).
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warm = stderr.find("== warm-up: 2 s at 500 msg/s");
    let first_run = stderr.find("== run 1/1");
    assert!(
        matches!((warm, first_run), (Some(w), Some(r)) if w < r),
        "no warm-up before the first run\n{shown}"
    );

    // Read as plain JSON: the file is the interface (tally-bench's types are not a
    // dependency of the tests).
    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&json).expect("results.json parses");
    let runs = results["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{shown}");
    let run = &runs[0];
    let num = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number: {v} in {run:#}"))
    };
    assert!(num(&run["kafka_produce"]["items"]) > 0.0, "{run:#}");
    assert!(num(&run["kafka_transactional"]["items"]) > 0.0, "{run:#}");
    let redis = run["redis"].as_array().expect("redis");
    let scripts: Vec<&str> = redis.iter().filter_map(|r| r["script"].as_str()).collect();
    assert_eq!(scripts, ["stash_append", "count_client", "count_messages"]);
    assert!(
        redis.iter().all(|r| num(&r["throughput"]["items"]) > 0.0),
        "{run:#}"
    );

    for (workload, points) in [("novel", run), ("distinct", &run["distinct"])] {
        let e2e = points["e2e"]
            .as_array()
            .unwrap_or_else(|| panic!("{workload}: no e2e in {run:#}"));
        let shape: Vec<(f64, bool)> = e2e
            .iter()
            .map(|p| (num(&p["clients"]), !p["rate_per_client"].is_null()))
            .collect();
        assert_eq!(
            shape,
            [(2.0, false), (20.0, false), (5.0, true)],
            "{workload}: {run:#}"
        );
        for p in e2e {
            assert_eq!(
                p["exact"],
                Value::Bool(true),
                "{workload} point not exact: {p:#}"
            );
            if p["rate_per_client"].is_null() {
                assert_eq!(num(&p["messages"]), 1000.0, "{p:#}");
            }
            assert!(num(&p["ingest_per_s"]) > 0.0, "{p:#}");
            assert!(num(&p["end_to_end_per_s"]) > 0.0, "{p:#}");
            assert!(num(&p["counted_s"]) >= num(&p["ingest_s"]), "{p:#}");
            let cost = p["cost"].as_array().expect("cost");
            let producer = cost
                .iter()
                .find(|c| c["name"] == "tally-producer")
                .unwrap_or_else(|| panic!("no producer cost: {p:#}"));
            assert!(num(&producer["peak_rss_mib"]) > 0.0, "{p:#}");
            assert!(
                cost.iter().any(|c| c["role"] == "kafka")
                    && cost.iter().any(|c| c["role"] == "redis"),
                "the stack's processes are not measured: {p:#}"
            );
        }
        // Probes go out every 20 ms while the 3 s half-rate point sends.
        let half = &e2e[2];
        assert!(num(&half["e2e_samples"]) > 10.0, "{half:#}");
        assert!(num(&half["e2e_p99_ms"]) > 0.0, "{half:#}");

        // Counters and aggregators cold on 2,000 pre-loaded records.
        let consume = &points["consume_only"];
        assert_eq!(
            consume["exact"],
            Value::Bool(true),
            "{workload}: {consume:#}"
        );
        assert_eq!(num(&consume["records"]), 2000.0, "{consume:#}");
        assert!(num(&consume["per_s"]) > 0.0, "{consume:#}");
        let cost = consume["cost"].as_array().expect("consume-only cost");
        for name in ["tally-counter-0", "tally-aggregator-0"] {
            assert!(
                cost.iter().any(|c| c["name"] == name),
                "{workload}: no {name} in {consume:#}"
            );
        }
    }

    let many = &run["many_clients"];
    assert_eq!(many["exact"], Value::Bool(true), "{many:#}");
    assert_eq!(num(&many["clients"]), 100.0, "{many:#}");
    for key in [
        "idle_rss_mib",
        "connected_rss_mib",
        "peak_rss_mib",
        "after_rss_mib",
    ] {
        assert!(num(&many[key]) > 0.0, "{key}: {many:#}");
    }

    let summary = std::fs::read_to_string(out.path().join("summary.json")).expect("summary.json");
    let summary: Value = serde_json::from_str(&summary).expect("summary.json parses");
    for (workload, h) in [("novel", &summary), ("distinct", &summary["distinct"])] {
        assert_eq!(h["exact"], Value::Bool(true), "{workload}: {summary:#}");
        for key in [
            "raw_produce_rec_s",
            "consume_only_rec_s",
            "ack_p99_ms_half",
            "e2e_p99_ms_half",
        ] {
            assert!(h[key].as_f64().is_some(), "{workload} {key}: {summary:#}");
        }
        assert!(
            h["consume_only_cpu_us_per_rec"]["total"].as_f64().is_some(),
            "{summary:#}"
        );
    }
    assert_eq!(summary["many_clients"]["clients"], 100, "{summary:#}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("summary: novel: ") && last.contains(" | distinct: sustained "),
        "{last}"
    );

    let report = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(report.contains("throughput.png"), "{report}");
    for chart in ["throughput.png", "latency.png"] {
        let bytes = std::fs::read(out.path().join(chart)).expect(chart);
        assert!(bytes.starts_with(b"\x89PNG"), "{chart} is not a PNG");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let out = tempfile::tempdir().expect("temp dir");
    let dir = out.path().to_str().expect("utf-8 temp dir");
    let output = bench(&["--out", dir, "--clients", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--clients"), "{stderr}");
}
