//! Helpers for tests that run against the real local stack (`scripts/stack up`):
//! what only the tests need (in-process producer, stream checks, metric scraping,
//! the fault-suite harness and its report). What the tests share with the
//! benchmark — the service supervisor, stack control, isolated settings, free
//! ports — lives in `tally-harness` and is re-exported here.
//!
//! Tests in this crate need the stack; `scripts/test` starts it. Every test names
//! its own keys and topics with [`unique`], so tests never see each other's data
//! and need no cleanup between runs. This crate turns on
//! `tally-common/failpoints` (see its Cargo.toml): the fault tests arm them.

pub mod chaos;
pub mod pipeline;
pub mod private_redis;
pub mod raw;
pub mod report;

use tally_common::Settings;
pub use tally_harness::{
    binary, isolated_settings, local_config, repo_root, settings, stack, unique, wait_listening,
    RestoreDisk, RestoreNode, ServiceProcess,
};

/// A free TCP port on 127.0.0.1; panics when none can be had.
pub fn free_port() -> u16 {
    tally_harness::free_port().unwrap_or_else(|e| panic!("free port: {e}"))
}

/// One node of the Redis Cluster as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// `ip:port` of its client port.
    pub addr: String,
    /// Whether it is a master.
    pub master: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || fields[2].contains("fail") {
                return None;
            }
            let addr = fields[1].split('@').next()?.to_string();
            let master = fields[2].split(',').any(|f| f == "master");
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                addr,
                master,
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// A producer running inside the test process on an ephemeral port.
pub struct InProcessProducer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tally_producer::ProducerError>>>,
}

