//! The memory budget for un-flushed messages: a global limit in bytes, and a
//! per-client account that the client's connection reads for backpressure.
//!
//! Invariant: memory is accounted only through [`Reservation`]s. A reservation
//! holds its bytes of the global budget from [`MemoryBudget::reserve`] until it is
//! dropped, and while it is charged to a [`ClientMemory`] it counts there too; the
//! drop gives both back. So the global budget in use is exactly the bytes of the
//! live reservations, and a client's account exactly the bytes of the reservations
//! charged to it: there is no hand-written release that could be forgotten or
//! doubled. A client's account can therefore never go below zero; if it would, the
//! accounting is broken, which a debug assertion (and an error log in release
//! builds) reports instead of hiding it.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Why a reservation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// More bytes than one reservation can hold (the semaphore counts in `u32`).
    #[error("{0} bytes do not fit one reservation")]
    TooLarge(usize),
    /// The budget was closed.
    #[error("memory budget closed")]
    Closed,
}

/// The global budget, in bytes.
#[derive(Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Bytes not reserved now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Waits until `bytes` are free and reserves them, charged to no client yet.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, BudgetError> {
        let count = u32::try_from(bytes).map_err(|_| BudgetError::TooLarge(bytes))?;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(count)
            .await
            .map_err(|_| BudgetError::Closed)?;
        Ok(Reservation::new(permit))
    }

    /// Reserves `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let count = u32::try_from(bytes).ok()?;
        let permit = self.permits.clone().try_acquire_many_owned(count).ok()?;
        Some(Reservation::new(permit))
    }
}

/// One client's un-flushed bytes in memory; wakes watchers on every change.
pub struct ClientMemory {
    bytes: watch::Sender<usize>,
}

impl Default for ClientMemory {
    fn default() -> Self {
        Self {
            bytes: watch::Sender::new(0),
        }
    }
}

impl ClientMemory {
    /// The bytes charged now.
    pub fn bytes(&self) -> usize {
        *self.bytes.borrow()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.bytes.subscribe()
    }

    fn charge(&self, bytes: usize) {
        self.bytes.send_modify(|held| *held += bytes);
    }

    fn discharge(&self, bytes: usize) {
        self.bytes
            .send_modify(|held| match held.checked_sub(bytes) {
                Some(left) => *held = left,
                None => {
                    debug_assert!(false, "client memory drift: {bytes} released, {held} held");
                    tracing::error!(held = *held, bytes, "client memory accounting drifted");
                    *held = 0;
                }
            });
    }
}

/// Bytes held of the global budget, and of one client's account once charged.
/// Dropping it gives both back.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    client: Option<Arc<ClientMemory>>,
}

