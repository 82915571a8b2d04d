//! The transactional producer behind [`crate::Sink::Transactional`]: every blocking
//! Kafka transaction call runs off the async runtime under a watchdog, and its
//! errors are sorted into what the caller must do about them.
//!
//! Invariant 7: no transactional call can hang the service. Each runs in
//! `spawn_blocking` with librdkafka's own timeout and, as a backstop, a watchdog a
//! little longer; a call the watchdog gives up on is treated like a fatal error: the
//! producer is recreated, and the new one's `init_transactions` (same
//! `transactional.id`) fences the old one, so whatever it still had in flight can
//! no longer commit.
//!
//! Error classes, as librdkafka defines them: retriable → the same call again;
//! abortable (`txn_requires_abort`) → abort, then rewind the consumer; fatal,
//! fenced, timed out or in an unexpected state → recreate the producer, then rewind.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;
use tally_common::settings::KafkaSettings;
use tracing::warn;

use crate::events::ProducerRecreated;
use crate::out::OutRecord;

/// Extra time the watchdog grants over librdkafka's own timeout.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(5);
/// Pause between retries of a retriable call.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A producer whose own thread serves delivery reports: `abort_transaction` waits
/// for the reports of the records it purges, so someone must poll while it runs.
type TxnProducer = ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// What went wrong with a transactional call, by what must happen next.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction is still usable; the call may be made again.
    #[error("retriable: {0}")]
    Retriable(KafkaError),
    /// The transaction must be aborted; the producer stays usable.
    #[error("transaction must be aborted: {0}")]
    Abortable(KafkaError),
    /// The producer is unusable (fatal, fenced, wrong state): recreate it.
    #[error("producer unusable: {0}")]
    Fatal(KafkaError),
    /// The call did not return in time: treated as fatal.
    #[error("{what} did not return within {after:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// How long the watchdog waited.
        after: Duration,
    },
    /// The consumer has no group metadata (it is not a group member): nothing was
    /// begun.
    #[error("the consumer is not a member of its group")]
    NotMember,
    /// The blocking task panicked or was cancelled.
    #[error("{what}: task failed: {detail}")]
    Task {
        /// The call.
        what: &'static str,
        /// The join error.
        detail: String,
    },
}

impl TxnError {
    /// Whether the producer must be recreated (not merely the transaction aborted).
    pub fn needs_new_producer(&self) -> bool {
        !matches!(
            self,
            Self::Retriable(_) | Self::Abortable(_) | Self::NotMember
        )
    }
}

fn classify(e: KafkaError) -> TxnError {
    match &e {
        KafkaError::Transaction(rd) if rd.is_fatal() => TxnError::Fatal(e),
        KafkaError::Transaction(rd) if rd.txn_requires_abort() => TxnError::Abortable(e),
        KafkaError::Transaction(rd) if rd.is_retriable() => TxnError::Retriable(e),
        // A record that could not be enqueued inside an open transaction: that
        // transaction cannot be committed complete.
        KafkaError::MessageProduction(_) => TxnError::Abortable(e),
        // Anything else (a flush timeout, a call in the wrong state) leaves the
        // producer in a state we cannot reason about: start over with a new one.
        _ => TxnError::Fatal(e),
    }
}

/// A transactional producer with a stable `transactional.id`.
pub struct Transactions {
    kafka: KafkaSettings,
    id: String,
    /// The counter metric of recreated producers.
    recreations_metric: &'static str,
    producer: Arc<TxnProducer>,
    /// librdkafka's timeout for each call.
    call_timeout: Duration,
}

impl Transactions {
    /// Creates the producer and initialises transactions, which fences any earlier
    /// producer with the same `transactional.id` and aborts its open transaction.
    /// Each recreation increments `recreations_metric`.
    pub async fn start(
        kafka: &KafkaSettings,
        id: &str,
        recreations_metric: &'static str,
    ) -> Result<Self, TxnError> {
        let call_timeout = Duration::from_millis(kafka.transaction_timeout_ms);
        let producer = Self::init(kafka, id, call_timeout).await?;
        Ok(Self {
            kafka: kafka.clone(),
            id: id.to_owned(),
            recreations_metric,
            producer,
            call_timeout,
        })
    }

