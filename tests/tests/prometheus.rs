//! A real Prometheus (Debian package `prometheus`) scraping real pipelines on the
//! live stack, queried through its HTTP API:
//!
//! - every expression of `deploy/grafana/dashboards/tally.json` returns data for a
//!   pipeline that ran load (non-zero where the load makes it so), and no alert
//!   fires for that healthy pipeline;
//! - every rule of `deploy/grafana/alerts.yml` fires on its live fault: a killed
//!   producer, a producer whose Kafka is unreachable (flush lag), a counter slower
//!   than its input (consumer lag growing), a client left in a gap (stalled), a
//!   poison record (dead-lettered).
//!
//! Prometheus's configuration is derived from `deploy/grafana/prometheus-local.yml`
//! (its jobs, with this test's targets and 1 s intervals) and the rules are
//! `alerts.yml` with every `for:` shortened, so the expressions tested are the
//! deployed ones. scripts/test installs the package (scripts/lib/prometheus.sh) and
//! sets TALLY_PROMETHEUS_REQUIRED, under which a missing `prometheus` fails the
//! test instead of skipping it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_client::session::send_all;
use tally_common::ClientId;
use tally_harness::repo_root;
use tally_tests::pipeline::{
    isolated, produce, service_env, start_aggregator, start_counter, RawRecord,
};
use tally_tests::{free_port, http_get, messages, wait_listening, ServiceProcess};

/// `for:` of every rule in the test (the deployed values are minutes).
const TEST_FOR: &str = "3s";
/// `$__rate_interval` of the dashboard, as Grafana would set it for a 1 s scrape.
const RATE_INTERVAL: &str = "1m";

/// The `prometheus` executable, or why the test is skipped.
fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("TALLY_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    if path.exists() {
        return Some(path);
    }
    let reason = std::env::var("TALLY_PROMETHEUS_SKIP")
        .unwrap_or_else(|_| format!("{} not found", path.display()));
    if std::env::var("TALLY_PROMETHEUS_REQUIRED").as_deref() == Ok("1") {
        panic!("prometheus is required (TALLY_PROMETHEUS_REQUIRED=1): {reason}");
    }
    eprintln!(
        "SKIPPED Prometheus test: {reason} (source scripts/lib/prometheus.sh && prometheus_setup)"
    );
    None
}

