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
//! pollers' reservations) run again against such servers.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{ensure, handover, rerun, serve_command, Daemon, Run, IO_URING};

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
    served_through_the_ring()?;
    let scenarios: [(&str, Run); 9] = [
        ("make_peak", super::make_peak),
        ("two_makes", super::two_makes),
        ("enospc_and_grace", super::enospc_and_grace),
        ("nonblocking_eagain", super::nonblocking_eagain),
        ("poller_fairness", super::poller_fairness),
        ("sigkill_reclaim", super::sigkill_reclaim),
        ("killed_while_waiting", super::killed_while_waiting),
        ("signal_interrupts_waiting_read", super::signal_interrupts_waiting_read),
        ("killed_right_after_an_answer", handover::killed_right_after_an_answer),
    ];
    rerun(&scenarios, "--io-uring on", "served_through_io_uring")
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

/// With the parameter on, the server says it registered ring entries, and serves.
fn served_through_the_ring() -> Result<(), String> {
    let daemon = Daemon::start_with(serve_command(2, &[]));
    daemon.assert_pool_whole(2)?;
    let log = daemon.log();
    ensure(log.contains("serving FUSE requests through io_uring"), || {
        format!("--io-uring on with enable_uring on logged:\n{log}")
    })
}
