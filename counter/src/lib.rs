//! `tally-counter`: counts every client's messages exactly once, per client, and
//! forwards the counted ones to `message_aggregation`, one Kafka transaction per
//! batch.
//!
//! Per batch (invariants 4, 5 and 7 of `docs/architecture.md`):
//! 1. Collect up to `counter.batch_max_records` records or `counter.batch_max_ms`.
//! 2. Parse each; an invalid record is dead-lettered (inside the transaction, so
//!    skipping it is atomic with the offset commit, and a poison record can never
//!    block its partition or crash the loop).
//! 3. One Lua call per client applies its records in offset order, sn-guarded, and
//!    `WAIT`s for a replica. A Redis error backs off and retries; offsets are never
//!    committed for records whose effects are not applied and replicated.
//! 4. One transaction: produce the applied and duplicate records to
//!    `message_aggregation` and the invalid ones to the DLQ, send the offsets with
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
//! duplicate): the committed stream of `message_aggregation` is the same whatever
//! was aborted, and each client's sns reach the aggregator in sn order, which its
//! high-water mark relies on.
//!
//! **Rebalances.** No transaction is ever open, and no applied-but-uncommitted
//! work exists, while the consumer is polled, and rebalance callbacks only run
//! inside a poll. A revocation therefore always finds the previous batch
//! committed (or aborted) and only drops records collected for the revoked
//! partitions, which were neither applied nor committed: "commit on a clean
//! revoke, abort on a lost one" holds trivially. On assignment, consumption starts
//! at the committed offsets.
//!
//! **Zombies.** Kafka fences the offset commit of a member that lost its
//! partitions (the group generation in `send_offsets_to_transaction`), but Redis
//! has no fence: a member applying a batch it polled before it was dropped could
//! write after the new owner committed past those records. So before every Redis
//! call the counter checks that it did not stand still since its view of the group
//! was last confirmed (`stall`) and that it polled within half of
//! `max.poll.interval.ms`; otherwise it drops the batch and rejoins the group. The
//! window left is between that check and the call reaching Redis (microseconds,
//! unless the process is frozen exactly there); closing it would take a fencing
//! token per client in Redis.
//!
//! **Errors.** Retriable Kafka errors retry the call; abortable ones abort the
//! transaction and rewind the consumer to the committed offsets; fatal, fenced and
//! timed-out ones recreate the transactional producer (which fences the old one)
//! and rewind (`txn`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tally_common::counting::{CountStore, Outcome};
use tally_common::failpoint;
use tally_common::observe::{self, Readiness};
use tally_common::records::{ClientMessage, RecordError};
use tally_common::redis::{connect, RedisOpError, Replication};
use tally_common::{ClientId, Keys, Settings};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

pub mod consume;
mod gaps;
pub mod plan;
pub mod stall;
pub mod txn;

use consume::{Collected, GroupConsumer, Polled, Shutdown};
use plan::{Status, Topics};
use txn::{Transactions, TxnError};

/// How long an idle consumer waits for records before doing housekeeping.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// First and longest pause between retries of a failed Redis call or rewind.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why the counter could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// Redis Cluster could not be reached at start-up.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis write path could not be set up.
    #[error("redis: {0}")]
    RedisOp(#[from] RedisOpError),
    /// The consumer failed for good.
    #[error(transparent)]
    Consume(#[from] consume::ConsumeError),
    /// The transactional producer could not be started.
    #[error("transactional producer: {0}")]
    Txn(#[from] TxnError),
}

/// The configured instance id, or a generated one (`c-<pid>-<random>`).
pub fn instance_id(settings: &Settings) -> String {
    settings.counter.instance_id.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("c-{}-{nanos:x}", std::process::id())
    })
}

