//! The network-fault scenarios (issue #16): the same judge as `chaos.rs` — every
//! scenario passes only if `tally verify` finds every ACKed message counted exactly
//! once — with faults that cut one host off from *some* others while it keeps
//! talking to the rest. They run on the network lab (`scripts/stack --lab`), every
//! node and service on its own lab host; `scripts/chaos` runs them there (on the
//! lab's operator host) and `scripts/test` runs the quick form of one in CI.
//!
//! A partition here is a drop in the lab's bridge (docs/faults.md, "The network
//! lab"): neither end is told, its packets just vanish.

use std::time::Duration;

use tally_common::Keys;
use tally_harness::{Lab, LinkFaults};
use tally_tests::chaos::{
    assert_exact, at, cluster_nodes, first_client, full, hand_over_master, make_master, node_info,
    node_info_text, redis_master_of, scenario, small_batches, Harness, LoadSpec, Role, SoakSpan,
    Topology, SETTLE,
};
use tally_tests::{stack, RestoreDisk, RestoreNode};

/// The lab's link faults; panics (with how to run it) off the lab.
fn link_faults(h: &Harness) -> LinkFaults {
    h.lab()
        .unwrap_or_else(|| {
            panic!(
                "[{}] needs the network lab: run it with `scripts/chaos {}` (root; it brings up `scripts/stack --lab`)",
                h.name, h.name
            )
        })
        .guard()
}

/// Fails before any service starts when the tests do not run on the lab.
fn require_lab(name: &str) {
    assert!(
        Lab::active(),
        "[{name}] needs the network lab: run it with `scripts/chaos {name}` (root; it brings up `scripts/stack --lab`)"
    );
}

/// The fault's length: `full` in `scripts/chaos`, `quick` in CI.
fn span(full_s: u64, quick_s: u64) -> Duration {
    Duration::from_secs(if full() { full_s } else { quick_s })
}

/// The first client's Redis master: it holds that client's stash and counts.
async fn first_clients_master(h: &Harness) -> String {
    let keys = Keys::new(h.settings.redis.prefix.clone());
    redis_master_of(&h.settings, &keys.client_count(&first_client(h))).await
}

/// Scenario 1: a producer cut off from one Redis master only (the one holding the
/// first client's stash) while it still reaches Kafka and the other masters; its
/// clients on that master get `ERR unavailable` (never an ACK for a write that
/// did not replicate) and resend once it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s15_producer_redis_partition() {
    require_lab("15-producer-redis-partition");
    let mut h = scenario(
        "15-producer-redis-partition",
        "producer cut off from one Redis master only, mid-load, then healed",
        Topology {
            producers: 2,
            counters: 1,
            aggregators: 1,
        },
        LoadSpec {
            clients: 8,
            lines: 2000,
            rate: 30.0,
        },
    )
    .await;
    let faults = link_faults(&h);
    let rounds = if full() { 2 } else { 1 };
    for r in 0..rounds {
        h.wait_counted(at(r, rounds), SETTLE).await;
        let master = first_clients_master(&h).await;
        let producer = Harness::host_of(Role::Producer, r % 2);
        h.inject(format!("partition {producer} | {master}"));
        faults.partition(&producer, &master);
        tokio::time::sleep(span(20, 12)).await;
        faults.heal();
        h.heal(format!("heal {producer} | {master}"));
    }
    let report = h.finish().await;
    assert_exact(&report);
}

/// Scenario 3: the leader of `client_message` partition 0 isolated from the other
/// brokers (and so from the KRaft quorum) but not from clients: it keeps taking
/// produce requests it can no longer replicate, until the quorum moves the
/// leadership and clients follow the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s17_broker_isolated_from_brokers() {
    require_lab("17-broker-isolated");
    let mut h = scenario(
        "17-broker-isolated",
        "a partition leader cut off from the other brokers, not from clients",
        Topology {
            producers: 1,
            counters: 2,
            aggregators: 1,
        },
        LoadSpec {
            clients: 6,
            lines: 2500,
            rate: 30.0,
        },
    )
    .await;
    let faults = link_faults(&h);
    h.wait_counted(0.25, SETTLE).await;
    let leader = isolate_leader(&mut h, &faults);
    // Past the brokers' session timeout (9 s) and replica.lag.time.max.ms (30 s):
    // the quorum fences the isolated broker and the ISRs shrink without it.
    tokio::time::sleep(span(40, 20)).await;
    faults.heal();
    h.heal(format!("heal {leader}"));
    stack(&["wait-healthy", "180"]);
    let report = h.finish().await;
    assert_exact(&report);
}

