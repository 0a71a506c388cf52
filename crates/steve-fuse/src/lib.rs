//! steve-fuse: the jobserver as a file, `MOUNTPOINT/jobserver`, on a FUSE mount, with the same
//! per-process accounting as the cuse backend's `/dev/steve`. For kernels without CUSE (many
//! distributions' and containers'), and for ordinary users, who mount through `fusermount3`.
//!
//! Clients use it like a named pipe (`MAKEFLAGS=--jobserver-auth=fifo:MOUNTPOINT/jobserver`):
//! GNU make 4.4 and later, cargo and rustc (the jobserver crate), GCC 13 and later. ninja 1.13
//! refuses a path that is not a FIFO: give it the fifo backend.
//!
//! The [fuser] crate mounts the filesystem (`mount(2)` as root, `fusermount3` otherwise) and
//! answers the kernel's INIT; from then on the requests are served by steve-cuse's
//! [`Session`](steve_cuse::session::Session), the same loop that serves `/dev/steve`, with a
//! [`OneFile`](steve_cuse::filesystem::OneFile) answering the filesystem requests. fuser's own
//! request loop is not used because it answers FUSE_INTERRUPT with ENOSYS, after which the
//! kernel sends no interrupts at all: a client blocked in a read could then neither take a
//! signal nor die until a token came (see `docs/design.md`).
//!
//! - [`mount`]: where to mount, finding and clearing a stale mount, mounting and unmounting;
//! - [`serve`]: availability, options, serving until a stop signal.
//!
//! ```no_run
//! use steve_core::backend::find;
//! use steve_fuse as _;
//!
//! let fuse = find("fuse").expect("steve-fuse is linked in");
//! println!("{}: {:?}", fuse.name, (fuse.availability)());
//! // Clients open MOUNTPOINT/jobserver.
//! assert_eq!(steve_fuse::mount::FILE_NAME, "jobserver");
//! ```

pub mod error;
pub mod mount;
pub mod serve;

pub use error::FuseError;

use steve_core::backend::{Backend, Start};

inventory::submit! {
    Backend {
        name: "fuse",
        summary: "the file MOUNTPOINT/jobserver on a FUSE mount, accounting tokens per process (make 4.4+, cargo, GCC); root or fusermount3",
        availability: serve::availability,
        start: Start::Server(serve::serve),
    }
}
