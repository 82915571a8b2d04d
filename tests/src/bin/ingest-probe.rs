//! Quick ingest measurement against a running producer: N clients stream M lines
//! each (pipelined, resuming on errors) while one probe client sends a line at a
//! time and times its ACK. Prints throughput and the probe's ACK latency
//! percentiles. Usage: `ingest-probe ADDR CLIENTS MESSAGES_PER_CLIENT`.

use std::time::{Duration, Instant};

use tally_client::session::send_all;
use tally_common::ClientId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, clients, per_client] = args.as_slice() else {
        eprintln!("usage: ingest-probe ADDR CLIENTS MESSAGES_PER_CLIENT");
        std::process::exit(2);
    };
    let (clients, per_client): (usize, usize) = (clients.parse()?, per_client.parse()?);
    let run = tally_tests::unique("probe");

    let started = Instant::now();
    let mut sessions = Vec::new();
    for i in 0..clients {
        let id = ClientId::parse(&format!("{run}-{i}"))?;
        let msgs: Vec<String> = (1..=per_client)
            .map(|n| format!("{run} line {} of client {i}", n % 500))
            .collect();
        let addr = addr.clone();
        sessions.push(tokio::spawn(async move {
            send_all(
                &[addr],
                &id,
                &msgs,
                Instant::now() + Duration::from_secs(600),
            )
            .await
        }));
    }

    // The probe: one line at a time, ACK round trip, while the load runs.
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("HELLO {run}-probe\n").as_bytes())
        .await?;
    lines.next_line().await?;
    let mut latencies = Vec::new();
    let mut sn = 0u64;
    while sessions.iter().any(|s| !s.is_finished()) {
        sn += 1;
        let sent = Instant::now();
        w.write_all(format!("probe {sn}\n").as_bytes()).await?;
        match lines.next_line().await? {
            Some(line) if line == format!("ACK {sn}") => latencies.push(sent.elapsed()),
            other => return Err(format!("probe got {other:?}").into()),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let mut acked = 0u64;
    for s in sessions {
        acked += s.await??.acked;
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "clients={clients} messages={acked} elapsed={:.2}s rate={:.0} msg/s probe_acks={} ack_p50={:.2}ms ack_p99={:.2}ms ack_max={:.2}ms",
        elapsed.as_secs_f64(),
        acked as f64 / elapsed.as_secs_f64(),
        latencies.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
