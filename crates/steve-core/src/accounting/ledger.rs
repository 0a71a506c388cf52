//! The token ledger: who holds the pool's tokens, and who waits for one.
//!
//! The ledger is pure bookkeeping, with no I/O and no clock, so every per-process transport
//! (character device, FUSE file) and every test can drive it the same way. A *client* is whatever
//! the transport accounts by: a process id for the device backends. The counts themselves
//! (`free + held + withheld == size`, resizing, the allowance, lending) are the [`Pool`]'s,
//! which the fifo backend uses directly; the ledger adds holdings per client, per build and per
//! user, one queue of waiters served by the [`Shares`] policy (fair shares between builds by
//! default, see [`super::shares`]), reclaim, a per-client limit and per-user caps.
//!
//! A client's build and user are set with [`Ledger::set_owner`]; a client never given one is a
//! build of its own, of an unknown user.
//!
//! A client that hands back its implicit token before taking any (a grace return) lends it to
//! the pool for as long as it lives; [`Ledger::repay`] retires it again the same way a shrink
//! would.
//!
//! ```
//! use steve_core::accounting::ledger::{Acquire, Ledger, Wait};
//! use steve_core::accounting::pool::JobCount;
//!
//! let mut ledger = Ledger::new(JobCount::new(1).unwrap());
//! assert_eq!(ledger.acquire("make", Wait::Queue), Acquire::Granted);
//! let Acquire::Queued(waiter) = ledger.acquire("ninja", Wait::Queue) else { panic!() };
//! let grants = ledger.release(&"make").unwrap();
//! assert_eq!(grants[0].waiter, waiter);
//! assert_eq!(ledger.held_by(&"ninja"), 1);
//! ```
#![forbid(unsafe_code)]

use rustc_hash::FxHashMap;
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

pub use super::pool::Counts;
use super::pool::{JobCount, Pool};
use super::queue::{GroupKey, WaitQueue};
use super::shares::{BuildId, Fairness, Owner, Shares, Standing, Uid, UNKNOWN_USER};

/// Identifies one queued request, so a transport can answer it when it is granted or drop it
/// when the caller gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WaiterId(pub(super) u64);

impl fmt::Display for WaiterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "waiter#{}", self.0)
    }
}

/// Whether a request that cannot be granted now may wait in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Queue behind earlier waiters (a blocking read).
    Queue,
    /// Fail at once (a read with `O_NONBLOCK`, answered with `EAGAIN`).
    NoWait,
}

/// What became of a request for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// The client holds one more token now.
    Granted,
    /// Nothing is free; the request waits in the queue under this id.
    Queued(WaiterId),
    /// Nothing is free and the request asked not to wait.
    WouldBlock,
}

/// A queued request that was just granted: the transport must now answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<C> {
    /// The request that was granted.
    pub waiter: WaiterId,
    /// Who now holds the token.
    pub client: C,
}

/// The ledger refused a return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The client returned a token it does not hold (a device answers `ENOSPC`).
    NotHeld,
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::NotHeld => f.write_str("token returned by a client that holds none"),
        }
    }
}

impl std::error::Error for LedgerError {}

/// What reclaiming a departed client freed and granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed<C> {
    /// Tokens the client held when it went away.
    pub tokens: usize,
    /// Its requests that were still queued; they are gone from the queue now.
    pub cancelled: Vec<WaiterId>,
    /// Queued requests of other clients that the reclaimed tokens granted.
    pub grants: Vec<Grant<C>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Waiter<C> {
    id: WaiterId,
    client: C,
}

