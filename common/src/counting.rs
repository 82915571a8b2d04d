//! The counts in Redis: per-client counts written by the counter and per-message
//! counts written by the aggregator, as typed operations over the Lua scripts in
//! `lua/count_client.lua` and `lua/count_messages.lua`.
//!
//! Invariants upheld here: a client's sn is counted at most once, in sn order, and
//! only after every sn below it (sn == last_sn + 1); a message is counted at most
//! once per (message, client, sn), by a high-water mark that never expires
//! (invariant 4). Every write returns only after `WAIT` confirmed it on the
//! configured replicas (invariant 5), so the caller may then commit the offsets of
//! the records it applied. Writes go through the [`WriteCombiner`], so the
//! concurrent calls of one batch share one `WAIT` per round per master. Both
//! scripts are safe to re-run (the combiner and the cluster client may resend).

use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;

use crate::combiner::WriteCombiner;

/// Test-only failpoint (armed with `TALLY_FAILPOINT=counter.broken_dedup`, never by
/// configuration): the counter counts every duplicate record again. It exists so the
/// fault suite can prove that `tally verify` catches a broken dedup; the Lua scripts
/// themselves have no such switch. Only builds with the `failpoints` feature have
/// it (see [`crate::failpoint`]): a release binary holds neither the name nor the
/// sabotage.
#[cfg(feature = "failpoints")]
pub const BROKEN_DEDUP: &str = "counter.broken_dedup";
use crate::keys::{ClientId, Keys, MessageHash};
use crate::observe::{Condition, Probe};
use crate::redis::{RedisOpError, ReplicatedScript, Replication, ScriptCall};
use crate::schema;
use crate::settings::RedisSettings;

/// What happened to one client record in [`CountStore::apply_client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// sn == last_sn + 1: counted now.
    Applied,
    /// sn <= last_sn: counted before (a resend or a replay).
    Duplicate,
    /// sn > last_sn + 1: an earlier sn is missing; not counted.
    Gap,
}

impl Outcome {
    /// Whether the record goes on to `message_aggregation` (applied and duplicate
    /// records do: a replay after an aborted transaction must forward again).
    pub fn is_forwarded(self) -> bool {
        matches!(self, Self::Applied | Self::Duplicate)
    }

    /// The rule of `lua/count_client.lua` for one record, stated in Rust for readers
    /// that recompute counts from Kafka (`tally audit`): given the client's
    /// `last_sn` so far, `sn == last_sn + 1` is applied, `sn <= last_sn` a
    /// duplicate, anything above a gap. The script's only other behaviour —
    /// stopping a call before a record that would fill a gap behind a gap of the
    /// same call — changes where offsets are committed, not what is counted: the
    /// stopped records are processed again, in order, by the next batch.
    pub fn of(last_sn: u64, sn: u64) -> Self {
        if sn <= last_sn {
            Self::Duplicate
        } else if sn == last_sn + 1 {
            Self::Applied
        } else {
            Self::Gap
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            b'A' => Some(Self::Applied),
            b'D' => Some(Self::Duplicate),
            b'G' => Some(Self::Gap),
            _ => None,
        }
    }
}

/// One message's sightings in a batch, for [`CountStore::apply_messages`].
#[derive(Debug, Clone, Copy)]
pub struct MessageSightings<'a> {
    /// The message's hash.
    pub hash: &'a MessageHash,
    /// Its text, stored with its first count.
    pub text: &'a str,
    /// `(client, sn)` pairs in arrival order.
    pub sightings: &'a [(&'a str, u64)],
}

/// Typed access to the count keys.
#[derive(Clone)]
pub struct CountStore {
    conn: ClusterConnection,
    writes: WriteCombiner,
    keys: Keys,
    client: ReplicatedScript,
    message: ReplicatedScript,
}

impl CountStore {
    /// Connects to the cluster `settings` name, keys under its prefix, confirmed
    /// with its replication settings. `ready` follows "a master answers `PING`"
    /// for as long as the returned probe lives.
    pub async fn connect(
        settings: &RedisSettings,
        ready: Condition,
    ) -> Result<(Self, Probe), RedisOpError> {
        let conn = crate::redis::connect(settings).await?;
        let probe = crate::observe::redis_probe(conn.clone(), ready);
        let store = Self::new(
            conn,
            Keys::new(&settings.prefix),
            Replication::from_settings(settings),
        )
        .await?;
        Ok((store, probe))
    }

