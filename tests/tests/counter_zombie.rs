//! A zombie counter: SIGSTOP a counter past the transaction and session timeouts
//! while a second instance takes its partitions and commits past where it stood,
//! then SIGCONT it. It must not count anything twice or forward anything out of
//! order: it notices it stood still, drops its batch and rejoins (and any
//! transaction it had open was aborted by the broker and cannot commit). The counts
//! come out exact.

use std::time::{Duration, Instant};

use tally_tests::pipeline::{
    assert_counts, caught_up, committed, ends, isolated, messy_stream, produce, start_aggregator,
    start_counter, wait_done, Expected,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_counter_is_fenced_and_counts_stay_exact() {
    let mut settings = isolated("it-zombie", 4).await;
    settings.kafka.transaction_timeout_ms = 5_000;
    let stream = messy_stream(&settings.redis.prefix, 8, 150);
    let expected = Expected::of(&stream);
    let thirds = stream.len() / 3;
    let (first, rest) = stream.split_at(thirds);
    let (second, third) = rest.split_at(thirds);

    produce(&settings, first).await;
    let batches = [("TALLY__COUNTER__BATCH_MAX_RECORDS", "200".to_owned())];
    let zombie = start_counter(&settings, "zombie-a", &batches);
    let aggregator = start_aggregator(&settings, &[]);

    // Let it commit some of its work, then freeze it mid-stream.
    let source = settings.kafka.client_message_topic.clone();
    let group = settings.counter.group_id.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&settings, &group, &source)
        .values()
        .all(|o| *o <= 0)
    {
        assert!(
            Instant::now() < deadline,
            "no commit\n{}",
            zombie.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&settings, second).await;
    zombie.signal("STOP");

    // A second instance takes over once the zombie's session expired, and commits
    // everything written so far.
    let survivor = start_counter(&settings, "zombie-b", &batches);
    let target = ends(&settings, &source);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let at = committed(&settings, &group, &source);
        if caught_up(&at, &target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "survivor did not take over: at {at:?}, end {target:?}\n{}",
            survivor.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Wake the zombie; both instances share the rest of the stream.
    zombie.signal("CONT");
    produce(&settings, third).await;
    wait_done(
        &settings,
        Duration::from_secs(120),
        &[&zombie, &survivor, &aggregator],
    );
    assert_counts(&settings, &expected, &[&zombie, &survivor, &aggregator]).await;

    // It noticed: the stall detector saw the pause (and, if a transaction was
    // open, Kafka fenced it). Whether it then rejoined or exited, it did no harm.
    let log = std::fs::read_to_string(&zombie.log).unwrap_or_default();
    assert!(
        log.contains("stood still"),
        "the zombie did not notice its pause:\n{}",
        zombie.log_tail()
    );
}
