//! Device semantics: the jobserver rules every per-process transport follows (the CUSE character
//! device, a FUSE file), written once here and tested without a kernel.
//!
//! The transport turns kernel requests into calls ([`Device::read`], [`Device::write`],
//! [`Device::poll`], [`Device::interrupt`], [`Device::process_exited`], [`Device::expire`]) and
//! carries out the [`Event`]s the device queues in return: answering a read that waited, waking a
//! poller. Time is passed in, never read here, so tests can drive it.
//!
//! The rules:
//! - one token per read, whatever the buffer size; any byte written back is one token;
//! - accounting is per process (the caller's thread-group id), not per open file: make reads
//!   from one descriptor and writes to another;
//! - a blocking read with nothing free waits in one queue, shared with pollers, served by fair
//!   shares between builds ([`super::shares`]; each process's build is set with
//!   [`Device::join`]); a non-blocking read gets `EAGAIN` ([`ReadOutcome::WouldBlock`]);
//! - a poll says readable only when the caller can take a token now, and then reserves it for
//!   the caller; a poller that reaches the head of the queue gets a token reserved for a short
//!   time and a wake-up, so blocking readers cannot starve it; an unused reservation expires and
//!   the token moves on;
//! - a process that exits gives back everything it held, and its queued requests go;
//! - writing back a token the process does not hold is refused (`ENOSPC`), except one *grace
//!   return* by a process that has taken nothing yet: it lends its implicit token to the pool
//!   until it exits;
//! - an interrupted blocking read leaves the queue without losing a token.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use steve_core::accounting::device::{Device, Event, ReadOutcome, RequestId};
//! use steve_core::accounting::pool::JobCount;
//!
//! let now = Instant::now();
//! let mut device = Device::new(JobCount::new(1).unwrap(), Duration::from_millis(500));
//! assert_eq!(device.read(100, RequestId(1), false, now), ReadOutcome::Token);
//! assert_eq!(device.read(200, RequestId(2), false, now), ReadOutcome::Pending);
//! device.write(100, 1, now).unwrap();
//! assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(2), pid: 200 }]);
//! ```
#![forbid(unsafe_code)]

use rustc_hash::{FxHashMap, FxHashSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ledger::{Acquire, Counts, Grant, Ledger, Wait, WaiterId};
use super::pool::{JobCount, Pool};
use super::shares::{BuildId, Fairness, Owner, Shares, Uid};
use super::waits::WaitHistogram;
use crate::trace::{Books, Kind, Record, Via};

/// A process, by its thread-group id.
pub type Pid = u32;

/// A request the transport must answer: the kernel's `unique`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A kernel poll handle, given back in a poll notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PollHandle(pub u64);

/// The answer to a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Hand out one token now.
    Token,
    /// Nothing free and the reader asked not to wait: `EAGAIN`.
    WouldBlock,
    /// The read waits; an [`Event::Answer`] or [`Event::Interrupted`] will settle it.
    Pending,
}

/// Something the transport must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Answer the waiting read `request` with one token: `pid` holds it now.
    Answer {
        /// The read to answer.
        request: RequestId,
        /// The process that holds the token.
        pid: Pid,
    },
    /// Answer the waiting read `request` with `EINTR`: its process is gone.
    Interrupted {
        /// The read to answer.
        request: RequestId,
    },
    /// Wake the pollers behind `handle`: a token is reserved for `pid`.
    Wake {
        /// The kernel's poll handle.
        handle: PollHandle,
        /// The process the token is reserved for.
        pid: Pid,
    },
}

/// A write was refused: the process holds no token to return and its grace return is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotHeld;

impl fmt::Display for NotHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("token written back by a process that holds none")
    }
}

impl std::error::Error for NotHeld {}

/// What a departed process left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Departed {
    /// Tokens it had taken and not returned.
    pub tokens: usize,
    /// Whether a token was reserved for it (not counted in `tokens`).
    pub reservation: bool,
    /// Whether it had lent its implicit token (now retired again).
    pub lent: bool,
}

/// Running totals since the device started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Tokens handed out (reads answered with a token).
    pub grants: u64,
    /// Tokens written back by their holders.
    pub returns: u64,
    /// Tokens taken back from processes that exited holding them.
    pub reclaimed: u64,
    /// Writes refused with `ENOSPC`.
    pub refused: u64,
    /// Grace returns accepted.
    pub grace_returns: u64,
    /// Waiting reads ended by an interrupt.
    pub interrupts: u64,
    /// Reservations that expired unused.
    pub expired_reservations: u64,
    /// How long each token that left the pool for a request waited (no wait for one handed
    /// out at once; a poller's reservation counts when it is made).
    pub waits: WaitHistogram,
}

/// How a process waits, as shown in a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// A blocking read.
    Blocking,
    /// A poll that asked to be notified.
    Polling,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Process {
    /// It has been handed a token at least once (so a write cannot be a grace return).
    taken_any: bool,
    /// It used its grace return, lending its implicit token to the pool.
    lent: bool,
    /// A token held for it in the ledger, until this deadline.
    #[serde(with = "crate::handover::option_instant")]
    reserved_until: Option<Instant>,
    /// Its place in the queue as a poller.
    poll_waiter: Option<WaiterId>,
    /// Since when it has held at least one token.
    #[serde(with = "crate::handover::option_instant")]
    holding_since: Option<Instant>,
}

/// A process holding tokens, for a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The process.
    pub pid: Pid,
    /// Tokens it has taken and not returned (a reservation not counted).
    pub tokens: usize,
    /// Since when it has held at least one.
    pub since: Instant,
}

/// What one build holds and waits for, for a status report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildUse {
    /// The build.
    pub build: BuildId,
    /// Its user (its first process's).
    pub user: Uid,
    /// Tokens its processes have taken and not returned.
    pub tokens: usize,
    /// Its requests in the queue.
    pub waiting: usize,
    /// The tokens its weight entitles it to among the builds holding or waiting now
    /// (`None` under FIFO).
    pub share: Option<f64>,
}

/// A queued request, for a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The process.
    pub pid: Pid,
    /// Blocking read or poll.
    pub kind: WaitKind,
    /// Since when it has waited.
    pub since: Instant,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Waiting {
    Read(RequestId),
    Poll(PollHandle),
}

