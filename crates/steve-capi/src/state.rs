//! One open jobserver: the connection, the jobs running on its tokens, and the one wait every
//! blocking call goes through.
//!
//! The wait is strict by construction: the token descriptor is this library's own
//! non-blocking file description (steve-core's [`Client`]), and poll(2) watches it together
//! with the SIGCHLD signalfd and each job's pidfd. A readable token descriptor is only a hint:
//! the read that follows may find nothing (another process was faster), which means waiting
//! again, never blocking.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use steve_core::client::{Client, ImplicitToken, Jobserver, Token};
use steve_core::makeflags::JobserverAuth;

use crate::children::{self, ChildSetup, ChildSignals, JobFunction, Reaped};
use crate::errors::errno_of;

/// The C callback told of a job's end.
pub type DoneFunction = unsafe extern "C" fn(*mut libc::c_void, libc::c_int);

/// What a running job holds; given back when the job ends.
#[derive(Debug)]
enum Slot {
    /// The one job that needs no token.
    Implicit(#[allow(dead_code)] ImplicitToken),
    /// A token read from the jobserver: its byte goes back.
    Token(Token),
}

#[derive(Debug)]
struct Job {
    pid: libc::pid_t,
    /// None when the kernel has no pidfds, or once somebody else reaped the job (it then waits
    /// for jobserver_terminate_job).
    pidfd: Option<OwnedFd>,
    slot: Slot,
    data: *mut libc::c_void,
    done: Option<DoneFunction>,
}

/// A job that ended, whose callback is still to be called. Callbacks run once the library is
/// done with its state, so that one may call the library again.
#[derive(Debug)]
pub struct Ended {
    done: Option<DoneFunction>,
    data: *mut libc::c_void,
    status: libc::c_int,
}

impl Ended {
    /// Calls the job's `done` callback.
    ///
    /// # Safety
    /// The callback and its data are the caller's, given to jobserver_launch_job.
    pub unsafe fn notify(self) {
        if let Some(done) = self.done {
            // SAFETY: as the caller of jobserver_launch_job promised.
            unsafe { done(self.data, self.status) }
        }
    }
}

/// How a wait ended.
#[derive(Debug)]
enum Woke {
    /// A token (or the implicit one) for a new job.
    Slot(Slot),
    /// At least one job ended.
    JobsEnded,
    /// The timeout passed.
    TimedOut,
}

/// An open jobserver.
#[derive(Debug)]
pub struct State {
    client: Client,
    /// The jobserver, when this process created it.
    created: Option<Jobserver>,
    auth: JobserverAuth,
    signals: ChildSignals,
    jobs: Vec<Job>,
    ended: Vec<Ended>,
    /// Tokens whose write-back failed: lost to this process.
    lost: usize,
    /// A reap stopped at a child that was not a job: more may have ended, unannounced.
    reap_pending: bool,
    /// The last child that ended and was not a job: (pid, status).
    pub stopped: Option<(libc::pid_t, libc::c_int)>,
}

/// Why a close did not happen, or what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRefused {
    /// Jobs still run (EBUSY).
    Busy,
    /// Tokens are out with another process that may still give them back (EAGAIN).
    Uncountable,
}

impl State {
    /// A state for `client`, which `created` made if this process created the jobserver.
    pub fn new(
        client: Client,
        created: Option<Jobserver>,
        auth: JobserverAuth,
    ) -> Result<State, Errno> {
        Ok(State {
            client,
            created,
            auth,
            signals: ChildSignals::new()?,
            jobs: Vec::new(),
            ended: Vec::new(),
            lost: 0,
            reap_pending: false,
            stopped: None,
        })
    }

    /// Where the jobserver is.
    pub fn auth(&self) -> &JobserverAuth {
        &self.auth
    }

    /// Jobs at once, for a jobserver this process created.
    pub fn created_jobs(&self) -> Option<usize> {
        self.created.as_ref().map(Jobserver::jobs)
    }

    /// Jobs not yet collected.
    pub fn current_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the implicit token is free.
    pub fn has_free_token(&self) -> bool {
        !self.jobs.iter().any(|job| matches!(job.slot, Slot::Implicit(_)))
    }

