//! One client's flush state: the messages in memory, what was sent in which send
//! generation, what Kafka confirmed, and when to load, record, or release. Pure:
//! no I/O, no clock of its own (callers pass `now`), no metrics; the flusher
//! (`flusher.rs`) does the sending, reading and writing it asks for.
//!
//! Invariants (3 in the architecture doc):
//! - `flushed` advances only over a contiguous run of sns confirmed in the current
//!   send generation; confirmations of another generation, or at or below
//!   `flushed`, are ignored.
//! - A failure or a stall starts a new generation that sends again from
//!   `flushed + 1` (go-back-N): the counter must see the sns after a gap again,
//!   after the gap is filled.
//! - Memory holds exactly the stash's entries `flushed + 1 ..= flushed + len`, in
//!   order; anything not contiguous is dropped and read back from the stash later.
//!   Each entry holds its memory [`Reservation`], charged to the client's account,
//!   so letting go of an entry gives its bytes back.
//! - `committed` (what the stash records as flushed) never passes `flushed`, and a
//!   client may be released only when it is disconnected, `flushed` reached every
//!   stored sn, and that is recorded.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_common::stash::{Claim, StashedMessage};

use crate::budget::{ClientMemory, MemoryBudget, Reservation};

/// Source of numbers unique for the flusher's life: send generations, and the ids
/// that match background results to the state that asked for them.
#[derive(Debug, Default)]
pub struct Generations {
    last: u64,
}

impl Generations {
    /// A number never handed out before.
    pub fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

/// A stored message held in memory until Kafka confirms it.
pub struct Pending {
    /// Its sequence number.
    pub sn: u64,
    /// The text.
    pub msg: Arc<str>,
    /// When it was stored, ms since the epoch.
    pub ts: i64,
    memory: Reservation,
}

/// What [`FlushState::append`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stashed under another epoch: not this state's batch; its memory went back.
    Superseded,
    /// Contiguous with memory: held for sending.
    Held,
    /// Not contiguous with memory (catching up from the stash): dropped from
    /// memory, to be read from the stash.
    Dropped,
}

/// What [`FlushState::loaded`] did with entries read from the stash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Memory moved on since the read was asked for; the next tick reads again.
    Stale,
    /// The memory budget has no room now; a later tick retries.
    NoRoom,
    /// Entries were appended to memory.
    Held {
        /// How many.
        entries: usize,
        /// `(found, expected)` when the stash had another sn where the next was
        /// expected (trimmed or missing entries): nothing after it was taken.
        gap: Option<(u64, u64)>,
    },
}

/// What [`FlushState::release_finished`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseFinished {
    /// The client is released: drop the state.
    pub released: bool,
    /// `(known, stored)` when the stash holds more than this state knew of; the
    /// state now catches up to `stored`.
    pub caught_up: Option<(u64, u64)>,
}

/// One client's flush state.
pub struct FlushState {
    /// The client's memory account; every held entry is charged to it.
    account: Arc<ClientMemory>,
    epoch: u64,
    /// Highest sn known to be in the stash.
    stored_sn: u64,
    flushed: u64,
    /// `flushed` as last recorded in the stash.
    committed: u64,
    /// Entries `flushed + 1 ..= flushed + len`.
    pending: VecDeque<Pending>,
    next_send: u64,
    /// Confirmed sns above `flushed`, of this generation.
    confirmed: BTreeSet<u64>,
    generation: u64,
    connected: bool,
    loading: bool,
    committing: bool,
    releasing: bool,
    last_progress: Instant,
}

impl FlushState {
    /// The state after this instance claimed the client: nothing in memory,
    /// sending from `flushed + 1` in `generation`.
    pub fn new(
        claim: Claim,
        connected: bool,
        account: Arc<ClientMemory>,
        generation: u64,
        now: Instant,
    ) -> Self {
        Self {
            account,
            epoch: claim.epoch,
            stored_sn: claim.sn,
            flushed: claim.flushed,
            committed: claim.flushed,
            pending: VecDeque::new(),
            next_send: claim.flushed + 1,
            confirmed: BTreeSet::new(),
            generation,
            connected,
            loading: false,
            committing: false,
            releasing: false,
            last_progress: now,
        }
    }

    /// The epoch this instance writes with.
    #[cfg(test)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest sn confirmed in Kafka without gaps.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Highest sn known to be in the stash.
    #[cfg(test)]
    pub fn stored_sn(&self) -> u64 {
        self.stored_sn
    }

