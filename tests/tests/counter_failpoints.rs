//! Crash the counter or the aggregator at each failpoint (`std::process::abort`,
//! as abrupt as `kill -9` at that line), restart it without the failpoint, and the
//! counts still come out exact.
//!
//! Also the replay that a naive counter gets wrong: a client's gap and its fill are
//! applied, the process dies before the commit, and the restarted counter replays
//! with different batch boundaries. A message the client sent at both the gap sn
//! and the sn before it must still count twice. And its pipelined forms: the fill
//! arrives in the batch applied while the gap's batch commits, or in a later part
//! of the gap's own batch, and that batch's commit dies.

use std::time::Duration;

use tally_common::Settings;
use tally_tests::pipeline::{
    actual, assert_counts, isolated, messy_stream, produce, start_aggregator, start_counter,
    wait_done, Expected, RawRecord,
};
use tally_tests::ServiceProcess;

/// Waits for a process armed with a failpoint to abort (SIGABRT).
fn expect_abort(process: &mut ServiceProcess, failpoint: &str) {
    let status = process
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("{failpoint} never fired\n{}", process.log_tail()));
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(6),
            "{failpoint}: expected SIGABRT, got {status}\n{}",
            process.log_tail()
        );
    }
    assert!(
        process.log_tail().contains("failpoint fired"),
        "{failpoint}: exited without firing\n{}",
        process.log_tail()
    );
}

