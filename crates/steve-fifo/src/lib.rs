//! steve-fifo: steve's jobservers built on pipes.
//!
//! - backend `fifo` ([`named`]): `steve serve --backend fifo`, a named pipe shared by every build
//!   on the machine, that puts back the tokens of clients killed while holding them, applies the
//!   limits (taking tokens out of the pipe through `taker`, a blocked reader thread) and answers
//!   on its control socket;
//! - backend `pipe` ([`private`]): `steve run -- CMD`, a private pipe for one command tree, as
//!   an anonymous pipe (make 4.3 and later) or a private named pipe (`--style fifo`), on
//!   steve-core's client library.
//!
//! Both register themselves in steve-core's backend registry; the `steve` binary finds them
//! there. A pipe cannot tell which process took a token, so per-process accounting is for the
//! device backends; the named pipe makes up for it by checking the pool whenever it is let go.
//!
//! ```no_run
//! use steve_core::backend::{find, Start};
//!
//! let fifo = find("fifo").expect("steve-fifo is linked in");
//! assert!(matches!(fifo.start, Start::Server(_)));
//! ```

pub mod error;
mod lock;
pub mod named;
mod openers;
pub mod private;
mod taker;

pub use error::FifoError;

use std::fs::File;
use std::path::Path;

use error::MAX_JOBS;
use steve_core::backend::{Availability, Backend, Start};

/// The byte handed out as a token. Clients may write back any byte.
pub(crate) const TOKEN: u8 = b'+';

/// Refuses a pool no pipe can serve: empty, or larger than a client could always write back to.
pub(crate) fn check_jobs(jobs: usize) -> Result<(), FifoError> {
    if jobs == 0 || jobs > MAX_JOBS {
        return Err(FifoError::BadJobs { jobs });
    }
    Ok(())
}

/// Makes a named pipe at `path` (steve-core's [`make_fifo`](steve_core::client::make_fifo)),
/// with this backend's error.
pub(crate) fn make_fifo(path: &Path) -> Result<File, FifoError> {
    steve_core::client::make_fifo(path).map_err(FifoError::io("create the named pipe", path))
}

fn always_available() -> Availability {
    Availability::Available
}

inventory::submit! {
    Backend {
        name: "fifo",
        summary: "a named pipe shared by every build on the machine (every client, ninja included)",
        availability: always_available,
        start: Start::Server(named::serve),
    }
}

inventory::submit! {
    Backend {
        name: "pipe",
        summary: "a private pipe for one command tree, via `steve run` (make 4.3 and later)",
        availability: always_available,
        start: Start::CommandTree(private::run),
    }
}
