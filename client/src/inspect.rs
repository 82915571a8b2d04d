//! Read-only views of a running pipeline: a client's or a message's counts, the
//! most counted messages, and the health of producers, stashes and consumers.
//!
//! Invariant: nothing here writes. The views read the same keys the services write
//! (built by [`tally_common::Keys`]), so what `tally count` prints is exactly what
//! `redis-cli -c GET` would.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{AsyncCommands, Value};
use serde::Serialize;
use tally_common::kafka::{group_positions, PartitionPosition};
use tally_common::keys::slot;
use tally_common::keys::MESSAGE_BUCKET_HEX_DIGITS;
use tally_common::redis::{cluster_slots, masters, to_node, Node, RedisOpError};
use tally_common::registry::{self, InstanceEntry};
use tally_common::schema;
use tally_common::stash::{MetaReadError, ProducerRegistry, StashMeta};
use tally_common::{ClientId, Keys, MessageHash, Settings};

/// Concurrent reads in flight on the cluster connection.
const READ_CONCURRENCY: usize = 64;

/// Commands per pipeline of [`Inspector::counts_by_group`].
const PIPELINE_GROUPS: usize = 500;

/// Pipelines in flight at once in [`Inspector::counts_by_group`].
const PIPELINES_IN_FLIGHT: usize = 8;

/// A partition whose uncommitted remainder is at most this many offsets is read to
/// tell records from transaction markers: a transactional writer leaves one commit
/// marker after each transaction, so an idle, fully counted partition still shows a
/// remainder of one or a few offsets. Larger remainders are real lag, reported as is.
const MARKER_PROBE_MAX: i64 = 64;

/// How long the probe reads; a partition not read to its end by then keeps its
/// offset count as lag (a slow answer must not hold up `tally status`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters of one slot read together by [`Inspector::counts_by_group`].
#[derive(Debug, Clone)]
pub enum CountGroup {
    /// Keys holding numbers, read with one `MGET`.
    Keys(Vec<String>),
    /// Fields of one hash holding numbers, read with one `HMGET`.
    Fields {
        /// The hash.
        key: String,
        /// Its fields.
        fields: Vec<String>,
    },
}

impl CountGroup {
    /// A message's count: the `count` field of its hash.
    pub fn message_count(keys: &Keys, hash: &MessageHash) -> Self {
        Self::Fields {
            key: keys.message(hash),
            fields: vec![schema::message::COUNT.to_owned()],
        }
    }

    /// A key whose slot is the group's.
    fn slot_key(&self) -> Option<&str> {
        match self {
            Self::Keys(keys) => keys.first().map(String::as_str),
            Self::Fields { key, .. } => Some(key),
        }
    }

    /// How many counters the group reads.
    fn len(&self) -> usize {
        match self {
            Self::Keys(keys) => keys.len(),
            Self::Fields { fields, .. } => fields.len(),
        }
    }

    fn command(&self) -> redis::Cmd {
        match self {
            Self::Keys(keys) => redis::cmd("MGET").arg(keys).clone(),
            Self::Fields { key, fields } => redis::cmd("HMGET").arg(key).arg(fields).clone(),
        }
    }

    /// The group's answer as numbers (a missing value is 0).
    fn parse(&self, found: Vec<Option<String>>) -> Result<Vec<u64>, InspectError> {
        match self {
            Self::Keys(keys) => keys
                .iter()
                .zip(found)
                .map(|(key, v)| parse_count(key, v))
                .collect(),
            Self::Fields { key, fields } => fields
                .iter()
                .zip(found)
                .map(|(field, v)| parse_count(&format!("{key} {field}"), v))
                .collect(),
        }
    }
}

/// A view could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisOpError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A key holds something tally never writes there.
    #[error("{key} holds {value:?}, not a count")]
    NotACount {
        /// The key.
        key: String,
        /// What it holds.
        value: String,
    },
}

impl From<redis::RedisError> for InspectError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(RedisOpError::Redis(e))
    }
}

/// A client's counts and stash state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientView {
    /// The client id.
    pub client: String,
    /// Messages counted (`…:count`).
    pub count: u64,
    /// Highest sn counted (`…:last_sn`).
    pub last_sn: u64,
    /// Highest sn stored by a producer (`meta.sn`).
    pub stored_sn: u64,
    /// Highest sn confirmed in Kafka (`meta.flushed`).
    pub flushed_sn: u64,
    /// Owning producer instance, if any.
    pub owner: Option<String>,
}

