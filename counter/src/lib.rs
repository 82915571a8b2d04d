//! `tally-counter`: counts every client's messages exactly once, per client, and
//! forwards the counted ones to `message_aggregation`, one Kafka transaction per
//! batch.
//!
//! Per batch (invariants 4, 5 and 7 of `docs/architecture.md`):
//! 1. Collect up to `counter.batch_max_records` records (or
//!    `counter.batch_max_bytes`) or `counter.batch_max_ms`.
//! 2. Parse each; an invalid record is dead-lettered (inside the transaction, so
//!    skipping it is atomic with the offset commit, and a poison record can never
//!    block its partition or crash the loop).
//! 3. One Lua call per client applies its records in offset order, sn-guarded, and
//!    `WAIT`s for a replica. A Redis error backs off and retries; offsets are never
//!    committed for records whose effects are not applied and replicated.
//! 4. One transaction: produce the applied and duplicate records to
//!    `message_aggregation`, packed into one record per partition (`plan`), and
//!    the invalid ones to the DLQ, send the offsets with
//!    the consumer's group metadata (EOS v2), commit. A gap record is neither
//!    counted nor forwarded; the producer's resend fills the gap. Empty
//!    transactions are never begun.
//!
//! **Canonical replays.** A count script stops before a record that would fill a
//! gap behind a gap record of the same call; offsets are committed only up to the
//! first record a script did not get to, and the records from there on are
//! processed again in the next batch (see `plan`). So Redis is never ahead of the
//! committed offset across a filled gap, and a replay after an aborted transaction
//! classifies every record as the first attempt did (applied only turns into
//! duplicate): the committed sequence of forwards in each `message_aggregation`
//! partition is the same whatever was aborted (how they are packed into records
//! may differ; what the aggregator applies does not), and each client's sns
//! reach the aggregator in sn order, which its high-water mark relies on.
//!
//! **Overlapped batches.** The engine applies a batch while the previous one
//! commits, so that commit may still abort after this batch's effects are in
//! Redis, and the replay then starts before both. A client with a gap record in
//! the previous batch is therefore not applied in this one: its records stay
//! unprocessed, its partition commits only up to the first of them and carries
//! the rest, and the batch after (by when the gap's batch committed, or its abort
//! rewound both) applies them. Without it, a fill applied while the gap's batch
//! commits turns that gap record into an applied one on the replay, forwarded
//! before the fill: the same out-of-order forward the rule above prevents. A
//! batch grows in parts while the previous one commits, and its parts commit or
//! abort together, so a gap in one part holds its client back in the later parts
//! too (`hold_back`).
//!
//! **Kafka.** Batching, rebalances, the transaction (`Sink::Transactional`:
//! exactly-once output and offsets, EOS v2), rewinds and the zombie guard are the
//! consume engine's (`tally_consume`); this crate is the [`Processor`] that says
//! what a batch means. The guard matters here: a counter that may have lost its
//! partitions must not apply a count, so [`Membership::check`] runs before every
//! count script.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use tally_common::backoff::Backoff;
use tally_common::counting::{CountStore, Outcome};
use tally_common::observe::{names, Readiness};
use tally_common::records::{ClientMessage, RecordError};
use tally_common::redis::RedisOpError;
use tally_common::service::Role;
use tally_common::{ClientId, Settings};
use tally_consume::{
    BatchReport, ConsumeError, Engine, EngineConfig, EngineMetrics, Membership, Part, Polled,
    Processed, Processor, ServiceReadiness, Sink, Transactions, TxnError, Unsure, BACKOFF_MAX,
    BACKOFF_MIN,
};
use tracing::{debug, error, info, warn};

use crate::hold_back::HoldBack;

mod gaps;
mod hold_back;
pub mod plan;

use plan::{Status, Tally, Topics};

