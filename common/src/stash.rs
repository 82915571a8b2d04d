//! The producer's Redis state: per-client stashes with their owner and epoch, the
//! ownership sets and the heartbeat registry, as typed operations over the Lua
//! scripts in `lua/stash_*.lua`.
//!
//! Invariants upheld here: sn assignment and append are one script per batch
//! (1); `flushed` only moves forward and the stash is trimmed only up to it (3);
//! every write is fenced by owner and epoch, claimed by compare-and-set (6).
//! Appends and claims are confirmed on a replica (`WAIT`) before they return (2).
//! Liveness is judged on one clock, the Redis server's that holds the registry:
//! heartbeats are stamped with its time and compared with its time, never one
//! host's clock with another's ([`ProducerRegistry`]).

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;

use crate::combiner::WriteCombiner;
use crate::keys::{ClientId, Keys};
use crate::redis::{RedisOpError, ReplicatedScript, Replication, ScriptCall};
use crate::schema::{claim_mode, meta, stash_entry};

/// Ownership and progress of one client's stash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The fencing epoch this instance now writes with.
    pub epoch: u64,
    /// Last assigned sn.
    pub sn: u64,
    /// Highest sn confirmed in Kafka without gaps.
    pub flushed: u64,
}

/// Result of trying to adopt another instance's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// This instance owns the client now.
    Adopted(Claim),
    /// Someone else owns it (it reconnected elsewhere, or another survivor won).
    OwnedElsewhere {
        /// The current owner ("" when released).
        owner: String,
    },
}

/// One stored message, as read back from a stash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StashedMessage {
    /// Its sequence number.
    pub sn: u64,
    /// The text.
    pub msg: String,
    /// When it was stored, ms since the epoch.
    pub ts: i64,
}

/// The stash fields as stored, for tools and adoption.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StashMeta {
    /// Owning instance, empty when released.
    pub owner: String,
    /// Fencing epoch.
    pub epoch: u64,
    /// Last assigned sn.
    pub sn: u64,
    /// Highest sn confirmed in Kafka without gaps.
    pub flushed: u64,
}

/// Why a client's meta could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaReadError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisOpError),
    /// A numeric field holds something tally never writes there.
    #[error("{key} field {field} holds {value:?}, not a number")]
    NotANumber {
        /// The meta key.
        key: String,
        /// The field.
        field: &'static str,
        /// What it holds.
        value: String,
    },
}

impl From<MetaReadError> for RedisOpError {
    fn from(e: MetaReadError) -> Self {
        match e {
            MetaReadError::Redis(e) => e,
            junk @ MetaReadError::NotANumber { .. } => RedisOpError::Result(junk.to_string()),
        }
    }
}

impl StashMeta {
    /// Reads a client's meta fields (all zero / empty for an unknown client). The
    /// one reader of the meta hash: the producer and the CLI both come here.
    pub async fn read(
        conn: &mut ClusterConnection,
        keys: &Keys,
        client: &ClientId,
    ) -> Result<Self, MetaReadError> {
        let key = keys.client_meta(client);
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&meta::ALL)
            .query_async(conn)
            .await
            .map_err(RedisOpError::from)?;
        Self::decode(&key, values)
    }

    /// Decodes an `HMGET` reply in [`meta::ALL`] order.
    fn decode(key: &str, values: Vec<Option<String>>) -> Result<Self, MetaReadError> {
        let field = |at: usize| values.get(at).cloned().flatten();
        let number = |at: usize| -> Result<u64, MetaReadError> {
            match field(at) {
                None => Ok(0),
                Some(value) => value.parse().map_err(|_| MetaReadError::NotANumber {
                    key: key.to_owned(),
                    field: meta::ALL[at],
                    value,
                }),
            }
        };
        Ok(Self {
            owner: field(0).unwrap_or_default(),
            epoch: number(1)?,
            sn: number(2)?,
            flushed: number(3)?,
        })
    }
}

/// Heartbeats an instance may miss before it counts as dead.
pub const MISSED_HEARTBEATS: u64 = 3;

/// An instance and its last heartbeat (ms since the epoch, server time).
pub type Beat = (String, i64);

/// The producer registry as the Redis server holding it saw it at one moment:
/// every instance's last heartbeat and the server's time then, all on the
/// server's clock (`lua/producer_registry.lua` stamps each heartbeat with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRegistry {
    /// The server's time at the read, ms since the epoch.
    pub now_ms: i64,
    /// Every registered instance and its last heartbeat (server time, ms since
    /// the epoch; 0: it shut down leaving clients to adopt).
    pub beats: Vec<Beat>,
}

