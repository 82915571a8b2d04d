//! A mass-test run's manifest: what `tally mtc` sent and what `tally verify` must
//! therefore find in Redis.
//!
//! Invariant: the manifest is written before the first line is sent, with every
//! expectation fixed up front (client ids, per-client totals, and each distinct
//! line's count *before* the run as a baseline), so an interrupted run can still be
//! verified or resumed, and message counts shared with earlier runs of the same
//! text are checked as `baseline + expected`, not as absolute values.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_common::protocol::{message_line, ProtocolError};
use tally_common::MessageHash;

use crate::session::Line;

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// A manifest or workload could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path} is not a tally run manifest: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },
    /// Written by an incompatible version.
    #[error("{path} has manifest version {found}; this tally reads version {MANIFEST_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
    /// A line of an input file would be rejected by the producer.
    #[error("{path}:{line}: the producer would reject this line: {reason}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The producer's reason.
        reason: ProtocolError,
    },
    /// The input files hold no message at all.
    #[error("the input files hold no non-empty line")]
    Empty,
    /// No directory to keep manifests in could be determined.
    #[error("cannot tell where to keep run manifests: set TALLY_RUNS_DIR or HOME")]
    NoRunsDir,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// As given on the command line.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its messages (non-empty lines).
    pub messages: u64,
}

/// One distinct message text of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEntry {
    /// The message hash (as in `tally:m:{hash}:count`).
    pub hash: String,
    /// The text.
    pub text: String,
    /// How often one client sends it (occurrences in the files × repeat).
    pub per_client: u64,
    /// Its count before the run started.
    pub baseline: u64,
}

/// How the run went, added when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Every client had all its lines ACKed.
    pub complete: bool,
    /// Lines written to sockets, resends included.
    pub sent: u64,
    /// Lines ACKed.
    pub acked: u64,
    /// Wall time of the sending phase, ms.
    pub elapsed_ms: u64,
    /// ACKed lines per second.
    pub messages_per_s: f64,
    /// ACK latency percentiles, µs: p50, p90, p99, max.
    pub ack_latency_us: [u64; 4],
    /// Reconnections over all clients.
    pub reconnects: u64,
    /// `ERR unavailable` answers over all clients (each closed a connection; the
    /// client reconnected and resent what was not ACKed).
    #[serde(default)]
    pub err_unavailable: u64,
    /// The same answers by reason, the text after `ERR unavailable ` (a producer
    /// says why: `redis: timed out` is an outcome it could not know).
    #[serde(default)]
    pub unavailable_reasons: BTreeMap<String, u64>,
}

/// A mass-test run: inputs, clients and expectations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The run id (client ids are `mtc-<run_id>-<i>`).
    pub run_id: String,
    /// When the run was prepared, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Redis key prefix the counts live under.
    pub key_prefix: String,
    /// Producer addresses the clients were spread over.
    pub producer_addrs: Vec<String>,
    /// Input files.
    pub files: Vec<FileEntry>,
    /// Times every client replays the files.
    pub repeat: u64,
    /// Client ids, one per connection.
    pub clients: Vec<String>,
    /// Messages every client sends (its expected `count` and `last_sn`).
    pub per_client: u64,
    /// Every line salted with its client and sn ([`salted_line`]), so every
    /// text is sent once, by one client.
    #[serde(default)]
    pub distinct: bool,
    /// Every distinct message text.
    pub messages: Vec<MessageEntry>,
    /// Filled in when sending ended.
    pub result: Option<RunResult>,
}

impl Manifest {
    /// The client id of connection `index` of run `run_id`.
    pub fn client_id(run_id: &str, index: usize) -> String {
        format!("mtc-{run_id}-{index}")
    }

    /// Reads a manifest.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_slice(&text, path)
    }

    /// Parses a manifest's bytes (read from `path`, named in errors).
    pub fn from_slice(text: &[u8], path: &Path) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(text).map_err(|source| ManifestError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                path: path.to_owned(),
                found: manifest.version,
            });
        }
        Ok(manifest)
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Expected `count` of message `entry` after the run: every client sends it,
    /// or in a distinct run only the client its salt names.
    pub fn expected_message_count(&self, entry: &MessageEntry) -> u64 {
        let senders = if self.distinct {
            1
        } else {
            self.clients.len() as u64
        };
        entry.baseline + entry.per_client * senders
    }
}

/// Where manifests are kept: `$TALLY_RUNS_DIR`, else `$XDG_STATE_HOME/tally/runs`,
/// else `~/.local/state/tally/runs`.
pub fn runs_dir() -> Result<PathBuf, ManifestError> {
    if let Some(dir) = std::env::var_os("TALLY_RUNS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(state).join("tally/runs"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/tally/runs"))
        .ok_or(ManifestError::NoRunsDir)
}

