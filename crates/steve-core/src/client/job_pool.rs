//! `JobPool`: commands run under tokens, one per running child (the first on the implicit
//! token): spawn, wait for one, collect all, terminate one, show the state.
//!
//! ```no_run
//! use std::process::Command;
//! use steve_core::client::{Client, JobPool};
//!
//! let mut pool = JobPool::new(Client::from_env()?);
//! for file in ["a.c", "b.c", "c.c"] {
//!     pool.spawn(Command::new("cc").args(["-c", file]))?;
//! }
//! for finished in pool.collect_all()? {
//!     assert!(finished.status.success(), "job {} failed", finished.id);
//! }
//! # Ok::<(), steve_core::client::ClientError>(())
//! ```
//!
//! While it waits for a token, the pool also watches its own children: one that finishes gives
//! its token back at once, so the pool never waits for a token its own finished child holds.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Client, ClientError, ImplicitToken, Token};

/// Names a job of a [`JobPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A job that ended.
#[derive(Debug)]
pub struct Finished {
    /// Which job.
    pub id: JobId,
    /// How it ended.
    pub status: ExitStatus,
}

/// What a running job holds; given back when the job is reaped.
#[derive(Debug)]
enum Slot {
    Implicit(#[allow(dead_code)] ImplicitToken),
    Token(#[allow(dead_code)] Token),
}

#[derive(Debug)]
struct Job {
    id: JobId,
    child: Child,
    pidfd: OwnedFd,
    slot: Slot,
}

/// Runs commands under a jobserver's tokens.
#[derive(Debug)]
pub struct JobPool {
    client: Client,
    running: Vec<Job>,
    finished: Vec<Finished>,
    next_id: u64,
}

impl JobPool {
    /// A pool taking its tokens from `client`.
    pub fn new(client: Client) -> JobPool {
        JobPool { client, running: Vec::new(), finished: Vec::new(), next_id: 0 }
    }

    /// Starts `command` once a token is free (the implicit one first), and returns its id.
    pub fn spawn(&mut self, command: &mut Command) -> Result<JobId, ClientError> {
        let slot = loop {
            if let Some(implicit) = self.client.take_implicit() {
                break Slot::Implicit(implicit);
            }
            if let Some(token) = self.client.try_acquire()? {
                break Slot::Token(token);
            }
            self.wait(true)?;
        };
        let child = command.spawn().map_err(ClientError::Io)?;
        let pidfd = crate::sys::pidfd_open(child.id()).map_err(ClientError::Io)?;
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.running.push(Job { id, child, pidfd, slot });
        Ok(id)
    }

    /// Waits for one job to end and returns it (jobs that ended earlier first); `None` when
    /// nothing runs and nothing is left to collect.
    pub fn wait_one(&mut self) -> Result<Option<Finished>, ClientError> {
        loop {
            if !self.finished.is_empty() {
                return Ok(Some(self.finished.remove(0)));
            }
            if self.running.is_empty() {
                return Ok(None);
            }
            self.wait(false)?;
        }
    }

    /// Waits for every job to end; returns them in the order they ended.
    pub fn collect_all(&mut self) -> Result<Vec<Finished>, ClientError> {
        let mut all = Vec::new();
        while let Some(finished) = self.wait_one()? {
            all.push(finished);
        }
        Ok(all)
    }

    /// Sends `signal` to job `id`; `false` if it is not running.
    pub fn terminate(&mut self, id: JobId, signal: Signal) -> Result<bool, ClientError> {
        let Some(job) = self.running.iter().find(|job| job.id == id) else { return Ok(false) };
        kill(Pid::from_raw(job.child.id() as i32), signal)
            .map_err(|errno| ClientError::Io(errno.into()))?;
        Ok(true)
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Blocks until a job ends (reaping it, which gives its token back) or, if `for_token`,
    /// until a token may be free.
    fn wait(&mut self, for_token: bool) -> Result<(), ClientError> {
        let ended: Vec<usize> = {
            let mut fds: Vec<PollFd> = self
                .running
                .iter()
                .map(|job| PollFd::new(job.pidfd.as_fd(), PollFlags::POLLIN))
                .collect();
            if for_token {
                fds.push(PollFd::new(self.client.readiness(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(ClientError::Io(errno.into())),
            }
            fds.iter()
                .take(self.running.len())
                .enumerate()
                .filter(|(_, fd)| fd.revents().is_some_and(|events| !events.is_empty()))
                .map(|(index, _)| index)
                .collect()
        };
        for index in ended.into_iter().rev() {
            let mut job = self.running.remove(index);
            let status = job.child.wait().map_err(ClientError::Io)?;
            // The slot goes back here, as the job is reaped.
            drop(job.slot);
            self.finished.push(Finished { id: job.id, status });
        }
        Ok(())
    }
}

impl fmt::Display for JobPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pids: Vec<String> =
            self.running.iter().map(|job| format!("{} (pid {})", job.id, job.child.id())).collect();
        let tokens = self.running.iter().filter(|job| matches!(job.slot, Slot::Token(_))).count();
        let implicit = self.running.iter().any(|job| matches!(job.slot, Slot::Implicit(_)));
        write!(
            f,
            "{} running [{}], {} ended and not yet collected; holding {} token(s){}",
            self.running.len(),
            pids.join(", "),
            self.finished.len(),
            tokens,
            if implicit { " and the implicit one" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Jobserver, Style};
    use crate::JobCount;

    #[test]
    fn runs_more_jobs_than_tokens_and_reports_failures_and_terminations() {
        let jobserver = Jobserver::create(JobCount::new(2).unwrap(), Style::Pipe).unwrap();
        let mut pool = JobPool::new(jobserver.client().unwrap());
        let ok = pool.spawn(&mut Command::new("true")).unwrap();
        let failing = pool.spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        // Both slots are out; this spawn waits for one of them to end.
        let sleeper = pool.spawn(Command::new("sleep").arg("60")).unwrap();
        // Never more jobs than slots (2: the implicit token and one in the pipe).
        assert!(pool.running() <= 2, "{pool}");
        assert!(pool.to_string().contains("(pid"), "{pool}");
        assert!(pool.terminate(sleeper, Signal::SIGTERM).unwrap());
        let mut all = pool.collect_all().unwrap();
        all.sort_by_key(|finished| finished.id);
        assert_eq!(all.iter().map(|f| f.id).collect::<Vec<_>>(), vec![ok, failing, sleeper]);
        assert!(all[0].status.success());
        assert_eq!(all[1].status.code(), Some(3));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(all[2].status.signal(), Some(Signal::SIGTERM as i32));
        assert!(!pool.terminate(sleeper, Signal::SIGTERM).unwrap(), "not running any more");
        assert_eq!(jobserver.close().unwrap().missing, 0, "every token came back");
    }
}
