//! The few raw OS calls the pipe backends need that `nix` has no safe wrapper for.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

nix::ioctl_read_bad!(fionread_raw, nix::libc::FIONREAD, nix::libc::c_int);

/// How many bytes (tokens) wait unread in the pipe behind `fd`.
pub fn bytes_in_pipe(fd: impl AsFd) -> io::Result<usize> {
    let mut count: nix::libc::c_int = 0;
    // SAFETY: FIONREAD on a pipe writes one c_int through the pointer, which points at a live,
    // properly aligned local; the fd is borrowed, so it stays open for the call.
    unsafe { fionread_raw(fd.as_fd().as_raw_fd(), &mut count) }.map_err(io::Error::from)?;
    Ok(usize::try_from(count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_unread_bytes() {
        let (read, write) = nix::unistd::pipe().unwrap();
        assert_eq!(bytes_in_pipe(&read).unwrap(), 0);
        std::fs::File::from(write).write_all(b"+++").unwrap();
        assert_eq!(bytes_in_pipe(&read).unwrap(), 3);
    }
}
