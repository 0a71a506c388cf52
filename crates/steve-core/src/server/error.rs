//! The error every backend's start and serve return through the registry: the backend's own
//! typed error, with a kind the CLI picks its exit code from, and the cause kept as `source()`.
#![forbid(unsafe_code)]

use std::fmt;

/// What kind of failure an [`Error`] is, for the exit code and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An option or value the user gave cannot be used (a wrong count, an option the backend
    /// does not take, an unknown group).
    Usage,
    /// The backend cannot work on this machine.
    Unavailable,
    /// Another server, or something that is not steve's, is where this one would serve.
    InUse,
    /// `steve run`'s command was not found.
    CommandNotFound,
    /// `steve run`'s command was found but could not be started.
    CommandNotExecutable,
    /// A stop signal ended the wait before anything was done.
    Stopped,
    /// Anything else: a system call failed while setting up or serving.
    Failed,
}

/// A backend's failure: its own error, classified.
pub struct Error {
    kind: ErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Error {
    /// `error`, of `kind`.
    pub fn new(
        kind: ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error { kind, inner: error.into() }
    }

    /// A usage error saying `message`.
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message.into())
    }

    /// The backend cannot work here, because of `message`.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message.into())
    }

    /// A failed system call: what steve was doing (`"cannot bind /run/steve/x.control"`) and why.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Error {
        Error::new(ErrorKind::Failed, Io { action: action.into(), source })
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend's own error, to downcast in tests.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("kind", &self.kind).field("inner", &self.inner).finish()
    }
}

/// The wrapper is transparent: its chain is the backend error's chain.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// A failed system call, for errors the plumbing itself meets.
#[derive(Debug)]
struct Io {
    action: String,
    source: std::io::Error,
}

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.action)
    }
}

impl std::error::Error for Io {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_the_backend_errors_chain() {
        let error = Error::io(
            "cannot bind /run/steve/x.control",
            std::io::Error::from_raw_os_error(nix::libc::EACCES),
        );
        assert_eq!(error.kind(), ErrorKind::Failed);
        assert_eq!(error.to_string(), "cannot bind /run/steve/x.control");
        let cause = std::error::Error::source(&error).expect("the cause is kept");
        assert!(cause.to_string().starts_with("Permission denied"), "{cause}");
        assert_eq!(Error::usage("no such group: x").kind(), ErrorKind::Usage);
    }
}
