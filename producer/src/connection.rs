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
//!
//! The same code serves plain TCP and TLS ([`IngestStream`]); with TLS, no line is
//! read before the handshake completed, and with `producer.auth.mode = "mtls"` no
//! id is claimed that the client certificate does not name. With `"token"` or
//! `"mtls"`, a connection whose first line is not an accepted HELLO (whatever the
//! line: a message, garbage, an over-long or malformed line) gets
//! `ERR unauthorized` and closes: no connection lives on without an identity.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_common::redis::RedisOpError;
use tally_common::settings::AuthMode;
use tally_common::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::limits::AddressSlot;
use crate::protocol::{self, LineReader, ProtocolError, Request};
use crate::registry::ClientSlot;
use crate::shared::FlushCommand;
use crate::shared::{now_ms, Shared};
use crate::tls::ServerTls;

/// A client's byte stream: plain TCP, or TLS over it. The line protocol is the
/// same on both; only how to wait for bytes without a buffer differs.
pub trait IngestStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits until a read would not block, without holding a read buffer (so idle
    /// connections hold none).
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl IngestStream for TcpStream {
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl IngestStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn ready_to_read(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        let (socket, tls) = self.get_ref();
        // rustls may hold decrypted bytes already (several records came in one
        // read): then a read finds them at once, and the socket may never become
        // readable for them.
        let buffered = !tls.wants_read();
        async move {
            if !buffered {
                socket.readable().await?;
            }
            Ok(())
        }
    }
}

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

struct Connection<S> {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn_id: u64,
    reader: LineReader,
    /// Reads go through to the stream; replies are buffered until flushed.
    stream: BufWriter<S>,
    /// The SAN dNSNames of the client's certificate (TLS with client
    /// certificates); with `producer.auth.mode = "mtls"` the ids it may use.
    certificate_names: Vec<String>,
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
/// closes it; nothing of it is read. Over TLS the handshake came first, so the
/// client can read the `ERR`.
async fn refuse<S: AsyncWrite + Unpin>(mut socket: S, code: &'static str, detail: String) {
    metrics::counter!(tally_common::observe::names::PRODUCER_REFUSED_CONNECTIONS, "reason" => code)
        .increment(1);
    debug!(code, "connection refused: {detail}");
    let reply = protocol::refused(code, &detail);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        let _ = socket.write_all(reply.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// What the accept loop knows of a new connection.
pub struct Accepted {
    /// The socket.
    pub socket: TcpStream,
    /// Its peer address.
    pub peer: SocketAddr,
    /// This process's number for it.
    pub conn_id: u64,
    /// Its share of the per-address limit; `None`: the address holds
    /// `producer.max_connections_per_address` connections already.
    pub address_slot: Option<AddressSlot>,
}

/// Takes a new connection from accept to close: the TLS handshake when the
/// listener has TLS, then the per-address refusal or the line protocol. The
/// first-line deadline starts at accept, so a stalled handshake runs into it too.
pub async fn handle(
    shared: Arc<Shared>,
    tls: Option<Arc<ServerTls>>,
    accepted: Accepted,
    shutdown: CancellationToken,
) {
    let first_line_due = tokio::time::Instant::now()
        + Duration::from_millis(shared.settings.producer.first_line_timeout_ms);
    let Accepted {
        socket,
        peer,
        conn_id,
        address_slot,
    } = accepted;
    let _ = socket.set_nodelay(true);
    let ends = Ends {
        peer,
        conn_id,
        address_slot,
        first_line_due,
        shutdown,
    };
    match tls {
        None => ends.open(shared, socket, Vec::new()).await,
        // Boxed: every connection's task is as large as its largest branch, and
        // the TLS branch (handshake and rustls state) is several KiB larger; inline,
        // it cost every plain connection that much too (10,000 idle connections:
        // 75 -> 140 MiB).
        Some(tls) => Box::pin(open_tls(shared, tls, socket, ends)).await,
    }
}

/// The TLS handshake, then the line protocol over TLS.
async fn open_tls(shared: Arc<Shared>, tls: Arc<ServerTls>, socket: TcpStream, ends: Ends) {
    // A shutdown does not wait for handshakes still under way.
    let done = tokio::select! {
        done = tls.handshake(socket, ends.first_line_due) => done,
        () = ends.shutdown.cancelled() => None,
    };
    if let Some((stream, names)) = done {
        ends.open(shared, stream, names).await;
    }
}

/// What a connection carries from accept to the line protocol, whatever its stream.
struct Ends {
    peer: SocketAddr,
    conn_id: u64,
    address_slot: Option<AddressSlot>,
    first_line_due: tokio::time::Instant,
    shutdown: CancellationToken,
}

impl Ends {
    /// The per-address refusal, or the line protocol until the connection closes.
    async fn open<S: IngestStream>(
        self,
        shared: Arc<Shared>,
        stream: S,
        certificate_names: Vec<String>,
    ) {
        let ip = self.peer.ip();
        if shared.auth_failures.is_shut_out(ip, Instant::now()) {
            let detail = format!(
                "{ip} made producer.max_auth_failures_per_minute ({}) failed authentications this minute",
                shared.settings.producer.max_auth_failures_per_minute
            );
            refuse(stream, protocol::TOO_MANY_AUTH_FAILURES, detail).await;
            return;
        }
        let Some(address_slot) = self.address_slot else {
            let detail = format!(
                "{} holds producer.max_connections_per_address ({}) connections already",
                self.peer.ip(),
                shared.settings.producer.max_connections_per_address
            );
            refuse(stream, protocol::TOO_MANY_CONNECTIONS, detail).await;
            return;
        };
        serve(
            shared,
            stream,
            self.peer,
            self.conn_id,
            certificate_names,
            self.first_line_due,
            self.shutdown,
        )
        .await;
        drop(address_slot);
    }
}

/// Serves one accepted socket until it closes.
async fn serve<S: IngestStream>(
    shared: Arc<Shared>,
    socket: S,
    peer: SocketAddr,
    conn_id: u64,
    certificate_names: Vec<String>,
    first_line_due: tokio::time::Instant,
    shutdown: CancellationToken,
) {
    // A debug span, not info: tracing-subscriber's registry keeps the small
    // allocations of every span slot it ever used, so with an info span per
    // connection the freed pages of 10,000 departed clients stayed pinned by them
    // (RSS 40–41 MiB after they left, 20–22 without; 15 idle). The info and warn
    // events of a connection carry its client and peer themselves.
    let span = tracing::debug_span!("connection", %peer, client = tracing::field::Empty);
    async move {
        let mut conn = Connection {
            reader: LineReader::new(shared.settings.producer.max_line_bytes),
            shared,
            peer,
            conn_id,
            stream: BufWriter::with_capacity(REPLY_BUFFER, socket),
            certificate_names,
            identity: None,
            superseded: CancellationToken::new(),
            shutdown,
            carried: None,
            deferred_err: None,
            first_line_due: Some(first_line_due),
        };
        metrics::gauge!(tally_common::observe::names::PRODUCER_CONNECTIONS).increment(1.0);
        match conn.run().await {
            Ok(()) => debug!("connection closed"),
            Err(e) => debug!("connection ended: {e}"),
        }
        let _ = conn.stream.flush().await;
        let _ = conn.stream.shutdown().await;
        conn.detach().await;
        metrics::gauge!(tally_common::observe::names::PRODUCER_CONNECTIONS).decrement(1.0);
    }
    .instrument(span)
    .await
}

impl<S: IngestStream> Connection<S> {
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
                                if self.ids_from_certificate() {
                                    return self
                                        .unauthorized(
                                            "a HELLO with an id the client certificate names must come first",
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
                            if self.ids_from_certificate()
                                && !tally_common::auth::certificate_admits(
                                    &self.certificate_names,
                                    &id,
                                )
                            {
                                self.write(&replies).await?;
                                return self
                                    .unauthorized(&format!(
                                        "the client certificate does not name client {id}"
                                    ))
                                    .await;
                            }
                            if !self.claim(id, true, &mut replies).await? {
                                self.write(&replies).await?;
                                return Ok(());
                            }
                        }
                        Request::Invalid(error) => {
                            metrics::counter!(tally_common::observe::names::PRODUCER_REJECTED_LINES, "reason" => reason(&error)).increment(1);
                            let before_hello = self.identity.is_none() && self.must_authenticate();
                            let err = match rejection(&error, before_hello) {
                                Rejection::Refuse(detail) => {
                                    self.write(&replies).await?;
                                    return self.unauthorized(&detail).await;
                                }
                                Rejection::Answer(err) => err,
                            };
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
                let (reader, stream) = (&mut self.reader, &mut self.stream);
                let read = async move {
                    if reader.is_empty() {
                        stream.get_ref().ready_to_read().await?;
                    }
                    reader.fill(stream).await
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

    /// Whether a connection must prove its id before anything else
    /// (`producer.auth.mode` `"token"` or `"mtls"`).
    fn must_authenticate(&self) -> bool {
        self.shared.auth.is_some() || self.ids_from_certificate()
    }

    /// Whether the client certificate decides which ids this connection may use
    /// (`producer.auth.mode = "mtls"`).
    fn ids_from_certificate(&self) -> bool {
        self.shared.settings.producer.auth.mode == AuthMode::Mtls
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
        self.shared
            .auth_failures
            .record(self.peer.ip(), Instant::now());
        self.write(&protocol::refused(protocol::UNAUTHORIZED, detail))
            .await?;
        Ok(())
    }

    async fn write(&mut self, text: &str) -> Result<(), ConnectionEnd> {
        if !text.is_empty() {
            self.stream.write_all(text.as_bytes()).await?;
            self.stream.flush().await?;
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
                warn!(client = %id, peer = %self.peer, "claim failed: {e}");
                shared.ownership.detach(&slot, self.conn_id);
                replies.push_str(&protocol::unavailable(&e.to_string()));
                return Ok(false);
            }
        };
        info!(client = %id, peer = %self.peer, epoch = claim.epoch, last_sn = claim.sn, flushed = claim.flushed, "client claimed");
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
                        info!(client = %identity.id, peer = %self.peer, "{e}");
                        replies.push_str(&protocol::superseded(
                            "another connection owns this client id",
                        ));
                    }
                    other => {
                        warn!(client = %identity.id, peer = %self.peer, "stash failed: {other}");
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

/// How a connection answers a line the protocol rejects.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// `ERR unauthorized <detail>`; the connection closes.
    Refuse(String),
    /// This `ERR` line; the connection stays open.
    Answer(String),
}

/// A rejected line gets its `ERR` and the connection goes on, unless the
/// connection must still authenticate (`before_hello`: `producer.auth` requires a
/// HELLO with credentials and none was accepted yet). Then it is refused like any
/// other first line that is not such a HELLO: a garbage, over-long or malformed
/// first line must not take an unauthenticated connection past the first-line
/// deadline (which ends at the first complete line) into a connection that stays
/// open without an identity for as long as it keeps sending.
fn rejection(error: &ProtocolError, before_hello: bool) -> Rejection {
    if before_hello {
        Rejection::Refuse(format!(
            "the first line must be a HELLO with the client's credentials; it was refused as {error}"
        ))
    } else {
        Rejection::Answer(protocol::err(error))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_line_closes_only_a_connection_that_must_still_authenticate() {
        let errors = [
            ProtocolError::TooLong { max: 8 },
            ProtocolError::InvalidUtf8 { valid_up_to: 0 },
            ProtocolError::BadHelloId(tally_common::keys::ClientIdError::Empty),
            ProtocolError::HelloTooLate,
            ProtocolError::BadToken,
        ];
        for error in errors {
            assert_eq!(
                rejection(&error, false),
                Rejection::Answer(protocol::err(&error)),
                "{error}"
            );
            match rejection(&error, true) {
                Rejection::Refuse(detail) => {
                    let reply = protocol::refused(protocol::UNAUTHORIZED, &detail);
                    assert!(protocol::is_refusal(&reply), "{reply}");
                    assert!(reply.contains(reason(&error)), "{reply} names {error}");
                    assert_eq!(reply.matches('\n').count(), 1, "{reply}");
                }
                other => panic!("{error} before HELLO: {other:?}"),
            }
        }
    }
}
