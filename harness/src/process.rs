//! The one supervisor of tally's service binaries (`tally-producer`,
//! `tally-counter`, `tally-aggregator`), for the tests and the benchmark alike.
//!
//! Invariants: a [`ServiceProcess`] is killed (SIGKILL) and reaped when dropped, so
//! a failing test or an aborted benchmark leaves no service running; its stderr
//! goes to its own log file, with plain (not JSON) log lines; and its `/metrics`
//! endpoint listens on a free port (the services' default; an `observe_listen`
//! inherited from this process's environment is not passed on) unless the caller
//! names one, because several services share this host. A service asked to arm a failpoint
//! (`TALLY_FAILPOINT`) is refused when its binary was built without them, rather
//! than run a test that could never fire. A service whose wall clock is to be off
//! ([`skewed_clock_env`]) still runs as the child itself, not under a wrapper, so
//! the kill-on-drop above reaches it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tally_common::Settings;

use crate::{service_config, unique, HarnessError};

/// The directory of the workspace binaries that belong with the running
/// executable: its own directory, or the one above for a test executable (those
/// live in `target/<profile>/deps`).
pub fn bin_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|e| HarnessError::io("locate this executable", e))?;
    let dir = exe.parent().ok_or_else(|| {
        HarnessError::io(
            format!("{} has no directory", exe.display()),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    Ok(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// Path of a workspace binary (`tally-producer`, ...) built next to the running
/// executable; panics when it is not built (a test convenience).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().unwrap_or_else(|e| panic!("{e}")).join(name);
    if !path.exists() {
        panic!("{}", HarnessError::NotBuilt(path));
    }
    path
}

/// Text only a binary with failpoints compiled in carries (logged when it arms
/// them, see `tally_common::failpoint`).
const FAILPOINTS_MARKER: &str = tally_common::failpoint::BUILD_MARKER;

/// Whether `binary` has failpoints compiled in; remembered per path.
fn has_failpoints(binary: &Path) -> Result<bool, HarnessError> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    if let Some(known) = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(binary)
    {
        return Ok(*known);
    }
    let bytes = std::fs::read(binary)
        .map_err(|e| HarnessError::io(format!("read {}", binary.display()), e))?;
    let found = contains(&bytes, FAILPOINTS_MARKER);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(binary.to_path_buf(), found);
    Ok(found)
}

/// Whether `haystack` holds the text `needle`. Text in a binary lies within a
/// run of valid UTF-8, so searching each run with std's (optimised) string search
/// finds it; a debug-built byte-window loop took seconds on a 130 MB binary.
fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .utf8_chunks()
            .any(|chunk| chunk.valid().contains(needle))
}

/// libfaketime's multi-threaded build (the services run many threads), where
/// Debian's `faketime` package puts it: `/usr/lib/<triplet>/faketime/`.
const LIBFAKETIME: &str = "faketime/libfaketimeMT.so.1";

/// The shim preloaded before libfaketime (its comment says why librdkafka needs it).
const FAKETIME_SHIM_C: &str = include_str!("faketime_shim.c");

/// The environment that makes a process started with it read a wall clock
/// `offset_s` seconds off the host's (positive: ahead), through libfaketime:
/// what Debian's `faketime -m --exclude-monotonic -f +30` sets, plus a shim
/// (`faketime_shim.c`, compiled once per test process with the C compiler
/// librdkafka's build needs anyway) that keeps librdkafka's internal waits on the
/// true clock. Given as environment rather than by starting the service under
/// `faketime`, because that wrapper forks and waits: a SIGKILL would hit the
/// wrapper and orphan the service. Only the wall clock moves; the monotonic clock
/// (timers, timeouts) stays true, as on a host whose clock is merely set wrong.
pub fn skewed_clock_env(offset_s: i64) -> Result<Vec<(&'static str, String)>, HarnessError> {
    let library = std::fs::read_dir("/usr/lib")
        .map_err(|e| HarnessError::io("look for libfaketime in /usr/lib", e))?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join(LIBFAKETIME))
        .find(|path| path.is_file())
        .ok_or(HarnessError::NoFaketime)?;
    let shim = faketime_shim()?;
    Ok(vec![
        // The shim first: its two functions win over libfaketime's.
        (
            "LD_PRELOAD",
            format!("{} {}", shim.display(), library.display()),
        ),
        ("FAKETIME", faketime_offset(offset_s)),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ])
}

/// The compiled shim: built on first use, then reused by this process.
fn faketime_shim() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = std::env::temp_dir();
        let source = dir.join(format!("{}.c", unique("tally-faketime-shim")));
        let library = source.with_extension("so");
        std::fs::write(&source, FAKETIME_SHIM_C).map_err(|e| e.to_string())?;
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .output()
            .map_err(|e| format!("run cc: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(library)
    });
    built.clone().map_err(|e| {
        HarnessError::io(
            "compile harness/src/faketime_shim.c",
            std::io::Error::other(e),
        )
    })
}

/// libfaketime's relative offset (`FAKETIME`): a sign, then seconds.
fn faketime_offset(offset_s: i64) -> String {
    format!("{offset_s:+}")
}

