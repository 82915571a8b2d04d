//! The line protocol: framing with bounded memory, the rules for a message line,
//! and the replies. The producer reads with it; the `tally` client checks its lines
//! with the same rules before sending.
//!
//! Invariants: memory per connection is bounded by the maximum line length plus one
//! read chunk, whatever the client sends: a line that outgrows the maximum is
//! reported once and its remaining bytes are discarded as they arrive. And a
//! client that sends only lines [`message_line`] accepts can number its own
//! messages: each one gets the next sn, because the producer stores every such line
//! and nothing else.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::keys::{ClientId, ClientIdError};

/// Bytes requested from the socket by the first read, and after a read that did
/// not fill what it asked for.
const MIN_READ: usize = 2 * 1024;
/// Most bytes requested from the socket per read: a sender that keeps filling
/// every read doubles the request up to this.
const MAX_READ: usize = 64 * 1024;

/// One thing a client said.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `HELLO <client-id> [<token>]`.
    Hello {
        /// The client id.
        id: ClientId,
        /// Its token (`common::auth`), if one was given.
        token: Option<String>,
    },
    /// A message line.
    Message(String),
    /// A line that gets an `ERR` and is not stored.
    Invalid(ProtocolError),
}

/// Why a line was rejected; each maps to an `ERR <code> <detail>` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Over the configured maximum.
    #[error("too_long line exceeds {max} bytes")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// Not UTF-8.
    #[error("invalid_utf8 line is not valid UTF-8 (byte {valid_up_to})")]
    InvalidUtf8 {
        /// Offset of the first bad byte.
        valid_up_to: usize,
    },
    /// A malformed HELLO.
    #[error("bad_hello {0}")]
    BadHelloId(#[from] ClientIdError),
    /// HELLO once the connection already has an identity.
    #[error("bad_hello HELLO must be the first line")]
    HelloTooLate,
    /// A HELLO whose second word is not a token.
    #[error("bad_hello expected HELLO <id> or HELLO <id> <token>, a token being {TOKEN_LEN} lowercase hex digits")]
    BadToken,
}

/// Splits a byte stream into lines: `\n` ends a line, a trailing `\r` is dropped,
/// empty lines are skipped.
///
/// The buffer grows with the sender's pace (reads of [`MIN_READ`] doubling to
/// [`MAX_READ`] while each read fills what it asked for) and can be given back
/// whenever everything read was consumed ([`LineReader::release_if_empty`]): ten
/// thousand idle connections must not each hold a burst-sized buffer.
pub struct LineReader {
    buf: BytesMut,
    max_line: usize,
    /// Bytes the next read asks for.
    next_read: usize,
    /// Inside an over-long line: drop bytes up to the next `\n`.
    discarding: bool,
    eof: bool,
}

/// What [`LineReader::next_line`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its ending.
    Text(Vec<u8>),
    /// A line longer than the maximum (reported once per line).
    TooLong,
}

impl LineReader {
    /// A reader for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_line,
            next_read: MIN_READ,
            discarding: false,
            eof: false,
        }
    }

    /// Whether the peer closed its sending side and everything was consumed.
    pub fn is_done(&self) -> bool {
        self.eof && self.buf.is_empty()
    }

    /// Whether the peer closed its sending side.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Whether everything read so far was consumed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Frees the buffer if it holds nothing (the next read allocates again), so a
    /// connection waiting for its next line holds no read buffer.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Reads more bytes; returns false at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<bool> {
        self.buf.reserve(self.next_read);
        let asked = self.buf.capacity() - self.buf.len();
        let n = reader.read_buf(&mut self.buf).await?;
        self.next_read = if n >= asked {
            (self.next_read * 2).min(MAX_READ)
        } else {
            MIN_READ
        };
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// The next complete line in the buffer, if any. At end of stream a final line
    /// without `\n` counts as complete.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let newline = self.buf.iter().position(|&b| b == b'\n');
            if self.discarding {
                match newline {
                    Some(i) => {
                        self.buf.advance(i + 1);
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            let end = match newline {
                Some(i) => i,
                // Allow one byte for a `\r` that may precede the `\n`.
                None if self.buf.len() > self.max_line + 1 => {
                    self.buf.clear();
                    self.discarding = !self.eof;
                    return Some(Line::TooLong);
                }
                None if self.eof && !self.buf.is_empty() => self.buf.len(),
                None => return None,
            };
            let mut line = self.buf[..end].to_vec();
            self.buf.advance(end + usize::from(newline.is_some()));
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max_line {
                return Some(Line::TooLong);
            }
            return Some(Line::Text(line));
        }
    }
}

