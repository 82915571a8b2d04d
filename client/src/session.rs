//! A client session with the producer: says HELLO, numbers its own lines, keeps
//! every un-ACKed line in a bounded window, and on `ERR unavailable`,
//! `ERR superseded` or a lost connection reconnects (rotating over the producer
//! addresses) and resends from `last_sn + 1`, so every line is stored exactly once.
//!
//! Invariant: the session knows the sn of every line it sends, because it only sends
//! lines that [`tally_common::protocol::message_line`] accepts and the producer
//! stores each such line as the next sn. A line leaves the window only when an ACK
//! or a `WELCOME` covers its sn; so whatever the producer did not confirm is still
//! here to resend, and nothing it confirmed is sent twice on purpose.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use hdrhistogram::Histogram;
use tally_common::backoff::Backoff;
use tally_common::ClientId;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// One message line, shared cheaply between the source and the window.
pub type Line = Arc<str>;

/// Where a session's lines come from, in order.
pub trait LineSource: Send {
    /// The next line, or `None` after the last one. May wait (stdin); must be
    /// cancel-safe: a line is only taken when the future completes.
    fn next_line(&mut self) -> impl Future<Output = Option<Line>> + Send;

    /// Skips up to `n` lines (resuming a list whose first lines are stored
    /// already) and returns how many there were.
    fn skip(&mut self, n: u64) -> impl Future<Output = u64> + Send {
        async move {
            let mut skipped = 0;
            while skipped < n && self.next_line().await.is_some() {
                skipped += 1;
            }
            skipped
        }
    }
}

/// A fixed list of lines, `repeat` times over.
#[derive(Debug, Clone)]
pub struct ListSource {
    lines: Arc<[Line]>,
    repeat: u64,
    position: u64,
}

impl ListSource {
    /// Every line of `lines`, `repeat` times over.
    pub fn new(lines: Arc<[Line]>, repeat: u64) -> Self {
        Self {
            lines,
            repeat,
            position: 0,
        }
    }

    /// How many lines the source yields in all.
    pub fn total(&self) -> u64 {
        self.lines.len() as u64 * self.repeat
    }
}

impl LineSource for ListSource {
    fn next_line(&mut self) -> impl Future<Output = Option<Line>> + Send {
        let line = (self.position < self.total()).then(|| {
            let index = (self.position % self.lines.len() as u64) as usize;
            self.position += 1;
            self.lines[index].clone()
        });
        std::future::ready(line)
    }

    fn skip(&mut self, n: u64) -> impl Future<Output = u64> + Send {
        let skipped = n.min(self.total() - self.position);
        self.position += skipped;
        std::future::ready(skipped)
    }
}

/// How the source's lines map to sns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// The source's i-th line is sn i (a list replayed under its own client id):
    /// if the producer already stores `last_sn` messages for the id, the first
    /// `last_sn` lines are skipped, so an interrupted run resumes.
    FromOne,
    /// The source's first line follows whatever the producer stores for the id
    /// (appending to an existing client).
    Append,
}

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Most lines sent but not yet ACKed (also the resend buffer's size).
    pub window: usize,
    /// Lines per second, if limited.
    pub rate: Option<f64>,
    /// A connection that gets no reply for this long while lines are outstanding
    /// is abandoned and the session reconnects.
    pub stall_timeout: Duration,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
    /// How the lines map to sns.
    pub numbering: Numbering,
    /// The client's token, sent with its HELLO (`producer.auth.mode = "token"`).
    pub token: Option<String>,
    /// Speak TLS to the producer (`[producer.tls]`); `None`: plain TCP.
    pub tls: Option<Arc<SessionTls>>,
}

/// How a session speaks TLS: what it trusts and presents, and the name it checks
/// the producer's certificate against.
#[derive(Clone)]
pub struct SessionTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for SessionTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl SessionTls {
    /// TLS with `config`, checking the producer's certificate against
    /// `server_name`, or when `None` against the host of each producer address
    /// (an IP address is checked against the certificate's IP SANs).
    pub fn new(
        config: Arc<tokio_rustls::rustls::ClientConfig>,
        server_name: Option<&str>,
    ) -> Result<Self, String> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("server name {name:?}: {e}"))
            })
            .transpose()?;
        Ok(Self {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// The name the certificate of the producer at `addr` must carry.
    fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| {
            format!("{addr}: no server name to check the certificate against ({e}); give one")
        })
    }
}

