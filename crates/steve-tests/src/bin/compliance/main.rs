//! The compliance suite: one list of scenarios, each run with real clients against every server
//! backend it applies to: `fifo` and `fuse` on the host, `cuse` inside the test VM (the host has
//! no CUSE). [`SCENARIOS`] is the list, and [`Needs`] the one place that says which backends a
//! scenario applies to (those that only make sense with per-process accounting say so there).
//!
//! `compliance list BACKEND` prints the names of the scenarios that apply to BACKEND;
//! `compliance run SCENARIO...` runs scenarios against `STEVE_SCENARIO_BACKEND` and prints one
//! line per scenario, `scenario NAME ok` or `scenario NAME FAILED: why`, and figures as
//! `figure NAME VALUE`. The test side (`tests/compliance.rs`) asks for the list, runs the program
//! once per backend and makes one test of each line. Other subcommands are client roles the
//! scenarios start as separate processes, because the device backends account per process.
//!
//! Paths come from the environment: `STEVE_BIN` (the steve binary), `STEVE_TEST_MAKE44` (GNU
//! make 4.4.1), `STEVE_TEST_CARGO` (cargo), `STEVE_TEST_NINJA` (ninja 1.13.2, one scenario),
//! `STEVE_TEST_CAPI_PROBE` (the C library's test program, `c/jobserver-probe.c`),
//! `STEVE_TEST_PYTHON` (a python3 with `prometheus_client`, one scenario),
//! `STEVE_SCENARIO_BACKEND` (`cuse`, the default, `fuse` or `fifo`), and for fuse and fifo
//! `STEVE_SCENARIO_PLACE` (the directory each server mounts on, or the path of its pipe).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod fairness;
mod handover;
mod metrics;
mod storms;
mod threads;
mod traces;
mod uring;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steve_tests::{projects, timeline, wait_for};

/// The backend under test and where its clients open the jobserver.
struct Target {
    backend: String,
    /// `--mountpoint` for fuse.
    mountpoint: Option<PathBuf>,
    /// `--path` for fifo.
    path: Option<PathBuf>,
    jobserver: PathBuf,
}

impl Target {
    /// Whether the backend accounts tokens per process (and so logs each grant, counts
    /// interrupts, shows waiters).
    fn per_process(&self) -> bool {
        self.backend != "fifo"
    }
}

fn target() -> &'static Target {
    static TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| {
        let backend = std::env::var("STEVE_SCENARIO_BACKEND").unwrap_or_else(|_| "cuse".into());
        let (mountpoint, path, jobserver) = match backend.as_str() {
            "cuse" => (None, None, "/dev/steve".into()),
            "fuse" => {
                let mountpoint = env_path("STEVE_SCENARIO_PLACE");
                let jobserver = mountpoint.join("jobserver");
                (Some(mountpoint), None, jobserver)
            }
            "fifo" => {
                let path = env_path("STEVE_SCENARIO_PLACE");
                (None, Some(path.clone()), path)
            }
            other => panic!("STEVE_SCENARIO_BACKEND={other}: expected cuse, fuse or fifo"),
        };
        Target { backend, mountpoint, path, jobserver }
    })
}

/// Where clients open the jobserver: /dev/steve, or the file on the mount.
fn jobserver() -> &'static Path {
    &target().jobserver
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            let backend = args.get(1).expect("list BACKEND");
            for scenario in SCENARIOS.iter().filter(|s| s.needs.applies_to(backend)) {
                println!("{}", scenario.name);
            }
        }
        Some("run") => run_scenarios(&args[1..]),
        Some("hold") => hold(args[1].parse().expect("hold COUNT"), false),
        Some("take-and-return") => hold(args[1].parse().expect("take-and-return COUNT"), true),
        Some("blocking-client") => compete(false, &args[1]),
        Some("polling-client") => compete(true, &args[1]),
        Some("grace") => grace(),
        Some("wait-one") => wait_one(),
        Some("open-then-read") => open_then_read(),
        Some("wait-with-handler") => wait_with_handler(),
        Some("try-open") => try_open(),
        Some("swap-on-create") => swap_on_create(&args[1..]),
        Some("round-trips") => {
            round_trips(&args[1], args[2].parse().expect("round-trips PATH SECONDS"))
        }
        _ => {
            eprintln!("usage: compliance list BACKEND | compliance run SCENARIO...");
            std::process::exit(2);
        }
    }
}

/// What a scenario needs of the backend under test: the one place that says which backends
/// each scenario applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Any jobserver: fifo, fuse and cuse.
    Jobserver,
    /// A jobserver the host serves, fifo and fuse: a storm of a thousand processes would take
    /// many minutes in the emulated VM.
    HostJobserver,
    /// A named pipe: fifo.
    Pipe,
    /// Per-process accounting (ENOSPC, reclaim at exit, reservations, waiters): fuse and cuse.
    PerProcess,
    /// A CUSE device node: cuse.
    Device,
    /// A FUSE mount: fuse.
    Mount,
    /// The backend `--backend auto` picks where the suite runs it: cuse in the VM, fuse on
    /// the host.
    AutoChoice,
    /// An ordinary user's FUSE mount through fusermount3: only the VM opens /dev/fuse to
    /// others, so it runs with cuse's VM boot.
    UserMount,
}

impl Needs {
    fn applies_to(self, backend: &str) -> bool {
        match self {
            Needs::Jobserver => true,
            Needs::HostJobserver => backend == "fifo" || backend == "fuse",
            Needs::Pipe => backend == "fifo",
            Needs::PerProcess => backend == "fuse" || backend == "cuse",
            Needs::Device | Needs::AutoChoice | Needs::UserMount if backend == "cuse" => true,
            Needs::Mount | Needs::AutoChoice => backend == "fuse",
            Needs::Device | Needs::UserMount => false,
        }
    }
}

/// One scenario: its name, what it needs, and the code.
struct Scenario {
    name: &'static str,
    needs: Needs,
    run: fn() -> Result<(), String>,
}

const fn scenario(name: &'static str, needs: Needs, run: fn() -> Result<(), String>) -> Scenario {
    Scenario { name, needs, run }
}

/// The compliance suite.
const SCENARIOS: &[Scenario] = &[
    scenario("make_peak", Needs::Jobserver, make_peak),
    scenario("two_makes", Needs::Jobserver, two_makes),
    scenario("nonblocking_eagain", Needs::Jobserver, nonblocking_eagain),
    scenario("second_daemon", Needs::Jobserver, second_daemon),
    scenario("round_trips", Needs::Jobserver, round_trip_figures),
    scenario("set_jobs_moves_the_peak", Needs::Jobserver, set_jobs_moves_the_peak),
    scenario("set_refused_to_others", Needs::Jobserver, set_refused_to_others),
    scenario("memory_limit", Needs::Jobserver, memory_limit),
    scenario("client_library", Needs::Jobserver, client_library),
    scenario("c_library", Needs::Jobserver, c_library),
    scenario("cargo_build", Needs::Jobserver, cargo_build),
    scenario("status_finds_the_server", Needs::Jobserver, status_finds_the_server),
    scenario("metrics_match_status", Needs::Jobserver, metrics::metrics_match_status),
    scenario("enospc_and_grace", Needs::PerProcess, enospc_and_grace),
    scenario("sigkill_reclaim", Needs::PerProcess, sigkill_reclaim),
    scenario("poller_fairness", Needs::PerProcess, poller_fairness),
    scenario("fair_shares", Needs::PerProcess, fairness::fair_shares),
    scenario("status_names_holders", Needs::PerProcess, status_names_holders),
    scenario("trace_matches_jobs", Needs::PerProcess, traces::trace_matches_jobs),
    scenario("per_process_limit", Needs::PerProcess, per_process_limit),
    scenario("killed_while_waiting", Needs::PerProcess, killed_while_waiting),
    scenario("signal_interrupts_waiting_read", Needs::PerProcess, signal_interrupts_waiting_read),
    scenario("mode_group_user", Needs::Device, mode_group_user),
    scenario("auto_backend", Needs::AutoChoice, auto_backend),
    scenario("stale_mount_recovered", Needs::Mount, stale_mount_recovered),
    scenario("unmounts_while_busy", Needs::Mount, unmounts_while_busy),
    scenario("fuse_mode_and_group", Needs::Mount, fuse_mode_and_group),
    scenario("ninja_wants_a_fifo", Needs::Mount, ninja_wants_a_fifo),
    scenario("unprivileged_fuse", Needs::UserMount, unprivileged_fuse),
    scenario("mixed_clients_share_the_pool", Needs::PerProcess, mixed_clients_share_the_pool),
    scenario("killed_ninja_on_the_companion", Needs::PerProcess, killed_ninja_on_the_companion),
    scenario("killed_exec_pipe_tree", Needs::Jobserver, killed_exec_pipe_tree),
    scenario("handover_during_make", Needs::Jobserver, handover::handover_during_make),
    scenario(
        "killed_server_pipe_served_again",
        Needs::Pipe,
        handover::killed_server_pipe_served_again,
    ),
    scenario(
        "killed_server_holders_counted",
        Needs::PerProcess,
        handover::killed_server_holders_counted,
    ),
    scenario(
        "killed_right_after_an_answer",
        Needs::PerProcess,
        handover::killed_right_after_an_answer,
    ),
    scenario("served_from_threads", Needs::PerProcess, threads::served_from_threads),
    scenario(
        "served_through_io_uring_setting_enable_uring",
        Needs::Mount,
        uring::served_through_io_uring_setting_enable_uring,
    ),
    scenario("kill_storm", Needs::HostJobserver, storms::kill_storm),
    scenario("soak", Needs::HostJobserver, storms::soak),
];

