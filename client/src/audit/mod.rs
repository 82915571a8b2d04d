//! `tally audit`: reconciliation for any load. Recomputes from `client_message`
//! itself what every client's count and `last_sn` (and, optionally, every
//! message's count) must be, and compares with Redis.
//!
//! Invariants:
//! - Read-only: Kafka is read by a consumer that is assigned partitions, never
//!   joins a group and never commits; Redis is only read.
//! - One snapshot: the end of every partition is taken once, at the start; the log
//!   is read read_committed from its earliest retained offset up to that end, and
//!   counts are compared only after the counter group has committed that end and
//!   the aggregator group everything the counter had written by then, so nothing
//!   in flight before the snapshot is mistaken for a loss. A value that moved
//!   after the snapshot is a difference only if the records appended since cannot
//!   explain it (they are read after the values, see [`rules::in_flight`]).
//! - The rules are the counter's and the aggregator's own ([`rules`]); what the
//!   retained log cannot show is reported as not judged, never as a difference.
//! - Bounded memory: one small entry per client; message counts one bucket of the
//!   hash space at a time ([`spill`]).

pub mod rules;
pub mod spill;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tally_common::kafka::{group_positions, read_committed_consumer_config, PartitionPosition};
use tally_common::records::ClientMessage;
use tally_common::settings::KafkaSettings;
use tally_common::{ClientId, MessageHash, Settings};

use crate::inspect::{pending_records, probe_remainders, InspectError, Inspector, ProbeContext};
use rules::{ClientCounts, Replay, Unseen, Verdict};
use spill::{Buckets, Spill};

/// Group id of the audit's consumer; it only names the client (no join, no commit).
const AUDIT_GROUP: &str = "tally-audit";

/// Kafka metadata and offset requests give up after this.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the marker probe of a consumer group's remainder may read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reading stops with an error when no record arrived for this long.
const READ_STALL: Duration = Duration::from_secs(60);

/// The audit consumer's prefetch: per partition (KiB, records), per fetch request
/// and per partition in a request (bytes), and how soon a partition whose queue
/// was full is fetched again (ms). librdkafka's defaults (64 MiB and 100,000
/// records per partition, 50 MiB per request) let the fetcher run far ahead of
/// the replay and hold most of a large log in memory.
const QUEUED_KBYTES: &str = "2048";
const QUEUED_MESSAGES: &str = "2000";
const FETCH_MAX_BYTES: &str = "1048576";
const PARTITION_FETCH_BYTES: &str = "262144";
const FETCH_BACKOFF_MS: &str = "10";

/// Keys read from Redis per request wave.
const READ_CHUNK: usize = 10_000;

/// Differences remembered for the re-check against records appended during the
/// audit; beyond it, the rest are reported as they are.
const MAX_CANDIDATES: usize = 100_000;

/// Sightings per bucket the message pass aims at: one bucket's map stays below
/// ~30 MB.
pub const RECORDS_PER_BUCKET: u64 = 500_000;

/// How to audit.
#[derive(Clone)]
pub struct AuditOptions {
    /// Also recompute and compare every message's count.
    pub messages: bool,
    /// Differences to keep for the report.
    pub show: usize,
    /// How long to wait for the counter and aggregator to reach the snapshot.
    pub wait: Duration,
    /// Where the spill directory is created.
    pub spill_dir: PathBuf,
    /// Sightings per message bucket, about.
    pub records_per_bucket: u64,
    /// Progress lines (every few seconds while reading).
    pub progress: Arc<dyn Fn(String) + Send + Sync>,
}

/// Why an audit could not be completed (no verdict).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Redis failed, or holds something that is not a count.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The spill files could not be written or read.
    #[error("spill files: {0}")]
    Spill(#[from] std::io::Error),
    /// The pipeline did not count up to the snapshot in time.
    #[error(
        "after waiting {:.1} s the {group} group is {lag} record(s) short of the snapshot; nothing judged (wait longer with --wait, or see `tally status`)",
        waited.as_secs_f64()
    )]
    Lagging {
        /// How long it waited.
        waited: Duration,
        /// The consumer group behind.
        group: String,
        /// Records below the snapshot it has not committed.
        lag: i64,
    },
    /// Reading the log stopped making progress.
    #[error("reading {topic} stalled for {READ_STALL:?} with {left} partition(s) not read to the snapshot")]
    Stalled {
        /// The topic.
        topic: String,
        /// Partitions not finished.
        left: usize,
    },
    /// A blocking task failed.
    #[error("audit task: {0}")]
    Task(String),
}

