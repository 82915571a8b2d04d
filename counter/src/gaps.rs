//! Clients whose records are waiting behind a gap, and which of them have waited
//! too long.
//!
//! Invariant: the tracker only observes; it never changes what is counted. A gap
//! is closed by the producer resending the missing sn, never by the counter giving
//! up on it (the original counter froze such a client silently; here it is at
//! least visible: a warning per stalled client and `tally_counter_stalled_clients`).
//! Memory is bounded by the clients of this member's partitions that are in a gap:
//! entries of revoked partitions are forgotten.

use std::collections::HashMap;
use std::time::Duration;

use tally_common::counting::Outcome;
use tally_common::ClientId;
use tokio::time::Instant;
use tracing::{info, warn};

struct Waiting {
    partition: i32,
    since: Instant,
    warned: bool,
}

/// Gap state per client.
pub struct GapTracker {
    stall_after: Duration,
    waiting: HashMap<ClientId, Waiting>,
}

impl GapTracker {
    /// A tracker calling a client stalled after `stall_after` in a gap.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            waiting: HashMap::new(),
        }
    }

    /// Notes the outcomes of a client's records in one batch, in order. The client
    /// is in a gap when its last record that was not a duplicate was a gap; an
    /// applied record after it means the gap was filled; duplicates say nothing.
    pub fn observe(&mut self, client: &ClientId, partition: i32, outcomes: &[Outcome]) {
        match outcomes.iter().rev().find(|o| **o != Outcome::Duplicate) {
            Some(Outcome::Gap) => {
                self.waiting.entry(client.clone()).or_insert(Waiting {
                    partition,
                    since: Instant::now(),
                    warned: false,
                });
            }
            Some(Outcome::Applied) => {
                if let Some(w) = self.waiting.remove(client) {
                    if w.warned {
                        info!(client = %client, waited_ms = w.since.elapsed().as_millis() as u64, "stalled client's gap filled");
                    }
                }
            }
            _ => {}
        }
    }

    /// Forgets the clients of partitions this member no longer owns.
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        if !partitions.is_empty() {
            self.waiting
                .retain(|_, w| !partitions.contains(&w.partition));
        }
    }

    /// Warns once about each newly stalled client and publishes how many are
    /// stalled; returns that number.
    pub fn report(&mut self) -> usize {
        let mut stalled = 0;
        for (client, w) in &mut self.waiting {
            if w.since.elapsed() < self.stall_after {
                continue;
            }
            stalled += 1;
            if !w.warned {
                w.warned = true;
                warn!(
                    client = %client,
                    partition = w.partition,
                    waiting_ms = w.since.elapsed().as_millis() as u64,
                    "client stalled: an sn is missing and later records wait behind it"
                );
            }
        }
        metrics::gauge!(tally_common::observe::names::COUNTER_STALLED_CLIENTS).set(stalled as f64);
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Applied as A, Duplicate as D, Gap as G};

    #[tokio::test(start_paused = true)]
    async fn a_client_left_in_a_gap_becomes_stalled_until_filled() {
        let mut t = GapTracker::new(Duration::from_secs(5));
        let c = ClientId::parse("c").expect("id");
        let other = ClientId::parse("other").expect("id");
        t.observe(&c, 0, &[A, G, D]);
        t.observe(&other, 1, &[A, D]);
        assert_eq!(t.report(), 0);
        tokio::time::advance(Duration::from_secs(6)).await;
        // Only duplicates since: still waiting.
        t.observe(&c, 0, &[D]);
        assert_eq!(t.report(), 1);
        t.observe(&c, 0, &[A, A]);
        assert_eq!(t.report(), 0);

        t.observe(&c, 0, &[G]);
        t.forget_partitions(&[0]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(t.report(), 0, "revoked partitions are forgotten");
    }
}