/// Runs the stream through a counter and an aggregator, one of which (`service`)
/// first crashes at `failpoint` on its `hit`-th pass, then is restarted.
async fn crash_and_recover(service: &str, failpoint: &str, hit: u32) {
    let settings = isolated(&format!("it-fp-{}", failpoint.replace('.', "-")), 2).await;
    let stream = messy_stream(&settings.redis.prefix, 4, 80);
    let expected = Expected::of(&stream);
    produce(&settings, &stream).await;

    let small = [
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "29".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "31".to_owned()),
    ];
    let armed = |mut env: Vec<(&'static str, String)>| {
        env.push(("TALLY_FAILPOINT", format!("{failpoint}@{hit}")));
        env
    };
    let (counter, aggregator) = if service == "counter" {
        let mut crashing = start_counter(&settings, "fp-1", &armed(small.to_vec()));
        let aggregator = start_aggregator(&settings, &small);
        expect_abort(&mut crashing, failpoint);
        // Same instance id: the new producer fences the dead one's transaction.
        (start_counter(&settings, "fp-1", &small), aggregator)
    } else {
        let counter = start_counter(&settings, "fp-1", &small);
        let mut crashing = start_aggregator(&settings, &armed(small.to_vec()));
        expect_abort(&mut crashing, failpoint);
        (counter, start_aggregator(&settings, &small))
    };
    wait_done(
        &settings,
        Duration::from_secs(120),
        &[&counter, &aggregator],
    );
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_crash_after_apply() {
    crash_and_recover("counter", "counter.after_apply", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_crash_after_produce() {
    crash_and_recover("counter", "counter.after_produce", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_crash_before_commit() {
    crash_and_recover("counter", "counter.before_commit", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_crash_after_commit() {
    crash_and_recover("counter", "counter.after_commit", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_crash_after_apply() {
    crash_and_recover("aggregator", "aggregator.after_apply", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_crash_before_commit() {
    crash_and_recover("aggregator", "aggregator.before_commit", 3).await;
}

/// One client's stream with a gap and its fill: sn 4 was lost on the first send,
/// 5 arrived, go-back-N resent 4 and 5; 4 and 5 carry the same text, which must
/// count twice. Returns the client, the stream and what Redis must hold in the
/// end.
fn gap_and_fill_stream(settings: &Settings) -> (String, Vec<RawRecord>, Expected) {
    let client = format!("{}-c", settings.redis.prefix);
    let same = format!("{} same line", settings.redis.prefix);
    let text = |sn: u64| match sn {
        4 | 5 => same.clone(),
        _ => format!("{client} line {sn}"),
    };
    let stream: Vec<RawRecord> = [1, 2, 3, 5, 4, 5]
        .into_iter()
        .map(|sn| RawRecord::message(&client, sn, &text(sn)))
        .collect();
    let expected = Expected::of(&stream);
    assert_eq!(expected.messages[&same], 2);
    (client, stream, expected)
}

/// [`gap_and_fill_stream`], produced to fresh topics. Returns the settings, the
/// client and what Redis must hold in the end.
async fn gap_and_fill(what: &str) -> (Settings, String, Expected) {
    let settings = isolated(what, 1).await;
    let (client, stream, expected) = gap_and_fill_stream(&settings);
    produce(&settings, &stream).await;
    (settings, client, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_across_a_filled_gap_keeps_repeated_texts() {
    let (settings, _, expected) = gap_and_fill("it-fp-gap-replay").await;

    // First run: one batch holds the whole stream; the process dies right after
    // its Redis apply, before anything is committed.
    let mut first = start_counter(
        &settings,
        "gap-replay",
        &[
            ("TALLY__COUNTER__BATCH_MAX_RECORDS", "100".to_owned()),
            ("TALLY__COUNTER__BATCH_MAX_MS", "2000".to_owned()),
            ("TALLY_FAILPOINT", "counter.after_apply".to_owned()),
        ],
    );
    expect_abort(&mut first, "counter.after_apply");

    // The replay cuts the stream differently: [1 2 3 5] then [4 5].
    let small = [("TALLY__COUNTER__BATCH_MAX_RECORDS", "4".to_owned())];
    let counter = start_counter(&settings, "gap-replay", &small);
    let aggregator = start_aggregator(&settings, &[]);
    wait_done(&settings, Duration::from_secs(60), &[&counter, &aggregator]);
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_the_batch_applied_during_the_gaps_commit_waits_for_that_commit() {
    let (settings, client, expected) = gap_and_fill("it-fp-gap-overlap").await;

    // Batches [1 2 3 5] and [4 5]: the second is applied while the first commits,
    // and the process dies just before that first commit. Had [4 5] been applied
    // then, the replay would see 5 as applied before 4 and 5 were forwarded again,
    // and the aggregator's high-water mark would drop the second "same line".
    let batches = [("TALLY__COUNTER__BATCH_MAX_RECORDS", "4".to_owned())];
    let mut armed = batches.to_vec();
    armed.push(("TALLY_FAILPOINT", "counter.before_commit".to_owned()));
    let mut first = start_counter(&settings, "gap-overlap", &armed);
    expect_abort(&mut first, "counter.before_commit");
    // The first batch's 1 2 3 are applied; the fill 4 is not, though its batch
    // was fetched and processed while the first one committed.
    let after_crash = actual(&settings, &expected).await;
    assert_eq!(
        after_crash.clients[&client],
        (3, 3),
        "(count, last_sn) after the crash\n{}",
        first.log_tail()
    );

    let counter = start_counter(&settings, "gap-overlap", &batches);
    let aggregator = start_aggregator(&settings, &[]);
    wait_done(&settings, Duration::from_secs(60), &[&counter, &aggregator]);
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_a_later_part_of_the_gaps_batch_waits_for_that_batch() {
    const PAUSE: Duration = Duration::from_secs(6);
    let settings = isolated("it-fp-gap-parts", 1).await;
    let (client, stream, expected) = gap_and_fill_stream(&settings);

    // Batch [1 2 3] is applied, and its commit pauses. Meanwhile the next batch
    // grows by what arrives: [5] (a gap) as its first part, [4 5] (the fill) as a
    // later one. The process dies just before that batch's commit. Had the fill
    // been applied in the later part, Redis would hold 4 and 5 behind an
    // uncommitted gap record, and the replay would forward 5 before 4 and drop
    // the second "same line" (as in the test above, within one batch).
    produce(&settings, &stream[..3]).await;
    let mut first = start_counter(
        &settings,
        "gap-parts",
        &[(
            "TALLY_FAILPOINT",
            format!(
                "counter.slow_commit~{},counter.before_commit@2",
                PAUSE.as_millis()
            ),
        )],
    );
    let applied = tokio::time::Instant::now();
    while actual(&settings, &expected).await.clients.get(&client) != Some(&(3, 3)) {
        assert!(
            applied.elapsed() < Duration::from_secs(60),
            "[1 2 3] never applied\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce(&settings, &stream[3..4]).await;
    tokio::time::sleep(PAUSE / 3).await;
    produce(&settings, &stream[4..]).await;
    expect_abort(&mut first, "counter.before_commit");

    // The fill came as a later part of the gap's batch and was held back.
    let log = first.log_text();
    assert!(
        log.lines().any(|l| l.contains("applying a part of a batch")
            && l.contains("part=More")
            && l.contains("held_back=1")),
        "the fill never arrived as a held-back later part of the gap's batch\n{log}"
    );
    let after_crash = actual(&settings, &expected).await;
    assert_eq!(
        after_crash.clients[&client],
        (3, 3),
        "(count, last_sn) after the crash\n{log}"
    );

    let counter = start_counter(&settings, "gap-parts", &[]);
    let aggregator = start_aggregator(&settings, &[]);
    wait_done(&settings, Duration::from_secs(60), &[&counter, &aggregator]);
    assert_counts(&settings, &expected, &[&counter, &aggregator]).await;
}
