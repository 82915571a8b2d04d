use super::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

fn env(vars: &[(&str, &str)]) -> config::Environment {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(Some(map))
}

fn file(body: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    f.write_all(body.as_bytes()).expect("write temp file");
    f
}

const MINIMAL: &str = r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
[kafka]
brokers = "127.0.0.1:9092"
"#;

fn issues(err: ConfigError) -> Vec<ConfigIssue> {
    match err {
        ConfigError::Invalid(issues) => issues,
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn defaults_fill_everything_not_required() {
    let f = file(MINIMAL);
    let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    assert_eq!(s.redis.prefix, "tally");
    assert_eq!(s.redis.wait_replicas, 1);
    assert_eq!(s.kafka.partitions, 12);
    assert_eq!(s.kafka.client_message_topic, "client_message");
    assert_eq!(s.counter.group_id, "tally-counter");
    assert_eq!(s.counter.transactional_id_prefix, "tally-counter");
    assert_eq!(s.counter.batch_max_records, 20_000);
    assert_eq!(s.counter.batch_max_ms, 100);
    assert_eq!(s.counter.batch_max_bytes, 4 << 20);
    assert_eq!(s.aggregator.batch_max_bytes, 2 << 20);
    assert_eq!(s.producer.max_line_bytes, 65536);
    assert_eq!(s.log.format, LogFormat::Auto);
}

#[test]
fn environment_overrides_file_key_by_key() {
    let f = file(
        r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
prefix = "from-file"
wait_timeout_ms = 500
[kafka]
brokers = "127.0.0.1:9092"
[counter]
batch_max_records = 10
"#,
    );
    let s = Settings::load_from(
        Some(f.path()),
        env(&[
            ("TALLY__REDIS__PREFIX", "from-env"),
            ("TALLY__COUNTER__BATCH_MAX_RECORDS", "250"),
            (
                "TALLY__REDIS__NODES",
                "redis://127.0.0.1:7001, redis://127.0.0.1:7002",
            ),
            ("TALLY__PRODUCER__INSTANCE_ID", "1234"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.redis.prefix, "from-env");
    // A key the environment does not name keeps the file's value.
    assert_eq!(s.redis.wait_timeout_ms, 500);
    assert_eq!(s.counter.batch_max_records, 250);
    assert_eq!(
        s.redis.nodes,
        vec!["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]
    );
    // A numeric-looking value still reads as a string where a string is wanted.
    assert_eq!(s.producer.instance_id.as_deref(), Some("1234"));
}

#[test]
fn environment_alone_is_enough() {
    let s = Settings::load_from(
        None,
        env(&[
            ("TALLY__REDIS__NODES", "redis://127.0.0.1:7000"),
            ("TALLY__KAFKA__BROKERS", "127.0.0.1:9092"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
}

#[test]
fn unknown_keys_are_all_reported_with_their_path() {
    let f = file(
        r#"
[redis]
nodes = ["redis://127.0.0.1:7000"]
wait_replica = 1
[kafka]
brokers = "127.0.0.1:9092"
partitons = 3
[produce]
listen = "0.0.0.0:1"
"#,
    );
    let found = issues(
        Settings::load_from(Some(f.path()), env(&[("TALLY__COUNTER__BATCH_SIZE", "5")]))
            .unwrap_err(),
    );
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    for expected in [
        "redis.wait_replica",
        "kafka.partitons",
        "produce",
        "counter.batch_size",
    ] {
        assert!(
            keys.contains(&expected),
            "{expected} missing from {found:?}"
        );
    }
}

#[test]
fn missing_required_fields_are_named() {
    let f = file("[redis]\nprefix = \"x\"\n[kafka]\n");
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"redis.nodes"), "{found:?}");
    assert!(keys.contains(&"kafka.brokers"), "{found:?}");
    assert!(found.iter().all(|i| i.problem == "required but not set"));
}

#[test]
fn missing_section_is_named() {
    let f = file("[redis]\nnodes = [\"redis://127.0.0.1:7000\"]\n");
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    assert_eq!(
        found,
        vec![ConfigIssue {
            key: "kafka".into(),
            problem: "missing section".into()
        }]
    );
}

#[test]
fn type_errors_and_invalid_values_come_together() {
    let f = file(&format!(
        "{MINIMAL}\n[counter]\nbatch_max_ms = \"soon\"\n[producer]\nlisten = \"nowhere\"\n"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    assert!(
        found.iter().any(|i| i.key == "counter.batch_max_ms"),
        "{found:?}"
    );
    // Value checks run only once every section parsed, so fix types first:
    let f = file(&format!(
        "{MINIMAL}\n[producer]\nlisten = \"nowhere\"\n[log]\nfilter = \"[[\"\n[aggregator]\nbatch_max_bytes = 0\n"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"producer.listen"), "{found:?}");
    assert!(keys.contains(&"log.filter"), "{found:?}");
    assert!(keys.contains(&"aggregator.batch_max_bytes"), "{found:?}");
}

#[test]
fn observe_listen_is_per_service_and_port_0_is_allowed() {
    let f = file(MINIMAL);
    let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    // Loopback, any free port: any number of instances of every service can
    // share a host and a file (each publishes the port it got).
    for default in [
        &s.producer.observe_listen,
        &s.counter.observe_listen,
        &s.aggregator.observe_listen,
    ] {
        assert_eq!(default, "127.0.0.1:0");
    }
    assert!(!s.kafka.create_topics, "creating topics is opt-in");
    let s = Settings::load_from(
        Some(f.path()),
        env(&[("TALLY__COUNTER__OBSERVE_LISTEN", "0.0.0.0:0")]),
    )
    .expect("port 0 is valid");
    assert_eq!(s.counter.observe_listen, "0.0.0.0:0");
    let err = Settings::load_from(
        Some(f.path()),
        env(&[("TALLY__AGGREGATOR__OBSERVE_LISTEN", "localhost")]),
    )
    .unwrap_err();
    let found = issues(err);
    assert!(
        found.iter().any(|i| i.key == "aggregator.observe_listen"),
        "{found:?}"
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err =
        Settings::load_from(Some(Path::new("/nonexistent/tally.toml")), env(&[])).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tally.toml"), "{err}");
}

#[test]
fn local_stack_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/tally.toml");
    let s = Settings::load_from(Some(&path), env(&[])).expect("deploy/local/tally.toml");
    assert_eq!(s.redis.nodes.len(), 6);
    assert_eq!(s.kafka.brokers.split(',').count(), 3);
    // It names nothing the namespace derives, so one variable moves all of it.
    assert_eq!(names(&s), HISTORICAL.map(String::from));
    let other = Settings::load_from(Some(&path), env(&[("TALLY__NAMESPACE", "second")]))
        .expect("deploy/local/tally.toml");
    assert_eq!(
        names(&other),
        names(
            &Settings::load_from(
                Some(file(&format!("namespace = \"second\"\n{MINIMAL}")).path()),
                env(&[])
            )
            .expect("valid")
        )
    );
    assert_eq!(other.redis.prefix, "second");
}

#[test]
fn every_key_is_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let f = file(MINIMAL);
    let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    let tree = serde_json::to_value(&s).expect("serializable");
    let sections = tree.as_object().expect("table");
    for (section, keys) in sections {
        if !keys.is_object() {
            // A top-level key (`namespace`), documented in its own table.
            assert!(
                doc.contains(&format!("| `{section}` |")),
                "top-level key {section} undocumented"
            );
            continue;
        }
        assert!(
            doc.contains(&format!("## `[{section}]`")),
            "section [{section}] undocumented"
        );
        for key in keys.as_object().expect("section table").keys() {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "{section}.{key} undocumented"
            );
        }
    }
}

/// Every name the namespace derives, in a fixed order.
fn names(s: &Settings) -> [String; 7] {
    [
        s.redis.prefix.clone(),
        s.kafka.client_message_topic.clone(),
        s.kafka.message_aggregation_topic.clone(),
        s.kafka.dlq_topic.clone(),
        s.counter.group_id.clone(),
        s.aggregator.group_id.clone(),
        s.counter.transactional_id_prefix.clone(),
    ]
}

/// tally's names before the namespace existed; deployments depend on them.
const HISTORICAL: [&str; 7] = [
    "tally",
    "client_message",
    "message_aggregation",
    "tally.dlq",
    "tally-counter",
    "tally-aggregator",
    "tally-counter",
];

#[test]
fn no_namespace_and_the_empty_one_keep_the_historical_names() {
    let f = file(MINIMAL);
    let unset = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    assert_eq!(unset.namespace, "");
    assert_eq!(names(&unset), HISTORICAL.map(String::from));
    let empty =
        Settings::load_from(Some(f.path()), env(&[("TALLY__NAMESPACE", "")])).expect("valid");
    assert_eq!(names(&empty), HISTORICAL.map(String::from));
    let in_file = file(&format!("namespace = \"\"\n{MINIMAL}"));
    let empty = Settings::load_from(Some(in_file.path()), env(&[])).expect("valid");
    assert_eq!(names(&empty), HISTORICAL.map(String::from));
}

#[test]
fn a_namespace_derives_every_name() {
    let f = file(MINIMAL);
    let s =
        Settings::load_from(Some(f.path()), env(&[("TALLY__NAMESPACE", "blue")])).expect("valid");
    assert_eq!(s.namespace, "blue");
    assert_eq!(
        names(&s),
        [
            "blue",
            "blue.client_message",
            "blue.message_aggregation",
            "blue.dlq",
            "blue-counter",
            "blue-aggregator",
            "blue-counter",
        ]
        .map(String::from)
    );
    // The same from the file's top level.
    let f = file(&format!("namespace = \"blue\"\n{MINIMAL}"));
    let from_file = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    assert_eq!(names(&from_file), names(&s));
}

#[test]
fn two_pipelines_differ_in_one_variable() {
    let f = file(MINIMAL);
    let load = |ns: &str| {
        Settings::load_from(Some(f.path()), env(&[("TALLY__NAMESPACE", ns)])).expect("valid")
    };
    let (default, a, b) = (load(""), load("a"), load("b"));
    for (i, ((d, a), b)) in names(&default)
        .iter()
        .zip(names(&a))
        .zip(names(&b))
        .enumerate()
    {
        assert!(d != &a && d != &b && a != b, "name {i}: {d} / {a} / {b}");
    }
}

#[test]
fn an_explicit_name_wins_over_the_namespace() {
    let f = file(
        r#"
namespace = "blue"
[redis]
nodes = ["redis://127.0.0.1:7000"]
[kafka]
brokers = "127.0.0.1:9092"
dlq_topic = "shared.dlq"
"#,
    );
    let s = Settings::load_from(
        Some(f.path()),
        env(&[
            ("TALLY__COUNTER__GROUP_ID", "counters-of-blue"),
            ("TALLY__REDIS__PREFIX", "blue-keys"),
        ]),
    )
    .expect("valid");
    assert_eq!(
        names(&s),
        [
            "blue-keys",
            "blue.client_message",
            "blue.message_aggregation",
            "shared.dlq",
            "counters-of-blue",
            "blue-aggregator",
            // Follows the counter's group, as the transactional id always did.
            "counters-of-blue",
        ]
        .map(String::from)
    );
    // Set on its own, the transactional-id prefix wins too; and an explicit
    // name wins over the default namespace as well.
    let s = Settings::load_from(
        Some(f.path()),
        env(&[
            ("TALLY__NAMESPACE", ""),
            ("TALLY__COUNTER__TRANSACTIONAL_ID_PREFIX", "txn-blue"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.kafka.dlq_topic, "shared.dlq");
    assert_eq!(s.kafka.client_message_topic, "client_message");
    assert_eq!(s.counter.group_id, "tally-counter");
    assert_eq!(s.counter.transactional_id_prefix, "txn-blue");
}

#[test]
fn an_invalid_namespace_is_one_clear_error() {
    let f = file(MINIMAL);
    for bad in ["a b", "x{y}", "über", &"n".repeat(65)] {
        let found = issues(
            Settings::load_from(Some(f.path()), env(&[("TALLY__NAMESPACE", bad)])).unwrap_err(),
        );
        assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
        assert_eq!(found[0].key, "namespace", "{found:?}");
        assert!(found[0].problem.contains("[A-Za-z0-9._-]"), "{found:?}");
    }
    let f = file(&format!("namespace = [\"a\"]\n{MINIMAL}"));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    assert_eq!(found[0].key, "namespace", "{found:?}");
}

#[test]
fn pipeline_env_points_a_child_at_the_same_pipeline() {
    let f = file(MINIMAL);
    let mut parent = Settings::load_from(
        Some(f.path()),
        env(&[
            ("TALLY__NAMESPACE", "green"),
            ("TALLY__KAFKA__DLQ_TOPIC", "green-dead"),
        ]),
    )
    .expect("valid");
    // A name changed after loading (as the tests do) reaches the child too.
    parent.counter.group_id = "green-counter-2".into();
    let vars = parent.pipeline_env();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The child reads a file of another namespace: the environment still wins.
    let other = file(&format!("namespace = \"red\"\n{MINIMAL}"));
    let child = Settings::load_from(Some(other.path()), env(&pairs)).expect("valid");
    assert_eq!(child.namespace, "green");
    assert_eq!(names(&child), names(&parent));
    assert_eq!(child.redis.nodes, parent.redis.nodes);
    assert_eq!(child.kafka.brokers, parent.kafka.brokers);
}

#[test]
fn mtls_needs_tls_with_a_client_ca_and_is_reported_with_the_rest() {
    let f = file(&format!(
        "{MINIMAL}\n[producer]\nlisten = \"nowhere\"\n[producer.auth]\nmode = \"mtls\"\n"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"producer.tls.client_ca_file"), "{found:?}");
    assert!(keys.contains(&"producer.listen"), "all at once: {found:?}");

    let tls = "[producer.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
    let f = file(&format!(
        "{MINIMAL}\n[producer.auth]\nmode = \"mtls\"\n{tls}"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    assert_eq!(
        found.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["producer.tls.client_ca_file"],
        "{found:?}"
    );
    let s = Settings::load_from(
        Some(f.path()),
        env(&[("TALLY__PRODUCER__TLS__CLIENT_CA_FILE", "ca.pem")]),
    )
    .expect("mtls with a client CA is valid");
    let loaded = s.producer.tls.expect("tls");
    assert_eq!(loaded.client_ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(s.producer.auth.mode, AuthMode::Mtls);

    // Without [producer.tls] the listener is plain TCP; with it, both files are needed.
    let s = Settings::load_from(Some(file(MINIMAL).path()), env(&[])).expect("valid");
    assert!(s.producer.tls.is_none());
    let f = file(&format!(
        "{MINIMAL}\n[producer.tls]\ncert_file = \"c.pem\"\n"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    assert!(
        found.iter().any(|i| i.key == "producer.tls.key_file"),
        "{found:?}"
    );
}

#[test]
fn redis_credentials_and_tls_roots_are_checked_together() {
    // A CA for TLS nodes, a user and a password file: fine.
    let ok = file(
        "[redis]\nnodes = [\"rediss://h:7000\"]\nusername = \"tally\"\npassword_file = \"p\"\n\
         tls_ca_file = \"ca.pem\"\n[kafka]\nbrokers = \"h:9092\"\n",
    );
    let s = Settings::load_from(Some(ok.path()), env(&[])).expect("valid");
    assert_eq!(s.redis.username.as_deref(), Some("tally"));

    // A CA for plain nodes, credentials in two places and an empty user: all
    // three reported at once.
    let bad = file(
        "[redis]\nnodes = [\"redis://app:pw@h:7000\"]\nusername = \"\"\n\
         tls_ca_file = \"ca.pem\"\n[kafka]\nbrokers = \"h:9092\"\n",
    );
    let found = issues(Settings::load_from(Some(bad.path()), env(&[])).unwrap_err());
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["redis.tls_ca_file", "redis.username", "redis.username"],
        "{found:?}"
    );
    // The password in the URL is not repeated in any problem.
    assert!(found.iter().all(|i| !i.problem.contains("pw")), "{found:?}");
}
