//! The consume engine of tally's counting services: a consumer-group member that
//! reads a topic in batches, hands each batch to a [`Processor`] (the counter, the
//! aggregator), and commits what the processor returns through a [`Sink`] — or
//! rewinds, or rejoins the group. The processors only say what a batch means; every
//! rule about Kafka lives here.
//!
//! Invariants (numbers as in `docs/architecture.md`):
//!
//! - **One batch in flight; nothing open while polling.** A batch is collected
//!   ([`group::collect`]), processed, then committed or abandoned before the
//!   consumer is polled again. Rebalance callbacks only run inside a poll, so a
//!   revocation always finds the previous batch committed (or aborted) and only
//!   drops records collected for the revoked partitions, which were neither
//!   applied nor committed: "commit on a clean revoke, abort on a lost one" holds
//!   trivially. On assignment, consumption starts at the committed offsets.
//! - **Offsets after effects (5).** A processor returns only once its batch's
//!   Redis effects are replicated; the engine then commits the batch's offsets
//!   together with (transactional sink) or after (plain sink) its output records.
//!   A crash anywhere before the commit replays the batch, so every effect must be
//!   safe to apply twice (the Lua scripts are sn-guarded).
//! - **Partial commits and carry.** A processor may commit a partition only up to
//!   some record and hand the rest back ([`Processed::carry`]); they are processed
//!   again first in the next batch, and forgotten on a rewind or rejoin (the
//!   committed offset is where they are read again). The counter's canonical
//!   replays rest on this.
//! - **Failure → known state.** A failed commit recovers the sink (abort, or a new
//!   transactional producer that fences the old one: invariant 7) and rewinds every
//!   assigned partition to its committed offset; the records after it are read
//!   again. Nothing of an uncommitted batch is ever assumed to have happened.
//! - **Zombie guard.** Before a batch and before every Redis write (the processor
//!   calls [`Membership::check`]) the member confirms it did not stand still since
//!   its view of the group was last confirmed and polled recently; otherwise the
//!   batch is dropped and the member rejoins ([`zombie`]).
//! - **Shutdown.** A batch not yet committed when shutdown is requested is
//!   dropped uncommitted (replayed by the next owner); one whose commit had begun
//!   finishes. Then the member leaves its group.
//!
//! Where overlapping the transaction cycle (the performance issue) goes: it is the
//! engine's to build, behind the same [`Processor`] contract. A pipelined engine
//! must keep, per partition, commits in offset order, and must not let a batch's
//! Redis effects run ahead of a commit that could still abort across a filled gap
//! (the counter's canonical-replay rule), which is why today's engine keeps one
//! batch in flight.

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