/// Why the counter could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// Redis Cluster could not be reached, or the write path set up, at start-up.
    #[error("redis: {0}")]
    RedisOp(#[from] RedisOpError),
    /// The consumer failed for good.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// The transactional producer could not be started.
    #[error("transactional producer: {0}")]
    Txn(#[from] TxnError),
}

/// The configured instance id, or a generated one (`c-<pid>-<random>`; the
/// binary's skeleton has already written its generated one into the settings).
pub fn instance_id(settings: &Settings) -> String {
    settings
        .counter
        .instance_id
        .clone()
        .unwrap_or_else(|| Role::Counter.generate_instance_id())
}

/// The `transactional.id` of a counter instance: `<prefix>-<instance_id>`, where the
/// prefix is `counter.transactional_id_prefix` (the counter's group unless set), so
/// `tally-counter-<instance_id>` by default. Transactional ids are global to a
/// Kafka cluster; a prefix per pipeline keeps two deployments (or test runs)
/// sharing a cluster from fencing each other's producers.
pub fn transactional_id(prefix: &str, instance: &str) -> String {
    format!("{prefix}-{instance}")
}

/// Runs the counter until `shutdown` completes, then finishes (or abandons, if it
/// was not applied yet) the batch in hand and leaves the consumer group.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CounterError> {
    run_with_readiness(settings, shutdown, Readiness::default()).await
}

/// [`run`], reporting readiness: `redis` (a master answers `PING`), `kafka` (the
/// source topic's metadata is fetched) and `partitions` (at least one assigned).
pub async fn run_with_readiness(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
) -> Result<(), CounterError> {
    let ready = ServiceReadiness::register(&readiness);
    let instance = instance_id(&settings);
    if settings.counter.instance_id.is_none() {
        info!(
            instance = %instance,
            "no counter.instance_id set: generated one; a restart under a new id cannot \
             fence this run's open transaction and waits for it to time out"
        );
    }
    let (store, _redis_probe) = CountStore::connect(&settings.redis, ready.redis.clone()).await?;
    // Before joining the group: fences an earlier run with the same id, so its
    // open transaction is aborted and the committed offsets are stable.
    let txn = Transactions::start(
        &settings.kafka,
        &transactional_id(&settings.counter.transactional_id_prefix, &instance),
        names::COUNTER_PRODUCER_RECREATIONS,
    )
    .await?;
    let transactional_id = txn.id().to_owned();
    let aggregation = settings.kafka.message_aggregation_topic.clone();
    let aggregation_partitions = aggregation_partitions(&settings, &aggregation).await;
    let topics = Topics {
        source: settings.kafka.client_message_topic.clone(),
        aggregation,
        aggregation_partitions,
        dlq: settings.kafka.dlq_topic.clone(),
    };
    let c = &settings.counter;
    let config = EngineConfig {
        service: "counter",
        group: c.group_id.clone(),
        topic: topics.source.clone(),
        max_records: c.batch_max_records,
        max_bytes: c.batch_max_bytes,
        max_wait: Duration::from_millis(c.batch_max_ms),
        rewind_timeout: Duration::from_millis(settings.kafka.transaction_timeout_ms),
        metrics: EngineMetrics {
            batch_seconds: names::COUNTER_BATCH_SECONDS,
            commits: names::COUNTER_TXN_COMMITS,
            commit_failures: names::COUNTER_TXN_ABORTS,
            rewinds: names::COUNTER_REWINDS,
            rejoins: names::COUNTER_REJOINS,
        },
    };
    let engine = Engine::start(&settings.kafka, config, Sink::transactional(txn), &ready)?;
    info!(
        instance = %instance,
        transactional_id = %transactional_id,
        group = %settings.counter.group_id,
        topic = %topics.source,
        "tally-counter started"
    );
    let mut counter = Counter {
        gaps: gaps::GapTracker::new(Duration::from_millis(settings.counter.stall_after_ms)),
        apply_concurrency: settings.counter.apply_concurrency,
        hold_back: HoldBack::default(),
        store,
        topics,
    };
    engine.run(&mut counter, shutdown).await?;
    Ok(())
}

