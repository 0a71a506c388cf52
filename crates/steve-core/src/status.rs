//! The status report a server writes to its log on SIGUSR1.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

/// A server's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The backend's name.
    pub backend: &'static str,
    /// The path clients open.
    pub path: PathBuf,
    /// The configured number of tokens (`-j`).
    pub jobs: usize,
    /// Tokens that exist now (differs from `jobs` while a shrink waits for returns).
    pub pool: usize,
    /// Tokens a client could take now.
    pub free: usize,
    /// Tokens out with clients.
    pub held: usize,
    /// Tokens the server keeps back.
    pub withheld: usize,
    /// Clients waiting for a token; `None` where the transport cannot see them (a pipe).
    pub waiters: Option<usize>,
    /// Tokens put back after their holders died without returning them, since start.
    pub recovered: u64,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status of {} jobserver {}: jobs {}, pool {}, free {}, held {}, withheld {}, waiters ",
            self.backend,
            self.path.display(),
            self.jobs,
            self.pool,
            self.free,
            self.held,
            self.withheld,
        )?;
        match self.waiters {
            Some(count) => write!(f, "{count}")?,
            None => f.write_str("unknown (a pipe does not show them)")?,
        }
        write!(f, ", recovered {}", self.recovered)
    }
}
