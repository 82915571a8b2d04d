//! The Redis schema inside the keys: hash and stream field names, the claim
//! script's modes and the error markers the Lua scripts raise. Key names live in
//! [`crate::keys`]; everything a key holds is spelled here.
//!
//! Invariant: the Lua scripts in `lua/` and the Rust code use the same names. The
//! scripts cannot import these constants, so a unit test reads the scripts' text
//! and checks both directions: every field, mode and marker a script uses is a
//! constant here, and every constant is used by the scripts that should use it.
//! A rename on one side alone fails that test.

/// Fields of the hash `tally:c:{id}:meta` (see [`crate::keys::Keys::client_meta`]).
pub mod meta {
    /// The owning producer instance; empty when released.
    pub const OWNER: &str = "owner";
    /// The fencing epoch, raised by every claim.
    pub const EPOCH: &str = "epoch";
    /// The last assigned sequence number.
    pub const SN: &str = "sn";
    /// The highest sn confirmed in Kafka without gaps.
    pub const FLUSHED: &str = "flushed";
    /// All fields, in the order [`crate::stash::StashMeta`] reads them.
    pub const ALL: [&str; 4] = [OWNER, EPOCH, SN, FLUSHED];
}

/// Fields of an entry of the stream `tally:c:{id}:stash`: one entry per stashed
/// batch, its id `<last sn>-0` (see [`crate::stash::StashStore::read`]).
pub mod stash_entry {
    /// The batch's message texts in sn order, joined by [`SEPARATOR`].
    pub const MESSAGE: &str = "m";
    /// Between two messages of [`MESSAGE`]; a message never holds one (the
    /// protocol ends a line there).
    pub const SEPARATOR: char = '\n';
    /// When it was stored, ms since the Unix epoch.
    pub const TIMESTAMP: &str = "t";
}

/// Fields of a message's hash `tally:m:{bucket}<hash>` (see
/// [`crate::keys::Keys::message`]), written by `count_messages.lua`.
pub mod message {
    /// Times the message was counted over all clients: `HGET <key> count`.
    pub const COUNT: &str = "count";
    /// The message text, written with its first count.
    pub const TEXT: &str = "text";
    /// Prefix of a client's dedup mark, `sn:<client>`: the highest sn of that
    /// client counted for this message.
    pub const MARK_PREFIX: &str = "sn:";
    /// A client's mark field.
    pub fn mark(client: &str) -> String {
        format!("{MARK_PREFIX}{client}")
    }
}

/// Modes of `stash_claim.lua` (its `ARGV[2]`).
pub mod claim_mode {
    /// The client connected here: always wins, fencing any previous owner.
    pub const TAKE: &str = "take";
    /// Take over from an expected owner at an expected epoch (compare-and-set).
    pub const ADOPT: &str = "adopt";
}

/// Error codes the scripts raise with `redis.error_reply` on purpose; nothing was
/// written when one comes back. [`crate::redis::RedisOpError`] classifies them.
pub mod refusal {
    /// What every tally script error code starts with; other codes come from Redis.
    pub const PREFIX: &str = "TALLY_";
    /// The caller is not the stash's owner at its epoch: another claim came since
    /// (reported as [`crate::redis::RedisOpError::Fenced`]).
    pub const FENCED: &str = "TALLY_FENCED";
    /// The caller's idea of the last sn is not the stored one.
    pub const SN_MISMATCH: &str = "TALLY_SN_MISMATCH";
    /// An argument the script cannot use (not a number, unknown mode, …).
    pub const BAD_ARGUMENT: &str = "TALLY_BAD_ARGUMENT";
    /// Every marker.
    pub const ALL: [&str; 3] = [FENCED, SN_MISMATCH, BAD_ARGUMENT];
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{claim_mode, message, meta, refusal, stash_entry};

    const STASH_APPEND: &str = include_str!("lua/stash_append.lua");
    const STASH_CLAIM: &str = include_str!("lua/stash_claim.lua");
    const STASH_FLUSHED: &str = include_str!("lua/stash_flushed.lua");
    const STASH_RELEASE: &str = include_str!("lua/stash_release.lua");
    const COUNT_CLIENT: &str = include_str!("lua/count_client.lua");
    const COUNT_MESSAGES: &str = include_str!("lua/count_messages.lua");

