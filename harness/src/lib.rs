//! Support for programs that drive tally on the local stack (`scripts/stack up`):
//! the integration and fault tests (`tally-tests`) and the benchmark
//! (`tally-bench`).
//!
//! Invariant: this crate is a plain library. It links no service crate, no test
//! framework and no failpoint (it never enables `tally-common/failpoints`), so a
//! release binary may depend on it without carrying test-only code; it starts the
//! *built* service binaries as processes instead.
//!
//! - [`process`]: the one supervisor of the service binaries ([`ServiceProcess`]).
//! - [`stack`]: `scripts/stack` as functions, [`RestoreNode`], which heals a
//!   node a test broke even when the test fails, and [`RestoreDisk`] (full disks).
//! - [`isolation`]: settings of the local stack, names no other run uses, and
//!   per-run topics, so runs never see each other's data.
//! - [`net`]: free ports and waiting for a listener.
//! - [`lab`]: the network lab (`scripts/stack --lab`): lab hosts for services and
//!   link faults between hosts.

pub mod isolation;
pub mod lab;
pub mod net;
pub mod process;
pub mod stack;

use std::path::{Path, PathBuf};

pub use isolation::{create_topics, isolated_settings, settings, unique};
pub use lab::{Host, Lab, LinkFaults};
pub use net::{free_port, wait_listening};
pub use process::{bin_dir, binary, skewed_clock_env, ServiceProcess};
pub use stack::{stack, RestoreDisk, RestoreNode};

/// Why a harness step failed (the functions that return it are the ones a
/// release binary uses; test conveniences panic with the same message instead).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file, directory or process could not be read, written or started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A service process exited while it was expected to run.
    #[error("{name} exited ({status}); see {}", log.display())]
    Exited {
        /// The process's name.
        name: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// A binary is not where the running executable's directory says it is.
    #[error("{} not built: run `cargo build --workspace --bins` first (scripts/test does)", .0.display())]
    NotBuilt(PathBuf),
    /// A failpoint was to be armed in a binary built without the `failpoints`
    /// feature, where it could never fire.
    #[error("{} has no failpoints compiled in, yet TALLY_FAILPOINT is set: build the services with `cargo build --workspace --bins` (tally-tests turns on tally-common/failpoints) or `--features tally-common/failpoints`", .0.display())]
    NoFailpoints(PathBuf),
    /// A service was to run with a skewed clock, but libfaketime is not installed.
    #[error("libfaketime not found under /usr/lib/*/faketime/: install Debian's faketime package")]
    NoFaketime,
}

impl HarnessError {
    /// An IO error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// The repository root (where `scripts/` and `deploy/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Set by `scripts/stack --secure env`: the secure stack's folder of tally configs,
/// `tally.toml` (its admin user) and one `<service binary>.toml` per service (its
/// least-privilege user).
pub const STACK_CONFIG_DIR_ENV: &str = "TALLY_STACK_CONFIG_DIR";

/// The local stack's configuration: `deploy/local/tally.toml`, or the secure
/// stack's admin config when [`STACK_CONFIG_DIR_ENV`] is set.
pub fn local_config() -> PathBuf {
    match secure_config_dir() {
        Some(dir) => dir.join("tally.toml"),
        None => repo_root().join("deploy/local/tally.toml"),
    }
}

/// The configuration a service binary runs with on the local stack: its own
/// least-privilege config on the secure stack, else [`local_config`].
pub fn service_config(binary_name: &str) -> PathBuf {
    secure_config_dir()
        .map(|dir| dir.join(format!("{binary_name}.toml")))
        .filter(|path| path.is_file())
        .unwrap_or_else(local_config)
}

/// The secure stack's config folder, when the tests run against it.
pub fn secure_config_dir() -> Option<PathBuf> {
    std::env::var_os(STACK_CONFIG_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}
