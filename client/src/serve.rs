//! `tally serve`: a read-only JSON API and a live dashboard over a running pipeline.
//!
//! Invariants:
//! - **Read-only.** Every answer comes from [`Inspector`] and [`CounterProgress`],
//!   which only read Redis keys and Kafka offsets; nothing here writes.
//! - **Bounded memory per connection.** Ordinary requests hold one answer. An event
//!   stream (`/api/events`) holds a `watch` receiver of the latest shared
//!   [`Snapshot`] (older snapshots are dropped, never queued), at most
//!   [`MAX_WATCHED_CLIENTS`] + [`MAX_WATCHED_MESSAGES`] last-sent counts and at most
//!   three pending events; the next event is produced only when the socket took the
//!   previous one, so a slow browser delays itself and costs nothing more. At most
//!   `max_streams` streams run at once (a semaphore; the next gets 503).
//! - **Shared sampling.** The expensive figures — the counting rate (Kafka offsets),
//!   the top messages (a SCAN) and the status (a SCAN plus Kafka) — are computed by
//!   one background sampler per server, only while at least one stream is open, and
//!   published to every stream through one `watch` channel. A stream itself reads
//!   only the few counters its page watches, once a second.
//! - Redis or Kafka failures become `503 {"error": …}` (or an `error` field in the
//!   stream), never a panic.
//! - **Bearer token.** With a token (`serve.token_file`) every request must carry
//!   it (`Authorization: Bearer …`, or `?token=…` for the page and its event
//!   stream, which a browser cannot give a header) or gets `401`; without one the
//!   command refuses any listen address beyond loopback (`tally serve` in main.rs).
//!
//! HTTP: axum, the same stack (and features: `tokio`, `http1`) as
//! `tally_common::observe`; its router, path extraction and `Sse` response are all
//! this needs, so no second web stack. JSON bodies are written with `serde_json`
//! and queries parsed with `form_urlencoded`, so axum's `json`/`query` features are
//! not needed either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tally_common::{ClientId, MessageHash, Settings};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::inspect::{ClientView, CounterProgress, InspectError, Inspector};

/// Largest `n` for `/api/top`.
pub const MAX_TOP: usize = 1000;
/// Clients one event stream may watch.
pub const MAX_WATCHED_CLIENTS: usize = 16;
/// Messages one event stream may watch.
pub const MAX_WATCHED_MESSAGES: usize = 32;
/// Longest query string accepted.
const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Deadline for one API answer (a paused Redis node must not hang a request).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a status answer (it also asks Kafka, with 10 s timeouts).
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the counting rate and the watched counts are pushed.
const PULSE: Duration = Duration::from_secs(1);
/// How often the shared top list is recomputed while streams are open.
const TOP_EVERY: Duration = Duration::from_secs(5);
/// How often the shared status is recomputed while streams are open.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// After shutdown starts, how long open connections get to finish.
const DRAIN: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("serve/index.html");
const APP_JS: &str = include_str!("serve/app.js");
const STYLE_CSS: &str = include_str!("serve/style.css");
/// Everything the page loads comes from this server: no CDN, works offline.
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'";

/// Knobs of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Event streams open at once, at most.
    pub max_streams: usize,
    /// Messages in the top list pushed on the event stream.
    pub stream_top: usize,
    /// The token every request must carry, if any.
    pub token: Option<BearerToken>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_streams: 64,
            stream_top: 10,
            token: None,
        }
    }
}

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token of `tally serve`.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("serve.token_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token is too short or holds characters a header cannot carry.
    #[error("serve.token_file {path}: the token must be one line of at least {MIN_TOKEN_LEN} visible ASCII characters")]
    Invalid {
        /// The file.
        path: String,
    },
}

impl BearerToken {
    /// Reads the token from the first line of `path`.
    pub fn read(path: &std::path::Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::new(text.lines().next().unwrap_or("").trim())
            .ok_or(TokenError::Invalid { path: shown })
    }

    /// A token, if it is long enough and fits in a header.
    pub fn new(token: &str) -> Option<Self> {
        (token.len() >= MIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| Self(token.into()))
    }

    /// Whether `offered` is the token, in time independent of where they differ.
    fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether a request carries the token, in its `Authorization` header or its
    /// `token` query parameter.
    fn admits(&self, headers: &axum::http::HeaderMap, query: Option<&str>) -> bool {
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if header.is_some_and(|t| self.matches(t)) {
            return true;
        }
        query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "token" && self.matches(&v))
        })
    }
}

