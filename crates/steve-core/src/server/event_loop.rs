//! The one event loop every server runs in: one epoll over the signalfd, the control socket and
//! its connections, a pidfd per client process, and the backend's own descriptors, with the
//! earliest deadline (a poller's reservation, a limit recheck, a control connection's time) as
//! the timeout. It is the only place a server blocks, and its cost per event does not grow with
//! the number of client processes.
//!
//! Why epoll from nix rather than mio: every descriptor here is Linux-only (signalfd, pidfd,
//! inotify, CUSE), so mio's portability buys nothing, and nix's thin `Epoll` keeps the
//! level-triggered semantics the backends are written for (read until `EAGAIN`, or leave the
//! rest for the next wake-up) without a second token and registry model beside our own.
//!
//! The loop owns what every server shares: the governor (limits and the system probe), the
//! control plane's answers (`status`, `get`, `set`), the status report's common part, and the
//! client processes' pidfds. The backend owns its pool and its transport.
//!
//! A server may also have sources served by threads of their own ([`threads`]); every event is
//! still handled one at a time, under one lock, by the code below.
#![forbid(unsafe_code)]

mod threads;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use super::backend::{Backend, Context, Flow, PoolChange, ServeOption, Server, SourceId};
use super::control::{
    may_change, ConnectionId, ControlServer, Incoming, Outgoing, Request, Response,
};
use super::holder_book::{HolderBook, Survivor};
use super::metrics_listener::{Asked, MetricsServer};
use super::processes::Processes;
use super::signals::{SignalEvent, Signals};
use super::trace_log::{Clocks, TraceLog};
use super::Error;
use crate::accounting::limits::{Governor, Limits, Settings, SystemProbe};
use crate::accounting::pressure::Resource;
use crate::accounting::shares::Shares;
use crate::metrics;
use crate::status::{ReportHeader, StatusReport};
use crate::trace::{Kind, Record};

/// Why a server stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A stop signal arrived (SIGINT, SIGTERM, SIGHUP).
    Stopped(Signal),
    /// The backend's transport ended, for this reason.
    Transport(String),
    /// A successor took the server over (`steve serve --takeover`, pid `to`): it has the
    /// kernel connection, the sockets and the books, so nothing may be torn down.
    HandedOver {
        /// The successor's pid.
        to: u32,
    },
    /// Stopped for a restart, with everything in the service manager's store for the next
    /// start ([`super::fd_store`]): nothing may be torn down.
    StoredForRestart,
}

/// What an epoll event is about: the top byte of its data says the kind, the rest the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// Handled first, so a new process reusing an exited one's pid starts with clean books.
    Exited(u32),
    Signals,
    Listener,
    Connection(u32),
    Source(u32),
    /// A PSI trigger, by the resource's place in [`Resource::ALL`].
    Pressure(u32),
    /// A metrics listener, by its place, and one of its connections.
    MetricsListener(u32),
    MetricsConnection(u32),
    /// A serving thread has news for the loop's thread ([`threads`]).
    Wake,
}

impl Key {
    fn encode(self) -> u64 {
        let (kind, id) = match self {
            Key::Exited(pid) => (0u64, pid),
            Key::Signals => (1, 0),
            Key::Listener => (2, 0),
            Key::Connection(id) => (3, id),
            Key::Source(id) => (4, id),
            Key::Pressure(index) => (5, index),
            Key::MetricsListener(index) => (6, index),
            Key::MetricsConnection(id) => (7, id),
            Key::Wake => (8, 0),
        };
        kind << 56 | u64::from(id)
    }

    fn decode(data: u64) -> Option<Key> {
        let id = (data & 0xffff_ffff) as u32;
        Some(match data >> 56 {
            0 => Key::Exited(id),
            1 => Key::Signals,
            2 => Key::Listener,
            3 => Key::Connection(id),
            4 => Key::Source(id),
            5 => Key::Pressure(id),
            6 => Key::MetricsListener(id),
            7 => Key::MetricsConnection(id),
            8 => Key::Wake,
            _ => return None,
        })
    }
}

/// The control socket's listener, by name in a handover.
pub const CONTROL_LISTENER: &str = "control";
/// A metrics listener, by name in a handover (its place in `--metrics-listen` follows).
pub const METRICS_LISTENER: &str = "metrics:";

/// Events taken from the kernel per wait.
const BATCH: usize = 64;
/// How long the control socket is left alone when the process is out of descriptors.
const LISTENER_PAUSE: Duration = Duration::from_secs(1);

