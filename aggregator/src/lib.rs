//! `tally-aggregator`: counts every message text exactly once per (message, client,
//! sn), over all clients, from `message_aggregation`.
//!
//! Per batch (invariants 4 and 5 of `docs/architecture.md`):
//! 1. Collect up to `aggregator.batch_max_records` records or
//!    `aggregator.batch_max_bytes` (packed records hold many sightings) or
//!    `aggregator.batch_max_ms` (read_committed: aborted counter transactions are
//!    never seen).
//! 2. Parse each into its sightings (a packed record of the counter holds many, all
//!    of this partition's messages); invalid records are written to the DLQ by an
//!    idempotent producer,
//!    and their delivery is confirmed before the offsets are committed, so a poison
//!    record is skipped exactly when it is safely dead-lettered.
//! 3. One Lua call per bucket of message hashes (the batch's messages whose hashes
//!    share their first digits, and so one slot) counts each message's (client,
//!    sn) sightings above that (message, client)'s high-water mark, stores the text
//!    once, and `WAIT`s for a replica. Redis errors back off and retry.
//! 4. Commit the offsets synchronously, only after every call of the batch was
//!    confirmed.
//!
//! The Redis writes are idempotent (high-water marks, never expiring), so a replay
//! of any uncommitted part — after a crash, a failed commit, or a rebalance — counts
//! nothing twice; that is why plain offset commits suffice here
//! (`Sink::Plain` of the consume engine, `tally_consume`, which also owns batching,
//! rebalances and rewinds; this crate is the [`Processor`]).
//!
//! The aggregator's DLQ is at-least-once: a process that dies between a
//! dead-letter write and the offset commit writes that record again on replay
//! (the counter's DLQ, written inside its transaction, is exactly-once).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use rdkafka::error::KafkaError;
use tally_common::backoff::Backoff;
use tally_common::counting::{CountStore, MessageSightings};
use tally_common::observe::{names, Readiness};
use tally_common::records::MessageAggregation;
use tally_common::{MessageHash, Settings};
use tally_consume::{
    dead_letter, BatchReport, ConsumeError, Engine, EngineConfig, EngineMetrics, Membership,
    OutRecord, Part, Polled, Processed, Processor, ServiceReadiness, Sink, Unsure, BACKOFF_MAX,
    BACKOFF_MIN,
};
use tracing::{debug, info, warn};

/// Why the aggregator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// Redis Cluster could not be reached, or the write path set up, at start-up.
    #[error("redis: {0}")]
    RedisOp(#[from] tally_common::redis::RedisOpError),
    /// The consumer failed for good.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
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
    let ready = ServiceReadiness::register(&readiness);
    let (store, _redis_probe) = CountStore::connect(&settings.redis, ready.redis.clone()).await?;
    let topic = settings.kafka.message_aggregation_topic.clone();
    let a = &settings.aggregator;
    let config = EngineConfig {
        service: "aggregator",
        group: a.group_id.clone(),
        topic: topic.clone(),
        max_records: a.batch_max_records,
        max_bytes: a.batch_max_bytes,
        max_wait: Duration::from_millis(a.batch_max_ms),
        rewind_timeout: Duration::from_millis(settings.kafka.session_timeout_ms),
        metrics: EngineMetrics {
            batch_seconds: names::AGGREGATOR_BATCH_SECONDS,
            commits: names::AGGREGATOR_COMMITS,
            commit_failures: names::AGGREGATOR_COMMIT_ERRORS,
            rewinds: names::AGGREGATOR_REWINDS,
            rejoins: names::AGGREGATOR_REJOINS,
        },
    };
    let engine = Engine::start(
        &settings.kafka,
        config,
        Sink::plain(&settings.kafka)?,
        &ready,
    )?;
    info!(group = %settings.aggregator.group_id, topic = %topic, "tally-aggregator started");
    let mut aggregator = Aggregator {
        dlq: settings.kafka.dlq_topic.clone(),
        apply_concurrency: settings.aggregator.apply_concurrency,
        store,
        topic,
    };
    engine.run(&mut aggregator, shutdown).await?;
    Ok(())
}

/// The aggregator's part of the batch loop.
struct Aggregator {
    store: CountStore,
    /// The source topic.
    topic: String,
    /// The dead-letter topic.
    dlq: String,
    apply_concurrency: usize,
}

/// A message's sightings in one batch, in arrival order.
struct Sightings {
    text: String,
    pairs: Vec<(String, u64)>,
}

/// What a committed batch reports.
struct Summary {
    /// Sightings plus dead-lettered records.
    total: u64,
    counted: u64,
    dead_lettered: u64,
    /// Count-script groups (distinct messages per part, summed over the parts).
    messages: usize,
}

impl Processor for Aggregator {
    type Summary = Summary;

