//! A resuming client session: says HELLO, sends from `last_sn + 1`, reads
//! cumulative ACKs, and on `ERR unavailable`, `ERR superseded` or a lost connection
//! reconnects (rotating over the given producer addresses) and resumes, so every
//! message is stored exactly once.
//!
//! Invariant: message `i` of the list (1-based) is always sent as sn `i`: after a
//! reconnect, the producer's `WELCOME <id> <last_sn>` says where to resume, and the
//! list is the single source of the texts.

use std::time::{Duration, Instant};

use tally_common::ClientId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// Why a session gave up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The deadline passed before every message was ACKed.
    #[error("deadline passed with {acked} of {total} messages ACKed (last error: {last_error})")]
    Deadline {
        /// ACKed so far.
        acked: u64,
        /// Messages to send.
        total: u64,
        /// What went wrong last.
        last_error: String,
    },
    /// The producer answered something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a completed session saw.
#[derive(Debug, Default, Clone)]
pub struct SessionReport {
    /// Highest ACKed sn (= number of messages).
    pub acked: u64,
    /// Connections opened after the first.
    pub reconnects: u32,
    /// `ERR …` lines received that closed a connection.
    pub errors: Vec<String>,
    /// Connections abandoned because no ACK came for [`STALL_TIMEOUT`] while
    /// messages were outstanding (a healthy producer never causes one).
    pub stalls: u32,
}

/// How long a connection may go without an ACK while messages are outstanding
/// before the session gives up on it and reconnects.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

enum Attempt {
    Done,
    Retry(String),
}

/// Sends `messages` as client `id` until all are ACKed or `deadline` passes.
pub async fn send_all(
    addrs: &[String],
    id: &ClientId,
    messages: &[String],
    deadline: Instant,
) -> Result<SessionReport, SessionError> {
    let total = messages.len() as u64;
    let mut report = SessionReport::default();
    let mut last_error = String::from("none");
    let mut backoff = Duration::from_millis(50);
    for attempt in 0usize.. {
        if Instant::now() >= deadline {
            return Err(SessionError::Deadline {
                acked: report.acked,
                total,
                last_error,
            });
        }
        if attempt > 0 {
            report.reconnects += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        let addr = &addrs[attempt % addrs.len().max(1)];
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, attempt_once(addr, id, messages, &mut report)).await {
            Ok(Ok(Attempt::Done)) => return Ok(report),
            Ok(Ok(Attempt::Retry(why))) => last_error = why,
            Ok(Err(e)) => return Err(e),
            Err(_) => last_error = "deadline".into(),
        }
    }
    unreachable!("the loop only ends by returning")
}

async fn attempt_once(
    addr: &str,
    id: &ClientId,
    messages: &[String],
    report: &mut SessionReport,
) -> Result<Attempt, SessionError> {
    let total = messages.len() as u64;
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Ok(Attempt::Retry(format!("connect {addr}: {e}"))),
    };
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut lines = BufReader::new(read_half).lines();
    let mut writer = BufWriter::new(write_half);
    if let Err(e) = async {
        writer.write_all(format!("HELLO {id}\n").as_bytes()).await?;
        writer.flush().await
    }
    .await
    {
        return Ok(Attempt::Retry(format!("send HELLO: {e}")));
    }
    let welcome = match tokio::time::timeout(STALL_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(Attempt::Retry("closed before WELCOME".into())),
        Ok(Err(e)) => return Ok(Attempt::Retry(format!("read WELCOME: {e}"))),
        Err(_) => {
            report.stalls += 1;
            return Ok(Attempt::Retry(format!(
                "no WELCOME from {addr} for {STALL_TIMEOUT:?}"
            )));
        }
    };
    if welcome.starts_with("ERR unavailable") || welcome.starts_with("ERR superseded") {
        report.errors.push(welcome.clone());
        return Ok(Attempt::Retry(welcome));
    }
    let last_sn = parse_welcome(&welcome, id)?;
    if last_sn > total {
        return Err(SessionError::Protocol(format!(
            "producer has {last_sn} messages stored for {id}, more than the {total} sent"
        )));
    }
    report.acked = report.acked.max(last_sn);
    if last_sn == total {
        return Ok(Attempt::Done);
    }

    let to_send = &messages[last_sn as usize..];
    let send = async {
        for m in to_send {
            writer.write_all(m.as_bytes()).await?;
            writer.write_all(b"\n").await?;
        }
        writer.flush().await?;
        // Keep the connection open for reading; half-close is fine for the producer
        // but a full send keeps this symmetric with interactive use.
        std::future::pending::<std::io::Result<()>>().await
    };
    let receive = async {
        loop {
            let next = match tokio::time::timeout(STALL_TIMEOUT, lines.next_line()).await {
                Ok(next) => next,
                Err(_) => {
                    report.stalls += 1;
                    return Ok(Attempt::Retry(format!(
                        "no reply from {addr} for {STALL_TIMEOUT:?} at ACK {}",
                        report.acked
                    )));
                }
            };
            match next {
                Ok(Some(line)) => {
                    if let Some(sn) = line.strip_prefix("ACK ") {
                        let sn: u64 = sn.trim().parse().map_err(|_| {
                            SessionError::Protocol(format!("bad ACK line {line:?}"))
                        })?;
                        if sn > total || sn < report.acked {
                            return Err(SessionError::Protocol(format!(
                                "ACK {sn} out of range (acked {}, total {total})",
                                report.acked
                            )));
                        }
                        report.acked = sn;
                        if sn == total {
                            return Ok(Attempt::Done);
                        }
                    } else if line.starts_with("ERR unavailable")
                        || line.starts_with("ERR superseded")
                    {
                        report.errors.push(line.clone());
                        return Ok(Attempt::Retry(line));
                    } else {
                        return Err(SessionError::Protocol(format!("unexpected reply {line:?}")));
                    }
                }
                Ok(None) => return Ok(Attempt::Retry("connection closed".into())),
                Err(e) => return Ok(Attempt::Retry(format!("read: {e}"))),
            }
        }
    };
    tokio::select! {
        result = receive => result,
        sent = send => Ok(Attempt::Retry(match sent { Err(e) => format!("write: {e}"), Ok(()) => "writer stopped".into() })),
    }
}

fn parse_welcome(line: &str, id: &ClientId) -> Result<u64, SessionError> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("WELCOME"), Some(got), Some(sn), None) if got == id.as_str() => sn
            .parse()
            .map_err(|_| SessionError::Protocol(format!("bad WELCOME {line:?}"))),
        _ => Err(SessionError::Protocol(format!(
            "expected WELCOME {id} <sn>, got {line:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_is_checked() {
        let id = ClientId::parse("c-1").expect("id");
        assert_eq!(parse_welcome("WELCOME c-1 42", &id).expect("ok"), 42);
        assert!(parse_welcome("WELCOME c-2 42", &id).is_err());
        assert!(parse_welcome("WELCOME c-1 x", &id).is_err());
        assert!(parse_welcome("ERR unavailable x", &id).is_err());
    }
}
