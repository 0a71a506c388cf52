//! The `steve` binary under test: built once per test run with cargo, so the tests always run
//! the code in the working tree, and started as a server or a command runner.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{clients, wait_for};

/// The cargo output folder the tests run from (target/debug or target/release): test binaries
/// live in its `deps`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// `cargo build ARGS` in the tests' own profile, so that a test runs the working tree's code;
/// panics naming `what` if the build fails. Returns the profile folder.
pub fn cargo_build(args: &[&str], what: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let mut build = Command::new(clients::cargo());
    build.args(["build", "--quiet"]).args(args);
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    assert!(build.status().expect("run cargo build").success(), "cargo build of {what} failed");
    profile_dir
}

/// The path of the freshly built `steve` binary.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| cargo_build(&["-p", "steve-cli", "--bin", "steve"], "steve").join("steve"))
}

/// The path of steve-core's example `name` (`crates/steve-core/examples/NAME.rs`), built now
/// with cargo so that the test runs the working tree's code.
pub fn example(name: &str) -> PathBuf {
    let what = format!("example {name}");
    cargo_build(&["-p", "steve-core", "--example", name], &what).join("examples").join(name)
}

/// A `steve` command, ready for arguments.
pub fn command() -> Command {
    Command::new(binary())
}

/// The non-empty lines a finished command wrote to stderr.
pub fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A running `steve serve --backend fifo`, stopped with SIGTERM when dropped.
#[derive(Debug)]
pub struct FifoServer {
    child: Option<Child>,
    /// The named pipe it serves.
    pub path: PathBuf,
    /// The MAKEFLAGS value it announced.
    pub makeflags: String,
    /// The control socket it announced.
    pub control: PathBuf,
    /// Its log (stderr).
    pub log_path: PathBuf,
    /// The folder of the pipe and the log, when the server made its own.
    _dir: Option<tempfile::TempDir>,
}

/// How a server failed to start: its exit status and what it wrote to stderr.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status.
    pub status: ExitStatus,
    /// Its stderr, line by line, blank lines left out.
    pub stderr_lines: Vec<String>,
}

impl FifoServer {
    /// Serves `jobs` tokens on a pipe in a new temporary folder.
    pub fn start(jobs: u32) -> FifoServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobserver");
        let log = dir.path().join("steve.log");
        let mut server = FifoServer::start_at(&path, &log, &["-j", &jobs.to_string()])
            .unwrap_or_else(|failure| panic!("steve serve failed: {failure:?}"));
        server._dir = Some(dir);
        server
    }

    /// Serves on `path` with `args` added, logging to `log`; waits until it announces itself.
    pub fn start_at(path: &Path, log: &Path, args: &[&str]) -> Result<FifoServer, StartFailure> {
        let mut serve = command();
        serve.args(["serve", "--backend", "fifo", "--path"]).arg(path).args(args);
        FifoServer::start_command(serve, path, log)
    }

    /// Starts `serve`, a `steve serve --backend fifo --path PATH ...` command (perhaps behind a
    /// wrapper such as prlimit, which execs it), logging to `log`; waits until it announces
    /// itself.
    pub fn start_command(
        mut serve: Command,
        path: &Path,
        log: &Path,
    ) -> Result<FifoServer, StartFailure> {
        let mut child = serve
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log).expect("create the log"))
            .spawn()
            .expect("start steve serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).expect("read steve's announcement");
        let Some(makeflags) = first_line
            .trim_end()
            .strip_prefix("MAKEFLAGS='")
            .and_then(|rest| rest.strip_suffix('\''))
        else {
            let status = child.wait().expect("wait for steve");
            let log_text = fs::read_to_string(log).unwrap_or_default();
            let stderr_lines =
                log_text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
            return Err(StartFailure { status, stderr_lines });
        };
        let mut second_line = String::new();
        stdout.read_line(&mut second_line).expect("read steve's control socket");
        let control = second_line
            .trim_end()
            .strip_prefix("STEVE_CONTROL='")
            .and_then(|rest| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("no control socket announced: {second_line:?}"));
        Ok(FifoServer {
            child: Some(child),
            path: path.to_path_buf(),
            makeflags: makeflags.to_string(),
            control: PathBuf::from(control),
            log_path: log.to_path_buf(),
            _dir: None,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`, and returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for(&format!("{needle:?} in the steve log"), Duration::from_secs(20), || {
            self.log().lines().find(|line| line.contains(needle)).map(str::to_string)
        })
    }

    /// The tokens in the pipe now.
    pub fn tokens(&self) -> usize {
        crate::pipe::count_tokens(&self.path)
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal steve");
    }

    /// Stops the server with `signal` and returns its exit status.
    pub fn stop_with(mut self, signal: Signal) -> ExitStatus {
        self.signal(signal);
        self.child.take().expect("running").wait().expect("wait for steve")
    }

    /// `steve ARGS --control SOCKET` against this server, run to the end.
    pub fn ctl(&self, args: &[&str]) -> Output {
        command().args(args).arg("--control").arg(&self.control).output().expect("run steve")
    }

    /// The server's status report as JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let output = self.ctl(&["status", "--json"]);
        assert!(
            output.status.success(),
            "steve status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    /// A make, ninja or cargo command pointed at this server.
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("MAKEFLAGS", &self.makeflags)
            .env_remove("MFLAGS")
            .env_remove("CARGO_MAKEFLAGS");
        command
    }
}

impl Drop for FifoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

/// A server stopped with SIGTERM and waited for when dropped, so that a failing test leaves no
/// server (or mount) behind.
#[derive(Debug)]
pub struct StopOnDrop(pub Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// A fuse server with `jobs` tokens mounted on `mountpoint` (whose parent holds its control
/// socket), announced and ready; stopped however the test ends. Its jobserver file and control
/// socket.
pub fn fuse_server(mountpoint: &Path, jobs: u32) -> (StopOnDrop, PathBuf, PathBuf) {
    fuse_server_with(mountpoint, &["-j".into(), jobs.to_string().into()], None)
}

/// [`fuse_server`] with `args` for `steve serve` (the job count among them) and its log
/// (stderr) written to `log` when given.
pub fn fuse_server_with(
    mountpoint: &Path,
    args: &[std::ffi::OsString],
    log: Option<&Path>,
) -> (StopOnDrop, PathBuf, PathBuf) {
    let stderr =
        log.map_or_else(Stdio::null, |log| File::create(log).expect("create the log").into());
    let mut server = command()
        .args(["serve", "--backend", "fuse", "--mountpoint"])
        .arg(mountpoint)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut announcement = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut announcement).unwrap();
    assert!(announcement.starts_with("MAKEFLAGS="), "the fuse server said {announcement:?}");
    let control = steve_core::paths::control_beside(mountpoint);
    (StopOnDrop(server), mountpoint.join("jobserver"), control)
}
