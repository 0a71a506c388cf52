//! The errors of the FUSE backend: each says what failed and why, in one line.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use steve_cuse::CuseError;

/// Why the FUSE mount could not be set up or served.
#[derive(Debug)]
#[non_exhaustive]
pub enum FuseError {
    /// A live steve mount is there: another steve serves it.
    InUse {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Some other filesystem (another FUSE filesystem among them) is mounted there.
    ForeignMount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// The mount point exists and is not a directory.
    NotADirectory {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// A stale mount (its server died) could not be cleared.
    StaleMount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kernel or fusermount3 refused the mount.
    Mount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The option does not apply to a FUSE mount.
    Unsupported(&'static str),
    /// A system call failed.
    Io {
        /// What steve was doing.
        action: &'static str,
        /// What on.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Setting up or serving the session failed (the device backends share it: a job count
    /// out of range, an unknown group, the control socket, the connection).
    Session(CuseError),
}

impl fmt::Display for FuseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FuseError::InUse { mountpoint } => write!(
                f,
                "{} is mounted already: another steve serves it; stop it or choose another --mountpoint",
                mountpoint.display()
            ),
            FuseError::ForeignMount { mountpoint, fstype } => write!(
                f,
                "{} is the mount point of a {fstype} filesystem, not steve's; choose another --mountpoint",
                mountpoint.display()
            ),
            FuseError::NotADirectory { mountpoint } => {
                write!(f, "{} is not a directory: a mount point must be one", mountpoint.display())
            }
            FuseError::StaleMount { mountpoint, reason } => write!(
                f,
                "{} is a stale mount left by a server that died, and it could not be unmounted: {reason}",
                mountpoint.display()
            ),
            // fusermount3's own message ends in a newline: keep the error on one line.
            FuseError::Mount { mountpoint, source } => write!(
                f,
                "cannot mount on {}: {}",
                mountpoint.display(),
                source.to_string().trim_end()
            ),
            FuseError::Unsupported(what) => write!(f, "{what}"),
            FuseError::Io { action, what, source } => write!(f, "cannot {action} {what}: {source}"),
            FuseError::Session(error) => write!(f, "{error}"),
        }
    }
}

/// Each message already carries its cause.
impl std::error::Error for FuseError {}

impl From<CuseError> for FuseError {
    fn from(error: CuseError) -> FuseError {
        FuseError::Session(error)
    }
}
