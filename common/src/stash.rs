//! The producer's Redis state: per-client stashes with their owner and epoch, the
//! ownership sets and the heartbeat registry, as typed operations over the Lua
//! scripts in `lua/stash_*.lua`.
//!
//! Invariants upheld here: sn assignment and append are one script per batch
//! (1); `flushed` only moves forward and the stash is trimmed only up to it (3);
//! every write is fenced by owner and epoch, claimed by compare-and-set (6).
//! Appends and claims are confirmed on a replica (`WAIT`) before they return (2).

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

    /// Appends a batch, numbering it from `last_sn + 1`; returns the first sn.
    /// Fails with [`RedisOpError::Fenced`] when another claim came since.
    pub async fn append(
        &self,
        client: &ClientId,
        instance: &str,
        epoch: u64,
        last_sn: u64,
        ts: i64,
        messages: &[impl AsRef<str>],
    ) -> Result<u64, RedisOpError> {
        let mut call = ScriptCall::new();
        call.key(self.keys.client_meta(client))
            .key(self.keys.client_stash(client))
            .arg(instance)
            .arg(epoch)
            .arg(last_sn)
            .arg(ts);
        for m in messages {
            call.arg(m.as_ref());
        }
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
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let sn = entry
                    .id
                    .split_once('-')
                    .and_then(|(sn, _)| sn.parse().ok())
                    .ok_or_else(|| RedisOpError::Result(format!("stash entry id {}", entry.id)))?;
                let msg: String = entry.get(stash_entry::MESSAGE).ok_or_else(|| {
                    RedisOpError::Result(format!(
                        "stash entry {sn} has no {}",
                        stash_entry::MESSAGE
                    ))
                })?;
                let ts: i64 = entry.get(stash_entry::TIMESTAMP).unwrap_or_default();
                Ok(StashedMessage { sn, msg, ts })
            })
            .collect()
    }

    /// The stash's meta fields (all zero / empty for an unknown client).
    pub async fn meta(&self, client: &ClientId) -> Result<StashMeta, RedisOpError> {
        Ok(StashMeta::read(&mut self.conn.clone(), &self.keys, client).await?)
    }

    /// Records `instance` as alive at `now_ms`.
    pub async fn heartbeat(&self, instance: &str, now_ms: i64) -> Result<(), RedisOpError> {
        let _: i64 = self
            .conn
            .clone()
            .zadd(self.keys.producers(), instance, now_ms)
            .await?;
        Ok(())
    }

    /// Every registered instance with its last heartbeat (ms since the epoch).
    pub async fn producers(&self) -> Result<Vec<(String, i64)>, RedisOpError> {
        Ok(self
            .conn
            .clone()
            .zrange_withscores(self.keys.producers(), 0, -1)
            .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

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
