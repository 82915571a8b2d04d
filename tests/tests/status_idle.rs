//! `tally status` of an idle, fully counted pipeline shows nothing pending: no
//! consumer lag (the commit markers after the last transactions are not records),
//! and a client that disconnected and was flushed is known but owned by nobody —
//! the producer released it and took it off its ownership set.

use std::time::{Duration, Instant};

use tally_client::inspect::Inspector;
use tally_common::keys::ClientId;
use tally_tests::pipeline::{isolated, start_aggregator, start_counter, wait_done};
use tally_tests::{stash_store, unique, InProcessProducer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipeline_shows_no_lag_and_released_clients_are_not_owned() {
    let mut settings = isolated("it-status-idle", 3).await;
    let instance = unique("p-idle");
    settings.producer.instance_id = Some(instance.clone());
    let producer = InProcessProducer::start(settings.clone()).await;
    let counter = start_counter(&settings, "c1", &[]);
    let aggregator = start_aggregator(&settings, &[]);

    let ids = ["idle-a", "idle-b", "idle-c"];
    for id in ids {
        let stream = TcpStream::connect(&producer.addr).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(format!("HELLO {id}\none {id}\ntwo {id}\n").as_bytes())
            .await
            .expect("write");
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("reply in time")
                .expect("read")
                .expect("open");
            if line == "ACK 2" {
                break;
            }
        }
    }
    // The producer lets go of each drained, disconnected client.
    let store = stash_store(&settings).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned = store.owned(&instance).await.expect("ownership set");
        let mut owners = Vec::new();
        for id in ids {
            let meta = store
                .meta(&ClientId::parse(id).expect("id"))
                .await
                .expect("meta");
            owners.push(meta.owner);
        }
        if owned.is_empty() && owners.iter().all(String::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not released: set {owned:?}, owners {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Only now is every record in Kafka (a client is released once its stash is
    // flushed), so the counter's and aggregator's targets below are the final
    // ones; waiting before the release raced the flusher and read the counts of
    // records that were not yet counted.
    let (s, c, a) = (settings.clone(), &counter, &aggregator);
    tokio::task::block_in_place(|| wait_done(&s, Duration::from_secs(90), &[c, a]));

    let status = Inspector::connect(&settings)
        .await
        .expect("inspector")
        .status()
        .await
        .expect("status");
    for group in &status.groups {
        assert_eq!(group.lag, 0, "{group:?}");
    }
    assert_eq!(
        (
            status.clients,
            status.owned_clients,
            status.clients_with_backlog
        ),
        (3, 0, 0),
        "{status:?}"
    );
    assert_eq!(
        (status.stash_backlog, status.uncounted),
        (0, 0),
        "{status:?}"
    );
    let me = status
        .producers
        .iter()
        .find(|p| p.instance == instance)
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!((me.clients, me.owned), (0, 0), "{status:?}");
    producer.shutdown().await.expect("clean shutdown");
}
