//! steve-tests: the harness behind steve's integration tests.
//!
//! The tests run the real `steve` binary and the real clients: GNU make 4.4.1 and ninja 1.13.2
//! (from PyPI, in the virtualenv `scripts/test` makes), Debian's make 4.3, and cargo. Nothing here
//! is a mock: the harness only starts programs, writes build files whose jobs log when they run,
//! and reads the logs.
//!
//! - [`capi`]: installs the C library and compiles C programs against it;
//! - [`steve`]: builds the binary and runs servers and commands with it;
//! - [`clients`]: finds the real clients, and fails loudly when one is missing;
//! - [`projects`]: Makefiles, ninja files and cargo workspaces whose jobs log start and end;
//! - [`timeline`]: the peak number of jobs running at once, from such a log;
//! - [`pipe`]: counts the tokens in a named pipe by draining it and putting them back;
//! - [`terminal`]: a real terminal (tmux) to run a command in and read its screen;
//! - [`vm`]: a QEMU VM with Debian's kernel, for the CUSE tests and an ordinary user's FUSE mount;
//! - `src/bin/compliance/`: the compliance suite, one list of scenarios run against every
//!   backend each applies to (fifo and fuse on the host, cuse inside the VM), which
//!   `tests/compliance.rs` makes one test each of.
//!
//! `cargo test` works without root, QEMU or the real clients: the tests that need them are
//! ignored unless `STEVE_TEST_ALL=1` ([`run_everything`]), which `scripts/test` sets; with it, a
//! missing prerequisite fails the test that needs it.

pub mod capi;
pub mod clients;
pub mod pipe;
pub mod projects;
pub mod steve;
pub mod terminal;
pub mod timeline;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Whether every test is to run, those that need root, QEMU and the real clients included
/// (`STEVE_TEST_ALL=1`, as `scripts/test` sets). The integration tests read the same variable
/// when they are built (`build.rs` turns it into `cfg(steve_test_all)`).
pub fn run_everything() -> bool {
    std::env::var_os("STEVE_TEST_ALL").is_some_and(|value| value == "1")
}

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

/// An ordinary local user made for the tests (`steve-attacker`, a system user without a home
/// or a login shell), created on first use with useradd: the tests that play a local user
/// against root's daemon run as it. Its uid and gid. The caller must be root.
pub fn attacker() -> (u32, u32) {
    static USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *USER.get_or_init(|| {
        const NAME: &str = "steve-attacker";
        if nix::unistd::User::from_name(NAME).ok().flatten().is_none() {
            let created = std::process::Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME])
                .status()
                .expect("run useradd (package passwd; the tests need root)");
            assert!(created.success(), "useradd {NAME} failed: the tests need root");
        }
        let user = nix::unistd::User::from_name(NAME).unwrap().expect("the user just made");
        (user.uid.as_raw(), user.gid.as_raw())
    })
}

/// Seconds of CPU the process `pid` has used so far (user and system, from `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("comm in parentheses") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    ticks as f64 / per_second
}

/// Whether the `compliance` program printed `scenario NAME ok` in `output`; if not, its failure line or
/// that it did not run.
pub fn scenario_outcome(output: &str, name: &str) -> Result<(), String> {
    let prefix = format!("scenario {name} ");
    match output.lines().find(|line| line.starts_with(&prefix)) {
        Some(line) if line == format!("scenario {name} ok") => Ok(()),
        Some(line) => Err(line.to_string()),
        None => Err(format!("scenario {name} did not run")),
    }
}

/// Prints the `figure NAME VALUE` lines of the `compliance` program's output on stderr, under `title`
/// (`--nocapture` shows them).
pub fn print_figures(title: &str, output: &str) {
    eprintln!("{title}; figures:");
    for line in output.lines().filter(|line| line.starts_with("figure ")) {
        eprintln!("  {line}");
    }
}

/// Runs `command` to the end and returns what it printed, or `None` if it was still running
/// after `limit` (it is killed then, with every process it started: it runs in a process group
/// of its own): for a command that must refuse and exit, which would otherwise hang the test by
/// serving, or a build that must not hang.
pub fn output_within(command: &mut std::process::Command, limit: Duration) -> Option<Output> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn().ok()?;
    let deadline = Instant::now() + limit;
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().ok()
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

/// A child killed and reaped when dropped, so that a failing test leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
