//! One kernel connection, CUSE (`/dev/cuse`) or FUSE (`/dev/fuse`, a socket in tests), served
//! as a [`Server`] in steve-core's event loop: device requests go through steve-core's device
//! semantics, a FUSE mount's filesystem requests to its [`OneFile`]; replies and poll
//! notifications go back; tokens of processes that exit are reclaimed the moment the loop sees
//! their pidfd fire.
//!
//! The channel is non-blocking: when the loop says it is readable, every request waiting on it
//! is handled, and a read that must wait is answered later, from whichever event frees a token.
//!
//! With `threads` above one, serving threads read and answer the connection, each a threaded
//! source of the loop ([`Server::threaded_sources`]). A FUSE connection has a channel per
//! thread (the first and clones of it, `FUSE_DEV_IOC_CLONE`); the kernel expects each answer
//! on the channel its request was read from, so a read that waits remembers its channel. A
//! CUSE connection cannot be cloned (the ioctl takes only /dev/fuse descriptors, and a new
//! open of /dev/cuse is a new device), so its threads share its one channel.
//!
//! On a FUSE connection the kernel may instead hand requests to ring entries the session
//! registered ([`crate::fuse::uring`], `--io-uring`): each is answered through the entry it
//! came in, and a read that waits remembers its entry. INTERRUPT still comes on the channel.
//! The ring is served by the loop's thread, or with `threads` above one there is a ring per
//! CPU's queue, each served by a thread of its own pinned to that CPU ([`queues`]); the loop's
//! thread then serves the channel.
//!
//! A session may also feed a companion FIFO (steve-fifo's [`Companion`]) from the same device:
//! to the device the FIFO is one more process, [`COMPANION_PID`], that takes tokens one at a time
//! as its readers take its few spares (queueing as a poller when its pipe is empty and none is
//! free, so the queue's fairness holds for it too) and gives back what they return. Spares that
//! lie untaken while others wait go back after the poll reservation's time.
#![forbid(unsafe_code)]

mod queues;
mod routes;

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use steve_core::accounting::device::{
    Device, Event, Pid, PollHandle, ReadOutcome, RequestId, WaitKind,
};
use steve_core::accounting::shares::{BuildId, Owner};
use steve_core::server::backend::Export;
use steve_core::server::{
    Context, Endpoint, Flow, Handled, PoolChange, Server, SourceId, ThreadedSource,
};
use steve_core::status::{
    BackendReport, BuildReport, CompanionReport, CounterReport, HolderReport, PoolReport,
    WaiterReport,
};
use steve_core::trace::{Kind, Record};
use steve_core::JobCount;
use steve_fifo::companion::Companion;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::fuse::filesystem::OneFile;
use crate::fuse::mount::Mounted;
use crate::fuse::uring::{Completion, Ring};
use crate::ll::{self, Request};
use routes::{Route, WaitingRoutes};

/// The byte handed out as a token.
const TOKEN: &[u8] = b"+";
/// Largest read and write the kernel is told to send.
pub const MAX_IO: u32 = 4096;
/// The kernel needs room for the largest request: a write of `MAX_IO` bytes with its headers,
/// and never less than its minimum read buffer (8 KiB).
pub const BUFFER_LEN: usize = 64 * 1024;
/// The companion FIFO's inotify descriptor, to the event loop.
const COMPANION: SourceId = SourceId(0);
/// The channels, to the event loop: channel `n` is source `FIRST_CHANNEL + n`.
const FIRST_CHANNEL: u32 = 1;
/// The most channels (serving threads) a connection is given.
pub const MAX_THREADS: usize = 64;
/// The io_uring's descriptor, to the event loop (after every channel's).
const RING: SourceId = SourceId(FIRST_CHANNEL + MAX_THREADS as u32);
/// The companion FIFO as the device sees it: a process id no process has (pid_max is at most
/// 2^22).
pub const COMPANION_PID: Pid = u32::MAX;
/// The companion FIFO's build: its readers, whoever they are, count as one build (a number the
/// server's own count of builds never reaches).
const COMPANION_BUILD: BuildId = BuildId(1 << 63);
/// The companion FIFO's poll handle, never a kernel's.
const COMPANION_HANDLE: PollHandle = PollHandle(u64::MAX);

/// The kernel connection's name in a handover; its clones are `channel.1`, `channel.2`, ...
const CHANNEL_NAME: &str = "channel";
/// The directory a root server mounted on, by name in a handover.
const MOUNT_DIRECTORY_NAME: &str = "mount-directory";

