//! The sustained-rate search, without I/O: which offered rate to try next given
//! the windows so far, when to stop, and whether one window was carried.
//!
//! Invariants:
//! - [`Bisection`] keeps `carried < failed` bounds: every rate it proposes lies
//!   strictly between the highest rate carried so far (or the low bound) and the
//!   lowest rate not carried (or the high bound), taken as their geometric mean
//!   (the bounds span two orders of magnitude: an arithmetic midpoint would spend
//!   its first windows far above anything a pipeline carries, each followed by a
//!   long drain).
//! - It stops once the bounds are within the tolerance or the step budget is
//!   spent; if nothing was carried by then it tries the low bound itself once,
//!   so [`Bisection::best`] is a rate that was actually carried, or `None`.
//! - [`judge`] carries a window only if every condition holds: the ACKed rate
//!   kept up with the offered one, the counting lag stayed bounded, end-to-end
//!   p99 within its limit, and every count exact at the end.

/// Share of the offered rate the clients must get ACKed for the window to count
/// as offered at all (the load generator's own limit or a producer that cannot
/// keep up would otherwise pass for a lower rate).
pub const MIN_ACKED_SHARE: f64 = 0.95;

/// Why a search cannot be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// The bounds are not `0 < low < high`, finite.
    #[error("search bounds must satisfy 0 < low < high, got {low} and {high}")]
    Bounds {
        /// Lower bound given.
        low: f64,
        /// Upper bound given.
        high: f64,
    },
}

/// Bisection of the offered rate between a low and a high bound.
#[derive(Debug, Clone)]
pub struct Bisection {
    low: f64,
    high: f64,
    /// Relative width at which to stop: `failed / carried ≤ 1 + tolerance`.
    tolerance: f64,
    max_steps: usize,
    /// Every rate tried, with whether it was carried.
    tried: Vec<(f64, bool)>,
}

impl Bisection {
    /// A search between `low` and `high` msg/s; at most `max_steps` windows
    /// (plus the one at the low bound when nothing else was carried).
    pub fn new(low: f64, high: f64, tolerance: f64, max_steps: usize) -> Result<Self, SearchError> {
        if !(low.is_finite() && high.is_finite() && low > 0.0 && low < high) {
            return Err(SearchError::Bounds { low, high });
        }
        Ok(Self {
            low,
            high,
            tolerance: tolerance.max(0.0),
            max_steps,
            tried: Vec::new(),
        })
    }

    /// The highest rate carried so far.
    pub fn best(&self) -> Option<f64> {
        self.tried
            .iter()
            .filter(|(_, carried)| *carried)
            .map(|(r, _)| *r)
            .max_by(f64::total_cmp)
    }

    /// The lowest rate not carried so far, or the high bound.
    fn ceiling(&self) -> f64 {
        self.tried
            .iter()
            .filter(|(_, carried)| !*carried)
            .map(|(r, _)| *r)
            .fold(self.high, f64::min)
    }

    /// The next offered rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        let floor = self.best().unwrap_or(self.low);
        let ceiling = self.ceiling();
        let narrow = ceiling <= floor * (1.0 + self.tolerance);
        if narrow || self.tried.len() >= self.max_steps {
            // Nothing carried yet: the low bound itself, once.
            let low_tried = self.tried.iter().any(|(r, _)| *r <= self.low);
            return (self.best().is_none() && !low_tried).then_some(self.low);
        }
        Some((floor * ceiling).sqrt())
    }

    /// Notes the outcome of the window at `rate`.
    pub fn record(&mut self, rate: f64, carried: bool) {
        self.tried.push((rate, carried));
    }
}

/// What one window measured, for [`judge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Offered rate over all clients, msg/s.
    pub offered_msg_s: f64,
    /// Messages ACKed per second during the window.
    pub acked_msg_s: f64,
    /// Counting lag early in the window (`None` if the window was too short).
    pub lag_early: Option<u64>,
    /// Counting lag when the window's last line was ACKed.
    pub lag_end: u64,
    /// End-to-end p99 of the window's probes, ms (`None`: no probe counted).
    pub e2e_p99_ms: Option<f64>,
    /// Every count exact at the end.
    pub exact: bool,
}

/// The conditions a window must meet to be carried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How far the lag may grow from early to the end: one counter batch.
    pub lag_slack: u64,
    /// Highest end-to-end p99, ms.
    pub e2e_p99_ms: f64,
}