    /// Operations over `conn`, on keys from `keys`, confirmed with `replication`.
    pub async fn new(
        conn: ClusterConnection,
        keys: Keys,
        replication: Replication,
    ) -> Result<Self, RedisOpError> {
        Ok(Self {
            writes: WriteCombiner::new(conn.clone(), replication).await?,
            conn,
            keys,
            client: ReplicatedScript::new(include_str!("lua/count_client.lua")),
            message: ReplicatedScript::new(include_str!("lua/count_messages.lua")),
        })
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Applies a client's records of one batch, `sns` in offset order, and returns
    /// one outcome per processed record, in order.
    ///
    /// The result is shorter than `sns` when a gap was met and a later record would
    /// have filled it: that record and all after it were not processed, and the
    /// caller must not commit their offsets (see `lua/count_client.lua` for why).
    /// At least one record is always processed.
    pub async fn apply_client(
        &self,
        client: &ClientId,
        sns: &[u64],
    ) -> Result<Vec<Outcome>, RedisOpError> {
        if sns.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = ScriptCall::new();
        call.key(self.keys.client_count(client))
            .key(self.keys.client_last_sn(client));
        for sn in sns {
            call.arg(*sn);
        }
        let codes: String = self.writes.invoke(&self.client, call).await?;
        let outcomes = codes
            .bytes()
            .map(|c| {
                Outcome::from_code(c)
                    .ok_or_else(|| RedisOpError::Result(format!("count_client returned {codes:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if outcomes.is_empty() || outcomes.len() > sns.len() {
            return Err(RedisOpError::Result(format!(
                "count_client returned {} outcomes for {} records",
                outcomes.len(),
                sns.len()
            )));
        }
        #[cfg(feature = "failpoints")]
        if crate::failpoint::is_armed(BROKEN_DEDUP) {
            self.sabotage_dedup(client, &outcomes).await?;
        }
        Ok(outcomes)
    }

    /// The [`BROKEN_DEDUP`] sabotage: counts every duplicate again.
    #[cfg(feature = "failpoints")]
    async fn sabotage_dedup(
        &self,
        client: &ClientId,
        outcomes: &[Outcome],
    ) -> Result<(), RedisOpError> {
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == Outcome::Duplicate)
            .count();
        if duplicates > 0 {
            tracing::error!(
                client = client.as_str(),
                duplicates,
                "BROKEN DEDUP failpoint armed: counting duplicates again"
            );
            let _: i64 = self
                .conn
                .clone()
                .incr(self.keys.client_count(client), duplicates)
                .await?;
        }
        Ok(())
    }

    /// Counts one batch's sightings of the messages of one bucket (every hash in
    /// `messages` must share [`MessageHash::bucket`]): each `(client, sn)` of a
    /// message, in arrival order, counts only if its sn is above that client's
    /// high-water mark for the message; a message's text is stored with its first
    /// count. One script call for the whole bucket. Returns how many counted.
    pub async fn apply_messages(
        &self,
        messages: &[MessageSightings<'_>],
    ) -> Result<u64, RedisOpError> {
        let mut call = ScriptCall::new();
        let mut bucket = None;
        for m in messages.iter().filter(|m| !m.sightings.is_empty()) {
            if *bucket.get_or_insert(m.hash.bucket()) != m.hash.bucket() {
                return Err(RedisOpError::Result(format!(
                    "count_messages called with messages of two buckets ({} and {})",
                    messages[0].hash, m.hash
                )));
            }
            call.key(self.keys.message(m.hash))
                .arg(m.text)
                .arg(m.sightings.len());
            for (client, sn) in m.sightings {
                call.arg(*client).arg(*sn);
            }
        }
        if bucket.is_none() {
            return Ok(0);
        }
        self.writes.invoke(&self.message, call).await
    }

    /// Messages counted for a client (0 when none).
    pub async fn client_count(&self, client: &ClientId) -> Result<u64, RedisOpError> {
        self.get_number(self.keys.client_count(client)).await
    }

    /// Highest sn counted for a client (0 when none).
    pub async fn client_last_sn(&self, client: &ClientId) -> Result<u64, RedisOpError> {
        self.get_number(self.keys.client_last_sn(client)).await
    }

    /// Times a message was counted over all clients (0 when never).
    pub async fn message_count(&self, hash: &MessageHash) -> Result<u64, RedisOpError> {
        let value: Option<u64> = self
            .conn
            .clone()
            .hget(self.keys.message(hash), schema::message::COUNT)
            .await?;
        Ok(value.unwrap_or_default())
    }

    /// The stored text of a message, if it was ever counted.
    pub async fn message_text(&self, hash: &MessageHash) -> Result<Option<String>, RedisOpError> {
        Ok(self
            .conn
            .clone()
            .hget(self.keys.message(hash), schema::message::TEXT)
            .await?)
    }

    /// The high-water mark of (message, client): the highest sn counted (0 when none).
    pub async fn message_seen(
        &self,
        hash: &MessageHash,
        client: &str,
    ) -> Result<u64, RedisOpError> {
        let mark: Option<u64> = self
            .conn
            .clone()
            .hget(self.keys.message(hash), schema::message::mark(client))
            .await?;
        Ok(mark.unwrap_or_default())
    }

    async fn get_number(&self, key: String) -> Result<u64, RedisOpError> {
        let value: Option<u64> = self.conn.clone().get(key).await?;
        Ok(value.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn the_rule_applies_only_the_next_sn() {
        assert_eq!(Outcome::of(0, 1), Outcome::Applied);
        assert_eq!(Outcome::of(41, 42), Outcome::Applied);
        assert_eq!(Outcome::of(42, 42), Outcome::Duplicate);
        assert_eq!(Outcome::of(42, 1), Outcome::Duplicate);
        assert_eq!(Outcome::of(42, 44), Outcome::Gap);
        assert_eq!(Outcome::of(0, 2), Outcome::Gap);
    }
}
