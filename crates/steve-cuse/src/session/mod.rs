//! One kernel connection, CUSE (`/dev/cuse`) or FUSE (`/dev/fuse`, a socket in tests): device
//! requests go through steve-core's device semantics, a FUSE mount's filesystem requests to its
//! [`OneFile`]; replies and poll notifications go back; tokens of processes that exit are
//! reclaimed the moment their pidfd says so.
//!
//! The session blocks in exactly one place, a `poll` over the channel, the signalfd, one pidfd
//! per client process, with the next reservation expiry as the timeout.
#![forbid(unsafe_code)]

mod processes;

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use steve_core::control::{answer, ControlServer, Controlled};
use steve_core::device::{Device, Event, Pid, PollHandle, ReadOutcome, RequestId, WaitKind};
use steve_core::limits::{Governor, Limits, ProcProbe, SystemProbe};
use steve_core::signals::{SignalEvent, Signals};
use steve_core::status::{CounterReport, HolderReport, PoolReport, StatusReport, WaiterReport};
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::fuse::filesystem::OneFile;
use crate::ll::{self, Request};
use crate::session::processes::Processes;

/// The byte handed out as a token.
const TOKEN: &[u8] = b"+";
/// Largest read and write the kernel is told to send.
pub const MAX_IO: u32 = 4096;
/// The kernel needs room for the largest request: a write of `MAX_IO` bytes with its headers,
/// and never less than its minimum read buffer (8 KiB).
const BUFFER_LEN: usize = 64 * 1024;

/// A CUSE or FUSE connection serving the device semantics.
#[derive(Debug)]
pub struct Session {
    channel: OwnedFd,
    device: Device,
    processes: Processes,
    /// "cuse" or "fuse", for status.
    backend: &'static str,
    /// Where clients open the jobserver.
    path: std::path::PathBuf,
    /// A FUSE mount's contents; `None` for a CUSE device.
    filesystem: Option<OneFile>,
    next_fh: u64,
    buffer: Vec<u8>,
    unknown_opcodes: HashSet<u32>,
    governor: Governor,
    /// The allowance last given to the device.
    allowance: Option<usize>,
    /// The control socket; taken out while it is serviced, since servicing needs the session.
    control: Option<ControlServer>,
    control_path: Option<std::path::PathBuf>,
    started: Instant,
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
    pub fn start(channel: OwnedFd, dev_name: &str, device: Device) -> Result<Session, Error> {
        let mut buffer = vec![0u8; BUFFER_LEN];
        let len = loop {
            match nix::unistd::read(&channel, &mut buffer) {
                Ok(len) => break len,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(Error::io("read CUSE_INIT from", "the channel", errno)),
            }
        };
        let (header, request) = ll::parse(&buffer[..len]).map_err(Error::Protocol)?;
        let Request::CuseInit { major, minor } = request else {
            return Err(Error::Handshake(format!(
                "expected CUSE_INIT, got opcode {}",
                header.opcode
            )));
        };
        if major != ll::KERNEL_VERSION || minor < ll::MIN_MINOR_VERSION {
            return Err(Error::Handshake(format!(
                "kernel speaks FUSE {major}.{minor}; steve needs {}.{} or later",
                ll::KERNEL_VERSION,
                ll::MIN_MINOR_VERSION
            )));
        }
        let minor = minor.min(ll::KERNEL_MINOR_VERSION);
        let reply = ll::reply_cuse_init(header.unique, minor, MAX_IO, MAX_IO, dev_name);
        nix::unistd::write(&channel, &reply)
            .map_err(|errno| Error::io("answer CUSE_INIT on", "the channel", errno))?;
        debug!(major, minor, "CUSE connection up as /dev/{dev_name}");
        let dev_path = std::path::Path::new("/dev").join(dev_name);
        Session::serving(channel, device, "cuse", dev_path, None, buffer)
    }

