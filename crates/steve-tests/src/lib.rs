//! steve-tests: the harness behind steve's integration tests.
//!
//! The tests run the real `steve` binary and the real clients: GNU make 4.4.1 and ninja 1.13.2
//! (from PyPI, in the virtualenv `scripts/test` makes), Debian's make 4.3, and cargo. Nothing here
//! is a mock: the harness only starts programs, writes build files whose jobs log when they run,
//! and reads the logs.
//!
//! - [`steve`]: builds the binary and runs servers and commands with it;
//! - [`clients`]: finds the real clients, and fails loudly when one is missing;
//! - [`projects`]: Makefiles, ninja files and cargo workspaces whose jobs log start and end;
//! - [`timeline`]: the peak number of jobs running at once, from such a log;
//! - [`pipe`]: counts the tokens in a named pipe by draining it and putting them back;
//! - [`vm`]: a QEMU VM with Debian's kernel, for the CUSE tests and an ordinary user's FUSE mount;
//! - `src/bin/device-scenarios.rs`: the compliance scenarios of the per-process backends, run
//!   inside the VM against cuse and on the host against fuse.

pub mod clients;
pub mod pipe;
pub mod projects;
pub mod steve;
pub mod timeline;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Calls `check` until it returns `Some`, or panics with `what` after `limit`. For waiting on
/// another process (a log line, a file): a liveness bound, not a speed measurement.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program` run as user `uid` and group `gid`, with no supplementary groups (through setpriv,
/// from util-linux, which `scripts/test` installs). The caller must be root.
pub fn command_as(
    uid: u32,
    gid: u32,
    program: impl AsRef<std::ffi::OsStr>,
) -> std::process::Command {
    let mut command = std::process::Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(program);
    command
}

/// Whether `device-scenarios` printed `scenario NAME ok` in `output`; if not, its failure line or
/// that it did not run.
pub fn scenario_outcome(output: &str, name: &str) -> Result<(), String> {
    let prefix = format!("scenario {name} ");
    match output.lines().find(|line| line.starts_with(&prefix)) {
        Some(line) if line == format!("scenario {name} ok") => Ok(()),
        Some(line) => Err(line.to_string()),
        None => Err(format!("scenario {name} did not run")),
    }
}

/// Prints the `figure NAME VALUE` lines of `device-scenarios` output on stderr, under `title`
/// (`--nocapture` shows them).
pub fn print_figures(title: &str, output: &str) {
    eprintln!("{title}; figures:");
    for line in output.lines().filter(|line| line.starts_with("figure ")) {
        eprintln!("  {line}");
    }
}

/// Asserts that a client's run succeeded, showing what it printed if not.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
