//! A measurement, not a check (ignored by default): how many records per second
//! one counter and one aggregator apply on the local stack, and how many
//! transactions per second the counter commits.
//!
//! Run: `cargo build --release --workspace --bins && cargo test --release -p
//! tally-tests --test counter_throughput -- --ignored --nocapture`.
//!
//! The stream is written first; then the counter runs alone until it committed
//! all of it, then the aggregator alone. Rates are taken between the first and the
//! last observed offset progress, so group joins are not counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_common::records::MessageAggregation;
use tally_tests::pipeline::{
    committed, ends, isolated, produce, start_aggregator, start_counter, RawRecord,
};
use tally_tests::ServiceProcess;

const CLIENTS: usize = 200;
const PER_CLIENT: u64 = 500;

/// Polls `group`'s committed offsets on `topic` until they reach `target`; returns
/// (records, seconds) between the first and the last observed progress.
fn measure(
    settings: &tally_common::Settings,
    group: &str,
    topic: &str,
    target: &BTreeMap<i32, i64>,
    service: &ServiceProcess,
) -> (i64, f64) {
    let sum = |m: &BTreeMap<i32, i64>| m.values().map(|o| (*o).max(0)).sum::<i64>();
    let total = sum(target);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let at = sum(&committed(settings, group, topic));
        if first.is_none() && at > 0 {
            first = Some((Instant::now(), at));
        }
        if at >= total {
            let (t0, n0) = first.unwrap_or((Instant::now(), 0));
            return (at - n0, t0.elapsed().as_secs_f64());
        }
        assert!(
            Instant::now() < deadline,
            "{group} at {at} of {total}\n{}",
            service.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
async fn counter_and_aggregator_throughput() {
    let settings = isolated("it-throughput", 12).await;
    let prefix = settings.redis.prefix.clone();
    // Round-robin over clients, in sn order; every other text is one of 100
    // shared ones, so message hashes repeat across batches as in real traffic.
    let mut stream = Vec::with_capacity(CLIENTS * PER_CLIENT as usize);
    for sn in 1..=PER_CLIENT {
        for c in 0..CLIENTS {
            let text = if sn % 2 == 0 {
                format!("{prefix} shared {}", (sn as usize + c) % 100)
            } else {
                format!("{prefix} client {c} line {sn}")
            };
            stream.push(RawRecord::message(&format!("{prefix}-c{c}"), sn, &text));
        }
    }
    produce(&settings, &stream).await;

    let source = settings.kafka.client_message_topic.clone();
    let counter = start_counter(&settings, "bench", &[]);
    let (records, seconds) = measure(
        &settings,
        &settings.counter.group_id,
        &source,
        &ends(&settings, &source),
        &counter,
    );
    let log = std::fs::read_to_string(&counter.log).unwrap_or_default();
    let transactions = log.matches("batch committed").count();
    eprintln!(
        "counter: {records} records in {seconds:.1} s = {:.0} records/s; {transactions} \
         transactions = {:.1} transactions/s",
        records as f64 / seconds,
        transactions as f64 / seconds
    );

    let aggregation = settings.kafka.message_aggregation_topic.clone();
    let aggregator = start_aggregator(&settings, &[]);
    // The aggregation topic's end includes one commit marker per transaction and
    // partition written; the group commits past the last record, so aim at the
    // offsets read_committed consumers can reach.
    let forwarded = tally_tests::pipeline::read_all(&settings, &aggregation);
    let last = forwarded.iter().fold(BTreeMap::new(), |mut m, r| {
        m.insert(r.partition, r.offset + 1);
        m
    });
    let offsets: i64 = last.values().sum();
    let (progress, seconds) = measure(
        &settings,
        &settings.aggregator.group_id,
        &aggregation,
        &last,
        &aggregator,
    );
    // Offsets include transaction markers; scale the progress to data records,
    // and those to the sightings they hold (the counter packs its forwards).
    let sightings: usize = forwarded
        .iter()
        .map(|r| {
            MessageAggregation::sightings(r.key.as_deref(), r.value.as_deref())
                .map_or(1, |s| s.len())
        })
        .sum();
    let records = forwarded.len() as f64 * progress as f64 / offsets as f64;
    let sightings = sightings as f64 * progress as f64 / offsets as f64;
    eprintln!(
        "aggregator: {sightings:.0} sightings ({records:.0} packed records) in {seconds:.1} s = {:.0} sightings/s",
        sightings / seconds
    );
}
