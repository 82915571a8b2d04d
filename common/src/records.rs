//! Kafka record formats: `client_message` and `message_aggregation` values, and the
//! dead-letter headers. One definition each, shared by every writer and reader.
//!
//! Invariant: a record that fails [`ClientMessage::parse`] or
//! [`MessageAggregation::parse`] is never applied to a count; it goes to the
//! dead-letter topic with [`RecordError::reason`] as its reason header.
//!
//! Two encodings are read, one is written:
//! - **Compact, version 1** (written): a version byte [`COMPACT_V1`], then
//!   LEB128 integers and the text. A value carries only what its key does not:
//!   `client_message` = `01 · sn · ts (zigzag) · msg` under key = client id;
//!   `message_aggregation` = `01 · sn · client length · client · msg` under key =
//!   message hash. The text runs to the end of the value.
//! - **JSON** (read, for records written before the compact encoding):
//!   `{client, sn, msg, ts}` and `{client, sn, hash, msg}`. Unknown fields are
//!   accepted. A JSON value starts with `{` or whitespace, never with a version
//!   byte.
//!
//! A version byte this build does not know is dead-lettered as
//! `unsupported_version`, not guessed at.

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

/// First byte of a compact, version 1 value.
pub const COMPACT_V1: u8 = 0x01;

/// Why a record cannot be applied. Each has a stable reason code for the DLQ header.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not JSON of the expected shape.
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The value is a compact record cut short or with bytes that do not decode.
    #[error("malformed compact record: {0}")]
    MalformedCompact(&'static str),
    /// The value starts with a version byte this build does not know.
    #[error("unsupported record version {0:#04x}")]
    UnsupportedVersion(u8),
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
            Self::Malformed(_) | Self::MalformedCompact(_) => "malformed",
            Self::UnsupportedVersion(_) => "unsupported_version",
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

/// Appends `v` as LEB128.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 integer from the front of `bytes`, advancing it.
fn take_varint(bytes: &mut &[u8]) -> Result<u64, RecordError> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7F);
        if i == 9 && part > 1 {
            return Err(RecordError::MalformedCompact("integer overflows 64 bits"));
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok(v);
        }
    }
    Err(RecordError::MalformedCompact("integer cut short"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn text(bytes: &[u8]) -> Result<String, RecordError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| RecordError::MalformedCompact("text is not UTF-8"))
}

fn key_text(key: Option<&[u8]>) -> Result<&str, RecordError> {
    let key = key.unwrap_or_default();
    std::str::from_utf8(key).map_err(|_| RecordError::KeyMismatch {
        key: String::from_utf8_lossy(key).into_owned(),
        expected: "a UTF-8 key".into(),
    })
}

/// The encoding of a value: compact (past its version byte) or JSON.
enum Encoded<'a> {
    Compact(&'a [u8]),
    Json(&'a [u8]),
}

fn encoding(value: Option<&[u8]>) -> Result<Encoded<'_>, RecordError> {
    let value = value.ok_or(RecordError::Empty)?;
    match value.first() {
        Some(&COMPACT_V1) => Ok(Encoded::Compact(&value[1..])),
        // JSON starts with `{` or whitespace; anything else below 0x20 is a
        // version byte from a newer writer.
        Some(&b) if b < 0x20 && !b.is_ascii_whitespace() => Err(RecordError::UnsupportedVersion(b)),
        _ => Ok(Encoded::Json(value)),
    }
}

/// The encoding of a value as a person would name it: `compact v1`, `json`,
/// `version 0x..` for a version byte this build does not know, or `none`.
pub fn encoding_name(value: Option<&[u8]>) -> String {
    match encoding(value) {
        Ok(Encoded::Compact(_)) => "compact v1".into(),
        Ok(Encoded::Json(_)) => "json".into(),
        Err(RecordError::UnsupportedVersion(v)) => format!("version {v:#04x}"),
        Err(_) => "none".into(),
    }
}

impl ClientMessage {
    /// The Kafka record key: the client id, so one client's records share a
    /// partition and keep their order.
    pub fn key(&self) -> &str {
        &self.client
    }