/// Takes a predecessor's session over ([`steve_core::handover`]): the same kernel connection
/// (so `/dev/steve` or the mount stays, and the requests that waited in it meanwhile are read
/// now), the books as they were, and the mount to unmount at the end.
pub fn resume(
    config: &steve_core::server::backend::ServeConfig,
    state: &serde_json::Value,
    descriptors: &mut steve_core::handover::Descriptors,
) -> Result<Box<dyn Server>, steve_core::server::Error> {
    let field = |name: &str| state.get(name).cloned().unwrap_or(serde_json::Value::Null);
    let bad = |what: &str, error: serde_json::Error| {
        steve_core::server::Error::usage(format!("handover: the predecessor's {what}: {error}"))
    };
    let missing = |error: steve_core::handover::HandoverError| {
        steve_core::server::Error::usage(error.to_string())
    };
    let mut device: Device =
        serde_json::from_value(field("device")).map_err(|e| bad("books", e))?;
    let filesystem: Option<OneFile> =
        serde_json::from_value(field("filesystem")).map_err(|e| bad("filesystem", e))?;
    #[derive(serde::Deserialize)]
    struct EndpointState {
        path: std::path::PathBuf,
        default_control: std::path::PathBuf,
        mode: u32,
        gid: Option<u32>,
        how: String,
        directories: Vec<std::path::PathBuf>,
    }
    let endpoint: EndpointState =
        serde_json::from_value(field("endpoint")).map_err(|e| bad("endpoint", e))?;
    let endpoint = Endpoint {
        auth: steve_core::makeflags::JobserverAuth::Fifo(endpoint.path.clone()),
        path: endpoint.path,
        default_control: endpoint.default_control,
        mode: endpoint.mode,
        gid: endpoint.gid.map(nix::unistd::Gid::from_raw),
        how: endpoint.how,
        companion: None,
        directories: endpoint.directories,
    };
    let channel = descriptors.take(CHANNEL_NAME).map_err(missing)?;
    // What a handover does not carry: the reservations' index, and every holder for the
    // successor's new crash books.
    device.resumed();
    let mut session = Session::serving(channel, device, endpoint, filesystem, vec![0; BUFFER_LEN])
        .map_err(steve_core::server::Error::from)?;
    // The predecessor's clones, with the reads waiting on them: answered on them.
    while let Some(clone) = descriptors.take_optional(&clone_name(session.channels.len())) {
        session.add_channel(clone).map_err(steve_core::server::Error::from)?;
    }
    let waiting_on = serde_json::from_value::<Vec<(u64, usize, Pid)>>(field("waiting_on"));
    for (unique, channel, pid) in waiting_on.unwrap_or_default() {
        if channel < session.channels.len() {
            session.waiting_on.insert(unique, Route::Channel(channel), pid);
        }
    }
    // The same default as a server started afresh: a reader per CPU on a mount, one on CUSE.
    let threads = match (config.threads, session.filesystem.is_some()) {
        (Some(threads), _) => threads,
        (None, true) => crate::fuse::default_threads(),
        (None, false) => 1,
    };
    session.set_threads(threads).map_err(steve_core::server::Error::from)?;
    session.next_fh = field("next_fh").as_u64().unwrap_or(1);
    session.unknown_opcodes =
        serde_json::from_value(field("unknown_opcodes")).map_err(|e| bad("opcodes", e))?;
    let mountpoint: Option<std::path::PathBuf> =
        serde_json::from_value(field("mountpoint")).map_err(|e| bad("mount point", e))?;
    if let Some(mountpoint) = mountpoint {
        let directory = descriptors.take_optional(MOUNT_DIRECTORY_NAME);
        session.unmount_on_drop(Mounted::adopted(mountpoint, directory));
    }
    // The companion FIFO's process is in the books already: only its pipe is taken over.
    if let Some(companion) = state.get("companion").filter(|state| !state.is_null()) {
        let companion = Companion::adopt(companion, descriptors)
            .map_err(|error| steve_core::server::Error::usage(format!("handover: {error}")))?;
        session.endpoint.companion = Some(companion.path().to_path_buf());
        session.companion = Some(companion);
    }
    Ok(Box::new(session))
}

/// A CUSE or FUSE connection serving the device semantics.
#[derive(Debug)]
pub struct Session {
    /// The FUSE connection's io_uring, when the kernel hands requests to it. Dropped first,
    /// before the connection it serves: its buffers go with it.
    ring: Option<Ring>,
    /// Answers through the ring wait for one submission at the end of a batch.
    ring_batch: bool,
    /// A ring entry's request, put together as a channel would have given it.
    ring_message: Vec<u8>,
    /// A ring per CPU's queue, each for a thread of its own (moved to it as the loop starts),
    /// and where answers for each queue's entries are posted.
    queue_sources: Vec<queues::QueueSource>,
    mailboxes: Vec<Arc<queues::Mailbox>>,
    // Dropped next: closing the connection fails the reads still waiting, before a mount is
    // unmounted below. The first channel and its clones.
    channels: Vec<OwnedFd>,
    /// How many threads serve the channels (1: the loop's thread serves them all).
    threads: usize,
    /// Where each waiting read came from (and its caller), unless the first channel.
    waiting_on: WaitingRoutes,
    device: Device,
    endpoint: Endpoint,
    /// A FUSE mount's contents; `None` for a CUSE device.
    filesystem: Option<OneFile>,
    next_fh: u64,
    buffer: Vec<u8>,
    unknown_opcodes: HashSet<u32>,
    /// Interrupts that came before their request was handled.
    early_interrupts: EarlyInterrupts,
    /// Whether the loop's thread reads on after a request, or goes back to the epoll.
    read_ahead: ReadAhead,
    /// The named pipe fed from the same device, if any.
    companion: Option<Companion>,
    /// The device reserved a token for the companion: it takes it after the events are sent.
    companion_woken: bool,
    /// The mount, unmounted when the session goes (after the connection).
    mounted: Option<Mounted>,
}

impl Session {
    /// Answers the kernel's CUSE_INIT on `channel`, which registers `/dev/DEV_NAME`.
    pub fn start(
        channel: OwnedFd,
        dev_name: &str,
        device: Device,
        endpoint: Endpoint,
    ) -> Result<Session, Error> {
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
        Session::serving(channel, device, endpoint, None, buffer)
    }

    /// Serves a FUSE connection whose INIT is already answered (the mount did it): `filesystem`
    /// is what the mount shows.
    pub fn for_mount(
        channel: OwnedFd,
        device: Device,
        endpoint: Endpoint,
        filesystem: OneFile,
    ) -> Result<Session, Error> {
        let buffer = vec![0u8; BUFFER_LEN];
        Session::serving(channel, device, endpoint, Some(filesystem), buffer)
    }

    fn serving(
        channel: OwnedFd,
        device: Device,
        endpoint: Endpoint,
        filesystem: Option<OneFile>,
        buffer: Vec<u8>,
    ) -> Result<Session, Error> {
        fcntl(&channel, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|errno| Error::io("configure", "the channel", errno))?;
        Ok(Session {
            ring: None,
            ring_batch: false,
            ring_message: Vec::new(),
            queue_sources: Vec::new(),
            mailboxes: Vec::new(),
            channels: vec![channel],
            threads: 1,
            waiting_on: WaitingRoutes::default(),
            device,
            endpoint,
            filesystem,
            next_fh: 1,
            buffer,
            unknown_opcodes: HashSet::new(),
            early_interrupts: EarlyInterrupts::default(),
            read_ahead: ReadAhead::default(),
            companion: None,
            companion_woken: false,
            mounted: None,
        })
    }

