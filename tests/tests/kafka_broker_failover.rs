//! An idempotent acks=all producer, configured as tally configures it, keeps
//! sending while a broker is killed (`scripts/stack kill`): every message is
//! delivered successfully and arrives exactly once, in order per partition.
//!
//! This file holds fault tests only: cargo runs test files one after another, so
//! the broker kill cannot disturb tests in other files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tally_common::kafka::{
    ensure_topics, idempotent_producer_config, read_committed_consumer_config, TopicSpec,
};
use tally_tests::{settings, stack, unique, RestoreNode};

const MESSAGES: usize = 6_000;
const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_delivers_everything_once_across_a_broker_kill() {
    let mut s = settings();
    // Long enough to ride out leader election after a hard kill.
    s.kafka.delivery_timeout_ms = 120_000;
    let topic = unique("it.failover");
    ensure_topics(
        &s.kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: PARTITIONS,
            replication_factor: 3,
            min_insync_replicas: 2,
        }],
        Duration::from_secs(30),
    )
    .await
    .expect("create topic");

    // Kill the broker leading partition 0, so the producer must move its writes.
    let victim = stack(&["leader", &topic, "0"]).trim().to_string();
    assert!(victim.starts_with("kafka-"), "leader: {victim:?}");

    let producer: FutureProducer = idempotent_producer_config(&s.kafka)
        .create()
        .expect("producer");
    let mut in_flight = FuturesUnordered::new();
    let mut delivered = 0usize;
    let mut restore = None;
    let started = Instant::now();
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            restore = Some(RestoreNode::kill(&victim));
        }
        let payload = i.to_string();
        let key = format!("k{}", i % 97);
        let producer = producer.clone();
        let topic = topic.clone();
        in_flight.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
        });
        // Pace the stream so the kill lands in the middle of it.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while in_flight.len() > 1_000 {
            if let Some(result) = in_flight.next().await {
                result.unwrap_or_else(|e| panic!("delivery failed: {e}"));
                delivered += 1;
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        result.unwrap_or_else(|e| panic!("delivery failed: {e}"));
        delivered += 1;
    }
    assert_eq!(delivered, MESSAGES);
    eprintln!(
        "{MESSAGES} delivered in {:?} with {victim} killed",
        started.elapsed()
    );
    restore.expect("broker was killed").restore();

    // Read everything back: each message exactly once, in send order per partition.
    let consumer: BaseConsumer = read_committed_consumer_config(&s.kafka, &unique("it-failover"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut counts: BTreeMap<usize, u32> = BTreeMap::new();
    let mut last_per_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while total < MESSAGES && Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = result.expect("consume");
        let value: usize = std::str::from_utf8(m.payload().expect("payload"))
            .expect("utf8")
            .parse()
            .expect("number");
        let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
        if let Some(prev) = last_per_key.insert(key.clone(), value) {
            assert!(
                value > prev,
                "key {key}: {value} after {prev}: reordered or duplicated"
            );
        }
        *counts.entry(value).or_default() += 1;
        total += 1;
    }
    // Drain a little longer: a duplicate would arrive after the expected total.
    while let Some(result) = consumer.poll(Duration::from_secs(2)) {
        let m = result.expect("consume");
        let value: usize = std::str::from_utf8(m.payload().unwrap_or_default())
            .unwrap_or("")
            .parse()
            .unwrap_or(usize::MAX);
        *counts.entry(value).or_default() += 1;
        total += 1;
    }
    let missing: Vec<_> = (0..MESSAGES)
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    let doubled: Vec<_> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(v, n)| (*v, *n))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing messages, first: {missing:?}");
    assert!(
        doubled.is_empty(),
        "duplicated messages, first: {doubled:?}"
    );
    assert_eq!(total, MESSAGES);

    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        tally_common::kafka::admin_config(&s.kafka)
            .create()
            .expect("admin");
    let _ = admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await;
}
