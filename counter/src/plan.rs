//! From a batch and what the count scripts said about each record, what one
//! transaction writes and commits, and which records go on to the next batch.
//!
//! Invariants:
//! - Offsets are committed per partition only up to the first record that was not
//!   processed (a count script stopped before it: it would fill a gap behind an
//!   uncommitted gap record). That record and every later one of the partition are
//!   carried over and processed again in the next batch, whatever their status now.
//! - Exactly the committed records are forwarded (applied and duplicate ones, to
//!   `message_aggregation`) or dead-lettered (invalid ones, to the DLQ); a gap
//!   record is committed without a trace. Dead letters are written in offset
//!   order. Forwards are packed ([`PackedWriter`]): one record per
//!   `message_aggregation` partition (more when one would pass
//!   [`PACKED_RECORD_MAX_BYTES`]), each forward in the partition a record keyed by
//!   its message hash would go to ([`key_partition`]), and each partition's
//!   forwards in offset order. So every sighting of a message stays in one
//!   partition and a client's sns reach it in order, as with one keyed record per
//!   forward.
//! - Every partition of a non-empty batch advances by at least one record (a
//!   script always processes a client's first record), unless its first record
//!   belongs to a client held back for this batch (see the crate doc); the next
//!   batch does not hold that client back, so the counter never livelocks on a
//!   partition.

use std::collections::BTreeMap;

use tally_common::counting::Outcome;
use tally_common::kafka::key_partition;
use tally_common::records::{ClientMessage, PackedWriter, RecordError};
use tally_common::MessageHash;
use tally_consume::{dead_letter, OutRecord, Polled};

/// Largest packed `message_aggregation` value the counter writes (a forward
/// larger than this on its own still gets a record of its own): half the default
/// producer batch (`kafka.batch_bytes`, 256 KiB), far below the producers' and
/// brokers' default record limit (~1 MB).
pub const PACKED_RECORD_MAX_BYTES: usize = 128 * 1024;

/// What happened to one record of a batch.
#[derive(Debug)]
pub enum Status {
    /// A valid record the count script processed.
    Counted(ClientMessage, Outcome),
    /// A valid record the count script did not get to.
    Unprocessed,
    /// A record that cannot be counted.
    Invalid(RecordError),
}

/// Topics a transaction writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Where the records come from (`client_message`).
    pub source: String,
    /// Where counted records go (`message_aggregation`).
    pub aggregation: String,
    /// How many partitions `aggregation` has (read at start-up).
    pub aggregation_partitions: i32,
    /// Where invalid records go.
    pub dlq: String,
}

/// Counts of the committed records, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Counted now.
    pub applied: u64,
    /// Counted before.
    pub duplicates: u64,
    /// Waiting for an earlier sn.
    pub gaps: u64,
    /// Dead-lettered.
    pub invalid: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;

    fn add(self, other: Tally) -> Tally {
        Tally {
            applied: self.applied + other.applied,
            duplicates: self.duplicates + other.duplicates,
            gaps: self.gaps + other.gaps,
            invalid: self.invalid + other.invalid,
        }
    }
}

/// One transaction's content.
#[derive(Debug, Default)]
pub struct Plan {
    /// Records to write, in order.
    pub out: Vec<OutRecord>,
    /// Offset to commit per partition (the next record to read).
    pub offsets: BTreeMap<i32, i64>,
    /// Records to process again in the next batch, in offset order.
    pub carry: Vec<Polled>,
    /// What the committed records were.
    pub tally: Tally,
    /// How many of `out` are packed forwards (the rest are dead letters).
    pub packed_records: usize,
}

