//! The namespace: one setting from which every name a pipeline claims on a shared
//! Kafka cluster and Redis Cluster is derived — the Redis key prefix, the three
//! topics, the two consumer groups and the counter's transactional-id prefix.
//!
//! Invariants: the empty namespace (the default) derives exactly the names tally
//! always used, so existing deployments and the local stack keep their topics,
//! keys and groups; a key set on its own (file or environment) always wins over
//! the derived value; two namespaces that differ derive names that all differ, so
//! two pipelines on one Kafka and one Redis Cluster differ in one variable. The
//! transactional-id prefix follows the counter's group (explicit or derived)
//! unless it is set itself, as the transactional id always did.

use super::Settings;

/// Names derived from a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedNames {
    /// `redis.prefix`: `tally`, or `<ns>`.
    pub redis_prefix: String,
    /// `kafka.client_message_topic`: `client_message`, or `<ns>.client_message`.
    pub client_message_topic: String,
    /// `kafka.message_aggregation_topic`: `message_aggregation`, or
    /// `<ns>.message_aggregation`.
    pub message_aggregation_topic: String,
    /// `kafka.dlq_topic`: `tally.dlq`, or `<ns>.dlq`.
    pub dlq_topic: String,
    /// `counter.group_id`: `tally-counter`, or `<ns>-counter`.
    pub counter_group: String,
    /// `aggregator.group_id`: `tally-aggregator`, or `<ns>-aggregator`.
    pub aggregator_group: String,
}

impl DerivedNames {
    /// The names of `namespace`; the empty namespace gives tally's historical
    /// names (`tally` for the prefix, DLQ and groups; the two main topics
    /// unprefixed).
    pub fn of(namespace: &str) -> Self {
        if namespace.is_empty() {
            return Self {
                redis_prefix: "tally".into(),
                client_message_topic: "client_message".into(),
                message_aggregation_topic: "message_aggregation".into(),
                dlq_topic: "tally.dlq".into(),
                counter_group: "tally-counter".into(),
                aggregator_group: "tally-aggregator".into(),
            };
        }
        Self {
            redis_prefix: namespace.into(),
            client_message_topic: format!("{namespace}.client_message"),
            message_aggregation_topic: format!("{namespace}.message_aggregation"),
            dlq_topic: format!("{namespace}.dlq"),
            counter_group: format!("{namespace}-counter"),
            aggregator_group: format!("{namespace}-aggregator"),
        }
    }
}

/// Whether `namespace` can name a pipeline: empty (the default names), or 1–64
/// characters of `[A-Za-z0-9._-]`, which are legal in Kafka topic and group names
/// and in tally's Redis keys (it becomes the key prefix as it is).
pub fn is_valid(namespace: &str) -> bool {
    namespace.is_empty() || crate::keys::is_valid_prefix(namespace)
}

/// Fills every derived name that `explicit(section, key)` says was not set on its
/// own with the namespace's value; then the transactional-id prefix, unless set,
/// with the counter's group.
pub(super) fn apply(settings: &mut Settings, explicit: impl Fn(&str, &str) -> bool) {
    let names = DerivedNames::of(&settings.namespace);
    let fill = |section: &str, key: &str, field: &mut String, value: String| {
        if !explicit(section, key) {
            *field = value;
        }
    };
    fill(
        "redis",
        "prefix",
        &mut settings.redis.prefix,
        names.redis_prefix,
    );
    let kafka = &mut settings.kafka;
    fill(
        "kafka",
        "client_message_topic",
        &mut kafka.client_message_topic,
        names.client_message_topic,
    );
    fill(
        "kafka",
        "message_aggregation_topic",
        &mut kafka.message_aggregation_topic,
        names.message_aggregation_topic,
    );
    fill("kafka", "dlq_topic", &mut kafka.dlq_topic, names.dlq_topic);
    fill(
        "counter",
        "group_id",
        &mut settings.counter.group_id,
        names.counter_group,
    );
    fill(
        "aggregator",
        "group_id",
        &mut settings.aggregator.group_id,
        names.aggregator_group,
    );
    let group = settings.counter.group_id.clone();
    fill(
        "counter",
        "transactional_id_prefix",
        &mut settings.counter.transactional_id_prefix,
        group,
    );
}
