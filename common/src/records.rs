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
//! - **Packed, version 2** (written to `message_aggregation` since version 1):
//!   [`PACKED_V2`], then entries `sn · client length · client · text length ·
//!   text` to the end of the value, empty key. One record holds many forwards of
//!   one counter transaction, every one of them bound for the record's partition
//!   (the partition the Java partitioner picks for the entry's message hash,
//!   [`crate::kafka::key_partition`]), so a message's sightings stay in one
//!   partition, as under keyed version 1 records. The hash is not carried: the
//!   reader computes it from the text.
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
/// First byte of a packed `message_aggregation` value (many forwards).
pub const PACKED_V2: u8 = 0x02;

/// One counted message as the aggregator applies it: a (message, client, sn)
/// sighting, read from a version 1 or JSON record or from one entry of a packed
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Hash of `msg`.
    pub hash: MessageHash,
    /// The client that sent it.
    pub client: String,
    /// The client's sequence number of it.
    pub sn: u64,
    /// The message text.
    pub msg: String,
}

/// Builds one packed `message_aggregation` value ([`PACKED_V2`]) entry by entry.
#[derive(Debug)]
pub struct PackedWriter {
    value: Vec<u8>,
    entries: usize,
}

impl Default for PackedWriter {
    fn default() -> Self {
        Self {
            value: vec![PACKED_V2],
            entries: 0,
        }
    }
}

impl PackedWriter {
    /// Appends one forward.
    pub fn push(&mut self, client: &str, sn: u64, msg: &str) {
        put_varint(&mut self.value, sn);
        put_varint(&mut self.value, client.len() as u64);
        self.value.extend_from_slice(client.as_bytes());
        put_varint(&mut self.value, msg.len() as u64);
        self.value.extend_from_slice(msg.as_bytes());
        self.entries += 1;
    }

    /// Bytes an entry adds: the writer's caller keeps records under a size.
    pub fn entry_size(client: &str, msg: &str) -> usize {
        // sn, two lengths: at most 10 bytes each.
        30 + client.len() + msg.len()
    }

    /// The value's size so far.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Entries so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The value.
    pub fn finish(self) -> Vec<u8> {
        self.value
    }
}

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

/// Reads a length-prefixed UTF-8 text from the front of `bytes`, advancing it.
fn take_text(bytes: &mut &[u8], overrun: &'static str) -> Result<String, RecordError> {
    let len = usize::try_from(take_varint(bytes)?)
        .ok()
        .filter(|&len| len <= bytes.len())
        .ok_or(RecordError::MalformedCompact(overrun))?;
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    text(head)
}

fn key_text(key: Option<&[u8]>) -> Result<&str, RecordError> {
    let key = key.unwrap_or_default();
    std::str::from_utf8(key).map_err(|_| RecordError::KeyMismatch {
        key: String::from_utf8_lossy(key).into_owned(),
        expected: "a UTF-8 key".into(),
    })
}

