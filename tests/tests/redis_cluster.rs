//! The Redis side of the foundation against the real 6-node cluster: a script on a
//! hash-tagged key runs on the master owning the tag, on each of the 3 masters, and
//! `WAIT` confirms it reached that master's replica.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use tally_common::redis::{connect, RedisOpError, ReplicatedScript, Replication, ScriptCall};
use tally_tests::{parse_cluster_nodes, settings, unique, ClusterNode};

async fn node(addr: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}")).expect("node url");
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

async fn topology() -> Vec<ClusterNode> {
    let s = settings();
    let seed = s.redis.nodes[0].trim_start_matches("redis://").to_string();
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut node(&seed).await)
        .await
        .expect("CLUSTER NODES");
    parse_cluster_nodes(&text)
}

/// One key per master, found by asking the cluster which slot a tag hashes to.
async fn key_per_master(masters: &[ClusterNode], prefix: &str) -> BTreeMap<String, String> {
    let mut any = node(&masters[0].addr).await;
    let mut found = BTreeMap::new();
    for i in 0..10_000 {
        let key = format!("{prefix}:{{tag-{i}}}:n");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut any)
            .await
            .expect("KEYSLOT");
        if let Some(m) = masters
            .iter()
            .find(|m| m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        {
            found.entry(m.addr.clone()).or_insert(key);
        }
        if found.len() == masters.len() {
            break;
        }
    }
    found
}

#[tokio::test]
async fn replicated_script_runs_on_each_master_and_reaches_its_replica() {
    let s = settings();
    let nodes = topology().await;
    let masters: Vec<ClusterNode> = nodes
        .iter()
        .filter(|n| n.master && !n.slots.is_empty())
        .cloned()
        .collect();
    assert_eq!(masters.len(), 3, "expected 3 masters: {nodes:#?}");
    let keys = key_per_master(&masters, &unique("it-redis")).await;
    assert_eq!(keys.len(), 3, "no key found for some master: {keys:?}");

    let mut conn = connect(&s.redis).await.expect("cluster connection");
    let script = ReplicatedScript::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let replication = Replication::from_settings(&s.redis);
    assert!(replication.replicas >= 1);

    for (master_addr, key) in &keys {
        let value: i64 = script
            .invoke(
                &mut conn,
                ScriptCall::new().key(key.as_str()).arg(5),
                replication,
            )
            .await
            .unwrap_or_else(|e| panic!("script on {master_addr}: {e}"));
        assert_eq!(value, 5);

        // It ran on the master that owns the slot ...
        let on_master: Option<i64> = node(master_addr)
            .await
            .get(key)
            .await
            .expect("GET on master");
        assert_eq!(on_master, Some(5), "{key} not on {master_addr}");
        // ... and WAIT returned only once the replica had it: read it there directly.
        let master = masters
            .iter()
            .find(|m| &m.addr == master_addr)
            .expect("master");
        let replica = nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .unwrap_or_else(|| panic!("{master_addr} has no replica: {nodes:#?}"));
        let mut replica_conn = node(&replica.addr).await;
        redis::cmd("READONLY")
            .exec_async(&mut replica_conn)
            .await
            .expect("READONLY");
        let on_replica: Option<i64> = replica_conn.get(key).await.expect("GET on replica");
        assert_eq!(on_replica, Some(5), "{key} not on replica {}", replica.addr);
    }

    // Script cache flushed on every master (as after a restart): EVALSHA gets NOSCRIPT,
    // the script is loaded and run exactly once more.
    for m in &masters {
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec_async(&mut node(&m.addr).await)
            .await
            .expect("SCRIPT FLUSH");
    }
    for key in keys.values() {
        let value: i64 = script
            .invoke(
                &mut conn,
                ScriptCall::new().key(key.as_str()).arg(5),
                replication,
            )
            .await
            .expect("script after SCRIPT FLUSH");
        assert_eq!(value, 10, "{key} must be incremented exactly once more");
    }

    for key in keys.values() {
        let _: () = conn.del(key).await.expect("DEL");
    }
}

#[tokio::test]
async fn too_few_replicas_and_script_refusals_are_reported_as_such() {
    let s = settings();
    let mut conn = connect(&s.redis).await.expect("cluster connection");
    let key = format!("{}:{{x}}:n", unique("it-redis"));

    // Each master has exactly one replica, so asking for two cannot be met.
    let script = ReplicatedScript::new("return redis.call('INCR', KEYS[1])");
    let two = Replication {
        replicas: 2,
        timeout: Duration::from_millis(200),
    };
    match script
        .invoke::<i64>(&mut conn, ScriptCall::new().key(key.as_str()), two)
        .await
    {
        Err(RedisOpError::NotReplicated { acked, wanted, .. }) => {
            assert_eq!((acked, wanted), (1, 2));
        }
        other => panic!("expected NotReplicated, got {other:?}"),
    }

    let refusing =
        ReplicatedScript::new("return redis.error_reply('TALLY_FENCED epoch 7 is stale')");
    match refusing
        .invoke::<i64>(
            &mut conn,
            ScriptCall::new().key(key.as_str()),
            Replication::from_settings(&s.redis),
        )
        .await
    {
        Err(RedisOpError::Fenced { detail }) => {
            assert_eq!(detail, "epoch 7 is stale");
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    let refusing =
        ReplicatedScript::new("return redis.error_reply('TALLY_SN_MISMATCH stored sn 3')");
    match refusing
        .invoke::<i64>(
            &mut conn,
            ScriptCall::new().key(key.as_str()),
            Replication::from_settings(&s.redis),
        )
        .await
    {
        Err(RedisOpError::Refused { code, detail }) => {
            assert_eq!(code, "TALLY_SN_MISMATCH");
            assert_eq!(detail, "stored sn 3");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let _: () = conn.del(&key).await.expect("DEL");
}