/// How many partitions `message_aggregation` has, asked until Kafka answers (the
/// transactional producer has just reached it). Read once: the packed forwards
/// are placed by it for the process's life, as a keyed producer would place them
/// until its next metadata refresh (docs/operations.md: adding partitions to
/// `message_aggregation`).
async fn aggregation_partitions(settings: &Settings, topic: &str) -> i32 {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        match tally_common::kafka::topic_partitions(&settings.kafka, topic, METADATA_TIMEOUT).await
        {
            Ok(partitions) => {
                info!(topic, partitions, "forwards are packed per partition");
                return partitions;
            }
            Err(e) => {
                warn!(topic, "cannot read the partition count yet: {e}; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The counter's part of the batch loop.
struct Counter {
    store: CountStore,
    topics: Topics,
    gaps: gaps::GapTracker,
    apply_concurrency: usize,
    /// Clients left in a gap by this batch or the one before: not applied (see
    /// [`Processor::process`] below).
    hold_back: HoldBack,
}

/// A client's record indexes in the batch and the outcomes of those processed.
type Applied = (ClientId, i32, Vec<usize>, Vec<Outcome>);

/// What a committed batch reports.
struct Summary {
    tally: Tally,
    /// Packed records written to `message_aggregation`.
    forwarded: usize,
    /// Clients applied (per part, summed over the parts).
    clients: usize,
}

impl Processor for Counter {
    type Summary = Summary;

    /// Parses, applies per client (sn-guarded, replicated), and plans the
    /// transaction.
    async fn process(
        &mut self,
        records: Vec<Polled>,
        guard: Membership,
        part: Part,
    ) -> Result<Processed<Summary>, Unsure> {
        // Parse and group by client, keeping each client's records in offset order.
        // A valid record stays Unprocessed until its client's script reports on it.
        let mut statuses: Vec<Status> = Vec::with_capacity(records.len());
        let mut messages: Vec<Option<ClientMessage>> = Vec::with_capacity(records.len());
        let mut by_client: HashMap<ClientId, (i32, Vec<(usize, u64)>)> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let parsed =
                ClientMessage::parse(r.key.as_deref(), r.payload.as_deref()).and_then(|m| {
                    match ClientId::from_record(&m.client) {
                        Ok(id) => Ok((m, id)),
                        Err(source) => Err(RecordError::BadClientId {
                            id: m.client,
                            source,
                        }),
                    }
                });
            match parsed {
                Ok((message, id)) => {
                    let sn = message.sn;
                    by_client
                        .entry(id)
                        .or_insert_with(|| (r.partition, Vec::new()))
                        .1
                        .push((i, sn));
                    messages.push(Some(message));
                    statuses.push(Status::Unprocessed);
                }
                Err(e) => {
                    debug!(
                        partition = r.partition,
                        offset = r.offset,
                        "invalid record: {e}"
                    );
                    messages.push(None);
                    statuses.push(Status::Invalid(e));
                }
            }
        }

        // A client left in a gap by the previous batch waits one batch: that batch
        // may still be committing (the engine overlaps the two), and a record here
        // could fill its gap (see "Canonical replays"). So does a client left in a
        // gap by an earlier part of this batch: the parts commit or abort
        // together, and a replay reads them as one. Its records stay Unprocessed,
        // so its partition commits only up to the first of them.
        self.hold_back.part_begins(part);
        let seen = by_client.len();
        by_client.retain(|id, _| !self.hold_back.holds(id));
        let clients = by_client.len();
        debug!(
            ?part,
            clients,
            held_back = seen - clients,
            "applying a part of a batch"
        );

        // Apply per client, concurrently; all or nothing for this batch.
        for (id, partition, indexes, outcomes) in self.apply(by_client, &guard).await? {
            self.gaps.observe(&id, partition, &outcomes);
            if outcomes.contains(&Outcome::Gap) {
                self.hold_back.gap(id.clone());
            }
            for (i, outcome) in indexes.into_iter().zip(outcomes) {
                if let Some(message) = messages[i].take() {
                    statuses[i] = Status::Counted(message, outcome);
                }
            }
        }

        let plan = plan::plan(&self.topics, records, statuses);
        Ok(Processed {
            summary: Summary {
                tally: plan.tally,
                forwarded: plan.packed_records,
                clients,
            },
            out: plan.out,
            offsets: plan.offsets,
            carry: plan.carry,
        })
    }

    fn combine(&self, earlier: Summary, later: Summary) -> Summary {
        Summary {
            tally: earlier.tally + later.tally,
            forwarded: earlier.forwarded + later.forwarded,
            clients: earlier.clients + later.clients,
        }
    }

    fn committed(&mut self, summary: Summary, batch: &BatchReport) {
        let Summary {
            tally,
            forwarded,
            clients,
        } = summary;
        for (outcome, n) in [
            ("applied", tally.applied),
            ("duplicate", tally.duplicates),
            ("gap", tally.gaps),
            ("dlq", tally.invalid),
        ] {
            metrics::counter!(names::COUNTER_RECORDS, "outcome" => outcome).increment(n);
        }
        debug!(
            records = batch.records,
            carried = batch.carried,
            forwarded,
            applied = tally.applied,
            duplicates = tally.duplicates,
            gaps = tally.gaps,
            invalid = tally.invalid,
            clients,
            apply_ms = batch.process_ms,
            txn_ms = batch.commit_ms,
            "batch committed"
        );
    }

    fn revoked(&mut self, partitions: &[i32]) {
        self.gaps.forget_partitions(partitions);
    }

    fn tick(&mut self) {
        self.gaps.report();
    }
}

impl Counter {
    /// One count script per client, at most `counter.apply_concurrency` at once;
    /// returns each client's record indexes with the outcomes of those processed.
    /// The calls that failed on Redis are retried together after a backoff; a
    /// failed guard fails the batch.
    async fn apply(
        &self,
        by_client: HashMap<ClientId, (i32, Vec<(usize, u64)>)>,
        guard: &Membership,
    ) -> Result<Vec<Applied>, Unsure> {
        // Retried in rounds, so a Redis outage logs one line per round, not one per
        // client; the error metric still counts every failed call.
        let is_bug =
            |e: &RedisOpError| matches!(e, RedisOpError::Refused { .. } | RedisOpError::Result(_));
        let mut pending: Vec<(ClientId, i32, Vec<usize>, Vec<u64>)> = by_client
            .into_iter()
            .map(|(id, (partition, records))| {
                let (indexes, sns) = records.into_iter().unzip();
                (id, partition, indexes, sns)
            })
            .collect();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut applied = Vec::new();
        loop {
            let calls = pending
                .into_iter()
                .map(|(id, partition, indexes, sns)| async move {
                    // Checked before every call: a zombie must not write to Redis.
                    guard.check()?;
                    let result = self.store.apply_client(&id, &sns).await;
                    Ok::<_, Unsure>((id, partition, indexes, sns, result))
                });
            let results: Vec<_> = stream::iter(calls)
                .buffer_unordered(self.apply_concurrency)
                .try_collect()
                .await?;
            let mut failed = Vec::new();
            let mut first_error: Option<RedisOpError> = None;
            for (id, partition, indexes, sns, result) in results {
                match result {
                    Ok(outcomes) => applied.push((id, partition, indexes, outcomes)),
                    Err(e) => {
                        metrics::counter!(names::COUNTER_REDIS_ERRORS).increment(1);
                        // A refusal or a bad reply is a bug, not an outage: it is
                        // the error shown, at error level.
                        if first_error
                            .as_ref()
                            .is_none_or(|f| !is_bug(f) && is_bug(&e))
                        {
                            first_error = Some(e);
                        }
                        failed.push((id, partition, indexes, sns));
                    }
                }
            }
            let Some(e) = first_error else {
                return Ok(applied);
            };
            let clients = failed.len();
            if is_bug(&e) {
                error!("count script failed for {clients} client(s): {e}; retrying");
            } else {
                warn!("count script failed for {clients} client(s): {e}; retrying");
            }
            pending = failed;
            backoff.wait().await;
        }
    }
}
