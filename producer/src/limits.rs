//! Abuse limits on client connections, decided before a connection has an
//! identity: how many connections one source address may hold, how long a new
//! connection may take to send its first complete line, and how many failed
//! authentications an address may make per minute before it is shut out for the
//! rest of that minute.
//!
//! Invariant: a refused connection stores, resumes and supersedes nothing — it is
//! answered with one `ERR` line and closed before any line of it is read. The
//! per-address count is exact while connections come and go: every admitted
//! connection holds an [`AddressSlot`], and dropping it (however the connection
//! ends) gives the slot back, so an address never stays locked out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window failed authentications are counted in.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Most addresses whose failures are remembered at once: bounds the memory an
/// attacker spreading failures over many addresses can make the producer use.
/// Once full (after dropping expired windows), failures of new addresses are not
/// counted: the limit is a brake on guessing from few addresses, not a firewall.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Failed authentications per source address in fixed one-minute windows; an
/// address that reached `max` in its current window is refused until it ends.
#[derive(Clone)]
pub struct AuthFailures {
    max: u32,
    windows: Arc<Mutex<HashMap<IpAddr, FailureWindow>>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl AuthFailures {
    /// At most `max` failed authentications per address per minute (`0`: no limit).
    pub fn new(max: u32) -> Self {
        Self {
            max,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether `ip` made `max` failed authentications in its window ending after
    /// `now`: then its connections are refused until the window ends.
    pub fn is_shut_out(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max == 0 {
            return false;
        }
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.get(&ip).is_some_and(|w| {
            now.duration_since(w.started) < AUTH_FAILURE_WINDOW && w.failures >= self.max
        })
    }

    /// Counts one failed authentication of `ip` at `now`.
    pub fn record(&self, ip: IpAddr, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&ip) && windows.len() >= MAX_TRACKED_ADDRESSES {
            windows.retain(|_, w| now.duration_since(w.started) < AUTH_FAILURE_WINDOW);
            if windows.len() >= MAX_TRACKED_ADDRESSES {
                return;
            }
        }
        let window = windows.entry(ip).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= AUTH_FAILURE_WINDOW {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

/// Connections per source address; `0` means unlimited.
#[derive(Clone)]
pub struct AddressLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection's share of its address's limit; released on drop.
pub struct AddressSlot {
    ip: IpAddr,
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl AddressLimit {
    /// At most `max` connections per address (`0`: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it holds `max` already.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot { ip, open: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            ip,
            open: Some(self.open.clone()),
        })
    }

    /// Connections open from `ip` (for tests and diagnostics).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(open) = &self.open else {
            return;
        };
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_shut_out_after_max_failures_until_its_minute_ends() {
        let failures = AuthFailures::new(3);
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!failures.is_shut_out(a, t0), "after {i} failures");
            failures.record(a, t0 + Duration::from_secs(i));
        }
        assert!(failures.is_shut_out(a, t0 + Duration::from_secs(3)));
        assert!(failures.is_shut_out(a, t0 + Duration::from_secs(59)));
        // Another address is not affected.
        assert!(!failures.is_shut_out(b, t0 + Duration::from_secs(3)));
        // The window ends a minute after its first failure; a new one starts.
        assert!(!failures.is_shut_out(a, t0 + AUTH_FAILURE_WINDOW));
        failures.record(a, t0 + AUTH_FAILURE_WINDOW);
        assert!(!failures.is_shut_out(a, t0 + AUTH_FAILURE_WINDOW));
    }

    #[test]
    fn no_limit_counts_nothing_and_the_table_stays_bounded() {
        let off = AuthFailures::new(0);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..10 {
            off.record(ip, now);
        }
        assert!(!off.is_shut_out(ip, now));

        let limited = AuthFailures::new(1);
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            limited.record(IpAddr::from(i.to_be_bytes()), now);
        }
        let tracked = limited.windows.lock().map(|w| w.len()).unwrap_or(0);
        assert_eq!(tracked, MAX_TRACKED_ADDRESSES);
        // Expired windows make room again.
        let later = now + AUTH_FAILURE_WINDOW;
        limited.record("192.168.1.1".parse().expect("ip"), later);
        assert!(limited.is_shut_out("192.168.1.1".parse().expect("ip"), later));
    }

    #[test]
    fn an_address_gets_at_most_max_slots_and_each_drop_gives_one_back() {
        let limit = AddressLimit::new(2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = limit.admit(a);
        let second = limit.admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(limit.admit(a).is_none(), "a third from the same address");
        assert!(limit.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert_eq!(limit.open_from(a), 1);
        let third = limit.admit(a);
        assert!(third.is_some(), "a slot came back");
        drop(second);
        drop(third);
        assert_eq!(limit.open_from(a), 0);
        assert!(
            limit.open.lock().map(|m| m.is_empty()).unwrap_or(false),
            "no entry left behind"
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = AddressLimit::new(0);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..1000).filter_map(|_| limit.admit(ip)).collect();
        assert_eq!(slots.len(), 1000);
        assert_eq!(limit.open_from(ip), 0, "nothing is tracked without a limit");
    }
}
