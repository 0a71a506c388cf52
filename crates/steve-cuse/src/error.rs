//! The errors of the kernel-served backends, cuse and fuse: each says what failed in one line,
//! and keeps its cause as `source()`.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use crate::ll::ParseError;

/// Why a CUSE device or a FUSE mount could not be set up or served.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/cuse` could not be opened.
    OpenCuse {
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
    /// The `--dev-name` given cannot name a device.
    BadDeviceName {
        /// The name given.
        name: String,
    },
    /// The kernel's first message was not what CUSE promises.
    Handshake(String),
    /// A kernel message that does not parse.
    Protocol(ParseError),
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
    /// The mount point exists and is not a directory, or is `/`.
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
    /// No `--mountpoint`, and no runtime directory to put the default one in.
    NoDefaultMountpoint,
    /// The mount point is `/`, or has no name.
    BadMountpoint {
        /// The mount point given.
        mountpoint: PathBuf,
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

impl Error {
    pub(crate) fn io(
        action: &'static str,
        what: impl Into<String>,
        errno: nix::errno::Errno,
    ) -> Error {
        Error::Io { action, what: what.into(), source: errno.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OpenCuse { .. } => f.write_str(
                "cannot open /dev/cuse (the cuse module must be loaded, and steve run as root)",
            ),
            Error::DeviceExists { path } => write!(
                f,
                "{} exists already: another steve (or another driver) serves it; choose another --dev-name",
                path.display()
            ),
            Error::NoDeviceNode { path } => {
                write!(f, "the kernel did not create {} for steve", path.display())
            }
            Error::BadDeviceName { name } => write!(f, "{name:?} is not a device name"),
            Error::Handshake(what) => write!(f, "CUSE handshake failed: {what}"),
            Error::Protocol(error) => write!(f, "{error}"),
            Error::InUse { mountpoint } => write!(
                f,
                "{} is mounted already: another steve serves it; stop it or choose another --mountpoint",
                mountpoint.display()
            ),
            Error::ForeignMount { mountpoint, fstype } => write!(
                f,
                "{} is the mount point of a {fstype} filesystem, not steve's; choose another --mountpoint",
                mountpoint.display()
            ),
            Error::NotADirectory { mountpoint } => {
                write!(f, "{} is not a directory: a mount point must be one", mountpoint.display())
            }
            Error::StaleMount { mountpoint, reason } => write!(
                f,
                "{} is a stale mount left by a server that died, and it could not be unmounted: {reason}",
                mountpoint.display()
            ),
            Error::Mount { mountpoint, .. } => write!(f, "cannot mount on {}", mountpoint.display()),
            Error::NoDefaultMountpoint => f.write_str(
                "XDG_RUNTIME_DIR is not set (or not an absolute directory), so there is no \
                 default mount point: give --mountpoint",
            ),
            Error::BadMountpoint { mountpoint } => write!(
                f,
                "{} cannot be a mount point: it must be a directory below /",
                mountpoint.display()
            ),
            Error::Io { action, what, .. } => write!(f, "cannot {action} {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OpenCuse { source } | Error::Mount { source, .. } | Error::Io { source, .. } => {
                Some(source)
            }
            Error::Protocol(error) => Some(error),
            _ => None,
        }
    }
}

/// The kind tells the CLI its exit code; the error itself, and its chain, travel inside.
impl From<Error> for steve_core::server::Error {
    fn from(error: Error) -> steve_core::server::Error {
        use steve_core::server::ErrorKind;
        let kind = match &error {
            Error::DeviceExists { .. } | Error::InUse { .. } | Error::ForeignMount { .. } => {
                ErrorKind::InUse
            }
            Error::BadDeviceName { .. }
            | Error::NotADirectory { .. }
            | Error::BadMountpoint { .. }
            | Error::NoDefaultMountpoint => ErrorKind::Usage,
            Error::OpenCuse { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Failed,
        };
        steve_core::server::Error::new(kind, error)
    }
}
