//! Kafka client configuration and topic setup.
//!
//! Invariant: every client tally creates is built here, so the durability settings
//! exactly-once rests on cannot be forgotten in one place: producers are idempotent
//! with `acks=all`; consumers read only committed records and never commit offsets
//! on their own; transactional producers fit their delivery timeout inside the
//! transaction timeout. The `[kafka]` security keys (TLS, SASL) come next, and
//! `[kafka.extra]` properties last, so users can reach any librdkafka setting.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

use crate::settings::KafkaSettings;

fn base(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    if let Some(protocol) = &settings.security_protocol {
        config.set("security.protocol", protocol);
    }
    if let Some(ca) = &settings.ssl_ca_file {
        config.set("ssl.ca.location", ca.display().to_string());
    }
    if let Some(user) = &settings.sasl_username {
        config
            .set(
                "sasl.mechanisms",
                settings
                    .sasl_mechanism
                    .as_deref()
                    .unwrap_or("SCRAM-SHA-512"),
            )
            .set("sasl.username", user);
    }
    match read_sasl_password(settings) {
        Ok(Some(password)) => {
            config.set("sasl.password", password);
        }
        Ok(None) => {}
        // `tally config check` reports it too; here the brokers will refuse the
        // login, and this says why.
        Err(e) => tracing::error!(error = %e, "kafka: no SASL password"),
    }
    config
}

/// The SASL password from `kafka.sasl_password_file` (its first line), if set.
pub fn read_sasl_password(settings: &KafkaSettings) -> Result<Option<String>, std::io::Error> {
    let Some(path) = &settings.sasl_password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot read kafka.sasl_password_file {}: {e}",
                path.display()
            ),
        )
    })?;
    Ok(Some(text.lines().next().unwrap_or_default().to_owned()))
}

fn with_extra(mut config: ClientConfig, settings: &KafkaSettings) -> ClientConfig {
    for (key, value) in &settings.extra {
        config.set(key, value);
    }
    config
}

fn set_producer_tuning(
    config: &mut ClientConfig,
    settings: &KafkaSettings,
    delivery_timeout_ms: u64,
) {
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set("linger.ms", settings.linger_ms.to_string())
        .set("batch.size", settings.batch_bytes.to_string())
        .set("compression.type", &settings.compression)
        // The Java client's key partitioner, so tally and JVM tools agree on which
        // partition holds a client's records.
        .set("partitioner", "murmur2_random");
}

/// The partition of `partitions` that Kafka's Java partitioner, and librdkafka's
/// `murmur2_random` set above, pick for a non-empty `key`: `murmur2(key) &
/// 0x7fffffff % partitions`. The counter places its packed forwards with it, so a
/// message's sightings land where a record keyed by its hash would. `partitions`
/// must be ≥ 1.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as unsigned.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// An idempotent `acks=all` producer: no duplicates from its own retries, no loss
/// while `min.insync.replicas` brokers are up. Used by the producer's flusher.
pub fn idempotent_producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base(settings);
    set_producer_tuning(&mut config, settings, settings.delivery_timeout_ms);
    with_extra(config, settings)
}

/// A transactional producer with a stable `transactional.id`: a new instance with
/// the same id fences the old one and aborts its open transaction.
pub fn transactional_producer_config(
    settings: &KafkaSettings,
    transactional_id: &str,
) -> ClientConfig {
    let mut config = base(settings);
    // librdkafka refuses a message timeout longer than the transaction timeout.
    let delivery = settings
        .delivery_timeout_ms
        .min(settings.transaction_timeout_ms);
    set_producer_tuning(&mut config, settings, delivery);
    config
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            settings.transaction_timeout_ms.to_string(),
        )
        // Right after a commit the coordinator is still writing the previous
        // transaction's markers, and the next transaction's first request is
        // refused with CONCURRENT_TRANSACTIONS; librdkafka retries after
        // `retry.backoff.ms` (default 100 ms), on every batch. (The Java client
        // uses 20 ms for this case.) Measured: ~20 % more transactions per second.
        // librdkafka ≥ 2.3 doubles the backoff on every retry (up to 1 s), so a
        // wait of 100 ms for the markers became 150; capped at 20 ms, the time to
        // send the offsets at 4,000 msg/s fell from 88 to 69 ms per transaction.
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "20");
    with_extra(config, settings)
}

