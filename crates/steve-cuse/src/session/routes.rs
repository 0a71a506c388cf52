//! Where each waiting read came from, so that its answer goes back the same way: a clone of
//! the connection, a ring entry, a queue's entry. Reads on the first channel are not kept
//! (an unknown request goes there), so a server on one channel keeps nothing here.
//!
//! Kept by request and counted by process, so that forgetting an exited process's reads costs
//! nothing when it had none left (the device answers them as it exits): a walk of every
//! waiting read per exit would grow with the number of clients.

use std::collections::HashMap;

use steve_core::accounting::device::Pid;

/// Where a request came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Channel `n`: the connection, or a clone of it.
    Channel(usize),
    /// Ring entry `n`.
    Ring(u32),
    /// Entry `entry` of the ring of queue `queue`, served by a thread of its own.
    Queue(u16, u32),
}

/// The routes of the reads that wait, by the kernel's request id.
#[derive(Debug, Default)]
pub(super) struct WaitingRoutes {
    by_request: HashMap<u64, (Route, Pid)>,
    /// How many of them each process has.
    per_process: HashMap<Pid, usize>,
}

impl WaitingRoutes {
    /// Remembers that read `unique` of `pid` waits and came by `route`.
    pub(super) fn insert(&mut self, unique: u64, route: Route, pid: Pid) {
        if let Some((_, earlier)) = self.by_request.insert(unique, (route, pid)) {
            self.count_off(earlier);
        }
        *self.per_process.entry(pid).or_insert(0) += 1;
    }

    /// Where read `unique` came from, forgotten now it is answered (the first channel if it
    /// is not known).
    pub(super) fn take(&mut self, unique: u64) -> Route {
        if self.by_request.is_empty() {
            return Route::Channel(0);
        }
        match self.by_request.remove(&unique) {
            Some((route, pid)) => {
                self.count_off(pid);
                route
            }
            None => Route::Channel(0),
        }
    }

    /// Forgets what is left of `pid`'s reads (it exited).
    pub(super) fn forget_process(&mut self, pid: Pid) {
        if self.per_process.remove(&pid).is_some() {
            self.by_request.retain(|_, (_, waiter)| *waiter != pid);
        }
    }

    /// The waiting reads with their routes and callers.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, Route, Pid)> + '_ {
        self.by_request.iter().map(|(unique, (route, pid))| (*unique, *route, *pid))
    }

    fn count_off(&mut self, pid: Pid) {
        if let Some(count) = self.per_process.get_mut(&pid) {
            *count -= 1;
            if *count == 0 {
                self.per_process.remove(&pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_reads_are_forgotten_and_an_exit_forgets_what_is_left() {
        let mut routes = WaitingRoutes::default();
        assert_eq!(routes.take(1), Route::Channel(0));
        routes.insert(1, Route::Channel(1), 10);
        routes.insert(2, Route::Ring(7), 10);
        routes.insert(3, Route::Queue(1, 2), 20);
        assert_eq!(routes.take(2), Route::Ring(7));
        assert_eq!(routes.take(2), Route::Channel(0));
        // Process 10 exits with read 1 still kept; 20's stays.
        routes.forget_process(10);
        assert_eq!(routes.iter().collect::<Vec<_>>(), [(3, Route::Queue(1, 2), 20)]);
        assert_eq!(routes.take(1), Route::Channel(0));
        // Answered before its exit, 20 leaves nothing to forget.
        assert_eq!(routes.take(3), Route::Queue(1, 2));
        assert!(routes.per_process.is_empty() && routes.by_request.is_empty());
        routes.forget_process(20);
    }
}
