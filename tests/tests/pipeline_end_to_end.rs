//! The whole pipeline with the real services: `tally-producer`, `tally-counter` and
//! `tally-aggregator` as processes, clients sending over TCP with resuming
//! sessions. Per client: count == last_sn == lines sent; per message: its
//! occurrences in one client's lines × the number of clients (every client sends
//! the same lines, a few of them repeated).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_client::session::send_all;
use tally_common::ClientId;
use tally_tests::pipeline::{
    assert_counts, isolated, service_env, start_aggregator, start_counter, wait_done, Expected,
};
use tally_tests::{complete, free_port, read_client_messages, wait_listening, ServiceProcess};

const CLIENTS: usize = 4;
const LINES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_sent_over_tcp_are_counted_exactly_per_client_and_per_message() {
    let settings = isolated("it-e2e", 3).await;
    let prefix = settings.redis.prefix.clone();
    // The same lines for every client; every 10th line is one of 3 texts, so each
    // of those occurs 10 times per client.
    let lines: Vec<String> = (0..LINES)
        .map(|i| {
            if i % 10 == 0 {
                format!("{prefix} common {}", (i / 10) % 3)
            } else {
                format!("{prefix} line {i}")
            }
        })
        .collect();
    let ids: Vec<String> = (0..CLIENTS).map(|c| format!("{prefix}-c{c}")).collect();

    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    let producer = ServiceProcess::start("tally-producer", &env);
    let counter = start_counter(&settings, "e2e", &[]);
    let aggregator = start_aggregator(&settings, &[]);
    wait_listening(&addr, Duration::from_secs(30)).await;

    let sessions: Vec<_> = ids
        .iter()
        .map(|id| {
            let (addr, id, lines) = (
                addr.clone(),
                ClientId::parse(id).expect("client id"),
                lines.clone(),
            );
            tokio::spawn(async move {
                send_all(
                    &[addr],
                    &id,
                    &lines,
                    Instant::now() + Duration::from_secs(90),
                )
                .await
            })
        })
        .collect();
    for s in sessions {
        let report = s.await.expect("session task").expect("session");
        assert_eq!(report.acked, LINES as u64);
    }

    // ACKed means stashed; wait until the producer flushed every sn to Kafka, so
    // that "the counter committed the end of the topic" means the end of the input.
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(60),
        |s| ids.iter().all(|id| complete(s.get(id), &lines)),
    );
    for id in &ids {
        assert!(
            complete(streams.get(id), &lines),
            "{id}: not every sn reached Kafka\n{}",
            producer.log_tail()
        );
    }
    wait_done(
        &settings,
        Duration::from_secs(120),
        &[&producer, &counter, &aggregator],
    );

    let mut expected = Expected::default();
    for id in &ids {
        expected
            .clients
            .insert(id.clone(), (LINES as u64, LINES as u64));
    }
    let mut per_client: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        *per_client.entry(line.clone()).or_default() += 1;
    }
    expected.messages = per_client
        .into_iter()
        .map(|(text, n)| (text, n * CLIENTS as u64))
        .collect();
    assert_eq!(expected.messages[&format!("{prefix} common 0")], 40);
    assert_counts(&settings, &expected, &[&producer, &counter, &aggregator]).await;
}
