//! tally end to end: the three services as processes (the release binaries next
//! to `tally-bench`), fed by `tally mtc`'s own sessions at full speed (or at a set
//! rate), replaying the lines as they are or, for the all-distinct workload,
//! salted as `tally mtc --distinct` salts them, each point waited for until
//! `tally verify`'s check is exact ([`wait_counted`], then [`verdict`]; also the
//! consume-only and many-clients points' judge).
//!
//! Per point it measures ingest (first line sent → last ACK), end to end (first
//! line sent → every client and message count exact), ACK latency of every
//! message, and ACK → counted latency of probe messages sent alongside the load
//! (one every [`PROBE_EVERY`], each polled until the aggregator counted it), plus
//! every process's CPU and peak RSS ([`crate::procstat`], read once the counts
//! are reached, before the verdict reads every count again), and the `ERR
//! unavailable` answers and reconnects the clients met. A point whose counts do
//! not come out exact fails the benchmark. A window of the sustained-rate search
//! ([`Pipeline::window`]) also reads the counting lag early and at its end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tally_client::inspect::Inspector;
use tally_client::manifest::Manifest;
use tally_client::mtc::{self, MtcPlan};
use tally_client::session::Progress;
use tally_client::verify;
use tally_common::{ClientId, MessageHash, Settings};
use tally_harness::{bin_dir, create_topics, ServiceProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::procstat::{Sampler, Watched};
use crate::results::E2ePoint;
use crate::BenchError;

/// How often a probe message is sent for the end-to-end latency.
pub const PROBE_EVERY: Duration = Duration::from_millis(20);
/// How long the last probe lines may take to be ACKed once the load ended.
const PROBE_ACK_GRACE: Duration = Duration::from_secs(30);
/// How long ACKed probes may take to be counted once the point's counts are exact.
const PROBE_COUNT_GRACE: Duration = Duration::from_secs(30);
/// How often outstanding probes are looked up.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// Longest a point may take to come out exact after its last ACK.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the counts may stand still before a point is judged as it is.
const SETTLE: Duration = Duration::from_secs(60);
/// How often the counts are read while waiting for them.
const POLL: Duration = Duration::from_millis(20);
/// About how many of the messages short of their count are read per poll while
/// there are many more (the rest once all of these are reached).
const MESSAGE_SAMPLE: usize = 2048;
/// Un-ACKed lines per client: `tally mtc`'s default.
const WINDOW: usize = 1000;
/// How long a load's clients may take beyond what its rate needs.
const SEND_SLACK: Duration = Duration::from_secs(600);

/// How many of each service a pipeline runs (one producer always).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `tally-counter` processes (one consumer group).
    pub counters: usize,
    /// `tally-aggregator` processes (one consumer group).
    pub aggregators: usize,
}

/// What the clients of one point send.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// Names the point's files and its clients' run id (unique per pipeline).
    pub id: &'a str,
    /// Concurrent clients.
    pub clients: usize,
    /// The lines every client sends, in order.
    pub lines: &'a [String],
    /// Times each client sends them.
    pub repeat: u64,
    /// Lines per second per client (`None`: as fast as ACKs allow).
    pub rate_per_client: Option<f64>,
    /// Every line salted with its client and sn (`tally mtc --distinct`).
    pub distinct: bool,
}

impl Load<'_> {
    /// How long the clients may take to have every line ACKed: what the rate
    /// needs plus [`SEND_SLACK`], so a long paced load (the 15-minute warm-up)
    /// is not cut off by a deadline fit for the short ones.
    fn send_timeout(&self) -> Duration {
        let paced = match self.rate_per_client {
            Some(rate) if rate > 0.0 => {
                let seconds = self.lines.len() as f64 * self.repeat as f64 / rate;
                Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
            }
            _ => Duration::ZERO,
        };
        paced.saturating_add(SEND_SLACK)
    }
}

/// Messages ACKed to the clients but not yet in their counts (the counters'
/// backlog), during a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Some time into the window (`None`: the window ended before).
    pub early: Option<u64>,
    /// When the window's last line was ACKed.
    pub end: u64,
}

/// Reads the counting lag: ACKs so far minus the clients' counts.
struct LagReader {
    inspector: Inspector,
    keys: Vec<String>,
    progress: Arc<Progress>,
}

