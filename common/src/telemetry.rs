//! Process start-up shared by every binary: settings and logging in one call
//! ([`bootstrap`]), and the signal that starts a graceful shutdown.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter (from `RUST_LOG` or `log.filter`) does not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was installed already.
    #[error("logging already initialised: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber. Logs go to stderr, so stdout stays clean for a
/// command's output. `RUST_LOG`, when set, replaces `log.filter`.
pub fn init_tracing(settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(&settings.filter)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let format = match settings.format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Plain,
        other => other,
    };
    let installed = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
        _ => builder.with_ansi(false).try_init(),
    };
    installed.map_err(|e| TelemetryError::AlreadySet(e.to_string()))
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] crate::settings::ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// What every binary does first: load the layered settings and start logging.
pub fn bootstrap(config: Option<&std::path::Path>) -> Result<crate::Settings, StartupError> {
    let settings = crate::Settings::load(config)?;
    init_tracing(&settings.log)?;
    Ok(settings)
}

/// Completes on SIGTERM or Ctrl-C (SIGINT): the start of a graceful shutdown.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
