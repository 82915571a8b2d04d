//! `tally`: the command-line tool to set up, drive and inspect a tally pipeline.
//!
//! Exit codes: 0 success, 1 a check or operation failed, 2 usage or configuration
//! error. Errors go to stderr as one line. A stdout closed by its reader
//! (`tally top | head -2`) ends a command normally, with exit 0: see [`outln!`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tally_client::audit::{self, AuditOptions};
use tally_client::inspect::Inspector;
use tally_client::manifest::{self, Manifest, ManifestError};
use tally_client::mtc::{self, MtcError, MtcPlan};
use tally_client::printable::{printable, shorten};
use tally_client::send::InputSource;
use tally_client::serve;
use tally_client::session::{self, Numbering, Progress, SessionOptions, SessionTls};
use tally_client::verify::{self, Patience};
use tally_common::kafka::{ensure_topics, tally_topics};
use tally_common::{ClientId, MessageHash, Settings};

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
    /// Send lines from standard input to the producer, showing ACK progress.
    Send(SendArgs),
    /// Mass test: many concurrent clients replay files; writes a run manifest.
    Mtc(MtcArgs),
    /// Wait for a run to drain, then check every count against its manifest.
    Verify(VerifyArgs),
    /// Recompute every client's count (and, with --messages, every message's) from
    /// Kafka itself and compare with Redis: no manifest needed.
    Audit(AuditArgs),
    /// Look up one client's or one message's counts.
    Count(CountArgs),
    /// The last records of a tally topic, every field decoded (values are written
    /// compact; a console consumer shows them as bytes), with the reason a record
    /// that does not parse would be dead-lettered.
    Records(RecordsArgs),
    /// The most counted messages.
    Top {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
    },
    /// Running instances with their /metrics addresses, producers and their clients,
    /// stash backlog, consumer lag, stalled clients, DLQ.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set up the Kafka side of a deployment.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Serve the read-only HTTP API and the live dashboard.
    Serve(ServeArgs),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Args)]