    /// The callbacks of jobs that ended, to be called now.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// Starts `function(data)` in a new process once a token is there, waiting at most
    /// `timeout` milliseconds (poll(2)'s convention).
    ///
    /// # Safety
    /// As for [`children::fork_job`].
    pub unsafe fn launch(
        &mut self,
        timeout: libc::c_int,
        shared: bool,
        data: *mut libc::c_void,
        function: JobFunction,
        done: Option<DoneFunction>,
    ) -> Result<(), Errno> {
        self.stopped = None;
        let slot = loop {
            match self.wait(timeout, true)? {
                Woke::Slot(slot) => break slot,
                Woke::JobsEnded => continue,
                Woke::TimedOut => return Err(Errno::EAGAIN),
            }
        };
        let setup = self.child_setup(shared);
        // SAFETY: passed on from our caller.
        match unsafe { children::fork_job(&setup, function, data) } {
            Ok(pid) => {
                let pidfd = children::pidfd(pid);
                self.jobs.push(Job { pid, pidfd, slot, data, done });
                Ok(())
            }
            Err(errno) => {
                self.release(slot);
                Err(errno)
            }
        }
    }

    /// Waits up to `timeout` for at least one job to end; the jobs left.
    pub fn wait_for_jobs(&mut self, timeout: libc::c_int) -> Result<usize, Errno> {
        self.stopped = None;
        if !self.jobs.is_empty() {
            self.wait(timeout, false)?;
        }
        Ok(self.jobs.len())
    }

    /// Waits for jobs as long as each wait of `timeout` sees one end; the jobs left.
    pub fn collect(&mut self, timeout: libc::c_int) -> Result<usize, Errno> {
        self.stopped = None;
        while !self.jobs.is_empty() {
            let before = self.jobs.len();
            self.wait(timeout, false)?;
            if self.jobs.len() == before {
                break;
            }
        }
        Ok(self.jobs.len())
    }

    /// Ends job `pid`, which the application reaped itself, with `status`.
    pub fn terminate(&mut self, pid: libc::pid_t, status: libc::c_int) -> Result<(), Errno> {
        let index = self.jobs.iter().position(|job| job.pid == pid).ok_or(Errno::ECHILD)?;
        self.end_job(index, status);
        Ok(())
    }

    /// Kills every job (SIGKILL) and reaps it. Jobs somebody else reaped stay, for
    /// jobserver_terminate_job: then ECHILD.
    pub fn clear(&mut self) -> Result<(), Errno> {
        let mut index = 0;
        while index < self.jobs.len() {
            let pid = self.jobs[index].pid;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            match children::reap(pid, true)? {
                Reaped::Ended(_, status) => self.end_job(index, status),
                Reaped::Running | Reaped::NoChild => {
                    self.jobs[index].pidfd = None;
                    index += 1;
                }
            }
        }
        if self.jobs.is_empty() {
            Ok(())
        } else {
            Err(Errno::ECHILD)
        }
    }

    /// Whether the jobserver may close, and whether every token came back: `Ok(true)` when
    /// all did, `Ok(false)` when some never will (EIDRM).
    pub fn check_close(&self) -> Result<bool, CloseRefused> {
        if !self.jobs.is_empty() {
            return Err(CloseRefused::Busy);
        }
        match &self.created {
            Some(jobserver) => {
                if jobserver.free() >= jobserver.jobs() - 1 {
                    Ok(true)
                } else if jobserver.held_elsewhere() {
                    Err(CloseRefused::Uncountable)
                } else {
                    Ok(false)
                }
            }
            None => Ok(self.lost == 0),
        }
    }

    /// One line per job, for jobserver_print: its pid, its token, its data.
    pub fn describe_jobs(&self, separator: &str) -> Vec<String> {
        self.jobs
            .iter()
            .map(|job| {
                let token = match &job.slot {
                    Slot::Implicit(_) => "implicit".to_string(),
                    Slot::Token(token) => format!("'{}'", token.byte().escape_ascii()),
                };
                format!("pid: {}{separator}token: {token}{separator}data: {:p}", job.pid, job.data)
            })
            .collect()
    }

    fn child_setup(&self, shared: bool) -> ChildSetup {
        let mut close = vec![children::raw(&self.signals.readiness())];
        close.extend(self.jobs.iter().filter_map(|job| job.pidfd.as_ref().map(children::raw)));
        if !shared {
            // As make does for a rule without '+': the descriptors MAKEFLAGS names are closed.
            // A path (fifo:, /dev/steve) cannot be taken away; make 4.4 leaves it too.
            if let JobserverAuth::Fds { read, write } = self.auth {
                close.extend([read, write]);
            }
        }
        ChildSetup { mask: self.signals.previous_mask(), close }
    }