/// Builds the transaction for `records` (in offset order per partition) given one
/// status per record.
pub fn plan(topics: &Topics, records: Vec<Polled>, statuses: Vec<Status>) -> Plan {
    // The first record of each partition a script did not get to, if any.
    let mut first_unprocessed: BTreeMap<i32, i64> = BTreeMap::new();
    for (r, s) in records.iter().zip(&statuses) {
        if matches!(s, Status::Unprocessed) {
            let stop = first_unprocessed.entry(r.partition).or_insert(r.offset);
            *stop = (*stop).min(r.offset);
        }
    }
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        let next = first_unprocessed
            .get(&r.partition)
            .copied()
            .unwrap_or(r.offset + 1);
        let entry = offsets.entry(r.partition).or_insert(next);
        *entry = (*entry).max(next);
    }

    let mut plan = Plan {
        offsets,
        ..Plan::default()
    };
    let mut packs: BTreeMap<i32, PackedWriter> = BTreeMap::new();
    let packed = |partition: i32, pack: PackedWriter| OutRecord {
        topic: topics.aggregation.clone(),
        partition: Some(partition),
        key: Vec::new(),
        payload: pack.finish(),
        headers: Vec::new(),
    };
    for (record, status) in records.into_iter().zip(statuses) {
        let committed = plan
            .offsets
            .get(&record.partition)
            .is_some_and(|next| record.offset < *next);
        if !committed {
            plan.carry.push(record);
            continue;
        }
        match status {
            Status::Counted(message, outcome) => match outcome {
                Outcome::Applied | Outcome::Duplicate => {
                    if outcome == Outcome::Applied {
                        plan.tally.applied += 1;
                    } else {
                        plan.tally.duplicates += 1;
                    }
                    let hash = MessageHash::of(message.msg.as_bytes()).to_string();
                    let partition = key_partition(hash.as_bytes(), topics.aggregation_partitions);
                    let pack = packs.entry(partition).or_default();
                    let size = PackedWriter::entry_size(&message.client, &message.msg);
                    if !pack.is_empty() && pack.len() + size > PACKED_RECORD_MAX_BYTES {
                        let full = std::mem::take(pack);
                        plan.out.push(packed(partition, full));
                        plan.packed_records += 1;
                    }
                    pack.push(&message.client, message.sn, &message.msg);
                }
                Outcome::Gap => plan.tally.gaps += 1,
            },
            Status::Invalid(error) => {
                plan.tally.invalid += 1;
                plan.out
                    .push(dead_letter(&topics.source, &topics.dlq, record, &error));
            }
            // Cannot be below the commit point: the commit point is the first
            // unprocessed record of the partition.
            Status::Unprocessed => plan.carry.push(record),
        }
    }
    for (partition, pack) in packs {
        plan.out.push(packed(partition, pack));
        plan.packed_records += 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::records::{
        MessageAggregation, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
        DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER,
    };
    use Outcome::{Applied as A, Duplicate as D, Gap as G};

    fn topics() -> Topics {
        Topics {
            source: "in".into(),
            aggregation: "agg".into(),
            aggregation_partitions: 1,
            dlq: "dlq".into(),
        }
    }

    /// The (partition, client, sn, text) of every forward, record by record.
    fn forwards(out: &[OutRecord]) -> Vec<(i32, String, u64, String)> {
        out.iter()
            .filter(|r| r.topic == "agg")
            .flat_map(|r| {
                let partition = r.partition.expect("packed records name their partition");
                MessageAggregation::sightings(Some(&r.key), Some(&r.payload))
                    .expect("a valid packed record")
                    .into_iter()
                    .map(move |s| (partition, s.client, s.sn, s.msg))
            })
            .collect()
    }

    fn record(partition: i32, offset: i64) -> Polled {
        Polled {
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(b"v".to_vec()),
        }
    }

    fn counted(sn: u64, outcome: Outcome) -> Status {
        Status::Counted(
            ClientMessage {
                client: "c".into(),
                sn,
                msg: format!("m{sn}"),
                ts: 0,
            },
            outcome,
        )
    }

    #[test]
    fn a_complete_batch_commits_past_its_last_record_and_forwards_in_order() {
        let records = vec![record(0, 10), record(1, 5), record(0, 11), record(0, 12)];
        let statuses = vec![
            counted(1, A),
            Status::Invalid(RecordError::Empty),
            counted(3, G),
            counted(1, D),
        ];
        let p = plan(&topics(), records, statuses);
        assert_eq!(p.offsets, BTreeMap::from([(0, 13), (1, 6)]));
        assert!(p.carry.is_empty());
        let topics: Vec<&str> = p.out.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(
            topics,
            vec!["dlq", "agg"],
            "dead letters, then one packed record"
        );
        assert_eq!(
            forwards(&p.out),
            vec![
                (0, "c".into(), 1, "m1".into()),
                (0, "c".into(), 1, "m1".into())
            ]
        );
        assert_eq!(
            p.tally,
            Tally {
                applied: 1,
                duplicates: 1,
                gaps: 1,
                invalid: 1
            }
        );
        let dlq = &p.out[0];
        let header = |name: &str| {
            dlq.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(DLQ_REASON_HEADER).as_deref(), Some("empty_value"));
        assert_eq!(header(DLQ_SOURCE_TOPIC_HEADER).as_deref(), Some("in"));
        assert_eq!(header(DLQ_SOURCE_PARTITION_HEADER).as_deref(), Some("1"));
        assert_eq!(header(DLQ_SOURCE_OFFSET_HEADER).as_deref(), Some("5"));
    }

    #[test]
    fn an_unprocessed_record_stops_its_partition_and_everything_after_is_carried() {
        // Partition 0: a gap at 20, a fill at 21 the script did not get to, then
        // other clients' records, already applied, which must be redone later.
        let records = vec![
            record(0, 20),
            record(1, 7),
            record(0, 21),
            record(0, 22),
            record(0, 23),
        ];
        let statuses = vec![
            counted(5, G),
            counted(1, A),
            Status::Unprocessed,
            counted(9, A),
            Status::Invalid(RecordError::ZeroSn),
        ];
        let p = plan(&topics(), records, statuses);
        assert_eq!(p.offsets, BTreeMap::from([(0, 21), (1, 8)]));
        let carried: Vec<(i32, i64)> = p.carry.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(carried, vec![(0, 21), (0, 22), (0, 23)]);
        // Only the committed applied record of partition 1 is forwarded; nothing of
        // the carried records is written (not even the invalid one).
        assert_eq!(p.out.len(), 1);
        assert_eq!(
            p.tally,
            Tally {
                applied: 1,
                gaps: 1,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn forwards_are_packed_per_partition_of_their_hash_in_offset_order_and_size_capped() {
        let topics = Topics {
            aggregation_partitions: 3,
            ..topics()
        };
        // 600 forwards of 40 texts, each ~1 KiB: more than one record's worth for
        // some partition.
        let n = 600;
        let text = |i: usize| format!("{i:04} {}", "x".repeat(1_000 + i % 40));
        let records: Vec<Polled> = (0..n).map(|i| record(0, i as i64)).collect();
        let statuses: Vec<Status> = (0..n)
            .map(|i| {
                Status::Counted(
                    ClientMessage {
                        client: format!("c{}", i % 7),
                        sn: (i / 7 + 1) as u64,
                        msg: text(i % 40),
                        ts: 0,
                    },
                    if i % 2 == 0 { A } else { D },
                )
            })
            .collect();
        let p = plan(&topics, records, statuses);
        assert!(p
            .out
            .iter()
            .all(|r| r.payload.len() <= PACKED_RECORD_MAX_BYTES));
        assert!(p.out.len() > 3, "some partition needed a second record");
        assert!(p.out.len() < 10, "{} records for {n} forwards", p.out.len());
        let got = forwards(&p.out);
        assert_eq!(got.len(), n);
        // Each forward is in its hash's partition, and per partition in offset order.
        let mut by_partition: BTreeMap<i32, Vec<(String, u64, String)>> = BTreeMap::new();
        for (partition, client, sn, msg) in got {
            let hash = tally_common::MessageHash::of(msg.as_bytes()).to_string();
            assert_eq!(partition, key_partition(hash.as_bytes(), 3), "{msg:.8}");
            by_partition
                .entry(partition)
                .or_default()
                .push((client, sn, msg));
        }
        for (partition, forwards) in by_partition {
            let want: Vec<(String, u64, String)> = (0..n)
                .map(|i| (format!("c{}", i % 7), (i / 7 + 1) as u64, text(i % 40)))
                .filter(|(_, _, msg)| {
                    let hash = tally_common::MessageHash::of(msg.as_bytes()).to_string();
                    key_partition(hash.as_bytes(), 3) == partition
                })
                .collect();
            assert_eq!(forwards, want, "partition {partition}");
        }
    }
}
