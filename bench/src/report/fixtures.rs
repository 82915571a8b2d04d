//! Benchmark results for the report's unit tests: three runs whose Kafka and
//! tally rates do not move together, and the pieces to vary them.

#![allow(dead_code)] // each test module uses some of them

use crate::results::{
    BenchConfig, BenchResults, E2ePoint, Machine, ProcessCost, RedisScriptResult, RunResult,
    Throughput,
};

pub(crate) fn tp(per_s: f64) -> Throughput {
    Throughput {
        items: (per_s * 10.0) as u64,
        seconds: 10.0,
        per_s,
        detail: "batch 16".to_owned(),
    }
}

pub(crate) fn cost(name: &str, role: &str, cpu_s: f64, rss: f64) -> ProcessCost {
    ProcessCost {
        name: name.to_owned(),
        role: role.to_owned(),
        cpu_s,
        peak_rss_mib: rss,
        cpu_us_per_message: cpu_s * 1.0,
    }
}

/// A point; the end-to-end rate is `e2e`, ingest 10% above, latencies grow
/// with the client count, RSS with `rss_scale`.
pub(crate) fn point(clients: usize, rate: Option<f64>, e2e: f64, rss_scale: f64) -> E2ePoint {
    let c = clients as f64;
    E2ePoint {
        clients,
        rate_per_client: rate,
        messages: 1_000_000,
        ingest_s: 1.0,
        ingest_per_s: e2e * 1.1,
        counted_s: 1.0,
        end_to_end_per_s: e2e,
        ack_p50_ms: 1.0 + c / 100.0,
        ack_p99_ms: 5.0 + c / 20.0,
        e2e_p50_ms: Some(50.0 + c / 10.0),
        e2e_p99_ms: Some(200.0 + c / 2.0),
        e2e_samples: 100,
        exact: true,
        mismatches: Vec::new(),
        cost: vec![
            cost("tally-producer", "tally", 10.0, 40.0 + c / 10.0 * rss_scale),
            cost("tally-counter-1", "tally", 5.0, 60.0 * rss_scale),
            cost("tally-counter-2", "tally", 5.0, 62.0 * rss_scale),
            cost("tally-aggregator-1", "tally", 2.0, 30.0),
            cost("load (tally-bench)", "load", 3.0, 20.0),
            cost("kafka-1", "kafka", 8.0, 900.0),
            cost("redis-7000", "redis", 1.0, 10.0),
        ],
        err_unavailable: 0,
        reconnects: 0,
    }
}

pub(crate) fn run(n: usize, kafka: f64, e2e_by_clients: [f64; 4]) -> RunResult {
    let clients = [1, 10, 100, 1000];
    let mut e2e: Vec<E2ePoint> = clients
        .iter()
        .zip(e2e_by_clients)
        .map(|(&c, v)| point(c, None, v, 1.0))
        .collect();
    e2e.push(point(100, Some(250.0 + n as f64), 25_000.0, 1.0));
    RunResult {
        run: n,
        kafka_produce: tp(kafka),
        kafka_transactional: tp(kafka / 2.0),
        redis: vec![
            RedisScriptResult {
                script: "stash_append".to_owned(),
                batch: 64,
                concurrency: 8,
                throughput: tp(300_000.0 + n as f64),
                call_p50_ms: 1.0,
                call_p99_ms: 3.0 + n as f64,
            },
            RedisScriptResult {
                script: "count_messages".to_owned(),
                batch: 256,
                concurrency: 4,
                throughput: tp(400_000.0),
                call_p50_ms: 2.0,
                call_p99_ms: 4.0,
            },
        ],
        e2e,
        sustained: None,
        consume_only: None,
        distinct: None,
        many_clients: None,
    }
}

pub(crate) fn results(runs: Vec<RunResult>) -> BenchResults {
    BenchResults {
        started_at: "2025-01-01T00:00:00Z".to_owned(),
        machine: Machine {
            cpus: 2,
            memory_mib: 7_953,
            kernel: "6.1.0".to_owned(),
            kafka_partitions: Some(420),
        },
        config: BenchConfig {
            runs: 3,
            raw_seconds: 30.0,
            record_bytes: 100,
            clients: vec![1, 10, 100, 1000],
            messages_per_point: 1_000_000,
            half_rate_clients: 100,
            partitions: 12,
            counters: 1,
            aggregators: 1,
            workloads: vec![crate::results::Workload::Novel],
            consume_records: None,
            many_clients: None,
        },
        runs,
        elapsed_s: 1234.5,
    }
}

/// Three runs whose Kafka and tally rates do not move together, so the
/// median of ratios (0.40) differs from the ratio of medians (50/200 = 0.25).
pub(crate) fn three_runs() -> BenchResults {
    results(vec![
        run(1, 100_000.0, [10_000.0, 30_000.0, 50_000.0, 45_000.0]),
        run(2, 200_000.0, [10_000.0, 30_000.0, 40_000.0, 35_000.0]),
        run(3, 300_000.0, [10_000.0, 60_000.0, 120_000.0, 100_000.0]),
    ])
}
