//! The network lab (`scripts/stack --lab`): which lab host a service runs on, and
//! the link faults between hosts, as functions.
//!
//! Invariant: the lab's layout (hosts, namespaces, addresses) has one home,
//! `scripts/lib/lab.sh`; this module only reads it (`scripts/stack --lab hosts`)
//! and never derives an address itself. A [`Lab`] exists only while the tests run
//! against the lab (`TALLY_STACK_LAB=1`, set by `scripts/stack --lab env`), and
//! every link fault made through [`Lab::guard`] is healed when the guard drops, also
//! when the test that made it panics.

use std::net::IpAddr;
use std::process::Command;

use crate::repo_root;

/// Set by `scripts/stack --lab env`: the tests run on the lab's operator host and
/// place services on lab hosts.
pub const LAB_ENV: &str = "TALLY_STACK_LAB";

/// One lab host: a network namespace with one address on the lab's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name in `scripts/stack --lab` commands (`producer-1`, `kafka-2`, ...).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub addr: IpAddr,
}

/// The lab's hosts, read once from `scripts/stack --lab hosts`.
#[derive(Debug, Clone)]
pub struct Lab {
    hosts: Vec<Host>,
}

/// Why the lab's host list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A line of `scripts/stack --lab hosts` is not `NAME NETNS ADDRESS`.
    #[error("scripts/stack --lab hosts: line {line}: {why}: {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
        /// The line.
        text: String,
    },
}

impl Lab {
    /// Whether the tests run against the lab.
    pub fn active() -> bool {
        std::env::var(LAB_ENV).is_ok_and(|v| v == "1")
    }

    /// The lab, when the tests run against it; panics when its hosts cannot be read
    /// (a test convenience).
    pub fn current() -> Option<Self> {
        if !Self::active() {
            return None;
        }
        let out = lab_command(&["hosts"]);
        Some(Self::parse(&out).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Parses `scripts/stack --lab hosts` output.
    pub fn parse(out: &str) -> Result<Self, LabError> {
        let mut hosts = Vec::new();
        for (i, text) in out.lines().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            let malformed = |why| LabError::Malformed {
                line: i + 1,
                why,
                text: text.to_owned(),
            };
            let mut fields = text.split_whitespace();
            let (Some(name), Some(netns), Some(addr), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed("want three fields"));
            };
            let addr = addr.parse().map_err(|_| malformed("not an IP address"))?;
            hosts.push(Host {
                name: name.to_owned(),
                netns: netns.to_owned(),
                addr,
            });
        }
        Ok(Self { hosts })
    }

    /// The host called `name`; panics when the lab has none (a test convenience).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("the lab has no host {name}"))
    }

    /// The host called `name`, if the lab has one.
    pub fn find(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// A guard that heals every link fault when dropped.
    pub fn guard(&self) -> LinkFaults {
        LinkFaults { _private: () }
    }
}

/// Link faults in the lab's bridge, healed when dropped. Host groups (`A`, `B`)
/// are a host name, `kafka`, `redis`, `services`, `all`, or a comma-separated list.
pub struct LinkFaults {
    _private: (),
}

impl LinkFaults {
    /// Every packet between `a` and `b` dropped, both ways.
    pub fn partition(&self, a: &str, b: &str) {
        lab_command(&["partition", a, b]);
    }

    /// The packets from `from` to `to` dropped; the other way still flows.
    pub fn cut(&self, from: &str, to: &str) {
        lab_command(&["cut", from, to]);
    }

    /// `host` partitioned from every other lab host.
    pub fn isolate(&self, host: &str) {
        lab_command(&["isolate", host]);
    }

    /// `percent` % of the packets between `a` and `b` dropped at random.
    pub fn lossy(&self, a: &str, b: &str, percent: u8) {
        lab_command(&["lossy", a, b, &percent.to_string()]);
    }

    /// `from`'s connections to the Kafka or Redis nodes of `to` through the lab's
    /// proxy, delayed each way by `latency_ms` plus up to `jitter_ms`.
    pub fn slow(&self, from: &str, to: &str, latency_ms: u32, jitter_ms: u32) {
        lab_command(&[
            "slow",
            from,
            to,
            &latency_ms.to_string(),
            &jitter_ms.to_string(),
        ]);
    }

    /// Every partition, cut, isolation, loss and slow link undone.
    pub fn heal(&self) {
        lab_command(&["heal"]);
    }
}

impl Drop for LinkFaults {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/stack"))
            .args(["--lab", "heal"])
            .status();
    }
}

/// Runs `scripts/stack --lab ARGS…`; panics with its output on failure.
fn lab_command(args: &[&str]) -> String {
    let mut all = vec!["--lab"];
    all.extend_from_slice(args);
    crate::stack(&all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_host_list() {
        let lab = Lab::parse(
            "ctl tally-lab-ctl 198.18.0.2\nproducer-1 tally-lab-producer-1 198.18.0.31\n\n",
        )
        .expect("parses");
        assert_eq!(lab.host("producer-1").netns, "tally-lab-producer-1");
        assert_eq!(
            lab.host("ctl").addr,
            "198.18.0.2".parse::<IpAddr>().expect("ip")
        );
        assert!(lab.find("counter-1").is_none());
    }

    #[test]
    fn rejects_a_malformed_line() {
        let err = Lab::parse("ctl tally-lab-ctl\n").expect_err("two fields");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = Lab::parse("ctl ns 198.18.0.300\n").expect_err("bad address");
        assert!(err.to_string().contains("not an IP address"), "{err}");
    }
}