/// The `transactional.id` of a counter instance: `<group_id>-<instance_id>`, which
/// is `tally-counter-<instance_id>` with the default group. Transactional ids are
/// global to a Kafka cluster; naming the group keeps two deployments (or test runs)
/// sharing a cluster from fencing each other's producers.
pub fn transactional_id(group: &str, instance: &str) -> String {
    format!("{group}-{instance}")
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
    let (redis_ready, kafka_ready, partitions_ready) = (
        readiness.condition("redis"),
        readiness.condition("kafka"),
        readiness.condition("partitions"),
    );
    let instance = instance_id(&settings);
    if settings.counter.instance_id.is_none() {
        info!(
            instance = %instance,
            "no counter.instance_id set: generated one; a restart under a new id cannot \
             fence this run's open transaction and waits for it to time out"
        );
    }
    let conn = connect(&settings.redis).await?;
    let _redis_probe = observe::redis_probe(conn.clone(), redis_ready);
    let store = CountStore::new(
        conn,
        Keys::new(&settings.redis.prefix),
        Replication::from_settings(&settings.redis),
    )
    .await?;
    // Before joining the group: fences an earlier run with the same id, so its
    // open transaction is aborted and the committed offsets are stable.
    let txn = Transactions::start(
        &settings.kafka,
        &transactional_id(&settings.counter.group_id, &instance),
    )
    .await?;
    let topics = Topics {
        source: settings.kafka.client_message_topic.clone(),
        aggregation: settings.kafka.message_aggregation_topic.clone(),
        dlq: settings.kafka.dlq_topic.clone(),
    };
    let consumer = consume::subscribe(
        &settings.kafka,
        &settings.counter.group_id,
        &topics.source,
        "counter",
        partitions_ready,
    )?;
    let _kafka_probe = observe::kafka_probe(
        consumer.clone(),
        |c| c.client(),
        topics.source.clone(),
        kafka_ready,
    );
    info!(
        instance = %instance,
        transactional_id = txn.id(),
        group = %settings.counter.group_id,
        topic = %topics.source,
        "tally-counter started"
    );
    // Dropped from the group after session.timeout.ms without heartbeats; a pause
    // of half that is already suspicious.
    let stall_threshold = Duration::from_millis((settings.kafka.session_timeout_ms / 2).max(500));
    let mut counter = Counter {
        gaps: gaps::GapTracker::new(Duration::from_millis(settings.counter.stall_after_ms)),
        kafka_timeout: Duration::from_millis(settings.kafka.transaction_timeout_ms),
        poll_deadline: consume::max_poll_interval(&settings.kafka) / 2,
        stall: stall::StallDetector::start(stall_threshold),
        valid_since: Instant::now(),
        carry: Vec::new(),
        settings,
        consumer,
        txn,
        store,
        topics,
    };
    let mut shutdown = Shutdown::new(shutdown);
    let result = counter.run(&mut shutdown).await;
    counter.close().await;
    result
}

struct Counter {
    settings: Settings,
    consumer: Arc<GroupConsumer>,
    txn: Transactions,
    store: CountStore,
    topics: Topics,
    gaps: gaps::GapTracker,
    stall: stall::StallDetector,
    /// Since when this member's view of its partitions is known good: the last
    /// commit, rewind or rejoin. A stall after it may have made it a zombie.
    valid_since: Instant,
    /// Records to process again at the start of the next batch.
    carry: Vec<Polled>,
    kafka_timeout: Duration,
    /// Longest a batch may go on without a poll: half of `max.poll.interval.ms`.
    poll_deadline: Duration,
}

/// A client's record indexes in the batch and the outcomes of those processed.
type Applied = (ClientId, i32, Vec<usize>, Vec<Outcome>);

/// Why a batch did not commit.
enum Failed {
    /// Shutdown was requested before the batch was applied.
    Shutdown,
    /// This member may have lost its partitions without being told yet: the
    /// process stood still, or it did not poll for half of
    /// `max.poll.interval.ms` while retrying Redis.
    Unsure(String),
    /// The transaction failed; the producer was dealt with.
    Transaction(TxnError),
}

