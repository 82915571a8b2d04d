//! `tally-aggregator`: per-message counts applied exactly once, deduplicated per (message, client, sn).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "tally-aggregator", version, about = "tally aggregator service")]
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
        eprintln!("tally-aggregator: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    tracing::error!("the aggregator service is not built yet (issue #4)");
    ExitCode::from(1)
}