/// The token pool with per-client holdings and one queue of waiters served by fair shares.
/// Serializable for a handover to a successor server ([`crate::handover`]): the queue goes as a
/// list of its requests, oldest first, and the successor files them anew.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "C: Serialize + Clone + Eq + Hash",
    deserialize = "C: Deserialize<'de> + Clone + Eq + Hash + fmt::Debug"
))]
#[serde(from = "LedgerWire<C>")]
pub struct Ledger<C> {
    /// The counts; the ledger adds who holds what and who waits.
    pool: Pool,
    /// How many tokens one client may hold; `None` is no limit.
    per_client_limit: Option<usize>,
    holders: FxHashMap<C, usize>,
    #[serde(serialize_with = "queue_as_list")]
    queue: WaitQueue<C>,
    next_waiter: u64,
    /// The policy, with its weights and caps.
    shares: Shares,
    /// Each client's build and user, from the first time it was seen.
    owners: FxHashMap<C, Owner>,
    /// Tokens held by each build and each user (no zero entries).
    build_held: FxHashMap<BuildId, usize>,
    user_held: FxHashMap<Uid, usize>,
    /// Builds for clients never given an owner count down from the top of the range.
    next_own_build: u64,
    /// Tokens handed out so far, and the count when each build and user was last handed one:
    /// among groups that hold as much, the one served longest ago goes first.
    handed_out: u64,
    build_served: FxHashMap<BuildId, u64>,
    user_served: FxHashMap<Uid, u64>,
    /// How many clients each build has (its record goes with its last one).
    #[serde(skip)]
    build_clients: FxHashMap<BuildId, usize>,
}

/// A ledger as a handover carries it: the queue a list of requests.
#[derive(Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de> + Eq + Hash"))]
struct LedgerWire<C> {
    pool: Pool,
    per_client_limit: Option<usize>,
    holders: FxHashMap<C, usize>,
    queue: Vec<Waiter<C>>,
    next_waiter: u64,
    shares: Shares,
    owners: FxHashMap<C, Owner>,
    build_held: FxHashMap<BuildId, usize>,
    user_held: FxHashMap<Uid, usize>,
    next_own_build: u64,
    handed_out: u64,
    build_served: FxHashMap<BuildId, u64>,
    user_served: FxHashMap<Uid, u64>,
}

impl<C: Clone + Eq + Hash + fmt::Debug> From<LedgerWire<C>> for Ledger<C> {
    fn from(wire: LedgerWire<C>) -> Ledger<C> {
        let mut ledger = Ledger {
            pool: wire.pool,
            per_client_limit: wire.per_client_limit,
            holders: wire.holders,
            queue: WaitQueue::default(),
            next_waiter: wire.next_waiter,
            shares: wire.shares,
            owners: wire.owners,
            build_held: wire.build_held,
            user_held: wire.user_held,
            next_own_build: wire.next_own_build,
            handed_out: wire.handed_out,
            build_served: wire.build_served,
            user_served: wire.user_served,
            build_clients: FxHashMap::default(),
        };
        for owner in ledger.owners.values() {
            *ledger.build_clients.entry(owner.build).or_insert(0) += 1;
        }
        for Waiter { id, client } in wire.queue {
            ledger.ensure_owner(&client);
            let group = ledger.group_of(ledger.owner_or_own(&client));
            let (standing, served) = ledger.stands(group);
            ledger.queue.push(id, client, group, standing, served);
        }
        ledger
    }
}

/// Writes the queue as the list [`LedgerWire`] reads.
fn queue_as_list<C: Serialize + Clone + Eq + Hash, S: serde::Serializer>(
    queue: &WaitQueue<C>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(queue.iter().map(|(id, client)| Waiter { id, client: client.clone() }))
}

impl<C: Clone + Eq + Hash + fmt::Debug> Ledger<C> {
    /// A ledger of `jobs` free tokens.
    pub fn new(jobs: JobCount) -> Self {
        Ledger::over(Pool::new(jobs))
    }

    /// A ledger over `pool` (an empty one, in tests).
    pub fn over(pool: Pool) -> Self {
        Ledger {
            pool,
            per_client_limit: None,
            holders: FxHashMap::default(),
            queue: WaitQueue::default(),
            next_waiter: 0,
            shares: Shares::default(),
            owners: FxHashMap::default(),
            build_held: FxHashMap::default(),
            user_held: FxHashMap::default(),
            next_own_build: u64::MAX,
            handed_out: 0,
            build_served: FxHashMap::default(),
            user_served: FxHashMap::default(),
            build_clients: FxHashMap::default(),
        }
    }

