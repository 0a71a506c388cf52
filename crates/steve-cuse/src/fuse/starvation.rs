//! A FUSE ring queue starved of entries, and how the server gets it going again.
//!
//! The kernel hands a request to an entry of its caller's CPU's queue; with none free it
//! queues the request, and hands a queued request only to an entry that commits an answer,
//! never to one newly registered. A jobserver keeps requests: every read that waits for a token
//! holds its entry. So a burst of blocking reads on one CPU faster than the server registers
//! spares (or beyond the ring's cap) can leave requests queued behind entries that all hold
//! waiting reads, and if one of the queued requests is a token coming back, nothing commits
//! again: every client of the pool hangs. Measured: 32 clients on a 4-token pool hung about one
//! start in five; twenty reads and a return piled up while the server was stopped hung always.
//!
//! The server cannot see the kernel's queue. It sees when it may have filled: the kernel takes
//! the most recently armed entry first (its free entries are a stack), so a queue may have run
//! dry when an entry armed before every entry still in the kernel comes back. From then on the
//! queue is *starved* until shown otherwise: an entry that committed since and is still in the
//! kernel found nothing queued. When the ring has been quiet for [`KICK_AFTER`] and nothing
//! shows it, the server answers one waiting read on that queue `EINTR`, as if its caller had
//! been signalled (the caller reads again, as make, cargo's jobserver and every client of a
//! signal-driven loop do): that commit fetches the first queued request. A fresh entry is
//! registered after it in the same submission, so the interrupted caller's next read goes to
//! the fresh one, and the kicked entry coming back means the kernel had queued a request for
//! it: then the next kick follows, else the queue is known to be empty again.
//!
//! This module is the bookkeeping alone, with no I/O: [`super::uring::Ring`] tells it what it
//! arms and reaps, and asks it what to kick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a starved queue's ring stays quiet before a waiting read is interrupted.
pub const KICK_AFTER: Duration = Duration::from_millis(10);

/// What the ring knows of a starved queue's entries when a kick is considered.
pub trait Entries {
    /// Whether entry `n` is in the kernel (armed, and not come back).
    fn in_kernel(&self, n: u32) -> bool;
    /// Whether an entry of `queue` committed an answer in epoch `since` or later and is still
    /// in the kernel.
    fn committed_and_kept(&self, queue: u16, since: u64) -> bool;
    /// An entry of `queue` that holds a waiting read, and the read's request id.
    fn parked(&self, queue: u16) -> Option<(u32, u64)>;
}

/// A queue's watch.
#[derive(Debug, Default)]
struct Watch {
    /// Its entries in the kernel, counted by the epoch they were armed in.
    armed: BTreeMap<u64, usize>,
    /// The earliest epoch among the entries that came back in the reap going on.
    oldest_back: Option<u64>,
    /// Starved since this epoch.
    starved_since: Option<u64>,
    /// The waiting read interrupted last.
    kicked: Option<Kick>,
    /// A fresh entry is wanted after the kick's commit.
    fresh_wanted: bool,
}

/// Every queue's watch, and the ring's epochs (one per reap of completions).
#[derive(Debug)]
pub struct Starvation {
    watches: Vec<Watch>,
    epoch: u64,
    quiet_since: Instant,
}

/// A waiting read to interrupt: its entry and request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kick {
    /// The entry that holds it.
    pub entry: u32,
    /// Its request id, which an INTERRUPT names.
    pub request: u64,
}

impl Starvation {
    /// Watches `queues` queues.
    pub fn new(queues: usize) -> Starvation {
        Starvation {
            watches: (0..queues).map(|_| Watch::default()).collect(),
            epoch: 0,
            quiet_since: Instant::now(),
        }
    }

    /// The epoch now: what an entry armed or committed now records.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// An entry of `queue` goes into the kernel now.
    pub fn arm(&mut self, queue: u16) {
        let epoch = self.epoch;
        *self.watches[usize::from(queue)].armed.entry(epoch).or_insert(0) += 1;
    }

