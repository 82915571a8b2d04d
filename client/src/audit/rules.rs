//! The audit's rules, apart from I/O: what the counter and the aggregator must have
//! counted, replayed from the records of `client_message`, and how the counts in
//! Redis are judged against that.
//!
//! Invariant: the replay applies the counter's rule ([`Outcome::of`], the rule of
//! `count_client.lua`) to each client's records in offset order, so a client's
//! expected count and `last_sn` are both the last sn of the unbroken run 1, 2, 3, …
//! its records reach; a message's expected count is the number of applied
//! (client, sn) records carrying its text, which is what the aggregator's
//! (message, client) high-water mark lets through when the counter forwards in
//! canonical order. Nothing the retained log cannot show is judged: a client whose
//! first retained record follows expired ones (first retained sn > 1 in a partition
//! retention trimmed) is reported as truncated, not as a difference, and message
//! counts are only lower bounds once any record expired.

use std::collections::HashMap;

use serde::Serialize;
use tally_common::counting::Outcome;
use tally_common::records::ClientMessage;
use tally_common::MessageHash;

/// What the replay knows of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReplay {
    /// The partition its records are in.
    pub partition: i32,
    /// The sn of its first retained record.
    pub first_sn: u64,
    /// The counter's `last_sn` (and count) after the records replayed so far.
    pub last_sn: u64,
    /// Its valid records read.
    pub records: u64,
    /// Its first retained record follows records retention deleted: what the
    /// counter made of those is unknown, so it is not replayed.
    pub truncated: bool,
    /// Its records are in more than one partition (the topic's partition count
    /// changed): their relative order is unknown, so it is not replayed.
    pub split: bool,
}

impl ClientReplay {
    /// Whether the replay knows the client's whole history.
    pub fn complete(&self) -> bool {
        !self.truncated && !self.split
    }
}

/// The counter's rule replayed over `client_message`, client by client. Memory: one
/// small entry per client.
#[derive(Debug, Default)]
pub struct Replay {
    clients: HashMap<String, ClientReplay>,
    /// Valid records replayed.
    pub records: u64,
    /// Records the counter dead-letters (they fail `ClientMessage::parse`).
    pub invalid: u64,
}

impl Replay {
    /// Replays one valid record of `partition`, read in offset order. `trimmed`:
    /// retention deleted records of this partition (its earliest retained offset
    /// is above 0). Returns the message's hash when the counter applied the record,
    /// i.e. when it counts for the message.
    pub fn observe(
        &mut self,
        partition: i32,
        trimmed: bool,
        message: &ClientMessage,
    ) -> Option<MessageHash> {
        self.records += 1;
        let state = match self.clients.get_mut(message.client.as_str()) {
            Some(state) => state,
            None => self
                .clients
                .entry(message.client.clone())
                .or_insert(ClientReplay {
                    partition,
                    first_sn: message.sn,
                    last_sn: 0,
                    records: 0,
                    // The producer numbers from 1 and sends in sn order: in an untrimmed
                    // partition a first record above 1 is a gap the counter waits on; in
                    // a trimmed one it may follow expired records.
                    truncated: trimmed && message.sn > 1,
                    split: false,
                }),
        };
        state.records += 1;
        if state.partition != partition {
            state.split = true;
        }
        if !state.complete() {
            return None;
        }
        match Outcome::of(state.last_sn, message.sn) {
            Outcome::Applied => {
                state.last_sn = message.sn;
                Some(MessageHash::of(message.msg.as_bytes()))
            }
            Outcome::Duplicate | Outcome::Gap => None,
        }
    }

    /// Notes a record the counter dead-letters.
    pub fn invalid(&mut self) {
        self.invalid += 1;
    }

    /// The client's replay, if it has records.
    pub fn client(&self, id: &str) -> Option<&ClientReplay> {
        self.clients.get(id)
    }

    /// Client ids with records, sorted.
    pub fn client_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.clients.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Clients with records.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Whether some client's history is not fully replayed (truncated or split).
    pub fn any_incomplete(&self) -> bool {
        self.clients.values().any(|c| !c.complete())
    }
}

/// A client's counts as Redis holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientCounts {
    /// `…:count`.
    pub count: u64,
    /// `…:last_sn`.
    pub last_sn: u64,
}

/// Why something was not judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unseen {
    /// A client's first retained record follows expired ones.
    Truncated,
    /// A client's records are in more than one partition.
    Split,
    /// A message counted more often than the retained log shows, while records
    /// expired: the difference may be expired records' sightings.
    AboveRetained,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Redis holds what the log implies.
    Match,
    /// Redis holds something the log cannot explain.
    Differs,
    /// The log cannot tell.
    NotJudged(Unseen),
}

