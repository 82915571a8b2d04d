//! `tally-producer`: TCP line ingest with sequence numbers, a replicated Redis
//! stash and an idempotent Kafka flush. Logic lives in the library; this file
//! parses arguments, binds the listener, starts the metrics/health endpoint and
//! turns signals into a shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tally-producer",
    version,
    about = "tally producer: TCP line ingest"
)]
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
            eprintln!("tally-producer: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let listener = match tokio::net::TcpListener::bind(&settings.producer.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tally-producer: cannot listen on {}: {e}",
                settings.producer.listen
            );
            return ExitCode::from(1);
        }
    };
    let observer =
        match tally_common::observe::Observer::start(&settings.producer.observe_listen, "producer")
            .await
        {
            Ok(observer) => observer,
            Err(e) => {
                eprintln!("tally-producer: {e}");
                return ExitCode::from(1);
            }
        };
    match tally_producer::run_with_readiness(
        settings,
        listener,
        observer.until_shutdown(tally_common::telemetry::shutdown_signal()),
        observer.readiness(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tally-producer: {e}");
            ExitCode::from(1)
        }
    }
}
