//! The local stack's fault controls: `scripts/stack` as functions.
//!
//! Invariant: a node broken through [`RestoreNode`] is started again, and a node
//! put on a small disk through [`RestoreDisk`] is moved back to the real disk,
//! when the guard is dropped, also when the test that broke it panics, so one
//! failing test does not leave the stack broken for the tests after it.

use std::process::Command;

use crate::repo_root;

/// Runs `scripts/stack ARGS…` and returns its stdout; panics with its output on
/// failure.
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

/// A node on a small disk of its own (`scripts/stack disk-limit`) that can be
/// filled and freed; moved back to the real disk (data and all) when dropped.
pub struct RestoreDisk {
    node: String,
}

impl RestoreDisk {
    /// Restarts `node` with its write-ahead directory on a tmpfs with `free_mib`
    /// MiB free beyond its data.
    pub fn limit(node: &str, free_mib: u32) -> Self {
        stack(&["disk-limit", node, &free_mib.to_string()]);
        Self {
            node: node.to_owned(),
        }
    }

    /// Fills the small disk to the last byte.
    pub fn fill(&self) {
        stack(&["disk-fill", &self.node]);
    }

    /// Gives it its room back.
    pub fn free(&self) {
        stack(&["disk-free", &self.node]);
    }
}

impl Drop for RestoreDisk {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/stack"))
            .args(["disk-restore", &self.node])
            .status();
    }
}