    /// Parses, groups by message hash, applies one count script per message, and
    /// commits every record of the batch (invalid ones go to the DLQ with it).
    async fn process(
        &mut self,
        records: Vec<Polled>,
        _guard: Membership,
        _part: Part,
    ) -> Result<Processed<Summary>, Unsure> {
        // No guard check before the writes: they are idempotent and order-guarded
        // per (message, client), so a zombie's late write counts nothing twice.
        let Plan {
            offsets,
            by_hash,
            out,
            sightings,
        } = plan(&self.topic, &self.dlq, records);
        let dead_lettered = out.len() as u64;
        let total = sightings + dead_lettered;
        let messages = by_hash.len();
        let counted = self.apply(by_hash).await;
        Ok(Processed {
            out,
            offsets,
            carry: Vec::new(),
            summary: Summary {
                total,
                counted,
                dead_lettered,
                messages,
            },
        })
    }

    fn combine(&self, earlier: Summary, later: Summary) -> Summary {
        Summary {
            total: earlier.total + later.total,
            counted: earlier.counted + later.counted,
            dead_lettered: earlier.dead_lettered + later.dead_lettered,
            messages: earlier.messages + later.messages,
        }
    }

    fn committed(&mut self, summary: Summary, batch: &BatchReport) {
        let Summary {
            total,
            counted,
            dead_lettered,
            messages,
        } = summary;
        for (outcome, n) in [
            ("applied", counted),
            ("duplicate", total - dead_lettered - counted),
            ("dlq", dead_lettered),
        ] {
            metrics::counter!(names::AGGREGATOR_RECORDS, "outcome" => outcome).increment(n);
        }
        debug!(
            total,
            messages,
            counted,
            dead_lettered,
            apply_ms = batch.process_ms,
            commit_ms = batch.commit_ms,
            "batch committed"
        );
    }
}

/// One batch, grouped for the count scripts.
struct Plan {
    /// Per partition, the offset after its last record: every record commits.
    offsets: BTreeMap<i32, i64>,
    /// The valid records' sightings per message, in offset order per message.
    by_hash: HashMap<MessageHash, Sightings>,
    /// The invalid records' dead letters, in batch order.
    out: Vec<OutRecord>,
    /// Sightings in the valid records (a packed record holds many).
    sightings: u64,
}

/// Parses `records` (of `topic`) and groups the valid ones by message hash; an
/// invalid one becomes a dead letter to `dlq`.
fn plan(topic: &str, dlq: &str, records: Vec<Polled>) -> Plan {
    let mut plan = Plan {
        offsets: BTreeMap::new(),
        by_hash: HashMap::new(),
        out: Vec::new(),
        sightings: 0,
    };
    for r in records {
        let next = plan.offsets.entry(r.partition).or_insert(r.offset + 1);
        *next = (*next).max(r.offset + 1);
        match MessageAggregation::sightings(r.key.as_deref(), r.payload.as_deref()) {
            Ok(sightings) => {
                plan.sightings += sightings.len() as u64;
                for s in sightings {
                    plan.by_hash
                        .entry(s.hash)
                        .or_insert_with(|| Sightings {
                            text: s.msg,
                            pairs: Vec::new(),
                        })
                        .pairs
                        .push((s.client, s.sn));
                }
            }
            Err(e) => {
                debug!(
                    partition = r.partition,
                    offset = r.offset,
                    "invalid record: {e}"
                );
                plan.out.push(dead_letter(topic, dlq, r, &e));
            }
        }
    }
    plan
}

impl Aggregator {
    /// One count script per bucket of message hashes (all of the batch's messages
    /// whose hashes share their first digits, `MessageHash::bucket`), at most
    /// `aggregator.apply_concurrency` at once; the calls that failed are retried
    /// together after a backoff. Returns how many sightings counted.
    async fn apply(&self, by_hash: HashMap<MessageHash, Sightings>) -> u64 {
        // Retried in rounds, so a Redis outage logs one line per round, not one per
        // bucket; the error metric still counts every failed call.
        let mut pending: Vec<Vec<(MessageHash, Sightings)>> = by_bucket(by_hash);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut total = 0;
        loop {
            let calls = pending.into_iter().map(|bucket| async move {
                let result = {
                    let pairs: Vec<Vec<(&str, u64)>> = bucket
                        .iter()
                        .map(|(_, s)| s.pairs.iter().map(|(c, sn)| (c.as_str(), *sn)).collect())
                        .collect();
                    let messages: Vec<MessageSightings<'_>> = bucket
                        .iter()
                        .zip(&pairs)
                        .map(|((hash, s), pairs)| MessageSightings {
                            hash,
                            text: &s.text,
                            sightings: pairs,
                        })
                        .collect();
                    self.store.apply_messages(&messages).await
                };
                (bucket, result)
            });
            let results: Vec<_> = stream::iter(calls)
                .buffer_unordered(self.apply_concurrency)
                .collect()
                .await;
            let mut failed = Vec::new();
            let mut first_error = None;
            for (bucket, result) in results {
                match result {
                    Ok(counted) => total += counted,
                    Err(e) => {
                        metrics::counter!(names::AGGREGATOR_REDIS_ERRORS).increment(1);
                        first_error.get_or_insert(e);
                        failed.push(bucket);
                    }
                }
            }
            let Some(e) = first_error else {
                return total;
            };
            warn!(
                "count script failed for {} bucket(s) of messages: {e}; retrying",
                failed.len()
            );
            pending = failed;
            backoff.wait().await;
        }
    }
}