    /// Stored messages not yet confirmed in Kafka.
    pub fn lag(&self) -> u64 {
        self.stored_sn.saturating_sub(self.flushed)
    }

    /// The current send generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last sn held in memory (`flushed` when none is).
    pub fn loaded_upto(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }

    /// Claimed again by this instance (a reconnect, or an adoption of a client
    /// still in memory): memory still mirrors the stash, and sends in flight still
    /// count, so both are kept. `account` is the client's account now (the
    /// registry may have made a new slot); held entries move to it.
    ///
    /// A claim older than the state's epoch is ignored and `false` returned: an
    /// adoption whose news was overtaken by a reconnect's newer claim must not take
    /// the state back to the fenced epoch (its batches would all be superseded).
    pub fn reclaim(&mut self, claim: Claim, connected: bool, account: &Arc<ClientMemory>) -> bool {
        if claim.epoch < self.epoch {
            return false;
        }
        if !Arc::ptr_eq(&self.account, account) {
            for entry in &mut self.pending {
                entry.memory.charge_to(account);
            }
            self.account = account.clone();
        }
        self.epoch = claim.epoch;
        self.connected = connected;
        self.stored_sn = self.stored_sn.max(claim.sn);
        self.committed = self.committed.max(claim.flushed);
        if claim.flushed > self.flushed {
            self.advance_to(claim.flushed);
        }
        true
    }

