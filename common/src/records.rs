//! Kafka record formats: `client_message` and `message_aggregation` values, and the
//! dead-letter headers. One definition each, shared by every writer and reader.
//!
//! Invariant: a record that fails [`ClientMessage::parse`] or
//! [`MessageAggregation::parse`] is never applied to a count; it goes to the
//! dead-letter topic with [`RecordError::reason`] as its reason header. Unknown JSON
//! fields are accepted, so a newer producer can add a field without older counters
//! dead-lettering everything.

use serde::{Deserialize, Serialize};

use crate::keys::{ClientId, MessageHash};

/// Value of a `client_message` record (key = client id): one message of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMessage {
    /// The client id, as in `HELLO` or `ip:port`.
    pub client: String,
    /// The client's sequence number of this message, from 1.
    pub sn: u64,
    /// The message text.
    pub msg: String,
    /// When the producer stored it, milliseconds since the Unix epoch.
    pub ts: i64,
}

/// Value of a `message_aggregation` record (key = message hash): one counted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAggregation {
    /// The client that sent it.
    pub client: String,
    /// The client's sequence number of it.
    pub sn: u64,
    /// [`MessageHash`] of `msg`, 32 hex digits.
    pub hash: String,
    /// The message text.
    pub msg: String,
}

/// Why a record cannot be applied. Each has a stable reason code for the DLQ header.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not JSON of the expected shape.
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The record has no value at all (a tombstone).
    #[error("record has no value")]
    Empty,
    /// The client id is not a valid id.
    #[error("bad client id {id:?}: {source}")]
    BadClientId {
        /// The offending id.
        id: String,
        /// Why it is not valid.
        source: crate::keys::ClientIdError,
    },
    /// The Kafka key differs from what the value says it must be.
    #[error("record key {key:?} does not match its value ({expected:?})")]
    KeyMismatch {
        /// The key the record carries.
        key: String,
        /// The key its value implies.
        expected: String,
    },
    /// Sequence numbers start at 1.
    #[error("sn must be ≥ 1")]
    ZeroSn,
    /// Empty lines are never stored, so an empty message is corrupt.
    #[error("message text is empty")]
    EmptyMessage,
    /// `hash` is not 32 lowercase hex digits.
    #[error(transparent)]
    BadHash(#[from] crate::keys::MessageHashError),
    /// `hash` is well formed but is not the hash of `msg`.
    #[error("hash {found} is not the hash of the message ({expected})")]
    HashMismatch {
        /// The hash in the record.
        found: String,
        /// The hash of its text.
        expected: String,
    },
}

impl RecordError {
    /// Stable reason code, written to the DLQ's [`DLQ_REASON_HEADER`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Empty => "empty_value",
            Self::BadClientId { .. } => "bad_client_id",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::ZeroSn => "bad_sn",
            Self::EmptyMessage => "empty_message",
            Self::BadHash(_) => "bad_hash",
            Self::HashMismatch { .. } => "hash_mismatch",
        }
    }
}

/// DLQ header: why the record was dead-lettered ([`RecordError::reason`]).
pub const DLQ_REASON_HEADER: &str = "tally.reason";
/// DLQ header: human-readable detail of the reason.
pub const DLQ_DETAIL_HEADER: &str = "tally.detail";
/// DLQ header: topic the record was read from.
pub const DLQ_SOURCE_TOPIC_HEADER: &str = "tally.source.topic";
/// DLQ header: partition the record was read from.
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "tally.source.partition";
/// DLQ header: offset the record was read from.
pub const DLQ_SOURCE_OFFSET_HEADER: &str = "tally.source.offset";

fn check_key(key: Option<&[u8]>, expected: &str) -> Result<(), RecordError> {
    match key {
        Some(k) if k == expected.as_bytes() => Ok(()),
        other => Err(RecordError::KeyMismatch {
            key: String::from_utf8_lossy(other.unwrap_or_default()).into_owned(),
            expected: expected.to_owned(),
        }),
    }
}

fn check_common(client: &str, sn: u64, msg: &str) -> Result<(), RecordError> {
    ClientId::from_record(client).map_err(|source| RecordError::BadClientId {
        id: client.to_owned(),
        source,
    })?;
    if sn == 0 {
        return Err(RecordError::ZeroSn);
    }
    if msg.is_empty() {
        return Err(RecordError::EmptyMessage);
    }
    Ok(())
}

impl ClientMessage {
    /// The Kafka record key: the client id, so one client's records share a
    /// partition and keep their order.
    pub fn key(&self) -> &str {
        &self.client
    }