/// A consumer that sees only committed records and whose offsets move only when
/// tally commits them (in a transaction, or after its Redis effects are replicated).
pub fn read_committed_consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = base(settings);
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to 64 MiB and 100,000 records per partition by
        // default; a counter catching up on a backlog holds that on top of its
        // batch. 16 MiB / 10,000 still keep more than a batch ahead (measured: same
        // throughput, the counter's peak RSS at 20,000-record batches 180–209 →
        // 158 MiB).
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "10000")
        // Those limits are checked before a fetch, and each fetch still brings up
        // to this much per partition (compressed; librdkafka holds each record as
        // a ~270-byte op besides the decompressed batch). A heap profile of a
        // counter catching up put 78 of its 125 MiB peak in those ops and 35 in
        // decompressed batches. 512 KiB (default 1 MiB): counter peak RSS
        // 135 → 92–94 MiB (novel) and 111–115 → 72–77 MiB (all-distinct), at
        // −5 to −7 % median consume-only throughput, within the run-to-run spread;
        // 256 KiB cost up to half the throughput (docs/benchmarks.md).
        .set("max.partition.fetch.bytes", "524288");
    with_extra(config, settings)
}

/// An admin client.
pub fn admin_config(settings: &KafkaSettings) -> ClientConfig {
    with_extra(base(settings), settings)
}

/// Why topic setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicSetupError {
    /// The admin client could not be created or a request failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Kafka refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// Kafka's error.
        code: RDKafkaErrorCode,
    },
    /// Metadata of a topic could not be read.
    #[error("cannot describe topic {topic}: {detail}")]
    Describe {
        /// The topic.
        topic: String,
        /// What went wrong.
        detail: String,
    },
    /// Topics a service needs do not exist, and `kafka.create_topics` is off.
    #[error(
        "topic{} {} missing: create {} with `tally admin init-topics` (or set kafka.create_topics = true)",
        if .0.len() == 1 { "" } else { "s" },
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    Missing(Vec<String>),
}

/// What [`require_topics`] found.
#[derive(Debug)]
pub enum TopicCheck {
    /// Every topic exists.
    Present,
    /// Some were missing and were created (`kafka.create_topics`).
    Created(Vec<TopicReport>),
    /// The cluster did not answer, so nothing is known: the caller starts anyway
    /// and its readiness reports Kafka until it answers.
    Unreachable(KafkaError),
}

/// The layout a topic should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
}

/// What [`ensure_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// The topic as wanted.
    pub spec: TopicSpec,
    /// Whether this call created it.
    pub created: bool,
    /// Partitions it has now.
    pub partitions: i32,
    /// Replicas of its first partition.
    pub replication_factor: i32,
    /// Its `min.insync.replicas`, where the broker reported it.
    pub min_insync_replicas: Option<i32>,
}

impl TopicReport {
    /// Differences between the topic as it is and as wanted (an existing topic is
    /// never altered: that is an operator's decision).
    pub fn mismatches(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.partitions != self.spec.partitions {
            out.push(format!(
                "has {} partitions, configured {}",
                self.partitions, self.spec.partitions
            ));
        }
        if self.replication_factor != self.spec.replication_factor {
            out.push(format!(
                "has replication factor {}, configured {}",
                self.replication_factor, self.spec.replication_factor
            ));
        }
        if let Some(isr) = self.min_insync_replicas {
            if isr != self.spec.min_insync_replicas {
                out.push(format!(
                    "has min.insync.replicas={isr}, configured {}",
                    self.spec.min_insync_replicas
                ));
            }
        }
        out
    }
}

/// The three topics of a tally deployment, as the settings describe them.
pub fn tally_topics(settings: &KafkaSettings) -> Vec<TopicSpec> {
    [
        &settings.client_message_topic,
        &settings.message_aggregation_topic,
        &settings.dlq_topic,
    ]
    .into_iter()
    .map(|name| TopicSpec {
        name: name.clone(),
        partitions: settings.partitions,
        replication_factor: settings.replication_factor,
        min_insync_replicas: settings.min_insync_replicas,
    })
    .collect()
}

