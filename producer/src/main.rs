//! `tally-producer`: TCP line ingest: sequence numbers, replicated Redis stash, idempotent Kafka flush.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "tally-producer", version, about = "tally producer service")]
struct Args {
    /// Configuration file (TOML); defaults to $TALLY_CONFIG.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the configuration, then exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = tally_common::telemetry::bootstrap(args.config.as_deref()) {
        eprintln!("tally-producer: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    tracing::error!("the producer service is not built yet (issue #3)");
    ExitCode::from(1)
}
