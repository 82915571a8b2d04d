//! `tally-aggregator`: counts every message text exactly once per (message, client,
//! sn), over all clients, from `message_aggregation`.
//!
//! Per batch (invariants 4 and 5 of `docs/architecture.md`):
//! 1. Collect up to `aggregator.batch_max_records` records or
//!    `aggregator.batch_max_ms` (read_committed: aborted counter transactions are
//!    never seen).
//! 2. Parse each; invalid records are written to the DLQ by an idempotent producer,
//!    and their delivery is confirmed before the offsets are committed, so a poison
//!    record is skipped exactly when it is safely dead-lettered.
//! 3. One Lua call per message hash counts the (client, sn) sightings above that
//!    (message, client)'s high-water mark, stores the text once, and `WAIT`s for a
//!    replica. Redis errors back off and retry.
//! 4. Commit the offsets synchronously, only after every call of the batch was
//!    confirmed.
//!
//! The Redis writes are idempotent (high-water marks, never expiring), so a replay
//! of any uncommitted part — after a crash, a failed commit, or a rebalance — counts
//! nothing twice; that is why plain offset commits suffice here. On revocation,
//! records collected for the revoked partitions are dropped uncommitted (a replay
//! is harmless); nothing is applied while the consumer is polled, so a rebalance
//! never splits a batch. A failed commit rewinds to the committed offsets.
//!
//! The aggregator's DLQ is at-least-once: a process that dies between a
//! dead-letter write and the offset commit writes that record again on replay
//! (the counter's DLQ, written inside its transaction, is exactly-once).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tally_common::counting::CountStore;
use tally_common::failpoint;
use tally_common::observe::{self, Readiness};
use tally_common::records::MessageAggregation;
use tally_common::redis::{connect, Replication};
use tally_common::{Keys, MessageHash, Settings};
use tally_counter::consume::{self, Collected, GroupConsumer, Polled, Shutdown};
use tally_counter::plan::dead_letter;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long an idle consumer waits for records before looping.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// First and longest pause between retries.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why the aggregator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// Redis Cluster could not be reached at start-up.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis write path could not be set up.
    #[error("redis: {0}")]
    RedisOp(#[from] tally_common::redis::RedisOpError),
    /// The consumer failed for good, or the DLQ producer could not be created.
    #[error(transparent)]
    Consume(#[from] consume::ConsumeError),
    /// The DLQ producer could not be created.
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
}

/// Runs the aggregator until `shutdown` completes, then finishes (or abandons, if
/// it was not applied yet) the batch in hand and leaves the consumer group.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AggregatorError> {
    run_with_readiness(settings, shutdown, Readiness::default()).await
}

/// [`run`], reporting readiness: `redis` (a master answers `PING`), `kafka` (the
/// source topic's metadata is fetched) and `partitions` (at least one assigned).
pub async fn run_with_readiness(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
) -> Result<(), AggregatorError> {
    let (redis_ready, kafka_ready, partitions_ready) = (
        readiness.condition("redis"),
        readiness.condition("kafka"),
        readiness.condition("partitions"),
    );
    let conn = connect(&settings.redis).await?;
    let _redis_probe = observe::redis_probe(conn.clone(), redis_ready);
    let store = CountStore::new(
        conn,
        Keys::new(&settings.redis.prefix),
        Replication::from_settings(&settings.redis),
    )
    .await?;
    let dlq: FutureProducer =
        tally_common::kafka::idempotent_producer_config(&settings.kafka).create()?;
    let topic = settings.kafka.message_aggregation_topic.clone();
    let consumer = consume::subscribe(
        &settings.kafka,
        &settings.aggregator.group_id,
        &topic,
        "aggregator",
        partitions_ready,
    )?;
    let _kafka_probe =
        observe::kafka_probe(consumer.clone(), |c| c.client(), topic.clone(), kafka_ready);
    info!(group = %settings.aggregator.group_id, topic = %topic, "tally-aggregator started");
    let mut aggregator = Aggregator {
        settings,
        consumer,
        dlq,
        store,
        topic,
    };
    let mut shutdown = Shutdown::new(shutdown);
    let result = aggregator.run(&mut shutdown).await;
    aggregator.close().await;
    result
}

struct Aggregator {
    settings: Settings,
    consumer: Arc<GroupConsumer>,
    dlq: FutureProducer,
    store: CountStore,
    topic: String,
}

/// Why a batch was not committed.
enum Failed {
    /// Shutdown was requested before the batch was applied.
    Shutdown,
    /// The offset commit failed.
    Commit(KafkaError),
}

/// A message's sightings in one batch, in arrival order.
struct Sightings {
    text: String,
    pairs: Vec<(String, u64)>,
}

