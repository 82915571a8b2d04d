//! What the fault suite's report (`tally-tests`: `chaos-report`) and the
//! benchmark's report (`tally-bench`) are built from: one bundled font, one PNG
//! encoder, the chart canvas they share, a markdown table builder, and one error
//! type.
//!
//! Invariants:
//! - Charts render their text with a TTF compiled into this crate ([`font`]), so
//!   they work on a machine with no system fonts and no fontconfig.
//! - Nothing here panics on IO: every file error comes back as a [`ReportError`]
//!   naming the path.
//! - The crate knows nothing about tally (no tally dependency): the reports decide
//!   what to measure and show, this crate only how it is drawn and written.

pub mod chart;
pub mod files;
pub mod font;
pub mod image;
pub mod table;

use std::path::PathBuf;

pub use files::{check_file_name, create_dir, write_file};
pub use font::ensure_font;
pub use image::{read_rgb_png, write_rgb_png, RgbImage};
pub use table::{cell, Align, Table};

/// Errors writing charts and reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PNG encoder failed (an IO failure included).
    #[error("cannot write PNG {}: {source}", path.display())]
    Png {
        /// The chart file.
        path: PathBuf,
        /// Why.
        source: png::EncodingError,
    },
    /// A PNG file could not be read back as 8-bit RGB.
    #[error("cannot read PNG {}: {message}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why, as text.
        message: String,
    },
    /// plotters could not draw the chart.
    #[error("cannot draw chart {}: {message}", path.display())]
    Draw {
        /// The chart file.
        path: PathBuf,
        /// plotters' error, as text (its error type borrows the backend).
        message: String,
    },
    /// The bundled font is not a font plotters can read.
    #[error("the bundled chart font (DejaVu Sans) cannot be loaded")]
    Font,
    /// A name that is not a plain file name ([`check_file_name`]).
    #[error("scenario name {0:?} cannot name a file: use letters, digits, '.', '-' and '_', not starting with '.'")]
    InvalidName(String),
    /// Two things that would be written to the same file (e.g. two scenarios
    /// with one name, whose charts would overwrite each other).
    #[error("two scenarios are named {0:?}")]
    DuplicateName(String),
}