/// Scenario 4: a real zombie. Counter 0 is cut off from Kafka but still reaches
/// Redis, past its session and transaction timeouts, while counter 1 takes its
/// partitions over; then counter 1 is cut off from Redis but still reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s18_counter_partitions() {
    require_lab("18-counter-partitions");
    let mut extra = small_batches();
    extra.push(("TALLY__KAFKA__TRANSACTION_TIMEOUT_MS", "6000".to_owned()));
    let mut h = Harness::start(
        "18-counter-partitions",
        "a counter cut from Kafka but not Redis (zombie), one cut from Redis but not Kafka",
        Topology {
            producers: 1,
            counters: 2,
            aggregators: 1,
        },
        &extra,
    )
    .await;
    h.start_load(LoadSpec {
        clients: 8,
        lines: 2000,
        rate: 30.0,
    })
    .await;
    let faults = link_faults(&h);
    let (c0, c1) = (
        Harness::host_of(Role::Counter, 0),
        Harness::host_of(Role::Counter, 1),
    );
    h.wait_counted(0.2, SETTLE).await;
    h.inject(format!("partition {c0} | kafka"));
    faults.partition(&c0, "kafka");
    tokio::time::sleep(span(25, 15)).await;
    faults.heal();
    h.heal(format!("heal {c0} | kafka"));
    h.wait_counted(0.55, SETTLE).await;
    h.inject(format!("partition {c1} | redis"));
    faults.partition(&c1, "redis");
    tokio::time::sleep(span(20, 12)).await;
    faults.heal();
    h.heal(format!("heal {c1} | redis"));
    let report = h.finish().await;
    assert_exact(&report);
}

/// Cuts the leader of `client_message` partition 0 off from the other brokers
/// (not from clients); returns its name.
fn isolate_leader(h: &mut Harness, faults: &LinkFaults) -> String {
    let topic = h.settings.kafka.client_message_topic.clone();
    let leader = stack(&["leader", &topic, "0"]).trim().to_owned();
    let others: Vec<&str> = ["kafka-1", "kafka-2", "kafka-3"]
        .into_iter()
        .filter(|b| *b != leader)
        .collect();
    h.inject(format!("partition {leader} | {}", others.join(",")));
    faults.partition(&leader, &others.join(","));
    leader
}

/// Down for 1–3 s, up for 1–3 s, until `length` is over; then healed.
async fn flap(h: &mut Harness, faults: &LinkFaults, a: &str, b: &str, length: Duration) {
    h.inject(format!("flap {a} | {b} for {} s", length.as_secs()));
    let end = tokio::time::Instant::now() + length;
    let mut flaps = 0;
    while tokio::time::Instant::now() < end {
        faults.partition(a, b);
        tokio::time::sleep(random_1_to_3_s()).await;
        faults.heal();
        flaps += 1;
        tokio::time::sleep(random_1_to_3_s()).await;
    }
    h.heal(format!("{a} | {b} steady after {flaps} flaps"));
}

fn random_1_to_3_s() -> Duration {
    Duration::from_millis(fastrand::u64(1_000..=3_000))
}

/// Scenario 5: links flapping — the aggregator's to Redis, then the producer's to
/// Kafka — down and up every 1–3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s19_link_flap() {
    require_lab("19-link-flap");
    let mut h = scenario(
        "19-link-flap",
        "links flapping every 1-3 s: aggregator-Redis, then producer-Kafka",
        Topology {
            producers: 1,
            counters: 1,
            aggregators: 1,
        },
        LoadSpec {
            clients: 6,
            lines: 3000,
            rate: 25.0,
        },
    )
    .await;
    let faults = link_faults(&h);
    let length = span(60, 15);
    h.wait_counted(0.1, SETTLE).await;
    let aggregator = Harness::host_of(Role::Aggregator, 0);
    flap(&mut h, &faults, &aggregator, "redis", length).await;
    h.wait_stored(0.5, SETTLE).await;
    let producer = Harness::host_of(Role::Producer, 0);
    flap(&mut h, &faults, &producer, "kafka", length).await;
    let report = h.finish().await;
    assert_exact(&report);
}

