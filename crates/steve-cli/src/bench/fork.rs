//! The one spot of `steve bench` that forks without exec: idle clients by the ten thousand come
//! from one `steve bench-client connect-many` process, since starting ten thousand shells
//! would measure `fork` and `exec` rather than the server.

use std::ffi::CStr;

/// What a forked client does once it has the jobserver open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Takes a token, gives it back, writes `.` and waits.
    Idle,
    /// Writes `s`, then as [`Pattern::Idle`] (its read blocks while a holder keeps the pool).
    SayOpened,
    /// Takes a token and gives it back (its build has been served), writes `f`, waits for a
    /// byte on stdin, writes `s`, then as [`Pattern::Idle`].
    ServedFirst,
}

/// Forks a child that opens `path` and does as `pattern` says, then waits until it is killed;
/// returns in the parent.
pub fn connected_child(path: &CStr, pattern: Pattern) -> std::io::Result<()> {
    // SAFETY: `steve bench-client connect-many` is single-threaded, so the child is a whole
    // copy of its one thread; the child calls only async-signal-safe functions (open, read,
    // write, pause, _exit) on memory that existed before the fork, and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
        nix::unistd::ForkResult::Child => {
            // SAFETY: as above; each call takes pointers into `path` and stack bytes.
            unsafe {
                let mark = |mark: u8| nix::libc::write(1, (&raw const mark).cast(), 1);
                let round_trip = |fd: i32| {
                    let mut byte = 0u8;
                    nix::libc::read(fd, (&raw mut byte).cast(), 1) == 1
                        && nix::libc::write(fd, (&raw const byte).cast(), 1) == 1
                };
                let fd = nix::libc::open(path.as_ptr(), nix::libc::O_RDWR);
                if fd < 0 {
                    nix::libc::_exit(1);
                }
                if pattern == Pattern::ServedFirst {
                    let mut go = 0u8;
                    if !round_trip(fd) {
                        nix::libc::_exit(1);
                    }
                    mark(b'f');
                    if nix::libc::read(0, (&raw mut go).cast(), 1) != 1 {
                        nix::libc::_exit(1);
                    }
                }
                if pattern != Pattern::Idle {
                    mark(b's');
                }
                if !round_trip(fd) {
                    nix::libc::_exit(1);
                }
                mark(b'.');
                loop {
                    nix::libc::pause();
                }
            }
        }
    }
}