    /// Sets whose `client`'s tokens count as. Tokens it holds move with it to the new build
    /// and user (a build found to be part of a larger one joins it).
    pub fn set_owner(&mut self, client: C, owner: Owner) -> Vec<Grant<C>> {
        let held = self.held_by(&client);
        *self.build_clients.entry(owner.build).or_insert(0) += 1;
        let old = self.owners.insert(client.clone(), owner);
        if let Some(old) = old {
            decrease(&mut self.build_clients, old.build, 1);
            if held > 0 {
                decrease(&mut self.build_held, old.build, held);
                decrease(&mut self.user_held, old.user, held);
            }
        }
        if held > 0 {
            *self.build_held.entry(owner.build).or_insert(0) += held;
            *self.user_held.entry(owner.user).or_insert(0) += held;
        }
        let group = self.group_of(owner);
        let (standing, served) = self.stands(group);
        self.queue.move_client(&client, group, standing, served);
        if let Some(old) = old {
            self.restand(old);
        }
        self.restand(owner);
        self.settle()
    }

    /// The build and user `client`'s tokens count as.
    pub fn owner(&self, client: &C) -> Option<Owner> {
        self.owners.get(client).copied()
    }

    /// Changes the fairness policy, weights and caps; waiters a raised cap lets in are granted.
    pub fn set_shares(&mut self, shares: Shares) -> Vec<Grant<C>> {
        self.shares = shares;
        // The groups (builds or users) and their weights may have changed: file every request
        // anew (a change of policy is rare, a request's place is not).
        let mut queue = std::mem::take(&mut self.queue);
        queue
            .regroup(|client| self.group_of(self.owner_or_own(client)), |group| self.stands(group));
        self.queue = queue;
        self.settle()
    }

    /// The policy in force.
    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// Tokens held by the clients of `build`.
    pub fn held_by_build(&self, build: BuildId) -> usize {
        self.build_held.get(&build).copied().unwrap_or(0)
    }

    /// Tokens held by the clients of `user`.
    pub fn held_by_user(&self, user: Uid) -> usize {
        self.user_held.get(&user).copied().unwrap_or(0)
    }

    /// Asks for one token for `client`. A request never overtakes one already queued, and a
    /// client at the per-client limit waits (or is refused) until it returns one.
    pub fn acquire(&mut self, client: C, wait: Wait) -> Acquire {
        self.ensure_owner(&client);
        let outcome =
            if self.pool.counts().free > 0 && !self.has_eligible_waiter() && self.may_take(&client)
            {
                self.hand_out(&client);
                Acquire::Granted
            } else if wait == Wait::Queue {
                let id = WaiterId(self.next_waiter);
                self.next_waiter += 1;
                let group = self.group_of(self.owner_or_own(&client));
                let (standing, served) = self.stands(group);
                self.queue.push(id, client, group, standing, served);
                Acquire::Queued(id)
            } else {
                Acquire::WouldBlock
            };
        self.debug_check();
        outcome
    }

