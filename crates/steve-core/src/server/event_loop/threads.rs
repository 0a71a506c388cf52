//! Serving from several threads: each of a server's threaded sources
//! ([`Server::threaded_sources`]) is served by a thread of its own: a FUSE connection's cloned
//! channel with blocking reads, or one of its io_uring queues ([`MessageQueue`]) with the
//! queue's own wait. A thread that has a message takes the one lock over the loop and the
//! server to hand it to [`Server::message`], so that every event is still handled one at a
//! time by the loop's code, as with one thread.
//!
//! Why: most of a round trip through a FUSE file is waking the thread that answers it, and the
//! system calls around it. A thread asleep in a blocking read of /dev/fuse is woken by the
//! request itself, one sleeper per request in the order they went to sleep (libfuse's
//! `clone_fd` shape): a read and a write per request, against an `epoll_wait`, a read, a write
//! and a read that finds nothing when the loop's epoll watches the channel.
//!
//! The loop's thread waits on the loop's epoll (signals, pidfds, the control socket, deadlines)
//! without the lock. A serving thread that moved a deadline earlier than the one the loop's
//! thread sleeps until, or found the transport ended, says so through an eventfd
//! ([`Key::Wake`]).
//!
//! Before a handover, a restart and the end, the loop's thread, holding the lock, makes every
//! reader still ([`Readers::quiesce`]), so that none takes a request from the connection once a
//! successor has it: it sets `stopping` and interrupts the reads with [`WAKE_SIGNAL`] until
//! every reader is parked (a signal interrupts an io_uring wait as it does a read). A reader
//! that had read a message and waits for the lock leaves the message to the loop's thread,
//! which handles it before the books go out.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::pthread::{pthread_kill, pthread_self, Pthread};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::{debug, warn};

use super::{timeout_until, wait, Ended, EventLoop, Key, BATCH};
use crate::server::backend::{Flow, Handled, MessageQueue, Next, Server, SourceId, ThreadedSource};
use crate::server::Error;

/// What interrupts a serving thread's read (ignored by default, so nothing else sends it to a
/// server; blocked in the loop's thread).
pub(super) const WAKE_SIGNAL: Signal = Signal::SIGURG;
/// How often a reader waiting for the lock looks whether the loop wants it still, and how often
/// a quiesce interrupts the readers' reads again (a signal that came just before a read began
/// interrupted nothing).
const STILL_POLL: Duration = Duration::from_millis(1);

/// What the threads share, under the one lock.
struct Shared<'a> {
    event_loop: &'a mut EventLoop,
    server: &'a mut dyn Server,
    /// The deadline the loop's thread sleeps until (`None`: it waits for events alone).
    sleeping_until: Option<Instant>,
}

/// The readers as the loop's thread sees them, outside the one lock.
pub(super) struct Readers {
    /// The loop wants every reader still: none starts a read.
    stopping: AtomicBool,
    state: Mutex<ReaderState>,
    changed: Condvar,
}

#[derive(Default)]
struct ReaderState {
    /// Each reader's phase, by its number.
    phases: Vec<Phase>,
    /// Each reader's thread, once it runs.
    threads: Vec<Option<Pthread>>,
    /// Messages read while the loop wanted the readers still, for the loop's thread.
    late: Vec<(SourceId, Vec<u8>)>,
    /// Bumped by every [`Readers::resume`].
    generation: u64,
    /// The readers are to leave, not resume.
    leave: bool,
    /// How the server ended, as a reader found it (the connection ended, or an error).
    ended: Option<Result<Ended, Error>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Parked,
    Gone,
}

impl Readers {
    fn new() -> Readers {
        Readers {
            stopping: AtomicBool::new(false),
            state: Mutex::new(ReaderState::default()),
            changed: Condvar::new(),
        }
    }

    /// Counts in a reader about to start; its number.
    fn add(&self) -> usize {
        let mut state = self.state.lock();
        state.phases.push(Phase::Running);
        state.threads.push(None);
        state.phases.len() - 1
    }

    fn set_phase(&self, reader: usize, phase: Phase) {
        self.state.lock().phases[reader] = phase;
        self.changed.notify_all();
    }

