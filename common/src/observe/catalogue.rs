//! The metric catalogue: every metric tally emits, named once and described.
//!
//! Invariant: a metric is recorded only under a name from [`names`], and every name
//! is in [`METRICS`] with its kind, labels and help text; tests check that names
//! are unique, typed by suffix, and each is in the table of `docs/operations.md`.

/// Every metric tally emits. Labels: all carry `service`; others are listed in
/// [`METRICS`].
pub mod names {
    /// Open client connections (gauge).
    pub const PRODUCER_CONNECTIONS: &str = "tally_producer_connections";
    /// Messages stored, replicated and ACKed (counter): the ingest rate.
    pub const PRODUCER_MESSAGES_ACKED: &str = "tally_producer_messages_acked_total";
    /// Messages whose Kafka delivery advanced `flushed` (counter).
    pub const PRODUCER_MESSAGES_FLUSHED: &str = "tally_producer_messages_flushed_total";
    /// Lines answered with `ERR` and not stored, by `reason` (counter).
    pub const PRODUCER_REJECTED_LINES: &str = "tally_producer_rejected_lines_total";
    /// Connections refused before they had an identity (an abuse limit,
    /// `producer.auth`, a failed TLS handshake), by `reason` (counter).
    pub const PRODUCER_REFUSED_CONNECTIONS: &str = "tally_producer_refused_connections_total";
    /// Time from the stash call to its replicated answer, per batch (histogram).
    pub const PRODUCER_ACK_LATENCY: &str = "tally_producer_ack_latency_seconds";
    /// Lines per stash call (histogram).
    pub const PRODUCER_STASH_BATCH_LINES: &str = "tally_producer_stash_batch_lines";
    /// Stash calls that failed: `ERR unavailable` (counter).
    pub const PRODUCER_STASH_ERRORS: &str = "tally_producer_stash_errors_total";
    /// Times a connection waited for backlog room without reading (counter).
    pub const PRODUCER_BACKPRESSURE_WAITS: &str = "tally_producer_backpressure_waits_total";
    /// Kafka deliveries that failed or could not be enqueued (counter).
    pub const PRODUCER_DELIVERY_ERRORS: &str = "tally_producer_delivery_errors_total";
    /// Go-back-N rewinds after a failed delivery (counter).
    pub const PRODUCER_REWINDS: &str = "tally_producer_rewinds_total";
    /// Kafka producers replaced: after a fatal error, or when sends went past the
    /// delivery timeout without any result (counter).
    pub const PRODUCER_KAFKA_RECREATIONS: &str = "tally_producer_kafka_recreations_total";
    /// Messages stored but not yet confirmed by Kafka, over owned clients (gauge).
    pub const PRODUCER_FLUSH_LAG: &str = "tally_producer_flush_lag_messages";
    /// Clients whose stash this instance owns (gauge).
    pub const PRODUCER_OWNED_CLIENTS: &str = "tally_producer_owned_clients";
    /// Clients adopted from a dead or restarted instance (counter).
    pub const PRODUCER_TAKEOVERS: &str = "tally_producer_takeovers_total";

    /// Counter records by `outcome`: `applied`, `duplicate`, `gap`, `dlq` (counter).
    pub const COUNTER_RECORDS: &str = "tally_counter_records_total";
    /// Committed counter transactions (counter).
    pub const COUNTER_TXN_COMMITS: &str = "tally_counter_txn_commits_total";
    /// Failed (aborted or abandoned) counter transactions (counter).
    pub const COUNTER_TXN_ABORTS: &str = "tally_counter_txn_aborts_total";
    /// Time to apply and commit one batch (histogram).
    pub const COUNTER_BATCH_SECONDS: &str = "tally_counter_batch_seconds";
    /// Batches dropped and the group rejoined after a stall (counter).
    pub const COUNTER_REJOINS: &str = "tally_counter_rejoins_total";
    /// Rewinds to the committed offsets (counter).
    pub const COUNTER_REWINDS: &str = "tally_counter_rewinds_total";
    /// Transactional producers recreated after a fatal error or timeout (counter).
    pub const COUNTER_PRODUCER_RECREATIONS: &str = "tally_counter_producer_recreations_total";
    /// Failed count scripts, retried (counter).
    pub const COUNTER_REDIS_ERRORS: &str = "tally_counter_redis_errors_total";
    /// Clients left in a gap longer than `counter.stall_after_ms` (gauge).
    pub const COUNTER_STALLED_CLIENTS: &str = "tally_counter_stalled_clients";

