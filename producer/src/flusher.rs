//! The flusher task: flushes every owned client's stash to `client_message`, in
//! sn order, with the idempotent `acks=all` producer.
//!
//! This module is the task's I/O: it sends to Kafka, reads and records stashes,
//! and releases clients, as each client's [`FlushState`] asks (the go-back-N and
//! release rules live there, invariant 3). What it adds: only what a client's
//! state asked for is done, and a background result is applied only to the state
//! that asked for it (matched by a state id unique for the flusher's life), so a
//! result for a client that was dropped and claimed again is ignored. And a Kafka
//! producer that stops answering is replaced: librdkafka reports every message it
//! accepted, delivered or failed, within `message.timeout.ms`; sends with no result
//! past that (plus a margin) mean its reports stopped, and resending into it would
//! wait forever, so a new producer takes over and every client resends from
//! `flushed + 1` (go-back-N, as after a failure). Sends are handed to the Kafka
//! producer in rounds, one send window per partition ([`crate::send_window`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use tally_common::records::ClientMessage;
use tally_common::redis::RedisOpError;
use tally_common::stash::{Claim, StashedMessage};
use tally_common::ClientId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::delivery::{FlushProducer, Report, ReportTo, Reports, Sent};
use crate::flush_state::{Appended, FlushState, Generations, Loaded};
use crate::memory_release::MemoryRelease;
use crate::ownership::Release;
use crate::registry::ClientSlot;
use crate::send_window::{SendWindows, BURST_LINGER_MS};
use crate::shared::{FlushCommand, Shared};

/// Messages read from a stash per Redis call when catching up.
const LOAD_CHUNK: usize = 1_000;
/// Failpoint-build sabotage for the fault suite: the first Kafka producer's delivery
/// results are never seen (as when its reports stop), so only replacing it lets
/// the flush go on. A constant `false` check in release builds.
pub const SILENT_KAFKA: &str = "producer.silent_kafka";
/// How often the flusher asks the cluster how many partitions `client_message`
/// has (its send windows map keys with it; a report from a new partition
/// updates it at once).
const PARTITIONS_REFRESH: Duration = Duration::from_secs(60);
/// How long one such question may take.
const PARTITIONS_TIMEOUT: Duration = Duration::from_secs(10);

/// A client this instance flushes.
struct ClientFlush {
    slot: Arc<ClientSlot>,
    /// Unique per state (not per epoch): matches background task results to it.
    state_id: u64,
    state: FlushState,
}

enum TaskDone {
    Loaded {
        id: ClientId,
        state_id: u64,
        after: u64,
        result: Result<Vec<StashedMessage>, RedisOpError>,
    },
    Committed {
        id: ClientId,
        state_id: u64,
        epoch: u64,
        result: Result<u64, RedisOpError>,
    },
    Released {
        id: ClientId,
        state_id: u64,
        epoch: u64,
        release: Release,
    },
    Partitions(Result<i32, KafkaError>),
}

/// The flusher task's state.
pub struct Flusher {
    shared: Arc<Shared>,
    producer: Arc<FlushProducer>,
    /// Where `producer`'s delivery reports arrive (a new producer, a new inbox:
    /// the old one's late reports are not read).
    reports: Arc<Reports>,
    /// Reports taken from `reports`, being handled (kept to reuse its memory).
    taken: Vec<Report>,
    topic: String,
    clients: HashMap<ClientId, ClientFlush>,
    /// When messages may be handed to the producer (rounds per partition, see
    /// `send_window`), and the clients held for a round.
    windows: SendWindows,
    /// Clients taken from the windows for a round (kept to reuse its memory).
    due: Vec<ClientId>,
    /// When to ask the cluster for the partition count next; `None` while a
    /// question is out.
    partitions_due: Option<Instant>,
    tasks: JoinSet<TaskDone>,
    /// Clients not yet released, for the graceful shutdown to wait on.
    remaining: watch::Sender<usize>,
    /// Source of state ids and send generations, unique for the flusher's life.
    generations: Generations,
    /// When departed clients' memory is handed back.
    memory: MemoryRelease,
}

