//! Readiness: the conditions a service must meet before `/ready` answers 200, and
//! the probes that keep them true to the evidence.
//!
//! **Invariant: readiness is never assumed.** A [`Readiness`] with no condition is
//! not ready, a new [`Condition`] starts unmet, and only the service sets it, from
//! evidence: a Redis `PING` answered, Kafka metadata of the service's topic fetched
//! (both re-checked every [`PROBE_INTERVAL`] by [`spawn_probe`]), a non-empty
//! partition assignment. Once shutdown begins the service is not ready any more,
//! whatever its conditions say, so a load balancer stops sending it work while it
//! drains.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

/// How often probes re-check Redis and Kafka.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The readiness conditions of one service. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    conditions: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    stopping: AtomicBool,
}

/// One readiness condition; starts unmet. Cheap to clone.
#[derive(Clone)]
pub struct Condition {
    name: &'static str,
    met: Arc<AtomicBool>,
}

impl Condition {
    /// Records whether the condition holds now; logs changes.
    pub fn set(&self, met: bool) {
        let was = self.met.swap(met, Ordering::AcqRel);
        if was != met {
            if met {
                info!(condition = self.name, "ready condition met");
            } else {
                warn!(condition = self.name, "ready condition lost");
            }
        }
    }

    /// Whether it holds.
    pub fn is_met(&self) -> bool {
        self.met.load(Ordering::Acquire)
    }
}

impl Readiness {
    /// Registers a condition, unmet, and returns its handle.
    pub fn condition(&self, name: &'static str) -> Condition {
        let met = Arc::new(AtomicBool::new(false));
        let mut conditions = match self.inner.conditions.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        conditions.push((name, met.clone()));
        Condition { name, met }
    }

    /// From now on not ready: shutdown began.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let conditions = match self.inner.conditions.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut missing: Vec<&'static str> = conditions
            .iter()
            .filter(|(_, met)| !met.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect();
        if conditions.is_empty() {
            missing.push("starting");
        }
        if self.inner.stopping.load(Ordering::Acquire) {
            missing.push("shutting-down");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// A background re-check of one condition; stops when dropped.
pub struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets `condition` to the result of `check` now and every [`PROBE_INTERVAL`]
/// until the returned [`Probe`] is dropped.
pub fn spawn_probe<F, Fut>(condition: Condition, check: F) -> Probe
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    Probe(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = tokio::time::timeout(PROBE_INTERVAL, check())
                .await
                .unwrap_or(false);
            condition.set(ok);
        }
    }))
}

/// Probes Redis Cluster with `PING` to a random master.
pub fn redis_probe(conn: redis::cluster_async::ClusterConnection, condition: Condition) -> Probe {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    spawn_probe(condition, move || {
        let mut conn = conn.clone();
        async move {
            conn.route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .is_ok()
        }
    })
}

/// Probes Kafka by fetching the metadata of `topic`: ready when the topic exists
/// with at least one partition and no error. `client` is any rdkafka client
/// (`producer.client()`, `consumer.client()`), reached through `get`.
pub fn kafka_probe<T, C>(
    owner: Arc<T>,
    get: fn(&T) -> &rdkafka::client::Client<C>,
    topic: String,
    condition: Condition,
) -> Probe
where
    T: Send + Sync + 'static,
    C: rdkafka::ClientContext + 'static,
{
    spawn_probe(condition, move || {
        let (owner, topic) = (owner.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                match get(&owner).fetch_metadata(Some(&topic), PROBE_INTERVAL) {
                    Ok(metadata) => metadata.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }),
                    Err(_) => false,
                }
            })
            .await
            .unwrap_or(false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_condition_and_all_of_them() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err(vec!["starting"]));
        let redis = r.condition("redis");
        let kafka = r.condition("kafka");
        assert_eq!(r.check(), Err(vec!["redis", "kafka"]));
        redis.set(true);
        assert_eq!(r.check(), Err(vec!["kafka"]));
        kafka.set(true);
        assert_eq!(r.check(), Ok(()));
        redis.set(false);
        assert_eq!(r.check(), Err(vec!["redis"]));
        redis.set(true);
        r.stop();
        assert_eq!(r.check(), Err(vec!["shutting-down"]));
    }
}
