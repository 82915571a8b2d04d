//! Ports on this host: free ones for services, and waiting until one listens.
//!
//! A free port is free when asked; another process may take it before the
//! service binds it, which is why services get port 0 wherever they can report
//! the port they bound (see `ServiceProcess::metrics_addr`). The ports handed out
//! here lie below the kernel's ephemeral range, so no such port-0 bind can take
//! one: a port the kernel had just handed back once went to an aggregator's
//! metrics endpoint a moment before the producer meant to listen on it (fault
//! scenario 5, "Address already in use").

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ports [`free_port`] hands out: above the local stack's own (Redis, Kafka,
/// their shifted secure twins, the lab's proxies from 20000) and below the
/// ephemeral range (Linux' default starts at 32768).
const PORTS: std::ops::Range<u16> = 25_000..32_768;

/// A TCP port on 127.0.0.1 that was free a moment ago, never one the kernel
/// hands out for port 0 (see the module doc). Successive calls in one process
/// try successive ports, from a start that differs per process.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    // The first call picks the process' start.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PORTS.start + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Every one taken: fall back to the kernel's choice.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Waits until `addr` accepts TCP connections; panics after `timeout` (a test
/// convenience).
pub async fn wait_listening(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} not listening after {timeout:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the free port");
    }

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_do_not_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("free port")).collect();
        assert!(ports.iter().all(|p| PORTS.contains(p)), "{ports:?}");
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        // The kernel's own choice for port 0 is never one of them.
        let ephemeral = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind port 0")
            .port();
        assert!(!PORTS.contains(&ephemeral), "{ephemeral}");
    }

    #[tokio::test]
    async fn waits_for_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        wait_listening(&addr, Duration::from_secs(5)).await;
    }
}
