//! The consume engine of tally's counting services: a consumer-group member that
//! reads a topic in batches, hands each batch to a [`Processor`] (the counter, the
//! aggregator), and commits what the processor returns through a [`Sink`] — or
//! rewinds, or rejoins the group. The processors only say what a batch means; every
//! rule about Kafka lives here.
//!
//! Invariants (numbers as in `docs/architecture.md`):
//!
//! - **Overlapped cycles; growing batches.** Each cycle commits the batch
//!   applied in the previous cycle while it applies the next one (Kafka's round
//!   trips overlap Redis's). As long as that commit runs, the engine goes on
//!   polling and applies what arrives as further parts of the same next batch
//!   ([`Part`]), so a record that arrives during a commit is committed by the next
//!   one, not the one after. A batch stops growing at its limits, when a part
//!   carries records, at a revocation and at shutdown. Polls may therefore run
//!   while a transaction is open, and a rebalance callback may revoke partitions
//!   whose offsets that transaction commits: the next owner reads its start
//!   offsets with `require_stable` (librdkafka does for `read_committed`), so it
//!   waits for that transaction's outcome and starts after it (committed) or at
//!   the offsets before it (aborted), and the transaction's offset commit is
//!   fenced if it was sent after the group's generation moved. Either way the
//!   next owner starts where Redis holds every effect before it, and whatever it
//!   replays is safe to apply again. Nothing is applied after a poll that revoked
//!   partitions: the batch growing then is dropped and every assigned partition
//!   rewound to its committed offset (its offsets may name a revoked partition).
//!   While a batch waits for its commit, the collection at the top of a cycle
//!   takes only the records already fetched. On assignment, consumption starts
//!   at the committed offsets.
//! - **Effects one batch ahead of commits.** When a batch is applied, the previous
//!   one may still fail to commit and be replayed, and the parts of one batch
//!   commit or are dropped together. A processor whose replay depends on what was
//!   applied before it must not let a part's effects change how a record of an
//!   uncommitted batch would be classified on replay: the counter holds back a
//!   client left in a gap by any part of a batch for the rest of that batch and
//!   all of the next one.
//! - **Offsets after effects (5).** A processor returns only once its batch's
//!   Redis effects are replicated; the engine then commits the batch's offsets
//!   together with (transactional sink) or after (plain sink) its output records.
//!   Commits run one at a time, in batch order. A crash anywhere before the commit
//!   replays the batch, so every effect must be safe to apply twice (the Lua
//!   scripts are sn-guarded).
//! - **Partial commits and carry.** A processor may commit a partition only up to
//!   some record and hand the rest back ([`Processed::carry`]); they are processed
//!   again first in the next batch, and forgotten on a rewind or rejoin (the
//!   committed offset is where they are read again). The counter's canonical
//!   replays rest on this.
//! - **Failure → known state.** A failed commit recovers the sink (abort, or a new
//!   transactional producer that fences the old one: invariant 7) and rewinds every
//!   assigned partition to its committed offset; the records after it are read
//!   again, those of the batch applied alongside included (it is dropped). Nothing
//!   of an uncommitted batch is ever assumed to have happened.
//! - **Zombie guard.** Before a batch and before every Redis write (the processor
//!   calls [`Membership::check`]) the member confirms it did not stand still since
//!   its view of the group was last confirmed and polled recently; otherwise the
//!   batch is dropped and the member rejoins ([`zombie`]).
//! - **Shutdown.** A batch not yet applied when shutdown is requested is dropped
//!   uncommitted (replayed by the next owner); one whose commit had begun
//!   finishes, and one applied but not committed yet is committed before the
//!   member leaves its group.

use std::time::Duration;

pub mod engine;
mod events;
pub mod group;
pub mod out;
pub mod sink;
pub mod txn;
pub mod zombie;

pub use engine::{
    BatchReport, Engine, EngineConfig, EngineMetrics, Part, Processed, Processor, ServiceReadiness,
};
pub use group::{ConsumeError, Polled};
pub use out::{dead_letter, OutRecord};
pub use sink::{CommitError, Sink};
pub use txn::{Transactions, TxnError};
pub use zombie::{Membership, Unsure};

/// First and longest pause between retries of a failed Redis call, delivery or
/// rewind.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// See [`BACKOFF_MIN`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
