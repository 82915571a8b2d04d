//! The `tally` client library: the resuming session every client uses, and the
//! commands of the `tally` tool (including `tally serve`, the API and dashboard).

pub mod audit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inspect;
pub mod manifest;
pub mod mtc;
pub mod printable;
pub mod records;
pub mod send;
pub mod serve;
pub mod session;
pub mod verify;
