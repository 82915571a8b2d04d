//! Consuming a topic in batches as a member of a consumer group.
//!
//! Invariant: a batch only ever holds records of partitions this member owns at the
//! moment the batch is handed over. Rebalance callbacks run inside the consumer's
//! poll, and batches are only collected while polling, so after every poll the
//! records of revoked (or lost) partitions are dropped from the batch: they were
//! neither applied nor committed, and the partition's next owner starts at the
//! committed offset and sees them again. Nothing is applied or committed while a
//! poll runs, so a rebalance can never split a batch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tally_common::observe::{names, Condition};
use tally_common::settings::KafkaSettings;
use tracing::{debug, warn};

use tokio_util::sync::CancellationToken;

use crate::events::{PartitionsAssigned, PartitionsRevoked};

/// How often librdkafka reports statistics (consumer lag), in milliseconds.
const STATS_INTERVAL_MS: &str = "5000";

/// One record as read, owned, with where it came from.
#[derive(Debug, Clone)]
pub struct Polled {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub payload: Option<Vec<u8>>,
}

impl Polled {
    /// The bytes its key and value take.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// When a batch is full: at `records` records or `bytes` bytes of keys and values,
/// whichever comes first. Every batch takes at least one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Most records.
    pub records: usize,
    /// Most bytes of keys and values.
    pub bytes: usize,
}

impl BatchLimit {
    /// Whether a batch of `records` records taking `bytes` bytes is full.
    pub fn reached(self, records: usize, bytes: usize) -> bool {
        records >= self.records.max(1) || (records > 0 && bytes >= self.bytes)
    }
}

/// Why consuming failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The consumer could not be created or subscribed, or failed fatally.
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    /// A blocking consumer call could not be run.
    #[error("consumer task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The consumer context: notes revocations for the batch loop, publishes the
/// consumer lag librdkafka reports, and keeps the `partitions` readiness condition
/// equal to "this member has at least one partition assigned".
pub struct GroupContext {
    service: &'static str,
    topic: String,
    revoked: Mutex<Vec<i32>>,
    assigned: Condition,
}

impl GroupContext {
    fn new(service: &'static str, topic: &str, assigned: Condition) -> Self {
        Self {
            service,
            topic: topic.to_owned(),
            revoked: Mutex::new(Vec::new()),
            assigned,
        }
    }

    /// Partitions revoked or lost since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        match self.revoked.lock() {
            Ok(mut revoked) => std::mem::take(&mut *revoked),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (id, partition) in &topic.partitions {
            // -1 is librdkafka's internal "unassigned" partition.
            if *id < 0 {
                continue;
            }
            if let Some(lag) = lag(partition) {
                metrics::gauge!(names::CONSUMER_LAG, "partition" => id.to_string()).set(lag as f64);
            }
        }
    }
}

/// Records of a partition this member has not read yet: from its read position
/// (the committed offset before it read anything) to the last stable offset
/// (read_committed sees no further). librdkafka's own `consumer_lag` counts from
/// the committed offset, which the consumer does not know when the counter
/// commits through its transactional producer; it would always be unknown there.
/// `None` when this member has no position or the end is unknown.
fn lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    let position = if p.app_offset >= 0 {
        p.app_offset
    } else {
        p.committed_offset
    };
    (end >= 0 && position >= 0).then(|| (end - position).max(0))
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                PartitionsRevoked {
                    service: self.service,
                    partitions: &partitions,
                    lost: consumer.assignment_lost(),
                }
                .emit();
                match self.revoked.lock() {
                    Ok(mut revoked) => revoked.extend(partitions),
                    Err(poisoned) => poisoned.into_inner().extend(partitions),
                }
            }
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                PartitionsAssigned {
                    service: self.service,
                    partitions: &partitions,
                }
                .emit();
            }
            Rebalance::Error(e) => warn!(service = self.service, "rebalance error: {e}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        // Incremental (cooperative) rebalances hand over deltas: ask for the whole.
        let assigned = consumer.assignment().map(|tpl| tpl.count()).unwrap_or(0);
        metrics::gauge!(names::CONSUMER_ASSIGNED_PARTITIONS).set(assigned as f64);
        self.assigned.set(assigned > 0);
    }
}

/// A group member's consumer.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Creates a read_committed member of `group` and subscribes it to `topic`;
/// `assigned` follows whether it holds any partition.
pub fn subscribe(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    service: &'static str,
    assigned: Condition,
) -> Result<Arc<GroupConsumer>, ConsumeError> {
    let mut config = tally_common::kafka::read_committed_consumer_config(kafka, group);
    config.set("statistics.interval.ms", STATS_INTERVAL_MS);
    let consumer: GroupConsumer =
        config.create_with_context(GroupContext::new(service, topic, assigned))?;
    consumer.subscribe(&[topic])?;
    Ok(Arc::new(consumer))
}

/// librdkafka's `max.poll.interval.ms` for these settings: a member that does not
/// poll for this long leaves its group. tally does not set it; `[kafka.extra]` may.
pub fn max_poll_interval(kafka: &KafkaSettings) -> Duration {
    let ms = kafka
        .extra
        .get("max.poll.interval.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    Duration::from_millis(ms)
}

/// How a [`collect`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collected {
    /// The batch is ready (full, or its time is up); it may be empty only when
    /// revocations emptied it.
    Ready,
    /// Nothing arrived within the idle wait.
    Idle,
    /// Shutdown was requested.
    Shutdown,
}