    /// Takes back one token from `client` and grants it on, if anyone waits.
    pub fn release(&mut self, client: &C) -> Result<Vec<Grant<C>>, LedgerError> {
        match self.holders.get_mut(client) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(client);
                }
            }
            None => return Err(LedgerError::NotHeld),
        }
        let owner = self.owner_or_own(client);
        decrease(&mut self.build_held, owner.build, 1);
        decrease(&mut self.user_held, owner.user, 1);
        self.restand(owner);
        self.pool.take_back(1);
        let grants = self.grant_waiters();
        self.debug_check();
        Ok(grants)
    }

    /// Forgets a client that went away: its tokens come back and its queued requests go.
    pub fn reclaim(&mut self, client: &C) -> Reclaimed<C> {
        let tokens = self.holders.remove(client).unwrap_or(0);
        let cancelled = self.queue.remove_client(client);
        if let Some(owner) = self.owners.remove(client) {
            decrease(&mut self.build_held, owner.build, tokens);
            decrease(&mut self.user_held, owner.user, tokens);
            // A build's record goes with its last client (a user's stays: uids are few).
            decrease(&mut self.build_clients, owner.build, 1);
            if !self.build_clients.contains_key(&owner.build) {
                self.build_served.remove(&owner.build);
            }
            self.restand(owner);
        }
        self.pool.take_back(tokens);
        let grants = self.grant_waiters();
        self.debug_check();
        Reclaimed { tokens, cancelled, grants }
    }

    /// Drops a queued request (the caller was interrupted or gave up). Returns whether it was
    /// still queued; a request already granted is not undone here: release its token instead.
    pub fn cancel(&mut self, waiter: WaiterId) -> bool {
        self.queue.remove(waiter).is_some()
    }

    /// Changes the configured number of tokens. Growing grants waiters at once; shrinking
    /// retires free tokens now and held ones as they come back.
    pub fn set_target(&mut self, target: JobCount) -> Vec<Grant<C>> {
        self.pool.set_target(target);
        self.settle()
    }

    /// A client lends one token to the pool (it returned its implicit token): the pool grows by
    /// one until [`Ledger::repay`].
    pub fn lend(&mut self) -> Vec<Grant<C>> {
        self.pool.lend();
        self.settle()
    }

    /// A lending client went away: the token it lent is retired, at once if one is free, else
    /// from the next return. Does nothing if nothing is lent.
    pub fn repay(&mut self) -> Vec<Grant<C>> {
        self.pool.repay();
        self.settle()
    }

    /// Limits how many tokens may be out with clients in total (`None`: no limit). Tokens above
    /// the allowance are withheld, never taken from a holder.
    pub fn set_allowance(&mut self, allowance: Option<usize>) -> Vec<Grant<C>> {
        self.pool.set_allowance(allowance);
        self.settle()
    }

    /// Limits how many tokens one client may hold (`None`: no limit). Nothing is taken back
    /// from a client above a lowered limit; it just gets no more until it is below.
    pub fn set_per_client_limit(&mut self, limit: Option<usize>) -> Vec<Grant<C>> {
        self.per_client_limit = limit;
        let grants = self.grant_waiters();
        self.debug_check();
        grants
    }

    /// How many tokens `client` holds.
    pub fn held_by(&self, client: &C) -> usize {
        self.holders.get(client).copied().unwrap_or(0)
    }

    /// Every client holding tokens, with its count.
    pub fn holdings(&self) -> impl Iterator<Item = (&C, usize)> {
        self.holders.iter().map(|(client, count)| (client, *count))
    }

    /// The queued requests, oldest first.
    pub fn waiters(&self) -> impl Iterator<Item = (WaiterId, &C)> {
        self.queue.iter()
    }

    /// The pool's counters as they are now.
    pub fn counts(&self) -> Counts {
        self.pool.counts()
    }

    /// Requests in the queue.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Whether the accounting is consistent: the pool's own invariant, holdings add up to
    /// `held`, per build and per user too, and no client that may take a token waits while one
    /// is free.
    pub fn is_consistent(&self) -> bool {
        let holdings: usize = self.holders.values().sum();
        let counts = self.pool.counts();
        let mut builds: FxHashMap<BuildId, usize> = FxHashMap::default();
        let mut users: FxHashMap<Uid, usize> = FxHashMap::default();
        for (client, count) in &self.holders {
            let Some(owner) = self.owners.get(client) else { return false };
            *builds.entry(owner.build).or_insert(0) += count;
            *users.entry(owner.user).or_insert(0) += count;
        }
        self.pool.is_consistent()
            && holdings == counts.held
            && self.holders.values().all(|count| *count > 0)
            && builds == self.build_held
            && users == self.user_held
            && (counts.free == 0 || !self.has_eligible_waiter())
            && self.queue.agrees(
                |client| self.group_of(self.owner_or_own(client)),
                |group| self.stands(group),
            )
    }

    /// Grants what a change of the pool freed, and checks the books.
    fn settle(&mut self) -> Vec<Grant<C>> {
        let grants = self.grant_waiters();
        self.debug_check();
        grants
    }

    fn debug_check(&self) {
        debug_assert!(self.is_consistent(), "ledger invariant broken: {self:?}");
    }

    /// Whether `client` is below the per-client limit and its user below its cap.
    fn may_take(&self, client: &C) -> bool {
        let user = self.owner_or_own(client).user;
        self.per_client_limit.is_none_or(|limit| self.held_by(client) < limit)
            && self.shares.cap(user).is_none_or(|cap| self.held_by_user(user) < cap)
    }

    fn has_eligible_waiter(&self) -> bool {
        if self.per_client_limit.is_none() && self.shares.user_caps.is_empty() {
            return !self.queue.is_empty();
        }
        self.queue.iter().any(|(_, client)| self.may_take(client))
    }

    /// Gives a client seen for the first time a build of its own.
    fn ensure_owner(&mut self, client: &C) {
        if !self.owners.contains_key(client) {
            let owner = Owner { build: BuildId(self.next_own_build), user: UNKNOWN_USER };
            self.next_own_build -= 1;
            self.owners.insert(client.clone(), owner);
            *self.build_clients.entry(owner.build).or_insert(0) += 1;
        }
    }

    fn owner_or_own(&self, client: &C) -> Owner {
        self.owners
            .get(client)
            .copied()
            .unwrap_or(Owner { build: BuildId(u64::MAX), user: UNKNOWN_USER })
    }

    /// The share group `owner`'s requests wait in: its build and user between builds (a
    /// build's share is weighed by its user's weight), its user otherwise (FIFO keeps users'
    /// groups too: caps are theirs).
    fn group_of(&self, owner: Owner) -> GroupKey {
        match self.shares.fairness {
            Fairness::Build => (owner.build.0, owner.user),
            Fairness::User | Fairness::Fifo => (u64::from(owner.user), 0),
        }
    }

    /// What `group` holds for its weight, and when it was last handed a token (0: never).
    fn stands(&self, group: GroupKey) -> (Standing, u64) {
        let (held, user, served) = match self.shares.fairness {
            Fairness::Build => {
                let build = BuildId(group.0);
                (self.held_by_build(build), group.1, self.build_served.get(&build))
            }
            Fairness::User | Fairness::Fifo => {
                let user = group.0 as Uid;
                (self.held_by_user(user), user, self.user_served.get(&user))
            }
        };
        let standing = Standing { held, weight: self.shares.weight(user) };
        (standing, served.copied().unwrap_or(0))
    }

    /// Refiles the groups whose standing is `owner`'s build's or user's, after it changed.
    fn restand(&mut self, owner: Owner) {
        let (mut from, last) = match self.shares.fairness {
            Fairness::Build => ((owner.build.0, 0), (owner.build.0, u32::MAX)),
            Fairness::User | Fairness::Fifo => {
                let user = u64::from(owner.user);
                ((user, 0), (user, 0))
            }
        };
        while let Some(group) = self.queue.first_group_in(from..=last) {
            let (standing, served) = self.stands(group);
            self.queue.restand(group, standing, served);
            match group.1.checked_add(1) {
                Some(user) if group != last => from = (group.0, user),
                _ => break,
            }
        }
    }

    /// The waiter the next free token goes to: under FIFO the oldest that may take one; under a
    /// fair policy the oldest of the group that holds the least for its weight, among equals
    /// the group served longest ago, then the older request (a group that asks again right
    /// after a grant does not keep the place its old request had).
    fn next_waiter(&self) -> Option<WaiterId> {
        let fifo = self.shares.fairness == Fairness::Fifo;
        self.queue.next(fifo, |client| self.may_take(client))
    }

    fn hand_out(&mut self, client: &C) {
        let handed = self.pool.hand_out();
        debug_assert!(handed, "a token was free");
        self.ensure_owner(client);
        let owner = self.owner_or_own(client);
        *self.holders.entry(client.clone()).or_insert(0) += 1;
        *self.build_held.entry(owner.build).or_insert(0) += 1;
        *self.user_held.entry(owner.user).or_insert(0) += 1;
        self.handed_out += 1;
        self.build_served.insert(owner.build, self.handed_out);
        self.user_served.insert(owner.user, self.handed_out);
        self.restand(owner);
    }

    /// Hands free tokens to waiters that may take one, in the order the policy says.
    fn grant_waiters(&mut self) -> Vec<Grant<C>> {
        let mut grants = Vec::new();
        while self.pool.counts().free > 0 {
            let Some(waiter) = self.next_waiter() else {
                break;
            };
            let client = self.queue.remove(waiter).expect("a waiter from the queue");
            self.hand_out(&client);
            grants.push(Grant { waiter, client });
        }
        grants
    }
}

