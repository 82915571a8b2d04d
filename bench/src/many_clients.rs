//! The many-clients point: the producer's memory with `clients` connected
//! clients (each says HELLO and sends one line), its peak, and what is left once
//! they all left and a settle time passed.
//!
//! Invariants: every client is a session of the client library
//! ([`tally_client::session::run`]) that stays connected until told to leave, so
//! the producer holds `clients` live connections at once when the connected
//! reading is taken; at most [`CONNECT_CONCURRENCY`] clients are between
//! connecting and their WELCOME at any time (a storm of 10,000 SYNs would
//! measure the listen backlog, not the producer). The clients are a `tally mtc`
//! run's ([`mtc::prepare`]), so `tally verify`'s check judges the point exact.
//! The bench's own open-file limit must allow the sockets: [`open_files_limit`]
//! reads it, and the caller refuses the point when it is too low.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_client::mtc::{self, unavailable_answers, MtcPlan};
use tally_client::session::{self, Line, LineSource, Progress, SessionOptions};
use tally_common::ClientId;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::e2e::{wait_exact, Pipeline};
use crate::procstat::{rss_kib, Sampler, Watched};
use crate::results::ManyClients;
use crate::BenchError;

/// Clients at most between connecting and their WELCOME at once.
pub const CONNECT_CONCURRENCY: usize = 200;
/// Longest the clients may take to connect and have their line ACKed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// File descriptors the bench keeps besides the clients' sockets.
pub const SPARE_FILES: u64 = 1024;

/// The soft limit on open files of this process (`Max open files` in
/// `/proc/self/limits`; `None` if unreadable, `u64::MAX` if unlimited).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text.
fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// One line, then nothing until told to leave. Taking the first line frees the
/// client's connect slot: the session calls it only after the WELCOME.
struct HoldSource {
    line: Option<Line>,
    slot: Option<OwnedSemaphorePermit>,
    leave: watch::Receiver<bool>,
}

impl LineSource for HoldSource {
    async fn next_line(&mut self) -> Option<Line> {
        self.slot = None;
        if let Some(line) = self.line.take() {
            return Some(line);
        }
        // Cancel-safe: nothing is taken while waiting.
        let _ = self.leave.wait_for(|leave| *leave).await;
        None
    }
}

/// Runs the point on `pipeline` (whose producer must allow `clients`
/// connections): idle reading, connect every client, connected reading, all
/// leave, settle, after reading.
pub async fn many_clients(
    pipeline: &mut Pipeline,
    clients: usize,
    line: &str,
    settle: Duration,
) -> Result<ManyClients, BenchError> {
    let pid = pipeline
        .producer_pid()
        .ok_or_else(|| BenchError::Check("the pipeline has no producer".into()))?;
    let mib = |pid| rss_kib(pid).map_or(0.0, |k| k as f64 / 1024.0);
    let input = pipeline.work_dir().join("many.txt");
    std::fs::write(&input, format!("{line}\n"))
        .map_err(|e| BenchError::io(input.display().to_string(), e))?;
    let plan = MtcPlan {
        clients,
        files: vec![input],
        repeat: 1,
        rate: None,
        addrs: vec![pipeline.producer_addr.clone()],
        run_id: "many".to_owned(),
        manifest_path: pipeline.work_dir().join("many.manifest.json"),
        window: 1,
        timeout: CONNECT_TIMEOUT,
        max_line: pipeline.settings.producer.max_line_bytes,
        distinct: false,
        token_secret: None,
        tls: None,
    };
    let (manifest, lines, _) = mtc::prepare(&plan, pipeline.inspector())
        .await
        .map_err(|e| BenchError::Check(format!("many-clients manifest: {e}")))?;
    let Some(first) = lines.first().cloned() else {
        return Err(BenchError::Check("many-clients: no line".into()));
    };

    let idle_rss_mib = mib(pid);
    let sampler = Sampler::start(vec![Watched {
        name: "tally-producer".into(),
        role: "tally".into(),
        pid,
    }]);
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (leave, told) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    let options = SessionOptions {
        window: 1,
        deadline: Some(started + CONNECT_TIMEOUT),
        ..SessionOptions::default()
    };
    let addrs = vec![pipeline.producer_addr.clone()];
    let mut sessions = tokio::task::JoinSet::new();
    for client in &manifest.clients {
        let id = ClientId::parse(client)
            .map_err(|e| BenchError::Check(format!("client id {client}: {e}")))?;
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Task(e.to_string()))?;
        let source = HoldSource {
            line: Some(first.clone()),
            slot: Some(slot),
            leave: told.clone(),
        };
        let (addrs, options, progress) = (addrs.clone(), options.clone(), progress.clone());
        sessions.spawn(async move {
            session::run(&addrs, Some(&id), source, &options, Some(&progress)).await
        });
    }
    let want = manifest.clients.len() as u64;
    while progress.acked.load(std::sync::atomic::Ordering::Relaxed) < want {
        if started.elapsed() > CONNECT_TIMEOUT {
            let _ = leave.send(true);
            return Err(BenchError::Check(format!(
                "many-clients: {} of {want} clients connected and ACKed within {CONNECT_TIMEOUT:?}",
                progress.acked.load(std::sync::atomic::Ordering::Relaxed)
            )));
        }
        pipeline.check_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    // Every client is connected: a moment for the producer to settle into it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected_rss_mib = mib(pid);

    let _ = leave.send(true);
    let mut err_unavailable = 0;
    let mut failures = Vec::new();
    while let Some(joined) = sessions.join_next().await {
        match joined {
            Ok(Ok(report)) => err_unavailable += unavailable_answers(&report.errors),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Some(first) = failures.first() {
        return Err(BenchError::Check(format!(
            "many-clients: {} of {want} sessions failed (first: {first})",
            failures.len()
        )));
    }
    tokio::time::sleep(settle).await;
    let after_rss_mib = mib(pid);
    let peak = sampler.finish(want).await;
    let peak_rss_mib = peak
        .first()
        .map_or(0.0, |c| c.peak_rss_mib)
        .max(connected_rss_mib);
    let (exact, _, _) = wait_exact(pipeline.inspector(), &manifest, started).await?;
    pipeline.check_running()?;
    Ok(ManyClients {
        clients,
        connect_s,
        idle_rss_mib,
        connected_rss_mib,
        peak_rss_mib,
        after_rss_mib,
        settle_s: settle.as_secs_f64(),
        exact,
        err_unavailable,
        reconnects: progress
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(unlimited), Some(u64::MAX));
        assert_eq!(parse_open_files("Max processes 10 10\n"), None);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