    /// Serves the connection from `threads` threads, or with 1 from the loop's thread alone.
    /// On a FUSE connection each thread reads and answers on a channel of its own (clones of
    /// the first are made as needed); a CUSE connection's threads share its one channel.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), Error> {
        let threads = threads.clamp(1, MAX_THREADS);
        while self.filesystem.is_some() && self.channels.len() < threads {
            let clone =
                crate::fuse::clone::clone_channel(self.channels[0].as_fd()).map_err(|source| {
                    Error::Io {
                        action: "clone",
                        what: "the channel (FUSE_DEV_IOC_CLONE on /dev/fuse)".to_string(),
                        source,
                    }
                })?;
            self.add_channel(clone)?;
        }
        self.threads = threads;
        Ok(())
    }

    /// The connection's first channel (a ring registers its entries on it).
    pub fn first_channel(&self) -> BorrowedFd<'_> {
        self.channels[0].as_fd()
    }

    /// Takes requests through `ring` too, whose entries are registered on this connection.
    pub fn serve_ring(&mut self, ring: Ring) {
        info!("serving FUSE requests through io_uring ({} ring entries)", ring.entries());
        self.ring = Some(ring);
    }

    /// Takes requests through `rings`, one per CPU's queue (ring `n` registered on queue `n`
    /// of this connection), each served by a thread of its own; the loop's thread serves the
    /// channel.
    pub fn serve_queues(&mut self, rings: Vec<Ring>) -> Result<(), Error> {
        let entries: usize = rings.iter().map(Ring::entries).sum();
        info!(
            "serving FUSE requests through io_uring: a ring and a thread for each of {} CPUs \
             ({entries} ring entries)",
            rings.len()
        );
        for (queue, ring) in rings.into_iter().enumerate() {
            let (source, mailbox) = queues::QueueSource::new(ring, queue as u16)?;
            self.queue_sources.push(source);
            self.mailboxes.push(mailbox);
        }
        Ok(())
    }

    /// Serves another channel of the same connection (a clone; a test's fake kernel gives
    /// another socket), by the loop's thread or, with [`Session::set_threads`], by its own.
    pub fn add_channel(&mut self, channel: OwnedFd) -> Result<(), Error> {
        fcntl(&channel, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|errno| Error::io("configure", "a cloned channel", errno))?;
        self.channels.push(channel);
        Ok(())
    }

    /// Feeds `companion` from this session's device from now on.
    pub fn serve_companion(&mut self, companion: Companion) {
        self.endpoint.companion = Some(companion.path().to_path_buf());
        // Its directory too is one `serve` warns about when others may change it.
        let dir = companion.path().parent().and_then(|dir| dir.canonicalize().ok());
        self.endpoint.directories.extend(dir);
        self.companion = Some(companion);
        // A build of its own, the daemon's.
        let owner = Owner { build: COMPANION_BUILD, user: nix::unistd::geteuid().as_raw() };
        self.device.join(COMPANION_PID, owner, Instant::now());
        self.feed_companion(Instant::now());
    }

    /// Gives the companion FIFO tokens while it holds fewer spares than it may: free ones, or,
    /// with its pipe empty, one reserved for it as a poller; otherwise it waits in the queue.
    fn feed_companion(&mut self, now: Instant) {
        let Some(companion) = self.companion.as_mut() else { return };
        while companion.wants_token() {
            let mut outcome = self.device.read(COMPANION_PID, RequestId(u64::MAX), true, now);
            // Queued as a poller when its pipe is empty (unless a token came free meanwhile: then
            // it is reserved); with spares still in the pipe it waits for nothing.
            if outcome != ReadOutcome::Token {
                let empty = companion.relay().in_pipe() == 0;
                if !(empty && self.device.poll(COMPANION_PID, Some(COMPANION_HANDLE), now)) {
                    return;
                }
                outcome = self.device.read(COMPANION_PID, RequestId(u64::MAX), true, now);
            }
            if outcome != ReadOutcome::Token {
                return;
            }
            if let Err(error) = companion.relay_mut().give(now) {
                warn!("cannot put a token into {}: {error}", companion.path().display());
                let _ = self.device.write(COMPANION_PID, 1, now);
                return;
            }
        }
    }

    /// The companion's readers read or wrote: give back what they returned or lost, and a new
    /// spare if they took it.
    fn settle_companion(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        let Some(companion) = self.companion.as_mut() else { return };
        let back = companion.settle(now);
        if back.returned > 0 && self.device.write(COMPANION_PID, back.returned, now).is_err() {
            warn!("the companion FIFO returned tokens the device has not booked to it");
        }
        if back.lost > 0 {
            self.device.reclaim_lost(COMPANION_PID, back.lost, now);
        }
        self.feed_companion(now);
        self.send_events(cx);
    }

    /// When the companion's untaken spares go back because others wait for a token.
    fn companion_deadline(&self) -> Option<Instant> {
        // Asked on every turn of the loop: the waiters first, which need no system call.
        let companion = self.companion.as_ref()?;
        if !self.device.has_waiters_besides(COMPANION_PID) {
            return None;
        }
        Some(companion.relay().spare_since()? + self.device.reservation())
    }

    /// Gives the companion's untaken spares back to the device (others wait for them, the pool
    /// shrank or a limit holds tokens back); the companion queues for its next turn.
    fn yield_companion_spare(&mut self, now: Instant) {
        let Some(companion) = self.companion.as_mut() else { return };
        let spares = companion.relay_mut().take_spares();
        if spares > 0 {
            debug!(spares, "the companion FIFO's untaken spares go back to the pool");
            let _ = self.device.write(COMPANION_PID, spares, now);
        }
    }

    /// Unmounts `mounted` when the session goes, after its connection is closed.
    pub fn unmount_on_drop(&mut self, mounted: Mounted) {
        self.mounted = Some(mounted);
    }

    /// Handles the requests waiting on channel `channel`: every one, or (when reading on has
    /// not paid lately, see [`ReadAhead`]) the first, the epoll saying when there are more.
    fn read_requests(&mut self, channel: usize, cx: &mut Context<'_>) -> Result<Flow, Error> {
        let mut ahead = false;
        loop {
            let len = match nix::unistd::read(&self.channels[channel], &mut self.buffer) {
                Ok(0) => return Ok(Flow::Ended("the kernel closed the connection".into())),
                Ok(len) => len,
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    if ahead {
                        self.read_ahead.found(false);
                    }
                    return Ok(Flow::Continue);
                }
                // The kernel ended the connection (the device was removed, or unmounted).
                Err(Errno::ENODEV) => {
                    return Ok(Flow::Ended("the kernel ended the connection".into()))
                }
                Err(errno) => return Err(Error::io("read requests from", "the channel", errno)),
            };
            // Lent out while it is handled: no copy per request.
            let buffer = std::mem::take(&mut self.buffer);
            if ahead {
                self.read_ahead.found(true);
            }
            let flow = self.handle(&buffer[..len], Route::Channel(channel), cx);
            self.buffer = buffer;
            self.send_events(cx);
            if flow != Flow::Continue {
                return Ok(flow);
            }
            ahead = self.read_ahead.worth_trying();
            if !ahead {
                return Ok(Flow::Continue);
            }
        }
    }

    /// Handles the requests the ring's entries completed with, then submits the answers (and
    /// any new entries) at once.
    fn read_ring(&mut self, cx: &mut Context<'_>) -> Flow {
        let Some(ring) = self.ring.as_mut() else { return Flow::Continue };
        let completions = ring.completions();
        self.ring_batch = true;
        let mut flow = Flow::Continue;
        for completion in completions {
            let n = match completion {
                Completion::Request(n) => n,
                Completion::Failed(n, errno) => {
                    debug!(entry = n, "the kernel gave a ring entry up: {errno}");
                    continue;
                }
            };
            // Lent out while it is handled, as a channel's buffer is.
            let mut message = std::mem::take(&mut self.ring_message);
            let ring = self.ring.as_ref().expect("the ring serves");
            match ring.request(n, &mut message) {
                Ok(()) => flow = self.handle(&message, Route::Ring(n), cx),
                Err((why, unique)) => {
                    warn!("{why}");
                    self.send(Route::Ring(n), &ll::reply_error(unique, nix::libc::EIO));
                }
            }
            self.ring_message = message;
            self.send_events(cx);
            if flow != Flow::Continue {
                break;
            }
        }
        self.ring_batch = false;
        self.flush_ring();
        flow
    }

    /// With the loop's one ring quiet and one of its queues perhaps starved of entries: reaps
    /// what came, then plays the kernel's INTERRUPT of the waiting read the ring names, which
    /// answers it EINTR through its entry (`fuse::starvation`).
    fn kick_ring(&mut self, cx: &mut Context<'_>) {
        if self.read_ring(cx) != Flow::Continue {
            return;
        }
        let Some(kick) = self.ring.as_mut().and_then(|ring| ring.kick(cx.now())) else { return };
        let interrupt = ll::kernel::interrupt(kick.request | ll::INTERRUPT_BIT, kick.request);
        let _ = self.handle(&interrupt, Route::Ring(kick.entry), cx);
        self.send_events(cx);
        self.flush_ring();
    }

    /// Submits the answers queued for the ring.
    fn flush_ring(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            if let Err(why) = ring.flush() {
                warn!("{why}");
            }
        }
    }

    /// Handles one request, which came from `route`.
    fn handle(&mut self, message: &[u8], route: Route, cx: &mut Context<'_>) -> Flow {
        let (flow, answer) = self.handle_leaving_answer(message, route, cx);
        if let Some(answer) = answer {
            self.send(route, &answer);
        }
        flow
    }

    /// Handles one request, which came from `route`, and gives its answer for the caller to
    /// send (the crash books already say what it tells); answers that cannot wait for that
    /// (a request handled at once with an error, an earlier waiting read's) are sent here.
    fn handle_leaving_answer(
        &mut self,
        message: &[u8],
        route: Route,
        cx: &mut Context<'_>,
    ) -> (Flow, Option<ll::Reply>) {
        let (header, request) = match ll::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!("{error}");
                if let Some(unique) = error.unique {
                    self.send(route, &ll::reply_error(unique, nix::libc::EIO));
                }
                return (Flow::Continue, None);
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
            match self.caller(header.pid, header.uid, cx) {
                Ok(pid) => pid,
                // The caller is already gone: nobody waits for an answer but the kernel.
                Err(()) => {
                    self.send(route, &ll::reply_error(unique, nix::libc::EINTR));
                    return (Flow::Continue, None);
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
                // A FUSE file's reads must all come here, none from the page cache; and its
                // closes must never wait for this loop (see FLUSH below).
                let flags = match self.filesystem {
                    Some(_) => ll::FOPEN_NONSEEKABLE | ll::FOPEN_DIRECT_IO | ll::FOPEN_NOFLUSH,
                    None => ll::FOPEN_NONSEEKABLE,
                };
                Some(ll::reply_open(unique, fh, flags))
            }
            Request::Read { size: 0, .. } => Some(ll::reply_data(unique, &[])),
            Request::Read { flags, .. } => {
                let nonblocking = flags & nix::libc::O_NONBLOCK as u32 != 0;
                if !nonblocking && self.early_interrupts.take(unique) {
                    debug!(pid, unique, "read interrupted before it was handled");
                    self.book_holdings(cx);
                    self.send(route, &ll::reply_error(unique, nix::libc::EINTR));
                    return (Flow::Continue, None);
                }
                match self.device.read(pid, RequestId(unique), nonblocking, cx.now()) {
                    ReadOutcome::Token => {
                        debug!(pid, "token handed out");
                        Some(ll::reply_data(unique, TOKEN))
                    }
                    ReadOutcome::WouldBlock => Some(ll::reply_error(unique, nix::libc::EAGAIN)),
                    ReadOutcome::Pending => {
                        match route {
                            Route::Channel(channel) => debug!(pid, unique, channel, "read waits"),
                            Route::Ring(entry) => debug!(pid, unique, entry, "read waits"),
                            Route::Queue(queue, entry) => {
                                debug!(pid, unique, queue, entry, "read waits")
                            }
                        }
                        if route != Route::Channel(0) {
                            self.waiting_on.insert(unique, route, pid);
                        }
                        None
                    }
                }
            }
            Request::Write { data, .. } => match self.device.write(pid, data.len(), cx.now()) {
                Ok(accepted) => Some(ll::reply_write(unique, accepted as u32)),
                Err(_) => {
                    debug!(pid, "write of a token not held: ENOSPC");
                    Some(ll::reply_error(unique, nix::libc::ENOSPC))
                }
            },
            Request::Poll { kh, flags, events, .. } => {
                let notify = (flags & ll::POLL_SCHEDULE_NOTIFY != 0).then_some(PollHandle(kh));
                let readable = self.device.poll(pid, notify, cx.now());
                Some(ll::reply_poll(unique, poll_events(readable, events)))
            }
            Request::Interrupt { target } => {
                if self.device.interrupt(RequestId(target), cx.now()) {
                    debug!(target, "waiting read interrupted");
                    let on = self.route_of(target);
                    self.send(on, &ll::reply_error(target, nix::libc::EINTR));
                    // An interrupt that found its request is never answered itself.
                    None
                } else {
                    // Not waiting here: answered already, or not handled yet (read by another
                    // serving thread, or through the ring while this came on the channel): a
                    // read with that number that comes later is interrupted at once.
                    self.early_interrupts.remember(target);
                    None
                }
            }
            // A close must never wait for this loop: a process closing its descriptors in
            // execve or exit holds locks that reading its /proc entries takes, so the companion
            // FIFO's scans and that close would wait on each other. FOPEN_NOFLUSH keeps the
            // kernel from sending FLUSH at all; a kernel before 5.16 ignores it, and ENOSYS to
            // the first FLUSH turns it off for the connection (no_flush).
            Request::Flush { .. } => Some(ll::reply_error(unique, nix::libc::ENOSYS)),
            Request::Release { .. } => Some(ll::reply_empty(unique)),
            Request::Ioctl { .. } => Some(ll::reply_error(unique, nix::libc::ENOTTY)),
            Request::Destroy => {
                self.send(route, &ll::reply_empty(unique));
                return (Flow::Ended("the kernel ended the connection (DESTROY)".into()), None);
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
            Request::Optional { name } => {
                debug!(request = name, "optional request answered ENOSYS: the kernel falls back");
                Some(ll::reply_error(unique, nix::libc::ENOSYS))
            }
            Request::Unknown => {
                if self.unknown_opcodes.insert(header.opcode) {
                    warn!(opcode = header.opcode, "request with an unknown opcode answered ENOSYS");
                }
                Some(ll::reply_error(unique, nix::libc::ENOSYS))
            }
        };
        if reply.is_some() {
            self.book_holdings(cx);
        }
        (Flow::Continue, reply)
    }

    /// Where the waiting read `unique` came from, forgotten as it is answered now.
    fn route_of(&mut self, unique: u64) -> Route {
        self.waiting_on.take(unique)
    }

    /// The process behind the calling thread, watched from now on.
    ///
    /// A process that exited is reaped when its pidfd fires, and the loop handles fired pidfds
    /// before the channel in every turn, so a new process given an exited one's pid starts
    /// clean without a probe of the pidfd per request (one system call of five). Left open: a
    /// process that exits, is reaped by its parent and has its pid handed to a new process
    /// while this loop drains one batch of requests (the kernel hands pids out in a cycle, so
    /// only root forcing `ns_last_pid` comes near).
    fn caller(&mut self, tid: u32, uid: u32, cx: &mut Context<'_>) -> Result<Pid, ()> {
        let gone = |gone: steve_core::server::processes::Gone| {
            if matches!(gone.0.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE)) {
                warn!(
                    tid,
                    "out of file descriptors: cannot watch the caller's process, so its request \
                     is answered EINTR (raise LimitNOFILE)"
                );
            } else {
                debug!(tid, "caller gone: {}", gone.0);
            }
        };
        let pid = cx.processes().resolve(tid, uid).map_err(gone)?;
        self.join_new_owners(cx);
        Ok(pid)
    }

    /// Gives the device each new process's build, and the builds that turned out to run under
    /// it (from the processes watched).
    fn join_new_owners(&mut self, cx: &mut Context<'_>) {
        for (member, owner) in cx.processes().take_owner_changes() {
            self.device.join(member, owner, cx.now());
            if self.device.is_tracing() {
                let joined = Record::new(Kind::Join).pid(member).build(Some(owner.build.0));
                let command = cx.processes().command(member);
                self.device.trace_note(cx.now(), joined.tokens(0).note(command));
            }
        }
    }

    /// Reclaims what an exited process held, and forgets it.
    fn reap(&mut self, pid: Pid, cx: &mut Context<'_>) {
        let departed = self.device.process_exited(pid, cx.now());
        // Its waiting reads are answered (EINTR) where they came from, a ring entry's to free
        // the entry, before what is left of them is forgotten.
        self.send_events(cx);
        self.waiting_on.forget_process(pid);
        let name = cx.processes().forget(pid).unwrap_or_else(|| "?".to_string());
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
        self.send_events(cx);
    }

    /// Writes the holdings that changed into the crash books: before the answers that make
    /// them true go out ([`Context::book_holding`]).
    fn book_holdings(&mut self, cx: &mut Context<'_>) {
        self.device.drain_holding_changes(|pid, tokens| cx.book_holding(pid, tokens));
    }

    /// Carries out what the device asked for, once the crash books say what it changed.
    fn send_events(&mut self, cx: &mut Context<'_>) {
        self.book_holdings(cx);
        for event in self.device.take_events() {
            let message = match event {
                Event::Wake { pid: COMPANION_PID, .. } => {
                    self.companion_woken = true;
                    continue;
                }
                Event::Answer { request, pid } => {
                    debug!(pid, request = request.0, "waiting read answered");
                    (self.route_of(request.0), ll::reply_data(request.0, TOKEN))
                }
                Event::Interrupted { request } => {
                    (self.route_of(request.0), ll::reply_error(request.0, nix::libc::EINTR))
                }
                // A notification answers no request: any channel takes it (never the ring).
                Event::Wake { handle, pid } => {
                    debug!(pid, "token reserved for a poller; waking it");
                    (Route::Channel(0), ll::notify_poll(handle.0))
                }
            };
            let (route, message) = message;
            self.send(route, &message);
        }
        if std::mem::take(&mut self.companion_woken) {
            self.companion_reserved(cx);
        }
    }

    /// The device reserved a token for the companion, queued as a poller: into the pipe if it
    /// still has no spare, else on to the next in the queue.
    fn companion_reserved(&mut self, cx: &mut Context<'_>) {
        let now = Instant::now();
        let wants = self.companion.as_ref().is_some_and(Companion::wants_token);
        if wants {
            self.feed_companion(now);
        } else if self.device.read(COMPANION_PID, RequestId(u64::MAX), true, now)
            == ReadOutcome::Token
        {
            let _ = self.device.write(COMPANION_PID, 1, now);
        }
        self.send_events(cx);
    }

    /// Sends `message` where its request came from: written on its channel, or put in its
    /// ring entry (submitted at once, or with the rest at the end of a batch).
    fn send(&mut self, route: Route, message: &[u8]) {
        let channel = match route {
            Route::Channel(channel) => channel,
            Route::Ring(n) => {
                let Some(ring) = self.ring.as_mut() else { return };
                if let Err(why) = ring.answer(n, message) {
                    warn!("could not answer the kernel: {why}");
                }
                if !self.ring_batch {
                    self.flush_ring();
                }
                return;
            }
            Route::Queue(queue, entry) => {
                if let Some(mailbox) = self.mailboxes.get(usize::from(queue)) {
                    mailbox.post(entry, message);
                }
                return;
            }
        };
        match nix::unistd::write(&self.channels[channel], message) {
            Ok(_) => {}
            // The request is gone (its caller was interrupted and gave up): nothing to answer.
            Err(Errno::ENOENT) => debug!("reply to a request the kernel dropped"),
            Err(errno) => warn!("could not answer the kernel: {errno}"),
        }
    }

    /// The builds holding or waiting, each named by its top-level client (the companion FIFO,
    /// a build of its own, by its path).
    fn build_reports(&self, cx: &mut Context<'_>) -> Vec<BuildReport> {
        self.device
            .builds()
            .into_iter()
            .map(|used| {
                let root = cx.processes().build_root(used.build);
                let (pid, command, cwd) = match (root, &self.companion) {
                    (Some(root), _) => (
                        root,
                        cx.processes().command(root),
                        std::fs::read_link(format!("/proc/{root}/cwd")).ok(),
                    ),
                    (None, Some(companion)) if used.build == COMPANION_BUILD => {
                        (0, format!("companion FIFO {}", companion.path().display()), None)
                    }
                    (None, _) => (0, "?".to_string(), None),
                };
                BuildReport {
                    build: used.build.0,
                    pid,
                    command,
                    cwd,
                    uid: used.user,
                    tokens: used.tokens,
                    waiting: used.waiting,
                    share: used.share,
                }
            })
            .collect()
    }

    /// The companion FIFO's part of a status report.
    fn companion_report(&self) -> Option<CompanionReport> {
        let companion = self.companion.as_ref()?;
        let openers = companion
            .openers()
            .into_iter()
            .map(|pid| HolderReport {
                pid,
                command: steve_core::server::processes::command_line(pid),
                tokens: None,
                held_seconds: None,
            })
            .collect();
        Some(CompanionReport {
            path: companion.path().to_path_buf(),
            tokens: self.device.held_by(COMPANION_PID),
            in_pipe: companion.relay().in_pipe(),
            waiting: self.device.waiters().iter().any(|waiter| waiter.pid == COMPANION_PID),
            recovered: companion.recovered(),
            openers,
        })
    }

    /// The channel behind event-loop source `source`, if it is one.
    fn channel_of(&self, source: SourceId) -> Option<usize> {
        let channel = source.0.checked_sub(FIRST_CHANNEL)? as usize;
        (channel < self.channels.len()).then_some(channel)
    }

    /// Where the answer to a threaded source's message goes: its channel, or its queue's ring
    /// entry.
    fn route_from(&self, source: SourceId) -> Option<Route> {
        if let Some((queue, entry)) = queues::entry_of(source) {
            return (usize::from(queue) < self.mailboxes.len())
                .then_some(Route::Queue(queue, entry));
        }
        self.channel_of(source).map(Route::Channel)
    }

    /// The device semantics, for tests.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Server for Session {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn sources(&self) -> Vec<(SourceId, BorrowedFd<'_>)> {
        let companion = self.companion.as_ref().map(|companion| (COMPANION, companion.watch()));
        let channels = self.channels.iter().enumerate().filter(|_| self.threads == 1);
        let channels = channels.map(|(n, channel)| (channel_source(n), channel.as_fd()));
        let ring = self.ring.as_ref().map(|ring| (RING, ring.as_fd()));
        channels.chain(ring).chain(companion).collect()
    }

    fn threaded_sources(&mut self) -> Result<Vec<ThreadedSource>, steve_core::server::Error> {
        if !self.queue_sources.is_empty() {
            let queues = std::mem::take(&mut self.queue_sources).into_iter();
            return Ok(queues.map(|queue| ThreadedSource::Queue(Box::new(queue))).collect());
        }
        if self.threads == 1 {
            return Ok(Vec::new());
        }
        // Every channel has its thread; threads beyond the channels (CUSE) share the first.
        let threads = self.threads.max(self.channels.len());
        let channel_of_thread = |n: usize| if n < self.channels.len() { n } else { 0 };
        let reader = |n: usize| {
            let cannot =
                |error| steve_core::server::Error::io("cannot set up a channel's reader", error);
            let fd = self.channels[n].try_clone().map_err(cannot)?;
            // Blocking, for its reader to sleep in: a duplicate shares the channel's flags,
            // and in this mode only readers read the channels (answers are writes, which never
            // wait).
            fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty()))
                .map_err(|errno| cannot(std::io::Error::from(errno)))?;
            Ok(ThreadedSource::Reads { id: channel_source(n), fd, message_len: BUFFER_LEN })
        };
        (0..threads).map(channel_of_thread).map(reader).collect()
    }

    fn message(
        &mut self,
        source: SourceId,
        message: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<Handled, steve_core::server::Error> {
        let Some(route) = self.route_from(source) else {
            return Ok(Handled { flow: Flow::Continue, answer: None });
        };
        let (flow, answer) = self.handle_leaving_answer(message, route, cx);
        self.send_events(cx);
        Ok(Handled { flow, answer })
    }

    fn answer(&mut self, source: SourceId, answer: &[u8]) {
        if let Some(route) = self.route_from(source) {
            self.send(route, answer);
        }
    }

    fn readable(
        &mut self,
        source: SourceId,
        cx: &mut Context<'_>,
    ) -> Result<Flow, steve_core::server::Error> {
        if source == COMPANION {
            self.settle_companion(cx);
            return Ok(Flow::Continue);
        }
        if source == RING {
            return Ok(self.read_ring(cx));
        }
        let Some(channel) = self.channel_of(source) else { return Ok(Flow::Continue) };
        Ok(self.read_requests(channel, cx)?)
    }

    fn process_exited(&mut self, pid: u32, cx: &mut Context<'_>) {
        self.reap(pid, cx);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let companion = self.companion_deadline();
        let ring = self.ring.as_ref().and_then(Ring::kick_due);
        self.device.next_deadline().into_iter().chain(companion).chain(ring).min()
    }

    fn deadline(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        if self.ring.as_ref().and_then(Ring::kick_due).is_some_and(|due| due <= now) {
            self.kick_ring(cx);
        }
        self.device.expire(now);
        if self.companion_deadline().is_some_and(|due| due <= now) {
            self.yield_companion_spare(now);
        }
        self.feed_companion(now);
        self.send_events(cx);
    }

    fn jobs(&self) -> JobCount {
        JobCount::new(self.device.counts().target).expect("the pool's target is a job count")
    }

    fn set_tracing(&mut self, on: bool, now: Instant) {
        self.device.set_tracing(on, now);
    }

    fn drain_trace(&mut self, into: &mut Vec<(Instant, Record)>) {
        self.device.drain_trace(into);
    }

    fn counts_holders(&self) -> bool {
        true
    }

    fn take_holding_changes(&mut self) -> Vec<(u32, usize)> {
        self.device.take_holding_changes()
    }

    fn adopt_survivor(&mut self, pid: u32, tokens: usize, cx: &mut Context<'_>) -> usize {
        self.join_new_owners(cx);
        self.device.adopt_holding(pid, tokens, cx.now())
    }

    fn export(&self) -> Result<Export<'_>, String> {
        if self.ring.is_some() || !self.mailboxes.is_empty() {
            // Its entries point into this process's memory, which a successor does not have.
            return Err("this server takes requests through io_uring, whose ring entries a \
                        successor cannot take over: restart it without a handover"
                .to_string());
        }
        let (companion, companion_fds) = match &self.companion {
            Some(companion) => {
                let (state, fds) = companion.export();
                (state, fds)
            }
            None => (serde_json::Value::Null, Vec::new()),
        };
        let endpoint = &self.endpoint;
        let mut unknown: Vec<u32> = self.unknown_opcodes.iter().copied().collect();
        unknown.sort_unstable();
        let state = serde_json::json!({
            "device": &self.device,
            "filesystem": &self.filesystem,
            "next_fh": self.next_fh,
            "unknown_opcodes": unknown,
            "waiting_on": self.waiting_on.iter().filter_map(|(unique, route, pid)| match route {
                Route::Channel(channel) => Some((unique, channel, pid)),
                Route::Ring(_) | Route::Queue(..) => None,
            }).collect::<Vec<_>>(),
            "endpoint": {
                "path": &endpoint.path,
                "default_control": &endpoint.default_control,
                "mode": endpoint.mode,
                "gid": endpoint.gid.map(|gid| gid.as_raw()),
                "how": &endpoint.how,
                "directories": &endpoint.directories,
            },
            "mountpoint": self.mounted.as_ref().map(Mounted::mountpoint),
            "companion": companion,
        });
        let mut descriptors: Vec<_> = (self.channels.iter().enumerate())
            .map(|(n, channel)| (clone_name(n), channel.as_fd()))
            .collect();
        if let Some(directory) = self.mounted.as_ref().and_then(Mounted::directory) {
            descriptors.push((MOUNT_DIRECTORY_NAME.to_string(), directory));
        }
        descriptors.extend(companion_fds);
        Ok(Export { state, descriptors })
    }

    fn change(&mut self, change: PoolChange, cx: &mut Context<'_>) {
        let now = cx.now();
        match change {
            PoolChange::Jobs(jobs) => self.device.set_jobs(jobs, now),
            PoolChange::Allowance(allowance) => self.device.set_allowance(allowance, now),
            PoolChange::PerProcessLimit(limit) => self.device.set_per_process_limit(limit, now),
            PoolChange::Shares(shares) => self.device.set_shares(shares, now),
        }
        // A spare nobody has taken goes back at once to a pool that shrank or holds tokens back.
        let counts = self.device.counts();
        if counts.owed() > 0 || counts.withheld > 0 {
            self.yield_companion_spare(now);
        }
        self.feed_companion(now);
        self.send_events(cx);
    }

    fn report(&mut self, cx: &mut Context<'_>) -> BackendReport {
        let now = cx.now();
        let counts = self.device.counts();
        let counters = self.device.counters();
        let holders = self
            .device
            .holders()
            .into_iter()
            .filter(|holder| holder.pid != COMPANION_PID)
            .map(|holder| HolderReport {
                pid: holder.pid,
                command: cx.processes().command(holder.pid),
                tokens: Some(holder.tokens),
                held_seconds: Some(now.saturating_duration_since(holder.since).as_secs_f64()),
            })
            .collect();
        let waiters = self
            .device
            .waiters()
            .into_iter()
            .filter(|waiter| waiter.pid != COMPANION_PID)
            .map(|waiter| WaiterReport {
                pid: waiter.pid,
                command: cx.processes().command(waiter.pid),
                kind: match waiter.kind {
                    WaitKind::Blocking => "blocking".to_string(),
                    WaitKind::Polling => "polling".to_string(),
                },
                waiting_seconds: now.saturating_duration_since(waiter.since).as_secs_f64(),
            })
            .collect();
        BackendReport {
            pool: PoolReport {
                jobs: counts.target,
                size: counts.size,
                free: counts.free,
                held: counts.held,
                withheld: counts.withheld,
                lent: counts.lent,
            },
            holders_exact: true,
            holders,
            waiters: Some(waiters),
            builds: Some(self.build_reports(cx)),
            companion: self.companion_report(),
            counters: CounterReport {
                grants: Some(counters.grants),
                returns: Some(counters.returns),
                reclaimed: counters.reclaimed,
                enospc: Some(counters.refused),
                grace_returns: Some(counters.grace_returns),
                interrupts: Some(counters.interrupts),
                expired_reservations: Some(counters.expired_reservations),
                wait_seconds: Some((&counters.waits).into()),
            },
        }
    }
}

