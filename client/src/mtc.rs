//! The mass-test client: many concurrent resuming sessions replaying files, with
//! a manifest that lets `tally verify` judge the result.
//!
//! Invariant: client `mtc-<run>-<i>` sends the workload's lines in order, so its
//! message `k` is sn `k`; the manifest (written before anything is sent, with the
//! message counts read beforehand as baselines) is the whole expectation. A rerun
//! with the same run id and the same inputs resumes the run: each session starts
//! after whatever the producer already stores for its id.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_common::{ClientId, MessageHash};
use tokio::task::JoinSet;

use crate::inspect::{InspectError, Inspector};
use crate::manifest::{Manifest, ManifestError, RunResult, Workload, MANIFEST_VERSION};
use crate::session::{
    latency_histogram, run, Line, ListSource, Numbering, Progress, SessionError, SessionOptions,
    SessionReport,
};

/// What a mass test does.
#[derive(Debug, Clone)]
pub struct MtcPlan {
    /// Concurrent connections (clients).
    pub clients: usize,
    /// Input files.
    pub files: Vec<PathBuf>,
    /// Times each client replays the files.
    pub repeat: u64,
    /// Lines per second per client, if limited.
    pub rate: Option<f64>,
    /// Producer addresses; clients are spread over them.
    pub addrs: Vec<String>,
    /// Run id (client ids are `mtc-<run_id>-<i>`).
    pub run_id: String,
    /// Where the manifest goes.
    pub manifest_path: PathBuf,
    /// Un-ACKed lines per client.
    pub window: usize,
    /// Give up after this long.
    pub timeout: Duration,
    /// Longest line the producer accepts.
    pub max_line: usize,
}

/// Why a mass test could not run.
#[derive(Debug, thiserror::Error)]
pub enum MtcError {
    /// Inputs or manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Reading baselines.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The run id is taken by different inputs, or its clients already have data.
    #[error("{0}")]
    Conflict(String),
    /// A run id that makes invalid client ids.
    #[error("run id {0:?} makes invalid client ids (use letters, digits, '.', '_', '-'; at most 48 characters)")]
    BadRunId(String),
}

/// What the run did.
#[derive(Debug)]
pub struct MtcOutcome {
    /// The manifest, with its result filled in.
    pub manifest: Manifest,
    /// Sessions that failed, with why.
    pub failures: Vec<(String, SessionError)>,
    /// Merged ACK latency, µs.
    pub latency_us: Histogram<u64>,
    /// `ERR unavailable` answers the completed sessions got (each closed a
    /// connection; the session reconnected and resent).
    pub err_unavailable: u64,
    /// Whether the run resumed an earlier one.
    pub resumed: bool,
}

/// A fresh run id: 8 hex digits.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Prepares the manifest: loads the workload, checks the run id, and reads the
/// baselines (or reuses those of an interrupted run with the same inputs).
pub async fn prepare(
    plan: &MtcPlan,
    inspector: &Inspector,
) -> Result<(Manifest, Arc<[Line]>, bool), MtcError> {
    let workload = Workload::load(&plan.files, plan.max_line)?;
    let clients: Vec<String> = (0..plan.clients)
        .map(|i| Manifest::client_id(&plan.run_id, i))
        .collect();
    for id in &clients {
        ClientId::parse(id).map_err(|_| MtcError::BadRunId(plan.run_id.clone()))?;
    }
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        run_id: plan.run_id.clone(),
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        key_prefix: inspector.keys().prefix().to_string(),
        producer_addrs: plan.addrs.clone(),
        files: workload.files.clone(),
        repeat: plan.repeat,
        clients,
        per_client: workload.lines.len() as u64 * plan.repeat,
        messages: workload.message_entries(plan.repeat),
        result: None,
    };
    let lines: Arc<[Line]> = workload.lines.into();

    if plan.manifest_path.exists() {
        let earlier = Manifest::load(&plan.manifest_path)?;
        let same = earlier.run_id == manifest.run_id
            && earlier.key_prefix == manifest.key_prefix
            && earlier
                .files
                .iter()
                .map(|f| &f.sha256)
                .eq(manifest.files.iter().map(|f| &f.sha256))
            && earlier.repeat == manifest.repeat
            && earlier.clients == manifest.clients;
        if !same {
            return Err(MtcError::Conflict(format!(
                "{} belongs to run {} with other inputs, clients or repeat; choose another --run-id or --manifest",
                plan.manifest_path.display(),
                earlier.run_id
            )));
        }
        // Resume: the baselines were read before the first attempt.
        return Ok((earlier, lines, true));
    }

    // Fresh ids only: a client that already has messages would make the expected
    // counts wrong.
    let mut conn_keys = Vec::new();
    for id in &manifest.clients {
        let id = ClientId::parse(id).map_err(|_| MtcError::BadRunId(plan.run_id.clone()))?;
        conn_keys.push(inspector.keys().client_count(&id));
    }
    let existing = inspector.numbers(&conn_keys).await?;
    if let Some((key, n)) = conn_keys.iter().zip(&existing).find(|(_, n)| **n > 0) {
        return Err(MtcError::Conflict(format!(
            "{key} already counts {n} messages: run id {} was used before without this manifest; choose another --run-id",
            plan.run_id
        )));
    }
    let hashes: Vec<String> = manifest
        .messages
        .iter()
        .map(|m| {
            let hash = MessageHash::of(m.text.as_bytes());
            inspector.keys().message_count(&hash)
        })
        .collect();
    let baselines = inspector.numbers(&hashes).await?;
    for (entry, baseline) in manifest.messages.iter_mut().zip(baselines) {
        entry.baseline = baseline;
    }
    manifest.save(&plan.manifest_path)?;
    Ok((manifest, lines, false))
}

