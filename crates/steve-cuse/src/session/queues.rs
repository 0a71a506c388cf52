//! A FUSE connection's io_uring queues served each by a thread of its own, pinned to the
//! queue's CPU (`--io-uring` with `--threads` above 1): the kernel puts a request on the queue
//! of the CPU its caller runs on, so the thread that answers it wakes on that CPU instead of
//! across (libfuse 3.18's shape, and the fastest the bench measured: docs/performance.md).
//!
//! Each ring is its thread's alone ([`QueueSource`], a steve-core [`MessageQueue`]): several
//! threads must not submit to one io_uring at once. The answer a thread's own request leaves
//! goes straight into its ring; an answer from anywhere else (a waiting read given a token by
//! another queue's request, a deadline, a process's exit, the loop's thread) is posted to the
//! queue's [`Mailbox`], whose eventfd the ring keeps a read of, so that its thread wakes and
//! sends it with its next submission. The queue's own thread posts there too (its request gave
//! another of its entries' waiting reads a token), but wakes nobody: it empties the mailbox
//! before it sleeps.
//!
//! A ring entry's request reaches the session as a source of its own ([`entry_source`]): the
//! queue and the entry, so that a read that waits knows where its answer goes.

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use steve_core::server::{MessageQueue, Next, SourceId};
use tracing::{debug, warn};

use crate::error::Error;
use crate::fuse::uring::{Completion, Ring, Waited, MAX_ENTRIES};
use crate::ll::{self, Reply};

/// A ring entry's source id: this bit, the queue above [`ENTRY_BITS`], the entry below.
const ENTRY_SOURCE: u32 = 1 << 31;
const ENTRY_BITS: u32 = MAX_ENTRIES.trailing_zeros();
const _: () = assert!(MAX_ENTRIES == 1 << ENTRY_BITS, "every entry's number fits below the queue");

/// The source id of ring entry `entry` of queue `queue`.
pub fn entry_source(queue: u16, entry: u32) -> SourceId {
    SourceId(ENTRY_SOURCE | (u32::from(queue) << ENTRY_BITS) | entry)
}

/// The queue and entry a source id names, if it names one.
pub fn entry_of(source: SourceId) -> Option<(u16, u32)> {
    (source.0 & ENTRY_SOURCE != 0).then(|| {
        let queue = (source.0 & !ENTRY_SOURCE) >> ENTRY_BITS;
        (queue as u16, source.0 & (MAX_ENTRIES as u32 - 1))
    })
}

thread_local! {
    /// The queue the calling thread serves, if it serves one.
    static SERVING: Cell<Option<u16>> = const { Cell::new(None) };
}

/// Answers for a queue's ring from other threads, and the eventfd that wakes its thread.
#[derive(Debug)]
pub struct Mailbox {
    queue: u16,
    answers: Mutex<Vec<(u32, Reply)>>,
    wake: EventFd,
}

impl Mailbox {
    fn new(queue: u16) -> Result<Mailbox, Error> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
            .map_err(|errno| Error::io("make", "a ring's wake-up eventfd", errno))?;
        Ok(Mailbox { queue, answers: Mutex::new(Vec::new()), wake })
    }

    /// Leaves `answer` for ring entry `entry`, waking the queue's thread unless it is the
    /// caller.
    pub fn post(&self, entry: u32, answer: &[u8]) {
        let mut answers = self.answers.lock();
        let first = answers.is_empty();
        answers.push((entry, Reply::from_parts(&[answer])));
        drop(answers);
        // The thread takes every answer posted by the time it looks: one wake-up for all.
        let own = SERVING.with(Cell::get) == Some(self.queue);
        if first && !own {
            if let Err(errno) = self.wake.write(1) {
                warn!("cannot wake a ring's thread: {errno}");
            }
        }
    }
}

/// One queue's ring, served by a thread of its own.
#[derive(Debug)]
pub struct QueueSource {
    /// Dropped first: closing the ring cancels its read of the mailbox's eventfd.
    ring: Ring,
    mailbox: Arc<Mailbox>,
    queue: u16,
    /// Completions not handed out yet.
    completed: VecDeque<Completion>,
    /// The request of the entry handed out last, put together as a channel would give it.
    message: Vec<u8>,
    /// The entry handed out last, which [`MessageQueue::answer`] answers.
    last: Option<u32>,
    /// The mailbox's answers, taken out to send (kept for its room).
    posted: Vec<(u32, Reply)>,
    /// The thread is on the queue's CPU (or could not be), and known as the queue's.
    pinned: bool,
}

