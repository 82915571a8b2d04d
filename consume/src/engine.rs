//! The batch loop: collect, then commit the batch applied last time while the new
//! one is applied; or rewind / rejoin. The invariants it keeps are stated in the
//! crate doc (`lib.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tally_common::backoff::Backoff;
use tally_common::failpoint;
use tally_common::observe::{kafka_probe, Condition, Probe, Readiness};
use tally_common::settings::KafkaSettings;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::events::{BatchAbandoned, CommitFailed};
use crate::group::{self, BatchLimit, Collected, ConsumeError, GroupConsumer, Polled};
use crate::out::OutRecord;
use crate::sink::{CommitError, CommitFailpoints, Sink};
use crate::zombie::{Membership, StallDetector, Unsure};
use crate::{BACKOFF_MAX, BACKOFF_MIN};

/// How long an idle consumer waits for records before doing housekeeping.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// What a service's batches are made of and how the engine reports them.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The service (`counter`, `aggregator`): logs, and the failpoints
    /// `<service>.after_apply`, `.after_produce`, `.before_commit`, `.after_commit`.
    pub service: &'static str,
    /// The consumer group.
    pub group: String,
    /// The topic consumed.
    pub topic: String,
    /// A batch is handed over at this many records…
    pub max_records: usize,
    /// …or once its values and keys take this many bytes (a packed record holds
    /// many messages: a count of records alone does not bound a batch's memory)…
    pub max_bytes: usize,
    /// …or this long after its first record.
    pub max_wait: Duration,
    /// librdkafka timeout of a rewind's committed-offset fetch and seek.
    pub rewind_timeout: Duration,
    /// The service's metric names.
    pub metrics: EngineMetrics,
}

/// The metrics the engine records, named per service.
#[derive(Debug, Clone, Copy)]
pub struct EngineMetrics {
    /// Histogram: process and commit of one batch.
    pub batch_seconds: &'static str,
    /// Counter: committed batches.
    pub commits: &'static str,
    /// Counter: batches whose commit failed (aborted, or the offset commit failed).
    pub commit_failures: &'static str,
    /// Counter: rewinds to the committed offsets.
    pub rewinds: &'static str,
    /// Counter: batches dropped and the group rejoined by the zombie guard.
    pub rejoins: &'static str,
}

/// What processing a batch produced: what to write, where each partition's
/// committed offset moves to, and what to process again.
#[derive(Debug)]
pub struct Processed<S> {
    /// Records to write with the commit, in order.
    pub out: Vec<OutRecord>,
    /// Per partition, the offset to commit (the next record to read). Every
    /// partition of the batch must be present. One may stay where it was (all its
    /// records carried) for a batch, not for ever: the engine repeats what it is
    /// handed.
    pub offsets: BTreeMap<i32, i64>,
    /// Records at or after a partition's committed offset, to process again at the
    /// start of the next batch (in offset order). Dropped on a rewind or rejoin.
    pub carry: Vec<Polled>,
    /// What the service reports once the batch committed.
    pub summary: S,
}

/// A service's part of the loop: apply a batch's effects durably (replicated, and
/// safe to apply again), and say what to commit.
pub trait Processor: Send {
    /// What a committed batch reports.
    type Summary: Send;

    /// Applies `batch` and returns what to commit. `guard` must be checked before
    /// every Redis write; its failure drops the batch and rejoins the group. The
    /// engine may drop this future at any await (shutdown): nothing is committed
    /// then, and the batch is replayed.
    fn process(
        &mut self,
        batch: Vec<Polled>,
        guard: Membership,
    ) -> impl Future<Output = Result<Processed<Self::Summary>, Unsure>> + Send;

    /// The batch whose summary this is committed (`batch`: the engine's side of
    /// it); the service records its metrics and logs the batch.
    fn committed(&mut self, summary: Self::Summary, batch: &BatchReport);

    /// These partitions were revoked or lost: forget what is kept about them.
    fn revoked(&mut self, _partitions: &[i32]) {}

    /// Called after every collection (also when idle): periodic housekeeping.
    fn tick(&mut self) {}
}

/// The engine's figures of a committed batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchReport {
    /// Records the batch held.
    pub records: usize,
    /// Records carried over into the next batch.
    pub carried: usize,
    /// Time spent in [`Processor::process`].
    pub process_ms: u64,
    /// Time to write the output and commit.
    pub commit_ms: u64,
}

