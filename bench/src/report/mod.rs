//! The benchmark's report: a [`Summary`] of [`BenchResults`], `report.md`,
//! `throughput.png`, `latency.png`, a plain-text summary for the terminal, and
//! `summary.json` with the `summary:` line the output ends with ([`headline`]).
//!
//! What this module guarantees:
//! - Every figure is the **median over the runs** ([`median`]: non-finite values
//!   are ignored, an even count gives the mean of the middle two). A figure that
//!   some runs lack is the median of the runs that have it.
//! - Ratios to raw Kafka are **taken within a run**, then their median is taken:
//!   each run's best full-speed end-to-end rate divided by the same run's
//!   idempotent acks=all produce rate. It is never a ratio of medians, so a noisy
//!   neighbour that slows one run slows both sides of that run's ratio.
//! - A point is exact only if it was exact in every run, and a sustained-rate
//!   target is met only if every point of its workload in every run was exact.
//! - Both workloads are reported alike: the novel's figures first, then the
//!   all-distinct workload's ([`BenchResults::for_workload`] gives each its
//!   own view of the runs; [`Summary::distinct`] holds the second).
//! - A target whose data is missing is reported as not evaluable (`met: None`,
//!   `n/a`), never as met and never with a panic; nothing here panics on the
//!   results or on IO: file errors come back as a [`ReportError`] naming the path.
//! - The charts render text with the DejaVu Sans bundled in `tally-tests` (see
//!   [`tally_tests::report::ensure_font`]), so they need no system fonts.
//! - [`write_markdown`] writes only `report.md`, [`write_charts`] only
//!   `throughput.png` and `latency.png`, in the directory given (created if
//!   needed).

mod charts;
#[cfg(test)]
mod fixtures;
mod format;
mod headline;
mod markdown;
mod summary;
mod sustained;
mod targets;
mod text;

pub use charts::write_charts;
pub use headline::{
    headline, headline_line, CpuPerMessage, Headline, ManyClientsHeadline, PointHealth,
    WorkloadHeadline,
};
pub use markdown::write_markdown;
pub use summary::{median, summarize, CostSummary, PointSummary, ScriptSummary, Summary};
pub use targets::{
    TargetCheck, TARGET_ACK_P99_MS, TARGET_CONSUME_DISTINCT_PER_S, TARGET_CONSUME_PER_S,
    TARGET_CPU_US_PER_MSG, TARGET_E2E_P99_MS, TARGET_PRODUCER_AFTER_SLACK_MIB,
    TARGET_PRODUCER_CLIENTS, TARGET_PRODUCER_RSS_MIB, TARGET_SUSTAINED_DISTINCT_PER_S,
    TARGET_SUSTAINED_PER_S, TARGET_WORKER_RSS_MIB,
};
pub use text::summary_text;

/// Errors writing the report and charts: `tally-report`'s, shared with the fault
/// suite's report (its scenario-name variants do not occur here).
pub use tally_report::ReportError;