/// Whether the window was carried, and if not every reason why.
pub fn judge(w: &Window, limits: &Limits) -> (bool, Vec<String>) {
    let mut why = Vec::new();
    let kept_up = w.acked_msg_s >= w.offered_msg_s * MIN_ACKED_SHARE;
    if !kept_up {
        why.push(format!(
            "ACKed {:.0} of {:.0} msg/s offered",
            w.acked_msg_s, w.offered_msg_s
        ));
    }
    // Without an early reading the lag must stay within one batch of nothing.
    let allowed = w.lag_early.unwrap_or(0).saturating_add(limits.lag_slack);
    if w.lag_end > allowed {
        why.push(format!(
            "counting lag grew to {} (allowed {allowed})",
            w.lag_end
        ));
    }
    match w.e2e_p99_ms {
        Some(p) if p <= limits.e2e_p99_ms => {}
        Some(p) => why.push(format!(
            "end-to-end p99 {p:.0} ms > {:.0} ms",
            limits.e2e_p99_ms
        )),
        None => why.push("no end-to-end latency sample".to_owned()),
    }
    if !w.exact {
        why.push("not exact".to_owned());
    }
    (why.is_empty(), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a pipeline that carries everything up to `limit`.
    fn search(limit: f64, low: f64, high: f64, tol: f64, steps: usize) -> (Option<f64>, Vec<f64>) {
        let mut b = Bisection::new(low, high, tol, steps).expect("bounds");
        let mut tried = Vec::new();
        while let Some(rate) = b.next_rate() {
            assert!(tried.len() <= steps + 1, "does not stop: {tried:?}");
            tried.push(rate);
            b.record(rate, rate <= limit);
        }
        (b.best(), tried)
    }

    #[test]
    fn converges_below_the_limit_within_the_tolerance() {
        let (best, tried) = search(21_500.0, 1_000.0, 225_000.0, 0.05, 20);
        let best = best.expect("found");
        assert!(best <= 21_500.0, "{best}");
        assert!(best >= 21_500.0 / 1.05, "{best} {tried:?}");
        // Geometric: the first try is sqrt(1k × 225k) = 15k, not 113k.
        assert!((tried[0] - 15_000.0).abs() < 1.0, "{tried:?}");
    }

    #[test]
    fn every_proposal_lies_between_the_bounds_so_far() {
        let mut b = Bisection::new(1_000.0, 100_000.0, 0.01, 30).expect("bounds");
        let limit = 37_000.0;
        while let Some(rate) = b.next_rate() {
            let floor = b.best().unwrap_or(1_000.0);
            assert!(
                rate > floor && rate < b.ceiling(),
                "{rate} outside ({floor}, {})",
                b.ceiling()
            );
            b.record(rate, rate <= limit);
        }
    }

    #[test]
    fn stops_after_the_step_budget() {
        let (best, tried) = search(50_000.0, 1_000.0, 225_000.0, 0.0, 3);
        assert_eq!(tried.len(), 3, "{tried:?}");
        assert!(best.is_some_and(|b| b <= 50_000.0));
    }

    #[test]
    fn nothing_carried_tries_the_low_bound_once_then_gives_up() {
        let (best, tried) = search(500.0, 1_000.0, 225_000.0, 0.05, 4);
        assert_eq!(best, None);
        assert_eq!(tried.len(), 5, "{tried:?}");
        assert_eq!(tried.last(), Some(&1_000.0));
        // Only the low bound carried: that is the answer.
        let (best, tried) = search(1_000.0, 1_000.0, 225_000.0, 0.05, 4);
        assert_eq!(best, Some(1_000.0), "{tried:?}");
    }

    #[test]
    fn everything_carried_approaches_the_high_bound() {
        let (best, _) = search(f64::INFINITY, 1_000.0, 200_000.0, 0.02, 40);
        let best = best.expect("found");
        assert!((200_000.0 / 1.02..200_000.0).contains(&best), "{best}");
    }

    #[test]
    fn bad_bounds_are_refused() {
        for (low, high) in [
            (0.0, 1.0),
            (5.0, 5.0),
            (5.0, 1.0),
            (1.0, f64::NAN),
            (-1.0, 3.0),
        ] {
            assert!(Bisection::new(low, high, 0.05, 5).is_err(), "{low} {high}");
        }
    }

    fn good() -> Window {
        Window {
            offered_msg_s: 10_000.0,
            acked_msg_s: 9_990.0,
            lag_early: Some(3_000),
            lag_end: 7_000,
            e2e_p99_ms: Some(900.0),
            exact: true,
        }
    }

    const LIMITS: Limits = Limits {
        lag_slack: 5_000,
        e2e_p99_ms: 1_000.0,
    };

    #[test]
    fn a_window_meeting_every_condition_is_carried() {
        assert_eq!(judge(&good(), &LIMITS), (true, vec![]));
        // Exactly at the lag bound still carries.
        let w = Window {
            lag_end: 8_000,
            ..good()
        };
        assert!(judge(&w, &LIMITS).0);
    }

    #[test]
    fn each_condition_alone_fails_the_window() {
        let cases = [
            Window {
                acked_msg_s: 9_000.0,
                ..good()
            },
            Window {
                lag_end: 8_001,
                ..good()
            },
            Window {
                lag_early: None,
                lag_end: 5_001,
                ..good()
            },
            Window {
                e2e_p99_ms: Some(1_000.5),
                ..good()
            },
            Window {
                e2e_p99_ms: None,
                ..good()
            },
            Window {
                exact: false,
                ..good()
            },
            Window {
                acked_msg_s: f64::NAN,
                ..good()
            },
        ];
        for w in cases {
            let (carried, why) = judge(&w, &LIMITS);
            assert!(!carried, "{w:?}");
            assert_eq!(why.len(), 1, "{w:?}: {why:?}");
        }
    }
}
