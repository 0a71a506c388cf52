//! The event trace: what a server did with its tokens, one event at a time, kept in a bounded
//! ring so that "who sat on the tokens at 3 pm?" has an answer after the fact.
//!
//! A backend's accounting records [`Record`]s as it changes the pool (a grant, a return, a
//! reclaim, a refusal, a request queued or given up, a reservation expired, the pool resized, a
//! limit applied); the event loop stamps each with a sequence number and the time
//! (`CLOCK_MONOTONIC`, nanoseconds) and keeps it in a [`Ring`], which `steve trace` and
//! `steve plot` read through the control socket and which a server may also write to a file as
//! JSON lines ([`TraceEvent`] is one line).
//!
//! Events that change the pool carry its [`Books`] right after the change, as the ledger saw
//! them: a return that the ledger at once grants to a waiter is two events, the return (one
//! more free) and the grant (one less), so that a reader replaying the grants, returns and
//! reclaims finds the same `held` at every event, and `free + held + withheld == size` holds at
//! each.
//!
//! ```
//! use steve_core::trace::{Kind, Record, Ring};
//!
//! let mut ring = Ring::new(2);
//! for pid in [10, 11, 12] {
//!     ring.push(Record::new(Kind::Grant).pid(pid), 1_000 + u64::from(pid));
//! }
//! // The ring keeps the newest two; the first is lost, and says so.
//! let page = ring.from(0, 100);
//! assert_eq!(page.events.iter().map(|e| e.record.pid).collect::<Vec<_>>(), [Some(11), Some(12)]);
//! assert_eq!(page.lost, 1);
//! // A reader asks again from where it stopped: nothing new.
//! assert_eq!(ring.from(page.next, 100).events.len(), 0);
//! ```
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::accounting::pool::Counts;

pub mod timeline;

/// Events a server keeps when no option says otherwise: about 9 MiB when full (some 136 bytes
/// an event).
pub const DEFAULT_RING_SIZE: usize = 65_536;

/// Events one control reply carries at most; a reader asks again from where it stopped.
pub const PAGE: usize = 8_192;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The server started tracing: `books` are the pool's at that moment.
    Start,
    /// `pid` was first seen, or moved, in `build`: `note` is its command line.
    Join,
    /// A token left the pool for `pid`: a read answered, or a token reserved for a poller.
    Grant,
    /// `pid` wrote `tokens` back.
    Return,
    /// `pid` exited (or its holders were lost) holding `tokens`: they came back.
    Reclaim,
    /// A poller's reserved token went unread: it came back.
    Expiry,
    /// `pid` wrote back a token it did not hold: refused with `ENOSPC`.
    Refusal,
    /// `pid`'s request waits in the queue.
    Wait,
    /// `pid`'s queued request left without a token (interrupted, or its process exited).
    Cancel,
    /// `pid` lent its implicit token to the pool (a grace return): the pool grew by one.
    Lend,
    /// A lender exited: the token it lent is retired.
    Repay,
    /// The pool size was changed to `tokens`.
    Jobs,
    /// The limits let `tokens` be out at once (the pool's size when nothing is held back).
    Limit,
    /// What the limits saw changed: `note` says what holds tokens back, if anything.
    Pressure,
    /// A named pipe's leaked tokens were put back: `tokens` of them.
    Recovery,
}

impl Kind {
    /// Its name in a trace line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Join => "join",
            Kind::Grant => "grant",
            Kind::Return => "return",
            Kind::Reclaim => "reclaim",
            Kind::Expiry => "expiry",
            Kind::Refusal => "refusal",
            Kind::Wait => "wait",
            Kind::Cancel => "cancel",
            Kind::Lend => "lend",
            Kind::Repay => "repay",
            Kind::Jobs => "jobs",
            Kind::Limit => "limit",
            Kind::Pressure => "pressure",
            Kind::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a request asked: a blocking read or a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// A read (answered at once, or after waiting).
    Read,
    /// A poll (the token is reserved for the poller until it reads).
    Poll,
}