/// The TLS failure behind an I/O error, if one is: the certificates do not fit
/// (ours or the producer's), which retrying cannot mend.
fn tls_failure(error: &std::io::Error) -> Option<String> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        .map(ToString::to_string)
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            window: 10_000,
            rate: None,
            stall_timeout: STALL_TIMEOUT,
            deadline: None,
            numbering: Numbering::FromOne,
            token: None,
            tls: None,
        }
    }
}

/// How long a connection may go without an ACK while messages are outstanding
/// before the session gives up on it and reconnects.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Counters shared by many sessions, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Lines written to a socket (resends included).
    pub sent: AtomicU64,
    /// Lines ACKed.
    pub acked: AtomicU64,
    /// Reconnections.
    pub reconnects: AtomicU64,
}

/// Why a session gave up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The deadline passed before every line was ACKed.
    #[error(
        "deadline passed with {acked} messages ACKed and {pending} not (last error: {last_error})"
    )]
    Deadline {
        /// Highest sn ACKed.
        acked: u64,
        /// Lines still waiting for an ACK.
        pending: usize,
        /// What went wrong last.
        last_error: String,
    },
    /// The connection was lost and the session has no client id to resume with.
    #[error("connection lost after ACK {acked} with {pending} line(s) un-ACKed ({why}); without --id a session cannot resume")]
    Lost {
        /// Highest sn ACKed.
        acked: u64,
        /// Lines that may or may not be stored.
        pending: usize,
        /// What happened.
        why: String,
    },
    /// The producer answered something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// TLS could not be established: a certificate was refused, ours or the
    /// producer's. Retrying would not help.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What a completed session saw.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Highest ACKed sn.
    pub acked: u64,
    /// sn the producer had stored for the id before this session's first line.
    pub first_sn: u64,
    /// Connections opened after the first.
    pub reconnects: u32,
    /// `ERR …` lines received that closed a connection.
    pub errors: Vec<String>,
    /// Connections abandoned because no reply came for the stall timeout while
    /// messages were outstanding (a healthy producer never causes one).
    pub stalls: u32,
    /// Lines written to a socket again after a reconnect.
    pub resent: u64,
    /// Time from writing a line to the ACK that covered it, in microseconds.
    pub ack_latency_us: Histogram<u64>,
}

impl Default for SessionReport {
    fn default() -> Self {
        Self {
            acked: 0,
            first_sn: 0,
            reconnects: 0,
            errors: Vec::new(),
            stalls: 0,
            resent: 0,
            ack_latency_us: latency_histogram(),
        }
    }
}

/// An empty latency histogram (µs, 2 significant figures, grows as needed).
pub fn latency_histogram() -> Histogram<u64> {
    // 2 significant figures keep a histogram at a few KiB, so a thousand sessions
    // can each own one; the error is at most 1 %.
    Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant figures are valid"))
}

/// Sends `messages` as client `id` until all are ACKed or `deadline` passes:
/// message `i` (1-based) is sn `i`.
pub async fn send_all(
    addrs: &[String],
    id: &ClientId,
    messages: &[String],
    deadline: Instant,
) -> Result<SessionReport, SessionError> {
    let lines: Arc<[Line]> = messages.iter().map(|m| Line::from(m.as_str())).collect();
    let options = SessionOptions {
        deadline: Some(deadline),
        ..SessionOptions::default()
    };
    run(addrs, Some(id), ListSource::new(lines, 1), &options, None).await
}

/// A line in the window.
struct Pending {
    line: Line,
    /// When it was last written, on the current connection.
    sent_at: Option<Instant>,
    /// Whether it was ever written.
    ever_sent: bool,
}

/// The window, shared by a connection's reader and writer.
struct Window {
    /// Lines with sns `acked + 1 ..`, in order.
    lines: VecDeque<Pending>,
    /// Highest sn ACKed (or confirmed stored by a WELCOME).
    acked: u64,
    /// Index in `lines` of the next line to write on the current connection.
    next: usize,
    /// The source has no more lines.
    source_done: bool,
}

