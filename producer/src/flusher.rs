//! Flushes every owned client's stash to `client_message`, in sn order, with the
//! idempotent `acks=all` producer.
//!
//! Invariants (3 in the architecture doc):
//! - `flushed` advances only over a contiguous run of sns confirmed by Kafka in the
//!   current send generation; the stash is trimmed only up to `flushed`.
//! - A failed or timed-out delivery rewinds sending to `flushed + 1` and resends
//!   everything after it (go-back-N): the counter must see the sns after a gap
//!   again, after the gap is filled. Confirmations of an older generation are
//!   ignored for the same reason.
//! - Messages in memory are exactly the stash's entries from `flushed + 1` on
//!   (handed over after their stash was replicated, or read back from the stash);
//!   anything not contiguous is dropped from memory and read from the stash later.
//! - A client is released only when it is disconnected and everything stored is
//!   flushed and recorded.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tally_common::records::ClientMessage;
use tally_common::redis::RedisOpError;
use tally_common::stash::StashedMessage;
use tally_common::ClientId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::ClientSlot;
use crate::Shared;

/// Messages read from a stash per Redis call when catching up.
const LOAD_CHUNK: usize = 1_000;

/// What connections and the ownership task tell the flusher.
pub enum FlushCommand {
    /// This instance now owns the client at `epoch` (connected here, or adopted).
    Claimed {
        /// The client's slot.
        slot: Arc<ClientSlot>,
        /// The epoch the claim produced.
        epoch: u64,
        /// Last stored sn at the claim.
        sn: u64,
        /// `flushed` at the claim.
        flushed: u64,
        /// Whether a connection serves it (false: adopted, flush to the end).
        connected: bool,
    },
    /// A batch was stashed and replicated.
    Append {
        /// The client's slot.
        slot: Arc<ClientSlot>,
        /// The epoch it was stashed under.
        epoch: u64,
        /// Its first sn.
        first_sn: u64,
        /// Its timestamp.
        ts: i64,
        /// The messages, in sn order.
        messages: Vec<String>,
    },
    /// The connection serving the client closed.
    Disconnected {
        /// The client.
        id: ClientId,
        /// The epoch it had.
        epoch: u64,
    },
}

struct Entry {
    sn: u64,
    msg: Arc<str>,
    ts: i64,
    /// Bytes of the global memory budget this entry holds.
    permits: usize,
}

struct ClientFlush {
    slot: Arc<ClientSlot>,
    /// Unique per state (not per epoch): matches background task results to it.
    state_id: u64,
    epoch: u64,
    /// Highest sn known to be in the stash.
    stored_sn: u64,
    flushed: u64,
    /// `flushed` as last written to Redis.
    committed: u64,
    /// Entries `flushed+1 ..= flushed+len`.
    pending: VecDeque<Entry>,
    next_send: u64,
    /// Confirmed sns above `flushed` (this generation).
    confirmed: BTreeSet<u64>,
    generation: u64,
    connected: bool,
    loading: bool,
    committing: bool,
    releasing: bool,
    last_progress: Instant,
}

impl ClientFlush {
    fn loaded_upto(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }
}

/// (client, sn, send generation, outcome).
type Delivery = (ClientId, u64, u64, Result<(), KafkaError>);

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
        released: bool,
        /// `meta.sn` when the release was refused: more may be stored than this
        /// flusher knows of.
        stored_sn: Option<u64>,
    },
}

/// The flusher task's state.
pub struct Flusher {
    shared: Arc<Shared>,
    producer: FutureProducer,
    topic: String,
    clients: HashMap<ClientId, ClientFlush>,
    /// Clients whose sends stopped on a full producer queue.
    blocked: HashSet<ClientId>,
    deliveries: FuturesUnordered<futures::future::BoxFuture<'static, Delivery>>,
    tasks: JoinSet<TaskDone>,
    /// Clients not yet released, for the graceful shutdown to wait on.
    remaining: watch::Sender<usize>,
    /// Source of state ids and send generations, unique for the flusher's life.
    next_id: u64,
}