/// The event loop: set it up with [`EventLoop::new`], add signals and a control socket, and
/// [`EventLoop::run`] a server in it.
pub struct EventLoop {
    /// Shared with the loop's thread, which waits on it without the lock when other threads
    /// serve too ([`threads`]).
    epoll: Arc<Epoll>,
    backend: &'static Backend,
    signals: Option<Signals>,
    control: Option<ControlServer>,
    governor: Governor,
    /// The allowance last given to the server.
    allowance: Option<usize>,
    processes: Processes,
    started: Instant,
    owner_uid: u32,
    /// Whether the server's descriptors are watched and its limits applied.
    primed: bool,
    /// Until when the control listener is out of the epoll (out of descriptors).
    listener_paused_until: Option<Instant>,
    /// Where the pool size came from: `-j`, the CPUs the server may use, or `steve set`.
    jobs_from: String,
    /// The event trace.
    trace: TraceLog,
    /// The server's records as they are taken, kept for its room.
    trace_taken: Vec<(Instant, Record)>,
    /// A turn's events in the order they are handled, kept for its room (a turn per request
    /// under light load: no allocation each).
    turn_keys: Vec<(Key, EpollFlags)>,
    /// The metrics listeners, if any.
    metrics: MetricsServer,
    /// The service manager's store, where a restart leaves the server (`--fd-store`).
    fd_store: Option<super::fd_store::FdStore>,
    /// Who holds how many tokens, for a server started after this one dies.
    holder_book: Option<HolderBook>,
    /// The serving threads, while they run ([`threads`]).
    readers: Option<Arc<threads::Readers>>,
}

