//! Group commit for replicated script calls: one `WAIT` per round per master.
//!
//! `WAIT` blocks the connection that sends it until the replicas have caught up,
//! so a `WAIT` per call serialises every writer behind every other writer's
//! replication round trip. The combiner keeps one queue per master: a round takes
//! every call waiting for that master, sends them as one pipeline
//! `EVALSHA … EVALSHA … WAIT n t` on one connection, and answers each call with its
//! own result once that single `WAIT` confirmed the round. Calls that arrive while
//! a round is in flight form the next round, which starts at once on a second
//! connection (a `WAIT` blocks its own connection only), up to
//! [`ROUNDS_IN_FLIGHT`] rounds per master: a call waits for its own round's
//! replication, not for the one before it too.
//!
//! Rounds in flight at once may run in either order on the master. No caller
//! relies on more: calls that must run in order are made one after the other
//! (a client's stash calls each await the last; a batch's count calls start once
//! the previous batch's returned), and calls in flight together touch different
//! keys (the counter's one per client, the aggregator's one per bucket).
//!
//! Rounds go over a direct connection to the master (not through the cluster
//! client's routing): the combiner keeps its own slot table anyway, and after a
//! failover the cluster client was seen to keep answering from a stale view for
//! minutes (every call `MOVED`, endless slot refreshes) while the cluster itself was
//! healthy. A round that fails drops its connection; the next round opens a fresh
//! one.
//!
//! Invariant: a call is answered `Ok` only if its script ran and the `WAIT` that
//! followed it in the same pipeline, on the same connection, counted enough
//! replicas — exactly the guarantee of [`ReplicatedScript::invoke`], at one
//! replication round trip per round instead of per call. Calls that did not run
//! (`NOSCRIPT`, `MOVED`, `TRYAGAIN`, …) are retried; the scripts are safe to re-run,
//! so a pipeline the cluster client re-sends after a dropped connection is
//! harmless too. A re-run that finds its work done and writes nothing is still
//! confirmed only once the first run reached the replicas: Redis records a
//! connection's replication offset after every command, read-only ones too, so
//! the `WAIT` after the re-run's `EVALSHA` covers every earlier write on the
//! master. A `WAIT` that was a connection's first command would not.
//!
//! For the same reason a round that failed on its connection (a connection a
//! restarted node closed long ago, a reset, a round slower than its limit on a
//! busy master) is retried on a fresh connection, up to [`CONNECTION_RETRIES`]
//! times, before the caller hears "outcome unknown": a stale connection or one
//! slow round is not an unavailable cluster, and a caller told "unavailable" bounces
//! its client although the write may well have landed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisError, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::debug;

use crate::backoff::Backoff;
use crate::redis::{
    classify, cluster_slots, connect_node, Node, RedisOpError, ReplicatedScript, Replication,
    ScriptCall,
};

/// Calls queued per master before callers wait for room.
const QUEUE: usize = 4_096;
/// Most calls in one round.
const MAX_ROUND: usize = 512;
/// Rounds one master may have in flight at once, each on its own connection.
/// Two are enough to stop a call queueing behind another round's `WAIT`; more
/// would only cut the rounds smaller, each with a `WAIT` of its own.
const ROUNDS_IN_FLIGHT: usize = 2;
/// Attempts for calls that did not run (moved slot, script cache, cluster down).
const ATTEMPTS: usize = 20;
/// A round's pipeline may take the `WAIT` timeout plus this before it is
/// abandoned as failed (a dead master must not stall its queue).
const ROUND_SLACK: Duration = Duration::from_secs(2);
/// Further rounds, each on a fresh connection, for a call whose round failed on
/// its connection (IO error or round timeout) before the error reaches the caller.
pub const CONNECTION_RETRIES: usize = 2;

struct Job {
    sha: String,
    /// The script, to load it when the master answers `NOSCRIPT`.
    body: &'static str,
    call: ScriptCall,
    reply: oneshot::Sender<Outcome>,
}

/// What a round says about one call.
enum Outcome {
    Done(Result<Value, RedisOpError>),
    /// The script did not run; try again after the given step.
    Retry(Retry),
}

enum Retry {
    NoScript,
    Moved,
    Later,
    /// The round failed on its connection (the error); the next round opens a
    /// fresh one. Whether this round's scripts ran is unknown, which a re-run makes
    /// moot.
    Connection(RedisError),
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct WriteCombiner {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ClusterConnection,
    replication: Replication,
    /// (first slot, last slot, master), sorted.
    slots: RwLock<Vec<(u16, u16, Node)>>,
    queues: Mutex<HashMap<Node, mpsc::Sender<Job>>>,
}

impl WriteCombiner {
    /// A combiner over `conn`, confirming every round with `replication`.
    pub async fn new(
        conn: ClusterConnection,
        replication: Replication,
    ) -> Result<Self, RedisOpError> {
        let combiner = Self {
            inner: Arc::new(Inner {
                conn,
                replication,
                slots: RwLock::new(Vec::new()),
                queues: Mutex::new(HashMap::new()),
            }),
        };
        combiner.refresh_slots().await?;
        Ok(combiner)
    }

