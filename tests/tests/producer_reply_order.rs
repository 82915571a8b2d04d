//! The producer answers pipelined lines in line order: the `ACK` of the messages
//! before a rejected line comes before that line's `ERR`, so a client can tell
//! which line an `ERR` refers to (docs/architecture.md, wire protocol).

use std::time::Duration;

use tally_tests::{isolated_settings, InProcessProducer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_follows_the_ack_of_the_lines_before_it() {
    let settings = isolated_settings("it-reply-order", 3).await;
    let producer = InProcessProducer::start(settings.clone()).await;
    let stream = TcpStream::connect(&producer.addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // One write, so the three lines arrive together and could share one batch.
    write
        .write_all(b"HELLO reply-order\nfirst\n\xff bad\nsecond\nthird\n")
        .await
        .expect("write");
    let mut replies = Vec::new();
    while replies.last().is_none_or(|l: &String| l != "ACK 3") {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no reply after {replies:?}"))
            .expect("read")
            .unwrap_or_else(|| panic!("closed after {replies:?}"));
        replies.push(line);
    }
    let codes: Vec<&str> = replies
        .iter()
        .map(|l| l.split(' ').take(2).last().unwrap_or(""))
        .collect();
    assert_eq!(replies[0], "WELCOME reply-order 0", "{replies:?}");
    assert_eq!(replies[1], "ACK 1", "{replies:?}");
    assert_eq!(codes[2], "invalid_utf8", "{replies:?}");
    assert!(
        replies[3..].iter().all(|l| l.starts_with("ACK ")),
        "{replies:?}"
    );
    drop(write);
    producer.shutdown().await.expect("clean shutdown");
}