impl Reservation {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        Self {
            permit,
            client: None,
        }
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }

    /// Counts these bytes on `client` (moving them off the client they counted on
    /// before, if another).
    pub fn charge_to(&mut self, client: &Arc<ClientMemory>) {
        if self.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            return;
        }
        if let Some(old) = self.client.take() {
            old.discharge(self.bytes());
        }
        client.charge(self.bytes());
        self.client = Some(client.clone());
    }

    /// Splits `bytes` off into a reservation of their own, charged to the same
    /// client; all that is held when fewer are (check [`Reservation::bytes`]).
    pub fn split_off(&mut self, bytes: usize) -> Reservation {
        let permit = self
            .permit
            .split(bytes.min(self.bytes()))
            .unwrap_or_else(|| unreachable!("split refuses only more than is held"));
        Self {
            permit,
            client: self.client.clone(),
        }
    }

    /// Takes `other`'s bytes into this reservation (charged to this one's client).
    /// Both must come from the same budget.
    pub fn merge(&mut self, mut other: Reservation) {
        match self.client.clone() {
            Some(client) => other.charge_to(&client),
            None => {
                if let Some(theirs) = other.client.take() {
                    theirs.discharge(other.bytes());
                }
            }
        }
        // `other` now counts where this one does: its bytes move over unchanged,
        // and the emptied `other` must not discharge them again when dropped.
        other.client = None;
        if let Some(permits) = other.permit.split(other.bytes()) {
            self.permit.merge(permits);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.discharge(self.bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_return_their_bytes_when_dropped() {
        let budget = MemoryBudget::new(100);
        let client = Arc::new(ClientMemory::default());
        let mut batch = budget.try_reserve(60).expect("room");
        assert_eq!(budget.available(), 40);
        assert!(budget.try_reserve(41).is_none(), "over budget");
        assert_eq!(client.bytes(), 0, "not charged before charge_to");
        batch.charge_to(&client);
        assert_eq!(client.bytes(), 60);
        drop(batch);
        assert_eq!((budget.available(), client.bytes()), (100, 0));
    }

    #[test]
    fn splitting_keeps_both_accounts_exact() {
        let budget = MemoryBudget::new(100);
        let client = Arc::new(ClientMemory::default());
        let mut batch = budget.try_reserve(30).expect("room");
        batch.charge_to(&client);
        let a = batch.split_off(10);
        let b = batch.split_off(15);
        assert_eq!((a.bytes(), b.bytes(), batch.bytes()), (10, 15, 5));
        // Asking for more than is held takes what is held.
        let rest = batch.split_off(6);
        assert_eq!((rest.bytes(), batch.bytes()), (5, 0));
        batch.merge(rest);
        assert_eq!((budget.available(), client.bytes()), (70, 30));
        drop(a);
        assert_eq!((budget.available(), client.bytes()), (80, 20));
        drop(batch);
        assert_eq!((budget.available(), client.bytes()), (85, 15));
        drop(b);
        assert_eq!((budget.available(), client.bytes()), (100, 0));
    }

    #[test]
    fn charging_another_client_moves_the_bytes() {
        let budget = MemoryBudget::new(100);
        let (old, new) = (
            Arc::new(ClientMemory::default()),
            Arc::new(ClientMemory::default()),
        );
        let mut r = budget.try_reserve(25).expect("room");
        r.charge_to(&old);
        r.charge_to(&old);
        assert_eq!(
            old.bytes(),
            25,
            "charging the same client twice counts once"
        );
        r.charge_to(&new);
        assert_eq!((old.bytes(), new.bytes()), (0, 25));
        drop(r);
        assert_eq!((old.bytes(), new.bytes(), budget.available()), (0, 0, 100));
    }

    #[test]
    fn merging_keeps_both_accounts_exact() {
        let budget = MemoryBudget::new(100);
        let (a, b) = (
            Arc::new(ClientMemory::default()),
            Arc::new(ClientMemory::default()),
        );
        let mut first = budget.try_reserve(10).expect("room");
        first.charge_to(&a);
        let mut second = budget.try_reserve(20).expect("room");
        second.charge_to(&b);
        let uncharged = budget.try_reserve(5).expect("room");
        first.merge(second);
        first.merge(uncharged);
        assert_eq!(first.bytes(), 35);
        assert_eq!((a.bytes(), b.bytes(), budget.available()), (35, 0, 65));
        drop(first);
        assert_eq!((a.bytes(), b.bytes(), budget.available()), (0, 0, 100));

        // Merging a charged reservation into an uncharged one un-charges it.
        let mut plain = budget.try_reserve(1).expect("room");
        let mut charged = budget.try_reserve(2).expect("room");
        charged.charge_to(&a);
        plain.merge(charged);
        assert_eq!((plain.bytes(), a.bytes()), (3, 0));
    }

    #[tokio::test]
    async fn reserve_waits_for_room_and_refuses_what_cannot_fit() {
        let budget = MemoryBudget::new(10);
        let held = budget.reserve(8).await.expect("room");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(5).await.map(|r| r.bytes()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "5 bytes do not fit beside 8 of 10");
        drop(held);
        assert_eq!(waiting.await.expect("task").expect("reserved"), 5);
        assert!(matches!(
            budget.reserve(usize::MAX).await,
            Err(BudgetError::TooLarge(_))
        ));
    }

    #[test]
    #[should_panic(expected = "client memory drift")]
    #[cfg(debug_assertions)]
    fn drift_is_detected_not_hidden() {
        let client = ClientMemory::default();
        client.charge(5);
        client.discharge(6);
    }
}
