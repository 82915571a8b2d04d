//! `tally records`: the last records of a tally topic, decoded for a person.
//!
//! Values are written in the compact encoding (`common::records`), which a
//! console consumer shows as bytes; this shows every field, the encoding, and for
//! a record that does not parse the reason the counter or aggregator would give
//! it. Dead letters are shown with their `tally.*` headers and their value decoded
//! as a record of the topic they came from.
//!
//! Invariant: it only reads. It never joins a consumer group or commits, so it
//! cannot move a counter's or aggregator's offsets, and it reads what they read
//! (`read_committed`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tally_common::kafka::{group_positions, read_committed_consumer_config};
use tally_common::records::{
    encoding_name, ClientMessage, MessageAggregation, DLQ_SOURCE_TOPIC_HEADER, PACKED_V2,
};
use tally_common::Settings;

use crate::inspect::ProbeContext;
use crate::printable::printable;

/// Most records shown per partition.
pub const MAX_LAST: u64 = 10_000;
/// How long reading may stand still before the command gives up.
const READ_STALL: Duration = Duration::from_secs(15);
/// A throwaway group id: assigned partitions only, never joined or committed.
const GROUP: &str = "tally-records";

/// Which topic to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// `kafka.client_message_topic`: what producers flushed.
    ClientMessage,
    /// `kafka.message_aggregation_topic`: what counters forwarded.
    Aggregation,
    /// `kafka.dlq_topic`: records that could not be applied.
    Dlq,
}

/// One record, decoded.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The key, as text (lossy).
    pub key: Option<String>,
    /// `compact v1`, `packed v2`, `json`, `version 0x..` or `none`.
    pub encoding: String,
    /// The decoded fields, or `None` if the value does not parse or is packed.
    pub fields: Option<BTreeMap<&'static str, String>>,
    /// A packed `message_aggregation` record's entries, each decoded (`hash` is
    /// computed from the text: a packed record does not carry it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<BTreeMap<&'static str, String>>,
    /// Why it does not parse (the DLQ reason code and detail).
    pub invalid: Option<String>,
    /// The `tally.*` headers (dead letters).
    pub headers: BTreeMap<String, String>,
}

impl Shown {
    /// One line for a person.
    pub fn line(&self) -> String {
        let mut out = format!("{}@{}", self.partition, self.offset);
        for (k, v) in &self.headers {
            out.push_str(&format!(" {k}={}", printable(v)));
        }
        match (&self.fields, &self.invalid) {
            (Some(fields), _) => {
                for (k, v) in fields {
                    out.push_str(&format!(" {k}={v}"));
                }
            }
            (None, None) if !self.entries.is_empty() => {
                out.push_str(&format!(
                    " entries={} ({})",
                    self.entries.len(),
                    self.encoding
                ));
                for entry in &self.entries {
                    out.push_str("\n   ");
                    for (k, v) in entry {
                        out.push_str(&format!(" {k}={v}"));
                    }
                }
                return out;
            }
            (None, why) => {
                let key = self.key.as_deref().map_or("(none)".into(), printable);
                out.push_str(&format!(
                    " key={key} INVALID: {}",
                    why.as_deref().unwrap_or("?")
                ));
            }
        }
        out.push_str(&format!(" ({})", self.encoding));
        out
    }
}

/// Why the records cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Kafka refused or failed a request.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic has no partition with that number.
    #[error("{topic} has no partition {partition}")]
    NoPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
    },
    /// Nothing arrived for a while though records were left to read.
    #[error("reading {topic} stalled with {left} partition(s) not read to their end")]
    Stalled {
        /// The topic.
        topic: String,
        /// Partitions not finished.
        left: usize,
    },
}

/// Decodes one record read from `which`; a dead letter whose source header names
/// `aggregation_topic` is decoded as an aggregation record.
pub fn decode(
    which: Which,
    aggregation_topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: BTreeMap<String, String>,
) -> Shown {
    // A dead letter is decoded as a record of the topic it came from.
    let as_topic = match which {
        Which::ClientMessage => Which::ClientMessage,
        Which::Aggregation => Which::Aggregation,
        Which::Dlq => match headers.get(DLQ_SOURCE_TOPIC_HEADER) {
            Some(t) if t == aggregation_topic => Which::Aggregation,
            _ => Which::ClientMessage,
        },
    };
    let mut entries = Vec::new();
    let (fields, invalid) = match as_topic {
        Which::Aggregation if value.is_some_and(|v| v.first() == Some(&PACKED_V2)) => {
            match MessageAggregation::sightings(key, value) {
                Ok(sightings) => {
                    entries = sightings
                        .into_iter()
                        .map(|s| {
                            BTreeMap::from([
                                ("client", s.client),
                                ("sn", s.sn.to_string()),
                                ("hash", s.hash.to_string()),
                                ("msg", printable(&s.msg)),
                            ])
                        })
                        .collect();
                    (None, None)
                }
                Err(e) => (None, Some(format!("{}: {e}", e.reason()))),
            }
        }
        Which::Aggregation => match MessageAggregation::parse(key, value) {
            Ok(m) => (
                Some(BTreeMap::from([
                    ("client", m.client),
                    ("sn", m.sn.to_string()),
                    ("hash", m.hash),
                    ("msg", printable(&m.msg)),
                ])),
                None,
            ),
            Err(e) => (None, Some(format!("{}: {e}", e.reason()))),
        },
        _ => match ClientMessage::parse(key, value) {
            Ok(m) => (
                Some(BTreeMap::from([
                    ("client", m.client),
                    ("sn", m.sn.to_string()),
                    ("ts", m.ts.to_string()),
                    ("msg", printable(&m.msg)),
                ])),
                None,
            ),
            Err(e) => (None, Some(format!("{}: {e}", e.reason()))),
        },
    };
    Shown {
        partition,
        offset,
        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
        encoding: encoding_name(value),
        fields,
        entries,
        invalid,
        headers,
    }
}

