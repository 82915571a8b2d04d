//! `tally`: the command-line tool to set up, drive and inspect a tally pipeline.
//!
//! Exit codes: 0 success, 1 a check or operation failed, 2 usage or configuration
//! error. Errors go to stderr as one line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tally_common::kafka::{ensure_topics, tally_topics};
use tally_common::Settings;

#[derive(Parser)]
#[command(name = "tally", version, about = "Drive and inspect a tally pipeline")]
struct Cli {
    /// Configuration file (TOML); defaults to $TALLY_CONFIG. Environment variables
    /// TALLY__SECTION__KEY override single keys.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up the Kafka side of a deployment.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the client_message, message_aggregation and DLQ topics if missing
    /// (partitions, replication factor and min.insync.replicas from [kafka]);
    /// existing topics are reported, never altered.
    InitTopics {
        /// How long to wait for the brokers.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the configuration and report every problem in it.
    Check,
    /// Print the effective configuration (defaults, file and environment merged) as TOML-like JSON.
    Show,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}` is not a duration like 500ms, 30s or 2m")),
    }
}

/// A failure with the exit code it maps to.
enum Failure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(e)) => {
            eprintln!("tally: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("tally: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = tally_common::telemetry::bootstrap(cli.config.as_deref())
        .map_err(|e| Failure::Usage(e.into()))?;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("configuration ok");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            let text =
                serde_json::to_string_pretty(&settings).map_err(|e| Failure::Failed(e.into()))?;
            println!("{text}");
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::InitTopics { timeout },
        } => init_topics(&settings, timeout).await,
    }
}

async fn init_topics(settings: &Settings, timeout: Duration) -> Result<(), Failure> {
    let specs = tally_topics(&settings.kafka);
    let reports = ensure_topics(&settings.kafka, &specs, timeout)
        .await
        .map_err(|e| Failure::Failed(e.into()))?;
    for report in &reports {
        let state = if report.created { "created" } else { "exists" };
        let isr = report
            .min_insync_replicas
            .map_or_else(|| "?".to_string(), |v| v.to_string());
        println!(
            "{state:8} {:24} partitions={} replication={} min.insync.replicas={isr}",
            report.spec.name, report.partitions, report.replication_factor
        );
        for mismatch in report.mismatches() {
            println!("         warning: {} {mismatch}", report.spec.name);
        }
    }
    Ok(())
}
