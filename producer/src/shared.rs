//! What every task of the producer shares: settings, the stash store, ownership,
//! the memory budget and the way to the flusher.
//!
//! Invariant: this module depends on the producer's other modules only for the
//! types it holds, and they all take what they share from here, never from the
//! crate root: `lib.rs` wires the tasks together and nothing imports it back.

use std::sync::Arc;

use tally_common::stash::StashStore;
use tally_common::ClientId;
use tally_common::Settings;
use tokio::sync::mpsc;

use crate::budget::{MemoryBudget, Reservation};
use crate::ownership::Ownership;
use crate::registry::ClientSlot;

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
    /// The secrets client tokens are checked against (`producer.auth.mode =
    /// "token"`); `None`: any client may use any id.
    pub auth: Option<tally_common::auth::TokenSecrets>,
    /// Failed authentications per source address (`producer.max_auth_failures_per_minute`).
    pub auth_failures: crate::limits::AuthFailures,
}

/// What connections and the ownership task tell the flusher.
pub enum FlushCommand {
    /// This instance now owns the client at `epoch` (connected here, or adopted).
    Claimed {
        /// The client's slot.
        slot: Arc<ClientSlot>,
        /// The epoch the claim produced.
        epoch: u64,
        /// Last stored sn at the claim.
        sn: u64,
        /// `flushed` at the claim.
        flushed: u64,
        /// Whether a connection serves it (false: adopted, flush to the end).
        connected: bool,
    },
    /// A batch was stashed and replicated.
    Append {
        /// The client's slot.
        slot: Arc<ClientSlot>,
        /// The epoch it was stashed under.
        epoch: u64,
        /// Its first sn.
        first_sn: u64,
        /// Its timestamp.
        ts: i64,
        /// The messages, in sn order.
        messages: Vec<String>,
        /// The memory the messages hold (their bytes, charged to the client).
        memory: Reservation,
    },
    /// The connection serving the client closed.
    Disconnected {
        /// The client.
        id: ClientId,
        /// The epoch it had.
        epoch: u64,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
