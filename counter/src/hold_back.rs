//! Which clients a part of a batch must not apply, because an uncommitted gap
//! record of theirs could be filled out of order on a replay.
//!
//! Invariant: a client with a gap record in a batch is applied again only once
//! that batch committed or was rewound. The engine commits a batch in the cycle
//! after its apply, and applies further parts of a batch, and the whole next
//! batch, while the one before commits. So a gap in any part of batch `n` holds
//! the client back for the rest of batch `n` and for all of batch `n + 1`: its
//! records there stay unprocessed and are carried (see the crate doc, "Canonical
//! replays" and "Overlapped batches"). Holding back too long costs only latency;
//! too short would let a replay count a repeated text once.

use std::collections::HashSet;

use tally_common::ClientId;
use tally_consume::Part;

/// The clients held back, batch by batch.
#[derive(Debug, Default)]
pub struct HoldBack {
    /// Clients with a gap record in the batch being applied (any part so far).
    gapped: HashSet<ClientId>,
    /// Clients with a gap record in the batch before it, which may still commit.
    previous: HashSet<ClientId>,
}

impl HoldBack {
    /// A part of a batch begins: at its first part, the batch that was being
    /// applied becomes the one that may still be committing.
    pub fn part_begins(&mut self, part: Part) {
        if part == Part::First {
            self.previous = std::mem::take(&mut self.gapped);
        }
    }

    /// Whether `client`'s records wait in the current part.
    pub fn holds(&self, client: &ClientId) -> bool {
        self.gapped.contains(client) || self.previous.contains(client)
    }

    /// `client` had a gap record in the current part.
    pub fn gap(&mut self, client: ClientId) {
        self.gapped.insert(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::from_record(s).expect("valid client id")
    }

    #[test]
    fn a_gap_holds_its_client_for_the_rest_of_its_batch_and_the_next_one() {
        let mut hold = HoldBack::default();
        hold.part_begins(Part::First);
        assert!(!hold.holds(&id("a")));
        hold.gap(id("a"));

        // A later part of the same batch commits or aborts with the gap.
        hold.part_begins(Part::More);
        assert!(hold.holds(&id("a")), "later part of the gap's batch");
        assert!(!hold.holds(&id("b")));

        // The next batch is applied while the gap's batch may still commit.
        hold.part_begins(Part::First);
        assert!(hold.holds(&id("a")), "first part of the next batch");
        hold.part_begins(Part::More);
        assert!(hold.holds(&id("a")), "later part of the next batch");

        // By the batch after, the gap's batch committed or was rewound.
        hold.part_begins(Part::First);
        assert!(!hold.holds(&id("a")), "two batches later");
    }

    #[test]
    fn a_gap_in_a_later_part_holds_like_one_in_the_first() {
        let mut hold = HoldBack::default();
        hold.part_begins(Part::First);
        hold.part_begins(Part::More);
        hold.gap(id("a"));
        hold.part_begins(Part::More);
        assert!(hold.holds(&id("a")), "third part of the gap's batch");
        hold.part_begins(Part::First);
        assert!(hold.holds(&id("a")), "next batch");
        hold.part_begins(Part::First);
        assert!(!hold.holds(&id("a")), "two batches later");
    }
}
