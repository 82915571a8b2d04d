//! A `tally` command whose stdout reader went away (`tally top | head -2`) ends
//! normally: exit 0, no panic. Runs the built binary with stdout a pipe whose
//! reading end is closed before the command prints anything.

use std::process::{Command, Stdio};

fn run_with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/tally.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    // Close the reading end at once: the child is still starting up, so its first
    // write finds a pipe nobody reads (EPIPE).
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for tally");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_normal_end() {
    for args in [&["config", "show"][..], &["config", "check"][..]] {
        let (code, stderr) = run_with_closed_stdout(args);
        assert!(!stderr.contains("panicked"), "tally {args:?}: {stderr}");
        assert_eq!(code, Some(0), "tally {args:?}: {stderr}");
    }
}
