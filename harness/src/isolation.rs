//! Settings of the local stack, and isolation between runs on it.
//!
//! Invariant: every run names its own keys and topics with [`unique`] (process id
//! and clock), so tests and benchmark points never see each other's data and
//! need no cleanup between runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_common::kafka::{ensure_topics, tally_topics, TopicReport, TopicSetupError};
use tally_common::settings::KafkaSettings;
use tally_common::Settings;

use crate::local_config;

/// Settings for the local stack: [`local_config`], then `TALLY__…`
/// environment overrides (how `scripts/test` passes non-default ports). Panics
/// when they do not load (a test convenience).
pub fn settings() -> Settings {
    let path = local_config();
    match Settings::load(Some(&path)) {
        Ok(s) => s,
        Err(e) => panic!("cannot load {}: {e}", path.display()),
    }
}

/// A name no other test run uses: `<what>-<pid>-<nanos>`.
pub fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{what}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Creates tally's three topics as named in `kafka`, with `partitions`
/// partitions each (RF and min ISR from `kafka`), if they do not exist; returns
/// what was found or created per topic.
pub async fn create_topics(
    kafka: &KafkaSettings,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<TopicReport>, TopicSetupError> {
    let specs: Vec<_> = tally_topics(kafka)
        .into_iter()
        .map(|mut t| {
            t.partitions = partitions;
            t
        })
        .collect();
    ensure_topics(kafka, &specs, timeout).await
}

/// Settings isolated for one test: a fresh key prefix and fresh topics
/// (`it.<name>.…`) with `partitions` partitions (RF 3, min ISR 2), created here.
/// On the secure stack the names extend tally's default ones instead
/// (`client_message.it.<name>`, key prefix `tally.it.<name>`), because that is
/// what its least-privilege users may reach. Panics when the topics cannot be
/// created (a test convenience).
pub async fn isolated_settings(what: &str, partitions: i32) -> Settings {
    let mut s = settings();
    let name = unique(what);
    if crate::secure_config_dir().is_some() {
        s.redis.prefix = format!("tally.it.{name}");
        s.kafka.client_message_topic = format!("client_message.it.{name}");
        s.kafka.message_aggregation_topic = format!("message_aggregation.it.{name}");
        s.kafka.dlq_topic = format!("tally.dlq.it.{name}");
    } else {
        s.redis.prefix = name.clone();
        s.kafka.client_message_topic = format!("it.{name}.client_message");
        s.kafka.message_aggregation_topic = format!("it.{name}.message_aggregation");
        s.kafka.dlq_topic = format!("it.{name}.dlq");
    }
    create_topics(&s.kafka, partitions, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("create test topics: {e}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_their_stem() {
        let a = unique("it-x");
        let b = unique("it-x");
        assert!(
            a.starts_with(&format!("it-x-{}-", std::process::id())),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