    /// The connection serving the client at `epoch` closed.
    pub fn disconnect(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.connected = false;
        }
    }

    /// A batch stashed (and replicated) at `epoch`, numbered from `first_sn`, with
    /// `memory` holding exactly its bytes.
    pub fn append(
        &mut self,
        epoch: u64,
        first_sn: u64,
        ts: i64,
        messages: Vec<String>,
        mut memory: Reservation,
    ) -> Appended {
        if epoch != self.epoch || messages.is_empty() {
            return Appended::Superseded;
        }
        let last = first_sn + messages.len() as u64 - 1;
        self.stored_sn = self.stored_sn.max(last);
        if first_sn != self.loaded_upto() + 1 {
            return Appended::Dropped;
        }
        memory.charge_to(&self.account);
        for (sn, msg) in (first_sn..).zip(messages) {
            // The batch's reservation holds the sum of its messages' bytes; each
            // entry takes its own share.
            let share = memory.split_off(msg.len());
            debug_assert_eq!(
                share.bytes(),
                msg.len(),
                "batch reserved less than it holds"
            );
            self.pending.push_back(Pending {
                sn,
                msg: msg.into(),
                ts,
                memory: share,
            });
        }
        Appended::Held
    }

    /// The entry to send next, if it is in memory.
    pub fn next_to_send(&self) -> Option<&Pending> {
        let index = self.next_send.checked_sub(self.flushed + 1)?;
        self.pending.get(usize::try_from(index).ok()?)
    }

    /// The entry [`FlushState::next_to_send`] returned is on its way. The first
    /// send with nothing in flight starts the stall clock: a client idle for longer
    /// than the delivery timeout is not stalled by its next send.
    pub fn sent(&mut self, now: Instant) {
        if self.next_send == self.flushed + 1 {
            self.last_progress = now;
        }
        self.next_send += 1;
    }

    /// Kafka confirmed `sn`, sent in `generation`. `None` when the confirmation is
    /// ignored (another generation, or at or below `flushed`); else how far
    /// `flushed` advanced (0 while an earlier sn is still unconfirmed).
    pub fn confirm(&mut self, sn: u64, generation: u64, now: Instant) -> Option<u64> {
        if generation != self.generation || sn <= self.flushed {
            return None;
        }
        let before = self.flushed;
        self.confirmed.insert(sn);
        let mut freed: Option<Reservation> = None;
        while self.confirmed.remove(&(self.flushed + 1)) {
            self.flushed += 1;
            if let Some(entry) = self.pending.pop_front() {
                debug_assert_eq!(entry.sn, self.flushed);
                // One release for the whole run, not one per entry.
                match &mut freed {
                    Some(all) => all.merge(entry.memory),
                    None => freed = Some(entry.memory),
                }
            }
        }
        drop(freed);
        self.last_progress = now;
        Some(self.flushed - before)
    }

    /// Sending `sn` in `generation` failed. When that is the current generation,
    /// starts a new one from `flushed + 1` and returns true; a failure of an
    /// older generation, or at or below `flushed`, is ignored.
    pub fn fail(
        &mut self,
        sn: u64,
        generation: u64,
        generations: &mut Generations,
        now: Instant,
    ) -> bool {
        if generation != self.generation || sn <= self.flushed {
            return false;
        }
        self.rewind(generations, now);
        true
    }

    /// Go-back-N: a new generation that sends everything after `flushed` again,
    /// in order.
    pub fn rewind(&mut self, generations: &mut Generations, now: Instant) {
        self.generation = generations.next();
        self.next_send = self.flushed + 1;
        self.confirmed.clear();
        self.last_progress = now;
    }

    /// Whether sends are in flight without progress for longer than `timeout`
    /// (lost deliveries: the caller rewinds).
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.next_send > self.flushed + 1
            && now.saturating_duration_since(self.last_progress) > timeout
    }

    /// Moves `flushed` up to `to` (confirmed elsewhere), letting go of entries.
    fn advance_to(&mut self, to: u64) {
        while self.flushed < to {
            self.flushed += 1;
            self.pending.pop_front();
        }
        self.confirmed.retain(|&sn| sn > to);
        self.next_send = self.next_send.max(to + 1);
    }

    /// When the stash holds sns memory does not, and memory holds fewer than
    /// `chunk` entries, and no read is under way: starts one, returning the sn to
    /// read after.
    pub fn start_load(&mut self, chunk: usize) -> Option<u64> {
        if self.loading || self.loaded_upto() >= self.stored_sn || self.pending.len() >= chunk {
            return None;
        }
        self.loading = true;
        Some(self.loaded_upto())
    }

    /// The read started by [`FlushState::start_load`] failed.
    pub fn load_failed(&mut self) {
        self.loading = false;
    }

    /// The read after `after` returned `entries` (in sn order). Takes the run of
    /// them that continues memory, with room reserved from `budget`.
    pub fn loaded(
        &mut self,
        after: u64,
        entries: Vec<StashedMessage>,
        budget: &MemoryBudget,
    ) -> Loaded {
        self.loading = false;
        if after != self.loaded_upto() {
            return Loaded::Stale;
        }
        let bytes: usize = entries.iter().map(|e| e.msg.len()).sum();
        let Some(mut memory) = budget.try_reserve(bytes) else {
            return Loaded::NoRoom;
        };
        memory.charge_to(&self.account);
        let (mut held, mut gap) = (0, None);
        for (expected, entry) in (after + 1..).zip(entries) {
            if entry.sn != expected {
                // Never invent: stop at the first sn that does not continue memory.
                gap = Some((entry.sn, expected));
                break;
            }
            // `memory` holds the sum of all entries, so each gets its full share.
            let share = memory.split_off(entry.msg.len());
            self.pending.push_back(Pending {
                sn: entry.sn,
                msg: entry.msg.into(),
                ts: entry.ts,
                memory: share,
            });
            held += 1;
        }
        // `memory` now holds the bytes of the entries not kept; dropping it gives
        // them back.
        Loaded::Held { entries: held, gap }
    }

    /// When `flushed` is ahead of what the stash records and no write is under
    /// way: starts one, returning `(epoch, flushed)` to record.
    pub fn start_commit(&mut self) -> Option<(u64, u64)> {
        if self.committing || self.flushed <= self.committed {
            return None;
        }
        self.committing = true;
        Some((self.epoch, self.flushed))
    }

    /// The write started at `epoch` is over. False when it was made under an epoch
    /// this instance replaced itself since (its outcome then means nothing here).
    pub fn commit_finished(&mut self, epoch: u64) -> bool {
        self.committing = false;
        epoch == self.epoch
    }

    /// The stash records `stored` as flushed.
    pub fn committed(&mut self, stored: u64) {
        self.committed = self.committed.max(stored);
    }

    /// When the client is disconnected, flushed to the last stored sn, recorded,
    /// and no release or write is under way: starts a release, returning the epoch
    /// to release at.
    pub fn start_release(&mut self) -> Option<u64> {
        let drained = self.flushed == self.stored_sn && self.committed == self.flushed;
        if self.connected || !drained || self.releasing || self.committing {
            return None;
        }
        self.releasing = true;
        Some(self.epoch)
    }

    /// The release started at `epoch` is over: `released`, or refused with the
    /// stash's `meta.sn` when it still holds unflushed messages.
    pub fn release_finished(
        &mut self,
        epoch: u64,
        released: bool,
        unflushed_sn: Option<u64>,
    ) -> ReleaseFinished {
        self.releasing = false;
        let caught_up = unflushed_sn
            .filter(|&sn| sn > self.stored_sn)
            .map(|sn| (std::mem::replace(&mut self.stored_sn, sn), sn));
        ReleaseFinished {
            released: released && epoch == self.epoch,
            caught_up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1_000;

    struct Fixture {
        budget: MemoryBudget,
        account: Arc<ClientMemory>,
        generations: Generations,
        now: Instant,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                budget: MemoryBudget::new(BUDGET),
                account: Arc::new(ClientMemory::default()),
                generations: Generations::default(),
                now: Instant::now(),
            }
        }

        fn state(&mut self, epoch: u64, sn: u64, flushed: u64) -> FlushState {
            let claim = Claim { epoch, sn, flushed };
            let generation = self.generations.next();
            FlushState::new(claim, true, self.account.clone(), generation, self.now)
        }

        /// Appends `texts` as the batch starting at `first_sn`, as a connection
        /// hands it over (reserved, charged to the client).
        fn append(&self, state: &mut FlushState, first_sn: u64, texts: &[&str]) -> Appended {
            let messages: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
            let bytes = messages.iter().map(String::len).sum();
            let mut memory = self.budget.try_reserve(bytes).expect("room");
            memory.charge_to(&self.account);
            state.append(state.epoch(), first_sn, 0, messages, memory)
        }

        /// Sends everything sendable; returns the sns sent, with their generation.
        fn send_all(&self, state: &mut FlushState) -> Vec<(u64, u64)> {
            let mut sent = Vec::new();
            while let Some(entry) = state.next_to_send() {
                sent.push((entry.sn, state.generation()));
                state.sent(self.now);
            }
            sent
        }

        /// (global bytes in use, bytes charged to the client).
        fn memory(&self) -> (usize, usize) {
            (BUDGET - self.budget.available(), self.account.bytes())
        }
    }

    fn stashed(sn: u64, msg: &str) -> StashedMessage {
        StashedMessage {
            sn,
            msg: msg.to_owned(),
            ts: 0,
        }
    }

    #[test]
    fn flushed_advances_only_over_a_contiguous_run() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        assert_eq!(
            f.append(&mut s, 1, &["a", "bb", "ccc", "dddd"]),
            Appended::Held
        );
        let sent = f.send_all(&mut s);
        let g = s.generation();
        assert_eq!(sent, [(1, g), (2, g), (3, g), (4, g)]);
        assert_eq!(f.memory(), (10, 10));

        // Out of order: 2 and 3 wait for 1.
        assert_eq!(s.confirm(3, g, f.now), Some(0));
        assert_eq!(s.confirm(2, g, f.now), Some(0));
        assert_eq!((s.flushed(), f.memory()), (0, (10, 10)));
        // 1 closes the run: 1, 2, 3 flushed at once, their bytes released.
        assert_eq!(s.confirm(1, g, f.now), Some(3));
        assert_eq!((s.flushed(), f.memory()), (3, (4, 4)));
        assert_eq!(s.confirm(4, g, f.now), Some(1));
        assert_eq!((s.flushed(), s.lag(), f.memory()), (4, 0, (0, 0)));
        // A duplicate confirmation changes nothing.
        assert_eq!(s.confirm(4, g, f.now), None);
        assert_eq!(s.flushed(), 4);
    }

    #[test]
    fn a_failure_starts_a_new_generation_at_flushed_plus_one() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        f.append(&mut s, 1, &["a", "b", "c", "d"]);
        f.send_all(&mut s);
        let old = s.generation();
        assert_eq!(s.confirm(1, old, f.now), Some(1));
        assert_eq!(s.confirm(3, old, f.now), Some(0));
        // 2 fails: resend 2, 3, 4 (3 again, although it was confirmed) in order.
        assert!(s.fail(2, old, &mut f.generations, f.now));
        let new = s.generation();
        assert_ne!(new, old);
        assert_eq!(f.send_all(&mut s), [(2, new), (3, new), (4, new)]);
        // The old generation's confirmation of 3 no longer counts: after 2 is
        // confirmed anew, flushed stops at 2 until 3 is confirmed again.
        assert_eq!(s.confirm(2, new, f.now), Some(1));
        assert_eq!(s.flushed(), 2);
        assert_eq!(f.memory(), (2, 2));
    }

    #[test]
    fn stale_generations_are_ignored() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        f.append(&mut s, 1, &["a", "b"]);
        f.send_all(&mut s);
        let old = s.generation();
        s.rewind(&mut f.generations, f.now);
        let new = s.generation();
        // Confirmations and failures of the old generation change nothing.
        assert_eq!(s.confirm(1, old, f.now), None);
        assert!(!s.fail(2, old, &mut f.generations, f.now));
        assert_eq!((s.flushed(), s.generation()), (0, new));
        // Failures at or below flushed are ignored too.
        f.send_all(&mut s);
        assert_eq!(s.confirm(1, new, f.now), Some(1));
        assert!(!s.fail(1, new, &mut f.generations, f.now));
        assert_eq!(s.generation(), new);
    }

    #[test]
    fn only_batches_contiguous_with_memory_are_held() {
        let mut f = Fixture::new();
        // Claimed with 5 stored, none in memory: a new batch from 6 is not
        // contiguous (1..=5 must be read from the stash first).
        let mut s = f.state(2, 5, 0);
        assert_eq!(f.append(&mut s, 6, &["x"]), Appended::Dropped);
        assert_eq!((s.stored_sn(), s.loaded_upto(), f.memory()), (6, 0, (0, 0)));
        // A batch of an older epoch is not this state's.
        let memory = f.budget.try_reserve(1).expect("room");
        assert_eq!(
            s.append(1, 7, 0, vec!["y".into()], memory),
            Appended::Superseded
        );
        assert_eq!((s.stored_sn(), f.memory()), (6, (0, 0)));
    }

    #[test]
    fn loading_continues_memory_and_stops_at_a_gap() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 4, 0);
        assert_eq!(s.start_load(10), Some(0));
        assert_eq!(s.start_load(10), None, "one read at a time");
        let entries = vec![stashed(1, "aa"), stashed(2, "bb"), stashed(4, "dd")];
        assert_eq!(
            s.loaded(0, entries, &f.budget),
            Loaded::Held {
                entries: 2,
                gap: Some((4, 3))
            }
        );
        // Only the kept entries hold memory.
        assert_eq!((s.loaded_upto(), f.memory()), (2, (4, 4)));
        // A read that memory moved past is dropped.
        assert_eq!(s.start_load(10), Some(2));
        f.append(&mut s, 3, &["c"]);
        assert_eq!(s.loaded(2, vec![stashed(3, "c")], &f.budget), Loaded::Stale);
        assert_eq!(f.memory(), (5, 5));
        // Full memory: no room, nothing taken, retried later.
        assert_eq!(s.start_load(10), Some(3));
        let hog = f.budget.try_reserve(BUDGET - 5).expect("the rest");
        assert_eq!(
            s.loaded(3, vec![stashed(4, "dd")], &f.budget),
            Loaded::NoRoom
        );
        drop(hog);
        assert_eq!(s.start_load(10), Some(3));
        assert_eq!(
            s.loaded(3, vec![stashed(4, "dd")], &f.budget),
            Loaded::Held {
                entries: 1,
                gap: None
            }
        );
        assert_eq!(s.start_load(10), None, "all stored sns are in memory");
        assert_eq!(f.memory(), (7, 7));
    }

    #[test]
    fn a_reclaim_advances_to_the_stored_flushed_and_moves_the_account() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        f.append(&mut s, 1, &["a", "b", "c"]);
        f.send_all(&mut s);
        let g = s.generation();
        assert_eq!(s.confirm(3, g, f.now), Some(0));
        let other = Arc::new(ClientMemory::default());
        assert!(s.reclaim(
            Claim {
                epoch: 2,
                sn: 5,
                flushed: 2,
            },
            true,
            &other,
        ));
        assert_eq!((s.epoch(), s.flushed(), s.stored_sn()), (2, 2, 5));
        // Entries 1 and 2 are let go of; 3 stays, charged to the new account, and
        // the generation goes on (sends in flight still count).
        assert_eq!((f.account.bytes(), other.bytes()), (0, 1));
        assert_eq!(BUDGET - f.budget.available(), 1);
        assert_eq!((s.generation(), s.loaded_upto()), (g, 3));
        drop(s);
        assert_eq!((BUDGET - f.budget.available(), other.bytes()), (0, 0));
    }

    #[test]
    fn an_older_claim_arriving_late_is_ignored() {
        // A reconnect claimed epoch 3 while the news of an adoption at epoch 2 was
        // still on its way to the flusher.
        let mut f = Fixture::new();
        let mut s = f.state(3, 0, 0);
        f.append(&mut s, 1, &["a"]);
        let other = Arc::new(ClientMemory::default());
        let late = Claim {
            epoch: 2,
            sn: 0,
            flushed: 0,
        };
        assert!(!s.reclaim(late, false, &other));
        assert_eq!((s.epoch(), s.stored_sn()), (3, 1));
        assert_eq!((f.account.bytes(), other.bytes()), (1, 0), "account kept");
    }

    #[test]
    fn stalls_are_seen_only_with_sends_in_flight() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        let timeout = Duration::from_secs(5);
        f.now += Duration::from_secs(10);
        assert!(!s.stalled(f.now, timeout), "nothing in flight");
        f.append(&mut s, 1, &["a", "b"]);
        f.send_all(&mut s);
        assert!(
            !s.stalled(f.now, timeout),
            "a send after idling starts the clock"
        );
        f.now += Duration::from_secs(4);
        assert!(!s.stalled(f.now, timeout), "within the timeout");
        f.now += Duration::from_secs(2);
        assert!(s.stalled(f.now, timeout));
        s.rewind(&mut f.generations, f.now);
        assert!(!s.stalled(f.now, timeout), "a rewind resets the clock");
        f.send_all(&mut s);
        assert_eq!(s.confirm(1, s.generation(), f.now), Some(1));
        f.now += Duration::from_secs(6);
        assert!(s.stalled(f.now, timeout), "sn 2 still without a result");
        assert_eq!(s.confirm(2, s.generation(), f.now), Some(1));
        f.now += Duration::from_secs(60);
        f.append(&mut s, 3, &["c"]);
        f.send_all(&mut s);
        assert!(
            !s.stalled(f.now, timeout),
            "caught up, then idle: the next send starts the clock"
        );
    }

    #[test]
    fn commits_and_releases_follow_flushed() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        f.append(&mut s, 1, &["a", "b"]);
        f.send_all(&mut s);
        let g = s.generation();
        assert_eq!(s.start_commit(), None, "nothing flushed yet");
        s.confirm(1, g, f.now);
        assert_eq!(s.start_commit(), Some((1, 1)));
        assert_eq!(s.start_commit(), None, "one write at a time");
        s.confirm(2, g, f.now);
        assert!(s.commit_finished(1));
        s.committed(1);
        s.disconnect(1);
        assert_eq!(s.start_release(), None, "2 is flushed but not recorded");
        assert_eq!(s.start_commit(), Some((1, 2)));
        assert_eq!(s.start_release(), None, "not while a write is under way");
        assert!(s.commit_finished(1));
        s.committed(2);
        assert_eq!(s.start_release(), Some(1));
        assert_eq!(s.start_release(), None, "one release at a time");
        // Refused: the stash holds more than was handed over.
        let finished = s.release_finished(1, false, Some(4));
        assert_eq!(
            finished,
            ReleaseFinished {
                released: false,
                caught_up: Some((2, 4))
            }
        );
        assert_eq!((s.stored_sn(), s.start_release()), (4, None));
        assert_eq!(s.start_load(10), Some(2));
        // A write or release of a replaced epoch means nothing here.
        s.reclaim(
            Claim {
                epoch: 3,
                sn: 4,
                flushed: 2,
            },
            false,
            &f.account.clone(),
        );
        assert!(!s.commit_finished(1));
        assert!(!s.release_finished(1, true, None).released);
    }

    #[test]
    fn a_connected_client_is_never_released() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        assert_eq!(s.start_release(), None);
        s.disconnect(0);
        assert_eq!(s.start_release(), None, "another epoch's disconnect");
        s.disconnect(1);
        assert_eq!(s.start_release(), Some(1));
        assert!(s.release_finished(1, true, None).released);
    }

    #[test]
    fn dropping_the_state_gives_all_memory_back() {
        let mut f = Fixture::new();
        let mut s = f.state(1, 0, 0);
        f.append(&mut s, 1, &["abc", "de"]);
        assert_eq!(f.memory(), (5, 5));
        drop(s);
        assert_eq!(f.memory(), (0, 0));
    }
}
