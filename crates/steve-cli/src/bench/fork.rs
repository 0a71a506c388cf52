//! The one spot of `steve bench` that forks without exec: idle clients by the ten thousand come
//! from one `steve bench-client connect-many` process, since starting ten thousand shells
//! would measure `fork` and `exec` rather than the server.

use std::ffi::CStr;

/// Forks a child that opens `path` (and then writes `s` to stdout, if `say_opened`), takes a
/// token, gives it back, writes `.` and then waits until it is killed; returns in the parent.
pub fn connected_child(path: &CStr, say_opened: bool) -> std::io::Result<()> {
    // SAFETY: `steve bench-client connect-many` is single-threaded, so the child is a whole
    // copy of its one thread; the child calls only async-signal-safe functions (open, read,
    // write, pause, _exit) on memory that existed before the fork, and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
        nix::unistd::ForkResult::Child => {
            // SAFETY: as above; each call takes pointers into `path` and a stack byte.
            unsafe {
                let fd = nix::libc::open(path.as_ptr(), nix::libc::O_RDWR);
                if say_opened {
                    let mark = b's';
                    nix::libc::write(1, (&raw const mark).cast(), 1);
                }
                let mut byte = 0u8;
                let ok = fd >= 0
                    && nix::libc::read(fd, (&raw mut byte).cast(), 1) == 1
                    && nix::libc::write(fd, (&raw const byte).cast(), 1) == 1;
                if !ok {
                    nix::libc::_exit(1);
                }
                let mark = b'.';
                nix::libc::write(1, (&raw const mark).cast(), 1);
                loop {
                    nix::libc::pause();
                }
            }
        }
    }
}
