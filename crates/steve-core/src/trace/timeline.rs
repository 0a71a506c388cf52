//! A trace turned into intervals: each token a process held (from its grant to its return,
//! expiry or reclaim), each request that waited, the pool's books over time, and the limit and
//! pressure changes, grouped by build. What `steve plot` draws and exports, computed once here
//! so that every picture of a trace says the same.
//!
//! Tokens are alike, so a return ends the process's oldest open hold. Holds and waits still
//! open at the end of the trace end there, marked open. Within a build, each hold gets the
//! lowest row free at its start, so that a lane is as tall as the most tokens the build held at
//! once.
//!
//! ```
//! use steve_core::trace::timeline::Timeline;
//! use steve_core::trace::{Kind, Record, Ring};
//!
//! let mut ring = Ring::new(16);
//! ring.push(Record::new(Kind::Grant).pid(7).build(Some(1)), 1_000);
//! ring.push(Record::new(Kind::Return).pid(7).build(Some(1)), 3_000);
//! let timeline = Timeline::of(&ring.from(0, 16).events);
//! assert_eq!(timeline.lanes.len(), 1);
//! assert_eq!((timeline.lanes[0].holds[0].start, timeline.lanes[0].holds[0].end), (1_000, 3_000));
//! ```
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{Books, Kind, TraceEvent, Via};

/// One interval on a lane: a token held, or a request waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The process.
    pub pid: u32,
    /// From, in `CLOCK_MONOTONIC` nanoseconds.
    pub start: u64,
    /// To.
    pub end: u64,
    /// Its row in the lane, from 0.
    pub row: usize,
    /// How the request asked.
    pub via: Option<Via>,
    /// Still open when the trace ended.
    pub open: bool,
}

/// One build's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// The build, or `None` for events of processes without one.
    pub build: Option<u64>,
    /// Its processes, in the order first seen.
    pub pids: Vec<u32>,
    /// The command line of its first process that the trace names (a `join` event's).
    pub command: Option<String>,
    /// The tokens it held.
    pub holds: Vec<Interval>,
    /// The requests that waited.
    pub waits: Vec<Interval>,
    /// Rows its holds take (the most held at once), and its waits.
    pub hold_rows: usize,
    /// Rows its waits take.
    pub wait_rows: usize,
}

/// A moment of the pool: its books from an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPoint {
    /// When.
    pub at: u64,
    /// The books right after.
    pub books: Books,
}

/// A change worth a mark: the pool resized, a limit, a pressure change, a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When.
    pub at: u64,
    /// What.
    pub kind: Kind,
    /// Its figure (new size, allowance, tokens recovered).
    pub tokens: usize,
    /// What the limits saw, for pressure.
    pub note: Option<String>,
}

/// A trace as intervals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeline {
    /// The first and last event's time.
    pub start: u64,
    /// The last event's time.
    pub end: u64,
    /// One lane per build, by build number (processes without one last).
    pub lanes: Vec<Lane>,
    /// The pool's books, event by event.
    pub pool: Vec<PoolPoint>,
    /// Resizes, limits, pressure changes and recoveries.
    pub marks: Vec<Mark>,
}

#[derive(Default)]
struct Open {
    holds: VecDeque<(u64, Option<Via>)>,
    waits: VecDeque<(u64, Option<Via>)>,
}

