//! Library side of the `tally` CLI: pieces other tools and tests reuse.

pub mod session;