    /// The code lines of a script (comments hold prose that may name anything).
    fn code(script: &str) -> impl Iterator<Item = &str> {
        script
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("--"))
    }

    /// The arguments of every `redis.call('<command>', <key>, …)` in the script,
    /// split at top-level commas, after the key.
    fn calls(script: &str, command: &str, key: &str) -> Vec<Vec<String>> {
        let opening = format!("redis.call('{command}', {key}, ");
        code(script)
            .filter_map(|line| {
                let start = line.find(&opening)? + opening.len();
                let rest = &line[start..];
                let end = rest.rfind(')')?;
                Some(
                    rest[..end]
                        .split(", ")
                        .map(|arg| arg.trim().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    /// A Lua string literal's text, or `None` for an expression.
    fn literal(arg: &str) -> Option<&str> {
        arg.strip_prefix('\'')?.strip_suffix('\'')
    }

    fn literals(args: &[String]) -> Vec<&str> {
        args.iter()
            .map(|arg| literal(arg).unwrap_or_else(|| panic!("{arg} is not a literal")))
            .collect()
    }

    /// Field names of `HSET key f1 v1 f2 v2 …` / `XADD key id f1 v1 …`: every
    /// other argument, each a literal.
    fn field_names(args: &[String]) -> Vec<&str> {
        args.iter()
            .step_by(2)
            .map(|arg| literal(arg).unwrap_or_else(|| panic!("field {arg} is not a literal")))
            .collect()
    }

    fn markers(script: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in code(script) {
            let mut rest = line;
            while let Some(at) = rest.find(refusal::PREFIX) {
                let marker: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                rest = &rest[at + marker.len()..];
                found.insert(marker);
            }
        }
        found
    }

    #[test]
    fn scripts_read_the_meta_fields_declared_here() {
        let all = meta::ALL.to_vec();
        for (name, script, expected) in [
            ("stash_claim", STASH_CLAIM, all.clone()),
            ("stash_flushed", STASH_FLUSHED, all.clone()),
            ("stash_release", STASH_RELEASE, all.clone()),
            (
                "stash_append",
                STASH_APPEND,
                vec![meta::OWNER, meta::EPOCH, meta::SN],
            ),
        ] {
            let reads = calls(script, "HMGET", "KEYS[1]");
            assert_eq!(reads.len(), 1, "{name}: one HMGET of meta");
            assert_eq!(literals(&reads[0]), expected, "{name}: HMGET fields");
        }
    }

    #[test]
    fn scripts_write_the_meta_fields_declared_here() {
        for (name, script, expected) in [
            ("stash_append", STASH_APPEND, vec![meta::SN]),
            (
                "stash_claim",
                STASH_CLAIM,
                vec![meta::OWNER, meta::EPOCH, meta::SN, meta::FLUSHED],
            ),
            ("stash_flushed", STASH_FLUSHED, vec![meta::FLUSHED]),
            ("stash_release", STASH_RELEASE, vec![meta::OWNER]),
        ] {
            let writes = calls(script, "HSET", "KEYS[1]");
            assert_eq!(writes.len(), 1, "{name}: one HSET of meta");
            assert_eq!(field_names(&writes[0]), expected, "{name}: HSET fields");
        }
        // Every meta field is written by some script.
        let scripts = [STASH_APPEND, STASH_CLAIM, STASH_FLUSHED, STASH_RELEASE];
        let writes: Vec<Vec<String>> = scripts
            .iter()
            .flat_map(|s| calls(s, "HSET", "KEYS[1]"))
            .collect();
        let written: BTreeSet<&str> = writes.iter().flat_map(|w| field_names(w)).collect();
        assert_eq!(written, meta::ALL.into_iter().collect());
    }

    #[test]
    fn stash_entries_carry_the_fields_declared_here() {
        let appends = calls(STASH_APPEND, "XADD", "KEYS[2]");
        assert_eq!(appends.len(), 1, "one XADD");
        // The entry id first, then field/value pairs.
        assert_eq!(
            field_names(&appends[0][1..]),
            [stash_entry::MESSAGE, stash_entry::TIMESTAMP]
        );
    }

    #[test]
    fn the_message_script_uses_the_message_fields_declared_here() {
        // Every string literal of the code that is not a Redis command or an
        // error reply is a field of the message hash.
        let mut literals = BTreeSet::new();
        for line in code(COUNT_MESSAGES) {
            let mut parts = line.split('\'');
            parts.next();
            while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
                literals.insert(inside.to_owned());
            }
        }
        // Commands, the count's format and the value of a missing count or mark.
        for command in ["HMGET", "HSET", "%d", "0"] {
            literals.remove(command);
        }
        literals.retain(|l| !l.starts_with(refusal::PREFIX));
        let declared: BTreeSet<String> = [message::COUNT, message::TEXT, message::MARK_PREFIX]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(literals, declared);
        assert_eq!(message::mark("c-1"), "sn:c-1");
    }

    #[test]
    fn the_claim_script_knows_the_modes_declared_here() {
        let modes: BTreeSet<&str> = code(STASH_CLAIM)
            .flat_map(|line| {
                ["ARGV[2] == ", "ARGV[2] ~= "]
                    .into_iter()
                    .filter_map(move |op| {
                        let start = line.find(op)? + op.len();
                        let rest = &line[start..];
                        let end = rest[1..].find('\'')? + 2;
                        literal(&rest[..end])
                    })
            })
            .collect();
        assert_eq!(
            modes,
            [claim_mode::TAKE, claim_mode::ADOPT].into_iter().collect()
        );
    }

    #[test]
    fn scripts_raise_only_the_markers_declared_here() {
        let expect = |markers: &[&str]| -> BTreeSet<String> {
            markers.iter().map(|m| (*m).to_owned()).collect()
        };
        let table = [
            (
                "stash_append",
                STASH_APPEND,
                expect(&[refusal::FENCED, refusal::SN_MISMATCH, refusal::BAD_ARGUMENT]),
            ),
            ("stash_claim", STASH_CLAIM, expect(&[refusal::BAD_ARGUMENT])),
            (
                "stash_flushed",
                STASH_FLUSHED,
                expect(&[refusal::FENCED, refusal::BAD_ARGUMENT]),
            ),
            ("stash_release", STASH_RELEASE, expect(&[])),
            (
                "count_client",
                COUNT_CLIENT,
                expect(&[refusal::BAD_ARGUMENT]),
            ),
            (
                "count_messages",
                COUNT_MESSAGES,
                expect(&[refusal::BAD_ARGUMENT]),
            ),
        ];
        let mut used = BTreeSet::new();
        for (name, script, expected) in table {
            let found = markers(script);
            assert_eq!(found, expected, "{name}: error markers");
            used.extend(found);
        }
        assert_eq!(
            used,
            expect(&refusal::ALL),
            "every marker is raised somewhere"
        );
        for marker in refusal::ALL {
            assert!(marker.starts_with(refusal::PREFIX), "{marker}");
        }
    }
}
