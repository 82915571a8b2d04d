//! One client connection: read a batch of lines, stash it (one Lua call + `WAIT`),
//! ACK, hand it to the flusher.
//!
//! Replies are in line order: a batch ends at a rejected line, so the `ACK` of the
//! messages before it is written before its `ERR`.
//!
//! Invariant: `ACK n` is written only after the stash holding n was confirmed on a
//! replica, and a batch reaches the flusher only after that (invariant 2). When the
//! stash write fails or its outcome is unknown the client gets `ERR unavailable` and
//! the connection closes; it resumes with HELLO from the stored `last_sn`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_common::redis::RedisOpError;
use tally_common::ClientId;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::protocol::{self, LineReader, ProtocolError, Request};
use crate::registry::ClientSlot;
use crate::shared::FlushCommand;
use crate::shared::{now_ms, Shared};

/// Longest a claim (ownership lock, ownership set, claim script + `WAIT`) may take.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of replies buffered per connection (`ACK n`, `ERR …` lines are short;
/// a larger write goes to the socket directly).
const REPLY_BUFFER: usize = 512;

/// Why a connection ended early; logged, never sent anywhere else.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed: {0}")]
    Closed(&'static str),
}

struct Identity {
    id: ClientId,
    slot: Arc<ClientSlot>,
    epoch: u64,
    last_sn: u64,
}

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn_id: u64,
    reader: LineReader,
    read_half: OwnedReadHalf,
    writer: BufWriter<OwnedWriteHalf>,
    identity: Option<Identity>,
    /// Cancelled when a newer connection with the same id attaches.
    superseded: CancellationToken,
    shutdown: CancellationToken,
    /// A line read while the previous batch was full.
    carried: Option<String>,
    /// The `ERR` for a line rejected after messages of the current batch: sent
    /// after that batch's `ACK`, so replies stay in line order.
    deferred_err: Option<String>,
    /// Until the first complete line arrived: when it must have (abuse limit).
    first_line_due: Option<tokio::time::Instant>,
}