impl ProducerRegistry {
    /// Reads the registry and the server's time, writing nothing (for tools).
    pub async fn read(conn: &mut ClusterConnection, keys: &Keys) -> Result<Self, RedisOpError> {
        Self::call(conn, keys, "").await
    }

    /// Records `instance`'s heartbeat at the server's time ("" records nothing),
    /// then reads the registry in the same script.
    async fn call(
        conn: &mut ClusterConnection,
        keys: &Keys,
        instance: &str,
    ) -> Result<Self, RedisOpError> {
        let mut call = ScriptCall::new();
        call.key(keys.producers()).arg(instance);
        // A lost heartbeat costs one interval at most: not worth a WAIT.
        let no_wait = Replication {
            replicas: 0,
            timeout: Duration::ZERO,
        };
        let reply: Vec<redis::Value> = ReplicatedScript::new(PRODUCER_REGISTRY_LUA)
            .invoke(conn, &call, no_wait)
            .await?;
        Self::decode(&reply)
    }

    /// Decodes the script's reply: the server's time, then instance/heartbeat pairs.
    fn decode(reply: &[redis::Value]) -> Result<Self, RedisOpError> {
        let bad = |what: String| RedisOpError::Result(format!("producer registry: {what}"));
        let (now, pairs) = reply
            .split_first()
            .ok_or_else(|| bad("empty reply".into()))?;
        let now_ms: i64 = redis::from_redis_value_ref(now).map_err(|e| bad(e.to_string()))?;
        if pairs.len() % 2 != 0 {
            return Err(bad(format!("{} values after the time", pairs.len())));
        }
        let beats = pairs
            .chunks(2)
            .map(|pair| {
                let name: String =
                    redis::from_redis_value_ref(&pair[0]).map_err(|e| bad(e.to_string()))?;
                // Scores come back as text; Redis may spell a whole number as a float.
                let score: f64 =
                    redis::from_redis_value_ref(&pair[1]).map_err(|e| bad(e.to_string()))?;
                Ok((name, score as i64))
            })
            .collect::<Result<_, RedisOpError>>()?;
        Ok(Self { now_ms, beats })
    }

    /// How long ago `beat` was by the server's clock (0 for one stamped later than
    /// this read, as after a failover to a replica whose clock is behind).
    pub fn age_ms(&self, beat: i64) -> u64 {
        u64::try_from(self.now_ms.saturating_sub(beat)).unwrap_or(0)
    }

    /// Whether an instance that beats every `interval_ms` and last beat at `beat`
    /// is alive: it has missed fewer than [`MISSED_HEARTBEATS`] beats, and did not
    /// leave (a zeroed heartbeat).
    pub fn is_alive(&self, beat: i64, interval_ms: u64) -> bool {
        beat > 0 && self.age_ms(beat) <= MISSED_HEARTBEATS.saturating_mul(interval_ms)
    }

    /// The other instances than `me`, split into (alive, dead).
    pub fn others_by_liveness(&self, me: &str, interval_ms: u64) -> (Vec<Beat>, Vec<Beat>) {
        self.beats
            .iter()
            .filter(|(name, _)| name != me)
            .cloned()
            .partition(|(_, beat)| self.is_alive(*beat, interval_ms))
    }
}

/// The registry script: heartbeat at the server's time, and the read.
const PRODUCER_REGISTRY_LUA: &str = include_str!("lua/producer_registry.lua");

/// Typed access to the producer's keys. Replicated writes go through a
/// [`WriteCombiner`], so concurrent connections share one `WAIT` per round.
#[derive(Clone)]
pub struct StashStore {
    conn: ClusterConnection,
    writes: WriteCombiner,
    keys: Keys,
    replication: Replication,
    claim: ReplicatedScript,
    append: ReplicatedScript,
    flushed: ReplicatedScript,
    release: ReplicatedScript,
}

fn parse_claim(values: &[u64]) -> Result<Claim, RedisOpError> {
    match values {
        [_, epoch, sn, flushed, ..] => Ok(Claim {
            epoch: *epoch,
            sn: *sn,
            flushed: *flushed,
        }),
        other => Err(RedisOpError::Result(format!("claim returned {other:?}"))),
    }
}