/// A message's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// Its hash.
    pub hash: String,
    /// Times counted.
    pub count: u64,
    /// The text, as stored by the aggregator (None if never counted).
    pub text: Option<String>,
}

/// A live or dead producer instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProducerView {
    /// Instance id.
    pub instance: String,
    /// Milliseconds since its last heartbeat, by the Redis server's clock.
    pub heartbeat_age_ms: u64,
    /// Whether it is alive (heartbeat within 3 intervals; the producers' rule,
    /// `ProducerRegistry::is_alive`).
    pub alive: bool,
    /// Clients in its ownership set. Owned clients are listed before they are
    /// claimed and unlisted only after they are released, so this may include a
    /// few stale entries (see `producer/src/ownership.rs`).
    pub clients: u64,
    /// Clients whose stash names it as owner (`meta.owner`): the ones it owns.
    pub owned: u64,
}

/// A running service instance, from the instance registry (`common::registry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    /// `producer`, `counter` or `aggregator`.
    pub role: String,
    /// Its instance id.
    pub instance: String,
    /// Its `/metrics` URL (the address its observe endpoint bound).
    pub metrics: String,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since it last refreshed its entry (by the Redis server's clock).
    pub refreshed_age_ms: u64,
}

/// A consumer group's position on its input topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// The group.
    pub group: String,
    /// Its input topic.
    pub topic: String,
    /// Records not yet committed, over all partitions; transaction markers and
    /// aborted records, which no consumer ever gets, are not lag (see
    /// [`pending_records`]).
    pub lag: i64,
    /// Per partition.
    pub partitions: Vec<PartitionPosition>,
}

/// The whole pipeline at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Every running instance (producers, counters, aggregators) with its
    /// `/metrics` address, by role and id.
    pub instances: Vec<InstanceView>,
    /// Producer instances in the registry.
    pub producers: Vec<ProducerView>,
    /// Clients the pipeline knows: every client that ever had a message stored
    /// keeps its stash meta (its sn and flushed position) for good, owned or not.
    pub clients: u64,
    /// Clients owned by a producer now (`meta.owner` set): connected, or
    /// disconnected with messages not yet confirmed in Kafka.
    pub owned_clients: u64,
    /// Clients with stored messages not yet confirmed in Kafka.
    pub clients_with_backlog: u64,
    /// Stored messages not yet confirmed in Kafka, over all clients.
    pub stash_backlog: u64,
    /// The client furthest behind in flushing, and by how many messages.
    pub max_flush_lag: Option<(String, u64)>,
    /// Flushed messages not yet counted, over all clients.
    pub uncounted: u64,
    /// Clients whose count is behind their flushed messages although the counter
    /// has committed everything: stuck behind a gap.
    pub stalled_clients: Vec<String>,
    /// Counter and aggregator positions.
    pub groups: Vec<GroupView>,
    /// Records in the dead-letter topic.
    pub dlq_records: i64,
}

/// Read-only access to a pipeline's Redis keys and Kafka topics.
#[derive(Clone)]
pub struct Inspector {
    conn: ClusterConnection,
    keys: Keys,
    settings: Settings,
}

impl Inspector {
    /// Connects to the configured Redis Cluster.
    pub async fn connect(settings: &Settings) -> Result<Self, InspectError> {
        let conn = tally_common::redis::connect(&settings.redis).await?;
        Ok(Self {
            conn,
            keys: Keys::new(settings.redis.prefix.clone()),
            settings: settings.clone(),
        })
    }

