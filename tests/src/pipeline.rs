//! Helpers for counter and aggregator tests: write a known `client_message`
//! stream, compute what the counts must be from it, run the services as child
//! processes, wait until both consumer groups have committed everything, and read
//! back counts, the DLQ and `message_aggregation`.
//!
//! "Done" is decided from Kafka, never from a clock: the counter group has
//! committed the end of `client_message`, and the aggregator group has committed
//! past the last data record of every `message_aggregation` partition. Only then
//! are counts compared, so an over-count that would come late cannot slip by.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tally_common::counting::CountStore;
use tally_common::records::ClientMessage;
use tally_common::redis::{connect, Replication};
use tally_common::{ClientId, Keys, MessageHash, Settings};

use crate::{unique, ServiceProcess};

/// One record to write to `client_message`, exactly as given.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Record key.
    pub key: Option<String>,
    /// Record value.
    pub value: Option<Vec<u8>>,
}

impl RawRecord {
    /// A valid record of `client` with sequence number `sn`.
    pub fn message(client: &str, sn: u64, msg: &str) -> Self {
        Self {
            key: Some(client.to_owned()),
            value: Some(
                ClientMessage {
                    client: client.to_owned(),
                    sn,
                    msg: msg.to_owned(),
                    ts: 0,
                }
                .encode(),
            ),
        }
    }

    /// A record with an arbitrary key and value (for malformed input).
    pub fn raw(key: &str, value: &[u8]) -> Self {
        Self {
            key: Some(key.to_owned()),
            value: Some(value.to_vec()),
        }
    }
}

/// Writes `records` to the `client_message` topic of `settings`, in order (one
/// client's records keep their order: same key, same partition, idempotent producer).
pub async fn produce(settings: &Settings, records: &[RawRecord]) {
    produce_to(settings, &settings.kafka.client_message_topic, records).await;
}

/// Writes `records` to `topic`, in order.
pub async fn produce_to(settings: &Settings, topic: &str, records: &[RawRecord]) {
    let producer: FutureProducer = tally_common::kafka::idempotent_producer_config(&settings.kafka)
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut record = FutureRecord::<String, Vec<u8>>::to(topic);
        if let Some(k) = &r.key {
            record = record.key(k);
        }
        if let Some(v) = &r.value {
            record = record.payload(v);
        }
        // Enqueue without waiting, so the whole stream is one pipeline of batches.
        pending.push(producer.send_result(record).expect("enqueue"));
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery future")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
    }
}

/// What the counts must be after a stream, computed by the counting rule itself:
/// per client, sn == last+1 applies, anything else does not; a message counts once
/// per applied (client, sn).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Per client: (count, last_sn).
    pub clients: BTreeMap<String, (u64, u64)>,
    /// Per message text: count.
    pub messages: BTreeMap<String, u64>,
    /// Records that are not valid `client_message`s, in stream order.
    pub invalid: usize,
}

impl Expected {
    /// Replays `records` in order through the counting rule. Records of one client
    /// are in one partition, so their order here is their order in Kafka.
    pub fn of(records: &[RawRecord]) -> Self {
        let mut e = Self::default();
        for r in records {
            let Ok(m) =
                ClientMessage::parse(r.key.as_deref().map(str::as_bytes), r.value.as_deref())
            else {
                e.invalid += 1;
                continue;
            };
            let (count, last) = e.clients.entry(m.client.clone()).or_default();
            if m.sn == *last + 1 {
                *count += 1;
                *last = m.sn;
                *e.messages.entry(m.msg.clone()).or_default() += 1;
            }
        }
        e
    }

    /// Records that will be counted, over all clients.
    pub fn total(&self) -> u64 {
        self.clients.values().map(|(count, _)| count).sum()
    }
}

/// Settings for a counter/aggregator test: `isolated_settings` plus consumer groups
/// of its own (groups are not isolated by topic).
pub async fn isolated(what: &str, partitions: i32) -> Settings {
    let mut s = crate::isolated_settings(what, partitions).await;
    // Extending tally's default group names: on the secure stack that is what
    // the services' least-privilege users may join.
    s.counter.group_id = format!("tally-counter.{}", unique(what));
    s.aggregator.group_id = format!("tally-aggregator.{}", unique(what));
    // Derived from the group at load time; set with it, as loading would have.
    s.counter.transactional_id_prefix = s.counter.group_id.clone();
    // The broker's minimum: a killed member's partitions move on sooner.
    s.kafka.session_timeout_ms = 6_000;
    s
}

