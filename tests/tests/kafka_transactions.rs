//! Kafka transactions on the real 3-broker cluster, with the client settings tally
//! uses: an aborted transactional write is invisible to a read_committed consumer,
//! a committed one is visible. A read_uncommitted consumer sees both, which proves
//! the aborted record was really written and only isolation hides it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tally_common::kafka::{read_committed_consumer_config, transactional_producer_config};
use tally_common::records::ClientMessage;
use tally_tests::{settings, unique};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `partition` from `start` until a record whose value contains `until`
/// arrives; returns the values of the records of `client`.
fn read_client(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    client: &str,
    until: &str,
) -> Vec<String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .expect("partition offset");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.expect("consume");
        if message.key() != Some(client.as_bytes()) {
            continue;
        }
        let record = ClientMessage::parse(message.key(), message.payload()).expect("valid record");
        let done = record.msg.contains(until);
        seen.push(record.msg);
        if done {
            return seen;
        }
    }
    panic!("{until} not read from {topic}/{partition} within {TIMEOUT:?}; saw {seen:?}");
}

#[test]
fn aborted_is_invisible_and_committed_is_visible_to_read_committed() {
    let s = settings();
    let topic = s.kafka.client_message_topic.clone();
    let client = unique("it-txn");
    let partition = 0;

    let producer: BaseProducer = transactional_producer_config(&s.kafka, &client)
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");

    let probe: BaseConsumer = read_committed_consumer_config(&s.kafka, &unique("it-txn-probe"))
        .create()
        .expect("consumer");
    let (_, start) = probe
        .fetch_watermarks(&topic, partition, TIMEOUT)
        .expect("watermarks");

    let send = |sn: u64, msg: &str| {
        let value = ClientMessage {
            client: client.clone(),
            sn,
            msg: msg.to_owned(),
            ts: 0,
        }
        .encode();
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(partition)
                    .key(&client)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
    };

    producer.begin_transaction().expect("begin");
    send(1, "aborted");
    producer.flush(TIMEOUT).expect("flush aborted");
    producer.abort_transaction(TIMEOUT).expect("abort");

    producer.begin_transaction().expect("begin");
    send(1, "committed");
    producer.commit_transaction(TIMEOUT).expect("commit");

    let committed_view = read_client(&probe, &topic, partition, start, &client, "committed");
    assert_eq!(committed_view, vec!["committed"]);

    let mut uncommitted_config = read_committed_consumer_config(&s.kafka, &unique("it-txn-raw"));
    uncommitted_config.set("isolation.level", "read_uncommitted");
    let raw: BaseConsumer = uncommitted_config.create().expect("consumer");
    let raw_view = read_client(&raw, &topic, partition, start, &client, "committed");
    assert_eq!(raw_view, vec!["aborted", "committed"]);
}
