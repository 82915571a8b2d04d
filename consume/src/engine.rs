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
    /// `<service>.after_apply`, `.after_produce`, `.before_commit`, `.after_commit`
    /// and the pause point `<service>.slow_commit`.
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

/// Which part of a batch a [`Processor::process`] call is given. A batch is what
/// commits as one unit; while the batch before it commits, the engine goes on
/// collecting and applying records, each time as one more part of the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The batch's first part: every batch before it is committed or committing.
    First,
    /// A later part, applied while the previous batch still commits; it commits
    /// (or is dropped) together with the parts before it.
    More,
}

/// A service's part of the loop: apply a batch's effects durably (replicated, and
/// safe to apply again), and say what to commit.
pub trait Processor: Send {
    /// What a committed batch reports.
    type Summary: Send;

    /// Applies `records`, one part of a batch (`part`), and returns what to
    /// commit for them. `guard` must be checked before every Redis write; its
    /// failure drops the batch and rejoins the group. The engine may drop this
    /// future at any await (shutdown): nothing of the batch is committed then, and
    /// it is replayed. The parts of one batch are processed one after the other,
    /// each after the previous one's carry was put back in front of its records.
    fn process(
        &mut self,
        records: Vec<Polled>,
        guard: Membership,
        part: Part,
    ) -> impl Future<Output = Result<Processed<Self::Summary>, Unsure>> + Send;

    /// The summary of a batch made of a part summed up by `earlier` followed by
    /// one summed up by `later`.
    fn combine(&self, earlier: Self::Summary, later: Self::Summary) -> Self::Summary;

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
    /// Polling for a later part of the batch failed for good.
    Consume(ConsumeError),
}

/// A batch whose effects are applied and replicated, waiting for its commit.
struct Applied<S> {
    out: Vec<OutRecord>,
    offsets: BTreeMap<i32, i64>,
    summary: S,
    /// Records the batch held.
    records: usize,
    /// Bytes of keys and values of those records.
    bytes: usize,
    /// Records it carried over into the next batch.
    carried: usize,
    process_ms: u64,
}

impl<S> Applied<S> {
    /// This batch followed by `later`, a part applied after it: the records out
    /// in order, and per partition the later part's offset where it has one (it
    /// read on from where this one stopped, its carry included).
    fn extend(self, later: Applied<S>, combine: impl FnOnce(S, S) -> S) -> Applied<S> {
        let mut out = self.out;
        out.extend(later.out);
        let mut offsets = self.offsets;
        offsets.extend(later.offsets);
        Applied {
            out,
            offsets,
            summary: combine(self.summary, later.summary),
            records: self.records + later.records,
            bytes: self.bytes + later.bytes,
            carried: later.carried,
            process_ms: self.process_ms + later.process_ms,
        }
    }
}

