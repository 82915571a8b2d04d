//! The clients this instance serves or flushes: one slot per client, holding its
//! attached connection, its flush progress, its memory account and the lock that
//! orders its ownership changes.
//!
//! Invariant: at most one connection per client is attached; attaching a newer one
//! cancels the older ("newer connection wins"). The ownership lock is taken only by
//! [`crate::ownership::Ownership`], which states what it orders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tally_common::ClientId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::budget::ClientMemory;

/// Flush progress of a client, shared by its connection (which waits for room in
/// its backlog) and the flusher (which makes room).
pub struct Progress {
    flushed: watch::Sender<u64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            flushed: watch::Sender::new(0),
        }
    }

    /// Highest sn confirmed in Kafka without gaps.
    pub fn flushed(&self) -> u64 {
        *self.flushed.borrow()
    }

    /// Sets `flushed` and wakes the waiting connection.
    pub fn set_flushed(&self, flushed: u64) {
        self.flushed.send_replace(flushed);
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.flushed.subscribe()
    }
}

/// One client known to this instance.
pub struct ClientSlot {
    /// The client.
    pub id: ClientId,
    /// Orders ownership changes of this client (see the module docs).
    pub ownership: tokio::sync::Mutex<()>,
    /// Flush progress.
    pub progress: Progress,
    /// Un-flushed bytes of this client in memory (see [`crate::budget`]).
    pub memory: Arc<ClientMemory>,
    connection: Mutex<Option<(u64, CancellationToken)>>,
}

impl ClientSlot {
    fn connection(&self) -> MutexGuard<'_, Option<(u64, CancellationToken)>> {
        // A poisoned lock only means another thread panicked while holding it; the
        // Option inside is still consistent.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connection().is_some()
    }
}

/// All client slots of this instance.
#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<ClientId, Arc<ClientSlot>>>,
}

impl Registry {
    fn slots(&self) -> MutexGuard<'_, HashMap<ClientId, Arc<ClientSlot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_insert(
        map: &mut HashMap<ClientId, Arc<ClientSlot>>,
        id: &ClientId,
    ) -> Arc<ClientSlot> {
        map.entry(id.clone())
            .or_insert_with(|| {
                Arc::new(ClientSlot {
                    id: id.clone(),
                    ownership: tokio::sync::Mutex::new(()),
                    progress: Progress::new(),
                    memory: Arc::new(ClientMemory::default()),
                    connection: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Attaches connection `conn_id` to the client, cancelling the connection that
    /// was attached before, if any.
    pub fn attach(
        &self,
        id: &ClientId,
        conn_id: u64,
        cancel: CancellationToken,
    ) -> Arc<ClientSlot> {
        let mut map = self.slots();
        let slot = Self::get_or_insert(&mut map, id);
        if let Some((_, older)) = slot.connection().replace((conn_id, cancel)) {
            older.cancel();
        }
        slot
    }

    /// Detaches connection `conn_id` if it is still the attached one.
    pub fn detach(&self, slot: &ClientSlot, conn_id: u64) {
        let _map = self.slots();
        let mut connection = slot.connection();
        if matches!(*connection, Some((attached, _)) if attached == conn_id) {
            *connection = None;
        }
    }

    /// The slot of a client, created if needed (for adoption).
    pub fn slot(&self, id: &ClientId) -> Arc<ClientSlot> {
        Self::get_or_insert(&mut self.slots(), id)
    }

    /// Forgets a released client unless a connection attached meanwhile. Call with
    /// the slot's ownership lock held.
    pub fn remove_if_idle(&self, slot: &Arc<ClientSlot>) {
        let mut map = self.slots();
        let same = map.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, slot));
        if same && !slot.is_connected() {
            map.remove(&slot.id);
        }
    }
}