    /// Aggregator sightings by `outcome`: `applied`, `duplicate`; `dlq`: dead-lettered
    /// records (counter).
    pub const AGGREGATOR_RECORDS: &str = "tally_aggregator_records_total";
    /// Time to apply and commit one batch (histogram).
    pub const AGGREGATOR_BATCH_SECONDS: &str = "tally_aggregator_batch_seconds";
    /// Failed offset commits, rewound (counter).
    pub const AGGREGATOR_COMMIT_ERRORS: &str = "tally_aggregator_commit_errors_total";
    /// Failed count scripts, retried (counter).
    pub const AGGREGATOR_REDIS_ERRORS: &str = "tally_aggregator_redis_errors_total";
    /// Committed aggregator batches (counter).
    pub const AGGREGATOR_COMMITS: &str = "tally_aggregator_commits_total";
    /// Rewinds to the committed offsets (counter).
    pub const AGGREGATOR_REWINDS: &str = "tally_aggregator_rewinds_total";
    /// Batches dropped and the group rejoined after a stall (counter).
    pub const AGGREGATOR_REJOINS: &str = "tally_aggregator_rejoins_total";

    /// Records between the read position and the end (last stable offset) of each
    /// assigned partition, by `partition` (gauge).
    pub const CONSUMER_LAG: &str = "tally_consumer_lag_records";
    /// Partitions currently assigned to this member (gauge).
    pub const CONSUMER_ASSIGNED_PARTITIONS: &str = "tally_consumer_assigned_partitions";
    /// Rebalance events by `kind`: `assign`, `revoke` (counter).
    pub const REBALANCES: &str = "tally_rebalances_total";
    /// Replicated script calls per write-combiner round (histogram).
    pub const REDIS_ROUND_CALLS: &str = "tally_redis_round_calls";
    /// Calls retried on a fresh connection after their round failed on its
    /// connection: a stale connection or a slow round, not an error (counter).
    pub const REDIS_ROUND_RETRIES: &str = "tally_redis_round_retries_total";
    /// 1 while `/ready` answers 200, else 0 (gauge).
    pub const READY: &str = "tally_ready";
}

/// The kind of a metric, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; rates are taken with `rate()`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric's documentation.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Labels besides `service`.
    pub labels: &'static [&'static str],
    /// What it measures (the `# HELP` text).
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric, described. `docs/operations.md` has the same table for people.
pub const METRICS: &[MetricDoc] = {
    use names::*;
    use Kind::*;
    &[
        doc(PRODUCER_CONNECTIONS, Gauge, &[], "open client connections"),
        doc(
            PRODUCER_MESSAGES_ACKED,
            Counter,
            &[],
            "messages stored, replicated and ACKed",
        ),
        doc(
            PRODUCER_MESSAGES_FLUSHED,
            Counter,
            &[],
            "messages confirmed by Kafka in sn order (flushed advanced)",
        ),
        doc(
            PRODUCER_REJECTED_LINES,
            Counter,
            &["reason"],
            "lines answered with ERR and not stored",
        ),
        doc(
            PRODUCER_REFUSED_CONNECTIONS,
            Counter,
            &["reason"],
            "connections closed before they had an identity: an abuse limit, producer.auth or a failed TLS handshake",
        ),
        doc(
            PRODUCER_ACK_LATENCY,
            Histogram,
            &[],
            "stash call to replicated answer (Lua + WAIT), per batch",
        ),
        doc(
            PRODUCER_STASH_BATCH_LINES,
            Histogram,
            &[],
            "lines per stash call",
        ),
        doc(
            PRODUCER_STASH_ERRORS,
            Counter,
            &[],
            "stash calls that failed (ERR unavailable)",
        ),
        doc(
            PRODUCER_BACKPRESSURE_WAITS,
            Counter,
            &[],
            "waits for backlog room without reading the socket",
        ),
        doc(
            PRODUCER_DELIVERY_ERRORS,
            Counter,
            &[],
            "Kafka deliveries that failed or could not be enqueued",
        ),
        doc(
            PRODUCER_REWINDS,
            Counter,
            &[],
            "go-back-N rewinds after a failed delivery",
        ),
        doc(
            PRODUCER_KAFKA_RECREATIONS,
            Counter,
            &[],
            "Kafka producers replaced (fatal error, or no delivery result in time)",
        ),
        doc(
            PRODUCER_FLUSH_LAG,
            Gauge,
            &[],
            "messages stored but not yet confirmed by Kafka, over owned clients",
        ),
        doc(
            PRODUCER_OWNED_CLIENTS,
            Gauge,
            &[],
            "clients whose stash this instance owns",
        ),
        doc(
            PRODUCER_TAKEOVERS,
            Counter,
            &[],
            "clients adopted from a dead or restarted instance",
        ),
        doc(
            COUNTER_RECORDS,
            Counter,
            &["outcome"],
            "committed client_message records: applied, duplicate, gap, dlq",
        ),
        doc(
            COUNTER_TXN_COMMITS,
            Counter,
            &[],
            "committed Kafka transactions",
        ),
        doc(
            COUNTER_TXN_ABORTS,
            Counter,
            &[],
            "failed Kafka transactions (aborted or producer recreated)",
        ),
        doc(
            COUNTER_BATCH_SECONDS,
            Histogram,
            &[],
            "time to apply and commit one batch",
        ),
        doc(
            COUNTER_REJOINS,
            Counter,
            &[],
            "batches dropped and group rejoined after a stall",
        ),
        doc(
            COUNTER_REWINDS,
            Counter,
            &[],
            "rewinds to the committed offsets",
        ),
        doc(
            COUNTER_PRODUCER_RECREATIONS,
            Counter,
            &[],
            "transactional producers recreated",
        ),
        doc(
            COUNTER_REDIS_ERRORS,
            Counter,
            &[],
            "failed count scripts (retried)",
        ),
        doc(
            COUNTER_STALLED_CLIENTS,
            Gauge,
            &[],
            "clients left in a gap longer than counter.stall_after_ms",
        ),
        doc(
            AGGREGATOR_RECORDS,
            Counter,
            &["outcome"],
            "committed message_aggregation sightings (each entry of a packed record): applied, duplicate; dlq: dead-lettered records",
        ),
        doc(
            AGGREGATOR_BATCH_SECONDS,
            Histogram,
            &[],
            "time to apply and commit one batch",
        ),
        doc(
            AGGREGATOR_COMMIT_ERRORS,
            Counter,
            &[],
            "failed offset commits (rewound)",
        ),
        doc(
            AGGREGATOR_REDIS_ERRORS,
            Counter,
            &[],
            "failed count scripts (retried)",
        ),
        doc(
            AGGREGATOR_COMMITS,
            Counter,
            &[],
            "committed batches (offsets after every write of the batch)",
        ),
        doc(
            AGGREGATOR_REWINDS,
            Counter,
            &[],
            "rewinds to the committed offsets after a failed commit",
        ),
        doc(
            AGGREGATOR_REJOINS,
            Counter,
            &[],
            "batches dropped and the group rejoined after this process stood still",
        ),
        doc(
            CONSUMER_LAG,
            Gauge,
            &["partition"],
            "records not read yet (position to last stable offset), per assigned partition",
        ),
        doc(
            CONSUMER_ASSIGNED_PARTITIONS,
            Gauge,
            &[],
            "partitions assigned to this member",
        ),
        doc(
            REBALANCES,
            Counter,
            &["kind"],
            "rebalance events: assign, revoke",
        ),
        doc(
            REDIS_ROUND_CALLS,
            Histogram,
            &[],
            "replicated script calls per write-combiner round (one WAIT each)",
        ),
        doc(
            REDIS_ROUND_RETRIES,
            Counter,
            &[],
            "calls retried on a fresh connection after their round failed on its connection",
        ),
        doc(READY, Gauge, &[], "1 while /ready answers 200"),
    ]
};