impl Flusher {
    /// A flusher writing with `producer`.
    pub fn new(
        shared: Arc<Shared>,
        producer: FutureProducer,
        remaining: watch::Sender<usize>,
    ) -> Self {
        let topic = shared.settings.kafka.client_message_topic.clone();
        Self {
            shared,
            producer,
            topic,
            clients: HashMap::new(),
            blocked: HashSet::new(),
            deliveries: FuturesUnordered::new(),
            tasks: JoinSet::new(),
            remaining,
            next_id: 0,
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
        loop {
            tokio::select! {
                Some(command) = commands.recv() => self.on_command(command),
                Some(delivery) = self.deliveries.next(), if !self.deliveries.is_empty() => self.on_delivery(delivery),
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
                if let Some(client) = self.clients.get_mut(&id) {
                    // Claimed again by this instance (a reconnect): memory still mirrors
                    // the stash, and sends in flight still count. Keep both.
                    if !Arc::ptr_eq(&client.slot, &slot) {
                        // The registry made a new slot (the old one was released):
                        // move the memory accounting to the slot the connection watches.
                        let bytes: usize = client.pending.iter().map(|e| e.msg.len()).sum();
                        client.slot.progress.sub_bytes(bytes);
                        slot.progress.add_bytes(bytes);
                        client.slot = slot;
                    }
                    client.epoch = epoch;
                    client.connected = connected;
                    client.stored_sn = client.stored_sn.max(sn);
                    client.committed = client.committed.max(flushed);
                    if flushed > client.flushed {
                        Self::advance_to(&self.shared, client, flushed);
                    }
                    client.slot.progress.set_flushed(client.flushed);
                    self.send(&id);
                    return;
                }
                slot.progress.set_flushed(flushed);
                self.next_id += 1;
                self.clients.insert(
                    id,
                    ClientFlush {
                        slot,
                        state_id: self.next_id,
                        epoch,
                        stored_sn: sn,
                        flushed,
                        committed: flushed,
                        pending: VecDeque::new(),
                        next_send: flushed + 1,
                        confirmed: BTreeSet::new(),
                        generation: self.next_id,
                        connected,
                        loading: false,
                        committing: false,
                        releasing: false,
                        last_progress: Instant::now(),
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
            } => {
                let id = slot.id.clone();
                let Some(client) = self.clients.get_mut(&id).filter(|c| c.epoch == epoch) else {
                    // Superseded meanwhile: the bytes were counted, give them back.
                    let bytes: usize = messages.iter().map(String::len).sum();
                    self.shared.memory.add_permits(bytes);
                    slot.progress.sub_bytes(bytes);
                    return;
                };
                let last = first_sn + messages.len() as u64 - 1;
                client.stored_sn = client.stored_sn.max(last);
                if first_sn == client.loaded_upto() + 1 {
                    for (i, msg) in messages.into_iter().enumerate() {
                        let permits = msg.len();
                        client.pending.push_back(Entry {
                            sn: first_sn + i as u64,
                            msg: msg.into(),
                            ts,
                            permits,
                        });
                    }
                } else {
                    // Not contiguous with memory (catching up from the stash): the
                    // messages are in the stash and will be read from there.
                    let bytes: usize = messages.iter().map(String::len).sum();
                    self.shared.memory.add_permits(bytes);
                    client.slot.progress.sub_bytes(bytes);
                }
                self.send(&id);
            }
            FlushCommand::Disconnected { id, epoch } => {
                if let Some(client) = self.clients.get_mut(&id).filter(|c| c.epoch == epoch) {
                    client.connected = false;
                }
            }
        }
    }

    /// Sends the client's entries from `next_send` on, until the producer queue is full.
    fn send(&mut self, id: &ClientId) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        while client.next_send <= client.loaded_upto() {
            let index = (client.next_send - client.flushed - 1) as usize;
            let Some(entry) = client.pending.get(index) else {
                break;
            };
            let value = ClientMessage {
                client: id.as_str().to_owned(),
                sn: entry.sn,
                msg: entry.msg.to_string(),
                ts: entry.ts,
            }
            .to_json();
            let record = FutureRecord::to(&self.topic)
                .key(id.as_str())
                .payload(&value)
                .timestamp(entry.ts);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let (id, sn, generation) = (id.clone(), entry.sn, client.generation);
                    self.deliveries.push(Box::pin(async move {
                        let result = match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(e),
                            Err(_) => Err(KafkaError::Canceled),
                        };
                        (id, sn, generation, result)
                    }));
                    client.next_send += 1;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.blocked.insert(id.clone());
                    return;
                }
                Err((e, _)) => {
                    warn!(client = %id, "cannot enqueue for Kafka: {e}");
                    metrics::counter!(tally_common::observe::names::PRODUCER_DELIVERY_ERRORS)
                        .increment(1);
                    self.blocked.insert(id.clone());
                    return;
                }
            }
        }
        self.blocked.remove(id);
    }

    fn on_delivery(&mut self, (id, sn, generation, result): Delivery) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if generation != client.generation || sn <= client.flushed {
            return;
        }
        match result {
            Ok(()) => {
                let before = client.flushed;
                client.confirmed.insert(sn);
                let mut freed = 0usize;
                let mut freed_permits = 0usize;
                while client.confirmed.remove(&(client.flushed + 1)) {
                    client.flushed += 1;
                    if let Some(entry) = client.pending.pop_front() {
                        debug_assert_eq!(entry.sn, client.flushed);
                        freed += entry.msg.len();
                        freed_permits += entry.permits;
                    }
                }
                if freed > 0 || freed_permits > 0 {
                    self.shared.memory.add_permits(freed_permits);
                    client.slot.progress.sub_bytes(freed);
                }
                client.slot.progress.set_flushed(client.flushed);
                client.last_progress = Instant::now();
                metrics::counter!(tally_common::observe::names::PRODUCER_MESSAGES_FLUSHED)
                    .increment(client.flushed - before);
            }
            Err(e) => {
                warn!(client = %id, sn, "delivery failed, resending from {}: {e}", client.flushed + 1);
                metrics::counter!(tally_common::observe::names::PRODUCER_DELIVERY_ERRORS)
                    .increment(1);
                self.next_id += 1;
                Self::rewind(client, self.next_id);
                self.send(&id);
            }
        }
    }

    /// Moves `flushed` up to `to` (confirmed elsewhere), letting go of the entries.
    fn advance_to(shared: &Shared, client: &mut ClientFlush, to: u64) {
        let (mut bytes, mut permits) = (0, 0);
        while client.flushed < to {
            client.flushed += 1;
            if let Some(entry) = client.pending.pop_front() {
                bytes += entry.msg.len();
                permits += entry.permits;
            }
        }
        shared.memory.add_permits(permits);
        client.slot.progress.sub_bytes(bytes);
        client.confirmed.retain(|&sn| sn > to);
        client.next_send = client.next_send.max(to + 1);
    }

    /// Go-back-N: resend everything after `flushed`, in order, as a new generation.
    fn rewind(client: &mut ClientFlush, generation: u64) {
        metrics::counter!(tally_common::observe::names::PRODUCER_REWINDS).increment(1);
        client.generation = generation;
        client.next_send = client.flushed + 1;
        client.confirmed.clear();
        client.last_progress = Instant::now();
    }

    fn on_tick(&mut self) {
        let shared = self.shared.clone();
        let delivery_timeout =
            Duration::from_millis(shared.settings.kafka.delivery_timeout_ms + 5_000);
        if let Some(e) = self.producer.client().fatal_error() {
            // A fatal idempotence error: this producer can send nothing more.
            warn!("Kafka producer fatal error {e:?}; recreating it and resending");
            match tally_common::kafka::idempotent_producer_config(&shared.settings.kafka).create() {
                Ok(producer) => {
                    self.producer = producer;
                    for client in self.clients.values_mut() {
                        self.next_id += 1;
                        Self::rewind(client, self.next_id);
                    }
                    self.blocked.extend(self.clients.keys().cloned());
                }
                Err(e) => warn!("cannot recreate the Kafka producer: {e}"),
            }
        }

        // Every client's un-flushed messages, summed: O(owned clients) per tick.
        let lag: u64 = self
            .clients
            .values()
            .map(|c| c.stored_sn.saturating_sub(c.flushed))
            .sum();
        metrics::gauge!(tally_common::observe::names::PRODUCER_FLUSH_LAG).set(lag as f64);

        let ids: Vec<ClientId> = self.clients.keys().cloned().collect();
        for id in ids {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            // Loss check: in flight without progress past the delivery timeout.
            if client.next_send > client.flushed + 1
                && client.last_progress.elapsed() > delivery_timeout
            {
                warn!(client = %id, "no delivery progress for {delivery_timeout:?}; resending from {}", client.flushed + 1);
                self.next_id += 1;
                Self::rewind(client, self.next_id);
                self.blocked.insert(id.clone());
            }
            // Catch up from the stash.
            if !client.loading
                && client.loaded_upto() < client.stored_sn
                && client.pending.len() < LOAD_CHUNK
            {
                client.loading = true;
                let (store, id, state_id, after) = (
                    shared.store.clone(),
                    id.clone(),
                    client.state_id,
                    client.loaded_upto(),
                );
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
            if !client.committing && client.flushed > client.committed {
                client.committing = true;
                let (store, instance, id, state_id, epoch, flushed) = (
                    shared.store.clone(),
                    shared.instance.clone(),
                    id.clone(),
                    client.state_id,
                    client.epoch,
                    client.flushed,
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
            let drained = client.flushed == client.stored_sn && client.committed == client.flushed;
            if !client.connected && drained && !client.releasing && !client.committing {
                client.releasing = true;
                let (shared, slot, state_id, epoch) = (
                    shared.clone(),
                    client.slot.clone(),
                    client.state_id,
                    client.epoch,
                );
                self.tasks.spawn(async move {
                    let (released, stored_sn) = release(&shared, &slot, epoch).await;
                    TaskDone::Released {
                        id: slot.id.clone(),
                        state_id,
                        epoch,
                        released,
                        stored_sn,
                    }
                });
            }
        }
        let blocked: Vec<ClientId> = self.blocked.iter().cloned().collect();
        for id in blocked {
            self.send(&id);
        }
    }

    fn on_task(&mut self, done: TaskDone) {
        match done {
            TaskDone::Loaded {
                id,
                state_id,
                after,
                result,
            } => {
                let Some(client) = self.clients.get_mut(&id).filter(|c| c.state_id == state_id)
                else {
                    return;
                };
                client.loading = false;
                let entries = match result {
                    Ok(entries) => entries,
                    Err(e) => {
                        warn!(client = %id, "cannot read stash: {e}");
                        return;
                    }
                };
                if after != client.loaded_upto() {
                    return; // memory moved on meanwhile; the next tick reads again
                }
                let bytes: usize = entries.iter().map(|e| e.msg.len()).sum();
                let Ok(permit) = self
                    .shared
                    .memory
                    .clone()
                    .try_acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
                else {
                    return; // memory budget exhausted; retry on a later tick
                };
                permit.forget();
                for (expected, entry) in (after + 1..).zip(entries) {
                    if entry.sn != expected {
                        // Trimmed or missing entries: never invent; stop here.
                        warn!(client = %id, "stash has sn {} where {expected} was expected", entry.sn);
                        break;
                    }
                    client.slot.progress.add_bytes(entry.msg.len());
                    client.pending.push_back(Entry {
                        sn: entry.sn,
                        permits: entry.msg.len(),
                        msg: entry.msg.into(),
                        ts: entry.ts,
                    });
                }
                // Give back the budget of entries not kept.
                let kept: usize = client
                    .pending
                    .iter()
                    .filter(|e| e.sn > after)
                    .map(|e| e.permits)
                    .sum();
                self.shared.memory.add_permits(bytes.saturating_sub(kept));
                self.send(&id);
            }
            TaskDone::Committed {
                id,
                state_id,
                epoch,
                result,
            } => {
                let Some(client) = self.clients.get_mut(&id).filter(|c| c.state_id == state_id)
                else {
                    return;
                };
                client.committing = false;
                if epoch != client.epoch {
                    return; // written under an epoch this instance replaced itself
                }
                match result {
                    Ok(stored) => client.committed = client.committed.max(stored),
                    Err(RedisOpError::Fenced { detail }) => {
                        info!(client = %id, "fenced while flushing ({detail}); another owner continues");
                        if let Some(old) = self.clients.remove(&id) {
                            self.drop_memory(&old);
                            let shared = self.shared.clone();
                            tokio::spawn(
                                async move { forget_if_not_owner(&shared, &old.slot).await },
                            );
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
                released,
                stored_sn,
            } => {
                let Some(client) = self.clients.get_mut(&id).filter(|c| c.state_id == state_id)
                else {
                    return;
                };
                client.releasing = false;
                if let Some(sn) = stored_sn.filter(|&sn| sn > client.stored_sn) {
                    // The stash holds more than was handed over: read it from there.
                    warn!(client = %id, known = client.stored_sn, stored = sn, "stash holds more than the flusher knew; catching up");
                    client.stored_sn = sn;
                }
                if released && epoch == client.epoch {
                    if let Some(old) = self.clients.remove(&id) {
                        self.drop_memory(&old);
                    }
                    debug!(client = %id, "released");
                    self.publish_remaining();
                }
            }
        }
    }

    fn drop_memory(&self, client: &ClientFlush) {
        let permits: usize = client.pending.iter().map(|e| e.permits).sum();
        let bytes: usize = client.pending.iter().map(|e| e.msg.len()).sum();
        self.shared.memory.add_permits(permits);
        client.slot.progress.sub_bytes(bytes);
    }

    fn publish_remaining(&self) {
        self.remaining.send_replace(self.clients.len());
        metrics::gauge!(tally_common::observe::names::PRODUCER_OWNED_CLIENTS)
            .set(self.clients.len() as f64);
    }
}

/// Releases a drained client and drops it from this instance's ownership set,
/// unless a connection attached meanwhile.
/// Returns whether it was released and, when the stash still held unflushed
/// messages, the stored `sn`.
async fn release(shared: &Shared, slot: &Arc<ClientSlot>, epoch: u64) -> (bool, Option<u64>) {
    let _order = slot.ownership.lock().await;
    if slot.is_connected() {
        return (false, None);
    }
    match shared
        .store
        .release(&slot.id, &shared.instance, epoch)
        .await
    {
        Ok(true) => {
            if let Err(e) = shared.store.remove_owned(&shared.instance, &slot.id).await {
                debug!(client = %slot.id, "cannot update ownership set: {e}");
            }
            shared.registry.remove_if_idle(slot);
            (true, None)
        }
        Ok(false) => {
            let meta = shared.store.meta(&slot.id).await.ok();
            let unflushed = meta.filter(|m| m.owner == shared.instance && m.sn > m.flushed);
            (false, unflushed.map(|m| m.sn))
        }
        Err(e) => {
            debug!(client = %slot.id, "cannot release yet: {e}");
            (false, None)
        }
    }
}

/// Drops a client this instance lost from its ownership set, if it really is owned
/// elsewhere now.
pub async fn forget_if_not_owner(shared: &Shared, slot: &Arc<ClientSlot>) {
    let _order = slot.ownership.lock().await;
    match shared.store.meta(&slot.id).await {
        Ok(meta) if meta.owner != shared.instance => {
            let _ = shared.store.remove_owned(&shared.instance, &slot.id).await;
            shared.registry.remove_if_idle(slot);
        }
        _ => {}
    }
}
