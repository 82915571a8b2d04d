//! Abuse limits on client connections, decided before a connection has an
//! identity: how many connections one source address may hold, and how long a new
//! connection may take to send its first complete line.
//!
//! Invariant: a refused connection stores, resumes and supersedes nothing — it is
//! answered with one `ERR` line and closed before any line of it is read. The
//! per-address count is exact while connections come and go: every admitted
//! connection holds an [`AddressSlot`], and dropping it (however the connection
//! ends) gives the slot back, so an address never stays locked out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
