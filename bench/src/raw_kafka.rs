//! The Kafka ceilings tally is measured against, with tally's own client settings
//! (`tally_common::kafka`), so the only difference to tally is tally itself:
//!
//! - [`produce_ceiling`]: one idempotent `acks=all` producer (the flusher's config:
//!   linger, batch size, lz4) sending small records as fast as librdkafka takes
//!   them, for a fixed time, to an RF 3 / min ISR 2 topic. Only records whose
//!   delivery was confirmed count.
//! - [`transactional_ceiling`]: a read-committed consumer and a transactional
//!   producer copying those records to a second topic, one transaction per batch
//!   of the counter's configured shape (`counter.batch_max_records` records or
//!   `counter.batch_max_ms`), offsets sent to the
//!   transaction — the counter's loop without Redis.
//!
//! Both run on blocking threads: they are the only thing the process does then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use tally_common::kafka::{
    idempotent_producer_config, read_committed_consumer_config, transactional_producer_config,
};
use tally_common::settings::KafkaSettings;

use crate::results::Throughput;
use crate::BenchError;

/// Delivery reports, counted.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Deliveries {
    /// Records confirmed, or an error if any of the `sent` was not delivered.
    fn confirmed(&self, sent: u64) -> Result<u64, BenchError> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(BenchError::Check(format!(
                "{failed} of {sent} records were not delivered (first: {first})"
            )));
        }
        Ok(self.ok.load(Ordering::Relaxed))
    }
}

struct CountingContext(Arc<Deliveries>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.0.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// A record value of `bytes` bytes (printable, like a line of text).
fn value(bytes: usize, n: u64) -> Vec<u8> {
    let mut v = format!("bench record {n:>12} ").into_bytes();
    v.resize(bytes, b'.');
    v
}

/// Keys like tally's: one per client, 1,000 clients.
fn key(n: u64) -> String {
    format!("bench-client-{}", n % 1000)
}

/// Enqueues `record`, waiting while librdkafka's queue is full (that is the
/// ceiling pushing back, not an error).
fn send<C: ProducerContext<DeliveryOpaque = ()> + 'static>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Sends `bytes`-byte records to `topic` for `seconds`, then waits for every
/// delivery report. Rate = confirmed records / time until the last confirmation.
pub async fn produce_ceiling(
    kafka: &KafkaSettings,
    topic: &str,
    bytes: usize,
    seconds: f64,
) -> Result<Throughput, BenchError> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || produce_blocking(&kafka, &topic, bytes, seconds))
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?
}

fn produce_blocking(
    kafka: &KafkaSettings,
    topic: &str,
    bytes: usize,
    seconds: f64,
) -> Result<Throughput, BenchError> {
    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<CountingContext> = idempotent_producer_config(kafka)
        .create_with_context(CountingContext(deliveries.clone()))
        .map_err(|e| BenchError::kafka("create the produce-ceiling producer", e))?;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < stop {
        let payload = value(bytes, n);
        let k = key(n);
        send(
            &producer,
            BaseRecord::to(topic)
                .key(k.as_bytes())
                .payload(&payload[..]),
        )
        .map_err(|e| BenchError::kafka("produce", e))?;
        n += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .map_err(|e| BenchError::kafka("flush the produce ceiling", e))?;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = deliveries.confirmed(n)?;
    Ok(Throughput {
        items: ok,
        seconds: elapsed,
        per_s: ok as f64 / elapsed,
        detail: format!(
            "{bytes}-byte records, idempotent acks=all, linger {} ms, {}",
            kafka.linger_ms, kafka.compression
        ),
    })
}

/// Writes `records` (key, value) to `topic` with one idempotent `acks=all`
/// producer (the flusher's config), in order, and waits until every one is
/// confirmed; returns how many were. Blocking: call it from `spawn_blocking`.
pub fn produce_records(
    kafka: &KafkaSettings,
    topic: &str,
    records: impl Iterator<Item = (String, Vec<u8>)>,
) -> Result<u64, BenchError> {
    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<CountingContext> = idempotent_producer_config(kafka)
        .create_with_context(CountingContext(deliveries.clone()))
        .map_err(|e| BenchError::kafka("create the pre-load producer", e))?;
    let mut sent = 0u64;
    for (key, value) in records {
        send(
            &producer,
            BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(&value[..]),
        )
        .map_err(|e| BenchError::kafka("produce", e))?;
        sent += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(300)))
        .map_err(|e| BenchError::kafka("flush the pre-load", e))?;
    let ok = deliveries.confirmed(sent)?;
    if ok != sent {
        return Err(BenchError::Check(format!(
            "{ok} of {sent} pre-loaded records confirmed"
        )));
    }
    Ok(ok)
}