impl LagReader {
    async fn read(&self) -> Result<u64, BenchError> {
        // The same order at every reading: ACKs, then counts (which may already
        // include a few later ACKs, hence the saturating difference).
        let acked = self.progress.acked.load(Ordering::Relaxed);
        let counts = self
            .inspector
            .numbers(&self.keys)
            .await
            .map_err(|e| BenchError::Check(format!("read counts: {e}")))?;
        Ok(acked.saturating_sub(counts.iter().sum()))
    }
}

/// One producer, `Shape` counters and aggregators, on their own topics and prefix.
pub struct Pipeline {
    /// Settings the services and the load use.
    pub settings: Settings,
    /// Where the producer listens.
    pub producer_addr: String,
    services: Vec<ServiceProcess>,
    inspector: Inspector,
    work_dir: PathBuf,
}

/// `base` with its own key prefix, topics and consumer groups, all named after
/// `name`, so a benchmark pipeline shares nothing with anything else on the stack.
pub fn isolated_settings(base: &Settings, name: &str) -> Settings {
    let mut settings = base.clone();
    settings.redis.prefix = name.to_owned();
    settings.kafka.client_message_topic = format!("{name}.client_message");
    settings.kafka.message_aggregation_topic = format!("{name}.message_aggregation");
    settings.kafka.dlq_topic = format!("{name}.dlq");
    settings.counter.group_id = format!("{name}.counter");
    settings.counter.transactional_id_prefix = settings.counter.group_id.clone();
    settings.aggregator.group_id = format!("{name}.aggregator");
    settings
}

/// Starts the release binaries next to `tally-bench` on `settings` (see
/// [`isolated_settings`]): a producer listening on `producer_addr` if given (with
/// `producer.max_connections` from `settings`), then `shape`'s counters and
/// aggregators. Each process logs to `<work_dir>/<label>.log`.
pub fn spawn_services(
    settings: &Settings,
    name: &str,
    config: &Path,
    work_dir: &Path,
    shape: Shape,
    producer_addr: Option<&str>,
) -> Result<Vec<ServiceProcess>, BenchError> {
    // Every /metrics endpoint on a free port: ServiceProcess's default.
    let env = settings.pipeline_env();
    let bin_dir = bin_dir()?;
    std::fs::create_dir_all(work_dir)
        .map_err(|e| BenchError::io(work_dir.display().to_string(), e))?;
    // One process called `label` running `binary`; its log is `<label>.log`.
    let start = |binary: &str, label: &str, env: &[(&str, String)]| {
        ServiceProcess::spawn(
            &bin_dir.join(binary),
            label,
            config,
            env.iter().map(|(k, v)| (*k, v.as_str())),
            work_dir.join(format!("{label}.log")),
        )
    };
    let mut services = Vec::new();
    if let Some(addr) = producer_addr {
        let mut env = env.clone();
        env.extend([
            ("TALLY__PRODUCER__LISTEN", addr.to_owned()),
            ("TALLY__PRODUCER__INSTANCE_ID", format!("{name}-p")),
            (
                "TALLY__PRODUCER__MAX_CONNECTIONS",
                settings.producer.max_connections.to_string(),
            ),
        ]);
        services.push(start("tally-producer", "tally-producer", &env)?);
    }
    for i in 0..shape.counters {
        let mut env = env.clone();
        env.push(("TALLY__COUNTER__INSTANCE_ID", format!("{name}-c{i}")));
        services.push(start("tally-counter", &format!("tally-counter-{i}"), &env)?);
    }
    for i in 0..shape.aggregators {
        let label = format!("tally-aggregator-{i}");
        services.push(start("tally-aggregator", &label, &env)?);
    }
    Ok(services)
}

/// Processes to watch, named as they were started.
pub fn watched(services: &[ServiceProcess]) -> Vec<Watched> {
    services
        .iter()
        .map(|s| Watched {
            name: s.name().to_owned(),
            role: "tally".into(),
            pid: s.pid(),
        })
        .collect()
}

impl Pipeline {
    /// Creates the topics (RF and min ISR from `base`, `partitions` each) and
    /// starts the services; returns once a first small run came out exact.
    pub async fn start(
        base: &Settings,
        name: &str,
        partitions: i32,
        config: &Path,
        work_dir: &Path,
        producer_port: u16,
        shape: Shape,
    ) -> Result<Self, BenchError> {
        let settings = isolated_settings(base, name);
        create_topics(&settings.kafka, partitions, Duration::from_secs(60)).await?;
        let producer_addr = format!("127.0.0.1:{producer_port}");
        let work_dir = work_dir.join(name);
        let services = spawn_services(
            &settings,
            name,
            config,
            &work_dir,
            shape,
            Some(&producer_addr),
        )?;
        let inspector = Inspector::connect(&settings)
            .await
            .map_err(|e| BenchError::Check(format!("inspector: {e}")))?;
        let mut pipeline = Self {
            settings,
            producer_addr,
            services,
            inspector,
            work_dir,
        };
        pipeline.wait_listening(Duration::from_secs(60)).await?;
        Ok(pipeline)
    }

