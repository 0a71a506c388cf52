//! Handing the server over while a build runs (`steve serve --takeover`): a GNU make of 40 jobs
//! on four tokens, during which the server is replaced by a fresh process of the binary three
//! times. make must finish with exit 0 and no jobserver warning, never run more than the pool
//! (plus its implicit token), and the pool must be whole at the end, served by the last
//! successor; each predecessor must exit by itself, with status 0, once taken over.
//!
//! Beside make, a client of this process reads without blocking over and over (giving back any
//! token it gets): a read the server answers at once returns at once, token or `EAGAIN`, so the
//! longest such read is the longest pause a client saw (figure `handover_longest_pause_ms`,
//! reported, not asserted: a figure, not a rule).

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steve_tests::{projects, timeline};

use super::{ensure, env_path, jobserver, serve_command, Daemon, Tree};

/// Tokens in the pool.
const JOBS: u32 = 4;
/// make's jobs, and how long each runs.
const MAKE_JOBS: usize = 40;
const JOB_SECONDS: f64 = 0.3;
/// Handovers during the build.
const HANDOVERS: usize = 3;

/// Non-blocking reads (a token got is written back) until `stop`; the longest one, and how
/// many there were.
fn probe_reads(stop: &AtomicBool) -> (Duration, usize) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(jobserver())
        .unwrap();
    let mut byte = [0u8; 1];
    let (mut longest, mut reads) = (Duration::ZERO, 0);
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let got = file.read(&mut byte);
        longest = longest.max(asked.elapsed());
        reads += 1;
        match got {
            Ok(1) => file.write_all(&byte).expect("the token back"),
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            other => panic!("a non-blocking read: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (longest, reads)
}

/// The scenario.
pub fn handover_during_make() -> Result<(), String> {
    // The companion FIFO is not handed over yet: this server has none.
    let first = Daemon::start_with(serve_command(JOBS, &["--no-fifo"]));
    let control = first.control.clone();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::makefile(dir.path(), "job", MAKE_JOBS, JOB_SECONDS, &log);
    let stop = Arc::new(AtomicBool::new(false));
    let pauses = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || probe_reads(&stop))
    };
    // Killed with its jobs if the scenario fails before it ends.
    let make = Tree::spawn(
        Command::new(env_path("STEVE_TEST_MAKE44"))
            .current_dir(dir.path())
            .env("MAKEFLAGS", first.makeflags(JOBS))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut serving = first;
    let mut taken_over = Vec::new();
    for round in 1..=HANDOVERS {
        // Each handover a few jobs into the build, while make holds tokens and waits for more.
        std::thread::sleep(Duration::from_millis(600));
        let mut command = serve_command(JOBS, &["--no-fifo", "--takeover", "--control"]);
        command.arg(&control);
        let started = Instant::now();
        let successor = Daemon::start_with(command);
        let mut predecessor = std::mem::replace(&mut serving, successor);
        let status = predecessor.wait_exit(Duration::from_secs(10)).map_err(|why| {
            format!("handover {round}: the old server {why}\n{}", predecessor.log())
        })?;
        ensure(status.success(), || {
            format!("handover {round}: the old server exited with {status}\n{}", predecessor.log())
        })?;
        ensure(predecessor.log().contains("took the server over"), || {
            format!("handover {round}: the old server does not say so:\n{}", predecessor.log())
        })?;
        taken_over.push(started.elapsed());
    }
    let output = make.output();
    stop.store(true, Ordering::Relaxed);
    let (longest, reads) = pauses.join().expect("the probing client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure(output.status.success(), || format!("make failed: {stderr}\n{}", serving.log()))?;
    ensure(!stderr.contains("jobserver") && !stderr.contains("warning"), || {
        format!("make warned: {stderr}")
    })?;
    let peak = timeline::peak_of(&log, MAKE_JOBS);
    let times: Vec<String> =
        taken_over.iter().map(|took| format!("{:.0}", took.as_secs_f64() * 1000.0)).collect();
    println!("figure handover_peak {peak}");
    println!(
        "figure handover_longest_pause_ms {:.1} (the longest of {reads} non-blocking reads)",
        longest.as_secs_f64() * 1000.0
    );
    println!("figure handover_successor_ready_ms {}", times.join(","));
    ensure(peak <= JOBS as usize + 1 && peak >= 2, || {
        format!("{peak} jobs at once on {JOBS} tokens (make's own one besides)")
    })?;
    ensure(fs::metadata(jobserver()).is_ok(), || "the jobserver is gone".to_string())?;
    serving.assert_pool_whole(JOBS as usize)
}
