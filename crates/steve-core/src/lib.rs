//! steve-core: what every part of steve shares, laid out by who uses it.
//!
//! steve is a GNU-make-compatible jobserver: one pool of job tokens shared by every build on a
//! machine, so that `make -j`, ninja, cargo and GCC's LTO do not each size themselves for the
//! whole machine.
//!
//! - **Build tools** embed the client library, re-exported here at the root: [`Client`] joins
//!   the jobserver a tool was given, [`Token`] gives back the byte it read when dropped,
//!   [`Jobserver`] creates one for a command tree, [`JobPool`] runs commands under tokens.
//!   See `examples/` for runnable programs.
//! - **Backend crates** implement [`server::Server`] and register a
//!   [`server::Backend`]; [`server`] holds the contract, the one event loop, the control socket
//!   and signals.
//! - **Everyone** shares the pure parts, which forbid unsafe code and do no I/O:
//!   [`accounting`] (the pool arithmetic, the ledger, the device semantics, the limits),
//!   [`makeflags`] (reading and writing the `MAKEFLAGS` that name a jobserver), [`status`]
//!   (the report a server gives of itself) and [`trace`] (the events it records).
//!
//! Raw OS calls without a safe wrapper live in one module, `sys`, each with its SAFETY note.
//!
//! ```
//! use steve_core::{Client, JobCount, Jobserver, Style};
//!
//! // A private jobserver of 2 job slots, as `steve run -j2` makes for its command.
//! let jobserver = Jobserver::create(JobCount::new(2)?, Style::Pipe)?;
//! let client: Client = jobserver.client()?;
//! let implicit = client.take_implicit().expect("every client has one implicit token");
//! let token = client.acquire()?; // the one token in the pipe
//! assert!(client.try_acquire()?.is_none(), "both slots are in use");
//! drop((token, implicit)); // the byte goes back
//! assert_eq!(jobserver.close()?.missing, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod accounting;
pub mod cgroup;
pub mod client;
pub mod handover;
pub mod makeflags;
pub mod metrics;
pub mod mountinfo;
pub mod paths;
pub mod relay;
pub mod server;
pub mod status;
mod sys;
pub mod trace;

pub use accounting::pool::{JobCount, MAX_JOBS};
pub use client::{
    Client, ClientError, CloseReport, Finished, ImplicitToken, JobId, JobPool, Jobserver, Style,
    Token,
};

/// The raw OS calls other steve crates need (a pidfd, the bytes in a pipe), re-exported from
/// the one module that makes them.
pub mod os {
    pub use crate::sys::{bytes_in_pipe, pidfd_open};
}
