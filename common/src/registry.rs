//! The instance registry: every running service (producer, counter, aggregator)
//! publishes its role, instance id and the address its `/metrics` endpoint
//! actually bound, so `tally status` lists every live instance with a scrapeable
//! address although the default observe port is "any free one".
//!
//! Invariants: an entry lives only while its instance refreshes it — it is written
//! at start, rewritten every [`REFRESH`] with a time-to-live of [`TTL`], and
//! deleted on a clean shutdown, so a crashed instance disappears within [`TTL`]
//! without anyone cleaning up. The registry is for operators and tools only:
//! nothing about the data depends on it (the producers' ownership protocol has its
//! own heartbeat, `common::stash`), and failing to write it never stops a service.
//! The key (`Keys::instance`) and the entry's format are spelled only here and in
//! `common::keys`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::keys::Keys;
use crate::settings::RedisSettings;

/// How often an instance rewrites its entry.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long an entry outlives its last refresh.
pub const TTL: Duration = Duration::from_secs(15);
/// Longest a clean shutdown waits to delete its entry.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// What one instance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEntry {
    /// `producer`, `counter` or `aggregator`.
    pub role: String,
    /// The instance id (for a producer, its owner name in stashes and heartbeats).
    pub instance: String,
    /// The bound address of its `/metrics`, `/health`, `/ready` endpoint.
    pub observe: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When it last refreshed this entry, ms since the Unix epoch.
    pub refreshed_ms: i64,
}

impl InstanceEntry {
    /// An entry for this process, refreshed now.
    pub fn new(role: &str, instance: &str, observe: SocketAddr) -> Self {
        let now = now_ms();
        Self {
            role: role.to_owned(),
            instance: instance.to_owned(),
            observe: observe.to_string(),
            pid: std::process::id(),
            started_ms: now,
            refreshed_ms: now,
        }
    }

    /// Its `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.observe)
    }

    /// The stored form.
    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored entry.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A running registration; [`Registration::withdraw`] deletes the entry.
pub struct Registration {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Publishes `entry` under `keys` in the background, now and every [`REFRESH`],
    /// connecting (and reconnecting) as needed; failures are logged, never fatal.
    pub fn spawn(redis: RedisSettings, keys: &Keys, mut entry: InstanceEntry) -> Self {
        let key = keys.instance(&entry.role, &entry.instance);
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut conn = None;
            let mut failing = false;
            loop {
                if conn.is_none() {
                    match crate::redis::connect(&redis).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => report(&mut failing, &format!("cannot connect: {e}")),
                    }
                }
                if let Some(c) = conn.as_mut() {
                    entry.refreshed_ms = now_ms();
                    let written: Result<(), redis::RedisError> = redis::cmd("SET")
                        .arg(&key)
                        .arg(entry.encode())
                        .arg("PX")
                        .arg(TTL.as_millis() as u64)
                        .query_async(c)
                        .await;
                    match written {
                        Ok(()) => failing = false,
                        Err(e) => {
                            report(&mut failing, &e.to_string());
                            // Possibly a stale connection (a node restarted):
                            // the next round starts on a fresh one.
                            conn = None;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(REFRESH) => {}
                    _ = &mut stop_rx => break,
                }
            }
            // On the refresh connection, and once more on a fresh one if that
            // fails: a connection that went stale while idle must not leave the
            // entry listed for a whole TTL after a clean stop.
            if let Some(mut c) = conn.take() {
                if delete(&mut c, &key).await.is_ok() {
                    return;
                }
            }
            match crate::redis::connect(&redis).await {
                Ok(mut c) => {
                    if let Err(e) = delete(&mut c, &key).await {
                        debug!(key, "instance registry: cannot delete the entry: {e}");
                    }
                }
                Err(e) => debug!(key, "instance registry: cannot delete the entry: {e}"),
            }
        });
        Self {
            stop: Some(stop_tx),
            task,
        }
    }

    /// Stops refreshing and deletes the entry (waiting at most a moment; an entry
    /// left behind expires after [`TTL`]).
    pub async fn withdraw(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(WITHDRAW_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn delete(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> Result<(), redis::RedisError> {
    redis::cmd("DEL")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .map(drop)
}

/// Logs the first failure of a run of failures as a warning, the rest at debug.
fn report(failing: &mut bool, what: &str) {
    if *failing {
        debug!("instance registry: {what}");
    } else {
        warn!(
            "instance registry: {what} (tally status will not list this instance until it works)"
        );
        *failing = true;
    }
}

/// How long ago an entry was last refreshed, from its remaining time-to-live
/// (`PTTL`, ms): every refresh sets it to [`TTL`], so this is the Redis server's
/// own measure, not a comparison of the instance's clock with the reader's (either
/// may be off). `None` for a key without a TTL or already gone (`PTTL` < 0).
pub fn refreshed_age_ms(pttl_ms: i64) -> Option<u64> {
    let left = u64::try_from(pttl_ms).ok()?;
    Some((TTL.as_millis() as u64).saturating_sub(left))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshed_age_comes_from_the_remaining_ttl() {
        assert_eq!(refreshed_age_ms(15_000), Some(0));
        assert_eq!(refreshed_age_ms(12_000), Some(3_000));
        assert_eq!(refreshed_age_ms(0), Some(15_000));
        // A longer TTL than ours (written by someone else): not negative.
        assert_eq!(refreshed_age_ms(20_000), Some(0));
        assert_eq!(refreshed_age_ms(-1), None, "no TTL");
        assert_eq!(refreshed_age_ms(-2), None, "gone");
    }

    #[test]
    fn an_entry_round_trips_and_names_its_metrics_url() {
        let addr: SocketAddr = "127.0.0.1:41234".parse().expect("addr");
        let entry = InstanceEntry::new("counter", "c-1-ab", addr);
        assert_eq!(entry.metrics_url(), "http://127.0.0.1:41234/metrics");
        let back = InstanceEntry::decode(&entry.encode()).expect("decode");
        assert_eq!(back, entry);
        assert!(InstanceEntry::decode("{\"role\":1}").is_err());
    }
}
