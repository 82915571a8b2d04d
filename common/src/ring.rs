//! Consistent-hash ring that splits a dead producer's clients over the survivors.
//!
//! Invariant: every live instance computes the same owner for a client from the
//! same set of live instances, with no coordination, so each orphaned client is
//! adopted by exactly one survivor (the compare-and-set on the stash's owner and
//! epoch settles any disagreement caused by differing views of who is alive). When
//! an instance joins or leaves, only the clients it gains or loses move.

/// Virtual nodes per instance: enough to keep the split within a few percent.
pub const DEFAULT_VNODES: u32 = 160;

/// MurmurHash3 (x86, 32-bit, seed 0) of `bytes`.
pub fn murmur3(bytes: &[u8]) -> u32 {
    // Reading from a byte slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap_or_default()
}

/// A ring of instances, each placed at `vnodes` points.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u32, usize)>,
    nodes: Vec<String>,
}

impl Ring {
    /// Builds the ring; node order and duplicates do not matter.
    pub fn new<I, S>(nodes: I, vnodes: u32) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        nodes.sort();
        nodes.dedup();
        let mut points: Vec<(u32, usize)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| {
                (0..vnodes).map(move |v| (murmur3(format!("{node}#{v}").as_bytes()), i))
            })
            .collect();
        // Ties (rare) resolve by node name order, identically everywhere.
        points.sort_unstable();
        Self { points, nodes }
    }

    /// The instance owning `key`: the first point clockwise from the key's hash.
    pub fn owner(&self, key: &str) -> Option<&str> {
        let h = murmur3(key.as_bytes());
        let i = self.points.partition_point(|&(p, _)| p < h);
        let (_, node) = self.points.get(i).or_else(|| self.points.first())?;
        self.nodes.get(*node).map(String::as_str)
    }

    /// The instances on the ring.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn keys() -> Vec<String> {
        (0..30_000).map(|i| format!("client-{i}")).collect()
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3(b""), 0);
        assert_eq!(murmur3(b"hello"), 0x248b_fa47);
        assert_eq!(
            murmur3(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    #[test]
    fn empty_ring_owns_nothing() {
        assert_eq!(
            Ring::new(Vec::<String>::new(), DEFAULT_VNODES).owner("a"),
            None
        );
    }

    #[test]
    fn split_is_balanced() {
        let ring = Ring::new(["p-1", "p-2", "p-3"], DEFAULT_VNODES);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in &keys() {
            *counts.entry(ring.owner(k).expect("owner")).or_default() += 1;
        }
        let mean = 30_000.0 / 3.0;
        for (node, n) in &counts {
            let deviation = (*n as f64 - mean).abs() / mean;
            assert!(
                deviation < 0.15,
                "{node} owns {n}, {deviation:.2} off the mean"
            );
        }
        assert_eq!(counts.len(), 3);
    }

    #[test]
    fn same_view_same_owner_whatever_the_order() {
        let a = Ring::new(["p-1", "p-2", "p-3"], DEFAULT_VNODES);
        let b = Ring::new(["p-3", "p-1", "p-2", "p-1"], DEFAULT_VNODES);
        for k in keys().iter().take(1000) {
            assert_eq!(a.owner(k), b.owner(k));
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys() {
        let before = Ring::new(["p-1", "p-2", "p-3", "p-4"], DEFAULT_VNODES);
        let after = Ring::new(["p-1", "p-2", "p-4"], DEFAULT_VNODES);
        let mut moved = 0;
        for k in &keys() {
            let (b, a) = (before.owner(k), after.owner(k));
            if b != a {
                assert_eq!(b, Some("p-3"), "{k} moved from {b:?} though p-3 left");
                moved += 1;
            }
        }
        let share = moved as f64 / 30_000.0;
        assert!((0.15..0.35).contains(&share), "{share:.2} of keys moved");
    }

    #[test]
    fn a_joining_node_takes_keys_only_for_itself() {
        let before = Ring::new(["p-1", "p-2", "p-3"], DEFAULT_VNODES);
        let after = Ring::new(["p-1", "p-2", "p-3", "p-4"], DEFAULT_VNODES);
        for k in &keys() {
            let (b, a) = (before.owner(k), after.owner(k));
            if b != a {
                assert_eq!(a, Some("p-4"), "{k} moved from {b:?} to {a:?}");
            }
        }
    }
}