struct RecordsArgs {
    /// The topic: client-message, aggregation or dlq (their names come from the
    /// configuration).
    #[arg(value_enum)]
    topic: tally_client::records::Which,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Records shown per partition, the last ones (at most 10,000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    last: u64,
    /// One JSON object per record instead of one line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SendArgs {
    /// Client id to say HELLO with (1–64 of [A-Za-z0-9._:-]). With an id, a lost
    /// connection is resumed, so every line is stored exactly once; without one,
    /// the producer names the client after the connection and a lost connection
    /// ends the command.
    #[arg(long)]
    id: Option<String>,
    /// The id's token, when the producer authenticates clients
    /// (producer.auth.mode = "token"; `tally admin token --id ID` prints it).
    #[arg(long, env = "TALLY_TOKEN", requires = "id", hide_env_values = true)]
    token: Option<String>,
    /// Producer address; defaults to client.producer_addr from the configuration.
    #[arg(long)]
    addr: Option<String>,
    /// Lines sent but not yet ACKed, at most (also the resend buffer).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How `send` and `mtc` speak TLS to a producer with `[producer.tls]`.
#[derive(Args)]
struct TlsArgs {
    /// Speak TLS to the producer (its [producer.tls]).
    #[arg(long)]
    tls: bool,
    /// CA certificate(s) (PEM) to trust for the producer's certificate, instead of
    /// the system trust store.
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present (producer.auth.mode = "mtls": its SAN
    /// DNS names are the ids it may use).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    key: Option<PathBuf>,
    /// Name the producer's certificate must carry (also sent as SNI); default: the
    /// host of the producer address (an IP address must be an IP SAN of it).
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
}

impl TlsArgs {
    /// The sessions' TLS, or `None` without `--tls`; unusable files are a usage
    /// error naming every problem.
    fn session_tls(&self) -> Result<Option<Arc<SessionTls>>, Failure> {
        if !self.tls {
            return Ok(None);
        }
        let files = tally_common::tls::ClientTlsFiles {
            ca: self.ca.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
        };
        let config = tally_common::tls::client_config(&files).map_err(usage)?;
        let tls = SessionTls::new(config, self.server_name.as_deref())
            .map_err(|e| usage(anyhow!("--server-name: {e}")))?;
        Ok(Some(Arc::new(tls)))
    }
}

#[derive(Args)]
struct MtcArgs {
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// A file to replay: every non-empty line is a message. Repeat the flag for more files.
    #[arg(long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Times each client replays the files.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Messages per second per client (default: as fast as the producer ACKs).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Producer address(es), comma-separated; defaults to client.producer_addr.
    #[arg(long, value_delimiter = ',')]
    addr: Vec<String>,
    /// Run id; client ids are mtc-<run-id>-<i>. Defaults to a fresh random id; an
    /// existing run id with the same inputs resumes that run.
    #[arg(long)]
    run_id: Option<String>,
    /// Where to write the run manifest (default: <runs dir>/<run-id>.json, where
    /// the runs dir is $TALLY_RUNS_DIR or ~/.local/state/tally/runs).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Lines in flight (sent, not ACKed) per client.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Give up after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
    /// Make every message unique: client <c> sends its line n as "<c>:<n> <line>",
    /// so every text is sent once (the manifest expects each count to be 1).
    #[arg(long)]
    distinct: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct VerifyArgs {
    /// The run manifest (default: the newest run's, <runs dir>/latest.json).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// How long to wait for the pipeline to drain.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop waiting early when no count changed for this long.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    settle: Duration,
    /// Mismatches to print.
    #[arg(long, default_value_t = 10)]
    show: usize,
}

#[derive(Args)]
struct AuditArgs {
    /// Also recompute and compare every message's count (hashes spilled to bucket
    /// files, counted one bucket at a time).
    #[arg(long)]
    messages: bool,
    /// Differences to print.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// How long to wait for the counter and aggregator to count everything up to
    /// the snapshot before judging (the audit fails without a verdict after it).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    wait: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to create the spill directory for --messages (default: the system's
    /// temporary directory); it is removed at the end.
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Records per message bucket, about: one bucket's distinct messages are held
    /// in memory at a time (~60 bytes each).
    #[arg(long, default_value_t = audit::RECORDS_PER_BUCKET, value_parser = clap::value_parser!(u64).range(1..))]
    bucket_records: u64,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Event streams (open dashboards) served at once, at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_streams: u64,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct CountArgs {
    /// A client id.
    #[arg(long)]
    client: Option<String>,
    /// A message text (hashed exactly as the aggregator does).
    #[arg(long)]
    message: Option<String>,
    /// A message hash (32 hex digits).
    #[arg(long)]
    hash: Option<String>,
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
    /// Print the token of a client id, minted under producer.auth.secret_file
    /// (for `HELLO <id> <token>` when producer.auth.mode = "token").
    Token {
        /// The client id.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the configuration and report every problem in it, including in the
    /// files the producer's settings name (token secrets, TLS certificate, key and
    /// client CA).
    Check,
    /// Print the effective configuration (defaults, file and environment merged) as JSON.
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

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a positive number of messages per second"
        )),
    }
}

/// A failure with the exit code it maps to.
enum Failure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
    /// Standard output was closed by its reader (`tally top | head -2`): the
    /// reader has what it wanted, so the command ends normally, with exit 0.
    StdoutClosed,
}

/// `println!` for commands: a line on stdout, where a closed stdout ends the command
/// with [`Failure::StdoutClosed`] instead of panicking (exit 101) as `println!` does.
/// Every line a command prints goes through here, so no command can panic on it.
macro_rules! outln {
    () => {
        write_stdout(format_args!(""))?
    };
    ($($arg:tt)*) => {
        write_stdout(format_args!($($arg)*))?
    };
}

/// Writes one line to stdout; see [`outln!`].
fn write_stdout(line: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::StdoutClosed
        } else {
            failed(anyhow!("writing to stdout: {e}"))
        }
    })
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

