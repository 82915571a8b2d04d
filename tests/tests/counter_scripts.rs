//! The counting Lua scripts against the real Redis Cluster, through their typed
//! wrappers (`tally_common::counting`): in-order apply, duplicates, a gap and its
//! fill (including the stop before a fill that follows a gap in the same call),
//! the aggregator's high-water mark per (message, client), and one text counted
//! from many clients. Every call is confirmed on a replica (`WAIT`), as in service.

use tally_common::counting::{CountStore, MessageSightings, Outcome};
use tally_common::redis::RedisOpError;
use tally_common::redis::{connect, Replication};
use tally_common::{ClientId, Keys, MessageHash};
use tally_tests::{settings, unique};

use Outcome::{Applied as A, Duplicate as D, Gap as G};

async fn store() -> CountStore {
    let s = settings();
    let conn = connect(&s.redis).await.expect("redis");
    CountStore::new(
        conn,
        Keys::new(unique("it-scripts")),
        Replication::from_settings(&s.redis),
    )
    .await
    .expect("count store")
}

/// Counts one message's sightings (a bucket call holding one message).
async fn apply_one(
    store: &CountStore,
    hash: &MessageHash,
    text: &str,
    sightings: &[(&str, u64)],
) -> u64 {
    store
        .apply_messages(&[MessageSightings {
            hash,
            text,
            sightings,
        }])
        .await
        .expect("apply")
}

/// `n` distinct texts whose hashes share one bucket.
fn texts_of_one_bucket(n: usize) -> Vec<(MessageHash, String)> {
    let salt = unique("bucket");
    let bucket = MessageHash::of(salt.as_bytes()).bucket();
    (0u64..)
        .map(|i| format!("{salt} {i}"))
        .map(|t| (MessageHash::of(t.as_bytes()), t))
        .filter(|(h, _)| h.bucket() == bucket)
        .take(n)
        .collect()
}

fn client(name: &str) -> ClientId {
    ClientId::parse(name).expect("client id")
}

async fn state(store: &CountStore, id: &ClientId) -> (u64, u64) {
    (
        store.client_count(id).await.expect("count"),
        store.client_last_sn(id).await.expect("last_sn"),
    )
}

#[tokio::test]
async fn in_order_records_are_applied_and_resends_are_duplicates() {
    let store = store().await;
    let id = client("c-in-order");
    assert_eq!(state(&store, &id).await, (0, 0));

    let out = store.apply_client(&id, &[1, 2, 3]).await.expect("apply");
    assert_eq!(out, vec![A, A, A]);
    assert_eq!(state(&store, &id).await, (3, 3));

    // A resend of the tail plus new records (what go-back-N produces).
    let out = store.apply_client(&id, &[2, 3, 4, 5]).await.expect("apply");
    assert_eq!(out, vec![D, D, A, A]);
    assert_eq!(state(&store, &id).await, (5, 5));

    // The same call again (the cluster client may resend a script): nothing moves.
    let out = store.apply_client(&id, &[2, 3, 4, 5]).await.expect("apply");
    assert_eq!(out, vec![D, D, D, D]);
    assert_eq!(state(&store, &id).await, (5, 5));
}

#[tokio::test]
async fn a_gap_is_not_counted_and_its_fill_counts_everything_once() {
    let store = store().await;
    let id = client("c-gap");
    assert_eq!(
        store.apply_client(&id, &[1, 2]).await.expect("apply"),
        vec![A, A]
    );

    // sn 3 is missing: 4 and 5 wait; duplicates after the gap are still recognised.
    let out = store.apply_client(&id, &[4, 5, 1]).await.expect("apply");
    assert_eq!(out, vec![G, G, D]);
    assert_eq!(state(&store, &id).await, (2, 2), "a gap must not count");

    // The resend fills the gap.
    let out = store.apply_client(&id, &[3, 4, 5]).await.expect("apply");
    assert_eq!(out, vec![A, A, A]);
    assert_eq!(state(&store, &id).await, (5, 5));
}

#[tokio::test]
async fn a_call_stops_before_a_fill_that_follows_a_gap() {
    let store = store().await;
    let id = client("c-stop");
    assert_eq!(
        store.apply_client(&id, &[1, 2, 3]).await.expect("apply"),
        vec![A, A, A]
    );

    // 5 and 6 are a gap; 4 would fill it, so the call stops there: 4 and what
    // follows are left for the caller's next batch, nothing after the gap counts.
    let out = store
        .apply_client(&id, &[5, 6, 2, 4, 5, 6])
        .await
        .expect("apply");
    assert_eq!(out, vec![G, G, D], "stops before the fill");
    assert_eq!(state(&store, &id).await, (3, 3));

    // Re-running the same call (a resend) stops at the same place.
    let again = store
        .apply_client(&id, &[5, 6, 2, 4, 5, 6])
        .await
        .expect("apply");
    assert_eq!(again, out);

    // The next batch starts at the fill.
    let out = store.apply_client(&id, &[4, 5, 6]).await.expect("apply");
    assert_eq!(out, vec![A, A, A]);
    assert_eq!(state(&store, &id).await, (6, 6));
}