impl StashStore {
    /// Operations over `conn`, writing keys from `keys`, confirming with `replication`.
    pub async fn new(
        conn: ClusterConnection,
        keys: Keys,
        replication: Replication,
    ) -> Result<Self, RedisOpError> {
        Ok(Self {
            writes: WriteCombiner::new(conn.clone(), replication).await?,
            conn,
            keys,
            replication,
            claim: ReplicatedScript::new(include_str!("lua/stash_claim.lua")),
            append: ReplicatedScript::new(include_str!("lua/stash_append.lua")),
            flushed: ReplicatedScript::new(include_str!("lua/stash_flushed.lua")),
            release: ReplicatedScript::new(include_str!("lua/stash_release.lua")),
        })
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Claims a client that connected to `instance`: always succeeds, fencing any
    /// previous owner (a newer connection wins).
    pub async fn take(&self, client: &ClientId, instance: &str) -> Result<Claim, RedisOpError> {
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .arg(instance)
            .arg(claim_mode::TAKE);
        let values: Vec<u64> = self.writes.invoke(&self.claim, call).await?;
        parse_claim(&values)
    }

    /// Adopts a client from `from` (a dead instance, or this instance's previous
    /// run), only if `from` still owns it at the epoch read just before.
    pub async fn adopt(
        &self,
        client: &ClientId,
        instance: &str,
        from: &str,
    ) -> Result<Adoption, RedisOpError> {
        let meta = self.meta(client).await?;
        if meta.owner != from {
            return Ok(Adoption::OwnedElsewhere { owner: meta.owner });
        }
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .arg(instance)
            .arg(claim_mode::ADOPT)
            .arg(from)
            .arg(meta.epoch);
        let values: Vec<redis::Value> = self.writes.invoke(&self.claim, call).await?;
        let numbers: Vec<u64> = values
            .iter()
            .take(4)
            .map(redis::from_redis_value_ref)
            .collect::<Result<_, _>>()
            .map_err(|e| RedisOpError::Result(e.to_string()))?;
        if numbers.first() == Some(&1) {
            return Ok(Adoption::Adopted(parse_claim(&numbers)?));
        }
        let owner = values
            .get(4)
            .map(redis::from_redis_value_ref::<String>)
            .transpose()
            .map_err(|e| RedisOpError::Result(e.to_string()))?
            .unwrap_or_default();
        Ok(Adoption::OwnedElsewhere { owner })
    }

    /// Appends a batch as one stash entry, numbering it from `last_sn + 1`;
    /// returns the first sn. Fails with [`RedisOpError::Fenced`] when another
    /// claim came since, and refuses (writing nothing) a message that holds the
    /// entry's separator, which the protocol never delivers.
    pub async fn append(
        &self,
        client: &ClientId,
        instance: &str,
        epoch: u64,
        last_sn: u64,
        ts: i64,
        messages: &[impl AsRef<str>],
    ) -> Result<u64, RedisOpError> {
        let joined = join_entry(messages)?;
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .key(self.keys.client_stash(client))
            .arg(instance)
            .arg(epoch)
            .arg(last_sn)
            .arg(ts)
            .arg(messages.len())
            .arg(joined);
        self.writes.invoke(&self.append, call).await
    }

    /// Records that all sns up to `flushed` are in Kafka and trims the stash; returns
    /// the stored value. Not `WAIT`ed: losing it in a failover only causes a resend.
    pub async fn commit_flushed(
        &self,
        client: &ClientId,
        instance: &str,
        epoch: u64,
        flushed: u64,
    ) -> Result<u64, RedisOpError> {
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .key(self.keys.client_stash(client))
            .arg(instance)
            .arg(epoch)
            .arg(flushed);
        let no_wait = Replication {
            replicas: 0,
            ..self.replication
        };
        self.flushed
            .invoke(&mut self.conn.clone(), &call, no_wait)
            .await
    }

    /// Gives a fully flushed client up; false when it is not ours or not flushed.
    pub async fn release(
        &self,
        client: &ClientId,
        instance: &str,
        epoch: u64,
    ) -> Result<bool, RedisOpError> {
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .arg(instance)
            .arg(epoch);
        let released: i64 = self.writes.invoke(&self.release, call).await?;
        Ok(released == 1)
    }

    /// Reads up to `count` stored messages after `after_sn`, in sn order.
    ///
    /// An entry holds one batch and its id is the batch's last sn, so the entries
    /// after `after_sn` are those with a larger id; the first may begin at or
    /// before `after_sn` (a batch flushed in part), and its earlier messages are
    /// skipped. At most `count` entries are read: the unflushed rest of a stash,
    /// which the producer's backlog limits bound.
    pub async fn read(
        &self,
        client: &ClientId,
        after_sn: u64,
        count: usize,
    ) -> Result<Vec<StashedMessage>, RedisOpError> {
        let reply: redis::streams::StreamRangeReply = self
            .conn
            .clone()
            .xrange_count(
                self.keys.client_stash(client),
                format!("({after_sn}-0"),
                "+",
                count,
            )
            .await?;
        let mut messages = Vec::new();
        for entry in reply.ids {
            let last = entry
                .id
                .split_once('-')
                .and_then(|(sn, _)| sn.parse().ok())
                .ok_or_else(|| RedisOpError::Result(format!("stash entry id {}", entry.id)))?;
            let joined: String = entry.get(stash_entry::MESSAGE).ok_or_else(|| {
                RedisOpError::Result(format!(
                    "stash entry {last} has no {}",
                    stash_entry::MESSAGE
                ))
            })?;
            let ts: i64 = entry.get(stash_entry::TIMESTAMP).unwrap_or_default();
            messages.extend(split_entry(last, &joined, ts)?.filter(|m| m.sn > after_sn));
            if messages.len() >= count {
                messages.truncate(count);
                break;
            }
        }
        Ok(messages)
    }

    /// The stash's meta fields (all zero / empty for an unknown client).
    pub async fn meta(&self, client: &ClientId) -> Result<StashMeta, RedisOpError> {
        Ok(StashMeta::read(&mut self.conn.clone(), &self.keys, client).await?)
    }

    /// Records `instance` as alive now by the Redis server's clock, and returns the
    /// registry as of that moment.
    pub async fn heartbeat(&self, instance: &str) -> Result<ProducerRegistry, RedisOpError> {
        ProducerRegistry::call(&mut self.conn.clone(), &self.keys, instance).await
    }

    /// The registry and the server's time, writing nothing.
    pub async fn producers(&self) -> Result<ProducerRegistry, RedisOpError> {
        ProducerRegistry::read(&mut self.conn.clone(), &self.keys).await
    }

    /// Marks `instance` as gone but still owning clients (a heartbeat of 0), so
    /// survivors adopt them at once instead of after [`MISSED_HEARTBEATS`].
    pub async fn leave_for_adoption(&self, instance: &str) -> Result<(), RedisOpError> {
        let _: i64 = self
            .conn
            .clone()
            .zadd(self.keys.producers(), instance, 0)
            .await?;
        Ok(())
    }

    /// Removes an instance from the registry (after it shut down cleanly, or after
    /// survivors adopted all its clients).
    pub async fn forget_producer(&self, instance: &str) -> Result<(), RedisOpError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.keys.producers(), instance).await?;
        let _: i64 = conn.del(self.keys.producer_clients(instance)).await?;
        Ok(())
    }

    /// Notes that `instance` owns `client` (so survivors find it).
    pub async fn add_owned(&self, instance: &str, client: &ClientId) -> Result<(), RedisOpError> {
        let _: i64 = self
            .conn
            .clone()
            .sadd(self.keys.producer_clients(instance), client.as_str())
            .await?;
        Ok(())
    }

    /// Notes that `instance` no longer owns `client`.
    pub async fn remove_owned(
        &self,
        instance: &str,
        client: &ClientId,
    ) -> Result<(), RedisOpError> {
        let _: i64 = self
            .conn
            .clone()
            .srem(self.keys.producer_clients(instance), client.as_str())
            .await?;
        Ok(())
    }

    /// The clients `instance` is recorded as owning.
    pub async fn owned(&self, instance: &str) -> Result<Vec<String>, RedisOpError> {
        Ok(self
            .conn
            .clone()
            .smembers(self.keys.producer_clients(instance))
            .await?)
    }
}

