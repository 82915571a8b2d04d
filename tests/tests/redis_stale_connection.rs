//! The write combiner against a private one-node Redis Cluster (a real
//! `redis-server` of this test's own, so restarting and pausing it disturbs no
//! other test): a connection a restarted node closed long ago, and a round slower
//! than its limit on a busy master, are retried on a fresh connection instead of
//! reaching the caller as "unavailable"; a master that is really gone still does;
//! and a call does not queue behind another round's `WAIT`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_common::combiner::WriteCombiner;
use tally_common::redis::{RedisOpError, ReplicatedScript, Replication, ScriptCall};
use tally_common::settings::RedisSettings;
use tally_tests::free_port;

/// Idempotent, as every tally script must be: a re-run leaves the same state.
const SET_GET: &str = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])";

/// One `redis-server` with every slot: a cluster of one, no replicas.
struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    /// The cluster bus port, chosen like `port`: Redis' default (`port` +
    /// 10000) lands in the kernel's ephemeral range, where any outgoing
    /// connection of a busy CI host may hold it ("Address already in use").
    bus_port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let mut redis = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            bus_port: free_port(),
            child: None,
        };
        redis.spawn().await;
        redis.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "one-node cluster not ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        redis
    }

    /// Starts the server (again: nodes.conf in its folder keeps its slots).
    async fn spawn(&mut self) {
        let dir: &Path = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            // Alone, a node does not know its own address (CLUSTER SLOTS would
            // name it ""): no peer ever told it.
            .args(["--cluster-announce-ip", "127.0.0.1"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "redis-server on {} (bus {}) did not answer ({exited:?}); its log:\n{}",
                self.port,
                self.bus_port,
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    fn settings(&self) -> RedisSettings {
        serde_json::from_value(serde_json::json!({
            "nodes": [format!("redis://127.0.0.1:{}", self.port)],
            "wait_replicas": 0,
        }))
        .expect("redis settings")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would ignore nothing but SIGKILL; resume it anyway.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

fn set(value: &str) -> ScriptCall {
    let mut call = ScriptCall::new();
    call.key("stale-test").arg(value);
    call
}

/// A combiner over `redis` that has made one call, and the script it uses.
async fn combiner(redis: &PrivateRedis) -> (WriteCombiner, ReplicatedScript) {
    let settings = redis.settings();
    let conn = tally_common::redis::connect(&settings)
        .await
        .expect("connect");
    let replication = Replication {
        replicas: 0,
        timeout: Duration::from_millis(settings.wait_timeout_ms),
    };
    let combiner = WriteCombiner::new(conn, replication)
        .await
        .expect("combiner");
    let script = ReplicatedScript::new(SET_GET);
    let first: String = combiner
        .invoke(&script, set("1"))
        .await
        .expect("first call");
    assert_eq!(first, "1");
    (combiner, script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_a_restarted_node_closed_is_retried_and_a_dead_node_reported() {
    let mut redis = PrivateRedis::start().await;
    let (combiner, script) = combiner(&redis).await;

    // The node restarts: the combiner's connection to it was closed meanwhile
    // (before the retry: `ERR unavailable redis: broken pipe` for the client).
    redis.kill();
    redis.spawn().await;
    let after_restart: Result<String, _> = combiner.invoke(&script, set("2")).await;
    assert_eq!(
        after_restart.expect("a stale connection is retried on a fresh one"),
        "2"
    );

    // Gone for good: the caller hears it (after the retries, within seconds).
    redis.kill();
    let started = Instant::now();
    let gone: Result<String, _> = combiner.invoke(&script, set("3")).await;
    assert!(gone.is_err(), "a dead master answered: {gone:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a dead master took {:?} to report",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_slower_than_its_limit_on_a_busy_master_is_retried() {
    let redis = PrivateRedis::start().await;
    let (combiner, script) = combiner(&redis).await;

    // A master too busy to answer within a round's limit (the `WAIT` timeout plus
    // 2 s): paused past it, then back. Before the retry the caller heard
    // `redis: timed out` and its client `ERR unavailable`, though the write landed.
    redis.signal("STOP");
    let resume = {
        let pid = redis.child.as_ref().expect("running").id();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(4_500)).await;
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        })
    };
    let started = Instant::now();
    let slow: Result<String, _> = combiner.invoke(&script, set("2")).await;
    let waited = started.elapsed();
    resume.await.expect("resume task");
    assert_eq!(slow.expect("a slow round is retried, not reported"), "2");
    assert!(
        waited >= Duration::from_secs(3),
        "the round cannot have finished while the master was paused: {waited:?}"
    );
    assert_eq!(redis.cli(&["GET", "stale-test"]).trim(), "2");
}

/// Connections of `redis` blocked in a `WAIT` right now.
fn blocked_in_wait(redis: &PrivateRedis) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains("cmd=wait") && line.contains("flags=b"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_does_not_queue_behind_another_rounds_wait() {
    let redis = PrivateRedis::start().await;
    // A master without replicas: `WAIT 1` blocks its connection for the whole
    // timeout, then counts none, so each call ends `NotReplicated`. 2 s is below
    // `response_timeout_ms` (3 s) and far above redis-rs' own 500 ms, which cut
    // such a round off ("timed out") before the direct connections were given
    // the configured timeouts.
    let wait = Duration::from_secs(2);
    let conn = tally_common::redis::connect(&redis.settings())
        .await
        .expect("connect");
    let combiner = WriteCombiner::new(
        conn,
        Replication {
            replicas: 1,
            timeout: wait,
        },
    )
    .await
    .expect("combiner");
    // Loaded beforehand: a `NOSCRIPT` round would wait its `WAIT` out too.
    redis.cli(&["SCRIPT", "LOAD", SET_GET]);
    let call = |key: &'static str| {
        let combiner = combiner.clone();
        tokio::spawn(async move {
            let mut call = ScriptCall::new();
            call.key(key).arg("1");
            combiner
                .invoke::<String>(&ReplicatedScript::new(SET_GET), call)
                .await
        })
    };
    let started = Instant::now();
    let first = call("queue-a");
    while blocked_in_wait(&redis) < 1 {
        assert!(
            started.elapsed() < wait / 2,
            "the first round never reached its WAIT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the first round waits for a replica, the second call's round starts
    // on a connection of its own instead of queueing behind that wait.
    let second = call("queue-b");
    while blocked_in_wait(&redis) < 2 {
        assert!(
            started.elapsed() < wait,
            "the second call queued behind the first round's WAIT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, task) in [("first", first), ("second", second)] {
        let result = task.await.expect("call task");
        assert!(
            matches!(
                result,
                Err(RedisOpError::NotReplicated {
                    acked: 0,
                    wanted: 1,
                    ..
                })
            ),
            "{name} call: {result:?}"
        );
    }
    // Both scripts ran; only the replication was missing.
    assert_eq!(redis.cli(&["GET", "queue-a"]).trim(), "1");
    assert_eq!(redis.cli(&["GET", "queue-b"]).trim(), "1");
}