    async fn init(
        kafka: &KafkaSettings,
        id: &str,
        call_timeout: Duration,
    ) -> Result<Arc<TxnProducer>, TxnError> {
        let config = tally_common::kafka::transactional_producer_config(kafka, id);
        let producer: TxnProducer = config.create().map_err(TxnError::Fatal)?;
        let producer = Arc::new(producer);
        loop {
            match blocking(&producer, "init_transactions", call_timeout, move |p| {
                p.init_transactions(call_timeout)
            })
            .await
            {
                Ok(()) => return Ok(producer),
                Err(TxnError::Retriable(e)) => {
                    warn!("init_transactions: {e}; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The `transactional.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the producer with a new one (after a fatal error or a watchdog
    /// timeout). The old one is dropped once any call still blocked on it returns;
    /// the new one's `init_transactions` has fenced it by then.
    pub async fn recreate(&mut self) -> Result<(), TxnError> {
        ProducerRecreated {
            recreations: self.recreations_metric,
            transactional_id: &self.id,
        }
        .emit();
        self.producer = Self::init(&self.kafka, &self.id, self.call_timeout).await?;
        Ok(())
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<(), TxnError> {
        blocking(
            &self.producer,
            "begin_transaction",
            self.call_timeout,
            |p| p.begin_transaction(),
        )
        .await
    }

    /// Enqueues `records` in the open transaction (delivery is confirmed by the
    /// commit, which fails as abortable if any record cannot be delivered).
    pub async fn produce(&self, records: Vec<OutRecord>) -> Result<(), TxnError> {
        let timeout = self.call_timeout;
        blocking(&self.producer, "produce", timeout, move |p| {
            let deadline = std::time::Instant::now() + timeout;
            for r in &records {
                let mut record = BaseRecord::to(&r.topic)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(r.kafka_headers());
                if let Some(partition) = r.partition {
                    record = record.partition(partition);
                }
                loop {
                    match p.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                            if std::time::Instant::now() < deadline =>
                        {
                            // The local queue is full; the producer's thread drains it.
                            record = back;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err((e, _)) => return Err(e),
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Adds the consumer offsets to the open transaction; retriable errors are
    /// retried within the call timeout.
    pub async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        let (offsets, group) = (Arc::new(offsets), Arc::new(group));
        self.retrying("send_offsets_to_transaction", move |p, timeout| {
            p.send_offsets_to_transaction(&offsets, &group, timeout)
        })
        .await
    }

    /// Commits the open transaction; retriable errors are retried within the call
    /// timeout.
    pub async fn commit(&self) -> Result<(), TxnError> {
        self.retrying("commit_transaction", |p, timeout| {
            // The commit first flushes, and rdkafka's flush polls in 100 ms steps
            // that always run to their end: with records still in flight every
            // commit would take ≥ 100 ms. The producer's own thread serves the
            // delivery reports, so wait for it to drain the queue instead.
            let deadline = std::time::Instant::now() + timeout;
            while p.in_flight_count() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            p.commit_transaction(deadline.saturating_duration_since(std::time::Instant::now()))
        })
        .await
    }

    /// Aborts the open transaction.
    pub async fn abort(&self) -> Result<(), TxnError> {
        self.retrying("abort_transaction", |p, timeout| {
            p.abort_transaction(timeout)
        })
        .await
    }

    async fn retrying<F>(&self, what: &'static str, call: F) -> Result<(), TxnError>
    where
        F: Fn(&TxnProducer, Duration) -> KafkaResult<()> + Send + Sync + 'static,
    {
        let call = Arc::new(call);
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = call.clone();
            match blocking(&self.producer, what, remaining, move |p| {
                attempt(p, remaining)
            })
            .await
            {
                Err(TxnError::Retriable(e)) if tokio::time::Instant::now() < deadline => {
                    warn!("{what}: {e}; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(TxnError::Retriable(_)) => {
                    return Err(TxnError::Timeout {
                        what,
                        after: self.call_timeout,
                    })
                }
                other => return other,
            }
        }
    }
}

/// Runs `call` on a blocking thread; gives up after `timeout` plus the margin.
async fn blocking<T, F>(
    producer: &Arc<TxnProducer>,
    what: &'static str,
    timeout: Duration,
    call: F,
) -> Result<T, TxnError>
where
    T: Send + 'static,
    F: FnOnce(&TxnProducer) -> KafkaResult<T> + Send + 'static,
{
    let producer = producer.clone();
    let watchdog = timeout + WATCHDOG_MARGIN;
    let task = tokio::task::spawn_blocking(move || call(&producer));
    match tokio::time::timeout(watchdog, task).await {
        Ok(Ok(result)) => result.map_err(classify),
        Ok(Err(join)) => Err(TxnError::Task {
            what,
            detail: join.to_string(),
        }),
        Err(_) => Err(TxnError::Timeout {
            what,
            after: watchdog,
        }),
    }
}
