//! A service whose topics are missing stops at once, in one line naming
//! `tally admin init-topics`, unless `kafka.create_topics = true`, in which case it
//! creates them and runs. Each service checks the topics it uses. Run against a
//! fresh namespace (`TALLY__NAMESPACE`, nothing else), so this also shows a whole
//! pipeline's names following from one variable.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tally_common::kafka::missing_topics;
use tally_common::settings::namespace::DerivedNames;
use tally_common::Keys;
use tally_tests::{free_port, http_get, settings, unique, ServiceProcess};

/// Starts `binary` in namespace `ns` (3 partitions if it creates topics), plus `extra`.
fn start(binary: &str, ns: &str, extra: &[(&'static str, String)]) -> ServiceProcess {
    let mut env = vec![
        ("TALLY__NAMESPACE", ns.to_owned()),
        ("TALLY__KAFKA__PARTITIONS", "3".to_owned()),
        // Never the shared default line-protocol port.
        (
            "TALLY__PRODUCER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
    ];
    env.extend(extra.iter().cloned());
    ServiceProcess::start(binary, &env)
}

/// Waits for `process` to exit on its own; its exit status and stderr.
fn exit_of(mut process: ServiceProcess) -> (ExitStatus, String) {
    let status = process
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("still running\n{}", process.log_tail()));
    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    (status, log)
}

/// The one line the binary printed about missing topics (not the log's copy).
fn missing_line<'a>(log: &'a str, binary: &str) -> &'a str {
    let prefix = format!("{binary}: ");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("tally admin init-topics"))
        .collect();
    assert_eq!(lines.len(), 1, "one line naming init-topics:\n{log}");
    lines[0]
}

/// Which of `topics` exist.
async fn existing(topics: &[&String]) -> Vec<String> {
    let names: Vec<String> = topics.iter().map(|t| (*t).clone()).collect();
    let missing = missing_topics(&settings().kafka, &names, Duration::from_secs(10))
        .await
        .expect("cluster metadata");
    names.into_iter().filter(|n| !missing.contains(n)).collect()
}

/// Waits until `process` answers `/ready` with 200.
async fn wait_ready(process: &mut ServiceProcess, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Err(e) = process.running() {
            panic!("{e}\n{}", process.log_tail());
        }
        if let Some(addr) = process.metrics_addr() {
            if let Ok((200, _)) = http_get(&addr, "/ready").await {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not ready after {timeout:?}\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_stop_a_service_or_are_created_when_asked() {
    let ns = unique("it-topics");
    let names = DerivedNames::of(&ns);
    let (source, aggregation, dlq) = (
        &names.client_message_topic,
        &names.message_aggregation_topic,
        &names.dlq_topic,
    );
    let all = [source, aggregation, dlq];
    assert!(existing(&all).await.is_empty(), "a fresh namespace");

    // Default: the counter, which uses all three, stops at once and names them.
    let started = Instant::now();
    let (status, log) = exit_of(start("tally-counter", &ns, &[]));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let line = missing_line(&log, "tally-counter");
    for topic in all {
        assert!(line.contains(topic.as_str()), "{topic} not named: {line}");
    }
    assert!(line.contains("kafka.create_topics"), "{line}");
    assert!(existing(&all).await.is_empty(), "nothing created: {line}");

    // With create_topics, the producer creates the one topic it uses, and runs.
    let create = [("TALLY__KAFKA__CREATE_TOPICS", "true".to_owned())];
    let mut producer = start("tally-producer", &ns, &create);
    wait_ready(&mut producer, Duration::from_secs(60)).await;
    assert_eq!(existing(&all).await, vec![source.clone()]);

    // The counter now misses only the other two.
    let (status, log) = exit_of(start("tally-counter", &ns, &[]));
    assert_eq!(status.code(), Some(1), "{log}");
    let line = missing_line(&log, "tally-counter");
    assert!(
        line.contains(aggregation.as_str()) && line.contains(dlq.as_str()),
        "{line}"
    );
    assert!(!line.contains(source.as_str()), "{line}");

    // An aggregator with create_topics creates them; then the counter runs.
    let mut aggregator = start("tally-aggregator", &ns, &create);
    wait_ready(&mut aggregator, Duration::from_secs(60)).await;
    assert_eq!(existing(&all).await.len(), 3);
    let mut counter = start(
        "tally-counter",
        &ns,
        &[("TALLY__COUNTER__INSTANCE_ID", "c0".to_owned())],
    );
    wait_ready(&mut counter, Duration::from_secs(60)).await;

    // The one variable named everything else: the counter's transactional id and
    // group, and the key prefix its registry entry is under.
    let log = std::fs::read_to_string(&counter.log).unwrap_or_default();
    let txn_id = format!("{}-c0", names.counter_group);
    assert_eq!(names.counter_group, format!("{ns}-counter"));
    assert!(log.contains(&txn_id), "transactional id {txn_id}:\n{log}");
    let mut redis = tally_common::redis::connect(&settings().redis)
        .await
        .expect("redis");
    let key = Keys::new(&names.redis_prefix).instance("counter", "c0");
    assert!(key.starts_with(&format!("{ns}:")), "{key}");
    let entry: Option<String> = redis.get(&key).await.expect("GET");
    assert!(entry.is_some(), "no registry entry {key}");
    for (name, process) in [("producer", &mut producer), ("aggregator", &mut aggregator)] {
        assert!(process.running().is_ok(), "{name}\n{}", process.log_tail());
    }
}
