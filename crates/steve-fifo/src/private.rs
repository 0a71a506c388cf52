//! The `pipe` backend: `steve run`, one command tree under a private jobserver.
//!
//! The command gets `jobs - 1` tokens in a pipe plus the implicit one every client holds, so at
//! most `jobs` of its jobs run at once. With [`RunStyle::Pipe`] the pipe is anonymous and passed
//! as inherited descriptors (`--jobserver-auth=R,W`, which make 4.3 needs); with
//! [`RunStyle::Fifo`] it is a named pipe in a private directory (`fifo:PATH`, make 4.4 and later).
//! `MAKEFLAGS` and `CARGO_MAKEFLAGS` are set for the command, keeping the other flags of the
//! `MAKEFLAGS` steve itself was given. SIGINT, SIGTERM and SIGHUP sent to steve are passed on;
//! steve waits for the command and returns its status, and warns if tokens are missing then.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use steve_core::backend::{BackendError, RunConfig, RunStyle};
use steve_core::limits::{Limits, ProcProbe, SystemProbe};
use steve_core::makeflags::{self, Jobs, JobserverAuth};
use steve_core::signals::{SignalEvent, Signals};
use steve_core::status::{CounterReport, PoolReport, StatusReport};
use tracing::{debug, info, warn};

use crate::error::FifoError;
use crate::sys::bytes_in_pipe;
use crate::{check_jobs, make_fifo, TOKEN};

/// `steve run`: runs the command under a private jobserver and returns its exit status.
pub fn run(config: &RunConfig) -> Result<ExitStatus, BackendError> {
    Ok(run_command_tree(config)?)
}

