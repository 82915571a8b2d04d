//! Where a batch's output records and offsets go, and how they become durable
//! together.
//!
//! Invariant: a batch's offsets are never committed before every record the batch
//! writes is durable. [`Sink::Transactional`] writes both in one Kafka transaction
//! (EOS v2: the offsets carry the consumer's group metadata, so a fenced member
//! cannot commit), which makes the output exactly-once. [`Sink::Plain`] writes the
//! records with an idempotent producer, waits until Kafka confirmed each, then
//! commits the offsets synchronously: the output is at-least-once (a crash between
//! the two writes the records again on replay), which suits a service whose only
//! output is its dead letters.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use tally_common::backoff::Backoff;
use tally_common::failpoint;
use tally_common::settings::KafkaSettings;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::group::GroupConsumer;
use crate::out::OutRecord;
use crate::txn::{Transactions, TxnError};
use crate::{BACKOFF_MAX, BACKOFF_MIN};

/// How long the plain sink's producer may queue one record before the send fails
/// (and is retried).
const PLAIN_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The transaction failed; [`Sink::recover`] leaves the producer usable.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// The plain offset commit failed (typically a rebalance in progress).
    #[error("offset commit: {0}")]
    Offsets(KafkaError),
    /// Shutdown was requested before the batch's records were written.
    #[error("shutdown requested")]
    Shutdown,
}

/// How a batch's output and offsets are made durable; see the module doc.
pub enum Sink {
    /// One Kafka transaction per batch: output records and offsets commit together.
    Transactional(Box<Transactions>),
    /// Output records delivered and confirmed first, then a plain offset commit.
    Plain(FutureProducer),
}

/// The failpoints a sink passes while committing.
pub(crate) struct CommitFailpoints<'a> {
    pub after_produce: &'a str,
    pub before_commit: &'a str,
}

impl Sink {
    /// A transactional sink; `txn` must have been started before the consumer
    /// joins its group (its `init_transactions` fences an earlier run).
    pub fn transactional(txn: Transactions) -> Self {
        Self::Transactional(Box::new(txn))
    }

    /// A plain sink with an idempotent `acks=all` producer.
    pub fn plain(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self::Plain(
            tally_common::kafka::idempotent_producer_config(kafka).create()?,
        ))
    }

    /// Writes `out` and commits `offsets` as one unit (transactional) or in that
    /// order (plain).
    pub(crate) async fn commit(
        &mut self,
        consumer: &Arc<GroupConsumer>,
        out: Vec<OutRecord>,
        offsets: TopicPartitionList,
        failpoints: CommitFailpoints<'_>,
        stop: &CancellationToken,
    ) -> Result<(), CommitError> {
        match self {
            Self::Transactional(txn) => {
                let group = consumer.group_metadata().ok_or(TxnError::NotMember)?;
                // Where a transaction's time goes (debug): waiting for the previous
                // transaction's markers shows up in `offsets_ms` and `commit_ms`.
                let started = std::time::Instant::now();
                txn.begin().await?;
                let begun = started.elapsed();
                if !out.is_empty() {
                    txn.produce(out).await?;
                }
                let produced = started.elapsed();
                failpoint::hit(failpoints.after_produce);
                txn.send_offsets(offsets, group).await?;
                let offsets_sent = started.elapsed();
                failpoint::hit(failpoints.before_commit);
                txn.commit().await?;
                tracing::debug!(
                    begin_ms = begun.as_millis() as u64,
                    produce_ms = (produced - begun).as_millis() as u64,
                    offsets_ms = (offsets_sent - produced).as_millis() as u64,
                    commit_ms = (started.elapsed() - offsets_sent).as_millis() as u64,
                    "transaction committed"
                );
                Ok(())
            }
            Self::Plain(producer) => {
                deliver(producer, out, stop).await?;
                failpoint::hit(failpoints.after_produce);
                failpoint::hit(failpoints.before_commit);
                let consumer = consumer.clone();
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await
                    .map_err(|e| CommitError::Offsets(KafkaError::ClientCreation(e.to_string())))?
                    .map_err(CommitError::Offsets)
            }
        }
    }

    /// After a failed [`Sink::commit`]: aborts the transaction, or recreates the
    /// transactional producer (which fences the old one) when the error calls for it
    /// or the abort fails. Retries the recreation until it works or shutdown.
    pub(crate) async fn recover(&mut self, failed: &CommitError, stop: &CancellationToken) {
        let (Self::Transactional(txn), CommitError::Txn(e)) = (self, failed) else {
            return;
        };
        let mut recreate = e.needs_new_producer();
        // NotMember fails before anything was begun: nothing to abort.
        if !recreate && !matches!(e, TxnError::NotMember) {
            if let Err(abort) = txn.abort().await {
                warn!("abort_transaction failed: {abort}");
                recreate = true;
            }
        }
        if recreate {
            let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
            while let Err(e) = txn.recreate().await {
                error!("cannot recreate the transactional producer: {e}; retrying");
                if stop.is_cancelled() {
                    // Nothing is committed; the next run's producer fences this one.
                    break;
                }
                backoff.wait().await;
            }
        }
    }
}

/// Writes `records` and waits until Kafka confirmed each; retries a failed delivery
/// until it succeeds or shutdown is requested.
async fn deliver(
    producer: &FutureProducer,
    records: Vec<OutRecord>,
    stop: &CancellationToken,
) -> Result<(), CommitError> {
    for r in records {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let mut record = FutureRecord::to(&r.topic)
                .key(&r.key)
                .payload(&r.payload)
                .headers(r.kafka_headers());
            if let Some(partition) = r.partition {
                record = record.partition(partition);
            }
            let sent = tokio::select! {
                sent = producer.send(record, PLAIN_SEND_TIMEOUT) => sent,
                () = stop.cancelled() => return Err(CommitError::Shutdown),
            };
            match sent {
                Ok(_) => break,
                Err((e, _)) => {
                    warn!(topic = %r.topic, "delivery failed: {e}; retrying");
                    tokio::select! {
                        () = backoff.wait() => {}
                        () = stop.cancelled() => return Err(CommitError::Shutdown),
                    }
                }
            }
        }
    }
    Ok(())
}
