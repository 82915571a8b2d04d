//! The flusher's send window for one partition of `client_message`: messages
//! bound for it reach the Kafka producer in rounds, one round at a time.
//!
//! Invariant: nothing is handed to the Kafka producer while a message of the
//! window's earlier round is unreported (neither delivered nor failed), and a round opens
//! no sooner than `linger` after its first message started waiting, so a
//! message waits for `linger` or the previous round's reports, whichever is
//! later (and for a further round when one fills up). The window only delays
//! hand-overs; what is handed over, and in which order, is still each client's
//! [`crate::flush_state::FlushState`]'s to decide.
//!
//! Why the flusher holds messages instead of librdkafka: librdkafka 2.12.1's
//! idempotent producer builds a partition's next `ProduceRequest` only once none
//! of that partition's *messages* is in flight (it compares their count with the
//! five-*request* window), and while it waits, a message that has lingered past
//! `linger.ms` makes its broker thread poll the socket with a zero timeout: the
//! thread spins for the rest of the `acks=all` round trip. On a busy box, whose
//! round trips outlast the linger, that was half a core of the producer
//! (docs/benchmarks.md). Messages held here cost nothing while they wait, and a
//! round handed over at once fits one request: the producer's own linger only
//! gathers the hand-over burst ([`BURST_LINGER_MS`], which must outlast the
//! hand-over, or the round is cut in two and the spin is back). The flusher keeps one
//! window per partition (a client's key decides its partition), because the
//! limit is per partition: one round across all partitions waited for the
//! slowest partition's answer.
//!
//! Pure logic: the flusher asks and reports, this decides.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tally_common::kafka::key_partition;
use tally_common::ClientId;

/// `linger.ms` of the flusher's Kafka producer: it gathers a round's hand-over
/// into one request per partition, so it must outlast the hand-over itself. A
/// round of ~2,000 messages takes a few milliseconds to hand over, longer when
/// the flusher's thread is preempted on a busy box; with 5 ms, rounds were cut
/// in two, the second part waited (spinning) for the first's round trip, and
/// with slow brokers that spin took the CPU the brokers needed: the producer
/// used 29–45 µs/msg at 40,000 msg/s and fell seconds behind. 50 ms: 14 µs/msg
/// and no backlog; the cost is ~45 ms more in the flusher's stage
/// (docs/benchmarks.md, "the flusher's burst linger").
pub const BURST_LINGER_MS: u64 = 50;

/// Decides when the flusher may hand messages to the Kafka producer.
#[derive(Debug)]
pub struct SendWindow {
    linger: Duration,
    /// Most bytes (keys and values) a round hands over: within the Kafka
    /// producer's `batch.size`, so a round is not split into two requests (the
    /// second would wait, spinning, for the first).
    round_bytes: usize,
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
    pub fn new(linger: Duration, round_bytes: usize) -> Self {
        Self {
            linger,
            round_bytes: round_bytes.max(1),
            unreported: 0,
            held_since: None,
            open: None,
        }
    }