/// How long a refused connection's `ERR` line may take to be written.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers a connection an abuse limit refused with `ERR <code> <detail>` and
/// closes it; nothing of it is read. `permit` (its connection slot) is held until
/// then.
pub async fn refuse<P: Send>(mut socket: TcpStream, code: &'static str, detail: String, permit: P) {
    metrics::counter!(tally_common::observe::names::PRODUCER_REFUSED_CONNECTIONS, "reason" => code)
        .increment(1);
    debug!(code, "connection refused: {detail}");
    let reply = protocol::refused(code, &detail);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = socket.write_all(reply.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
    drop(permit);
}

/// Serves one accepted socket until it closes.
pub async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("connection", %peer, client = tracing::field::Empty);
    async move {
        let _ = socket.set_nodelay(true);
        let (read_half, write_half) = socket.into_split();
        let shared_first_line_timeout_ms = shared.settings.producer.first_line_timeout_ms;
        let mut conn = Connection {
            reader: LineReader::new(shared.settings.producer.max_line_bytes),
            shared,
            peer,
            conn_id,
            read_half,
            writer: BufWriter::with_capacity(REPLY_BUFFER, write_half),
            identity: None,
            superseded: CancellationToken::new(),
            shutdown,
            carried: None,
            deferred_err: None,
            first_line_due: Some(
                tokio::time::Instant::now() + Duration::from_millis(shared_first_line_timeout_ms),
            ),
        };
        metrics::gauge!(tally_common::observe::names::PRODUCER_CONNECTIONS).increment(1.0);
        match conn.run().await {
            Ok(()) => debug!("connection closed"),
            Err(e) => debug!("connection ended: {e}"),
        }
        let _ = conn.writer.flush().await;
        let _ = conn.writer.shutdown().await;
        conn.detach().await;
        metrics::gauge!(tally_common::observe::names::PRODUCER_CONNECTIONS).decrement(1.0);
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnectionEnd> {
        let settings = &self.shared.settings.producer;
        let (max_lines, max_bytes) = (settings.batch_max_lines, settings.batch_max_bytes);
        let idle = Duration::from_millis(settings.idle_timeout_ms);
        loop {
            let mut batch: Vec<String> = Vec::new();
            let mut batch_bytes = 0usize;
            let mut replies = self.deferred_err.take().unwrap_or_default();
            // Gather what is already buffered, reading only while nothing is.
            loop {
                if let Some(line) = self.carried.take() {
                    batch_bytes += line.len();
                    batch.push(line);
                }
                while batch.len() < max_lines {
                    let Some(line) = self.reader.next_line() else {
                        break;
                    };
                    self.first_line_due = None;
                    let hello_allowed = self.identity.is_none();
                    match protocol::parse(line, self.reader_max(), hello_allowed) {
                        Request::Message(text) => {
                            if self.identity.is_none() {
                                if self.shared.auth.is_some() {
                                    return self
                                        .unauthorized(
                                            "a HELLO with the client's token must come first",
                                        )
                                        .await;
                                }
                                let id = ClientId::from_peer(self.peer);
                                if !self.claim(id, false, &mut replies).await? {
                                    self.write(&replies).await?;
                                    return Ok(());
                                }
                            }
                            if !batch.is_empty() && batch_bytes + text.len() > max_bytes {
                                self.carried = Some(text);
                                break;
                            }
                            batch_bytes += text.len();
                            batch.push(text);
                        }
                        Request::Hello { id, token } => {
                            if let Some(secrets) = &self.shared.auth {
                                if !token.is_some_and(|t| secrets.admits(&id, &t)) {
                                    self.write(&replies).await?;
                                    return self
                                        .unauthorized(&format!("no valid token for client {id}"))
                                        .await;
                                }
                            }
                            if !self.claim(id, true, &mut replies).await? {
                                self.write(&replies).await?;
                                return Ok(());
                            }
                        }
                        Request::Invalid(error) => {
                            metrics::counter!(tally_common::observe::names::PRODUCER_REJECTED_LINES, "reason" => reason(&error)).increment(1);
                            let err = protocol::err(&error);
                            if batch.is_empty() {
                                replies.push_str(&err);
                            } else {
                                // Replies follow the lines: the messages before this
                                // line are stashed and ACKed first (the batch ends
                                // here), then it gets its ERR.
                                self.deferred_err = Some(err);
                                break;
                            }
                        }
                    }
                }
                if !batch.is_empty() || self.carried.is_some() || self.reader.is_done() {
                    break;
                }
                if self.reader.at_eof() {
                    // A final partial line is already a line; nothing else will come.
                    continue;
                }
                self.write(&replies).await?;
                replies.clear();
                // Idle connections hold no read buffer: wait until bytes arrive,
                // then allocate one (see `LineReader`).
                self.reader.release_if_empty();
                let (reader, read_half) = (&mut self.reader, &mut self.read_half);
                let read = async move {
                    if reader.is_empty() {
                        read_half.readable().await?;
                    }
                    reader.fill(read_half).await
                };
                // Before its first complete line, a connection waits at most until
                // the first-line deadline, however it trickles bytes.
                let read_until = match self.first_line_due {
                    Some(due) => due.min(tokio::time::Instant::now() + idle),
                    None => tokio::time::Instant::now() + idle,
                };
                tokio::select! {
                    read = tokio::time::timeout_at(read_until, read) => {
                        match read {
                            Ok(result) => { result?; }
                            Err(_) if self.first_line_due.is_some_and(|due| tokio::time::Instant::now() >= due) => {
                                let timeout = self.shared.settings.producer.first_line_timeout_ms;
                                metrics::counter!(tally_common::observe::names::PRODUCER_REFUSED_CONNECTIONS, "reason" => protocol::FIRST_LINE_TIMEOUT).increment(1);
                                self.write(&protocol::refused(
                                    protocol::FIRST_LINE_TIMEOUT,
                                    &format!("no complete line within producer.first_line_timeout_ms ({timeout} ms)"),
                                )).await?;
                                return Err(ConnectionEnd::Closed("first line timeout"));
                            }
                            Err(_) => return Err(ConnectionEnd::Closed("idle timeout")),
                        }
                    }
                    () = self.superseded.cancelled() => {
                        self.write(&protocol::superseded("the same client id connected again")).await?;
                        return Err(ConnectionEnd::Closed("superseded"));
                    }
                    () = self.shutdown.cancelled() => return Err(ConnectionEnd::Closed("producer shutting down")),
                }
            }
            if !batch.is_empty() && !self.stash(batch, batch_bytes, &mut replies).await? {
                self.write(&replies).await?;
                return Ok(());
            }
            self.write(&replies).await?;
            if self.reader.is_done() && self.carried.is_none() && self.deferred_err.is_none() {
                return Ok(());
            }
        }
    }

    fn reader_max(&self) -> usize {
        self.shared.settings.producer.max_line_bytes
    }

    /// Answers `ERR unauthorized <detail>`, counts it, and ends the connection:
    /// nothing of it was claimed or stored.
    async fn unauthorized(&mut self, detail: &str) -> Result<(), ConnectionEnd> {
        metrics::counter!(
            tally_common::observe::names::PRODUCER_REFUSED_CONNECTIONS,
            "reason" => protocol::UNAUTHORIZED
        )
        .increment(1);
        debug!("unauthorized: {detail}");
        self.write(&protocol::refused(protocol::UNAUTHORIZED, detail))
            .await?;
        Ok(())
    }

    async fn write(&mut self, text: &str) -> Result<(), ConnectionEnd> {
        if !text.is_empty() {
            self.writer.write_all(text.as_bytes()).await?;
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Takes ownership of `id` for this connection (HELLO, or the first message of
    /// a client without HELLO). False when the connection must close.
    async fn claim(
        &mut self,
        id: ClientId,
        said_hello: bool,
        replies: &mut String,
    ) -> Result<bool, ConnectionEnd> {
        tracing::Span::current().record("client", id.as_str());
        let shared = self.shared.clone();
        let slot = shared
            .ownership
            .attach(&id, self.conn_id, self.superseded.clone());
        // Bounded: a Redis call stuck in a failover must become `ERR unavailable`
        // (the client retries), never a connection that silently stops answering.
        let claimed = tokio::time::timeout(CLAIM_TIMEOUT, shared.ownership.claim(&slot))
            .await
            .unwrap_or_else(|_| {
                Err(RedisOpError::Result(format!(
                    "claim not confirmed within {CLAIM_TIMEOUT:?}"
                )))
            });
        let claim = match claimed {
            Ok(claim) => claim,
            Err(e) => {
                warn!(client = %id, "claim failed: {e}");
                shared.ownership.detach(&slot, self.conn_id);
                replies.push_str(&protocol::unavailable(&e.to_string()));
                return Ok(false);
            }
        };
        info!(client = %id, epoch = claim.epoch, last_sn = claim.sn, flushed = claim.flushed, "client claimed");
        slot.progress.set_flushed(claim.flushed);
        let handed = shared
            .flusher
            .send(FlushCommand::Claimed {
                slot: slot.clone(),
                epoch: claim.epoch,
                sn: claim.sn,
                flushed: claim.flushed,
                connected: true,
            })
            .await;
        if handed.is_err() {
            replies.push_str(&protocol::unavailable("producer shutting down"));
            return Ok(false);
        }
        if said_hello {
            replies.push_str(&protocol::welcome(&id, claim.sn));
        }
        self.identity = Some(Identity {
            id,
            slot,
            epoch: claim.epoch,
            last_sn: claim.sn,
        });
        Ok(true)
    }

    /// Stashes a batch and ACKs it; false when the connection must close.
    async fn stash(
        &mut self,
        batch: Vec<String>,
        bytes: usize,
        replies: &mut String,
    ) -> Result<bool, ConnectionEnd> {
        let shared = self.shared.clone();
        let Some(identity) = self.identity.as_mut() else {
            return Ok(false);
        };
        // Backpressure: wait (not reading the socket) until the backlog has room.
        let limits = &shared.settings.producer;
        let mut progress = identity.slot.progress.subscribe();
        let mut freed = identity.slot.memory.subscribe();
        let count = batch.len() as u64;
        loop {
            let flushed = identity.slot.progress.flushed();
            let backlog = identity.last_sn.saturating_sub(flushed);
            let memory = identity.slot.memory.bytes();
            if backlog + count <= limits.client_backlog_messages
                && memory + bytes <= limits.client_backlog_bytes
            {
                break;
            }
            metrics::counter!(tally_common::observe::names::PRODUCER_BACKPRESSURE_WAITS)
                .increment(1);
            tokio::select! {
                changed = progress.changed() => { if changed.is_err() { return Ok(false); } }
                changed = freed.changed() => { if changed.is_err() { return Ok(false); } }
                () = self.superseded.cancelled() => {
                    replies.push_str(&protocol::superseded("the same client id connected again"));
                    return Ok(false);
                }
                () = self.shutdown.cancelled() => return Ok(false),
            }
        }
        // Held until the flusher lets go of the messages (or this batch fails).
        let Ok(mut memory) = shared.memory.reserve(bytes).await else {
            return Ok(false);
        };

        let started = Instant::now();
        let ts = now_ms();
        let result = shared
            .store
            .append(
                &identity.id,
                &shared.instance,
                identity.epoch,
                identity.last_sn,
                ts,
                &batch,
            )
            .await;
        match result {
            Ok(first_sn) => {
                let last = first_sn + count - 1;
                identity.last_sn = last;
                metrics::histogram!(tally_common::observe::names::PRODUCER_ACK_LATENCY)
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!(tally_common::observe::names::PRODUCER_STASH_BATCH_LINES)
                    .record(count as f64);
                metrics::counter!(tally_common::observe::names::PRODUCER_MESSAGES_ACKED)
                    .increment(count);
                replies.push_str(&protocol::ack(last));
                memory.charge_to(&identity.slot.memory);
                // ACK first: it depends only on the replicated stash, not on how
                // quickly the flusher takes the batch.
                let (id, slot, epoch) =
                    (identity.id.clone(), identity.slot.clone(), identity.epoch);
                let ack = std::mem::take(replies);
                let written = self.write(&ack).await;
                tracing::trace!(client = %id, last, "acked");
                // Hand over even if the client vanished: the batch is stored, and the
                // flusher must know it exists to flush it and not release too early.
                let handed = shared
                    .flusher
                    .send(FlushCommand::Append {
                        slot,
                        epoch,
                        first_sn,
                        ts,
                        messages: batch,
                        memory,
                    })
                    .await;
                // The batch is in the stash: if the flusher is gone (shutdown), the
                // next owner flushes it from there.
                written?;
                Ok(handed.is_ok())
            }
            Err(e) => {
                drop(memory);
                match e {
                    RedisOpError::Fenced { .. } => {
                        info!(client = %identity.id, "{e}");
                        replies.push_str(&protocol::superseded(
                            "another connection owns this client id",
                        ));
                    }
                    other => {
                        warn!(client = %identity.id, "stash failed: {other}");
                        metrics::counter!(tally_common::observe::names::PRODUCER_STASH_ERRORS)
                            .increment(1);
                        replies.push_str(&protocol::unavailable(&other.to_string()));
                    }
                }
                Ok(false)
            }
        }
    }

    async fn detach(&mut self) {
        if let Some(identity) = self.identity.take() {
            self.shared.ownership.detach(&identity.slot, self.conn_id);
            let _ = self
                .shared
                .flusher
                .send(FlushCommand::Disconnected {
                    id: identity.id,
                    epoch: identity.epoch,
                })
                .await;
        }
    }
}

fn reason(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::TooLong { .. } => "too_long",
        ProtocolError::InvalidUtf8 { .. } => "invalid_utf8",
        ProtocolError::BadHelloId(_) | ProtocolError::HelloTooLate | ProtocolError::BadToken => {
            "bad_hello"
        }
    }
}
