//! Handing the server over while builds run (`steve serve --takeover`): a GNU make of 40 jobs on
//! the device (or the mount's file) and one of 20 on the companion FIFO, on four tokens, during
//! which the server is replaced by a fresh process of the binary three times. Both makes must
//! finish with exit 0 and no jobserver warning, never run more than the pool (plus their
//! implicit tokens), and the pool must be whole at the end, served by the last successor, with
//! the companion FIFO idle; each predecessor must exit by itself, with status 0, once taken
//! over.
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
/// The jobs of the make on the companion FIFO: it runs them until the handovers are over (the
/// rest then end at once), so that it still has the FIFO open through every handover. (A reader
/// that closes the FIFO during a handover is not seen by the successor, whose inotify starts
/// after it: its spare then stays in the pipe until the next reader comes or others wait.)
const FIFO_JOBS: usize = 200;
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
    let first = Daemon::start(JOBS);
    let control = first.control.clone();
    let fifo = first.companion()?;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let (device_dir, fifo_dir) = (dir.path().join("device"), dir.path().join("fifo"));
    fs::create_dir_all(&device_dir).unwrap();
    fs::create_dir_all(&fifo_dir).unwrap();
    projects::makefile(&device_dir, "job", MAKE_JOBS, JOB_SECONDS, &log);
    let handovers_done = dir.path().join("handovers-done");
    projects::makefile_until(&fifo_dir, "fifojob", FIFO_JOBS, JOB_SECONDS, &log, &handovers_done);
    let stop = Arc::new(AtomicBool::new(false));
    let pauses = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || probe_reads(&stop))
    };
    // Killed with its jobs if the scenario fails before it ends.
    let start_make = |dir: &std::path::Path, makeflags: String| {
        Tree::spawn(
            Command::new(env_path("STEVE_TEST_MAKE44"))
                .current_dir(dir)
                .env("MAKEFLAGS", makeflags)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
    };
    let make = start_make(&device_dir, first.makeflags(JOBS));
    let fifo_make =
        start_make(&fifo_dir, format!(" -j{JOBS} --jobserver-auth=fifo:{}", fifo.display()));
    let mut serving = first;
    let mut taken_over = Vec::new();
    for round in 1..=HANDOVERS {
        // Each handover a few jobs into the build, while make holds tokens and waits for more.
        std::thread::sleep(Duration::from_millis(600));
        let mut command = serve_command(JOBS, &["--takeover", "--control"]);
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
    fs::write(&handovers_done, "").unwrap();
    let outputs = [("make", make.output()), ("the companion FIFO's make", fifo_make.output())];
    stop.store(true, Ordering::Relaxed);
    let (longest, reads) = pauses.join().expect("the probing client");
    for (which, output) in &outputs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure(output.status.success(), || format!("{which} failed: {stderr}\n{}", serving.log()))?;
        ensure(!stderr.contains("jobserver") && !stderr.contains("warning"), || {
            format!("{which} warned: {stderr}")
        })?;
    }
    let peak = timeline::peak_of(&log, MAKE_JOBS + FIFO_JOBS);
    let times: Vec<String> =
        taken_over.iter().map(|took| format!("{:.0}", took.as_secs_f64() * 1000.0)).collect();
    println!("figure handover_peak {peak}");
    println!(
        "figure handover_longest_pause_ms {:.1} (the longest of {reads} non-blocking reads)",
        longest.as_secs_f64() * 1000.0
    );
    println!("figure handover_successor_ready_ms {}", times.join(","));
    ensure(peak <= JOBS as usize + 2 && peak >= 2, || {
        format!("{peak} jobs at once on {JOBS} tokens (each make's own one besides)")
    })?;
    ensure(fs::metadata(jobserver()).is_ok(), || "the jobserver is gone".to_string())?;
    serving.assert_pool_whole(JOBS as usize)
}

/// A fifo server SIGKILLed during a build and started again serves the pipe its predecessor
/// left, which the build still has open: a make started after the restart shares one pool with
/// the make started before it (a new pipe would be a second pool of four tokens beside the
/// first), and once both are done the pool is whole again.
pub fn killed_server_pipe_served_again() -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut first = Daemon::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let before = super::Make::start(&first, JOBS, dir.path(), "before", 24, 0.4, &log);
    steve_tests::wait_for("the first make's jobs", Duration::from_secs(30), || {
        (super::started(&log) >= 3).then_some(())
    });
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    first.wait_exit(Duration::from_secs(10))?;
    let second = Daemon::start(JOBS);
    ensure(second.log().contains("serving again the pipe"), || {
        format!("the new server did not take the pipe up:\n{}", second.log())
    })?;
    let after = super::Make::start(&second, JOBS, dir.path(), "after", 24, 0.4, &log);
    ensure(before.finish() && after.finish(), || "a make failed".to_string())?;
    let peak = timeline::peak_of(&log, 48);
    println!("figure killed_server_peak {peak}");
    ensure(peak <= JOBS as usize + 2, || {
        format!("{peak} jobs at once on one pool of {JOBS} (two makes' own tokens besides)")
    })?;
    second.wait_for_free(JOBS as usize);
    second.assert_pool_whole(JOBS as usize)
}
