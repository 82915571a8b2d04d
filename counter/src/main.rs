//! `tally-counter`: per-client counts applied exactly once inside Kafka transactions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "tally-counter", version, about = "tally counter service")]
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
        eprintln!("tally-counter: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    tracing::error!("the counter service is not built yet (issue #4)");
    ExitCode::from(1)
}
