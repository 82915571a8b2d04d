//! A Kafka producer whose delivery reports stop is replaced, and the flush goes on.
//! The `producer.silent_kafka` sabotage hides every result of the producer's first
//! Kafka producer (its records still reach the brokers). Once sends go past the
//! delivery timeout without a result, the flusher replaces that producer and every
//! client resends from `flushed + 1`: `flushed` reaches the last sn, the
//! replacement is counted, and a counter replaying each client's records reaches
//! its last sn with every text right. Before, each client was rewound into the same
//! silent producer, and its flush never moved again.

use std::time::{Duration, Instant};

use tally_common::keys::ClientId;
use tally_tests::pipeline::service_env;
use tally_tests::{
    check_stream, complete, free_port, http_get, isolated_settings, messages, metric_sample,
    read_client_messages, spawn_sessions, stash_store, wait_listening, ServiceProcess,
};

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_whose_delivery_reports_stop_is_replaced_and_the_flush_goes_on() {
    let settings = isolated_settings("it-silent-kafka", 3).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    // Stalled after 3 s + the flusher's 5 s margin, not 35 s.
    env.push(("TALLY__KAFKA__DELIVERY_TIMEOUT_MS", "3000".to_owned()));
    env.push((
        tally_common::failpoint::ENV,
        tally_producer::SILENT_KAFKA.to_owned(),
    ));
    let producer = ServiceProcess::start("tally-producer", &env);
    wait_listening(&addr, Duration::from_secs(30)).await;

    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("silent-{i}")).collect();
    let sessions = spawn_sessions(
        std::slice::from_ref(&addr),
        &ids,
        PER_CLIENT,
        Duration::from_secs(60),
    );
    for s in sessions {
        let report = s.await.expect("session task").expect("session");
        assert_eq!(report.acked, PER_CLIENT as u64, "{}", producer.log_tail());
    }

    let store = stash_store(&settings).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let id = ClientId::parse(id).expect("id");
        loop {
            let meta = store.meta(&id).await.expect("meta");
            if meta.flushed == PER_CLIENT as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: flush stuck: {meta:?}\n{}",
                producer.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let metrics = producer.metrics_addr().expect("metrics address in the log");
    let (status, page) = http_get(&metrics, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    let replaced = metric_sample(
        &page,
        tally_common::observe::names::PRODUCER_KAFKA_RECREATIONS,
        &[],
    );
    assert!(
        replaced.is_some_and(|n| n >= 1.0),
        "replacements: {replaced:?}\n{}",
        producer.log_tail()
    );

    let expected: Vec<Vec<String>> = ids.iter().map(|id| messages(id, PER_CLIENT)).collect();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(60),
        |s| {
            ids.iter()
                .zip(&expected)
                .all(|(id, e)| complete(s.get(id), e))
        },
    );
    for (id, expected) in ids.iter().zip(&expected) {
        let stream = streams
            .get(id)
            .unwrap_or_else(|| panic!("no records of {id}"));
        check_stream(id, stream, expected).unwrap_or_else(|e| panic!("{e}"));
    }
}