    /// Reads with another key prefix than the configuration's.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.keys = Keys::new(prefix);
        self
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Reads counters, in order; a missing key reads as 0.
    pub async fn numbers(&self, keys: &[String]) -> Result<Vec<u64>, InspectError> {
        futures::stream::iter(keys.iter().cloned())
            .map(|key| {
                let mut conn = self.conn.clone();
                async move {
                    let value: Option<String> = conn.get(&key).await?;
                    parse_count(&key, value)
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Each client's `count` and `last_sn`, in order, read together (one `MGET`
    /// per client: both keys share its slot, and the count script writes both at
    /// once, so the pair is never torn by a count in between).
    pub async fn client_counts(&self, ids: &[ClientId]) -> Result<Vec<(u64, u64)>, InspectError> {
        let groups: Vec<CountGroup> = ids
            .iter()
            .map(|id| {
                CountGroup::Keys(vec![
                    self.keys.client_count(id),
                    self.keys.client_last_sn(id),
                ])
            })
            .collect();
        Ok(self
            .counts_by_group(&groups)
            .await?
            .into_iter()
            .map(|pair| (pair[0], pair[1]))
            .collect())
    }

    /// Each message's count, in order (0 for a message never counted): the
    /// `count` field of its hash, read fast (see [`Inspector::counts_by_group`]).
    pub async fn message_counts(&self, hashes: &[MessageHash]) -> Result<Vec<u64>, InspectError> {
        let groups: Vec<CountGroup> = hashes
            .iter()
            .map(|h| CountGroup::message_count(&self.keys, h))
            .collect();
        Ok(self
            .counts_by_group(&groups)
            .await?
            .into_iter()
            .map(|found| found.first().copied().unwrap_or_default())
            .collect())
    }

    /// Reads many counters fast, in order; a missing key or field reads as 0. Each
    /// group's counters share a slot and are read with one command (atomically).
    /// The groups are sorted by the master serving their slot (`CLUSTER SLOTS`)
    /// and sent as pipelines of [`PIPELINE_GROUPS`] commands straight to that
    /// master, several at once. A pipeline that fails, or whose answers include an
    /// error (a slot moved: a failover or resharding during the read), is read
    /// again group by group through the cluster client, which follows redirections.
    pub async fn counts_by_group(
        &self,
        groups: &[CountGroup],
    ) -> Result<Vec<Vec<u64>>, InspectError> {
        let mut conn = self.conn.clone();
        let table = cluster_slots(&mut conn).await?;
        let node_of = |group: &CountGroup| {
            let slot = group.slot_key().map(|k| slot(k.as_bytes()))?;
            table
                .iter()
                .find(|(first, last, _)| (*first..=*last).contains(&slot))
                .map(|(_, _, node)| node.clone())
        };
        let mut by_node: std::collections::BTreeMap<Node, Vec<usize>> = Default::default();
        let mut retry: Vec<usize> = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            match node_of(group) {
                Some(node) => by_node.entry(node).or_default().push(i),
                None => retry.push(i),
            }
        }
        let batches: Vec<(Node, Vec<usize>)> = by_node
            .into_iter()
            .flat_map(|(node, indices)| {
                indices
                    .chunks(PIPELINE_GROUPS)
                    .map(|c| (node.clone(), c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let answers: Vec<(Vec<usize>, Option<Vec<Value>>)> = futures::stream::iter(batches)
            .map(|((host, port), indices)| {
                let mut conn = self.conn.clone();
                let mut pipe = redis::pipe();
                for &i in &indices {
                    pipe.add_command(groups[i].command());
                }
                async move {
                    let route = SingleNodeRoutingInfo::ByAddress { host, port };
                    let values = conn
                        .route_pipeline(pipe, 0, indices.len(), route)
                        .await
                        .ok()
                        .filter(|v| v.len() == indices.len());
                    (indices, values)
                }
            })
            .buffer_unordered(PIPELINES_IN_FLIGHT)
            .collect()
            .await;
        let mut out: Vec<Vec<u64>> = vec![Vec::new(); groups.len()];
        for (indices, values) in answers {
            let Some(values) = values else {
                retry.extend(indices);
                continue;
            };
            for (i, value) in indices.into_iter().zip(values) {
                match redis::from_redis_value::<Vec<Option<String>>>(value) {
                    Ok(found) if found.len() == groups[i].len() => {
                        out[i] = groups[i].parse(found)?;
                    }
                    _ => retry.push(i),
                }
            }
        }
        let again: Vec<(usize, Vec<u64>)> = futures::stream::iter(retry)
            .map(|i| {
                let mut conn = self.conn.clone();
                let group = &groups[i];
                async move {
                    let found: Vec<Option<String>> = group
                        .command()
                        .query_async(&mut conn)
                        .await
                        .map_err(RedisOpError::from)?;
                    Ok::<_, InspectError>((i, group.parse(found)?))
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (i, numbers) in again {
            out[i] = numbers;
        }
        Ok(out)
    }

    /// A client's counts and stash state.
    pub async fn client(&self, id: &ClientId) -> Result<ClientView, InspectError> {
        let numbers = self
            .numbers(&[self.keys.client_count(id), self.keys.client_last_sn(id)])
            .await?;
        let meta = StashMeta::read(&mut self.conn.clone(), &self.keys, id)
            .await
            .map_err(|e| match e {
                MetaReadError::Redis(e) => InspectError::Redis(e),
                MetaReadError::NotANumber { key, value, .. } => {
                    InspectError::NotACount { key, value }
                }
            })?;
        Ok(ClientView {
            client: id.as_str().to_string(),
            count: numbers[0],
            last_sn: numbers[1],
            stored_sn: meta.sn,
            flushed_sn: meta.flushed,
            owner: Some(meta.owner).filter(|o| !o.is_empty()),
        })
    }

    /// A message's count and text, by hash (one `HMGET` of its hash).
    pub async fn message(&self, hash: &MessageHash) -> Result<MessageView, InspectError> {
        let key = self.keys.message(hash);
        let (count, text): (Option<String>, Option<String>) = self
            .conn
            .clone()
            .hmget(&key, &[schema::message::COUNT, schema::message::TEXT])
            .await
            .map_err(RedisOpError::from)?;
        Ok(MessageView {
            hash: hash.to_string(),
            count: parse_count(&format!("{key} {}", schema::message::COUNT), count)?,
            text,
        })
    }

    /// Every key matching `pattern` on every master (SCAN; fine for a tool, not
    /// for a hot path).
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, InspectError> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        for node in masters(&mut conn).await? {
            let mut cursor: u64 = 0;
            loop {
                let reply = conn
                    .route_command(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .clone(),
                        to_node(&node),
                    )
                    .await?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                    .map_err(|e| RedisOpError::Result(format!("SCAN reply: {e}")))?;
                found.extend(keys);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The `n` most counted messages, most counted first.
    pub async fn top(&self, n: usize) -> Result<Vec<MessageView>, InspectError> {
        let pattern = format!("{}:m:{{*}}*", glob_escape(self.keys.prefix()));
        let hashes: Vec<MessageHash> = self
            .scan(&pattern)
            .await?
            .iter()
            .filter_map(|key| hash_of_message_key(key))
            .collect();
        let counts = self.message_counts(&hashes).await?;
        let mut heap = BinaryHeap::new();
        for (hash, count) in hashes.into_iter().zip(counts) {
            // Ties broken by hash, so the answer is stable.
            heap.push(Reverse((count, Reverse(hash))));
            if heap.len() > n {
                heap.pop();
            }
        }
        let mut top: Vec<(u64, MessageHash)> = heap
            .into_iter()
            .map(|Reverse((count, Reverse(hash)))| (count, hash))
            .collect();
        top.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut views = Vec::with_capacity(top.len());
        for (count, hash) in top {
            let text: Option<String> = self
                .conn
                .clone()
                .hget(self.keys.message(&hash), schema::message::TEXT)
                .await
                .map_err(RedisOpError::from)?;
            views.push(MessageView {
                hash: hash.to_string(),
                count,
                text,
            });
        }
        Ok(views)
    }

    /// Every instance in the instance registry, by role and id; an entry that
    /// expires while it is read, or that tally did not write, is left out.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, InspectError> {
        let keys = self
            .scan(&format!("{}*", glob_escape(&self.keys.instances())))
            .await?;
        let mut views = Vec::new();
        for key in keys {
            let mut conn = self.conn.clone();
            let text: Option<String> = conn.get(&key).await?;
            let Some(entry) = text.and_then(|t| InstanceEntry::decode(&t).ok()) else {
                continue;
            };
            // Aged by the key's remaining TTL (the server's clock): the entry's
            // own `refreshed_ms` is the instance's clock, which may be off.
            let pttl: i64 = conn.pttl(&key).await?;
            let Some(refreshed_age_ms) = registry::refreshed_age_ms(pttl) else {
                continue;
            };
            views.push(InstanceView {
                metrics: entry.metrics_url(),
                refreshed_age_ms,
                role: entry.role,
                instance: entry.instance,
                pid: entry.pid,
            });
        }
        let rank = |role: &str| {
            ["producer", "counter", "aggregator"]
                .iter()
                .position(|r| *r == role)
        };
        views.sort_by(|a, b| {
            (rank(&a.role), &a.role, &a.instance).cmp(&(rank(&b.role), &b.role, &b.instance))
        });
        Ok(views)
    }

    /// Instances, producers, stashes, consumer groups and the DLQ.
    pub async fn status(&self) -> Result<StatusView, InspectError> {
        let instances = self.instances().await?;
        let mut conn = self.conn.clone();
        // Heartbeats are aged by the Redis server's clock, as the producers age
        // them: this host's clock may be off too.
        let registry = ProducerRegistry::read(&mut conn, &self.keys).await?;
        let interval_ms = self.settings.producer.heartbeat_interval_ms;
        let mut producers = Vec::new();
        for (instance, heartbeat) in &registry.beats {
            let clients: u64 = conn.scard(self.keys.producer_clients(instance)).await?;
            producers.push(ProducerView {
                instance: instance.clone(),
                heartbeat_age_ms: registry.age_ms(*heartbeat),
                alive: registry.is_alive(*heartbeat, interval_ms),
                clients,
                owned: 0,
            });
        }

        let meta_keys = self
            .scan(&format!("{}:c:*:meta", glob_escape(self.keys.prefix())))
            .await?;
        let mut clients = Vec::new();
        for key in &meta_keys {
            let Some(id) = client_of_meta_key(key) else {
                continue;
            };
            if let Ok(id) = ClientId::from_record(id) {
                clients.push(id);
            }
        }
        let views: Vec<ClientView> = futures::stream::iter(clients)
            .map(|id| async move { self.client(&id).await })
            .buffered(READ_CONCURRENCY / 4)
            .try_collect()
            .await?;

        let kafka = self.settings.kafka.clone();
        let counter_group = self.settings.counter.group_id.clone();
        let aggregator_group = self.settings.aggregator.group_id.clone();
        let (groups, dlq_records) = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let mut groups = Vec::new();
            for (group, topic) in [
                (counter_group, kafka.client_message_topic.clone()),
                (aggregator_group, kafka.message_aggregation_topic.clone()),
            ] {
                let partitions = group_positions(&kafka, Some(&group), &topic, timeout)?;
                let probed = probe_remainders(&kafka, &topic, &partitions, PROBE_TIMEOUT)?;
                groups.push(GroupView {
                    lag: partitions
                        .iter()
                        .zip(probed)
                        .map(|(p, records)| pending_records(p, records))
                        .sum(),
                    group,
                    topic,
                    partitions,
                });
            }
            let dlq = group_positions(&kafka, None, &kafka.dlq_topic, timeout)?;
            let dlq_records: i64 = dlq.iter().map(|p| p.high - p.low).sum();
            Ok::<_, rdkafka::error::KafkaError>((groups, dlq_records))
        })
        .await
        .map_err(|e| InspectError::Redis(RedisOpError::Result(format!("status task: {e}"))))??;

        let counter_caught_up = groups.first().is_some_and(|g| g.lag == 0);
        let mut stash_backlog = 0;
        let mut uncounted = 0;
        let mut max_flush_lag: Option<(String, u64)> = None;
        let mut stalled_clients = Vec::new();
        let (mut owned_clients, mut clients_with_backlog) = (0, 0);
        for view in &views {
            if let Some(owner) = &view.owner {
                owned_clients += 1;
                if let Some(p) = producers.iter_mut().find(|p| &p.instance == owner) {
                    p.owned += 1;
                }
            }
            let lag = view.stored_sn.saturating_sub(view.flushed_sn);
            clients_with_backlog += u64::from(lag > 0);
            stash_backlog += lag;
            if lag > 0 && max_flush_lag.as_ref().is_none_or(|(_, m)| lag > *m) {
                max_flush_lag = Some((view.client.clone(), lag));
            }
            let behind = view.flushed_sn.saturating_sub(view.last_sn);
            uncounted += behind;
            if behind > 0 && counter_caught_up {
                stalled_clients.push(view.client.clone());
            }
        }
        Ok(StatusView {
            instances,
            producers,
            clients: views.len() as u64,
            owned_clients,
            clients_with_backlog,
            stash_backlog,
            max_flush_lag,
            uncounted,
            stalled_clients,
            groups,
            dlq_records,
        })
    }
}

/// A cheap global progress figure: the records of `client_message` the counter
/// group has committed, summed over partitions. Its change over a second is the
/// pipeline's counting rate (each committed record was counted, or recognised as a
/// duplicate, exactly once), read from Kafka with two small requests instead of a
/// SCAN of the keyspace. Keeps one consumer open; it never joins the group or
/// commits. Blocking: call [`CounterProgress::committed`] from `spawn_blocking`.
pub struct CounterProgress {
    consumer: BaseConsumer,
    topic: String,
}

impl CounterProgress {
    /// A probe for the configured counter group on `client_message`.
    pub fn new(settings: &Settings) -> Result<Self, InspectError> {
        let consumer: BaseConsumer = tally_common::kafka::read_committed_consumer_config(
            &settings.kafka,
            &settings.counter.group_id,
        )
        .create()?;
        Ok(Self {
            consumer,
            topic: settings.kafka.client_message_topic.clone(),
        })
    }

    /// Records committed by the counter group, over all partitions (0 before its
    /// first commit).
    pub fn committed(&self, timeout: Duration) -> Result<u64, InspectError> {
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(rdkafka::error::KafkaError::MetadataFetch(err.into()).into());
            }
            for p in t.partitions() {
                tpl.add_partition(&self.topic, p.id());
            }
        }
        let committed =
            tally_common::kafka::committed_offsets_settled(&self.consumer, &tpl, timeout)?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => u64::try_from(o).unwrap_or(0),
                _ => 0,
            })
            .sum())
    }
}

/// Whether a partition's remainder is small enough to be read, to tell records
/// from transaction markers (see [`MARKER_PROBE_MAX`]).
fn worth_probing(position: &PartitionPosition) -> bool {
    (1..=MARKER_PROBE_MAX).contains(&position.lag())
}

/// A group's lag on one partition: the records a read_committed reader found
/// between the committed offset (the log start if none) and the high watermark when the remainder was
/// read (`probed`), else the offsets between them. A remainder made only of
/// transaction markers (or aborted records) is no lag: the group's consumers
/// skip it and will never commit past it until the next record arrives.
pub fn pending_records(position: &PartitionPosition, probed: Option<i64>) -> i64 {
    match probed {
        Some(records) => records.clamp(0, position.lag()),
        None => position.lag(),
    }
}

/// For each partition worth probing, the records a read_committed reader gets
/// between its committed offset (or log start) and its high watermark; `None` for the others
/// and for those not read to their end within `timeout`. Blocking. Uses a
/// throwaway consumer that never joins a group or commits.
pub(crate) fn probe_remainders(
    kafka: &tally_common::settings::KafkaSettings,
    topic: &str,
    positions: &[PartitionPosition],
    timeout: Duration,
) -> Result<Vec<Option<i64>>, rdkafka::error::KafkaError> {
    use rdkafka::message::Message;
    let mut found: Vec<Option<i64>> = vec![None; positions.len()];
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in positions.iter().filter(|p| worth_probing(p)) {
        // Where the group's consumers start: its commit, else the log start.
        let start = p.committed.unwrap_or(p.low);
        tpl.add_partition_offset(topic, p.partition, rdkafka::Offset::Offset(start))?;
    }
    if tpl.count() == 0 {
        return Ok(found);
    }
    let mut config = tally_common::kafka::read_committed_consumer_config(kafka, "tally-inspect");
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ProbeContext> = config.create_with_context(ProbeContext)?;
    consumer.assign(&tpl)?;
    let index = |partition: i32| positions.iter().position(|p| p.partition == partition);
    let mut counts = vec![0i64; positions.len()];
    let mut open = tpl.count();
    let deadline = std::time::Instant::now() + timeout;
    while open > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left) {
            None => {}
            Some(Ok(message)) => {
                if let Some(i) = index(message.partition()) {
                    if message.offset() < positions[i].high {
                        counts[i] += 1;
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                if let Some(i) = index(partition) {
                    if found[i].is_none() {
                        found[i] = Some(counts[i]);
                        open -= 1;
                    }
                }
            }
            // A broker restarting or a connection dropping: librdkafka reconnects
            // on its own and the read goes on; a partition not read to its end in
            // time stays `None` (its lag counts as offsets).
            Some(Err(e)) if transport_hiccup(&e) => {
                tracing::debug!(error = %e, "kafka: marker probe read interrupted, going on");
            }
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(found)
}

/// A consumer error that only says a connection to a broker failed for now.
fn transport_hiccup(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NetworkException
                | C::RequestTimedOut
        )
    )
}

/// The probe's consumer context: librdkafka reports every end of partition as an
/// error event too, and the probe asks for those, so they are not logged.
pub(crate) struct ProbeContext;

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let end_of_partition =
            rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if error != end_of_partition {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

fn parse_count(key: &str, value: Option<String>) -> Result<u64, InspectError> {
    match value {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| InspectError::NotACount {
            key: key.to_string(),
            value: v,
        }),
    }
}

/// Escapes the glob characters SCAN MATCH knows.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The hash in `<prefix>:m:{<bucket>}<hash>`, if the tag is the hash's bucket.
fn hash_of_message_key(key: &str) -> Option<MessageHash> {
    let start = key.rfind(":m:{")? + 4;
    let close = start + key[start..].find('}')?;
    let hash: MessageHash = key[close + 1..].parse().ok()?;
    (key[start..close] == hash.to_string()[..MESSAGE_BUCKET_HEX_DIGITS]).then_some(hash)
}

/// The client id in `<prefix>:c:{<id>}:meta`.
fn client_of_meta_key(key: &str) -> Option<&str> {
    let start = key.find(":c:{")? + 4;
    let end = key.strip_suffix("}:meta")?.len();
    (end >= start).then(|| &key[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_apart_the_way_keys_builds_them() {
        let keys = Keys::new("t-1.x");
        let hash = MessageHash::of(b"hello");
        assert_eq!(hash_of_message_key(&keys.message(&hash)), Some(hash));
        assert_eq!(hash_of_message_key("t-1.x:m:{ff}00"), None);
        let wrong_tag = keys.message(&hash).replacen("{", "{0", 1);
        assert_eq!(hash_of_message_key(&wrong_tag), None);
        for id in ["c-1", "10.0.0.1:5000", "[::1]:80"] {
            let id = ClientId::from_record(id).expect("id");
            assert_eq!(
                client_of_meta_key(&keys.client_meta(&id)),
                Some(id.as_str())
            );
        }
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
        assert!(parse_count("k", Some("x".into())).is_err());
        assert_eq!(parse_count("k", None).expect("missing"), 0);
    }

    fn position(committed: Option<i64>, high: i64) -> PartitionPosition {
        PartitionPosition {
            partition: 0,
            committed,
            low: 0,
            high,
        }
    }

    #[test]
    fn only_connection_failures_let_the_marker_probe_go_on() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as C;
        assert!(super::transport_hiccup(&KafkaError::MessageConsumption(
            C::BrokerTransportFailure
        )));
        assert!(super::transport_hiccup(&KafkaError::MessageConsumption(
            C::AllBrokersDown
        )));
        assert!(!super::transport_hiccup(&KafkaError::MessageConsumption(
            C::TopicAuthorizationFailed
        )));
    }

    #[test]
    fn a_remainder_of_transaction_markers_is_no_lag() {
        // Idle: the group committed past the last record; the commit marker after
        // it is the only offset left.
        let idle = position(Some(41), 42);
        assert!(worth_probing(&idle));
        assert_eq!(pending_records(&idle, Some(0)), 0);
        // Two records and their marker still to count.
        let busy = position(Some(40), 43);
        assert_eq!(pending_records(&busy, Some(2)), 2);
        // Not read (too far behind, or not read in time): the offsets, markers
        // included, are the best figure there is.
        let far = position(Some(0), 10_000);
        assert!(!worth_probing(&far));
        assert_eq!(pending_records(&far, None), 10_000);
        // A group that never committed starts at the log start.
        assert!(worth_probing(&position(None, 5)));
        assert!(!worth_probing(&position(Some(42), 42)));
        assert_eq!(pending_records(&position(Some(42), 42), None), 0);
    }
}