/// Scenario 2: the split-brain window. The master holding the first client's
/// stash and counts is cut off from its replica and the other masters while every
/// client still reaches it. Until it notices (cluster-node-timeout, then
/// `min-replicas-max-lag`) it accepts writes that never reach the replica, which
/// is promoted meanwhile; when the link heals the old master becomes a replica and
/// drops them. tally ACKs nothing its `WAIT` did not see replicated, so the judge
/// must find every ACKed message counted once; the scenario reports how much the
/// isolated master accepted in the window that the promoted replica never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s16_redis_split_brain() {
    require_lab("16-redis-split-brain");
    let mut h = scenario(
        "16-redis-split-brain",
        "Redis master cut off from its replica and the other masters, clients still reach it",
        Topology {
            producers: 1,
            counters: 2,
            aggregators: 1,
        },
        LoadSpec {
            clients: 8,
            lines: 2000,
            rate: 30.0,
        },
    )
    .await;
    let faults = link_faults(&h);
    let rounds = if full() { 2 } else { 1 };
    for r in 0..rounds {
        h.wait_counted(at(r, rounds), SETTLE).await;
        let victim = first_clients_master(&h).await;
        let port = victim.trim_start_matches("redis-");
        let nodes = cluster_nodes(&h).await;
        let master = nodes
            .iter()
            .find(|n| n.master && n.addr.ends_with(&format!(":{port}")))
            .unwrap_or_else(|| panic!("{victim} is not in CLUSTER NODES: {nodes:?}"))
            .clone();
        let replica = nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .unwrap_or_else(|| panic!("{victim} has no replica: {nodes:?}"))
            .clone();
        let commands_before = node_info(&master.addr, "total_commands_processed").await;
        h.inject(format!(
            "partition {victim} | redis (its replica and the other masters)"
        ));
        faults.partition(&victim, "redis");
        // Past cluster-node-timeout (3 s): the replica is promoted on the majority
        // side while the old master still serves its clients for a while.
        tokio::time::sleep(span(15, 12)).await;
        let accepted = node_info(&master.addr, "master_repl_offset").await;
        let commands_after = node_info(&master.addr, "total_commands_processed").await;
        let promoted = node_info(&replica.addr, "second_repl_offset").await;
        let role_is_master =
            node_info_text(&replica.addr, "role").await.as_deref() == Some("master");
        faults.heal();
        // The promoted replica's history ends at second_repl_offset - 1: whatever
        // the old master accepted beyond it is what the window cost (never ACKed).
        let lost_bytes = match (accepted, promoted) {
            (Some(a), Some(p)) if p > 0 => (a - (p - 1)).max(0).to_string(),
            _ => "?".to_owned(),
        };
        let commands = match (commands_before, commands_after) {
            (Some(b), Some(a)) => (a - b).to_string(),
            _ => "?".to_owned(),
        };
        h.note(format!(
            "round {}: {victim} isolated for the window: it processed {commands} commands and accepted \
             {lost_bytes} bytes of writes that its promoted replica ({}) never got; replica promoted: {role_is_master}",
            r + 1,
            replica.addr
        ));
        assert!(
            role_is_master,
            "[{}] the replica of {victim} was not promoted within the window",
            h.name
        );
        h.heal(format!("heal {victim}"));
        stack(&["wait-healthy", "180"]);
    }
    let report = h.finish().await;
    assert_exact(&report);
}