/// The jobserver state of one per-process transport. Serializable, for a handover to a
/// successor server ([`crate::handover`]): the books, the queue, the reads waiting and the
/// counters go; the trace (the successor's loop starts its own) and the events (taken every
/// turn, so none are pending between turns) do not, nor the indexes rebuilt from the books,
/// which [`Device::resumed`] must rebuild before the successor uses it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Device {
    ledger: Ledger<Pid>,
    reservation: Duration,
    processes: FxHashMap<Pid, Process>,
    #[serde(with = "waiting_serde")]
    waiting: Queue,
    reads: FxHashMap<RequestId, WaiterId>,
    #[serde(skip)]
    events: Vec<Event>,
    counters: Counters,
    /// What it did, for the event trace, while tracing is on.
    #[serde(skip)]
    trace: Option<Vec<(Instant, Record)>>,
    /// The processes whose count of held tokens may have changed since the server last asked
    /// ([`Device::take_holding_changes`]): the crash books record them. A list, repeats and
    /// all, taken after nearly every request: a set would cost a walk of all its room, which
    /// stays as large as the busiest moment's.
    #[serde(skip)]
    changed: Vec<Pid>,
    /// The processes a token is reserved for (no more than the pool): the deadlines are
    /// looked for here, not in every process's books.
    #[serde(skip)]
    reserved: FxHashSet<Pid>,
}

/// The requests waiting, by their place in the ledger's queue: who, how, and since when.
type Queue = FxHashMap<WaiterId, (Pid, Waiting, Instant)>;

/// The queue's entries as a list, their times as the handover writes instants.
mod waiting_serde {
    use std::time::Instant;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Pid, Queue, WaiterId, Waiting};
    use crate::handover::instant;

    #[derive(Serialize, Deserialize)]
    struct Entry {
        waiter: WaiterId,
        pid: Pid,
        waiting: Waiting,
        #[serde(with = "instant")]
        since: Instant,
    }

    pub fn serialize<S: Serializer>(map: &Queue, serializer: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = map
            .iter()
            .map(|(waiter, (pid, waiting, since))| Entry {
                waiter: *waiter,
                pid: *pid,
                waiting: *waiting,
                since: *since,
            })
            .collect();
        entries.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Queue, D::Error> {
        let entries = Vec::<Entry>::deserialize(deserializer)?;
        Ok(entries.into_iter().map(|e| (e.waiter, (e.pid, e.waiting, e.since))).collect())
    }
}

impl Device {
    /// A device with `jobs` tokens, holding a poller's token for `reservation`.
    pub fn new(jobs: JobCount, reservation: Duration) -> Device {
        Device::over(Pool::new(jobs), reservation)
    }

    /// A device over `pool` (an empty one, in tests).
    pub fn over(pool: Pool, reservation: Duration) -> Device {
        Device {
            ledger: Ledger::over(pool),
            reservation,
            processes: FxHashMap::default(),
            waiting: FxHashMap::default(),
            reads: FxHashMap::default(),
            events: Vec::new(),
            counters: Counters::default(),
            trace: None,
            changed: Vec::new(),
            reserved: FxHashSet::default(),
        }
    }

    /// Starts or stops recording what it does for the event trace ([`Device::take_trace`]);
    /// starting records a [`Kind::Start`] with the books at `now`.
    pub fn set_tracing(&mut self, on: bool, now: Instant) {
        if on != self.trace.is_some() {
            self.trace = on.then(Vec::new);
            let start = Record::new(Kind::Start).tokens(self.counts().target);
            self.trace(now, |device| start.books(device.books_before(0)));
        }
    }

    /// Whether it records events for the trace.
    pub fn is_tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Records an event the transport saw (a process joining a build, with its command line)
    /// among the device's own, in order; nothing while tracing is off.
    pub fn trace_note(&mut self, now: Instant, record: Record) {
        self.trace(now, |_| record);
    }

    /// What it did since the last call, oldest first, each with the time it was told.
    pub fn take_trace(&mut self) -> Vec<(Instant, Record)> {
        let mut taken = Vec::new();
        self.drain_trace(&mut taken);
        taken
    }

    /// Moves what was recorded since the last call onto the end of `into`, keeping the room.
    pub fn drain_trace(&mut self, into: &mut Vec<(Instant, Record)>) {
        if let Some(trace) = self.trace.as_mut() {
            into.append(trace);
        }
    }

    /// Sets `pid`'s build and user (the server finds them when it first sees the process, and
    /// again when a build turns out to be part of a larger one).
    pub fn join(&mut self, pid: Pid, owner: Owner, now: Instant) {
        let grants = self.ledger.set_owner(pid, owner);
        self.settle(grants, now);
        self.debug_check();
    }

    /// `pid`'s build and user, once known.
    pub fn owner(&self, pid: Pid) -> Option<Owner> {
        self.ledger.owner(&pid)
    }

    /// Changes the fairness policy, weights and caps.
    pub fn set_shares(&mut self, shares: Shares, now: Instant) {
        let grants = self.ledger.set_shares(shares);
        self.settle(grants, now);
        self.debug_check();
    }

    /// `pid` reads one token with request `request`.
    pub fn read(
        &mut self,
        pid: Pid,
        request: RequestId,
        nonblocking: bool,
        now: Instant,
    ) -> ReadOutcome {
        let process = self.processes.entry(pid).or_default();
        if process.reserved_until.take().is_some() {
            self.reserved.remove(&pid);
            self.took_token(pid, now);
            return ReadOutcome::Token;
        }
        let wait = if nonblocking { Wait::NoWait } else { Wait::Queue };
        match self.ledger.acquire(pid, wait) {
            Acquire::Granted => {
                self.took_token(pid, now);
                self.counters.waits.observe(Duration::ZERO);
                self.trace(now, |device| device.record(Kind::Grant, pid, 0).via(Via::Read));
                ReadOutcome::Token
            }
            Acquire::Queued(waiter) => {
                self.waiting.insert(waiter, (pid, Waiting::Read(request), now));
                self.reads.insert(request, waiter);
                self.trace(now, |device| device.record(Kind::Wait, pid, 0).via(Via::Read));
                ReadOutcome::Pending
            }
            Acquire::WouldBlock => ReadOutcome::WouldBlock,
        }
    }