    /// An entry of `queue`, armed in `epoch`, came back.
    pub fn back(&mut self, queue: u16, epoch: u64) {
        let watch = &mut self.watches[usize::from(queue)];
        if let Some(count) = watch.armed.get_mut(&epoch) {
            *count -= 1;
            if *count == 0 {
                watch.armed.remove(&epoch);
            }
        }
        watch.oldest_back = Some(watch.oldest_back.map_or(epoch, |oldest| oldest.min(epoch)));
    }

    /// A reap of completions ended (`came_back`: an entry came back in it). A queue from which
    /// an entry older than every entry left in the kernel came back may have run dry. The clock
    /// (`clock`) is read only while a queue is starved: a request's path reads none for this.
    /// Returns whether a queue was found to have run dry in it.
    pub fn reaped(&mut self, came_back: bool, clock: impl FnOnce() -> Instant) -> bool {
        let epoch = self.epoch;
        let mut found = false;
        for watch in &mut self.watches {
            let Some(oldest) = watch.oldest_back.take() else { continue };
            let dry = watch.armed.first_key_value().is_none_or(|(left, _)| oldest < *left);
            if dry {
                watch.starved_since = Some(epoch);
                found = true;
            }
        }
        if came_back && self.watches.iter().any(|watch| watch.starved_since.is_some()) {
            self.quiet_since = clock();
        }
        self.epoch += 1;
        found
    }

    /// Whether a fresh entry is wanted on `queue` (and it is about to be registered).
    pub fn take_fresh(&mut self, queue: u16) -> bool {
        std::mem::take(&mut self.watches[usize::from(queue)].fresh_wanted)
    }

    /// When the ring should look again ([`Starvation::kick`]) if nothing comes meanwhile:
    /// while a queue is starved, once it has been quiet for [`KICK_AFTER`].
    pub fn due(&self) -> Option<Instant> {
        let starved = self.watches.iter().any(|watch| watch.starved_since.is_some());
        starved.then(|| self.quiet_since + KICK_AFTER)
    }

