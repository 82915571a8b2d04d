//! Least privilege on the secure stack (`scripts/stack --secure up`): each service's
//! Kafka user reaches only its own topics, the Redis user `tally` only tally's keys
//! and commands, and nothing gets in without TLS and a password.
//!
//! These run only against the secure stack, so they are `#[ignore]`d in the plain
//! run; `scripts/test` runs them (with the end-to-end test and one fault scenario)
//! under `scripts/stack --secure env`.

use std::path::Path;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_common::Settings;
use tally_harness::{isolated_settings, secure_config_dir, service_config};

const NEEDS: &str =
    "needs the secure stack: scripts/test runs it under `scripts/stack --secure env`";

/// A service's own settings on the secure stack, with the run's topic names.
fn service_settings(binary: &str, run: &Settings) -> Settings {
    assert!(
        secure_config_dir().is_some(),
        "not on the secure stack: {NEEDS}"
    );
    let path = service_config(binary);
    let mut s = Settings::load(Some(&path))
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    s.redis.prefix = run.redis.prefix.clone();
    s.kafka.client_message_topic = run.kafka.client_message_topic.clone();
    s.kafka.message_aggregation_topic = run.kafka.message_aggregation_topic.clone();
    s.kafka.dlq_topic = run.kafka.dlq_topic.clone();
    s
}

/// Produces one record to `topic` as the user of `settings`.
async fn produce(settings: &Settings, topic: &str) -> Result<(), KafkaError> {
    let producer: FutureProducer = tally_common::kafka::idempotent_producer_config(&settings.kafka)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key("probe").payload("probe"),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

fn refused_by_acl(result: Result<(), KafkaError>, who: &str, topic: &str) {
    match result {
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {}
        other => panic!("{who} writing {topic}: want TopicAuthorizationFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the secure stack; scripts/test runs it"]
async fn each_service_user_writes_only_its_own_topics() {
    let run = isolated_settings("it-acl", 1).await;
    let (cm, ma) = (
        run.kafka.client_message_topic.clone(),
        run.kafka.message_aggregation_topic.clone(),
    );
    let producer = service_settings("tally-producer", &run);
    let counter = service_settings("tally-counter", &run);
    let aggregator = service_settings("tally-aggregator", &run);

    // Each writes where the pipeline needs it to...
    produce(&producer, &cm)
        .await
        .expect("the producer writes client_message");
    produce(&counter, &ma)
        .await
        .expect("the counter writes message_aggregation");
    // ...and nowhere else.
    refused_by_acl(produce(&producer, &ma).await, "producer", &ma);
    refused_by_acl(produce(&aggregator, &cm).await, "aggregator", &cm);
    refused_by_acl(produce(&counter, &cm).await, "counter", &cm);
    refused_by_acl(produce(&aggregator, &ma).await, "aggregator", &ma);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the secure stack; scripts/test runs it"]
async fn the_redis_user_reaches_only_tally_keys_and_commands() {
    let run = isolated_settings("it-redis-acl", 1).await;
    let s = service_settings("tally-counter", &run);
    assert_eq!(s.redis.username.as_deref(), Some("tally"));
    let mut conn = tally_common::redis::connect(&s.redis)
        .await
        .expect("connect as tally");

    let own: String = redis::cmd("SET")
        .arg(format!("{}:probe", s.redis.prefix))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("SET under the prefix");
    assert_eq!(own, "OK");
    let err = redis::cmd("SET")
        .arg("other:probe")
        .arg(1)
        .query_async::<redis::Value>(&mut conn)
        .await
        .expect_err("a key outside the prefix");
    assert_eq!(err.code(), Some("NOPERM"), "a key outside: {err}");
    // Commands without keys, asked of one node (the cluster client would fan
    // them out and merge the answers).
    let mut node = tally_common::redis::connect_seed(&s.redis)
        .await
        .expect("connect to one node as tally");
    for (what, cmd) in [
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        (
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("*").clone(),
        ),
        ("KEYS", redis::cmd("KEYS").arg("tally*").clone()),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
    ] {
        let err = cmd
            .query_async::<redis::Value>(&mut node)
            .await
            .expect_err(what);
        assert_eq!(err.code(), Some("NOPERM"), "{what}: want NOPERM, got {err}");
    }

    // Without the password (Redis' default user is off) or without TLS, nothing.
    let mut anonymous = s.redis.clone();
    anonymous.username = None;
    anonymous.password_file = None;
    let err = match tally_common::redis::connect_seed(&anonymous).await {
        Ok(mut c) => redis::cmd("GET")
            .arg(format!("{}:probe", s.redis.prefix))
            .query_async::<redis::Value>(&mut c)
            .await
            .expect_err("the default user is off"),
        Err(e) => e,
    };
    assert!(
        matches!(err.code(), Some("NOAUTH" | "WRONGPASS")),
        "anonymous: want NOAUTH or WRONGPASS, got {err}"
    );
    let mut plain = s.redis.clone();
    plain.nodes = plain
        .nodes
        .iter()
        .map(|n| n.replacen("rediss://", "redis://", 1))
        .collect();
    plain.tls_ca_file = None;
    let plain_result = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = tally_common::redis::connect_seed(&plain).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    })
    .await;
    assert!(
        !matches!(plain_result, Ok(Ok(_))),
        "a plain-text connection got an answer: {plain_result:?}"
    );
}

#[test]
#[ignore = "needs the secure stack; scripts/test runs it"]
fn config_show_hides_every_secret_of_a_service_config() {
    let dir = secure_config_dir().unwrap_or_else(|| panic!("{NEEDS}"));
    for user in ["tally-producer", "tally-counter", "tally-aggregator"] {
        let config = dir.join(format!("{user}.toml"));
        let out = std::process::Command::new(tally_harness::binary("tally"))
            .arg("--config")
            .arg(&config)
            .args(["config", "show"])
            .output()
            .expect("run tally config show");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(user),
            "{user}: the user name is shown: {shown}"
        );
        for secret in [password(&dir, user), password(&dir, "redis-tally")] {
            assert!(!shown.contains(&secret), "{user}: a password is shown");
        }
    }
}

fn password(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.password")))
        .unwrap_or_else(|e| panic!("{name}.password: {e}"))
        .trim()
        .to_owned()
}