impl Timeline {
    /// The timeline of `events` (oldest first).
    pub fn of(events: &[TraceEvent]) -> Timeline {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Timeline::default();
        };
        let (start, end) = (first.mono_ns, last.mono_ns.max(first.mono_ns));
        let mut open: HashMap<u32, Open> = HashMap::new();
        let mut build_of: HashMap<u32, Option<u64>> = HashMap::new();
        let mut lanes: BTreeMap<(bool, u64), Lane> = BTreeMap::new();
        let mut pool = Vec::new();
        let mut marks = Vec::new();
        let lane_key = |build: Option<u64>| (build.is_none(), build.unwrap_or(0));
        for event in events {
            let record = &event.record;
            let at = event.mono_ns;
            if let Some(books) = record.books {
                pool.push(PoolPoint { at, books });
            }
            if matches!(record.event, Kind::Jobs | Kind::Limit | Kind::Pressure | Kind::Recovery) {
                marks.push(Mark {
                    at,
                    kind: record.event,
                    tokens: record.tokens,
                    note: record.note.clone(),
                });
            }
            let Some(pid) = record.pid else { continue };
            let build = *build_of.entry(pid).or_insert(record.build);
            let lane = lanes.entry(lane_key(build)).or_insert_with(|| Lane {
                build,
                pids: Vec::new(),
                command: None,
                holds: Vec::new(),
                waits: Vec::new(),
                hold_rows: 0,
                wait_rows: 0,
            });
            if !lane.pids.contains(&pid) {
                lane.pids.push(pid);
            }
            let mine = open.entry(pid).or_default();
            let close = |from: Option<(u64, Option<Via>)>, into: &mut Vec<Interval>| {
                if let Some((from, via)) = from {
                    into.push(Interval { pid, start: from, end: at, row: 0, via, open: false });
                }
            };
            match record.event {
                Kind::Grant => {
                    if record.waited_ns.is_some() {
                        close(mine.waits.pop_front(), &mut lane.waits);
                    }
                    mine.holds.push_back((at, record.via));
                }
                Kind::Return | Kind::Expiry => close(mine.holds.pop_front(), &mut lane.holds),
                Kind::Reclaim => {
                    for _ in 0..record.tokens {
                        close(mine.holds.pop_front(), &mut lane.holds);
                    }
                }
                Kind::Wait => mine.waits.push_back((at, record.via)),
                Kind::Join if lane.command.is_none() => lane.command.clone_from(&record.note),
                Kind::Cancel => close(mine.waits.pop_front(), &mut lane.waits),
                _ => {}
            }
        }
        // What is still open ends with the trace.
        for (pid, mine) in open {
            let lane = lanes.get_mut(&lane_key(build_of[&pid])).expect("a lane per process");
            let ends = |from: VecDeque<(u64, Option<Via>)>, into: &mut Vec<Interval>| {
                into.extend(from.into_iter().map(|(start, via)| Interval {
                    pid,
                    start,
                    end,
                    row: 0,
                    via,
                    open: true,
                }));
            };
            ends(mine.holds, &mut lane.holds);
            ends(mine.waits, &mut lane.waits);
        }
        let mut lanes: Vec<Lane> = lanes.into_values().collect();
        for lane in &mut lanes {
            lane.hold_rows = assign_rows(&mut lane.holds);
            lane.wait_rows = assign_rows(&mut lane.waits);
        }
        Timeline { start, end, lanes, pool, marks }
    }

    /// Every hold, on every lane.
    pub fn holds(&self) -> impl Iterator<Item = (&Lane, &Interval)> {
        self.lanes.iter().flat_map(|lane| lane.holds.iter().map(move |hold| (lane, hold)))
    }
}

/// Sorts `intervals` by start and gives each the lowest row free at its start; returns the rows
/// used.
fn assign_rows(intervals: &mut [Interval]) -> usize {
    intervals.sort_by_key(|interval| (interval.start, interval.end, interval.pid));
    let mut row_ends: Vec<u64> = Vec::new();
    for interval in intervals.iter_mut() {
        let free = row_ends.iter().position(|end| *end <= interval.start);
        let row = free.unwrap_or(row_ends.len());
        if row == row_ends.len() {
            row_ends.push(interval.end);
        } else {
            row_ends[row] = interval.end;
        }
        interval.row = row;
    }
    row_ends.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Record, Ring};

    fn timeline(records: &[(u64, Record)]) -> Timeline {
        let mut ring = Ring::new(64);
        for (at, record) in records {
            ring.push(record.clone(), *at);
        }
        Timeline::of(&ring.from(0, 64).events)
    }

    #[test]
    fn holds_and_waits_pair_up_per_process_and_rows_stack() {
        let grant = |pid| Record::new(Kind::Grant).pid(pid).build(Some(pid as u64 / 10));
        let back = |pid| Record::new(Kind::Return).pid(pid).build(Some(pid as u64 / 10));
        let timeline = timeline(&[
            (0, grant(10)),
            (1, grant(11)),
            (2, Record::new(Kind::Wait).pid(20).build(Some(2))),
            (3, back(10)),
            (3, grant(20).waited_ns(1)),
            (4, grant(10)),
            (6, Record::new(Kind::Reclaim).pid(20).tokens(1).build(Some(2))),
            (7, Record::new(Kind::Limit).tokens(1)),
            (8, back(11)),
        ]);
        assert_eq!(
            timeline.lanes.iter().map(|lane| lane.build).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        let first = &timeline.lanes[0];
        assert_eq!(first.pids, [10, 11]);
        let spans: Vec<(u32, u64, u64, usize, bool)> =
            first.holds.iter().map(|h| (h.pid, h.start, h.end, h.row, h.open)).collect();
        // 10's second hold reuses the row its first left; it is still open at the end.
        assert_eq!(spans, [(10, 0, 3, 0, false), (11, 1, 8, 1, false), (10, 4, 8, 0, true)]);
        assert_eq!(first.hold_rows, 2);
        let second = &timeline.lanes[1];
        assert_eq!((second.holds[0].start, second.holds[0].end), (3, 6));
        assert_eq!((second.waits[0].start, second.waits[0].end), (2, 3));
        assert_eq!(timeline.marks.len(), 1);
        assert_eq!((timeline.start, timeline.end), (0, 8));
        assert_eq!(timeline.holds().count(), 4);
    }
}
