//! Serving from several threads: each of a server's threaded sources
//! ([`Server::threaded_sources`], a FUSE connection's cloned channels) is waited on by a thread
//! of its own, and a thread with work takes the one lock over the loop and the server, so that
//! every event is still handled one at a time by the loop's code, as with one thread.
//!
//! Why: most of a round trip through a FUSE file is waking the thread that answers it. Each
//! serving thread waits in an epoll of its own with `EPOLLEXCLUSIVE`, so a request wakes one
//! idle thread, not all (libfuse's `clone_fd` shape), and a thread near the client can take it.
//!
//! The loop's thread waits on the loop's epoll (signals, pidfds, the control socket, deadlines)
//! without the lock. A serving thread that moved a deadline earlier than the one the loop's
//! thread sleeps until, or found the transport ended, says so through an eventfd
//! ([`Key::Wake`]). The end: the loop's thread sets `stopping` before it lets go of the lock,
//! and a serving thread reads requests only under the lock and after looking at it, so none
//! is read once a successor has the connection (a handover) or the server is torn down; an
//! eventfd written once wakes every serving thread to leave.

use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::{Mutex, MutexGuard};
use tracing::debug;

use super::{timeout_until, wait, Ended, EventLoop, Key, BATCH};
use crate::server::backend::{Flow, Server, SourceId};
use crate::server::Error;

/// What the threads share, under the one lock.
struct Shared<'a> {
    event_loop: &'a mut EventLoop,
    server: &'a mut dyn Server,
    /// The deadline the loop's thread sleeps until (`None`: it waits for events alone).
    sleeping_until: Option<Instant>,
    /// Set once the loop ends: serving threads read nothing more.
    stopping: bool,
    /// How the server ended, as a serving thread found it (the connection ended, or an error).
    ended: Option<Result<Ended, Error>>,
}

/// Runs `server` in `event_loop` with a thread for each of `sources`, until it ends.
pub(super) fn run(
    event_loop: &mut EventLoop,
    server: &mut dyn Server,
    sources: Vec<(SourceId, OwnedFd)>,
) -> Result<Ended, Error> {
    let cannot = |what: &'static str| move |errno: Errno| Error::io(what, errno.into());
    let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    let wake = EventFd::from_flags(flags).map_err(cannot("cannot make an eventfd"))?;
    let stop = EventFd::from_flags(flags).map_err(cannot("cannot make an eventfd"))?;
    let epoll = std::sync::Arc::clone(&event_loop.epoll);
    epoll
        .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, Key::Wake.encode()))
        .map_err(cannot("cannot watch an eventfd"))?;
    let count = sources.len();
    let shared = Mutex::new(Shared {
        event_loop,
        server,
        sleeping_until: None,
        stopping: false,
        ended: None,
    });
    let result = std::thread::scope(|scope| {
        for (n, (id, fd)) in sources.into_iter().enumerate() {
            let (shared, stop, wake) = (&shared, &stop, &wake);
            let spawned = std::thread::Builder::new()
                .name(format!("steve-serve-{n}"))
                .spawn_scoped(scope, move || serve_source(shared, id, fd, stop, wake));
            if let Err(error) = spawned {
                shared.lock().stopping = true;
                let _ = stop.write(1);
                return Err(Error::io("cannot start a serving thread", error));
            }
        }
        debug!(threads = count, "serving from {count} thread(s) beside the loop's");
        let mut guard = shared.lock();
        let result = serve_loop(&mut guard, &epoll, &wake);
        guard.stopping = true;
        drop(guard);
        let _ = stop.write(1);
        result
    });
    let _ = epoll.delete(&wake);
    result
}

/// The loop's thread: waits on the loop's epoll without the lock, handles a turn with it.
fn serve_loop(
    guard: &mut MutexGuard<'_, Shared<'_>>,
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
        if let Some(ended) = shared.ended.take() {
            return ended;
        }
        if let Some(ended) = shared.event_loop.turn(shared.server, &events[..ready])? {
            return Ok(ended);
        }
    }
}

/// A serving thread: waits for `source` (or the stop), then serves it under the lock.
fn serve_source(
    shared: &Mutex<Shared<'_>>,
    source: SourceId,
    fd: OwnedFd,
    stop: &EventFd,
    wake: &EventFd,
) {
    let failed = |shared: &mut Shared<'_>, error: Error| {
        if !shared.stopping && shared.ended.is_none() {
            shared.ended = Some(Err(error));
        }
        let _ = wake.write(1);
    };
    let epoll = match watch(&fd, stop) {
        Ok(epoll) => epoll,
        Err(error) => return failed(&mut shared.lock(), error),
    };
    let mut events = [EpollEvent::empty(); 2];
    loop {
        let ready = match wait(&epoll, &mut events, EpollTimeout::NONE) {
            Ok(ready) => ready,
            Err(error) => return failed(&mut shared.lock(), error),
        };
        if events[..ready].iter().any(|event| event.data() == STOP) {
            return;
        }
        // To the back of the connection's queue of waiters, so that the next request wakes
        // the thread that waited longest (as blocking reads would), not always this one.
        if let Err(error) = rearm(&epoll, &fd) {
            return failed(&mut shared.lock(), error);
        }
        let mut guard = shared.lock();
        if guard.stopping {
            return;
        }
        let shared = &mut *guard;
        let now = Instant::now();
        let flow = shared.server.readable(source, &mut shared.event_loop.context(now));
        let finished = shared.event_loop.finish_turn(shared.server);
        let flow = match flow.and_then(|flow| finished.map(|()| flow)) {
            Ok(flow) => flow,
            Err(error) => return failed(shared, error),
        };
        if let Flow::Ended(why) = flow {
            if shared.ended.is_none() {
                shared.ended = Some(Ok(Ended::Transport(why)));
            }
            let _ = wake.write(1);
            return;
        }
        // A deadline earlier than the loop's thread sleeps until: it must wake for it.
        let next = shared.event_loop.next_deadline(shared.server);
        if next.is_some_and(|at| shared.sleeping_until.is_none_or(|until| at < until)) {
            shared.sleeping_until = next;
            let _ = wake.write(1);
        }
    }
}

/// The stop eventfd's key in a serving thread's epoll.
const STOP: u64 = 1;

/// A serving thread's epoll: its source, woken exclusively, and the stop.
fn watch(fd: &OwnedFd, stop: &EventFd) -> Result<Epoll, Error> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(cannot_watch)?;
    epoll.add(fd, EpollEvent::new(EXCLUSIVE, SOURCE)).map_err(cannot_watch)?;
    epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP)).map_err(cannot_watch)?;
    Ok(epoll)
}

/// Puts `fd`'s entry at the back of the kernel's queue of waiters: an exclusive wake-up goes
/// to the first entry whose epoll has a thread waiting, and an entry stays where it was added.
fn rearm(epoll: &Epoll, fd: &OwnedFd) -> Result<(), Error> {
    epoll.delete(fd).map_err(cannot_watch)?;
    epoll.add(fd, EpollEvent::new(EXCLUSIVE, SOURCE)).map_err(cannot_watch)
}

/// How a serving thread watches its source: one idle thread woken per request.
const EXCLUSIVE: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLEXCLUSIVE);
/// The source's key in a serving thread's epoll.
const SOURCE: u64 = 0;

fn cannot_watch(errno: Errno) -> Error {
    Error::io("cannot set up a serving thread's epoll", errno.into())
}
