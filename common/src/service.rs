//! The skeleton every service binary shares (`tally-producer`, `tally-counter`,
//! `tally-aggregator`): arguments, settings, logging, the observe endpoint, the
//! instance's id and its entry in the instance registry, the check of its topics,
//! and the signals that start a graceful shutdown.
//!
//! Invariants: a service's `main.rs` holds no logic, only its [`Role`] and the
//! call of its library's `run`. A configuration error exits with code 2 before
//! anything is bound or connected; `--check-config` validates and exits. A service
//! whose topics are missing creates them (`kafka.create_topics`) or exits with
//! code 1 at once, in one line naming `tally admin init-topics`, before it joins
//! anything (only its observe endpoint is up by then, reporting `starting`).
//! The instance id is resolved once, here (configured, or generated), and
//! written back into the settings, so the service, its logs and its registry
//! entry (`common::registry`: role, id, the bound `/metrics` address) name the
//! same instance. A running service gets one shutdown future, which completes on
//! SIGTERM or SIGINT after `/ready` turned false (so a load balancer stops sending
//! work while it drains); after it, the registry entry is withdrawn. Any error
//! that ends the service exits with code 1 and its whole cause chain, on stderr
//! and in the log.

use std::error::Error;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use tracing::{info, warn};

use crate::kafka::{require_topics, TopicCheck};
use crate::observe::{Observer, Readiness};
use crate::registry::{InstanceEntry, Registration};
use crate::{Keys, Settings};

/// How long the start-up check of the topics waits for the cluster's metadata.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The three services; what distinguishes one binary from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tally-producer`: TCP line ingest.
    Producer,
    /// `tally-counter`: per-client counts.
    Counter,
    /// `tally-aggregator`: per-message counts.
    Aggregator,
}

impl Role {
    /// The `service` label of every metric, and the settings section.
    pub fn name(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Counter => "counter",
            Self::Aggregator => "aggregator",
        }
    }

    /// The binary's name, in `--help` and error messages.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Producer => "tally-producer",
            Self::Counter => "tally-counter",
            Self::Aggregator => "tally-aggregator",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Self::Producer => "tally producer: TCP line ingest",
            Self::Counter => "tally counter service",
            Self::Aggregator => "tally aggregator service",
        }
    }

    /// Where its observe endpoint listens.
    pub fn observe_listen(self, settings: &Settings) -> &str {
        match self {
            Self::Producer => &settings.producer.observe_listen,
            Self::Counter => &settings.counter.observe_listen,
            Self::Aggregator => &settings.aggregator.observe_listen,
        }
    }

    /// The topics it reads or writes.
    pub fn topics(self, settings: &Settings) -> Vec<String> {
        let k = &settings.kafka;
        match self {
            Self::Producer => vec![k.client_message_topic.clone()],
            Self::Counter => vec![
                k.client_message_topic.clone(),
                k.message_aggregation_topic.clone(),
                k.dlq_topic.clone(),
            ],
            Self::Aggregator => vec![k.message_aggregation_topic.clone(), k.dlq_topic.clone()],
        }
    }

    /// Its `instance_id` setting, where it has one (the aggregator has none).
    fn instance_id_setting(self, settings: &mut Settings) -> Option<&mut Option<String>> {
        match self {
            Self::Producer => Some(&mut settings.producer.instance_id),
            Self::Counter => Some(&mut settings.counter.instance_id),
            Self::Aggregator => None,
        }
    }

    /// A fresh instance id: `p-`, `c-` or `a-`, the process id and the clock's
    /// nanoseconds in hex.
    pub fn generate_instance_id(self) -> String {
        let letter = match self {
            Self::Producer => 'p',
            Self::Counter => 'c',
            Self::Aggregator => 'a',
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("{letter}-{}-{nanos:x}", std::process::id())
    }

    /// The instance id: the configured one, or a generated one, which is then
    /// written into `settings` so the service uses the same.
    fn resolve_instance_id(self, settings: &mut Settings) -> String {
        let section = self.name();
        match self.instance_id_setting(settings) {
            Some(Some(id)) => id.clone(),
            Some(slot) => {
                let id = self.generate_instance_id();
                *slot = Some(id.clone());
                info!(
                    instance = %id,
                    "no {section}.instance_id set: generated one; set it so a restart \
                     under the same id takes over from this run at once"
                );
                id
            }
            None => self.generate_instance_id(),
        }
    }
}