fn failed(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Failed(e.into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) | Err(Failure::StdoutClosed) => ExitCode::SUCCESS,
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
    let settings = tally_common::telemetry::bootstrap(cli.config.as_deref()).map_err(usage)?;
    match cli.command {
        Command::Send(args) => send(&settings, args).await,
        Command::Mtc(args) => mass_test(&settings, args).await,
        Command::Verify(args) => verify_run(&settings, args).await,
        Command::Audit(args) => audit(&settings, args).await,
        Command::Count(args) => count(&settings, args).await,
        Command::Records(args) => records(&settings, args).await,
        Command::Top { n } => top(&settings, n).await,
        Command::Status { json } => status(&settings, json).await,
        Command::Serve(args) => serve(&settings, args).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let problems = file_problems(&settings);
            if !problems.is_empty() {
                return Err(usage(anyhow!("configuration: {}", problems.join("; "))));
            }
            outln!("configuration ok");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            // Credentials (Redis URL passwords, librdkafka secrets) are shown as `***`.
            let text = serde_json::to_string_pretty(&settings.redacted()).map_err(failed)?;
            outln!("{text}");
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::InitTopics { timeout },
        } => init_topics(&settings, timeout).await,
        Command::Admin {
            command: AdminCommand::Token { id },
        } => {
            let id = ClientId::parse(&id).map_err(|e| usage(anyhow!("--id: {e}")))?;
            let path = settings
                .producer
                .auth
                .secret_file
                .as_deref()
                .ok_or_else(|| {
                    usage(anyhow!(
                        "producer.auth.secret_file is not set: tokens are minted under it"
                    ))
                })?;
            let secret = tally_common::auth::Secret::read("producer.auth.secret_file", path)
                .map_err(usage)?;
            outln!("{}", secret.mint(&id));
            Ok(())
        }
    }
}

