//! Signals as events: a server blocks the signals it handles and reads them from a signalfd in
//! its one poll loop, so no handler runs at a random point and no state is touched from one.
//!
//! Block them before any thread starts ([`Signals::block`] in `main`), so that every thread
//! inherits the mask. Children started through `std::process::Command` get an empty mask back.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT, SIGTERM or SIGHUP: stop, cleaning up.
    Stop(Signal),
    /// SIGUSR1: write a status report to the log.
    Report,
    /// SIGCHLD: a child changed state.
    Child,
}

/// A signalfd for the signals steve handles.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

/// One received signal with the sender's details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// What it asks for.
    pub event: SignalEvent,
    /// The signal itself.
    pub signal: Signal,
    /// Whether a process sent it with kill(2), rather than the kernel (a terminal's ^C).
    pub sent_by_process: bool,
}

const HANDLED: [Signal; 5] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGCHLD];

impl Signals {
    /// Blocks the handled signals in the calling thread (and the threads it starts later) and
    /// opens a non-blocking signalfd for them.
    pub fn block() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        for signal in HANDLED {
            set.add(signal);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// The next pending signal, or `None` when none is pending.
    pub fn read_pending(&mut self) -> nix::Result<Option<Received>> {
        let Some(info) = self.fd.read_signal()? else {
            return Ok(None);
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            return Ok(None);
        };
        let event = match signal {
            Signal::SIGUSR1 => SignalEvent::Report,
            Signal::SIGCHLD => SignalEvent::Child,
            other => SignalEvent::Stop(other),
        };
        // SI_USER (0) and SI_QUEUE (negative) come from a process; SI_KERNEL and others do not.
        let sent_by_process = info.ssi_code <= 0;
        Ok(Some(Received { event, signal, sent_by_process }))
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits for `child`, passing on stop signals sent to this process by another (a terminal's ^C
/// already reached the child's whole process group) and calling `report` on SIGUSR1. The
/// signals must be blocked ([`Signals::block`]) before the child is started, so that its exit
/// (SIGCHLD) wakes the wait.
pub fn supervise(
    child: &mut std::process::Child,
    signals: &mut Signals,
    report: &mut dyn FnMut(),
) -> std::io::Result<std::process::ExitStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        while let Some(received) = signals.read_pending()? {
            match received.event {
                SignalEvent::Stop(signal) if received.sent_by_process => {
                    tracing::info!("{signal} received: passing it on to the command");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        signal,
                    );
                }
                SignalEvent::Stop(_) | SignalEvent::Child => {}
                SignalEvent::Report => report(),
            }
        }
    }
}