/// The last `last` records of every partition of the topic (or of `partition`),
/// in partition and offset order. Blocking: call it off the async runtime.
pub fn read_last(
    settings: &Settings,
    which: Which,
    partition: Option<i32>,
    last: u64,
    timeout: Duration,
) -> Result<Vec<Shown>, RecordsError> {
    let kafka = &settings.kafka;
    let topic = match which {
        Which::ClientMessage => &kafka.client_message_topic,
        Which::Aggregation => &kafka.message_aggregation_topic,
        Which::Dlq => &kafka.dlq_topic,
    };
    let last = last.min(MAX_LAST) as i64;
    let positions = group_positions(kafka, None, topic, timeout)?;
    if let Some(p) = partition {
        if !positions.iter().any(|pos| pos.partition == p) {
            return Err(RecordsError::NoPartition {
                topic: topic.clone(),
                partition: p,
            });
        }
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for pos in positions
        .iter()
        .filter(|pos| partition.is_none_or(|p| p == pos.partition))
    {
        let from = pos.low.max(pos.high - last);
        if from < pos.high {
            tpl.add_partition_offset(topic, pos.partition, Offset::Offset(from))?;
            ends.insert(pos.partition, pos.high);
        }
    }
    let mut shown = Vec::new();
    if ends.is_empty() {
        return Ok(shown);
    }
    let mut config = read_committed_consumer_config(kafka, GROUP);
    config.set("enable.partition.eof", "true");
    // The probe's context: ends of partitions are asked for, not logged as errors.
    let consumer: BaseConsumer<ProbeContext> = config.create_with_context(ProbeContext)?;
    consumer.assign(&tpl)?;
    let mut last_record = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None if last_record.elapsed() >= READ_STALL => {
                return Err(RecordsError::Stalled {
                    topic: topic.clone(),
                    left: ends.len(),
                });
            }
            None => {}
            Some(Ok(m)) => {
                last_record = Instant::now();
                let Some(&end) = ends.get(&m.partition()) else {
                    continue;
                };
                if m.offset() < end {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let v = h.value.map(String::from_utf8_lossy);
                                    (h.key.to_owned(), v.unwrap_or_default().into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    shown.push(decode(
                        which,
                        &kafka.message_aggregation_topic,
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.payload(),
                        headers,
                    ));
                }
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            // At the end of what is readable (the last offsets may be markers).
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    shown.sort_by_key(|s| (s.partition, s.offset));
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGGREGATION: &str = "message_aggregation";

    #[test]
    fn a_compact_record_shows_every_field_and_its_encoding() {
        let m = ClientMessage {
            client: "c-1".into(),
            sn: 7,
            msg: "tab\there".into(),
            ts: 5,
        };
        let shown = decode(
            Which::ClientMessage,
            AGGREGATION,
            2,
            40,
            Some(b"c-1"),
            Some(&m.encode()),
            BTreeMap::new(),
        );
        assert_eq!(
            shown.line(),
            r#"2@40 client=c-1 msg="tab\there" sn=7 ts=5 (compact v1)"#
        );
        let old = decode(
            Which::ClientMessage,
            AGGREGATION,
            2,
            41,
            Some(b"c-1"),
            Some(&m.to_json()),
            BTreeMap::new(),
        );
        assert!(old.line().ends_with("(json)"), "{}", old.line());
    }

    #[test]
    fn a_packed_record_shows_each_entry() {
        let mut pack = tally_common::records::PackedWriter::default();
        pack.push("c-1", 7, "hi");
        pack.push("c-2", 1, "yo");
        let shown = decode(
            Which::Aggregation,
            AGGREGATION,
            1,
            9,
            Some(b""),
            Some(&pack.finish()),
            BTreeMap::new(),
        );
        let hi = tally_common::MessageHash::of(b"hi");
        let yo = tally_common::MessageHash::of(b"yo");
        assert_eq!(
            shown.line(),
            format!(
                "1@9 entries=2 (packed v2)\n    client=c-1 hash={hi} msg=\"hi\" sn=7\n    client=c-2 hash={yo} msg=\"yo\" sn=1"
            )
        );
        let json = serde_json::to_value(&shown).expect("serializes");
        assert_eq!(json["entries"][1]["sn"], "1");
    }

    #[test]
    fn a_dead_letter_shows_its_reason_and_why_it_does_not_parse() {
        let headers = BTreeMap::from([
            ("tally.reason".to_owned(), "unsupported_version".to_owned()),
            (
                DLQ_SOURCE_TOPIC_HEADER.to_owned(),
                "client_message".to_owned(),
            ),
        ]);
        let shown = decode(
            Which::Dlq,
            AGGREGATION,
            0,
            3,
            Some(b"c-1"),
            Some(&[0x05, 1]),
            headers,
        );
        let line = shown.line();
        assert!(
            line.contains("tally.reason=\"unsupported_version\""),
            "{line}"
        );
        assert!(line.contains("INVALID: unsupported_version"), "{line}");
        assert!(line.ends_with("(version 0x05)"), "{line}");
    }
}