/// Polls records into `batch` (which may already hold records carried over from
/// the previous batch) until it is full (`limit`), or `max_wait` passed since the
/// first record, or — while empty — `idle_wait` passed. After every poll the
/// records collected *before* it that belong to partitions it revoked are dropped
/// from `batch` (a record the poll itself returned is kept: it comes from the
/// assignment in force after the poll), and the partitions are added to `revoked`.
#[allow(clippy::too_many_arguments)]
pub async fn collect(
    consumer: &GroupConsumer,
    batch: &mut Vec<Polled>,
    revoked: &mut Vec<i32>,
    limit: BatchLimit,
    max_wait: Duration,
    idle_wait: Duration,
    stop: &CancellationToken,
) -> Result<Collected, ConsumeError> {
    let idle_deadline = tokio::time::Instant::now() + idle_wait;
    let mut deadline = (!batch.is_empty()).then(|| tokio::time::Instant::now() + max_wait);
    let mut bytes: usize = batch.iter().map(Polled::size).sum();
    loop {
        if drop_revoked(consumer, batch, revoked) {
            bytes = batch.iter().map(Polled::size).sum();
        }
        if limit.reached(batch.len(), bytes) {
            return Ok(Collected::Ready);
        }
        let until = match deadline {
            Some(d) => d,
            None => idle_deadline,
        };
        // Biased: a record already fetched is taken before a deadline that has
        // passed, so a zero wait still takes everything fetched so far.
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(Collected::Shutdown),
            received = consumer.recv() => received.map(|m| Polled {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            }),
            () = tokio::time::sleep_until(until) => {
                drop_revoked(consumer, batch, revoked);
                return Ok(match deadline {
                    Some(_) => Collected::Ready,
                    None if batch.is_empty() => Collected::Idle,
                    None => Collected::Ready,
                });
            }
        };
        // The poll that returned just now may have run a revocation *and* a
        // re-assignment of the same partitions (a lost session rejoining): the
        // records collected before it are dropped, but the one it returned was
        // fetched from the new assignment (from the committed offset) and must be
        // kept — dropping it too would skip it, because the consumer's position
        // is already past it. So drop first, then add.
        if drop_revoked(consumer, batch, revoked) {
            bytes = batch.iter().map(Polled::size).sum();
        }
        match received {
            Ok(record) => {
                bytes += record.size();
                batch.push(record);
                if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + max_wait);
                }
            }
            Err(KafkaError::MessageConsumptionFatal(code)) => {
                return Err(KafkaError::MessageConsumptionFatal(code).into());
            }
            Err(e) => {
                // Transient (a broker restarting, a partition leader moving):
                // librdkafka recovers on its own; do not spin on the error.
                warn!("consume: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Drops the batch's records of partitions revoked since the last call; whether
/// any record was dropped.
fn drop_revoked(consumer: &GroupConsumer, batch: &mut Vec<Polled>, all: &mut Vec<i32>) -> bool {
    let revoked = consumer.context().take_revoked();
    if revoked.is_empty() {
        return false;
    }
    let before = batch.len();
    batch.retain(|r| !revoked.contains(&r.partition));
    let dropped = batch.len() < before;
    if dropped {
        debug!(
            dropped = before - batch.len(),
            ?revoked,
            "dropped records of revoked partitions"
        );
    }
    all.extend(revoked);
    dropped
}

/// Moves every assigned partition back to its committed offset (the beginning when
/// none is committed), so the records after it are consumed again. Blocking calls
/// run off the async runtime.
pub async fn rewind(consumer: &Arc<GroupConsumer>, timeout: Duration) -> Result<(), ConsumeError> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ConsumeError> {
        let committed = consumer.committed(timeout)?;
        let mut targets = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                // Nothing committed yet: where `auto.offset.reset=earliest` starts.
                _ => Offset::Beginning,
            };
            targets.add_partition_offset(e.topic(), e.partition(), offset)?;
        }
        if targets.count() > 0 {
            for e in consumer.seek_partitions(targets, timeout)?.elements() {
                if let Err(err) = e.error() {
                    // A partition revoked meanwhile cannot be sought; its next owner
                    // starts at the committed offset anyway.
                    warn!(partition = e.partition(), "rewind: seek failed: {err}");
                }
            }
        }
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_records_or_its_bytes_and_takes_at_least_one_record() {
        let limit = BatchLimit {
            records: 3,
            bytes: 100,
        };
        assert!(!limit.reached(0, 0));
        assert!(!limit.reached(2, 99));
        assert!(limit.reached(3, 0), "records");
        assert!(limit.reached(1, 100), "bytes");
        // One record larger than the whole budget is still a batch of its own.
        assert!(!limit.reached(0, 0));
        assert!(limit.reached(1, 5_000));
        let zero = BatchLimit {
            records: 0,
            bytes: 0,
        };
        assert!(!zero.reached(0, 0), "an empty batch is never full");
        assert!(zero.reached(1, 0));
        let record = Polled {
            partition: 0,
            offset: 0,
            key: Some(vec![0; 3]),
            payload: Some(vec![0; 40]),
        };
        assert_eq!(record.size(), 43);
    }
}