/// One partition's part of the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionRange {
    /// The partition.
    pub partition: i32,
    /// Earliest retained offset at the snapshot.
    pub low: i64,
    /// The snapshot's end (high watermark): offsets below it are audited.
    pub end: i64,
}

impl PartitionRange {
    /// Retention deleted records of this partition.
    pub fn trimmed(&self) -> bool {
        self.low > 0
    }
}

/// Clients judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientSummary {
    /// Clients with records in the audited range.
    pub checked: u64,
    /// Count and `last_sn` as the log implies.
    pub matching: u64,
    /// Not as the log implies.
    pub differing: u64,
    /// Moved after the snapshot, within what the records appended since explain.
    pub moved: u64,
    /// Not judged: truncated clients whose count = last_sn, and split ones.
    pub not_judged: u64,
    /// First retained sn > 1 in a trimmed partition: only count = last_sn checked.
    pub truncated: u64,
    /// Records in more than one partition: not judged.
    pub split: u64,
}

/// Messages judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessageSummary {
    /// Messages with an applied sighting in the audited range.
    pub checked: u64,
    /// Count as the log implies.
    pub matching: u64,
    /// Not as the log implies.
    pub differing: u64,
    /// Moved after the snapshot, within what the records appended since explain.
    pub moved: u64,
    /// Counted more often than the retained log shows while records expired.
    pub above_retained: u64,
    /// Expected counts are lower bounds (records expired, or a client was not
    /// replayed).
    pub lower_bound: bool,
    /// Buckets of the hash space, counted one at a time.
    pub buckets: usize,
    /// Sightings in the largest bucket.
    pub largest_bucket: u64,
    /// Bytes spilled to the bucket files.
    pub spilled_bytes: u64,
}

/// One count Redis holds that the log cannot explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `client` or `message`.
    pub kind: &'static str,
    /// The client id or the message hash.
    pub id: String,
    /// The Redis key of the count.
    pub key: String,
    /// The count the log implies.
    pub expected_count: u64,
    /// The count in Redis.
    pub found_count: u64,
    /// Clients: the `last_sn` the log implies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_last_sn: Option<u64>,
    /// Clients: the `last_sn` in Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_last_sn: Option<u64>,
    /// Messages: the stored text (for the differences shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What else is known (e.g. a truncated client checked only for count = last_sn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The audit's result.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// `match` or `differences`.
    pub verdict: &'static str,
    /// The audited topic.
    pub topic: String,
    /// Redis key prefix compared against.
    pub prefix: String,
    /// What was read of each partition.
    pub partitions: Vec<PartitionRange>,
    /// Records read (valid and invalid).
    pub records_read: u64,
    /// Records the counter dead-letters (not counted).
    pub invalid_records: u64,
    /// Seconds spent reading the log (and spilling hashes).
    pub read_seconds: f64,
    /// `records_read / read_seconds`.
    pub records_per_second: f64,
    /// Seconds waited for the pipeline to reach the snapshot.
    pub waited_seconds: f64,
    /// Records appended to the topic while the audit ran.
    pub appended_during_audit: i64,
    /// Seconds for the whole audit.
    pub total_seconds: f64,
    /// Clients.
    pub clients: ClientSummary,
    /// Messages, with `--messages`.
    pub messages: Option<MessageSummary>,
    /// The first differences, at most `show`.
    pub differences: Vec<Difference>,
}

impl AuditReport {
    /// Whether every judged count is as the log implies.
    pub fn matches(&self) -> bool {
        self.clients.differing == 0 && self.messages.as_ref().is_none_or(|m| m.differing == 0)
    }
}

/// A client difference kept for the re-check.
struct ClientCandidate {
    id: String,
    at_snapshot: u64,
    found: ClientCounts,
    truncated: bool,
}

/// A message difference kept for the re-check.
struct MessageCandidate {
    expected: u64,
    found: u64,
    appended: u64,
}