async fn send(settings: &Settings, args: SendArgs) -> Result<(), Failure> {
    let id = args
        .id
        .as_deref()
        .map(ClientId::parse)
        .transpose()
        .map_err(|e| usage(anyhow!("--id: {e}")))?;
    let addr = args
        .addr
        .unwrap_or_else(|| settings.client.producer_addr.clone());
    let (source, input) = InputSource::spawn(
        std::io::BufReader::new(std::io::stdin()),
        settings.producer.max_line_bytes,
        |rejected| {
            eprintln!(
                "tally: stdin line {} not sent: {}",
                rejected.line, rejected.reason
            )
        },
    );
    let progress = Arc::new(Progress::default());
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let ticker = {
        let progress = progress.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_message(format!(
                    "sent {} · ACKed {}",
                    progress.sent.load(Ordering::Relaxed),
                    progress.acked.load(Ordering::Relaxed)
                ));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let options = SessionOptions {
        window: usize::try_from(args.window).unwrap_or(usize::MAX),
        numbering: Numbering::Append,
        token: args.token,
        tls: args.tls.session_tls()?,
        ..SessionOptions::default()
    };
    let outcome = session::run(
        std::slice::from_ref(&addr),
        id.as_ref(),
        source,
        &options,
        Some(&progress),
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    let rejected = input.rejected_count.load(Ordering::Relaxed);
    let read_error = input.error.lock().map(|e| e.clone()).unwrap_or_default();
    let report = outcome.map_err(|e| failed(anyhow!("{addr}: {e}")))?;
    let stored = report.acked - report.first_sn;
    match &id {
        Some(id) => eprintln!(
            "tally: {stored} line(s) stored for {id} (sn {}..{}), {} reconnect(s)",
            report.first_sn + 1,
            report.acked,
            report.reconnects
        ),
        None => eprintln!("tally: {stored} line(s) stored"),
    }
    if let Some(e) = read_error {
        return Err(failed(anyhow!(
            "reading stdin failed after {stored} line(s): {e}"
        )));
    }
    if rejected > 0 {
        return Err(failed(anyhow!(
            "{rejected} line(s) of stdin were not sent (see above)"
        )));
    }
    Ok(())
}

/// What is wrong with the files the settings name (`[redis]`'s password file and
/// CA, `[kafka]`'s SASL password file, token secrets, `[producer.tls]`'s
/// certificate, key and client CA), all of it: the services would fail on any of it.
fn file_problems(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = tally_common::redis::read_access_files(&settings.redis) {
        problems.push(e.to_string());
    }
    if let Err(e) = tally_common::kafka::read_sasl_password(&settings.kafka) {
        problems.push(e.to_string());
    }
    if let Err(e) = tally_common::auth::from_settings(&settings.producer.auth) {
        problems.push(e.to_string());
    }
    if let Some(tls) = &settings.producer.tls {
        if let Err(e) = tally_common::tls::server_config(tls) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// The secret mtc mints its clients' tokens under: `producer.auth.secret_file`
/// when `producer.auth.mode = "token"` (the operator's configuration), else none.
fn token_secret(
    settings: &Settings,
) -> Result<Option<tally_common::auth::Secret>, tally_common::auth::AuthError> {
    use tally_common::settings::AuthMode;
    match (
        settings.producer.auth.mode,
        &settings.producer.auth.secret_file,
    ) {
        (AuthMode::Token, Some(path)) => {
            tally_common::auth::Secret::read("producer.auth.secret_file", path).map(Some)
        }
        (AuthMode::Token, None) => Err(tally_common::auth::AuthError::NoSecret),
        (AuthMode::None | AuthMode::Mtls, _) => Ok(None),
    }
}

async fn mass_test(settings: &Settings, args: MtcArgs) -> Result<(), Failure> {
    let run_id = args.run_id.unwrap_or_else(mtc::new_run_id);
    let manifest_path = match args.manifest {
        Some(path) => path,
        None => manifest::runs_dir()
            .map_err(usage)?
            .join(format!("{run_id}.json")),
    };
    let addrs = if args.addr.is_empty() {
        vec![settings.client.producer_addr.clone()]
    } else {
        args.addr
    };
    let plan = MtcPlan {
        clients: usize::try_from(args.clients).unwrap_or(usize::MAX),
        files: args.files,
        repeat: args.repeat,
        rate: args.rate,
        addrs,
        run_id,
        manifest_path: manifest_path.clone(),
        window: usize::try_from(args.window).unwrap_or(usize::MAX),
        timeout: args.timeout,
        max_line: settings.producer.max_line_bytes,
        distinct: args.distinct,
        token_secret: token_secret(settings).map_err(usage)?,
        tls: args.tls.session_tls()?,
    };
    let inspector = Inspector::connect(settings).await.map_err(failed)?;
    let (manifest, lines, resumed) =
        mtc::prepare(&plan, &inspector).await.map_err(|e| match e {
            MtcError::Inspect(e) => failed(e),
            e => usage(e),
        })?;
    manifest::mark_latest(&manifest_path).map_err(failed)?;
    let total = manifest.per_client * manifest.clients.len() as u64;
    outln!(
        "mtc run {}{}: {} clients × {} messages ({} distinct) → {} over {}",
        manifest.run_id,
        if resumed { " (resuming)" } else { "" },
        manifest.clients.len(),
        manifest.per_client,
        manifest.messages.len(),
        plan.addrs.join(","),
        manifest.key_prefix,
    );
    outln!("manifest {}", manifest_path.display());

    let progress = Arc::new(Progress::default());
    let display = spawn_progress(progress.clone(), total);
    let outcome = mtc::execute(&plan, manifest, lines, resumed, progress)
        .await
        .map_err(failed)?;
    display.abort();
    let _ = display.await;

    let result = outcome
        .manifest
        .result
        .as_ref()
        .ok_or_else(|| failed(anyhow!("run ended without a result")))?;
    outln!(
        "sent {} (incl. resends) · ACKed {} of {} · {:.1} s · {:.0} msg/s · {} reconnect(s)",
        result.sent,
        result.acked,
        total,
        result.elapsed_ms as f64 / 1000.0,
        result.messages_per_s,
        result.reconnects
    );
    outln!("ACK latency {}", latency_line(&outcome.latency_us));
    for (id, e) in outcome.failures.iter().take(10) {
        eprintln!("tally: client {id}: {e}");
    }
    if !outcome.failures.is_empty() {
        return Err(failed(anyhow!(
            "{} of {} clients did not complete; rerun with --run-id {} to resume",
            outcome.failures.len(),
            outcome.manifest.clients.len(),
            outcome.manifest.run_id
        )));
    }
    outln!("next: tally verify --manifest {}", manifest_path.display());
    Ok(())
}

/// A progress bar on a terminal, a line every 5 s otherwise.
fn spawn_progress(progress: Arc<Progress>, total: u64) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    if std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} ACKed · {per_sec} · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        tokio::spawn(async move {
            let _finish = FinishOnDrop(bar.clone());
            loop {
                bar.set_position(progress.acked.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} reconnect(s)",
                    progress.reconnects.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    } else {
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let acked = progress.acked.load(Ordering::Relaxed);
                let line = write_stdout(format_args!(
                    "progress {:>6.1} s: ACKed {acked}/{total} ({:.0} msg/s in the last 5 s), {} reconnect(s)",
                    started.elapsed().as_secs_f64(),
                    (acked - last) as f64 / 5.0,
                    progress.reconnects.load(Ordering::Relaxed)
                ));
                if line.is_err() {
                    // Nobody reads the progress any more; the run goes on, and its
                    // final lines report the closed stdout.
                    return;
                }
                last = acked;
            }
        })
    }
}

struct FinishOnDrop(ProgressBar);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "n/a (nothing sent)".into();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.1} ms · p90 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

