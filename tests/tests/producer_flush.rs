//! The producer's flush path: for several concurrent clients, `client_message`
//! ends up with every sn 1..N per client in order (a counter replaying it stops at
//! N), `meta.flushed == meta.sn`, and the stash is empty. A graceful shutdown
//! releases every client and leaves the producer registry.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tally_common::keys::ClientId;
use tally_common::Keys;
use tally_tests::{
    check_stream, complete, isolated_settings, messages, read_client_messages, spawn_sessions,
    stash_store, InProcessProducer,
};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sn_reaches_kafka_in_order_and_the_stash_empties() {
    let settings = isolated_settings("it-flush", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("flush-{i}")).collect();

    let started = Instant::now();
    let sessions = spawn_sessions(
        std::slice::from_ref(&producer.addr),
        &ids,
        PER_CLIENT,
        Duration::from_secs(60),
    );
    for s in sessions {
        let report = s.await.expect("session task").expect("session");
        assert_eq!(report.acked, PER_CLIENT as u64);
        assert_eq!(report.reconnects, 0, "{report:?}");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} messages ACKed in {elapsed:?} ({:.0} msg/s, debug build)",
        CLIENTS * PER_CLIENT,
        (CLIENTS * PER_CLIENT) as f64 / elapsed.as_secs_f64()
    );

    // Flushed and trimmed in Redis.
    let store = stash_store(&settings).await;
    let conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    let keys = Keys::new(&settings.redis.prefix);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let id = ClientId::parse(id).expect("id");
        loop {
            let meta = store.meta(&id).await.expect("meta");
            if meta.flushed == PER_CLIENT as u64 {
                assert_eq!(meta.sn, PER_CLIENT as u64);
                break;
            }
            assert!(Instant::now() < deadline, "{id}: not flushed: {meta:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stash_len: u64 = conn
            .clone()
            .xlen(keys.client_stash(&id))
            .await
            .expect("XLEN");
        assert_eq!(stash_len, 0, "{id}: stash not trimmed");
    }

    eprintln!(
        "flushed and trimmed {:?} after the last ACK",
        started.elapsed() - elapsed
    );

    // Every sn in Kafka, in order, with its text.
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
    eprintln!(
        "read back from Kafka {:?} after the last ACK",
        started.elapsed() - elapsed
    );
    for (id, expected) in ids.iter().zip(&expected) {
        let stream = streams
            .get(id)
            .unwrap_or_else(|| panic!("no records of {id}"));
        let check = check_stream(id, stream, expected).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            check.duplicates + check.gaps,
            0,
            "{id}: no fault, so no resends expected: {check:?}"
        );
    }

    // Graceful shutdown: clients released, instance gone from the registry.
    producer.shutdown().await.expect("clean shutdown");
    for id in &ids {
        let meta = store
            .meta(&ClientId::parse(id).expect("id"))
            .await
            .expect("meta");
        assert_eq!(meta.owner, "", "{id} still owned after shutdown: {meta:?}");
    }
    assert!(
        store.producers().await.expect("registry").beats.is_empty(),
        "instance still registered"
    );
}
