//! Delivery reports, from the Kafka producer's poll thread to the flusher task.
//!
//! Invariant: every report librdkafka makes for a message the flusher sent (it
//! makes exactly one per message: delivered, or failed after its retries) reaches
//! the flusher once, tagged with what the send carried (client, sn, generation);
//! none is made up or dropped, except all of a silenced producer's (the
//! [`crate::flusher::SILENT_KAFKA`] sabotage). The inbox holds at most the
//! messages the producer had in flight, which librdkafka bounds
//! (`queue.buffering.max.messages`; a full queue stops the flusher's sends), so
//! it is a bounded queue although it has no capacity of its own.
//!
//! Why not rdkafka's `FutureProducer`: it gives each message a oneshot channel
//! and a future, and the flusher woke once per message to poll them. Here the
//! poll thread appends to one shared list and wakes the flusher only when the
//! list was empty; the flusher takes the whole list at once.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use tally_common::ClientId;
use tokio::sync::Notify;

/// What a send carries to its report.
#[derive(Debug)]
pub struct Sent {
    pub id: ClientId,
    pub sn: u64,
    /// The client's send generation at the send (see `FlushState`).
    pub generation: u64,
    /// The send window that admitted it (see `send_window`).
    pub window: usize,
}

/// A report: the send and its outcome (the partition it was written to).
pub type Report = (Sent, Result<i32, KafkaError>);

/// The reports not yet taken by the flusher.
#[derive(Debug, Default)]
pub struct Reports {
    inbox: Mutex<Vec<Report>>,
    ready: Notify,
}

impl Reports {
    fn push(&self, report: Report) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = inbox.is_empty();
        inbox.push(report);
        drop(inbox);
        // A waiting flusher takes everything there is; one wake-up per batch.
        // `notify_one` keeps the permit when the flusher is not waiting yet.
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Waits until there may be reports to take.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves every report there is into `into` (which should be empty), in the
    /// order they were made.
    pub fn take_into(&self, into: &mut Vec<Report>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *inbox, into);
    }
}

/// The producer's context: hands each delivery report to [`Reports`].
pub struct ReportTo {
    reports: Arc<Reports>,
    /// The [`crate::flusher::SILENT_KAFKA`] sabotage: reports are never seen.
    silent: bool,
}

impl ReportTo {
    pub fn new(reports: Arc<Reports>, silent: bool) -> Self {
        Self { reports, silent }
    }
}

impl ClientContext for ReportTo {}

impl ProducerContext for ReportTo {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        if self.silent {
            return;
        }
        let outcome = match result {
            Ok(message) => Ok(message.partition()),
            Err((e, _)) => Err(e.clone()),
        };
        self.reports.push((*sent, outcome));
    }
}

/// The flusher's Kafka producer.
pub type FlushProducer = ThreadedProducer<ReportTo>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sent(sn: u64) -> Sent {
        Sent {
            id: ClientId::from_record("c").expect("valid client id"),
            sn,
            generation: 1,
            window: 0,
        }
    }

    #[tokio::test]
    async fn reports_come_out_in_order_and_one_wake_up_covers_a_batch() {
        let reports = Reports::default();
        reports.push((sent(1), Ok(0)));
        reports.push((sent(2), Err(KafkaError::Canceled)));
        // Pushed before anyone waited: the permit is kept.
        tokio::time::timeout(Duration::from_secs(1), reports.ready())
            .await
            .expect("woken");
        let mut taken = Vec::new();
        reports.take_into(&mut taken);
        let view: Vec<(u64, bool)> = taken.iter().map(|(s, r)| (s.sn, r.is_ok())).collect();
        assert_eq!(view, vec![(1, true), (2, false)]);

        // Nothing new: no wake-up is pending.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), reports.ready())
                .await
                .is_err()
        );
        // The next push onto an empty inbox wakes again.
        reports.push((sent(3), Ok(2)));
        tokio::time::timeout(Duration::from_secs(1), reports.ready())
            .await
            .expect("woken again");
    }
}
