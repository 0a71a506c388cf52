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
    /// A setting steve-core checked (the group) cannot be used.
    Config(steve_core::server::Error),
    /// `MAKEFLAGS` (or its siblings) in the environment do not parse.
    Makeflags(steve_core::makeflags::EnvError),
    /// The private jobserver could not be set up or read.
    Client(steve_core::client::ClientError),
    /// `steve run` was given no command.
    NoCommand,
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
                "XDG_RUNTIME_DIR is not set (or not an absolute directory), so there is no default \
                 jobserver path: give --path",
            ),
            FifoError::Config(error) => write!(f, "{error}"),
            FifoError::Makeflags(error) => write!(f, "{error}"),
            FifoError::Client(error) => write!(f, "{error}"),
            FifoError::NoCommand => f.write_str("no command given to run"),
            FifoError::Spawn { command, .. } => write!(f, "cannot run {command}"),
            FifoError::Io { action, path, .. } => write!(f, "cannot {action} {}", path.display()),
        }
    }
}

/// A message says what failed; `source()` says why.
impl std::error::Error for FifoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FifoError::Spawn { source, .. } | FifoError::Io { source, .. } => Some(source),
            // These wrap an error whose own message is shown: its cause is theirs.
            FifoError::Config(error) => std::error::Error::source(error),
            FifoError::Client(error) => std::error::Error::source(error),
            FifoError::Makeflags(error) => std::error::Error::source(error),
            _ => None,
        }
    }
}

/// The kind tells the CLI its exit code; the error itself, and its chain, travel inside.
impl From<FifoError> for steve_core::server::Error {
    fn from(error: FifoError) -> steve_core::server::Error {
        use steve_core::server::ErrorKind;
        let kind = match &error {
            FifoError::AlreadyServed { .. }
            | FifoError::NotAPipe { .. }
            | FifoError::ForeignPipe { .. } => ErrorKind::InUse,
            FifoError::NoDefaultPath | FifoError::NoCommand | FifoError::Makeflags(_) => {
                ErrorKind::Usage
            }
            FifoError::Config(error) => error.kind(),
            FifoError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::CommandNotFound
            }
            FifoError::Spawn { .. } => ErrorKind::CommandNotExecutable,
            FifoError::Client(_) | FifoError::Io { .. } => ErrorKind::Failed,
        };
        steve_core::server::Error::new(kind, error)
    }
}
