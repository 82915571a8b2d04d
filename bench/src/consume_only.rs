//! The consume-only point: counters and aggregators started cold on a
//! `client_message` topic pre-loaded with a known set of records; records/s from
//! their start until every count is exact, and CPU per record per component.
//!
//! Invariant: the pre-loaded records are exactly what the producer would have
//! flushed for `tally mtc`'s clients of the point's manifest ([`mtc::prepare`]:
//! client `mtc-<run>-<i>`'s message k is sn k, salted with
//! [`tally_client::manifest::salted_line`] in an all-distinct run), encoded by
//! [`ClientMessage`]'s own encoder; so the manifest is the whole expectation and
//! `tally verify`'s check ([`crate::e2e::verdict`]) judges the point. The
//! counter needs nothing in Redis for a fresh client (its last_sn reads as 0),
//! so the records are all that is written. The pre-load is off the clock.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_client::inspect::Inspector;
use tally_client::manifest::{salted_line, Manifest};
use tally_client::mtc::{self, MtcPlan};
use tally_client::session::Line;
use tally_common::records::ClientMessage;
use tally_common::Settings;
use tally_harness::create_topics;

use crate::e2e::{isolated_settings, spawn_services, verdict, wait_counted, watched, Shape};
use crate::procstat::{Sampler, Watched};
use crate::raw_kafka::produce_records;
use crate::results::ConsumeOnly;
use crate::BenchError;

/// What one consume-only point pre-loads and starts.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeLoad<'a> {
    /// Names the point's topics, key prefix and files (unique per benchmark).
    pub name: &'a str,
    /// Clients the records belong to.
    pub clients: usize,
    /// The lines every client sent, in order (`records / clients` of them).
    pub lines: &'a [String],
    /// Times each client sent them.
    pub repeat: u64,
    /// Salt every line with its client and sn.
    pub distinct: bool,
    /// Partitions of the topics.
    pub partitions: i32,
    /// Counters and aggregators to start.
    pub shape: Shape,
}

/// The `client_message` records of `manifest`'s clients, each client's in sn
/// order, the clients interleaved (sn 1 of every client, then sn 2, ...), as
/// many concurrent clients would have sent them.
pub fn records<'a>(
    manifest: &'a Manifest,
    lines: &'a [Line],
    ts: i64,
) -> impl Iterator<Item = ClientMessage> + 'a {
    (1..=manifest.per_client).flat_map(move |sn| {
        manifest.clients.iter().map(move |client| {
            let line = &lines[((sn - 1) % lines.len().max(1) as u64) as usize];
            ClientMessage {
                client: client.clone(),
                sn,
                msg: if manifest.distinct {
                    salted_line(client, sn, line)
                } else {
                    line.to_string()
                },
                ts,
            }
        })
    })
}