fn run_scenarios(names: &[String]) {
    for name in names {
        let Some(scenario) = SCENARIOS.iter().find(|known| known.name == name) else {
            println!("scenario {name} FAILED: no such scenario");
            continue;
        };
        if !scenario.needs.applies_to(&target().backend) {
            let why = format!("needs {:?}, not backend {}", scenario.needs, target().backend);
            println!("scenario {name} FAILED: {why}");
            continue;
        }
        let outcome = std::panic::catch_unwind(scenario.run)
            .unwrap_or_else(|panic| Err(panic_text(panic.as_ref())));
        let left = std::mem::take(&mut *LEFT_BOOKS.lock().unwrap());
        let outcome = outcome.and_then(|()| match left.is_empty() {
            true => Ok(()),
            false => Err(left.join("\n")),
        });
        match outcome {
            Ok(()) => println!("scenario {name} ok"),
            Err(why) => println!("scenario {name} FAILED: {}", why.replace('\n', " | ")),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set in the VM")))
}

fn ensure(condition: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(why())
    }
}

/// A running `steve serve`, stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
    control: PathBuf,
    /// It exited and was waited for: nothing to stop when dropped.
    reaped: bool,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(jobs: u32) -> Daemon {
        Daemon::start_with(serve_command(jobs, &[]))
    }

    /// `steve ARGS --control SOCKET`, run to the end.
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env_path("STEVE_BIN"))
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap()
    }

    /// `steve status --json`.
    fn status(&self) -> serde_json::Value {
        let output = self.ctl(&["status", "--json"]);
        assert!(
            output.status.success(),
            "steve status: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Waits until process `pid` waits in the queue with a blocking read.
    fn wait_for_blocking_waiter(&self, pid: u64) {
        wait_for("the client to wait in the queue", Duration::from_secs(10), || {
            let status = self.status();
            let waiters = status["waiters"].as_array()?.clone();
            waiters.iter().any(|w| w["pid"] == pid && w["kind"] == "blocking").then_some(())
        });
    }

    fn makeflags(&self, jobs: u32) -> String {
        format!(" -j{jobs} --jobserver-auth=fifo:{}", jobserver().display())
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every token must be free: `jobs` non-blocking reads succeed and one more gets EAGAIN, and
    /// a companion FIFO holds none. The tokens are written back afterwards.
    fn assert_pool_whole(&self, jobs: usize) -> Result<(), String> {
        let mut device = open_device(true);
        let taken = take_free(&mut device, jobs)?;
        let companion =
            if target().per_process() { companion_idle(&self.status()) } else { Ok(()) };
        device.write_all(&vec![b'+'; taken]).map_err(|e| format!("write back: {e}"))?;
        companion?;
        ensure(taken == jobs, || format!("{taken} tokens free, expected {jobs}\n{}", self.log()))
    }
}

impl Daemon {
    /// Waits up to `limit` for the server to exit by itself (after a handover).
    fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                self.reaped = true;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("did not exit within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Takes every free token from `device` with non-blocking reads, stopping one past `jobs` (more
/// than the pool is wrong whatever the count); how many it took. The caller writes them back.
fn take_free(device: &mut File, jobs: usize) -> Result<usize, String> {
    let mut taken = 0;
    let mut byte = [0u8; 1];
    loop {
        match device.read(&mut byte) {
            Ok(1) => taken += 1,
            Ok(_) => return Err("end of file on the jobserver".into()),
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => return Err(format!("read: {error}")),
        }
        if taken > jobs {
            break;
        }
    }
    Ok(taken)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A reaped pid may be someone else's by now.
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
            // Stopped with nobody holding tokens (each scenario's clients are gone by now), it
            // leaves no holder in its crash books; one left would be counted by the next
            // scenario's server, at the same place: it fails this scenario instead, and goes.
            // (A server run as --user cannot remove the file root made in /run/steve: an
            // empty one is left, which counts nobody.)
            let books = self.control.with_extension("holders");
            if books_name_a_holder(&books) {
                let _ = fs::remove_file(&books);
                LEFT_BOOKS.lock().unwrap().push(format!(
                    "the server left crash books behind at {}:\n{}",
                    books.display(),
                    self.log()
                ));
            }
        }
    }
}

/// Whether the crash books at `books` name a holder of this boot (as the next server reads them).
fn books_name_a_holder(books: &Path) -> bool {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let bytes = fs::read(books).unwrap_or_default();
    !steve_core::server::holder_book::parse(&bytes, boot.trim()).is_empty()
}

/// What servers stopped by the harness left behind that the scenario must answer for.
static LEFT_BOOKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A client process, killed and reaped when dropped, whatever path the scenario takes.
struct Client(Child);

impl Client {
    fn start(role: &[&str]) -> Client {
        Client(
            Command::new(std::env::current_exe().unwrap())
                .args(role)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_device(nonblocking: bool) -> File {
    let flags = if nonblocking { nix::libc::O_NONBLOCK } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(jobserver())
        .unwrap_or_else(|error| panic!("open {}: {error}", jobserver().display()))
}

fn make_peak() -> Result<(), String> {
    let jobs = 3;
    let daemon = Daemon::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::makefile(dir.path(), "job", 10, 0.3, &log);
    let mut make = Command::new(env_path("STEVE_TEST_MAKE44"));
    make.current_dir(dir.path()).env("MAKEFLAGS", daemon.makeflags(jobs));
    make_within_the_pool(make, &log, 10, jobs, "make_peak")?;
    daemon.assert_pool_whole(jobs as usize)
}

/// Runs `make`, whose `jobs` jobs log to `log`, and checks that at most `tokens` + 1 ran at once
/// (and at least 2: it did use the jobserver); prints the peak as figure `figure`.
fn make_within_the_pool(
    mut make: Command,
    log: &Path,
    jobs: usize,
    tokens: u32,
    figure: &str,
) -> Result<(), String> {
    let output = make.output().unwrap();
    ensure(output.status.success(), || {
        format!("make failed: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let peak = timeline::peak_of(log, jobs);
    println!("figure {figure} {peak}");
    ensure(peak <= tokens as usize + 1 && peak >= 2, || format!("peak {peak} with {tokens} tokens"))
}

fn two_makes() -> Result<(), String> {
    let jobs = 3;
    let daemon = Daemon::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let makes: Vec<Child> = (0..2)
        .map(|n| {
            let project = dir.path().join(format!("make{n}"));
            fs::create_dir(&project).unwrap();
            projects::makefile(&project, &format!("m{n}"), 6, 0.3, &log);
            Command::new(env_path("STEVE_TEST_MAKE44"))
                .current_dir(&project)
                .env("MAKEFLAGS", daemon.makeflags(jobs))
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut make in makes {
        ensure(make.wait().unwrap().success(), || "a make failed".to_string())?;
    }
    let peak = timeline::peak_of(&log, 12);
    println!("figure two_makes_peak {peak}");
    ensure(peak <= jobs as usize + 2 && peak >= 2, || {
        format!("combined peak {peak} with {jobs} tokens")
    })?;
    daemon.assert_pool_whole(jobs as usize)
}

/// Client role: a new process that writes before reading (its grace return), then again
/// (refused), then reads and writes (fine), then writes once more (refused).
fn grace() {
    let mut device = open_device(false);
    let outcome = |result: std::io::Result<()>| match result {
        Ok(()) => "ok".to_string(),
        Err(error) => {
            error.raw_os_error().map_or("error".to_string(), |errno| format!("errno {errno}"))
        }
    };
    let first = outcome(device.write_all(b"+"));
    let second = outcome(device.write_all(b"+"));
    let mut byte = [0u8; 1];
    let read = outcome(device.read_exact(&mut byte));
    let third = outcome(device.write_all(&byte));
    let fourth = outcome(device.write_all(b"+"));
    println!("{first} {second} {read} {third} {fourth}");
}

fn enospc_and_grace() -> Result<(), String> {
    let daemon = Daemon::start(2);
    let output = Command::new(std::env::current_exe().unwrap()).arg("grace").output().unwrap();
    let seen = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let enospc = format!("errno {}", nix::libc::ENOSPC);
    let expected = format!("ok {enospc} ok ok {enospc}");
    ensure(seen == expected, || format!("grace client saw {seen:?}, expected {expected:?}"))?;
    // The lender has exited: its lent token is retired, the pool is 2 again.
    wait_for("the grace client to be reaped", Duration::from_secs(10), || {
        daemon.assert_pool_whole(2).ok()
    });
    Ok(())
}

/// Opens the jobserver without blocking and reads `jobs` tokens from it: the whole pool.
fn take_every_token(jobs: u32) -> Result<File, String> {
    let mut device = open_device(true);
    let mut byte = [0u8; 1];
    for _ in 0..jobs {
        device.read_exact(&mut byte).map_err(|e| format!("read: {e}"))?;
    }
    Ok(device)
}

fn nonblocking_eagain() -> Result<(), String> {
    let jobs = 2;
    let daemon = Daemon::start(jobs);
    let mut device = take_every_token(jobs)?;
    let mut byte = [0u8; 1];
    let error = device.read(&mut byte).expect_err("a read with the pool empty must fail");
    ensure(error.raw_os_error() == Some(nix::libc::EAGAIN), || {
        format!("expected EAGAIN, got {error}")
    })?;
    device.write_all(b"++").map_err(|e| format!("write: {e}"))?;
    drop(device);
    daemon.assert_pool_whole(jobs as usize)
}

/// Client role: takes `count` tokens with blocking reads, says so, and holds them forever.
/// Client role: `hold COUNT` reads COUNT tokens, says `holding COUNT` and waits, holding them
/// and the jobserver open, until killed; `take-and-return COUNT` then waits for a line on its
/// standard input, writes them back, says `returned COUNT` and waits with the jobserver open.
fn hold(count: usize, give_back: bool) {
    let mut device = open_device(false);
    let mut byte = [0u8; 1];
    for _ in 0..count {
        device.read_exact(&mut byte).unwrap();
    }
    println!("holding {count}");
    std::io::stdout().flush().unwrap();
    if give_back {
        std::io::stdin().read_line(&mut String::new()).unwrap();
        for _ in 0..count {
            device.write_all(b"+").unwrap();
        }
        println!("returned {count}");
        std::io::stdout().flush().unwrap();
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn sigkill_reclaim() -> Result<(), String> {
    let jobs = 4;
    let daemon = Daemon::start(jobs);
    let mut holder = Client::start(&["hold", "3"]);
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    ensure(line.trim() == "holding 3", || format!("holder said {line:?}"))?;

    // Exactly one token is free while the holder lives.
    let mut device = open_device(true);
    let mut byte = [0u8; 1];
    device.read_exact(&mut byte).map_err(|e| format!("read: {e}"))?;
    ensure(device.read(&mut byte).is_err(), || "more than one token free while held".to_string())?;
    device.write_all(b"+").unwrap();

    // Kill it, then take the 4 tokens as soon as they are free.
    let killed_at = Instant::now();
    kill(Pid::from_raw(holder.pid() as i32), Signal::SIGKILL).unwrap();
    let mut taken = 0;
    while taken < jobs {
        match device.read(&mut byte) {
            Ok(1) => taken += 1,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                ensure(killed_at.elapsed() < Duration::from_secs(10), || {
                    format!("only {taken} tokens free 10 s after the kill\n{}", daemon.log())
                })?;
                std::thread::sleep(Duration::from_micros(200));
            }
            other => return Err(format!("read: {other:?}")),
        }
    }
    let delay = killed_at.elapsed();
    println!("figure reclaim_delay_ms {:.1}", delay.as_secs_f64() * 1000.0);
    device.write_all(&vec![b'+'; jobs as usize]).unwrap();
    let log = daemon.log();
    let logged = log.lines().any(|line| {
        // The kernel's command name of this program.
        line.contains(&format!("reclaimed 3 token(s) from pid {} (compliance)", holder.pid()))
    });
    ensure(logged, || format!("no reclaim line naming pid and command:\n{log}"))?;
    daemon.assert_pool_whole(jobs as usize)
}

/// Client role: takes and returns a token over and over, logging each acquisition to `log`,
/// with blocking reads or with poll() and non-blocking reads.
fn compete(polling: bool, log: &str) {
    let mut device = open_device(polling);
    let mut log = OpenOptions::new().append(true).open(log).unwrap();
    let mut byte = [0u8; 1];
    let me = if polling { "poll" } else { "block" };
    loop {
        if polling {
            let mut fds = [PollFd::new(device.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::NONE).unwrap();
            match device.read(&mut byte) {
                Ok(1) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
                other => panic!("read: {other:?}"),
            }
        } else {
            device.read_exact(&mut byte).unwrap();
        }
        writeln!(log, "{me}").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        device.write_all(&byte).unwrap();
    }
}

/// The share of the first `total` acquisitions the poller got, with a pool of one token.
fn poller_share(reservation_ms: u64, total: usize) -> Result<(usize, usize), String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acquisitions");
    File::create(&log).unwrap();
    let log_text = log.to_str().unwrap();
    let daemon = Daemon::start_with(serve_command(
        1,
        &["--poll-reservation-ms", &reservation_ms.to_string()],
    ));
    let clients: Vec<Client> = ["blocking-client", "polling-client"]
        .iter()
        .map(|role| Client::start(&[role, log_text]))
        .collect();
    wait_for("200 acquisitions", Duration::from_secs(120), || {
        (fs::read_to_string(&log).unwrap().lines().count() >= total).then_some(())
    });
    drop(clients);
    drop(daemon);
    let text = fs::read_to_string(&log).unwrap();
    let first: Vec<&str> = text.lines().take(total).collect();
    let polls = first.iter().filter(|line| **line == "poll").count();
    Ok((polls, first.len() - polls))
}

/// `steve serve --backend BACKEND -j JOBS` (and the mount point) with `extra` arguments.
fn serve_command(jobs: u32, extra: &[&str]) -> Command {
    let mut command = Command::new(env_path("STEVE_BIN"));
    command.args(["serve", "--backend", &target().backend, "-j", &jobs.to_string()]);
    match THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        threads => {
            command.args(["--threads", &threads.to_string()]);
        }
    }
    if IO_URING.load(std::sync::atomic::Ordering::Relaxed) {
        command.args(["--io-uring", "on"]);
    }
    command.args(place_args()).args(extra);
    command
}

/// A scenario of the suite.
type Run = fn() -> Result<(), String>;

/// Runs `scenarios` again against servers started `with` some option (set by the caller while
/// they run), printing `figure FIGURE NAME ok` for each that passes.
fn rerun(scenarios: &[(&str, Run)], with: &str, figure: &str) -> Result<(), String> {
    for (name, run) in scenarios {
        run().map_err(|why| format!("{name} with {with}: {why}"))?;
        println!("figure {figure} {name} ok");
    }
    Ok(())
}

/// `--threads` for the servers [`serve_command`] starts; 0 leaves the default
/// ([`threads::served_from_threads`] sets it while it runs).
static THREADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `--io-uring on` for the servers [`serve_command`] starts
/// ([`uring::served_through_io_uring_setting_enable_uring`] sets it while it runs).
static IO_URING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where the server goes: `--mountpoint DIR` for fuse, `--path PATH` for fifo, nothing for cuse.
fn place_args() -> Vec<std::ffi::OsString> {
    match (&target().mountpoint, &target().path) {
        (Some(dir), _) => vec!["--mountpoint".into(), dir.into()],
        (None, Some(path)) => vec!["--path".into(), path.into()],
        (None, None) => Vec::new(),
    }
}

impl Daemon {
    /// Starts the daemon `command` describes and waits for its announcement.
    fn start_with(command: Command) -> Daemon {
        Daemon::start_at(command, jobserver())
    }

    /// Starts the daemon `command` describes and waits for it to announce `jobserver`.
    fn start_at(mut command: Command, jobserver: &Path) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("steve.log");
        let mut child =
            command.stdout(Stdio::piped()).stderr(File::create(&log).unwrap()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("MAKEFLAGS=")
                && line.contains(&format!("--jobserver-auth=fifo:{}", jobserver.display())),
            "steve did not announce the device: {line:?}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        let mut control = String::new();
        stdout.read_line(&mut control).unwrap();
        let control =
            control.trim_end().strip_prefix("STEVE_CONTROL='").and_then(|c| c.strip_suffix('\''));
        let control = PathBuf::from(control.expect("steve announced its control socket"));
        Daemon { child, log, control, reaped: false, _dir: dir }
    }
}

fn poller_fairness() -> Result<(), String> {
    let total = 200;
    let (polls, blocks) = poller_share(500, total)?;
    println!("figure poller_share_with_reservation {polls}/{total}");
    // For the record: the same race with reservations of 0 ms (expired at once).
    let (polls_without, _) = poller_share(0, total)?;
    println!("figure poller_share_without_reservation {polls_without}/{total}");
    ensure(polls * 3 >= total && blocks * 3 >= total, || {
        format!("poller got {polls}, blocking reader {blocks} of {total}")
    })
}

fn second_daemon() -> Result<(), String> {
    let _first = Daemon::start(2);
    let output = serve_command(2, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    ensure(!output.status.success(), || "a second daemon started".to_string())?;
    let refusal = match (&target().mountpoint, &target().path) {
        (Some(dir), _) => format!("{} is mounted already", dir.display()),
        (None, Some(path)) => format!("is already serving {}", path.display()),
        (None, None) => "/dev/steve exists already".to_string(),
    };
    ensure(lines.len() == 1 && lines[0].contains(&refusal), || format!("{lines:?}"))?;
    _first.assert_pool_whole(2)
}

/// Attacker role: `swap-on-create DIR NAME VICTIM SECONDS` renames a symbolic link to VICTIM
/// over DIR/NAME the moment inotify says NAME was created, for SECONDS: the race against a
/// daemon that makes a file by name and then changes it by name. A directory made there (a
/// mount point) is first renamed out of the way, to `.moved-N`.
fn swap_on_create(args: &[String]) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let [dir, name, victim, seconds] = args else {
        panic!("swap-on-create DIR NAME VICTIM SECONDS")
    };
    let dir = Path::new(dir);
    let link = dir.join(".swap");
    let target = dir.join(name);
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(dir, AddWatchFlags::IN_CREATE).unwrap();
    let _ = std::os::unix::fs::symlink(victim, &link);
    println!("watching");
    std::io::stdout().flush().unwrap();
    let end = Instant::now() + Duration::from_secs(seconds.parse().unwrap());
    let mut moved = 0;
    while Instant::now() < end {
        let Ok(events) = inotify.read_events() else { continue };
        for event in events {
            if event.name.as_deref().is_some_and(|created| created == std::ffi::OsStr::new(name)) {
                if fs::rename(&link, &target).is_err() {
                    moved += 1;
                    let _ = fs::rename(&target, dir.join(format!(".moved-{moved}")));
                    let _ = fs::rename(&link, &target);
                }
                let _ = std::os::unix::fs::symlink(victim, &link);
            }
        }
    }
}

/// Client role: acquire and release one token for `seconds` on `path`; prints the count.
fn round_trips(path: &str, seconds: f64) {
    let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        file.read_exact(&mut byte).unwrap();
        file.write_all(&byte).unwrap();
        count += 1;
    }
    println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
}

fn round_trip_figures() -> Result<(), String> {
    let me = std::env::current_exe().unwrap();
    let rate = |path: &Path| -> Result<String, String> {
        let output =
            Command::new(&me).args(["round-trips", path.to_str().unwrap(), "2"]).output().unwrap();
        ensure(output.status.success(), || format!("round trips on {} failed", path.display()))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let daemon = Daemon::start(4);
    let device_rate = rate(jobserver())?;
    daemon.assert_pool_whole(4)?;
    drop(daemon);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut keeper = OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    keeper.write_all(b"++++").unwrap();
    let pipe_rate = rate(&fifo)?;
    println!("figure round_trips_per_second_{} {device_rate}", target().backend);
    println!("figure round_trips_per_second_pipe {pipe_rate}");
    Ok(())
}

fn cargo_build() -> Result<(), String> {
    let jobs = 2;
    // Verbose, to see in the log that cargo's tokens came from the device.
    let daemon = Daemon::start_with(serve_command(jobs, &["-v"]));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let workspace = projects::cargo_workspace(dir.path(), 3, &log);
    let output = Command::new(env_path("STEVE_TEST_CARGO"))
        .args(["build", "--offline", "-j", "8"])
        .current_dir(&workspace.root)
        .env("MAKEFLAGS", daemon.makeflags(jobs))
        .env_remove("CARGO_MAKEFLAGS")
        .env("RUSTC_WRAPPER", &workspace.wrapper)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .unwrap();
    ensure(output.status.success(), || {
        format!("cargo build failed: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let peak = timeline::peak_of(&log, workspace.crates);
    println!("figure cargo_rustc_peak {peak}");
    ensure(peak <= jobs as usize + 1 && peak >= 2, || {
        format!("peak {peak} rustc with {jobs} tokens")
    })?;
    // A device logs each token it hands out; a pipe cannot tell.
    let log = daemon.log();
    ensure(!target().per_process() || log.contains("token handed out"), || {
        format!("cargo never took a token from the device:\n{log}")
    })?;
    daemon.assert_pool_whole(jobs as usize)
}

/// Without --backend, steve picks cuse where /dev/cuse exists, else fuse, and says so.
fn auto_backend() -> Result<(), String> {
    let mut command = Command::new(env_path("STEVE_BIN"));
    command.args(["serve", "-j", "2"]).args(place_args());
    let daemon = Daemon::start_with(command);
    let log = daemon.log();
    let chosen = format!("backend {} chosen", target().backend);
    ensure(log.contains(&chosen), || format!("{} was not chosen:\n{log}", target().backend))?;
    daemon.assert_pool_whole(2)
}

/// The device node gets --mode and --group, and the daemon becomes --user after setup and
/// still serves and reclaims.
fn mode_group_user() -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let daemon = Daemon::start_with(serve_command(
        2,
        &["--mode", "0640", "--group", "100", "--user", "65534"],
    ));
    let node = fs::metadata(jobserver()).map_err(|e| format!("{}: {e}", jobserver().display()))?;
    ensure(node.permissions().mode() & 0o7777 == 0o640, || {
        format!("mode {:o}", node.permissions().mode())
    })?;
    ensure(node.gid() == 100, || format!("group {}", node.gid()))?;
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let uid_line = status.lines().find(|line| line.starts_with("Uid:")).unwrap_or("");
    ensure(uid_line.split_whitespace().skip(1).all(|uid| uid == "65534"), || {
        format!("daemon still runs as {uid_line:?}")
    })?;
    // Unprivileged now, it still tracks a root client and reclaims its tokens.
    let mut holder = Client::start(&["hold", "2"]);
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    drop(holder);
    wait_for("the holder's tokens to come back", Duration::from_secs(10), || {
        daemon.assert_pool_whole(2).ok()
    });
    Ok(())
}

/// A make started in its own process group; killed with the group if dropped unfinished.
struct Make(Option<Child>);

impl Make {
    fn start(
        daemon: &Daemon,
        jobs_flag: u32,
        dir: &Path,
        prefix: &str,
        jobs: usize,
        seconds: f64,
        log: &Path,
    ) -> Make {
        use std::os::unix::process::CommandExt;
        let project = dir.join(prefix);
        fs::create_dir_all(&project).unwrap();
        projects::makefile(&project, prefix, jobs, seconds, log);
        let child = Command::new(env_path("STEVE_TEST_MAKE44"))
            .current_dir(&project)
            .env("MAKEFLAGS", daemon.makeflags(jobs_flag))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Make(Some(child))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits for make to finish; whether it succeeded.
    fn finish(mut self) -> bool {
        let mut child = self.0.take().expect("running");
        child.wait().unwrap().success()
    }
}

impl Drop for Make {
    fn drop(&mut self) {
        // Only a make not waited for: a reaped pid may belong to someone else by now.
        if let Some(mut child) = self.0.take() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn started(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("start"))
        .count()
}

/// While make runs, the status names it as a holder with its tokens and command line, and as
/// a polling waiter for its next job.
fn status_names_holders() -> Result<(), String> {
    let daemon = Daemon::start(2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let make = Make::start(&daemon, 2, dir.path(), "held", 4, 60.0, &log);
    wait_for("make to run 3 jobs", Duration::from_secs(30), || (started(&log) >= 3).then_some(()));
    let status = daemon.status();
    let holders = status["holders"].as_array().unwrap();
    let pid = make.pid() as u64;
    let entry = holders
        .iter()
        .find(|holder| holder["pid"] == pid)
        .ok_or(format!("make {pid} not in {holders:?}"))?;
    ensure(entry["tokens"] == 2, || format!("make holds {}", entry["tokens"]))?;
    ensure(entry["command"].as_str().unwrap_or("").contains("make"), || format!("{entry}"))?;
    ensure(entry["held_seconds"].as_f64().is_some(), || format!("{entry}"))?;
    ensure(status["holders_exact"] == true && status["pool"]["free"] == 0, || format!("{status}"))?;
    let waiters = status["waiters"].as_array().unwrap();
    ensure(waiters.iter().any(|w| w["pid"] == pid && w["kind"] == "polling"), || {
        format!("waiters {waiters:?}")
    })?;
    println!("figure status_holder {entry}");
    // One build: make, in its folder, holding both tokens and asking for more.
    let builds = status["builds"].as_array().ok_or(format!("no builds in {status}"))?;
    let build = builds.iter().find(|build| build["pid"] == pid);
    let cwd = dir.path().join("held").canonicalize().unwrap();
    ensure(
        build.is_some_and(|build| {
            build["tokens"] == 2
                && build["waiting"] == 1
                && build["share"] == 2.0
                && build["cwd"] == cwd.to_str().unwrap()
                && build["command"].as_str().is_some_and(|c| c.contains("make"))
        }),
        || format!("make's build not in {builds:?}"),
    )?;
    // Weights by user name become uids; the share follows the settings.
    let me = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(me).unwrap().unwrap().name;
    let output = daemon.ctl(&["set", &format!("weights={name}:3"), "fairness=user"]);
    ensure(output.status.success(), || String::from_utf8_lossy(&output.stderr).into_owned())?;
    let shown =
        String::from_utf8_lossy(&daemon.ctl(&["get", "weights", "fairness"]).stdout).into_owned();
    ensure(shown == format!("{me}:3\nuser\n"), || format!("get: {shown:?}"))?;
    Ok(())
}

/// `set jobs=1` then `set jobs=4` while two makes run: the measured peak follows.
///
/// Jobs last a second: with 0.4 s jobs a starved VM (TCG while the host's soak loads both
/// CPUs) spent longer starting each job than running it, so the two makes' jobs under jobs=1
/// never overlapped and the window's peak read 1.
fn set_jobs_moves_the_peak() -> Result<(), String> {
    let daemon = Daemon::start(4);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let makes: Vec<Make> = (0..2)
        .map(|n| Make::start(&daemon, 4, dir.path(), &format!("m{n}"), 24, 1.0, &log))
        .collect();
    wait_for("the makes to start", Duration::from_secs(30), || (started(&log) >= 4).then_some(()));
    let set = daemon.ctl(&["set", "jobs=1"]);
    ensure(set.status.success(), || {
        format!("set jobs=1 failed: {}", String::from_utf8_lossy(&set.stderr).trim_end())
    })?;
    wait_for("the pool to shrink to 1", Duration::from_secs(30), || {
        (daemon.status()["pool"]["size"] == 1).then_some(())
    });
    let shrunk = timeline::now_nanos();
    std::thread::sleep(Duration::from_millis(3000));
    let grow = timeline::now_nanos();
    let set = daemon.ctl(&["set", "jobs=4"]);
    ensure(set.status.success(), || {
        format!("set jobs=4 failed: {}", String::from_utf8_lossy(&set.stderr).trim_end())
    })?;
    for make in makes {
        ensure(make.finish(), || "a make failed".into())?;
    }
    let spans = timeline::spans(&log);
    let low = timeline::peak_between(&spans, shrunk, grow);
    let high = timeline::peak_between(&spans, grow, timeline::now_nanos());
    println!("figure set_jobs_peaks 4->1:{low} 1->4:{high}");
    ensure((2..=3).contains(&low), || format!("peak {low} with jobs=1 and two makes"))?;
    ensure(high > 3 && high <= 6, || format!("peak {high} after growing back to 4"))?;
    daemon.assert_pool_whole(4)
}

/// Another user (nobody) may read the settings but not set them.
fn set_refused_to_others() -> Result<(), String> {
    let daemon = Daemon::start(2);
    let as_user = |args: &[&str]| {
        steve_tests::command_as(65534, 65534, env_path("STEVE_BIN"))
            .args(args)
            .arg("--control")
            .arg(&daemon.control)
            .output()
            .unwrap()
    };
    let refused = as_user(&["set", "jobs=8"]);
    let read = as_user(&["get", "jobs"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure(!refused.status.success() && stderr.contains("permission denied"), || {
        format!("set as another user: {stderr}")
    })?;
    ensure(String::from_utf8_lossy(&read.stdout) == "2\n", || {
        format!("get as another user: {read:?}")
    })?;
    ensure(daemon.status()["limits"]["jobs"] == 2, || "jobs changed".into())
}

/// With a per-process limit of 1, each of two makes runs exactly 2 jobs at once (1 token and
/// its own), though the pool has 4.
fn per_process_limit() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(4, &["--per-process-limit", "1"]));
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let makes = [
        Make::start(&daemon, 4, dir.path(), "a", 6, 0.3, &first),
        Make::start(&daemon, 4, dir.path(), "b", 6, 0.3, &second),
    ];
    for make in makes {
        ensure(make.finish(), || "a make failed".into())?;
    }
    let (a, b) = (timeline::peak_of(&first, 6), timeline::peak_of(&second, 6));
    println!("figure per_process_limit_peaks {a} {b}");
    ensure(a == 2 && b == 2, || {
        format!("peaks {a} and {b}: each make should run exactly 2 at once")
    })?;
    // One process reads the whole pool below, so the limit goes first (through `set`).
    let lifted = daemon.ctl(&["set", "per-process-limit=none"]);
    ensure(lifted.status.success(), || format!("lifting the limit: {lifted:?}"))?;
    daemon.assert_pool_whole(4)
}

/// A memory limit no machine meets holds tokens to min-jobs; lifting it lets them flow.
fn memory_limit() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(
        4,
        &["--min-memory-avail", "100000000", "--min-jobs", "1"],
    ));
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held.log");
    ensure(Make::start(&daemon, 4, dir.path(), "held", 6, 0.3, &held).finish(), || {
        "make failed".into()
    })?;
    let status = daemon.status();
    ensure(status["limited_by"]["kind"] == "memory", || format!("{status}"))?;
    let peak = timeline::peak_of(&held, 6);
    ensure(peak <= 2, || format!("peak {peak} under the memory limit"))?;
    ensure(daemon.ctl(&["set", "min-memory-avail=none"]).status.success(), || {
        "lifting failed".into()
    })?;
    let flowing = dir.path().join("flowing.log");
    ensure(Make::start(&daemon, 4, dir.path(), "free", 10, 0.3, &flowing).finish(), || {
        "make failed".into()
    })?;
    let after = timeline::peak_of(&flowing, 10);
    println!("figure memory_limit_peaks held:{peak} lifted:{after}");
    ensure(after > 2 && after <= 5, || format!("peak {after} after lifting the limit"))?;
    daemon.assert_pool_whole(4)
}

/// steve-core's client library on /dev/steve: a JobPool of 8 jobs on 3 tokens runs at most 4 at
/// once (3 tokens and its implicit one), and every token comes back.
fn client_library() -> Result<(), String> {
    use steve_core::client::{Client, JobPool};
    use steve_core::makeflags::JobserverAuth;
    let daemon = Daemon::start(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let client =
        Client::open(&JobserverAuth::Fifo(jobserver().into())).map_err(|e| e.to_string())?;
    let mut pool = JobPool::new(client);
    for n in 0..8 {
        let script = format!(
            "echo start c{n} $(date +%s%N) >> {0}; sleep 0.3; echo end c{n} $(date +%s%N) >> {0}",
            log.display()
        );
        pool.spawn(Command::new("sh").args(["-c", &script])).map_err(|e| e.to_string())?;
    }
    for finished in pool.collect_all().map_err(|e| e.to_string())? {
        ensure(finished.status.success(), || format!("job {} failed", finished.id))?;
    }
    drop(pool);
    let peak = timeline::peak_of(&log, 8);
    println!("figure client_library_peak {peak}");
    ensure((2..=4).contains(&peak), || format!("peak {peak} with 3 tokens and the implicit one"))?;
    daemon.assert_pool_whole(3)
}

/// steve's C library (libjobserver's interface) on this backend: a C program built against
/// jobserver.h and libjobserver.a launches 20 jobs through jobserver_launch_job and
/// jobserver_collect on 3 tokens; at most 4 run at once and every token comes back.
fn c_library() -> Result<(), String> {
    let daemon = Daemon::start(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let output = Command::new(env_path("STEVE_TEST_CAPI_PROBE"))
        .arg("jobs")
        .arg("20")
        .arg(&log)
        .arg("100")
        .env("MAKEFLAGS", daemon.makeflags(3))
        .env_remove("CARGO_MAKEFLAGS")
        .output()
        .map_err(|e| format!("run the C probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure(output.status.success() && stdout.contains("close returned 0"), || {
        format!("the C probe: {stdout} {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let peak = timeline::peak_of(&log, 20);
    println!("figure c_library_peak {peak}");
    ensure((2..=4).contains(&peak), || format!("peak {peak} with 3 tokens and the implicit one"))?;
    daemon.assert_pool_whole(3)
}

/// Client role: opens the jobserver, says `open`, waits for a line on its standard input, then
/// takes a token with a blocking read (read again after `EINTR`, as clients do), gives it
/// back and says `done`.
fn open_then_read() {
    let mut device = open_device(false);
    println!("open");
    std::io::stdout().flush().unwrap();
    std::io::stdin().read_line(&mut String::new()).unwrap();
    let mut byte = [0u8; 1];
    device.read_exact(&mut byte).unwrap();
    device.write_all(&byte).unwrap();
    println!("done");
}

/// Client role: one blocking read, which the scenario makes wait; says what came of it.
fn wait_one() {
    let mut device = open_device(false);
    let mut byte = [0u8; 1];
    println!("{:?}", device.read(&mut byte));
}

/// A client killed while its read waits in the queue dies at once: the kernel's interrupt
/// answers the waiting read (FUSE_INTERRUPT), so nothing waits for a token first.
fn killed_while_waiting() -> Result<(), String> {
    let jobs = 2;
    let daemon = Daemon::start(jobs);
    let mut device = take_every_token(jobs)?;
    let mut waiter = Client::start(&["wait-one"]);
    let pid = waiter.pid() as u64;
    daemon.wait_for_blocking_waiter(pid);
    let killed_at = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let dead = loop {
        if let Some(status) = waiter.0.try_wait().unwrap() {
            break status;
        }
        if killed_at.elapsed() > Duration::from_secs(10) {
            // The server goes first: until it answers the read, the client cannot die.
            let log = daemon.log();
            drop(daemon);
            return Err(format!("the killed client still lives 10 s later\n{log}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    println!("figure killed_waiter_gone_ms {:.1}", killed_at.elapsed().as_secs_f64() * 1000.0);
    ensure(!dead.success(), || format!("the client exited with {dead}"))?;
    let status = daemon.status();
    ensure(status["counters"]["interrupts"].as_u64() >= Some(1), || format!("{status}"))?;
    ensure(status["waiters"].as_array().is_some_and(|w| w.is_empty()), || format!("{status}"))?;
    device.write_all(&vec![b'+'; jobs as usize]).unwrap();
    daemon.assert_pool_whole(jobs as usize)
}

/// The mount points fuse scenarios use beside the main one.
fn scratch_mountpoint(name: &str) -> PathBuf {
    let base = target().mountpoint.clone().unwrap_or_else(|| PathBuf::from("/tmp/steve-vm"));
    base.with_file_name(format!("{}-{name}", base.file_name().unwrap().to_string_lossy()))
}

/// Whether /proc/self/mountinfo lists a mount on `dir`.
fn is_mount_point(dir: &Path) -> bool {
    let wanted = format!(" {} ", dir.display());
    fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|line| line.contains(&wanted))
}

/// fuse: a server killed with SIGKILL leaves a dead mount (ENOTCONN); the next server clears it
/// and serves on the same mount point.
fn stale_mount_recovered() -> Result<(), String> {
    let mountpoint = target().mountpoint.clone().ok_or("needs a mount")?;
    let mut first = Daemon::start(2);
    // Looked at while alive, so that the kernel caches the root's attributes: a stat of the
    // dead mount may then still succeed, and must not pass for a live server.
    fs::metadata(&mountpoint).map_err(|e| format!("stat: {e}"))?;
    first.assert_pool_whole(2)?;
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).unwrap();
    first.child.wait().unwrap();
    let stale = nix::sys::statfs::statfs(&mountpoint).map(|_| ()).unwrap_err();
    ensure(stale == nix::errno::Errno::ENOTCONN, || {
        format!("after SIGKILL the mount point's statfs says {stale}, expected ENOTCONN")
    })?;
    let second = Daemon::start(2);
    let log = second.log();
    ensure(log.contains("cleared a stale mount"), || {
        format!("no word of the stale mount:\n{log}")
    })?;
    second.assert_pool_whole(2)
}

/// fuse: SIGINT unmounts even while a client has the file open (a lazy detach), and the
/// server exits 0.
fn unmounts_while_busy() -> Result<(), String> {
    let mountpoint = target().mountpoint.clone().ok_or("needs a mount")?;
    let mut daemon = Daemon::start(2);
    let busy = open_device(true);
    ensure(is_mount_point(&mountpoint), || "not mounted".into())?;
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGINT).unwrap();
    let status = daemon.child.wait().unwrap();
    ensure(status.success(), || format!("the server exited with {status}\n{}", daemon.log()))?;
    ensure(!is_mount_point(&mountpoint), || format!("still mounted\n{}", daemon.log()))?;
    drop(busy);
    Ok(())
}

/// fuse as an ordinary user: the server mounts through fusermount3, make 4.4.1 run by the same
/// user stays within the pool plus one, a stale mount left by SIGKILL is cleared through
/// fusermount3, and SIGTERM unmounts. Runs where /dev/fuse is open to
/// every user (the test VM; the host's is mode 0600).
fn unprivileged_fuse() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = (65534, 65534);
    // The device's mode most distributions' udev rules give it; the VM's devtmpfs has 0600.
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod /dev/fuse: {e}"))?;
    let home = scratch_mountpoint("user");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    let mountpoint = home.join("mnt");
    let jobs = 3;
    let serve_as_user = || {
        let mut command = steve_tests::command_as(uid, gid, env_path("STEVE_BIN"));
        command.args(["serve", "--backend", "fuse", "-j", &jobs.to_string(), "--mountpoint"]);
        command.arg(&mountpoint).env_remove("XDG_RUNTIME_DIR");
        Daemon::start_at(command, &mountpoint.join("jobserver"))
    };
    // A mode that opens the file to others needs allow_other, which fusermount3 refuses unless
    // /etc/fuse.conf says user_allow_other: one clear line, and nothing left mounted.
    let refused = steve_tests::command_as(uid, gid, env_path("STEVE_BIN"))
        .args(["serve", "--backend", "fuse", "--mode", "0666", "--mountpoint"])
        .arg(&mountpoint)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    ensure(!refused.status.success() && lines.len() == 1, || format!("{lines:?}"))?;
    ensure(lines[0].contains("cannot mount on") && lines[0].contains("user_allow_other"), || {
        lines[0].to_string()
    })?;
    ensure(!is_mount_point(&mountpoint), || "mounted after all".to_string())?;

    let mut daemon = serve_as_user();
    let line = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|line| line.contains(&format!(" {} ", mountpoint.display())))
        .map(str::to_string)
        .ok_or_else(|| format!("not mounted\n{}", daemon.log()))?;
    ensure(line.contains("user_id=65534") && !line.contains("allow_other"), || line.clone())?;
    println!("figure unprivileged_mount {line}");

    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(project.path(), Some(uid), Some(gid)).unwrap();
    let log = project.path().join("timeline");
    projects::makefile(project.path(), "job", 8, 0.3, &log);
    let mut make = steve_tests::command_as(uid, gid, env_path("STEVE_TEST_MAKE44"));
    make.current_dir(project.path()).env(
        "MAKEFLAGS",
        format!(" -j{jobs} --jobserver-auth=fifo:{}/jobserver", mountpoint.display()),
    );
    make_within_the_pool(make, &log, 8, jobs, "unprivileged_make_peak")
        .map_err(|why| format!("as uid {uid}: {why}"))?;
    // Root is not the owner and the mount does not allow others: the kernel says no.
    let refused = OpenOptions::new().read(true).open(mountpoint.join("jobserver")).unwrap_err();
    ensure(refused.raw_os_error() == Some(nix::libc::EACCES), || format!("root got {refused}"))?;

    // A crash leaves a dead mount that only fusermount3 may detach for this user; the next
    // server does so.
    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGKILL).unwrap();
    daemon.child.wait().unwrap();
    let mut daemon = serve_as_user();
    ensure(daemon.log().contains("cleared a stale mount"), || {
        format!("no word of the stale mount:\n{}", daemon.log())
    })?;
    let status = daemon.status();
    ensure(status["pool"]["free"] == jobs, || format!("after the restart: {status}"))?;

    kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = daemon.child.wait().unwrap();
    ensure(status.success(), || format!("the server exited with {status}\n{}", daemon.log()))?;
    ensure(!is_mount_point(&mountpoint), || format!("still mounted\n{}", daemon.log()))
}

extern "C" fn note_signal(_: nix::libc::c_int) {}

/// Client role: a blocking read with a SIGURG handler installed without SA_RESTART, as the
/// jobserver crate stops its helper thread; says what the read came to.
fn wait_with_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action =
        SigAction::new(SigHandler::Handler(note_signal), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe; this process installs no
    // other handler.
    unsafe { sigaction(Signal::SIGURG, &action) }.unwrap();
    let mut device = open_device(false);
    let mut byte = [0u8; 1];
    match device.read(&mut byte) {
        Err(error) if error.raw_os_error() == Some(nix::libc::EINTR) => println!("EINTR"),
        other => println!("{other:?}"),
    }
}

/// A signal with a handler ends a read waiting in the queue with EINTR (the kernel's
/// INTERRUPT reaches the server), the process carries on, and the queue forgets the read.
fn signal_interrupts_waiting_read() -> Result<(), String> {
    let jobs = 1;
    let daemon = Daemon::start(jobs);
    let mut device = take_every_token(jobs)?;
    let mut waiter = Client::start(&["wait-with-handler"]);
    let pid = waiter.pid() as u64;
    daemon.wait_for_blocking_waiter(pid);
    kill(Pid::from_raw(pid as i32), Signal::SIGURG).unwrap();
    let stdout = waiter.0.stdout.take().unwrap();
    let mut ready = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
    poll(&mut ready, PollTimeout::from(10_000u16)).unwrap();
    if ready[0].revents().is_none_or(|events| events.is_empty()) {
        // The server goes first: until it does, the client cannot even be killed.
        let log = daemon.log();
        drop(daemon);
        return Err(format!("the signalled client still waits 10 s later\n{log}"));
    }
    let mut said = String::new();
    BufReader::new(stdout).read_line(&mut said).unwrap();
    ensure(said.trim() == "EINTR", || format!("the waiting read came to {said:?}"))?;
    let status = waiter.0.wait().unwrap();
    ensure(status.success(), || format!("the client ended with {status}"))?;
    let report = daemon.status();
    ensure(report["counters"]["interrupts"].as_u64() >= Some(1), || format!("{report}"))?;
    ensure(report["waiters"].as_array().is_some_and(|w| w.is_empty()), || format!("{report}"))?;
    device.write_all(b"+").unwrap();
    daemon.assert_pool_whole(jobs as usize)
}

/// Client role: opens the jobserver for reading and writing; prints `ok` or the errno.
fn try_open() {
    match OpenOptions::new().read(true).write(true).open(jobserver()) {
        Ok(_) => println!("ok"),
        Err(error) => println!("errno {}", error.raw_os_error().unwrap_or(0)),
    }
}

/// fuse: the file gets --mode and --group, and the kernel enforces them for other users
/// (`allow_other` with `default_permissions`): a member of the group may open it, nobody else.
fn fuse_mode_and_group() -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let daemon = Daemon::start_with(serve_command(2, &["--mode", "0660", "--group", "100"]));
    let file = fs::metadata(jobserver()).map_err(|e| format!("{}: {e}", jobserver().display()))?;
    ensure(file.permissions().mode() == 0o100660, || {
        format!("mode {:o}", file.permissions().mode())
    })?;
    ensure((file.uid(), file.gid()) == (0, 100), || {
        format!("owner {}:{}", file.uid(), file.gid())
    })?;
    let open_as = |gid: u32| {
        let output = steve_tests::command_as(65534, gid, std::env::current_exe().unwrap())
            .arg("try-open")
            .envs(std::env::vars())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let member = open_as(100);
    ensure(member == "ok", || format!("a member of group 100 got {member}"))?;
    let stranger = open_as(65534);
    let refused = format!("errno {}", nix::libc::EACCES);
    ensure(stranger == refused, || format!("a stranger got {stranger}, expected {refused}"))?;
    daemon.assert_pool_whole(2)
}

/// What the docs say of ninja 1.13: it refuses a jobserver path that is not a real FIFO, says
/// so, and builds on its own job count, outside the pool. The device's books see no read.
fn ninja_wants_a_fifo() -> Result<(), String> {
    let daemon = Daemon::start(2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::ninja_file(dir.path(), 4, 0.1, &log);
    let output = Command::new(env_path("STEVE_TEST_NINJA"))
        .current_dir(dir.path())
        .env("MAKEFLAGS", daemon.makeflags(2))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let refusal = format!("Not a fifo path: {}", jobserver().display());
    ensure(said.contains(&refusal), || format!("ninja did not refuse the path: {said}"))?;
    let grants = daemon.status()["counters"]["grants"].clone();
    ensure(grants == 0, || format!("ninja took tokens after all: {grants}"))?;
    daemon.assert_pool_whole(2)
}

/// A process group of its own, killed with SIGKILL (all of it) and reaped when dropped.
struct Tree(Option<Child>);

impl Tree {
    fn spawn(command: &mut Command) -> Tree {
        use std::os::unix::process::CommandExt;
        Tree(Some(command.process_group(0).spawn().unwrap()))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Waits for the tree's first process to end; returns its status and what it printed.
    fn output(mut self) -> std::process::Output {
        self.0.take().expect("running").wait_with_output().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Daemon {
    /// The companion FIFO the server feeds (root's device and fuse servers make one).
    fn companion(&self) -> Result<PathBuf, String> {
        let status = self.status();
        status["companion"]["path"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| format!("no companion FIFO in the status: {status}"))
    }

    /// Waits until the pool has every token free again (after a kill, reclaim takes a moment).
    fn wait_for_free(&self, jobs: usize) {
        wait_for("every token to be free again", Duration::from_secs(20), || {
            (self.status()["pool"]["free"] == jobs).then_some(())
        });
    }
}

/// A companion FIFO, if the server has one, must hold no token once nobody has it open.
fn companion_idle(status: &serde_json::Value) -> Result<(), String> {
    let companion = &status["companion"];
    ensure(companion.is_null() || companion["tokens"] == 0, || {
        format!("the companion FIFO still holds tokens: {companion}")
    })
}

/// `steve exec --pipe -- PROGRAM` in `dir`, drawing on `makeflags`' jobserver.
fn exec_pipe(program: &Path, dir: &Path, makeflags: &str) -> Command {
    let mut command = Command::new(env_path("STEVE_BIN"));
    command
        .args(["exec", "--pipe", "--"])
        .arg(program)
        .current_dir(dir)
        .env("MAKEFLAGS", makeflags)
        .env_remove("CARGO_MAKEFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// One pool for every client, all at once on a server of 4 tokens: make 4.4.1 and cargo on the
/// device, ninja 1.13.2 on the companion FIFO, make 4.3 under `steve exec --pipe`, and GCC 12
/// linking 9 LTO partitions with `-flto=jobserver` under make 4.4.1 under `steve exec --pipe`.
/// Every job logs its start and end; together at most 4 ran at once, plus one implicit token
/// for each of the three clients started without `steve exec`; the pool is whole afterwards.
fn mixed_clients_share_the_pool() -> Result<(), String> {
    let jobs = 4;
    let daemon = Daemon::start(jobs);
    let fifo = daemon.companion()?;
    let device_flags = daemon.makeflags(jobs);
    let fifo_flags = format!(" -j{jobs} --jobserver-auth=fifo:{}", fifo.display());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let project = |name: &str| {
        let path = dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };
    let (make44, make43) = (env_path("STEVE_TEST_MAKE44"), env_path("STEVE_TEST_MAKE43"));
    projects::makefile(&project("make44"), "make44", 8, 0.3, &log);
    projects::makefile(&project("make43"), "make43", 8, 0.3, &log);
    projects::ninja_file(&project("ninja"), 8, 0.3, &log);
    let workspace = projects::cargo_workspace(&project("cargo"), 3, &log);
    let lto = projects::lto_project(&project("lto"), &env_path("STEVE_TEST_GCC12"), 8, &log);

    let mut make44_on_device = Command::new(&make44);
    make44_on_device.current_dir(dir.path().join("make44")).env("MAKEFLAGS", &device_flags);
    let mut ninja_on_fifo = Command::new(env_path("STEVE_TEST_NINJA"));
    ninja_on_fifo.current_dir(dir.path().join("ninja")).env("MAKEFLAGS", &fifo_flags);
    let mut cargo_on_device = Command::new(env_path("STEVE_TEST_CARGO"));
    cargo_on_device
        .args(["build", "--offline", "-j", "8"])
        .current_dir(&workspace.root)
        .env("MAKEFLAGS", &device_flags)
        .env("RUSTC_WRAPPER", &workspace.wrapper)
        .env("CARGO_TARGET_DIR", dir.path().join("target"));
    let make43_under_exec = exec_pipe(&make43, &dir.path().join("make43"), &device_flags);
    let lto_under_exec = exec_pipe(&make44, &lto.dir, &device_flags);
    let mut clients = [
        ("make 4.4.1", make44_on_device),
        ("ninja", ninja_on_fifo),
        ("cargo", cargo_on_device),
        ("make 4.3 under steve exec --pipe", make43_under_exec),
        ("gcc 12 LTO under steve exec --pipe", lto_under_exec),
    ];
    let running: Vec<(&str, Tree)> = clients
        .iter_mut()
        .map(|(name, command)| {
            command.env_remove("CARGO_MAKEFLAGS").env_remove("MFLAGS");
            (*name, Tree::spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped())))
        })
        .collect();
    for (name, tree) in running {
        let output = tree.output();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure(output.status.success(), || format!("{name} failed: {said}"))?;
        ensure(!said.contains("jobserver is not available"), || {
            format!("{name} ran outside the pool: {said}")
        })?;
        ensure(!said.contains("Not a fifo"), || format!("{name} refused the FIFO: {said}"))?;
    }
    let spans = timeline::spans(&log);
    let count = |prefix: &str| spans.iter().filter(|span| span.name.starts_with(prefix)).count();
    ensure(count("ltrans-") == lto.partitions, || {
        format!("{} LTRANS jobs logged, expected {}", count("ltrans-"), lto.partitions)
    })?;
    let expected = 8 + 8 + 8 + workspace.crates + lto.partitions;
    ensure(spans.len() == expected, || {
        format!("{} jobs logged, expected {expected}", spans.len())
    })?;
    let peak = timeline::peak(&spans);
    println!("figure mixed_clients_peak {peak}");
    // make 4.4.1, ninja and cargo each run one job on their implicit token.
    let bound = jobs as usize + 3;
    ensure((2..=bound).contains(&peak), || format!("combined peak {peak}, bound {bound}"))?;
    daemon.wait_for_free(jobs as usize);
    let pool = daemon.status()["pool"].clone();
    println!("figure mixed_clients_pool_after {}", pool["free"]);
    ensure(pool["size"] == jobs && pool["free"] == jobs, || format!("pool afterwards: {pool}"))?;
    daemon.assert_pool_whole(jobs as usize)
}

/// ninja holding tokens of the companion FIFO is killed with its whole process group: once no
/// one has the FIFO open, the server takes back what it lost, and the pool is whole.
fn killed_ninja_on_the_companion() -> Result<(), String> {
    let jobs = 3;
    let daemon = Daemon::start(jobs);
    let fifo = daemon.companion()?;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::ninja_file(dir.path(), 8, 1.0, &log);
    let mut ninja = Tree::spawn(
        Command::new(env_path("STEVE_TEST_NINJA"))
            .current_dir(dir.path())
            .env("MAKEFLAGS", format!(" -j{jobs} --jobserver-auth=fifo:{}", fifo.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // ninja takes what is in the pipe, and the rest as its first jobs end (it never waits on
    // the pipe itself): wait until it holds at least two.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let companion = daemon.status()["companion"].clone();
        let held =
            companion["tokens"].as_u64().unwrap_or(0) - companion["in_pipe"].as_u64().unwrap_or(0);
        if held >= 2 {
            break;
        }
        ensure(Instant::now() < deadline, || format!("ninja took no two tokens: {companion}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    ninja.kill();
    daemon.wait_for_free(jobs as usize);
    let recovered = daemon.status()["companion"]["recovered"].clone();
    println!("figure companion_recovered {recovered}");
    ensure(recovered.as_u64() >= Some(1), || format!("recovered {recovered}"))?;
    daemon.assert_pool_whole(jobs as usize)
}

/// A whole `steve exec --pipe -- make` tree (make 4.3) holding every token is killed with
/// SIGKILL: every token it borrowed comes back, and the pool is whole.
fn killed_exec_pipe_tree() -> Result<(), String> {
    let jobs = 3;
    let daemon = Daemon::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::makefile(dir.path(), "held", 6, 30.0, &log);
    let mut tree = Tree::spawn(&mut exec_pipe(
        &env_path("STEVE_TEST_MAKE43"),
        dir.path(),
        &daemon.makeflags(jobs),
    ));
    wait_for("make to run three jobs", Duration::from_secs(20), || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        (text.lines().filter(|line| line.starts_with("start")).count() == 3).then_some(())
    });
    let status = daemon.status();
    ensure(status["pool"]["free"] == 0, || format!("tokens free while the tree runs: {status}"))?;
    tree.kill();
    daemon.wait_for_free(jobs as usize);
    daemon.assert_pool_whole(jobs as usize)
}

/// `steve status` with nothing but the clients' MAKEFLAGS finds the server's control socket.
fn status_finds_the_server() -> Result<(), String> {
    let daemon = Daemon::start(2);
    let output = Command::new(env_path("STEVE_BIN"))
        .args(["status", "--json"])
        .env("MAKEFLAGS", daemon.makeflags(2))
        .env_remove("STEVE_CONTROL")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    ensure(output.status.success(), || {
        format!("steve status: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    ensure(status["backend"] == target().backend.as_str(), || format!("{status}"))?;
    ensure(status["path"] == jobserver().to_str().unwrap(), || format!("{status}"))
}