    /// Runs `script` with `call` on the master of its first key's slot, in the next
    /// round for that master, and returns once the round's `WAIT` confirmed it.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ReplicatedScript,
        call: ScriptCall,
    ) -> Result<T, RedisOpError> {
        let key = call.first_key().ok_or_else(|| {
            RedisOpError::Result("a replicated script needs at least one key".into())
        })?;
        let slot = crate::keys::slot(key.as_bytes());
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut connection_retries = 0;
        for _ in 0..ATTEMPTS {
            let node = match self.node_for(slot) {
                Some(node) => node,
                None => {
                    self.refresh_slots().await?;
                    self.node_for(slot).ok_or_else(|| {
                        RedisOpError::Result(format!("no master serves slot {slot}"))
                    })?
                }
            };
            let (reply, answer) = oneshot::channel();
            let job = Job {
                sha: script.sha().to_owned(),
                body: script.body(),
                call: call.clone(),
                reply,
            };
            let limit = self.inner.replication.timeout + ROUND_SLACK * 2;
            let answered = tokio::time::timeout(limit, async {
                self.queue(&node).send(job).await.map_err(|_| closed())?;
                answer.await.map_err(|_| closed())
            })
            .await
            .unwrap_or_else(|_| {
                Ok(Outcome::Retry(Retry::Connection(RedisError::from(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer from {}:{} within {limit:?}", node.0, node.1),
                    ),
                ))))
            })?;
            match answered {
                Outcome::Done(result) => {
                    let value = match result {
                        Ok(value) => value,
                        Err(e) => {
                            if !matches!(
                                e,
                                RedisOpError::Fenced { .. }
                                    | RedisOpError::Refused { .. }
                                    | RedisOpError::NotReplicated { .. }
                            ) {
                                // The master may have failed over: route the caller's
                                // next attempt by a fresh slot table.
                                let _ = self.refresh_slots().await;
                            }
                            return Err(e);
                        }
                    };
                    return T::from_redis_value(value)
                        .map_err(|e| RedisOpError::Result(e.to_string()));
                }
                // The round already loaded the script on that master.
                Outcome::Retry(Retry::NoScript) => {}
                Outcome::Retry(Retry::Moved) => self.refresh_slots().await?,
                Outcome::Retry(Retry::Later) => {
                    backoff.wait().await;
                    self.refresh_slots().await?;
                }
                Outcome::Retry(Retry::Connection(error)) => {
                    if connection_retries == CONNECTION_RETRIES {
                        let _ = self.refresh_slots().await;
                        return Err(RedisOpError::Redis(error));
                    }
                    connection_retries += 1;
                    metrics::counter!(crate::observe::names::REDIS_ROUND_RETRIES).increment(1);
                    debug!(node = %format!("{}:{}", node.0, node.1), "round failed on its connection, retrying on a fresh one: {error}");
                    // The master may have failed over meanwhile. A table that cannot be
                    // read now is no reason to give up: the next round finds out.
                    let _ = self.refresh_slots().await;
                }
            }
        }
        Err(RedisOpError::Result(format!(
            "slot {slot}: gave up after {ATTEMPTS} attempts (cluster reconfiguring)"
        )))
    }

    fn node_for(&self, slot: u16) -> Option<Node> {
        let slots = self.inner.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.clone())
    }

    fn queue(&self, node: &Node) -> mpsc::Sender<Job> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(node.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(rounds(node.clone(), self.inner.replication, rx));
                tx
            })
            .clone()
    }

    /// Reloads which master serves which slots (`CLUSTER SLOTS`).
    async fn refresh_slots(&self) -> Result<(), RedisOpError> {
        let table = cluster_slots(&mut self.inner.conn.clone()).await?;
        *self.inner.slots.write().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(())
    }
}

fn closed() -> RedisOpError {
    RedisOpError::Result("write combiner stopped".into())
}