impl InProcessProducer {
    /// Starts `tally_producer::run` with `settings` on port 0.
    pub async fn start(settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tally_producer::run(settings, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns the producer's result.
    pub async fn shutdown(mut self) -> Result<(), tally_producer::ProducerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| panic!("producer task: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessProducer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The records of a `client_message` topic, per client, in log order per partition.
pub type ClientStreams = std::collections::BTreeMap<String, Vec<(u64, String)>>;

/// Reads `topic` from the beginning until `done(streams)` holds or `timeout` passes.
pub fn read_client_messages(
    settings: &Settings,
    topic: &str,
    timeout: std::time::Duration,
    done: impl Fn(&ClientStreams) -> bool,
) -> ClientStreams {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer =
        tally_common::kafka::read_committed_consumer_config(&settings.kafka, &unique("it-reader"))
            .create()
            .expect("consumer");
    // A topic created a moment ago may not list its partitions in every broker's
    // metadata yet: wait until it does, or the reader would assign nothing.
    let mut tpl = rdkafka::TopicPartitionList::new();
    let metadata_deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tpl.count() == 0 {
        let metadata = consumer
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
            .expect("metadata");
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                    .expect("offset");
            }
        }
        if tpl.count() == 0 {
            assert!(
                std::time::Instant::now() < metadata_deadline,
                "{topic} has no partitions in metadata"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut streams = ClientStreams::new();
    let deadline = std::time::Instant::now() + timeout;
    // `done` may be costly: ask it only when the topic is idle or every 1000 records.
    let mut since_check = 0usize;
    while std::time::Instant::now() < deadline {
        let Some(result) = consumer.poll(std::time::Duration::from_millis(200)) else {
            if done(&streams) {
                break;
            }
            continue;
        };
        since_check += 1;
        if since_check >= 1_000 {
            since_check = 0;
            if done(&streams) {
                break;
            }
        }
        let m = match result {
            Ok(m) => m,
            // A topic created a moment ago: a broker may not know it, or its
            // partition's leader, yet. librdkafka reports that as a consume error
            // and keeps fetching; the deadline above still bounds the wait.
            Err(rdkafka::error::KafkaError::MessageConsumption(code))
                if matches!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                        | rdkafka::types::RDKafkaErrorCode::NotLeaderForPartition
                        | rdkafka::types::RDKafkaErrorCode::LeaderNotAvailable
                ) =>
            {
                eprintln!("reading {topic}: {code}, still fetching");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Err(e) => panic!("consume {topic}: {e}"),
        };
        let record = tally_common::records::ClientMessage::parse(m.key(), m.payload())
            .unwrap_or_else(|e| panic!("invalid record in {topic}: {e}"));
        streams
            .entry(record.client)
            .or_default()
            .push((record.sn, record.msg));
    }
    streams
}

/// Whether a client's stream holds every sn `1..=expected.len()` with the right text.
pub fn complete(stream: Option<&Vec<(u64, String)>>, expected: &[String]) -> bool {
    let Some(stream) = stream else {
        return expected.is_empty();
    };
    let mut seen = std::collections::BTreeSet::new();
    for (sn, _) in stream {
        seen.insert(*sn);
    }
    seen.len() == expected.len() && seen.iter().next_back().copied() == Some(expected.len() as u64)
}

/// What [`check_stream`] saw in one client's records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCheck {
    /// Records a counter would skip as duplicates (left by go-back-N resends).
    pub duplicates: usize,
    /// Records a counter would skip as gaps (an earlier sn was still missing).
    pub gaps: usize,
}

/// Checks one client's records against what it sent, by replaying them through the
/// counter's rule (apply sn == last+1, skip sn <= last as a duplicate, skip
/// sn > last+1 as a gap): the replay must end at the last sn sent, and every record
/// must carry the text sent as its sn.
pub fn check_stream(
    client: &str,
    stream: &[(u64, String)],
    expected: &[String],
) -> Result<StreamCheck, String> {
    let mut last = 0u64;
    let mut check = StreamCheck::default();
    for (sn, msg) in stream {
        let want = expected
            .get((*sn as usize).wrapping_sub(1))
            .ok_or_else(|| format!("{client}: sn {sn} beyond the {} sent", expected.len()))?;
        if msg != want {
            return Err(format!(
                "{client}: sn {sn} carries {msg:?}, sent as {want:?}"
            ));
        }
        if *sn == last + 1 {
            last += 1;
        } else if *sn <= last {
            check.duplicates += 1;
        } else {
            check.gaps += 1;
        }
    }
    if last != expected.len() as u64 {
        return Err(format!(
            "{client}: a counter would stop at sn {last} of {}",
            expected.len()
        ));
    }
    Ok(check)
}

/// `n` distinct messages for a client.
pub fn messages(client: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{client} message {i}")).collect()
}

/// Sends the in-process services' logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts one resuming session per client id, each sending `messages(id, n)` to
/// `addrs` (rotating on reconnect) until `timeout` passes.
pub fn spawn_sessions(
    addrs: &[String],
    ids: &[String],
    n: usize,
    timeout: std::time::Duration,
) -> Vec<
    tokio::task::JoinHandle<
        Result<tally_client::session::SessionReport, tally_client::session::SessionError>,
    >,
> {
    ids.iter()
        .map(|id| {
            let addrs = addrs.to_vec();
            let msgs = messages(id, n);
            let id =
                tally_common::ClientId::parse(id).unwrap_or_else(|e| panic!("client id {id}: {e}"));
            tokio::spawn(async move {
                tally_client::session::send_all(
                    &addrs,
                    &id,
                    &msgs,
                    std::time::Instant::now() + timeout,
                )
                .await
            })
        })
        .collect()
}

/// Changes a client counter (a string key) by `delta` behind the pipeline's back,
/// as a tampering oracle test needs.
pub async fn add_to_count(settings: &Settings, key: &str, delta: i64) {
    use redis::AsyncCommands;
    let mut conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    let _: i64 = conn.incr(key, delta).await.expect("INCRBY");
}

/// Changes a message's count (the `count` field of its hash) by `delta` behind
/// the pipeline's back.
pub async fn add_to_message_count(settings: &Settings, key: &str, delta: i64) {
    use redis::AsyncCommands;
    let mut conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    let _: i64 = conn
        .hincr(key, tally_common::schema::message::COUNT, delta)
        .await
        .expect("HINCRBY");
}

/// The stash operations on `settings`' key prefix.
pub async fn stash_store(settings: &Settings) -> tally_common::stash::StashStore {
    let conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    tally_common::stash::StashStore::new(
        conn,
        tally_common::Keys::new(&settings.redis.prefix),
        tally_common::redis::Replication::from_settings(&settings.redis),
    )
    .await
    .expect("stash store")
}

/// Isolated settings with `producer.auth.mode = "token"` under a fresh secret
/// written into `dir`; the secret mints the clients' tokens.
pub async fn token_settings(
    dir: &tempfile::TempDir,
    name: &str,
) -> (Settings, tally_common::auth::Secret, std::path::PathBuf) {
    let secret_file = dir.path().join("secret");
    std::fs::write(
        &secret_file,
        format!("an example secret of at least thirty-two bytes for {name}\n"),
    )
    .expect("write secret");
    let secret = tally_common::auth::Secret::read("test", &secret_file).expect("secret");
    let mut settings = isolated_settings(name, 3).await;
    settings.producer.auth.mode = tally_common::settings::AuthMode::Token;
    settings.producer.auth.secret_file = Some(secret_file.clone());
    (settings, secret, secret_file)
}

/// Peak resident memory of a process (`VmHWM`), from /proc, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// One plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[]).await
}

/// One plain HTTP/1.1 GET with extra `headers` (`("Authorization", "Bearer …")`):
/// (status, body).
pub async fn http_get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut raw),
    )
    .await
    .map_err(|_| std::io::Error::other("timed out"))??;
    parse_http_response(&raw)
}

/// A whole raw HTTP/1.x response, unchunked: (status, body).
pub fn parse_http_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head}")))?;
    Ok((status, body.to_owned()))
}

/// The value of the sample `name` whose labels include every `labels` pair.
pub fn metric_sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}