async fn verify_run(settings: &Settings, args: VerifyArgs) -> Result<(), Failure> {
    let path = match args.manifest {
        Some(path) => path,
        None => manifest::latest_path().map_err(usage)?,
    };
    let manifest = Manifest::load(&path).map_err(|e| match e {
        ManifestError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            usage(anyhow!(
                "no run manifest at {} (run `tally mtc` first, or pass --manifest)",
                path.display()
            ))
        }
        e => usage(e),
    })?;
    let inspector = Inspector::connect(settings)
        .await
        .map_err(failed)?
        .with_prefix(&manifest.key_prefix);
    let expected_total = manifest.per_client * manifest.clients.len() as u64;
    outln!(
        "verifying run {}: {} clients × {} messages, {} distinct messages, keys under {}",
        manifest.run_id,
        manifest.clients.len(),
        manifest.per_client,
        manifest.messages.len(),
        manifest.key_prefix
    );
    if let Some(result) = manifest.result.as_ref().filter(|r| !r.complete) {
        outln!(
            "note: the run did not complete ({} of {expected_total} ACKed); its counts cannot be exact",
            result.acked
        );
    }
    let patience = Patience {
        timeout: args.timeout,
        settle: args.settle,
        poll: Duration::from_secs(1),
    };
    let mut polls = 0u32;
    let (verdict, waited) = verify::wait_and_check(&inspector, &manifest, patience, |v| {
        polls += 1;
        if polls % 5 == 0 {
            // A closed stdout is noticed by the verdict's first line, below.
            let _ = write_stdout(format_args!(
                "waiting: {}/{} clients and {}/{} messages exact",
                v.clients_exact, v.clients, v.messages_exact, v.messages
            ));
        }
    })
    .await
    .map_err(failed)?;

    outln!();
    outln!(
        "{:<10} {:>10} {:>10} {:>10}",
        "",
        "checked",
        "exact",
        "wrong"
    );
    outln!(
        "{:<10} {:>10} {:>10} {:>10}",
        "clients",
        verdict.clients,
        verdict.clients_exact,
        verdict.clients - verdict.clients_exact
    );
    outln!(
        "{:<10} {:>10} {:>10} {:>10}",
        "messages",
        verdict.messages,
        verdict.messages_exact,
        verdict.messages - verdict.messages_exact
    );
    if verdict.exact() {
        outln!(
            "EXACT: every client counted {} with last_sn {}, every message count = baseline + expected (checked after {:.1} s)",
            manifest.per_client,
            manifest.per_client,
            waited.as_secs_f64()
        );
        return Ok(());
    }
    outln!();
    outln!("first mismatches:");
    for m in verdict.mismatches.iter().take(args.show) {
        let diff = m.found as i128 - m.expected as i128;
        let text = m
            .text
            .as_deref()
            .map(|t| format!("  {}", printable(&shorten(t, 60))))
            .unwrap_or_default();
        outln!(
            "  {:<15} {}  expected {} found {} ({diff:+}){text}",
            m.what,
            m.key,
            m.expected,
            m.found
        );
    }
    Err(failed(anyhow!(
        "NOT EXACT: {} mismatch(es) after waiting {:.1} s",
        verdict.mismatches.len(),
        waited.as_secs_f64()
    )))
}