    /// The value as written: compact, version 1 (the client is the key).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 10 + 10 + self.msg.len());
        out.push(COMPACT_V1);
        put_varint(&mut out, self.sn);
        put_varint(&mut out, zigzag(self.ts));
        out.extend_from_slice(self.msg.as_bytes());
        out
    }

    /// The value in the JSON encoding older builds wrote (for tests of the reader).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the fields of a record that parsed.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_common(&self.client, self.sn, &self.msg)
    }

    /// Parses and validates a record as read from Kafka, key included, in either
    /// encoding.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self, RecordError> {
        match encoding(value)? {
            Encoded::Compact(mut rest) => {
                let client = key_text(key)?.to_owned();
                let sn = take_varint(&mut rest)?;
                let ts = unzigzag(take_varint(&mut rest)?);
                let record = Self {
                    client,
                    sn,
                    msg: text(rest)?,
                    ts,
                };
                record.validate()?;
                Ok(record)
            }
            Encoded::Json(json) => {
                let record: Self = serde_json::from_slice(json)?;
                record.validate()?;
                check_key(key, &record.client)?;
                Ok(record)
            }
        }
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

    /// The value as written: compact, version 1 (the hash is the key).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 10 + 10 + self.client.len() + self.msg.len());
        out.push(COMPACT_V1);
        put_varint(&mut out, self.sn);
        put_varint(&mut out, self.client.len() as u64);
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(self.msg.as_bytes());
        out
    }

    /// The value in the JSON encoding older builds wrote (for tests of the reader).
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
        match encoding(value)? {
            Encoded::Compact(mut rest) => {
                let hash = key_text(key)?.to_owned();
                let sn = take_varint(&mut rest)?;
                let len = usize::try_from(take_varint(&mut rest)?)
                    .ok()
                    .filter(|&len| len <= rest.len())
                    .ok_or(RecordError::MalformedCompact(
                        "client id runs past the value",
                    ))?;
                let (client, msg) = rest.split_at(len);
                let record = Self {
                    client: text(client)?,
                    sn,
                    hash,
                    msg: text(msg)?,
                };
                record.validate()?;
                Ok(record)
            }
            Encoded::Json(json) => {
                let record: Self = serde_json::from_slice(json)?;
                record.validate()?;
                check_key(key, &record.hash)?;
                Ok(record)
            }
        }
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
    fn compact_values_round_trip_and_carry_only_what_the_key_does_not() {
        let m = ClientMessage {
            ts: -5,
            ..message()
        };
        let value = m.encode();
        assert_eq!(value[0], COMPACT_V1);
        assert!(
            !value.windows(8).any(|w| w == b"client-7"),
            "the key is not repeated"
        );
        assert_eq!(
            ClientMessage::parse(Some(b"client-7"), Some(&value)).expect("parses"),
            m
        );
        let a = MessageAggregation::from_client_message(&message());
        let value = a.encode();
        assert!(value.len() < a.to_json().len());
        assert_eq!(
            MessageAggregation::parse(Some(a.hash.as_bytes()), Some(&value)).expect("parses"),
            a
        );
        // The largest sn survives the varint.
        let big = ClientMessage {
            sn: u64::MAX,
            ts: i64::MIN,
            ..message()
        };
        assert_eq!(
            ClientMessage::parse(Some(b"client-7"), Some(&big.encode())).expect("parses"),
            big
        );
    }

    #[test]
    fn json_values_of_older_builds_are_still_read() {
        let m = message();
        assert_eq!(
            ClientMessage::parse(Some(b"client-7"), Some(&m.to_json())).expect("parses"),
            m
        );
        let padded = [b" \n".as_slice(), &m.to_json()].concat();
        assert_eq!(
            ClientMessage::parse(Some(b"client-7"), Some(&padded)).expect("parses"),
            m
        );
    }

    #[test]
    fn broken_compact_values_name_their_reason() {
        let value = message().encode();
        let key = Some(b"client-7".as_slice());
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&value[..1]))),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&[COMPACT_V1, 0x80]))),
            "malformed"
        );
        let overflow = [&[COMPACT_V1][..], &[0xFF; 10], &[0x01, b'm']].concat();
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&overflow))),
            "malformed"
        );
        let mut not_utf8 = message().encode();
        not_utf8.push(0xFF);
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&not_utf8))),
            "malformed"
        );
        let mut newer = value.clone();
        newer[0] = 0x02;
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&newer))),
            "unsupported_version"
        );
        // A tab, like any whitespace, may start JSON: it is read as JSON, not as
        // a version byte.
        newer[0] = b'\t';
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&newer))),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(None, Some(&value))),
            "bad_client_id"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"a b"), Some(&value))),
            "bad_client_id"
        );
        let no_text = [COMPACT_V1, 0x01, 0x00];
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&no_text))),
            "empty_message"
        );
        let zero_sn = [COMPACT_V1, 0x00, 0x00, b'm'];
        assert_eq!(
            reason_of(ClientMessage::parse(key, Some(&zero_sn))),
            "bad_sn"
        );

        let a = MessageAggregation::from_client_message(&message());
        let hash = Some(a.hash.as_bytes());
        let value = a.encode();
        let long_client = [COMPACT_V1, 0x01, 0x7F, b'c', b'm'];
        assert_eq!(
            reason_of(MessageAggregation::parse(hash, Some(&long_client))),
            "malformed"
        );
        assert_eq!(
            reason_of(MessageAggregation::parse(Some(b"xyz"), Some(&value))),
            "bad_hash"
        );
        let other = MessageHash::of(b"another text").to_string();
        assert_eq!(
            reason_of(MessageAggregation::parse(
                Some(other.as_bytes()),
                Some(&value)
            )),
            "hash_mismatch"
        );
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
