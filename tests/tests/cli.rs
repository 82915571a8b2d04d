//! The `tally` command line against the real stack: usage and configuration errors
//! exit 2 with one clear line; `tally mtc` → `tally verify` is exact over the real
//! pipeline; the oracle fails when a count is changed behind its back; and
//! `tally send --id` delivers a piped file exactly once across a producer restart.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tally_common::{ClientId, Keys, MessageHash, Settings};
use tally_tests::pipeline::{isolated, service_env, start_aggregator, start_counter};
use tally_tests::{
    binary, check_stream, complete, free_port, local_config, read_client_messages, unique,
    wait_listening, ServiceProcess,
};

/// Runs `tally ARGS…` against `settings` and returns its output.
fn tally(settings: Option<&Settings>, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("tally"));
    cmd.arg("--config")
        .arg(local_config())
        .args(args)
        .env("TALLY_RUNS_DIR", std::env::temp_dir().join("tally-it-runs"));
    if let Some(settings) = settings {
        for (k, v) in ServiceProcess::env_for(settings) {
            cmd.env(k, v);
        }
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

fn expect_usage_error(args: &[&str], needle: &str) {
    let output = tally(None, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "tally {args:?}: {}",
        show(&output)
    );
    assert!(
        stderr.contains(needle),
        "tally {args:?}: stderr lacks {needle:?}: {}",
        show(&output)
    );
}

#[test]
fn usage_and_configuration_errors_exit_2_with_a_clear_message() {
    expect_usage_error(&[], "Usage");
    expect_usage_error(&["mtc", "--clients", "3"], "--file");
    expect_usage_error(
        &["mtc", "--file", "x", "--rate", "0"],
        "messages per second",
    );
    expect_usage_error(
        &["mtc", "--file", "x", "--timeout", "soon"],
        "not a duration",
    );
    expect_usage_error(&["count"], "required");
    expect_usage_error(
        &["count", "--client", "a", "--message", "b"],
        "cannot be used with",
    );
    expect_usage_error(&["count", "--client", "no spaces allowed"], "--client");
    expect_usage_error(&["count", "--hash", "xyz"], "32 lowercase hex");
    expect_usage_error(&["send", "--id", "bad id"], "--id");
    expect_usage_error(
        &["verify", "--manifest", "/nonexistent/run.json"],
        "no run manifest at /nonexistent/run.json",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.txt");
    expect_usage_error(
        &["mtc", "--file", &missing.display().to_string()],
        "missing.txt",
    );
    let hello = dir.path().join("hello.txt");
    std::fs::write(&hello, "fine\nHELLO x\n").expect("write");
    expect_usage_error(
        &["mtc", "--file", &hello.display().to_string()],
        "hello.txt:2",
    );
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{}").expect("write");
    expect_usage_error(
        &["verify", "--manifest", &junk.display().to_string()],
        "is not a tally run manifest",
    );

    // Every configuration problem is named, in one run.
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[redis]\nnodes = [\"redis://127.0.0.1:7000\"]\nbogus = 1\n[kafka]\nbrokers = \"x:1\"\npartitions = \"many\"\n",
    )
    .expect("write");
    let output = Command::new(binary("tally"))
        .args(["--config", &config.display().to_string(), "config", "check"])
        .output()
        .expect("run tally");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(stderr.contains("redis.bogus"), "{}", show(&output));
    assert!(stderr.contains("kafka.partitions"), "{}", show(&output));
    let ok = tally(None, &["config", "check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", show(&ok));
}

/// A small workload with repeated lines, blank lines and CRLF endings.
fn workload(prefix: &str) -> String {
    let mut text = String::new();
    for i in 0..150 {
        match i % 5 {
            0 => text.push_str(&format!("{prefix} chorus {}\r\n", i % 3)),
            1 => text.push('\n'),
            _ => text.push_str(&format!("{prefix} verse {i}\n")),
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtc_then_verify_is_exact_and_the_oracle_catches_tampering() {
    let settings = isolated("it-cli", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("workload.txt");
    std::fs::write(&file, workload(&settings.redis.prefix)).expect("write");
    let manifest = dir.path().join("run.json");
    let (file, manifest) = (file.display().to_string(), manifest.display().to_string());

    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    let producer = ServiceProcess::start("tally-producer", &env);
    let counter = start_counter(&settings, "cli", &[]);
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

    let run_id = unique("r");
    let sent = tally(
        Some(&settings),
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
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(stdout.contains("ACKed 720 of 720"), "{}", show(&sent));
    assert!(stdout.contains("ACK latency p50"), "{}", show(&sent));

    let verify = |timeout: &'static str| {
        let manifest = manifest.clone();
        let settings = settings.clone();
        move || {
            tally(
                Some(&settings),
                &[
                    "verify",
                    "--manifest",
                    &manifest,
                    "--timeout",
                    timeout,
                    "--settle",
                    "3s",
                ],
            )
        }
    };
    let exact = verify("120s")();
    assert_eq!(exact.status.code(), Some(0), "{}\n{}", show(&exact), logs());
    assert!(String::from_utf8_lossy(&exact.stdout).contains("EXACT"));

    // Behind the oracle's back: one client's count one short.
    let keys = Keys::new(settings.redis.prefix.clone());
    let client = ClientId::parse(&format!("mtc-{run_id}-1")).expect("id");
    let client_count = keys.client_count(&client);
    tally_tests::add_to_count(&settings, &client_count, -1).await;
    let caught = verify("5s")();
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains(&client_count) && out.contains("expected 240 found 239"),
        "{}",
        show(&caught)
    );
    tally_tests::add_to_count(&settings, &client_count, 1).await;
    let restored = verify("5s")();
    assert_eq!(restored.status.code(), Some(0), "{}", show(&restored));

    // One message counted once too often.
    let text = format!("{} chorus 0", settings.redis.prefix);
    let message_count = keys.message(&MessageHash::of(text.as_bytes()));
    tally_tests::add_to_message_count(&settings, &message_count, 1).await;
    let caught = verify("5s")();
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let out = String::from_utf8_lossy(&caught.stdout);
    // 10 occurrences per file pass × 2 repeats × 3 clients = 60.
    assert!(
        out.contains(&message_count) && out.contains("expected 60 found 61"),
        "{}",
        show(&caught)
    );

    // The lookups answer the same numbers.
    let count = tally(Some(&settings), &["count", "--client", client.as_str()]);
    assert!(
        String::from_utf8_lossy(&count.stdout).contains("count    240"),
        "{}",
        show(&count)
    );
    let count = tally(Some(&settings), &["count", "--message", &text]);
    assert!(
        String::from_utf8_lossy(&count.stdout).contains("count    61"),
        "{}",
        show(&count)
    );
    let top = tally(Some(&settings), &["top", "-n", "3"]);
    let top_out = String::from_utf8_lossy(&top.stdout);
    assert!(
        top_out
            .lines()
            .next()
            .is_some_and(|l| l.contains("61") && l.contains("chorus 0")),
        "{}",
        show(&top)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_id_delivers_a_piped_file_exactly_once_across_a_producer_restart() {
    const LINES: usize = 6_000;
    let settings = isolated("it-send", 3).await;
    let id = unique("sender");
    let lines: Vec<String> = (1..=LINES).map(|i| format!("{id} line {i}")).collect();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    env.push(("TALLY__PRODUCER__INSTANCE_ID", unique("p")));
    let mut producer = ServiceProcess::start("tally-producer", &env);
    wait_listening(&addr, Duration::from_secs(30)).await;

    let mut cmd = Command::new(binary("tally"));
    cmd.arg("--config")
        .arg(local_config())
        .args(["send", "--id", &id, "--addr", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in ServiceProcess::env_for(&settings) {
        cmd.env(k, v);
    }
    let mut send = cmd.spawn().expect("start tally send");
    let mut stdin = send.stdin.take().expect("stdin");
    let (first, second) = lines.split_at(LINES / 2);
    let write = |stdin: &mut std::process::ChildStdin, part: &[String]| {
        for line in part {
            writeln!(stdin, "{line}").expect("write stdin");
        }
        stdin.flush().expect("flush stdin");
    };
    write(&mut stdin, first);
    std::thread::sleep(Duration::from_millis(700));

    // kill -9 mid-stream, then the same instance comes back on the same port.
    producer.kill9();
    let mut half = lines[LINES / 2..LINES / 2 + 500].to_vec();
    write(&mut stdin, &half);
    std::thread::sleep(Duration::from_millis(500));
    let producer = ServiceProcess::start("tally-producer", &env);
    wait_listening(&addr, Duration::from_secs(30)).await;
    half = second[500..].to_vec();
    write(&mut stdin, &half);
    drop(stdin);

    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = send.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tally send did not finish\n{}",
            producer.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = send.wait_with_output().expect("output");
    assert!(
        status.success(),
        "{}\n{}",
        show(&output),
        producer.log_tail()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{LINES} line(s) stored for {id} (sn 1..{LINES})")),
        "{}",
        show(&output)
    );
    assert!(
        !stderr.contains(" 0 reconnect(s)"),
        "the restart went unnoticed: {}",
        show(&output)
    );

    // Every line is one sn, in order, with its own text, and nothing beyond.
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(60),
        |s| complete(s.get(&id), &lines),
    );
    let stream = streams.get(&id).expect("records of the sender");
    check_stream(&id, stream, &lines).unwrap_or_else(|e| panic!("{e}\n{}", producer.log_tail()));
    let mut conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    let keys = Keys::new(settings.redis.prefix.clone());
    let stored: u64 = conn
        .hget(keys.client_meta(&ClientId::parse(&id).expect("id")), "sn")
        .await
        .expect("meta sn");
    assert_eq!(stored, LINES as u64);
}