async fn require_token(
    State(token): State<BearerToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if token.admits(request.headers(), request.uri().query()) {
        return next.run(request).await;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Redis or Kafka could not be reached at start.
    #[error("cannot reach the pipeline: {0}")]
    Connect(#[from] InspectError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// The counting rate, pushed once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pulse {
    /// When it was sampled (Unix ms).
    pub t_ms: u64,
    /// `client_message` records committed by the counter group so far.
    pub counted_total: Option<u64>,
    /// Records counted per second since the previous sample.
    pub per_second: Option<f64>,
}

/// A pre-serialised JSON document and its version (bumped when it changes).
pub type Versioned = Option<(u64, Arc<str>)>;

/// What the sampler last saw, shared by every stream.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped with every new pulse.
    pub pulse_seq: u64,
    /// The latest pulse.
    pub pulse: Pulse,
    /// The top list as JSON, and a version bumped when it changes.
    pub top: Versioned,
    /// The status as JSON, and a version bumped when it changes.
    pub status: Versioned,
    /// The last failure of each sampler (`throughput`, `top`, `status`), cleared by
    /// its next success.
    pub errors: BTreeMap<&'static str, String>,
}

struct Shared {
    inspector: Inspector,
    snapshots: watch::Sender<Arc<Snapshot>>,
    streams: Arc<Semaphore>,
    stop: CancellationToken,
}

type AppState = Arc<Shared>;

/// Serves the API and the dashboard on `listener` until `shutdown` completes, then
/// ends every event stream and gives open requests [`DRAIN`] to finish.
pub async fn run(
    listener: TcpListener,
    settings: &Settings,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let inspector = Inspector::connect(settings).await?;
    let progress = CounterProgress::new(settings)?;
    let (snapshots, _) = watch::channel(Arc::new(Snapshot::default()));
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        inspector,
        snapshots,
        streams: Arc::new(Semaphore::new(options.max_streams.max(1))),
        stop: stop.clone(),
    });
    let samplers = [
        tokio::spawn(sample_pulse(shared.clone(), Arc::new(progress))),
        tokio::spawn(sample_top(shared.clone(), options.stream_top)),
        tokio::spawn(sample_status(shared.clone())),
    ];
    let app = match options.token {
        Some(token) => {
            router(shared).layer(axum::middleware::from_fn_with_state(token, require_token))
        }
        None => router(shared),
    };
    let server = {
        let stop = stop.clone();
        axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            info!("shutting down: ending event streams");
            stop.cancel();
        })
    };
    let outcome = tokio::select! {
        r = server => r.map_err(ServeError::from),
        () = async { stop.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            warn!("connections still open {DRAIN:?} after shutdown; closing them");
            Ok(())
        }
    };
    stop.cancel();
    for s in samplers {
        s.abort();
    }
    outcome
}

fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/clients/{id}", get(client))
        .route("/api/messages", get(message))
        .route("/api/top", get(top))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An API failure: `{"error": "…"}` with its status code.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<InspectError> for ApiError {
    fn from(e: InspectError) -> Self {
        let status = match e {
            InspectError::Redis(_) | InspectError::Kafka(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Redis answered, with something tally never writes.
            InspectError::NotACount { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        json(
            self.status,
            &Body {
                error: &self.message,
            },
        )
    }
}

/// `value` as a JSON response.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{{\"error\":\"cannot encode the answer: {}\"}}",
                e.to_string().replace('"', "'")
            ),
        )
            .into_response(),
    }
}

/// Runs an inspector read with a deadline.
async fn read<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, InspectError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer from Redis/Kafka within {limit:?}"),
        )),
    }
}

/// The decoded pairs of a query string.
fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(format!(
            "query string over {MAX_QUERY_BYTES} bytes"
        )));
    }
    Ok(form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn client_id(text: &str) -> Result<ClientId, ApiError> {
    ClientId::from_record(text)
        .map_err(|e| ApiError::bad_request(format!("client id {text:?}: {e}")))
}

fn message_hash(text: &str) -> Result<MessageHash, ApiError> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("hash {text:?}: {e}")))
}