/// Runs every session to the end (or the timeout) and records the result in the
/// manifest.
pub async fn execute(
    plan: &MtcPlan,
    mut manifest: Manifest,
    lines: Arc<[Line]>,
    resumed: bool,
    progress: Arc<Progress>,
) -> Result<MtcOutcome, MtcError> {
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let mut sessions = JoinSet::new();
    for (index, id) in manifest.clients.iter().enumerate() {
        let id = ClientId::parse(id).map_err(|_| MtcError::BadRunId(plan.run_id.clone()))?;
        // Spread clients over the producers; each rotates from its own start.
        let mut addrs = plan.addrs.clone();
        let shift = index % addrs.len().max(1);
        addrs.rotate_left(shift);
        let source = ListSource::new(lines.clone(), plan.repeat);
        let options = SessionOptions {
            window: plan.window,
            rate: plan.rate,
            deadline: Some(deadline),
            numbering: Numbering::FromOne,
            ..SessionOptions::default()
        };
        let progress = progress.clone();
        sessions.spawn(async move {
            let report = run(&addrs, Some(&id), source, &options, Some(&progress)).await;
            (id, report)
        });
    }
    let mut latency = latency_histogram();
    let mut failures = Vec::new();
    let mut acked = 0;
    let mut err_unavailable = 0;
    while let Some(joined) = sessions.join_next().await {
        match joined {
            Ok((_, Ok(report))) => {
                acked += report.acked;
                err_unavailable += unavailable_answers(&report.errors);
                merge(&mut latency, &report);
            }
            Ok((id, Err(e))) => failures.push((id.as_str().to_string(), e)),
            Err(e) => failures.push(("?".into(), SessionError::Protocol(e.to_string()))),
        }
    }
    let elapsed = started.elapsed();
    let sent = progress.sent.load(Ordering::Relaxed);
    let acked_now = progress.acked.load(Ordering::Relaxed);
    manifest.result = Some(RunResult {
        complete: failures.is_empty()
            && acked == manifest.per_client * manifest.clients.len() as u64,
        sent,
        acked: acked_now,
        elapsed_ms: elapsed.as_millis() as u64,
        messages_per_s: acked_now as f64 / elapsed.as_secs_f64().max(1e-3),
        ack_latency_us: [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.9),
            latency.value_at_quantile(0.99),
            latency.max(),
        ],
        reconnects: progress.reconnects.load(Ordering::Relaxed),
    });
    manifest.save(&plan.manifest_path)?;
    Ok(MtcOutcome {
        manifest,
        failures,
        latency_us: latency,
        err_unavailable,
        resumed,
    })
}

/// How many of a session's `ERR` lines were `ERR unavailable`.
fn unavailable_answers(errors: &[String]) -> u64 {
    errors
        .iter()
        .filter(|e| e.starts_with("ERR unavailable"))
        .count() as u64
}

fn merge(into: &mut Histogram<u64>, report: &SessionReport) {
    // Both histograms auto-resize and share their precision, so adding cannot fail.
    let _ = into.add(&report.ack_latency_us);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_answers_are_counted() {
        let errors = [
            "ERR unavailable redis: timed out".to_owned(),
            "ERR superseded".to_owned(),
            "ERR unavailable kafka".to_owned(),
            "WELCOME x 3".to_owned(),
        ];
        assert_eq!(unavailable_answers(&errors), 2);
        assert_eq!(unavailable_answers(&[]), 0);
    }
}