/// Whether the loop's thread reads the channel again after a request, before it goes back to
/// the epoll. With requests queueing (many clients) the next read mostly finds one and saves a
/// turn of the loop; with one client at a time it never does (its next request comes after
/// the answer), and the read that finds nothing is a system call per request. So after
/// [`ReadAhead::GIVE_UP_AFTER`] reads ahead in a row found nothing the thread stops reading on
/// (the channel is watched level-triggered: the epoll reports it again at once if more are
/// waiting) and tries again every [`ReadAhead::PROBE_EVERY`] requests. One miss alone (a
/// queue that ran dry at the end of a batch) changes nothing.
#[derive(Debug, Default)]
struct ReadAhead {
    /// Reads ahead in a row that found nothing.
    misses: u32,
    /// Requests since the last read ahead, while reading on does not pay.
    since_try: u32,
}

impl ReadAhead {
    /// Reads ahead in a row that find nothing before the thread stops reading on.
    const GIVE_UP_AFTER: u32 = 2;
    /// How many requests go by between tries while reading on does not pay.
    const PROBE_EVERY: u32 = 8;

    /// After a request: whether to read the channel again now.
    fn worth_trying(&mut self) -> bool {
        if self.misses < ReadAhead::GIVE_UP_AFTER {
            return true;
        }
        self.since_try += 1;
        if self.since_try < ReadAhead::PROBE_EVERY {
            return false;
        }
        self.since_try = 0;
        true
    }