/// The pool's counts right after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    /// Tokens that exist now.
    pub size: usize,
    /// Tokens that may be handed out now.
    pub free: usize,
    /// Tokens out of the server's hands.
    pub held: usize,
    /// Tokens kept back by the limits.
    pub withheld: usize,
}

impl Books {
    /// Whether the books balance: `free + held + withheld == size`.
    pub fn balance(&self) -> bool {
        self.free + self.held + self.withheld == self.size
    }
}

impl From<Counts> for Books {
    fn from(counts: Counts) -> Books {
        Books { size: counts.size, free: counts.free, held: counts.held, withheld: counts.withheld }
    }
}

/// One event as the accounting records it, before the loop stamps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What happened.
    pub event: Kind,
    /// The process it happened to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// That process's build, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<u64>,
    /// Tokens it moved (or, for `jobs` and `limit`, the new figure).
    #[serde(default)]
    pub tokens: usize,
    /// How the request asked, for grants and waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// For a grant after a wait, how long the request waited, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ns: Option<u64>,
    /// The pool right after, for events that can change it.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub books: Option<Books>,
    /// A line for people (what a pressure event saw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Record {
    /// An event of `kind` moving one token, about no process yet.
    pub fn new(kind: Kind) -> Record {
        Record {
            event: kind,
            pid: None,
            build: None,
            tokens: 1,
            via: None,
            waited_ns: None,
            books: None,
            note: None,
        }
    }

    /// About process `pid`.
    pub fn pid(mut self, pid: u32) -> Record {
        self.pid = Some(pid);
        self
    }

    /// Of build `build`, if known.
    pub fn build(mut self, build: Option<u64>) -> Record {
        self.build = build;
        self
    }

    /// Moving `tokens` (or setting that figure).
    pub fn tokens(mut self, tokens: usize) -> Record {
        self.tokens = tokens;
        self
    }

    /// Asked by `via`.
    pub fn via(mut self, via: Via) -> Record {
        self.via = Some(via);
        self
    }

    /// After waiting `waited_ns`.
    pub fn waited_ns(mut self, waited_ns: u64) -> Record {
        self.waited_ns = Some(waited_ns);
        self
    }

    /// Leaving the pool as `books` say.
    pub fn books(mut self, books: impl Into<Books>) -> Record {
        self.books = Some(books.into());
        self
    }

    /// Saying `note`.
    pub fn note(mut self, note: impl Into<String>) -> Record {
        self.note = Some(note.into());
        self
    }
}

/// One event of the trace: a JSON line in a trace file and in `steve trace --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Its number: one more than the event before, from 0 when the server started.
    pub seq: u64,
    /// When, in nanoseconds of `CLOCK_MONOTONIC` (the system's, so comparable with other
    /// processes' clocks on the same boot).
    pub mono_ns: u64,
    /// What happened.
    #[serde(flatten)]
    pub record: Record,
}

/// A page of the ring, for a reader that asked for the events from one on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The events, oldest first.
    pub events: Vec<TraceEvent>,
    /// The sequence number to ask from next.
    pub next: u64,
    /// Events the reader asked for that the ring no longer has (it overflowed).
    pub lost: u64,
}

/// The bounded ring of the newest events.
#[derive(Debug, Clone)]
pub struct Ring {
    capacity: usize,
    events: VecDeque<TraceEvent>,
    next_seq: u64,
}

impl Ring {
    /// A ring keeping the newest `capacity` events; 0 keeps none (tracing is off).
    pub fn new(capacity: usize) -> Ring {
        Ring { capacity, events: VecDeque::with_capacity(capacity.min(1024)), next_seq: 0 }
    }

    /// Whether it keeps anything.
    pub fn is_on(&self) -> bool {
        self.capacity > 0
    }

