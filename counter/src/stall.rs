//! Detects that this process stood still (SIGSTOP, a VM pause, a swap storm) long
//! enough that it may have been dropped from the consumer group meanwhile.
//!
//! Invariant: a batch is never applied to Redis by a member that may have been
//! stalled since the batch was started. Kafka fences a stalled member's offset
//! commit (the group generation in `send_offsets_to_transaction`), but Redis has no
//! such fence: a zombie applying records it polled before the stall could apply
//! them after the partition's new owner committed past them. So before every Redis
//! call the counter asks [`StallDetector::stalled_since`]; after a stall it drops
//! its batch and rejoins the group, which hands it fresh committed offsets.
//!
//! How: a task ticks every [`TICK`]. If the process stood still, either the tick is
//! overdue now, or the tick that ran after the pause saw the gap and noted when.

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
}
