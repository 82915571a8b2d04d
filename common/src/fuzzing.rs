//! What the fuzz targets (`fuzz/`) check, one function per parser of untrusted
//! input, shared with the corpus replay that runs as an ordinary test.
//!
//! Invariant: for any input, each parser either accepts it or rejects it with an
//! error — it never panics, never loops, and never holds more memory than its
//! bound — and what it accepts satisfies the rules its readers rely on (a line
//! holds no newline and fits the maximum; a record re-encodes to one that parses
//! to the same value). Compiled only for tests and with the `fuzzing` feature:
//! release builds do not carry it.

use std::path::Path;

use crate::protocol::{self, Line, LineReader, Request};
use crate::records::{ClientMessage, MessageAggregation, PackedWriter};
use crate::settings::Settings;
use crate::MessageHash;

/// Longest line the line-protocol check allows (small, so the fuzzer reaches it).
const MAX_LINE: usize = 64;

/// The producer's framing and parsing of client bytes: split `data` into reads at
/// the positions its first byte picks, as a socket might deliver them.
pub fn line_protocol(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut reader = LineReader::new(MAX_LINE);
    let chunk = usize::from(split).max(1);
    let mut hello_allowed = true;
    let runtime = tokio::runtime::Builder::new_current_thread().build();
    let Ok(runtime) = runtime else {
        return;
    };
    runtime.block_on(async {
        for piece in rest.chunks(chunk) {
            let mut source = piece;
            while reader.fill(&mut source).await.unwrap_or(false) {}
            drain(&mut reader, &mut hello_allowed);
        }
        // End of stream: a final partial line counts.
        let mut empty: &[u8] = &[];
        let _ = reader.fill(&mut empty).await;
        drain(&mut reader, &mut hello_allowed);
        assert!(reader.is_done() || !reader.at_eof() || reader.is_empty());
    });
}

fn drain(reader: &mut LineReader, hello_allowed: &mut bool) {
    while let Some(line) = reader.next_line() {
        if let Line::Text(bytes) = &line {
            assert!(bytes.len() <= MAX_LINE, "a line over the maximum passed");
            assert!(!bytes.contains(&b'\n'), "a line holds a newline");
            assert!(!bytes.is_empty(), "an empty line passed");
        }
        match protocol::parse(line, MAX_LINE, *hello_allowed) {
            Request::Hello { id, token } => {
                assert!(*hello_allowed);
                assert!(crate::ClientId::parse(id.as_str()).is_ok());
                assert!(token.is_none_or(|t| t.len() == protocol::TOKEN_LEN));
            }
            Request::Message(text) => {
                assert!(!text.is_empty() && text.len() <= MAX_LINE);
                assert!(!text.starts_with("HELLO "));
            }
            Request::Invalid(_) => {}
        }
        *hello_allowed = false;
    }
}

/// Splits `data` at its first `0xff` byte (absent: no key) into a record key and value.
fn key_value(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match data.iter().position(|&b| b == 0xff) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    }
}

/// A `client_message` record as the counter reads it.
pub fn client_message(data: &[u8]) {
    let (key, value) = key_value(data);
    if let Ok(record) = ClientMessage::parse(key, Some(value)) {
        let again = ClientMessage::parse(Some(record.key().as_bytes()), Some(&record.encode()));
        assert_eq!(
            again.ok(),
            Some(record),
            "an accepted record does not round-trip"
        );
    }
}

/// A `message_aggregation` record as the aggregator reads it: single or packed.
pub fn message_aggregation(data: &[u8]) {
    let (key, value) = key_value(data);
    if let Ok(record) = MessageAggregation::parse(key, Some(value)) {
        let again =
            MessageAggregation::parse(Some(record.key().as_bytes()), Some(&record.encode()));
        assert_eq!(
            again.ok(),
            Some(record),
            "an accepted record does not round-trip"
        );
    }
    if let Ok(sightings) = MessageAggregation::sightings(key, Some(value)) {
        assert!(!sightings.is_empty(), "an accepted record holds a sighting");
        let mut pack = PackedWriter::default();
        for s in &sightings {
            assert_eq!(
                s.hash,
                MessageHash::of(s.msg.as_bytes()),
                "a sighting under another hash"
            );
            pack.push(&s.client, s.sn, &s.msg);
        }
        let again = MessageAggregation::sightings(None, Some(&pack.finish()));
        assert_eq!(
            again.ok(),
            Some(sightings),
            "accepted sightings do not round-trip packed"
        );
    }
}

/// A configuration file's text: loads or reports its problems.
pub fn settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = Settings::from_toml(text) {
        // What loads validates: shown settings serialise.
        assert!(serde_json::to_string(&settings.redacted()).is_ok());
    }
}

/// Runs `check` over every file of `dir` (a fuzz target's corpus); returns how
/// many it read. A missing directory reads none.
pub fn replay(dir: &Path, check: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut read = 0;
    for entry in entries.flatten() {
        if let Ok(data) = std::fs::read(entry.path()) {
            check(&data);
            read += 1;
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        for (target, check) in [
            ("line_protocol", line_protocol as fn(&[u8])),
            ("client_message", client_message),
            ("message_aggregation", message_aggregation),
            ("settings", settings),
        ] {
            let read = replay(&corpus(target), check);
            assert!(
                read > 0,
                "no corpus for {target} in {}",
                corpus(target).display()
            );
        }
    }

    #[test]
    fn the_checks_accept_what_tally_writes() {
        let record = ClientMessage {
            client: "c-1".into(),
            sn: 1,
            msg: "hello".into(),
            ts: 1,
        };
        let mut data = record.key().as_bytes().to_vec();
        data.push(0xff);
        data.extend(record.encode());
        client_message(&data);
        line_protocol(b"\x03HELLO x\nline one\r\nline two");
    }
}
