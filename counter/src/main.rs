//! `tally-counter`: per-client counts applied exactly once inside Kafka
//! transactions.
//! Logic lives in the library; the shared service skeleton
//! (`tally_common::service`) parses arguments, loads settings, starts logging and
//! the observe endpoint, and turns signals into the shutdown.

use std::process::ExitCode;

use tally_common::service::{self, Role};

fn main() -> ExitCode {
    service::main(Role::Counter, |settings, started| {
        tally_counter::run_with_readiness(settings, started.shutdown, started.readiness)
    })
}