/// Why a batch did not commit.
enum Failed {
    /// Shutdown was requested before the batch was committed.
    Shutdown,
    /// The zombie guard failed.
    Unsure(Unsure),
    /// The commit failed; the sink was recovered.
    Commit(CommitError),
}

/// A batch whose effects are applied and replicated, waiting for its commit.
struct Applied<S> {
    out: Vec<OutRecord>,
    offsets: BTreeMap<i32, i64>,
    summary: S,
    /// Records the batch held.
    records: usize,
    /// Records it carried over into the next batch.
    carried: usize,
    process_ms: u64,
}

/// Applies `batch` through `processor`; returns it ready to commit, and the
/// records it carries over into the next batch.
async fn apply<P: Processor>(
    processor: &mut P,
    batch: Vec<Polled>,
    guard: Membership,
    after_apply: &str,
    stop: &CancellationToken,
) -> Result<(Applied<P::Summary>, Vec<Polled>), Failed> {
    guard.check().map_err(Failed::Unsure)?;
    let records = batch.len();
    let started = Instant::now();
    let span = info_span!("batch", records);
    let processed = tokio::select! {
        processed = processor.process(batch, guard).instrument(span) => {
            processed.map_err(Failed::Unsure)?
        }
        () = stop.cancelled() => return Err(Failed::Shutdown),
    };
    failpoint::hit(after_apply);
    let Processed {
        out,
        offsets,
        carry,
        summary,
    } = processed;
    let applied = Applied {
        out,
        offsets,
        summary,
        records,
        carried: carry.len(),
        process_ms: started.elapsed().as_millis() as u64,
    };
    Ok((applied, carry))
}

/// Names of the failpoints the engine passes, per service.
struct Failpoints {
    after_apply: String,
    after_produce: String,
    before_commit: String,
    after_commit: String,
}

impl Failpoints {
    fn of(service: &str) -> Self {
        Self {
            after_apply: format!("{service}.after_apply"),
            after_produce: format!("{service}.after_produce"),
            before_commit: format!("{service}.before_commit"),
            after_commit: format!("{service}.after_commit"),
        }
    }
}

/// The readiness conditions of a consuming service, registered together when it
/// starts, so `/ready` is never green before each of them was checked.
#[derive(Clone)]
pub struct ServiceReadiness {
    /// A Redis master answers `PING` (the service's store sets it).
    pub redis: Condition,
    /// The consumed topic's metadata is fetched (the engine's probe sets it).
    kafka: Condition,
    /// At least one partition is assigned (the engine's rebalances set it).
    partitions: Condition,
}

impl ServiceReadiness {
    /// Registers `redis`, `kafka` and `partitions`, all unmet.
    pub fn register(readiness: &Readiness) -> Self {
        Self {
            redis: readiness.condition("redis"),
            kafka: readiness.condition("kafka"),
            partitions: readiness.condition("partitions"),
        }
    }
}

/// A consumer-group member running the batch loop for one [`Processor`].
pub struct Engine {
    config: EngineConfig,
    consumer: Arc<GroupConsumer>,
    sink: Sink,
    stall: StallDetector,
    /// Since when this member's view of its partitions is known good: the last
    /// commit, rewind or rejoin. A stall after it may have made it a zombie.
    valid_since: Instant,
    /// Longest a batch may go on without a poll: half of `max.poll.interval.ms`.
    poll_deadline: Duration,
    /// Records to process again at the start of the next batch.
    carry: Vec<Polled>,
    failpoints: Failpoints,
    /// Keeps the `kafka` readiness condition up to date while the engine lives.
    _kafka_probe: Probe,
}

impl Engine {
    /// Joins `config.group` on `config.topic` (read_committed) and keeps the
    /// `kafka` and `partitions` conditions of `ready` up to date. A transactional
    /// `sink` must have been started before, so that it fenced an earlier run with
    /// its id.
    pub fn start(
        kafka: &KafkaSettings,
        config: EngineConfig,
        sink: Sink,
        ready: &ServiceReadiness,
    ) -> Result<Self, ConsumeError> {
        let consumer = group::subscribe(
            kafka,
            &config.group,
            &config.topic,
            config.service,
            ready.partitions.clone(),
        )?;
        let probe = kafka_probe(
            consumer.clone(),
            |c| c.client(),
            config.topic.clone(),
            ready.kafka.clone(),
        );
        // Dropped from the group after session.timeout.ms without heartbeats; a
        // pause of half that is already suspicious.
        let stall_threshold = Duration::from_millis((kafka.session_timeout_ms / 2).max(500));
        Ok(Self {
            failpoints: Failpoints::of(config.service),
            config,
            consumer,
            sink,
            stall: StallDetector::start(stall_threshold),
            valid_since: Instant::now(),
            poll_deadline: group::max_poll_interval(kafka) / 2,
            carry: Vec::new(),
            _kafka_probe: probe,
        })
    }