/// The manifest `tally verify` reads when none is named: the newest run's.
pub fn latest_path() -> Result<PathBuf, ManifestError> {
    Ok(runs_dir()?.join("latest.json"))
}

/// Points `latest.json` in the manifest's directory at `path`.
pub fn mark_latest(path: &Path) -> Result<(), ManifestError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let latest = dir.join("latest.json");
    let io = |source| ManifestError::Io {
        path: latest.clone(),
        source,
    };
    let target = path.file_name().map(PathBuf::from).ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "manifest path has no file name",
        ))
    })?;
    if target == Path::new("latest.json") {
        return Ok(());
    }
    let tmp = dir.join(".latest.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io)?;
    std::fs::rename(&tmp, &latest).map_err(io)
}

/// The lines a run replays, checked with the producer's rules.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Every message of every file, in order.
    pub lines: Vec<Line>,
    /// The files.
    pub files: Vec<FileEntry>,
    /// Distinct texts with their number of occurrences, in first-seen order.
    pub distinct: Vec<(Line, u64)>,
}

impl Workload {
    /// Reads `paths`: every non-empty line is a message; a line the producer would
    /// reject (too long for `max_line`, not UTF-8, `HELLO …`) is an error.
    pub fn load(paths: &[PathBuf], max_line: usize) -> Result<Self, ManifestError> {
        let mut lines = Vec::new();
        let mut files = Vec::new();
        for path in paths {
            let bytes = std::fs::read(path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            let before = lines.len();
            for (number, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                match message_line(raw, max_line) {
                    Ok(Some(text)) => lines.push(Line::from(text)),
                    Ok(None) => {}
                    Err(reason) => {
                        return Err(ManifestError::BadLine {
                            path: path.clone(),
                            line: number + 1,
                            reason,
                        })
                    }
                }
            }
            files.push(FileEntry {
                path: path.display().to_string(),
                sha256: hex(&Sha256::digest(&bytes)),
                messages: (lines.len() - before) as u64,
            });
        }
        if lines.is_empty() {
            return Err(ManifestError::Empty);
        }
        let mut index: HashMap<Line, usize> = HashMap::new();
        let mut distinct: Vec<(Line, u64)> = Vec::new();
        for line in &lines {
            match index.get(line) {
                Some(&i) => distinct[i].1 += 1,
                None => {
                    index.insert(line.clone(), distinct.len());
                    distinct.push((line.clone(), 1));
                }
            }
        }
        Ok(Self {
            lines,
            files,
            distinct,
        })
    }

    /// The message entries for a run repeating the files `repeat` times, with
    /// baselines to be filled in.
    pub fn message_entries(&self, repeat: u64) -> Vec<MessageEntry> {
        self.distinct
            .iter()
            .map(|(text, occurrences)| MessageEntry {
                hash: MessageHash::of(text.as_bytes()).to_string(),
                text: text.to_string(),
                per_client: occurrences * repeat,
                baseline: 0,
            })
            .collect()
    }
}

/// The text client `client` sends as its message `sn` in a distinct run:
/// `<client>:<sn> <line>`. Client ids hold no `:` or space, so no two (client,
/// sn) pairs give the same text.
pub fn salted_line(client: &str, sn: u64, line: &str) -> String {
    format!("{client}:{sn} {line}")
}

/// The longest salt [`salted_line`] adds for `client` sending `per_client` lines.
pub fn salt_len(client: &str, per_client: u64) -> usize {
    client.len() + per_client.max(1).to_string().len() + 2
}

impl Workload {
    /// The message entries of a distinct run: one per (client, sn), each sent
    /// once, with baselines to be filled in.
    pub fn salted_entries(&self, clients: &[String], repeat: u64) -> Vec<MessageEntry> {
        let per_client = self.lines.len() as u64 * repeat;
        let mut entries = Vec::with_capacity(clients.len() * per_client as usize);
        for client in clients {
            for sn in 1..=per_client {
                let line = &self.lines[((sn - 1) % self.lines.len() as u64) as usize];
                let text = salted_line(client, sn, line);
                entries.push(MessageEntry {
                    hash: MessageHash::of(text.as_bytes()).to_string(),
                    text,
                    per_client: 1,
                    baseline: 0,
                });
            }
        }
        entries
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            run_id: "r1".into(),
            created_unix_ms: 1,
            key_prefix: "tally".into(),
            producer_addrs: vec!["127.0.0.1:7400".into()],
            files: vec![FileEntry {
                path: dir.join("f.txt").display().to_string(),
                sha256: "00".into(),
                messages: 3,
            }],
            repeat: 2,
            clients: vec![Manifest::client_id("r1", 0), Manifest::client_id("r1", 1)],
            per_client: 6,
            distinct: false,
            messages: vec![MessageEntry {
                hash: "ab".into(),
                text: "a line".into(),
                per_client: 4,
                baseline: 7,
            }],
            result: None,
        }
    }

