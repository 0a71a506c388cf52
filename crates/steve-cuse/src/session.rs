//! One CUSE connection: requests read from the channel (`/dev/cuse`, or a socket in tests) go
//! through steve-core's device semantics; replies and poll notifications go back; tokens of
//! processes that exit are reclaimed the moment their pidfd says so.
//!
//! The session blocks in exactly one place, a `poll` over the channel, the signalfd, one pidfd
//! per client process, with the next reservation expiry as the timeout.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use steve_core::device::{Device, Event, Pid, PollHandle, ReadOutcome, RequestId};
use steve_core::signals::{SignalEvent, Signals};
use steve_core::status::Status;
use tracing::{debug, info, warn};

use crate::abi::{self, Request};
use crate::error::CuseError;
use crate::processes::Processes;

/// The byte handed out as a token.
const TOKEN: &[u8] = b"+";
/// Largest read and write the kernel is told to send.
pub const MAX_IO: u32 = 4096;
/// The kernel needs room for the largest request: a write of `MAX_IO` bytes with its headers,
/// and never less than its minimum read buffer (8 KiB).
const BUFFER_LEN: usize = 64 * 1024;

/// A CUSE connection serving the device semantics.
#[derive(Debug)]
pub struct Session {
    channel: OwnedFd,
    device: Device,
    processes: Processes,
    dev_path: std::path::PathBuf,
    next_fh: u64,
    buffer: Vec<u8>,
    unknown_opcodes: HashSet<u32>,
}

/// Whether to go on after handling requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Disconnected,
}

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A stop signal arrived.
    Stopped(nix::sys::signal::Signal),
    /// The kernel ended the connection (DESTROY, or the device went away).
    Disconnected,
}