impl Window {
    fn done(&self) -> bool {
        self.source_done && self.lines.is_empty()
    }
}

enum Attempt {
    Done,
    Retry(String),
}

struct Session<'a> {
    options: &'a SessionOptions,
    progress: Option<&'a Progress>,
    window: Mutex<Window>,
    /// Wakes the writer when ACKs free room in the window.
    room: Notify,
    report: Mutex<SessionReport>,
    /// Numbering established by the first WELCOME.
    started: bool,
}

impl Session<'_> {
    fn window(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self) -> MutexGuard<'_, SessionReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends every line of `source` as client `id` (or as the peer address when `id`
/// is `None`, which cannot resume after a lost connection), until all are ACKed.
pub async fn run<S: LineSource>(
    addrs: &[String],
    id: Option<&ClientId>,
    mut source: S,
    options: &SessionOptions,
    progress: Option<&Progress>,
) -> Result<SessionReport, SessionError> {
    if addrs.is_empty() {
        return Err(SessionError::Protocol("no producer address given".into()));
    }
    let mut session = Session {
        options,
        progress,
        window: Mutex::new(Window {
            lines: VecDeque::new(),
            acked: 0,
            next: 0,
            source_done: false,
        }),
        room: Notify::new(),
        report: Mutex::new(SessionReport::default()),
        started: false,
    };
    let mut last_error = String::from("none");
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    for attempt in 0usize.. {
        let deadline = options.deadline;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let window = session.window();
            return Err(SessionError::Deadline {
                acked: window.acked,
                pending: window.lines.len(),
                last_error,
            });
        }
        if attempt > 0 {
            if id.is_none() {
                let window = session.window();
                return Err(SessionError::Lost {
                    acked: window.acked,
                    pending: window.lines.len(),
                    why: last_error,
                });
            }
            session.report().reconnects += 1;
            if let Some(p) = progress {
                p.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            backoff.wait().await;
        }
        let addr = &addrs[attempt % addrs.len()];
        let acked_before = session.window().acked;
        let once = attempt_once(&mut session, addr, id, &mut source);
        let outcome = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), once)
                .await
                .unwrap_or_else(|_| Ok(Attempt::Retry("deadline".into()))),
            None => once.await,
        };
        match outcome? {
            Attempt::Done => {
                let mut report = session.report().clone();
                report.acked = session.window().acked;
                return Ok(report);
            }
            Attempt::Retry(why) => last_error = why,
        }
        if session.window().acked > acked_before {
            backoff.reset();
        }
    }
    unreachable!("the loop only ends by returning")
}

async fn attempt_once<S: LineSource>(
    session: &mut Session<'_>,
    addr: &str,
    id: Option<&ClientId>,
    source: &mut S,
) -> Result<Attempt, SessionError> {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Ok(Attempt::Retry(format!("connect {addr}: {e}"))),
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = session.options.tls.clone() else {
        return converse(session, addr, id, source, stream).await;
    };
    let name = tls.server_name_for(addr).map_err(SessionError::Tls)?;
    let stall = session.options.stall_timeout;
    match tokio::time::timeout(stall, tls.connector.connect(name, stream)).await {
        Ok(Ok(stream)) => converse(session, addr, id, source, stream).await,
        Ok(Err(e)) => match tls_failure(&e) {
            Some(why) => Err(SessionError::Tls(format!("{addr}: {why}"))),
            None => Ok(Attempt::Retry(format!("TLS handshake with {addr}: {e}"))),
        },
        Err(_) => Ok(Attempt::Retry(format!(
            "TLS handshake with {addr} not done within {stall:?}"
        ))),
    }
}