    /// Whether a message of `bytes` may be handed over now; if not, it is held
    /// for the next round (the caller keeps it and asks again once that opens).
    pub fn admit(&mut self, bytes: usize, now: Instant) -> bool {
        match self.open.as_mut() {
            // The first message of a round always fits, however large.
            Some(round) if round.handed == 0 || round.handed + bytes <= self.round_bytes => {
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

/// The flusher's send windows, one per partition of `client_message`, and the
/// clients each holds for its next round.
///
/// A client's window is its key's partition under the partition count last
/// learned ([`Self::set_partitions`]). A wrong count costs only speed (rounds
/// that do not match librdkafka's requests), never a message: every window
/// still hands over everything it holds.
#[derive(Debug)]
pub struct SendWindows {
    linger: Duration,
    round_bytes: usize,
    /// The partition count keys are mapped with.
    partitions: i32,
    /// Indexed by partition; never shrinks, so a report always finds the window
    /// its message was admitted by.
    windows: Vec<SendWindow>,
    /// Each window's held clients, in the order they were held: a round hands
    /// over in this order, so none waits behind later ones twice.
    waiting: Vec<VecDeque<ClientId>>,
    /// Clients with messages not handed over: held for a round, or stopped on a
    /// full producer queue. A client is in one window's `waiting` at most once.
    held: HashSet<ClientId>,
}

impl SendWindows {
    pub fn new(linger: Duration, round_bytes: usize, partitions: i32) -> Self {
        let mut windows = Self {
            linger,
            round_bytes,
            partitions: 1,
            windows: Vec::new(),
            waiting: Vec::new(),
            held: HashSet::new(),
        };
        windows.set_partitions(partitions);
        windows
    }

    /// The topic has `partitions` partitions (from metadata, or a delivery report).
    pub fn set_partitions(&mut self, partitions: i32) {
        self.partitions = partitions.max(1);
        let count = usize::try_from(self.partitions).unwrap_or(1);
        while self.windows.len() < count {
            self.windows
                .push(SendWindow::new(self.linger, self.round_bytes));
            self.waiting.push(VecDeque::new());
        }
    }

    /// A message was delivered to `partition`: the topic has at least that many.
    pub fn saw_partition(&mut self, partition: i32) {
        if partition >= self.partitions {
            self.set_partitions(partition.saturating_add(1));
        }
    }

    /// The window of `id`'s messages: its key's partition.
    pub fn of(&self, id: &ClientId) -> usize {
        usize::try_from(key_partition(id.as_str().as_bytes(), self.partitions)).unwrap_or(0)
    }

    /// [`SendWindow::admit`] in window `window`.
    pub fn admit(&mut self, window: usize, bytes: usize, now: Instant) -> bool {
        self.windows
            .get_mut(window)
            .is_some_and(|w| w.admit(bytes, now))
    }

    /// [`SendWindow::refused`] in window `window`.
    pub fn refused(&mut self, window: usize, bytes: usize, now: Instant) {
        if let Some(w) = self.windows.get_mut(window) {
            w.refused(bytes, now);
        }
    }

    /// A message admitted by window `window` was reported.
    pub fn reported(&mut self, window: usize) {
        if let Some(w) = self.windows.get_mut(window) {
            w.reported(1);
        }
    }

    /// Holds `id` for window `window`'s next round (once, wherever it is held).
    pub fn hold(&mut self, window: usize, id: &ClientId, now: Instant) {
        let (Some(w), Some(waiting)) = (self.windows.get_mut(window), self.waiting.get_mut(window))
        else {
            return;
        };
        w.hold(now);
        if self.held.insert(id.clone()) {
            waiting.push_back(id.clone());
        }
    }

    /// `id` has nothing left to hand over: a round that reaches it skips it.
    pub fn release(&mut self, id: &ClientId) {
        self.held.remove(id);
    }

    /// The Kafka producer was replaced: the old one's reports will not come.
    pub fn forget_unreported(&mut self) {
        self.windows
            .iter_mut()
            .for_each(SendWindow::forget_unreported);
    }

    /// When the next round of any window may open.
    pub fn opens_at(&self) -> Option<Instant> {
        self.windows.iter().filter_map(SendWindow::opens_at).min()
    }

    /// Opens every window whose round is due at `now`, and moves the clients it
    /// held into `into`, in the order they were held: the caller hands over what
    /// each has (each message through [`Self::admit`]; one a round cannot take is
    /// held again, for the next round) and then calls [`Self::close`].
    pub fn open_due(&mut self, now: Instant, into: &mut Vec<ClientId>) {
        for (window, waiting) in self.windows.iter_mut().zip(&mut self.waiting) {
            if window.open_if_due(now) {
                let held = &mut self.held;
                into.extend(waiting.drain(..).filter(|id| held.remove(id)));
            }
        }
    }

    /// Ends the rounds [`Self::open_due`] opened.
    pub fn close(&mut self) {
        self.windows.iter_mut().for_each(SendWindow::close);
    }

    /// Gives back the held set's memory once few clients are left.
    pub fn shrink_to_fit(&mut self) {
        self.held.shrink_to_fit();
        self.waiting.iter_mut().for_each(VecDeque::shrink_to_fit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(50);

    /// A window whose first round (one message held at `t0`) is open.
    fn first_round_open(round_bytes: usize, held: usize, t0: Instant) -> SendWindow {
        let mut window = SendWindow::new(LINGER, round_bytes);
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

#[cfg(test)]
mod windows_tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(50);

    /// The first of `c0`, `c1`, … whose key maps to `partition` of `partitions`.
    fn client_on(partition: usize, windows: &SendWindows) -> ClientId {
        (0..)
            .map(|i| ClientId::parse(&format!("c{i}")).expect("a valid id"))
            .find(|id| windows.of(id) == partition)
            .expect("some key maps to every partition")
    }

    #[test]
    fn a_client_s_window_is_its_key_s_partition() {
        let mut windows = SendWindows::new(LINGER, 1_000, 12);
        let id = ClientId::parse("client-7").expect("a valid id");
        let expected = key_partition(b"client-7", 12);
        assert_eq!(windows.of(&id), usize::try_from(expected).expect("≥ 0"));
        // A report from a partition beyond the count: the topic grew.
        windows.saw_partition(15);
        let expected = key_partition(b"client-7", 16);
        assert_eq!(windows.of(&id), usize::try_from(expected).expect("≥ 0"));
        windows.saw_partition(3);
        assert_eq!(windows.of(&id), usize::try_from(expected).expect("≥ 0"));
    }

    #[test]
    fn an_unreported_round_holds_back_only_its_own_partition() {
        let t0 = Instant::now();
        let mut windows = SendWindows::new(LINGER, 1_000, 2);
        let (a, b) = (client_on(0, &windows), client_on(1, &windows));
        for id in [&a, &b] {
            let window = windows.of(id);
            assert!(!windows.admit(window, 10, t0));
            windows.hold(window, id, t0);
        }
        assert_eq!(windows.opens_at(), Some(t0 + LINGER));
        let mut due = Vec::new();
        windows.open_due(t0 + LINGER, &mut due);
        assert_eq!(due, vec![a.clone(), b.clone()]);
        assert!(windows.admit(0, 10, t0 + LINGER), "a's message goes");
        assert!(windows.admit(1, 10, t0 + LINGER), "b's message goes");
        windows.close();

        // Both hold more; only b's partition answers.
        let t1 = t0 + LINGER + Duration::from_millis(10);
        for (id, window) in [(&a, 0), (&b, 1)] {
            assert!(!windows.admit(window, 10, t1));
            windows.hold(window, id, t1);
        }
        windows.reported(1);
        assert_eq!(windows.opens_at(), Some(t1 + LINGER), "b's window is due");
        due.clear();
        windows.open_due(t1 + LINGER, &mut due);
        assert_eq!(due, vec![b.clone()], "a's round is still unreported");
        assert!(!windows.admit(0, 10, t1 + LINGER), "a's window is not open");
        windows.hold(0, &a, t1 + LINGER);
        assert!(windows.admit(1, 10, t1 + LINGER));
        windows.close();
        assert_eq!(windows.opens_at(), None, "both windows have a round out");
        windows.reported(0);
        assert_eq!(windows.opens_at(), Some(t1 + LINGER));
        due.clear();
        windows.open_due(t1 + LINGER, &mut due);
        assert_eq!(due, vec![a], "held once, though held twice");
    }

    #[test]
    fn a_released_client_is_skipped_and_a_replaced_producer_is_not_awaited() {
        let t0 = Instant::now();
        let mut windows = SendWindows::new(LINGER, 1_000, 1);
        let ids: Vec<ClientId> = ["x", "y", "z"]
            .iter()
            .map(|id| ClientId::parse(id).expect("a valid id"))
            .collect();
        for id in &ids {
            windows.hold(0, id, t0);
        }
        windows.release(&ids[1]);
        let mut due = Vec::new();
        windows.open_due(t0 + LINGER, &mut due);
        assert_eq!(due, vec![ids[0].clone(), ids[2].clone()]);
        assert!(windows.admit(0, 10, t0 + LINGER));
        windows.close();
        windows.hold(0, &ids[0], t0 + LINGER);
        assert_eq!(windows.opens_at(), None, "one is unreported");
        windows.forget_unreported();
        assert_eq!(windows.opens_at(), Some(t0 + LINGER + LINGER));
    }
}
