//! Removes what a run created once its figures are taken: its topics (a broker's
//! CPU grows with the partitions it hosts, so leftovers would slow the next
//! benchmark down) and its Redis keys. Best effort: a failure is reported, and
//! never turns a measured run into a failed one.

use futures::stream::{self, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use redis::AsyncCommands;
use tally_client::inspect::Inspector;
use tally_common::kafka::admin_config;
use tally_common::Settings;

use crate::BenchError;

/// Deletes `topics` and every key under each of `prefixes`; returns the number of
/// keys removed.
pub async fn remove(
    settings: &Settings,
    topics: &[String],
    prefixes: &[String],
) -> Result<u64, BenchError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(&settings.kafka)
        .create()
        .map_err(|e| BenchError::kafka("create the admin client", e))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = admin
        .delete_topics(&names, &AdminOptions::new())
        .await
        .map_err(|e| BenchError::kafka("delete topics", e))?;
    for result in results {
        if let Err((topic, code)) = result {
            tracing::warn!("could not delete topic {topic}: {code}");
        }
    }

    let inspector = Inspector::connect(settings)
        .await
        .map_err(|e| BenchError::Check(format!("inspector: {e}")))?;
    let conn = tally_common::redis::connect(&settings.redis)
        .await
        .map_err(|e| BenchError::Redis(e.into()))?;
    let mut removed = 0;
    for prefix in prefixes {
        // Prefixes are made by the benchmark from letters, digits and '-': no glob
        // characters to escape.
        let keys = inspector
            .scan(&format!("{prefix}:*"))
            .await
            .map_err(|e| BenchError::Check(format!("scan {prefix}: {e}")))?;
        let unlinked: Vec<Result<u64, redis::RedisError>> = stream::iter(keys)
            .map(|key| {
                let mut conn = conn.clone();
                async move { conn.unlink::<_, u64>(key).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for r in unlinked {
            removed += r.map_err(|e| BenchError::Redis(e.into()))?;
        }
    }
    Ok(removed)
}