async fn audit(settings: &Settings, args: AuditArgs) -> Result<(), Failure> {
    let spill_dir = args.spill_dir.unwrap_or_else(std::env::temp_dir);
    if !spill_dir.is_dir() {
        return Err(usage(anyhow!(
            "--spill-dir {}: not a directory",
            spill_dir.display()
        )));
    }
    let options = AuditOptions {
        messages: args.messages,
        show: args.show,
        wait: args.wait,
        spill_dir,
        records_per_bucket: args.bucket_records,
        progress: Arc::new(|line: String| eprintln!("tally: audit: {line}")),
    };
    let inspector = Inspector::connect(settings).await.map_err(failed)?;
    let report = audit::run(settings, &inspector, &options)
        .await
        .map_err(failed)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        print_audit(&report)?;
    }
    if report.matches() {
        return Ok(());
    }
    let messages = report.messages.as_ref().map_or(0, |m| m.differing);
    Err(failed(anyhow!(
        "DIFFERENCES: {} client(s) and {messages} message(s) differ from what {} implies",
        report.clients.differing,
        report.topic
    )))
}

fn print_audit(r: &audit::AuditReport) -> Result<(), Failure> {
    let trimmed = r.partitions.iter().filter(|p| p.trimmed()).count();
    outln!(
        "audit of {} ({} partition(s), {trimmed} trimmed by retention) against keys under {}",
        r.topic,
        r.partitions.len(),
        r.prefix
    );
    outln!(
        "read {} record(s) ({} invalid, dead-lettered by the counter) in {:.2} s: {:.0} records/s",
        r.records_read,
        r.invalid_records,
        r.read_seconds,
        r.records_per_second
    );
    outln!(
        "waited {:.1} s for the counter and aggregator to reach the snapshot; {} record(s) appended during the audit; {:.2} s in all",
        r.waited_seconds,
        r.appended_during_audit,
        r.total_seconds
    );
    outln!();
    outln!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "",
        "checked",
        "match",
        "differ",
        "moved",
        "not judged"
    );
    let c = &r.clients;
    outln!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "clients",
        c.checked,
        c.matching,
        c.differing,
        c.moved,
        c.not_judged
    );
    if let Some(m) = &r.messages {
        outln!(
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "messages",
            m.checked,
            m.matching,
            m.differing,
            m.moved,
            m.above_retained
        );
    }
    if c.truncated > 0 {
        outln!(
            "note: {} client(s) truncated by retention (first retained sn > 1): only count = last_sn is checked",
            c.truncated
        );
    }
    if c.split > 0 {
        outln!(
            "note: {} client(s) with records in several partitions (partitions added?): not judged",
            c.split
        );
    }
    if let Some(m) = &r.messages {
        if m.lower_bound {
            outln!("note: records expired, so message counts are lower bounds: only a count below the log's is a difference");
        }
        outln!(
            "messages counted in {} bucket(s), at most {} sighting(s) in one, {} byte(s) spilled",
            m.buckets,
            m.largest_bucket,
            m.spilled_bytes
        );
    }
    if r.matches() {
        outln!(
            "MATCH: every judged count in Redis is what {} implies",
            r.topic
        );
        return Ok(());
    }
    outln!();
    outln!("first differences:");
    for d in &r.differences {
        let text = d
            .text
            .as_deref()
            .map(|t| format!("  {}", printable(&shorten(t, 60))))
            .unwrap_or_default();
        let sn = match (d.expected_last_sn, d.found_last_sn) {
            (Some(e), Some(f)) => format!(", last_sn expected {e} found {f}"),
            (None, Some(f)) => format!(", last_sn {f}"),
            _ => String::new(),
        };
        let note = d
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        outln!(
            "  {:<8} {}  count expected {} found {}{sn}{note}{text}",
            d.kind,
            d.key,
            d.expected_count,
            d.found_count
        );
    }
    Ok(())
}