    /// The one wait: for a slot (if `want_slot`), for jobs to end, or for `timeout`.
    fn wait(&mut self, timeout: libc::c_int, want_slot: bool) -> Result<Woke, Errno> {
        let deadline = u64::try_from(timeout)
            .ok()
            .map(|millis| Instant::now() + Duration::from_millis(millis));
        if self.reap_pending {
            let before = self.jobs.len();
            self.reap_any()?;
            if !want_slot && self.jobs.len() < before {
                return Ok(Woke::JobsEnded);
            }
        }
        loop {
            if want_slot {
                if let Some(implicit) = self.client.take_implicit() {
                    return Ok(Woke::Slot(Slot::Implicit(implicit)));
                }
                if let Some(token) = self.client.try_acquire().map_err(|e| errno_of(&e))? {
                    return Ok(Woke::Slot(Slot::Token(token)));
                }
            }
            let left = match deadline {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
                }
            };
            let before = self.jobs.len();
            let (signalled, token_trouble, ended_pids) = {
                let mut fds = vec![PollFd::new(self.signals.readiness(), PollFlags::POLLIN)];
                if want_slot {
                    fds.push(PollFd::new(self.client.readiness(), PollFlags::POLLIN));
                }
                let watched: Vec<libc::pid_t> =
                    self.jobs.iter().filter(|job| job.pidfd.is_some()).map(|job| job.pid).collect();
                fds.extend(self.jobs.iter().filter_map(|job| {
                    job.pidfd.as_ref().map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                }));
                poll(&mut fds, left)?;
                let fired = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
                let bad = PollFlags::POLLNVAL | PollFlags::POLLERR;
                let token_trouble =
                    want_slot && fds[1].revents().is_some_and(|events| events.intersects(bad));
                let first_job = if want_slot { 2 } else { 1 };
                let ended: Vec<libc::pid_t> = fds[first_job..]
                    .iter()
                    .zip(watched)
                    .filter(|(fd, _)| fired(fd))
                    .map(|(_, pid)| pid)
                    .collect();
                (fired(&fds[0]), token_trouble, ended)
            };
            if token_trouble {
                return Err(Errno::EBADF);
            }
            for pid in ended_pids {
                self.reap_job(pid)?;
            }
            if signalled {
                self.signals.drain();
                self.reap_any()?;
            }
            if self.jobs.len() < before && !want_slot {
                return Ok(Woke::JobsEnded);
            }
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline && !(want_slot && self.jobs.len() < before) {
                    return Ok(Woke::TimedOut);
                }
            }
        }
    }

    /// Reaps every child that ended: jobs end; the first other child stops the reaping and is
    /// reported (ECHILD, with `stopped`).
    fn reap_any(&mut self) -> Result<(), Errno> {
        self.reap_pending = false;
        loop {
            match children::reap(-1, false)? {
                Reaped::Running | Reaped::NoChild => return Ok(()),
                Reaped::Ended(pid, status) => {
                    match self.jobs.iter().position(|job| job.pid == pid) {
                        Some(index) => self.end_job(index, status),
                        None => {
                            self.stopped = Some((pid, status));
                            self.reap_pending = true;
                            return Err(Errno::ECHILD);
                        }
                    }
                }
            }
        }
    }

    /// Reaps job `pid`, whose pidfd said it ended.
    fn reap_job(&mut self, pid: libc::pid_t) -> Result<(), Errno> {
        let Some(index) = self.jobs.iter().position(|job| job.pid == pid) else { return Ok(()) };
        match children::reap(pid, false)? {
            Reaped::Ended(_, status) => self.end_job(index, status),
            // Reaped by the application itself: it calls jobserver_terminate_job.
            Reaped::NoChild => self.jobs[index].pidfd = None,
            Reaped::Running => {}
        }
        Ok(())
    }

    fn end_job(&mut self, index: usize, status: libc::c_int) {
        let job = self.jobs.swap_remove(index);
        self.release(job.slot);
        self.ended.push(Ended { done: job.done, data: job.data, status });
    }

    fn release(&mut self, slot: Slot) {
        if let Slot::Token(token) = slot {
            if token.give_back().is_err() {
                self.lost += 1;
            }
        }
    }
}
