//! `tally-aggregator`: per-message counts, deduplicated per (message, client, sn).
//! Logic lives in the library; the shared service skeleton
//! (`tally_common::service`) parses arguments, loads settings, starts logging and
//! the observe endpoint, and turns signals into the shutdown.

use std::process::ExitCode;

use tally_common::service::{self, Role};

fn main() -> ExitCode {
    service::main(Role::Aggregator, |settings, started| {
        tally_aggregator::run_with_readiness(settings, started.shutdown, started.readiness)
    })
}
