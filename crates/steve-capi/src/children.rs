//! The process side of jobs: SIGCHLD through a signalfd, forking a job, reaping children.
//!
//! Every raw call the C library makes that has no safe wrapper is here, each with its SAFETY
//! note. SIGCHLD is blocked in the calling thread while a jobserver is open and read from a
//! signalfd, so that one poll(2) waits for a token and for children at once (libjobserver's
//! design); each job also has a pidfd, so that a job's end is seen even when SIGCHLD goes to
//! another thread or a handler of the application's.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// SIGCHLD, blocked in this thread and delivered through a signalfd.
#[derive(Debug)]
pub struct ChildSignals {
    fd: SignalFd,
    /// The thread's signal mask before: what jobs start with, and what comes back on close.
    previous_mask: SigSet,
}

impl ChildSignals {
    /// Blocks SIGCHLD in this thread and opens the signalfd that receives it.
    pub fn new() -> Result<ChildSignals, Errno> {
        let mut sigchld = SigSet::empty();
        sigchld.add(Signal::SIGCHLD);
        let mut previous_mask = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigchld), Some(&mut previous_mask))?;
        match SignalFd::with_flags(&sigchld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Ok(ChildSignals { fd, previous_mask }),
            Err(errno) => {
                let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous_mask), None);
                Err(errno)
            }
        }
    }

    /// Readable when a SIGCHLD is pending.
    pub fn readiness(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending SIGCHLD: they coalesce, so one means "some children ended".
    pub fn drain(&self) {
        while let Ok(Some(_)) = self.fd.read_signal() {}
    }

    /// What a job runs with: the mask the thread had before the jobserver opened.
    pub fn previous_mask(&self) -> SigSet {
        self.previous_mask
    }
}

impl Drop for ChildSignals {
    fn drop(&mut self) {
        // SIGCHLD is unblocked again only if it was not blocked before this jobserver opened.
        if !self.previous_mask.contains(Signal::SIGCHLD) {
            let mut sigchld = SigSet::empty();
            sigchld.add(Signal::SIGCHLD);
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigchld), None);
        }
    }
}

/// What the new process does between fork and the job's function: set before the fork, so
/// that the child allocates nothing.
#[derive(Debug)]
pub struct ChildSetup {
    /// The signal mask the job runs with.
    pub mask: SigSet,
    /// The library's own descriptors, and for a job that does not share the jobserver, the
    /// descriptors that name it: closed in the child.
    pub close: Vec<RawFd>,
}

/// A C job function and its argument.
pub type JobFunction = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;

/// Forks a process that runs `function(data)` and exits with what it returns. Returns the
/// child's pid to the parent.
///
/// # Safety
/// `function` must be safe to call with `data` in the new process, as libjobserver requires of
/// its callers: the child is a copy of this process with only the calling thread.
pub unsafe fn fork_job(
    setup: &ChildSetup,
    function: JobFunction,
    data: *mut libc::c_void,
) -> Result<libc::pid_t, Errno> {
    // Output the program buffered but did not write yet would otherwise be written twice:
    // by the program, and by the job when exit(3) flushes its copy.
    // SAFETY: fflush(NULL) flushes every open output stream; it takes no pointer of ours.
    unsafe { libc::fflush(std::ptr::null_mut()) };
    // SAFETY: fork has no memory-safety preconditions of its own; what the child does is
    // limited to async-signal-safe calls (sigprocmask, close) before the caller's function,
    // which the caller vouches for.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Errno::last()),
        0 => {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&setup.mask), None);
            for fd in &setup.close {
                // SAFETY: closing a descriptor number is always memory-safe; these are the
                // library's own copies, inherited by the fork and used by nothing in the child.
                unsafe { libc::close(*fd) };
            }
            // SAFETY: the caller's function, called as libjobserver calls it (see above).
            let status = unsafe { function(data) };
            // SAFETY: exit(3) runs the process's atexit handlers and flushes stdio, as a job
            // of libjobserver's ends; the child never returns into the library.
            unsafe { libc::exit(status) }
        }
        pid => Ok(pid),
    }
}

/// What `waitpid(pid, WNOHANG)` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// This child ended, with this raw status (as waitpid(2) gives it).
    Ended(libc::pid_t, libc::c_int),
    /// No child (of those asked about) has ended yet.
    Running,
    /// There is no such child: somebody else reaped it (`ECHILD`).
    NoChild,
}

/// Reaps child `pid` (or any child, for -1) if it has ended, without waiting unless `block`.
pub fn reap(pid: libc::pid_t, block: bool) -> Result<Reaped, Errno> {
    let mut status: libc::c_int = 0;
    let options = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: `status` is a valid place for waitpid to write one int.
        let found = unsafe { libc::waitpid(pid, &mut status, options) };
        return match found {
            0 => Ok(Reaped::Running),
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => Ok(Reaped::NoChild),
                errno => Err(errno),
            },
            pid => Ok(Reaped::Ended(pid, status)),
        };
    }
}

/// A pidfd for child `pid`, if the kernel gives one (5.3 and later).
pub fn pidfd(pid: libc::pid_t) -> Option<OwnedFd> {
    steve_core::os::pidfd_open(pid as u32).ok()
}

/// The raw descriptor of `fd`, for [`ChildSetup::close`].
pub fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}