/// Characters of a client token (`common::auth`: hex of an HMAC-SHA256).
pub const TOKEN_LEN: usize = 64;

fn is_token(text: &str) -> bool {
    text.len() == TOKEN_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Interprets a line. `hello_allowed` is true until the connection has an identity.
pub fn parse(line: Line, max_line: usize, hello_allowed: bool) -> Request {
    let bytes = match line {
        Line::TooLong => return Request::Invalid(ProtocolError::TooLong { max: max_line }),
        Line::Text(bytes) => bytes,
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Request::Invalid(ProtocolError::InvalidUtf8 {
                valid_up_to: e.utf8_error().valid_up_to(),
            })
        }
    };
    if text == "HELLO" || text.starts_with("HELLO ") {
        if !hello_allowed {
            return Request::Invalid(ProtocolError::HelloTooLate);
        }
        let rest = text["HELLO".len()..].trim_start_matches(' ');
        let (id, token) = match rest.split_once(' ') {
            Some((id, token)) if is_token(token) => (id, Some(token.to_owned())),
            Some(_) => return Request::Invalid(ProtocolError::BadToken),
            None => (rest, None),
        };
        return match ClientId::parse(id) {
            Ok(id) => Request::Hello { id, token },
            Err(e) => Request::Invalid(e.into()),
        };
    }
    Request::Message(text)
}

/// How the producer treats `raw` (one line without its `\n`) sent after the
/// connection has an identity: `Ok(Some(text))` is stored as the next message,
/// `Ok(None)` is ignored (empty), `Err` is rejected with that `ERR`.
pub fn message_line(raw: &[u8], max_line: usize) -> Result<Option<&str>, ProtocolError> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > max_line {
        return Err(ProtocolError::TooLong { max: max_line });
    }
    let text = std::str::from_utf8(raw).map_err(|e| ProtocolError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if text == "HELLO" || text.starts_with("HELLO ") {
        return Err(ProtocolError::HelloTooLate);
    }
    Ok(Some(text))
}

/// `WELCOME <id> <last_sn>`.
pub fn welcome(id: &ClientId, last_sn: u64) -> String {
    format!("WELCOME {id} {last_sn}\n")
}

/// `ACK <sn>`.
pub fn ack(sn: u64) -> String {
    format!("ACK {sn}\n")
}

/// `ERR <code> <detail>`.
pub fn err(error: &ProtocolError) -> String {
    format!("ERR {error}\n")
}

/// `ERR unavailable <detail>`: outcome unknown; the connection closes.
pub fn unavailable(detail: &str) -> String {
    format!("ERR unavailable {}\n", single_line(detail))
}

/// The code of `ERR too_many_connections`: the peer's address holds the most
/// connections `producer.max_connections_per_address` allows.
pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
/// The code of `ERR first_line_timeout`: no complete line within
/// `producer.first_line_timeout_ms` of connecting.
pub const FIRST_LINE_TIMEOUT: &str = "first_line_timeout";

/// The code of `ERR unauthorized`: `producer.auth` refused the client (no HELLO,
/// or no valid token for its id).
pub const UNAUTHORIZED: &str = "unauthorized";

