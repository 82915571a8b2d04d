//! The fault-injection harness: the built services as real processes on the local
//! stack, load from `tally mtc` (resuming clients), faults through `scripts/stack`
//! and signals, and `tally verify` as the judge.
//!
//! Invariant: a scenario passes only on the oracle's word — `tally verify` exiting 0
//! after the run drained — never on anything the harness infers. Each scenario has
//! its own key prefix, topics and consumer groups, so scenarios run one after
//! another without cleanup; scenarios in one process are serialized (they kill
//! shared brokers and Redis masters), and every process a scenario started is
//! killed when its harness is dropped, also on a failed assertion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tally_client::inspect::Inspector;
use tally_client::manifest::Manifest;
use tally_common::{ClientId, Keys, Settings};

use crate::pipeline::{isolated, service_env};
use crate::report::{FaultKind, FaultMark, Sample, ScenarioReport};
use crate::{binary, free_port, local_config, repo_root, unique, wait_listening, ServiceProcess};
use tally_harness::Lab;

/// Scenarios in one test binary run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub use tally_common::service::Role;

/// How many of each service a scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Producers (each on its own port, distinct instance ids).
    pub producers: usize,
    /// Counters.
    pub counters: usize,
    /// Aggregators.
    pub aggregators: usize,
}

/// The load of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Concurrent clients.
    pub clients: usize,
    /// Non-empty lines of the novel each client replays.
    pub lines: usize,
    /// Messages per second per client.
    pub rate: f64,
}

/// Rounds for repeated faults: `TALLY_CHAOS_ROUNDS` (default 3).
pub fn rounds() -> usize {
    std::env::var("TALLY_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3)
}

/// Where reports and charts go: `TALLY_CHAOS_RESULTS`, else `target/chaos`.
pub fn results_dir() -> PathBuf {
    std::env::var_os("TALLY_CHAOS_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/chaos"))
}

/// `(seconds since start, stored, counted)` over the run's clients.
type Reading = (f64, u64, u64);

