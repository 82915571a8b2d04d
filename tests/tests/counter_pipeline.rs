//! Counter and aggregator together on a known `client_message` stream with
//! duplicates, gaps later filled, out-of-order records, texts repeated within and
//! across clients, and malformed records: client counts, last sns and message
//! counts come out exact; the DLQ holds exactly the malformed records, each with
//! its reason and source; `message_aggregation` carries every counted sn and no
//! gap, each client's sns first appearing in sn order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tally_common::kafka::key_partition;
use tally_common::records::{
    ClientMessage, MessageAggregation, PackedWriter, COMPACT_V1, DLQ_REASON_HEADER,
    DLQ_SOURCE_OFFSET_HEADER, DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER,
};
use tally_common::{MessageHash, Settings};
use tally_tests::pipeline::{
    assert_counts, isolated, messy_stream, produce, read_all, start_aggregator, start_counter,
    wait_done, Expected, RawRecord,
};

/// (key, value, reason) of a dead-lettered record.
type DeadLetter = (Option<Vec<u8>>, Option<Vec<u8>>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messy_stream_counts_exactly_and_dead_letters_exactly_the_malformed() {
    let settings = isolated("it-pipe", 3).await;
    let prefix = settings.redis.prefix.clone();
    let mut stream = messy_stream(&prefix, 6, 120);

    // Malformed records, each with the reason the DLQ must name.
    let valid = |client: &str, sn: i64, msg: &str| {
        format!(r#"{{"client":"{client}","sn":{sn},"msg":"{msg}","ts":0}}"#).into_bytes()
    };
    let malformed: Vec<(RawRecord, &str)> = vec![
        (RawRecord::raw("junk", b"not json at all"), "malformed"),
        (
            RawRecord {
                key: Some("tombstone".into()),
                value: None,
            },
            "empty_value",
        ),
        (RawRecord::raw("zero", &valid("zero", 0, "m")), "bad_sn"),
        (RawRecord::raw("neg", &valid("neg", -3, "m")), "malformed"),
        (
            RawRecord::raw("empty", &valid("empty", 1, "")),
            "empty_message",
        ),
        (
            RawRecord::raw("a b", &valid("a b", 1, "m")),
            "bad_client_id",
        ),
        (
            RawRecord::raw("someone-else", &valid(&format!("{prefix}-c0"), 1, "m")),
            "key_mismatch",
        ),
        // Compact values: a version byte from a newer writer, and one cut short.
        (
            RawRecord::raw("newer", &[0x05, 0x01, 0x00, b'm']),
            "unsupported_version",
        ),
        (RawRecord::raw("cut", &[COMPACT_V1, 0x80]), "malformed"),
    ];
    // Every fifth valid record in the JSON encoding of older builds: a topic
    // written before and after an upgrade counts the same.
    for record in stream.iter_mut().step_by(5) {
        let key = record.key.as_deref().map(str::as_bytes);
        if let Ok(message) = ClientMessage::parse(key, record.value.as_deref()) {
            record.value = Some(message.to_json());
        }
    }
    // Spread them through the stream.
    let step = stream.len() / (malformed.len() + 1);
    for (i, (record, _)) in malformed.iter().enumerate().rev() {
        stream.insert((i + 1) * step, record.clone());
    }
    let expected = Expected::of(&stream);
    assert_eq!(expected.invalid, malformed.len());
    assert_eq!(expected.total(), 6 * 120);

    produce(&settings, &stream).await;
    // Small batches: many transactions, and gaps often straddle batch boundaries.
    let small = [
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "37".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "53".to_owned()),
    ];
    let counter = start_counter(&settings, "pipe-1", &small);
    let aggregator = start_aggregator(&settings, &small);
    wait_done(
        &settings,
        Duration::from_secs(120),
        &[&counter, &aggregator],
    );
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;

    // The DLQ: exactly the malformed records, unchanged, with reason and source.
    let dlq = read_all(&settings, &settings.kafka.dlq_topic);
    let source = read_all(&settings, &settings.kafka.client_message_topic);
    let mut want: Vec<DeadLetter> = malformed
        .iter()
        .map(|(r, reason)| {
            (
                r.key.clone().map(String::into_bytes),
                r.value.clone(),
                (*reason).to_owned(),
            )
        })
        .collect();
    let mut got: Vec<DeadLetter> = Vec::new();
    for d in &dlq {
        assert_eq!(
            d.headers.get(DLQ_SOURCE_TOPIC_HEADER),
            Some(&settings.kafka.client_message_topic)
        );
        let partition: i32 = d.headers[DLQ_SOURCE_PARTITION_HEADER]
            .parse()
            .expect("partition");
        let offset: i64 = d.headers[DLQ_SOURCE_OFFSET_HEADER].parse().expect("offset");
        let original = source
            .iter()
            .find(|s| s.partition == partition && s.offset == offset)
            .unwrap_or_else(|| panic!("DLQ source {partition}/{offset} not in the topic"));
        assert_eq!(original.key, d.key, "DLQ record is not its source record");
        // A tombstone's value arrives as an empty value in the DLQ.
        assert_eq!(
            original.value.clone().unwrap_or_default(),
            d.value.clone().unwrap_or_default()
        );
        got.push((
            d.key.clone(),
            original.value.clone(),
            d.headers[DLQ_REASON_HEADER].clone(),
        ));
    }
    want.sort();
    got.sort();
    assert_eq!(got, want, "the DLQ must hold exactly the malformed records");

    // message_aggregation: every counted (client, sn) and nothing else. One sn has
    // one text, hence one hash and one partition; within a partition, a client's
    // sn that appears for the first time must be above all its sns before it —
    // what the aggregator's high-water mark per (message, client) relies on.
    // The counter packs them, each in the partition that a record keyed by its
    // hash would go to (the Java partitioner's choice).
    let aggregation = &settings.kafka.message_aggregation_topic;
    let partitions = partitions_of(&settings, aggregation).await;
    let forwarded = read_all(&settings, aggregation);
    let mut distinct: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut order: BTreeMap<(i32, String), (BTreeSet<u64>, u64)> = BTreeMap::new();
    let sightings = forwarded.iter().flat_map(|r| {
        MessageAggregation::sightings(r.key.as_deref(), r.value.as_deref())
            .expect("valid aggregation record")
            .into_iter()
            .map(move |s| (r, s))
    });
    for (r, m) in sightings {
        assert_eq!(
            r.partition,
            key_partition(m.hash.to_string().as_bytes(), partitions),
            "{}/{}: forwarded outside its hash's partition",
            m.client,
            m.sn
        );
        distinct.entry(m.client.clone()).or_default().insert(m.sn);
        let (seen, high) = order.entry((r.partition, m.client.clone())).or_default();
        if seen.insert(m.sn) {
            assert!(
                m.sn > *high,
                "{}: sn {} first forwarded after sn {high} in partition {}",
                m.client,
                m.sn,
                r.partition
            );
            *high = m.sn;
        }
    }
    for (client, (count, _)) in &expected.clients {
        assert_eq!(
            distinct.get(client),
            Some(&(1..=*count).collect::<BTreeSet<u64>>()),
            "{client}: forwarded sns"
        );
    }

    // Graceful shutdown: both leave their group and exit 0.
    for mut service in [counter, aggregator] {
        service.signal("TERM");
        let status = service
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", service.log_tail()));
        assert!(status.success(), "{status}\n{}", service.log_tail());
        assert!(
            service.log_tail().contains("left the consumer group"),
            "{}",
            service.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_dead_letters_invalid_aggregation_records() {
    let settings = isolated("it-agg-dlq", 2).await;
    let prefix = settings.redis.prefix.clone();
    let text = format!("{prefix} fine");
    let good = MessageAggregation::from_client_message(&ClientMessage {
        client: format!("{prefix}-c"),
        sn: 1,
        msg: text.clone(),
        ts: 0,
    });
    // Written straight to message_aggregation: one good record (in the JSON
    // encoding of older builds), two whose hash is not the hash of their text
    // (compact and JSON), one that is not JSON and one of a newer encoding.
    let mut forged = good.clone();
    forged.sn = 2;
    forged.msg = format!("{prefix} forged");
    // Packed, as counters write them: a good one (two sightings of `text`, one
    // of `other`) and one whose second entry has sn 0, dead-lettered whole.
    // Like a counter's, each in the partition of its texts' hash: sightings of
    // one (message, client) in two partitions could be applied out of sn order
    // (the first version of this test wrote them where an empty key goes, and
    // the high-water mark then dropped `good`'s sn 1 behind the pack's sn 2).
    let aggregation = &settings.kafka.message_aggregation_topic;
    let partitions = partitions_of(&settings, aggregation).await;
    let partition_of = |text: &str| {
        key_partition(
            MessageHash::of(text.as_bytes()).to_string().as_bytes(),
            partitions,
        )
    };
    let other = format!("{prefix} other");
    let mut pack = PackedWriter::default();
    pack.push(&good.client, 2, &text);
    pack.push(&format!("{prefix}-d"), 1, &text);
    let mut spoiled = PackedWriter::default();
    spoiled.push(&good.client, 4, &other);
    spoiled.push(&good.client, 0, &other);
    // Keyed ones of 16 more texts, for the partitioner check at the end.
    let keyed: Vec<MessageAggregation> = (0..16)
        .map(|i| {
            MessageAggregation::from_client_message(&ClientMessage {
                client: format!("{prefix}-k"),
                sn: i + 1,
                msg: format!("{prefix} keyed {i}"),
                ts: 0,
            })
        })
        .collect();
    // (key, value, partition if not the key's, DLQ reason if dead-lettered)
    let mut records = vec![
        (good.hash.clone(), good.to_json(), None, None),
        (
            String::new(),
            pack.finish(),
            Some(partition_of(&text)),
            None,
        ),
        (
            String::new(),
            spoiled.finish(),
            Some(partition_of(&other)),
            Some("bad_sn"),
        ),
        (
            forged.hash.clone(),
            forged.encode(),
            None,
            Some("hash_mismatch"),
        ),
        (
            forged.hash.clone(),
            forged.to_json(),
            None,
            Some("hash_mismatch"),
        ),
        ("junk".to_owned(), b"{".to_vec(), None, Some("malformed")),
        (
            good.hash.clone(),
            vec![0x07, 0x01],
            None,
            Some("unsupported_version"),
        ),
    ];
    records.extend(
        keyed
            .iter()
            .map(|k| (k.hash.clone(), k.encode(), None, None)),
    );
    let producer: rdkafka::producer::FutureProducer =
        tally_common::kafka::idempotent_producer_config(&settings.kafka)
            .create()
            .expect("producer");
    for (key, value, partition, _) in &records {
        let mut record = rdkafka::producer::FutureRecord::to(aggregation)
            .key(key)
            .payload(value);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }

    let aggregator = start_aggregator(&settings, &[]);
    let expected_dlq: Vec<&str> = records.iter().filter_map(|(_, _, _, r)| *r).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let dlq = loop {
        let dlq = read_all(&settings, &settings.kafka.dlq_topic);
        if dlq.len() >= expected_dlq.len() {
            break dlq;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "DLQ has {dlq:?}\n{}",
            aggregator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut reasons: Vec<&str> = dlq
        .iter()
        .map(|d| d.headers[DLQ_REASON_HEADER].as_str())
        .collect();
    reasons.sort_unstable();
    let mut want = expected_dlq.clone();
    want.sort_unstable();
    assert_eq!(reasons, want);
    for d in &dlq {
        assert_eq!(
            d.headers.get(DLQ_SOURCE_TOPIC_HEADER),
            Some(&settings.kafka.message_aggregation_topic)
        );
    }

    // Only the good records counted; the forged one counted under no hash.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !tally_tests::pipeline::caught_up(
        &tally_tests::pipeline::committed(&settings, &settings.aggregator.group_id, aggregation),
        &tally_tests::pipeline::ends(&settings, aggregation),
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            aggregator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = Expected {
        messages: [(text, 3), (forged.msg.clone(), 0), (other, 0)]
            .into_iter()
            .chain(keyed.iter().map(|k| (k.msg.clone(), 1)))
            .collect(),
        ..Expected::default()
    };
    assert_counts(&settings, &expected, &[&aggregator]).await;

    // The keyed records went where librdkafka's partitioner put them; the
    // counter's `key_partition` must agree, or packed and keyed sightings of one
    // message would part ways.
    assert!(partitions > 1, "a one-partition topic proves nothing here");
    for r in read_all(&settings, aggregation) {
        if let Some(key) = r.key.as_deref().filter(|k| !k.is_empty()) {
            assert_eq!(
                r.partition,
                key_partition(key, partitions),
                "key {}",
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// How many partitions `topic` has (the counter packs its forwards per partition).
async fn partitions_of(settings: &Settings, topic: &str) -> i32 {
    tally_common::kafka::topic_partitions(&settings.kafka, topic, Duration::from_secs(10))
        .await
        .expect("partition count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_left_in_a_gap_is_reported_stalled_and_not_counted_past_it() {
    let settings = isolated("it-stall", 1).await;
    let client = format!("{}-stuck", settings.redis.prefix);
    // sn 3 never arrives.
    let stream: Vec<RawRecord> = [1, 2, 4, 5]
        .into_iter()
        .map(|sn| RawRecord::message(&client, sn, &format!("{client} line {sn}")))
        .collect();
    produce(&settings, &stream).await;
    let counter = start_counter(
        &settings,
        "stall",
        &[("TALLY__COUNTER__STALL_AFTER_MS", "500".to_owned())],
    );
    let aggregator = start_aggregator(&settings, &[]);
    wait_done(&settings, Duration::from_secs(60), &[&counter, &aggregator]);
    let expected = Expected::of(&stream);
    assert_eq!(expected.clients[&client], (2, 2));
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&counter.log).unwrap_or_default();
        if log.contains("client stalled") && log.contains(&client) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stall reported\n{}",
            counter.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