    /// Looks at the starved queues at `now`, with every completion reaped: a queue shown to
    /// have nothing queued is starved no more; from one still starved and quiet, the waiting
    /// read to interrupt.
    pub fn kick(&mut self, now: Instant, entries: &dyn Entries) -> Option<Kick> {
        let quiet = now >= self.quiet_since + KICK_AFTER;
        for (queue, watch) in self.watches.iter_mut().enumerate() {
            let queue = queue as u16;
            let Some(since) = watch.starved_since else { continue };
            let last = watch.kicked;
            match last {
                // The kicked entry's commit fetched nothing: nothing was queued.
                Some(kicked) if entries.in_kernel(kicked.entry) => {
                    watch.kicked = None;
                    watch.starved_since = None;
                    continue;
                }
                // It came back with a queued request: there may be more.
                Some(_) => {}
                None if entries.committed_and_kept(queue, since) => {
                    watch.starved_since = None;
                    continue;
                }
                None => {}
            }
            if !quiet {
                continue;
            }
            let Some((entry, request)) = entries.parked(queue) else {
                // No entry holds a waiting read: each has committed since, and found nothing.
                watch.kicked = None;
                watch.starved_since = None;
                continue;
            };
            let kick = Kick { entry, request };
            if last == Some(kick) {
                // The last interrupt answered nothing (the read was not waiting): kicking on
                // would only spin; the next burst that starves the queue says so again.
                watch.kicked = None;
                watch.starved_since = None;
                continue;
            }
            watch.kicked = Some(kick);
            watch.fresh_wanted = true;
            // The next look comes after another quiet spell at the soonest, never at once.
            self.quiet_since = now;
            return Some(kick);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as a test sets them: which are in the kernel, committed when, parked.
    #[derive(Default)]
    struct Facts {
        in_kernel: Vec<u32>,
        committed_and_kept: bool,
        parked: Option<(u32, u64)>,
    }

    impl Entries for Facts {
        fn in_kernel(&self, n: u32) -> bool {
            self.in_kernel.contains(&n)
        }
        fn committed_and_kept(&self, _: u16, _: u64) -> bool {
            self.committed_and_kept
        }
        fn parked(&self, _: u16) -> Option<(u32, u64)> {
            self.parked
        }
    }

    /// One entry of `queue` armed, then back with nothing left in the kernel, at `at`.
    fn run_dry(watch: &mut Starvation, queue: u16, at: Instant) {
        watch.arm(queue);
        let _ = watch.reaped(false, || at);
        watch.back(queue, watch.epoch() - 1);
        assert!(watch.reaped(true, || at), "the queue ran dry");
    }

    #[test]
    fn a_queue_is_starved_only_when_its_oldest_armed_entry_comes_back() {
        let mut watch = Starvation::new(1);
        let start = Instant::now();
        // Eight spares armed in epoch 0; a request takes the newest (epoch 1's commit), twice.
        for _ in 0..8 {
            watch.arm(0);
        }
        let _ = watch.reaped(false, || start);
        watch.arm(0);
        let _ = watch.reaped(false, || start);
        watch.back(0, 1);
        let _ = watch.reaped(true, || start);
        assert_eq!(watch.due(), None, "a spare from epoch 0 is still in the kernel");
        // A burst takes all eight spares of epoch 0: the queue may have run dry.
        for _ in 0..8 {
            watch.back(0, 0);
        }
        watch.arm(0); // registered in this epoch, too late for the burst
        let _ = watch.reaped(true, || start);
        assert_eq!(watch.due(), Some(start + KICK_AFTER));
    }

    #[test]
    fn a_starved_queue_is_kicked_when_quiet_until_a_kick_fetches_nothing() {
        let (mut watch, start) = (Starvation::new(1), Instant::now());
        run_dry(&mut watch, 0, start);
        let parked = Facts { parked: Some((3, 77)), ..Facts::default() };
        // Not quiet yet: nothing; then entry 3's read is interrupted, with a fresh entry after.
        assert_eq!(watch.kick(start, &parked), None);
        let later = start + KICK_AFTER;
        assert_eq!(watch.kick(later, &parked), Some(Kick { entry: 3, request: 77 }));
        assert!(watch.take_fresh(0) && !watch.take_fresh(0));
        // Entry 3 came back with a queued request, which waits too: the next kick, after
        // another quiet spell.
        let parked_again = Facts { parked: Some((3, 78)), ..Facts::default() };
        assert_eq!(watch.due(), Some(later + KICK_AFTER));
        assert_eq!(watch.kick(later, &parked_again), None);
        let after = later + KICK_AFTER;
        assert_eq!(watch.kick(after, &parked_again), Some(Kick { entry: 3, request: 78 }));
        // This time its commit fetched nothing: starved no more, nothing due.
        let kept = Facts { in_kernel: vec![3], parked: Some((5, 79)), ..Facts::default() };
        assert_eq!(watch.kick(after + KICK_AFTER, &kept), None);
        assert_eq!(watch.due(), None);
    }

    #[test]
    fn an_interrupt_that_answers_nothing_is_not_repeated() {
        let (mut watch, start) = (Starvation::new(1), Instant::now());
        run_dry(&mut watch, 0, start);
        let parked = Facts { parked: Some((2, 9)), ..Facts::default() };
        assert_eq!(watch.kick(start + KICK_AFTER, &parked), Some(Kick { entry: 2, request: 9 }));
        // The same read still waits on the same entry: the kick changed nothing; give up.
        assert_eq!(watch.kick(start + 2 * KICK_AFTER, &parked), None);
        assert_eq!(watch.due(), None);
    }

    #[test]
    fn an_answer_that_stays_in_the_kernel_shows_the_queue_empty() {
        let (mut watch, start) = (Starvation::new(2), Instant::now());
        run_dry(&mut watch, 1, start);
        let kept = Facts { committed_and_kept: true, parked: Some((1, 5)), ..Facts::default() };
        assert_eq!(watch.kick(start + KICK_AFTER, &kept), None);
        assert_eq!(watch.due(), None);
        // Starved again with no waiting read held anywhere: nothing to kick, and nothing queued.
        run_dry(&mut watch, 1, start);
        assert_eq!(watch.kick(start + KICK_AFTER, &Facts::default()), None);
        assert_eq!(watch.due(), None);
    }
}