/// The environment that runs a service against `settings`, plus `extra`.
pub fn service_env(
    settings: &Settings,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = ServiceProcess::env_for(settings);
    env.push((
        "TALLY__KAFKA__TRANSACTION_TIMEOUT_MS",
        settings.kafka.transaction_timeout_ms.to_string(),
    ));
    env.push((
        "TALLY__KAFKA__SESSION_TIMEOUT_MS",
        settings.kafka.session_timeout_ms.to_string(),
    ));
    env.push((
        "RUST_LOG",
        "info,tally_counter=debug,tally_aggregator=debug,librdkafka=warn".to_owned(),
    ));
    env.extend(extra.iter().cloned());
    env
}

/// Starts `tally-counter` with instance id `instance` (its transactional id is
/// `<group>-<instance>`, so instance ids need only be unique within a test).
pub fn start_counter(
    settings: &Settings,
    instance: &str,
    extra: &[(&'static str, String)],
) -> ServiceProcess {
    let mut env = service_env(settings, extra);
    env.push(("TALLY__COUNTER__INSTANCE_ID", instance.to_owned()));
    ServiceProcess::start("tally-counter", &env)
}

/// Starts `tally-aggregator`.
pub fn start_aggregator(settings: &Settings, extra: &[(&'static str, String)]) -> ServiceProcess {
    ServiceProcess::start("tally-aggregator", &service_env(settings, extra))
}

fn consumer(settings: &Settings, group: &str) -> BaseConsumer {
    tally_common::kafka::read_committed_consumer_config(&settings.kafka, group)
        .create()
        .expect("consumer")
}

fn partitions(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let metadata = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// Committed offsets of `group` on `topic` (-1 where none).
pub fn committed(settings: &Settings, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c = consumer(settings, group);
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&c, topic) {
        tpl.add_partition(topic, p);
    }
    // The group coordinator moves when a broker is killed (NotCoordinator,
    // CoordinatorLoadInProgress): retry such transient answers for a while.
    let mut attempt = 0;
    let committed = loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(15)) {
            Ok(committed) => break committed,
            Err(e) if attempt < 60 => {
                attempt += 1;
                eprintln!("committed offsets of {group}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("committed offsets of {group} on {topic}: {e}"),
        }
    };
    committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), offset)
        })
        .collect()
}

/// Whether `committed` offsets reached `ends` on every partition that has records.
pub fn caught_up(committed: &BTreeMap<i32, i64>, ends: &BTreeMap<i32, i64>) -> bool {
    ends.iter()
        .all(|(p, end)| *end == 0 || committed.get(p).is_some_and(|c| c >= end))
}

/// High watermark (end) of each partition of `topic`.
pub fn ends(settings: &Settings, topic: &str) -> BTreeMap<i32, i64> {
    watermarks(settings, topic)
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect()
}

/// Log start (low watermark) of each partition of `topic`, as its leader reports it.
pub fn log_starts(settings: &Settings, topic: &str) -> BTreeMap<i32, i64> {
    watermarks(settings, topic)
        .into_iter()
        .map(|(p, (low, _))| (p, low))
        .collect()
}

fn watermarks(settings: &Settings, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let c = consumer(settings, &unique("it-watermarks"));
    partitions(&c, topic)
        .into_iter()
        .map(|p| {
            let marks = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, marks)
        })
        .collect()
}

/// A record read back, with its headers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers (last value wins).
    pub headers: HashMap<String, String>,
}

