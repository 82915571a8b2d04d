//! The consume engine of tally's counting services: a consumer-group member that
//! reads a topic in batches, hands each batch to a [`Processor`] (the counter, the
//! aggregator), and commits what the processor returns through a [`Sink`] — or
//! rewinds, or rejoins the group. The processors only say what a batch means; every
//! rule about Kafka lives here.
//!
//! Invariants (numbers as in `docs/architecture.md`):
//!
//! - **Overlapped cycles; no transaction open while polling.** Each cycle commits
//!   the batch applied in the previous cycle while it applies the next one
//!   (Kafka's round trips overlap Redis's), then polls for the next batch. Polls
//!   only run between cycles, so no transaction is ever open during a rebalance
//!   callback; the one batch in hand then is applied but not committed. A
//!   revocation in that poll drops it and rewinds every assigned partition to its
//!   committed offset: its offsets may name a revoked partition, whose next owner
//!   starts at the committed offset, and its effects are safe to apply again.
//!   While a batch waits for its commit, a collection takes only the records
//!   already fetched, so a commit never waits for the next batch to fill. On
//!   assignment, consumption starts at the committed offsets.
//! - **Effects one batch ahead of commits.** When a batch is applied, the previous
//!   one may still fail to commit and be replayed. A processor whose replay
//!   depends on what was applied before it must not let a batch's effects change
//!   how the previous batch's records would be classified on replay: the counter
//!   holds back, for one batch, a client the previous batch left in a gap.
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
    BatchReport, Engine, EngineConfig, EngineMetrics, Processed, Processor, ServiceReadiness,
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