#[tokio::test]
async fn message_counts_use_a_high_water_mark_per_message_and_client() {
    let store = store().await;
    let text = format!("hello {}", unique("text"));
    let hash = MessageHash::of(text.as_bytes());

    let counted = apply_one(
        &store,
        &hash,
        &text,
        &[("alice", 3), ("alice", 7), ("bob", 1)],
    )
    .await;
    assert_eq!(counted, 3);
    assert_eq!(store.message_count(&hash).await.expect("count"), 3);
    assert_eq!(store.message_seen(&hash, "alice").await.expect("seen"), 7);
    assert_eq!(
        store.message_text(&hash).await.expect("text").as_deref(),
        Some(text.as_str())
    );

    // Replays of anything at or below the mark count nothing, however old.
    let counted = apply_one(
        &store,
        &hash,
        &text,
        &[("alice", 3), ("alice", 7), ("bob", 1)],
    )
    .await;
    assert_eq!(counted, 0);
    // Within one call, repeats of a pair count once; a higher sn counts.
    let counted = apply_one(
        &store,
        &hash,
        &text,
        &[("alice", 7), ("alice", 9), ("alice", 9), ("bob", 2)],
    )
    .await;
    assert_eq!(counted, 2);
    assert_eq!(store.message_count(&hash).await.expect("count"), 5);
    assert_eq!(store.message_seen(&hash, "alice").await.expect("seen"), 9);
    assert_eq!(store.message_seen(&hash, "bob").await.expect("seen"), 2);

    // The text is stored once; it never changes.
    assert_eq!(
        store.message_text(&hash).await.expect("text").as_deref(),
        Some(text.as_str())
    );
}

#[tokio::test]
async fn the_same_text_from_many_clients_counts_once_per_client_and_sn() {
    let store = store().await;
    let text = "the same line from everyone";
    let hash = MessageHash::of(text.as_bytes());
    let clients: Vec<String> = (0..50).map(|i| format!("many-{i}")).collect();

    // Each client sent the text as its sn 1 and sn 2; every sighting arrives twice
    // (a duplicate forwarded after a replay), spread over several calls.
    for chunk in clients.chunks(7) {
        let mut sightings = Vec::new();
        for c in chunk {
            sightings.extend([(c.as_str(), 1), (c.as_str(), 1), (c.as_str(), 2)]);
        }
        apply_one(&store, &hash, text, &sightings).await;
        apply_one(&store, &hash, text, &sightings).await;
    }
    assert_eq!(
        store.message_count(&hash).await.expect("count"),
        2 * clients.len() as u64
    );
}

#[tokio::test]
async fn one_call_counts_every_message_of_a_bucket_each_with_its_own_marks() {
    let store = store().await;
    let texts = texts_of_one_bucket(30);
    // Message i is seen by alice as sn i+1 and by bob as sn 1, twice.
    let pairs: Vec<Vec<(&str, u64)>> = (0..texts.len() as u64)
        .map(|i| vec![("alice", i + 1), ("bob", 1), ("bob", 1)])
        .collect();
    let messages: Vec<MessageSightings<'_>> = texts
        .iter()
        .zip(&pairs)
        .map(|((hash, text), sightings)| MessageSightings {
            hash,
            text,
            sightings,
        })
        .collect();
    let counted = store.apply_messages(&messages).await.expect("apply");
    assert_eq!(counted, 2 * texts.len() as u64);
    for (i, (hash, text)) in texts.iter().enumerate() {
        assert_eq!(store.message_count(hash).await.expect("count"), 2);
        assert_eq!(
            store.message_seen(hash, "alice").await.expect("seen"),
            i as u64 + 1
        );
        assert_eq!(
            store.message_text(hash).await.expect("text").as_deref(),
            Some(text.as_str())
        );
    }
    // The whole call again counts nothing.
    assert_eq!(store.apply_messages(&messages).await.expect("again"), 0);
}

#[tokio::test]
async fn a_refused_bucket_call_writes_nothing() {
    let store = store().await;
    let texts = texts_of_one_bucket(2);
    let good = [("alice", 1)];
    let bad = [("alice", 0)];
    let messages = [
        MessageSightings {
            hash: &texts[0].0,
            text: &texts[0].1,
            sightings: &good,
        },
        MessageSightings {
            hash: &texts[1].0,
            text: &texts[1].1,
            sightings: &bad,
        },
    ];
    let refused = store.apply_messages(&messages).await;
    assert!(
        matches!(&refused, Err(RedisOpError::Refused { code, .. }) if code == "TALLY_BAD_ARGUMENT"),
        "{refused:?}"
    );
    // Checked before the first write: the good message was not counted either.
    assert_eq!(store.message_count(&texts[0].0).await.expect("count"), 0);
    assert_eq!(store.message_text(&texts[0].0).await.expect("text"), None);

    // Messages of two buckets never reach Redis.
    let other = (0u32..)
        .map(|i| format!("other {i}"))
        .find(|t| MessageHash::of(t.as_bytes()).bucket() != texts[0].0.bucket())
        .expect("another bucket");
    let other_hash = MessageHash::of(other.as_bytes());
    let mixed = [
        messages[0],
        MessageSightings {
            hash: &other_hash,
            text: &other,
            sightings: &good,
        },
    ];
    assert!(store.apply_messages(&mixed).await.is_err());
    assert_eq!(store.message_count(&texts[0].0).await.expect("count"), 0);
}

#[tokio::test]
async fn a_message_seen_by_more_clients_than_one_command_holds_counts_each_once() {
    // More marks than the script reads or writes in one HMGET / HSET.
    let store = store().await;
    let text = unique("crowded");
    let hash = MessageHash::of(text.as_bytes());
    let clients: Vec<String> = (0..1_500).map(|i| format!("crowd-{i}")).collect();
    let sightings: Vec<(&str, u64)> = clients.iter().map(|c| (c.as_str(), 1)).collect();
    assert_eq!(apply_one(&store, &hash, &text, &sightings).await, 1_500);
    assert_eq!(apply_one(&store, &hash, &text, &sightings).await, 0);
    assert_eq!(store.message_count(&hash).await.expect("count"), 1_500);
    assert_eq!(
        store.message_seen(&hash, "crowd-1499").await.expect("seen"),
        1
    );
}