/// The topics among `names` that the cluster does not have. Reads the metadata of
/// all topics (asking for one by name may create it on brokers that auto-create).
pub async fn missing_topics(
    settings: &KafkaSettings,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let config = admin_config(settings);
    let names = names.to_vec();
    // Metadata calls block; keep them off the async runtime.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(None, timeout)?;
        // A listed topic exists even if it reports an error for the moment (no
        // leader yet, say); only an unknown one is missing.
        let unknown = RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        Ok(names
            .into_iter()
            .filter(|name| {
                !metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == name && t.error() != Some(unknown))
            })
            .collect())
    })
    .await
    // The blocking task panicked or was cancelled: nothing is known.
    .unwrap_or(Err(KafkaError::Canceled))
}

/// How many partitions `topic` has, from cluster metadata; an error if the cluster
/// does not answer within `timeout` or does not list the topic.
pub async fn topic_partitions(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let config = admin_config(settings);
    let topic = topic.to_owned();
    // Metadata calls block; keep them off the async runtime.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32)
            .ok_or(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// How long [`require_topics`] keeps asking before it calls a topic missing. A
/// broker knows a topic created a moment ago (by `tally admin init-topics`, or a
/// test's setup) only once it has applied the controller's metadata, and one
/// metadata request reaches one broker: a counter started in the network lab right
/// after its topics were created was told all three were missing and stopped.
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(3);
/// Pause between those lookups.
const MISSING_TOPIC_RECHECK: Duration = Duration::from_millis(250);

/// What a service does with its topics at start: fine when they exist; when some
/// are missing, creates them (as `tally admin init-topics` would, through
/// [`ensure_topics`]) if `kafka.create_topics` is set, and otherwise fails with
/// [`TopicSetupError::Missing`], which names `tally admin init-topics`. A topic is
/// missing only if it stays unknown for [`MISSING_TOPIC_GRACE`]. `names` must be
/// among [`tally_topics`].
pub async fn require_topics(
    settings: &KafkaSettings,
    names: &[String],
    timeout: Duration,
) -> Result<TopicCheck, TopicSetupError> {
    let mut missing = match missing_topics(settings, names, timeout).await {
        Ok(missing) => missing,
        Err(e) => return Ok(TopicCheck::Unreachable(e)),
    };
    // Ask again (each time a fresh client, so possibly another broker) before
    // concluding: see MISSING_TOPIC_GRACE.
    let grace_ends = tokio::time::Instant::now() + MISSING_TOPIC_GRACE;
    while !missing.is_empty() && tokio::time::Instant::now() < grace_ends {
        tokio::time::sleep(MISSING_TOPIC_RECHECK).await;
        missing = match missing_topics(settings, &missing, timeout).await {
            Ok(missing) => missing,
            Err(e) => return Ok(TopicCheck::Unreachable(e)),
        };
    }
    if missing.is_empty() {
        return Ok(TopicCheck::Present);
    }
    if !settings.create_topics {
        return Err(TopicSetupError::Missing(missing));
    }
    let specs: Vec<TopicSpec> = tally_topics(settings)
        .into_iter()
        .filter(|spec| missing.contains(&spec.name))
        .collect();
    Ok(TopicCheck::Created(
        ensure_topics(settings, &specs, timeout).await?,
    ))
}

/// Creates each topic that does not exist yet and reports how every topic looks.
/// Idempotent: an existing topic counts as success and is left as it is.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<TopicReport>, TopicSetupError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(settings).create()?;
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let isr_values: Vec<String> = specs
        .iter()
        .map(|s| s.min_insync_replicas.to_string())
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&isr_values)
        .map(|(spec, isr)| {
            NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(spec.replication_factor),
            )
            .set("min.insync.replicas", isr)
        })
        .collect();
    let mut created = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicSetupError::Create { topic, code }),
        }
    }

    let resources: Vec<ResourceSpecifier<'_>> = specs
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let configs = admin.describe_configs(&resources, &options).await?;
    let layouts = describe_layouts(settings, specs, timeout).await?;

    let mut reports = Vec::new();
    for ((spec, config), (partitions, replication_factor)) in specs.iter().zip(configs).zip(layouts)
    {
        let min_insync_replicas = config
            .ok()
            .and_then(|c| c.get("min.insync.replicas").and_then(|e| e.value.clone()))
            .and_then(|v| v.parse().ok());
        reports.push(TopicReport {
            created: created.contains(&spec.name),
            spec: spec.clone(),
            partitions,
            replication_factor,
            min_insync_replicas,
        });
    }
    Ok(reports)
}

