//! Crash takeover between two producer processes. Instance A is started with an
//! unreachable Kafka, so everything it ACKs stays in its stash: that makes the
//! orphaned stash certain rather than a race. A is killed (-9) in the middle of the
//! clients' streams. Clients that reconnect resume on B (HELLO moves ownership,
//! epoch+1); clients that never come back are adopted by B after A misses 3
//! heartbeats. Every sn of every client must reach Kafka, and A must leave the
//! producer registry once its clients are adopted.

use std::time::{Duration, Instant};

use tally_client::session::send_all;
use tally_common::keys::ClientId;
use tally_tests::{
    check_stream, complete, free_port, isolated_settings, messages, read_client_messages,
    wait_listening, ServiceProcess,
};

const STREAMING: usize = 4;
const ORPHANS: usize = 3;
const PER_CLIENT: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producers_clients_and_stashes_are_taken_over() {
    let settings = isolated_settings("it-takeover", 3).await;
    let (port_a, port_b) = (free_port(), free_port());
    let (addr_a, addr_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let instance_a = format!("{}-A", settings.redis.prefix);
    let mut env_a = ServiceProcess::env_for(&settings);
    env_a.extend([
        ("TALLY__PRODUCER__LISTEN", addr_a.clone()),
        ("TALLY__PRODUCER__INSTANCE_ID", instance_a.clone()),
        ("TALLY__PRODUCER__HEARTBEAT_INTERVAL_MS", "300".to_string()),
        // Nothing listens there: A can stash and ACK but never flush.
        ("TALLY__KAFKA__BROKERS", "127.0.0.1:1".to_string()),
    ]);
    let mut env_b = ServiceProcess::env_for(&settings);
    env_b.extend([
        ("TALLY__PRODUCER__LISTEN", addr_b.clone()),
        (
            "TALLY__PRODUCER__INSTANCE_ID",
            format!("{}-B", settings.redis.prefix),
        ),
        ("TALLY__PRODUCER__HEARTBEAT_INTERVAL_MS", "300".to_string()),
    ]);
    let mut a = ServiceProcess::start("tally-producer", &env_a);
    let b = ServiceProcess::start("tally-producer", &env_b);
    wait_listening(&addr_a, Duration::from_secs(30)).await;
    wait_listening(&addr_b, Duration::from_secs(30)).await;

    // Orphans: everything ACKed by A, then they never come back.
    let orphans: Vec<String> = (0..ORPHANS).map(|i| format!("orphan-{i}")).collect();
    for id in &orphans {
        let report = send_all(
            std::slice::from_ref(&addr_a),
            &ClientId::parse(id).expect("id"),
            &messages(id, PER_CLIENT),
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}\n{}", a.log_tail()));
        assert_eq!(report.acked, PER_CLIENT as u64);
    }

    // Streaming clients: A first, B after a reconnect.
    let streaming: Vec<String> = (0..STREAMING).map(|i| format!("moving-{i}")).collect();
    let mut sessions = Vec::new();
    for id in &streaming {
        let addrs = vec![addr_a.clone(), addr_b.clone()];
        let (id, msgs) = (
            ClientId::parse(id).expect("id"),
            messages(id, PER_CLIENT * 10),
        );
        sessions.push(tokio::spawn(async move {
            send_all(
                &addrs,
                &id,
                &msgs,
                Instant::now() + Duration::from_secs(120),
            )
            .await
        }));
    }
    // Kill A mid-stream, once it has stored a good part of the streams.
    let store = tally_tests::stash_store(&settings).await;
    let first = ClientId::parse(&streaming[0]).expect("id");
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.meta(&first).await.expect("meta").sn < (PER_CLIENT * 2) as u64 {
        assert!(
            Instant::now() < deadline,
            "streams do not progress:\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill9();

    for (id, session) in streaming.iter().zip(sessions) {
        let report = session
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", b.log_tail()));
        assert_eq!(report.acked, (PER_CLIENT * 10) as u64);
        assert!(report.reconnects >= 1, "{id} never moved to B: {report:?}");
        assert_eq!(
            report.stalls, 0,
            "{id}: a producer connection stopped answering: {report:?}"
        );
    }

    let expected: Vec<(String, Vec<String>)> = orphans
        .iter()
        .map(|id| (id.clone(), messages(id, PER_CLIENT)))
        .chain(
            streaming
                .iter()
                .map(|id| (id.clone(), messages(id, PER_CLIENT * 10))),
        )
        .collect();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(90),
        |s| expected.iter().all(|(id, e)| complete(s.get(id), e)),
    );
    for (id, e) in &expected {
        let stream = streams
            .get(id)
            .unwrap_or_else(|| panic!("nothing of {id} reached Kafka\n{}", b.log_tail()));
        check_stream(id, stream, e).unwrap_or_else(|err| panic!("{err}\n{}", b.log_tail()));
    }

    // A's clients were all adopted, so A left the registry.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let producers = store.producers().await.expect("registry");
        if producers.beats.iter().all(|(name, _)| name != &instance_a) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead instance still registered: {producers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(b);
}