    /// Makes every reader still, and gives what they read meanwhile. Called by the loop's
    /// thread with the one lock held, so no reader is handling a message.
    pub(super) fn quiesce(&self) -> Vec<(SourceId, Vec<u8>)> {
        self.stopping.store(true, Ordering::SeqCst);
        let mut state = self.state.lock();
        while state.phases.contains(&Phase::Running) {
            for (phase, thread) in state.phases.iter().zip(&state.threads) {
                if let (Phase::Running, Some(thread)) = (phase, thread) {
                    // A thread that is running has not been joined: its id is valid.
                    let _ = pthread_kill(*thread, WAKE_SIGNAL);
                }
            }
            self.changed.wait_for(&mut state, STILL_POLL);
        }
        std::mem::take(&mut state.late)
    }

    /// Lets the readers read again after a [`Readers::quiesce`] (a handover that did not
    /// happen).
    pub(super) fn resume(&self) {
        let mut state = self.state.lock();
        self.stopping.store(false, Ordering::SeqCst);
        state.generation += 1;
        self.changed.notify_all();
    }

    /// Sends the (still) readers away for good.
    fn leave(&self) {
        self.state.lock().leave = true;
        self.changed.notify_all();
    }

    /// A reader parks while the loop wants it still; whether it is to go on reading.
    fn park(&self, reader: usize) -> bool {
        let mut state = self.state.lock();
        let generation = state.generation;
        state.phases[reader] = Phase::Parked;
        self.changed.notify_all();
        // Looked at under the state's lock, which `resume` takes: no resume is missed.
        while self.stopping.load(Ordering::SeqCst) && !state.leave && state.generation == generation
        {
            self.changed.wait(&mut state);
        }
        if state.leave {
            return false;
        }
        state.phases[reader] = Phase::Running;
        true
    }

    /// Keeps `message`, read while the loop wanted the readers still, for the loop's thread.
    fn leave_late(&self, source: SourceId, message: &[u8]) {
        self.state.lock().late.push((source, message.to_vec()));
    }

    /// How the server ended, if a reader found it.
    fn take_ended(&self) -> Option<Result<Ended, Error>> {
        self.state.lock().ended.take()
    }

    fn end(&self, ended: Result<Ended, Error>) {
        let mut state = self.state.lock();
        if state.ended.is_none() {
            state.ended = Some(ended);
        }
    }
}

/// Runs `server` in `event_loop` with a thread for each of `sources`, until it ends.
pub(super) fn run(
    event_loop: &mut EventLoop,
    server: &mut dyn Server,
    sources: Vec<ThreadedSource>,
) -> Result<Ended, Error> {
    let cannot = |what: &'static str| move |errno: Errno| Error::io(what, errno.into());
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    let wake = EventFd::from_flags(flags).map_err(cannot("cannot make an eventfd"))?;
    // Only the readers take the wake-up signal: one sent to the process from outside
    // interrupts no call of this thread.
    crate::sys::interrupt_on(WAKE_SIGNAL)
        .map_err(|error| Error::io("cannot set up the readers' wake-up signal", error))?;
    SigSet::from(WAKE_SIGNAL).thread_block().map_err(cannot("cannot block a signal"))?;
    let epoll = Arc::clone(&event_loop.epoll);
    epoll
        .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, Key::Wake.encode()))
        .map_err(cannot("cannot watch an eventfd"))?;
    let count = sources.len();
    let readers = Arc::new(Readers::new());
    event_loop.readers = Some(Arc::clone(&readers));
    let shared = Mutex::new(Shared { event_loop, server, sleeping_until: None });
    let result = std::thread::scope(|scope| {
        let mut started = Ok(());
        for (n, source) in sources.into_iter().enumerate() {
            let reader = readers.add();
            let (shared, readers, wake) = (&shared, &*readers, &wake);
            let spawned = std::thread::Builder::new()
                .name(format!("steve-serve-{n}"))
                .spawn_scoped(scope, move || {
                    serve_source(shared, readers, reader, source, wake);
                    readers.set_phase(reader, Phase::Gone);
                });
            if let Err(error) = spawned {
                readers.set_phase(reader, Phase::Gone);
                started = Err(Error::io("cannot start a serving thread", error));
                break;
            }
        }
        debug!(threads = count, "serving from {count} thread(s) beside the loop's");
        let mut guard = shared.lock();
        let result = started.and_then(|()| serve_loop(&mut guard, &readers, &epoll, &wake));
        // The end: every reader still, what they read handled, then gone.
        let late = readers.quiesce();
        let shared = &mut *guard;
        shared.event_loop.handle_late(shared.server, late);
        shared.event_loop.readers = None;
        readers.leave();
        result
    });
    let _ = epoll.delete(&wake);
    result
}