    /// The inspector reading this pipeline's counts.
    pub fn inspector(&self) -> &Inspector {
        &self.inspector
    }

    /// Where this pipeline's logs and manifests go.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The producer's pid.
    pub fn producer_pid(&self) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.name() == "tally-producer")
            .map(ServiceProcess::pid)
    }

    /// Fails if a service exited.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        for s in &mut self.services {
            s.running()?;
        }
        Ok(())
    }

    async fn wait_listening(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            for s in &mut self.services {
                s.running()?;
            }
            if TcpStream::connect(&self.producer_addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Check(format!(
                    "the producer did not listen on {} within {timeout:?}",
                    self.producer_addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Processes of the pipeline, to watch.
    pub fn processes(&self) -> Vec<Watched> {
        watched(&self.services)
    }

    /// Runs one point: `load`'s sessions; waits until exact.
    pub async fn point(
        &mut self,
        load: &Load<'_>,
        watched: Vec<Watched>,
    ) -> Result<E2ePoint, BenchError> {
        Ok(self.measure(load, None, watched).await?.0)
    }

    /// Runs one window of the sustained-rate search: like [`Pipeline::point`],
    /// and also reads the counting lag (messages ACKed but not yet in the
    /// clients' counts) `early` into the window, if it lasts that long, and when
    /// its last line was ACKed.
    pub async fn window(
        &mut self,
        load: &Load<'_>,
        early: Duration,
        watched: Vec<Watched>,
    ) -> Result<(E2ePoint, Lag), BenchError> {
        let (point, lag) = self.measure(load, Some(early), watched).await?;
        let lag = lag.ok_or_else(|| BenchError::Check("no lag reading".into()))?;
        Ok((point, lag))
    }

    async fn measure(
        &mut self,
        load: &Load<'_>,
        lag_early: Option<Duration>,
        mut watched: Vec<Watched>,
    ) -> Result<(E2ePoint, Option<Lag>), BenchError> {
        let Load {
            id,
            clients,
            lines,
            repeat,
            rate_per_client,
            distinct,
        } = *load;
        let input = self.work_dir.join(format!("{id}.txt"));
        std::fs::write(&input, lines.join("\n") + "\n")
            .map_err(|e| BenchError::io(input.display().to_string(), e))?;
        let plan = MtcPlan {
            clients,
            files: vec![input],
            repeat,
            rate: rate_per_client,
            addrs: vec![self.producer_addr.clone()],
            run_id: id.to_owned(),
            manifest_path: self.work_dir.join(format!("{id}.manifest.json")),
            window: WINDOW,
            timeout: load.send_timeout(),
            max_line: self.settings.producer.max_line_bytes,
            distinct,
            token_secret: None,
            tls: None,
        };
        let (manifest, lines, resumed) = mtc::prepare(&plan, &self.inspector)
            .await
            .map_err(|e| BenchError::Check(format!("mtc {id}: {e}")))?;
        let expected = manifest.per_client * manifest.clients.len() as u64;
        let client_keys = client_count_keys(&self.inspector, &manifest);

        watched.extend(self.processes());
        let sampler = Sampler::start(watched);
        let probe = Probe::start(
            self.producer_addr.clone(),
            format!("{}-probe-{id}", self.settings.redis.prefix),
            self.inspector.clone(),
        );
        let progress = Arc::new(Progress::default());
        let early = lag_early.map(|after| {
            let lag = LagReader {
                inspector: self.inspector.clone(),
                keys: client_keys.clone(),
                progress: progress.clone(),
            };
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                lag.read().await
            })
        });
        let started = Instant::now();
        let outcome = mtc::execute(&plan, manifest, lines, resumed, progress.clone())
            .await
            .map_err(|e| BenchError::Check(format!("mtc {id}: {e}")))?;
        let ingest_s = started.elapsed().as_secs_f64();
        probe.stop_sending();
        let lag = match (lag_early, early) {
            (Some(after), Some(task)) => {
                let end = LagReader {
                    inspector: self.inspector.clone(),
                    keys: client_keys,
                    progress,
                }
                .read()
                .await?;
                // A window shorter than `after` has no early reading.
                let early = if started.elapsed() > after {
                    task.await
                        .map_err(|e| BenchError::Task(e.to_string()))?
                        .map(Some)?
                } else {
                    task.abort();
                    None
                };
                Some(Lag { early, end })
            }
            _ => None,
        };
        if let Some((client, e)) = outcome.failures.first() {
            return Err(BenchError::Check(format!(
                "mtc {id}: {} of {clients} clients failed (first: {client}: {e})",
                outcome.failures.len()
            )));
        }
        let acked = outcome.manifest.result.as_ref().map_or(0, |r| r.acked);
        if acked != expected {
            return Err(BenchError::Check(format!(
                "mtc {id}: ACKed {acked} of {expected}"
            )));
        }
        let reconnects = outcome.manifest.result.as_ref().map_or(0, |r| r.reconnects);
        let counted_s = wait_counted(&self.inspector, &outcome.manifest, started).await?;
        let cost = sampler.finish(expected).await;
        let (exact, mismatches) = verdict(&self.inspector, &outcome.manifest).await?;
        let (e2e, probe_unavailable) = probe.finish(PROBE_COUNT_GRACE).await;
        for s in &mut self.services {
            s.running()?;
        }
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let point = E2ePoint {
            clients,
            rate_per_client,
            messages: expected,
            ingest_s,
            ingest_per_s: expected as f64 / ingest_s,
            counted_s,
            end_to_end_per_s: expected as f64 / counted_s,
            ack_p50_ms: q(&outcome.latency_us, 0.5),
            ack_p99_ms: q(&outcome.latency_us, 0.99),
            e2e_p50_ms: (!e2e.is_empty()).then(|| q(&e2e, 0.5)),
            e2e_p99_ms: (!e2e.is_empty()).then(|| q(&e2e, 0.99)),
            e2e_samples: e2e.len(),
            exact,
            mismatches,
            cost,
            err_unavailable: outcome
                .manifest
                .result
                .as_ref()
                .map_or(0, |r| r.err_unavailable)
                + probe_unavailable,
            reconnects,
        };
        Ok((point, lag))
    }
}

/// Whether each `step`-th of `pending` (from the first) reached its expected count.
async fn messages_done(
    inspector: &Inspector,
    pending: &[(MessageHash, u64)],
    step: usize,
) -> Result<Vec<bool>, BenchError> {
    let picked: Vec<&(MessageHash, u64)> = pending.iter().step_by(step).collect();
    let hashes: Vec<MessageHash> = picked.iter().map(|(h, _)| *h).collect();
    let found = inspector
        .message_counts(&hashes)
        .await
        .map_err(|e| BenchError::Check(format!("read counts: {e}")))?;
    Ok(picked
        .iter()
        .zip(found)
        .map(|((_, want), found)| found >= *want)
        .collect())
}

/// The Redis keys of the manifest's clients' counts.
fn client_count_keys(inspector: &Inspector, manifest: &Manifest) -> Vec<String> {
    manifest
        .clients
        .iter()
        .filter_map(|c| ClientId::parse(c).ok())
        .map(|c| inspector.keys().client_count(&c))
        .collect()
}

/// Waits until the manifest's counts are reached (they are judged by
/// [`verdict`]). Cheap readings first: the clients' counts until they add up,
/// then only the messages not yet at their expected count (counts only grow, so
/// one that reached it is not read again; an all-distinct run has as many
/// messages as records), a sample of about [`MESSAGE_SAMPLE`] of them per poll
/// until the sample is complete, then all those left. Returns the seconds from
/// `started` until the counts were all reached. Gives up after
/// [`DRAIN_TIMEOUT`], or when nothing moved for [`SETTLE`].
pub async fn wait_counted(
    inspector: &Inspector,
    manifest: &Manifest,
    started: Instant,
) -> Result<f64, BenchError> {
    let read = |keys: Vec<String>| async move {
        inspector
            .numbers(&keys)
            .await
            .map_err(|e| BenchError::Check(format!("read counts: {e}")))
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let keys = client_count_keys(inspector, manifest);
    let want = manifest.per_client * keys.len() as u64;
    let mut last = (0, Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < SETTLE {
        let sum: u64 = read(keys.clone()).await?.iter().sum();
        if sum >= want {
            break;
        }
        if sum != last.0 {
            last = (sum, Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }
    let mut pending: Vec<(MessageHash, u64)> = manifest
        .messages
        .iter()
        .filter_map(|m| {
            let hash: MessageHash = m.hash.parse().ok()?;
            Some((hash, manifest.expected_message_count(m)))
        })
        .collect();
    let mut last = (pending.len(), Instant::now());
    while !pending.is_empty() && Instant::now() < deadline && last.1.elapsed() < SETTLE {
        // A sample while it still finds messages short of their count, then all
        // those left: reading every message each poll made the check itself a
        // load on Redis as large as the aggregator's (an all-distinct run has as
        // many messages as records).
        let mut step = (pending.len() / MESSAGE_SAMPLE).max(1);
        let mut done = messages_done(inspector, &pending, step).await?;
        if step > 1 && done.iter().all(|d| *d) {
            step = 1;
            done = messages_done(inspector, &pending, step).await?;
        }
        let mut index = 0;
        pending.retain(|_| {
            let keep = index % step != 0 || !done[index / step];
            index += 1;
            keep
        });
        if pending.len() != last.0 {
            last = (pending.len(), Instant::now());
        }
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// [`wait_counted`], then [`verdict`]: (exact, first mismatches, seconds until
/// counted).
pub async fn wait_exact(
    inspector: &Inspector,
    manifest: &Manifest,
    started: Instant,
) -> Result<(bool, Vec<String>, f64), BenchError> {
    let counted_s = wait_counted(inspector, manifest, started).await?;
    let (exact, mismatches) = verdict(inspector, manifest).await?;
    Ok((exact, mismatches, counted_s))
}

/// `tally verify`'s check of the manifest's counts: (exact, first mismatches).
/// It reads every count once (as many messages as records in an all-distinct
/// run), so callers take their CPU readings before it.
pub async fn verdict(
    inspector: &Inspector,
    manifest: &Manifest,
) -> Result<(bool, Vec<String>), BenchError> {
    let verdict = verify::check(inspector, manifest)
        .await
        .map_err(|e| BenchError::Check(format!("verify: {e}")))?;
    let mismatches = verdict
        .mismatches
        .iter()
        .take(5)
        .map(|m| {
            format!(
                "{} {}: expected {} found {}",
                m.what, m.key, m.expected, m.found
            )
        })
        .collect();
    Ok((verdict.exact(), mismatches))
}

/// Probe messages for the ACK → counted latency: one sent every [`PROBE_EVERY`]
/// while the load runs (pipelined, see [`send_probes`]); each ACKed one is looked
/// up every [`PROBE_POLL`] until its message count is 1.
struct Probe {
    sending: Arc<AtomicBool>,
    unavailable: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    sender: tokio::task::JoinHandle<Result<(), String>>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(addr: String, client: String, inspector: Inspector) -> Self {
        let sending = Arc::new(AtomicBool::new(true));
        let unavailable = Arc::new(AtomicU64::new(0));
        let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let latencies = Arc::new(Mutex::new(crate::latency_histogram()));
        let sender = tokio::spawn(send_probes(
            addr,
            client,
            sending.clone(),
            unavailable.clone(),
            acked.clone(),
        ));
        let poller = tokio::spawn(poll_probes(inspector, acked.clone(), latencies.clone()));
        Self {
            sending,
            unavailable,
            acked,
            sender,
            latencies,
            poller,
        }
    }

    fn stop_sending(&self) {
        self.sending.store(false, Ordering::Relaxed);
    }

    /// Stops sending, waits for the last ACKs, then up to `grace` for the ACKed
    /// probes to be counted; any still uncounted then are left out, with a warning.
    /// Returns the latencies and the `ERR unavailable` answers the probe got.
    async fn finish(self, grace: Duration) -> (Histogram<u64>, u64) {
        self.stop_sending();
        match self.sender.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("latency probe stopped early: {e}"),
            Err(e) => tracing::warn!("latency probe task failed: {e}"),
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.acked.lock().await.is_empty() {
            tokio::time::sleep(PROBE_POLL).await;
        }
        self.poller.abort();
        let uncounted = self.acked.lock().await.len();
        if uncounted > 0 {
            tracing::warn!("{uncounted} latency probe(s) not counted within {grace:?}: left out");
        }
        let h = self.latencies.lock().await.clone();
        (h, self.unavailable.load(Ordering::Relaxed))
    }
}

/// Sends a probe line every [`PROBE_EVERY`] without waiting for its ACK (a slow
/// ACK must not thin out the samples), and notes when each was ACKed; ACKs are
/// cumulative, so `ACK n` covers every probe up to sn n.
async fn send_probes(
    addr: String,
    client: String,
    sending: Arc<AtomicBool>,
    unavailable: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
) -> Result<(), String> {
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("probe connect: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read).lines();
    write
        .write_all(format!("HELLO {client}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let welcome = read.next_line().await.map_err(|e| e.to_string())?;
    if welcome
        .as_deref()
        .is_some_and(|l| l.starts_with("ERR unavailable"))
    {
        unavailable.fetch_add(1, Ordering::Relaxed);
    }
    let last_sn: u64 = welcome
        .as_deref()
        .and_then(|w| w.strip_prefix("WELCOME "))
        .and_then(|w| w.split_whitespace().nth(1))
        .and_then(|sn| sn.parse().ok())
        .ok_or_else(|| format!("probe: expected WELCOME, got {welcome:?}"))?;
    let mut pending: std::collections::VecDeque<(u64, String)> = Default::default();
    let mut next_sn = last_sn + 1;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut last_acks = None;
    loop {
        let send = sending.load(Ordering::Relaxed);
        if !send {
            if pending.is_empty() {
                return Ok(());
            }
            let deadline = *last_acks.get_or_insert_with(|| Instant::now() + PROBE_ACK_GRACE);
            if Instant::now() > deadline {
                return Err(format!("probe: {} line(s) never ACKed", pending.len()));
            }
        }
        tokio::select! {
            _ = tick.tick(), if send => {
                let text = format!("{client} message {next_sn}");
                write
                    .write_all(format!("{text}\n").as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                pending.push_back((next_sn, text));
                next_sn += 1;
            }
            line = read.next_line() => {
                let line = line.map_err(|e| e.to_string())?;
                if line.as_deref().is_some_and(|l| l.starts_with("ERR unavailable")) {
                    unavailable.fetch_add(1, Ordering::Relaxed);
                }
                let sn: u64 = line
                    .as_deref()
                    .and_then(|l| l.strip_prefix("ACK "))
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| format!("probe: expected ACK, got {line:?}"))?;
                let now = Instant::now();
                let mut done = acked.lock().await;
                while pending.front().is_some_and(|(p, _)| *p <= sn) {
                    if let Some((_, text)) = pending.pop_front() {
                        done.push((text, now));
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn poll_probes(
    inspector: Inspector,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    latencies: Arc<Mutex<Histogram<u64>>>,
) {
    loop {
        tokio::time::sleep(PROBE_POLL).await;
        let outstanding: Vec<(String, Instant)> = acked.lock().await.clone();
        if outstanding.is_empty() {
            continue;
        }
        let hashes: Vec<MessageHash> = outstanding
            .iter()
            .map(|(text, _)| MessageHash::of(text.as_bytes()))
            .collect();
        let Ok(counts) = inspector.message_counts(&hashes).await else {
            continue;
        };
        let now = Instant::now();
        let mut done = Vec::new();
        for ((text, at), count) in outstanding.iter().zip(counts) {
            if count > 0 {
                let _ = latencies
                    .lock()
                    .await
                    .record(now.duration_since(*at).as_micros() as u64);
                done.push(text.clone());
            }
        }
        acked.lock().await.retain(|(t, _)| !done.contains(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(lines: &[String], repeat: u64, rate_per_client: Option<f64>) -> Load<'_> {
        Load {
            id: "t",
            clients: 100,
            lines,
            repeat,
            rate_per_client,
            distinct: false,
        }
    }

    #[test]
    fn a_paced_load_may_take_its_own_duration_plus_the_slack() {
        let lines = vec![String::from("x"); 1_000];
        // The default warm-up: 15,000 msg/s from 100 clients for 900 s.
        let warm_up = load(&lines, 135, Some(150.0));
        assert_eq!(
            warm_up.send_timeout(),
            Duration::from_secs(900) + SEND_SLACK
        );
        assert_eq!(load(&lines, 1, None).send_timeout(), SEND_SLACK);
        assert_eq!(load(&lines, 1, Some(0.0)).send_timeout(), SEND_SLACK);
        assert_eq!(
            load(&lines, u64::MAX, Some(1e-300)).send_timeout(),
            Duration::MAX
        );
    }
}