    #[test]
    fn manifest_round_trips_and_latest_points_at_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = sample(dir.path());
        let path = dir.path().join("runs/r1.json");
        manifest.save(&path).expect("save");
        mark_latest(&path).expect("latest");
        let loaded = Manifest::load(&dir.path().join("runs/latest.json")).expect("load");
        assert_eq!(loaded, manifest);
        assert_eq!(
            loaded.expected_message_count(&loaded.messages[0]),
            7 + 4 * 2
        );
        assert_eq!(loaded.clients[1], "mtc-r1-1");
    }

    #[test]
    fn bad_manifests_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.json");
        std::fs::write(&path, b"{\"version\": 1}").expect("write");
        let err = Manifest::load(&path).expect_err("incomplete");
        assert!(
            err.to_string().contains("is not a tally run manifest"),
            "{err}"
        );
        let mut manifest = sample(dir.path());
        manifest.version = 99;
        manifest.save(&path).expect("save");
        let err = Manifest::load(&path).expect_err("version");
        assert!(err.to_string().contains("version 99"), "{err}");
        let err = Manifest::load(&dir.path().join("missing.json")).expect_err("missing");
        assert!(matches!(err, ManifestError::Io { .. }));
    }

    #[test]
    fn workload_counts_distinct_lines_and_rejects_what_the_producer_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.txt");
        std::fs::write(&a, b"one\r\n\ntwo\none\n").expect("write");
        let b = dir.path().join("b.txt");
        std::fs::write(&b, b"two\nthree").expect("write");
        let workload = Workload::load(&[a.clone(), b], 64).expect("load");
        assert_eq!(workload.lines.len(), 5);
        assert_eq!(workload.files[0].messages, 3);
        assert_eq!(workload.files[1].messages, 2);
        let counts: Vec<(&str, u64)> = workload.distinct.iter().map(|(t, n)| (&**t, *n)).collect();
        assert_eq!(counts, vec![("one", 2), ("two", 2), ("three", 1)]);
        let entries = workload.message_entries(3);
        assert_eq!(entries[0].per_client, 6);
        assert_eq!(entries[0].hash, MessageHash::of(b"one").to_string());

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"fine\nHELLO there\n").expect("write");
        let err = Workload::load(&[bad], 64).expect_err("HELLO line");
        assert!(err.to_string().contains("bad.txt:2"), "{err}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"\n\n").expect("write");
        assert!(matches!(
            Workload::load(&[empty], 64),
            Err(ManifestError::Empty)
        ));
    }

    #[test]
    fn distinct_runs_salt_every_line_and_expect_each_text_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.txt");
        std::fs::write(&a, b"one\ntwo\none\n").expect("write");
        let workload = Workload::load(&[a], 64).expect("load");
        let clients = vec![Manifest::client_id("r1", 0), Manifest::client_id("r1", 1)];
        let entries = workload.salted_entries(&clients, 2);
        // 2 clients × 3 lines × 2 repeats, every text different.
        assert_eq!(entries.len(), 12);
        let texts: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts.len(), 12);
        assert_eq!(entries[0].text, "mtc-r1-0:1 one");
        assert_eq!(entries[3].text, "mtc-r1-0:4 one");
        assert_eq!(entries[11].text, "mtc-r1-1:6 one");
        assert_eq!(
            entries[11].hash,
            MessageHash::of(b"mtc-r1-1:6 one").to_string()
        );
        assert_eq!(salted_line("c", 7, "x y"), "c:7 x y");
        assert_eq!(salt_len("mtc-r1-1", 6), "mtc-r1-1:6 ".len());
        assert_eq!(salt_len("c", 10), "c:10 ".len());

        // Expected counts: one sender per text in a distinct run, every client
        // otherwise.
        let mut manifest = sample(dir.path());
        let entry = MessageEntry {
            hash: "ab".into(),
            text: "t".into(),
            per_client: 1,
            baseline: 5,
        };
        assert_eq!(manifest.expected_message_count(&entry), 7);
        manifest.distinct = true;
        assert_eq!(manifest.expected_message_count(&entry), 6);
    }
}
