//! Identifiers and the Redis key layout: the one place key names are spelled.
//!
//! Invariant: every key of one client carries the hash tag `{<client-id>}` and every
//! message key the tag `{<bucket>}` — the first [`MESSAGE_BUCKET_HEX_DIGITS`] hex
//! digits of its hash — so each Lua script touches keys of a single Redis Cluster
//! slot and runs atomically on one master, and one script call can count all of a
//! batch's messages of one bucket. A client id and the prefix therefore may never
//! contain `{` or `}`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Longest client id accepted in `HELLO`.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Identity of a client connection: chosen by the client with `HELLO <id>`, or
/// derived from its peer address (`ip:port`, `[v6]:port`) when it says no HELLO.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

/// Why a string is not a client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    /// Zero characters.
    #[error("client id is empty")]
    Empty,
    /// Over [`MAX_CLIENT_ID_LEN`] bytes.
    #[error("client id is {0} characters long (at most 64)")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9._:-]`.
    #[error("client id contains {0:?} (allowed: A-Z a-z 0-9 . _ : -)")]
    InvalidChar(char),
}

fn is_hello_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl ClientId {
    /// Parses an id as given in `HELLO`: 1–64 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(id: &str) -> Result<Self, ClientIdError> {
        if id.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if id.len() > MAX_CLIENT_ID_LEN {
            return Err(ClientIdError::TooLong(id.chars().count()));
        }
        if let Some(bad) = id.chars().find(|&c| !is_hello_char(c)) {
            return Err(ClientIdError::InvalidChar(bad));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id of a client that sent no HELLO: its peer address as `ip:port`, with
    /// IPv6 addresses in brackets (`[::1]:50000`), as `SocketAddr` displays them.
    pub fn from_peer(peer: SocketAddr) -> Self {
        Self(peer.to_string())
    }

    /// Accepts either form: what a record read back from Kafka may carry.
    pub fn from_record(id: &str) -> Result<Self, ClientIdError> {
        match Self::parse(id) {
            Ok(id) => Ok(id),
            Err(e) => match id.parse::<SocketAddr>() {
                Ok(peer) if peer.to_string() == id => Ok(Self::from_peer(peer)),
                _ => Err(e),
            },
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hex digits of a message hash that form its key's hash tag: 256 buckets, so a
/// full batch of 20,000 distinct messages needs ~256 count calls, not 20,000 (and
/// a 5,000-record one still ~20 messages per call), while the buckets still spread
/// over the cluster's masters.
pub const MESSAGE_BUCKET_HEX_DIGITS: usize = 2;

/// How many buckets there are: `16 ^ MESSAGE_BUCKET_HEX_DIGITS`.
pub const MESSAGE_BUCKETS: usize = 1 << (4 * MESSAGE_BUCKET_HEX_DIGITS);

/// Stable 128-bit hash of a message's bytes (XXH3-128, whose output is fixed by its
/// specification), shown as 32 lowercase hex digits. It names the message's Redis
/// keys and is the key of `message_aggregation` records, so it must never change:
/// a unit test pins known values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageHash(u128);

impl MessageHash {
    /// Hashes the message exactly as received (after the line ending is removed).
    pub fn of(message: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_128(message))
    }

    /// The message's bucket: its first [`MESSAGE_BUCKET_HEX_DIGITS`] hex digits.
    /// The aggregator counts a batch's messages of one bucket in one script call.
    pub fn bucket(self) -> u16 {
        (self.0 >> (128 - 4 * MESSAGE_BUCKET_HEX_DIGITS)) as u16
    }

    /// The hash as a number (for bucketing and compact storage).
    pub fn to_bits(self) -> u128 {
        self.0
    }

    /// The hash whose [`MessageHash::to_bits`] is `bits`.
    pub fn from_bits(bits: u128) -> Self {
        Self(bits)
    }
}

impl fmt::Display for MessageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a string is not a message hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message hash must be 32 lowercase hex digits, got {0:?}")]
pub struct MessageHashError(pub String);

impl FromStr for MessageHash {
    type Err = MessageHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed =
            s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match u128::from_str_radix(s, 16) {
            Ok(v) if well_formed => Ok(Self(v)),
            _ => Err(MessageHashError(s.to_owned())),
        }
    }
}

/// Whether `prefix` can start tally's keys: non-empty, no hash-tag braces, no spaces.
pub fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Builds every Redis key tally uses, under one configurable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (validated by the settings; see [`is_valid_prefix`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix, e.g. `tally`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self, id: &ClientId, what: &str) -> String {
        format!("{}:c:{{{}}}:{what}", self.prefix, id.as_str())
    }

    /// Stream of a client's stored messages not yet confirmed in Kafka; one entry
    /// per stashed batch, id `<last sn>-0` (`crate::schema::stash_entry`).
    pub fn client_stash(&self, id: &ClientId) -> String {
        self.client(id, "stash")
    }

    /// Hash `sn`, `flushed`, `owner`, `epoch` of a client's stash.
    pub fn client_meta(&self, id: &ClientId) -> String {
        self.client(id, "meta")
    }

    /// Messages counted for a client (written by the counter).
    pub fn client_count(&self, id: &ClientId) -> String {
        self.client(id, "count")
    }

    /// Highest sn counted for a client (written by the counter).
    pub fn client_last_sn(&self, id: &ClientId) -> String {
        self.client(id, "last_sn")
    }

    /// The hash of one message text (written by the aggregator): its count, its
    /// text and its dedup marks (fields in `common::schema::message`), as
    /// `<prefix>:m:{<bucket>}<hash>`. One key per message, so a count is one
    /// `HGET <key> count`; the bucket tag puts a bucket's messages in one slot.
    pub fn message(&self, hash: &MessageHash) -> String {
        let (bucket, width) = (hash.bucket(), MESSAGE_BUCKET_HEX_DIGITS);
        format!("{}:m:{{{bucket:0width$x}}}{hash}", self.prefix)
    }

    /// Sorted set of live producer instances, scored by last heartbeat: ms since
    /// the epoch by the clock of the Redis server holding it, never a producer's
    /// (`lua/producer_registry.lua`).
    pub fn producers(&self) -> String {
        format!("{}:producers", self.prefix)
    }

    /// Set of the clients a producer instance owns, so survivors can adopt them
    /// when it dies. Tagged by instance, so one instance's set lives in one slot.
    pub fn producer_clients(&self, instance: &str) -> String {
        format!("{}:p:{{{instance}}}:clients", self.prefix)
    }

    /// A running instance's registry entry (`common::registry`): its role, id and
    /// `/metrics` address, with a time-to-live. One key per instance, each on its
    /// own, so no hash tag.
    pub fn instance(&self, role: &str, instance: &str) -> String {
        format!("{}{role}:{instance}", self.instances())
    }

    /// What every instance entry's key starts with: `<prefix>:i:`.
    pub fn instances(&self) -> String {
        format!("{}:i:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_ids_accept_the_documented_alphabet() {
        for ok in [
            "a",
            "client-7",
            "host.example:42",
            "A_b.c:d-e",
            &"x".repeat(64),
        ] {
            assert_eq!(ClientId::parse(ok).expect(ok).as_str(), ok);
        }
        assert_eq!(ClientId::parse(""), Err(ClientIdError::Empty));
        assert_eq!(
            ClientId::parse(&"x".repeat(65)),
            Err(ClientIdError::TooLong(65))
        );
        assert_eq!(ClientId::parse("a b"), Err(ClientIdError::InvalidChar(' ')));
        assert_eq!(
            ClientId::parse("a{b}"),
            Err(ClientIdError::InvalidChar('{'))
        );
        assert_eq!(ClientId::parse("é"), Err(ClientIdError::InvalidChar('é')));
    }

    #[test]
    fn peer_ids_format_ipv4_and_ipv6() {
        let v4: SocketAddr = "10.1.2.3:5000".parse().expect("v4");
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().expect("v6");
        assert_eq!(ClientId::from_peer(v4).as_str(), "10.1.2.3:5000");
        assert_eq!(ClientId::from_peer(v6).as_str(), "[2001:db8::1]:5000");
        // Both forms read back from a record.
        assert!(ClientId::from_record("[2001:db8::1]:5000").is_ok());
        assert!(ClientId::from_record("client-7").is_ok());
        assert!(ClientId::from_record("[2001:db8::1]").is_err());
        assert!(ClientId::from_record("[::ffff:1.2.3.4]:1 ").is_err());
    }

    #[test]
    fn client_keys_share_one_hash_tag() {
        let keys = Keys::new("tally");
        let id = ClientId::parse("host.example:42").expect("id");
        assert_eq!(keys.client_stash(&id), "tally:c:{host.example:42}:stash");
        assert_eq!(keys.client_meta(&id), "tally:c:{host.example:42}:meta");
        assert_eq!(keys.client_count(&id), "tally:c:{host.example:42}:count");
        assert_eq!(
            keys.client_last_sn(&id),
            "tally:c:{host.example:42}:last_sn"
        );
        let v6 = ClientId::from_peer("[::1]:7".parse().expect("v6"));
        assert_eq!(keys.client_count(&v6), "tally:c:{[::1]:7}:count");
        for key in [
            keys.client_stash(&id),
            keys.client_meta(&id),
            keys.client_count(&id),
            keys.client_last_sn(&id),
        ] {
            assert_eq!(hash_tag(&key), Some("host.example:42"), "{key}");
        }
    }

    #[test]
    fn message_keys_share_one_hash_tag_and_prefix_is_configurable() {
        let keys = Keys::new("test-run.1");
        let h = MessageHash::of(b"It is a truth universally acknowledged");
        let hex = h.to_string();
        let key = keys.message(&h);
        // The tag is the hash's first digits; the whole hash follows it.
        assert_eq!(key, format!("test-run.1:m:{{{}}}{hex}", &hex[..2]));
        assert_eq!(hash_tag(&key), Some(&hex[..MESSAGE_BUCKET_HEX_DIGITS]));
        assert_eq!(format!("{:02x}", h.bucket()), hex[..2]);
        // Texts whose hashes share the first digits share a slot.
        let other = (0u32..)
            .map(|i| MessageHash::of(i.to_string().as_bytes()))
            .find(|o| o.bucket() == h.bucket() && *o != h)
            .expect("a hash in the same bucket");
        assert_eq!(hash_tag(&keys.message(&other)), hash_tag(&key));
        assert_eq!(keys.producers(), "test-run.1:producers");
        assert_eq!(keys.producer_clients("p-1"), "test-run.1:p:{p-1}:clients");
        assert_eq!(keys.instance("counter", "c-1"), "test-run.1:i:counter:c-1");
        assert!(keys
            .instance("counter", "c-1")
            .starts_with(&keys.instances()));
    }

    /// Redis Cluster's rule: the tag is between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    #[test]
    fn hash_is_stable_forever() {
        // These values are part of the data format: Redis keys and Kafka record keys
        // already written depend on them. Never change them.
        assert_eq!(
            MessageHash::of(b"").to_string(),
            "99aa06d3014798d86001c324468d497f"
        );
        assert_eq!(
            MessageHash::of(b"hello").to_string(),
            "b5e9c1ad071b3e7fc779cfaa5e523818"
        );
        assert_eq!(
            MessageHash::of("Mr. Darcy’s".as_bytes()).to_string(),
            "0bd1cc0effc5784a8972a762ef41e01f"
        );
    }

    #[test]
    fn hash_round_trips_through_text_and_rejects_malformed() {
        let h = MessageHash::of(b"x");
        assert_eq!(h.to_string().parse::<MessageHash>(), Ok(h));
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert!(bad.parse::<MessageHash>().is_err(), "{bad:?}");
        }
        assert_eq!(MessageHash::of(b"a"), MessageHash::of(b"a"));
        assert_ne!(MessageHash::of(b"a"), MessageHash::of(b"a\r"));
    }

    #[test]
    fn prefixes_without_braces_only() {
        assert!(is_valid_prefix("tally"));
        assert!(is_valid_prefix("it-3f2a.run_1"));
        assert!(!is_valid_prefix(""));
        assert!(!is_valid_prefix("a{b"));
        assert!(!is_valid_prefix("a b"));
    }
}

/// Redis Cluster slot of a key: CRC16/XMODEM of its hash tag (or the whole key
/// when it has none) modulo 16384, as Redis computes it.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod slot_tests {
    use super::slot;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        // CRC16/XMODEM check value of "123456789" is 0x31C3 (below 16384).
        assert_eq!(slot(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty first tag means no tag"
        );
    }
}