/// Applies `batch` through `processor`; returns it ready to commit, and the
/// records it carries over into the next batch.
async fn apply<P: Processor>(
    processor: &mut P,
    batch: Vec<Polled>,
    guard: Membership,
    part: Part,
    after_apply: &str,
    stop: &CancellationToken,
) -> Result<(Applied<P::Summary>, Vec<Polled>), Failed> {
    guard.check().map_err(Failed::Unsure)?;
    let records = batch.len();
    let bytes = batch.iter().map(Polled::size).sum();
    let started = Instant::now();
    let span = info_span!("batch", records, ?part);
    let processed = tokio::select! {
        processed = processor.process(batch, guard, part).instrument(span) => {
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
        bytes,
        carried: carry.len(),
        process_ms: started.elapsed().as_millis() as u64,
    };
    Ok((applied, carry))
}

/// What a cycle leaves: the batch it applied (all its parts), and the partitions
/// its polls revoked (not handled yet).
struct Cycled<S> {
    applied: Option<Applied<S>>,
    revoked: Vec<i32>,
}

/// What [`grow`] needs of the engine, taken before the commit borrows it.
struct Growth {
    consumer: Arc<GroupConsumer>,
    /// The whole batch's limits.
    limit: BatchLimit,
    stall: StallDetector,
    valid_since: Instant,
    poll_deadline: Duration,
}

/// What [`grow`] leaves: the batch applied, the records to process first in the
/// next batch, and the partitions its polls revoked.
struct Grown<S> {
    applied: Option<Applied<S>>,
    carry: Vec<Polled>,
    revoked: Vec<i32>,
}

/// Applies `first` as the first part of a batch; then, while `commit_settled`
/// (the previous batch's commit) is not, collects what arrives and applies it as
/// further parts of the same batch, so a record that arrives during a commit is
/// committed by the next one rather than the one after. Stops growing at the
/// batch limits, when a part carries records (a partition stopped part-way: every
/// further part would process them again), at a revocation (nothing more is
/// applied once a poll took partitions away; the caller drops the batch), and at
/// shutdown. Without a commit beside it the batch is `first` alone.
async fn grow<P: Processor>(
    processor: &mut P,
    first: Vec<Polled>,
    growth: &Growth,
    commit_settled: Option<&CancellationToken>,
    after_apply: &str,
    stop: &CancellationToken,
) -> Result<Grown<P::Summary>, Failed> {
    let mut applied: Option<Applied<P::Summary>> = None;
    let mut records = first;
    let mut revoked = Vec::new();
    loop {
        if !records.is_empty() {
            let part = if applied.is_some() {
                Part::More
            } else {
                Part::First
            };
            let guard = Membership::new(
                growth.stall.clone(),
                growth.valid_since,
                Instant::now(),
                growth.poll_deadline,
            );
            let (more, carry) =
                match apply(&mut *processor, records, guard, part, after_apply, stop).await {
                    // Shutdown during a later part: the parts before it are
                    // applied in full and are committed before the member leaves.
                    Err(Failed::Shutdown) if applied.is_some() => {
                        return Ok(Grown {
                            applied,
                            carry: Vec::new(),
                            revoked,
                        });
                    }
                    result => result?,
                };
            applied = Some(match applied.take() {
                None => more,
                Some(before) => before.extend(more, |a, b| processor.combine(a, b)),
            });
            records = carry;
            if !records.is_empty() {
                break;
            }
        }
        let Some(settled) = commit_settled else {
            break;
        };
        let (count, bytes) = applied.as_ref().map_or((0, 0), |a| (a.records, a.bytes));
        if settled.is_cancelled() || growth.limit.reached(count, bytes) {
            break;
        }
        let room = BatchLimit {
            records: growth.limit.records - count,
            bytes: growth.limit.bytes.saturating_sub(bytes),
        };
        // Takes everything already fetched once a record is there; gives way to
        // the commit's end while waiting for the first.
        let collected = tokio::select! {
            biased;
            () = settled.cancelled() => break,
            collected = group::collect(
                &growth.consumer,
                &mut records,
                &mut revoked,
                room,
                Duration::ZERO,
                IDLE_WAIT,
                stop,
            ) => collected.map_err(Failed::Consume)?,
        };
        processor.tick();
        if !revoked.is_empty() || collected == Collected::Shutdown {
            break;
        }
    }
    Ok(Grown {
        applied,
        carry: records,
        revoked,
    })
}

/// Names of the failpoints the engine passes, per service.
struct Failpoints {
    after_apply: String,
    after_produce: String,
    before_commit: String,
    after_commit: String,
    /// A pause before each commit: a test stretches the window in which the
    /// next batch grows (`grow`).
    slow_commit: String,
}

impl Failpoints {
    fn of(service: &str) -> Self {
        Self {
            after_apply: format!("{service}.after_apply"),
            after_produce: format!("{service}.after_produce"),
            before_commit: format!("{service}.before_commit"),
            after_commit: format!("{service}.after_commit"),
            slow_commit: format!("{service}.slow_commit"),
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
            if !revoked.is_empty() && self.revoked(processor, &revoked, &mut pending, stop).await {
                continue;
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
                Ok(Cycled { applied, revoked }) => {
                    pending = applied;
                    if !revoked.is_empty() {
                        self.revoked(processor, &revoked, &mut pending, stop).await;
                    }
                }
                Err(Failed::Consume(e)) => return Err(e),
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

    /// Partitions were revoked by a poll: the processor forgets them, and a batch
    /// applied but not committed is dropped and every assigned partition rewound
    /// to its committed offset (its offsets may name a revoked partition, whose
    /// next owner starts at the committed offset; its effects are safe to apply
    /// again). Whether a batch was dropped.
    async fn revoked<P: Processor>(
        &mut self,
        processor: &mut P,
        revoked: &[i32],
        pending: &mut Option<Applied<P::Summary>>,
        stop: &CancellationToken,
    ) -> bool {
        processor.revoked(revoked);
        let Some(dropped) = pending.take() else {
            return false;
        };
        info!(
            records = dropped.records,
            ?revoked,
            "partitions revoked while a batch was applied but not committed: \
             dropping it and rewinding"
        );
        self.rewind(stop).await;
        true
    }

    /// One cycle of the pipeline: commits `pending` (the batch applied in the
    /// last cycle) while `batch` is applied and, as long as that commit runs, more
    /// records are collected and applied as further parts of the same batch ([`grow`]).
    /// Returns the newly applied batch, to be committed in the next cycle. A
    /// failed commit drops the new batch too (the caller rewinds past both); a
    /// failed guard fails the cycle once the pending commit is settled.
    async fn cycle<P: Processor>(
        &mut self,
        processor: &mut P,
        pending: Option<Applied<P::Summary>>,
        batch: Vec<Polled>,
        stop: &CancellationToken,
    ) -> Result<Cycled<P::Summary>, Failed> {
        let growth = Growth {
            consumer: self.consumer.clone(),
            limit: BatchLimit {
                records: self.config.max_records,
                bytes: self.config.max_bytes,
            },
            stall: self.stall.clone(),
            valid_since: self.valid_since,
            poll_deadline: self.poll_deadline,
        };
        let after_apply = self.failpoints.after_apply.clone();
        // Cancelled once the pending batch's commit is settled: no more parts then.
        let commit_settled = CancellationToken::new();
        let committing = pending.is_some();
        let commit = async {
            let result = match pending {
                Some(applied) => Some(self.commit(applied, stop).await),
                None => None,
            };
            commit_settled.cancel();
            result
        };
        let process = grow(
            &mut *processor,
            batch,
            &growth,
            committing.then_some(&commit_settled),
            &after_apply,
            stop,
        );
        let (committed, grown) = tokio::join!(commit, process);
        if let Some(committed) = committed {
            let (summary, report) = committed?;
            processor.committed(summary, &report);
        }
        let Grown {
            applied,
            carry,
            revoked,
        } = grown?;
        self.carry = carry;
        Ok(Cycled { applied, revoked })
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
            ..
        } = applied;
        let commit_started = Instant::now();
        if let Some(pause) = failpoint::pause(&self.failpoints.slow_commit) {
            tokio::time::sleep(pause).await;
        }
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