    /// `pid` was handed a token (a read answered, or a reservation read).
    fn took_token(&mut self, pid: Pid, now: Instant) {
        self.now_holding(pid, now);
        self.counters.grants += 1;
    }

    /// `pid` holds a token more (handed out, or adopted from a dead server's books).
    fn now_holding(&mut self, pid: Pid, now: Instant) {
        let process = self.processes.entry(pid).or_default();
        process.taken_any = true;
        process.holding_since.get_or_insert(now);
        self.mark_changed(pid);
    }

    /// Counts `pid` among the processes whose holdings may have changed. Repeats are dropped
    /// when the list is taken, or here once it is longer than the processes could make it
    /// between two takes (a caller that never takes it keeps it bounded all the same).
    fn mark_changed(&mut self, pid: Pid) {
        if self.changed.last() == Some(&pid) {
            return;
        }
        self.changed.push(pid);
        // At powers of two only: the processes that exited stay in it, so sorting at every
        // push past the bound could cost that much at each.
        let len = self.changed.len();
        if len > 2 * self.processes.len() + 64 && len.is_power_of_two() {
            self.changed.sort_unstable();
            self.changed.dedup();
        }
    }

    /// Clears `pid`'s holding time once it holds nothing, and checks the books.
    fn note_returns(&mut self, pid: Pid) {
        self.mark_changed(pid);
        if self.held_by(pid) == 0 {
            if let Some(process) = self.processes.get_mut(&pid) {
                process.holding_since = None;
            }
        }
        self.debug_check();
    }

    fn debug_check(&self) {
        debug_assert!(self.is_consistent(), "device books disagree: {self:?}");
    }

    /// `pid` writes `count` bytes back: each is one token. Returns how many were taken; a write
    /// of which none could be taken is refused. What may be returned is judged as the write
    /// arrives: a token this write's own returns grant to the writer was never in its hands.
    pub fn write(&mut self, pid: Pid, count: usize, now: Instant) -> Result<usize, NotHeld> {
        let process = self.processes.entry(pid).or_default();
        let reserved = usize::from(process.reserved_until.is_some());
        let holds = self.ledger.held_by(&pid) - reserved;
        // A process that never took a token holds none, so a grace return replaces no return.
        let grace = !process.taken_any && !process.lent;
        let returns = count.min(holds);
        let lends = usize::from(grace && count > 0 && returns == 0);
        if returns + lends == 0 {
            self.counters.refused += 1;
            self.trace(now, |device| device.record(Kind::Refusal, pid, 0).tokens(count));
            return Err(NotHeld);
        }
        if lends == 1 {
            process.lent = true;
            self.counters.grace_returns += 1;
        }
        // Each return settled before the next, so that the trace sees the ledger's every step;
        // what a return grants is the ledger's choice either way.
        for _ in 0..returns {
            let grants = self.ledger.release(&pid).expect("the process holds a token");
            self.trace(now, |device| device.record(Kind::Return, pid, grants.len()));
            self.settle(grants, now);
        }
        if lends == 1 {
            let grants = self.ledger.lend();
            self.trace(now, |device| device.record(Kind::Lend, pid, grants.len()));
            self.settle(grants, now);
        }
        self.counters.returns += returns as u64;
        // After settling: a returned token may come straight back as the writer's reservation.
        self.note_returns(pid);
        Ok(returns + lends)
    }

    /// `pid` polls. Returns whether it can read a token now; if so the token is reserved for it.
    /// With a `handle` (the kernel will wait), a poller that cannot read now queues for a token
    /// and is woken through the handle when one is reserved for it.
    pub fn poll(&mut self, pid: Pid, handle: Option<PollHandle>, now: Instant) -> bool {
        let deadline = now + self.reservation;
        let process = self.processes.entry(pid).or_default();
        if process.reserved_until.is_some() {
            return true;
        }
        if process.poll_waiter.is_none()
            && self.ledger.acquire(pid, Wait::NoWait) == Acquire::Granted
        {
            process.reserved_until = Some(deadline);
            self.reserved.insert(pid);
            self.counters.waits.observe(Duration::ZERO);
            self.trace(now, |device| device.record(Kind::Grant, pid, 0).via(Via::Poll));
            return true;
        }
        if let Some(handle) = handle {
            match process.poll_waiter {
                // Already queued: keep its place, notify the newest handle.
                Some(waiter) => {
                    if let Some(entry) = self.waiting.get_mut(&waiter) {
                        entry.1 = Waiting::Poll(handle);
                    }
                }
                None => {
                    let Acquire::Queued(waiter) = self.ledger.acquire(pid, Wait::Queue) else {
                        unreachable!("nothing was free a moment ago");
                    };
                    process.poll_waiter = Some(waiter);
                    self.waiting.insert(waiter, (pid, Waiting::Poll(handle), now));
                    self.trace(now, |device| device.record(Kind::Wait, pid, 0).via(Via::Poll));
                }
            }
        }
        false
    }

    /// The read `request` was interrupted. Returns whether it was still waiting (answer it with
    /// `EINTR`); `false` if it was answered already or never waited.
    pub fn interrupt(&mut self, request: RequestId, now: Instant) -> bool {
        let Some(waiter) = self.reads.remove(&request) else { return false };
        if let Some((pid, _, _)) = self.waiting.remove(&waiter) {
            self.trace(now, |device| device.record(Kind::Cancel, pid, 0).via(Via::Read));
        }
        self.ledger.cancel(waiter);
        self.counters.interrupts += 1;
        true
    }