impl EventLoop {
    /// A loop for a server of `backend`, applying `limits` with readings from `probe`. Without
    /// signals (tests) it runs until the backend's transport ends.
    pub fn new(
        backend: &'static Backend,
        limits: Limits,
        probe: Box<dyn SystemProbe>,
    ) -> Result<EventLoop, Error> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|errno| Error::io("cannot create the event loop's epoll", errno.into()))?;
        // A pipe cannot tell its readers apart: it serves them FIFO, whatever the default.
        let mut limits = limits;
        if !backend.takes(ServeOption::Fairness) {
            limits.shares = Shares::fifo();
        }
        Ok(EventLoop {
            epoll: Arc::new(epoll),
            backend,
            signals: None,
            control: None,
            governor: Governor::new(limits, probe),
            allowance: None,
            processes: Processes::default(),
            started: Instant::now(),
            owner_uid: nix::unistd::geteuid().as_raw(),
            primed: false,
            listener_paused_until: None,
            jobs_from: "-j".to_string(),
            trace: TraceLog::off(),
            trace_taken: Vec::new(),
            turn_keys: Vec::with_capacity(BATCH),
            metrics: MetricsServer::default(),
            fd_store: None,
            holder_book: None,
            readers: None,
        })
    }

    /// Says where the pool size came from, for the status report (`-j` unless told).
    pub fn with_jobs_from(mut self, from: &str) -> EventLoop {
        self.jobs_from = from.to_string();
        self
    }

    /// Keeps the event trace in `trace` (none unless given).
    pub fn with_trace(mut self, trace: TraceLog) -> EventLoop {
        self.trace = trace;
        self
    }

    /// Serves metrics on `metrics`'s listeners.
    pub fn with_metrics(mut self, metrics: MetricsServer) -> EventLoop {
        self.metrics = metrics;
        self
    }

    /// Leaves the server in the service manager's store when a SIGTERM comes for a restart.
    pub fn with_fd_store(mut self, store: Option<super::fd_store::FdStore>) -> EventLoop {
        self.fd_store = store;
        self
    }

    /// Keeps the crash books in `book` ([`super::holder_book`]), for a server that counts its
    /// holders.
    pub fn with_holder_book(mut self, book: Option<HolderBook>) -> EventLoop {
        self.holder_book = book;
        self
    }

    /// Counts the tokens a dead server's clients still hold as held until they exit: each
    /// survivor still running (same pid, same start time) is watched and its tokens booked
    /// to it. Before [`EventLoop::prime`].
    pub fn adopt_survivors(&mut self, server: &mut dyn Server, survivors: &[Survivor]) {
        let now = Instant::now();
        let (mut counted, mut processes) = (0, 0);
        for survivor in survivors {
            if !self.processes.watch_survivor(survivor.pid, survivor.started) {
                debug!(pid = survivor.pid, "a holder of the last server's tokens is gone");
                continue;
            }
            let mut cx = self.context(now);
            let booked = server.adopt_survivor(survivor.pid, survivor.tokens, &mut cx);
            info!(
                pid = survivor.pid,
                tokens = booked,
                "pid {} still holds {booked} token(s) from the server before, counted until it \
                 exits or returns them",
                survivor.pid
            );
            counted += booked;
            processes += 1;
        }
        if processes > 0 {
            info!(
                "{counted} token(s) of the server before are still out, in {processes} process(es)"
            );
        }
    }

    /// What a server is lent while it handles an event at `now`.
    fn context(&mut self, now: Instant) -> Context<'_> {
        Context { processes: &mut self.processes, book: self.holder_book.as_mut(), now }
    }

    /// Writes the holdings that changed this turn and were not booked as they changed into the
    /// crash books.
    fn record_holdings(&mut self, server: &mut dyn Server, now: Instant) {
        if self.holder_book.is_none() {
            return;
        }
        let mut cx = self.context(now);
        for (pid, tokens) in server.take_holding_changes() {
            cx.book_holding(pid, tokens);
        }
    }

    /// Stops on SIGINT, SIGTERM and SIGHUP, and logs the status on SIGUSR1.
    pub fn with_signals(mut self, signals: Signals) -> EventLoop {
        self.signals = Some(signals);
        self
    }

    /// Answers `status`, `get` and `set` on `control`.
    pub fn with_control(mut self, control: ControlServer) -> EventLoop {
        self.control = Some(control);
        self
    }

    /// Watches the server's descriptors and applies the limits to its pool: what must be done
    /// before clients are told where it is. [`EventLoop::run`] does it if it was not done.
    pub fn prime(&mut self, server: &mut dyn Server) -> Result<(), Error> {
        if !self.primed {
            self.register_all(server)?;
            let now = Instant::now();
            if self.trace.is_on() {
                server.set_tracing(true, now);
            }
            let limit = self.governor.limits().per_process_limit;
            if limit.is_some() && self.backend.takes(ServeOption::PerProcessLimit) {
                server.change(PoolChange::PerProcessLimit(limit), &mut self.context(now));
            }
            if self.backend.takes(ServeOption::Fairness) {
                let shares = self.governor.limits().shares.clone();
                server.change(PoolChange::Shares(shares), &mut self.context(now));
            }
            self.recheck_limits(server, now, true);
            self.collect_trace(server);
            self.record_holdings(server, now);
            self.primed = true;
        }
        Ok(())
    }

    /// Serves until a stop signal or the end of the server's transport: in this thread alone,
    /// or with a thread for each of the server's threaded sources ([`threads`]).
    pub fn run(&mut self, server: &mut dyn Server) -> Result<Ended, Error> {
        self.prime(server)?;
        // Survivors adopted before; every turn registers what it added.
        self.register_new_processes()?;
        let threaded = server.threaded_sources()?;
        if !threaded.is_empty() {
            return threads::run(self, server, threaded);
        }
        let mut events = [EpollEvent::empty(); BATCH];
        loop {
            let ready = wait(&self.epoll, &mut events, self.timeout(server))?;
            if let Some(ended) = self.turn(server, &events[..ready])? {
                return Ok(ended);
            }
        }
    }

    /// Handles what the epoll reported, then whatever deadline passed, then books what changed.
    fn turn(
        &mut self,
        server: &mut dyn Server,
        events: &[EpollEvent],
    ) -> Result<Option<Ended>, Error> {
        let mut keys = std::mem::take(&mut self.turn_keys);
        keys.clear();
        keys.extend(
            events.iter().filter_map(|event| Some((Key::decode(event.data())?, event.events()))),
        );
        keys.sort_by_key(|(key, _)| *key);
        let now = Instant::now();
        for &(key, flags) in &keys {
            if let Some(ended) = self.dispatch(server, key, flags, now)? {
                return Ok(Some(ended));
            }
        }
        self.turn_keys = keys;
        let now = Instant::now();
        self.due(server, now);
        self.finish_turn(server, now)?;
        Ok(None)
    }

    /// What every turn ends with, on whichever thread: new processes watched, the trace
    /// collected, and the holdings not yet booked written to the crash books.
    fn finish_turn(&mut self, server: &mut dyn Server, now: Instant) -> Result<(), Error> {
        self.collect_trace(server);
        self.record_holdings(server, now);
        self.register_new_processes()
    }

    /// Stamps and keeps what the server recorded, and writes out the trace file's buffer.
    fn collect_trace(&mut self, server: &mut dyn Server) {
        if self.trace.is_on() {
            let mut taken = std::mem::take(&mut self.trace_taken);
            server.drain_trace(&mut taken);
            for (at, record) in taken.drain(..) {
                self.trace.record(at, record);
            }
            self.trace_taken = taken;
            self.trace.flush();
        }
    }

    fn register_all(&mut self, server: &mut dyn Server) -> Result<(), Error> {
        let watch = |epoll: &Epoll, fd, key: Key| {
            epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, key.encode()))
                .map_err(|errno| Error::io("cannot watch a descriptor", errno.into()))
        };
        if let Some(signals) = &self.signals {
            watch(&self.epoll, signals.as_fd(), Key::Signals)?;
        }
        if let Some(control) = &self.control {
            watch(&self.epoll, control.listener(), Key::Listener)?;
        }
        for (SourceId(id), fd) in server.sources() {
            watch(&self.epoll, fd, Key::Source(id))?;
        }
        for (index, fd, address) in self.metrics.listeners() {
            watch(&self.epoll, fd, Key::MetricsListener(index as u32))?;
            info!("metrics served on {address}");
        }
        self.watch_triggers();
        Ok(())
    }

    /// Adds the governor's PSI triggers to the epoll (after a change of the pressure limits;
    /// the ones replaced left it as they were closed) and logs what it could not watch.
    fn watch_triggers(&mut self) {
        for note in self.governor.take_notes() {
            warn!("{note}");
        }
        for (resource, fd) in self.governor.triggers() {
            let index = Resource::ALL.iter().position(|r| *r == resource).unwrap_or(0) as u32;
            let event = EpollEvent::new(EpollFlags::EPOLLPRI, Key::Pressure(index).encode());
            match self.epoll.add(fd, event) {
                Ok(()) => debug!("{resource} pressure watched with a PSI trigger"),
                // Already in the epoll: the limits changed, not this trigger.
                Err(Errno::EEXIST) => {}
                Err(errno) => warn!("cannot watch the {resource} pressure trigger: {errno}"),
            }
        }
    }

    /// Adds the pidfds of processes the server started watching to the epoll. One that cannot be
    /// added (the user's epoll watches used up) costs that process its reclaim at exit, not the
    /// server its life: its tokens come back when its pid next makes a request, or never.
    fn register_new_processes(&mut self) -> Result<(), Error> {
        for (pid, pidfd) in self.processes.take_unregistered() {
            let event = EpollEvent::new(EpollFlags::EPOLLIN, Key::Exited(pid).encode());
            if let Err(errno) = self.epoll.add(pidfd, event) {
                warn!(pid, "cannot watch the process for its exit: {errno}");
            }
        }
        Ok(())
    }

    fn timeout(&self, server: &dyn Server) -> EpollTimeout {
        timeout_until(self.next_deadline(server))
    }

    /// The earliest deadline of the server, the limits, the control and metrics connections.
    fn next_deadline(&self, server: &dyn Server) -> Option<Instant> {
        [
            server.next_deadline(),
            self.governor.next_recheck(),
            self.control.as_ref().and_then(ControlServer::next_deadline),
            self.metrics.next_deadline(),
            self.listener_paused_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn dispatch(
        &mut self,
        server: &mut dyn Server,
        key: Key,
        flags: EpollFlags,
        now: Instant,
    ) -> Result<Option<Ended>, Error> {
        match key {
            Key::Exited(pid) => {
                // The server may have reaped it already (a request from it came first), and a
                // new process may have its pid and a new pidfd: only a fired pidfd counts.
                if self.processes.has_exited(pid) {
                    server.process_exited(pid, &mut self.context(now));
                    self.processes.forget(pid);
                }
            }
            Key::Signals => return self.take_signals(server),
            Key::Listener => self.accept(now)?,
            Key::Connection(id) => {
                if let Some(ended) = self.converse(server, ConnectionId(id), flags, now)? {
                    return Ok(Some(ended));
                }
            }
            Key::Source(id) => {
                let mut cx = self.context(now);
                if let Flow::Ended(why) = server.readable(SourceId(id), &mut cx)? {
                    return Ok(Some(Ended::Transport(why)));
                }
            }
            Key::MetricsListener(index) => {
                for id in self.metrics.accept(index as usize, now) {
                    let watched = self.metrics.connection(id).map(|fd| {
                        let event = EpollEvent::new(
                            EpollFlags::EPOLLIN,
                            Key::MetricsConnection(id).encode(),
                        );
                        self.epoll.add(fd, event)
                    });
                    if let Some(Err(errno)) = watched {
                        warn!("cannot watch a metrics connection: {errno}");
                        self.metrics.close(id);
                    }
                }
            }
            Key::MetricsConnection(id) => self.serve_metrics(server, id, flags, now),
            // The loop's thread reads the news before the turn ([`threads`]).
            Key::Wake => {}
            Key::Pressure(index) => {
                if let Some(resource) = Resource::ALL.get(index as usize) {
                    debug!("the kernel says {resource} pressure crossed its high mark");
                    self.governor.trigger_fired(*resource);
                    self.recheck_limits(server, now, false);
                }
            }
        }
        Ok(None)
    }

    fn take_signals(&mut self, server: &mut dyn Server) -> Result<Option<Ended>, Error> {
        loop {
            let Some(signals) = self.signals.as_mut() else { return Ok(None) };
            let received = signals
                .read_pending()
                .map_err(|errno| Error::io("cannot read signals", errno.into()))?;
            match received.map(|received| received.event) {
                None => return Ok(None),
                Some(SignalEvent::Stop(Signal::SIGTERM)) if self.restarting() => {
                    match self.store_for_restart(server) {
                        Ok(()) => return Ok(Some(Ended::StoredForRestart)),
                        Err(why) => warn!("cannot leave the server for its restart: {why}"),
                    }
                    return Ok(Some(Ended::Stopped(Signal::SIGTERM)));
                }
                Some(SignalEvent::Stop(signal)) => return Ok(Some(Ended::Stopped(signal))),
                Some(SignalEvent::Report) => info!("status:\n{}", self.report(server)),
                Some(SignalEvent::Child) => {}
            }
        }
    }

    fn accept(&mut self, now: Instant) -> Result<(), Error> {
        let Some(control) = self.control.as_mut() else { return Ok(()) };
        let accepted = control.accept(now);
        for uid in accepted.refused {
            debug!(uid, "control connection refused: too many open from this user");
        }
        if accepted.out_of_descriptors {
            // Level-triggered: the listener stays readable, and accepting now would fail again
            // and spin. It is watched again after a pause.
            let _ = self.epoll.delete(control.listener());
            self.listener_paused_until = Some(now + LISTENER_PAUSE);
            warn!(
                "out of file descriptors: control connections wait {LISTENER_PAUSE:?}; {} \
                 client processes and {} control connections are open (raise LimitNOFILE)",
                self.processes.len(),
                control.len()
            );
        }
        for id in accepted.connections {
            let watched = control.connection(id).map(|fd| {
                let event = EpollEvent::new(EpollFlags::EPOLLIN, Key::Connection(id.0).encode());
                self.epoll.add(fd, event)
            });
            if let Some(Err(errno)) = watched {
                warn!("cannot watch a control connection: {errno}");
                control.close(id);
            }
        }
        Ok(())
    }

    /// A control connection is ready: read its request and answer, or write more of the answer.
    fn converse(
        &mut self,
        server: &mut dyn Server,
        id: ConnectionId,
        flags: EpollFlags,
        now: Instant,
    ) -> Result<Option<Ended>, Error> {
        let Some(control) = self.control.as_mut() else { return Ok(None) };
        // Once an answer is on its way, any event (writable, or the client hanging up) is for
        // the answer: the request is not read, nor answered, again.
        if flags.contains(EpollFlags::EPOLLOUT) || control.is_answering(id) {
            control.write(id);
            return Ok(None);
        }
        let Incoming::Request(request, peer) = control.read(id) else { return Ok(None) };
        if matches!(request, Ok(Request::Handover)) {
            return Ok(self.hand_over(server, id, peer));
        }
        let response = match request {
            Ok(request) => self.answer(server, request, peer, now),
            Err(message) => Response::Error { message },
        };
        let Some(control) = self.control.as_mut() else { return Ok(None) };
        if control.respond(id, &response, now) == Outgoing::Pending {
            if let Some(fd) = control.connection(id) {
                // The rest goes out as the client reads; nothing more is read from it.
                let mut event =
                    EpollEvent::new(EpollFlags::EPOLLOUT, Key::Connection(id.0).encode());
                if let Err(errno) = self.epoll.modify(fd, &mut event) {
                    warn!("cannot watch a control connection: {errno}");
                    control.close(id);
                }
            }
        }
        Ok(None)
    }

    /// Hands the server over to the peer on connection `id` ([`crate::handover`]); whether it
    /// took it. Everything else waits meanwhile: the kernel keeps the clients' requests.
    fn hand_over(
        &mut self,
        server: &mut dyn Server,
        id: ConnectionId,
        peer: super::control::Peer,
    ) -> Option<Ended> {
        let now = Instant::now();
        if let Err(message) = may_change(peer, self.owner_uid) {
            return self.refuse_handover(id, peer, message, now);
        }
        // No serving thread may take a request the successor would not know of; they read on
        // unless the successor took the server.
        self.quiesce_readers(server);
        let ended = self.hand_over_still(server, id, peer, now);
        if ended.is_none() {
            self.resume_readers();
        }
        ended
    }

    /// The handover itself, with the serving threads still.
    fn hand_over_still(
        &mut self,
        server: &mut dyn Server,
        id: ConnectionId,
        peer: super::control::Peer,
        now: Instant,
    ) -> Option<Ended> {
        let export = match server.export() {
            Ok(export) => export,
            Err(message) => return self.refuse_handover(id, peer, message, now),
        };
        let control = self.control.as_mut()?;
        let mut stream = control.take_stream(id)?;
        let _ = self.epoll.delete(stream.as_fd());
        info!("handing over to pid {} (uid {})", peer.pid, peer.uid);
        let (state, fds) = self.handover_state(export, now)?;
        let sent = crate::handover::send(&mut stream, &state, &fds);
        let answer = sent.and_then(|()| {
            let mut answer = [0u8; crate::handover::TAKEN.len()];
            stream.set_read_timeout(Some(crate::handover::ANSWER_TIMEOUT))?;
            std::io::Read::read_exact(&mut stream, &mut answer)?;
            Ok(answer)
        });
        match answer {
            Ok(answer) if answer == crate::handover::TAKEN => {
                info!("pid {} took the server over: stopping without tearing down", peer.pid);
                Some(Ended::HandedOver { to: u32::try_from(peer.pid).unwrap_or(0) })
            }
            Ok(answer) => {
                warn!(
                    "the successor (pid {}) answered {:?}: serving on",
                    peer.pid,
                    String::from_utf8_lossy(&answer)
                );
                None
            }
            Err(error) => {
                warn!("the successor (pid {}) did not take over ({error}): serving on", peer.pid);
                None
            }
        }
    }

    /// Answers a handover request with why it is refused.
    fn refuse_handover(
        &mut self,
        id: ConnectionId,
        peer: super::control::Peer,
        message: String,
        now: Instant,
    ) -> Option<Ended> {
        warn!("handover to pid {} refused: {message}", peer.pid);
        if let Some(control) = self.control.as_mut() {
            control.respond(id, &Response::Error { message }, now);
        }
        None
    }

    /// The whole handover: the loop's part and the server's `export`, and every descriptor
    /// they name, in the order the state lists them.
    fn handover_state<'a>(
        &'a self,
        export: super::backend::Export<'a>,
        now: Instant,
    ) -> Option<(crate::handover::State, Vec<std::os::fd::BorrowedFd<'a>>)> {
        let control = self.control.as_ref()?;
        let (processes, process_fds) = self.processes.export();
        let event_loop_state = serde_json::json!({
            "limits": self.governor.limits(),
            "jobs_from": self.jobs_from,
            "started_ago_ns": now.duration_since(self.started).as_nanos() as u64,
            "control": control.path(),
            "processes": processes,
        });
        let mut named: Vec<(String, std::os::fd::BorrowedFd<'_>)> =
            vec![(CONTROL_LISTENER.to_string(), control.listener())];
        for (index, fd, _) in self.metrics.listeners() {
            named.push((format!("{METRICS_LISTENER}{index}"), fd));
        }
        named.extend(process_fds);
        named.extend(export.descriptors);
        let state = crate::handover::State {
            version: crate::handover::VERSION,
            backend: self.backend.name.to_string(),
            descriptors: named.iter().map(|(name, _)| name.clone()).collect(),
            event_loop: event_loop_state,
            server: export.state,
        };
        Some((state, named.into_iter().map(|(_, fd)| fd).collect()))
    }

    /// Whether a SIGTERM now is the stop half of a restart the service manager will hold the
    /// server through.
    fn restarting(&self) -> bool {
        self.fd_store.as_ref().is_some_and(super::fd_store::FdStore::restart_pending)
    }

    /// Leaves the whole handover in the service manager's store for the next start.
    fn store_for_restart(&mut self, server: &mut dyn Server) -> Result<(), String> {
        self.quiesce_readers(server);
        self.collect_trace(server);
        let export = server.export()?;
        let (state, fds) =
            self.handover_state(export, Instant::now()).ok_or("no control socket")?;
        let store = self.fd_store.as_ref().ok_or("no store")?;
        store.store(&state, &fds).map_err(|error| error.to_string())?;
        info!("left {} descriptors and the books for the restart", fds.len());
        Ok(())
    }

    /// Takes over the loop's part of a predecessor's handover ([`crate::handover`]): its limits
    /// (as `steve set` left them), where the pool size came from, its start, and the client
    /// processes with their pidfds. Processes that went away meanwhile are reclaimed from
    /// `server` at once.
    pub fn adopt(
        &mut self,
        server: &mut dyn Server,
        state: &serde_json::Value,
        descriptors: &mut crate::handover::Descriptors,
    ) -> Result<(), Error> {
        let field = |name: &str| state.get(name).cloned().unwrap_or(serde_json::Value::Null);
        let bad = |what: &str, why: String| {
            Error::usage(format!("handover: the predecessor's {what}: {why}"))
        };
        let limits: Limits =
            serde_json::from_value(field("limits")).map_err(|e| bad("limits", e.to_string()))?;
        self.governor.set_limits(limits);
        if let Some(from) = field("jobs_from").as_str() {
            self.jobs_from = from.to_string();
        }
        let ago = Duration::from_nanos(field("started_ago_ns").as_u64().unwrap_or(0));
        self.started = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let (processes, gone) = Processes::adopt(&field("processes"), descriptors)
            .map_err(|why| bad("processes", why))?;
        self.processes = processes;
        let now = Instant::now();
        for pid in gone {
            info!(pid, "gone during the handover: its tokens come back");
            server.process_exited(pid, &mut self.context(now));
        }
        Ok(())
    }

    fn answer(
        &mut self,
        server: &mut dyn Server,
        request: Request,
        peer: super::control::Peer,
        now: Instant,
    ) -> Response {
        match request {
            Request::Status => Response::Status { report: Box::new(self.report(server)) },
            Request::Handover => Response::Error { message: "a handover is answered apart".into() },
            Request::Trace { from, since_mono_ns } => {
                self.collect_trace(server);
                let page = match since_mono_ns {
                    Some(mono_ns) => self.trace.since(mono_ns),
                    None => self.trace.from(from.unwrap_or(0)),
                };
                Response::Trace {
                    events: page.events,
                    next: page.next,
                    lost: page.lost,
                    capacity: self.trace.capacity(),
                    started_mono_ns: self.trace.started_mono_ns(),
                    clocks: Clocks::now(),
                }
            }
            Request::Get { keys } => {
                let report = self.report(server);
                let mut values = Vec::new();
                for key in keys {
                    match report.value(&key) {
                        Some(value) => values.push((key, value)),
                        None => return Response::Error { message: format!("unknown key {key:?}") },
                    }
                }
                Response::Values { values }
            }
            Request::Set { settings } => {
                if let Err(message) = may_change(peer, self.owner_uid) {
                    return Response::Error { message };
                }
                match self.apply(server, &settings, peer, now) {
                    Ok(()) => {
                        let report = self.report(server);
                        let values = settings
                            .into_iter()
                            .map(|(key, _)| {
                                let value = report.value(&key).unwrap_or_default();
                                (key, value)
                            })
                            .collect();
                        Response::Values { values }
                    }
                    Err(message) => Response::Error { message },
                }
            }
        }
    }

    /// Applies `steve set`'s settings, all of them or none.
    fn apply(
        &mut self,
        server: &mut dyn Server,
        settings: &[(String, String)],
        peer: super::control::Peer,
        now: Instant,
    ) -> Result<(), String> {
        let before = Settings { jobs: server.jobs(), limits: self.governor.limits().clone() };
        let mut wanted = before.clone();
        wanted.apply(settings).map_err(|error| error.to_string())?;
        let per_process = wanted.limits.per_process_limit;
        if per_process.is_some() && !self.backend.takes(ServeOption::PerProcessLimit) {
            return Err(format!(
                "per-process-limit: {}",
                self.backend.refusal(ServeOption::PerProcessLimit)
            ));
        }
        let shares = wanted.limits.shares.clone();
        if shares != Shares::fifo() && !self.backend.takes(ServeOption::Fairness) {
            return Err(format!("fairness: {}", self.backend.refusal(ServeOption::Fairness)));
        }
        let changes: Vec<String> =
            settings.iter().map(|(key, value)| format!("{key}={value}")).collect();
        // By number: a name lookup may ask a network directory, and the loop must not wait.
        info!("settings changed by uid {} (pid {}): {}", peer.uid, peer.pid, changes.join(" "));
        if wanted.jobs != before.jobs {
            self.jobs_from = format!("steve set by uid {}", peer.uid);
        }
        let mut cx = self.context(now);
        if wanted.jobs != before.jobs {
            server.change(PoolChange::Jobs(wanted.jobs), &mut cx);
        }
        if per_process != before.limits.per_process_limit {
            server.change(PoolChange::PerProcessLimit(per_process), &mut cx);
        }
        if shares != before.limits.shares {
            server.change(PoolChange::Shares(shares), &mut cx);
        }
        self.governor.set_limits(wanted.limits);
        self.watch_triggers();
        self.recheck_limits(server, now, true);
        Ok(())
    }

    /// Reads the system if a limit needs it and gives the server the allowance the limits
    /// make, if it changed (or always, with `force`).
    fn recheck_limits(&mut self, server: &mut dyn Server, now: Instant, force: bool) {
        let allowance = self.governor.check(now);
        if allowance == self.allowance && !force {
            return;
        }
        if allowance != self.allowance {
            let note = match self.governor.pressure() {
                Some(pressure) => format!("holding tokens back: {pressure}"),
                None => "limits no longer exceeded: tokens flow again".to_string(),
            };
            info!("{note}");
            if self.trace.is_on() {
                self.collect_trace(server);
                self.trace.record(now, Record::new(Kind::Pressure).tokens(0).note(note));
            }
        }
        self.allowance = allowance;
        let mut cx = self.context(now);
        server.change(PoolChange::Allowance(allowance), &mut cx);
    }

    /// A metrics connection is ready: read its request and answer, or write more.
    fn serve_metrics(&mut self, server: &mut dyn Server, id: u32, flags: EpollFlags, now: Instant) {
        if flags.contains(EpollFlags::EPOLLOUT) || self.metrics.is_answering(id) {
            self.metrics.write(id);
            return;
        }
        let done = match self.metrics.read(id) {
            Asked::Pending | Asked::Closed => return,
            Asked::Metrics(format) => {
                let text = metrics::exposition(&self.report(server), format);
                self.metrics.respond(id, "200 OK", format.content_type(), &text, now)
            }
            Asked::Refused(status) => {
                let text = format!("{status}: ask GET /metrics\n");
                self.metrics.respond(id, status, "text/plain; charset=utf-8", &text, now)
            }
        };
        if !done {
            if let Some(fd) = self.metrics.connection(id) {
                let mut event =
                    EpollEvent::new(EpollFlags::EPOLLOUT, Key::MetricsConnection(id).encode());
                if let Err(errno) = self.epoll.modify(fd, &mut event) {
                    warn!("cannot watch a metrics connection: {errno}");
                    self.metrics.close(id);
                }
            }
        }
    }

    /// Whatever deadline has passed: the limits' recheck, the server's own, control connections.
    fn due(&mut self, server: &mut dyn Server, now: Instant) {
        self.metrics.expire(now);
        if self.governor.next_recheck().is_some_and(|at| at <= now) {
            self.recheck_limits(server, now, false);
        }
        if server.next_deadline().is_some_and(|at| at <= now) {
            server.deadline(&mut self.context(now));
        }
        if let Some(control) = self.control.as_mut() {
            control.expire(now);
            if self.listener_paused_until.is_some_and(|until| until <= now) {
                self.listener_paused_until = None;
                let event = EpollEvent::new(EpollFlags::EPOLLIN, Key::Listener.encode());
                if let Err(errno) = self.epoll.add(control.listener(), event) {
                    warn!("cannot watch the control socket again: {errno}");
                }
            }
        }
    }

    /// The whole status report: the server's part and what the loop knows.
    pub fn report(&mut self, server: &mut dyn Server) -> StatusReport {
        let now = Instant::now();
        let part = server.report(&mut self.context(now));
        let header = ReportHeader {
            backend: self.backend.name.to_string(),
            path: server.endpoint().path.clone(),
            control: self.control.as_ref().map(|control| control.path().to_path_buf()),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            limits: Settings { jobs: server.jobs(), limits: self.governor.limits().clone() },
            jobs_from: self.jobs_from.clone(),
            system: self.governor.reading(),
            limited_by: self.governor.pressure(),
        };
        StatusReport::assemble(header, part)
    }

    /// How long the loop has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Waits on `epoll` for events until `timeout`; a signal's interruption is an empty wait.
fn wait(epoll: &Epoll, events: &mut [EpollEvent], timeout: EpollTimeout) -> Result<usize, Error> {
    match epoll.wait(events, timeout) {
        Ok(ready) => Ok(ready),
        Err(Errno::EINTR) => Ok(0),
        Err(errno) => Err(Error::io("cannot wait for events", errno.into())),
    }
}

/// The epoll timeout that ends at `deadline`, or never.
fn timeout_until(deadline: Option<Instant>) -> EpollTimeout {
    let Some(deadline) = deadline else { return EpollTimeout::NONE };
    let wait = deadline.saturating_duration_since(Instant::now());
    // Round up, so that the deadline has passed when the wait returns.
    let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("backend", &self.backend.name)
            .field("processes", &self.processes.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_exits_sort_first() {
        let keys = [
            Key::Source(7),
            Key::Connection(u32::MAX),
            Key::Exited(4_194_304),
            Key::Listener,
            Key::Signals,
            Key::Pressure(2),
            Key::MetricsListener(1),
            Key::MetricsConnection(u32::MAX),
            Key::Wake,
        ];
        for key in keys {
            assert_eq!(Key::decode(key.encode()), Some(key));
        }
        let mut sorted = keys.to_vec();
        sorted.sort();
        assert_eq!(sorted[0], Key::Exited(4_194_304));
        assert_eq!(Key::decode(10 << 56), None);
    }
}