/// The loop's thread: waits on the loop's epoll without the lock, handles a turn with it.
fn serve_loop(
    guard: &mut MutexGuard<'_, Shared<'_>>,
    readers: &Readers,
    epoll: &Epoll,
    wake: &EventFd,
) -> Result<Ended, Error> {
    let mut events = [EpollEvent::empty(); BATCH];
    loop {
        let shared = &mut **guard;
        let until = shared.event_loop.next_deadline(shared.server);
        shared.sleeping_until = until;
        let ready = MutexGuard::unlocked(guard, || wait(epoll, &mut events, timeout_until(until)))?;
        let shared = &mut **guard;
        if events[..ready].iter().any(|event| event.data() == Key::Wake.encode()) {
            // Level-triggered: read the count back to zero, or it wakes every wait.
            let _ = wake.read();
        }
        if let Some(ended) = readers.take_ended() {
            return ended;
        }
        if let Some(ended) = shared.event_loop.turn(shared.server, &events[..ready])? {
            return Ok(ended);
        }
    }
}

/// A serving thread: waits for a message from `source`, then hands it to the server under the
/// lock, until the source ends or the loop sends the readers away.
fn serve_source(
    shared: &Mutex<Shared<'_>>,
    readers: &Readers,
    reader: usize,
    source: ThreadedSource,
    wake: &EventFd,
) {
    let end = |ended: Result<Ended, Error>| {
        readers.end(ended);
        let _ = wake.write(1);
    };
    if let Err(errno) = SigSet::from(WAKE_SIGNAL).thread_unblock() {
        return end(Err(Error::io("cannot unblock a signal", errno.into())));
    }
    readers.state.lock().threads[reader] = Some(pthread_self());
    let serving = Serving { shared, readers, reader, wake };
    let ended = match source {
        ThreadedSource::Reads { id, fd, message_len } => serving.reads(id, &fd, message_len),
        ThreadedSource::Queue(queue) => serving.queue(queue),
    };
    if let Some(ended) = ended {
        end(ended);
    }
}

/// What a serving thread works with.
struct Serving<'s, 'a> {
    shared: &'s Mutex<Shared<'a>>,
    readers: &'s Readers,
    reader: usize,
    wake: &'s EventFd,
}

impl Serving<'_, '_> {
    /// Whether to go on: parks while the loop wants the readers still; `false` once they are
    /// sent away.
    fn go_on(&self) -> bool {
        while self.readers.stopping.load(Ordering::SeqCst) {
            if !self.readers.park(self.reader) {
                return false;
            }
        }
        true
    }

    /// Serves a descriptor read with blocking reads; how the server ended, if the thread
    /// found it.
    fn reads(
        &self,
        id: SourceId,
        fd: &OwnedFd,
        message_len: usize,
    ) -> Option<Result<Ended, Error>> {
        let mut buffer = vec![0u8; message_len];
        loop {
            if !self.go_on() {
                return None;
            }
            let len = match nix::unistd::read(fd, &mut buffer) {
                Ok(0) => {
                    return Some(Ok(Ended::Transport("the kernel closed the connection".into())))
                }
                Ok(len) => len,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                // The kernel ended the connection (the device was removed, or unmounted).
                Err(Errno::ENODEV) => {
                    return Some(Ok(Ended::Transport("the kernel ended the connection".into())))
                }
                Err(errno) => return Some(Err(Error::io("cannot read requests", errno.into()))),
            };
            let handled = match self.handle_locked(id, &buffer[..len]) {
                Ok(Some(handled)) => handled,
                Ok(None) => continue,
                Err(error) => return Some(Err(error)),
            };
            if let Some(answer) = handled.answer {
                write_answer(fd, &answer);
            }
            if let Flow::Ended(why) = handled.flow {
                return Some(Ok(Ended::Transport(why)));
            }
        }
    }

