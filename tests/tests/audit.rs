//! `tally audit` against the real stack: a load through the real pipeline (a
//! `tally mtc` run through the producer, plus a hand-written stream with
//! duplicates, gaps and a poison record written straight to `client_message`)
//! audits exact, exit 0; a client count and a message count changed behind the
//! pipeline's back are both reported, exit 1; restored, exit 0 again.

use std::process::{Command, Output};
use std::time::Duration;

use tally_common::{ClientId, Keys, MessageHash, Settings};
use tally_tests::pipeline::{
    isolated, log_starts, produce, service_env, start_aggregator, start_counter, RawRecord,
};
use tally_tests::{binary, free_port, local_config, unique, wait_listening, ServiceProcess};

fn tally(settings: &Settings, args: &[&str]) -> Output {
    tally_at(&binary("tally"), settings, args)
}

fn tally_at(bin: &std::path::Path, settings: &Settings, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(local_config())
        .args(args)
        .env("TALLY_RUNS_DIR", std::env::temp_dir().join("tally-it-runs"));
    for (k, v) in ServiceProcess::env_for(settings) {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run tally: {e}"))
}

fn show(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("audit --json printed no JSON ({e}): {}", show(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_matches_a_real_load_and_catches_a_changed_client_and_message_count() {
    let settings = isolated("it-audit", 3).await;
    let prefix = settings.redis.prefix.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("workload.txt");
    let mut text = String::new();
    for i in 0..120 {
        if i % 4 == 0 {
            text.push_str(&format!("{prefix} chorus {}\n", i % 3));
        } else {
            text.push_str(&format!("{prefix} verse {i}\n"));
        }
    }
    std::fs::write(&file, text).expect("write");
    let file = file.display().to_string();

    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    let producer = ServiceProcess::start("tally-producer", &env);
    let counter = start_counter(&settings, "audit", &[]);
    let aggregator = start_aggregator(&settings, &[]);
    wait_listening(&addr, Duration::from_secs(30)).await;
    let logs = || {
        format!(
            "producer:\n{}\ncounter:\n{}\naggregator:\n{}",
            producer.log_tail(),
            counter.log_tail(),
            aggregator.log_tail()
        )
    };

    // 3 clients × 120 lines × 2 = 720 messages through the producer; "chorus 0"
    // is 10 lines per pass: 10 × 2 × 3 = 60 sightings.
    let run_id = unique("r");
    let manifest = dir.path().join("run.json").display().to_string();
    let sent = tally(
        &settings,
        &[
            "mtc",
            "--clients",
            "3",
            "--file",
            &file,
            "--repeat",
            "2",
            "--addr",
            &addr,
            "--run-id",
            &run_id,
            "--manifest",
            &manifest,
            "--window",
            "50",
        ],
    );
    assert_eq!(sent.status.code(), Some(0), "{}\n{}", show(&sent), logs());

    // A stream the producer would never write, straight to the topic: a
    // duplicate, a gap filled later, a gap left open, a poison record.
    let raw = unique("raw");
    let chorus = format!("{prefix} chorus 0");
    produce(
        &settings,
        &[
            RawRecord::message(&raw, 1, &chorus),
            RawRecord::message(&raw, 2, "raw two"),
            RawRecord::message(&raw, 1, &chorus),
            RawRecord::message(&raw, 4, "raw four"),
            RawRecord::message(&raw, 3, &chorus),
            RawRecord::message(&raw, 4, "raw four"),
            RawRecord::message(&raw, 6, "raw six"),
            RawRecord::raw(&raw, b"not json"),
        ],
    )
    .await;

    // Exact: the audit waits for the pipeline to count up to its snapshot.
    let exact = tally(&settings, &["audit", "--messages", "--wait", "120s"]);
    eprintln!("{}", show(&exact));
    assert_eq!(exact.status.code(), Some(0), "{}\n{}", show(&exact), logs());
    let out = String::from_utf8_lossy(&exact.stdout);
    assert!(out.contains("MATCH"), "{}", show(&exact));
    assert!(out.contains("records/s"), "{}", show(&exact));

    // The same with the hash space cut into 8 buckets of ~100 sightings.
    let report = json(&tally(
        &settings,
        &["audit", "--messages", "--json", "--bucket-records", "100"],
    ));
    assert_eq!(report["messages"]["buckets"], 8, "{report:#}");
    assert_eq!(report["verdict"], "match", "{report:#}");
    // 720 + 8, plus any resend the producer made (go-back-N duplicates are legal).
    assert!(
        report["records_read"].as_u64().is_some_and(|n| n >= 728),
        "{report:#}"
    );
    assert_eq!(report["invalid_records"], 1, "{report:#}");
    assert_eq!(report["clients"]["checked"], 4, "{report:#}");
    assert_eq!(report["clients"]["matching"], 4, "{report:#}");
    // 3 chorus texts, 90 verse texts, "raw two", "raw four" ("raw six" never
    // applied).
    assert_eq!(report["messages"]["checked"], 95, "{report:#}");
    assert_eq!(report["messages"]["matching"], 95, "{report:#}");
    assert_eq!(report["messages"]["lower_bound"], false, "{report:#}");

    // Behind the pipeline's back: one client one short, one message one too many.
    let keys = Keys::new(prefix.clone());
    let client = ClientId::parse(&format!("mtc-{run_id}-1")).expect("id");
    let client_count = keys.client_count(&client);
    let message_count = keys.message(&MessageHash::of(chorus.as_bytes()));
    tally_tests::add_to_count(&settings, &client_count, -1).await;
    tally_tests::add_to_message_count(&settings, &message_count, 1).await;

    let caught = tally(&settings, &["audit", "--messages", "--wait", "10s"]);
    eprintln!("{}", show(&caught));
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains(&client_count) && out.contains("count expected 240 found 239"),
        "{}",
        show(&caught)
    );
    // 60 from the mtc clients + the raw client's sn 1 and 3.
    assert!(
        out.contains(&message_count) && out.contains("count expected 62 found 63"),
        "{}",
        show(&caught)
    );
    assert!(
        String::from_utf8_lossy(&caught.stderr)
            .contains("DIFFERENCES: 1 client(s) and 1 message(s)"),
        "{}",
        show(&caught)
    );
    let report = json(&tally(
        &settings,
        &["audit", "--messages", "--json", "--bucket-records", "100"],
    ));
    assert_eq!(report["verdict"], "differences", "{report:#}");
    assert_eq!(report["clients"]["differing"], 1, "{report:#}");
    assert_eq!(report["messages"]["differing"], 1, "{report:#}");
    let kinds: Vec<&str> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["client", "message"], "{report:#}");

    // Without --messages only the client is checked.
    let clients_only = tally(&settings, &["audit"]);
    assert_eq!(
        clients_only.status.code(),
        Some(1),
        "{}",
        show(&clients_only)
    );
    assert!(
        !String::from_utf8_lossy(&clients_only.stdout).contains(&message_count),
        "{}",
        show(&clients_only)
    );

    tally_tests::add_to_count(&settings, &client_count, 1).await;
    tally_tests::add_to_message_count(&settings, &message_count, -1).await;
    let restored = tally(&settings, &["audit", "--messages"]);
    assert_eq!(restored.status.code(), Some(0), "{}", show(&restored));
}

/// Measures `tally audit --messages` on a larger log: `TALLY_AUDIT_RECORDS` records
/// (default 200,000) of 1,000 clients over `TALLY_AUDIT_TEXTS` texts (default
/// 20,000), written straight to an isolated 12-partition topic and counted by a
/// real counter and aggregator; the audit binary is `TALLY_AUDIT_BIN` (e.g. a
/// release build) or the workspace's. A measurement, not part of `scripts/test`:
/// `cargo test -p tally-tests --test audit -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn audit_throughput() {
    let records: u64 = std::env::var("TALLY_AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let texts: u64 = std::env::var("TALLY_AUDIT_TEXTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let bin = std::env::var_os("TALLY_AUDIT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| binary("tally"));
    let clients = 1_000;
    let settings = isolated("it-audit-speed", 12).await;
    let prefix = settings.redis.prefix.clone();
    let stream: Vec<RawRecord> = (1..=records / clients)
        .flat_map(|sn| {
            let prefix = prefix.clone();
            (0..clients).map(move |c| {
                RawRecord::message(
                    &format!("{prefix}-c{c}"),
                    sn,
                    &format!("text {}", (c * 31 + sn * 1_000) % texts),
                )
            })
        })
        .collect();
    for chunk in stream.chunks(50_000) {
        produce(&settings, chunk).await;
    }
    let counter = start_counter(&settings, "speed", &[]);
    let aggregator = start_aggregator(&settings, &[]);
    let audit = tally_at(
        &bin,
        &settings,
        &["audit", "--messages", "--wait", "900s", "--json"],
    );
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}\ncounter:\n{}\naggregator:\n{}",
        show(&audit),
        counter.log_tail(),
        aggregator.log_tail()
    );
    let report = json(&audit);
    eprintln!("{report:#}");
    let timed = std::time::Instant::now();
    let again = tally_at(&bin, &settings, &["audit", "--messages"]);
    eprintln!(
        "{}\nsecond audit (pipeline idle): {:.2} s wall",
        show(&again),
        timed.elapsed().as_secs_f64()
    );
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
}

/// On a live pipeline the counts move past the audit's snapshot while it reads
/// them: those are re-checked against the records appended since and reported as
/// moved, never as differences. Audits run while `tally mtc` is sending exit 0, and
/// so does one after the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_during_a_live_load_reports_no_false_difference() {
    let settings = isolated("it-audit-live", 3).await;
    let prefix = settings.redis.prefix.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("workload.txt");
    let text: String = (0..100)
        .map(|i| format!("{prefix} line {}\n", i % 40))
        .collect();
    std::fs::write(&file, text).expect("write");

    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    let producer = ServiceProcess::start("tally-producer", &env);
    let counter = start_counter(&settings, "live", &[]);
    let aggregator = start_aggregator(&settings, &[]);
    wait_listening(&addr, Duration::from_secs(30)).await;

    // 4 clients × 100 lines × 30 at 150 messages/s each: ~20 s of load.
    let mut cmd = Command::new(binary("tally"));
    cmd.arg("--config")
        .arg(local_config())
        .args([
            "mtc",
            "--clients",
            "4",
            "--file",
            &file.display().to_string(),
            "--repeat",
            "30",
            "--rate",
            "150",
            "--addr",
            &addr,
            "--manifest",
            &dir.path().join("run.json").display().to_string(),
        ])
        .env("TALLY_RUNS_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in ServiceProcess::env_for(&settings) {
        cmd.env(k, v);
    }
    let mut load = cmd.spawn().expect("start tally mtc");

    let mut moved = 0;
    let mut appended = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let audit = tally(
            &settings,
            &["audit", "--messages", "--json", "--wait", "60s"],
        );
        assert_eq!(
            audit.status.code(),
            Some(0),
            "{}\ncounter:\n{}\naggregator:\n{}",
            show(&audit),
            counter.log_tail(),
            aggregator.log_tail()
        );
        let report = json(&audit);
        assert_eq!(report["verdict"], "match", "{report:#}");
        moved += report["clients"]["moved"].as_u64().unwrap_or(0)
            + report["messages"]["moved"].as_u64().unwrap_or(0);
        appended += report["appended_during_audit"].as_i64().unwrap_or(0);
    }
    eprintln!(
        "during the load: {appended} record(s) appended while auditing, {moved} value(s) moved"
    );
    assert!(appended > 0, "the load must still run during the audits");

    let status = tokio::task::spawn_blocking(move || load.wait())
        .await
        .expect("join")
        .expect("wait for tally mtc");
    assert!(
        status.success(),
        "tally mtc failed\n{}",
        producer.log_tail()
    );
    let after = tally(&settings, &["audit", "--messages"]);
    assert_eq!(after.status.code(), Some(0), "{}", show(&after));
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(out.contains("MATCH"), "{}", show(&after));
}

