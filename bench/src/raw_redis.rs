//! The Redis ceilings: tally's own Lua scripts, called through tally's own stores
//! (`StashStore`, `CountStore`: the write combiner, one `WAIT 1` per round per
//! master), as fast as `concurrency` callers can, with the batch shapes tally
//! produces:
//!
//! | script | items per call | callers | like |
//! |---|---:|---:|---|
//! | `stash_append` | [`STASH_LINES`] lines of the record size | [`STASH_CALLERS`] | 100 connected clients, each with a window of lines |
//! | `count_client` | [`COUNT_SNS`] sns | [`COUNT_CALLERS`] | a counter batch of 1,000 records over 10 clients, `apply_concurrency` 32 |
//! | `count_messages` | [`BUCKET_MESSAGES`] messages of one bucket, 1 sighting each | [`COUNT_CALLERS`] | the aggregator: a 5,000-record batch of distinct lines (one closed by `batch_max_ms`) over 256 buckets |
//!
//! Every call must succeed; keys are under their own prefix and the stash is
//! trimmed afterwards, as a producer would after flushing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tally_common::counting::{CountStore, MessageSightings};
use tally_common::keys::MESSAGE_BUCKETS;
use tally_common::redis::{connect, Replication};
use tally_common::settings::RedisSettings;
use tally_common::stash::StashStore;
use tally_common::{ClientId, Keys, MessageHash};
use tokio::task::JoinSet;

use crate::results::{RedisScriptResult, Throughput};
use crate::BenchError;

/// Lines per `stash_append` call.
pub const STASH_LINES: usize = 100;
/// Concurrent `stash_append` callers (clients).
pub const STASH_CALLERS: usize = 100;
/// Sns per `count_client` call.
pub const COUNT_SNS: usize = 100;
/// Concurrent `count_client` / `count_messages` callers.
pub const COUNT_CALLERS: usize = 32;
/// Distinct messages per `count_messages` call (all of one bucket).
pub const BUCKET_MESSAGES: usize = 20;

/// Which script.
#[derive(Debug, Clone, Copy)]
enum Script {
    StashAppend,
    CountClient,
    CountMessage,
}

impl Script {
    fn name(self) -> &'static str {
        match self {
            Script::StashAppend => "stash_append",
            Script::CountClient => "count_client",
            Script::CountMessage => "count_messages",
        }
    }

    fn shape(self) -> (usize, usize) {
        match self {
            Script::StashAppend => (STASH_LINES, STASH_CALLERS),
            Script::CountClient => (COUNT_SNS, COUNT_CALLERS),
            Script::CountMessage => (BUCKET_MESSAGES, COUNT_CALLERS),
        }
    }
}

/// Drives each script for `seconds` under the key prefix `prefix`.
pub async fn script_ceilings(
    redis: &RedisSettings,
    prefix: &str,
    record_bytes: usize,
    seconds: f64,
) -> Result<Vec<RedisScriptResult>, BenchError> {
    let conn = connect(redis)
        .await
        .map_err(|e| BenchError::Redis(e.into()))?;
    let keys = Keys::new(prefix);
    let replication = Replication::from_settings(redis);
    let stash = StashStore::new(conn.clone(), keys.clone(), replication).await?;
    let counts = CountStore::new(conn, keys, replication).await?;
    let mut results = Vec::new();
    for script in [
        Script::StashAppend,
        Script::CountClient,
        Script::CountMessage,
    ] {
        results.push(drive(script, &stash, &counts, record_bytes, seconds).await?);
    }
    Ok(results)
}

async fn drive(
    script: Script,
    stash: &StashStore,
    counts: &CountStore,
    record_bytes: usize,
    seconds: f64,
) -> Result<RedisScriptResult, BenchError> {
    let (batch, callers) = script.shape();
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let line: Arc<str> = {
        let mut l = "bench line ".to_owned();
        l.extend(std::iter::repeat_n(
            'x',
            record_bytes.saturating_sub(l.len()),
        ));
        l.into()
    };
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let (stash, counts, line) = (stash.clone(), counts.clone(), line.clone());
        tasks.spawn(async move {
            caller_loop(script, caller, batch, stop, &stash, &counts, &line).await
        });
    }
    let mut latency = crate::latency_histogram();
    let mut items = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let (n, h) = joined.map_err(|e| BenchError::Task(e.to_string()))??;
        items += n;
        latency
            .add(&h)
            .map_err(|e| BenchError::Check(format!("merge latency histograms: {e}")))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(RedisScriptResult {
        script: script.name().to_owned(),
        batch,
        concurrency: callers,
        throughput: Throughput {
            items,
            seconds: elapsed,
            per_s: items as f64 / elapsed,
            detail: format!("{batch} per call, {callers} callers, WAIT 1"),
        },
        call_p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        call_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// One caller: calls its script until `stop`; returns items done and call latency.
async fn caller_loop(
    script: Script,
    caller: usize,
    batch: usize,
    stop: Instant,
    stash: &StashStore,
    counts: &CountStore,
    line: &str,
) -> Result<(u64, Histogram<u64>), BenchError> {
    let mut latency = crate::latency_histogram();
    let client = ClientId::parse(&format!("bench-{}-{caller}", script.name()))
        .map_err(|e| BenchError::Check(e.to_string()))?;
    let instance = "bench";
    let lines: Vec<&str> = vec![line; batch];
    let mut items = 0u64;
    let mut last_sn = 0u64;
    let mut epoch = 0;
    if let Script::StashAppend = script {
        let claim = stash.take(&client, instance).await?;
        epoch = claim.epoch;
        last_sn = claim.sn;
    }
    let mut k = 0u64;
    while Instant::now() < stop {
        let call = Instant::now();
        match script {
            Script::StashAppend => {
                let ts = 0;
                stash
                    .append(&client, instance, epoch, last_sn, ts, &lines)
                    .await?;
                last_sn += batch as u64;
            }
            Script::CountClient => {
                let sns: Vec<u64> = (last_sn + 1..=last_sn + batch as u64).collect();
                counts.apply_client(&client, &sns).await?;
                last_sn += batch as u64;
            }
            Script::CountMessage => {
                // Distinct texts of one bucket, as the aggregator groups them.
                let bucket = ((caller as u64 + k) % MESSAGE_BUCKETS as u64) as u16;
                let texts: Vec<(MessageHash, String)> = (0u64..)
                    .map(|j| format!("{line} {caller} {k} {j}"))
                    .map(|text| (MessageHash::of(text.as_bytes()), text))
                    .filter(|(hash, _)| hash.bucket() == bucket)
                    .take(batch)
                    .collect();
                let sighting = [(client.as_str(), k + 1)];
                let messages: Vec<MessageSightings<'_>> = texts
                    .iter()
                    .map(|(hash, text)| MessageSightings {
                        hash,
                        text,
                        sightings: &sighting,
                    })
                    .collect();
                counts.apply_messages(&messages).await?;
            }
        }
        let _ = latency.record(call.elapsed().as_micros() as u64);
        items += batch as u64;
        k += 1;
    }
    if let Script::StashAppend = script {
        // Trim what was stashed, as the producer does once Kafka has it.
        stash
            .commit_flushed(&client, instance, epoch, last_sn)
            .await?;
    }
    Ok((items, latency))
}