/// The batch's messages grouped by bucket: one count call each.
fn by_bucket(by_hash: HashMap<MessageHash, Sightings>) -> Vec<Vec<(MessageHash, Sightings)>> {
    let mut buckets: HashMap<u16, Vec<(MessageHash, Sightings)>> = HashMap::new();
    for (hash, sightings) in by_hash {
        buckets
            .entry(hash.bucket())
            .or_default()
            .push((hash, sightings));
    }
    buckets.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::records::{ClientMessage, DLQ_REASON_HEADER};

    fn forward(client: &str, sn: u64, msg: &str) -> MessageAggregation {
        MessageAggregation::from_client_message(&ClientMessage {
            client: client.into(),
            sn,
            msg: msg.into(),
            ts: 0,
        })
    }

    fn record(partition: i32, offset: i64, m: &MessageAggregation) -> Polled {
        Polled {
            partition,
            offset,
            key: Some(m.key().as_bytes().to_vec()),
            payload: Some(m.encode()),
        }
    }

    #[test]
    fn sightings_group_by_message_in_order_and_every_record_commits() {
        let (a1, b1, a2) = (
            forward("a", 1, "hi"),
            forward("b", 1, "hi"),
            forward("a", 2, "yo"),
        );
        let a3 = forward("a", 3, "hi");
        let records = vec![
            record(0, 10, &a1),
            record(1, 4, &b1),
            record(0, 11, &a2),
            record(0, 12, &a3),
        ];
        let p = plan("agg", "dlq", records);
        assert_eq!(p.offsets, BTreeMap::from([(0, 13), (1, 5)]));
        assert!(p.out.is_empty());
        let hi: MessageHash = a1.hash.parse().expect("hash");
        let sightings = &p.by_hash[&hi];
        assert_eq!(sightings.text, "hi");
        assert_eq!(
            sightings.pairs,
            vec![
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("a".to_owned(), 3)
            ]
        );
        assert_eq!(p.by_hash.len(), 2);
    }

    #[test]
    fn a_packed_record_counts_as_its_entries_and_mixes_with_single_ones() {
        use tally_common::records::PackedWriter;
        let mut pack = PackedWriter::default();
        pack.push("a", 1, "hi");
        pack.push("b", 1, "yo");
        pack.push("a", 2, "hi");
        let packed = Polled {
            partition: 0,
            offset: 11,
            key: Some(Vec::new()),
            payload: Some(pack.finish()),
        };
        let mut broken = PackedWriter::default();
        broken.push("a", 0, "bad sn");
        let broken = Polled {
            partition: 0,
            offset: 12,
            key: None,
            payload: Some(broken.finish()),
        };
        let p = plan(
            "agg",
            "dlq",
            vec![record(0, 10, &forward("b", 2, "hi")), packed, broken],
        );
        assert_eq!(p.offsets, BTreeMap::from([(0, 13)]));
        assert_eq!(p.sightings, 4);
        assert_eq!(p.out.len(), 1, "the packed record with a bad entry, whole");
        let hi = MessageHash::of(b"hi");
        assert_eq!(
            p.by_hash[&hi].pairs,
            vec![
                ("b".to_owned(), 2),
                ("a".to_owned(), 1),
                ("a".to_owned(), 2)
            ]
        );
        assert_eq!(
            p.by_hash[&MessageHash::of(b"yo")].pairs,
            vec![("b".to_owned(), 1)]
        );
    }

    #[test]
    fn an_invalid_record_is_dead_lettered_and_still_committed() {
        let good = forward("a", 1, "hi");
        // The value claims another text than its key, the hash of "hi": never
        // counted.
        let mut forged = forward("a", 2, "hi");
        forged.msg = "ho".into();
        let tampered = record(2, 7, &forged);
        let p = plan("agg", "dlq", vec![record(2, 6, &good), tampered]);
        assert_eq!(p.offsets, BTreeMap::from([(2, 8)]));
        assert_eq!(p.by_hash.len(), 1);
        assert_eq!(p.out.len(), 1);
        assert_eq!(p.out[0].topic, "dlq");
        let reason = p.out[0]
            .headers
            .iter()
            .find(|(k, _)| *k == DLQ_REASON_HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(reason.as_deref(), Some("hash_mismatch"));
    }
}