/// Judges a client's counts in Redis against its replay. A truncated client is
/// checked only for what holds for every client however it was counted: its count
/// equals its `last_sn` (the counter counts exactly the sns 1..=last_sn).
pub fn judge_client(replay: &ClientReplay, found: ClientCounts) -> Verdict {
    if replay.split {
        return Verdict::NotJudged(Unseen::Split);
    }
    if replay.truncated {
        return if found.count == found.last_sn {
            Verdict::NotJudged(Unseen::Truncated)
        } else {
            Verdict::Differs
        };
    }
    if found.count == replay.last_sn && found.last_sn == replay.last_sn {
        Verdict::Match
    } else {
        Verdict::Differs
    }
}

/// Judges a message's count in Redis against the applied sightings the log shows.
/// `lower_bound`: records expired (or some client was not replayed), so sightings
/// the log no longer shows may be counted too; only a count below it differs then.
pub fn judge_message(expected: u64, found: u64, lower_bound: bool) -> Verdict {
    if found == expected {
        Verdict::Match
    } else if lower_bound && found > expected {
        Verdict::NotJudged(Unseen::AboveRetained)
    } else {
        Verdict::Differs
    }
}

/// Whether a value read from Redis while the pipeline kept counting is explained by
/// records appended after the snapshot: above what the snapshot implies, and at most
/// what the log held after the value was read.
pub fn in_flight(at_snapshot: u64, found: u64, after_read: u64) -> bool {
    at_snapshot < found && found <= after_read
}

/// [`in_flight`] for a client: count and `last_sn` move together.
pub fn client_in_flight(at_snapshot: u64, found: ClientCounts, after_read: u64) -> bool {
    found.count == found.last_sn && in_flight(at_snapshot, found.last_sn, after_read)
}

/// Bucket files beyond this many would hold more than the target each; a log this
/// large gets larger buckets instead of more open files.
pub const MAX_BUCKETS: usize = 1024;

/// How many buckets the message hashes of `records` records are split into so that
/// each holds about `per_bucket` at most.
pub fn buckets_for(records: u64, per_bucket: u64) -> usize {
    let per_bucket = per_bucket.max(1);
    let wanted = records.div_ceil(per_bucket);
    usize::try_from(wanted)
        .unwrap_or(MAX_BUCKETS)
        .clamp(1, MAX_BUCKETS)
}

