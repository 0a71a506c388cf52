//! steve-core: the part of steve every transport shares.
//!
//! steve is a GNU-make-compatible jobserver: one pool of job tokens shared by every build on a
//! machine, so that `make -j`, ninja, cargo and GCC's LTO do not each size themselves for the
//! whole machine. This crate holds what does not depend on how tokens travel:
//!
//! - [`ledger`]: the pool, who holds what, one fair queue of waiters, reclaim and resizing;
//! - [`makeflags`]: reading and writing the `MAKEFLAGS` that tell clients where the jobserver is;
//! - [`device`]: the rules of a per-process jobserver device, written once for every transport;
//! - [`accounts`]: users and groups named on the command line;
//! - [`client`]: the client library: join or create a jobserver, take tokens, run jobs;
//! - [`backend`]: the registry through which transport crates (named pipe, CUSE, ...) plug in;
//! - [`limits`]: load, memory and per-process limits, and what they allow now;
//! - [`status`]: the report a server gives of itself, the same for every backend;
//! - [`control`]: the control socket every server listens on (`steve status`, `get`, `set`);
//! - [`signals`]: signals read from a signalfd in a server's one poll loop.
//!
//! ```
//! use steve_core::ledger::{Acquire, Ledger, Wait};
//! use steve_core::makeflags::{jobserver_makeflags, JobserverAuth};
//!
//! let mut pool = Ledger::new(4);
//! assert_eq!(pool.acquire(std::process::id(), Wait::NoWait), Acquire::Granted);
//! let flags = jobserver_makeflags(4, JobserverAuth::Fifo("/run/steve/jobserver".into()));
//! assert_eq!(flags, " -j4 --jobserver-auth=fifo:/run/steve/jobserver");
//! ```

pub mod accounts;
pub mod backend;
pub mod client;
pub mod control;
pub mod device;
pub mod ledger;
pub mod limits;
pub mod makeflags;
pub mod signals;
pub mod status;
pub mod sys;
