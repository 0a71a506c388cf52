//! steve-cuse: the kernel-served backends. The jobserver is served by steve itself through the
//! kernel's FUSE protocol, so that steve knows which process holds which token:
//!
//! - backend `cuse`: the character device `/dev/steve`, through CUSE (FUSE's character-device
//!   mode), for kernels that have it;
//! - backend `fuse`: the file `MOUNTPOINT/jobserver` on a FUSE mount, for kernels without CUSE
//!   (many distributions' and containers') and for ordinary users, who mount through
//!   `fusermount3`.
//!
//! Clients use either like a named pipe (`MAKEFLAGS=--jobserver-auth=fifo:/dev/steve`): GNU make
//! 4.4 and later, cargo and rustc (the jobserver crate), GCC 13 and later. ninja 1.13 insists on
//! a real FIFO and refuses both: give it the fifo backend. What a pipe cannot do, these do: tokens
//! are accounted per process and reclaimed the moment a process exits without returning them
//! (pidfd), a write of a token not held is refused with `ENOSPC`, and pollers get a token
//! reserved for them so blocking readers cannot starve them. The rules themselves live in
//! [`steve_core::device`]; this crate is the transport, one protocol served by one session:
//!
//! - [`ll`]: the kernel's FUSE/CUSE wire protocol, parsed from bytes without unsafe code;
//! - [`session`]: the loop that serves one kernel connection, CUSE or FUSE, with the device
//!   semantics;
//! - [`cuse`]: opening `/dev/cuse`, the device node's access, dropping privileges;
//! - [`fuse`]: the one-file filesystem, the mount (through the fuser crate) and stale mounts.
//!
//! The kernel of the machines steve is developed on has no CUSE; the backend is tested for real
//! in a QEMU virtual machine running Debian's kernel (see `docs/testing.md`), and on the host
//! against a fake kernel speaking the same bytes over a socket. FUSE is tested on the host.
//!
//! ```no_run
//! use steve_core::server::backend::find;
//! use steve_cuse as _;
//!
//! for name in ["cuse", "fuse"] {
//!     let backend = find(name).expect("steve-cuse is linked in");
//!     println!("{}: {:?}", backend.name, (backend.availability)());
//! }
//! // A fuse server's clients open MOUNTPOINT/jobserver.
//! assert_eq!(steve_cuse::fuse::mount::FILE_NAME, "jobserver");
//! ```

pub mod cuse;
pub mod error;
pub mod fuse;
pub mod ll;
pub mod session;

pub use error::Error;

use steve_core::server::backend::{Backend, Start};

inventory::submit! {
    Backend {
        name: "cuse",
        summary: "the character device /dev/steve, accounting tokens per process (make 4.4+, cargo, GCC)",
        auto_priority: Some(10),
        options: cuse::OPTIONS,
        availability: cuse::availability,
        places: cuse::PLACES,
        start: Start::Server(cuse::start),
        resume: Some(session::resume),
    }
}

inventory::submit! {
    Backend {
        name: "fuse",
        summary: "the file MOUNTPOINT/jobserver on a FUSE mount, accounting tokens per process (make 4.4+, cargo, GCC); root or fusermount3",
        auto_priority: Some(20),
        options: fuse::OPTIONS,
        availability: fuse::availability,
        places: fuse::PLACES,
        start: Start::Server(fuse::start),
        resume: Some(session::resume),
    }
}