/// The shutdown future a service runs until.
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a started service is handed besides its settings.
pub struct Started {
    /// The readiness conditions `/ready` reports.
    pub readiness: Readiness,
    /// Completes when the service must shut down gracefully.
    pub shutdown: ShutdownSignal,
}

#[derive(Parser)]
struct Args {
    /// Configuration file (TOML); defaults to $TALLY_CONFIG.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the configuration, then exit.
    #[arg(long)]
    check_config: bool,
}

/// Runs a service binary: parses the arguments, loads the settings and starts
/// logging, starts the observe endpoint, and runs `run` on a multi-threaded runtime
/// until it returns. Returns the process's exit code.
pub fn main<F, Fut, E>(role: Role, run: F) -> ExitCode
where
    F: FnOnce(Settings, Started) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn Error + Send + Sync>>,
{
    let matches = Args::command()
        .name(role.binary())
        .about(role.about())
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let settings = match crate::telemetry::bootstrap(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{}: {e}", role.binary());
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", role.binary());
            return ExitCode::from(1);
        }
    };
    let mut settings = settings;
    runtime.block_on(async move {
        let fail = |message: String| {
            tracing::error!("{message}");
            eprintln!("{}: {message}", role.binary());
            ExitCode::from(1)
        };
        let listen = role.observe_listen(&settings).to_owned();
        let observer = match Observer::start(&listen, role.name()).await {
            Ok(observer) => observer,
            Err(e) => return fail(e.to_string()),
        };
        // With the endpoint up (`/health` answers, `/ready` says `starting`) while
        // a slow cluster is asked.
        if let Err(message) = check_topics(role, &settings).await {
            return fail(message);
        }
        let instance = role.resolve_instance_id(&mut settings);
        let registration = Registration::spawn(
            settings.redis.clone(),
            &Keys::new(&settings.redis.prefix),
            InstanceEntry::new(role.name(), &instance, observer.local_addr()),
        );
        let started = Started {
            readiness: observer.readiness(),
            shutdown: Box::pin(observer.until_shutdown(crate::telemetry::shutdown_signal())),
        };
        let result = run(settings, started).await;
        registration.withdraw().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(cause_chain(e.into().as_ref())),
        }
    })
}

/// The service's topics exist, or were created (`kafka.create_topics`); else the
/// one line to stop with. A cluster that does not answer is not a reason to stop:
/// the service starts and its readiness reports Kafka until it answers.
async fn check_topics(role: Role, settings: &Settings) -> Result<(), String> {
    let topics = role.topics(settings);
    match require_topics(&settings.kafka, &topics, TOPIC_CHECK_TIMEOUT).await {
        Ok(TopicCheck::Present) => Ok(()),
        Ok(TopicCheck::Created(reports)) => {
            for report in reports.iter().filter(|r| r.created) {
                info!(
                    topic = %report.spec.name,
                    partitions = report.partitions,
                    replication_factor = report.replication_factor,
                    "created missing topic (kafka.create_topics)"
                );
            }
            Ok(())
        }
        Ok(TopicCheck::Unreachable(e)) => {
            warn!(
                topics = %topics.join(","),
                "cannot check the topics ({e}); starting anyway, /ready reports kafka until it answers"
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// An error and its sources, `outer: inner: …`, leaving out a source whose text
/// the message already holds (errors that print their source themselves).
pub fn cause_chain(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("redis: {0}")]
        Prints(#[source] std::io::Error),
        #[error("cannot start")]
        Hides(#[source] std::io::Error),
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(
            cause_chain(&Outer::Prints(io())),
            "redis: connection refused"
        );
        assert_eq!(
            cause_chain(&Outer::Hides(io())),
            "cannot start: connection refused"
        );
    }
}
