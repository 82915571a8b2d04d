//! The stash's entries on a real Redis Cluster: one stream entry per stashed batch,
//! its id the batch's last sn. What must hold: a read after any sn returns exactly
//! the messages after it, in order, with their sns, also from the middle of an
//! entry and when it stops at `count`; trimming to `flushed` keeps a batch flushed
//! in part whole and drops the ones flushed entirely; an entry written one message
//! at a time (the format before batches) reads the same; a message holding a line
//! break is refused with nothing written.

use redis::AsyncCommands;
use tally_common::keys::ClientId;
use tally_common::redis::RedisOpError;
use tally_common::Keys;
use tally_tests::{isolated_settings, stash_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_read_back_message_by_message_and_trim_by_their_last_sn() {
    tally_tests::init_logging();
    let settings = isolated_settings("it-stash-entries", 1).await;
    let store = stash_store(&settings).await;
    let keys = Keys::new(&settings.redis.prefix);
    let mut conn = tally_common::redis::connect(&settings.redis)
        .await
        .expect("redis");
    let id = ClientId::parse("entries-1").expect("id");
    let instance = format!("{}-p", settings.redis.prefix);
    let claim = store.take(&id, &instance).await.expect("claim");
    assert_eq!(claim.sn, 0);

    let batches: [&[&str]; 3] = [&["a", "b", "c"], &["d"], &["", "f"]];
    let mut last = 0;
    for batch in batches {
        let first = store
            .append(&id, &instance, claim.epoch, last, 1_000, batch)
            .await
            .expect("append");
        assert_eq!(first, last + 1);
        last += batch.len() as u64;
    }
    let len: u64 = conn.xlen(keys.client_stash(&id)).await.expect("XLEN");
    assert_eq!(len, 3, "one entry per batch");

    let texts = |m: &[tally_common::stash::StashedMessage]| -> Vec<(u64, String)> {
        m.iter().map(|m| (m.sn, m.msg.clone())).collect()
    };
    let all: Vec<(u64, String)> = ["a", "b", "c", "d", "", "f"]
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, (*t).to_owned()))
        .collect();
    for after in 0..=6u64 {
        let read = store.read(&id, after, 100).await.expect("read");
        assert_eq!(texts(&read), all[after as usize..], "after {after}");
    }
    let two = store.read(&id, 1, 2).await.expect("read");
    assert_eq!(texts(&two), all[1..3], "stops at count");

    // Flushed up to 2: the first batch (sns 1-3) is flushed in part and stays.
    store
        .commit_flushed(&id, &instance, claim.epoch, 2)
        .await
        .expect("flushed");
    let len: u64 = conn.xlen(keys.client_stash(&id)).await.expect("XLEN");
    assert_eq!(len, 3, "a batch flushed in part stays whole");
    let read = store.read(&id, 2, 100).await.expect("read");
    assert_eq!(texts(&read), all[2..]);
    // Up to 4: the first two batches go.
    store
        .commit_flushed(&id, &instance, claim.epoch, 4)
        .await
        .expect("flushed");
    let len: u64 = conn.xlen(keys.client_stash(&id)).await.expect("XLEN");
    assert_eq!(len, 1, "only the last batch is left");
    let read = store.read(&id, 4, 100).await.expect("read");
    assert_eq!(texts(&read), all[4..]);

    // An entry of the format before batches: id <sn>-0, one message.
    let _: String = conn
        .xadd(keys.client_stash(&id), "7-0", &[("m", "g"), ("t", "5")])
        .await
        .expect("XADD");
    let _: i64 = conn
        .hset(keys.client_meta(&id), "sn", 7)
        .await
        .expect("HSET");
    let read = store.read(&id, 6, 100).await.expect("read");
    assert_eq!(texts(&read), [(7, "g".to_owned())]);

    // A message with a line break: refused, nothing written.
    let refused = store
        .append(&id, &instance, claim.epoch, 7, 1_000, &["h", "i\nj"])
        .await;
    assert!(
        matches!(refused, Err(RedisOpError::Refused { .. })),
        "{refused:?}"
    );
    let meta = store.meta(&id).await.expect("meta");
    assert_eq!(meta.sn, 7);
    let read = store.read(&id, 7, 100).await.expect("read");
    assert!(read.is_empty());
}
