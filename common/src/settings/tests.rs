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
    assert_eq!(s.counter.batch_max_records, 5000);
    assert_eq!(s.counter.batch_max_ms, 100);
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
        "{MINIMAL}\n[producer]\nlisten = \"nowhere\"\n[log]\nfilter = \"[[\"\n"
    ));
    let found = issues(Settings::load_from(Some(f.path()), env(&[])).unwrap_err());
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"producer.listen"), "{found:?}");
    assert!(keys.contains(&"log.filter"), "{found:?}");
}

#[test]
fn observe_listen_is_per_service_and_port_0_is_allowed() {
    let f = file(MINIMAL);
    let s = Settings::load_from(Some(f.path()), env(&[])).expect("valid");
    // Distinct defaults, so the three services can share a host and a file.
    let defaults = [
        &s.producer.observe_listen,
        &s.counter.observe_listen,
        &s.aggregator.observe_listen,
    ];
    assert_eq!(
        defaults
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
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
