//! Which clients this instance owns: claim, adopt, release and fence, each one
//! step of the ownership protocol (invariant 6) over the client's lock, this
//! instance's ownership set `tally:p:{instance}:clients` and a stash script.
//!
//! Invariant: the ownership set never loses a client this instance owns, because
//! survivors find a dead instance's clients only through it. So for one client,
//! "add to the set, then claim" ([`Ownership::claim`], [`Ownership::adopt`]) and
//! "release or learn it is owned elsewhere, then remove from the set"
//! ([`Ownership::release`], [`Ownership::fenced`]) each run under the client's
//! ownership lock and never interleave on this instance. A client is listed before
//! it is claimed: a crash in between leaves a harmless stale entry, never an owned
//! client nobody can find. Claims raise the epoch, which fences every write of the
//! previous owner (the scripts refuse them with `TALLY_FENCED`).

use std::sync::Arc;

use tally_common::redis::RedisOpError;
use tally_common::stash::{Adoption, Claim, StashStore};
use tally_common::ClientId;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::registry::{ClientSlot, Registry};

/// The outcome of [`Ownership::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Released and removed from the ownership set.
    Released,
    /// Still owned here: a connection attached, Redis failed, or the stash is not
    /// fully flushed.
    Kept {
        /// `meta.sn` when the stash still holds unflushed messages of this owner:
        /// more may be stored than the flusher knows of.
        unflushed_sn: Option<u64>,
    },
}

/// This instance's side of the ownership protocol, and its client slots.
pub struct Ownership {
    instance: String,
    store: StashStore,
    registry: Registry,
}

impl Ownership {
    /// Ownership for `instance` over `store`.
    pub fn new(instance: String, store: StashStore) -> Self {
        Self {
            instance,
            store,
            registry: Registry::default(),
        }
    }

    /// Attaches connection `conn_id` to the client's slot, cancelling the
    /// connection attached before, if any (see [`Registry::attach`]).
    pub fn attach(
        &self,
        id: &ClientId,
        conn_id: u64,
        cancel: CancellationToken,
    ) -> Arc<ClientSlot> {
        self.registry.attach(id, conn_id, cancel)
    }

    /// Detaches connection `conn_id` if it is still the attached one.
    pub fn detach(&self, slot: &ClientSlot, conn_id: u64) {
        self.registry.detach(slot, conn_id);
    }

    /// The slot of a client, created if needed (for adoption).
    pub fn slot(&self, id: &ClientId) -> Arc<ClientSlot> {
        self.registry.slot(id)
    }

    /// Claims a client that connected here: lists it in the ownership set, then
    /// takes it (`take`: always wins, fencing any previous owner).
    pub async fn claim(&self, slot: &ClientSlot) -> Result<Claim, RedisOpError> {
        let _order = slot.ownership.lock().await;
        self.store.add_owned(&self.instance, &slot.id).await?;
        self.store.take(&slot.id, &self.instance).await
    }

    /// Adopts a client listed under `from` (a dead instance, or this instance's
    /// previous run): lists it here, then takes it over by compare-and-set on the
    /// owner and epoch. When the client turned out to be owned elsewhere, drops the
    /// stale entry under `from` and this instance's own. After a successful
    /// adoption the caller tells the flusher first and then calls
    /// [`Ownership::unlist`]: the flusher must not wait on a Redis round trip to
    /// another slot.
    pub async fn adopt(
        &self,
        slot: &Arc<ClientSlot>,
        from: &str,
    ) -> Result<Adoption, RedisOpError> {
        let outcome = {
            let _order = slot.ownership.lock().await;
            self.store.add_owned(&self.instance, &slot.id).await?;
            self.store.adopt(&slot.id, &self.instance, from).await?
        };
        match &outcome {
            Adoption::Adopted(_) => {}
            Adoption::OwnedElsewhere { owner } => {
                // Reconnected elsewhere, released, or another survivor was faster:
                // the entry under `from` is stale.
                if owner != from {
                    let _ = self.store.remove_owned(from, &slot.id).await;
                }
                if owner != &self.instance {
                    self.fenced(slot).await;
                }
            }
        }
        Ok(outcome)
    }

    /// Drops an adopted client's stale entry under `from` (nothing when `from` is
    /// this instance). Best effort: a leftover entry only makes a later takeover
    /// find the client owned elsewhere.
    pub async fn unlist(&self, from: &str, slot: &ClientSlot) {
        if from != self.instance {
            let _ = self.store.remove_owned(from, &slot.id).await;
        }
    }

    /// Gives up a drained client (flushed and recorded to the end) at `epoch`,
    /// unless a connection attached meanwhile, and removes it from the ownership
    /// set and the registry.
    pub async fn release(&self, slot: &Arc<ClientSlot>, epoch: u64) -> Release {
        let _order = slot.ownership.lock().await;
        if slot.is_connected() {
            return Release::Kept { unflushed_sn: None };
        }
        match self.store.release(&slot.id, &self.instance, epoch).await {
            Ok(true) => {
                if let Err(e) = self.store.remove_owned(&self.instance, &slot.id).await {
                    debug!(client = %slot.id, "cannot update ownership set: {e}");
                }
                self.registry.remove_if_idle(slot);
                Release::Released
            }
            Ok(false) => {
                let meta = self.store.meta(&slot.id).await.ok();
                let unflushed = meta.filter(|m| m.owner == self.instance && m.sn > m.flushed);
                Release::Kept {
                    unflushed_sn: unflushed.map(|m| m.sn),
                }
            }
            Err(e) => {
                debug!(client = %slot.id, "cannot release yet: {e}");
                Release::Kept { unflushed_sn: None }
            }
        }
    }

    /// This instance was fenced off a client (a write came back `TALLY_FENCED`, or
    /// an adoption found another owner): drops it from the ownership set and the
    /// registry, if it really is owned elsewhere now.
    pub async fn fenced(&self, slot: &Arc<ClientSlot>) {
        let _order = slot.ownership.lock().await;
        match self.store.meta(&slot.id).await {
            Ok(meta) if meta.owner != self.instance => {
                let _ = self.store.remove_owned(&self.instance, &slot.id).await;
                self.registry.remove_if_idle(slot);
            }
            _ => {}
        }
    }
}
