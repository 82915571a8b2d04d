//! Exponential backoff between retries of a call that failed for a reason that may
//! pass (a Redis failover, a broker restarting, a connection refused).
//!
//! Invariant: the pause never exceeds `max`, and it starts from `min` again after
//! [`Backoff::reset`], so a caller that retries forever never spins (the pause is
//! never zero) and never waits longer than `max` once the cause has passed.

use std::time::Duration;

/// The pauses of one retry loop: `min`, `2·min`, `4·min`, … capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max` (a `min` of zero is raised to 1 ms,
    /// and a `max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause to take now; the one after it is twice as long, up to `max`.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Sleeps for [`Backoff::next_pause`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_starts_over() {
        let mut b = Backoff::new(50 * MS, 300 * MS);
        let pauses: Vec<u128> = (0..5).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, vec![50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_pause(), 50 * MS);
    }

    #[test]
    fn a_zero_minimum_never_spins_and_a_low_cap_is_raised() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_pause(), MS);
        assert_eq!(b.next_pause(), MS);
    }
}