/// The shape of a transaction: the counter's `batch_max_records` and `batch_max_ms`.
#[derive(Debug, Clone, Copy)]
pub struct TxnBatch {
    /// Most records per transaction.
    pub records: usize,
    /// Longest a batch collects, ms.
    pub ms: u64,
}

/// Copies records from `from` to `to` in transactions of the counter's batch
/// shape for `seconds` (or until `from` is drained of `available` records).
pub async fn transactional_ceiling(
    kafka: &KafkaSettings,
    from: &str,
    to: &str,
    group: &str,
    available: u64,
    seconds: f64,
    batch: TxnBatch,
) -> Result<Throughput, BenchError> {
    let kafka = kafka.clone();
    let (from, to, group) = (from.to_owned(), to.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        transactional_blocking(&kafka, &from, &to, &group, available, seconds, batch)
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))?
}

fn transactional_blocking(
    kafka: &KafkaSettings,
    from: &str,
    to: &str,
    group: &str,
    available: u64,
    seconds: f64,
    shape: TxnBatch,
) -> Result<Throughput, BenchError> {
    let call = Duration::from_secs(30);
    let consumer: BaseConsumer = read_committed_consumer_config(kafka, group)
        .create()
        .map_err(|e| BenchError::kafka("create the pass-through consumer", e))?;
    consumer
        .subscribe(&[from])
        .map_err(|e| BenchError::kafka("subscribe", e))?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        transactional_producer_config(kafka, &format!("{group}-txn"))
            .create()
            .map_err(|e| BenchError::kafka("create the transactional producer", e))?;
    producer
        .init_transactions(call)
        .map_err(|e| BenchError::kafka("init_transactions", e))?;

    // Join the group and get the first records before the clock starts.
    let join_deadline = Instant::now() + Duration::from_secs(60);
    let mut first = None;
    while first.is_none() {
        if Instant::now() > join_deadline {
            return Err(BenchError::Check(format!(
                "the pass-through consumer got no record of {from} within 60 s"
            )));
        }
        if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
            first = Some(polled.map_err(|e| BenchError::kafka("poll", e))?.detach());
        }
    }

    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let (mut copied, mut transactions) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(shape.records);
    batch.extend(first);
    while Instant::now() < stop && copied < available {
        let batch_end = Instant::now() + Duration::from_millis(shape.ms);
        while batch.len() < shape.records {
            let now = Instant::now();
            if now >= batch_end {
                break;
            }
            match consumer.poll(batch_end - now) {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => return Err(BenchError::kafka("poll", e)),
                None => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        producer
            .begin_transaction()
            .map_err(|e| BenchError::kafka("begin_transaction", e))?;
        for m in &batch {
            let record = BaseRecord::to(to)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            send(&producer, record)
                .map_err(|e| BenchError::kafka("produce in a transaction", e))?;
        }
        let positions = consumer
            .position()
            .map_err(|e| BenchError::kafka("position", e))?;
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| BenchError::Check("the pass-through consumer left its group".into()))?;
        producer
            .send_offsets_to_transaction(&positions, &metadata, call)
            .map_err(|e| BenchError::kafka("send_offsets_to_transaction", e))?;
        producer
            .commit_transaction(call)
            .map_err(|e| BenchError::kafka("commit_transaction", e))?;
        copied += batch.len() as u64;
        transactions += 1;
        batch.clear();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Throughput {
        items: copied,
        seconds: elapsed,
        per_s: copied as f64 / elapsed,
        detail: format!(
            "{transactions} transactions of ≤ {} records / {} ms, offsets in the transaction",
            shape.records, shape.ms
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_asked_size_and_differ() {
        assert_eq!(value(60, 7).len(), 60);
        assert_ne!(value(60, 7), value(60, 8));
        // A record number wider than the size still gives `bytes` bytes.
        assert_eq!(value(10, u64::MAX).len(), 10);
    }
}
