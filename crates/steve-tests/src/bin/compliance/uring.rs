//! fuse served through io_uring (`steve serve --io-uring`), which the fuse module offers only
//! once root has written Y to its `enable_uring` parameter: the scenario sets it, and puts it
//! back as it found it when it ends, even through a panic (its name says so).
//!
//! With the parameter off, `--io-uring on` refuses to start with one line that says how to turn
//! it on, and `--io-uring auto` serves through /dev/fuse and says why. With it on, the server
//! says it serves through the ring, and the suite's scenarios whose answers come late (a read
//! that waits for a token, one a signal or SIGKILL interrupts: an answer to a ring entry's
//! request must go back through that entry, and the interrupt itself still comes on
//! /dev/fuse), and those of plain traffic (makes within the pool, ENOSPC, non-blocking reads,
//! pollers' reservations) run again against such servers: once with the ring served by the
//! loop's thread (`--threads 1`), once with `--threads 2`, a ring per CPU's queue each served
//! by a thread of its own pinned to that CPU (answers for a queue's waiting reads then cross
//! threads).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ensure, env_path, handover, rerun, serve_command, Daemon, Run, IO_URING};

/// The fuse module's switch.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Puts `enable_uring` back as it was when dropped.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.0);
    }
}

/// Sets the suite's servers to `--io-uring on` for as long as it lives, even through a panic.
struct Ringed;

impl Ringed {
    fn on() -> Ringed {
        IO_URING.store(true, Ordering::Relaxed);
        Ringed
    }
}

impl Drop for Ringed {
    fn drop(&mut self) {
        IO_URING.store(false, Ordering::Relaxed);
    }
}

/// Writes `value` (Y or N) to `enable_uring`.
fn set_enable_uring(value: &str) -> Result<(), String> {
    std::fs::write(ENABLE_URING, value).map_err(|e| format!("cannot write {ENABLE_URING}: {e}"))
}

/// The scenario.
pub fn served_through_io_uring_setting_enable_uring() -> Result<(), String> {
    let before = std::fs::read_to_string(ENABLE_URING).map_err(|e| {
        format!("this kernel has no FUSE over io_uring ({ENABLE_URING}: {e}): it needs 6.14+")
    })?;
    let _restore = Restore(before.trim().to_string());
    set_enable_uring("N")?;
    refused_while_off()?;
    auto_falls_back_while_off()?;
    set_enable_uring("Y")?;
    let _ringed = Ringed::on();
    // First the one ring the loop's thread serves (`--threads 1`; a fuse server's default is
    // a thread per CPU, and with it a ring per queue).
    let loop_alone = super::threads::Threaded::on(1);
    served_through_the_ring()?;
    the_benchs_ring_baseline_serves_and_stops()?;
    let scenarios: [(&str, Run); 10] = [
        ("make_peak", super::make_peak),
        ("two_makes", super::two_makes),
        ("enospc_and_grace", super::enospc_and_grace),
        ("nonblocking_eagain", super::nonblocking_eagain),
        ("poller_fairness", super::poller_fairness),
        ("sigkill_reclaim", super::sigkill_reclaim),
        ("killed_while_waiting", super::killed_while_waiting),
        ("signal_interrupts_waiting_read", super::signal_interrupts_waiting_read),
        ("killed_right_after_an_answer", handover::killed_right_after_an_answer),
        ("a_starved_queue_gets_going", a_starved_queue_gets_going),
    ];
    rerun(&scenarios, "--io-uring on --threads 1", "served_through_io_uring")?;
    drop(loop_alone);
    let _threaded = super::threads::Threaded::on(2);
    served_through_a_ring_per_queue()?;
    rerun(&scenarios, "--io-uring on --threads 2", "served_through_io_uring_queues")
}