/// The loop of one master's queue: each round one pipeline ending in one `WAIT`,
/// up to [`ROUNDS_IN_FLIGHT`] rounds at once, each on a connection of its own.
async fn rounds(node: Node, replication: Replication, mut jobs: mpsc::Receiver<Job>) {
    // Connections no round is using; a round that failed drops its own.
    let mut idle: Vec<MultiplexedConnection> = Vec::new();
    let mut in_flight: JoinSet<Option<MultiplexedConnection>> = JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => Next::Finished(done.ok().flatten()),
            job = jobs.recv(), if in_flight.len() < ROUNDS_IN_FLIGHT => Next::Job(job),
        };
        match next {
            Next::Finished(conn) => idle.extend(conn),
            Next::Job(None) => break,
            Next::Job(Some(first)) => {
                let mut round = vec![first];
                while round.len() < MAX_ROUND {
                    match jobs.try_recv() {
                        Ok(job) => round.push(job),
                        Err(_) => break,
                    }
                }
                in_flight.spawn(one_round(node.clone(), replication, idle.pop(), round));
            }
        }
    }
    // The queue closed: the rounds in flight still answer their callers.
    while in_flight.join_next().await.is_some() {}
}

enum Next {
    /// A round ended; its connection, unless the round failed on it.
    Finished(Option<MultiplexedConnection>),
    /// A call arrived, or the queue closed (`None`).
    Job(Option<Job>),
}

/// Sends one round on `direct` (a fresh connection when `None`) and answers every
/// call in it; returns the connection for the next round unless it failed.
async fn one_round(
    node: Node,
    replication: Replication,
    mut direct: Option<MultiplexedConnection>,
    round: Vec<Job>,
) -> Option<MultiplexedConnection> {
    let mut pipe = redis::pipe();
    for job in &round {
        pipe.cmd("EVALSHA")
            .arg(&job.sha)
            .arg(job.call.keys().len())
            .arg(job.call.keys())
            .arg(job.call.args());
    }
    let with_wait = replication.replicas > 0;
    if with_wait {
        pipe.cmd("WAIT")
            .arg(replication.replicas)
            .arg(replication.timeout.as_millis() as u64);
    }
    let count = round.len() + usize::from(with_wait);
    metrics::histogram!(crate::observe::names::REDIS_ROUND_CALLS).record(round.len() as f64);
    let limit = replication.timeout + ROUND_SLACK;
    let sent = tokio::time::timeout(limit, async {
        if direct.is_none() {
            direct = Some(connect_node(&node).await?);
        }
        match direct.as_mut() {
            Some(conn) => conn.send_packed_commands(&pipe, 0, count).await,
            None => unreachable!("connected just above"),
        }
    })
    .await;
    let result = match sent {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("round to {}:{} took over {limit:?}", node.0, node.1),
        ))),
    };
    if result.is_err() {
        // A fresh connection for the next round; whatever this one was doing
        // is answered "outcome unknown" below.
        direct = None;
    }
    match result {
        Err(e) => {
            debug!(node = %format!("{}:{}", node.0, node.1), "round failed: {e}");
            let message = e.to_string();
            for job in round {
                let error = RedisError::from(std::io::Error::other(message.clone()));
                let _ = job.reply.send(Outcome::Retry(Retry::Connection(error)));
            }
        }
        Ok(mut values) => {
            let acked = if with_wait {
                values
                    .pop()
                    .and_then(|v| u32::from_redis_value(v).ok())
                    .unwrap_or(0)
            } else {
                0
            };
            let mut loaded = Vec::new();
            for (job, value) in round.into_iter().zip(values) {
                let outcome = outcome(value, acked, replication);
                if matches!(outcome, Outcome::Retry(Retry::NoScript)) && !loaded.contains(&job.sha)
                {
                    if let Some(conn) = direct.as_mut() {
                        let load = redis::cmd("SCRIPT").arg("LOAD").arg(job.body).clone();
                        let _: Result<Value, _> = load.query_async(conn).await;
                    }
                    loaded.push(job.sha.clone());
                }
                let _ = job.reply.send(outcome);
            }
        }
    }
    direct
}

fn outcome(value: Value, acked: u32, replication: Replication) -> Outcome {
    match value {
        Value::ServerError(e) => match e.code() {
            "NOSCRIPT" => Outcome::Retry(Retry::NoScript),
            // READONLY: the node was demoted to replica in a failover; nothing ran.
            "MOVED" | "ASK" | "READONLY" => Outcome::Retry(Retry::Moved),
            "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" => Outcome::Retry(Retry::Later),
            _ => Outcome::Done(Err(classify(e))),
        },
        value if acked >= replication.replicas => Outcome::Done(Ok(value)),
        _ => Outcome::Done(Err(RedisOpError::NotReplicated {
            acked,
            wanted: replication.replicas,
            timeout_ms: replication.timeout.as_millis() as u64,
        })),
    }
}
