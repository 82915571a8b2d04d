//! A raw client of the producer's line protocol: bytes written as given, replies
//! read as lines, from any loopback source address. The tests of the protocol and
//! of hostile input speak through it, so each reply is seen exactly as sent.
//!
//! Invariant: a reader never waits longer than [`REPLY_TIMEOUT`] for a reply: a
//! producer that stops answering fails the test instead of hanging it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Longest wait for one reply line.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One plain-TCP connection to a producer.
pub struct Raw {
    /// The replies, line by line.
    pub lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    /// The sending half.
    pub writer: OwnedWriteHalf,
    /// This end's `ip:port` (the client id of a connection without HELLO).
    pub local: String,
}

impl Raw {
    /// Connects from 127.0.0.1 (or whatever the kernel picks).
    pub async fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::over(stream)
    }

    /// Connects from another loopback address than 127.0.0.1 (Linux routes all of
    /// 127.0.0.0/8 to the loopback interface).
    pub async fn connect_from(source: &str, addr: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("source address"))
            .expect("bind source");
        let stream = socket
            .connect(addr.parse().expect("producer address"))
            .await
            .expect("connect");
        Self::over(stream)
    }

    fn over(stream: TcpStream) -> Self {
        let local = stream.local_addr().expect("local addr").to_string();
        let (r, w) = stream.into_split();
        Self {
            lines: BufReader::new(r).lines(),
            writer: w,
            local,
        }
    }

    /// Writes `bytes`; panics if the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Writes `bytes`, reporting a closed or reset connection instead of panicking
    /// (a producer may close a connection it refused while bytes still arrive).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// The next reply line; panics when none comes within [`REPLY_TIMEOUT`].
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(REPLY_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("expected a reply line, got {other:?}"),
        }
    }

    /// Reads replies until `ACK <sn>`, returning the lines before it.
    pub async fn until_ack(&mut self, sn: u64) -> Vec<String> {
        let mut other = Vec::new();
        loop {
            let line = self.line().await;
            if line == format!("ACK {sn}") {
                return other;
            }
            other.push(line);
        }
    }

    /// Reads replies until `ACK <sn>`, returning the lines other than ACKs before
    /// it; the earlier ACKs must be cumulative. Replies are in line order, so a
    /// rejected line ends a batch and the lines before it get their ACK first.
    pub async fn errors_until_ack(&mut self, sn: u64) -> Vec<String> {
        let mut errors = Vec::new();
        let mut previous = 0;
        for line in self.until_ack(sn).await {
            match line
                .strip_prefix("ACK ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) => {
                    assert!(n > previous && n < sn, "ACK {n} after {previous}");
                    previous = n;
                }
                None => errors.push(line),
            }
        }
        errors
    }

    /// Panics unless the producer closes the connection (end of stream or reset)
    /// within [`REPLY_TIMEOUT`], with no further reply.
    pub async fn expect_closed(&mut self) {
        match tokio::time::timeout(REPLY_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(None)) | Ok(Err(_)) => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}