fn run_command_tree(config: &RunConfig) -> Result<ExitStatus, FifoError> {
    check_jobs(config.jobs as usize)?;
    // Refuse a malformed MAKEFLAGS before anything is created, and keep its other flags.
    let inherited = makeflags::from_env().map_err(FifoError::Makeflags)?;
    let base = inherited.map(|found| found.flags).unwrap_or_default();
    let signals = Signals::block()
        .map_err(|e| FifoError::io("block signals for", "steve run")(io::Error::from(e)))?;

    let pool = PrivatePool::create(config.style, config.jobs as usize - 1)?;
    let flags = base.with_jobserver(Jobs::Limit(config.jobs), pool.auth()).to_string();
    debug!(makeflags = %flags, "starting {:?}", config.command);

    let (program, args) = config.command.split_first().ok_or(FifoError::NoCommand)?;
    let mut command = Command::new(program);
    command.args(args).env("MAKEFLAGS", &flags).env("CARGO_MAKEFLAGS", &flags);
    let child = pool.spawn(&mut command).map_err(|source| FifoError::Spawn {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    let status = supervise(child, signals, &pool)?;
    pool.check_returned();
    Ok(status)
}

/// Waits for the child, passing on stop signals and answering status requests.
fn supervise(
    mut child: Child,
    mut signals: Signals,
    pool: &PrivatePool,
) -> Result<ExitStatus, FifoError> {
    let failed = |action| move |e: nix::errno::Errno| FifoError::io(action, "steve run")(e.into());
    loop {
        // SIGCHLD is among the signals read here, so the child's exit wakes the poll.
        if let Some(status) = child.try_wait().map_err(FifoError::io("wait for", "the command"))? {
            return Ok(status);
        }
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(failed("wait for signals in")(e)),
        }
        while let Some(received) = signals.read_pending().map_err(failed("read signals in"))? {
            match received.event {
                // A terminal's ^C already reached the whole foreground group, the command
                // included; only a signal sent to steve alone needs passing on.
                SignalEvent::Stop(signal) if received.sent_by_process => {
                    info!("{signal} received: passing it on to the command");
                    let _ = kill(Pid::from_raw(child.id() as i32), signal);
                }
                SignalEvent::Stop(signal) => {
                    debug!("{signal} from the terminal reached the command too")
                }
                SignalEvent::Report => info!("status:\n{}", pool.status()),
                SignalEvent::Child => {}
            }
        }
    }
}

/// The private pipe and what the command needs to find it.
struct PrivatePool {
    style: RunStyle,
    /// The end tokens are read from (for a named pipe, one descriptor open both ways).
    read: OwnedFd,
    /// The end tokens are written to; the same file as `read` for a named pipe.
    write: Option<OwnedFd>,
    /// The named pipe's private directory, removed at the end.
    dir: Option<PathBuf>,
    tokens: usize,
    started: std::time::Instant,
}

impl PrivatePool {
    fn create(style: RunStyle, tokens: usize) -> Result<PrivatePool, FifoError> {
        let pool = match style {
            RunStyle::Pipe => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                    .map_err(|e| FifoError::io("create", "a pipe")(e.into()))?;
                PrivatePool {
                    style,
                    read,
                    write: Some(write),
                    dir: None,
                    tokens,
                    started: std::time::Instant::now(),
                }
            }
            RunStyle::Fifo => {
                let dir = private_dir()?;
                let pipe = make_fifo(&dir.join("jobserver")).inspect_err(|_| {
                    let _ = fs::remove_dir_all(&dir);
                })?;
                PrivatePool {
                    style,
                    read: pipe.into(),
                    write: None,
                    dir: Some(dir),
                    tokens,
                    started: std::time::Instant::now(),
                }
            }
        };
        let mut writer =
            File::from(pool.write_end().try_clone().map_err(FifoError::io("fill", "the pipe"))?);
        writer.write_all(&vec![TOKEN; tokens]).map_err(FifoError::io("fill", "the pipe"))?;
        Ok(pool)
    }

    fn write_end(&self) -> &OwnedFd {
        self.write.as_ref().unwrap_or(&self.read)
    }

    fn auth(&self) -> JobserverAuth {
        match (&self.dir, &self.write) {
            (Some(dir), _) => JobserverAuth::Fifo(dir.join("jobserver")),
            (None, write) => JobserverAuth::Fds {
                read: self.read.as_raw_fd(),
                write: write.as_ref().unwrap_or(&self.read).as_raw_fd(),
            },
        }
    }

    /// Starts the command; for the anonymous pipe, its two ends are inherited under the same
    /// numbers MAKEFLAGS names.
    fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        let inherited: Vec<&OwnedFd> = match self.style {
            RunStyle::Pipe => vec![&self.read, self.write_end()],
            RunStyle::Fifo => vec![],
        };
        let set_inherit = |inherit: bool| -> io::Result<()> {
            let flags = if inherit { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
            for fd in &inherited {
                fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(io::Error::from)?;
            }
            Ok(())
        };
        // steve starts no other process, so clearing close-on-exec for the spawn is enough.
        set_inherit(true)?;
        let child = command.spawn();
        set_inherit(false)?;
        child
    }

    fn free(&self) -> usize {
        bytes_in_pipe(&self.read).unwrap_or(0)
    }

    fn status(&self) -> StatusReport {
        let free = self.free();
        let path = match &self.dir {
            Some(dir) => dir.join("jobserver"),
            None => PathBuf::from("anonymous pipe"),
        };
        let jobs = self.tokens + 1;
        StatusReport {
            backend: "pipe".to_string(),
            path,
            control: None,
            daemon_pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            // The command's implicit token is one of the jobs but never in the pipe.
            pool: PoolReport {
                jobs,
                size: self.tokens,
                free,
                held: self.tokens.saturating_sub(free),
                withheld: 0,
                lent: 0,
            },
            limits: Limits::new(jobs),
            system: ProcProbe.read(),
            limited_by: None,
            holders_exact: false,
            holders: Vec::new(),
            waiters: None,
            counters: CounterReport::default(),
        }
    }

    /// At the end every token should be back: say so if not.
    fn check_returned(&self) {
        let free = self.free();
        if free < self.tokens {
            warn!(
                "{} of {} jobserver tokens were not returned by the command tree (a job was \
                 killed, or is still running in the background)",
                self.tokens - free,
                self.tokens
            );
        } else if free > self.tokens {
            warn!("the command tree returned {} more tokens than it took", free - self.tokens);
        }
    }
}

impl Drop for PrivatePool {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A new directory only this user can enter, in the runtime directory or the temp directory.
fn private_dir() -> Result<PathBuf, FifoError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty() && Path::new(dir).is_dir())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut attempt = 0u32;
    loop {
        let dir = base.join(format!("steve-run-{}-{attempt}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(error) => return Err(FifoError::io("create the directory", dir)(error)),
        }
    }
}