/// Takes `count` from `key`'s entry, dropping it at zero.
fn decrease<K: Eq + Hash>(map: &mut FxHashMap<K, usize>, key: K, count: usize) {
    if count == 0 {
        return;
    }
    if let std::collections::hash_map::Entry::Occupied(mut entry) = map.entry(key) {
        *entry.get_mut() -= count.min(*entry.get());
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(n: usize) -> JobCount {
        JobCount::new(n).unwrap()
    }

    #[test]
    fn grants_until_empty_then_queues_in_order() {
        let mut ledger = Ledger::new(jobs(2));
        assert_eq!(ledger.acquire(1, Wait::Queue), Acquire::Granted);
        assert_eq!(ledger.acquire(2, Wait::Queue), Acquire::Granted);
        assert_eq!(ledger.acquire(3, Wait::NoWait), Acquire::WouldBlock);
        let Acquire::Queued(first) = ledger.acquire(3, Wait::Queue) else { panic!() };
        let Acquire::Queued(second) = ledger.acquire(4, Wait::Queue) else { panic!() };
        let grants = ledger.release(&1).unwrap();
        assert_eq!(grants, vec![Grant { waiter: first, client: 3 }]);
        let grants = ledger.release(&2).unwrap();
        assert_eq!(grants, vec![Grant { waiter: second, client: 4 }]);
        assert_eq!(ledger.counts().held, 2);
        assert_eq!(ledger.waiting(), 0);
    }

    #[test]
    fn a_new_request_does_not_overtake_the_queue() {
        let mut ledger = Ledger::new(jobs(1));
        ledger.acquire(1, Wait::Queue);
        let Acquire::Queued(_) = ledger.acquire(2, Wait::Queue) else { panic!() };
        // The release grants the queued request at once, so nothing is free for a newcomer.
        ledger.release(&1).unwrap();
        assert_eq!(ledger.acquire(3, Wait::NoWait), Acquire::WouldBlock);
        assert_eq!(ledger.held_by(&2), 1);
    }

    #[test]
    fn returning_a_token_not_held_is_refused_and_changes_nothing() {
        let mut ledger = Ledger::new(jobs(2));
        ledger.acquire(1, Wait::Queue);
        let before = ledger.counts();
        assert_eq!(ledger.release(&2), Err(LedgerError::NotHeld));
        assert_eq!(ledger.counts(), before);
    }

    #[test]
    fn reclaim_returns_every_token_and_drops_the_clients_waiters() {
        let mut ledger = Ledger::new(jobs(3));
        for _ in 0..3 {
            ledger.acquire(1, Wait::Queue);
        }
        let Acquire::Queued(own) = ledger.acquire(1, Wait::Queue) else { panic!() };
        let Acquire::Queued(other) = ledger.acquire(2, Wait::Queue) else { panic!() };
        let reclaimed = ledger.reclaim(&1);
        assert_eq!(reclaimed.tokens, 3);
        assert_eq!(reclaimed.cancelled, vec![own]);
        assert_eq!(reclaimed.grants, vec![Grant { waiter: other, client: 2 }]);
        assert_eq!(ledger.counts().free, 2);
    }

    #[test]
    fn cancelled_waiter_is_not_granted() {
        let mut ledger = Ledger::new(jobs(1));
        ledger.acquire(1, Wait::Queue);
        let Acquire::Queued(waiter) = ledger.acquire(2, Wait::Queue) else { panic!() };
        assert!(ledger.cancel(waiter));
        assert!(!ledger.cancel(waiter));
        assert!(ledger.release(&1).unwrap().is_empty());
        assert_eq!(ledger.counts().free, 1);
    }

    #[test]
    fn growing_grants_waiters_at_once() {
        let mut ledger = Ledger::new(jobs(1));
        ledger.acquire(1, Wait::Queue);
        ledger.acquire(2, Wait::Queue);
        ledger.acquire(3, Wait::Queue);
        let grants = ledger.set_target(jobs(3));
        assert_eq!(grants.iter().map(|g| g.client).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(ledger.counts().size, 3);
    }

    #[test]
    fn shrinking_retires_free_tokens_now_and_held_tokens_as_they_return() {
        let mut ledger = Ledger::new(jobs(4));
        for client in 1..=3 {
            ledger.acquire(client, Wait::Queue);
        }
        ledger.set_target(jobs(1));
        let counts = ledger.counts();
        assert_eq!((counts.size, counts.free, counts.held), (3, 0, 3));
        // Nobody lost a token; the first two returns retire, the third becomes free.
        ledger.release(&1).unwrap();
        ledger.release(&2).unwrap();
        assert_eq!(ledger.counts().size, 1);
        assert_eq!(ledger.counts().free, 0);
        ledger.release(&3).unwrap();
        assert_eq!(ledger.counts().free, 1);
    }

    #[test]
    fn a_lent_token_grows_the_pool_until_repaid() {
        let mut ledger = Ledger::new(jobs(1));
        ledger.acquire(1, Wait::Queue);
        let Acquire::Queued(waiter) = ledger.acquire(2, Wait::Queue) else { panic!() };
        // Client 3 lends its implicit token: it goes to the waiting client at once.
        assert_eq!(ledger.lend(), vec![Grant { waiter, client: 2 }]);
        assert_eq!((ledger.counts().size, ledger.counts().lent), (2, 1));
        // The lender goes while both tokens are out: the next token returned is retired.
        assert!(ledger.repay().is_empty());
        assert_eq!(ledger.counts().size, 2);
        ledger.release(&1).unwrap();
        let counts = ledger.counts();
        assert_eq!((counts.size, counts.free, counts.held, counts.lent), (1, 0, 1, 0));
    }

    #[test]
    fn a_client_at_its_limit_waits_without_holding_up_the_queue() {
        let mut ledger = Ledger::new(jobs(3));
        ledger.set_per_client_limit(Some(1));
        assert_eq!(ledger.acquire(1, Wait::Queue), Acquire::Granted);
        assert_eq!(ledger.acquire(1, Wait::NoWait), Acquire::WouldBlock, "at its limit");
        let Acquire::Queued(capped) = ledger.acquire(1, Wait::Queue) else { panic!() };
        // Client 2, behind the capped client in the queue, is served at once.
        assert_eq!(ledger.acquire(2, Wait::Queue), Acquire::Granted);
        // Client 1 returns its token: its waiting request takes one again.
        let grants = ledger.release(&1).unwrap();
        assert_eq!(grants, vec![Grant { waiter: capped, client: 1 }]);
        // Raising the limit grants what was held back.
        let Acquire::Queued(more) = ledger.acquire(1, Wait::Queue) else { panic!() };
        assert_eq!(ledger.set_per_client_limit(Some(2)), vec![Grant { waiter: more, client: 1 }]);
    }

    #[test]
    fn allowance_withholds_without_taking_from_holders() {
        let mut ledger = Ledger::new(jobs(4));
        ledger.acquire(1, Wait::Queue);
        ledger.acquire(1, Wait::Queue);
        ledger.set_allowance(Some(1));
        let counts = ledger.counts();
        assert_eq!((counts.free, counts.held, counts.withheld), (0, 2, 2));
        assert_eq!(ledger.acquire(2, Wait::NoWait), Acquire::WouldBlock);
        let Acquire::Queued(_) = ledger.acquire(2, Wait::Queue) else { panic!() };
        // One return brings held to 1, still at the allowance: the waiter keeps waiting.
        assert!(ledger.release(&1).unwrap().is_empty());
        ledger.release(&1).unwrap();
        assert_eq!(ledger.held_by(&2), 1);
        let grants = ledger.set_allowance(None);
        assert!(grants.is_empty());
        assert_eq!(ledger.counts().free, 3);
    }

    fn owned(ledger: &mut Ledger<u32>, client: u32, build: u64, user: Uid) {
        ledger.set_owner(client, Owner { build: BuildId(build), user });
    }

    #[test]
    fn a_free_token_goes_to_the_waiting_build_that_holds_the_least() {
        let mut ledger = Ledger::new(jobs(4));
        // Build 1 (clients 10, 11) takes every token and queues four more requests.
        owned(&mut ledger, 10, 1, 1000);
        owned(&mut ledger, 11, 1, 1000);
        owned(&mut ledger, 20, 2, 1000);
        for _ in 0..2 {
            ledger.acquire(10, Wait::Queue);
            ledger.acquire(11, Wait::Queue);
        }
        for _ in 0..4 {
            ledger.acquire(10, Wait::Queue);
        }
        // Build 2 asks last, holding nothing: the next token is its.
        let Acquire::Queued(newcomer) = ledger.acquire(20, Wait::Queue) else { panic!() };
        assert_eq!(ledger.release(&11).unwrap(), vec![Grant { waiter: newcomer, client: 20 }]);
        assert_eq!((ledger.held_by_build(BuildId(1)), ledger.held_by_build(BuildId(2))), (3, 1));
        // Under FIFO the same request waits behind all four of build 1's.
        let mut fifo = Ledger::new(jobs(1));
        fifo.set_shares(Shares::fifo());
        fifo.acquire(10, Wait::Queue);
        let Acquire::Queued(first) = fifo.acquire(10, Wait::Queue) else { panic!() };
        fifo.acquire(20, Wait::Queue);
        assert_eq!(fifo.release(&10).unwrap()[0].waiter, first);
    }

    #[test]
    fn weights_caps_and_users_shape_the_shares() {
        let mut ledger = Ledger::new(jobs(6));
        // Users 1 and 2, each with two builds; user 1 weighs 2.
        owned(&mut ledger, 1, 1, 1);
        owned(&mut ledger, 2, 2, 1);
        owned(&mut ledger, 3, 3, 2);
        owned(&mut ledger, 4, 4, 2);
        ledger.set_shares(Shares {
            fairness: Fairness::User,
            weights: [(1, 2)].into(),
            ..Shares::default()
        });
        for client in [1, 2, 3, 4] {
            ledger.acquire(client, Wait::Queue);
        }
        for _ in 0..6 {
            for client in [1, 2, 3, 4] {
                ledger.acquire(client, Wait::Queue);
            }
        }
        // One token each, then the two left to the first two asking again: both user 1's.
        assert_eq!((ledger.held_by_user(1), ledger.held_by_user(2)), (4, 2));
        // As tokens come back each goes to the user below its weighted share (4/2 = 2/1).
        ledger.release(&1).unwrap();
        ledger.release(&3).unwrap();
        assert_eq!((ledger.held_by_user(1), ledger.held_by_user(2)), (4, 2));
        // A cap of 3 for user 1: its next return goes to user 2.
        ledger.set_shares(Shares {
            fairness: Fairness::User,
            weights: [(1, 2)].into(),
            user_caps: [(1, 3)].into(),
        });
        ledger.release(&2).unwrap();
        assert_eq!((ledger.held_by_user(1), ledger.held_by_user(2)), (3, 3));
        assert!(ledger.is_consistent());
    }

    #[test]
    fn a_handover_carries_the_queue_as_a_list_and_the_successor_serves_it_in_the_same_order() {
        let mut ledger = Ledger::new(jobs(2));
        owned(&mut ledger, 1, 1, 0);
        owned(&mut ledger, 2, 2, 0);
        owned(&mut ledger, 3, 3, 0);
        // Build 1 holds both tokens; builds 2 and 3 wait, then build 2 twice more.
        ledger.acquire(1, Wait::Queue);
        ledger.acquire(1, Wait::Queue);
        for client in [3, 2, 2, 2] {
            ledger.acquire(client, Wait::Queue);
        }
        let json = serde_json::to_value(&ledger).unwrap();
        // The format every earlier steve wrote and reads: the requests, oldest first.
        let clients: Vec<u64> = json["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["client"].as_u64().unwrap())
            .collect();
        assert_eq!(clients, [3, 2, 2, 2]);
        let mut successor: Ledger<u32> = serde_json::from_value(json).unwrap();
        assert!(successor.is_consistent());
        let order = |ledger: &mut Ledger<u32>| {
            let mut granted = Vec::new();
            while ledger.waiting() > 0 {
                let holder = *ledger.holdings().next().unwrap().0;
                granted.extend(ledger.release(&holder).unwrap().into_iter().map(|g| g.client));
            }
            granted
        };
        let expected = order(&mut ledger);
        assert_eq!(expected, [3, 2, 2, 2]);
        assert_eq!(order(&mut successor), expected);
    }

    #[test]
    fn a_client_moved_to_another_build_takes_its_tokens_along() {
        let mut ledger = Ledger::new(jobs(3));
        owned(&mut ledger, 1, 1, 0);
        ledger.acquire(1, Wait::Queue);
        ledger.acquire(1, Wait::Queue);
        owned(&mut ledger, 1, 9, 0);
        assert_eq!((ledger.held_by_build(BuildId(1)), ledger.held_by_build(BuildId(9))), (0, 2));
        // A client never given an owner is a build of its own.
        ledger.acquire(5, Wait::Queue);
        let own = ledger.owner(&5).unwrap();
        assert_eq!((own.user, ledger.held_by_build(own.build)), (UNKNOWN_USER, 1));
        ledger.reclaim(&1);
        assert_eq!(ledger.held_by_build(BuildId(9)), 0);
        assert!(ledger.owner(&1).is_none() && ledger.is_consistent());
    }
}
