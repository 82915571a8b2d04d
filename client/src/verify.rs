//! The oracle: checks a run's counts against its manifest.
//!
//! Invariant: a run is exact only if every client's `count` and `last_sn` equal
//! the messages it sent and every distinct message's `count` equals its baseline
//! plus occurrences × repeat × clients. Nothing is compared with anything but the
//! manifest's expectations (not counts with each other), so a loss or a
//! duplicate anywhere shows up as a mismatch.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inspect::{InspectError, Inspector};
use crate::manifest::Manifest;
use tally_common::{ClientId, MessageHash};

/// One count that is not what the manifest expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The Redis key.
    pub key: String,
    /// What it is: `client count`, `client last_sn` or `message count`.
    pub what: &'static str,
    /// For a message, its text.
    pub text: Option<String>,
    /// Expected value.
    pub expected: u64,
    /// Value found.
    pub found: u64,
}

/// The outcome of one check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Clients checked.
    pub clients: u64,
    /// Clients whose count and last_sn are exact.
    pub clients_exact: u64,
    /// Distinct messages checked.
    pub messages: u64,
    /// Messages whose count is exact.
    pub messages_exact: u64,
    /// Sum of every count read (to see whether anything still moves).
    pub total_counted: u64,
    /// Every mismatch.
    pub mismatches: Vec<Mismatch>,
}

impl Verdict {
    /// Whether everything is exact.
    pub fn exact(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Why the verifier could not judge.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading Redis failed.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The manifest names something that is not a client id or hash.
    #[error("manifest entry {0:?} is not valid")]
    Manifest(String),
}

/// Reads every count the manifest mentions once and compares.
pub async fn check(inspector: &Inspector, manifest: &Manifest) -> Result<Verdict, VerifyError> {
    let keys = inspector.keys();
    let mut client_keys = Vec::with_capacity(manifest.clients.len() * 2);
    for id in &manifest.clients {
        let id = ClientId::parse(id).map_err(|_| VerifyError::Manifest(id.clone()))?;
        client_keys.push(keys.client_count(&id));
        client_keys.push(keys.client_last_sn(&id));
    }
    let mut hashes = Vec::with_capacity(manifest.messages.len());
    for entry in &manifest.messages {
        let hash: MessageHash = entry
            .hash
            .parse()
            .map_err(|_| VerifyError::Manifest(entry.hash.clone()))?;
        hashes.push(hash);
    }
    let client_values = inspector.numbers(&client_keys).await?;
    let message_values = inspector.message_counts(&hashes).await?;

    let mut verdict = Verdict {
        clients: manifest.clients.len() as u64,
        messages: manifest.messages.len() as u64,
        ..Verdict::default()
    };
    for (pair_keys, pair_values) in client_keys.chunks(2).zip(client_values.chunks(2)) {
        let mut exact = true;
        for ((key, &found), what) in pair_keys
            .iter()
            .zip(pair_values)
            .zip(["client count", "client last_sn"])
        {
            verdict.total_counted += found;
            if found != manifest.per_client {
                exact = false;
                verdict.mismatches.push(Mismatch {
                    key: key.clone(),
                    what,
                    text: None,
                    expected: manifest.per_client,
                    found,
                });
            }
        }
        verdict.clients_exact += u64::from(exact);
    }
    for ((entry, hash), &found) in manifest.messages.iter().zip(&hashes).zip(&message_values) {
        verdict.total_counted += found;
        let expected = manifest.expected_message_count(entry);
        if found == expected {
            verdict.messages_exact += 1;
        } else {
            verdict.mismatches.push(Mismatch {
                key: keys.message(hash),
                what: "message count",
                text: Some(entry.text.clone()),
                expected,
                found,
            });
        }
    }
    Ok(verdict)
}

/// How long to wait for the pipeline to drain.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Give up after this long.
    pub timeout: Duration,
    /// Stop early when no count changed for this long.
    pub settle: Duration,
    /// Pause between checks.
    pub poll: Duration,
}

/// Checks until the counts are exact, stop changing for `settle`, or `timeout`
/// passes; returns the last verdict and how long it waited. `on_poll` sees each
/// intermediate verdict (for progress output).
pub async fn wait_and_check(
    inspector: &Inspector,
    manifest: &Manifest,
    patience: Patience,
    mut on_poll: impl FnMut(&Verdict),
) -> Result<(Verdict, Duration), VerifyError> {
    let started = Instant::now();
    let mut last_total = None;
    let mut last_change = Instant::now();
    loop {
        let verdict = check(inspector, manifest).await?;
        if verdict.exact() {
            return Ok((verdict, started.elapsed()));
        }
        if last_total != Some(verdict.total_counted) {
            last_total = Some(verdict.total_counted);
            last_change = Instant::now();
        }
        if started.elapsed() >= patience.timeout || last_change.elapsed() >= patience.settle {
            return Ok((verdict, started.elapsed()));
        }
        on_poll(&verdict);
        tokio::time::sleep(patience.poll).await;
    }
}
