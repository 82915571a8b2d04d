//! `tally-bench`: run by `scripts/bench` (which starts the stack and builds the
//! release binaries first). See the crate docs and docs/benchmarks.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::consumer::Consumer;
use tally_bench::cleanup;
use tally_bench::consume_only::{consume_only, ConsumeLoad};
use tally_bench::e2e::{Load, Pipeline, Shape};
use tally_bench::many_clients;
use tally_bench::procstat::{stack_processes, Watched};
use tally_bench::raw_kafka::{produce_ceiling, transactional_ceiling, TxnBatch};
use tally_bench::raw_redis::script_ceilings;
use tally_bench::report;
use tally_bench::results::{
    BenchConfig, BenchResults, E2ePoint, Machine, RunResult, SustainStep, SustainedSearch,
    Workload, WorkloadRun,
};
use tally_bench::search::{judge, Bisection, Limits, Window};
use tally_common::kafka::{ensure_topics, TopicSpec};
use tally_common::Settings;

/// End-to-end p99 a window of the sustained-rate search may have, ms.
const SUSTAINED_E2E_P99_MS: f64 = 1_000.0;

/// Raw Kafka and Redis ceilings next to tally end to end, medians over runs.
#[derive(Debug, Parser)]
#[command(name = "tally-bench", version)]
struct Args {
    /// tally configuration of the stack to measure (brokers, Redis nodes, RF).
    #[arg(long, env = "TALLY_CONFIG")]
    config: PathBuf,
    /// Results folder (results.json, report.md, PNG charts, service logs).
    #[arg(long)]
    out: PathBuf,
    /// The text the end-to-end clients replay (non-empty lines).
    #[arg(long)]
    input: PathBuf,
    /// Runs; every figure is the median over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Client counts of the end-to-end points, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100, 1000])]
    clients: Vec<usize>,
    /// Messages each full-speed end-to-end point sends over all its clients.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1000..))]
    messages: u64,
    /// Seconds each raw ceiling is driven for.
    #[arg(long, default_value_t = 6.0)]
    raw_seconds: f64,
    /// Bytes of each raw Kafka record and Redis stash line.
    #[arg(long, default_value_t = 60)]
    record_bytes: usize,
    /// Clients of the half-rate point (ACK latency at half the sustained rate).
    #[arg(long, default_value_t = 100)]
    half_rate_clients: usize,
    /// Seconds the half-rate point sends for.
    #[arg(long, default_value_t = 15.0)]
    half_rate_seconds: f64,
    /// `tally-counter` processes of the end-to-end pipeline.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=12))]
    counters: u64,
    /// `tally-aggregator` processes of the end-to-end pipeline.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=12))]
    aggregators: u64,
    /// Partitions of every benchmark topic (default: the config's `kafka.partitions`).
    #[arg(long)]
    partitions: Option<i32>,
    /// Keep each run's topics and Redis keys (by default they are removed once the
    /// run's figures are taken: leftover partitions slow the brokers down).
    #[arg(long)]
    keep_data: bool,
    /// `scripts/stack`'s state dir, for the brokers' and Redis nodes' pids.
    #[arg(long, env = "TALLY_STACK_DIR")]
    stack_dir: Option<PathBuf>,
    /// Search the sustained rate: the highest offered rate the pipeline carries
    /// for `--sustained-seconds` (bisection between `--search-low` and the run's
    /// raw produce ceiling); the half-rate point then runs at half of it.
    #[arg(long, overrides_with = "sustained")]
    sustained: bool,
    /// Clients of every window of the sustained-rate search.
    #[arg(long, default_value_t = 100)]
    sustained_clients: usize,
    /// Seconds each window of the sustained-rate search sends for.
    #[arg(long, default_value_t = 60.0)]
    sustained_seconds: f64,
    /// Lowest offered rate the search considers, msg/s.
    #[arg(long, default_value_t = 1000.0)]
    search_low: f64,
    /// Most windows the search tries (plus one at `--search-low` if none carried).
    #[arg(long, default_value_t = 8)]
    search_steps: usize,
    /// The search stops once the highest rate carried and the lowest not carried
    /// are within this share of each other.
    #[arg(long, default_value_t = 0.1)]
    search_tolerance: f64,
    /// Workloads, comma-separated: `novel` (every client replays the input) and
    /// `distinct` (every line salted with its client and sn, as `tally mtc
    /// --distinct`). Each gets the end-to-end points, the search, the half-rate
    /// point and the consume-only point.
    #[arg(long, value_delimiter = ',', default_values_t = [Workload::Novel, Workload::Distinct], value_parser = parse_workload)]
    workloads: Vec<Workload>,
    /// Records pre-loaded for each consume-only point (counters and aggregators
    /// started cold on them); 0 skips the point.
    #[arg(long, default_value_t = 500_000)]
    consume_records: u64,
    /// Clients the consume-only records belong to.
    #[arg(long, default_value_t = 100)]
    consume_clients: usize,
    /// Clients of the many-clients point (producer RSS with that many connected
    /// clients and after they left); 0 skips the point.
    #[arg(long, default_value_t = 10_000)]
    many_clients: usize,
    /// Seconds the many-clients point waits after the clients left before the
    /// producer's RSS is read again.
    #[arg(long, default_value_t = 5.0)]
    many_settle_seconds: f64,
    /// Seconds of load the stack gets before the first run, at `--warmup-rate`
    /// (novel, 100 clients, a pipeline of its own; its figures are printed, not
    /// recorded): a stack started minutes ago runs its brokers' code interpreted
    /// or half-compiled, and carries a fraction of what it carries warm; their
    /// JIT compilers need about a quarter of an hour of load to get most of
    /// their work done (docs/benchmarks.md). 0 skips it.
    #[arg(long, default_value_t = 900.0)]
    warmup_seconds: f64,
    /// Offered rate of the warm-up load, msg/s.
    #[arg(long, default_value_t = 15_000.0)]
    warmup_rate: f64,
    /// One quick run for iterating (both workloads and the many-clients point
    /// at small sizes; `--workloads novel --many-clients 0` for less): implies
    /// `--sustained`, and unless given: --runs 1, --clients 100, --messages 20000,
    /// --raw-seconds 2, --half-rate-seconds 8, --sustained-seconds 12,
    /// --search-steps 3, --search-tolerance 0.5, --consume-records 50000,
    /// --warmup-seconds 0.
    #[arg(long)]
    quick: bool,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::from_name(s).ok_or_else(|| format!("unknown workload {s:?}: novel or distinct"))
}