/// A Kafka producer for the flusher, reporting deliveries to a new inbox; `silent`
/// arms the [`SILENT_KAFKA`] sabotage on it.
pub fn flush_producer(
    settings: &tally_common::settings::KafkaSettings,
    silent: bool,
) -> Result<(Arc<FlushProducer>, Arc<Reports>), KafkaError> {
    let reports = Arc::new(Reports::default());
    // The flusher lingers itself (`SendWindow`); the producer only gathers a
    // round's hand-over burst.
    let producer = tally_common::kafka::idempotent_producer_config(settings)
        .set("linger.ms", BURST_LINGER_MS.to_string())
        .create_with_context(ReportTo::new(reports.clone(), silent))?;
    Ok((Arc::new(producer), reports))
}

/// Whether the first Kafka producer is built with the [`SILENT_KAFKA`] sabotage.
pub fn silent_kafka_armed() -> bool {
    tally_common::failpoint::is_armed(SILENT_KAFKA)
}

impl Flusher {
    /// A flusher writing with `producer`, whose reports arrive in `reports`
    /// ([`flush_producer`]).
    pub fn new(
        shared: Arc<Shared>,
        (producer, reports): (Arc<FlushProducer>, Arc<Reports>),
        remaining: watch::Sender<usize>,
    ) -> Self {
        let kafka = &shared.settings.kafka;
        let topic = kafka.client_message_topic.clone();
        // A round fits one request: `batch.size` bounds a request, and counts
        // framing beyond the keys and values counted here.
        let round_bytes = usize::try_from(kafka.batch_bytes / 4 * 3).unwrap_or(usize::MAX);
        // Until the cluster says, the count `tally admin init-topics` creates.
        let windows = SendWindows::new(
            Duration::from_millis(kafka.linger_ms),
            round_bytes,
            kafka.partitions,
        );
        Self {
            shared,
            producer,
            reports,
            taken: Vec::new(),
            topic,
            clients: HashMap::new(),
            windows,
            due: Vec::new(),
            partitions_due: Some(Instant::now()),
            tasks: JoinSet::new(),
            remaining,
            generations: Generations::default(),
            memory: MemoryRelease::default(),
        }
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<FlushCommand>,
        stop: CancellationToken,
    ) {
        let interval =
            Duration::from_millis(self.shared.settings.producer.flush_commit_interval_ms);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When a send window's next round opens; re-armed only when that moves.
        let round_due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(round_due);
        let mut round_armed: Option<Instant> = None;
        loop {
            let reports = self.reports.clone();
            let round_opens = self.windows.opens_at();
            if round_opens != round_armed {
                if let Some(at) = round_opens {
                    round_due.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                round_armed = round_opens;
            }
            tokio::select! {
                () = &mut round_due, if round_armed.is_some() => {
                    round_armed = None;
                    self.open_round();
                }
                Some(command) = commands.recv() => self.on_command(command),
                () = reports.ready() => self.on_reports(),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.on_task(done),
                    Err(e) => warn!("flusher task failed: {e}"),
                },
                _ = tick.tick() => self.on_tick(),
                () = stop.cancelled() => break,
            }
        }
        // Let in-flight sends finish so their confirmations are not wasted.
        let _ = self.producer.flush(Duration::from_secs(1));
    }

    fn on_command(&mut self, command: FlushCommand) {
        match command {
            FlushCommand::Claimed {
                slot,
                epoch,
                sn,
                flushed,
                connected,
            } => {
                let id = slot.id.clone();
                let claim = Claim { epoch, sn, flushed };
                if let Some(client) = self.clients.get_mut(&id) {
                    // Claimed again by this instance (a reconnect): the state keeps
                    // memory and sends in flight. The registry may have made a new
                    // slot (the old one was released): follow it.
                    if !client.state.reclaim(claim, connected, &slot.memory) {
                        debug!(client = %id, epoch, "ignored an older claim");
                        return;
                    }
                    client.slot = slot;
                    client.slot.progress.set_flushed(client.state.flushed());
                    self.send(&id);
                    return;
                }
                slot.progress.set_flushed(flushed);
                let state_id = self.generations.next();
                let state = FlushState::new(
                    claim,
                    connected,
                    slot.memory.clone(),
                    state_id,
                    Instant::now(),
                );
                self.clients.insert(
                    id,
                    ClientFlush {
                        slot,
                        state_id,
                        state,
                    },
                );
                self.publish_remaining();
            }
            FlushCommand::Append {
                slot,
                epoch,
                first_sn,
                ts,
                messages,
                memory,
            } => {
                let id = slot.id.clone();
                let Some(client) = self.clients.get_mut(&id) else {
                    return; // released meanwhile; dropping `memory` gives it back
                };
                match client.state.append(epoch, first_sn, ts, messages, memory) {
                    // Superseded: its memory went back. Dropped: in the stash, and
                    // read from there once memory reaches it.
                    Appended::Superseded => {}
                    Appended::Held | Appended::Dropped => self.send(&id),
                }
            }
            FlushCommand::Disconnected { id, epoch } => {
                if let Some(client) = self.clients.get_mut(&id) {
                    client.state.disconnect(epoch);
                }
            }
        }
    }

