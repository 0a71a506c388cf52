//! The raw OS calls steve-core needs that have no safe wrapper: each unsafe block is one call,
//! with what makes it sound.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::Command;

/// `file` mapped shared, read and write: what is stored in the map is the file's contents, and
/// stays in the page cache when the process dies.
pub fn map_shared(file: &std::fs::File) -> io::Result<memmap2::MmapMut> {
    // SAFETY: the map is undefined behaviour only if the file changes size or content behind
    // it; the one caller maps its crash books, a file it created itself (O_EXCL, mode 0600, in
    // a directory of its user) and only ever grows through the same descriptor before mapping
    // again. Another process of the same user truncating it would make the server fault, which
    // that user could do to their server anyway.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

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
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes `signal` interrupt a blocking system call of a thread that does not block it (the call
/// fails with `EINTR`, no restart) and do nothing else: how a serving thread asleep in a read
/// is woken ([`crate::server`]'s threads).
pub fn interrupt_on(signal: nix::sys::signal::Signal) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    extern "C" fn nothing(_: nix::libc::c_int) {}
    let action = SigAction::new(SigHandler::Handler(nothing), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe and touches no state; it
    // replaces only `signal`'s disposition, which nothing else in the process uses.
    unsafe { sigaction(signal, &action) }.map(drop).map_err(io::Error::from)
}

/// Makes `fds` (close-on-exec in this process) stay open across the exec of `command`, under the
/// same numbers, without touching them in this process, where other threads may be spawning.
pub fn inherit_fds(command: &mut Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed; fcntl is one, and the closure allocates nothing (the Vec was moved in
    // before the fork and is only read).
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                if nix::libc::fcntl(*fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

mod ioctl {
    nix::ioctl_read_bad!(fionread_raw, nix::libc::FIONREAD, nix::libc::c_int);
}

/// How many bytes (tokens) wait unread in the pipe behind `fd`.
pub fn bytes_in_pipe(fd: impl std::os::fd::AsFd) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut count: nix::libc::c_int = 0;
    // SAFETY: FIONREAD on a pipe writes one c_int through the pointer, which points at a live,
    // properly aligned local; the fd is borrowed, so it stays open for the call.
    unsafe { ioctl::fionread_raw(fd.as_fd().as_raw_fd(), &mut count) }.map_err(io::Error::from)?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Sends `fds` over the Unix socket `socket` (`SCM_RIGHTS`), attached to one byte `F`.
pub fn send_descriptors(
    socket: std::os::fd::BorrowedFd<'_>,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = [io::IoSlice::new(b"F")];
    let rights = [ControlMessage::ScmRights(&raw)];
    loop {
        match sendmsg::<()>(socket.as_raw_fd(), &payload, &rights, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Receives one byte and the descriptors attached to it (at most `most`) from `socket`, each
/// close-on-exec. An end of file is an error.
pub fn receive_descriptors(
    socket: std::os::fd::BorrowedFd<'_>,
    most: usize,
) -> io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut payload = [io::IoSliceMut::new(&mut byte)];
    let mut space = vec![0u8; nix::sys::socket::cmsg_space::<RawFd>() * most];
    let message = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut payload,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => break message,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    };
    if message.bytes == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut received = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in this process for this
                // message, and nothing else owns it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if truncated {
        return Err(io::Error::other("more descriptors were sent than asked for"));
    }
    Ok(received)
}

/// Sends `payload` with `fds` attached (`SCM_RIGHTS`, none if empty) on the connected
/// datagram socket `socket`: one sd_notify(3) message.
pub fn send_message(
    socket: std::os::fd::BorrowedFd<'_>,
    payload: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [io::IoSlice::new(payload)];
    let rights = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(socket.as_raw_fd(), &iov, control, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// The descriptors a service manager passed this process (sd_listen_fds(3): `LISTEN_PID` is
/// this process, `LISTEN_FDS` of them from 3 on, named by `LISTEN_FDNAMES`), taken once: the
/// variables are removed, so that nothing this process starts takes them for its own.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    const FIRST: RawFd = 3;
    let ours = std::env::var("LISTEN_PID").ok().and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count: RawFd = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Called once, at the server's start, before it starts any thread.
        std::env::remove_var(variable);
    }
    if !ours || !(1..=65536).contains(&count) {
        return Vec::new();
    }
    let mut names = names.split(':');
    (FIRST..FIRST + count)
        .filter_map(|fd| {
            let name = names.next().unwrap_or("unknown").to_string();
            // Only descriptors that are open: fcntl fails on a closed one.
            nix::fcntl::fcntl(
                // SAFETY: borrowed only for this call; fd is a number systemd says it passed.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .ok()?;
            // SAFETY: the service manager passed this descriptor to this process for it to own
            // (sd_listen_fds(3)), the variables naming it are gone, and nothing else took it.
            Some((name, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect()
}