/// One connection's conversation, over plain TCP or TLS alike: HELLO, then lines
/// and ACKs until the window is done or the connection must be given up.
async fn converse<S: LineSource, T: AsyncRead + AsyncWrite + Send + Unpin>(
    session: &mut Session<'_>,
    addr: &str,
    id: Option<&ClientId>,
    source: &mut S,
    stream: T,
) -> Result<Attempt, SessionError> {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut replies = BufReader::new(read_half).lines();
    let mut writer = BufWriter::new(write_half);

    let stored = match id {
        Some(id) => match hello(session, addr, id, &mut writer, &mut replies).await? {
            Ok(last_sn) => last_sn,
            Err(retry) => return Ok(retry),
        },
        None => 0,
    };
    if !session.started {
        session.started = true;
        session.window().acked = stored;
        session.report().first_sn = stored;
        if session.options.numbering == Numbering::FromOne && stored > 0 {
            let skipped = source.skip(stored).await;
            if skipped < stored {
                return Err(SessionError::Protocol(format!(
                    "producer stores {stored} messages for {}, more than the {skipped} lines to send",
                    id.map_or("this client", ClientId::as_str)
                )));
            }
        }
    } else {
        confirm_stored(session, stored)?;
    }
    let session = &*session;
    if session.window().done() {
        return Ok(Attempt::Done);
    }
    tokio::select! {
        result = receive(session, addr, &mut replies) => result,
        result = transmit(session, source, &mut writer) => result,
    }
}

/// Says HELLO and reads the WELCOME: `Ok(Ok(last_sn))`, or `Ok(Err(retry))`.
async fn hello<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    session: &Session<'_>,
    addr: &str,
    id: &ClientId,
    writer: &mut W,
    replies: &mut tokio::io::Lines<R>,
) -> Result<Result<u64, Attempt>, SessionError> {
    if let Err(e) = async {
        let hello = match &session.options.token {
            Some(token) => format!("HELLO {id} {token}\n"),
            None => format!("HELLO {id}\n"),
        };
        writer.write_all(hello.as_bytes()).await?;
        writer.flush().await
    }
    .await
    {
        return Ok(Err(Attempt::Retry(format!("send HELLO: {e}"))));
    }
    let stall = session.options.stall_timeout;
    let welcome = match tokio::time::timeout(stall, replies.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(Err(Attempt::Retry("closed before WELCOME".into()))),
        Ok(Err(e)) => {
            // With TLS 1.3 a producer that refuses our certificate says so only
            // now, after the handshake seemed to succeed.
            if let Some(why) = tls_failure(&e) {
                return Err(SessionError::Tls(format!("{addr}: {why}")));
            }
            return Ok(Err(Attempt::Retry(format!("read WELCOME: {e}"))));
        }
        Err(_) => {
            session.report().stalls += 1;
            return Ok(Err(Attempt::Retry(format!(
                "no WELCOME from {addr} for {stall:?}"
            ))));
        }
    };
    if is_retryable_error(&welcome) {
        session.report().errors.push(welcome.clone());
        return Ok(Err(Attempt::Retry(welcome)));
    }
    if tally_common::protocol::is_refusal(&welcome) {
        return Err(SessionError::Protocol(format!(
            "the producer refused the connection: {welcome}"
        )));
    }
    parse_welcome(&welcome, id).map(Ok)
}