/// The code of `ERR too_many_auth_failures`: the source address made
/// `producer.max_auth_failures_per_minute` failed authentications in the current
/// minute; its connections are refused until that minute ends.
pub const TOO_MANY_AUTH_FAILURES: &str = "too_many_auth_failures";

/// The reason a connection whose TLS handshake failed or did not finish within
/// `producer.first_line_timeout_ms` is counted under in
/// `tally_producer_refused_connections_total`. Never sent: without a completed
/// handshake there is no channel to send an `ERR` on; the connection just closes.
pub const TLS_HANDSHAKE: &str = "tls_handshake";

/// Whether a reply is a refusal (an abuse limit or `producer.auth`): the
/// connection was closed and nothing of it claimed or stored.
pub fn is_refusal(reply: &str) -> bool {
    [
        TOO_MANY_CONNECTIONS,
        FIRST_LINE_TIMEOUT,
        UNAUTHORIZED,
        TOO_MANY_AUTH_FAILURES,
    ]
    .iter()
    .any(|code| {
        reply
            .strip_prefix("ERR ")
            .is_some_and(|r| r.starts_with(code))
    })
}

/// `ERR <code> <detail>` for a connection an abuse limit refuses
/// ([`TOO_MANY_CONNECTIONS`], [`FIRST_LINE_TIMEOUT`]): nothing of it was stored; the
/// connection closes.
pub fn refused(code: &str, detail: &str) -> String {
    format!("ERR {code} {}\n", single_line(detail))
}

/// `ERR superseded <detail>`: the id connected again; this connection closes.
pub fn superseded(detail: &str) -> String {
    format!("ERR superseded {}\n", single_line(detail))
}

fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_line_agrees_with_the_reader_and_parser() {
        let max = 8;
        for raw in [
            &b"hi"[..],
            b"hi\r",
            b"",
            b"\r",
            b"12345678",
            b"123456789",
            b"\xff\xfe",
            b"HELLO x",
            b"HELLO",
            b"HELLOx",
        ] {
            let mut reader = LineReader::new(max);
            reader.buf.extend_from_slice(raw);
            reader.buf.extend_from_slice(b"\n");
            let served = reader.next_line().map(|line| parse(line, max, false));
            let expected = match message_line(raw, max) {
                Ok(Some(text)) => Some(Request::Message(text.to_string())),
                Ok(None) => None,
                Err(e) => Some(Request::Invalid(e)),
            };
            assert_eq!(served, expected, "line {raw:?}");
        }
    }

    fn lines(input: &[&[u8]], max: usize) -> Vec<Line> {
        let mut r = LineReader::new(max);
        let mut out = Vec::new();
        for chunk in input {
            r.buf.extend_from_slice(chunk);
            while let Some(l) = r.next_line() {
                out.push(l);
            }
        }
        r.eof = true;
        while let Some(l) = r.next_line() {
            out.push(l);
        }
        out
    }

    fn text(s: &str) -> Line {
        Line::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines_drops_cr_and_skips_empty() {
        assert_eq!(
            lines(&[b"a\r\n\nb", b"c\n\r\n", b"last"], 10),
            vec![text("a"), text("bc"), text("last")]
        );
    }

    #[test]
    fn over_long_line_is_reported_once_and_discarded_across_reads() {
        let long = vec![b'x'; 25];
        assert_eq!(
            lines(&[&long, &long, b"tail\nok\n"], 10),
            vec![Line::TooLong, text("ok")]
        );
        // Exactly the maximum is fine, with or without \r.
        assert_eq!(
            lines(&[b"0123456789\r\n0123456789\n"], 10),
            vec![text("0123456789"), text("0123456789")]
        );
        assert_eq!(lines(&[b"0123456789A\n"], 10), vec![Line::TooLong]);
    }

    #[tokio::test]
    async fn reads_grow_with_the_sender_and_an_emptied_buffer_is_released() {
        let input: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let mut r = LineReader::new(100);
        assert_eq!(r.buf.capacity(), 0, "nothing allocated before a read");
        let mut source = &input[..];
        let (mut got, mut largest) = (0, 0);
        while r.fill(&mut source).await.unwrap_or(false) {
            largest = largest.max(r.next_read);
            while let Some(line) = r.next_line() {
                assert_eq!(line, text(&format!("line {got}")));
                got += 1;
            }
        }
        assert_eq!(got, 20_000);
        assert_eq!(largest, MAX_READ, "a sender filling every read doubles it");
        r.release_if_empty();
        assert_eq!(r.buf.capacity(), 0);
        // A partial line is kept.
        let mut r = LineReader::new(100);
        r.fill(&mut &b"part"[..]).await.unwrap_or(false);
        r.release_if_empty();
        assert!(!r.is_empty());
        assert_eq!(
            r.next_read, MIN_READ,
            "a read that did not fill resets the size"
        );
    }

    #[test]
    fn refusals_are_told_from_other_errors() {
        assert!(is_refusal(&refused(TOO_MANY_CONNECTIONS, "x")));
        assert!(is_refusal(&refused(FIRST_LINE_TIMEOUT, "x")));
        assert!(is_refusal(&refused(TOO_MANY_AUTH_FAILURES, "x")));
        assert!(!is_refusal(&unavailable("x")));
        assert!(!is_refusal(&err(&ProtocolError::HelloTooLate)));
        assert!(!is_refusal("first_line_timeout without ERR"));
    }

    #[test]
    fn buffer_stays_bounded_while_discarding() {
        let mut r = LineReader::new(100);
        for _ in 0..1000 {
            r.buf.extend_from_slice(&[b'y'; 1000]);
            while r.next_line().is_some() {}
            assert!(r.buf.len() <= 1000);
        }
    }

    #[test]
    fn hello_rules() {
        let hello = |s: &str, allowed| parse(text(s), 64, allowed);
        let id = || ClientId::parse("client-7").expect("id");
        assert_eq!(
            hello("HELLO client-7", true),
            Request::Hello {
                id: id(),
                token: None
            }
        );
        let token = "0123456789abcdef".repeat(4);
        assert_eq!(
            parse(text(&format!("HELLO client-7 {token}")), 128, true),
            Request::Hello {
                id: id(),
                token: Some(token.clone())
            }
        );
        assert_eq!(
            hello("HELLO bad id", true),
            Request::Invalid(ProtocolError::BadToken)
        );
        assert_eq!(
            parse(text(&format!("HELLO client-7 {token} x")), 128, true),
            Request::Invalid(ProtocolError::BadToken)
        );
        assert!(matches!(
            hello("HELLO bad:id/x", true),
            Request::Invalid(ProtocolError::BadHelloId(_))
        ));
        assert!(matches!(
            hello("HELLO", true),
            Request::Invalid(ProtocolError::BadHelloId(ClientIdError::Empty))
        ));
        assert_eq!(
            hello("HELLO client-7", false),
            Request::Invalid(ProtocolError::HelloTooLate)
        );
        assert_eq!(
            hello("HELLOworld", true),
            Request::Message("HELLOworld".into())
        );
        assert_eq!(
            parse(Line::Text(vec![0xff, b'a']), 64, true),
            Request::Invalid(ProtocolError::InvalidUtf8 { valid_up_to: 0 })
        );
    }

    #[test]
    fn replies_are_single_lines() {
        assert_eq!(
            err(&ProtocolError::TooLong { max: 5 }),
            "ERR too_long line exceeds 5 bytes\n"
        );
        assert_eq!(
            err(&ProtocolError::HelloTooLate),
            "ERR bad_hello HELLO must be the first line\n"
        );
        assert_eq!(unavailable("a\nb"), "ERR unavailable a b\n");
    }
}
