//! Property tests of the device semantics: random reads, writes, polls, interrupts, exits, pool
//! changes and the passing of time, with the books checked after every step, every waiting read
//! settled exactly once and for its own process, and the pool whole once everyone has gone; and
//! the event trace, replayed, gives the same books at every event and the same queue.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use steve_core::accounting::device::{Device, Event, PollHandle, ReadOutcome, RequestId};
use steve_core::accounting::pool::{JobCount, Pool};
use steve_core::trace::Kind;

const RESERVE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
enum Op {
    Read { pid: u32, nonblocking: bool },
    Write { pid: u32, count: usize },
    Poll { pid: u32, notify: bool },
    Interrupt { nth: usize },
    Exit { pid: u32 },
    Advance { millis: u64 },
    SetJobs(usize),
    SetAllowance(Option<usize>),
    SetPerProcessLimit(Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..5, any::<bool>()).prop_map(|(pid, nonblocking)| Op::Read { pid, nonblocking }),
        4 => (1u32..5, 1usize..3).prop_map(|(pid, count)| Op::Write { pid, count }),
        3 => (1u32..5, any::<bool>()).prop_map(|(pid, notify)| Op::Poll { pid, notify }),
        1 => (0usize..4).prop_map(|nth| Op::Interrupt { nth }),
        1 => (1u32..5).prop_map(|pid| Op::Exit { pid }),
        2 => (0u64..800).prop_map(|millis| Op::Advance { millis }),
        1 => (1usize..5).prop_map(Op::SetJobs),
        1 => proptest::option::of(0usize..4).prop_map(Op::SetAllowance),
        1 => proptest::option::of(1usize..3).prop_map(Op::SetPerProcessLimit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn device_books_balance_and_every_waiting_read_is_settled_once(
        jobs in 0usize..4,
        ops in proptest::collection::vec(op(), 0..100),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut device = Device::over(Pool::with_target(jobs), RESERVE);
        device.set_tracing(true, now);
        let mut replay = Replay::default();
        let mut next_request = 0u64;
        // Reads waiting for an answer, with their process.
        let mut waiting: HashMap<RequestId, u32> = HashMap::new();
        let mut order: Vec<RequestId> = Vec::new();

        for op in ops {
            match op {
                Op::Read { pid, nonblocking } => {
                    next_request += 1;
                    let request = RequestId(next_request);
                    let before = device.held_by(pid);
                    match device.read(pid, request, nonblocking, now) {
                        ReadOutcome::Token => prop_assert_eq!(device.held_by(pid), before + 1),
                        ReadOutcome::Pending => {
                            prop_assert!(!nonblocking);
                            waiting.insert(request, pid);
                            order.push(request);
                        }
                        ReadOutcome::WouldBlock => prop_assert!(nonblocking),
                    }
                }
                Op::Write { pid, count } => {
                    let before = device.held_by(pid);
                    match device.write(pid, count, now) {
                        Ok(accepted) => {
                            prop_assert!(accepted >= 1 && accepted <= count);
                            // Held tokens, or one grace return by a process holding none.
                            prop_assert!(accepted <= before.max(1), "{} of {}", accepted, before);
                        }
                        Err(_) => prop_assert_eq!(before, 0),
                    }
                }
                Op::Poll { pid, notify } => {
                    let handle = notify.then_some(PollHandle(u64::from(pid)));
                    if device.poll(pid, handle, now) {
                        // Readable means a read now gets a token without waiting.
                        next_request += 1;
                        let outcome = device.read(pid, RequestId(next_request), true, now);
                        prop_assert_eq!(outcome, ReadOutcome::Token);
                    }
                }
                Op::Interrupt { nth } => {
                    if let Some(request) = order.get(nth).copied() {
                        let was_waiting = waiting.remove(&request).is_some();
                        prop_assert_eq!(device.interrupt(request, now), was_waiting);
                    }
                }
                Op::Exit { pid } => {
                    device.process_exited(pid, now);
                    prop_assert!(!device.knows(pid));
                    prop_assert_eq!(device.held_by(pid), 0);
                }
                Op::Advance { millis } => {
                    now += Duration::from_millis(millis);
                    device.expire(now);
                    if let Some(deadline) = device.next_deadline() {
                        prop_assert!(deadline > now);
                    }
                }
                Op::SetJobs(jobs) => device.set_jobs(JobCount::new(jobs).unwrap(), now),
                Op::SetAllowance(allowance) => device.set_allowance(allowance, now),
                Op::SetPerProcessLimit(limit) => device.set_per_process_limit(limit, now),
            }
            for event in device.take_events() {
                match event {
                    Event::Answer { request, pid } => {
                        prop_assert_eq!(waiting.remove(&request), Some(pid), "answered twice or for another");
                    }
                    Event::Interrupted { request } => {
                        prop_assert!(waiting.remove(&request).is_some(), "interrupted twice");
                    }
                    Event::Wake { pid, .. } => {
                        // The woken poller can read at once.
                        prop_assert!(device.poll(pid, None, now));
                    }
                }
            }
            prop_assert!(device.is_consistent(), "{:?}", device);
            replay.apply(&mut device)?;
        }

        // Everyone leaves; every waiting read is settled and the pool is whole.
        device.set_allowance(None, now);
        device.set_per_process_limit(None, now);
        for pid in 1..5 {
            device.process_exited(pid, now);
            for event in device.take_events() {
                if let Event::Answer { request, .. } | Event::Interrupted { request } = event {
                    prop_assert!(waiting.remove(&request).is_some());
                }
            }
        }
        replay.apply(&mut device)?;
        // Later exits can grant to earlier-exited pids only through new requests: none remain.
        prop_assert!(waiting.is_empty(), "reads never settled: {:?}", waiting);
        let counts = device.counts();
        prop_assert_eq!((counts.held, counts.lent, device.waiters().len()), (0, 0, 0));
        prop_assert_eq!((counts.size, counts.free), (counts.target, counts.target));
    }
}

/// The books and the queue as the trace tells them, from a pool of nothing held and none
/// waiting.
#[derive(Default)]
struct Replay {
    held: HashMap<u32, usize>,
    queued: HashMap<u32, usize>,
}

impl Replay {
    /// Applies the device's new trace records, checking each event's books against the
    /// replayed holdings, and the replay against the device afterwards.
    fn apply(&mut self, device: &mut Device) -> Result<(), TestCaseError> {
        for (_, record) in device.take_trace() {
            let pid = record.pid;
            let change = |map: &mut HashMap<u32, usize>, up: bool, by: usize| {
                let entry = map.entry(pid.expect("a process's event")).or_insert(0);
                *entry =
                    if up { *entry + by } else { entry.checked_sub(by).expect("never below 0") };
            };
            match record.event {
                Kind::Grant => {
                    change(&mut self.held, true, 1);
                    if record.waited_ns.is_some() {
                        change(&mut self.queued, false, 1);
                    }
                }
                Kind::Return | Kind::Expiry => change(&mut self.held, false, 1),
                Kind::Reclaim => change(&mut self.held, false, record.tokens),
                Kind::Wait => change(&mut self.queued, true, 1),
                Kind::Cancel => change(&mut self.queued, false, 1),
                _ => {}
            }
            if let Some(books) = record.books {
                prop_assert!(books.balance(), "{:?}", record);
                prop_assert_eq!(books.held, self.held.values().sum::<usize>(), "{:?}", record);
            }
        }
        prop_assert_eq!(self.held.values().sum::<usize>(), device.counts().held);
        prop_assert_eq!(self.queued.values().sum::<usize>(), device.waiters().len());
        for (pid, held) in &self.held {
            // A reservation is held in the books, not by the process yet.
            prop_assert!(device.held_by(*pid) <= *held && *held <= device.held_by(*pid) + 1);
        }
        Ok(())
    }
}
