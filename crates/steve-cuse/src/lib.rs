//! steve-cuse: `/dev/steve`, a jobserver character device served through CUSE, that knows which
//! process holds which token.
//!
//! Clients use it like a named pipe (`MAKEFLAGS=--jobserver-auth=fifo:/dev/steve`): GNU make
//! 4.4 and later, cargo and rustc (the jobserver crate), GCC 13 and later. ninja 1.13 insists on
//! a real FIFO and refuses a device: give it the fifo backend. What a pipe cannot do, the device
//! does: tokens are accounted per process and reclaimed the moment a process exits without
//! returning them (pidfd), a write of a token not held is refused with `ENOSPC`, and pollers get
//! a token reserved for them so blocking readers cannot starve them. The rules themselves live
//! in [`steve_core::device`]; this crate is the transport:
//!
//! - [`abi`]: the kernel's CUSE/FUSE wire protocol, parsed without unsafe code;
//! - [`session`]: the poll loop that serves one connection: a CUSE device, or a FUSE mount for
//!   steve-fuse, which shares it whole;
//! - [`filesystem`]: the one-file filesystem a FUSE mount shows around the jobserver file;
//! - `processes`: thread to process, and a pidfd per process (steve-core's `sys::pidfd_open`);
//! - [`serve`]: opening `/dev/cuse`, the device node's access, dropping privileges.
//!
//! The kernel of the machines steve is developed on has no CUSE; the backend is tested for real
//! in a QEMU virtual machine running Debian's kernel (see `docs/testing.md`), and on the host
//! against a fake kernel speaking the same bytes over a socket.
//!
//! ```no_run
//! use steve_core::backend::find;
//! use steve_cuse as _;
//!
//! let cuse = find("cuse").expect("steve-cuse is linked in");
//! println!("{}: {:?}", cuse.name, (cuse.availability)());
//! ```

pub mod abi;
pub mod error;
pub mod filesystem;
mod processes;
pub mod serve;
pub mod session;

pub use error::CuseError;

use steve_core::backend::{Backend, Start};

inventory::submit! {
    Backend {
        name: "cuse",
        summary: "the character device /dev/steve, accounting tokens per process (make 4.4+, cargo, GCC)",
        availability: serve::availability,
        start: Start::Server(serve::serve),
    }
}