    /// How many events it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Stamps `record` with the next sequence number and `mono_ns`.
    pub fn stamp(&mut self, record: Record, mono_ns: u64) -> TraceEvent {
        let event = TraceEvent { seq: self.next_seq, mono_ns, record };
        self.next_seq += 1;
        event
    }

    /// Keeps `event`, dropping the oldest if the ring is full (a ring of none keeps nothing).
    pub fn keep(&mut self, event: TraceEvent) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Stamps and keeps `record`.
    pub fn push(&mut self, record: Record, mono_ns: u64) {
        let event = self.stamp(record, mono_ns);
        self.keep(event);
    }

    /// Up to `limit` events from sequence number `first` on (clamped to what exists), oldest
    /// first.
    pub fn from(&self, first: u64, limit: usize) -> Page {
        let oldest = self.events.front().map_or(self.next_seq, |event| event.seq);
        let start = first.min(self.next_seq).max(oldest);
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        let events: Vec<TraceEvent> = self.events.iter().skip(skip).take(limit).cloned().collect();
        let next = events.last().map_or(start, |event| event.seq + 1);
        Page { events, next, lost: oldest.saturating_sub(first) }
    }

    /// Up to `limit` events stamped at or after `mono_ns`, oldest first.
    pub fn since(&self, mono_ns: u64, limit: usize) -> Page {
        let first = self
            .events
            .iter()
            .find(|event| event.mono_ns >= mono_ns)
            .map_or(self.next_seq, |event| event.seq);
        self.from(first, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(capacity: usize, events: u64) -> Ring {
        let mut ring = Ring::new(capacity);
        for n in 0..events {
            ring.push(Record::new(Kind::Grant).pid(n as u32), 100 * n);
        }
        ring
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.events.iter().map(|event| event.seq).collect()
    }

    #[test]
    fn a_reader_pages_through_and_is_told_what_it_missed() {
        let ring = ring_of(4, 10);
        // Kept: 6..=9.
        let page = ring.from(0, 3);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![6, 7, 8], 9, 6));
        let page = ring.from(page.next, 3);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![9], 10, 0));
        let page = ring.from(page.next, 3);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![], 10, 0));
        // A reader ahead of the ring (a server restarted) starts again from what exists.
        assert_eq!(ring.from(500, 3).next, 10);
    }

    #[test]
    fn since_finds_the_first_event_at_or_after_a_time() {
        let ring = ring_of(4, 10);
        assert_eq!(seqs(&ring.since(750, 10)), vec![8, 9]);
        assert_eq!(seqs(&ring.since(0, 10)), vec![6, 7, 8, 9]);
        assert_eq!(ring.since(10_000, 10).events, vec![]);
    }

    #[test]
    fn a_ring_of_none_keeps_nothing_but_counts() {
        let ring = ring_of(0, 3);
        assert!(!ring.is_on());
        assert_eq!(ring.next_seq(), 3);
        assert_eq!(ring.from(0, 10).events, vec![]);
    }

    #[test]
    fn an_event_is_one_flat_json_line() {
        let counts = Books { size: 4, free: 1, held: 3, withheld: 0 };
        let event = TraceEvent {
            seq: 7,
            mono_ns: 12,
            record: Record::new(Kind::Grant).pid(42).build(Some(3)).via(Via::Poll).books(counts),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            r#"{"seq":7,"mono_ns":12,"event":"grant","pid":42,"build":3,"tokens":1,"via":"poll","size":4,"free":1,"held":3,"withheld":0}"#
        );
        assert_eq!(serde_json::from_str::<TraceEvent>(&line).unwrap(), event);
        let bare: TraceEvent =
            serde_json::from_str(r#"{"seq":1,"mono_ns":2,"event":"pressure","note":"x"}"#).unwrap();
        assert_eq!(bare.record.books, None);
        assert!(counts.balance());
    }
}
