//! Three counters and three aggregators share the work; one of each is killed
//! with SIGKILL mid-stream and restarted. Rebalances move partitions back and
//! forth; the counts come out exact.

use std::time::{Duration, Instant};

use tally_tests::pipeline::{
    assert_counts, isolated, messy_stream, produce, start_aggregator, start_counter, wait_done,
    Expected,
};
use tally_tests::ServiceProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_each_with_one_of_each_killed_count_exactly() {
    let settings = isolated("it-scale", 6).await;
    let stream = messy_stream(&settings.redis.prefix, 12, 150);
    let expected = Expected::of(&stream);
    let quarter = stream.len() / 4;
    let chunks: Vec<_> = stream.chunks(quarter).collect();

    let batches = [
        ("TALLY__COUNTER__BATCH_MAX_RECORDS", "100".to_owned()),
        ("TALLY__AGGREGATOR__BATCH_MAX_RECORDS", "100".to_owned()),
    ];
    let counter_a = start_counter(&settings, "a", &batches);
    let mut counter_b = start_counter(&settings, "b", &batches);
    let counter_c = start_counter(&settings, "c", &batches);
    let aggregator_x = start_aggregator(&settings, &batches);
    let mut aggregator_y = start_aggregator(&settings, &batches);
    let aggregator_z = start_aggregator(&settings, &batches);

    // Records go in only once every member holds partitions: otherwise the others
    // can finish the first chunk before a victim is assigned anything, and the
    // victim never has work in hand (seen on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(90);
    for member in [
        &counter_a,
        &counter_b,
        &counter_c,
        &aggregator_x,
        &aggregator_y,
        &aggregator_z,
    ] {
        wait_for_log(member, deadline, "partitions", |l| {
            l.contains("partitions assigned") && !l.contains("partitions=[]")
        })
        .await;
    }
    produce(&settings, chunks[0]).await;
    // Kill only once the victims have partitions and work in hand: each has
    // committed a batch; then more records arrive and they are killed mid-stream.
    for victim in [&counter_b, &aggregator_y] {
        wait_for_log(victim, deadline, "a committed batch", |l| {
            l.contains("batch committed")
        })
        .await;
    }
    produce(&settings, chunks[1]).await;
    counter_b.kill9();
    aggregator_y.kill9();
    produce(&settings, chunks[2]).await;

    // Restarted under the same instance id: its producer fences the dead one's.
    let counter_b = start_counter(&settings, "b", &batches);
    let aggregator_y = start_aggregator(&settings, &batches);
    for chunk in &chunks[3..] {
        produce(&settings, chunk).await;
    }

    let all = [
        &counter_a,
        &counter_b,
        &counter_c,
        &aggregator_x,
        &aggregator_y,
        &aggregator_z,
    ];
    wait_done(&settings, Duration::from_secs(180), &all);
    assert_counts(&settings, &expected, &all).await;
}

/// Waits until a line of `service`'s log satisfies `found`.
async fn wait_for_log(
    service: &ServiceProcess,
    deadline: Instant,
    what: &str,
    found: impl Fn(&str) -> bool,
) {
    while !std::fs::read_to_string(&service.log)
        .unwrap_or_default()
        .lines()
        .any(&found)
    {
        assert!(
            Instant::now() < deadline,
            "never saw {what} in {}\n{}",
            service.log.display(),
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