    /// Serves a FUSE connection whose INIT is already answered (the mount did it): `filesystem`
    /// is what the mount shows, `path` where clients open its file.
    pub fn for_mount(
        channel: OwnedFd,
        device: Device,
        path: std::path::PathBuf,
        filesystem: OneFile,
    ) -> Result<Session, Error> {
        let buffer = vec![0u8; BUFFER_LEN];
        Session::serving(channel, device, "fuse", path, Some(filesystem), buffer)
    }

    fn serving(
        channel: OwnedFd,
        device: Device,
        backend: &'static str,
        path: std::path::PathBuf,
        filesystem: Option<OneFile>,
        buffer: Vec<u8>,
    ) -> Result<Session, Error> {
        fcntl(&channel, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|errno| Error::io("configure", "the channel", errno))?;
        let limits = Limits::new(device.counts().target);
        Ok(Session {
            channel,
            device,
            processes: Processes::default(),
            backend,
            path,
            filesystem,
            next_fh: 1,
            buffer,
            unknown_opcodes: HashSet::new(),
            governor: Governor::new(limits, Box::new(ProcProbe)),
            allowance: None,
            control: None,
            control_path: None,
            started: Instant::now(),
        })
    }

    /// Applies `governor`'s limits from now on (the pool size and per-process limit at once).
    pub fn set_governor(&mut self, governor: Governor) {
        let now = Instant::now();
        self.device.set_jobs(governor.limits().jobs, now);
        self.device.set_per_process_limit(governor.limits().per_process_limit, now);
        self.governor = governor;
        self.refresh_limits(now);
        self.send_events();
    }

    /// Serves `control` from the session's poll loop.
    pub fn set_control(&mut self, control: ControlServer) {
        self.control_path = Some(control.path().to_path_buf());
        self.control = Some(control);
    }

    /// Reads the system if a load or memory limit is set, and holds tokens back (or lets them
    /// go) as the limits say.
    fn refresh_limits(&mut self, now: Instant) {
        let limits = self.governor.limits();
        if limits.load_average.is_none()
            && limits.min_memory_avail_mib.is_none()
            && self.allowance.is_none()
        {
            return;
        }
        let allowance = self.governor.check(now);
        if allowance != self.allowance {
            match self.governor.pressure() {
                Some(pressure) => info!("holding tokens back: {pressure}"),
                None => info!("limits no longer exceeded: tokens flow again"),
            }
            self.allowance = allowance;
            self.device.set_allowance(allowance, now);
        }
    }