/// (partitions, replicas of partition 0) of each topic, read from cluster metadata.
async fn describe_layouts(
    settings: &KafkaSettings,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(i32, i32)>, TopicSetupError> {
    let config = admin_config(settings);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    // Metadata calls block; keep them off the async runtime.
    let joined =
        tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i32)>, TopicSetupError> {
            let consumer: BaseConsumer = config.create()?;
            let mut layouts = Vec::new();
            for name in names {
                let deadline = std::time::Instant::now() + timeout;
                // A topic created a moment ago may not be in every broker's metadata yet.
                let layout = loop {
                    let metadata = consumer.fetch_metadata(Some(&name), timeout)?;
                    let found = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == name)
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| {
                            let rf = t
                                .partitions()
                                .first()
                                .map_or(0, |p| p.replicas().len() as i32);
                            (t.partitions().len() as i32, rf)
                        });
                    match found {
                        Some(layout) => break layout,
                        None if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        None => {
                            return Err(TopicSetupError::Describe {
                                topic: name,
                                detail: "not in cluster metadata".into(),
                            })
                        }
                    }
                };
                layouts.push(layout);
            }
            Ok(layouts)
        })
        .await;
    joined.map_err(|e| TopicSetupError::Describe {
        topic: specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        detail: e.to_string(),
    })?
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_partition_is_the_java_partitioners() {
        // Kafka's UtilsTest.testMurmur2, as signed Java ints.
        for (key, java) in [
            ("21", -973_932_308_i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(super::murmur2(key.as_bytes()) as i32, java, "{key}");
            // Utils.toPositive(h) % n.
            for n in [1, 3, 12] {
                assert_eq!(
                    super::key_partition(key.as_bytes(), n),
                    (java & 0x7fff_ffff) % n
                );
            }
        }
    }

    #[test]
    fn only_the_coordinators_transient_answers_are_asked_again() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
        for code in [
            C::NotCoordinator,
            C::CoordinatorNotAvailable,
            C::CoordinatorLoadInProgress,
        ] {
            assert!(super::coordinator_settling(&KafkaError::MetadataFetch(
                code
            )));
        }
        for code in [C::GroupAuthorizationFailed, C::UnknownTopicOrPartition] {
            assert!(!super::coordinator_settling(&KafkaError::MetadataFetch(
                code
            )));
        }
        assert!(!super::coordinator_settling(&KafkaError::NoMessageReceived));
    }

    #[test]
    fn security_keys_become_librdkafka_properties_and_extra_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let password = dir.path().join("pw");
        std::fs::write(&password, "s3cret\nignored\n").expect("write");
        let mut settings: crate::settings::KafkaSettings =
            serde_json::from_str(r#"{"brokers": "b:9092"}"#).expect("settings");
        settings.security_protocol = Some("sasl_ssl".into());
        settings.ssl_ca_file = Some(dir.path().join("ca.pem"));
        settings.sasl_username = Some("tally-counter".into());
        settings.sasl_password_file = Some(password);
        settings
            .extra
            .insert("sasl.mechanisms".into(), "SCRAM-SHA-256".into());
        let config = admin_config(&settings);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.username"), Some("tally-counter"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert!(config
            .get("ssl.ca.location")
            .is_some_and(|p| p.ends_with("ca.pem")));

        settings.sasl_password_file = Some(dir.path().join("missing"));
        let err = read_sasl_password(&settings).expect_err("missing file");
        assert!(
            err.to_string().contains("kafka.sasl_password_file"),
            "{err}"
        );
    }

    use super::*;

    fn settings() -> KafkaSettings {
        let mut s: KafkaSettings = serde_json::from_value(serde_json::json!({
            "brokers": "127.0.0.1:9092",
        }))
        .expect("settings");
        s.extra.insert("client.id".into(), "from-extra".into());
        s.extra.insert("linger.ms".into(), "50".into());
        s
    }

    #[test]
    fn producers_are_idempotent_acks_all() {
        let c = idempotent_producer_config(&settings());
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("message.timeout.ms"), Some("30000"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        // extra is applied last and wins
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("client.id"), Some("from-extra"));
    }

    #[test]
    fn transactional_delivery_timeout_fits_in_transaction_timeout() {
        let c = transactional_producer_config(&settings(), "tally-counter-1");
        assert_eq!(c.get("transactional.id"), Some("tally-counter-1"));
        assert_eq!(c.get("transaction.timeout.ms"), Some("10000"));
        assert_eq!(c.get("message.timeout.ms"), Some("10000"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("retry.backoff.ms"), Some("10"));
        assert_eq!(c.get("retry.backoff.max.ms"), Some("20"));
    }

    #[test]
    fn consumers_read_committed_and_never_autocommit() {
        let c = read_committed_consumer_config(&settings(), "tally-counter");
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("tally-counter"));
    }

    #[test]
    fn topic_mismatches_are_reported() {
        let spec = tally_topics(&settings()).remove(0);
        assert_eq!(spec.name, "client_message");
        let report = TopicReport {
            spec: spec.clone(),
            created: false,
            partitions: 6,
            replication_factor: 3,
            min_insync_replicas: Some(1),
        };
        assert_eq!(report.mismatches().len(), 2, "{:?}", report.mismatches());
        let fine = TopicReport {
            partitions: 12,
            min_insync_replicas: Some(2),
            ..report
        };
        assert!(fine.mismatches().is_empty());
    }
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (`None` if it never committed).
    pub committed: Option<i64>,
    /// First offset still in the log.
    pub low: i64,
    /// The high watermark (next offset to be written).
    pub high: i64,
}