/// The arguments, with `--quick`'s values for those not given on the command
/// line or in the environment.
fn parse_args() -> Args {
    use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if args.quick {
        let defaulted = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        args.sustained = true;
        if defaulted("runs") {
            args.runs = 1;
        }
        if defaulted("clients") {
            args.clients = vec![100];
        }
        if defaulted("messages") {
            args.messages = 20_000;
        }
        if defaulted("raw_seconds") {
            args.raw_seconds = 2.0;
        }
        if defaulted("half_rate_seconds") {
            args.half_rate_seconds = 8.0;
        }
        if defaulted("sustained_seconds") {
            args.sustained_seconds = 12.0;
        }
        if defaulted("search_steps") {
            args.search_steps = 3;
        }
        if defaulted("search_tolerance") {
            args.search_tolerance = 0.5;
        }
        if defaulted("consume_records") {
            args.consume_records = 50_000;
        }
        if defaulted("warmup_seconds") {
            args.warmup_seconds = 0.0;
        }
    }
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs client counts above 0");
    }
    if args.sustained_clients == 0 || !(args.sustained_seconds > 0.0 && args.search_low > 0.0) {
        bail!("--sustained-clients, --sustained-seconds and --search-low must be above 0");
    }
    if !(args.search_tolerance >= 0.0 && args.search_steps > 0) {
        bail!("--search-steps must be above 0, --search-tolerance not below 0");
    }
    if !(args.raw_seconds > 0.0 && args.half_rate_seconds > 0.0) {
        bail!("--raw-seconds and --half-rate-seconds must be above 0");
    }
    if args.record_bytes < 20 {
        bail!("--record-bytes must be at least 20");
    }
    if args.workloads.is_empty() {
        bail!("--workloads needs novel, distinct or both");
    }
    if args.consume_records > 0 && args.consume_clients == 0 {
        bail!("--consume-clients must be above 0");
    }
    if !args.many_settle_seconds.is_finite() || args.many_settle_seconds < 0.0 {
        bail!("--many-settle-seconds must be a number not below 0");
    }
    if !(args.warmup_seconds.is_finite() && args.warmup_seconds >= 0.0) {
        bail!("--warmup-seconds must be a number not below 0");
    }
    if args.warmup_seconds > 0.0 && !(args.warmup_rate.is_finite() && args.warmup_rate > 0.0) {
        bail!("--warmup-rate must be above 0");
    }
    if args.many_clients > 0 {
        // The clients' sockets are this process's; the producer (a child) inherits
        // the limit too.
        let need = args.many_clients as u64 + many_clients::SPARE_FILES;
        match many_clients::open_files_limit() {
            Some(limit) if limit < need => bail!(
                "--many-clients {} needs an open-file limit of at least {need}, this process has                  {limit}: raise it (`ulimit -n {need}`; scripts/bench does) or lower --many-clients",
                args.many_clients
            ),
            _ => {}
        }
    }
    let settings = Settings::load(Some(&args.config))
        .with_context(|| format!("load {}", args.config.display()))?;
    let novel = read_lines(&args.input)?;
    let partitions = args.partitions.unwrap_or(settings.kafka.partitions);
    let stack_dir = args.stack_dir.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/state/tally/stack")
    });
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;

    let started = Instant::now();
    let mut machine = machine();
    machine.kafka_partitions = kafka_partitions(&settings).await;
    let mut results = BenchResults {
        started_at: rfc3339_now(),
        machine,
        config: BenchConfig {
            runs: args.runs as usize,
            raw_seconds: args.raw_seconds,
            record_bytes: args.record_bytes,
            clients: args.clients.clone(),
            messages_per_point: args.messages,
            half_rate_clients: args.half_rate_clients,
            partitions,
            counters: args.counters as usize,
            aggregators: args.aggregators as usize,
            workloads: args.workloads.clone(),
            consume_records: (args.consume_records > 0).then_some(args.consume_records),
            many_clients: (args.many_clients > 0).then_some(args.many_clients),
        },
        runs: Vec::new(),
        elapsed_s: 0.0,
    };
    let stamp = format!("bench-{}", unix_s());
    if args.warmup_seconds > 0.0 {
        let warm_name = format!("{stamp}-w");
        let warm = warm_stack(&args, &settings, &novel, &warm_name, partitions);
        tokio::select! {
            result = warm => result?,
            signal = interrupted() => bail!("{signal}: stopped during the warm-up"),
        }
    }
    for run in 1..=args.runs as usize {
        let name = format!("{stamp}-r{run}");
        eprintln!("== run {run}/{}: {name}", args.runs);
        // On SIGINT or SIGTERM the run's future is dropped, and with it the pipeline,
        // whose services are killed: nothing is left running.
        let result = tokio::select! {
            result = one_run(&args, &settings, &novel, &name, run, partitions, &stack_dir) => result?,
            signal = interrupted() => bail!("{signal}: stopped; runs finished so far are in {}", args.out.display()),
        };
        results.runs.push(result);
        results.elapsed_s = started.elapsed().as_secs_f64();
        // Written after every run, so an interrupted benchmark keeps what it measured.
        write_json(&args.out, &results)?;
    }
    results.elapsed_s = started.elapsed().as_secs_f64();
    write_json(&args.out, &results)?;
    let summary = report::summarize(&results);
    let md = report::write_markdown(&results, &summary, &args.out)?;
    let charts = report::write_charts(&results, &summary, &args.out)?;
    let headline = report::headline(&results);
    let summary_json = args.out.join("summary.json");
    std::fs::write(&summary_json, serde_json::to_string_pretty(&headline)?)
        .with_context(|| format!("write {}", summary_json.display()))?;
    println!("{}", report::summary_text(&results, &summary));
    println!("report: {}", md.display());
    for c in charts {
        println!("chart:  {}", c.display());
    }
    println!("json:   {}", args.out.join("results.json").display());
    println!("json:   {}", summary_json.display());
    // The output's last line.
    println!("{}", report::headline_line(&headline));
    let inexact: usize = results.runs.iter().map(|r| r.all_exact().1).sum();
    if inexact > 0 {
        bail!("{inexact} point(s) were not exact: not a result");
    }
    Ok(())
}