    /// Serves until a stop signal or the end of the connection. Without `signals` (in tests)
    /// it serves until the channel closes.
    pub fn run(&mut self, mut signals: Option<&mut Signals>) -> Result<Ended, Error> {
        loop {
            let deadline = match (self.device.next_deadline(), self.governor.next_recheck()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match deadline {
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
            let (channel_ready, signals_ready, exited, control_ready) = {
                let pidfds = self.processes.pidfds();
                pids = pidfds.iter().map(|(pid, _)| *pid).collect();
                let mut fds = vec![PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
                if let Some(signals) = signals.as_deref() {
                    fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
                }
                let first_pidfd = fds.len();
                fds.extend(pidfds.iter().map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)));
                let first_control = fds.len();
                if let Some(control) = &self.control {
                    fds.extend(
                        control.fds().into_iter().map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
                    );
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(errno) => {
                        return Err(Error::io("wait for events on", "the channel", errno))
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
                let exited: Vec<Pid> = fds[first_pidfd..first_control]
                    .iter()
                    .zip(&pids)
                    .filter(|(fd, _)| ready(fd))
                    .map(|(_, pid)| *pid)
                    .collect();
                let control_ready = fds[first_control..].iter().any(ready);
                (ready(&fds[0]), signals.is_some() && ready(&fds[1]), exited, control_ready)
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
                    .map_err(|errno| Error::io("read signals for", "the server", errno))?
                {
                    match received.event {
                        SignalEvent::Stop(signal) => return Ok(Ended::Stopped(signal)),
                        SignalEvent::Report => self.report(),
                        SignalEvent::Child => {}
                    }
                }
            }
            if control_ready {
                if let Some(mut control) = self.control.take() {
                    let owner = nix::unistd::geteuid().as_raw();
                    control.service(&mut |request, peer| answer(self, request, peer, owner));
                    self.control = Some(control);
                }
            }
            if channel_ready && self.read_requests()? == Flow::Disconnected {
                return Ok(Ended::Disconnected);
            }
            let now = Instant::now();
            if self.governor.next_recheck().is_some_and(|at| at <= now) {
                self.refresh_limits(now);
            }
            self.device.expire(now);
            self.send_events();
        }
    }

    /// Handles every request waiting on the channel.
    fn read_requests(&mut self) -> Result<Flow, Error> {
        loop {
            let len = match nix::unistd::read(&self.channel, &mut self.buffer) {
                Ok(0) => return Ok(Flow::Disconnected),
                Ok(len) => len,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Flow::Continue),
                // The kernel ended the connection (the device was removed).
                Err(Errno::ENODEV) => return Ok(Flow::Disconnected),
                Err(errno) => return Err(Error::io("read requests from", "the channel", errno)),
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
        let (header, request) = match ll::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!("{error}");
                if let Some(unique) = error.unique {
                    self.send(&ll::reply_error(unique, nix::libc::EIO));
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
                    self.send(&ll::reply_error(unique, nix::libc::EINTR));
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
                // A FUSE file's reads must all come here, none from the page cache.
                let flags = match self.filesystem {
                    Some(_) => ll::FOPEN_NONSEEKABLE | ll::FOPEN_DIRECT_IO,
                    None => ll::FOPEN_NONSEEKABLE,
                };
                Some(ll::reply_open(unique, fh, flags))
            }
            Request::Read { size: 0, .. } => Some(ll::reply_data(unique, &[])),
            Request::Read { flags, .. } => {
                self.refresh_limits(Instant::now());
                let nonblocking = flags & nix::libc::O_NONBLOCK as u32 != 0;
                match self.device.read(pid, RequestId(unique), nonblocking, Instant::now()) {
                    ReadOutcome::Token => {
                        debug!(pid, "token handed out");
                        Some(ll::reply_data(unique, TOKEN))
                    }
                    ReadOutcome::WouldBlock => Some(ll::reply_error(unique, nix::libc::EAGAIN)),
                    ReadOutcome::Pending => {
                        debug!(pid, unique, "read waits");
                        None
                    }
                }
            }
            Request::Write { data, .. } => match self.device.write(pid, data.len(), Instant::now())
            {
                Ok(accepted) => Some(ll::reply_write(unique, accepted as u32)),
                Err(_) => {
                    debug!(pid, "write of a token not held: ENOSPC");
                    Some(ll::reply_error(unique, nix::libc::ENOSPC))
                }
            },
            Request::Poll { kh, flags, events, .. } => {
                self.refresh_limits(Instant::now());
                let notify = (flags & ll::POLL_SCHEDULE_NOTIFY != 0).then_some(PollHandle(kh));
                let readable = self.device.poll(pid, notify, Instant::now());
                Some(ll::reply_poll(unique, poll_events(readable, events)))
            }
            Request::Interrupt { target } => {
                if self.device.interrupt(RequestId(target)) {
                    debug!(target, "waiting read interrupted");
                    self.send(&ll::reply_error(target, nix::libc::EINTR));
                }
                // An interrupt is never answered itself.
                None
            }
            Request::Flush { .. } | Request::Release { .. } => Some(ll::reply_empty(unique)),
            Request::Ioctl { .. } => Some(ll::reply_error(unique, nix::libc::ENOTTY)),
            Request::Destroy => {
                self.send(&ll::reply_empty(unique));
                return Flow::Disconnected;
            }
            Request::CuseInit { .. } => Some(ll::reply_error(unique, nix::libc::EPROTO)),
            Request::Forget => None,
            Request::Lookup { .. }
            | Request::Getattr
            | Request::Setattr
            | Request::Statfs
            | Request::Opendir
            | Request::Readdir { .. }
            | Request::Releasedir => Some(
                self.filesystem
                    .as_ref()
                    .and_then(|filesystem| filesystem.answer(&header, &request))
                    .unwrap_or_else(|| ll::reply_error(unique, nix::libc::ENOSYS)),
            ),
            Request::Unknown => {
                if self.unknown_opcodes.insert(header.opcode) {
                    warn!(opcode = header.opcode, "request with an unknown opcode answered ENOSYS");
                }
                Some(ll::reply_error(unique, nix::libc::ENOSYS))
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
                    ll::reply_data(request.0, TOKEN)
                }
                Event::Interrupted { request } => ll::reply_error(request.0, nix::libc::EINTR),
                Event::Wake { handle, pid } => {
                    debug!(pid, "token reserved for a poller; waking it");
                    ll::notify_poll(handle.0)
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

    /// The device's state now, as `steve status` shows it.
    pub fn status(&mut self) -> StatusReport {
        let now = Instant::now();
        let counts = self.device.counts();
        let counters = self.device.counters();
        let holders = self
            .device
            .holders()
            .into_iter()
            .map(|holder| HolderReport {
                pid: holder.pid,
                command: self.processes.command(holder.pid),
                tokens: Some(holder.tokens),
                held_seconds: Some(now.duration_since(holder.since).as_secs_f64()),
            })
            .collect();
        let waiters = self
            .device
            .waiters()
            .into_iter()
            .map(|waiter| WaiterReport {
                pid: waiter.pid,
                command: self.processes.command(waiter.pid),
                kind: match waiter.kind {
                    WaitKind::Blocking => "blocking".to_string(),
                    WaitKind::Polling => "polling".to_string(),
                },
                waiting_seconds: now.duration_since(waiter.since).as_secs_f64(),
            })
            .collect();
        let limits = self.governor.limits();
        let system = if limits.load_average.is_some() || limits.min_memory_avail_mib.is_some() {
            self.governor.last_reading()
        } else {
            ProcProbe.read()
        };
        StatusReport {
            backend: self.backend.to_string(),
            path: self.path.clone(),
            control: self.control_path.clone(),
            daemon_pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            pool: PoolReport {
                jobs: counts.target,
                size: counts.size,
                free: counts.free,
                held: counts.held,
                withheld: counts.withheld,
                lent: counts.lent,
            },
            limits: limits.clone(),
            system,
            limited_by: self.governor.pressure(),
            holders_exact: true,
            holders,
            waiters: Some(waiters),
            counters: CounterReport {
                grants: Some(counters.grants),
                returns: Some(counters.returns),
                reclaimed: counters.reclaimed,
                enospc: Some(counters.refused),
                grace_returns: Some(counters.grace_returns),
                interrupts: Some(counters.interrupts),
                expired_reservations: Some(counters.expired_reservations),
            },
        }
    }

    /// The device semantics, for status and tests.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn report(&mut self) {
        info!("status:\n{}", self.status());
    }
}

impl Controlled for Session {
    fn status(&mut self) -> StatusReport {
        Session::status(self)
    }

    fn apply(&mut self, settings: &[(String, String)]) -> Result<(), String> {
        let mut limits = self.governor.limits().clone();
        limits.apply(settings, crate::MAX_JOBS).map_err(|error| error.to_string())?;
        info!("settings changed: {settings:?}");
        let now = Instant::now();
        self.device.set_jobs(limits.jobs, now);
        self.device.set_per_process_limit(limits.per_process_limit, now);
        self.governor.set_limits(limits);
        self.refresh_limits(now);
        self.send_events();
        Ok(())
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
