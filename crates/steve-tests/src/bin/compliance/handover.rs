//! Handing the server over while builds run (`steve serve --takeover`): a GNU make of 40 jobs on
//! the device (or the mount's file, or the fifo backend's pipe) and, beside a device or a mount,
//! one on the companion FIFO, on four tokens, during which the server is replaced by a fresh
//! process of the binary three times. The makes must finish with exit 0 and no jobserver
//! warning, never run more than the pool (plus their implicit tokens), and the pool must be
//! whole at the end, served by the last successor, with the companion FIFO idle; each
//! predecessor must exit by itself, with status 0, once taken over.
//!
//! Also what a server killed without handing over leaves: on fifo the pipe is served again, on
//! fuse and cuse the crash books count the tokens a surviving make still holds, and never a
//! token a client was told it had given back.
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

use super::{ensure, env_path, jobserver, serve_command, Client, Daemon, Tree};

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
    // The fifo backend's pipe is the jobserver itself: no companion beside it.
    let fifo = if super::target().per_process() { Some(first.companion()?) } else { None };
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
    let fifo_make = fifo.as_ref().map(|fifo| {
        start_make(&fifo_dir, format!(" -j{JOBS} --jobserver-auth=fifo:{}", fifo.display()))
    });
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
    let mut outputs = vec![("make", make.output())];
    outputs.extend(fifo_make.map(|fifo_make| ("the companion FIFO's make", fifo_make.output())));
    stop.store(true, Ordering::Relaxed);
    let (longest, reads) = pauses.join().expect("the probing client");
    for (which, output) in &outputs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure(output.status.success(), || format!("{which} failed: {stderr}\n{}", serving.log()))?;
        ensure(!stderr.contains("jobserver") && !stderr.contains("warning"), || {
            format!("{which} warned: {stderr}")
        })?;
    }
    let peak = timeline::peak_of(&log, MAKE_JOBS + if fifo.is_some() { FIFO_JOBS } else { 0 });
    let times: Vec<String> =
        taken_over.iter().map(|took| format!("{:.0}", took.as_secs_f64() * 1000.0)).collect();
    println!("figure handover_peak {peak}");
    println!(
        "figure handover_longest_pause_ms {:.1} (the longest of {reads} non-blocking reads)",
        longest.as_secs_f64() * 1000.0
    );
    println!("figure handover_successor_ready_ms {}", times.join(","));
    let makes = 1 + usize::from(fifo.is_some());
    ensure(peak <= JOBS as usize + makes && peak >= 2, || {
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

/// A fuse or cuse server SIGKILLed while a make holds two of its tokens, and started again:
/// the new server finds the make in the crash books its predecessor kept, counts the make's
/// two tokens as held until it exits, so a make started meanwhile runs on the two tokens left
/// (plus its own), and takes them back when the old make exits (which fails, writing them back
/// to a connection that is gone).
pub fn killed_server_holders_counted() -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut first = Daemon::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let holder_dir = dir.path().join("holder");
    fs::create_dir_all(&holder_dir).unwrap();
    // -j3 and three jobs that run until `stop`: make reads two tokens, then only waits for
    // its children, never touching the jobserver until they end.
    let mut makefile = String::from(".PHONY: all h0 h1 h2\nall: h0 h1 h2\n");
    for job in ["h0", "h1", "h2"] {
        makefile.push_str(&format!(
            "{job}:\n\t@touch started-{job}; while [ ! -e {} ]; do sleep 0.1; done\n",
            stop.display()
        ));
    }
    fs::write(holder_dir.join("Makefile"), makefile).unwrap();
    let holder = Tree::spawn(
        Command::new(env_path("STEVE_TEST_MAKE44"))
            .current_dir(&holder_dir)
            .env("MAKEFLAGS", first.makeflags(3))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let holder_pid = holder.0.as_ref().expect("running").id();
    steve_tests::wait_for("the holding make's three jobs", Duration::from_secs(60), || {
        let started = ["h0", "h1", "h2"]
            .iter()
            .filter(|job| holder_dir.join(format!("started-{job}")).exists())
            .count();
        (started == 3).then_some(())
    });
    let held = first.status()["holders"]
        .as_array()
        .and_then(|holders| holders.iter().find(|h| h["pid"] == holder_pid))
        .map(|h| h["tokens"].clone());
    ensure(held == Some(serde_json::json!(2)), || {
        format!("make {holder_pid} should hold 2 tokens: {}", first.status()["holders"])
    })?;
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    first.wait_exit(Duration::from_secs(10))?;
    if super::target().backend == "cuse" {
        // The kernel takes the node away once the connection is gone.
        steve_tests::wait_for("the dead server's node to go", Duration::from_secs(30), || {
            fs::symlink_metadata(jobserver()).is_err().then_some(())
        });
    }
    let second = Daemon::start(JOBS);
    ensure(second.log().contains(&format!("pid {holder_pid} still holds 2 token(s)")), || {
        format!("the new server did not count the make's tokens:\n{}", second.log())
    })?;
    let free = &second.status()["pool"]["free"];
    ensure(*free == JOBS - 2, || format!("{free} free, with 2 of {JOBS} out in the old make"))?;
    let log = dir.path().join("timeline");
    let after = super::Make::start(&second, JOBS, dir.path(), "after", 12, 0.3, &log);
    ensure(after.finish(), || "the make after the restart failed".to_string())?;
    let peak = timeline::peak_of(&log, 12);
    println!("figure killed_server_holders_peak {peak}");
    ensure((2..=JOBS as usize - 1).contains(&peak), || {
        format!("{peak} jobs at once with 2 of {JOBS} tokens still out (and make's own besides)")
    })?;
    fs::write(&stop, "").unwrap();
    let _ = holder.output();
    second.wait_for_free(JOBS as usize);
    let reclaimed = &second.status()["counters"]["reclaimed"];
    ensure(*reclaimed == 2, || format!("reclaimed {reclaimed}, not the old make's 2"))?;
    second.assert_pool_whole(JOBS as usize)
}

/// How long strace holds the server in each `write` it makes (an answer to the kernel, a log
/// line) before letting it go on: the moment after an answer, before the loop turn ends, made
/// long enough to kill the server in.
const HELD_AFTER_EACH_WRITE: Duration = Duration::from_millis(400);

/// strace attached to a server, holding it in every `write` system call after the kernel took
/// the bytes; detached (killed) when dropped.
struct HeldAfterWrites(std::process::Child);

impl HeldAfterWrites {
    fn attach(pid: u32) -> Result<HeldAfterWrites, String> {
        use std::io::BufRead;
        let delay = format!("inject=write:delay_exit={}", HELD_AFTER_EACH_WRITE.as_micros());
        let mut child = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", "trace=write", "-e", &delay, "-p"])
            .arg(pid.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("strace: {e} (scripts/test installs it)"))?;
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).map_err(|e| e.to_string())?;
        ensure(line.contains("attached"), || format!("strace -p {pid} said {line:?}"))?;
        // Read on, so that strace never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Ok(HeldAfterWrites(child))
    }
}

impl Drop for HeldAfterWrites {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fuse or cuse server SIGKILLed the moment after it answered a client, before its loop turn
/// ended (strace holds it there): the crash books already say what the client was told. A
/// client whose two reads were just answered counts as holding 2 for the server started after;
/// one whose two writes back were just answered counts as holding nothing, so its tokens are not
/// kept from the pool until it exits (for a long-lived client, for hours).
pub fn killed_right_after_an_answer() -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader};
    for give_back in [false, true] {
        let mut first = Daemon::start(2);
        let held = HeldAfterWrites::attach(first.child.id())?;
        let role = if give_back { "take-and-return" } else { "hold" };
        let mut client = Client(
            Command::new(std::env::current_exe().unwrap())
                .args([role, "2"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut said = BufReader::new(client.0.stdout.take().unwrap()).lines();
        let mut expect = |wanted: &str| match said.next() {
            Some(Ok(line)) if line == wanted => Ok(()),
            other => Err(format!("the client said {other:?}, not {wanted:?}")),
        };
        expect("holding 2")?;
        if give_back {
            // A status asked after the reads is answered in a later turn: the books have
            // counted the 2 by then whichever way they are kept.
            let holders = first.status()["holders"].clone();
            ensure(holders[0]["pid"] == client.pid() && holders[0]["tokens"] == 2, || {
                format!("holders {holders}")
            })?;
            client.0.stdin.as_mut().unwrap().write_all(b"return\n").unwrap();
            expect("returned 2")?;
        }
        kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
        first.wait_exit(Duration::from_secs(10))?;
        drop(held);
        if super::target().backend == "cuse" {
            steve_tests::wait_for("the dead server's node to go", Duration::from_secs(30), || {
                fs::symlink_metadata(jobserver()).is_err().then_some(())
            });
        }
        let second = Daemon::start(2);
        let counted = !give_back;
        let says = second.log().contains(&format!("pid {} still holds 2 token(s)", client.pid()));
        let free = second.status()["pool"]["free"].clone();
        ensure(says == counted && free == if counted { 0 } else { 2 }, || {
            format!(
                "after `{role} 2` and a SIGKILL, {free} free; the new server should{} count the \
                 client's 2 tokens:\n{}",
                if counted { "" } else { " not" },
                second.log()
            )
        })?;
        drop(client);
        second.wait_for_free(2);
        second.assert_pool_whole(2)?;
    }
    Ok(())
}
