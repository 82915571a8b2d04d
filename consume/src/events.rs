//! The engine's internal events: each log event that always goes with a metric is
//! one value here whose `emit` writes both, so the log line and the metric can
//! neither be forgotten one without the other nor drift apart.

use std::fmt::Display;

use tally_common::observe::names;
use tracing::{info, warn};

/// The zombie guard failed: the batch is dropped and the group rejoined.
pub(crate) struct BatchAbandoned<'a> {
    /// The service's rejoin counter.
    pub rejoins: &'static str,
    pub why: &'a dyn Display,
}

impl BatchAbandoned<'_> {
    pub fn emit(self) {
        warn!(
            "{}: this member may have left the group; dropping the batch and rejoining \
             before touching Redis again",
            self.why
        );
        metrics::counter!(self.rejoins).increment(1);
    }
}

/// A batch's commit failed; the sink was recovered and the member rewinds.
pub(crate) struct CommitFailed<'a> {
    /// The service's commit-failure counter.
    pub failures: &'static str,
    pub error: &'a dyn Display,
}

impl CommitFailed<'_> {
    pub fn emit(self) {
        warn!(
            "batch not committed ({}); rewinding to the committed offsets",
            self.error
        );
        metrics::counter!(self.failures).increment(1);
    }
}

/// Partitions were revoked (or lost) in a rebalance.
pub(crate) struct PartitionsRevoked<'a> {
    pub service: &'static str,
    pub partitions: &'a [i32],
    pub lost: bool,
}

impl PartitionsRevoked<'_> {
    pub fn emit(self) {
        info!(
            service = self.service,
            partitions = ?self.partitions,
            lost = self.lost,
            "partitions revoked: dropping their uncommitted records"
        );
        metrics::counter!(names::REBALANCES, "kind" => "revoke").increment(1);
        // Another member reports these partitions' lag from now on; a stale value
        // here would be counted twice in a sum over members.
        for p in self.partitions {
            metrics::gauge!(names::CONSUMER_LAG, "partition" => p.to_string()).set(0.0);
        }
    }
}

/// Partitions were assigned in a rebalance.
pub(crate) struct PartitionsAssigned<'a> {
    pub service: &'static str,
    pub partitions: &'a [i32],
}

impl PartitionsAssigned<'_> {
    pub fn emit(self) {
        info!(service = self.service, partitions = ?self.partitions, "partitions assigned");
        metrics::counter!(names::REBALANCES, "kind" => "assign").increment(1);
    }
}

/// The transactional producer is being replaced (fatal error or watchdog).
pub(crate) struct ProducerRecreated<'a> {
    /// The service's recreation counter.
    pub recreations: &'static str,
    pub transactional_id: &'a str,
}

impl ProducerRecreated<'_> {
    pub fn emit(self) {
        info!(
            transactional_id = %self.transactional_id,
            "recreating the transactional producer"
        );
        metrics::counter!(self.recreations).increment(1);
    }
}
