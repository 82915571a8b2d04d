//! The `tally` client library: the resuming session every client uses, and the
//! commands of the `tally` tool.

pub mod inspect;
pub mod manifest;
pub mod mtc;
pub mod send;
pub mod session;
pub mod verify;
