//! The counter and aggregator while the stack fails under them: the Redis master of
//! a client's keys is killed (-9) mid-stream, and the broker that is the counter's
//! transaction coordinator is killed (-9) mid-stream. Redis errors back off and
//! retry, Kafka errors abort or recreate and rewind; nothing is committed that was
//! not applied and replicated. Counts come out exact.
//!
//! The two tests take turns: each takes a node of the shared stack away.

use std::time::{Duration, Instant};

use tally_common::{ClientId, Keys};
use tally_tests::chaos::redis_master_of;
use tally_tests::pipeline::{
    assert_counts, committed, isolated, messy_stream, produce, start_aggregator, start_counter,
    wait_done, Expected,
};
use tally_tests::{stack, RestoreNode, ServiceProcess};

static ONE_FAULT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the counter group committed something on `partitions` partitions.
async fn wait_progress(settings: &tally_common::Settings, partitions: usize, log: &ServiceProcess) {
    let source = &settings.kafka.client_message_topic;
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(settings, &settings.counter.group_id, source)
        .values()
        .filter(|o| **o > 0)
        .count()
        < partitions
    {
        assert!(Instant::now() < deadline, "no progress\n{}", log.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_master_killed_mid_stream() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let settings = isolated("it-ctr-redis-kill", 3).await;
    let stream = messy_stream(&settings.redis.prefix, 9, 150);
    let expected = Expected::of(&stream);
    let (first, rest) = stream.split_at(stream.len() / 3);

    // The master serving the first client's count.
    let client = ClientId::parse(&format!("{}-c0", settings.redis.prefix)).expect("id");
    let key = Keys::new(&settings.redis.prefix).client_count(&client);
    let victim = redis_master_of(&settings, &key).await;

    produce(&settings, first).await;
    let small = [
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "50".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "50".to_owned()),
    ];
    let counter = start_counter(&settings, "redis-kill", &small);
    let aggregator = start_aggregator(&settings, &small);
    wait_progress(&settings, 1, &counter).await;

    let killed = RestoreNode::kill(&victim);
    produce(&settings, rest).await;
    // Past cluster-node-timeout: the replica is promoted. Then the old master comes
    // back as a replica (the shard needs one for min-replicas-to-write).
    tokio::time::sleep(Duration::from_secs(6)).await;
    killed.restore();

    wait_done(
        &settings,
        Duration::from_secs(150),
        &[&counter, &aggregator],
    );
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_coordinator_killed_mid_stream() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let settings = isolated("it-ctr-coord-kill", 3).await;
    let stream = messy_stream(&settings.redis.prefix, 9, 150);
    let expected = Expected::of(&stream);
    let (first, rest) = stream.split_at(stream.len() / 3);

    produce(&settings, first).await;
    let small = [
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "50".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "50".to_owned()),
    ];
    let instance = "coord-kill";
    let counter = start_counter(&settings, instance, &small);
    let aggregator = start_aggregator(&settings, &small);
    wait_progress(&settings, 1, &counter).await;

    let transactional_id =
        tally_counter::transactional_id(&settings.counter.transactional_id_prefix, instance);
    let victim = stack(&["coordinator", "txn", &transactional_id])
        .trim()
        .to_owned();
    assert!(victim.starts_with("kafka-"), "coordinator: {victim:?}");
    let killed = RestoreNode::kill(&victim);
    produce(&settings, rest).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    killed.restore();

    wait_done(
        &settings,
        Duration::from_secs(150),
        &[&counter, &aggregator],
    );
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
    let log = std::fs::read_to_string(&counter.log).unwrap_or_default();
    eprintln!(
        "counter saw {} failed batch(es) while the coordinator was down",
        log.matches("batch not committed").count()
    );
}