/// One line at a time from a client of its own, with its ACK latency: what a
/// client feels while a link is slow. Texts are its own (never the novel's), so
/// the judge's counts are untouched; an error or a closed connection reconnects.
struct LatencyProbe {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, Duration)>>>,
    errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProbe {
    fn start(addr: String) -> Self {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let id = tally_tests::unique("probe");
        let (s, e) = (samples.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                if let Err(why) = probe_session(&addr, &id, &mut n, &s).await {
                    e.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("[probe] {why}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self {
            samples,
            errors,
            task,
        }
    }

    /// ACK latency p50 / p99 / max (ms) and samples between `from` and `to`.
    fn summary(&self, from: tokio::time::Instant, to: tokio::time::Instant) -> String {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ms: Vec<f64> = samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .collect();
        if ms.is_empty() {
            return "no ACK".to_owned();
        }
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        format!(
            "ACK p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} lines",
            q(0.5),
            q(0.99),
            ms[ms.len() - 1],
            ms.len()
        )
    }
}

impl Drop for LatencyProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection of the probe: HELLO, then a line every 100 ms, each waiting for
/// its ACK (30 s at most).
async fn probe_session(
    addr: &str,
    id: &str,
    n: &mut u64,
    samples: &std::sync::Mutex<Vec<(tokio::time::Instant, Duration)>>,
) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("HELLO {id}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let welcome = next_reply(&mut lines).await?;
    let mut sn: u64 = welcome
        .strip_prefix(&format!("WELCOME {id} "))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("HELLO answered {welcome:?}"))?;
    loop {
        *n += 1;
        let sent = tokio::time::Instant::now();
        w.write_all(format!("probe line {n} of {id}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        sn += 1;
        let answer = next_reply(&mut lines).await?;
        if answer != format!("ACK {sn}") {
            return Err(format!("line {n} answered {answer:?}"));
        }
        samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((sent, sent.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next reply line, within 30 s.
async fn next_reply<R>(lines: &mut tokio::io::Lines<R>) -> Result<String, String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok(line),
        other => Err(format!("no reply: {other:?}")),
    }
}

/// Scenario 6: a slow path. The producer's connections to every Redis node go
/// through a proxy that delays each way by 50–200 ms, and 1 % of the packets
/// between the producer and the proxy are lost; then the link is healed. A probe
/// client measures the ACK latency before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s20_slow_producer_redis() {
    require_lab("20-slow-producer-redis");
    let mut h = scenario(
        "20-slow-producer-redis",
        "producer-Redis links 50-200 ms each way with 1 % loss, then healed",
        Topology {
            producers: 1,
            counters: 1,
            aggregators: 1,
        },
        LoadSpec {
            clients: 6,
            lines: 2500,
            rate: 25.0,
        },
    )
    .await;
    let faults = link_faults(&h);
    let probe = LatencyProbe::start(h.producer_addrs[0].clone());
    h.wait_counted(0.2, SETTLE).await;
    let producer = Harness::host_of(Role::Producer, 0);
    let calm = tokio::time::Instant::now();
    h.inject(format!("slow {producer} -> redis: 50-200 ms, 1 % loss"));
    faults.slow(&producer, "redis", 50, 150);
    faults.lossy(&producer, "proxy", 1);
    let slow = tokio::time::Instant::now();
    tokio::time::sleep(span(40, 20)).await;
    faults.heal();
    let healed = tokio::time::Instant::now();
    h.heal(format!("heal {producer} -> redis"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = tokio::time::Instant::now();
    h.note(format!(
        "probe before: {}",
        probe.summary(calm - Duration::from_secs(30), calm)
    ));
    h.note(format!("probe during: {}", probe.summary(slow, healed)));
    h.note(format!(
        "probe after (the 20 s after the heal): {}",
        probe.summary(healed, after)
    ));
    h.note(format!(
        "probe reconnects: {}",
        probe.errors.load(std::sync::atomic::Ordering::Relaxed)
    ));
    drop(probe);
    let report = h.finish().await;
    assert_exact(&report);
}

/// One kind of fault the soak draws: the network faults of scenarios 15–20, the
/// full disks of scenario 22 and the process faults of `chaos.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SoakFault {
    ProducerMasterPartition,
    CounterKafkaPartition,
    CounterRedisPartition,
    AggregatorRedisPartition,
    ProducerKafkaFlap,
    AggregatorRedisFlap,
    LeaderBrokerIsolated,
    RedisSplitBrain,
    SlowLossyProducerRedis,
    CounterKill,
    AggregatorKill,
    ProducerKill,
    BrokerKill,
    RedisMasterKill,
    RedisDiskFull,
    BrokerDiskFull,
    ConnectionsDropped,
}

impl SoakFault {
    const ALL: [SoakFault; 17] = [
        Self::ProducerMasterPartition,
        Self::CounterKafkaPartition,
        Self::CounterRedisPartition,
        Self::AggregatorRedisPartition,
        Self::ProducerKafkaFlap,
        Self::AggregatorRedisFlap,
        Self::LeaderBrokerIsolated,
        Self::RedisSplitBrain,
        Self::SlowLossyProducerRedis,
        Self::CounterKill,
        Self::AggregatorKill,
        Self::ProducerKill,
        Self::BrokerKill,
        Self::RedisMasterKill,
        Self::RedisDiskFull,
        Self::BrokerDiskFull,
        Self::ConnectionsDropped,
    ];

    fn name(self) -> String {
        // `ProducerMasterPartition` → `producer-master-partition`.
        let mut name = String::new();
        for c in format!("{self:?}").chars() {
            if c.is_ascii_uppercase() && !name.is_empty() {
                name.push('-');
            }
            name.push(c.to_ascii_lowercase());
        }
        name
    }

    /// The kinds named in `TALLY_CHAOS_SOAK_FAULTS` (comma-separated), or all.
    fn chosen() -> Vec<SoakFault> {
        let Ok(list) = std::env::var("TALLY_CHAOS_SOAK_FAULTS") else {
            return Self::ALL.to_vec();
        };
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Self::ALL
                    .into_iter()
                    .find(|f| f.name() == n)
                    .unwrap_or_else(|| {
                        let names: Vec<String> = Self::ALL.iter().map(|f| f.name()).collect();
                        panic!(
                            "TALLY_CHAOS_SOAK_FAULTS: no fault {n:?}; the kinds: {}",
                            names.join(", ")
                        )
                    })
            })
            .collect()
    }
}

/// Scenario 9: a soak drawing from every fault kind above, the process faults of
/// `chaos.rs` and full disks, with quiet stretches, `TALLY_CHAOS_MINUTES` long
/// (`scripts/chaos --minutes`), while the two producers' clocks run 30 s ahead and
/// 30 s behind (scenario 21's skew). Faults are dealt from a shuffled deck of all
/// kinds, so a soak of a few minutes already draws each once; the seed is noted
/// (`TALLY_CHAOS_SEED` replays it) and `TALLY_CHAOS_SOAK_FAULTS` limits the deck
/// to the named kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scripts/chaos (network lab)"]
async fn s23_net_soak() {
    require_lab("23-net-soak");
    let span = SoakSpan::from_env();
    let kinds = SoakFault::chosen();
    let mut extra = small_batches();
    extra.push(("TALLY__KAFKA__TRANSACTION_TIMEOUT_MS", "6000".to_owned()));
    let mut h = Harness::start_skewed(
        "23-net-soak",
        &format!(
            "soak: every fault kind, network and disk included, clocks ±30 s, {} min",
            span.minutes
        ),
        Topology {
            producers: 2,
            counters: 2,
            aggregators: 2,
        },
        &extra,
        &[30, -30],
    )
    .await;
    let lines = 11_000usize;
    h.start_load(LoadSpec {
        clients: 6,
        lines,
        rate: span.rate(lines),
    })
    .await;
    let faults = link_faults(&h);
    let seed = std::env::var("TALLY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    h.note(format!("seed {seed} (TALLY_CHAOS_SEED replays the draw)"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut deck: Vec<SoakFault> = Vec::new();
    let mut drawn: Vec<(SoakFault, usize)> = Vec::new();
    // Faults are dealt for the whole span; the drain comes after it.
    let end = tokio::time::Instant::now() + span.duration();
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(rng.u64(10..25))).await;
        if deck.is_empty() {
            deck = kinds.clone();
            rng.shuffle(&mut deck);
        }
        let Some(kind) = deck.pop() else { break };
        match drawn.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => drawn.push((kind, 1)),
        }
        soak_fault(&mut h, &faults, &mut rng, kind).await;
    }
    let tally: Vec<String> = drawn
        .iter()
        .map(|(kind, n)| format!("{} ×{n}", kind.name()))
        .collect();
    h.note(format!("faults drawn: {}", tally.join(", ")));
    let report = h.finish().await;
    assert_exact(&report);
}

/// Injects one `kind` of fault, holds it 8–16 s (a kill: restarts after 1–5 s),
/// heals it and waits for the stack to be healthy again.
async fn soak_fault(
    h: &mut Harness,
    faults: &LinkFaults,
    rng: &mut fastrand::Rng,
    kind: SoakFault,
) {
    let hold = Duration::from_secs(rng.u64(8..16));
    let one_of_two = rng.usize(0..2);
    let producer = Harness::host_of(Role::Producer, one_of_two);
    let counter = Harness::host_of(Role::Counter, one_of_two);
    let aggregator = Harness::host_of(Role::Aggregator, one_of_two);
    let broker = format!("kafka-{}", rng.usize(1..=3));
    match kind {
        SoakFault::ProducerMasterPartition => {
            let master = first_clients_master(h).await;
            h.inject(format!("partition {producer} | {master}"));
            faults.partition(&producer, &master);
            tokio::time::sleep(hold).await;
        }
        SoakFault::CounterKafkaPartition => {
            h.inject(format!("partition {counter} | kafka"));
            faults.partition(&counter, "kafka");
            tokio::time::sleep(hold).await;
        }
        SoakFault::CounterRedisPartition => {
            h.inject(format!("partition {counter} | redis"));
            faults.partition(&counter, "redis");
            tokio::time::sleep(hold).await;
        }
        SoakFault::AggregatorRedisPartition => {
            h.inject(format!("partition {aggregator} | redis"));
            faults.partition(&aggregator, "redis");
            tokio::time::sleep(hold).await;
        }
        SoakFault::ProducerKafkaFlap | SoakFault::AggregatorRedisFlap => {
            let (from, to) = match kind {
                SoakFault::ProducerKafkaFlap => (&producer, "kafka"),
                _ => (&aggregator, "redis"),
            };
            // Healed (and marked so) by `flap` itself.
            flap(h, faults, from, to, hold).await;
            stack(&["wait-healthy", "180"]);
            return;
        }
        SoakFault::LeaderBrokerIsolated => {
            isolate_leader(h, faults);
            tokio::time::sleep(hold + Duration::from_secs(10)).await;
        }
        SoakFault::RedisSplitBrain => {
            let master = first_clients_master(h).await;
            h.inject(format!("partition {master} | redis (split brain)"));
            faults.partition(&master, "redis");
            tokio::time::sleep(hold).await;
        }
        SoakFault::SlowLossyProducerRedis => {
            h.inject(format!("slow {producer} -> redis, 1 % loss"));
            faults.slow(&producer, "redis", 50, 150);
            faults.lossy(&producer, "proxy", 1);
            tokio::time::sleep(hold).await;
        }
        SoakFault::CounterKill | SoakFault::AggregatorKill | SoakFault::ProducerKill => {
            let (role, down) = match kind {
                SoakFault::CounterKill => (Role::Counter, 1),
                SoakFault::AggregatorKill => (Role::Aggregator, 1),
                _ => (Role::Producer, 5),
            };
            let what = role.name();
            h.inject(format!("kill -9 {what}-{one_of_two}"));
            h.process(role, one_of_two).kill9();
            tokio::time::sleep(Duration::from_secs(down)).await;
            h.restart(role, one_of_two, &[]);
            h.heal(format!("restart {what}-{one_of_two}"));
            return;
        }
        SoakFault::BrokerKill | SoakFault::RedisMasterKill => {
            let node = match kind {
                SoakFault::BrokerKill => broker,
                _ => first_clients_master(h).await,
            };
            h.inject(format!("kill -9 {node}"));
            let killed = RestoreNode::kill(&node);
            // Past the consumers' session timeout, and past cluster-node-timeout
            // (3 s): a master's replica is promoted.
            tokio::time::sleep(Duration::from_secs(8)).await;
            killed.restore();
            h.heal(format!("{node} back"));
            return;
        }
        SoakFault::RedisDiskFull => {
            let master = first_clients_master(h).await;
            // Moving its AOF directory restarts it; a coordinated failover gives it
            // its slots back if its replica took over meanwhile.
            let disk = RestoreDisk::limit(&master, 64);
            stack(&["wait-healthy", "120"]);
            make_master(h, &master).await;
            h.inject(format!("{master}'s AOF disk full"));
            disk.fill();
            tokio::time::sleep(hold).await;
            disk.free();
            hand_over_master(h, &master).await;
            drop(disk);
            h.heal(format!("{master}'s AOF disk has room again"));
            stack(&["wait-healthy", "180"]);
            return;
        }
        SoakFault::BrokerDiskFull => {
            let disk = RestoreDisk::limit(&broker, 256);
            stack(&["wait-healthy", "120"]);
            h.inject(format!("{broker}'s log disk full"));
            disk.fill();
            tokio::time::sleep(hold).await;
            disk.free();
            // A broker whose only log directory failed has shut itself down.
            stack(&["start", &broker]);
            drop(disk);
            h.heal(format!("{broker}'s log disk has room again"));
            stack(&["wait-healthy", "180"]);
            return;
        }
        SoakFault::ConnectionsDropped => {
            h.inject("all client connections dropped");
            h.restart_load();
            return;
        }
    }
    faults.heal();
    h.heal("heal");
    stack(&["wait-healthy", "180"]);
}
