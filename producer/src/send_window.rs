//! The flusher's send window: messages reach the Kafka producer in rounds, one
//! round at a time.
//!
//! Invariant: nothing is handed to the Kafka producer while a message of an
//! earlier round is unreported (neither delivered nor failed), and a round opens
//! no sooner than `linger` after its first message started waiting, so a
//! message waits for `linger` or the previous round's reports, whichever is
//! later (and for a further round when one fills up). The window only delays hand-overs; what is handed over, and in which
//! order, is still each client's [`crate::flush_state::FlushState`]'s to decide.
//!
//! Why the flusher holds messages instead of librdkafka: librdkafka 2.12.1's
//! idempotent producer builds a partition's next `ProduceRequest` only once none
//! of that partition's *messages* is in flight (it compares their count with the
//! five-*request* window), and while it waits, a message that has lingered past
//! `linger.ms` makes its broker thread poll the socket with a zero timeout: the
//! thread spins for the rest of the `acks=all` round trip. On a busy box, whose
//! round trips outlast the linger, that was half a core of the producer
//! (docs/benchmarks.md). Messages held here cost nothing while they wait, and a
//! round handed over at once fits one request per partition: the producer's own
//! linger only gathers the hand-over burst ([`BURST_LINGER_MS`]).
//!
//! Pure logic: the flusher asks and reports, this decides.

use std::time::{Duration, Instant};

/// `linger.ms` of the flusher's Kafka producer: meant to gather a round's
/// hand-over into one request per partition (20 ms was no better in a window at
/// 40,000 msg/s), short enough that the round leaves at once.
pub const BURST_LINGER_MS: u64 = 5;

/// Decides when the flusher may hand messages to the Kafka producer.
#[derive(Debug)]
pub struct SendWindow {
    linger: Duration,
    /// Most bytes (keys and values) a round hands over per partition: within the
    /// Kafka producer's `batch.size`, so a partition's share of a round is not
    /// split into two requests (the second would wait, spinning, for the first).
    partition_bytes: usize,
    /// Partitions seen in delivery reports (at least 1): a round hands over at
    /// most `partition_bytes` times this; keys spread over the partitions.
    partitions: usize,
    /// Messages handed over and not yet reported.
    unreported: usize,
    /// When the first message held for the next round started waiting.
    held_since: Option<Instant>,
    /// The round being handed over; `None` between rounds.
    open: Option<Round>,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    /// Bytes handed over so far.
    handed: usize,
    /// When its first message started waiting: what it cannot take has waited
    /// since then, so the next round owes it no further linger.
    held_since: Instant,
}

impl SendWindow {
    pub fn new(linger: Duration, partition_bytes: usize) -> Self {
        Self {
            linger,
            partition_bytes: partition_bytes.max(1),
            partitions: 1,
            unreported: 0,
            held_since: None,
            open: None,
        }
    }

    /// Whether a message of `bytes` may be handed over now; if not, it is held
    /// for the next round (the caller keeps it and asks again once that opens).
    pub fn admit(&mut self, bytes: usize, now: Instant) -> bool {
        let limit = self.partition_bytes.saturating_mul(self.partitions);
        match self.open.as_mut() {
            // The first message of a round always fits, however large.
            Some(round) if round.handed == 0 || round.handed + bytes <= limit => {
                round.handed += bytes;
                self.unreported += 1;
                true
            }
            _ => {
                self.hold(now);
                false
            }
        }
    }

    /// Something is held for the next round from `now` (if nothing was before);
    /// left over from an open round, from when that round's first started waiting.
    pub fn hold(&mut self, now: Instant) {
        let since = self.open.map_or(now, |round| round.held_since);
        self.held_since.get_or_insert(since);
    }

    /// A message admitted by [`Self::admit`] was not handed over after all (the
    /// producer refused it); it is held again.
    pub fn refused(&mut self, bytes: usize, now: Instant) {
        if let Some(round) = self.open.as_mut() {
            round.handed = round.handed.saturating_sub(bytes);
        }
        self.unreported = self.unreported.saturating_sub(1);
        self.hold(now);
    }

    /// `n` handed-over messages were reported (delivered or failed).
    pub fn reported(&mut self, n: usize) {
        self.unreported = self.unreported.saturating_sub(n);
    }

    /// A message was delivered to `partition`.
    pub fn saw_partition(&mut self, partition: i32) {
        let count = usize::try_from(partition).map_or(0, |p| p + 1);
        self.partitions = self.partitions.max(count);
    }

    /// The Kafka producer was replaced: the old one's reports will not come.
    pub fn forget_unreported(&mut self) {
        self.unreported = 0;
    }

    /// When the held messages' round may open: `None` while nothing is held or
    /// an earlier round is unreported.
    pub fn opens_at(&self) -> Option<Instant> {
        match (self.unreported, self.held_since) {
            (0, Some(since)) => Some(since + self.linger),
            _ => None,
        }
    }

