//! The local stack's fault controls: `scripts/stack` as functions.
//!
//! Invariant: a node broken through [`RestoreNode`] is started again when the
//! guard is dropped, also when the test that broke it panics, so one failing test
//! does not leave the stack broken for the tests after it.

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