    /// Runs batches through `processor` until `shutdown` completes, then leaves the
    /// group. The batch in hand at shutdown is committed if its commit had begun,
    /// and otherwise dropped uncommitted (it is replayed).
    pub async fn run<P: Processor>(
        mut self,
        processor: &mut P,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError> {
        let stop = CancellationToken::new();
        let result = tokio::select! {
            result = self.batches(processor, &stop) => result,
            () = async {
                shutdown.await;
                stop.cancel();
                std::future::pending::<()>().await
            } => unreachable!("pending never completes"),
        };
        self.close().await;
        result
    }

    async fn batches<P: Processor>(
        &mut self,
        processor: &mut P,
        stop: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        // The batch applied in the last cycle, committed in the next one.
        let mut pending: Option<Applied<P::Summary>> = None;
        loop {
            let mut batch = std::mem::take(&mut self.carry);
            let mut revoked = Vec::new();
            // With a batch waiting for its commit, take only what is already
            // fetched: the commit must not wait for the next batch to fill.
            let (max_wait, idle_wait) = if pending.is_some() {
                (Duration::ZERO, Duration::ZERO)
            } else {
                (self.config.max_wait, IDLE_WAIT)
            };
            let collected = group::collect(
                &self.consumer,
                &mut batch,
                &mut revoked,
                BatchLimit {
                    records: self.config.max_records,
                    bytes: self.config.max_bytes,
                },
                max_wait,
                idle_wait,
                stop,
            )
            .await?;
            if !revoked.is_empty() {
                processor.revoked(&revoked);
                if let Some(dropped) = pending.take() {
                    // Its offsets may name a revoked partition, whose next owner
                    // must start at the committed offset: drop it (its effects are
                    // safe to apply again) and read everything after the commit.
                    info!(
                        records = dropped.records,
                        ?revoked,
                        "partitions revoked while a batch was applied but not committed: \
                         dropping it and rewinding"
                    );
                    self.rewind(stop).await;
                    continue;
                }
            }
            processor.tick();
            let batch = match collected {
                Collected::Shutdown => {
                    info!(
                        dropped = batch.len(),
                        "shutdown: the batch in hand was not applied yet; dropping it"
                    );
                    self.finish(processor, pending, stop).await;
                    return Ok(());
                }
                Collected::Idle | Collected::Ready => batch,
            };
            if batch.is_empty() && pending.is_none() {
                continue;
            }
            let started = Instant::now();
            let cycle = self.cycle(processor, pending.take(), batch, stop).await;
            metrics::histogram!(self.config.metrics.batch_seconds)
                .record(started.elapsed().as_secs_f64());
            match cycle {
                Ok(applied) => pending = applied,
                Err(Failed::Shutdown) => {
                    info!("shutdown while applying: the batch stays uncommitted and is replayed");
                    return Ok(());
                }
                Err(Failed::Unsure(why)) => {
                    BatchAbandoned {
                        rejoins: self.config.metrics.rejoins,
                        why: &why,
                    }
                    .emit();
                    self.rejoin()?;
                }
                Err(Failed::Commit(error)) => {
                    CommitFailed {
                        failures: self.config.metrics.commit_failures,
                        error: &error,
                    }
                    .emit();
                    self.rewind(stop).await;
                }
            }
            if stop.is_cancelled() {
                self.finish(processor, pending, stop).await;
                info!("shutdown: last batch finished");
                return Ok(());
            }
        }
    }

    /// One cycle of the pipeline: commits `pending` (the batch applied in the
    /// last cycle) while `batch` is applied; returns the newly applied batch, to be
    /// committed in the next cycle. A failed commit drops the new batch too (the
    /// caller rewinds past both); a failed guard fails the cycle once the pending
    /// commit is settled.
    async fn cycle<P: Processor>(
        &mut self,
        processor: &mut P,
        pending: Option<Applied<P::Summary>>,
        batch: Vec<Polled>,
        stop: &CancellationToken,
    ) -> Result<Option<Applied<P::Summary>>, Failed> {
        let guard = Membership::new(
            self.stall.clone(),
            self.valid_since,
            Instant::now(),
            self.poll_deadline,
        );
        let after_apply = self.failpoints.after_apply.clone();
        let commit = async {
            match pending {
                Some(applied) => Some(self.commit(applied, stop).await),
                None => None,
            }
        };
        let process = async {
            if batch.is_empty() {
                return None;
            }
            Some(apply(&mut *processor, batch, guard, &after_apply, stop).await)
        };
        let (committed, applied) = tokio::join!(commit, process);
        if let Some(committed) = committed {
            let (summary, report) = committed?;
            processor.committed(summary, &report);
        }
        match applied {
            None => Ok(None),
            Some(applied) => {
                let (applied, carry) = applied?;
                self.carry = carry;
                Ok(Some(applied))
            }
        }
    }

    /// Commits the batch `applied`; after a failure the sink is recovered.
    async fn commit<S>(
        &mut self,
        applied: Applied<S>,
        stop: &CancellationToken,
    ) -> Result<(S, BatchReport), Failed> {
        let Applied {
            out,
            offsets,
            summary,
            records,
            carried,
            process_ms,
        } = applied;
        let commit_started = Instant::now();
        let result = match self.offsets(&offsets) {
            Ok(tpl) => {
                let failpoints = CommitFailpoints {
                    after_produce: &self.failpoints.after_produce,
                    before_commit: &self.failpoints.before_commit,
                };
                self.sink
                    .commit(&self.consumer, out, tpl, failpoints, stop)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.valid_since = Instant::now();
                failpoint::hit(&self.failpoints.after_commit);
                metrics::counter!(self.config.metrics.commits).increment(1);
                let report = BatchReport {
                    records,
                    carried,
                    process_ms,
                    commit_ms: commit_started.elapsed().as_millis() as u64,
                };
                Ok((summary, report))
            }
            Err(CommitError::Shutdown) => Err(Failed::Shutdown),
            Err(e) => {
                self.sink.recover(&e, stop).await;
                Err(Failed::Commit(e))
            }
        }
    }

    /// At shutdown: commits the batch applied in the last cycle, if any (its
    /// effects are replicated; committing it spares its replay). `stop` is
    /// cancelled already, which keeps the attempt bounded: a transaction's calls
    /// have their watchdog and a failed one is not retried, and the plain sink
    /// may give up on its dead letters (the batch is then replayed).
    async fn finish<P: Processor>(
        &mut self,
        processor: &mut P,
        pending: Option<Applied<P::Summary>>,
        stop: &CancellationToken,
    ) {
        let Some(applied) = pending else {
            return;
        };
        match self.commit(applied, stop).await {
            Ok((summary, report)) => processor.committed(summary, &report),
            Err(Failed::Commit(e)) => {
                warn!("shutdown: the last applied batch did not commit ({e}); it is replayed")
            }
            Err(_) => {}
        }
    }

    fn offsets(&self, offsets: &BTreeMap<i32, i64>) -> Result<TopicPartitionList, CommitError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in offsets {
            tpl.add_partition_offset(&self.config.topic, *partition, Offset::Offset(*next))
                .map_err(CommitError::Offsets)?;
        }
        Ok(tpl)
    }

