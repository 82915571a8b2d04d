//! Backlog limits and restart re-adoption, made deterministic by a producer whose
//! Kafka is unreachable: nothing it stashes can be flushed.
//!
//! - Backpressure: once a client's un-flushed backlog reaches
//!   `producer.client_backlog_messages`, the producer stops reading its socket: no
//!   ACK (and no stash write) past the limit, however much the client sends.
//! - Restart: the instance is killed (-9) and started again with the same
//!   `instance_id` and a working Kafka; it re-adopts its clients at once (well
//!   before other instances could declare it dead) and flushes every stored sn.

use std::time::{Duration, Instant};

use tally_common::keys::ClientId;
use tally_tests::{
    check_stream, complete, free_port, isolated_settings, messages, read_client_messages,
    stash_store, wait_listening, ServiceProcess,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const LIMIT: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_stops_reading_and_a_restart_readopts_at_once() {
    let settings = isolated_settings("it-backlog", 3).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let instance = format!("{}-P", settings.redis.prefix);
    let mut env = ServiceProcess::env_for(&settings);
    env.extend([
        ("TALLY__PRODUCER__LISTEN", addr.clone()),
        ("TALLY__PRODUCER__INSTANCE_ID", instance.clone()),
        (
            "TALLY__PRODUCER__CLIENT_BACKLOG_MESSAGES",
            LIMIT.to_string(),
        ),
        ("TALLY__PRODUCER__BATCH_MAX_LINES", "100".to_string()),
    ]);
    let mut unreachable = env.clone();
    unreachable.push(("TALLY__KAFKA__BROKERS", "127.0.0.1:1".to_string()));
    let mut producer = ServiceProcess::start("tally-producer", &unreachable);
    wait_listening(&addr, Duration::from_secs(30)).await;

    // Send far more than the limit and read ACKs until they stop.
    // 100,000 lines of ~200 bytes: far more than socket buffers hold, so the
    // client can only write them all if the producer keeps reading.
    let id = "backlogged";
    let padding = "x".repeat(180);
    let msgs: Vec<String> = messages(id, 100_000)
        .into_iter()
        .map(|m| format!("{m} {padding}"))
        .collect();
    let to_write = msgs.clone();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("HELLO {id}\n").as_bytes())
        .await
        .expect("hello");
    let writer = tokio::spawn(async move {
        for m in to_write {
            if w.write_all(format!("{m}\n").as_bytes()).await.is_err() {
                break;
            }
        }
        w
    });
    let mut acked = 0u64;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await
    {
        if let Some(sn) = line.strip_prefix("ACK ") {
            acked = sn.parse().expect("sn");
        }
    }
    assert!(acked > 0, "nothing was ACKed\n{}", producer.log_tail());
    assert!(
        acked <= LIMIT,
        "ACKed {acked} with a backlog limit of {LIMIT}"
    );
    let store = stash_store(&settings).await;
    let client = ClientId::parse(id).expect("id");
    let meta = store.meta(&client).await.expect("meta");
    assert_eq!(meta.sn, acked, "stored beyond what was ACKed: {meta:?}");
    assert_eq!(meta.flushed, 0);
    assert!(
        !writer.is_finished(),
        "the client could write everything: the socket was still being read"
    );

    // Crash, then restart with the same id and a reachable Kafka.
    producer.kill9();
    drop(lines);
    let started = Instant::now();
    let producer = ServiceProcess::start("tally-producer", &env);
    wait_listening(&addr, Duration::from_secs(30)).await;
    let expected = msgs[..acked as usize].to_vec();
    let streams = read_client_messages(
        &settings,
        &settings.kafka.client_message_topic,
        Duration::from_secs(60),
        |s| complete(s.get(id), &expected),
    );
    let readopted_in = started.elapsed();
    let stream = streams
        .get(id)
        .unwrap_or_else(|| panic!("nothing flushed after the restart\n{}", producer.log_tail()));
    check_stream(id, stream, &expected).unwrap_or_else(|e| panic!("{e}\n{}", producer.log_tail()));
    let meta = store.meta(&client).await.expect("meta");
    assert_eq!(
        meta.owner, "",
        "client not released after flushing: {meta:?}"
    );
    eprintln!("backpressure held at {acked} ACKs (limit {LIMIT}); restart flushed them in {readopted_in:?}");
}
