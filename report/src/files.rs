//! Writing a report's files.
//!
//! Invariant: a report writes only inside the directory it is given, under names
//! [`check_file_name`] accepted, and every failure names the path.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use crate::ReportError;

/// Creates `dir` and its parents if needed.
pub fn create_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path` (replacing it).
pub fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    let io_error = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_error)?;
    let mut out = BufWriter::new(file);
    out.write_all(text.as_bytes()).map_err(io_error)?;
    out.flush().map_err(io_error)
}

/// Accepts a name only if it is a plain file name: letters, digits, `.`, `-` and
/// `_`, not empty and not starting with `.`; else [`ReportError::InvalidName`].
pub fn check_file_name(name: &str) -> Result<(), ReportError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if plain {
        Ok(())
    } else {
        Err(ReportError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        for ok in ["03-counter-kill", "a.b_c", "x"] {
            check_file_name(ok).expect(ok);
        }
        for bad in ["", ".hidden", "../escape", "a/b", "a b", "é"] {
            assert!(
                matches!(check_file_name(bad), Err(ReportError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn writes_files_and_names_the_failing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        create_dir(&sub).expect("create");
        write_file(&sub.join("r.md"), "# hi\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(sub.join("r.md")).expect("read"),
            "# hi\n"
        );
        let file = sub.join("r.md");
        match create_dir(&file.join("x")) {
            Err(ReportError::Io { path, .. }) => assert_eq!(path, file.join("x")),
            other => panic!("expected an IO error, got {other:?}"),
        }
    }
}
