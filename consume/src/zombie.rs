//! The zombie guard: a member that may have lost its partitions without being told
//! yet must not write to Redis.
//!
//! Invariant: a batch is never applied to Redis by a member that may have been
//! stalled since its view of the group was last confirmed (the last commit, rewind
//! or rejoin), or that has not polled for half of `max.poll.interval.ms`. Kafka
//! fences a stale member's offset commit (the group generation in
//! `send_offsets_to_transaction`), but Redis has no such fence: a zombie applying
//! records it polled before a stall could apply them after the partition's new
//! owner committed past them. So a processor calls [`Membership::check`] before
//! every Redis call; a failed check makes the engine drop the batch and rejoin the
//! group, which hands it fresh committed offsets. The window left is between the
//! check and the call reaching Redis (microseconds, unless the process is frozen
//! exactly there); closing it would take a fencing token per client in Redis.
//!
//! How a stall is seen: a task ticks every [`TICK`]. If the process stood still
//! (SIGSTOP, a VM pause, a swap storm), either the tick is overdue now, or the tick
//! that ran after the pause saw the gap and noted when.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Tick interval of the detector.
pub const TICK: Duration = Duration::from_millis(100);

/// Shared view of the ticker.
#[derive(Clone)]
pub struct StallDetector {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    threshold: Duration,
    /// Last tick, ms since `origin`.
    last_tick_ms: AtomicU64,
    /// When the last stall ended (ms since `origin`, +1 so 0 means never).
    last_stall_end_ms: AtomicU64,
}

impl StallDetector {
    /// Starts the ticker; a pause longer than `threshold` counts as a stall.
    pub fn start(threshold: Duration) -> Self {
        let inner = Arc::new(Inner {
            origin: Instant::now(),
            threshold,
            last_tick_ms: AtomicU64::new(0),
            last_stall_end_ms: AtomicU64::new(0),
        });
        let ticker = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = ticker.upgrade() else {
                    break;
                };
                let now = inner.ms(Instant::now());
                let last = inner.last_tick_ms.swap(now, Ordering::SeqCst);
                if now.saturating_sub(last) > inner.threshold.as_millis() as u64 {
                    inner.last_stall_end_ms.store(now + 1, Ordering::SeqCst);
                    tracing::warn!(
                        stalled_ms = now - last,
                        "this process stood still; it may have left the consumer group"
                    );
                }
            }
        });
        Self { inner }
    }

    /// `Some(how long)` if the process may have stalled after `since`: the ticker
    /// is overdue now, or it saw a stall end after `since`.
    pub fn stalled_since(&self, since: Instant) -> Option<Duration> {
        let inner = &self.inner;
        let now = inner.ms(Instant::now());
        let overdue = now.saturating_sub(inner.last_tick_ms.load(Ordering::SeqCst));
        if overdue > inner.threshold.as_millis() as u64 {
            return Some(Duration::from_millis(overdue));
        }
        let end = inner.last_stall_end_ms.load(Ordering::SeqCst);
        if end > 0 && end > inner.ms(since) {
            return Some(inner.threshold);
        }
        None
    }
}

impl Inner {
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }
}

/// Why a member may no longer own the partitions of its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsure(pub String);

/// The zombie guard of one batch: what the member knew when the batch began.
#[derive(Clone)]
pub struct Membership {
    stall: StallDetector,
    /// Since when this member's view of its partitions is known good.
    valid_since: Instant,
    /// When the batch's records were polled (the batch began).
    polled_at: Instant,
    /// Longest a batch may go on without a poll.
    poll_deadline: Duration,
}

impl Membership {
    /// The guard of a batch begun at `polled_at` by a member whose view was
    /// confirmed at `valid_since`.
    pub fn new(
        stall: StallDetector,
        valid_since: Instant,
        polled_at: Instant,
        poll_deadline: Duration,
    ) -> Self {
        Self {
            stall,
            valid_since,
            polled_at,
            poll_deadline,
        }
    }

    /// Fails when this member may have lost its partitions unnoticed: it stood
    /// still since its view was last confirmed, or it has not polled for longer
    /// than the poll deadline (librdkafka then leaves the group on its own, and
    /// another member takes over). Call before every Redis write.
    pub fn check(&self) -> Result<(), Unsure> {
        if let Some(pause) = self.stall.stalled_since(self.valid_since) {
            return Err(Unsure(format!("stood still for {} ms", pause.as_millis())));
        }
        let since_poll = self.polled_at.elapsed();
        if since_poll > self.poll_deadline {
            return Err(Unsure(format!("not polled for {} s", since_poll.as_secs())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_threshold_is_seen() {
        let detector = StallDetector::start(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let since = Instant::now();
        assert_eq!(detector.stalled_since(since), None);

        // Jump the clock past the threshold, as a SIGSTOP would.
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(detector.stalled_since(since).is_some(), "overdue tick");

        // After the ticker ran, the stall is remembered for batches begun before it.
        tokio::time::sleep(TICK * 2).await;
        assert!(detector.stalled_since(since).is_some(), "remembered");
        assert_eq!(detector.stalled_since(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_fails_after_a_stall_or_a_missed_poll_deadline() {
        let detector = StallDetector::start(Duration::from_millis(500));
        tokio::time::sleep(TICK * 2).await;
        let began = Instant::now();
        let guard = Membership::new(detector.clone(), began, began, Duration::from_secs(2));
        assert_eq!(guard.check(), Ok(()));

        // Time passes with the ticker running (no stall), past the poll deadline.
        for _ in 0..25 {
            tokio::time::sleep(TICK).await;
        }
        assert!(guard.check().is_err(), "poll deadline passed");

        // A fresh batch after a stall that ended after the view was confirmed.
        let confirmed = Instant::now();
        tokio::time::advance(Duration::from_millis(900)).await;
        tokio::time::sleep(TICK * 2).await;
        let now = Instant::now();
        let guard = Membership::new(detector, confirmed, now, Duration::from_secs(2));
        assert!(
            guard.check().is_err(),
            "stalled since the view was confirmed"
        );
    }
}
