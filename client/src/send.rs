//! `tally send`: lines from standard input to the producer.
//!
//! Invariant: only lines the producer will store are sent (checked with the
//! producer's own rules), so the session can number them; a line the producer
//! would reject is reported on stderr with its line number and skipped, never
//! silently dropped, and the command then exits non-zero.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tally_common::protocol::message_line;
use tokio::sync::mpsc;

use crate::session::{Line, LineSource};

/// Lines read ahead of the session.
const READ_AHEAD: usize = 1024;

/// A line of the input the producer would reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// Lines of standard input (or any reader), checked, read on a thread of their own.
pub struct InputSource {
    lines: mpsc::Receiver<Line>,
}

/// What the input reader found besides lines.
#[derive(Debug, Default)]
pub struct InputReport {
    /// Lines read (all, including empty and rejected ones).
    pub read: AtomicU64,
    /// Rejected lines (the first 100).
    pub rejected: Mutex<Vec<Rejected>>,
    /// Rejected lines, all.
    pub rejected_count: AtomicU64,
    /// A read error that ended the input early.
    pub error: Mutex<Option<String>>,
}

impl InputSource {
    /// Reads `input` on a thread; `on_reject` is told about every rejected line as
    /// it is found.
    pub fn spawn<R, F>(input: R, max_line: usize, on_reject: F) -> (Self, Arc<InputReport>)
    where
        R: BufRead + Send + 'static,
        F: Fn(&Rejected) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let report = Arc::new(InputReport::default());
        let shared = report.clone();
        std::thread::spawn(move || read_lines(input, max_line, &tx, &shared, on_reject));
        (Self { lines: rx }, report)
    }
}

fn read_lines<R: BufRead>(
    mut input: R,
    max_line: usize,
    tx: &mpsc::Sender<Line>,
    report: &InputReport,
    on_reject: impl Fn(&Rejected),
) {
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                *report.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                return;
            }
        }
        let number = report.read.fetch_add(1, Ordering::Relaxed) + 1;
        let body = raw.strip_suffix(b"\n").unwrap_or(&raw);
        match message_line(body, max_line) {
            Ok(Some(text)) => {
                if tx.blocking_send(Line::from(text)).is_err() {
                    return; // the session ended
                }
            }
            Ok(None) => {}
            Err(reason) => {
                let rejected = Rejected {
                    line: number,
                    reason: reason.to_string(),
                };
                on_reject(&rejected);
                report.rejected_count.fetch_add(1, Ordering::Relaxed);
                let mut list = report
                    .rejected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if list.len() < 100 {
                    list.push(rejected);
                }
            }
        }
    }
}

impl LineSource for InputSource {
    fn next_line(&mut self) -> impl std::future::Future<Output = Option<Line>> + Send {
        // `recv` is cancel-safe: a line is only taken when it completes.
        self.lines.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn input_is_checked_with_the_producer_rules() {
        let input = std::io::Cursor::new(b"one\r\n\nHELLO x\ntwo\n\xff\nthree".to_vec());
        let (mut source, report) = InputSource::spawn(input, 16, |_| {});
        let mut got = Vec::new();
        while let Some(line) = source.next_line().await {
            got.push(line.to_string());
        }
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(report.read.load(Ordering::Relaxed), 6);
        let rejected = report.rejected.lock().expect("lock").clone();
        assert_eq!(
            rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert!(rejected[0].reason.starts_with("bad_hello"), "{rejected:?}");
    }
}
