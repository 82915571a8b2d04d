//! Failpoints for the fault suite: named places where a service can be made to
//! crash on purpose. They exist only in builds with the cargo feature
//! `failpoints` (the test and fault-suite builds: `tally-tests` turns it on, so
//! `cargo build --workspace` has them); release builds of the services
//! (`cargo build --release -p tally-counter`, `scripts/demo`, `scripts/bench`)
//! do not enable it, and there [`hit`] is an empty inline function and
//! [`is_armed`] a constant `false`, so no failpoint name or test-only sabotage is
//! left in the binary.
//!
//! Invariant (with the feature): an unarmed failpoint does nothing but compare a
//! name, and an armed one ends the process with `std::process::abort()` — no
//! destructors, no flush, no graceful shutdown — so a test sees exactly what a
//! `kill -9` at that line leaves behind (an open Kafka transaction, Redis writes
//! without an offset commit, ...). A pause point ([`pause`]) only makes its
//! caller wait: it stretches a window that load opens by chance (a slow commit)
//! so that a test can open it on purpose.
//!
//! Armed through the environment: `TALLY_FAILPOINT=<name>` fires at the first hit of
//! `<name>`, `TALLY_FAILPOINT=<name>@<n>` at the n-th (so a test can let some
//! batches through before the crash), `TALLY_FAILPOINT=<name>~<ms>` makes every
//! [`pause`] at `<name>` last `<ms>` milliseconds. Several comma-separated entries
//! may be given. Without the feature the variable is ignored.

/// Environment variable that arms failpoints.
pub const ENV: &str = "TALLY_FAILPOINT";

/// Whether this build has failpoints (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Logged when a process arms failpoints. Only a build with the feature that
/// checks a failpoint anywhere ([`hit`] or [`is_armed`]) carries this text:
/// tally-harness recognises such a binary by it.
pub const BUILD_MARKER: &str = "failpoints armed in a failpoint build:";

#[cfg(feature = "failpoints")]
pub use armed::{hit, is_armed, pause};

/// Marks that execution reached failpoint `name`: nothing, in a build without the
/// `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Whether `hit(name)` would count towards an armed failpoint: never, in a build
/// without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn is_armed(_name: &str) -> bool {
    false
}

/// How long the caller should wait at pause point `name`: never, in a build
/// without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn pause(_name: &str) -> Option<std::time::Duration> {
    None
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::Ordering;
    use std::sync::OnceLock;

    use super::{parse, Armed, BUILD_MARKER, ENV};

    fn armed() -> &'static [Armed] {
        static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let spec = std::env::var(ENV).unwrap_or_default();
            let armed = parse(&spec);
            if !armed.is_empty() {
                tracing::warn!("{BUILD_MARKER} {spec}");
            }
            armed
        })
    }

    /// Whether `hit(name)` would count towards an armed failpoint.
    pub fn is_armed(name: &str) -> bool {
        armed().iter().any(|a| a.name == name)
    }

    /// How long the caller should wait at pause point `name` (`<name>~<ms>`).
    pub fn pause(name: &str) -> Option<std::time::Duration> {
        armed()
            .iter()
            .filter(|a| a.name == name)
            .find_map(|a| a.pause_ms)
            .map(std::time::Duration::from_millis)
    }

    /// Marks that execution reached failpoint `name`; aborts the process when it
    /// is armed and this is the hit it is armed for.
    pub fn hit(name: &str) {
        for point in armed().iter().filter(|a| a.name == name) {
            if point.pause_ms.is_some() {
                continue;
            }
            let n = point.hits.fetch_add(1, Ordering::SeqCst) + 1;
            if n == point.fire_at {
                tracing::error!(failpoint = name, hit = n, "failpoint fired: aborting");
                eprintln!("failpoint {name} fired at hit {n}: aborting");
                std::process::abort();
            }
        }
    }
}

/// One entry of [`ENV`]: a failpoint name and the hit it fires at, or how long
/// its pause lasts.
#[cfg(any(test, feature = "failpoints"))]
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))] // `hits`: only `hit` reads it
struct Armed {
    name: String,
    fire_at: u64,
    hits: std::sync::atomic::AtomicU64,
    pause_ms: Option<u64>,
}

#[cfg(any(test, feature = "failpoints"))]
fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            if let Some((name, ms)) = entry.split_once('~') {
                // A duration that does not parse pauses for a second: an armed
                // failpoint must never be silently ignored (nor a count, below).
                return Armed {
                    name: name.trim().to_owned(),
                    fire_at: 0,
                    hits: std::sync::atomic::AtomicU64::new(0),
                    pause_ms: Some(ms.trim().parse().unwrap_or(1000)),
                };
            }
            let (name, fire_at) = match entry.split_once('@') {
                // A count that does not parse fires at the first hit.
                Some((name, n)) => (name, n.trim().parse().unwrap_or(1).max(1)),
                None => (entry, 1),
            };
            Armed {
                name: name.to_owned(),
                fire_at,
                hits: std::sync::atomic::AtomicU64::new(0),
                pause_ms: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_names_and_counts() {
        let parsed = parse(" counter.after_apply , aggregator.before_commit@3,x@junk");
        let view: Vec<(&str, u64)> = parsed
            .iter()
            .map(|a| (a.name.as_str(), a.fire_at))
            .collect();
        assert_eq!(
            view,
            vec![
                ("counter.after_apply", 1),
                ("aggregator.before_commit", 3),
                ("x", 1)
            ]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn pause_specs_parse_durations() {
        let parsed = parse("counter.slow_commit~2500, y~junk, counter.before_commit@2");
        let view: Vec<(&str, Option<u64>)> = parsed
            .iter()
            .map(|a| (a.name.as_str(), a.pause_ms))
            .collect();
        assert_eq!(
            view,
            vec![
                ("counter.slow_commit", Some(2500)),
                ("y", Some(1000)),
                ("counter.before_commit", None)
            ]
        );
    }

    #[test]
    fn unarmed_points_are_inert() {
        // The test process has no TALLY_FAILPOINT naming this point.
        hit("tests.never_armed");
        assert!(!is_armed("tests.never_armed"));
    }

    #[test]
    fn enabled_follows_the_feature() {
        assert_eq!(ENABLED, cfg!(feature = "failpoints"));
    }
}
