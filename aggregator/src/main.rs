//! `tally-aggregator`: per-message counts, deduplicated per (message, client, sn).
//! Logic lives in the library; this file parses arguments, starts logging and the
//! metrics/health endpoint, and turns signals into a shutdown.

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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match tally_common::telemetry::bootstrap(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("tally-aggregator: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let observer = match tally_common::observe::Observer::start(
        &settings.aggregator.observe_listen,
        "aggregator",
    )
    .await
    {
        Ok(observer) => observer,
        Err(e) => {
            eprintln!("tally-aggregator: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = observer.until_shutdown(tally_common::telemetry::shutdown_signal());
    match tally_aggregator::run_with_readiness(settings, shutdown, observer.readiness()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = anyhow::Error::from(e);
            tracing::error!("{e:#}");
            eprintln!("tally-aggregator: {e:#}");
            ExitCode::from(1)
        }
    }
}
