//! Failpoints for the fault suite: named places where a service can be made to
//! crash on purpose, compiled into every build but inert unless armed.
//!
//! Invariant: an unarmed failpoint does nothing but compare a name, and an armed one
//! ends the process with `std::process::abort()` — no destructors, no flush, no
//! graceful shutdown — so a test sees exactly what a `kill -9` at that line leaves
//! behind (an open Kafka transaction, Redis writes without an offset commit, ...).
//!
//! Armed through the environment: `TALLY_FAILPOINT=<name>` fires at the first hit of
//! `<name>`, `TALLY_FAILPOINT=<name>@<n>` at the n-th (so a test can let some
//! batches through before the crash). Several comma-separated entries may be given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable that arms failpoints.
pub const ENV: &str = "TALLY_FAILPOINT";

struct Armed {
    name: String,
    fire_at: u64,
    hits: AtomicU64,
}

fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (name, fire_at) = match entry.split_once('@') {
                // A count that does not parse fires at the first hit: an armed
                // failpoint must never be silently ignored.
                Some((name, n)) => (name, n.trim().parse().unwrap_or(1).max(1)),
                None => (entry, 1),
            };
            Armed {
                name: name.to_owned(),
                fire_at,
                hits: AtomicU64::new(0),
            }
        })
        .collect()
}

/// Whether `hit(name)` would count towards an armed failpoint.
pub fn is_armed(name: &str) -> bool {
    armed().iter().any(|a| a.name == name)
}

/// Marks that execution reached failpoint `name`; aborts the process when it is
/// armed and this is the hit it is armed for.
pub fn hit(name: &str) {
    for point in armed().iter().filter(|a| a.name == name) {
        let n = point.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if n == point.fire_at {
            tracing::error!(failpoint = name, hit = n, "failpoint fired: aborting");
            eprintln!("failpoint {name} fired at hit {n}: aborting");
            std::process::abort();
        }
    }
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
    fn unarmed_points_are_inert() {
        // The test process has no TALLY_FAILPOINT naming this point.
        hit("tests.never_armed");
        assert!(!is_armed("tests.never_armed"));
    }
}
