//! What every task of the producer shares: settings, the stash store, ownership,
//! the memory budget and the way to the flusher.
//!
//! Invariant: this module depends on the producer's other modules only for the
//! types it holds, and they all take what they share from here, never from the
//! crate root: `lib.rs` wires the tasks together and nothing imports it back.

use tally_common::stash::StashStore;
use tally_common::Settings;
use tokio::sync::mpsc;

use crate::budget::MemoryBudget;
use crate::flusher::FlushCommand;
use crate::ownership::Ownership;

/// What every task of the producer shares.
pub struct Shared {
    /// This instance's id: the owner name in stashes.
    pub instance: String,
    /// All settings.
    pub settings: Settings,
    /// The stash and registry operations.
    pub store: StashStore,
    /// Claims, adoptions, releases and fencing of this instance's clients.
    pub ownership: Ownership,
    /// The way to the flusher task.
    pub flusher: mpsc::Sender<FlushCommand>,
    /// The global memory budget for un-flushed messages.
    pub memory: MemoryBudget,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