async fn one_run(
    args: &Args,
    settings: &Settings,
    novel: &[String],
    name: &str,
    run: usize,
    partitions: i32,
    stack_dir: &std::path::Path,
) -> anyhow::Result<RunResult> {
    let raw = format!("{name}.raw");
    let raw_out = format!("{name}.raw_out");
    let specs: Vec<TopicSpec> = [&raw, &raw_out]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions,
            replication_factor: settings.kafka.replication_factor,
            min_insync_replicas: settings.kafka.min_insync_replicas,
        })
        .collect();
    ensure_topics(&settings.kafka, &specs, Duration::from_secs(60)).await?;

    let kafka_produce =
        produce_ceiling(&settings.kafka, &raw, args.record_bytes, args.raw_seconds).await?;
    eprintln!(
        "   kafka produce ceiling: {:>9.0} records/s",
        kafka_produce.per_s
    );
    let kafka_transactional = transactional_ceiling(
        &settings.kafka,
        &raw,
        &raw_out,
        &format!("{name}.passthrough"),
        kafka_produce.items,
        args.raw_seconds,
        TxnBatch {
            records: settings.counter.batch_max_records,
            ms: settings.counter.batch_max_ms,
        },
    )
    .await?;
    eprintln!(
        "   kafka transactional pass-through: {:>9.0} records/s",
        kafka_transactional.per_s
    );
    let redis = script_ceilings(
        &settings.redis,
        &format!("{name}-raw"),
        args.record_bytes,
        args.raw_seconds / 2.0,
    )
    .await?;
    for r in &redis {
        eprintln!(
            "   redis {:<13} {:>9.0} items/s (call p99 {:.1} ms)",
            r.script, r.throughput.per_s, r.call_p99_ms
        );
    }

    let watch = |pipeline_extra: &[Watched]| {
        let mut w = stack_processes(stack_dir);
        w.push(Watched {
            name: "load (tally-bench)".into(),
            role: "load".into(),
            pid: std::process::id(),
        });
        w.extend(pipeline_extra.iter().cloned());
        w
    };
    let mut novel_run = None;
    let mut distinct_run = None;
    for &workload in &args.workloads {
        eprintln!("   workload {}", workload.name());
        let points = workload_run(
            args,
            settings,
            novel,
            &format!("{name}-{}", &workload.name()[..1]),
            workload,
            partitions,
            kafka_produce.per_s,
            &watch,
        )
        .await?;
        match workload {
            Workload::Novel => novel_run = Some(points),
            Workload::Distinct => distinct_run = Some(points),
        }
    }
    let many = if args.many_clients > 0 {
        Some(many_point(args, settings, novel, &format!("{name}-m"), partitions).await?)
    } else {
        None
    };
    clean(
        args,
        settings,
        vec![raw, raw_out],
        vec![format!("{name}-raw")],
    )
    .await;

    let novel_run = novel_run.unwrap_or_default();
    Ok(RunResult {
        run,
        kafka_produce,
        kafka_transactional,
        redis,
        e2e: novel_run.e2e,
        sustained: novel_run.sustained,
        consume_only: novel_run.consume_only,
        distinct: distinct_run,
        many_clients: many,
    })
}

