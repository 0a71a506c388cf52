//! The raw OS calls of the CUSE backend that `nix` has no safe wrapper for.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A pidfd for process `pid`: readable once the process has exited.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = nix::libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::from_raw_os_error(nix::libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1; no
    // memory is passed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    #[test]
    fn a_pidfd_becomes_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = pidfd_open(child.id()).unwrap();
        let readable = |pidfd: &OwnedFd| {
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
        };
        assert!(!readable(&pidfd));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(readable(&pidfd));
        assert!(pidfd_open(u32::MAX).is_err());
    }
}
