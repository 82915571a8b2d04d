//! Ports on this host: free ones for services, and waiting until one listens.
//!
//! A free port is free when asked; another process may take it before the
//! service binds it, which is why services get port 0 wherever they can report
//! the port they bound (see `ServiceProcess::metrics_addr`).

use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
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

    #[tokio::test]
    async fn waits_for_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        wait_listening(&addr, Duration::from_secs(5)).await;
    }
}
