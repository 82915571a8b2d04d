//! A Kafka broker is killed (-9) while clients stream through the producer: ingest
//! does not stop (ACKs depend only on the replicated stash), flushing continues on
//! the two remaining in-sync replicas, and after the broker returns every sn of
//! every client is in `client_message`.

use std::time::Duration;

use tally_tests::{
    check_stream, complete, isolated_settings, messages, read_client_messages, spawn_sessions,
    stack, InProcessProducer, RestoreNode,
};

const CLIENTS: usize = 6;
const PER_CLIENT: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sn_reaches_kafka_across_a_broker_kill() {
    let mut settings = isolated_settings("it-broker-kill", 3).await;
    settings.kafka.delivery_timeout_ms = 120_000;
    let producer = InProcessProducer::start(settings.clone()).await;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("bk-{i}")).collect();
    let victim = stack(&["leader", &settings.kafka.client_message_topic, "0"])
        .trim()
        .to_string();

    let sessions = spawn_sessions(
        std::slice::from_ref(&producer.addr),
        &ids,
        PER_CLIENT,
        Duration::from_secs(120),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = RestoreNode::kill(&victim);
    for s in sessions {
        let report = s.await.expect("task").expect("session");
        assert_eq!(report.acked, PER_CLIENT as u64);
        assert_eq!(
            report.stalls, 0,
            "a producer connection stopped answering: {report:?}"
        );
    }
    killed.restore();

    let expected: Vec<Vec<String>> = ids.iter().map(|id| messages(id, PER_CLIENT)).collect();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(120),
        |s| {
            ids.iter()
                .zip(&expected)
                .all(|(id, e)| complete(s.get(id), e))
        },
    );
    let mut resent = 0;
    for (id, e) in ids.iter().zip(&expected) {
        let stream = streams
            .get(id)
            .unwrap_or_else(|| panic!("no records of {id}"));
        let check = check_stream(id, stream, e).unwrap_or_else(|err| panic!("{err}"));
        resent += check.duplicates + check.gaps;
    }
    eprintln!(
        "{victim} killed mid-stream; {} messages complete in Kafka, {resent} resent records",
        CLIENTS * PER_CLIENT
    );
    producer.shutdown().await.expect("clean shutdown");
}
