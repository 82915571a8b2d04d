//! The write combiner against a private Redis Cluster (real `redis-server`s of
//! this test's own, so restarting and pausing them disturbs no other test): a
//! connection a restarted node closed long ago, and a round slower than its limit
//! on a busy master, are retried on a fresh connection instead of reaching the
//! caller as "unavailable"; a master that is really gone still does; a call does
//! not queue behind another round's `WAIT`; and a retried call whose first run
//! landed is confirmed only once that first run reached a replica.

use std::process::Command;
use std::time::{Duration, Instant};

use tally_common::combiner::WriteCombiner;
use tally_common::redis::{RedisOpError, ReplicatedScript, Replication, ScriptCall};
use tally_tests::private_redis::PrivateRedis;

/// Idempotent, as every tally script must be: a re-run leaves the same state.
const SET_GET: &str = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])";

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

/// A combiner over `redis` whose rounds `WAIT` for one replica, `wait` at most.
async fn waiting_for_one_replica(redis: &PrivateRedis, wait: Duration) -> WriteCombiner {
    let conn = tally_common::redis::connect(&redis.settings())
        .await
        .expect("connect");
    let replication = Replication {
        replicas: 1,
        timeout: wait,
    };
    WriteCombiner::new(conn, replication)
        .await
        .expect("combiner")
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
        let pid = redis.pid();
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
    let combiner = waiting_for_one_replica(&redis, wait).await;
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

/// A tally script's call that writes, the state it needs first, and how to read
/// what it did.
struct Rerun {
    script: &'static str,
    body: &'static str,
    setup: &'static [&'static [&'static str]],
    keys: &'static [&'static str],
    args: &'static [&'static str],
    /// A read of the call's effect, and what it reads after the call ran (once).
    effect: &'static [&'static str],
    expect: &'static str,
}

const RERUNS: &[Rerun] = &[
    Rerun {
        script: "stash_append",
        body: include_str!("../../common/src/lua/stash_append.lua"),
        setup: &[&[
            "HSET",
            "rr:{c1}:meta",
            "owner",
            "p1",
            "epoch",
            "1",
            "sn",
            "0",
        ]],
        keys: &["rr:{c1}:meta", "rr:{c1}:stash"],
        args: &["p1", "1", "0", "1700000000000", "2", "a\nb"],
        effect: &["XLEN", "rr:{c1}:stash"],
        expect: "1",
    },
    Rerun {
        script: "stash_claim (adopt)",
        body: include_str!("../../common/src/lua/stash_claim.lua"),
        setup: &[&[
            "HSET",
            "rr:{c2}:meta",
            "owner",
            "dead",
            "epoch",
            "3",
            "sn",
            "4",
            "flushed",
            "4",
        ]],
        keys: &["rr:{c2}:meta"],
        args: &["p2", "adopt", "dead", "3"],
        effect: &["HGET", "rr:{c2}:meta", "epoch"],
        expect: "4",
    },
    Rerun {
        script: "stash_release",
        body: include_str!("../../common/src/lua/stash_release.lua"),
        setup: &[&[
            "HSET",
            "rr:{c3}:meta",
            "owner",
            "p1",
            "epoch",
            "2",
            "sn",
            "5",
            "flushed",
            "5",
        ]],
        keys: &["rr:{c3}:meta"],
        args: &["p1", "2"],
        effect: &["HGET", "rr:{c3}:meta", "owner"],
        expect: "",
    },
    Rerun {
        script: "count_client",
        body: include_str!("../../common/src/lua/count_client.lua"),
        setup: &[],
        keys: &["rr:{c4}:count", "rr:{c4}:last_sn"],
        args: &["1", "2"],
        effect: &["GET", "rr:{c4}:count"],
        expect: "2",
    },
    Rerun {
        script: "count_messages",
        body: include_str!("../../common/src/lua/count_messages.lua"),
        setup: &[],
        keys: &["rr:m:{b1}h1"],
        args: &["hello", "2", "c5", "1", "c6", "1"],
        effect: &["HGET", "rr:m:{b1}h1", "count"],
        expect: "2",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_whose_first_run_landed_is_confirmed_only_once_that_run_reached_a_replica() {
    let (master, replica) = PrivateRedis::start_with_replica().await;
    let combiner = waiting_for_one_replica(&master, Duration::from_millis(500)).await;
    let mut direct = redis::Client::open(format!("redis://127.0.0.1:{}", master.port()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection");
    for case in RERUNS {
        let name = case.script;
        for command in case.setup {
            let _: redis::Value = redis::cmd(command[0])
                .arg(&command[1..])
                .query_async(&mut direct)
                .await
                .unwrap_or_else(|e| panic!("{name}: setup: {e}"));
        }
        let replicated: u32 = redis::cmd("WAIT")
            .arg(1)
            .arg(5_000)
            .query_async(&mut direct)
            .await
            .expect("WAIT");
        assert_eq!(replicated, 1, "{name}: setup not on the replica");
        let mut call = ScriptCall::new();
        for key in case.keys {
            call.key(*key);
        }
        for arg in case.args {
            call.arg(*arg);
        }

        // The first run lands on the master while the replica is paused, and its
        // reply is lost (as when a round's connection breaks after the script
        // ran): the combiner retries the call on a fresh connection.
        replica.signal("STOP");
        let _: redis::Value = redis::cmd("EVAL")
            .arg(case.body)
            .arg(case.keys.len())
            .arg(case.keys)
            .arg(case.args)
            .query_async(&mut direct)
            .await
            .unwrap_or_else(|e| panic!("{name}: first run: {e}"));
        let script = ReplicatedScript::new(case.body);
        let rerun = combiner.invoke::<redis::Value>(&script, call.clone()).await;
        // The re-run finds its work done and writes nothing. Its `WAIT` still
        // waits for the first run's write: Redis records a connection's
        // replication offset after every command, so the `EVALSHA` before it
        // sets the mark. A `WAIT` that was its connection's first command would
        // be answered at once, and this call confirmed.
        assert!(
            matches!(
                rerun,
                Err(RedisOpError::NotReplicated {
                    acked: 0,
                    wanted: 1,
                    ..
                })
            ),
            "{name}: a re-run was confirmed while the first run's write was on no replica: {rerun:?}"
        );
        replica.signal("CONT");
        combiner
            .invoke::<redis::Value>(&script, call)
            .await
            .unwrap_or_else(|e| panic!("{name}: with the replica back: {e}"));
        assert_eq!(
            master.cli(case.effect).trim(),
            case.expect,
            "{name}: the runs took effect once"
        );
    }
}