impl Aggregator {
    async fn run<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Shutdown<F>,
    ) -> Result<(), AggregatorError> {
        let a = &self.settings.aggregator;
        let (max_records, max_wait) = (a.batch_max_records, Duration::from_millis(a.batch_max_ms));
        loop {
            let mut batch = Vec::new();
            let mut revoked = Vec::new();
            let collected = consume::collect(
                &self.consumer,
                &mut batch,
                &mut revoked,
                max_records,
                max_wait,
                IDLE_WAIT,
                shutdown,
            )
            .await?;
            match collected {
                Collected::Shutdown => return Ok(()),
                Collected::Idle => continue,
                Collected::Ready if batch.is_empty() => continue,
                Collected::Ready => {}
            }
            let span = info_span!("batch", records = batch.len());
            let started = Instant::now();
            let outcome = self.process(batch, shutdown).instrument(span).await;
            metrics::histogram!(tally_common::observe::names::AGGREGATOR_BATCH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(()) => {}
                Err(Failed::Shutdown) => {
                    info!("shutdown while applying: the batch stays uncommitted and is replayed");
                    return Ok(());
                }
                Err(Failed::Commit(e)) => {
                    // Typically a rebalance in progress: the partitions' next owner
                    // replays the batch, which counts nothing twice.
                    warn!("offset commit failed ({e}); rewinding to the committed offsets");
                    metrics::counter!(tally_common::observe::names::AGGREGATOR_COMMIT_ERRORS)
                        .increment(1);
                    self.rewind(shutdown).await;
                }
            }
            if shutdown.requested() {
                info!("shutdown: last batch finished");
                return Ok(());
            }
        }
    }

    async fn process<F: Future<Output = ()>>(
        &mut self,
        records: Vec<Polled>,
        shutdown: &mut Shutdown<F>,
    ) -> Result<(), Failed> {
        let mut offsets: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
        let mut by_hash: HashMap<MessageHash, Sightings> = HashMap::new();
        let mut invalid = Vec::new();
        let total = records.len() as u64;
        for r in records {
            let next = offsets.entry(r.partition).or_insert(r.offset + 1);
            *next = (*next).max(r.offset + 1);
            let parsed = MessageAggregation::parse(r.key.as_deref(), r.payload.as_deref())
                .and_then(|m| Ok((m.hash.parse::<MessageHash>()?, m)));
            match parsed {
                Ok((hash, m)) => {
                    by_hash
                        .entry(hash)
                        .or_insert_with(|| Sightings {
                            text: m.msg,
                            pairs: Vec::new(),
                        })
                        .pairs
                        .push((m.client, m.sn));
                }
                Err(e) => {
                    debug!(
                        partition = r.partition,
                        offset = r.offset,
                        "invalid record: {e}"
                    );
                    invalid.push(dead_letter(
                        &self.topic,
                        &self.settings.kafka.dlq_topic,
                        r,
                        &e,
                    ));
                }
            }
        }
        let dead_lettered = invalid.len() as u64;
        let messages = by_hash.len();

        let apply_started = Instant::now();
        let counted = tokio::select! {
            counted = async {
                // Dead-letter first: the batch's offsets are committed only after
                // these records are safely in the DLQ.
                self.dead_letter(invalid).await;
                self.apply(by_hash).await
            } => counted,
            () = shutdown.wait() => return Err(Failed::Shutdown),
        };
        failpoint::hit("aggregator.after_apply");

        let mut tpl = TopicPartitionList::new();
        for (partition, next) in offsets {
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(Failed::Commit)?;
        }
        let apply_ms = apply_started.elapsed().as_millis() as u64;
        let commit_started = Instant::now();
        failpoint::hit("aggregator.before_commit");
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| Failed::Commit(KafkaError::ClientCreation(e.to_string())))?;
        committed.map_err(Failed::Commit)?;

        for (outcome, n) in [
            ("applied", counted),
            ("duplicate", total - dead_lettered - counted),
            ("dlq", dead_lettered),
        ] {
            metrics::counter!(tally_common::observe::names::AGGREGATOR_RECORDS, "outcome" => outcome)
                .increment(n);
        }
        debug!(
            total,
            messages,
            counted,
            dead_lettered,
            apply_ms,
            commit_ms = commit_started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Writes invalid records to the DLQ and waits until Kafka confirmed each;
    /// retries failed deliveries until they succeed.
    async fn dead_letter(&self, records: Vec<tally_counter::txn::OutRecord>) {
        for r in records {
            let mut backoff = BACKOFF_MIN;
            loop {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for (key, value) in &r.headers {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value),
                    });
                }
                let record = FutureRecord::to(&r.topic)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(headers);
                match self.dlq.send(record, Duration::from_secs(5)).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        warn!("dead-lettering failed: {e}; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    /// One count script per message hash, at most `aggregator.apply_concurrency` at
    /// once; Redis errors back off and retry. Returns how many sightings counted.
    async fn apply(&self, by_hash: HashMap<MessageHash, Sightings>) -> u64 {
        let calls = by_hash.into_iter().map(|(hash, sightings)| async move {
            let pairs: Vec<(&str, u64)> = sightings
                .pairs
                .iter()
                .map(|(client, sn)| (client.as_str(), *sn))
                .collect();
            let mut backoff = BACKOFF_MIN;
            loop {
                match self
                    .store
                    .apply_message(&hash, &sightings.text, &pairs)
                    .await
                {
                    Ok(counted) => return counted,
                    Err(e) => {
                        metrics::counter!(tally_common::observe::names::AGGREGATOR_REDIS_ERRORS)
                            .increment(1);
                        warn!(hash = %hash, "count script failed: {e}; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        });
        stream::iter(calls)
            .buffer_unordered(self.settings.aggregator.apply_concurrency)
            .fold(0u64, |sum, n| async move { sum + n })
            .await
    }

    async fn rewind<F: Future<Output = ()>>(&mut self, shutdown: &mut Shutdown<F>) {
        let timeout = Duration::from_millis(self.settings.kafka.session_timeout_ms);
        let mut backoff = BACKOFF_MIN;
        while let Err(e) = consume::rewind(&self.consumer, timeout).await {
            warn!("rewind failed: {e}; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Leaves the group (the consumer's close blocks, so off the runtime).
    async fn close(self) {
        let Aggregator { consumer, dlq, .. } = self;
        consumer.unsubscribe();
        let _ = tokio::task::spawn_blocking(move || {
            drop(consumer);
            drop(dlq);
        })
        .await;
        info!("left the consumer group; stopped");
    }
}