    /// What a read ahead found.
    fn found(&mut self, request: bool) {
        self.misses = if request { 0 } else { self.misses.saturating_add(1) };
        self.since_try = 0;
    }
}

/// Requests the kernel sent an INTERRUPT for before this session handled them: with several
/// serving threads (or a ring beside the channel) the interrupt may be handled first. The most
/// recent [`EarlyInterrupts::KEPT`] are kept: the others were for requests answered already
/// (the kernel sends one for a request whose answer crossed it).
#[derive(Debug, Default)]
struct EarlyInterrupts {
    targets: HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl EarlyInterrupts {
    const KEPT: usize = 256;

    fn remember(&mut self, target: u64) {
        if self.targets.insert(target) {
            self.order.push_back(target);
        }
        while self.order.len() > Self::KEPT {
            let oldest = self.order.pop_front().expect("longer than KEPT");
            self.targets.remove(&oldest);
        }
    }

    /// Whether request `unique` was interrupted before it came; forgotten then.
    fn take(&mut self, unique: u64) -> bool {
        if self.targets.is_empty() || !self.targets.remove(&unique) {
            return false;
        }
        self.order.retain(|target| *target != unique);
        true
    }
}

/// The event loop's source for channel `n`.
fn channel_source(n: usize) -> SourceId {
    SourceId(FIRST_CHANNEL + n as u32)
}

/// Channel `n`'s name in a handover: the first is `channel`, its clones `channel.N`.
fn clone_name(n: usize) -> String {
    match n {
        0 => CHANNEL_NAME.to_string(),
        n => format!("{CHANNEL_NAME}.{n}"),
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

#[cfg(test)]
mod tests {
    use super::{EarlyInterrupts, ReadAhead};

    /// Drives `ahead` through `requests` requests, each read ahead finding one as `finds` says;
    /// which of them were followed by a read ahead.
    fn reads_ahead(
        ahead: &mut ReadAhead,
        requests: usize,
        finds: impl Fn(usize) -> bool,
    ) -> Vec<bool> {
        (0..requests)
            .map(|n| {
                let tried = ahead.worth_trying();
                if tried {
                    ahead.found(finds(n));
                }
                tried
            })
            .collect()
    }

    #[test]
    fn one_client_at_a_time_stops_the_reads_ahead_but_for_a_probe() {
        let mut ahead = ReadAhead::default();
        // Nothing is ever waiting after a request: two misses, then one try in eight.
        let tried = reads_ahead(&mut ahead, 2 + 3 * 8, |_| false);
        assert_eq!(&tried[..2], &[true, true]);
        let probes: Vec<usize> = (2..tried.len()).filter(|&n| tried[n]).collect();
        assert_eq!(probes, vec![9, 17, 25], "every eighth request after giving up");
        // A probe that finds a request turns reading on back on.
        ahead.found(true);
        assert!(reads_ahead(&mut ahead, 20, |_| true).iter().all(|tried| *tried));
    }

    #[test]
    fn queues_that_run_dry_between_batches_keep_reading_ahead() {
        let mut ahead = ReadAhead::default();
        // Batches of three: two reads ahead find one, the third finds the queue empty.
        let tried = reads_ahead(&mut ahead, 60, |n| n % 3 != 2);
        assert!(tried.iter().all(|tried| *tried), "{tried:?}");
    }

    #[test]
    fn an_early_interrupt_is_taken_once_by_its_request() {
        let mut early = EarlyInterrupts::default();
        assert!(!early.take(7), "nothing was interrupted yet");
        early.remember(7);
        early.remember(9);
        assert!(!early.take(8), "8 was not interrupted");
        assert!(early.take(7));
        assert!(!early.take(7), "taken once");
        assert!(early.take(9));
    }

    #[test]
    fn only_the_latest_early_interrupts_are_kept() {
        let mut early = EarlyInterrupts::default();
        let kept = EarlyInterrupts::KEPT as u64;
        for target in 0..kept + 10 {
            early.remember(target);
        }
        assert!(!early.take(0), "the oldest are forgotten");
        assert!(!early.take(9));
        assert!(early.take(10), "the latest KEPT stay");
        assert!(early.take(kept + 9));
        assert_eq!(early.targets.len(), early.order.len());
    }
}