/// Every committed record of `topic`, read to its current end, per partition in
/// offset order.
pub fn read_all(settings: &Settings, topic: &str) -> Vec<ReadRecord> {
    let ends = ends(settings, topic);
    let c = consumer(settings, &unique("it-read"));
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("offset");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    loop {
        // Done when the position of every partition reached the end seen above
        // (read_committed skips transaction markers, so positions pass them).
        let position = c.position().expect("position");
        let done = position.elements().iter().all(|e| {
            let end = ends.get(&e.partition()).copied().unwrap_or(0);
            match e.offset() {
                Offset::Offset(o) => o >= end,
                _ => end == 0,
            }
        });
        if done {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end {ends:?}; position {position:?}"
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            let mut headers = HashMap::new();
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(ReadRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
}

/// Waits until the counter group has committed the end of `client_message` and
/// then the aggregator group has committed past every record of
/// `message_aggregation`; panics with `what` and the services' logs after `timeout`.
pub fn wait_done(settings: &Settings, timeout: Duration, services: &[&ServiceProcess]) {
    let deadline = Instant::now() + timeout;
    let logs = || {
        services
            .iter()
            .map(|s| format!("--- {}\n{}", s.log.display(), s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let source = &settings.kafka.client_message_topic;
    let source_ends = ends(settings, source);
    loop {
        let done = committed(settings, &settings.counter.group_id, source);
        if caught_up(&done, &source_ends) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counter did not commit {source_ends:?} in {timeout:?}: at {done:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let aggregation = &settings.kafka.message_aggregation_topic;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in read_all(settings, aggregation) {
        last.insert(r.partition, r.offset);
    }
    loop {
        let done = committed(settings, &settings.aggregator.group_id, aggregation);
        if last
            .iter()
            .all(|(p, offset)| done.get(p).is_some_and(|c| c > offset))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "aggregator did not commit past {last:?} in {timeout:?}: at {done:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The counts in Redis for every client and message `expected` names.
pub async fn actual(settings: &Settings, expected: &Expected) -> Expected {
    let store = CountStore::new(
        connect(&settings.redis).await.expect("redis"),
        Keys::new(&settings.redis.prefix),
        Replication::from_settings(&settings.redis),
    )
    .await
    .expect("count store");
    let mut out = Expected {
        invalid: expected.invalid,
        ..Expected::default()
    };
    for client in expected.clients.keys() {
        let id = ClientId::from_record(client).expect("client id");
        out.clients.insert(
            client.clone(),
            (
                store.client_count(&id).await.expect("count"),
                store.client_last_sn(&id).await.expect("last_sn"),
            ),
        );
    }
    for text in expected.messages.keys() {
        let hash = MessageHash::of(text.as_bytes());
        out.messages.insert(
            text.clone(),
            store.message_count(&hash).await.expect("message count"),
        );
    }
    out
}

/// Asserts that Redis holds exactly `expected`, listing every difference.
pub async fn assert_counts(settings: &Settings, expected: &Expected, services: &[&ServiceProcess]) {
    let actual = actual(settings, expected).await;
    if actual == *expected {
        return;
    }
    let mut diffs = Vec::new();
    for (c, want) in &expected.clients {
        let got = actual.clients.get(c);
        if got != Some(want) {
            diffs.push(format!(
                "client {c}: (count, last_sn) {got:?}, expected {want:?}"
            ));
        }
    }
    for (m, want) in &expected.messages {
        let got = actual.messages.get(m);
        if got != Some(want) {
            diffs.push(format!("message {m:?}: {got:?}, expected {want}"));
        }
    }
    let logs: Vec<String> = services
        .iter()
        .map(|s| format!("--- {}\n{}", s.log.display(), s.log_tail()))
        .collect();
    panic!(
        "{} count(s) wrong:\n{}\n{}",
        diffs.len(),
        diffs.join("\n"),
        logs.join("\n")
    );
}

/// A stream with the shapes the counter must handle, for `clients` clients of
/// `per_client` messages each: in order, resent tails (duplicates), a gap later
/// filled by a go-back-N resend, and texts repeated within a client and across
/// clients. Every client ends complete (count = last_sn = `per_client`).
pub fn messy_stream(prefix: &str, clients: usize, per_client: u64) -> Vec<RawRecord> {
    let text = |c: usize, sn: u64| match sn % 7 {
        // Shared by all clients.
        0 => format!("{prefix} shared {}", sn % 5),
        // Repeated within a client (the same text at several sns).
        3 => format!("{prefix} client {c} again"),
        _ => format!("{prefix} client {c} line {sn}"),
    };
    let mut per: Vec<Vec<RawRecord>> = Vec::new();
    for c in 0..clients {
        let id = format!("{prefix}-c{c}");
        let rec = |sn: u64| RawRecord::message(&id, sn, &text(c, sn));
        let mut out = Vec::new();
        let mut sn = 1;
        while sn <= per_client {
            let chunk_end = (sn + 9).min(per_client);
            match (sn / 10) % 4 {
                // Plain.
                0 => (sn..=chunk_end).for_each(|s| out.push(rec(s))),
                // Then the last three again (a resend after a lost ACK).
                1 => {
                    (sn..=chunk_end).for_each(|s| out.push(rec(s)));
                    (chunk_end.saturating_sub(2).max(sn)..=chunk_end)
                        .for_each(|s| out.push(rec(s)));
                }
                // A gap: the first record is lost, the rest arrive, then
                // everything is resent from the missing one (go-back-N).
                2 => {
                    (sn + 1..=chunk_end).for_each(|s| out.push(rec(s)));
                    (sn..=chunk_end).for_each(|s| out.push(rec(s)));
                }
                // Out of order within the chunk, then resent in order.
                _ => {
                    (sn..=chunk_end).rev().for_each(|s| out.push(rec(s)));
                    (sn..=chunk_end).for_each(|s| out.push(rec(s)));
                }
            }
            sn = chunk_end + 1;
        }
        per.push(out);
    }
    // Interleave clients round-robin so batches mix them.
    let mut stream = Vec::new();
    let longest = per.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for p in &per {
            if let Some(r) = p.get(i) {
                stream.push(r.clone());
            }
        }
    }
    stream
}
