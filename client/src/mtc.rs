//! The mass-test client: many concurrent resuming sessions replaying files, with
//! a manifest that lets `tally verify` judge the result.
//!
//! Invariant: client `mtc-<run>-<i>` sends the workload's lines in order, so its
//! message `k` is sn `k`; the manifest (written before anything is sent, with the
//! message counts read beforehand as baselines) is the whole expectation. A rerun
//! with the same run id and the same inputs resumes the run: each session starts
//! after whatever the producer already stores for its id.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_common::{ClientId, MessageHash};
use tokio::task::JoinSet;

use crate::inspect::{InspectError, Inspector};
use crate::manifest::{
    salt_len, salted_line, Manifest, ManifestError, RunResult, Workload, MANIFEST_VERSION,
};
use crate::session::{
    latency_histogram, run, Line, LineSource, ListSource, Numbering, Progress, SessionError,
    SessionOptions, SessionReport,
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
    /// Salt every line with its client and sn (`<client>:<sn> <line>`), so every
    /// text is sent once ([`crate::manifest::salted_line`]).
    pub distinct: bool,
    /// The secret each client's token is minted under, when the producer
    /// authenticates clients (`producer.auth.mode = "token"`).
    pub token_secret: Option<tally_common::auth::Secret>,
    /// How the clients speak TLS to the producer; `None`: plain TCP.
    pub tls: Option<Arc<crate::session::SessionTls>>,
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
    let clients: Vec<String> = (0..plan.clients)
        .map(|i| Manifest::client_id(&plan.run_id, i))
        .collect();
    // A salted line must still fit: the salt's room comes off the limit (the
    // sn's digits estimated from the files' size, an upper bound of their lines).
    let max_line = match (plan.distinct, clients.last()) {
        (true, Some(last)) => {
            let bytes: u64 = plan
                .files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            let most = bytes.saturating_add(1).saturating_mul(plan.repeat);
            plan.max_line.saturating_sub(salt_len(last, most))
        }
        _ => plan.max_line,
    };
    let workload = Workload::load(&plan.files, max_line)?;
    for id in &clients {
        ClientId::parse(id).map_err(|_| MtcError::BadRunId(plan.run_id.clone()))?;
    }
    let messages = if plan.distinct {
        workload.salted_entries(&clients, plan.repeat)
    } else {
        workload.message_entries(plan.repeat)
    };
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
        distinct: plan.distinct,
        messages,
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
            && earlier.distinct == manifest.distinct
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
    let hashes: Vec<MessageHash> = manifest
        .messages
        .iter()
        .map(|m| MessageHash::of(m.text.as_bytes()))
        .collect();
    let baselines = inspector.message_counts(&hashes).await?;
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
        let list = ListSource::new(lines.clone(), plan.repeat);
        let source = if plan.distinct {
            MtcSource::Salted(SaltedSource {
                inner: list,
                client: id.as_str().to_owned(),
                sn: 0,
            })
        } else {
            MtcSource::Plain(list)
        };
        let options = SessionOptions {
            window: plan.window,
            rate: plan.rate,
            deadline: Some(deadline),
            numbering: Numbering::FromOne,
            token: plan.token_secret.as_ref().map(|s| s.mint(&id)),
            tls: plan.tls.clone(),
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
    let mut unavailable_reasons = BTreeMap::new();
    while let Some(joined) = sessions.join_next().await {
        match joined {
            Ok((_, Ok(report))) => {
                acked += report.acked;
                for reason in unavailable_reasons_of(&report.errors) {
                    *unavailable_reasons.entry(reason.to_owned()).or_insert(0) += 1;
                }
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
        err_unavailable: unavailable_reasons.values().sum(),
        unavailable_reasons,
    });
    manifest.save(&plan.manifest_path)?;
    Ok(MtcOutcome {
        manifest,
        failures,
        latency_us: latency,
        resumed,
    })
}

/// A mass-test client's lines: the files as they are, or salted.
enum MtcSource {
    Plain(ListSource),
    Salted(SaltedSource),
}

impl LineSource for MtcSource {
    async fn next_line(&mut self) -> Option<Line> {
        match self {
            Self::Plain(s) => s.next_line().await,
            Self::Salted(s) => s.next_line().await,
        }
    }

    async fn skip(&mut self, n: u64) -> u64 {
        match self {
            Self::Plain(s) => s.skip(n).await,
            Self::Salted(s) => s.skip(n).await,
        }
    }
}

/// The list's lines, each salted with the client id and its sn (the source's
/// i-th line is sn i: the sessions number from one).
struct SaltedSource {
    inner: ListSource,
    client: String,
    /// sn of the last line given out or skipped.
    sn: u64,
}

impl LineSource for SaltedSource {
    async fn next_line(&mut self) -> Option<Line> {
        // The list's future is ready at once, so this one is cancel-safe too.
        let line = self.inner.next_line().await?;
        self.sn += 1;
        Some(Line::from(salted_line(&self.client, self.sn, &line)))
    }

    async fn skip(&mut self, n: u64) -> u64 {
        let skipped = self.inner.skip(n).await;
        self.sn += skipped;
        skipped
    }
}

/// How many of a session's `ERR` lines were `ERR unavailable`.
pub fn unavailable_answers(errors: &[String]) -> u64 {
    unavailable_reasons_of(errors).count() as u64
}

/// The reason of each of a session's `ERR unavailable` lines: what follows
/// `ERR unavailable ` (`-` when the producer gave none).
pub fn unavailable_reasons_of(errors: &[String]) -> impl Iterator<Item = &str> {
    errors.iter().filter_map(|e| {
        let rest = e.strip_prefix("ERR unavailable")?;
        if rest.is_empty() {
            Some("-")
        } else {
            rest.strip_prefix(' ')
                .map(|r| if r.is_empty() { "-" } else { r })
        }
    })
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
        assert_eq!(
            unavailable_reasons_of(&errors).collect::<Vec<_>>(),
            ["redis: timed out", "kafka"]
        );
        let odd = ["ERR unavailable".to_owned(), "ERR unavailablex".to_owned()];
        assert_eq!(unavailable_reasons_of(&odd).collect::<Vec<_>>(), ["-"]);
    }

    #[tokio::test]
    async fn a_salted_source_numbers_its_lines_from_one_across_repeats_and_skips() {
        let lines: Arc<[Line]> = vec![Line::from("a"), Line::from("b")].into();
        let mut source = SaltedSource {
            inner: ListSource::new(lines, 3),
            client: "mtc-r-0".into(),
            sn: 0,
        };
        assert_eq!(source.next_line().await.as_deref(), Some("mtc-r-0:1 a"));
        assert_eq!(source.skip(2).await, 2);
        assert_eq!(source.next_line().await.as_deref(), Some("mtc-r-0:4 b"));
        assert_eq!(source.skip(10).await, 2);
        assert_eq!(source.next_line().await, None);
    }
}