/// One scenario in progress.
pub struct Harness {
    /// Scenario name (file names).
    pub name: String,
    title: String,
    /// The scenario's isolated settings.
    pub settings: Settings,
    /// Producer addresses, by index.
    pub producer_addrs: Vec<String>,
    producer_ids: Vec<String>,
    /// Extra environment of each producer, kept across restarts (a skewed clock).
    producer_env: Vec<Vec<(&'static str, String)>>,
    producers: Vec<Option<ServiceProcess>>,
    counters: Vec<Option<ServiceProcess>>,
    aggregators: Vec<Option<ServiceProcess>>,
    extra: Vec<(&'static str, String)>,
    started: Instant,
    faults: Vec<FaultMark>,
    notes: Vec<String>,
    readings: Arc<Mutex<Vec<Reading>>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    load: Option<Child>,
    load_spec: Option<LoadSpec>,
    /// Highest `duplicate` record count scraped from each service process (by pid).
    duplicates_seen: std::collections::HashMap<u32, u64>,
    expected: u64,
    run_id: String,
    dir: tempfile::TempDir,
    /// The network lab, when the scenario runs on it: each service on its own
    /// lab host ([`Harness::host_of`]).
    lab: Option<Lab>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Harness {
    /// Starts the services of `topology` on fresh topics and groups. `extra` is
    /// added to every service's environment.
    pub async fn start(
        name: &str,
        title: &str,
        topology: Topology,
        extra: &[(&'static str, String)],
    ) -> Self {
        Self::start_skewed(name, title, topology, extra, &[]).await
    }

    /// [`Harness::start`] with producer `i`'s wall clock `clock_offsets_s[i]`
    /// seconds off the host's (libfaketime, [`tally_harness::skewed_clock_env`]);
    /// producers beyond the slice keep the true clock.
    pub async fn start_skewed(
        name: &str,
        title: &str,
        topology: Topology,
        extra: &[(&'static str, String)],
        clock_offsets_s: &[i64],
    ) -> Self {
        let serial = SERIAL.lock().await;
        let settings = isolated(&format!("chaos-{name}"), 6).await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut harness = Self {
            name: name.to_owned(),
            title: title.to_owned(),
            settings,
            producer_addrs: Vec::new(),
            producer_ids: Vec::new(),
            producer_env: Vec::new(),
            producers: Vec::new(),
            counters: Vec::new(),
            aggregators: Vec::new(),
            extra: extra.to_vec(),
            started: Instant::now(),
            faults: Vec::new(),
            notes: Vec::new(),
            readings: Arc::new(Mutex::new(Vec::new())),
            sampler: None,
            load: None,
            load_spec: None,
            duplicates_seen: std::collections::HashMap::new(),
            expected: 0,
            run_id: unique("run"),
            dir,
            lab: Lab::current(),
            _serial: serial,
        };
        for i in 0..topology.producers {
            let ip = harness
                .placement(Role::Producer, i)
                .map_or_else(|| "127.0.0.1".to_owned(), |(_, ip)| ip);
            harness.producer_addrs.push(format!("{ip}:{}", free_port()));
            harness.producer_ids.push(unique(&format!("p{i}")));
            harness.producer_env.push(match clock_offsets_s.get(i) {
                Some(&offset) => tally_harness::skewed_clock_env(offset)
                    .unwrap_or_else(|e| panic!("producer {i}'s clock: {e}")),
                None => Vec::new(),
            });
            harness.producers.push(None);
            harness.start_producer(i);
        }
        for i in 0..topology.counters {
            harness.counters.push(None);
            harness.start_counter(i, &[]);
        }
        for i in 0..topology.aggregators {
            harness.aggregators.push(None);
            harness.start_aggregator(i, &[]);
        }
        for addr in &harness.producer_addrs {
            wait_listening(addr, Duration::from_secs(30)).await;
        }
        harness
    }

    fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = service_env(&self.settings, &self.extra);
        env.extend(extra.iter().cloned());
        env
    }

    /// The network lab, when the scenario runs on it.
    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_ref()
    }

    /// The lab host member `i` of `role` runs on (`producer-1` for producer 0).
    pub fn host_of(role: Role, i: usize) -> String {
        format!("{}-{}", role.name(), i + 1)
    }

    /// On the lab: member `i` of `role`'s namespace and address.
    fn placement(&self, role: Role, i: usize) -> Option<(String, String)> {
        let lab = self.lab.as_ref()?;
        let host = lab.host(&Self::host_of(role, i));
        Some((host.netns.clone(), host.addr.to_string()))
    }

    /// Starts member `i` of `role` with `env`: on its lab host when there is a
    /// lab (its `/metrics` on that host's address, so the harness can scrape it).
    fn spawn(&self, role: Role, i: usize, mut env: Vec<(&'static str, String)>) -> ServiceProcess {
        let placement = self.placement(role, i);
        if let Some((_, ip)) = &placement {
            let key = match role {
                Role::Producer => "TALLY__PRODUCER__OBSERVE_LISTEN",
                Role::Counter => "TALLY__COUNTER__OBSERVE_LISTEN",
                Role::Aggregator => "TALLY__AGGREGATOR__OBSERVE_LISTEN",
            };
            env.push((key, format!("{ip}:0")));
        }
        let netns = placement.as_ref().map(|(ns, _)| ns.as_str());
        ServiceProcess::start_in(netns, role.binary(), &env)
    }

    /// Starts producer `i` (again), same address, instance id and clock.
    pub fn start_producer(&mut self, i: usize) {
        let mut env = self.env(&self.producer_env[i]);
        env.push(("TALLY__PRODUCER__LISTEN", self.producer_addrs[i].clone()));
        env.push(("TALLY__PRODUCER__INSTANCE_ID", self.producer_ids[i].clone()));
        self.producers[i] = Some(self.spawn(Role::Producer, i, env));
    }

    /// Starts counter `i` (again; instance `c<i>`), with `extra` environment.
    pub fn start_counter(&mut self, i: usize, extra: &[(&'static str, String)]) {
        let mut env = self.env(extra);
        env.push(("TALLY__COUNTER__INSTANCE_ID", format!("c{i}")));
        self.counters[i] = Some(self.spawn(Role::Counter, i, env));
    }

    /// Starts aggregator `i` (again), with `extra` environment.
    pub fn start_aggregator(&mut self, i: usize, extra: &[(&'static str, String)]) {
        let env = self.env(extra);
        self.aggregators[i] = Some(self.spawn(Role::Aggregator, i, env));
    }

    /// Member `i` of `role`'s process.
    pub fn process(&mut self, role: Role, i: usize) -> &mut ServiceProcess {
        match role {
            Role::Producer => self.producer(i),
            Role::Counter => self.counter(i),
            Role::Aggregator => self.aggregator(i),
        }
    }

    /// Starts member `i` of `role` (again) with `extra` environment (producers
    /// take none: they keep their address and instance id).
    pub fn restart(&mut self, role: Role, i: usize, extra: &[(&'static str, String)]) {
        match role {
            Role::Producer => self.start_producer(i),
            Role::Counter => self.start_counter(i, extra),
            Role::Aggregator => self.start_aggregator(i, extra),
        }
    }

    /// Room for one more counter (start it with [`Harness::start_counter`]).
    pub fn add_counter_slot(&mut self) {
        self.counters.push(None);
    }

    /// Counters, running or not.
    pub fn counter_count(&self) -> usize {
        self.counters.len()
    }

    /// Producer `i`'s instance id (the owner name in stashes).
    pub fn producer_id(&self, i: usize) -> &str {
        &self.producer_ids[i]
    }

    /// The log file of each producer's latest start, by index. The files outlive
    /// the processes, so they can be read after [`Harness::finish`].
    pub fn producer_logs(&self) -> Vec<Option<PathBuf>> {
        self.producers
            .iter()
            .map(|p| p.as_ref().map(|p| p.log.clone()))
            .collect()
    }

    /// Counter `i`'s process.
    pub fn counter(&mut self, i: usize) -> &mut ServiceProcess {
        self.counters[i]
            .as_mut()
            .unwrap_or_else(|| panic!("counter {i} is not running"))
    }

    /// Aggregator `i`'s process.
    pub fn aggregator(&mut self, i: usize) -> &mut ServiceProcess {
        self.aggregators[i]
            .as_mut()
            .unwrap_or_else(|| panic!("aggregator {i} is not running"))
    }

    /// Producer `i`'s process.
    pub fn producer(&mut self, i: usize) -> &mut ServiceProcess {
        self.producers[i]
            .as_mut()
            .unwrap_or_else(|| panic!("producer {i} is not running"))
    }

    /// Records a fault being injected now.
    pub fn inject(&mut self, label: impl Into<String>) {
        self.mark(label.into(), FaultKind::Inject);
    }

    /// Records a fault being healed now.
    pub fn heal(&mut self, label: impl Into<String>) {
        self.mark(label.into(), FaultKind::Heal);
    }

    /// Records a figure the scenario measured (shown under its chart).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("[{}] note: {note}", self.name);
        self.notes.push(note);
    }

    fn mark(&mut self, label: String, kind: FaultKind) {
        // Before a fault takes a process down: what it absorbed so far.
        self.scrape_duplicates_blocking();
        let at_s = self.started.elapsed().as_secs_f64();
        eprintln!("[{}] {at_s:7.1} s  {kind:?} {label}", self.name);
        self.faults.push(FaultMark { at_s, label, kind });
    }

    /// Starts `tally mtc` against every producer, and a sampler of the stored and
    /// counted totals.
    pub async fn start_load(&mut self, spec: LoadSpec) {
        let novel = std::fs::read_to_string(repo_root().join("data/pride-and-prejudice.txt"))
            .unwrap_or_else(|e| panic!("read the novel: {e}"));
        let lines: Vec<&str> = novel
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
            .take(spec.lines)
            .collect();
        let file = self.dir.path().join("workload.txt");
        std::fs::write(&file, lines.join("\n")).unwrap_or_else(|e| panic!("write workload: {e}"));
        self.expected = (lines.len() * spec.clients) as u64;
        self.load_spec = Some(spec);
        self.spawn_load();

        let inspector = Inspector::connect(&self.settings)
            .await
            .unwrap_or_else(|e| panic!("inspector: {e}"));
        let keys = Keys::new(self.settings.redis.prefix.clone());
        let clients: Vec<ClientId> = (0..spec.clients)
            .map(|i| {
                ClientId::parse(&Manifest::client_id(&self.run_id, i))
                    .unwrap_or_else(|e| panic!("client id: {e}"))
            })
            .collect();
        let readings = self.readings.clone();
        let started = self.started;
        self.sampler = Some(tokio::spawn(async move {
            loop {
                if let Some((stored, counted)) = totals(&inspector, &keys, &clients).await {
                    readings
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((started.elapsed().as_secs_f64(), stored, counted));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    /// Scrapes every running counter's and aggregator's `duplicate` records
    /// counter and keeps the highest value seen per process.
    async fn scrape_duplicates(&mut self) {
        let mut targets = Vec::new();
        for (metric, list) in [
            ("tally_counter_records_total", &self.counters),
            ("tally_aggregator_records_total", &self.aggregators),
        ] {
            for p in list.iter().flatten() {
                if let Some(addr) = p.metrics_addr() {
                    targets.push((p.pid(), addr, metric));
                }
            }
        }
        for (pid, addr, metric) in targets {
            let Ok(Ok((200, page))) =
                tokio::time::timeout(Duration::from_secs(2), crate::http_get(&addr, "/metrics"))
                    .await
            else {
                continue;
            };
            if let Some(value) = crate::metric_sample(&page, metric, &[("outcome", "duplicate")]) {
                let seen = self.duplicates_seen.entry(pid).or_default();
                *seen = (*seen).max(value as u64);
            }
        }
    }

    fn scrape_duplicates_blocking(&mut self) {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(self.scrape_duplicates()));
    }

    /// Starts `tally mtc` for the load spec; a restart resumes the same run.
    fn spawn_load(&mut self) {
        let spec = self.load_spec.unwrap_or_else(|| panic!("no load spec"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mtc.log"))
            .unwrap_or_else(|e| panic!("mtc log: {e}"));
        let mut cmd = Command::new(binary("tally"));
        cmd.arg("--config")
            .arg(local_config())
            .args(["mtc", "--clients", &spec.clients.to_string()])
            .arg("--file")
            .arg(self.dir.path().join("workload.txt"))
            .args(["--rate", &spec.rate.to_string()])
            .args(["--addr", &self.producer_addrs.join(",")])
            .args(["--run-id", &self.run_id])
            .arg("--manifest")
            .arg(self.manifest_path())
            .args(["--window", "200", "--timeout", "15m"])
            .stdout(Stdio::from(
                log.try_clone().unwrap_or_else(|e| panic!("mtc log: {e}")),
            ))
            .stderr(Stdio::from(log));
        for (k, v) in ServiceProcess::env_for(&self.settings) {
            cmd.env(k, v);
        }
        self.load = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("start tally mtc: {e}")),
        );
    }

    /// Kills the load generator (every client connection drops at once) and
    /// starts it again with the same run id: the clients resume.
    pub fn restart_load(&mut self) {
        if let Some(mut load) = self.load.take() {
            let _ = load.kill();
            let _ = load.wait();
        }
        self.spawn_load();
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("run.json")
    }

    fn latest(&self) -> Option<Reading> {
        self.readings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .copied()
    }

    /// Waits until at least `fraction` of the expected messages were counted.
    pub async fn wait_counted(&self, fraction: f64, timeout: Duration) {
        self.wait_progress("counted", |(_, _, counted)| counted, fraction, timeout)
            .await;
    }

    /// Waits until at least `fraction` of the expected messages were stored (ACKed).
    pub async fn wait_stored(&self, fraction: f64, timeout: Duration) {
        self.wait_progress("stored", |(_, stored, _)| stored, fraction, timeout)
            .await;
    }

    async fn wait_progress(
        &self,
        what: &str,
        pick: fn(Reading) -> u64,
        fraction: f64,
        timeout: Duration,
    ) {
        let target = (self.expected as f64 * fraction) as u64;
        let deadline = Instant::now() + timeout;
        while self.latest().is_none_or(|r| pick(r) < target) {
            assert!(
                Instant::now() < deadline,
                "[{}] {what} {:?} of {target} after {timeout:?}\n{}",
                self.name,
                self.latest(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The tails of every service's log and of the load's.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let groups = [
            ("producer", &self.producers),
            ("counter", &self.counters),
            ("aggregator", &self.aggregators),
        ];
        for (what, list) in groups {
            for (i, p) in list.iter().enumerate() {
                if let Some(p) = p {
                    out.push_str(&format!(
                        "---- {what} {i} ({})\n{}\n",
                        p.log.display(),
                        p.log_tail()
                    ));
                }
            }
        }
        let mtc = std::fs::read_to_string(self.dir.path().join("mtc.log")).unwrap_or_default();
        out.push_str(&format!("---- tally mtc\n{mtc}\n"));
        out
    }

    /// Waits for the load to end, lets `tally verify` judge, and writes the
    /// scenario's chart and JSON into [`results_dir`]. Returns the report; the
    /// caller asserts on it.
    pub async fn finish(mut self) -> ScenarioReport {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut load = self
            .load
            .take()
            .unwrap_or_else(|| panic!("no load was started"));
        let status = loop {
            if let Some(status) = load.try_wait().unwrap_or_else(|e| panic!("wait mtc: {e}")) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] tally mtc did not finish\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            status.success(),
            "[{}] tally mtc failed: {status}\n{}",
            self.name,
            self.logs()
        );

        let verify = Command::new(binary("tally"))
            .arg("--config")
            .arg(local_config())
            .arg("verify")
            .arg("--manifest")
            .arg(self.manifest_path())
            .args(["--timeout", "300s", "--settle", "45s", "--show", "10"])
            .envs(ServiceProcess::env_for(&self.settings))
            .output()
            .unwrap_or_else(|e| panic!("run tally verify: {e}"));
        let verify_out = String::from_utf8_lossy(&verify.stdout).into_owned();
        eprintln!(
            "[{}] tally verify:\n{verify_out}{}",
            self.name,
            String::from_utf8_lossy(&verify.stderr)
        );
        let exact = verify.status.code() == Some(0);
        assert!(
            matches!(verify.status.code(), Some(0 | 1)),
            "[{}] tally verify could not judge: {}\n{}",
            self.name,
            String::from_utf8_lossy(&verify.stderr),
            verify_out
        );
        let mismatches: Vec<String> = verify_out
            .lines()
            .skip_while(|l| !l.starts_with("first mismatches"))
            .skip(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        // One more reading after the drain, then stop sampling.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }

        let manifest =
            Manifest::load(&self.manifest_path()).unwrap_or_else(|e| panic!("read manifest: {e}"));
        let result = manifest
            .result
            .clone()
            .unwrap_or_else(|| panic!("manifest without result"));
        self.scrape_duplicates().await;
        let duplicates_absorbed: u64 = self.duplicates_seen.values().sum();
        let readings = self
            .readings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let report = ScenarioReport {
            name: self.name.clone(),
            title: self.title.clone(),
            // After a restarted load the last process only knows its own share;
            // what is stored is what was ACKed.
            sent: result.sent,
            acked: readings
                .last()
                .map_or(result.acked, |(_, stored, _)| *stored),
            expected: self.expected,
            exact,
            mismatches,
            duplicates_absorbed,
            err_unavailable: result.err_unavailable,
            unavailable_reasons: result.unavailable_reasons.clone(),
            samples: rates(&readings),
            faults: self.faults.clone(),
            notes: self.notes.clone(),
            elapsed: self.started.elapsed(),
        };
        let dir = results_dir();
        if let Err(e) = save(&report, &dir) {
            eprintln!(
                "[{}] could not write the report into {}: {e}",
                self.name,
                dir.display()
            );
        }
        if !exact {
            eprintln!("{}", self.logs());
        }
        report
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut load) = self.load.take() {
            let _ = load.kill();
            let _ = load.wait();
        }
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
    }
}

/// Sum of `meta.sn` (stored) and `count` (counted) over the clients.
async fn totals(inspector: &Inspector, keys: &Keys, clients: &[ClientId]) -> Option<(u64, u64)> {
    let counted_keys: Vec<String> = clients.iter().map(|c| keys.client_count(c)).collect();
    let counted: u64 = inspector.numbers(&counted_keys).await.ok()?.iter().sum();
    let mut stored = 0;
    for client in clients {
        stored += inspector.client(client).await.ok()?.stored_sn;
    }
    Some((stored, counted))
}

/// Rates between consecutive readings.
fn rates(readings: &[Reading]) -> Vec<Sample> {
    readings
        .windows(2)
        .map(|w| {
            let (t0, s0, c0) = w[0];
            let (t1, s1, c1) = w[1];
            let dt = (t1 - t0).max(1e-3);
            Sample {
                at_s: t1,
                acked_per_s: s1.saturating_sub(s0) as f64 / dt,
                counted_per_s: c1.saturating_sub(c0) as f64 / dt,
            }
        })
        .collect()
}

fn save(report: &ScenarioReport, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    crate::report::write_chart(report, &dir.join(format!("{}.png", report.name)))
        .map_err(|e| e.to_string())?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("{}.json", report.name)), json).map_err(|e| e.to_string())
}

/// Writes a scenario's figure to stderr even when the test passes: libtest
/// captures `eprintln!` and shows it only on failure, while a write to the stream
/// itself reaches `scripts/chaos`'s test-output.log either way.
pub fn tell(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The instance each adoption in a producer's log took a client from: the `from`
/// field of every `adopted client` line (`tally_producer::takeover` logs one per client
/// adopted, where it also counts `tally_producer_takeovers_total`).
pub fn adoptions_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("adopted client"))
        .filter_map(|line| {
            let from = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("from="))?;
            Some(from.trim_matches('"').to_owned())
        })
        .collect()
}

/// The stack node name (`redis-<port>`) of the master that serves `key` now.
pub async fn redis_master_of(settings: &Settings, key: &str) -> String {
    let mut admin = tally_common::redis::connect_seed(&settings.redis)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("KEYSLOT: {e}"));
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER NODES: {e}"));
    let master = crate::parse_cluster_nodes(&nodes)
        .into_iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .unwrap_or_else(|| panic!("no master serves slot {slot}"));
    let port = master.addr.rsplit(':').next().unwrap_or_default();
    format!("redis-{port}")
}

/// One numeric `INFO` field of the node at `addr`.
pub async fn node_info(addr: &str, field: &str) -> Option<i64> {
    node_info_text(addr, field).await?.parse().ok()
}

/// One `INFO` field of the node at `addr`, asked directly (not through the cluster
/// client, which would follow the slots elsewhere); `None` when it does not answer.
pub async fn node_info_text(addr: &str, field: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let info: String = tokio::time::timeout(
        Duration::from_secs(3),
        redis::cmd("INFO").arg("everything").query_async(&mut conn),
    )
    .await
    .ok()?
    .ok()?;
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

/// The cluster's view of its nodes, from any node that answers.
pub async fn cluster_nodes(h: &Harness) -> Vec<crate::ClusterNode> {
    let mut admin = tally_common::redis::connect_seed(&h.settings.redis)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER NODES: {e}"));
    crate::parse_cluster_nodes(&text)
}

/// Makes the replica `node` (`redis-<port>`) its shard's master again with
/// `CLUSTER FAILOVER` (a coordinated switch: no write is lost), and waits until
/// it is; does nothing when it is a master already.
pub async fn make_master(h: &Harness, node: &str) {
    let port = node.trim_start_matches("redis-");
    let addr = cluster_nodes(h)
        .await
        .into_iter()
        .find(|n| n.addr.ends_with(&format!(":{port}")))
        .unwrap_or_else(|| panic!("{node} is not in the cluster"))
        .addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut asked = false;
    while node_info_text(&addr, "role").await.as_deref() != Some("master") {
        assert!(
            Instant::now() < deadline,
            "{node} did not become master again"
        );
        if !asked {
            let client = redis::Client::open(format!("redis://{addr}/"))
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            let _: () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {node}: {e}"));
            asked = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the master `node` (`redis-<port>`) a replica: its replica takes its slots
/// with `CLUSTER FAILOVER` (coordinated, no write lost), and this waits until it
/// has. Before a Redis node on a small disk is moved back: moving restarts it,
/// and its AOF there may be stale (the lab's small disk is a mount of its own, so
/// every AOF rewrite fails crossing devices, and a node that full-synced there has
/// no AOF of what it holds). Restarted as a master within cluster-node-timeout it
/// would serve that stale copy and its replica would resync from it, losing
/// replicated, ACKed writes (seen in the network soak); as a replica it resyncs.
pub async fn hand_over_master(h: &Harness, node: &str) {
    let port = node.trim_start_matches("redis-");
    let nodes = cluster_nodes(h).await;
    let Some(me) = nodes.iter().find(|n| n.addr.ends_with(&format!(":{port}"))) else {
        panic!("{node} is not in the cluster");
    };
    if !me.master {
        return;
    }
    let replica = nodes
        .iter()
        .find(|n| n.master_id.as_deref() == Some(me.id.as_str()))
        .unwrap_or_else(|| panic!("{node} has no replica to hand its slots to"));
    let replica_port = replica.addr.rsplit(':').next().unwrap_or_default();
    make_master(h, &format!("redis-{replica_port}")).await;
}

/// The first client id of the scenario's run (its keys decide which Redis master a
/// scenario kills).
pub fn first_client(harness: &Harness) -> ClientId {
    ClientId::parse(&Manifest::client_id(&harness.run_id, 0))
        .unwrap_or_else(|e| panic!("client id: {e}"))
}

/// Starts a scenario's services (small batches) and its load.
pub async fn scenario(name: &str, title: &str, topology: Topology, load: LoadSpec) -> Harness {
    let mut h = Harness::start(name, title, topology, &small_batches()).await;
    h.start_load(load).await;
    h
}

/// Small batches, so a fault lands between many transactions.
pub fn small_batches() -> Vec<(&'static str, String)> {
    vec![
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "200".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "200".to_owned()),
    ]
}

/// A soak's length: `TALLY_CHAOS_MINUTES` (`scripts/chaos --minutes`, and
/// `--net-minutes` for the network soak; 3 if unset) of load with faults dealt
/// throughout, then however long the pipeline takes to drain, which is not part of
/// the minutes.
#[derive(Debug, Clone, Copy)]
pub struct SoakSpan {
    /// Minutes of load and faults.
    pub minutes: f64,
}

impl SoakSpan {
    /// From `TALLY_CHAOS_MINUTES`.
    pub fn from_env() -> Self {
        let minutes = std::env::var("TALLY_CHAOS_MINUTES")
            .ok()
            .and_then(|m| m.parse().ok())
            .filter(|m: &f64| *m > 0.0)
            .unwrap_or(3.0);
        Self { minutes }
    }

    /// The span as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.minutes * 60.0)
    }

    /// The rate (lines per second per client) that spreads `lines` over the span.
    pub fn rate(self, lines: usize) -> f64 {
        lines as f64 / (self.minutes * 60.0)
    }
}

/// How long a scenario waits for progress before it fails.
pub const SETTLE: Duration = Duration::from_secs(180);

/// Whether this is the full suite (`scripts/chaos` sets `TALLY_CHAOS_FULL=1`)
/// rather than the quick subset CI runs.
pub fn full() -> bool {
    std::env::var("TALLY_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// The judge's word: every count exact, every message ACKed.
pub fn assert_exact(report: &ScenarioReport) {
    assert!(
        report.exact,
        "{}: counts are not exact: {:#?}",
        report.name, report.mismatches
    );
    assert_eq!(
        report.acked, report.expected,
        "{}: not every message was ACKed",
        report.name
    );
}

/// Progress fractions at which `n` faults are injected, spread over the run.
pub fn at(i: usize, n: usize) -> f64 {
    0.05 + 0.75 * i as f64 / n.max(1) as f64
}

/// One producer, one counter, one aggregator.
pub fn one_each() -> Topology {
    Topology {
        producers: 1,
        counters: 1,
        aggregators: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::adoptions_in;

    #[test]
    fn adoptions_are_read_from_the_takeover_log_lines() {
        let log = "\
2026-11-27T04:50:00.1Z  INFO tally_producer::takeover: producer instance is dead; adopting its share of clients dead=p1-x silent_ms=31000
2026-11-27T04:50:00.2Z  INFO tally_producer::takeover: adopted client client=mtc-r-0 from=\"p1-x\" epoch=3 sn=10 flushed=8
2026-11-27T04:50:00.3Z  INFO tally_producer::takeover: adopted client client=mtc-r-3 from=p2-y epoch=2 sn=0 flushed=0
2026-11-27T04:50:00.4Z  INFO tally_producer: re-adopted this instance's clients from its previous run readopted=1";
        assert_eq!(adoptions_in(log), ["p1-x", "p2-y"]);
        assert!(adoptions_in("").is_empty());
    }
}