    /// Moves every assigned partition back to its committed offset, retrying until
    /// it works (or shutdown), and forgets the carried records.
    async fn rewind(&mut self, stop: &CancellationToken) {
        self.carry.clear();
        metrics::counter!(self.config.metrics.rewinds).increment(1);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        while let Err(e) = group::rewind(&self.consumer, self.config.rewind_timeout).await {
            warn!("rewind failed: {e}; retrying");
            tokio::select! {
                () = backoff.wait() => {}
                () = stop.cancelled() => break,
            }
        }
        self.valid_since = Instant::now();
    }

    /// Leaves and rejoins the group: every partition is revoked, and whatever is
    /// assigned next starts at the offsets committed by then.
    fn rejoin(&mut self) -> Result<(), ConsumeError> {
        self.carry.clear();
        self.consumer.unsubscribe();
        self.consumer.subscribe(&[&self.config.topic])?;
        self.valid_since = Instant::now();
        Ok(())
    }

    /// Leaves the group (the consumer's close blocks, so off the runtime).
    async fn close(self) {
        // The probe (in `..`) is dropped with the rest of `self`.
        let Engine { consumer, sink, .. } = self;
        consumer.unsubscribe();
        let _ = tokio::task::spawn_blocking(move || {
            drop(consumer);
            drop(sink);
        })
        .await;
        info!("left the consumer group; stopped");
    }
}