/// Removes a finished point's topics and Redis keys (unless `--keep-data`).
/// A pipeline of its own named `name` (topics, key prefix, groups), its producer
/// on a free port.
async fn start_pipeline(
    args: &Args,
    settings: &Settings,
    name: &str,
    partitions: i32,
    shape: Shape,
) -> anyhow::Result<Pipeline> {
    let port = tally_harness::free_port().context("find a free port")?;
    let pipeline = Pipeline::start(
        settings,
        name,
        partitions,
        &args.config,
        &args.out,
        port,
        shape,
    )
    .await?;
    Ok(pipeline)
}

/// Stops `pipeline`'s services and removes its topics and Redis keys.
async fn retire(args: &Args, settings: &Settings, pipeline: Pipeline) {
    let kafka = &pipeline.settings.kafka;
    let topics = vec![
        kafka.client_message_topic.clone(),
        kafka.message_aggregation_topic.clone(),
        kafka.dlq_topic.clone(),
    ];
    let prefix = pipeline.settings.redis.prefix.clone();
    drop(pipeline);
    clean(args, settings, topics, vec![prefix]).await;
}

async fn clean(args: &Args, settings: &Settings, topics: Vec<String>, prefixes: Vec<String>) {
    if args.keep_data {
        return;
    }
    match cleanup::remove(settings, &topics, &prefixes).await {
        Ok(keys) => eprintln!("   removed {} topics and {keys} Redis keys", topics.len()),
        Err(e) => eprintln!("   warning: cleaning up failed: {e}"),
    }
}