/// After a reconnect: `stored` (the WELCOME's last_sn) must lie within the window;
/// the lines it covers are confirmed, the rest are resent.
fn confirm_stored(session: &Session<'_>, stored: u64) -> Result<(), SessionError> {
    let mut window = session.window();
    let known = window.acked + window.lines.len() as u64;
    if stored < window.acked {
        return Err(SessionError::Protocol(format!(
            "producer stores only {stored} messages, but ACKed {} before: stored messages were lost",
            window.acked
        )));
    }
    if stored > known {
        return Err(SessionError::Protocol(format!(
            "producer stores {stored} messages, more than the {known} this session sent"
        )));
    }
    let confirmed = (stored - window.acked) as usize;
    window.lines.drain(..confirmed);
    window.acked = stored;
    let resend = window.lines.iter().filter(|p| p.ever_sent).count() as u64;
    for pending in &mut window.lines {
        pending.sent_at = None;
    }
    window.next = 0;
    drop(window);
    session.report().resent += resend;
    if let Some(p) = session.progress {
        p.acked.fetch_add(confirmed as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn is_retryable_error(line: &str) -> bool {
    line.starts_with("ERR unavailable") || line.starts_with("ERR superseded")
}

/// Reads replies until every line is ACKed or the connection must be abandoned.
async fn receive<R: AsyncBufRead + Unpin>(
    session: &Session<'_>,
    addr: &str,
    replies: &mut tokio::io::Lines<R>,
) -> Result<Attempt, SessionError> {
    let stall = session.options.stall_timeout;
    loop {
        let next = match tokio::time::timeout(stall, replies.next_line()).await {
            Ok(next) => next,
            Err(_) => {
                let (outstanding, acked) = {
                    let window = session.window();
                    (window.next > 0, window.acked)
                };
                if !outstanding {
                    // Nothing outstanding: an idle interactive session.
                    continue;
                }
                session.report().stalls += 1;
                return Ok(Attempt::Retry(format!(
                    "no reply from {addr} for {stall:?} at ACK {acked}"
                )));
            }
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(Attempt::Retry("connection closed".into())),
            Err(e) => {
                if let Some(why) = tls_failure(&e) {
                    return Err(SessionError::Tls(format!("{addr}: {why}")));
                }
                return Ok(Attempt::Retry(format!("read: {e}")));
            }
        };
        if let Some(sn) = line.strip_prefix("ACK ") {
            let sn: u64 = sn
                .trim()
                .parse()
                .map_err(|_| SessionError::Protocol(format!("bad ACK line {line:?}")))?;
            if on_ack(session, sn)? {
                return Ok(Attempt::Done);
            }
        } else if is_retryable_error(&line) {
            session.report().errors.push(line.clone());
            return Ok(Attempt::Retry(line));
        } else if tally_common::protocol::is_refusal(&line) {
            return Err(SessionError::Protocol(format!(
                "the producer refused the connection: {line}"
            )));
        } else if line.starts_with("ERR ") {
            // The lines were checked with the producer's own rules, so a rejection
            // means the two disagree (e.g. a smaller producer.max_line_bytes) and the
            // numbering can no longer be trusted.
            return Err(SessionError::Protocol(format!(
                "producer rejected a line this client accepted: {line} (do producer.max_line_bytes and the client's configuration agree?)"
            )));
        } else {
            return Err(SessionError::Protocol(format!("unexpected reply {line:?}")));
        }
    }
}

/// Applies `ACK sn`; returns whether the session is complete.
fn on_ack(session: &Session<'_>, sn: u64) -> Result<bool, SessionError> {
    let now = Instant::now();
    let mut window = session.window();
    let sent_up_to = window.acked + window.next as u64;
    if sn < window.acked || sn > sent_up_to {
        return Err(SessionError::Protocol(format!(
            "ACK {sn} out of range (acked {}, sent up to {sent_up_to})",
            window.acked
        )));
    }
    let covered = (sn - window.acked) as usize;
    let mut report = session.report();
    for pending in window.lines.drain(..covered) {
        if let Some(at) = pending.sent_at {
            let micros = now.saturating_duration_since(at).as_micros();
            let _ = report
                .ack_latency_us
                .record(u64::try_from(micros).unwrap_or(u64::MAX));
        }
    }
    drop(report);
    window.acked = sn;
    window.next -= covered;
    let done = window.done();
    drop(window);
    if let Some(p) = session.progress {
        p.acked.fetch_add(covered as u64, Ordering::Relaxed);
    }
    session.room.notify_one();
    Ok(done)
}

enum Step {
    Write(Line),
    Pull,
    Wait,
}

/// Writes lines while the window has room; pulls new lines from the source.
async fn transmit<S: LineSource, W: AsyncWrite + Unpin>(
    session: &Session<'_>,
    source: &mut S,
    writer: &mut W,
) -> Result<Attempt, SessionError> {
    let interval = session
        .options
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_due = Instant::now();
    let io = |e: std::io::Error| Ok(Attempt::Retry(format!("write: {e}")));
    loop {
        let step = {
            let mut window = session.window();
            let next = window.next;
            if next < window.lines.len() {
                let pending = &mut window.lines[next];
                pending.ever_sent = true;
                let line = pending.line.clone();
                window.next += 1;
                Step::Write(line)
            } else if !window.source_done && window.lines.len() < session.options.window {
                Step::Pull
            } else {
                Step::Wait
            }
        };
        match step {
            Step::Write(line) => {
                if let Some(interval) = interval {
                    let now = Instant::now();
                    if next_due > now {
                        if let Err(e) = writer.flush().await {
                            return io(e);
                        }
                        tokio::time::sleep_until(next_due.into()).await;
                    } else if now - next_due > Duration::from_secs(1) {
                        // After a pause (reconnect), do not burst to catch up.
                        next_due = now;
                    }
                    next_due += interval;
                }
                // Stamped after the pacing wait, so ACK latency is the producer's
                // time, not the rate limit's. Only this task selects lines, so the
                // line just selected is still the last one sent.
                {
                    let mut window = session.window();
                    let last = window.next.checked_sub(1);
                    if let Some(pending) = last.and_then(|i| window.lines.get_mut(i)) {
                        pending.sent_at = Some(Instant::now());
                    }
                }
                let written = async {
                    writer.write_all(line.as_bytes()).await?;
                    writer.write_all(b"\n").await
                }
                .await;
                if let Err(e) = written {
                    return io(e);
                }
                if let Some(p) = session.progress {
                    p.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Step::Pull => {
                let line = match source.next_line().now_or_never() {
                    Some(line) => line,
                    None => {
                        // The source has to wait (stdin): send what is buffered first.
                        if let Err(e) = writer.flush().await {
                            return io(e);
                        }
                        source.next_line().await
                    }
                };
                let finished = {
                    let mut window = session.window();
                    match line {
                        Some(line) => {
                            window.lines.push_back(Pending {
                                line,
                                sent_at: None,
                                ever_sent: false,
                            });
                            false
                        }
                        None => {
                            window.source_done = true;
                            window.done()
                        }
                    }
                };
                if finished {
                    return Ok(Attempt::Done);
                }
            }
            Step::Wait => {
                if let Err(e) = writer.flush().await {
                    return io(e);
                }
                session.room.notified().await;
            }
        }
    }
}

fn parse_welcome(line: &str, id: &ClientId) -> Result<u64, SessionError> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("WELCOME"), Some(got), Some(sn), None) if got == id.as_str() => sn
            .parse()
            .map_err(|_| SessionError::Protocol(format!("bad WELCOME {line:?}"))),
        _ => Err(SessionError::Protocol(format!(
            "expected WELCOME {id} <sn>, got {line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_given() {
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
        let config = Arc::new(config);
        let by_address = SessionTls::new(config.clone(), None).expect("no name");
        let name = |addr: &str| {
            by_address
                .server_name_for(addr)
                .map(|n| n.to_str().into_owned())
        };
        assert_eq!(name("127.0.0.1:7400").as_deref(), Ok("127.0.0.1"));
        assert!(matches!(
            by_address.server_name_for("127.0.0.1:7400"),
            Ok(ServerName::IpAddress(_))
        ));
        assert_eq!(name("[::1]:7400").as_deref(), Ok("::1"));
        assert_eq!(
            name("producer.example:7400").as_deref(),
            Ok("producer.example")
        );
        let given = SessionTls::new(config.clone(), Some("ingest.example")).expect("a name");
        assert_eq!(
            given
                .server_name_for("127.0.0.1:7400")
                .map(|n| n.to_str().into_owned()),
            Ok("ingest.example".to_owned())
        );
        assert!(SessionTls::new(config, Some("not a name!")).is_err());
    }

    #[test]
    fn welcome_is_checked() {
        let id = ClientId::parse("c-1").expect("id");
        assert_eq!(parse_welcome("WELCOME c-1 42", &id).expect("ok"), 42);
        assert!(parse_welcome("WELCOME c-2 42", &id).is_err());
        assert!(parse_welcome("WELCOME c-1 x", &id).is_err());
        assert!(parse_welcome("ERR unavailable x", &id).is_err());
    }

    #[tokio::test]
    async fn list_source_repeats_and_skips() {
        let lines: Arc<[Line]> = ["a", "b", "c"].into_iter().map(Line::from).collect();
        let mut source = ListSource::new(lines, 2);
        assert_eq!(source.total(), 6);
        assert_eq!(source.skip(4).await, 4);
        assert_eq!(source.next_line().await.as_deref(), Some("b"));
        assert_eq!(source.next_line().await.as_deref(), Some("c"));
        assert_eq!(source.next_line().await, None);
        assert_eq!(source.skip(1).await, 0);
    }
}