    /// Opens a round if it is due at `now`: the caller then hands over what is
    /// held (each message through [`Self::admit`]) and calls [`Self::close`].
    pub fn open_if_due(&mut self, now: Instant) -> bool {
        match (self.opens_at(), self.held_since) {
            (Some(at), Some(held_since)) if at <= now => {
                self.held_since = None;
                self.open = Some(Round {
                    handed: 0,
                    held_since,
                });
                true
            }
            _ => false,
        }
    }

    /// Ends the round opened by [`Self::open_if_due`]: later messages are held
    /// for the next.
    pub fn close(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(50);

    /// A window whose first round (one message held at `t0`) is open.
    fn first_round_open(partition_bytes: usize, held: usize, t0: Instant) -> SendWindow {
        let mut window = SendWindow::new(LINGER, partition_bytes);
        assert!(!window.admit(held, t0));
        assert!(window.open_if_due(t0 + LINGER));
        window
    }

    #[test]
    fn a_first_message_waits_the_linger_then_its_round_opens() {
        let t0 = Instant::now();
        let mut window = SendWindow::new(LINGER, 1_000);
        assert!(!window.admit(10, t0), "nothing is open before a round");
        assert!(!window.admit(10, t0 + Duration::from_millis(20)));
        assert_eq!(window.opens_at(), Some(t0 + LINGER), "from the first held");
        assert!(!window.open_if_due(t0 + Duration::from_millis(49)));
        assert!(window.open_if_due(t0 + LINGER));
        assert!(window.admit(10, t0 + LINGER));
        assert!(window.admit(10, t0 + LINGER));
        window.close();
        assert_eq!(window.opens_at(), None, "nothing held");
    }

    #[test]
    fn no_round_opens_while_an_earlier_one_is_unreported() {
        let t0 = Instant::now();
        let mut window = first_round_open(1_000, 10, t0);
        assert!(window.admit(10, t0 + LINGER));
        assert!(window.admit(10, t0 + LINGER));
        window.close();
        // Held long past the linger, but two messages are out.
        let later = t0 + Duration::from_secs(1);
        assert!(!window.admit(10, t0 + LINGER));
        assert_eq!(window.opens_at(), None);
        assert!(!window.open_if_due(later));
        window.reported(1);
        assert!(!window.open_if_due(later), "one is still out");
        window.reported(1);
        // The held message waited longer than the linger: it goes at once.
        assert_eq!(window.opens_at(), Some(t0 + LINGER + LINGER));
        assert!(window.open_if_due(later));
    }

    #[test]
    fn a_round_stops_admitting_once_it_holds_a_batch() {
        let t0 = Instant::now();
        let mut window = first_round_open(25, 10, t0);
        assert!(window.admit(10, t0 + LINGER));
        assert!(window.admit(10, t0 + LINGER));
        assert!(
            !window.admit(10, t0 + LINGER),
            "30 bytes: the round is full"
        );
        assert!(window.admit(5, t0 + LINGER), "25 bytes still fit");
        window.close();
        window.reported(3);
        assert_eq!(
            window.opens_at(),
            Some(t0 + LINGER),
            "what the round could not take has waited since t0: it goes with the reports"
        );

        let mut window = first_round_open(25, 100, t0);
        assert!(
            window.admit(100, t0 + LINGER),
            "a round's first always fits"
        );
        assert!(!window.admit(1, t0 + LINGER));
        window.close();
        assert_eq!(window.opens_at(), None);
        window.reported(1);
        assert_eq!(window.opens_at(), Some(t0 + LINGER));

        // Three partitions seen: a round takes three partitions' worth.
        window.saw_partition(2);
        window.saw_partition(0);
        assert!(window.open_if_due(t0 + LINGER + LINGER));
        assert!(window.admit(70, t0));
        assert!(window.admit(5, t0), "75 = 3 × 25");
        assert!(!window.admit(1, t0));
    }

    #[test]
    fn a_refused_message_is_held_again_and_not_awaited() {
        let t0 = Instant::now();
        let mut window = first_round_open(1_000, 10, t0);
        assert!(window.admit(10, t0 + LINGER));
        window.refused(10, t0 + LINGER);
        window.close();
        assert_eq!(
            window.opens_at(),
            Some(t0 + LINGER),
            "nothing is out, and the refused one has waited since t0"
        );
        window.admit(10, t0 + LINGER);
        assert_eq!(
            window.opens_at(),
            Some(t0 + LINGER),
            "the first held sets it"
        );
    }

    #[test]
    fn a_replaced_producer_leaves_nothing_to_wait_for() {
        let t0 = Instant::now();
        let mut window = first_round_open(1_000, 10, t0);
        assert!(window.admit(10, t0 + LINGER));
        window.close();
        window.admit(10, t0 + LINGER);
        assert_eq!(window.opens_at(), None);
        window.forget_unreported();
        assert_eq!(window.opens_at(), Some(t0 + LINGER + LINGER));
    }
}