    /// `pid` exited: everything it held comes back, its requests leave the queue, a token it
    /// lent is retired. `None` if the device never saw it.
    pub fn process_exited(&mut self, pid: Pid, now: Instant) -> Option<Departed> {
        let process = self.processes.remove(&pid)?;
        self.mark_changed(pid);
        self.reserved.remove(&pid);
        // Its build, before the ledger forgets it.
        let build = self.build_of(pid);
        let reclaimed = self.ledger.reclaim(&pid);
        for waiter in reclaimed.cancelled {
            match self.waiting.remove(&waiter) {
                Some((_, Waiting::Read(request), _)) => {
                    self.reads.remove(&request);
                    self.events.push(Event::Interrupted { request });
                    self.trace(now, |_| {
                        Record::new(Kind::Cancel).pid(pid).build(build).via(Via::Read)
                    });
                }
                Some((_, Waiting::Poll(_), _)) => {
                    self.trace(now, |_| {
                        Record::new(Kind::Cancel).pid(pid).build(build).via(Via::Poll)
                    });
                }
                None => {}
            }
        }
        let reservation = process.reserved_until.is_some();
        let tokens = reclaimed.tokens - usize::from(reservation);
        self.counters.reclaimed += tokens as u64;
        if reclaimed.tokens > 0 {
            // The ledger's count, a reservation included: the trace's books are the ledger's.
            let grants = reclaimed.grants.len();
            self.trace(now, |device| {
                Record::new(Kind::Reclaim)
                    .pid(pid)
                    .build(build)
                    .tokens(reclaimed.tokens)
                    .books(device.books_before(grants))
            });
        }
        self.settle(reclaimed.grants, now);
        if process.lent {
            let grants = self.ledger.repay();
            self.trace(now, |device| {
                Record::new(Kind::Repay)
                    .pid(pid)
                    .build(build)
                    .books(device.books_before(grants.len()))
            });
            self.settle(grants, now);
        }
        self.debug_check();
        Some(Departed { tokens, reservation, lent: process.lent })
    }

    /// Takes back `count` of the tokens `pid` holds whose holders are lost (a companion FIFO's
    /// readers that died), counted as reclaimed; returns how many it held.
    pub fn reclaim_lost(&mut self, pid: Pid, count: usize, now: Instant) -> usize {
        let reserved =
            self.processes.get(&pid).map_or(0, |p| usize::from(p.reserved_until.is_some()));
        let taken = count.min(self.ledger.held_by(&pid) - reserved);
        for _ in 0..taken {
            let grants = self.ledger.release(&pid).expect("the process holds a token");
            self.trace(now, |device| device.record(Kind::Reclaim, pid, grants.len()));
            self.settle(grants, now);
        }
        self.counters.reclaimed += taken as u64;
        self.note_returns(pid);
        taken
    }

    /// Books `tokens` tokens as held by `pid` without a request: a process that took them from
    /// a server that died, counted here until it exits or writes them back (`pid` joined
    /// first). Takes what is free, up to `tokens`, and returns how many; not counted as grants.
    pub fn adopt_holding(&mut self, pid: Pid, tokens: usize, now: Instant) -> usize {
        let mut taken = 0;
        while taken < tokens && self.ledger.acquire(pid, Wait::NoWait) == Acquire::Granted {
            self.now_holding(pid, now);
            taken += 1;
        }
        // No trace record: survivors are adopted before the trace starts, whose first record
        // (Start) carries the books with them in.
        self.debug_check();
        taken
    }

    /// Each process whose count of held tokens may have changed since the last call, with the
    /// count now (0 once it holds none or is gone), in pid order.
    pub fn take_holding_changes(&mut self) -> Vec<(Pid, usize)> {
        let mut changes = Vec::new();
        self.drain_holding_changes(|pid, tokens| changes.push((pid, tokens)));
        changes.sort_unstable();
        changes
    }

    /// Gives `book` each process whose count of held tokens may have changed since the last
    /// call, with the count now, in no order; allocates nothing (the server books after every
    /// request that hands out or takes back a token).
    pub fn drain_holding_changes(&mut self, mut book: impl FnMut(Pid, usize)) {
        let mut changed = std::mem::take(&mut self.changed);
        if changed.len() > 1 {
            changed.sort_unstable();
            changed.dedup();
        }
        for pid in changed.drain(..) {
            book(pid, if self.processes.contains_key(&pid) { self.held_by(pid) } else { 0 });
        }
        // Given back empty, with its room kept.
        self.changed = changed;
    }

    /// Rebuilds what is not carried in a handover from the books that are: the set of
    /// reservations, and every process counted as changed, so that the next
    /// [`Device::take_holding_changes`] gives them all (the successor's crash books start anew).
    pub fn resumed(&mut self) {
        self.changed.extend(self.processes.keys().copied());
        let reserved = self.processes.iter().filter(|(_, p)| p.reserved_until.is_some());
        self.reserved = reserved.map(|(pid, _)| *pid).collect();
    }

    /// Ends the reservations due by `now`; their tokens move on to the next in the queue.
    pub fn expire(&mut self, now: Instant) {
        let due: Vec<Pid> = self
            .reserved
            .iter()
            .filter(|pid| {
                self.processes
                    .get(pid)
                    .and_then(|process| process.reserved_until)
                    .is_some_and(|until| until <= now)
            })
            .copied()
            .collect();
        for pid in due {
            if let Some(process) = self.processes.get_mut(&pid) {
                process.reserved_until = None;
            }
            self.reserved.remove(&pid);
            self.counters.expired_reservations += 1;
            let grants = self.ledger.release(&pid).expect("a reservation is a held token");
            self.trace(now, |device| device.record(Kind::Expiry, pid, grants.len()));
            self.settle(grants, now);
            self.note_returns(pid);
        }
    }