/// The bucket of a message hash: its low 64 bits modulo `buckets` (XXH3's bits are
/// uniform, so buckets get equal shares of distinct texts).
pub fn bucket_of(hash: MessageHash, buckets: usize) -> usize {
    let low = hash.to_bits() as u64;
    (low % buckets.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: &str, sn: u64, msg: &str) -> ClientMessage {
        ClientMessage {
            client: client.into(),
            sn,
            msg: msg.into(),
            ts: 0,
        }
    }

    /// Replays `(client, sn, text)` in order on partition 0; returns the texts of the
    /// applied records.
    fn replay(replay: &mut Replay, trimmed: bool, records: &[(&str, u64, &str)]) -> Vec<String> {
        records
            .iter()
            .filter_map(|(c, sn, m)| {
                replay.observe(0, trimmed, &record(c, *sn, m)).map(|h| {
                    assert_eq!(h, MessageHash::of(m.as_bytes()));
                    (*m).to_owned()
                })
            })
            .collect()
    }

    #[test]
    fn duplicates_and_gaps_count_as_the_counter_counts_them() {
        let mut r = Replay::default();
        // a: 1, 2, a resend of 1 and 2 (go-back-N), 3; b: 2 arrives before 1 (a
        // gap, not counted), then 1, then 2 again (now applied), then 4 (a gap left
        // open).
        let applied = replay(
            &mut r,
            false,
            &[
                ("a", 1, "x"),
                ("a", 2, "y"),
                ("b", 2, "q"),
                ("a", 1, "x"),
                ("a", 2, "y"),
                ("b", 1, "p"),
                ("a", 3, "x"),
                ("b", 2, "q"),
                ("b", 4, "s"),
            ],
        );
        assert_eq!(applied, vec!["x", "y", "p", "x", "q"]);
        assert_eq!(r.records, 9);
        let a = r.client("a").expect("a");
        assert_eq!((a.first_sn, a.last_sn, a.records), (1, 3, 5));
        let b = r.client("b").expect("b");
        assert_eq!((b.first_sn, b.last_sn, b.records), (2, 2, 4));
        assert!(!b.truncated, "an untrimmed partition's first sn 2 is a gap");
        assert_eq!(r.client_ids(), vec!["a", "b"]);
        assert!(!r.any_incomplete());

        assert_eq!(
            judge_client(
                a,
                ClientCounts {
                    count: 3,
                    last_sn: 3
                }
            ),
            Verdict::Match
        );
        for wrong in [(2, 3), (3, 2), (4, 4), (0, 0)] {
            let found = ClientCounts {
                count: wrong.0,
                last_sn: wrong.1,
            };
            assert_eq!(judge_client(a, found), Verdict::Differs, "{wrong:?}");
        }
    }

    #[test]
    fn a_client_whose_early_records_expired_is_truncated_not_different() {
        let mut r = Replay::default();
        // Retention trimmed the partition: c's first retained record is sn 500, d's
        // is sn 1 (its whole history is retained).
        let applied = replay(
            &mut r,
            true,
            &[
                ("c", 500, "m"),
                ("c", 501, "n"),
                ("d", 1, "m"),
                ("d", 2, "n"),
            ],
        );
        assert_eq!(
            applied,
            vec!["m", "n"],
            "only d's records are known applied"
        );
        let c = r.client("c").expect("c");
        assert!(c.truncated && !c.complete());
        assert!(r.any_incomplete());
        assert_eq!(
            judge_client(
                c,
                ClientCounts {
                    count: 501,
                    last_sn: 501
                }
            ),
            Verdict::NotJudged(Unseen::Truncated)
        );
        // Whatever the history, the counter counts exactly the sns 1..=last_sn.
        assert_eq!(
            judge_client(
                c,
                ClientCounts {
                    count: 500,
                    last_sn: 501
                }
            ),
            Verdict::Differs
        );
        let d = r.client("d").expect("d");
        assert_eq!(
            judge_client(
                d,
                ClientCounts {
                    count: 2,
                    last_sn: 2
                }
            ),
            Verdict::Match
        );
    }

    #[test]
    fn a_client_in_two_partitions_is_not_replayed() {
        let mut r = Replay::default();
        assert!(r.observe(0, false, &record("e", 1, "m")).is_some());
        assert!(r.observe(3, false, &record("e", 2, "m")).is_none());
        let e = r.client("e").expect("e");
        assert!(e.split);
        assert_eq!(
            judge_client(
                e,
                ClientCounts {
                    count: 2,
                    last_sn: 2
                }
            ),
            Verdict::NotJudged(Unseen::Split)
        );
        r.invalid();
        assert_eq!((r.records, r.invalid), (2, 1));
    }

    #[test]
    fn message_counts_are_exact_unless_records_expired() {
        assert_eq!(judge_message(3, 3, false), Verdict::Match);
        assert_eq!(judge_message(3, 4, false), Verdict::Differs);
        assert_eq!(judge_message(3, 2, false), Verdict::Differs);
        assert_eq!(judge_message(0, 1, false), Verdict::Differs);
        // Expired sightings may have counted: above is unknown, below is still lost.
        assert_eq!(
            judge_message(3, 4, true),
            Verdict::NotJudged(Unseen::AboveRetained)
        );
        assert_eq!(judge_message(3, 2, true), Verdict::Differs);
        assert_eq!(judge_message(3, 3, true), Verdict::Match);
    }

    #[test]
    fn values_that_moved_after_the_snapshot_are_in_flight_only_within_the_log() {
        assert!(in_flight(10, 12, 15));
        assert!(in_flight(10, 15, 15));
        assert!(!in_flight(10, 16, 15), "more than the log holds");
        assert!(
            !in_flight(10, 10, 15),
            "not moved: an equal value is a match"
        );
        assert!(!in_flight(10, 9, 15), "below the snapshot: lost");
        let found = |count, last_sn| ClientCounts { count, last_sn };
        assert!(client_in_flight(10, found(12, 12), 15));
        assert!(!client_in_flight(10, found(11, 12), 15));
    }

    #[test]
    fn buckets_split_the_hashes_evenly_and_stay_bounded() {
        assert_eq!(buckets_for(0, 500_000), 1);
        assert_eq!(buckets_for(500_000, 500_000), 1);
        assert_eq!(buckets_for(500_001, 500_000), 2);
        assert_eq!(buckets_for(u64::MAX, 1), MAX_BUCKETS);
        assert_eq!(buckets_for(10, 0), MAX_BUCKETS.min(10));
        let buckets = 8;
        let mut sizes = vec![0u32; buckets];
        for i in 0..8_000 {
            let b = bucket_of(MessageHash::of(format!("line {i}").as_bytes()), buckets);
            sizes[b] += 1;
        }
        assert!(sizes.iter().all(|&n| (800..1200).contains(&n)), "{sizes:?}");
        let h = MessageHash::of(b"same");
        assert_eq!(bucket_of(h, 5), bucket_of(h, 5));
    }
}