impl QueueSource {
    /// Serves `ring`, registered on queue `queue`; its mailbox is for the session to post to.
    pub fn new(mut ring: Ring, queue: u16) -> Result<(QueueSource, Arc<Mailbox>), Error> {
        let mailbox = Arc::new(Mailbox::new(queue)?);
        ring.wake_on(mailbox.wake.as_fd());
        let source = QueueSource {
            ring,
            mailbox: Arc::clone(&mailbox),
            queue,
            completed: VecDeque::new(),
            message: Vec::new(),
            last: None,
            posted: Vec::new(),
            pinned: false,
        };
        Ok((source, mailbox))
    }

    /// Moves the calling thread to the queue's CPU, where its requests' callers run, and
    /// marks it as the queue's.
    fn pin(&mut self) {
        self.pinned = true;
        SERVING.with(|serving| serving.set(Some(self.queue)));
        let mut cpus = nix::sched::CpuSet::new();
        let moved = cpus
            .set(usize::from(self.queue))
            .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus));
        // A CPU the server may not use (its cgroup's cpuset) leaves the thread anywhere.
        if let Err(errno) = moved {
            debug!(queue = self.queue, "the ring's thread stays unpinned: {errno}");
        }
    }

    /// Puts `answer` in entry `entry`, for the next submission.
    fn send(&mut self, entry: u32, answer: &[u8]) {
        if let Err(why) = self.ring.answer(entry, answer) {
            warn!("could not answer the kernel: {why}");
        }
    }
}

impl MessageQueue for QueueSource {
    fn next(&mut self) -> Result<Next<'_>, steve_core::server::Error> {
        if !self.pinned {
            self.pin();
        }
        loop {
            while let Some(completion) = self.completed.pop_front() {
                let entry = match completion {
                    Completion::Request(entry) => entry,
                    // The connection ended: the kernel gives every entry up.
                    Completion::Failed(_, Errno::ENOTCONN) => {
                        return Ok(Next::Ended("the kernel ended the connection".into()))
                    }
                    Completion::Failed(entry, errno) => {
                        debug!(
                            queue = self.queue,
                            entry, "the kernel gave a ring entry up: {errno}"
                        );
                        continue;
                    }
                };
                match self.ring.request(entry, &mut self.message) {
                    Ok(()) => {
                        self.last = Some(entry);
                        return Ok(Next::Message(entry_source(self.queue, entry), &self.message));
                    }
                    Err((why, unique)) => {
                        warn!("{why}");
                        self.send(entry, &ll::reply_error(unique, nix::libc::EIO));
                    }
                }
            }
            // Swapped out under the lock, sent without it; the emptied list keeps its room.
            let mut posted = std::mem::take(&mut self.posted);
            std::mem::swap(&mut *self.mailbox.answers.lock(), &mut posted);
            for (entry, answer) in posted.drain(..) {
                self.send(entry, &answer);
            }
            self.posted = posted;
            let due = self.ring.kick_due();
            let waited = self.ring.wait(due).map_err(|error| {
                steve_core::server::Error::io("cannot wait on a FUSE ring", error)
            })?;
            if waited == Waited::Interrupted {
                return Ok(Next::Interrupted);
            }
            self.completed.extend(self.ring.completions());
            if waited == Waited::TimedOut && self.completed.is_empty() {
                // Quiet, with the queue perhaps starved of entries: the kernel's own INTERRUPT
                // of one waiting read, for the session to answer EINTR through its entry.
                if let Some(kick) = self.ring.kick(Instant::now()) {
                    let unique = kick.request | ll::INTERRUPT_BIT;
                    self.message = ll::kernel::interrupt(unique, kick.request);
                    return Ok(Next::Message(entry_source(self.queue, kick.entry), &self.message));
                }
            }
        }
    }

    fn answer(&mut self, answer: &[u8]) {
        match self.last.take() {
            Some(entry) => self.send(entry, answer),
            None => warn!("an answer for a ring entry that holds no request"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entrys_source_names_its_queue_and_entry() {
        for (queue, entry) in [(0, 0), (1, 7), (3, MAX_ENTRIES as u32 - 1), (u16::MAX, 12)] {
            let source = entry_source(queue, entry);
            assert_eq!(entry_of(source), Some((queue, entry)), "{source:?}");
        }
        // The session's channels and companion are small numbers: no entry.
        assert_eq!(entry_of(SourceId(0)), None);
        assert_eq!(entry_of(SourceId(65)), None);
    }
}
