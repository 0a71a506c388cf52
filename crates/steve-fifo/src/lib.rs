//! steve-fifo: steve's jobservers built on pipes.
//!
//! - backend `fifo` ([`named`]): `steve serve --backend fifo`, a named pipe shared by every build
//!   on the machine, that puts back the tokens of clients killed while holding them;
//! - backend `pipe` ([`private`]): `steve run -- CMD`, a private pipe for one command tree, as
//!   an anonymous pipe (make 4.3 and later) or a private named pipe (`--style fifo`).
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
mod sys;

pub use error::FifoError;

use steve_core::backend::{Availability, Backend, Start};

/// The byte handed out as a token. Clients may write back any byte.
pub(crate) const TOKEN: u8 = b'+';

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
