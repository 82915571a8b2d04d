//! When to hand the memory of departed clients back to the operating system.
//!
//! Invariant: after a wave of departures (the owned clients fell to a quarter of
//! their peak since the last release, from at least [`MIN_PEAK`]) exactly one
//! release is due, once no client has left for [`QUIET`] — so the memory of the
//! last clients of the wave, freed after the first ones', goes back too — or
//! [`LONGEST_WAIT`] after the wave qualified, if clients keep trickling out. A few
//! clients coming and going never make one due. Pure logic: the flusher asks
//! [`MemoryRelease::due`] on its tick and does the release.

use std::time::{Duration, Instant};

/// Fewest clients a peak must have had for its departures to warrant a release.
pub const MIN_PEAK: usize = 1_024;
/// How long no client must have left before the release.
pub const QUIET: Duration = Duration::from_secs(1);
/// Longest a due release waits for departures to stop.
pub const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// Tracks the owned-client count between releases.
#[derive(Debug, Default)]
pub struct MemoryRelease {
    /// Most clients owned since the last release.
    peak: usize,
    /// Clients owned now.
    owned: usize,
    /// When a client last left.
    last_departure: Option<Instant>,
    /// Since when the departures warrant a release (peak ≥ [`MIN_PEAK`] and at
    /// most a quarter of it left).
    wanted_since: Option<Instant>,
}

impl MemoryRelease {
    /// The owned-client count is now `owned`.
    pub fn observe(&mut self, owned: usize, now: Instant) {
        if owned < self.owned {
            self.last_departure = Some(now);
        }
        self.owned = owned;
        self.peak = self.peak.max(owned);
        let wanted = self.peak >= MIN_PEAK && owned <= self.peak / 4;
        match (wanted, self.wanted_since) {
            (true, None) => self.wanted_since = Some(now),
            (false, Some(_)) => self.wanted_since = None,
            _ => {}
        }
    }

    /// Whether the release is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        let Some(since) = self.wanted_since else {
            return false;
        };
        let quiet = self
            .last_departure
            .is_none_or(|at| now.duration_since(at) >= QUIET);
        quiet || now.duration_since(since) >= LONGEST_WAIT
    }

    /// The release was done: the next one needs a new wave from today's count.
    pub fn released(&mut self) {
        self.peak = self.owned;
        self.wanted_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leave_all(m: &mut MemoryRelease, from: usize, to: usize, at: Instant) {
        for owned in (to..from).rev() {
            m.observe(owned, at);
        }
    }

    #[test]
    fn a_wave_of_departures_releases_once_after_the_last_one_and_a_quiet_second() {
        let t = Instant::now();
        let mut m = MemoryRelease::default();
        for owned in 1..=10_000 {
            m.observe(owned, t);
        }
        assert!(!m.due(t), "nobody left yet");
        // Three quarters leave: wanted, but clients are still leaving.
        leave_all(&mut m, 10_000, 2_500, t);
        assert!(!m.due(t));
        // The rest leave over the next 500 ms: not due until a second after them.
        leave_all(&mut m, 2_500, 0, t + Duration::from_millis(500));
        assert!(!m.due(t + Duration::from_millis(1_400)));
        assert!(m.due(t + Duration::from_millis(1_500)));
        m.released();
        assert!(!m.due(t + Duration::from_secs(60)), "one release per wave");
    }

    #[test]
    fn clients_trickling_out_release_after_the_longest_wait() {
        let t = Instant::now();
        let mut m = MemoryRelease::default();
        m.observe(4_000, t);
        m.observe(1_000, t);
        let mut owned = 1_000;
        for ms in (0..=10_000).step_by(500) {
            owned -= 1;
            m.observe(owned, t + Duration::from_millis(ms));
            let due = m.due(t + Duration::from_millis(ms));
            assert_eq!(due, ms >= 10_000, "at {ms} ms");
        }
    }

    #[test]
    fn small_peaks_and_partial_departures_never_release() {
        let t = Instant::now();
        let mut m = MemoryRelease::default();
        m.observe(1_000, t);
        m.observe(0, t);
        assert!(!m.due(t + Duration::from_secs(60)), "peak below MIN_PEAK");
        m.observe(4_000, t);
        m.observe(1_001, t);
        assert!(
            !m.due(t + Duration::from_secs(60)),
            "more than a quarter left"
        );
        m.observe(1_000, t);
        assert!(m.due(t + Duration::from_secs(1)));
    }

    #[test]
    fn clients_coming_back_cancel_a_wanted_release_and_the_next_wave_counts_from_the_last_release()
    {
        let t = Instant::now();
        let mut m = MemoryRelease::default();
        m.observe(8_000, t);
        m.observe(100, t);
        m.observe(7_000, t);
        assert!(!m.due(t + Duration::from_secs(60)), "they came back");
        m.observe(1_000, t);
        m.released();
        // The next wave counts from the 1,000 owned at the release, a peak under
        // MIN_PEAK.
        m.observe(200, t);
        assert!(!m.due(t + Duration::from_secs(60)));
    }
}