/// Runs the audit described in the module documentation.
pub async fn run(
    settings: &Settings,
    inspector: &Inspector,
    options: &AuditOptions,
) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let kafka = settings.kafka.clone();
    let topic = kafka.client_message_topic.clone();

    // 1. The snapshot.
    let partitions: Vec<PartitionRange> = blocking({
        let (kafka, topic) = (kafka.clone(), topic.clone());
        move || {
            Ok(group_positions(&kafka, None, &topic, KAFKA_TIMEOUT)?
                .into_iter()
                .map(|p| PartitionRange {
                    partition: p.partition,
                    low: p.low,
                    end: p.high,
                })
                .collect())
        }
    })
    .await?;
    let total: i64 = partitions.iter().map(|p| (p.end - p.low).max(0)).sum();
    (options.progress)(format!(
        "snapshot of {topic}: {} partition(s), {total} offset(s) retained (records and transaction markers), {} trimmed by retention",
        partitions.len(),
        partitions.iter().filter(|p| p.trimmed()).count()
    ));

    // 2. The replay (and the spill of applied hashes).
    let spill = if options.messages {
        let buckets = rules::buckets_for(
            u64::try_from(total).unwrap_or(0),
            options.records_per_bucket,
        );
        Some(Spill::create(&options.spill_dir, buckets)?)
    } else {
        None
    };
    let read_started = Instant::now();
    let ranges: Vec<(PartitionRange, i64)> = partitions.iter().map(|p| (*p, p.low)).collect();
    let (replay, spill, records_read) = blocking({
        let (kafka, topic, progress) = (kafka.clone(), topic.clone(), options.progress.clone());
        move || {
            let mut replay = Replay::default();
            let mut spill = spill;
            let read = read_log(&kafka, &topic, &ranges, &*progress, |range, parsed| {
                match parsed {
                    Ok(m) => {
                        if let Some(hash) = replay.observe(range.partition, range.trimmed(), &m) {
                            if let Some(spill) = spill.as_mut() {
                                spill.push(hash)?;
                            }
                        }
                    }
                    Err(_) => replay.invalid(),
                }
                Ok(())
            })?;
            let buckets = spill.map(Spill::finish).transpose()?;
            Ok((replay, buckets, read))
        }
    })
    .await?;
    let read_seconds = read_started.elapsed().as_secs_f64();
    (options.progress)(format!(
        "read {records_read} record(s) in {read_seconds:.2} s: {:.0} records/s",
        records_read as f64 / read_seconds.max(1e-9)
    ));

    // 3. Wait until the pipeline counted everything up to the snapshot.
    let waited = wait_counted(
        settings,
        &partitions,
        options.wait,
        options.messages,
        &*options.progress,
    )
    .await?;

    // 4. Compare.
    let keys = inspector.keys().clone();
    let mut clients = ClientSummary::default();
    let mut client_candidates: Vec<ClientCandidate> = Vec::new();
    let mut overflow = false;
    let ids = replay.client_ids();
    for chunk in ids.chunks(READ_CHUNK) {
        let mut parsed = Vec::with_capacity(chunk.len());
        let mut client_ids = Vec::with_capacity(chunk.len());
        for id in chunk {
            // Every id passed `ClientMessage::parse`, which checks it.
            let Ok(client) = ClientId::from_record(id) else {
                continue;
            };
            client_ids.push(client);
            parsed.push(*id);
        }
        let numbers = inspector.client_counts(&client_ids).await?;
        for (id, (count, last_sn)) in parsed.iter().zip(numbers) {
            let Some(state) = replay.client(id) else {
                continue;
            };
            let found = ClientCounts { count, last_sn };
            clients.checked += 1;
            match rules::judge_client(state, found) {
                Verdict::Match => clients.matching += 1,
                Verdict::NotJudged(unseen) => {
                    clients.not_judged += 1;
                    if unseen == Unseen::Split {
                        clients.split += 1;
                    } else {
                        clients.truncated += 1;
                    }
                }
                Verdict::Differs => {
                    clients.differing += 1;
                    if state.truncated {
                        clients.truncated += 1;
                    }
                    if client_candidates.len() < MAX_CANDIDATES {
                        client_candidates.push(ClientCandidate {
                            id: (*id).to_owned(),
                            at_snapshot: state.last_sn,
                            found,
                            truncated: state.truncated,
                        });
                    } else {
                        overflow = true;
                    }
                }
            }
        }
    }

    let lower_bound = partitions.iter().any(PartitionRange::trimmed) || replay.any_incomplete();
    let mut message_candidates: BTreeMap<MessageHash, MessageCandidate> = BTreeMap::new();
    let mut messages = match &spill {
        None => None,
        Some(buckets) => Some(
            compare_messages(
                inspector,
                buckets,
                lower_bound,
                &mut message_candidates,
                &mut overflow,
                &*options.progress,
            )
            .await?,
        ),
    };
    // The bucket files are removed here.
    drop(spill);

    // 5. Values that moved after the snapshot: re-check against the records
    // appended since, read after every value above was.
    let ends_after: Vec<PartitionRange> = blocking({
        let (kafka, topic) = (kafka.clone(), topic.clone());
        move || {
            Ok(group_positions(&kafka, None, &topic, KAFKA_TIMEOUT)?
                .into_iter()
                .map(|p| PartitionRange {
                    partition: p.partition,
                    low: p.low,
                    end: p.high,
                })
                .collect())
        }
    })
    .await?;
    let appended: i64 = ends_after
        .iter()
        .map(|after| {
            let before = partitions
                .iter()
                .find(|p| p.partition == after.partition)
                .map_or(after.low, |p| p.end);
            (after.end - before).max(0)
        })
        .sum();
    let has_candidates = !client_candidates.is_empty() || !message_candidates.is_empty();
    let mut replay = replay;
    if appended > 0 && has_candidates && !overflow {
        let tail: Vec<(PartitionRange, i64)> = ends_after
            .iter()
            .map(|after| {
                let from = partitions
                    .iter()
                    .find(|p| p.partition == after.partition)
                    .map_or(after.low, |p| p.end);
                (*after, from)
            })
            .collect();
        (options.progress)(format!(
            "{} difference(s) to re-check against {appended} record(s) appended during the audit",
            client_candidates.len() + message_candidates.len()
        ));
        let (back, candidates) = blocking({
            let (kafka, topic, progress) = (kafka.clone(), topic.clone(), options.progress.clone());
            let mut candidates = std::mem::take(&mut message_candidates);
            move || {
                read_log(&kafka, &topic, &tail, &*progress, |range, parsed| {
                    if let Ok(m) = parsed {
                        if let Some(hash) = replay.observe(range.partition, range.trimmed(), &m) {
                            if let Some(c) = candidates.get_mut(&hash) {
                                c.appended += 1;
                            }
                        }
                    }
                    Ok(())
                })?;
                Ok((replay, candidates))
            }
        })
        .await?;
        replay = back;
        message_candidates = candidates;
        client_candidates.retain(|c| {
            let after = replay.client(&c.id).map_or(0, |s| s.last_sn);
            let moved = !c.truncated && rules::client_in_flight(c.at_snapshot, c.found, after);
            if moved {
                clients.differing -= 1;
                clients.moved += 1;
            }
            !moved
        });
        if let Some(summary) = messages.as_mut() {
            message_candidates.retain(|_, c| {
                let moved = rules::in_flight(c.expected, c.found, c.expected + c.appended);
                if moved {
                    summary.differing -= 1;
                    summary.moved += 1;
                }
                !moved
            });
        }
    }

    // 6. The report.
    let mut differences = Vec::new();
    for c in client_candidates.iter().take(options.show) {
        let Ok(client) = ClientId::from_record(&c.id) else {
            continue;
        };
        let expected = replay.client(&c.id).map_or(0, |s| s.last_sn);
        differences.push(Difference {
            kind: "client",
            id: c.id.clone(),
            key: keys.client_count(&client),
            expected_count: if c.truncated {
                c.found.last_sn
            } else {
                c.at_snapshot
            },
            found_count: c.found.count,
            expected_last_sn: (!c.truncated).then_some(c.at_snapshot),
            found_last_sn: Some(c.found.last_sn),
            text: None,
            note: if c.truncated {
                Some("truncated by retention: only count = last_sn is checked".into())
            } else if expected != c.at_snapshot {
                Some(format!(
                    "the log holds last_sn {expected} after the audit's reads"
                ))
            } else {
                None
            },
        });
    }
    let room = options.show.saturating_sub(differences.len());
    for (hash, c) in message_candidates.iter().take(room) {
        let text = inspector.message(hash).await?.text;
        differences.push(Difference {
            kind: "message",
            id: hash.to_string(),
            key: keys.message(hash),
            expected_count: c.expected,
            found_count: c.found,
            expected_last_sn: None,
            found_last_sn: None,
            text,
            note: (c.appended > 0).then(|| {
                format!(
                    "{} more applied sighting(s) appended during the audit",
                    c.appended
                )
            }),
        });
    }

    let mut report = AuditReport {
        verdict: "match",
        topic,
        prefix: keys.prefix().to_owned(),
        partitions,
        records_read,
        invalid_records: replay.invalid,
        read_seconds,
        records_per_second: if read_seconds > 0.0 {
            records_read as f64 / read_seconds
        } else {
            0.0
        },
        waited_seconds: waited.as_secs_f64(),
        appended_during_audit: appended,
        total_seconds: 0.0,
        clients,
        messages,
        differences,
    };
    if !report.matches() {
        report.verdict = "differences";
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Compares every bucket's expected message counts with Redis.
async fn compare_messages(
    inspector: &Inspector,
    buckets: &Buckets,
    lower_bound: bool,
    candidates: &mut BTreeMap<MessageHash, MessageCandidate>,
    overflow: &mut bool,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<MessageSummary, AuditError> {
    let mut summary = MessageSummary {
        lower_bound,
        buckets: buckets.len(),
        largest_bucket: buckets.largest(),
        spilled_bytes: buckets.bytes(),
        ..MessageSummary::default()
    };
    let mut last_note = Instant::now();
    for b in 0..buckets.len() {
        let counts = buckets.counts(b)?;
        for chunk in counts.chunks(READ_CHUNK) {
            let hashes: Vec<MessageHash> = chunk.iter().map(|(h, _)| *h).collect();
            let found = inspector.message_counts(&hashes).await?;
            for ((hash, expected), found) in chunk.iter().zip(found) {
                summary.checked += 1;
                match rules::judge_message(*expected, found, lower_bound) {
                    Verdict::Match => summary.matching += 1,
                    Verdict::NotJudged(_) => summary.above_retained += 1,
                    Verdict::Differs => {
                        summary.differing += 1;
                        if candidates.len() < MAX_CANDIDATES {
                            candidates.insert(
                                *hash,
                                MessageCandidate {
                                    expected: *expected,
                                    found,
                                    appended: 0,
                                },
                            );
                        } else {
                            *overflow = true;
                        }
                    }
                }
            }
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            progress(format!(
                "messages: bucket {}/{}, {} checked",
                b + 1,
                buckets.len(),
                summary.checked
            ));
        }
    }
    Ok(summary)
}

/// Waits until the counter group has committed the snapshot's end of every
/// partition, then, when message counts are audited, until the aggregator group has
/// committed everything written to `message_aggregation` by then (a remainder of
/// transaction markers is no lag). Returns how long it waited.
async fn wait_counted(
    settings: &Settings,
    partitions: &[PartitionRange],
    wait: Duration,
    messages: bool,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Duration, AuditError> {
    let started = Instant::now();
    let mut last_note = Instant::now();
    let mut note = |group: &str, lag: i64| {
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            progress(format!(
                "waiting for the {group} group: {lag} record(s) short of the snapshot"
            ));
        }
    };
    let poll = Duration::from_millis(500);
    let phases = [
        (
            settings.counter.group_id.clone(),
            settings.kafka.client_message_topic.clone(),
        ),
        (
            settings.aggregator.group_id.clone(),
            settings.kafka.message_aggregation_topic.clone(),
        ),
    ];
    // The counter up to the snapshot's ends; then the aggregator up to the end of
    // `message_aggregation` at that moment, which holds every forward of a record
    // below the snapshot.
    let mut ends: HashMap<i32, i64> = partitions.iter().map(|p| (p.partition, p.end)).collect();
    for (phase, (group, topic)) in phases.into_iter().enumerate() {
        if phase == 1 {
            if !messages {
                break;
            }
            ends = blocking({
                let (kafka, topic) = (settings.kafka.clone(), topic.clone());
                move || {
                    Ok(group_positions(&kafka, None, &topic, KAFKA_TIMEOUT)?
                        .into_iter()
                        .map(|p| (p.partition, p.high))
                        .collect())
                }
            })
            .await?;
        }
        loop {
            let pending = blocking({
                let (kafka, group, topic, ends) = (
                    settings.kafka.clone(),
                    group.clone(),
                    topic.clone(),
                    ends.clone(),
                );
                move || pending_below(&kafka, &group, &topic, &ends)
            })
            .await?;
            if pending == 0 {
                break;
            }
            note(&group, pending);
            if started.elapsed() >= wait {
                return Err(AuditError::Lagging {
                    waited: started.elapsed(),
                    group,
                    lag: pending,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
    Ok(started.elapsed())
}

/// Records below `ends` on `topic` that `group` has not committed, over all
/// partitions; a remainder of transaction markers or aborted records (which no
/// read_committed consumer gets, so none commits past them until a record
/// follows) is no lag, as in `tally status`. Blocking.
fn pending_below(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> Result<i64, AuditError> {
    let positions: Vec<PartitionPosition> =
        group_positions(kafka, Some(group), topic, KAFKA_TIMEOUT)?
            .into_iter()
            .map(|p| PartitionPosition {
                high: ends.get(&p.partition).copied().unwrap_or(p.low),
                ..p
            })
            .collect();
    let probed = probe_remainders(kafka, topic, &positions, PROBE_TIMEOUT)?;
    Ok(positions
        .iter()
        .zip(probed)
        .map(|(p, records)| pending_records(p, records))
        .sum())
}

/// Reads `topic` read_committed, each partition from its given offset up to its
/// range's end, and hands every record below the end to `each` in offset order per
/// partition (parsed by the one parser of `client_message` records). Returns the
/// records read. Blocking.
fn read_log(
    kafka: &KafkaSettings,
    topic: &str,
    ranges: &[(PartitionRange, i64)],
    progress: &(dyn Fn(String) + Send + Sync),
    mut each: impl FnMut(
        &PartitionRange,
        Result<ClientMessage, tally_common::records::RecordError>,
    ) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    let mut open: HashMap<i32, PartitionRange> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for (range, from) in ranges {
        let from = (*from).max(range.low);
        if from < range.end {
            tpl.add_partition_offset(topic, range.partition, Offset::Offset(from))?;
            open.insert(range.partition, *range);
        }
    }
    if open.is_empty() {
        return Ok(0);
    }
    let to_read: i64 = ranges
        .iter()
        .map(|(r, from)| (r.end - (*from).max(r.low)).max(0))
        .sum();
    let mut config = read_committed_consumer_config(kafka, AUDIT_GROUP);
    // Records expiring under the reader must fail the audit, not be skipped.
    config
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        // Bounded prefetch: what the audit holds of the log at once.
        .set("queued.max.messages.kbytes", QUEUED_KBYTES)
        .set("queued.min.messages", QUEUED_MESSAGES)
        .set("fetch.max.bytes", FETCH_MAX_BYTES)
        .set("max.partition.fetch.bytes", PARTITION_FETCH_BYTES)
        .set("fetch.queue.backoff.ms", FETCH_BACKOFF_MS);
    let consumer: BaseConsumer<ProbeContext> = config.create_with_context(ProbeContext)?;
    consumer.assign(&tpl)?;
    let mut read = 0u64;
    let mut last_record = Instant::now();
    let mut last_note = Instant::now();
    let finish = |consumer: &BaseConsumer<ProbeContext>, partition: i32| {
        let mut done = TopicPartitionList::new();
        done.add_partition(topic, partition);
        // Pausing only saves fetching beyond the end; failing to is harmless.
        let _ = consumer.pause(&done);
    };
    while !open.is_empty() {
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            progress(format!("read {read} of {to_read} record(s)"));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                if last_record.elapsed() >= READ_STALL {
                    return Err(AuditError::Stalled {
                        topic: topic.to_owned(),
                        left: open.len(),
                    });
                }
            }
            Some(Ok(message)) => {
                last_record = Instant::now();
                let partition = message.partition();
                let Some(range) = open.get(&partition).copied() else {
                    continue;
                };
                let offset = message.offset();
                if offset < range.end {
                    read += 1;
                    each(
                        &range,
                        ClientMessage::parse(message.key(), message.payload()),
                    )?;
                }
                if offset + 1 >= range.end {
                    open.remove(&partition);
                    finish(&consumer, partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let Some(range) = open.get(&partition).copied() else {
                    continue;
                };
                // At the end of what is readable: done if that is past the range
                // (the last offsets below the end were markers or aborted records).
                let position = consumer.position()?;
                let at = position
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if at.is_some_and(|o| o >= range.end) {
                    open.remove(&partition);
                    finish(&consumer, partition);
                }
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(read)
}

/// Runs blocking Kafka work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AuditError::Task(e.to_string()))?
}