    /// When the next reservation expires, if any is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.reserved.iter().filter_map(|pid| self.processes.get(pid)?.reserved_until).min()
    }

    /// Changes the pool size: growing answers waiters at once, shrinking takes tokens as they
    /// come back.
    pub fn set_jobs(&mut self, jobs: JobCount, now: Instant) {
        let grants = self.ledger.set_target(jobs);
        self.trace(now, |device| {
            Record::new(Kind::Jobs).tokens(jobs.get()).books(device.books_before(grants.len()))
        });
        self.settle(grants, now);
        self.debug_check();
    }

    /// Limits how many tokens may be out in total (a load or memory limit); `None` lifts it.
    pub fn set_allowance(&mut self, allowance: Option<usize>, now: Instant) {
        let grants = self.ledger.set_allowance(allowance);
        self.trace(now, |device| {
            let books = device.books_before(grants.len());
            Record::new(Kind::Limit).tokens(allowance.unwrap_or(books.size)).books(books)
        });
        self.settle(grants, now);
        self.debug_check();
    }

    /// Limits how many tokens one process may hold; `None` lifts it.
    pub fn set_per_process_limit(&mut self, limit: Option<usize>, now: Instant) {
        let grants = self.ledger.set_per_client_limit(limit);
        self.settle(grants, now);
        self.debug_check();
    }

    /// The events queued since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether a process other than `pid` waits in the queue.
    pub fn has_waiters_besides(&self, pid: Pid) -> bool {
        self.waiting.values().any(|(waiter, _, _)| *waiter != pid)
    }

    /// How long a poller's reserved token waits for it.
    pub fn reservation(&self) -> Duration {
        self.reservation
    }

    /// Whether the device knows `pid` (it made a request and has not exited).
    pub fn knows(&self, pid: Pid) -> bool {
        self.processes.contains_key(&pid)
    }

    /// The pool's counters.
    pub fn counts(&self) -> Counts {
        self.ledger.counts()
    }

    /// Running totals.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Tokens `pid` has taken and not returned (a reservation not counted).
    pub fn held_by(&self, pid: Pid) -> usize {
        let reserved = self.processes.get(&pid).is_some_and(|p| p.reserved_until.is_some());
        self.ledger.held_by(&pid) - usize::from(reserved)
    }

    /// Every process holding tokens (reservations not counted), by pid.
    pub fn holders(&self) -> Vec<Holder> {
        let mut holders: Vec<Holder> = self
            .processes
            .iter()
            .filter_map(|(pid, process)| {
                let tokens = self.held_by(*pid);
                let since = process.holding_since?;
                (tokens > 0).then_some(Holder { pid: *pid, tokens, since })
            })
            .collect();
        holders.sort_unstable_by_key(|holder| holder.pid);
        holders
    }

    /// The queue, oldest first.
    pub fn waiters(&self) -> Vec<Waiter> {
        self.ledger
            .waiters()
            .filter_map(|(waiter, pid)| {
                let (_, waiting, since) = self.waiting.get(&waiter)?;
                let kind = match waiting {
                    Waiting::Poll(_) => WaitKind::Polling,
                    Waiting::Read(_) => WaitKind::Blocking,
                };
                Some(Waiter { pid: *pid, kind, since: *since })
            })
            .collect()
    }

    /// Every build holding or waiting for tokens, by build number, with its fair share.
    pub fn builds(&self) -> Vec<BuildUse> {
        let mut builds: Vec<BuildUse> = Vec::new();
        let mut entry = |pid: Pid, tokens: usize, waiting: usize| {
            let Some(owner) = self.ledger.owner(&pid) else { return };
            match builds.iter_mut().find(|b| b.build == owner.build) {
                Some(found) => {
                    found.tokens += tokens;
                    found.waiting += waiting;
                }
                None => builds.push(BuildUse {
                    build: owner.build,
                    user: owner.user,
                    tokens,
                    waiting,
                    share: None,
                }),
            }
        };
        for holder in self.holders() {
            entry(holder.pid, holder.tokens, 0);
        }
        for (_, pid) in self.ledger.waiters() {
            entry(*pid, 0, 1);
        }
        let shares = self.ledger.shares();
        let size = self.counts().size as f64;
        let weight = |user: Uid| shares.weight(user) as f64;
        match shares.fairness {
            Fairness::Fifo => {}
            Fairness::Build => {
                let total: f64 = builds.iter().map(|b| weight(b.user)).sum();
                for build in &mut builds {
                    build.share = Some(size * weight(build.user) / total);
                }
            }
            Fairness::User => {
                let mut users: Vec<Uid> = builds.iter().map(|b| b.user).collect();
                users.sort_unstable();
                users.dedup();
                let total: f64 = users.iter().map(|user| weight(*user)).sum();
                let count = |user: Uid| builds.iter().filter(|b| b.user == user).count() as f64;
                let split: Vec<f64> =
                    builds.iter().map(|b| size * weight(b.user) / total / count(b.user)).collect();
                for (build, share) in builds.iter_mut().zip(split) {
                    build.share = Some(share);
                }
            }
        }
        builds.sort_unstable_by_key(|b| b.build);
        builds
    }

    /// Whether the device's own books agree with the ledger's.
    pub fn is_consistent(&self) -> bool {
        let waiters_agree = self.ledger.waiters().count() == self.waiting.len()
            && self.reads.len()
                == self.waiting.values().filter(|(_, w, _)| matches!(w, Waiting::Read(_))).count();
        let holding_times_agree = self
            .processes
            .iter()
            .all(|(pid, process)| process.holding_since.is_some() == (self.held_by(*pid) > 0));
        let reservations_held = self
            .processes
            .iter()
            .all(|(pid, process)| process.reserved_until.is_none() || self.ledger.held_by(pid) > 0);
        let reservations_indexed = self.reserved.len()
            == self.processes.values().filter(|p| p.reserved_until.is_some()).count()
            && self
                .reserved
                .iter()
                .all(|pid| self.processes.get(pid).is_some_and(|p| p.reserved_until.is_some()));
        self.ledger.is_consistent()
            && waiters_agree
            && reservations_held
            && reservations_indexed
            && holding_times_agree
    }

    /// Records what `record` makes of the device now, if tracing is on (it is not called
    /// otherwise: tracing off costs a branch).
    fn trace(&mut self, now: Instant, record: impl FnOnce(&Device) -> Record) {
        if self.trace.is_some() {
            let record = record(self);
            if let Some(trace) = self.trace.as_mut() {
                trace.push((now, record));
            }
        }
    }

    /// A record of `kind` for `pid` and its build, with the books as they were before the
    /// ledger granted the last `grants` tokens of the change just made.
    fn record(&self, kind: Kind, pid: Pid, grants: usize) -> Record {
        let record = Record::new(kind).pid(pid).build(self.build_of(pid));
        match kind {
            Kind::Wait | Kind::Cancel | Kind::Refusal => record,
            _ => record.books(self.books_before(grants)),
        }
    }

    /// `pid`'s build number, if it has one.
    fn build_of(&self, pid: Pid) -> Option<u64> {
        self.ledger.owner(&pid).map(|owner| owner.build.0)
    }

    /// The pool's books before the ledger's last `grants` grants: each moved one free token
    /// to held, so a change and the grants it caused are traced as the steps they were.
    fn books_before(&self, grants: usize) -> Books {
        let mut books = Books::from(self.ledger.counts());
        books.free += grants;
        books.held -= grants;
        books
    }

    /// Carries out the ledger's grants: answer a waiting read, or reserve for a poller and wake
    /// it. Callers that took tokens back call `note_returns` afterwards.
    fn settle(&mut self, grants: Vec<Grant<Pid>>, now: Instant) {
        let mut left = grants.len();
        for grant in grants {
            let Some((pid, waiting, since)) = self.waiting.remove(&grant.waiter) else {
                unreachable!("every queued request is on the books");
            };
            left -= 1;
            let via = match waiting {
                Waiting::Read(_) => Via::Read,
                Waiting::Poll(_) => Via::Poll,
            };
            let waited = now.saturating_duration_since(since);
            self.counters.waits.observe(waited);
            let waited = waited.as_nanos();
            self.trace(now, |device| {
                Record::new(Kind::Grant)
                    .pid(pid)
                    .build(device.build_of(pid))
                    .via(via)
                    .waited_ns(u64::try_from(waited).unwrap_or(u64::MAX))
                    .books(device.books_before(left))
            });
            match waiting {
                Waiting::Read(request) => {
                    self.reads.remove(&request);
                    self.took_token(pid, now);
                    self.events.push(Event::Answer { request, pid });
                }
                Waiting::Poll(handle) => {
                    let process = self.processes.entry(pid).or_default();
                    process.poll_waiter = None;
                    process.reserved_until = Some(now + self.reservation);
                    self.reserved.insert(pid);
                    self.events.push(Event::Wake { handle, pid });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVE: Duration = Duration::from_millis(500);

    fn device(jobs: usize) -> (Device, Instant) {
        (Device::over(Pool::with_target(jobs), RESERVE), Instant::now())
    }

    #[test]
    fn the_changed_holders_are_given_once_and_stay_few_untaken() {
        let (mut device, now) = device(2);
        for request in 0..10_000u64 {
            let pid = (request % 3) as Pid + 1;
            assert_eq!(device.read(pid, RequestId(request), true, now), ReadOutcome::Token);
            device.write(pid, 1, now).expect("its own token back");
        }
        // Sorted down whenever it reaches a power of two past 2 × 3 + 64: under 128.
        assert!(device.changed.len() < 128, "{} untaken", device.changed.len());
        assert_eq!(device.take_holding_changes(), vec![(1, 0), (2, 0), (3, 0)]);
        assert_eq!(device.take_holding_changes(), vec![], "given once");
    }

    #[test]
    fn one_token_per_read_then_eagain_when_nonblocking() {
        let (mut device, now) = device(2);
        assert_eq!(device.read(1, RequestId(1), true, now), ReadOutcome::Token);
        assert_eq!(device.read(1, RequestId(2), true, now), ReadOutcome::Token);
        assert_eq!(device.read(1, RequestId(3), true, now), ReadOutcome::WouldBlock);
        assert_eq!(device.held_by(1), 2);
    }

    #[test]
    fn the_books_survive_a_handover_whole() {
        // Holders, a grace return, a reservation, a waiting read and a queued poller: what a
        // successor must carry on with.
        let (mut device, now) = device(3);
        assert_eq!(device.read(1, RequestId(1), false, now), ReadOutcome::Token);
        assert_eq!(device.read(1, RequestId(2), false, now), ReadOutcome::Token);
        device.write(4, 1, now).expect("a grace return");
        assert!(device.poll(2, Some(PollHandle(7)), now), "a token reserved for the poller");
        assert_eq!(device.read(1, RequestId(3), false, now), ReadOutcome::Token);
        assert_eq!(device.read(3, RequestId(4), false, now), ReadOutcome::Pending);
        assert!(!device.poll(5, Some(PollHandle(8)), now));
        let text = serde_json::to_string(&device).unwrap();
        let mut successor: Device = serde_json::from_str(&text).unwrap();
        assert!(!successor.is_consistent(), "the reservation is not indexed until resumed");
        successor.resumed();
        assert!(successor.is_consistent());
        // Instants cross as offsets from the moment of writing: the same deadline, give or
        // take the time the copy took.
        let (ours, theirs) = (device.next_deadline().unwrap(), successor.next_deadline().unwrap());
        assert!(ours.max(theirs) - ours.min(theirs) < Duration::from_secs(1));
        assert_eq!(successor.counts(), device.counts());
        assert_eq!(successor.counters(), device.counters());
        assert_eq!(successor.holders().len(), device.holders().len());
        let kinds = |d: &Device| d.waiters().iter().map(|w| (w.pid, w.kind)).collect::<Vec<_>>();
        assert_eq!(kinds(&successor), kinds(&device));
        // The successor answers the read that waited, and the poller's reservation stands.
        successor.write(1, 1, now).unwrap();
        assert_eq!(successor.take_events(), vec![Event::Answer { request: RequestId(4), pid: 3 }]);
        assert_eq!(successor.read(2, RequestId(5), true, now), ReadOutcome::Token);
        assert!(successor.is_consistent());
    }

    #[test]
    fn blocking_reads_wait_in_order_and_are_answered_by_returns() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        assert_eq!(device.read(2, RequestId(2), false, now), ReadOutcome::Pending);
        assert_eq!(device.read(3, RequestId(3), false, now), ReadOutcome::Pending);
        device.write(1, 1, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(2), pid: 2 }]);
        device.write(2, 1, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(3), pid: 3 }]);
    }

    #[test]
    fn lost_tokens_are_reclaimed_up_to_what_is_held_and_answer_waiters() {
        let (mut device, now) = device(3);
        for request in 1..=3 {
            assert_eq!(device.read(9, RequestId(request), true, now), ReadOutcome::Token);
        }
        assert!(!device.has_waiters_besides(9));
        assert_eq!(device.read(2, RequestId(4), false, now), ReadOutcome::Pending);
        assert!(device.has_waiters_besides(9) && !device.has_waiters_besides(2));
        assert_eq!(device.reclaim_lost(9, 5, now), 3, "only what it held");
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(4), pid: 2 }]);
        assert_eq!((device.held_by(9), device.counters().reclaimed), (0, 3));
        assert!(device.is_consistent());
    }

    #[test]
    fn accounting_is_per_process_whatever_the_request() {
        let (mut device, now) = device(2);
        // make reads on one descriptor and writes on another: the pid is what counts.
        device.read(7, RequestId(1), false, now);
        assert_eq!(device.write(7, 1, now), Ok(1));
        assert_eq!(device.write(8, 1, now), Ok(1), "a new process's first write is its grace");
        assert_eq!(device.write(8, 1, now), Err(NotHeld));
    }

    #[test]
    fn a_write_not_held_is_refused_except_one_grace_return_before_any_read() {
        let (mut device, now) = device(1);
        // A new process lends its implicit token: the pool grows by one while it lives.
        assert_eq!(device.write(5, 1, now), Ok(1));
        assert_eq!(device.counts().size, 2);
        assert_eq!(device.write(5, 1, now), Err(NotHeld), "only one grace return");
        // A process that has read once gets no grace: its write must be of a held token.
        device.read(6, RequestId(1), false, now);
        device.write(6, 1, now).unwrap();
        assert_eq!(device.write(6, 1, now), Err(NotHeld));
        let counters = device.counters();
        assert_eq!((counters.grace_returns, counters.refused, counters.returns), (1, 2, 1));
        // When the lender exits, its token is retired again.
        device.process_exited(5, now).unwrap();
        assert_eq!(device.counts().size, 1);
        assert_eq!(device.counts().free, 1);
    }

    #[test]
    fn a_write_does_not_return_a_token_its_own_grace_return_granted() {
        // Found by the property test: a waiting reader writes two bytes holding nothing. The
        // first is its grace return, whose token answers its own waiting read; the second must
        // not return that token, which the process never saw.
        let (mut device, now) = device(0);
        assert_eq!(device.read(1, RequestId(1), false, now), ReadOutcome::Pending);
        assert_eq!(device.write(1, 2, now), Ok(1));
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(1), pid: 1 }]);
        assert_eq!(device.held_by(1), 1);
    }

    #[test]
    fn a_write_of_many_bytes_takes_what_is_held() {
        let (mut device, now) = device(3);
        device.read(1, RequestId(1), false, now);
        device.read(1, RequestId(2), false, now);
        assert_eq!(device.write(1, 5, now), Ok(2));
        assert_eq!(device.counts().free, 3);
    }

    #[test]
    fn poll_is_readable_only_when_a_token_can_be_taken_and_reserves_it() {
        let (mut device, now) = device(1);
        assert!(device.poll(1, Some(PollHandle(10)), now));
        // The token is reserved for process 1: a blocking reader waits, a non-blocking one
        // gets EAGAIN, and process 1 reads it.
        assert_eq!(device.read(2, RequestId(1), true, now), ReadOutcome::WouldBlock);
        assert!(!device.poll(3, None, now));
        assert_eq!(device.read(1, RequestId(2), true, now), ReadOutcome::Token);
        assert_eq!(device.held_by(1), 1);
    }

    #[test]
    fn a_poller_at_the_head_of_the_queue_gets_a_reservation_before_a_later_blocking_reader() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        assert!(!device.poll(2, Some(PollHandle(20)), now));
        assert_eq!(device.read(3, RequestId(3), false, now), ReadOutcome::Pending);
        let waiters: Vec<(Pid, WaitKind)> =
            device.waiters().iter().map(|w| (w.pid, w.kind)).collect();
        assert_eq!(waiters, vec![(2, WaitKind::Polling), (3, WaitKind::Blocking)]);

        device.write(1, 1, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Wake { handle: PollHandle(20), pid: 2 }]);
        // The blocking reader cannot take the poller's token.
        assert_eq!(device.read(3, RequestId(4), true, now), ReadOutcome::WouldBlock);
        assert_eq!(device.read(2, RequestId(5), true, now), ReadOutcome::Token);
        device.write(2, 1, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(3), pid: 3 }]);
    }

    #[test]
    fn an_unused_reservation_expires_and_the_token_moves_on() {
        let (mut device, now) = device(1);
        assert!(device.poll(1, Some(PollHandle(1)), now));
        assert_eq!(device.read(2, RequestId(1), false, now), ReadOutcome::Pending);
        assert_eq!(device.next_deadline(), Some(now + RESERVE));
        device.expire(now + RESERVE / 2);
        assert!(device.take_events().is_empty(), "expired early");
        device.expire(now + RESERVE);
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(1), pid: 2 }]);
        assert_eq!(device.counters().expired_reservations, 1);
        assert_eq!(device.next_deadline(), None);
        assert_eq!(device.held_by(1), 0);
    }

    #[test]
    fn a_repeated_poll_keeps_its_place_and_notifies_the_newest_handle() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        device.poll(2, Some(PollHandle(1)), now);
        device.read(3, RequestId(2), false, now);
        device.poll(2, Some(PollHandle(2)), now);
        assert_eq!(device.waiters().len(), 2);
        device.write(1, 1, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Wake { handle: PollHandle(2), pid: 2 }]);
    }

    #[test]
    fn an_interrupted_read_leaves_the_queue_without_losing_a_token() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        device.read(2, RequestId(2), false, now);
        assert!(device.interrupt(RequestId(2), now));
        assert!(!device.interrupt(RequestId(2), now), "interrupted twice");
        device.write(1, 1, now).unwrap();
        assert!(device.take_events().is_empty());
        assert_eq!(device.counts().free, 1);
        // An interrupt for a read already answered changes nothing.
        assert_eq!(device.read(2, RequestId(3), false, now), ReadOutcome::Token);
        assert!(!device.interrupt(RequestId(3), now));
        assert_eq!(device.held_by(2), 1);
    }

    #[test]
    fn an_exiting_holder_gives_everything_back_to_the_queue_in_order() {
        let (mut device, now) = device(3);
        for request in 1..=3 {
            device.read(1, RequestId(request), false, now);
        }
        device.poll(2, Some(PollHandle(9)), now);
        device.read(3, RequestId(4), false, now);
        let departed = device.process_exited(1, now).unwrap();
        assert_eq!(departed, Departed { tokens: 3, reservation: false, lent: false });
        assert_eq!(
            device.take_events(),
            vec![
                Event::Wake { handle: PollHandle(9), pid: 2 },
                Event::Answer { request: RequestId(4), pid: 3 }
            ]
        );
        assert_eq!(device.counts().free, 1);
        assert_eq!(device.counters().reclaimed, 3);
    }

    #[test]
    fn a_dead_servers_holder_is_counted_until_it_returns_or_exits() {
        let (mut device, now) = device(3);
        // It held 4 of the last server's tokens; this pool has 3 free.
        assert_eq!(device.adopt_holding(1, 4, now), 3);
        assert_eq!(device.held_by(1), 3);
        assert_eq!(device.counts().free, 0);
        assert_eq!(device.counters().grants, 0, "nothing was handed out");
        assert_eq!(device.read(2, RequestId(1), true, now), ReadOutcome::WouldBlock);
        assert_eq!(device.take_holding_changes(), vec![(1, 3)]);
        // What it writes back is a return, not a grace loan.
        assert_eq!(device.write(1, 1, now), Ok(1));
        assert_eq!(device.counters().grace_returns, 0);
        assert_eq!(device.read(2, RequestId(2), true, now), ReadOutcome::Token);
        assert_eq!(device.take_holding_changes(), vec![(1, 2), (2, 1)]);
        assert_eq!(device.take_holding_changes(), vec![]);
        let departed = device.process_exited(1, now).unwrap();
        assert_eq!(departed.tokens, 2);
        assert_eq!(device.take_holding_changes(), vec![(1, 0)]);
        assert_eq!(device.counts().free, 2);
        device.resumed();
        assert_eq!(device.take_holding_changes(), vec![(2, 1)]);
    }

    #[test]
    fn a_poller_exiting_with_a_reservation_passes_the_token_on() {
        let (mut device, now) = device(1);
        assert!(device.poll(1, Some(PollHandle(1)), now));
        device.read(2, RequestId(1), false, now);
        let departed = device.process_exited(1, now).unwrap();
        assert_eq!(departed, Departed { tokens: 0, reservation: true, lent: false });
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(1), pid: 2 }]);
        assert_eq!(device.counters().reclaimed, 0, "a reservation was never taken");
    }

    #[test]
    fn an_exiting_process_with_a_waiting_read_gets_it_interrupted() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        device.read(2, RequestId(2), false, now);
        device.process_exited(2, now).unwrap();
        assert_eq!(device.take_events(), vec![Event::Interrupted { request: RequestId(2) }]);
        device.write(1, 1, now).unwrap();
        assert!(device.take_events().is_empty());
        assert!(device.process_exited(2, now).is_none(), "exited twice");
    }

    #[test]
    fn holders_and_waiters_say_since_when() {
        let (mut device, start) = device(1);
        let later = start + Duration::from_secs(3);
        device.read(1, RequestId(1), false, start);
        device.read(2, RequestId(2), false, later);
        assert_eq!(device.holders(), vec![Holder { pid: 1, tokens: 1, since: start }]);
        assert_eq!(
            device.waiters(),
            vec![Waiter { pid: 2, kind: WaitKind::Blocking, since: later }]
        );
        device.write(1, 1, later).unwrap();
        assert_eq!(device.holders(), vec![Holder { pid: 2, tokens: 1, since: later }]);
    }

    #[test]
    fn a_process_at_its_limit_waits_and_others_pass_it() {
        let (mut device, now) = device(3);
        device.set_per_process_limit(Some(1), now);
        assert_eq!(device.read(1, RequestId(1), true, now), ReadOutcome::Token);
        assert_eq!(device.read(1, RequestId(2), true, now), ReadOutcome::WouldBlock);
        assert_eq!(device.read(1, RequestId(3), false, now), ReadOutcome::Pending);
        assert_eq!(device.read(2, RequestId(4), false, now), ReadOutcome::Token);
        assert!(!device.poll(1, None, now), "not readable at its limit");
        device.set_per_process_limit(None, now);
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(3), pid: 1 }]);
    }

    #[test]
    fn an_allowance_holds_tokens_back_until_lifted() {
        let (mut device, now) = device(4);
        device.read(1, RequestId(1), false, now);
        device.set_allowance(Some(1), now);
        assert_eq!(device.read(2, RequestId(2), true, now), ReadOutcome::WouldBlock);
        assert_eq!(device.read(2, RequestId(3), false, now), ReadOutcome::Pending);
        assert_eq!(device.counts().withheld, 3);
        device.set_allowance(None, now);
        assert_eq!(device.take_events(), vec![Event::Answer { request: RequestId(3), pid: 2 }]);
    }

    #[test]
    fn growing_the_pool_answers_waiters() {
        let (mut device, now) = device(1);
        device.read(1, RequestId(1), false, now);
        device.read(2, RequestId(2), false, now);
        device.poll(3, Some(PollHandle(3)), now);
        device.set_jobs(JobCount::new(3).unwrap(), now);
        assert_eq!(
            device.take_events(),
            vec![
                Event::Answer { request: RequestId(2), pid: 2 },
                Event::Wake { handle: PollHandle(3), pid: 3 }
            ]
        );
    }

    fn join(device: &mut Device, pid: Pid, build: u64, now: Instant) {
        use crate::accounting::shares::BuildId;
        device.join(pid, Owner { build: BuildId(build), user: 1000 }, now);
    }

    #[test]
    fn a_writer_with_a_request_in_the_queue_is_served_by_the_queue() {
        let (mut device, now) = device(2);
        join(&mut device, 1, 1, now);
        join(&mut device, 2, 2, now);
        device.read(1, RequestId(1), false, now);
        device.read(2, RequestId(2), false, now);
        assert_eq!(device.read(2, RequestId(3), false, now), ReadOutcome::Pending);
        // make polls for its next job while one still runs, then that job ends.
        assert!(!device.poll(1, Some(PollHandle(9)), now));
        device.write(1, 1, now).unwrap();
        // The token goes through the queue to make's poll (its build now holds less), once.
        assert_eq!(device.take_events(), vec![Event::Wake { handle: PollHandle(9), pid: 1 }]);
        assert!(device.is_consistent());
    }
}