async fn count(settings: &Settings, args: CountArgs) -> Result<(), Failure> {
    let inspector = Inspector::connect(settings).await.map_err(failed)?;
    if let Some(id) = args.client {
        let id = ClientId::parse(&id).map_err(|e| usage(anyhow!("--client: {e}")))?;
        let view = inspector.client(&id).await.map_err(failed)?;
        outln!("client   {}", view.client);
        outln!("count    {}", view.count);
        outln!("last_sn  {}", view.last_sn);
        outln!(
            "stored   {} (flushed to Kafka: {})",
            view.stored_sn,
            view.flushed_sn
        );
        outln!("owner    {}", view.owner.as_deref().unwrap_or("-"));
        outln!("key      {}", inspector.keys().client_count(&id));
        return Ok(());
    }
    let hash = match (args.message, args.hash) {
        (Some(text), _) => MessageHash::of(text.as_bytes()),
        (None, Some(hash)) => hash.parse().map_err(usage)?,
        (None, None) => return Err(usage(anyhow!("give --client, --message or --hash"))),
    };
    let view = inspector.message(&hash).await.map_err(failed)?;
    outln!("hash     {}", view.hash);
    outln!("count    {}", view.count);
    outln!(
        "text     {}",
        view.text
            .as_deref()
            .map_or("(never counted)".into(), printable)
    );
    outln!(
        "key      {} (HGET <key> {})",
        inspector.keys().message(&hash),
        tally_common::schema::message::COUNT
    );
    Ok(())
}

async fn top(settings: &Settings, n: usize) -> Result<(), Failure> {
    let inspector = Inspector::connect(settings).await.map_err(failed)?;
    let views = inspector.top(n).await.map_err(failed)?;
    if views.is_empty() {
        outln!("no message counted under {}", inspector.keys().prefix());
    }
    for (rank, view) in views.iter().enumerate() {
        outln!(
            "{:>3}. {:>10}  {}",
            rank + 1,
            view.count,
            view.text
                .as_deref()
                .map_or_else(|| view.hash.clone(), |t| printable(&shorten(t, 80)))
        );
    }
    Ok(())
}