impl Counter {
    async fn run<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Shutdown<F>,
    ) -> Result<(), CounterError> {
        let c = &self.settings.counter;
        let (max_records, max_wait) = (c.batch_max_records, Duration::from_millis(c.batch_max_ms));
        loop {
            let mut batch = std::mem::take(&mut self.carry);
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
            self.gaps.forget_partitions(&revoked);
            self.gaps.report();
            match collected {
                Collected::Shutdown => {
                    info!(
                        dropped = batch.len(),
                        "shutdown: the batch in hand was not applied yet; dropping it"
                    );
                    return Ok(());
                }
                Collected::Idle => continue,
                Collected::Ready if batch.is_empty() => continue,
                Collected::Ready => {}
            }
            let span = info_span!("batch", records = batch.len());
            let started = Instant::now();
            let outcome = self.process(batch, shutdown).instrument(span).await;
            metrics::histogram!(tally_common::observe::names::COUNTER_BATCH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(()) => {}
                Err(Failed::Shutdown) => {
                    info!("shutdown while applying: the batch stays uncommitted and is replayed");
                    return Ok(());
                }
                Err(Failed::Unsure(why)) => {
                    warn!(
                        "{why}: this member may have left the group; dropping the batch \
                         and rejoining before touching Redis again"
                    );
                    metrics::counter!(tally_common::observe::names::COUNTER_REJOINS).increment(1);
                    self.rejoin()?;
                }
                Err(Failed::Transaction(e)) => {
                    warn!("batch not committed ({e}); rewinding to the committed offsets");
                    self.rewind(shutdown).await;
                }
            }
            if shutdown.requested() {
                info!("shutdown: last batch finished");
                return Ok(());
            }
        }
    }

    /// Applies, forwards and commits one batch.
    async fn process<F: Future<Output = ()>>(
        &mut self,
        records: Vec<Polled>,
        shutdown: &mut Shutdown<F>,
    ) -> Result<(), Failed> {
        self.check_membership(Instant::now())?;
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

        // Apply per client, concurrently; all or nothing for this batch.
        let apply_started = Instant::now();
        let clients = by_client.len();
        let polled_at = Instant::now();
        let applied = tokio::select! {
            applied = self.apply(by_client, polled_at) => applied?,
            () = shutdown.wait() => return Err(Failed::Shutdown),
        };
        for (id, partition, indexes, outcomes) in applied {
            self.gaps.observe(&id, partition, &outcomes);
            for (i, outcome) in indexes.into_iter().zip(outcomes) {
                if let Some(message) = messages[i].take() {
                    statuses[i] = Status::Counted(message, outcome);
                }
            }
        }
        failpoint::hit("counter.after_apply");

        let plan = plan::plan(&self.topics, records, statuses);
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &plan.offsets {
            offsets
                .add_partition_offset(&self.topics.source, *partition, Offset::Offset(*next))
                .map_err(|e| Failed::Transaction(TxnError::Fatal(e)))?;
        }
        let tally = plan.tally;
        let forwarded = plan.out.len();
        let apply_ms = apply_started.elapsed().as_millis() as u64;
        let txn_started = Instant::now();
        match self.transact(plan.out, offsets, shutdown).await {
            Ok(()) => {
                self.carry = plan.carry;
                self.valid_since = Instant::now();
                failpoint::hit("counter.after_commit");
                let committed = tally.applied + tally.duplicates + tally.gaps + tally.invalid;
                record_committed(&tally);
                debug!(
                    committed,
                    carried = self.carry.len(),
                    forwarded,
                    applied = tally.applied,
                    duplicates = tally.duplicates,
                    gaps = tally.gaps,
                    invalid = tally.invalid,
                    clients,
                    apply_ms,
                    txn_ms = txn_started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                Ok(())
            }
            Err(e) => Err(Failed::Transaction(e)),
        }
    }

    /// Fails when this member may have lost its partitions unnoticed: it stood
    /// still since its view was last confirmed, or it has not polled since
    /// `polled_at` for longer than the poll deadline (librdkafka then leaves the
    /// group on its own, and another member takes over).
    fn check_membership(&self, polled_at: Instant) -> Result<(), Failed> {
        if let Some(pause) = self.stall.stalled_since(self.valid_since) {
            return Err(Failed::Unsure(format!(
                "stood still for {} ms",
                pause.as_millis()
            )));
        }
        if polled_at.elapsed() > self.poll_deadline {
            return Err(Failed::Unsure(format!(
                "not polled for {} s",
                polled_at.elapsed().as_secs()
            )));
        }
        Ok(())
    }

    /// One count script per client, at most `counter.apply_concurrency` at once;
    /// returns each client's record indexes with the outcomes of those processed.
    /// A Redis error backs off and retries that client; a stall fails the batch.
    async fn apply(
        &self,
        by_client: HashMap<ClientId, (i32, Vec<(usize, u64)>)>,
        polled_at: Instant,
    ) -> Result<Vec<Applied>, Failed> {
        let calls = by_client.into_iter().map(|(id, (partition, records))| {
            let (indexes, sns): (Vec<usize>, Vec<u64>) = records.into_iter().unzip();
            async move {
                let mut backoff = BACKOFF_MIN;
                loop {
                    // Checked before every call: a zombie must not write to Redis.
                    self.check_membership(polled_at)?;
                    match self.store.apply_client(&id, &sns).await {
                        Ok(outcomes) => return Ok((id, partition, indexes, outcomes)),
                        Err(e) => {
                            metrics::counter!(tally_common::observe::names::COUNTER_REDIS_ERRORS)
                                .increment(1);
                            if matches!(e, RedisOpError::Refused { .. } | RedisOpError::Result(_)) {
                                error!(client = %id, "count script failed: {e}; retrying");
                            } else {
                                warn!(client = %id, "count script failed: {e}; retrying");
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                }
            }
        });
        stream::iter(calls)
            .buffer_unordered(self.settings.counter.apply_concurrency)
            .try_collect()
            .await
    }

    /// The transaction of one batch. On failure the producer is left usable again
    /// (aborted, or recreated) before returning.
    async fn transact<F: Future<Output = ()>>(
        &mut self,
        out: Vec<txn::OutRecord>,
        offsets: TopicPartitionList,
        shutdown: &mut Shutdown<F>,
    ) -> Result<(), TxnError> {
        let result = self.try_transact(out, offsets).await;
        if let Err(e) = &result {
            metrics::counter!(tally_common::observe::names::COUNTER_TXN_ABORTS).increment(1);
            let mut recreate = e.needs_new_producer();
            // NotMember fails before anything was begun: nothing to abort.
            if !recreate && !matches!(e, TxnError::NotMember) {
                if let Err(abort) = self.txn.abort().await {
                    warn!("abort_transaction failed: {abort}");
                    recreate = true;
                }
            }
            if recreate {
                let mut backoff = BACKOFF_MIN;
                while let Err(e) = self.txn.recreate().await {
                    error!("cannot recreate the transactional producer: {e}; retrying");
                    if shutdown.requested() {
                        // Nothing is committed; the next run's producer fences this one.
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        result
    }

    async fn try_transact(
        &mut self,
        out: Vec<txn::OutRecord>,
        offsets: TopicPartitionList,
    ) -> Result<(), TxnError> {
        let group = self.consumer.group_metadata().ok_or(TxnError::NotMember)?;
        self.txn.begin().await?;
        if !out.is_empty() {
            self.txn.produce(out).await?;
        }
        failpoint::hit("counter.after_produce");
        self.txn.send_offsets(offsets, group).await?;
        failpoint::hit("counter.before_commit");
        self.txn.commit().await
    }

    /// Moves every assigned partition back to its committed offset, retrying until
    /// it works (or shutdown), and forgets the carried records.
    async fn rewind<F: Future<Output = ()>>(&mut self, shutdown: &mut Shutdown<F>) {
        self.carry.clear();
        metrics::counter!(tally_common::observe::names::COUNTER_REWINDS).increment(1);
        let mut backoff = BACKOFF_MIN;
        loop {
            match consume::rewind(&self.consumer, self.kafka_timeout).await {
                Ok(()) => break,
                Err(e) => {
                    warn!("rewind failed: {e}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.wait() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.valid_since = Instant::now();
    }

    /// Leaves and rejoins the group: every partition is revoked, and whatever is
    /// assigned next starts at the offsets committed by then.
    fn rejoin(&mut self) -> Result<(), CounterError> {
        self.carry.clear();
        self.consumer.unsubscribe();
        self.consumer
            .subscribe(&[&self.topics.source])
            .map_err(consume::ConsumeError::from)?;
        self.valid_since = Instant::now();
        Ok(())
    }

    /// Leaves the group (the consumer's close blocks, so off the runtime).
    async fn close(self) {
        let Counter { consumer, txn, .. } = self;
        consumer.unsubscribe();
        let _ = tokio::task::spawn_blocking(move || {
            drop(consumer);
            drop(txn);
        })
        .await;
        info!("left the consumer group; stopped");
    }
}

/// Publishes a committed batch's outcomes.
fn record_committed(tally: &plan::Tally) {
    use tally_common::observe::names::{COUNTER_RECORDS, COUNTER_TXN_COMMITS};
    metrics::counter!(COUNTER_TXN_COMMITS).increment(1);
    for (outcome, n) in [
        ("applied", tally.applied),
        ("duplicate", tally.duplicates),
        ("gap", tally.gaps),
        ("dlq", tally.invalid),
    ] {
        metrics::counter!(COUNTER_RECORDS, "outcome" => outcome).increment(n);
    }
}