/// Records beyond retention: once the start of a partition is gone (deleted here
/// with DeleteRecords, as retention deletes old segments), a client whose first
/// retained record has sn > 1 is reported as truncated, not as a difference, and
/// message counts become lower bounds; a truncated client whose count no longer
/// equals its last_sn is still a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_early_records_expired_is_reported_not_judged() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let settings = isolated("it-audit-trim", 1).await;
    let (early, late) = (unique("early"), unique("late"));
    let shared = format!("{} shared", settings.redis.prefix);
    let mut records: Vec<RawRecord> = (1..=6)
        .map(|sn| RawRecord::message(&early, sn, &format!("{early} {sn}")))
        .collect();
    records.extend((1..=3).map(|sn| RawRecord::message(&late, sn, &shared)));
    records.extend((7..=8).map(|sn| RawRecord::message(&early, sn, &shared)));
    produce(&settings, &records).await;
    let counter = start_counter(&settings, "trim", &[]);
    let aggregator = start_aggregator(&settings, &[]);

    let before = tally(&settings, &["audit", "--messages", "--json"]);
    assert_eq!(
        before.status.code(),
        Some(0),
        "{}\ncounter:\n{}\naggregator:\n{}",
        show(&before),
        counter.log_tail(),
        aggregator.log_tail()
    );
    let report = json(&before);
    assert_eq!(report["clients"]["matching"], 2, "{report:#}");
    assert_eq!(report["messages"]["lower_bound"], false, "{report:#}");

    // The first 4 records expire: `early`'s sn 1..=4.
    let admin: AdminClient<DefaultClientContext> =
        tally_common::kafka::admin_config(&settings.kafka)
            .create()
            .expect("admin client");
    let mut cut = rdkafka::TopicPartitionList::new();
    cut.add_partition_offset(
        &settings.kafka.client_message_topic,
        0,
        rdkafka::Offset::Offset(4),
    )
    .expect("offset");
    // DeleteRecords answers once every live follower has reported the new log
    // start; the leader, which every reader asks, moves its own at once. Once (CI,
    // a fresh stack, this binary's two loads running) no answer came within the
    // request's 60 s, and no broker log was kept to say which follower was late.
    // What this test needs is that readers see the log start at 4, so a late
    // answer is checked against the leader's log start instead of failing here.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(20)))
        .request_timeout(Some(Duration::from_secs(25)));
    let deleted = admin
        .delete_records(&cut, &options)
        .await
        .expect("DeleteRecords");
    if !deleted.elements().iter().all(|e| e.error().is_ok()) {
        let starts = log_starts(&settings, &settings.kafka.client_message_topic);
        assert_eq!(
            starts.get(&0),
            Some(&4),
            "DeleteRecords: {deleted:?}; the leader's log starts: {starts:?}"
        );
        eprintln!("DeleteRecords not answered by every replica ({deleted:?}); the leader's log starts at 4");
    }

    let after = tally(&settings, &["audit", "--messages"]);
    eprintln!("{}", show(&after));
    assert_eq!(after.status.code(), Some(0), "{}", show(&after));
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(out.contains("1 trimmed by retention"), "{}", show(&after));
    assert!(
        out.contains("1 client(s) truncated by retention"),
        "{}",
        show(&after)
    );
    assert!(
        out.contains("message counts are lower bounds"),
        "{}",
        show(&after)
    );
    let report = json(&tally(&settings, &["audit", "--messages", "--json"]));
    assert_eq!(report["verdict"], "match", "{report:#}");
    assert_eq!(report["records_read"], 7, "{report:#}");
    assert_eq!(report["clients"]["matching"], 1, "{report:#}");
    assert_eq!(report["clients"]["truncated"], 1, "{report:#}");
    assert_eq!(report["clients"]["not_judged"], 1, "{report:#}");
    assert_eq!(report["messages"]["lower_bound"], true, "{report:#}");
    // `shared`: late's 3 are in the log; early's 2 are counted in Redis but early
    // is not replayed, so 5 is above the retained 3: not judged.
    assert_eq!(report["messages"]["above_retained"], 1, "{report:#}");

    // Still checked: a truncated client's count equals its last_sn.
    let keys = Keys::new(settings.redis.prefix.clone());
    let early_count = keys.client_count(&ClientId::parse(&early).expect("id"));
    tally_tests::add_to_count(&settings, &early_count, -1).await;
    let caught = tally(&settings, &["audit"]);
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains(&early_count)
            && out.contains("count expected 8 found 7")
            && out.contains("truncated by retention"),
        "{}",
        show(&caught)
    );
}