/// Runs one consume-only point on its own topics and prefix (`load.name`), then
/// stops its services. Returns the point and the topics it created (for the
/// caller's clean-up, with the prefix `load.name`).
pub async fn consume_only(
    base: &Settings,
    config: &Path,
    work_dir: &Path,
    load: &ConsumeLoad<'_>,
    mut watch: Vec<Watched>,
) -> Result<(ConsumeOnly, Vec<String>), BenchError> {
    let settings = isolated_settings(base, load.name);
    let kafka = &settings.kafka;
    let topics = vec![
        kafka.client_message_topic.clone(),
        kafka.message_aggregation_topic.clone(),
        kafka.dlq_topic.clone(),
    ];
    create_topics(kafka, load.partitions, Duration::from_secs(60)).await?;
    let inspector = Inspector::connect(&settings)
        .await
        .map_err(|e| BenchError::Check(format!("inspector: {e}")))?;
    let work_dir = work_dir.join(load.name);
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| BenchError::io(work_dir.display().to_string(), e))?;
    let input = work_dir.join("co.txt");
    std::fs::write(&input, load.lines.join("\n") + "\n")
        .map_err(|e| BenchError::io(input.display().to_string(), e))?;
    let plan = MtcPlan {
        clients: load.clients,
        files: vec![input],
        repeat: load.repeat,
        rate: None,
        addrs: Vec::new(),
        run_id: "co".to_owned(),
        manifest_path: work_dir.join("co.manifest.json"),
        window: 1,
        timeout: Duration::from_secs(600),
        max_line: settings.producer.max_line_bytes,
        distinct: load.distinct,
        token_secret: None,
        tls: None,
    };
    let (manifest, lines, _) = mtc::prepare(&plan, &inspector)
        .await
        .map_err(|e| BenchError::Check(format!("consume-only manifest: {e}")))?;
    let total = manifest.per_client * manifest.clients.len() as u64;

    let preload = Instant::now();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let (kafka_settings, topic) = (kafka.clone(), kafka.client_message_topic.clone());
    let manifest = Arc::new(manifest);
    let m = manifest.clone();
    let written = tokio::task::spawn_blocking(move || {
        let encoded = records(&m, &lines, ts).map(|r| (r.key().to_owned(), r.encode()));
        produce_records(&kafka_settings, &topic, encoded)
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))??;
    if written != total {
        return Err(BenchError::Check(format!(
            "pre-loaded {written} of {total} records"
        )));
    }
    let preload_s = preload.elapsed().as_secs_f64();

    // The clock starts as the services do: cold (group join, first fetch).
    let started = Instant::now();
    let mut services = spawn_services(&settings, load.name, config, &work_dir, load.shape, None)?;
    watch.extend(watched(&services));
    let sampler = Sampler::start(watch);
    let counted_s = wait_counted(&inspector, &manifest, started).await?;
    let cost = sampler.finish(total).await;
    let (exact, mismatches) = verdict(&inspector, &manifest).await?;
    for s in &mut services {
        s.running()?;
    }
    drop(services);
    Ok((
        ConsumeOnly {
            records: total,
            clients: manifest.clients.len(),
            partitions: load.partitions,
            counters: load.shape.counters,
            aggregators: load.shape.aggregators,
            preload_s,
            counted_s,
            per_s: total as f64 / counted_s,
            exact,
            mismatches,
            cost,
        },
        topics,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tally_client::manifest::{MessageEntry, Workload, MANIFEST_VERSION};

    fn manifest(distinct: bool) -> (Manifest, Vec<Line>) {
        let lines: Vec<Line> = ["a", "b", "a"].into_iter().map(Line::from).collect();
        let clients: Vec<String> = (0..2).map(|i| Manifest::client_id("co", i)).collect();
        // Two repeats: 6 messages per client.
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            run_id: "co".into(),
            created_unix_ms: 0,
            key_prefix: "t".into(),
            producer_addrs: Vec::new(),
            files: Vec::new(),
            repeat: 2,
            clients,
            per_client: 6,
            distinct,
            messages: Vec::<MessageEntry>::new(),
            result: None,
        };
        (manifest, lines)
    }

    #[test]
    fn every_client_gets_its_sns_in_order_interleaved() {
        let (m, lines) = manifest(false);
        let all: Vec<ClientMessage> = records(&m, &lines, 7).collect();
        assert_eq!(all.len(), 12);
        assert_eq!((all[0].client.as_str(), all[0].sn), ("mtc-co-0", 1));
        assert_eq!((all[1].client.as_str(), all[1].sn), ("mtc-co-1", 1));
        for client in &m.clients {
            let mine: Vec<(u64, &str)> = all
                .iter()
                .filter(|r| &r.client == client)
                .map(|r| (r.sn, r.msg.as_str()))
                .collect();
            assert_eq!(
                mine,
                [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b"), (6, "a")]
            );
        }
        assert!(all.iter().all(|r| r.ts == 7 && r.validate().is_ok()));
    }

    #[test]
    fn distinct_records_are_the_salted_texts_of_the_manifest() {
        let (m, lines) = manifest(true);
        let all: Vec<ClientMessage> = records(&m, &lines, 0).collect();
        let texts: BTreeSet<&str> = all.iter().map(|r| r.msg.as_str()).collect();
        assert_eq!(texts.len(), 12, "every text once");
        assert!(texts.contains("mtc-co-1:5 b"), "{texts:?}");
        // The texts `tally mtc --distinct`'s manifest expects (one home for the salting).
        let workload = Workload {
            lines: lines.clone(),
            files: Vec::new(),
            distinct: Vec::new(),
        };
        let expected: BTreeSet<String> = workload
            .salted_entries(&m.clients, m.repeat)
            .into_iter()
            .map(|e| e.text)
            .collect();
        let ours: BTreeSet<String> = texts.iter().map(|t| t.to_string()).collect();
        assert_eq!(ours, expected);
    }
}