/// `deploy/grafana/prometheus-local.yml` with 1 s intervals, each job's targets
/// replaced by `targets[job]` (a job not given keeps none), and the rule file at
/// `rules`.
fn derive_config(targets: &BTreeMap<&str, Vec<String>>, rules: &Path) -> String {
    let path = repo_root().join("deploy/grafana/prometheus-local.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut job = String::new();
    let mut out = Vec::new();
    let mut saw_rules = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = trimmed.strip_prefix("- job_name:") {
            job = name.trim().to_owned();
        }
        if trimmed.starts_with("scrape_interval:") || trimmed.starts_with("evaluation_interval:") {
            let key = trimmed.split(':').next().unwrap_or_default();
            out.push(format!("{indent}{key}: 1s"));
        } else if trimmed == "- alerts.yml" {
            saw_rules = true;
            out.push(format!("{indent}- {}", rules.display()));
        } else if trimmed.starts_with("- targets:") {
            let list = targets.get(job.as_str()).cloned().unwrap_or_default();
            let quoted: Vec<String> = list.iter().map(|t| format!("\"{t}\"")).collect();
            out.push(format!("{indent}- targets: [{}]", quoted.join(", ")));
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(saw_rules, "prometheus-local.yml no longer loads alerts.yml");
    for job in targets.keys() {
        assert!(
            text.contains(&format!("job_name: {job}")),
            "no job {job} in {}",
            path.display()
        );
    }
    out.join("\n") + "\n"
}

/// `deploy/grafana/alerts.yml` with every `for:` set to [`TEST_FOR`]; and the
/// alert names it defines.
fn derive_rules() -> (String, Vec<String>) {
    let path = repo_root().join("deploy/grafana/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = Vec::new();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if let Some(name) = trimmed.strip_prefix("- alert:") {
                names.push(name.trim().to_owned());
            }
            if trimmed.starts_with("for:") {
                format!("{indent}for: {TEST_FOR}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    (lines.join("\n") + "\n", names)
}

/// A Prometheus process of the test's own: free port, temporary data directory.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets`, with `promtool` checking its config
    /// and rules first; waits until it answers `/-/ready`.
    async fn start(binary: &Path, targets: &BTreeMap<&str, Vec<String>>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules_path = dir.path().join("alerts.yml");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&rules_path, derive_rules().0).expect("write rules");
        std::fs::write(&config_path, derive_config(targets, &rules_path)).expect("write config");
        let promtool = binary.with_file_name("promtool");
        if promtool.exists() {
            let check = Command::new(&promtool)
                .args(["check", "config"])
                .arg(&config_path)
                .output()
                .expect("run promtool");
            assert!(
                check.status.success(),
                "promtool check config: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let prometheus = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&prometheus.addr, "/-/ready").await {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET /api/v1/<path>`, answered with status `success`: its `data`.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = http10_get(&self.addr, &format!("/api/v1/{path}"))
            .await
            .unwrap_or_else(|e| panic!("prometheus /api/v1/{path}: {e}"));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/v1/{path} answered {status}, not JSON ({e}): {body}"));
        assert_eq!(json["status"], "success", "/api/v1/{path}: {body}");
        json["data"].clone()
    }

    /// An instant query: each series' labels and value.
    async fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("query?query={}", encode(expr))).await;
        let result = data["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Waits until Prometheus has scraped `n` targets up (its discovery hands
    /// targets to the scraper only after a few seconds).
    async fn wait_scraping(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.query("up == 1").await;
            if up.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} targets up after 30 s: {up:?}\n{}",
                up.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Alerts (name, state, labels) as `/api/v1/alerts` lists them.
    async fn alerts(&self) -> Vec<(String, String, BTreeMap<String, String>)> {
        let data = self.api("alerts").await;
        data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let name = labels.get("alertname").cloned().unwrap_or_default();
                (
                    name,
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET (so the answer is not chunked): (status, body).
async fn http10_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    tally_tests::parse_http_response(&raw)
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard, with its panel's title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = repo_root().join("deploy/grafana/dashboards/tally.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in json["panels"].as_array().cloned().unwrap_or_default() {
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                out.push((title, expr.to_owned()));
            }
        }
    }
    assert!(
        out.len() >= 20,
        "only {} expressions in {}",
        out.len(),
        path.display()
    );
    out
}

/// Whether the load of the dashboard test must make `expr` non-zero: what it
/// measures happened (ACKs, flushes, batches, commits, readiness), as opposed to
/// errors, backlogs and gauges that are 0 once the load is done.
fn must_be_nonzero(expr: &str) -> bool {
    const HAPPENED: &[&str] = &[
        "tally_producer_messages_acked_total",
        "tally_producer_messages_flushed_total",
        "tally_producer_rejected_lines_total",
        "tally_producer_ack_latency_seconds",
        "tally_producer_stash_batch_lines",
        "tally_consumer_assigned_partitions",
        "tally_counter_records_total[",
        "tally_aggregator_records_total[",
        "tally_counter_txn_commits_total",
        "tally_counter_batch_seconds",
        "tally_aggregator_batch_seconds",
        "tally_redis_round_calls",
        "tally_ready",
        "up{",
    ];
    HAPPENED.iter().any(|m| expr.contains(m))
}

/// Sends one line that is not UTF-8 to the producer at `ingest` and reads its
/// `ERR`: the load has a rejected line.
async fn send_invalid_line(ingest: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(ingest)
        .await
        .expect("connect");
    stream.write_all(b"\xff\xfe\n").await.expect("write");
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(&mut stream).read_line(&mut reply),
    )
    .await
    .expect("reply within 10 s")
    .expect("read reply");
    assert!(reply.starts_with("ERR"), "invalid line answered {reply:?}");
}

/// Starts a producer of `settings` on fresh ingest and observe ports.
async fn start_producer(settings: &tally_common::Settings) -> (ServiceProcess, String, String) {
    let ingest = format!("127.0.0.1:{}", free_port());
    let observe = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", ingest.clone()));
    env.push(("TALLY__PRODUCER__OBSERVE_LISTEN", observe.clone()));
    let process = ServiceProcess::start("tally-producer", &env);
    wait_listening(&observe, Duration::from_secs(30)).await;
    (process, ingest, observe)
}

/// Sends `lines` lines from each of `clients` clients through `ingest`; all ACKed.
async fn send_load(ingest: &str, prefix: &str, clients: usize, lines: usize) {
    let sessions: Vec<_> = (0..clients)
        .map(|c| {
            let id = format!("{prefix}-c{c}");
            let (addr, client, msgs) = (
                ingest.to_owned(),
                ClientId::parse(&id).expect("client id"),
                messages(&id, lines),
            );
            tokio::spawn(async move {
                send_all(
                    &[addr],
                    &client,
                    &msgs,
                    Instant::now() + Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    for s in sessions {
        let report = s.await.expect("session task").expect("session");
        assert_eq!(report.acked, lines as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_data() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let settings = isolated("it-prom-dash", 3).await;
    let prefix = settings.redis.prefix.clone();
    let (producer, ingest, p_obs) = start_producer(&settings).await;
    let c_obs = format!("127.0.0.1:{}", free_port());
    let a_obs = format!("127.0.0.1:{}", free_port());
    let counter = start_counter(
        &settings,
        "prom",
        &[("TALLY__COUNTER__OBSERVE_LISTEN", c_obs.clone())],
    );
    let aggregator = start_aggregator(
        &settings,
        &[("TALLY__AGGREGATOR__OBSERVE_LISTEN", a_obs.clone())],
    );
    let targets = BTreeMap::from([
        ("tally-producer", vec![p_obs.clone()]),
        ("tally-counter", vec![c_obs.clone()]),
        ("tally-aggregator", vec![a_obs.clone()]),
    ]);
    let prometheus = Prometheus::start(&binary, &targets).await;
    let logs = || {
        [
            ("producer", &producer),
            ("counter", &counter),
            ("aggregator", &aggregator),
        ]
        .iter()
        .map(|(n, p)| format!("--- {n}\n{}", p.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
            + "\n--- prometheus\n"
            + &prometheus.log()
    };
    wait_listening(&ingest, Duration::from_secs(30)).await;
    prometheus.wait_scraping(3).await;

    // Load in two rounds a few seconds apart, so rates have samples on both sides.
    // A rejected line in each: its series appears on the first (by `reason`, not
    // known in advance), so only the second is a rate.
    send_load(&ingest, &prefix, 3, 200).await;
    send_invalid_line(&ingest).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    send_load(&ingest, &format!("{prefix}-2"), 3, 200).await;
    send_invalid_line(&ingest).await;

    // Until everything is counted by the aggregator and scraped, expressions may
    // still be empty; then each must have data.
    let total = 1200.0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let applied = prometheus
            .query("sum(tally_aggregator_records_total{outcome=\"applied\"})")
            .await;
        let lag = prometheus.query("sum(tally_consumer_lag_records)").await;
        if applied.first().map(|s| s.1) == Some(total) && !lag.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not counted after 90 s: {applied:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // One more scrape of every target after the last batch.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    let expressions = dashboard_expressions();
    for (title, expr) in &expressions {
        let query = expr.replace("$__rate_interval", RATE_INTERVAL);
        let result = prometheus.query(&query).await;
        let values: Vec<f64> = result.iter().map(|s| s.1).collect();
        if result.is_empty() {
            failures.push(format!("{title}: `{expr}` returned no data"));
        } else if must_be_nonzero(expr) && !values.iter().any(|v| v.is_finite() && *v > 0.0) {
            failures.push(format!(
                "{title}: `{expr}` returned only {values:?} after load"
            ));
        } else if values.iter().any(|v| v.is_nan()) && must_be_nonzero(expr) {
            failures.push(format!("{title}: `{expr}` returned NaN: {values:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard expressions:\n{}\n{}",
        failures.len(),
        expressions.len(),
        failures.join("\n"),
        logs()
    );

    // A healthy pipeline that ran load pages nobody.
    let firing: Vec<_> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|(_, state, _)| state == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy pipeline: {firing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_fires_on_its_live_fault() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let (_, rule_names) = derive_rules();
    // Pipeline 1: two producers, a counter and an aggregator.
    let settings = isolated("it-prom-alert", 3).await;
    let prefix = settings.redis.prefix.clone();
    let (mut victim, victim_ingest, victim_obs) = start_producer(&settings).await;
    // Its Kafka is a closed port: it stashes and ACKs, but never flushes.
    let mut cut_off = settings.clone();
    cut_off.kafka.brokers = format!("127.0.0.1:{}", free_port());
    let (cut_producer, cut_ingest, cut_obs) = start_producer(&cut_off).await;
    let c_obs = format!("127.0.0.1:{}", free_port());
    let counter = start_counter(
        &settings,
        "alerts",
        &[
            ("TALLY__COUNTER__OBSERVE_LISTEN", c_obs.clone()),
            ("TALLY__COUNTER__STALL_AFTER_MS", "1000".to_owned()),
        ],
    );
    // Pipeline 2: a counter that commits one record per transaction, slower than
    // the records written to its topic.
    let slow_settings = isolated("it-prom-lag", 3).await;
    let slow_obs = format!("127.0.0.1:{}", free_port());
    let slow_counter = start_counter(
        &slow_settings,
        "slow",
        &[
            ("TALLY__COUNTER__OBSERVE_LISTEN", slow_obs.clone()),
            ("TALLY__COUNTER__BATCH_MAX_RECORDS", "1".to_owned()),
            ("TALLY__COUNTER__APPLY_CONCURRENCY", "1".to_owned()),
        ],
    );
    let targets = BTreeMap::from([
        ("tally-producer", vec![victim_obs.clone(), cut_obs.clone()]),
        ("tally-counter", vec![c_obs.clone(), slow_obs.clone()]),
    ]);
    let prometheus = Prometheus::start(&binary, &targets).await;
    wait_listening(&victim_ingest, Duration::from_secs(30)).await;
    wait_listening(&cut_ingest, Duration::from_secs(30)).await;
    prometheus.wait_scraping(4).await;

    // Nothing fires before the faults (the slow counter has had no input yet).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early: Vec<_> = prometheus.alerts().await;
    assert!(early.is_empty(), "alerts before any fault: {early:?}");

    // The faults.
    send_load(&victim_ingest, &prefix, 2, 50).await;
    send_load(&cut_ingest, &format!("{prefix}-cut"), 2, 50).await;
    let gap_client = format!("{prefix}-gap");
    produce(
        &settings,
        &[
            RawRecord::message(&gap_client, 1, "before the gap"),
            RawRecord::message(&gap_client, 3, "after the gap"),
            RawRecord::raw(&format!("{prefix}-poison"), b"\x00 not a client message"),
        ],
    )
    .await;
    victim.kill9();
    // Records into the slow counter's topic, faster than it commits them.
    let load = {
        let slow_settings = slow_settings.clone();
        tokio::spawn(async move {
            for round in 0..120 {
                let records: Vec<RawRecord> = (0..100)
                    .map(|i| RawRecord::message(&format!("lag-{i}"), round + 1, "lag"))
                    .collect();
                produce(&slow_settings, &records).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let expected = [
        ("TallyProducerDown", "instance", victim_obs.clone()),
        ("TallyFlushLag", "instance", cut_obs.clone()),
        ("TallyConsumerLagGrowing", "instance", slow_obs.clone()),
        ("TallyStalledClients", "instance", c_obs.clone()),
        ("TallyDeadLetters", "instance", c_obs.clone()),
    ];
    assert_eq!(
        {
            let mut names: Vec<&str> = rule_names.iter().map(String::as_str).collect();
            names.sort_unstable();
            names
        },
        {
            let mut names: Vec<&str> = expected.iter().map(|e| e.0).collect();
            names.sort_unstable();
            names
        },
        "every rule of alerts.yml has a fault here"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut fired: BTreeMap<&str, Duration> = BTreeMap::new();
    let alerts = loop {
        let alerts = prometheus.alerts().await;
        for (name, label, value) in &expected {
            let hit = alerts.iter().any(|(n, state, labels)| {
                n == name && state == "firing" && labels.get(*label) == Some(value)
            });
            if hit {
                fired.entry(name).or_insert_with(|| started.elapsed());
            }
        }
        if fired.len() == expected.len() || Instant::now() >= deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    load.abort();
    eprintln!("alerts fired after: {fired:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !fired.contains_key(e.0))
        .collect();
    assert!(
        missing.is_empty(),
        "not firing after 120 s: {missing:?}\nalerts: {alerts:?}\n--- counter\n{}\n--- slow counter\n{}\n--- cut-off producer\n{}\n--- prometheus\n{}",
        counter.log_tail(),
        slow_counter.log_tail(),
        cut_producer.log_tail(),
        prometheus.log()
    );
    // Each alert names only its faulty process: none fires for a healthy one.
    for (name, state, labels) in &alerts {
        if state != "firing" {
            continue;
        }
        let instance = labels.get("instance").cloned().unwrap_or_default();
        assert!(
            expected.iter().any(|(n, _, v)| n == name && *v == instance),
            "{name} fires for {instance}, which has no such fault: {labels:?}"
        );
    }
}