    /// Sends the client's entries from `next_send` on, while its send window
    /// admits them and the producer queue has room; holds the client otherwise.
    fn send(&mut self, id: &ClientId) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let now = Instant::now();
        let window = self.windows.of(id);
        while let Some(entry) = client.state.next_to_send() {
            let bytes = id.as_str().len() + entry.msg.len() + ClientMessage::VALUE_FRAMING_MAX;
            if !self.windows.admit(window, bytes, now) {
                self.windows.hold(window, id, now);
                return;
            }
            let (sn, ts) = (entry.sn, entry.ts);
            let value = ClientMessage::encode_value(sn, ts, &entry.msg);
            let sent = Box::new(Sent {
                id: id.clone(),
                sn,
                generation: client.state.generation(),
                window,
            });
            let record = BaseRecord::with_opaque_to(&self.topic, sent)
                .key(id.as_str())
                .payload(&value)
                .timestamp(ts);
            match self.producer.send(record) {
                Ok(()) => client.state.sent(now),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.windows.refused(window, bytes, now);
                    self.windows.hold(window, id, now);
                    return;
                }
                Err((e, _)) => {
                    warn!(client = %id, "cannot enqueue for Kafka: {e}");
                    metrics::counter!(tally_common::observe::names::PRODUCER_DELIVERY_ERRORS)
                        .increment(1);
                    self.windows.refused(window, bytes, now);
                    self.windows.hold(window, id, now);
                    return;
                }
            }
        }
        self.windows.release(id);
    }

    /// Opens the send windows whose next round is due, and hands over what
    /// their held clients have, in the order they were held, as far as each
    /// round admits.
    fn open_round(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.windows.open_due(Instant::now(), &mut due);
        for id in due.drain(..) {
            self.send(&id);
        }
        self.windows.close();
        self.due = due;
    }

    /// Handles every delivery report there is, in the order they were made.
    fn on_reports(&mut self) {
        let mut taken = std::mem::take(&mut self.taken);
        self.reports.take_into(&mut taken);
        for report in taken.drain(..) {
            self.windows.reported(report.0.window);
            self.on_delivery(report);
        }
        self.taken = taken;
        // The last report of a round may let the next one open at once.
        self.open_round();
    }

    fn on_delivery(&mut self, (sent, result): Report) {
        let Sent {
            id, sn, generation, ..
        } = sent;
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        match result {
            Ok(partition) => {
                self.windows.saw_partition(partition);
                let Some(advanced) = client.state.confirm(sn, generation, now) else {
                    return;
                };
                client.slot.progress.set_flushed(client.state.flushed());
                metrics::counter!(tally_common::observe::names::PRODUCER_MESSAGES_FLUSHED)
                    .increment(advanced);
            }
            Err(e) => {
                let from = client.state.flushed() + 1;
                if !client
                    .state
                    .fail(sn, generation, &mut self.generations, now)
                {
                    return;
                }
                warn!(client = %id, sn, "delivery failed, resending from {from}: {e}");
                metrics::counter!(tally_common::observe::names::PRODUCER_DELIVERY_ERRORS)
                    .increment(1);
                metrics::counter!(tally_common::observe::names::PRODUCER_REWINDS).increment(1);
                self.send(&id);
            }
        }
    }

    fn on_tick(&mut self) {
        let shared = self.shared.clone();
        let now = Instant::now();
        // Many clients left: give their memory back (see `release_freed_memory`).
        if self.memory.due(now) {
            self.clients.shrink_to_fit();
            self.windows.shrink_to_fit();
            release_freed_memory();
            self.memory.released();
        }
        let delivery_timeout =
            Duration::from_millis(shared.settings.kafka.delivery_timeout_ms + 5_000);
        if let Some(e) = self.producer.client().fatal_error() {
            // A fatal idempotence error: this producer can send nothing more.
            warn!("Kafka producer fatal error {e:?}; recreating it and resending");
            self.replace_producer(now);
        }
        // Loss check: sends in flight without any result past the delivery timeout.
        let stalled = self
            .clients
            .values()
            .filter(|c| c.state.stalled(now, delivery_timeout))
            .count();
        if stalled > 0 {
            warn!(
                stalled,
                queued_in_kafka_client = self.producer.in_flight_count(),
                "no delivery result for {delivery_timeout:?}; recreating the Kafka producer and resending"
            );
            self.replace_producer(now);
        }

        // Every client's un-flushed messages, summed: O(owned clients) per tick.
        let lag: u64 = self.clients.values().map(|c| c.state.lag()).sum();
        metrics::gauge!(tally_common::observe::names::PRODUCER_FLUSH_LAG).set(lag as f64);

        for (id, client) in &mut self.clients {
            let state = &mut client.state;
            // Catch up from the stash.
            if let Some(after) = state.start_load(LOAD_CHUNK) {
                let (store, id, state_id) = (shared.store.clone(), id.clone(), client.state_id);
                self.tasks.spawn(async move {
                    let result = store.read(&id, after, LOAD_CHUNK).await;
                    TaskDone::Loaded {
                        id,
                        state_id,
                        after,
                        result,
                    }
                });
            }
            // Record progress in the stash and trim it.
            if let Some((epoch, flushed)) = state.start_commit() {
                let (store, instance, id, state_id) = (
                    shared.store.clone(),
                    shared.instance.clone(),
                    id.clone(),
                    client.state_id,
                );
                self.tasks.spawn(async move {
                    let result = store.commit_flushed(&id, &instance, epoch, flushed).await;
                    TaskDone::Committed {
                        id,
                        state_id,
                        epoch,
                        result,
                    }
                });
            }
            // Release a disconnected client once everything is flushed and recorded.
            if let Some(epoch) = state.start_release() {
                let (shared, slot, state_id) =
                    (shared.clone(), client.slot.clone(), client.state_id);
                self.tasks.spawn(async move {
                    let release = shared.ownership.release(&slot, epoch).await;
                    TaskDone::Released {
                        id: slot.id.clone(),
                        state_id,
                        epoch,
                        release,
                    }
                });
            }
        }
        // Held clients (also those stopped on a full producer queue) are handed
        // over by the send windows' rounds.

        if self.partitions_due.is_some_and(|at| now >= at) {
            self.partitions_due = None;
            let (settings, topic) = (shared.settings.kafka.clone(), self.topic.clone());
            self.tasks.spawn(async move {
                let partitions =
                    tally_common::kafka::topic_partitions(&settings, &topic, PARTITIONS_TIMEOUT)
                        .await;
                TaskDone::Partitions(partitions)
            });
        }
    }

    /// Replaces the Kafka producer and rewinds every client to `flushed + 1` in a
    /// new generation: the old producer's results, if any still come, are ignored.
    fn replace_producer(&mut self, now: Instant) {
        let (producer, reports) = match flush_producer(&self.shared.settings.kafka, false) {
            Ok(created) => created,
            Err(e) => {
                warn!("cannot recreate the Kafka producer: {e}");
                return;
            }
        };
        let old = std::mem::replace(&mut self.producer, producer);
        // Its results belong to older generations; reading them is pointless.
        self.reports = reports;
        // Dropping it purges its queue and joins its threads, which may block (a
        // producer that stopped answering may never stop): not on this task, and
        // not on the runtime's blocking pool, whose shutdown would wait for it.
        let dropper = std::thread::Builder::new()
            .name("kafka-producer-drop".to_owned())
            .spawn(move || drop(old));
        if let Err(e) = dropper {
            warn!("cannot start a thread to drop the old Kafka producer (dropped here): {e}");
        }
        // Nor will its reports: nothing handed to it is awaited any more.
        self.windows.forget_unreported();
        for (id, client) in &mut self.clients {
            client.state.rewind(&mut self.generations, now);
            metrics::counter!(tally_common::observe::names::PRODUCER_REWINDS).increment(1);
            self.windows.hold(self.windows.of(id), id, now);
        }
        metrics::counter!(tally_common::observe::names::PRODUCER_KAFKA_RECREATIONS).increment(1);
    }

    /// The client whose state asked for a background result, if it still exists.
    fn asker(&mut self, id: &ClientId, state_id: u64) -> Option<&mut ClientFlush> {
        self.clients.get_mut(id).filter(|c| c.state_id == state_id)
    }

    fn on_task(&mut self, done: TaskDone) {
        match done {
            TaskDone::Loaded {
                id,
                state_id,
                after,
                result,
            } => {
                let memory = self.shared.memory.clone();
                let Some(client) = self.asker(&id, state_id) else {
                    return;
                };
                let entries = match result {
                    Ok(entries) => entries,
                    Err(e) => {
                        client.state.load_failed();
                        warn!(client = %id, "cannot read stash: {e}");
                        return;
                    }
                };
                // Stale: memory moved on, the next tick reads again. NoRoom: the
                // memory budget is exhausted; a later tick retries.
                if let Loaded::Held { gap, .. } = client.state.loaded(after, entries, &memory) {
                    if let Some((found, expected)) = gap {
                        warn!(client = %id, "stash has sn {found} where {expected} was expected");
                    }
                    self.send(&id);
                }
            }
            TaskDone::Committed {
                id,
                state_id,
                epoch,
                result,
            } => {
                let Some(client) = self.asker(&id, state_id) else {
                    return;
                };
                if !client.state.commit_finished(epoch) {
                    return; // written under an epoch this instance replaced itself
                }
                match result {
                    Ok(stored) => client.state.committed(stored),
                    Err(RedisOpError::Fenced { detail }) => {
                        info!(client = %id, "fenced while flushing ({detail}); another owner continues");
                        // Dropping the state gives its memory back at once.
                        if let Some(ClientFlush { slot, state, .. }) = self.clients.remove(&id) {
                            drop(state);
                            let shared = self.shared.clone();
                            tokio::spawn(async move { shared.ownership.fenced(&slot).await });
                        }
                        self.publish_remaining();
                    }
                    Err(e) => debug!(client = %id, "cannot record flush progress yet: {e}"),
                }
            }
            TaskDone::Released {
                id,
                state_id,
                epoch,
                release,
            } => {
                let Some(client) = self.asker(&id, state_id) else {
                    return;
                };
                let (released, unflushed_sn) = match release {
                    Release::Released => (true, None),
                    Release::Kept { unflushed_sn } => (false, unflushed_sn),
                };
                let finished = client.state.release_finished(epoch, released, unflushed_sn);
                if let Some((known, stored)) = finished.caught_up {
                    // The stash holds more than was handed over: read it from there.
                    warn!(client = %id, known, stored, "stash holds more than the flusher knew; catching up");
                }
                if finished.released {
                    self.clients.remove(&id);
                    debug!(client = %id, "released");
                    self.publish_remaining();
                }
            }
            TaskDone::Partitions(result) => {
                self.partitions_due = Some(Instant::now() + PARTITIONS_REFRESH);
                match result {
                    Ok(partitions) => self.windows.set_partitions(partitions),
                    Err(e) => debug!(topic = %self.topic, "cannot learn its partition count: {e}"),
                }
            }
        }
    }

    fn publish_remaining(&mut self) {
        self.memory.observe(self.clients.len(), Instant::now());
        self.remaining.send_replace(self.clients.len());
        metrics::gauge!(tally_common::observe::names::PRODUCER_OWNED_CLIENTS)
            .set(self.clients.len() as f64);
    }
}

/// Hands the heap pages freed by departed clients back to the operating system.
/// glibc's allocator keeps them mapped: after 10,000 clients left, the producer's
/// RSS stayed at 113 MiB (10 MiB idle). Released once three quarters had left, it
/// went back to 45–47 MiB (15 idle): the last quarter's connections were freed
/// after the release, and a tracing span slot kept per connection pinned freed
/// pages. Released once the wave of departures has ended ([`MemoryRelease`]) and
/// with no such span (`connection::serve`): 20–22 MiB.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's own heaps; it has
    // no preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