/// A batch's messages as one stash entry's text; refuses a message that holds
/// the separator (it would split into two on the way back).
fn join_entry(messages: &[impl AsRef<str>]) -> Result<String, RedisOpError> {
    let bytes: usize = messages.iter().map(|m| m.as_ref().len() + 1).sum();
    let mut joined = String::with_capacity(bytes);
    for (i, m) in messages.iter().enumerate() {
        let m = m.as_ref();
        if m.contains(stash_entry::SEPARATOR) {
            return Err(RedisOpError::Refused {
                code: crate::schema::refusal::BAD_ARGUMENT.to_owned(),
                detail: format!("message {} of the batch holds a line break", i + 1),
            });
        }
        if i > 0 {
            joined.push(stash_entry::SEPARATOR);
        }
        joined.push_str(m);
    }
    Ok(joined)
}

/// The messages of the stash entry whose id is `last` (its last sn), numbered
/// back from it. An entry of one message is also what stashes held before
/// entries held batches (`<sn>-0`, one text), so those read the same.
fn split_entry(
    last: u64,
    joined: &str,
    ts: i64,
) -> Result<impl Iterator<Item = StashedMessage> + '_, RedisOpError> {
    let count = joined.split(stash_entry::SEPARATOR).count() as u64;
    if count > last {
        return Err(RedisOpError::Result(format!(
            "stash entry {last} holds {count} messages, more than sns up to it"
        )));
    }
    let first = last + 1 - count;
    Ok((first..)
        .zip(joined.split(stash_entry::SEPARATOR))
        .map(move |(sn, msg)| StashedMessage {
            sn,
            msg: msg.to_owned(),
            ts,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_entry_splits_back_into_its_messages_numbered_up_to_its_id() {
        let joined = join_entry(&["a", "", "c d"]).expect("join");
        assert_eq!(joined, "a\n\nc d");
        let back: Vec<_> = split_entry(7, &joined, 9).expect("split").collect();
        let sns: Vec<u64> = back.iter().map(|m| m.sn).collect();
        let texts: Vec<&str> = back.iter().map(|m| m.msg.as_str()).collect();
        assert_eq!(sns, [5, 6, 7]);
        assert_eq!(texts, ["a", "", "c d"]);
        assert!(back.iter().all(|m| m.ts == 9));
    }

    #[test]
    fn an_entry_of_one_message_reads_as_before_batches() {
        let back: Vec<_> = split_entry(42, "hello", 1).expect("split").collect();
        assert_eq!(
            back,
            [StashedMessage {
                sn: 42,
                msg: "hello".into(),
                ts: 1
            }]
        );
    }

    #[test]
    fn a_message_with_a_line_break_is_refused_and_an_impossible_entry_is_an_error() {
        assert!(matches!(
            join_entry(&["ok", "two\nlines"]),
            Err(RedisOpError::Refused { code, .. }) if code == crate::schema::refusal::BAD_ARGUMENT
        ));
        assert!(split_entry(1, "a\nb", 0).is_err());
    }

    fn bulk(text: &str) -> redis::Value {
        redis::Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn registry_decodes_the_server_time_and_the_beats() {
        let reply = [
            redis::Value::Int(1_795_668_563_341),
            bulk("p-0"),
            bulk("0"),
            bulk("p-1"),
            bulk("1795668562000"),
            bulk("p-2"),
            bulk("1.795668563341e+12"),
        ];
        let registry = ProducerRegistry::decode(&reply).expect("decodes");
        assert_eq!(registry.now_ms, 1_795_668_563_341);
        assert_eq!(
            registry.beats,
            [
                ("p-0".to_owned(), 0),
                ("p-1".to_owned(), 1_795_668_562_000),
                ("p-2".to_owned(), 1_795_668_563_341)
            ]
        );
        assert!(ProducerRegistry::decode(&[]).is_err());
        assert!(ProducerRegistry::decode(&[redis::Value::Int(1), bulk("p-0")]).is_err());
        assert!(ProducerRegistry::decode(&[bulk("soon")]).is_err());
    }

    #[test]
    fn liveness_is_judged_on_the_server_clock_alone() {
        let interval = 1_000;
        let registry = ProducerRegistry {
            now_ms: 100_000,
            beats: vec![
                ("me".into(), 100_000),
                ("fresh".into(), 99_500),
                ("at-limit".into(), 97_000),
                ("silent".into(), 96_999),
                ("left".into(), 0),
                // Stamped after this read (a failover to a replica whose clock is
                // behind): age 0, alive.
                ("ahead".into(), 100_400),
            ],
        };
        assert_eq!(registry.age_ms(99_500), 500);
        assert_eq!(registry.age_ms(100_400), 0);
        assert_eq!(registry.age_ms(0), 100_000);
        let (live, dead) = registry.others_by_liveness("me", interval);
        let names = |v: &[Beat]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&live), ["fresh", "at-limit", "ahead"]);
        assert_eq!(names(&dead), ["silent", "left"]);
        assert!(
            !registry.is_alive(0, u64::MAX),
            "a zeroed heartbeat is never alive"
        );
    }

    #[test]
    fn meta_decodes_missing_fields_as_zero_and_rejects_junk() {
        let key = "tally:c:{c}:meta";
        assert_eq!(
            StashMeta::decode(key, vec![None, None, None, None]).expect("empty"),
            StashMeta::default()
        );
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            StashMeta::decode(key, vec![some("p-1"), some("3"), some("10"), some("7")])
                .expect("full"),
            StashMeta {
                owner: "p-1".into(),
                epoch: 3,
                sn: 10,
                flushed: 7
            }
        );
        match StashMeta::decode(key, vec![None, some("1"), some("x"), None]) {
            Err(MetaReadError::NotANumber { field, value, .. }) => {
                assert_eq!((field, value.as_str()), (meta::SN, "x"));
            }
            other => panic!("expected NotANumber, got {other:?}"),
        }
    }
}