/// A ring queue starved of entries gets going again. Every request comes from CPU 0, so to one
/// queue; the server is stopped (SIGSTOP) while twenty blocking reads and then the one token's
/// return come: the first reads take the queue's spare entries, the rest and the return wait
/// in the kernel, which hands them only to an entry that commits. Once the server goes on,
/// the reads it has wait for the token, so nothing would commit again: the server must notice
/// and answer one waiting read EINTR (its caller reads again) to fetch what the kernel holds.
/// Before that (e.g. with `Ring::kick` answering nothing) the return never arrived.
fn a_starved_queue_gets_going() -> Result<(), String> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let daemon = Daemon::start(1);
    let server = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    let here = nix::unistd::Pid::from_raw(0);
    let cpus = sched_getaffinity(here).map_err(|e| e.to_string())?;
    let mut cpu0 = CpuSet::new();
    cpu0.set(0).map_err(|e| e.to_string())?;
    // The clients inherit this thread's CPU.
    sched_setaffinity(here, &cpu0).map_err(|e| e.to_string())?;
    let mut clients = Vec::new();
    let outcome = starve_and_wait(server, &mut clients);
    let _ = nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGCONT);
    sched_setaffinity(here, &cpus).map_err(|e| e.to_string())?;
    if let Err(why) = outcome {
        // The server goes first: a client whose request it never took cannot die before.
        let log = daemon.log();
        drop(daemon);
        return Err(format!("{why}\n{log}"));
    }
    drop(clients);
    daemon.assert_pool_whole(1)
}

/// [`a_starved_queue_gets_going`]'s clients, with the server stopped meanwhile.
fn starve_and_wait(server: nix::unistd::Pid, clients: &mut Vec<StdioClient>) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    let start = |role: &[&str]| -> Result<StdioClient, String> {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a client: {e}"))?;
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(StdioClient { child, stdout })
    };
    clients.push(start(&["take-and-return", "1"])?);
    clients[0].expect("holding 1", Duration::from_secs(10))?;
    for _ in 0..20 {
        clients.push(start(&["open-then-read"])?);
        clients.last_mut().expect("just started").expect("open", Duration::from_secs(10))?;
    }
    let (holder, readers) = clients.split_first_mut().expect("started");
    kill(server, Signal::SIGSTOP).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    for reader in readers.iter_mut() {
        reader.say("go")?;
    }
    std::thread::sleep(Duration::from_millis(500));
    holder.say("go")?;
    std::thread::sleep(Duration::from_millis(300));
    kill(server, Signal::SIGCONT).map_err(|e| e.to_string())?;
    holder
        .expect("returned 1", Duration::from_secs(10))
        .map_err(|why| format!("the return: {why}"))?;
    for (n, reader) in readers.iter_mut().enumerate() {
        reader
            .expect("done", Duration::from_secs(20))
            .map_err(|why| format!("reader {n}: {why}"))?;
    }
    Ok(())
}

/// A client role with its standard input and output piped (killed when dropped).
struct StdioClient {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl StdioClient {
    /// Writes `line` to its standard input.
    fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        std::io::Write::write_all(stdin, format!("{line}\n").as_bytes()).map_err(|e| e.to_string())
    }

    /// Waits up to `limit` for it to say `line`.
    fn expect(&mut self, line: &str, limit: Duration) -> Result<(), String> {
        use std::os::fd::AsFd;
        if self.stdout.buffer().is_empty() {
            let mut ready = [nix::poll::PollFd::new(
                self.stdout.get_ref().as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let millis = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut ready, nix::poll::PollTimeout::from(millis));
            if ready[0].revents().is_none_or(|events| events.is_empty()) {
                return Err(format!("did not say {line:?} within {limit:?}"));
            }
        }
        let mut said = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut said).map_err(|e| e.to_string())?;
        ensure(said.trim() == line, || format!("said {said:?}, not {line:?}"))
    }
}