/// `GET /api/clients/{id}`: a [`ClientView`].
async fn client(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = client_id(&id)?;
    let view = read(READ_TIMEOUT, state.inspector.client(&id)).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `GET /api/messages?text=…` or `?hash=…`: a [`crate::inspect::MessageView`].
async fn message(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw)?;
    let hash = match (one(&pairs, "text"), one(&pairs, "hash")) {
        (Some(text), _) => MessageHash::of(text.as_bytes()),
        (None, Some(hash)) => message_hash(hash)?,
        (None, None) => return Err(ApiError::bad_request("give ?text=… or ?hash=…")),
    };
    let view = read(READ_TIMEOUT, state.inspector.message(&hash)).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `GET /api/top?n=…` (default 20, at most [`MAX_TOP`]): [`crate::inspect::MessageView`]s, most
/// counted first.
async fn top(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw)?;
    let n = match one(&pairs, "n") {
        None => 20,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "n={n:?}: give a number from 1 to {MAX_TOP}"
                )))
            }
        },
    };
    let views = read(READ_TIMEOUT, state.inspector.top(n)).await?;
    Ok(json(StatusCode::OK, &views))
}

/// `GET /api/status`: the [`crate::inspect::StatusView`].
async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let view = read(STATUS_TIMEOUT, state.inspector.status()).await?;
    Ok(json(StatusCode::OK, &view))
}