    /// Serializes the value.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the fields of a record that parsed.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_common(&self.client, self.sn, &self.msg)
    }

    /// Parses and validates a record as read from Kafka, key included.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(value.ok_or(RecordError::Empty)?)?;
        record.validate()?;
        check_key(key, &record.client)?;
        Ok(record)
    }
}

impl MessageAggregation {
    /// The record the counter forwards for a counted client message.
    pub fn from_client_message(message: &ClientMessage) -> Self {
        Self {
            client: message.client.clone(),
            sn: message.sn,
            hash: MessageHash::of(message.msg.as_bytes()).to_string(),
            msg: message.msg.clone(),
        }
    }

    /// The Kafka record key: the message hash, so one message's records share a
    /// partition and one aggregator applies them.
    pub fn key(&self) -> &str {
        &self.hash
    }

    /// Serializes the value.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the fields of a record that parsed, including that `hash` is the hash
    /// of `msg` (so a corrupt record cannot count under another message's key).
    pub fn validate(&self) -> Result<MessageHash, RecordError> {
        check_common(&self.client, self.sn, &self.msg)?;
        let found: MessageHash = self.hash.parse()?;
        let expected = MessageHash::of(self.msg.as_bytes());
        if found != expected {
            return Err(RecordError::HashMismatch {
                found: self.hash.clone(),
                expected: expected.to_string(),
            });
        }
        Ok(found)
    }

    /// Parses and validates a record as read from Kafka, key included.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(value.ok_or(RecordError::Empty)?)?;
        record.validate()?;
        check_key(key, &record.hash)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> ClientMessage {
        ClientMessage {
            client: "client-7".into(),
            sn: 42,
            msg: "Mr. Darcy’s \"pride\"\t\\ ok".into(),
            ts: 1_700_000_000_123,
        }
    }

    #[test]
    fn client_message_round_trips() {
        let m = message();
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).expect("utf8");
        assert!(
            text.starts_with(r#"{"client":"client-7","sn":42,"msg":"#),
            "{text}"
        );
        assert_eq!(
            ClientMessage::parse(Some(b"client-7"), Some(&json)).expect("parses"),
            m
        );
    }

    #[test]
    fn aggregation_round_trips_with_the_hash_of_its_text() {
        let a = MessageAggregation::from_client_message(&message());
        assert_eq!(
            a.hash,
            MessageHash::of(message().msg.as_bytes()).to_string()
        );
        let json = a.to_json();
        let back = MessageAggregation::parse(Some(a.hash.as_bytes()), Some(&json)).expect("parses");
        assert_eq!(back, a);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let json = br#"{"client":"c","sn":1,"msg":"m","ts":0,"added_later":true}"#;
        assert!(ClientMessage::parse(Some(b"c"), Some(json)).is_ok());
    }

    fn reason_of(result: Result<impl std::fmt::Debug, RecordError>) -> &'static str {
        result.expect_err("must be rejected").reason()
    }

    #[test]
    fn invalid_client_messages_name_their_reason() {
        let ok = |client: &str, sn: u64, msg: &str| {
            ClientMessage {
                client: client.into(),
                sn,
                msg: msg.into(),
                ts: 0,
            }
            .to_json()
        };
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"c"), Some(b"not json"))),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(
                Some(b"c"),
                Some(br#"{"client":"c","sn":1}"#)
            )),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(
                Some(b"c"),
                Some(br#"{"client":"c","sn":-1,"msg":"m","ts":0}"#)
            )),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"c"), None)),
            "empty_value"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"c"), Some(&ok("c", 0, "m")))),
            "bad_sn"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"c"), Some(&ok("c", 1, "")))),
            "empty_message"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"a b"), Some(&ok("a b", 1, "m")))),
            "bad_client_id"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"other"), Some(&ok("c", 1, "m")))),
            "key_mismatch"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(None, Some(&ok("c", 1, "m")))),
            "key_mismatch"
        );
    }

    #[test]
    fn invalid_aggregations_name_their_reason() {
        let good = MessageAggregation::from_client_message(&message());
        let with_hash = |hash: &str| MessageAggregation {
            hash: hash.into(),
            ..good.clone()
        };
        let bad_hash = with_hash("xyz");
        assert_eq!(
            reason_of(MessageAggregation::parse(
                Some(b"xyz"),
                Some(&bad_hash.to_json())
            )),
            "bad_hash"
        );
        let other = MessageHash::of(b"another text").to_string();
        let wrong = with_hash(&other);
        assert_eq!(
            reason_of(MessageAggregation::parse(
                Some(other.as_bytes()),
                Some(&wrong.to_json())
            )),
            "hash_mismatch"
        );
        assert_eq!(
            reason_of(MessageAggregation::parse(Some(b"k"), Some(&good.to_json()))),
            "key_mismatch"
        );
    }
}