    /// Serves a queue that waits its own way; how the server ended, if the thread found it.
    fn queue(&self, mut queue: Box<dyn MessageQueue>) -> Option<Result<Ended, Error>> {
        loop {
            if !self.go_on() {
                return None;
            }
            let handled = match queue.next() {
                Ok(Next::Message(id, message)) => self.handle_locked(id, message),
                Ok(Next::Interrupted) => continue,
                Ok(Next::Ended(why)) => return Some(Ok(Ended::Transport(why))),
                Err(error) => return Some(Err(error)),
            };
            let handled = match handled {
                Ok(Some(handled)) => handled,
                Ok(None) => continue,
                Err(error) => return Some(Err(error)),
            };
            if let Some(answer) = handled.answer {
                queue.answer(&answer);
            }
            if let Flow::Ended(why) = handled.flow {
                return Some(Ok(Ended::Transport(why)));
            }
        }
    }

    /// Hands `message`, from source `id`, to the server under the one lock; `None` when the
    /// loop wanted the readers still meanwhile and keeps the message for its own thread.
    fn handle_locked(&self, id: SourceId, message: &[u8]) -> Result<Option<Handled>, Error> {
        let mut guard = loop {
            if let Some(guard) = self.shared.try_lock_for(STILL_POLL) {
                break Some(guard);
            }
            if self.readers.stopping.load(Ordering::SeqCst) {
                break None;
            }
        };
        let Some(shared) = guard.as_deref_mut() else {
            self.readers.leave_late(id, message);
            return Ok(None);
        };
        let now = Instant::now();
        let handled = shared.server.message(id, message, &mut shared.event_loop.context(now));
        let finished = shared.event_loop.finish_turn(shared.server, now);
        let handled = handled.and_then(|handled| finished.map(|()| handled))?;
        // A deadline earlier than the loop's thread sleeps until: it must wake for it.
        let next = shared.event_loop.next_deadline(shared.server);
        if next.is_some_and(|at| shared.sleeping_until.is_none_or(|until| at < until)) {
            shared.sleeping_until = next;
            let _ = self.wake.write(1);
        }
        Ok(Some(handled))
    }
}

/// Writes a message's answer on the descriptor it was read from.
fn write_answer(fd: &std::os::fd::OwnedFd, answer: &[u8]) {
    match nix::unistd::write(fd, answer) {
        Ok(_) => {}
        // The request is gone (its caller was interrupted and gave up): nothing to answer.
        Err(Errno::ENOENT) => debug!("reply to a request the kernel dropped"),
        Err(errno) => warn!("could not answer the kernel: {errno}"),
    }
}

impl EventLoop {
    /// Makes the serving threads still, if any, and handles what they had read: before the
    /// books go to a successor or the service manager's store.
    pub(super) fn quiesce_readers(&mut self, server: &mut dyn Server) {
        if let Some(readers) = self.readers.clone() {
            let late = readers.quiesce();
            self.handle_late(server, late);
        }
    }

    /// Lets the serving threads read again (the handover did not happen).
    pub(super) fn resume_readers(&self) {
        if let Some(readers) = &self.readers {
            readers.resume();
        }
    }

    /// Handles messages the readers read while the loop wanted them still.
    fn handle_late(&mut self, server: &mut dyn Server, late: Vec<(SourceId, Vec<u8>)>) {
        for (source, message) in late {
            let now = Instant::now();
            match server.message(source, &message, &mut self.context(now)) {
                Ok(handled) => {
                    if let Some(answer) = handled.answer {
                        server.answer(source, &answer);
                    }
                    if let Flow::Ended(why) = handled.flow {
                        debug!("a message read as the readers stopped: {why}");
                    }
                }
                Err(error) => warn!("a message read as the readers stopped: {error}"),
            }
        }
        if let Err(error) = self.finish_turn(server, Instant::now()) {
            warn!("{error}");
        }
    }
}
