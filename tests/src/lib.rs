//! Helpers for tests that run against the real local stack (`scripts/stack up`):
//! settings for it, unique names per run, and the stack's fault controls.
//!
//! Tests in this crate need the stack; `scripts/test` starts it. Every test names
//! its own keys and topics with [`unique`], so tests never see each other's data
//! and need no cleanup between runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use tally_common::Settings;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Settings for the local stack: `deploy/local/tally.toml`, then `TALLY__…`
/// environment overrides (how `scripts/test` passes non-default ports).
pub fn settings() -> Settings {
    let path = repo_root().join("deploy/local/tally.toml");
    match Settings::load(Some(&path)) {
        Ok(s) => s,
        Err(e) => panic!("cannot load {}: {e}", path.display()),
    }
}

/// A name no other test run uses: `<what>-<pid>-<nanos>`.
pub fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{what}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Runs `scripts/stack ARGS…` and returns its stdout; panics with its output on failure.
pub fn stack(args: &[&str]) -> String {
    let output = Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/stack: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/stack {} failed ({}):\n{stdout}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Restarts a killed or paused node when dropped, so a failing test does not leave
/// the stack broken for the tests after it.
pub struct RestoreNode {
    node: String,
    restored: bool,
}

impl RestoreNode {
    /// Kills `node` (SIGKILL) and arms the restart.
    pub fn kill(node: &str) -> Self {
        stack(&["kill", node]);
        Self {
            node: node.to_owned(),
            restored: false,
        }
    }

    /// Starts the node again and waits until the whole stack is healthy.
    pub fn restore(mut self) {
        self.restored = true;
        stack(&["start", &self.node]);
        stack(&["wait-healthy", "120"]);
    }
}

impl Drop for RestoreNode {
    fn drop(&mut self) {
        if !self.restored {
            let _ = Command::new(repo_root().join("scripts/stack"))
                .args(["start", &self.node])
                .status();
        }
    }
}

/// One node of the Redis Cluster as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// `ip:port` of its client port.
    pub addr: String,
    /// Whether it is a master.
    pub master: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || fields[2].contains("fail") {
                return None;
            }
            let addr = fields[1].split('@').next()?.to_string();
            let master = fields[2].split(',').any(|f| f == "master");
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                addr,
                master,
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}