/// One workload's points of one run on its own pipeline (`name`): warm-up, the
/// full-speed points, the search, the half-rate point; then the consume-only
/// point on its own topics.
#[allow(clippy::too_many_arguments)]
async fn workload_run(
    args: &Args,
    settings: &Settings,
    novel: &[String],
    name: &str,
    workload: Workload,
    partitions: i32,
    raw_produce_per_s: f64,
    watch: &dyn Fn(&[Watched]) -> Vec<Watched>,
) -> anyhow::Result<WorkloadRun> {
    let distinct = workload == Workload::Distinct;
    let shape = Shape {
        counters: args.counters as usize,
        aggregators: args.aggregators as usize,
    };
    let mut pipeline = start_pipeline(args, settings, name, partitions, shape).await?;
    // A first small point brings the consumer groups up, off the clock.
    let warm_lines = &novel[..novel.len().min(200)];
    let warm = Load {
        id: "warmup",
        clients: 1,
        lines: warm_lines,
        repeat: 1,
        rate_per_client: None,
        distinct,
    };
    let warm = pipeline.point(&warm, Vec::new()).await?;
    if !warm.exact {
        bail!("the warm-up run was not exact: {:?}", warm.mismatches);
    }

    let mut e2e: Vec<E2ePoint> = Vec::new();
    for &clients in &args.clients {
        let per_client = (args.messages / clients as u64).max(1);
        let lines = lines_for(novel, per_client);
        let load = Load {
            id: &format!("c{clients}"),
            clients,
            lines: &lines,
            repeat: 1,
            rate_per_client: None,
            distinct,
        };
        let point = pipeline.point(&load, watch(&[])).await?;
        print_point(&point);
        e2e.push(point);
    }
    let sustained = if args.sustained {
        let search = search_sustained(
            args,
            &mut pipeline,
            novel,
            workload,
            raw_produce_per_s,
            settings.counter.batch_max_records as u64,
            watch,
        )
        .await?;
        Some(search)
    } else {
        None
    };
    // ACK latency at half of this run's sustained rate if searched, else of its
    // best end-to-end rate.
    let best = match sustained.as_ref().and_then(|s| s.rate_msg_s) {
        Some(rate) => rate,
        None => e2e
            .iter()
            .map(|p| p.end_to_end_per_s)
            .fold(0.0_f64, f64::max),
    };
    let clients = args.half_rate_clients.max(1);
    let rate = (best / 2.0 / clients as f64).max(0.1);
    let per_client = ((rate * args.half_rate_seconds).ceil() as u64).max(1);
    let lines = lines_for(novel, per_client);
    let load = Load {
        id: "half",
        clients,
        lines: &lines,
        repeat: 1,
        rate_per_client: Some(rate),
        distinct,
    };
    let point = pipeline.point(&load, watch(&[])).await?;
    print_point(&point);
    e2e.push(point);
    retire(args, settings, pipeline).await;

    let consume_only = if args.consume_records > 0 {
        let clients = args.consume_clients;
        let per_client = args.consume_records.div_ceil(clients as u64).max(1);
        let lines = lines_for(novel, per_client);
        let co_name = format!("{name}-co");
        let load = ConsumeLoad {
            name: &co_name,
            clients,
            lines: &lines,
            repeat: 1,
            distinct,
            partitions,
            shape,
        };
        let (point, topics) =
            consume_only(settings, &args.config, &args.out, &load, watch(&[])).await?;
        eprintln!(
            "   consume-only: {} records of {} clients in {:.1} s: {:>7.0} rec/s (pre-load {:.1} s), {}",
            point.records,
            point.clients,
            point.counted_s,
            point.per_s,
            point.preload_s,
            if point.exact { "exact" } else { "NOT EXACT" }
        );
        clean(args, settings, topics, vec![co_name]).await;
        Some(point)
    } else {
        None
    };
    Ok(WorkloadRun {
        e2e,
        sustained,
        consume_only,
    })
}

