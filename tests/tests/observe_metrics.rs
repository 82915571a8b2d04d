//! `/metrics`, `/health` and `/ready` of the three services, running as processes
//! on the live stack: a pipeline ingests and counts messages sent over TCP, then
//! each service's Prometheus page must show exactly what happened (ACKed, flushed,
//! applied per service), with the `service` label, histograms as buckets, and
//! `/ready` answering 200. A service that cannot reach its cluster must answer
//! `/health` 200 but `/ready` 503 naming what is missing: readiness is evidence,
//! not a constant.

use std::time::{Duration, Instant};

use tally_client::session::send_all;
use tally_common::ClientId;
use tally_tests::pipeline::{isolated, service_env, start_aggregator, start_counter};
use tally_tests::{free_port, http_get, messages, metric_sample, wait_listening, ServiceProcess};

const CLIENTS: usize = 2;
const LINES: usize = 200;

/// Scrapes `addr` until `done(page)` or `timeout`; returns the last page.
async fn scrape_until(addr: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let page = match http_get(addr, "/metrics").await {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("{addr}/metrics answered {status}: {body}"),
            Err(e) => panic!("{addr}/metrics: {e}"),
        };
        if done(&page) || Instant::now() >= deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `addr/ready` answers 200.
async fn wait_ready(addr: &str, timeout: Duration, service: &ServiceProcess) {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(addr, "/ready").await {
            Ok((200, _)) => return,
            other if Instant::now() >= deadline => panic!(
                "{addr}/ready not 200 after {timeout:?}: {other:?}\n{}",
                service.log_tail()
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_of_a_running_pipeline() {
    let settings = isolated("it-observe", 3).await;
    let prefix = settings.redis.prefix.clone();
    let ingest = format!("127.0.0.1:{}", free_port());
    let [p_obs, c_obs, a_obs, bad_obs] = [0; 4].map(|_| format!("127.0.0.1:{}", free_port()));

    // A service that cannot be ready: no broker answers at its address, so it
    // never gets metadata or partitions. (A missing topic no longer gets this far:
    // the service stops at start, see tests/missing_topics.rs; an unreachable
    // cluster is not a reason to stop, the service waits for it.)
    let mut missing = settings.clone();
    missing.kafka.brokers = format!("127.0.0.1:{}", free_port());
    missing.aggregator.group_id = format!("{}-unready", settings.aggregator.group_id);
    let unready = start_aggregator(
        &missing,
        &[("TALLY__AGGREGATOR__OBSERVE_LISTEN", bad_obs.clone())],
    );

    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", ingest.clone()));
    env.push(("TALLY__PRODUCER__OBSERVE_LISTEN", p_obs.clone()));
    let producer = ServiceProcess::start("tally-producer", &env);
    let counter = start_counter(
        &settings,
        "observe",
        &[("TALLY__COUNTER__OBSERVE_LISTEN", c_obs.clone())],
    );
    let aggregator = start_aggregator(
        &settings,
        &[("TALLY__AGGREGATOR__OBSERVE_LISTEN", a_obs.clone())],
    );
    let services = [
        ("producer", &p_obs, &producer),
        ("counter", &c_obs, &counter),
        ("aggregator", &a_obs, &aggregator),
    ];
    for (_, addr, process) in &services {
        wait_listening(addr, Duration::from_secs(30)).await;
        wait_ready(addr, Duration::from_secs(60), process).await;
    }
    wait_listening(&ingest, Duration::from_secs(30)).await;

    let ids: Vec<String> = (0..CLIENTS).map(|c| format!("{prefix}-c{c}")).collect();
    let sessions: Vec<_> = ids
        .iter()
        .map(|id| {
            let (addr, client, lines) = (
                ingest.clone(),
                ClientId::parse(id).expect("client id"),
                messages(id, LINES),
            );
            tokio::spawn(async move {
                send_all(
                    &[addr],
                    &client,
                    &lines,
                    Instant::now() + Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    for s in sessions {
        let report = s.await.expect("session task").expect("session");
        assert_eq!(report.acked, LINES as u64);
    }
    let total = (CLIENTS * LINES) as f64;

    // Every line is distinct, so each is ACKed, flushed, applied by the counter and
    // applied by the aggregator exactly once. Counters only grow: wait for the
    // expected values, then require them exactly (an over-count fails).
    let wait = Duration::from_secs(90);
    let producer_page = scrape_until(&p_obs, wait, |page| {
        metric_sample(page, "tally_producer_messages_flushed_total", &[]) >= Some(total)
    })
    .await;
    let counter_page = scrape_until(&c_obs, wait, |page| {
        metric_sample(
            page,
            "tally_counter_records_total",
            &[("outcome", "applied")],
        ) >= Some(total)
            && metric_sample(page, "tally_consumer_lag_records", &[]).is_some()
    })
    .await;
    let aggregator_page = scrape_until(&a_obs, wait, |page| {
        metric_sample(
            page,
            "tally_aggregator_records_total",
            &[("outcome", "applied")],
        ) >= Some(total)
    })
    .await;
    let logs = || {
        services
            .iter()
            .map(|(name, _, p)| format!("--- {name}\n{}", p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let p = |name, labels: &[(&str, &str)]| metric_sample(&producer_page, name, labels);
    assert_eq!(
        p(
            "tally_producer_messages_acked_total",
            &[("service", "producer")]
        ),
        Some(total),
        "{producer_page}\n{}",
        logs()
    );
    assert_eq!(p("tally_producer_messages_flushed_total", &[]), Some(total));
    assert!(p("tally_producer_flush_lag_messages", &[]).is_some());
    // Histograms render as buckets, so they can be aggregated across instances.
    let stash_calls = p("tally_producer_ack_latency_seconds_count", &[]).unwrap_or(0.0);
    assert!(stash_calls >= 1.0, "{producer_page}");
    assert_eq!(
        p(
            "tally_producer_ack_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(stash_calls)
    );
    assert_eq!(
        p("tally_producer_stash_batch_lines_sum", &[]),
        Some(total),
        "every ACKed line was in one stash call"
    );
    assert!(producer_page.contains("# HELP tally_producer_messages_acked_total "));

    let c = |name, labels: &[(&str, &str)]| metric_sample(&counter_page, name, labels);
    assert_eq!(
        c(
            "tally_counter_records_total",
            &[("service", "counter"), ("outcome", "applied")]
        ),
        Some(total),
        "{counter_page}\n{}",
        logs()
    );
    for outcome in ["duplicate", "gap", "dlq"] {
        let n = c("tally_counter_records_total", &[("outcome", outcome)]);
        assert!(n.unwrap_or(0.0) == 0.0, "{outcome}: {n:?}\n{counter_page}");
    }
    assert!(c("tally_counter_txn_commits_total", &[]).unwrap_or(0.0) >= 1.0);
    // Published from librdkafka's statistics (every 5 s) for partitions read from.
    assert!(
        c("tally_consumer_lag_records", &[]).is_some(),
        "no consumer lag\n{counter_page}"
    );
    assert_eq!(c("tally_consumer_assigned_partitions", &[]), Some(3.0));

    let a = |name, labels: &[(&str, &str)]| metric_sample(&aggregator_page, name, labels);
    assert_eq!(
        a(
            "tally_aggregator_records_total",
            &[("service", "aggregator"), ("outcome", "applied")]
        ),
        Some(total),
        "{aggregator_page}\n{}",
        logs()
    );
    assert!(a("tally_redis_round_calls_count", &[]).unwrap_or(0.0) >= 1.0);

    for (name, addr, _) in &services {
        let health = http_get(addr, "/health").await.expect("health");
        assert_eq!(health.0, 200, "{name} /health: {health:?}");
        let ready = http_get(addr, "/ready").await.expect("ready");
        assert_eq!(ready.0, 200, "{name} /ready: {ready:?}");
        let page = http_get(addr, "/metrics").await.expect("metrics").1;
        assert_eq!(
            metric_sample(&page, "tally_ready", &[("service", name)]),
            Some(1.0),
            "{name}"
        );
    }

    // Long past its start, the service without a cluster is alive but not ready,
    // and says why.
    let health = http_get(&bad_obs, "/health").await.expect("health");
    assert_eq!(health.0, 200, "{health:?}\n{}", unready.log_tail());
    // Its start-up check of the topics waits up to 10 s for the absent cluster,
    // reporting `starting` meanwhile; then its own conditions are registered, and
    // `redis` is met once its store connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (status, body) = http_get(&bad_obs, "/ready").await.expect("ready");
        let settled = body.contains("kafka") && !body.contains("redis");
        if settled || Instant::now() >= deadline {
            break (status, body);
        }
        assert_eq!(status, 503, "{body}\n{}", unready.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, 503, "{body}\n{}", unready.log_tail());
    assert!(
        body.contains("kafka") && body.contains("partitions") && !body.contains("redis"),
        "{body}"
    );
    let page = http_get(&bad_obs, "/metrics").await.expect("metrics").1;
    assert_eq!(
        metric_sample(&page, "tally_ready", &[("service", "aggregator")]),
        Some(0.0)
    );
}
