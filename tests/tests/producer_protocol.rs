//! The producer's line protocol, spoken as raw bytes over TCP to a producer bound to
//! port 0 (in-process), against the real Redis Cluster and Kafka.

use std::time::{Duration, Instant};

use tally_common::keys::ClientId;
use tally_tests::raw::{Raw, REPLY_TIMEOUT};
use tally_tests::{
    check_stream, complete, isolated_settings, peak_rss_kib, read_client_messages, token_settings,
    InProcessProducer, ServiceProcess,
};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_cumulative_and_hello_resumes_from_last_sn() {
    let settings = isolated_settings("it-proto-ack", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;

    let mut c = Raw::connect(&producer.addr).await;
    c.send(b"HELLO resume-1\n").await;
    assert_eq!(c.line().await, "WELCOME resume-1 0");
    c.send(b"one\ntwo\nthree\n").await;
    // ACKs are cumulative and may be coalesced; each one is a prefix of what was sent.
    let before = c.until_ack(3).await;
    let mut previous = 0;
    for line in before {
        let sn: u64 = line
            .strip_prefix("ACK ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        assert!(sn > previous && sn < 3, "ACK {sn} after {previous}");
        previous = sn;
    }
    drop(c);

    // A resuming client learns its last sn and continues from there.
    let mut c = Raw::connect(&producer.addr).await;
    c.send(b"HELLO resume-1\n").await;
    assert_eq!(c.line().await, "WELCOME resume-1 3");
    c.send(b"four\nfive\n").await;
    assert!(c.until_ack(5).await.is_empty());
    drop(c);

    let expected: Vec<String> = ["one", "two", "three", "four", "five"]
        .map(String::from)
        .to_vec();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(30),
        |s| complete(s.get("resume-1"), &expected),
    );
    let stream = streams.get("resume-1").expect("records of resume-1");
    let check = check_stream("resume-1", stream, &expected).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(check.duplicates + check.gaps, 0, "{stream:?}");
    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_is_not_stored() {
    let settings = isolated_settings("it-proto-bad", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;

    let mut c = Raw::connect(&producer.addr).await;
    c.send(b"HELLO not valid\n").await;
    assert!(c.line().await.starts_with("ERR bad_hello "));
    c.send(b"HELLO bad-input\n").await;
    assert_eq!(c.line().await, "WELCOME bad-input 0");
    c.send(b"first\r\n\n\r\n\xff\xfe broken\nsecond\nHELLO bad-input\nthird\n")
        .await;
    let errors = c.errors_until_ack(3).await;
    let codes: Vec<String> = errors
        .iter()
        .map(|e| e.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        codes,
        ["ERR invalid_utf8", "ERR bad_hello"],
        "errors in order, connection kept open"
    );
    c.send(b"fourth\n").await;
    assert!(c.until_ack(4).await.is_empty());

    let expected: Vec<String> = ["first", "second", "third", "fourth"]
        .map(String::from)
        .to_vec();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(30),
        |s| complete(s.get("bad-input"), &expected),
    );
    check_stream(
        "bad-input",
        streams.get("bad-input").expect("records"),
        &expected,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_id_supersedes_the_first() {
    let settings = isolated_settings("it-proto-super", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;

    let mut first = Raw::connect(&producer.addr).await;
    first.send(b"HELLO twin\none\n").await;
    assert_eq!(first.line().await, "WELCOME twin 0");
    first.until_ack(1).await;

    let mut second = Raw::connect(&producer.addr).await;
    second.send(b"HELLO twin\n").await;
    assert_eq!(second.line().await, "WELCOME twin 1");
    let notice = first.line().await;
    assert!(notice.starts_with("ERR superseded "), "{notice}");
    first.expect_closed().await;

    second.send(b"two\n").await;
    assert!(second.until_ack(2).await.is_empty());
    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_hello_is_named_by_its_peer_address() {
    let settings = isolated_settings("it-proto-peer", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;
    let mut c = Raw::connect(&producer.addr).await;
    let id = c.local.clone();
    c.send(b"anonymous\n").await;
    assert!(c.until_ack(1).await.is_empty());
    let expected = vec!["anonymous".to_string()];
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(30),
        |s| complete(s.get(&id), &expected),
    );
    assert!(
        streams.contains_key(&id),
        "no records under {id}: {streams:?}"
    );
    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_half_closed_ones_get_their_acks() {
    let mut settings = isolated_settings("it-proto-idle", 3).await;
    settings.producer.idle_timeout_ms = 500;
    let producer = InProcessProducer::start(settings.clone()).await;

    let mut idle = Raw::connect(&producer.addr).await;
    let started = Instant::now();
    idle.expect_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );

    // Half-close: the client stops sending (last line without newline), still reads.
    let mut c = Raw::connect(&producer.addr).await;
    c.send(b"HELLO half\nalpha\nomega").await;
    c.writer.shutdown().await.expect("shutdown write");
    assert_eq!(c.line().await, "WELCOME half 0");
    c.until_ack(2).await;
    c.expect_closed().await;
    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_limits_refuse_extra_connections_and_slow_first_lines() {
    let mut settings = isolated_settings("it-proto-limits", 3).await;
    settings.producer.max_connections_per_address = 2;
    settings.producer.first_line_timeout_ms = 800;
    let producer = InProcessProducer::start(settings.clone()).await;

    // A client trickling its first line one byte at a time is cut off at the
    // first-line deadline although it never goes idle, and nothing is stored.
    let mut slow = Raw::connect(&producer.addr).await;
    let started = Instant::now();
    for byte in b"HELLO slowloris".iter() {
        if slow.writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_millis(1_400) {
            break;
        }
    }
    let reply = slow.line().await;
    assert!(
        reply.starts_with("ERR first_line_timeout "),
        "slow client: {reply}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "cut off before the deadline: {:?}",
        started.elapsed()
    );
    slow.expect_closed().await;
    // Nothing was claimed or stored under the id it was spelling out.
    // (This connection stays open: it is the first of the two admitted below.)
    let mut first = Raw::connect(&producer.addr).await;
    first.send(b"HELLO slowloris\n").await;
    assert_eq!(first.line().await, "WELCOME slowloris 0");

    // Two connections from 127.0.0.1 are admitted (once the slow one's slot is
    // back); the third is refused at once.
    let second = admitted(&producer.addr, "limit-2").await;
    let mut third = Raw::connect(&producer.addr).await;
    third.send(b"HELLO slowloris\nstolen\n").await;
    let refusal = third.line().await;
    assert!(
        refusal.starts_with("ERR too_many_connections "),
        "third connection: {refusal}"
    );
    third.expect_closed().await;
    // It superseded nothing: the first connection still has its id.
    first.send(b"mine\n").await;
    assert_eq!(first.line().await, "ACK 1");

    // A slot comes back when a connection ends.
    drop(second);
    let mut again = admitted(&producer.addr, "limit-3").await;
    again.send(b"x\n").await;
    assert_eq!(again.line().await, "ACK 1");

    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_admits_only_the_ids_token_and_an_impostor_disturbs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (settings, secret, secret_file) = token_settings(&dir, "it-proto-auth").await;
    let producer = InProcessProducer::start(settings.clone()).await;
    let id = ClientId::parse("sensor-7").expect("id");
    let token = secret.mint(&id);

    let mut owner = Raw::connect(&producer.addr).await;
    owner
        .send(format!("HELLO sensor-7 {token}\none\n").as_bytes())
        .await;
    assert_eq!(owner.line().await, "WELCOME sensor-7 0");
    assert_eq!(owner.line().await, "ACK 1");

    // Every way in without the id's token is refused and closed.
    let other = secret.mint(&ClientId::parse("sensor-8").expect("id"));
    for hello in [
        "HELLO sensor-7\nstolen\n".to_owned(),
        format!("HELLO sensor-7 {other}\nstolen\n"),
        format!("HELLO sensor-7 {}\nstolen\n", "0".repeat(64)),
        "no hello at all\n".to_owned(),
    ] {
        let mut impostor = Raw::connect(&producer.addr).await;
        impostor.send(hello.as_bytes()).await;
        let reply = impostor.line().await;
        assert!(reply.starts_with("ERR unauthorized "), "{hello:?}: {reply}");
        impostor.expect_closed().await;
    }
    // The owner was neither superseded nor resumed by anyone: its next line is 2.
    owner.send(b"two\n").await;
    assert_eq!(owner.line().await, "ACK 2");
    drop(owner);

    // `tally admin token` mints the same token from the same secret.
    let output = std::process::Command::new(tally_tests::binary("tally"))
        .arg("--config")
        .arg(tally_tests::local_config())
        .args(["admin", "token", "--id", "sensor-7"])
        .env("TALLY__PRODUCER__AUTH__SECRET_FILE", &secret_file)
        .output()
        .expect("run tally admin token");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), token);

    // `tally mtc` with the operator's configuration mints each client's token.
    let input = dir.path().join("lines.txt");
    std::fs::write(&input, "alpha\nbeta\ngamma\n").expect("write input");
    let mut mtc = std::process::Command::new(tally_tests::binary("tally"));
    mtc.arg("--config")
        .arg(tally_tests::local_config())
        .args(["mtc", "--clients", "3", "--addr", &producer.addr, "--file"])
        .arg(&input)
        .arg("--manifest")
        .arg(dir.path().join("run.json"))
        .env("TALLY__PRODUCER__AUTH__MODE", "token")
        .env("TALLY__PRODUCER__AUTH__SECRET_FILE", &secret_file);
    for (k, v) in ServiceProcess::env_for(&settings) {
        mtc.env(k, v);
    }
    let output = mtc.output().expect("run tally mtc");
    assert!(
        output.status.success(),
        "mtc with minted tokens: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    producer.shutdown().await.expect("clean shutdown");
}

/// A connection that said `HELLO id` and got its WELCOME, retrying while the
/// per-address limit still counts a connection that just ended.
async fn admitted(addr: &str, id: &str) -> Raw {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let mut c = Raw::connect(addr).await;
        c.send(format!("HELLO {id}\n").as_bytes()).await;
        let line = c.line().await;
        if line == format!("WELCOME {id} 0") {
            return c;
        }
        assert!(
            line.starts_with("ERR too_many_connections ") && Instant::now() < deadline,
            "no slot for {id}: {line}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_without_newline_are_rejected_without_buffering_them() {
    let settings = isolated_settings("it-proto-long", 3).await;
    let port = tally_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut env = ServiceProcess::env_for(&settings);
    env.push(("TALLY__PRODUCER__LISTEN", addr.clone()));
    let process = ServiceProcess::start("tally-producer", &env);
    tally_tests::wait_listening(&addr, Duration::from_secs(30)).await;

    let mut c = Raw::connect(&addr).await;
    c.send(b"HELLO long-line\nwarm up\n").await;
    assert_eq!(c.line().await, "WELCOME long-line 0");
    c.until_ack(1).await;
    let before = peak_rss_kib(process.pid());

    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..10 {
        c.send(&chunk).await;
    }
    c.send(b"\nafter\n").await;
    let errors = c.until_ack(2).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0], "ERR too_long line exceeds 65536 bytes");
    let after = peak_rss_kib(process.pid());
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "peak RSS grew by {} KiB while 10 MiB streamed in: the line was buffered",
        after - before
    );

    // Only the two good lines were stored.
    let store = tally_tests::stash_store(&settings).await;
    let meta = store
        .meta(&ClientId::parse("long-line").expect("id"))
        .await
        .expect("meta");
    assert_eq!(meta.sn, 2, "{meta:?}\n{}", process.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_authentications_shut_the_address_out_for_the_minute() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut settings, secret, _) = token_settings(&dir, "it-proto-auth-failures").await;
    settings.producer.max_auth_failures_per_minute = 3;
    let producer = InProcessProducer::start(settings.clone()).await;
    let hello = |id: &str| {
        let token = secret.mint(&ClientId::parse(id).expect("id"));
        format!("HELLO {id} {token}\n")
    };

    // An owner connected before the guessing starts.
    let mut owner = Raw::connect(&producer.addr).await;
    owner
        .send(format!("{}one\n", hello("guarded")).as_bytes())
        .await;
    assert_eq!(owner.line().await, "WELCOME guarded 0");
    assert_eq!(owner.line().await, "ACK 1");

    // Three wrong tokens from 127.0.0.1 are each refused as unauthorized...
    for guess in 0..3 {
        let mut guesser = Raw::connect(&producer.addr).await;
        guesser
            .send(format!("HELLO guarded {:064x}\nstolen\n", guess).as_bytes())
            .await;
        let reply = guesser.line().await;
        assert!(
            reply.starts_with("ERR unauthorized "),
            "guess {guess}: {reply}"
        );
        guesser.expect_closed().await;
    }
    // ...then the address is shut out, even with a right token, before anything
    // of the connection is read.
    let mut shut_out = Raw::connect(&producer.addr).await;
    shut_out.send(hello("newcomer").as_bytes()).await;
    let reply = shut_out.line().await;
    assert!(
        reply.starts_with("ERR too_many_auth_failures "),
        "after 3 failures: {reply}"
    );
    shut_out.expect_closed().await;

    // Another address is not affected, and the owner kept its id and its sn.
    let mut elsewhere = Raw::connect_from("127.0.0.2", &producer.addr).await;
    elsewhere
        .send(format!("{}x\n", hello("newcomer")).as_bytes())
        .await;
    assert_eq!(elsewhere.line().await, "WELCOME newcomer 0");
    assert_eq!(elsewhere.line().await, "ACK 1");
    owner.send(b"two\n").await;
    assert_eq!(owner.line().await, "ACK 2");
    producer.shutdown().await.expect("clean shutdown");
}