/// Load before the first run, so that the runs measure the stack warm
/// (`--warmup-seconds`): one window at `--warmup-rate` on a pipeline of its own,
/// exact like every point, its figures printed and not recorded.
async fn warm_stack(
    args: &Args,
    settings: &Settings,
    novel: &[String],
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let clients = 100;
    let shape = Shape {
        counters: args.counters as usize,
        aggregators: args.aggregators as usize,
    };
    let mut pipeline = start_pipeline(args, settings, name, partitions, shape).await?;
    let per_client_rate = args.warmup_rate / clients as f64;
    let per_client = ((per_client_rate * args.warmup_seconds).ceil() as u64).max(1);
    let lines = lines_for(novel, per_client);
    let load = Load {
        id: "warm",
        clients,
        lines: &lines,
        repeat: 1,
        rate_per_client: Some(per_client_rate),
        distinct: false,
    };
    eprintln!(
        "== warm-up: {:.0} s at {:.0} msg/s (not a result)",
        args.warmup_seconds, args.warmup_rate
    );
    let early = Duration::from_secs_f64((args.warmup_seconds / 2.0).min(10.0));
    let (point, _) = pipeline.window(&load, early, Vec::new()).await?;
    print_point(&point);
    if !point.exact {
        bail!("the warm-up was not exact: {:?}", point.mismatches);
    }
    retire(args, settings, pipeline).await;
    Ok(())
}

/// The many-clients point on a pipeline of its own (a fresh producer: its idle
/// size is the reference), allowed enough connections.
async fn many_point(
    args: &Args,
    settings: &Settings,
    novel: &[String],
    name: &str,
    partitions: i32,
) -> anyhow::Result<tally_bench::results::ManyClients> {
    let mut settings = settings.clone();
    let p = &mut settings.producer;
    p.max_connections = p.max_connections.max(args.many_clients + 64);
    let shape = Shape {
        counters: 1,
        aggregators: 1,
    };
    let mut pipeline = start_pipeline(args, &settings, name, partitions, shape).await?;
    let line = novel.first().map_or("many clients", String::as_str);
    let point = many_clients::many_clients(
        &mut pipeline,
        args.many_clients,
        line,
        Duration::from_secs_f64(args.many_settle_seconds),
    )
    .await?;
    eprintln!(
        "   {} clients: connected in {:.1} s; producer RSS idle {:.1} → connected {:.1} (peak {:.1}) → after leaving {:.1} MiB, {}",
        point.clients,
        point.connect_s,
        point.idle_rss_mib,
        point.connected_rss_mib,
        point.peak_rss_mib,
        point.after_rss_mib,
        if point.exact { "exact" } else { "NOT EXACT" }
    );
    retire(args, &settings, pipeline).await;
    Ok(point)
}

