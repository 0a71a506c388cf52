//! The errors of the CUSE backend: each says what failed and why, in one line.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use crate::abi::ParseError;

/// Why the CUSE device could not be set up or served.
#[derive(Debug)]
#[non_exhaustive]
pub enum CuseError {
    /// `/dev/cuse` could not be opened.
    Open {
        /// Why.
        source: std::io::Error,
    },
    /// A device node of that name exists already.
    DeviceExists {
        /// The node.
        path: PathBuf,
    },
    /// The kernel did not register the device.
    NoDeviceNode {
        /// The node that never appeared.
        path: PathBuf,
    },
    /// The kernel's first message was not what CUSE promises.
    Handshake(String),
    /// A kernel message that does not parse.
    Protocol(ParseError),
    /// The job count is out of range.
    BadJobs {
        /// The count asked for.
        jobs: usize,
    },
    /// The user or group given does not exist.
    UnknownAccount {
        /// "user" or "group".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A system call failed.
    Io {
        /// What steve was doing.
        action: &'static str,
        /// What on.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The largest pool the device serves.
pub const MAX_JOBS: usize = 65_536;

impl CuseError {
    pub(crate) fn io(
        action: &'static str,
        what: impl Into<String>,
        errno: nix::errno::Errno,
    ) -> CuseError {
        CuseError::Io { action, what: what.into(), source: errno.into() }
    }
}

impl fmt::Display for CuseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CuseError::Open { source } => write!(
                f,
                "cannot open /dev/cuse: {source} (the cuse module must be loaded, and steve run as root)"
            ),
            CuseError::DeviceExists { path } => write!(
                f,
                "{} exists already: another steve (or another driver) serves it; choose another --dev-name",
                path.display()
            ),
            CuseError::NoDeviceNode { path } => {
                write!(f, "the kernel did not create {} for steve", path.display())
            }
            CuseError::Handshake(what) => write!(f, "CUSE handshake failed: {what}"),
            CuseError::Protocol(error) => write!(f, "{error}"),
            CuseError::BadJobs { jobs } => {
                write!(f, "job count {jobs} is out of range (1 to {MAX_JOBS})")
            }
            CuseError::UnknownAccount { kind, name } => write!(f, "no such {kind}: {name}"),
            CuseError::Io { action, what, source } => write!(f, "cannot {action} {what}: {source}"),
        }
    }
}

/// Each message already carries its cause.
impl std::error::Error for CuseError {}