/// The values of a counter's label known in advance, to start each series at 0.
/// Counters with a label not listed here (`reason`, `kind`) appear on first use.
pub const KNOWN_LABEL_VALUES: &[(&str, &str, &[&str])] = &[
    (
        names::COUNTER_RECORDS,
        "outcome",
        &["applied", "duplicate", "gap", "dlq"],
    ),
    (
        names::AGGREGATOR_RECORDS,
        "outcome",
        &["applied", "duplicate", "dlq"],
    ),
    (
        names::PRODUCER_REFUSED_CONNECTIONS,
        "reason",
        &[
            crate::protocol::TOO_MANY_CONNECTIONS,
            crate::protocol::FIRST_LINE_TIMEOUT,
            crate::protocol::UNAUTHORIZED,
            crate::protocol::TOO_MANY_AUTH_FAILURES,
            crate::protocol::TLS_HANDSHAKE,
        ],
    ),
];

/// Registers every counter named `tally_<service>_...` at 0: unlabelled ones, and
/// labelled ones with each value of [`KNOWN_LABEL_VALUES`].
pub fn zero_counters(service: &str) {
    let prefix = format!("tally_{service}_");
    for m in METRICS {
        if m.kind != Kind::Counter || !m.name.starts_with(&prefix) {
            continue;
        }
        if m.labels.is_empty() {
            metrics::counter!(m.name).increment(0);
            continue;
        }
        for (name, label, values) in KNOWN_LABEL_VALUES {
            if *name == m.name {
                for value in *values {
                    metrics::counter!(m.name, *label => *value).increment(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_unique_prefixed_and_typed_by_suffix() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("tally_"), "{}", m.name);
            let total = m.name.ends_with("_total");
            assert_eq!(
                total,
                m.kind == Kind::Counter,
                "{}: counters, and only they, end in _total",
                m.name
            );
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        for m in METRICS {
            assert!(
                doc.contains(&format!("| `{}` |", m.name)),
                "{} not in docs/operations.md",
                m.name
            );
        }
    }
}
