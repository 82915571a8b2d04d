//! A Redis master holding some clients' stashes is killed (-9) while they stream.
//! Those clients see `ERR unavailable` (or a dropped connection) and resume with
//! HELLO from the stored last sn; the replica is promoted, and once the old master
//! is restarted it rejoins as a replica (which `min-replicas-to-write 1` needs
//! before the shard accepts writes again). Afterwards every sn 1..N of every client
//! is in Kafka, and no sn was ever re-used for a different message.

use std::time::Duration;

use tally_common::keys::ClientId;
use tally_common::Keys;
use tally_tests::chaos::redis_master_of;
use tally_tests::{
    check_stream, complete, isolated_settings, messages, read_client_messages, spawn_sessions,
    stack, InProcessProducer, RestoreNode,
};

const CLIENTS: usize = 6;
const PER_CLIENT: usize = 15_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sn_reaches_kafka_across_a_redis_master_kill() {
    tally_tests::init_logging();
    let settings = isolated_settings("it-redis-kill", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("rk-{i}")).collect();

    // The master that holds the first client's stash.
    let keys = Keys::new(&settings.redis.prefix);
    let victim = redis_master_of(
        &settings,
        &keys.client_stash(&ClientId::parse(&ids[0]).expect("id")),
    )
    .await;

    let sessions = spawn_sessions(
        std::slice::from_ref(&producer.addr),
        &ids,
        PER_CLIENT,
        Duration::from_secs(180),
    );
    // Kill while the first client is mid-stream: once its first batch is stored.
    // A fixed pause lost the race: at full speed a client can store all its
    // messages within a few hundred milliseconds, and a victim serving only
    // finished clients interrupts nobody.
    wait_until_started(
        &settings,
        &keys.client_meta(&ClientId::parse(&ids[0]).expect("id")),
    )
    .await;
    let killed = RestoreNode::kill(&victim);
    // Past cluster-node-timeout, so the replica is promoted, then bring the old one back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stack(&["start", &victim]);

    let mut interrupted = 0;
    for (id, s) in ids.iter().zip(sessions) {
        let report = s
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(report.acked, PER_CLIENT as u64);
        assert_eq!(
            report.stalls, 0,
            "{id}: a producer connection stopped answering: {report:?}"
        );
        interrupted += usize::from(report.reconnects > 0);
    }
    killed.restore();
    assert!(
        interrupted >= 1,
        "no client was interrupted by the failover of {victim}"
    );

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
    for (id, e) in ids.iter().zip(&expected) {
        let stream = streams
            .get(id)
            .unwrap_or_else(|| panic!("no records of {id}"));
        // check_stream also proves no sn carries another message's text.
        check_stream(id, stream, e).unwrap_or_else(|err| panic!("{err}"));
    }
    eprintln!(
        "{victim} killed; {interrupted} of {CLIENTS} clients resumed; all sns complete in Kafka"
    );
    producer.shutdown().await.expect("clean shutdown");
}

/// Waits (at most 30 s) until the client whose meta hash is `meta_key` has stored
/// at least one message, polling its `sn` every few milliseconds.
async fn wait_until_started(settings: &tally_common::Settings, meta_key: &str) {
    let client = redis::cluster::ClusterClient::new(settings.redis.nodes.clone())
        .unwrap_or_else(|e| panic!("redis cluster client: {e}"));
    let mut conn = client
        .get_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis connect: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sn: Option<u64> = redis::cmd("HGET")
            .arg(meta_key)
            .arg(tally_common::schema::meta::SN)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if sn.unwrap_or(0) > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{meta_key}: no message stored within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
