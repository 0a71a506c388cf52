//! The errors of the pipe backends: each says what failed, on which path, and why.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a pipe jobserver could not be set up or run.
#[derive(Debug)]
#[non_exhaustive]
pub enum FifoError {
    /// Another steve already serves this path.
    AlreadyServed {
        /// The jobserver path.
        path: PathBuf,
        /// The other daemon's pid, as its lock file says.
        pid: Option<u32>,
    },
    /// Something that is not a named pipe exists at the path.
    NotAPipe {
        /// The jobserver path.
        path: PathBuf,
        /// What is there instead.
        found: &'static str,
    },
    /// A named pipe exists at the path, but steve did not make it (no lock file beside it).
    ForeignPipe {
        /// The jobserver path.
        path: PathBuf,
    },
    /// No default path: not root and `XDG_RUNTIME_DIR` is not set.
    NoDefaultPath,
    /// The job count is out of range.
    BadJobs {
        /// The count asked for.
        jobs: usize,
    },
    /// The group given for the path does not exist.
    UnknownGroup {
        /// The name or number given.
        group: String,
    },
    /// `MAKEFLAGS` (or its siblings) in the environment do not parse.
    Makeflags(steve_core::makeflags::EnvError),
    /// The private jobserver could not be set up or read.
    Client(steve_core::client::ClientError),
    /// `steve run` was given no command.
    NoCommand,
    /// An option this backend cannot honour.
    Unsupported {
        /// What, and what would.
        what: &'static str,
    },
    /// The command could not be started.
    Spawn {
        /// The command's name.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A system call failed.
    Io {
        /// What steve was doing, as a phrase ("create the named pipe").
        action: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

/// The largest pool a pipe can hold without a client ever blocking on a write-back.
pub const MAX_JOBS: usize = 4096;

impl FifoError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> FifoError {
        let path = path.into();
        move |source| FifoError::Io { action, path, source }
    }
}

impl fmt::Display for FifoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FifoError::AlreadyServed { path, pid: Some(pid) } => {
                write!(f, "another steve (pid {pid}) is already serving {}", path.display())
            }
            FifoError::AlreadyServed { path, pid: None } => {
                write!(f, "another steve is already serving {}", path.display())
            }
            FifoError::NotAPipe { path, found } => write!(
                f,
                "{} exists and is a {found}, not a named pipe; steve will not touch it: choose another --path",
                path.display()
            ),
            FifoError::ForeignPipe { path } => write!(
                f,
                "{} is a named pipe that steve did not create; remove it or choose another --path",
                path.display()
            ),
            FifoError::NoDefaultPath => f.write_str(
                "XDG_RUNTIME_DIR is not set, so there is no default jobserver path: give --path",
            ),
            FifoError::BadJobs { jobs } => {
                write!(f, "job count {jobs} is out of range (1 to {MAX_JOBS})")
            }
            FifoError::UnknownGroup { group } => write!(f, "no such group: {group}"),
            FifoError::Makeflags(error) => write!(f, "{error}"),
            FifoError::Client(error) => write!(f, "{error}"),
            FifoError::NoCommand => f.write_str("no command given to run"),
            FifoError::Unsupported { what } => f.write_str(what),
            FifoError::Spawn { command, source } => write!(f, "cannot run {command}: {source}"),
            FifoError::Io { action, path, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
        }
    }
}

/// Each message already carries its cause, so `source()` stays empty: printed as a chain, the
/// cause would appear twice.
impl std::error::Error for FifoError {}
