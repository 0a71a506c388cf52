//! A minimal FUSE file server written for `steve bench`: the baseline the fuse backend is
//! measured against, in the shapes libfuse's servers take. It mounts one file whose read answers
//! a byte and whose write answers its length, and keeps no books at all, so that what it costs
//! is the kernel's FUSE round trip and the threading, nothing a jobserver does.
//!
//! [`Threading::Single`] is libfuse's single-threaded loop; [`Threading::Shared`] its
//! multi-threaded one, every thread reading the one descriptor; [`Threading::Cloned`] with
//! `clone_fd`, each thread on a descriptor of its own ([`super::clone`]); [`Threading::Ring`]
//! its io_uring shape (libfuse 3.18), a thread per CPU on that CPU serving the CPU's queue
//! through a ring of its own ([`super::uring`]), where root turned FUSE over io_uring on.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{SigSet, Signal};

use super::filesystem::OneFile;
use super::mount::{self, FILE_NAME};
use crate::ll::{self, Request};
use crate::session::BUFFER_LEN;
use crate::Error;

/// How the baseline's requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threading {
    /// One thread reads and answers every request.
    Single,
    /// This many threads read the one descriptor.
    Shared(usize),
    /// This many threads, each on a descriptor of its own (`FUSE_DEV_IOC_CLONE`).
    Cloned(usize),
    /// FUSE over io_uring: a thread per CPU on that CPU, each serving its CPU's queue through
    /// a ring of its own (libfuse's io_uring shape), beside a thread on the descriptor.
    Ring,
}

/// Mounts the baseline on `mountpoint` (its file is `MOUNTPOINT/jobserver`), calls `ready`, and
/// serves until SIGTERM or SIGINT, then unmounts.
pub fn serve(mountpoint: &Path, threading: Threading, ready: impl FnOnce()) -> Result<(), Error> {
    // Blocked before any thread starts, so that every thread inherits the mask and the stop
    // signal is taken here, by sigwait.
    let mut stops = SigSet::empty();
    stops.add(Signal::SIGTERM);
    stops.add(Signal::SIGINT);
    stops.thread_block().map_err(|errno| io_error("block the stop signals", errno.into()))?;
    let mountpoint = mount::Mountpoint::resolve(mountpoint)?;
    let directory = mount::prepare(&mountpoint)?;
    let io_uring = threading == Threading::Ring;
    if io_uring {
        // Known before INIT says so: from then on the kernel holds every request until the
        // rings' entries are registered.
        super::uring::Ring::new().map_err(|why| io_error("set up", std::io::Error::other(why)))?;
    }
    let (mut mounted, channel) = mount::mount(&mountpoint, directory, false, io_uring)?;
    // The threads block in read, as libfuse's do.
    fcntl(&channel, FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|errno| io_error("make the channel blocking", errno.into()))?;
    let file = OneFile::new(FILE_NAME, nix::unistd::geteuid().as_raw(), 0, 0o600);
    let (threads, cloned) = match threading {
        Threading::Single | Threading::Ring => (1, false),
        Threading::Shared(threads) => (threads.max(1), false),
        Threading::Cloned(threads) => (threads.max(1), true),
    };
    let mut channels: Vec<OwnedFd> = Vec::new();
    for _ in 1..threads {
        channels.push(match cloned {
            true => super::clone::clone_channel(channel.as_fd())
                .map_err(|source| io_error("clone the channel", source))?,
            false => channel.try_clone().map_err(|source| io_error("dup the channel", source))?,
        });
    }
    std::thread::scope(|scope| {
        for extra in &channels {
            let file = &file;
            scope.spawn(move || answer_requests(extra.as_fd(), file));
        }
        let file = &file;
        let first = channel.as_fd();
        scope.spawn(move || answer_requests(first, file));
        if io_uring {
            for qid in 0..super::uring::queue_count() as u16 {
                scope.spawn(move || answer_ring(first, qid, file));
            }
        }
        ready();
        let _ = stops.wait();
        // The readers see ENODEV once the connection is gone, and end.
        mounted.unmount();
        drop(mounted);
    });
    Ok(())
}

/// Reads requests from `channel` and answers each at once, until the connection ends.
fn answer_requests(channel: BorrowedFd<'_>, file: &OneFile) {
    let mut buffer = vec![0u8; BUFFER_LEN];
    loop {
        let len = match nix::unistd::read(channel, &mut buffer) {
            Ok(0) => return,
            Ok(len) => len,
            Err(Errno::EINTR | Errno::EAGAIN | Errno::ENOENT) => continue,
            Err(_) => return,
        };
        let Ok((header, request)) = ll::parse(&buffer[..len]) else { continue };
        if request == Request::Destroy {
            return;
        }
        if let Some(reply) = answer(&header, request, file) {
            let _ = nix::unistd::write(channel, &reply);
        }
    }
}

/// Serves queue `qid` through a ring of its own, from CPU `qid` (where the kernel puts the
/// requests of callers on that CPU), until the connection ends.
fn answer_ring(channel: BorrowedFd<'_>, qid: u16, file: &OneFile) {
    let mut cpus = nix::sched::CpuSet::new();
    // A CPU this process may not use leaves the thread where it was.
    if cpus.set(usize::from(qid)).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus);
    }
    // A ring refused leaves the connection to the descriptor's thread.
    let Ok(mut ring) = super::uring::Ring::for_queue(qid) else { return };
    if let Err(why) = ring.register(channel) {
        tracing::warn!("queue {qid}: {why}");
        return;
    }
    tracing::info!("queue {qid} served through a ring of its own");
    let mut message = Vec::new();
    loop {
        for done in ring.completions() {
            // The connection ended (or the entry was refused): this queue is done.
            let super::uring::Completion::Request(n) = done else { return };
            if ring.request(n, &mut message).is_err() {
                continue;
            }
            let Ok((header, request)) = ll::parse(&message) else { continue };
            if let Some(reply) = answer(&header, request, file) {
                let _ = ring.answer(n, &reply);
            }
        }
        if ring.wait(None).is_err() {
            return;
        }
    }
}

/// The answer to one request (none to an interrupt or forget).
fn answer(header: &ll::InHeader, request: Request<'_>, file: &OneFile) -> Option<ll::Reply> {
    let unique = header.unique;
    match request {
        Request::Open { .. } => Some(ll::reply_open(
            unique,
            1,
            ll::FOPEN_NONSEEKABLE | ll::FOPEN_DIRECT_IO | ll::FOPEN_NOFLUSH,
        )),
        Request::Read { size: 0, .. } => Some(ll::reply_data(unique, &[])),
        Request::Read { .. } => Some(ll::reply_data(unique, b"+")),
        Request::Write { data, .. } => Some(ll::reply_write(unique, data.len() as u32)),
        Request::Release { .. } => Some(ll::reply_empty(unique)),
        Request::Interrupt { .. } | Request::Forget | Request::Destroy => None,
        other => Some(
            file.answer(header, &other)
                .unwrap_or_else(|| ll::reply_error(unique, nix::libc::ENOSYS)),
        ),
    }
}

fn io_error(action: &'static str, source: std::io::Error) -> Error {
    Error::Io { action, what: "the bench's FUSE baseline".to_string(), source }
}