impl Drop for StdioClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--io-uring on` with the parameter off: the server exits with one line naming the switch.
fn refused_while_off() -> Result<(), String> {
    let mut command = serve_command(1, &[]);
    command.args(["--io-uring", "on"]).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot start steve: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("--io-uring on with enable_uring off started a server".to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)
        .map_err(|e| e.to_string())?;
    ensure(!status.success() && stderr.trim().lines().count() == 1, || {
        format!("--io-uring on with enable_uring off: {status}, {stderr:?}")
    })?;
    ensure(stderr.contains("enable_uring"), || format!("the refusal says {stderr:?}"))
}

/// `--io-uring auto` with the parameter off serves through /dev/fuse, and says why.
fn auto_falls_back_while_off() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(2, &["--io-uring", "auto"]));
    daemon.assert_pool_whole(2)?;
    let log = daemon.log();
    ensure(log.contains("serving through /dev/fuse") && log.contains("enable_uring"), || {
        format!("--io-uring auto with enable_uring off logged:\n{log}")
    })?;
    ensure(!log.contains("through io_uring ("), || format!("it served through the ring:\n{log}"))
}

/// The bench's minimal server in libfuse's io_uring shape (`steve bench-client fuse-baseline
/// --io-uring`): a ring on every CPU's queue, round trips answered, gone at SIGTERM.
fn the_benchs_ring_baseline_serves_and_stops() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mountpoint = dir.path().join("baseline");
    let log_path = dir.path().join("baseline.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut server = std::process::Command::new(env_path("STEVE_BIN"))
        .args(["bench-client", "fuse-baseline", "--io-uring"])
        .arg(&mountpoint)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the baseline: {e}"))?;
    let mut stdout = std::io::BufReader::new(server.stdout.take().expect("piped"));
    let mut ready = String::new();
    let _ = std::io::BufRead::read_line(&mut stdout, &mut ready);
    let served = std::process::Command::new(env_path("STEVE_BIN"))
        .args(["bench-client", "round-trips"])
        .arg(mountpoint.join("jobserver"))
        .arg("0.3")
        .output()
        .map_err(|e| format!("cannot start a client: {e}"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let started = Instant::now();
    let stopped = loop {
        match server.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if started.elapsed() > Duration::from_secs(10) => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if stopped.is_none() {
        let _ = server.kill();
        let _ = server.wait();
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    ensure(ready.trim() == "ready", || format!("the baseline said {ready:?}:\n{log}"))?;
    let served = served?;
    let round_trips: u64 = String::from_utf8_lossy(&served.stdout)
        .split_whitespace()
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    ensure(round_trips > 0, || format!("no round trips through the ring baseline:\n{log}"))?;
    let rings = log.matches("served through a ring of its own").count();
    let queues = possible_cpus();
    ensure(rings == queues, || format!("{rings} rings for {queues} queues:\n{log}"))?;
    ensure(stopped.is_some_and(|status| status.success()), || {
        format!("the baseline did not end at SIGTERM within 10 s ({stopped:?}):\n{log}")
    })
}

/// With `--threads` too, a ring per CPU's queue, each served by a thread pinned to its CPU.
fn served_through_a_ring_per_queue() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(2, &[]));
    daemon.assert_pool_whole(2)?;
    let log = daemon.log();
    let queues = possible_cpus();
    ensure(log.contains(&format!("a ring and a thread for each of {queues} CPUs")), || {
        format!("--io-uring on --threads 2 logged:\n{log}")
    })?;
    // Each serving thread's name and the CPUs it may run on, by name (started once the server
    // has said where it serves, and pinned as it starts, so looked for a moment).
    let threads = || -> BTreeSet<(String, String)> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.child.id()));
        let field = |status: &str, name: &str| {
            status.lines().find_map(|line| line.strip_prefix(name)).unwrap_or("").trim().to_string()
        };
        (tasks.into_iter().flatten().flatten())
            .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
            .map(|status| (field(&status, "Name:"), field(&status, "Cpus_allowed_list:")))
            .filter(|(name, _)| name.starts_with("steve-serve-"))
            .collect()
    };
    let pinned: BTreeSet<(String, String)> =
        (0..queues).map(|cpu| (format!("steve-serve-{cpu}"), cpu.to_string())).collect();
    let started = Instant::now();
    while threads() != pinned && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let threads = threads();
    ensure(threads == pinned, || format!("the serving threads and their CPUs: {threads:?}"))
}

/// The kernel's FUSE queues: one per possible CPU.
fn possible_cpus() -> usize {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    steve_core::cgroup::parse_cpu_list(&possible).unwrap_or(1)
}

/// With the parameter on, the server says it registered ring entries, and serves.
fn served_through_the_ring() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(2, &[]));
    daemon.assert_pool_whole(2)?;
    let log = daemon.log();
    ensure(log.contains("serving FUSE requests through io_uring"), || {
        format!("--io-uring on with enable_uring on logged:\n{log}")
    })
}