impl PartitionPosition {
    /// Records (or transaction markers) the group has not committed yet.
    pub fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low)).max(0)
    }
}

/// True for the group coordinator's answers that mean "ask again shortly": the
/// coordinator is moving to another broker or still loading the offsets topic,
/// as it does for a while after brokers start or a leader changes.
fn coordinator_settling(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// The group's committed offsets, asked again while the coordinator settles, until
/// `timeout` is spent; any other error, or a settling one past the deadline, is
/// returned as it is.
pub fn committed_offsets_settled(
    consumer: &BaseConsumer,
    tpl: &rdkafka::TopicPartitionList,
    timeout: Duration,
) -> Result<rdkafka::TopicPartitionList, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.committed_offsets(tpl.clone(), left) {
            Err(e) if coordinator_settling(&e) && !left.is_zero() => {
                tracing::debug!(error = %e, "kafka: group coordinator settling, asking again");
                std::thread::sleep(COORDINATOR_RETRY.min(left));
            }
            other => return other,
        }
    }
}

/// Pause between asks while the group coordinator settles.
const COORDINATOR_RETRY: Duration = Duration::from_millis(200);

/// Committed offsets of `group` (if given) and the watermarks of every partition
/// of `topic`. Blocking: call it from `spawn_blocking` in async code.
pub fn group_positions(
    settings: &KafkaSettings,
    group: Option<&str>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionPosition>, KafkaError> {
    // Without a group, a throwaway id: the consumer never joins or commits.
    let group_id = group.unwrap_or("tally-inspect");
    let consumer: BaseConsumer = read_committed_consumer_config(settings, group_id).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        if let Some(err) = t.error() {
            return Err(KafkaError::MetadataFetch(err.into()));
        }
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = match group {
        Some(_) => Some(committed_offsets_settled(&consumer, &tpl, timeout)?),
        None => None,
    };
    let mut positions = Vec::new();
    for element in tpl.elements() {
        let partition = element.partition();
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let committed = committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, partition))
            .and_then(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            });
        positions.push(PartitionPosition {
            partition,
            committed,
            low,
            high,
        });
    }
    Ok(positions)
}