/// The encoding of a value: compact or packed (past its version byte) or JSON.
enum Encoded<'a> {
    Compact(&'a [u8]),
    Packed(&'a [u8]),
    Json(&'a [u8]),
}

fn encoding(value: Option<&[u8]>) -> Result<Encoded<'_>, RecordError> {
    let value = value.ok_or(RecordError::Empty)?;
    match value.first() {
        Some(&COMPACT_V1) => Ok(Encoded::Compact(&value[1..])),
        Some(&PACKED_V2) => Ok(Encoded::Packed(&value[1..])),
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
        Ok(Encoded::Packed(_)) => "packed v2".into(),
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
        Self::encode_value(self.sn, self.ts, &self.msg)
    }

    /// Bytes a value adds to its message text at most: the version byte and
    /// two varints (sn, zigzagged ts) of up to 10 bytes each. The producer's
    /// send windows count a value by this before encoding it.
    pub const VALUE_FRAMING_MAX: usize = 1 + 10 + 10;

    /// [`Self::encode`] from the fields the value holds, without building the
    /// record (the producer's flusher, per message).
    pub fn encode_value(sn: u64, ts: i64, msg: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::VALUE_FRAMING_MAX + msg.len());
        out.push(COMPACT_V1);
        put_varint(&mut out, sn);
        put_varint(&mut out, zigzag(ts));
        out.extend_from_slice(msg.as_bytes());
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
            // Packed values are `message_aggregation`'s only.
            Encoded::Packed(_) => Err(RecordError::UnsupportedVersion(PACKED_V2)),
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
        // The version byte and two varints (sn, the client's length).
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

    /// The sightings of one `message_aggregation` record, validated, in order: one
    /// for a version 1 or JSON record, every entry of a packed one. Any invalid
    /// entry makes the whole record invalid (it is dead-lettered as it is).
    pub fn sightings(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Vec<Sighting>, RecordError> {
        let Encoded::Packed(mut rest) = encoding(value)? else {
            let record = Self::parse(key, value)?;
            let hash = record.validate()?;
            return Ok(vec![Sighting {
                hash,
                client: record.client,
                sn: record.sn,
                msg: record.msg,
            }]);
        };
        if rest.is_empty() {
            return Err(RecordError::MalformedCompact(
                "packed record without entries",
            ));
        }
        let mut sightings = Vec::new();
        while !rest.is_empty() {
            let sn = take_varint(&mut rest)?;
            let client = take_text(&mut rest, "client id runs past the value")?;
            let msg = take_text(&mut rest, "text runs past the value")?;
            check_common(&client, sn, &msg)?;
            sightings.push(Sighting {
                hash: MessageHash::of(msg.as_bytes()),
                client,
                sn,
                msg,
            });
        }
        Ok(sightings)
    }

    /// Parses and validates a record as read from Kafka, key included.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self, RecordError> {
        match encoding(value)? {
            Encoded::Packed(_) => Err(RecordError::MalformedCompact(
                "a packed record holds many sightings: read it with `sightings`",
            )),
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
    fn a_value_adds_at_most_its_framing_bound_to_the_text() {
        for (sn, ts) in [(0, 0), (u64::MAX, i64::MIN), (u64::MAX, i64::MAX), (1, -1)] {
            let value = ClientMessage::encode_value(sn, ts, "text");
            assert!(
                value.len() <= ClientMessage::VALUE_FRAMING_MAX + "text".len(),
                "sn {sn}, ts {ts}: {} bytes",
                value.len()
            );
        }
        let widest = ClientMessage::encode_value(u64::MAX, i64::MIN, "");
        assert_eq!(widest.len(), ClientMessage::VALUE_FRAMING_MAX);
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
    fn packed_values_round_trip_as_sightings_and_name_what_is_broken() {
        let mut pack = PackedWriter::default();
        assert!(pack.is_empty());
        let texts = [message().msg, "zwei".to_owned(), message().msg];
        for (i, text) in texts.iter().enumerate() {
            pack.push(&format!("c{i}"), u64::MAX - i as u64, text);
        }
        assert_eq!(pack.entries(), 3);
        let size = pack.len();
        let value = pack.finish();
        assert_eq!((value[0], value.len()), (PACKED_V2, size));
        assert_eq!(encoding_name(Some(&value)), "packed v2");
        let sightings = MessageAggregation::sightings(Some(b""), Some(&value)).expect("parses");
        let got: Vec<(MessageHash, &str, u64, &str)> = sightings
            .iter()
            .map(|s| (s.hash, s.client.as_str(), s.sn, s.msg.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    MessageHash::of(texts[0].as_bytes()),
                    "c0",
                    u64::MAX,
                    texts[0].as_str()
                ),
                (MessageHash::of(b"zwei"), "c1", u64::MAX - 1, "zwei"),
                (
                    MessageHash::of(texts[2].as_bytes()),
                    "c2",
                    u64::MAX - 2,
                    texts[2].as_str()
                ),
            ]
        );
        // A single record reads as one sighting.
        let a = MessageAggregation::from_client_message(&message());
        let one = MessageAggregation::sightings(Some(a.hash.as_bytes()), Some(&a.encode()))
            .expect("parses");
        assert_eq!(
            (one.len(), one[0].sn, one[0].hash.to_string()),
            (1, 42, a.hash)
        );

        let reason = |value: &[u8]| reason_of(MessageAggregation::sightings(None, Some(value)));
        assert_eq!(reason(&[PACKED_V2]), "malformed", "no entries");
        assert_eq!(reason(&value[..value.len() - 1]), "malformed", "cut short");
        assert_eq!(
            reason(&[PACKED_V2, 0x01, 0x05, b'c']),
            "malformed",
            "client overruns"
        );
        assert_eq!(
            reason(&[PACKED_V2, 0x01, 0x01, b'c', 0x00]),
            "empty_message"
        );
        assert_eq!(reason(&[PACKED_V2, 0x00, 0x01, b'c', 0x01, b'm']), "bad_sn");
        assert_eq!(
            reason(&[PACKED_V2, 0x01, 0x01, b' ', 0x01, b'm']),
            "bad_client_id"
        );
        assert_eq!(
            reason(&[PACKED_V2, 0x01, 0x01, b'c', 0x01, 0xFF]),
            "malformed"
        );
        // One bad entry spoils the record, even after good ones.
        let mut spoiled = value.clone();
        spoiled.extend_from_slice(&[0x00, 0x01, b'c', 0x01, b'm']);
        assert_eq!(reason(&spoiled), "bad_sn");
        // A packed value is no single record, and no client message.
        assert_eq!(
            reason_of(MessageAggregation::parse(None, Some(&value))),
            "malformed"
        );
        assert_eq!(
            reason_of(ClientMessage::parse(Some(b"c0"), Some(&value))),
            "unsupported_version"
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
