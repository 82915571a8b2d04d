//! What the `run_manifest` fuzz target (`fuzz/`) checks, shared with the corpus
//! replay that runs as an ordinary test.
//!
//! Invariant: any bytes given to `tally verify` as a manifest are either accepted
//! or rejected with an error, never a panic; an accepted manifest writes back to
//! one that parses to the same value. Compiled only for tests and with the
//! `fuzzing` feature.

use std::path::Path;

use crate::manifest::Manifest;

/// A run manifest's bytes.
pub fn run_manifest(data: &[u8]) {
    let path = Path::new("<fuzz>");
    if let Ok(manifest) = Manifest::from_slice(data, path) {
        let written = serde_json::to_vec(&manifest).unwrap_or_default();
        let again = Manifest::from_slice(&written, path).ok();
        assert_eq!(
            again,
            Some(manifest),
            "an accepted manifest does not round-trip"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/run_manifest");
        let read = tally_common::fuzzing::replay(&dir, run_manifest);
        assert!(read > 0, "no corpus in {}", dir.display());
    }
}
