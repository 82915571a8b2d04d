//! The hashes of applied records, spilled to one file per bucket of the message
//! keyspace, so per-message counts are built one bucket at a time.
//!
//! Invariant: every pushed hash lands in exactly one file, the one of
//! [`bucket_of`]; a bucket's counts are the number of times each of its hashes was
//! pushed. Memory: one write buffer per bucket while spilling, then one bucket's
//! distinct hashes at a time. The files live in a temporary directory removed when
//! the [`Buckets`] are dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tally_common::MessageHash;

use super::rules::bucket_of;

/// Bytes per spilled hash.
const HASH_BYTES: usize = 16;

/// Spill files being written.
pub struct Spill {
    dir: tempfile::TempDir,
    writers: Vec<BufWriter<File>>,
    paths: Vec<PathBuf>,
    lens: Vec<u64>,
}

impl Spill {
    /// `buckets` empty files in a new temporary directory under `parent`.
    pub fn create(parent: &Path, buckets: usize) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tally-audit-")
            .tempdir_in(parent)?;
        let mut writers = Vec::with_capacity(buckets);
        let mut paths = Vec::with_capacity(buckets);
        for b in 0..buckets.max(1) {
            let path = dir.path().join(format!("bucket-{b:04}"));
            writers.push(BufWriter::new(File::create(&path)?));
            paths.push(path);
        }
        Ok(Self {
            dir,
            lens: vec![0; writers.len()],
            writers,
            paths,
        })
    }

    /// Appends one sighting of `hash` to its bucket.
    pub fn push(&mut self, hash: MessageHash) -> io::Result<()> {
        let b = bucket_of(hash, self.writers.len());
        self.lens[b] += 1;
        self.writers[b].write_all(&hash.to_bits().to_le_bytes())
    }

    /// Flushes and closes the files.
    pub fn finish(self) -> io::Result<Buckets> {
        for mut w in self.writers {
            w.flush()?;
        }
        Ok(Buckets {
            _dir: self.dir,
            paths: self.paths,
            lens: self.lens,
        })
    }
}

/// Spilled buckets, ready to be counted one at a time.
pub struct Buckets {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    lens: Vec<u64>,
}

impl Buckets {
    /// How many buckets.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are none (never: at least one is created).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Sightings in the largest bucket.
    pub fn largest(&self) -> u64 {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Bytes spilled.
    pub fn bytes(&self) -> u64 {
        self.lens.iter().sum::<u64>() * HASH_BYTES as u64
    }

    /// Bucket `b`'s sightings per message, sorted by hash.
    pub fn counts(&self, b: usize) -> io::Result<Vec<(MessageHash, u64)>> {
        let mut counts: HashMap<u128, u64> = HashMap::new();
        let mut reader = BufReader::with_capacity(1 << 16, File::open(&self.paths[b])?);
        let mut buf = [0u8; HASH_BYTES];
        loop {
            match reader.read_exact(&mut buf) {
                Ok(()) => *counts.entry(u128::from_le_bytes(buf)).or_default() += 1,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        let mut sorted: Vec<(MessageHash, u64)> = counts
            .into_iter()
            .map(|(bits, n)| (MessageHash::from_bits(bits), n))
            .collect();
        sorted.sort_unstable();
        Ok(sorted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sighting_is_counted_once_in_its_bucket_and_the_files_go_away() {
        let parent = tempfile::tempdir().expect("tempdir");
        let mut spill = Spill::create(parent.path(), 4).expect("spill");
        let texts: Vec<String> = (0..50).map(|i| format!("text {i}")).collect();
        for (i, t) in texts.iter().enumerate() {
            for _ in 0..=(i % 3) {
                spill.push(MessageHash::of(t.as_bytes())).expect("push");
            }
        }
        let buckets = spill.finish().expect("finish");
        assert_eq!(buckets.len(), 4);
        let mut seen = 0;
        let mut total = 0;
        for b in 0..buckets.len() {
            for (hash, n) in buckets.counts(b).expect("counts") {
                assert_eq!(bucket_of(hash, 4), b);
                let i = texts
                    .iter()
                    .position(|t| MessageHash::of(t.as_bytes()) == hash)
                    .expect("a pushed hash");
                assert_eq!(n, (i % 3) as u64 + 1, "{}", texts[i]);
                seen += 1;
                total += n;
            }
        }
        assert_eq!(seen, texts.len());
        assert_eq!(buckets.bytes(), total * 16);
        assert!(buckets.largest() > 0);
        drop(buckets);
        let left = std::fs::read_dir(parent.path()).expect("read dir").count();
        assert_eq!(left, 0, "the spill directory is removed");
    }
}