/// `GET /api/events?client=ID&message=HASH…`: the event stream (see the module doc
/// and docs/operations.md for its events).
async fn events(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw)?;
    let mut clients = Vec::new();
    let mut messages = Vec::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "client" => {
                let id = client_id(value)?;
                if !clients.contains(&id) {
                    clients.push(id);
                }
            }
            "message" => {
                let hash = message_hash(value)?;
                if !messages.contains(&hash) {
                    messages.push(hash);
                }
            }
            _ => {}
        }
    }
    if clients.len() > MAX_WATCHED_CLIENTS || messages.len() > MAX_WATCHED_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "watch at most {MAX_WATCHED_CLIENTS} clients and {MAX_WATCHED_MESSAGES} messages"
        )));
    }
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; try again later",
        )
    })?;
    let mut snapshots = state.snapshots.subscribe();
    // The first event carries whatever the sampler has now.
    snapshots.mark_changed();
    let stream = Stream {
        state,
        snapshots,
        clients,
        messages,
        sent_clients: HashMap::new(),
        sent_messages: HashMap::new(),
        sent_pulse: None,
        sent_top: None,
        sent_status: None,
        pending: VecDeque::with_capacity(3),
        _permit: permit,
    };
    let events = futures::stream::unfold(stream, |mut s| async move {
        s.next_event().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// One event stream's state: what it watches and what it last sent.
struct Stream {
    state: AppState,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: Vec<ClientId>,
    messages: Vec<MessageHash>,
    sent_clients: HashMap<ClientId, ClientView>,
    sent_messages: HashMap<MessageHash, u64>,
    sent_pulse: Option<u64>,
    sent_top: Option<u64>,
    sent_status: Option<u64>,
    /// At most three: a tick, a top and a status event of one snapshot.
    pending: VecDeque<Event>,
    _permit: OwnedSemaphorePermit,
}

/// The `tick` event's data.
#[derive(Serialize)]
struct Tick<'a> {
    #[serde(flatten)]
    pulse: &'a Pulse,
    /// Watched clients whose view changed since the last tick (all on the first).
    clients: Vec<ClientView>,
    /// Watched messages whose count changed since the last tick (all on the first).
    messages: Vec<MessageCount>,
    /// Sampler and read failures, by what failed.
    errors: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct MessageCount {
    hash: String,
    count: u64,
}

impl Stream {
    /// The next event, or `None` when the server shuts down.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            tokio::select! {
                changed = self.snapshots.changed() => changed.ok()?,
                () = self.state.stop.cancelled() => return None,
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            if self.sent_pulse != Some(snapshot.pulse_seq) {
                self.sent_pulse = Some(snapshot.pulse_seq);
                let event = self.tick(&snapshot).await;
                self.pending.push_back(event);
            }
            if let Some((version, text)) = &snapshot.top {
                if self.sent_top != Some(*version) {
                    self.sent_top = Some(*version);
                    self.pending
                        .push_back(Event::default().event("top").data(text.as_ref()));
                }
            }
            if let Some((version, text)) = &snapshot.status {
                if self.sent_status != Some(*version) {
                    self.sent_status = Some(*version);
                    self.pending
                        .push_back(Event::default().event("status").data(text.as_ref()));
                }
            }
        }
    }

    /// Reads the watched counts and reports what changed.
    async fn tick(&mut self, snapshot: &Snapshot) -> Event {
        let mut errors = snapshot.errors.clone();
        let mut clients = Vec::new();
        let mut messages = Vec::new();
        let inspector = &self.state.inspector;
        let reads = async {
            let mut views = Vec::with_capacity(self.clients.len());
            for id in &self.clients {
                views.push(inspector.client(id).await?);
            }
            let counts = inspector.message_counts(&self.messages).await?;
            Ok::<_, InspectError>((views, counts))
        };
        match tokio::time::timeout(PULSE.mul_f32(3.0), reads).await {
            Ok(Ok((views, counts))) => {
                for (id, view) in self.clients.iter().zip(views) {
                    if self.sent_clients.get(id) != Some(&view) {
                        self.sent_clients.insert(id.clone(), view.clone());
                        clients.push(view);
                    }
                }
                for (hash, count) in self.messages.iter().zip(counts) {
                    if self.sent_messages.get(hash) != Some(&count) {
                        self.sent_messages.insert(*hash, count);
                        messages.push(MessageCount {
                            hash: hash.to_string(),
                            count,
                        });
                    }
                }
            }
            Ok(Err(e)) => {
                errors.insert("counts", e.to_string());
            }
            Err(_) => {
                errors.insert("counts", "no answer from Redis within 3 s".into());
            }
        }
        let tick = Tick {
            pulse: &snapshot.pulse,
            clients,
            messages,
            errors,
        };
        match serde_json::to_string(&tick) {
            Ok(text) => Event::default().event("tick").data(text),
            Err(e) => Event::default()
                .event("tick")
                .data(format!("{{\"errors\":{{\"encode\":{:?}}}}}", e.to_string())),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Waits for the next period, skipping missed ones; false once shutdown began.
async fn next_round(shared: &Shared, interval: &mut tokio::time::Interval) -> bool {
    tokio::select! {
        _ = interval.tick() => true,
        () = shared.stop.cancelled() => false,
    }
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    interval
}

fn set_error(shared: &Shared, what: &'static str, error: Option<String>) {
    shared.snapshots.send_if_modified(|snapshot| {
        let current = snapshot.errors.get(what);
        if current == error.as_ref() {
            return false;
        }
        let mut next = Snapshot::clone(snapshot);
        match error {
            Some(ref e) => next.errors.insert(what, e.clone()),
            None => next.errors.remove(what),
        };
        *snapshot = Arc::new(next);
        // Errors travel with the next tick; no wake-up of their own.
        false
    });
}

/// Once a second while streams are open: the counter group's committed records
/// and their rate.
async fn sample_pulse(shared: Arc<Shared>, progress: Arc<CounterProgress>) {
    let mut interval = interval(PULSE);
    let mut last: Option<(Instant, u64)> = None;
    while next_round(&shared, &mut interval).await {
        if shared.snapshots.receiver_count() == 0 {
            last = None;
            continue;
        }
        let probe = progress.clone();
        let sampled = tokio::task::spawn_blocking(move || probe.committed(PULSE * 3)).await;
        let now = Instant::now();
        let counted = match sampled {
            Ok(Ok(total)) => {
                set_error(&shared, "throughput", None);
                Some(total)
            }
            Ok(Err(e)) => {
                set_error(&shared, "throughput", Some(e.to_string()));
                None
            }
            Err(e) => {
                set_error(&shared, "throughput", Some(format!("sampler task: {e}")));
                None
            }
        };
        let per_second = match (last, counted) {
            (Some((then, before)), Some(total)) if total >= before => {
                let secs = now.duration_since(then).as_secs_f64();
                (secs > 0.0).then(|| (total - before) as f64 / secs)
            }
            _ => None,
        };
        if let Some(total) = counted {
            last = Some((now, total));
        }
        shared.snapshots.send_modify(|snapshot| {
            let mut next = Snapshot::clone(snapshot);
            next.pulse_seq += 1;
            next.pulse = Pulse {
                t_ms: now_ms(),
                counted_total: counted,
                per_second,
            };
            *snapshot = Arc::new(next);
        });
    }
}

/// Publishes `text` in the snapshot slot chosen by `slot` if it differs.
fn publish(shared: &Shared, slot: fn(&mut Snapshot) -> &mut Versioned, text: String) {
    shared.snapshots.send_if_modified(|snapshot| {
        let mut next = Snapshot::clone(snapshot);
        let entry = slot(&mut next);
        if entry.as_ref().is_some_and(|(_, t)| t.as_ref() == text) {
            return false;
        }
        let version = entry.as_ref().map_or(1, |(v, _)| v + 1);
        *entry = Some((version, Arc::from(text)));
        *snapshot = Arc::new(next);
        true
    });
}

/// Every [`TOP_EVERY`] while streams are open: the `n` most counted messages.
async fn sample_top(shared: Arc<Shared>, n: usize) {
    let mut interval = interval(TOP_EVERY);
    while next_round(&shared, &mut interval).await {
        if shared.snapshots.receiver_count() == 0 {
            continue;
        }
        match read(READ_TIMEOUT, shared.inspector.top(n)).await {
            Ok(views) => match serde_json::to_string(&views) {
                Ok(text) => {
                    set_error(&shared, "top", None);
                    publish(&shared, |s| &mut s.top, text);
                }
                Err(e) => set_error(&shared, "top", Some(e.to_string())),
            },
            Err(e) => set_error(&shared, "top", Some(e.message)),
        }
    }
}

/// Every [`STATUS_EVERY`] while streams are open: producers, backlog, consumers.
async fn sample_status(shared: Arc<Shared>) {
    let mut interval = interval(STATUS_EVERY);
    while next_round(&shared, &mut interval).await {
        if shared.snapshots.receiver_count() == 0 {
            continue;
        }
        match read(STATUS_TIMEOUT, shared.inspector.status()).await {
            Ok(view) => match serde_json::to_string(&view) {
                Ok(text) => {
                    set_error(&shared, "status", None);
                    publish(&shared, |s| &mut s.status, text);
                }
                Err(e) => set_error(&shared, "status", Some(e.to_string())),
            },
            Err(e) => set_error(&shared, "status", Some(e.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sampler_is_an_error_never_a_value() {
        let failure = "kafka: Meta data fetch error: OperationTimedOut";
        let tick = Tick {
            pulse: &Pulse {
                t_ms: 1,
                counted_total: None,
                per_second: None,
            },
            clients: Vec::new(),
            messages: Vec::new(),
            errors: BTreeMap::from([("throughput", failure.to_string())]),
        };
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&tick).expect("encode")).expect("json");
        assert_eq!(json["errors"]["throughput"], failure);
        assert!(json["per_second"].is_null() && json["counted_total"].is_null());
        let values = json.as_object().expect("object");
        assert!(values
            .iter()
            .filter(|(k, _)| k.as_str() != "errors")
            .all(|(_, v)| !v.to_string().contains("OperationTimedOut")));
    }

    #[test]
    fn queries_are_decoded_and_bounded() {
        let pairs = query_pairs(Some("text=a+b%21&n=3&text=second".into())).expect("pairs");
        assert_eq!(one(&pairs, "text"), Some("a b!"));
        assert_eq!(one(&pairs, "n"), Some("3"));
        assert_eq!(one(&pairs, "hash"), None);
        assert!(query_pairs(None).expect("empty").is_empty());
        let long = "x".repeat(MAX_QUERY_BYTES + 1);
        assert_eq!(
            query_pairs(Some(long)).map(|_| ()).map_err(|e| e.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn malformed_ids_and_hashes_are_bad_requests() {
        assert!(client_id("c-1").is_ok());
        assert!(client_id("[::1]:80").is_ok());
        for bad in ["", "a b", "x/y", &"c".repeat(65)] {
            assert_eq!(
                client_id(bad).map(|_| ()).map_err(|e| e.status),
                Err(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
        assert!(message_hash(&MessageHash::of(b"x").to_string()).is_ok());
        assert!(message_hash("xyz").is_err());
    }

    #[test]
    fn failures_map_to_status_codes() {
        let redis = InspectError::from(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connection refused",
        )));
        assert_eq!(
            ApiError::from(redis).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let junk = InspectError::NotACount {
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(
            ApiError::from(junk).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_page_loads_only_from_this_server() {
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!asset.contains("http://"), "absolute URL in an asset");
            assert!(!asset.contains("https://"), "absolute URL in an asset");
        }
        assert!(INDEX_HTML.contains("/app.js") && INDEX_HTML.contains("/style.css"));
    }
}