async fn status(settings: &Settings, json: bool) -> Result<(), Failure> {
    let inspector = Inspector::connect(settings).await.map_err(failed)?;
    let view = inspector.status().await.map_err(failed)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&view).map_err(failed)?);
        return Ok(());
    }
    outln!("instances ({}):", view.instances.len());
    for i in &view.instances {
        outln!(
            "  {:<10} {:<24} {}  (pid {}, refreshed {} ms ago)",
            i.role,
            i.instance,
            i.metrics,
            i.pid,
            i.refreshed_age_ms
        );
    }
    outln!("producers ({}):", view.producers.len());
    for p in &view.producers {
        let stale = p.clients.saturating_sub(p.owned);
        outln!(
            "  {:<24} {:<5} heartbeat {:>7} ms ago  owns {} client(s){}",
            p.instance,
            if p.alive { "alive" } else { "DEAD" },
            p.heartbeat_age_ms,
            p.owned,
            if stale > 0 {
                format!(" (+{stale} released or moved, still in its set)")
            } else {
                String::new()
            }
        );
    }
    outln!(
        "clients: {} known, {} owned by a producer, {} with a backlog",
        view.clients,
        view.owned_clients,
        view.clients_with_backlog
    );
    outln!(
        "stash backlog (stored, not yet in Kafka): {}",
        view.stash_backlog
    );
    match &view.max_flush_lag {
        Some((client, lag)) => outln!("largest flush lag: {lag} message(s) ({client})"),
        None => outln!("largest flush lag: 0"),
    }
    outln!("in Kafka, not yet counted: {}", view.uncounted);
    for g in &view.groups {
        outln!("consumer lag {:<20} on {:<20} {}", g.group, g.topic, g.lag);
    }
    outln!(
        "stalled clients (behind a gap): {}",
        view.stalled_clients.len()
    );
    for c in view.stalled_clients.iter().take(10) {
        outln!("  {c}");
    }
    outln!(
        "dead letters in {}: {}",
        settings.kafka.dlq_topic,
        view.dlq_records
    );
    Ok(())
}

async fn records(settings: &Settings, args: RecordsArgs) -> Result<(), Failure> {
    let settings = settings.clone();
    let shown = tokio::task::spawn_blocking(move || {
        tally_client::records::read_last(
            &settings,
            args.topic,
            args.partition,
            args.last,
            Duration::from_secs(10),
        )
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    for record in &shown {
        if args.json {
            outln!("{}", serde_json::to_string(record).map_err(failed)?);
        } else {
            outln!("{}", record.line());
        }
    }
    Ok(())
}

async fn serve(settings: &Settings, args: ServeArgs) -> Result<(), Failure> {
    let token = match &settings.serve.token_file {
        Some(path) => Some(serve::BearerToken::read(path).map_err(usage)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| failed(anyhow!("--listen {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(failed)?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(usage(anyhow!(
            "--listen {addr} is beyond loopback: set serve.token_file so every request \
             must carry a bearer token (docs/configuration.md), or listen on 127.0.0.1"
        )));
    }
    match token {
        Some(_) => eprintln!(
            "tally: serving the dashboard on http://{addr}/?token=… (API under /api; \
             every request needs the token of serve.token_file)"
        ),
        None => eprintln!("tally: serving the dashboard on http://{addr}/ (API under /api)"),
    }
    let options = serve::ServeOptions {
        max_streams: usize::try_from(args.max_streams).unwrap_or(usize::MAX),
        token,
        ..serve::ServeOptions::default()
    };
    serve::run(
        listener,
        settings,
        options,
        tally_common::telemetry::shutdown_signal(),
    )
    .await
    .map_err(failed)
}

async fn init_topics(settings: &Settings, timeout: Duration) -> Result<(), Failure> {
    let specs = tally_topics(&settings.kafka);
    let reports = ensure_topics(&settings.kafka, &specs, timeout)
        .await
        .map_err(failed)?;
    for report in &reports {
        let state = if report.created { "created" } else { "exists" };
        let isr = report
            .min_insync_replicas
            .map_or_else(|| "?".to_string(), |v| v.to_string());
        outln!(
            "{state:8} {:24} partitions={} replication={} min.insync.replicas={isr}",
            report.spec.name,
            report.partitions,
            report.replication_factor
        );
        for mismatch in report.mismatches() {
            outln!("         warning: {} {mismatch}", report.spec.name);
        }
    }
    Ok(())
}
