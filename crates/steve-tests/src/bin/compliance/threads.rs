//! The kernel-served backends served from several threads (`steve serve --threads 2`: the
//! connection read and answered on two channels, the first and a clone, each by a thread of
//! its own): the server's threads are there, and the scenarios of the suite whose answers
//! come late (a read that waits, one a signal interrupts, a token reclaimed from a killed
//! holder for a waiting reader, the crash books at a SIGKILL, a handover during a build) run
//! again in the shape the suite's servers are not in by default: cuse from two threads, fuse
//! (a thread per CPU by default, which is checked first) from the loop's thread alone. An
//! answer written on another channel than its request came on is lost to the kernel, and the
//! client waiting for it hangs. And a read waiting on a clone when the server is taken over
//! gets its token from the successor.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{ensure, handover, rerun, serve_command, Client, Daemon, Run, THREADS};

/// Serving threads in these runs.
const SERVING: u32 = 2;

/// Sets the suite's servers to `--threads` for as long as it lives, even through a panic.
pub(super) struct Threaded;

impl Threaded {
    pub(super) fn on(threads: u32) -> Threaded {
        THREADS.store(threads, Ordering::Relaxed);
        Threaded
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        THREADS.store(0, Ordering::Relaxed);
    }
}

/// The scenario.
pub fn served_from_threads() -> Result<(), String> {
    by_default_a_reader_per_cpu_on_fuse()?;
    let threaded = Threaded::on(SERVING);
    serving_threads_are_there()?;
    a_waiting_read_survives_a_handover()?;
    drop(threaded);
    // The rerun in the shape the suite did not run in: a fuse server is served from a thread
    // per CPU by default, so its rerun is from the loop's thread alone; a cuse server the
    // other way round.
    let other = if super::target().backend == "fuse" { 1 } else { SERVING };
    let _threaded = Threaded::on(other);
    let scenarios: [(&str, Run); 7] = [
        ("make_peak", super::make_peak),
        ("two_makes", super::two_makes),
        ("sigkill_reclaim", super::sigkill_reclaim),
        ("killed_while_waiting", super::killed_while_waiting),
        ("signal_interrupts_waiting_read", super::signal_interrupts_waiting_read),
        ("killed_right_after_an_answer", handover::killed_right_after_an_answer),
        ("handover_during_make", handover::handover_during_make),
    ];
    rerun(&scenarios, &format!("--threads {other}"), "served_from_threads")
}

/// Without `--threads` a fuse server reads from a thread per CPU it may run on, at most four
/// (none beside the loop's on one CPU); a cuse server from the loop's thread alone.
fn by_default_a_reader_per_cpu_on_fuse() -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let wanted = match super::target().backend.as_str() {
        "fuse" if cpus > 1 => cpus.min(4),
        _ => 0,
    };
    serving_threads_are(wanted, "by default")
}

/// A server started with `--threads 2` runs a serving thread per channel beside its loop's.
fn serving_threads_are_there() -> Result<(), String> {
    serving_threads_are(SERVING as usize, &format!("--threads {SERVING}"))
}

/// A server started as the suite's servers are now (`started_how` says how, for the failure)
/// runs `wanted` serving threads: looked for until that many serve (they start once it has
/// said where it serves) or 10 s have passed, and with none wanted a moment for any that
/// would start.
fn serving_threads_are(wanted: usize, started_how: &str) -> Result<(), String> {
    let daemon = Daemon::start(2);
    let names = || -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.child.id()));
        tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect()
    };
    let serving = |names: &[String]| names.iter().filter(|n| n.starts_with("steve-serve-")).count();
    let started = std::time::Instant::now();
    while serving(&names()) < wanted && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if wanted == 0 {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let names = names();
    ensure(serving(&names) == wanted, || {
        format!(
            "{started_how}: {wanted} serving threads wanted; the server's threads are {names:?}"
        )
    })
}

/// A client blocked in a read on the second channel while a successor takes the server over
/// (itself with `--threads 2`) gets a token from it once the pool grows: the clone went to the
/// successor with the read waiting on it. Clients are started until one's read waits there
/// (the debug log says on which channel each waits; the threads take turns). A CUSE
/// connection has one channel its threads share: there the read waits on it.
fn a_waiting_read_survives_a_handover() -> Result<(), String> {
    let wanted = if super::target().backend == "fuse" { "1" } else { "0" };
    let first = Daemon::start_with(serve_command(1, &["--debug"]));
    let mut holder = Client::start(&["hold", "1"]);
    read_line(&mut holder, Duration::from_secs(10))?;
    let mut waiters = Vec::new();
    let mut on_clone = None;
    while on_clone.is_none() && waiters.len() < 16 {
        let waiter = Client::start(&["hold", "1"]);
        let pid = waiter.pid();
        let channel = wait_for_channel(&first, pid)?;
        if channel == wanted {
            on_clone = Some(waiters.len());
        }
        waiters.push(waiter);
    }
    let Some(on_clone) = on_clone else {
        return Err(format!("none of {} waiting reads came on channel {wanted}", waiters.len()));
    };
    let mut command = serve_command(1, &["--takeover", "--control"]);
    command.arg(&first.control);
    let successor = Daemon::start_with(command);
    let mut first = first;
    first.wait_exit(Duration::from_secs(10)).map_err(|why| format!("the old server {why}"))?;
    let grown = successor.ctl(&["set", &format!("jobs={}", waiters.len() + 1)]);
    ensure(grown.status.success(), || format!("steve set jobs: {grown:?}"))?;
    let line = read_line(&mut waiters[on_clone], Duration::from_secs(10))
        .map_err(|why| format!("the read waiting on the clone: {why}\n{}", successor.log()))?;
    ensure(line.trim() == "holding 1", || format!("the read waiting on the clone: {line:?}"))?;
    // Every client gone, the whole pool comes back (and the books name nobody at the stop).
    let jobs = waiters.len() + 1;
    drop((holder, waiters));
    let started = Instant::now();
    loop {
        match successor.assert_pool_whole(jobs) {
            Ok(()) => return Ok(()),
            Err(why) if started.elapsed() > Duration::from_secs(5) => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The channel the debug log of `daemon` says the read of `pid` waits on.
fn wait_for_channel(daemon: &Daemon, pid: u32) -> Result<String, String> {
    let started = Instant::now();
    let needle = format!("pid={pid} ");
    while started.elapsed() < Duration::from_secs(10) {
        let log = daemon.log();
        let waits = log.lines().find(|line| line.contains("read waits") && line.contains(&needle));
        if let Some(channel) = waits.and_then(|line| line.split("channel=").nth(1)) {
            return Ok(channel.split_whitespace().next().unwrap_or("").to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("the read of pid {pid} never waited:\n{}", daemon.log()))
}

/// The next line `client` prints, within `limit`.
fn read_line(client: &mut Client, limit: Duration) -> Result<String, String> {
    let stdout = client.0.stdout.as_mut().ok_or("no stdout")?;
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
    let millis = PollTimeout::try_from(limit.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, millis).map_err(|errno| errno.to_string())? == 0 {
        return Err(format!("nothing within {limit:?}"));
    }
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|error| error.to_string())?;
    ensure(!line.is_empty(), || "it exited without a word".to_string())?;
    Ok(line)
}