impl Session {
    /// Answers the kernel's CUSE_INIT on `channel`, which registers `/dev/DEV_NAME`.
    pub fn start(channel: OwnedFd, dev_name: &str, device: Device) -> Result<Session, CuseError> {
        let mut buffer = vec![0u8; BUFFER_LEN];
        let len = loop {
            match nix::unistd::read(&channel, &mut buffer) {
                Ok(len) => break len,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(CuseError::io("read CUSE_INIT from", "the channel", errno))
                }
            }
        };
        let (header, request) = abi::parse(&buffer[..len]).map_err(CuseError::Protocol)?;
        let Request::CuseInit { major, minor } = request else {
            return Err(CuseError::Handshake(format!(
                "expected CUSE_INIT, got opcode {}",
                header.opcode
            )));
        };
        if major != abi::KERNEL_VERSION || minor < abi::MIN_MINOR_VERSION {
            return Err(CuseError::Handshake(format!(
                "kernel speaks FUSE {major}.{minor}; steve needs {}.{} or later",
                abi::KERNEL_VERSION,
                abi::MIN_MINOR_VERSION
            )));
        }
        let minor = minor.min(abi::KERNEL_MINOR_VERSION);
        let reply = abi::reply_cuse_init(header.unique, minor, MAX_IO, MAX_IO, dev_name);
        nix::unistd::write(&channel, &reply)
            .map_err(|errno| CuseError::io("answer CUSE_INIT on", "the channel", errno))?;
        fcntl(&channel, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|errno| CuseError::io("configure", "the channel", errno))?;
        debug!(major, minor, "CUSE connection up as /dev/{dev_name}");
        Ok(Session {
            channel,
            device,
            processes: Processes::default(),
            dev_path: std::path::Path::new("/dev").join(dev_name),
            next_fh: 1,
            buffer,
            unknown_opcodes: HashSet::new(),
        })
    }

    /// Serves until a stop signal or the end of the connection. Without `signals` (in tests)
    /// it serves until the channel closes.
    pub fn run(&mut self, mut signals: Option<&mut Signals>) -> Result<Ended, CuseError> {
        loop {
            let timeout = match self.device.next_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    // Round up, so that the deadline has passed when poll returns.
                    let millis = wait.as_micros().div_ceil(1000);
                    PollTimeout::try_from(millis.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let pids: Vec<Pid>;
            let (channel_ready, signals_ready, exited) = {
                let pidfds = self.processes.pidfds();
                pids = pidfds.iter().map(|(pid, _)| *pid).collect();
                let mut fds = vec![PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
                if let Some(signals) = signals.as_deref() {
                    fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
                }
                let first_pidfd = fds.len();
                fds.extend(pidfds.iter().map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)));
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(errno) => {
                        return Err(CuseError::io("wait for events on", "the channel", errno))
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
                let exited: Vec<Pid> = fds[first_pidfd..]
                    .iter()
                    .zip(&pids)
                    .filter(|(fd, _)| ready(fd))
                    .map(|(_, pid)| *pid)
                    .collect();
                (ready(&fds[0]), signals.is_some() && ready(&fds[1]), exited)
            };
            let now = Instant::now();
            // Exits first: a new process that got an exited one's pid must not inherit its books.
            for pid in exited {
                self.reap(pid, now);
            }
            if signals_ready {
                let signals = signals.as_deref_mut().expect("polled only when present");
                while let Some(received) = signals
                    .read_pending()
                    .map_err(|errno| CuseError::io("read signals for", "the server", errno))?
                {
                    match received.event {
                        SignalEvent::Stop(signal) => return Ok(Ended::Stopped(signal)),
                        SignalEvent::Report => self.report(),
                        SignalEvent::Child => {}
                    }
                }
            }
            if channel_ready && self.read_requests()? == Flow::Disconnected {
                return Ok(Ended::Disconnected);
            }
            self.device.expire(Instant::now());
            self.send_events();
        }
    }

    /// Handles every request waiting on the channel.
    fn read_requests(&mut self) -> Result<Flow, CuseError> {
        loop {
            let len = match nix::unistd::read(&self.channel, &mut self.buffer) {
                Ok(0) => return Ok(Flow::Disconnected),
                Ok(len) => len,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Flow::Continue),
                // The kernel ended the connection (the device was removed).
                Err(Errno::ENODEV) => return Ok(Flow::Disconnected),
                Err(errno) => {
                    return Err(CuseError::io("read requests from", "the channel", errno))
                }
            };
            let message = self.buffer[..len].to_vec();
            if self.handle(&message) == Flow::Disconnected {
                return Ok(Flow::Disconnected);
            }
            self.send_events();
        }
    }

    /// Handles one request.
    fn handle(&mut self, message: &[u8]) -> Flow {
        let (header, request) = match abi::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!("{error}");
                if let Some(unique) = error.unique {
                    self.send(&abi::reply_error(unique, nix::libc::EIO));
                }
                return Flow::Continue;
            }
        };
        let unique = header.unique;
        let needs_caller = matches!(
            request,
            Request::Open { .. }
                | Request::Read { .. }
                | Request::Write { .. }
                | Request::Poll { .. }
        );
        let pid = if needs_caller {
            match self.caller(header.pid) {
                Ok(pid) => pid,
                // The caller is already gone: nobody waits for an answer but the kernel.
                Err(()) => {
                    self.send(&abi::reply_error(unique, nix::libc::EINTR));
                    return Flow::Continue;
                }
            }
        } else {
            0
        };
        let reply = match request {
            Request::Open { .. } => {
                let fh = self.next_fh;
                self.next_fh += 1;
                debug!(pid, fh, "open");
                Some(abi::reply_open(unique, fh, abi::FOPEN_NONSEEKABLE))
            }
            Request::Read { size: 0, .. } => Some(abi::reply_data(unique, &[])),
            Request::Read { flags, .. } => {
                let nonblocking = flags & nix::libc::O_NONBLOCK as u32 != 0;
                match self.device.read(pid, RequestId(unique), nonblocking, Instant::now()) {
                    ReadOutcome::Token => {
                        debug!(pid, "token handed out");
                        Some(abi::reply_data(unique, TOKEN))
                    }
                    ReadOutcome::WouldBlock => Some(abi::reply_error(unique, nix::libc::EAGAIN)),
                    ReadOutcome::Pending => {
                        debug!(pid, unique, "read waits");
                        None
                    }
                }
            }
            Request::Write { data, .. } => match self.device.write(pid, data.len(), Instant::now())
            {
                Ok(accepted) => Some(abi::reply_write(unique, accepted as u32)),
                Err(_) => {
                    debug!(pid, "write of a token not held: ENOSPC");
                    Some(abi::reply_error(unique, nix::libc::ENOSPC))
                }
            },
            Request::Poll { kh, flags, events, .. } => {
                let notify = (flags & abi::POLL_SCHEDULE_NOTIFY != 0).then_some(PollHandle(kh));
                let readable = self.device.poll(pid, notify, Instant::now());
                Some(abi::reply_poll(unique, poll_events(readable, events)))
            }
            Request::Interrupt { target } => {
                if self.device.interrupt(RequestId(target)) {
                    debug!(target, "waiting read interrupted");
                    self.send(&abi::reply_error(target, nix::libc::EINTR));
                }
                // An interrupt is never answered itself.
                None
            }
            Request::Flush { .. } | Request::Release { .. } => Some(abi::reply_empty(unique)),
            Request::Ioctl { .. } => Some(abi::reply_error(unique, nix::libc::ENOTTY)),
            Request::Destroy => {
                self.send(&abi::reply_empty(unique));
                return Flow::Disconnected;
            }
            Request::CuseInit { .. } => Some(abi::reply_error(unique, nix::libc::EPROTO)),
            Request::Unknown => {
                if self.unknown_opcodes.insert(header.opcode) {
                    warn!(opcode = header.opcode, "request with an unknown opcode answered ENOSYS");
                }
                Some(abi::reply_error(unique, nix::libc::ENOSYS))
            }
        };
        if let Some(reply) = reply {
            self.send(&reply);
        }
        Flow::Continue
    }

    /// The process behind the calling thread, watched from now on. A process that exited
    /// since it was last seen is reaped first, so that a new process with its pid starts clean.
    fn caller(&mut self, tid: u32) -> Result<Pid, ()> {
        let pid =
            self.processes.resolve(tid).map_err(|gone| debug!(tid, "caller gone: {}", gone.0))?;
        if self.processes.has_exited(pid) {
            self.reap(pid, Instant::now());
            return self
                .processes
                .resolve(tid)
                .map_err(|gone| debug!(tid, "caller gone: {}", gone.0));
        }
        Ok(pid)
    }

    /// Reclaims what an exited process held.
    fn reap(&mut self, pid: Pid, now: Instant) {
        let departed = self.device.process_exited(pid, now);
        let name = self.processes.forget(pid).unwrap_or_else(|| "?".to_string());
        if let Some(departed) = departed {
            if departed.tokens > 0 {
                info!(
                    pid,
                    tokens = departed.tokens,
                    "reclaimed {} token(s) from pid {pid} ({name}), which exited without returning them",
                    departed.tokens
                );
            } else {
                debug!(pid, "process {name} exited holding nothing");
            }
        }
        self.send_events();
    }

    /// Carries out what the device asked for.
    fn send_events(&mut self) {
        for event in self.device.take_events() {
            let message = match event {
                Event::Answer { request, pid } => {
                    debug!(pid, request = request.0, "waiting read answered");
                    abi::reply_data(request.0, TOKEN)
                }
                Event::Interrupted { request } => abi::reply_error(request.0, nix::libc::EINTR),
                Event::Wake { handle, pid } => {
                    debug!(pid, "token reserved for a poller; waking it");
                    abi::notify_poll(handle.0)
                }
            };
            self.send(&message);
        }
    }

    fn send(&self, message: &[u8]) {
        match nix::unistd::write(&self.channel, message) {
            Ok(_) => {}
            // The request is gone (its caller was interrupted and gave up): nothing to answer.
            Err(Errno::ENOENT) => debug!("reply to a request the kernel dropped"),
            Err(errno) => warn!("could not answer the kernel: {errno}"),
        }
    }

    /// The device's state now.
    pub fn status(&self) -> Status {
        let counts = self.device.counts();
        Status {
            backend: "cuse",
            path: self.dev_path.clone(),
            jobs: counts.target,
            pool: counts.size,
            free: counts.free,
            held: counts.held,
            withheld: counts.withheld,
            waiters: Some(counts.waiting),
            recovered: self.device.counters().reclaimed,
        }
    }

    /// The device semantics, for status and tests.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn report(&self) {
        info!("{}", self.status());
        let holders: Vec<String> = self
            .device
            .holders()
            .iter()
            .map(|holder| {
                format!(
                    "{} (pid {}): {}",
                    self.processes.name(holder.pid),
                    holder.pid,
                    holder.tokens
                )
            })
            .collect();
        let waiters: Vec<String> = self
            .device
            .waiters()
            .iter()
            .map(|waiter| {
                format!(
                    "{} (pid {}, {:?})",
                    self.processes.name(waiter.pid),
                    waiter.pid,
                    waiter.kind
                )
            })
            .collect();
        let counters = self.device.counters();
        info!(
            "{} client processes; holders: [{}]; waiters: [{}]; grants {}, returns {}, reclaimed {}, \
             ENOSPC {}, grace returns {}",
            self.processes.count(),
            holders.join(", "),
            waiters.join(", "),
            counters.grants,
            counters.returns,
            counters.reclaimed,
            counters.refused,
            counters.grace_returns
        );
    }
}

/// The poll answer: always writable, readable when a token can be taken now, limited to the
/// events asked for.
fn poll_events(readable: bool, asked: u32) -> u32 {
    let mut revents = (nix::libc::POLLOUT | nix::libc::POLLWRNORM) as u32;
    if readable {
        revents |= (nix::libc::POLLIN | nix::libc::POLLRDNORM) as u32;
    }
    if asked == 0 {
        revents
    } else {
        revents & asked
    }
}