/// A service binary running as a child process, killed when dropped.
pub struct ServiceProcess {
    name: String,
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` as the process called `name` with `--config config` and the
    /// `env` overrides (`TALLY__SECTION__KEY` pairs, applied after the defaults:
    /// plain logs, `/metrics` on a free port — the services' own default); its
    /// stderr goes to `log`.
    pub fn spawn<K, V>(
        binary: &Path,
        name: &str,
        config: &Path,
        env: impl IntoIterator<Item = (K, V)>,
        log: PathBuf,
    ) -> Result<Self, HarnessError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_in(None, binary, name, config, env, log)
    }

    /// [`ServiceProcess::spawn`] in the network namespace `netns` (a lab host,
    /// see [`crate::lab`]) when one is given. `ip netns exec` execs the binary, so
    /// the child's pid is the service's and signals reach it.
    pub fn spawn_in<K, V>(
        netns: Option<&str>,
        binary: &Path,
        name: &str,
        config: &Path,
        env: impl IntoIterator<Item = (K, V)>,
        log: PathBuf,
    ) -> Result<Self, HarnessError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let env: Vec<(K, V)> = env.into_iter().collect();
        let arms_failpoint = env
            .iter()
            .any(|(k, _)| k.as_ref() == tally_common::failpoint::ENV);
        if arms_failpoint && !has_failpoints(binary)? {
            return Err(HarnessError::NoFailpoints(binary.to_path_buf()));
        }
        let file = std::fs::File::create(&log)
            .map_err(|e| HarnessError::io(log.display().to_string(), e))?;
        let mut cmd = match netns {
            Some(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", netns]).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("--config")
            .arg(config)
            .env("TALLY__LOG__FORMAT", "plain")
            // Several services share this host (and tests run side by side): the
            // default, any free port for /metrics, unless the caller names one in
            // `env`.
            .env_remove("TALLY__PRODUCER__OBSERVE_LISTEN")
            .env_remove("TALLY__COUNTER__OBSERVE_LISTEN")
            .env_remove("TALLY__AGGREGATOR__OBSERVE_LISTEN")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("start {}", binary.display()), e))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Starts the built `binary_name` with the local stack's config and `env`
    /// overrides; the log goes to a fresh temp file. Panics on failure (a test
    /// convenience).
    pub fn start(binary_name: &str, env: &[(&str, String)]) -> Self {
        Self::start_in(None, binary_name, env)
    }

    /// [`ServiceProcess::start`] in the network namespace `netns`, if given.
    pub fn start_in(netns: Option<&str>, binary_name: &str, env: &[(&str, String)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(binary_name)));
        let env = env.iter().map(|(k, v)| (*k, v.as_str()));
        let config = service_config(binary_name);
        Self::spawn_in(netns, &binary(binary_name), binary_name, &config, env, log)
            .unwrap_or_else(|e| panic!("start {binary_name}: {e}"))
    }

    /// The environment overrides that point a service at `settings`' brokers,
    /// Redis nodes, prefix, topics and groups ([`Settings::pipeline_env`]).
    pub fn env_for(settings: &Settings) -> Vec<(&'static str, String)> {
        settings.pipeline_env()
    }

    /// The name it was started as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Ok` while it runs; [`HarnessError::Exited`] once it has exited.
    pub fn running(&mut self) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
            }),
            Err(e) => Err(HarnessError::io(format!("wait for {}", self.name), e)),
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`); panics if `kill` fails.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Where its `/metrics` endpoint listens, from its startup log line.
    pub fn metrics_addr(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        metrics_addr_in(&text)
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        last_lines(&self.log_text(), 40)
    }

    /// The whole log so far (empty if it cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `host:port` of the first `metrics on http://host:port/...` in a log.
fn metrics_addr_in(log: &str) -> Option<String> {
    const START: &str = "metrics on http://";
    let start = log.find(START)? + START.len();
    let end = start + log[start..].find('/')?;
    Some(log[start..end].to_owned())
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_comes_from_the_startup_line() {
        let log = "INFO starting\nINFO metrics on http://127.0.0.1:40123/metrics\nINFO metrics on http://x:1/";
        assert_eq!(metrics_addr_in(log).as_deref(), Some("127.0.0.1:40123"));
        assert_eq!(metrics_addr_in("INFO metrics on http://127.0.0.1:1"), None);
        assert_eq!(metrics_addr_in(""), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&text, 40);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 50"), "{tail}");
        assert_eq!(last_lines("a\nb", 40), "a\nb");
    }

    #[test]
    fn bin_dir_skips_the_deps_directory() {
        // This unit test runs from target/<profile>/deps.
        let dir = bin_dir().expect("bin dir");
        assert_ne!(dir.file_name().and_then(|n| n.to_str()), Some("deps"));
    }

    #[test]
    fn text_is_found_between_invalid_bytes() {
        assert!(contains(b"\xff\xfeab marker here\x00\xc3", "marker here"));
        assert!(!contains(b"marker\xff here", "marker here"));
        assert!(!contains(b"anything", ""));
    }

    #[test]
    fn failpoints_are_detected_in_a_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = dir.path().join("with");
        let without = dir.path().join("without");
        let mut binary = b"\x7fELF...".to_vec();
        binary.extend_from_slice(FAILPOINTS_MARKER.as_bytes());
        binary.extend_from_slice(b"...");
        std::fs::write(&with, binary).expect("write");
        std::fs::write(&without, b"\x7fELF...failpoint...").expect("write");
        assert!(has_failpoints(&with).expect("read"));
        assert!(!has_failpoints(&without).expect("read"));
        assert!(has_failpoints(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn clock_offsets_carry_their_sign() {
        assert_eq!(faketime_offset(30), "+30");
        assert_eq!(faketime_offset(-30), "-30");
        assert_eq!(faketime_offset(0), "+0");
    }

    #[test]
    fn arming_a_failpoint_needs_a_binary_that_has_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain-service");
        std::fs::write(&plain, b"no failpoints here").expect("write");
        let err = ServiceProcess::spawn(
            &plain,
            "plain",
            &dir.path().join("tally.toml"),
            [(tally_common::failpoint::ENV, "counter.after_apply")],
            dir.path().join("plain.log"),
        )
        .err()
        .expect("refused");
        assert!(matches!(err, HarnessError::NoFailpoints(_)), "{err}");
    }
}
