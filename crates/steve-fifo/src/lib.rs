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
//! - [`companion`]: a named pipe beside a device or fuse server, fed from that server's ledger,
//!   for the clients that take nothing but a FIFO.
//!
//! Both backends register themselves in steve-core's backend registry; the `steve` binary finds them
//! there. A pipe cannot tell which process took a token, so per-process accounting is for the
//! device backends; the named pipe makes up for it by checking the pool whenever it is let go.
//!
//! ```
//! use steve_core::server::backend::{find, Start};
//! use steve_fifo as _;
//!
//! let fifo = find("fifo").expect("steve-fifo is linked in");
//! assert!(matches!(fifo.start, Start::Server(_)));
//! assert!(matches!(find("pipe").unwrap().start, Start::CommandTree(_)));
//! ```

pub mod companion;
pub mod error;
mod lock;
pub mod named;
mod openers;
mod pipe_file;
pub mod private;
mod taker;

pub use error::FifoError;

use std::fs::File;
use std::path::Path;

use steve_core::server::backend::{Availability, Backend, Places, Start};

/// The byte handed out as a token. Clients may write back any byte.
pub(crate) const TOKEN: u8 = b'+';

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
        auto_priority: Some(30),
        options: named::OPTIONS,
        availability: always_available,
        places: named::PLACES,
        start: Start::Server(named::start),
        resume: Some(named::resume),
    }
}

inventory::submit! {
    Backend {
        name: "pipe",
        summary: "a private pipe for one command tree, via `steve run` (make 4.3 and later)",
        auto_priority: None,
        options: &[],
        availability: always_available,
        places: Places::NONE,
        start: Start::CommandTree(private::run),
        resume: None,
    }
}
