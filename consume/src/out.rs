//! What a batch writes besides its offsets: records for other topics, and dead
//! letters for the records that cannot be processed.
//!
//! Invariant: a dead letter carries the invalid record's key and value unchanged,
//! with headers naming why (`tally.reason`, a stable code) and where it came from
//! (topic, partition, offset), so nothing about it is lost and an operator can
//! replay it once fixed.

use rdkafka::message::{Header, OwnedHeaders};
use tally_common::records::{
    RecordError, DLQ_DETAIL_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_SOURCE_TOPIC_HEADER,
};

use crate::group::Polled;

/// One record a batch writes.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None`: the producer's partitioner picks it by key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl OutRecord {
    /// The headers as Kafka sends them.
    pub fn kafka_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        headers
    }
}

/// The DLQ record for an invalid source record: its key and value unchanged, and
/// headers naming why and where it came from.
pub fn dead_letter(
    source_topic: &str,
    dlq: &str,
    record: Polled,
    error: &RecordError,
) -> OutRecord {
    OutRecord {
        topic: dlq.to_owned(),
        partition: None,
        key: record.key.unwrap_or_default(),
        payload: record.payload.unwrap_or_default(),
        headers: vec![
            (DLQ_REASON_HEADER, error.reason().as_bytes().to_vec()),
            (DLQ_DETAIL_HEADER, error.to_string().into_bytes()),
            (DLQ_SOURCE_TOPIC_HEADER, source_topic.as_bytes().to_vec()),
            (
                DLQ_SOURCE_PARTITION_HEADER,
                record.partition.to_string().into_bytes(),
            ),
            (
                DLQ_SOURCE_OFFSET_HEADER,
                record.offset.to_string().into_bytes(),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_key_and_value_and_names_reason_and_origin() {
        let polled = Polled {
            partition: 3,
            offset: 41,
            key: Some(b"k".to_vec()),
            payload: Some(b"not json".to_vec()),
        };
        let r = dead_letter("in", "dlq", polled, &RecordError::Empty);
        assert_eq!(
            (r.topic.as_str(), &r.key[..], &r.payload[..]),
            ("dlq", &b"k"[..], &b"not json"[..])
        );
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(DLQ_REASON_HEADER).as_deref(), Some("empty_value"));
        assert_eq!(header(DLQ_SOURCE_TOPIC_HEADER).as_deref(), Some("in"));
        assert_eq!(header(DLQ_SOURCE_PARTITION_HEADER).as_deref(), Some("3"));
        assert_eq!(header(DLQ_SOURCE_OFFSET_HEADER).as_deref(), Some("41"));
        assert!(header(DLQ_DETAIL_HEADER).is_some_and(|d| !d.is_empty()));
    }
}