/// The sustained-rate search of one run: windows of `--sustained-seconds` at
/// the rates [`Bisection`] proposes, each judged by [`judge`].
async fn search_sustained(
    args: &Args,
    pipeline: &mut Pipeline,
    novel: &[String],
    workload: Workload,
    raw_produce_per_s: f64,
    batch: u64,
    watch: &dyn Fn(&[Watched]) -> Vec<Watched>,
) -> anyhow::Result<SustainedSearch> {
    let clients = args.sustained_clients;
    let high = raw_produce_per_s.max(args.search_low * 2.0);
    let mut bisection = Bisection::new(
        args.search_low,
        high,
        args.search_tolerance,
        args.search_steps,
    )?;
    let limits = Limits {
        lag_slack: batch,
        e2e_p99_ms: SUSTAINED_E2E_P99_MS,
    };
    // The early lag reading: 10 s in, or half-way through a shorter window.
    let early = Duration::from_secs_f64((args.sustained_seconds / 2.0).min(10.0));
    let mut steps = Vec::new();
    while let Some(offered) = bisection.next_rate() {
        let per_client_rate = offered / clients as f64;
        let per_client = ((per_client_rate * args.sustained_seconds).ceil() as u64).max(1);
        let lines = lines_for(novel, per_client);
        let load = Load {
            id: &format!("s{}", steps.len() + 1),
            clients,
            lines: &lines,
            repeat: 1,
            rate_per_client: Some(per_client_rate),
            distinct: workload == Workload::Distinct,
        };
        let (point, lag) = pipeline.window(&load, early, watch(&[])).await?;
        let (carried, why_not) = judge(
            &Window {
                offered_msg_s: offered,
                acked_msg_s: point.ingest_per_s,
                lag_early: lag.early,
                lag_end: lag.end,
                e2e_p99_ms: point.e2e_p99_ms,
                exact: point.exact,
            },
            &limits,
        );
        eprintln!(
            "   sustained {offered:>7.0} msg/s offered: lag {} → {}, {}",
            lag.early.map_or("-".into(), |l| l.to_string()),
            lag.end,
            if carried {
                "carried".to_owned()
            } else {
                format!("not carried: {}", why_not.join("; "))
            }
        );
        print_point(&point);
        bisection.record(offered, carried);
        steps.push(SustainStep {
            offered_msg_s: offered,
            lag_early: lag.early,
            lag_end: lag.end,
            carried,
            why_not,
            point,
        });
    }
    Ok(SustainedSearch {
        workload,
        clients,
        window_s: args.sustained_seconds,
        low_msg_s: args.search_low,
        high_msg_s: high,
        steps,
        rate_msg_s: bisection.best(),
    })
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Exactly `per_client` lines from the text: its first ones, or the whole text
/// over and over, cut at `per_client`. (Whole repeats overshot a window: at
/// 450 lines per client a 60 s window sent three passes of the novel, 78 s.)
fn lines_for(novel: &[String], per_client: u64) -> Vec<String> {
    let wanted = usize::try_from(per_client).unwrap_or(usize::MAX);
    novel.iter().cycle().take(wanted).cloned().collect()
}

fn print_point(p: &E2ePoint) {
    let rate = p
        .rate_per_client
        .map_or("full speed".to_owned(), |r| format!("{r:.1} msg/s each"));
    eprintln!(
        "   e2e {:>4} clients ({rate}): {} msgs, ingest {:>7.0} msg/s, end to end {:>7.0} msg/s, ACK p99 {:.1} ms, e2e p99 {} ms, {}",
        p.clients,
        p.messages,
        p.ingest_per_s,
        p.end_to_end_per_s,
        p.ack_p99_ms,
        p.e2e_p99_ms.map_or("-".into(), |v| format!("{v:.0}")),
        if p.exact { "exact" } else { "NOT EXACT" }
    );
}

fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        bail!("{} has no non-empty line", path.display());
    }
    Ok(lines)
}

fn write_json(dir: &std::path::Path, results: &BenchResults) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn rfc3339_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| unix_s().to_string())
}

fn machine() -> Machine {
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_mib: memory_kib / 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        kafka_partitions: None,
    }
}

/// Partitions over every topic of the cluster (internal ones included).
async fn kafka_partitions(settings: &Settings) -> Option<usize> {
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer =
            tally_common::kafka::admin_config(&kafka).create().ok()?;
        let metadata = client.fetch_metadata(None, Duration::from_secs(10)).ok()?;
        Some(metadata.topics().iter().map(|t| t.partitions().len()).sum())
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::lines_for;

    #[test]
    fn lines_for_gives_exactly_the_lines_asked_for() {
        let novel: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(lines_for(&novel, 2), ["a", "b"]);
        assert_eq!(lines_for(&novel, 3), ["a", "b", "c"]);
        assert_eq!(
            lines_for(&novel, 7),
            ["a", "b", "c", "a", "b", "c", "a"],
            "cut within the third pass, not rounded up to it"
        );
    }
}
