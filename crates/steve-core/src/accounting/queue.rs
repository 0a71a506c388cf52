//! The ledger's queue of waiting requests, indexed so that finding the next one to serve costs
//! the same with ten waiters as with ten thousand.
//!
//! Fair shares serve the oldest request of the share group that holds the least for its
//! weight, among equals the group served longest ago ([`super::shares`]). Found by walking the
//! queue, that is a walk of every waiter for every token handed out: with 10,000 blocked readers
//! of builds that had all been served before, a hand-off cost a scan of 10,000. Here each group
//! keeps its own requests, oldest first, and the groups that wait are kept sorted by their
//! [`Rank`] (what the group holds for its weight, when it was last served, its oldest request),
//! so the next request is the first of the first group: O(log n). The ledger tells the queue
//! whenever a group's standing or its last service changes, and the queue refiles the group.
//!
//! A per-client limit or a per-user cap can make a request wait while later ones may go. Then
//! the queue skips what may not take a token, in the same order; that walk is as long as the
//! requests skipped (a client at its limit, a capped user's builds), and none without limits.
#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::ops::RangeInclusive;

use rustc_hash::FxHashMap;

use super::ledger::WaiterId;
use super::shares::Standing;

/// A share group, by a key the ledger chooses for its policy: `(build, user)` between builds
/// (a build's share is weighed by its user's weight), `(user, 0)` between users.
pub type GroupKey = (u64, u32);

/// Where a waiting group stands in the order fair shares serve: ordered by what it holds for
/// its weight, then by when it was last served (0: never), then by its oldest request, and
/// last by its key, so that no two groups compare equal.
#[derive(Debug, Clone, Copy)]
struct Rank {
    standing: Standing,
    served: u64,
    oldest: WaiterId,
    group: GroupKey,
}

impl Rank {
    /// Whether `self` and `other` are equals under the policy: they hold as much for their
    /// weights and were last served at the same count (never, or two groups of one build).
    fn is_level_with(&self, other: &Rank) -> bool {
        self.standing.cmp_share(other.standing) == Ordering::Equal && self.served == other.served
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Rank) -> Ordering {
        self.standing
            .cmp_share(other.standing)
            .then(self.served.cmp(&other.served))
            .then(self.oldest.cmp(&other.oldest))
            .then(self.group.cmp(&other.group))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Rank) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank {
    fn eq(&self, other: &Rank) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Rank {}

/// One group's waiting requests and what its rank is made of.
#[derive(Debug, Clone)]
struct Group {
    waiters: BTreeSet<WaiterId>,
    standing: Standing,
    served: u64,
}

impl Group {
    /// Its rank, while it has a request.
    fn rank(&self, key: GroupKey) -> Option<Rank> {
        let oldest = *self.waiters.first()?;
        Some(Rank { standing: self.standing, served: self.served, oldest, group: key })
    }
}

/// The waiting requests: in the order they came, by client, and by share group.
#[derive(Debug, Clone)]
pub struct WaitQueue<C> {
    /// Every request with its client and group, oldest first (ids only grow).
    order: BTreeMap<WaiterId, (C, GroupKey)>,
    /// Each client's requests.
    by_client: FxHashMap<C, BTreeSet<WaiterId>>,
    /// Each group with a request.
    groups: BTreeMap<GroupKey, Group>,
    /// The groups with a request, in the order fair shares serve them.
    ranked: BTreeSet<Rank>,
}

impl<C> Default for WaitQueue<C> {
    fn default() -> Self {
        WaitQueue {
            order: BTreeMap::new(),
            by_client: FxHashMap::default(),
            groups: BTreeMap::new(),
            ranked: BTreeSet::new(),
        }
    }
}

impl<C: Clone + Eq + Hash> WaitQueue<C> {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The requests, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (WaiterId, &C)> {
        self.order.iter().map(|(id, (client, _))| (*id, client))
    }

    /// Queues request `id` of `client` in `group`, which stands as given if it is new here.
    /// `id` must be above every id queued before.
    pub fn push(
        &mut self,
        id: WaiterId,
        client: C,
        group: GroupKey,
        standing: Standing,
        served: u64,
    ) {
        debug_assert!(self.order.last_key_value().is_none_or(|(last, _)| *last < id));
        self.insert(id, client, group, standing, served);
    }

    /// Takes request `id` out of the queue; its client, if it was queued.
    pub fn remove(&mut self, id: WaiterId) -> Option<C> {
        let (client, group) = self.order.remove(&id)?;
        if let Some(ids) = self.by_client.get_mut(&client) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_client.remove(&client);
            }
        }
        self.refile(group, |entry| {
            if let Some(waiting) = entry {
                waiting.waiters.remove(&id);
                if waiting.waiters.is_empty() {
                    *entry = None;
                }
            }
        });
        Some(client)
    }

    /// Takes every request of `client` out of the queue; their ids, oldest first.
    pub fn remove_client(&mut self, client: &C) -> Vec<WaiterId> {
        let ids: Vec<WaiterId> =
            self.by_client.get(client).map(|ids| ids.iter().copied().collect()).unwrap_or_default();
        for id in &ids {
            self.remove(*id);
        }
        ids
    }

    /// Moves every request of `client` to `group` (its client joined another build), keeping
    /// each request's age; `group` stands as given if it is new here.
    pub fn move_client(&mut self, client: &C, group: GroupKey, standing: Standing, served: u64) {
        for id in self.remove_client(client) {
            self.insert(id, client.clone(), group, standing, served);
        }
    }

    /// Refiles every group as `rank_of` says it stands now, each request under the group
    /// `group_of` gives its client (the policy, or the weights, changed).
    pub fn regroup(
        &mut self,
        group_of: impl Fn(&C) -> GroupKey,
        stands: impl Fn(GroupKey) -> (Standing, u64),
    ) {
        let requests: Vec<(WaiterId, C)> =
            std::mem::take(&mut self.order).into_iter().map(|(id, (c, _))| (id, c)).collect();
        *self = WaitQueue::default();
        for (id, client) in requests {
            let group = group_of(&client);
            let (standing, served) = stands(group);
            self.insert(id, client, group, standing, served);
        }
    }

    /// Files request `id` (of any age) of `client` under `group`.
    fn insert(
        &mut self,
        id: WaiterId,
        client: C,
        group: GroupKey,
        standing: Standing,
        served: u64,
    ) {
        self.by_client.entry(client.clone()).or_default().insert(id);
        self.order.insert(id, (client, group));
        self.refile(group, |entry| {
            let entry =
                entry.get_or_insert_with(|| Group { waiters: BTreeSet::new(), standing, served });
            entry.waiters.insert(id);
        });
    }

    /// The first group with a request whose key lies in `keys` (a build's groups, one per
    /// user, are one range).
    pub fn first_group_in(&self, keys: RangeInclusive<GroupKey>) -> Option<GroupKey> {
        self.groups.range(keys).next().map(|(key, _)| *key)
    }

    /// Says how `group` stands now: what it holds for its weight, and when it was last served.
    pub fn restand(&mut self, group: GroupKey, standing: Standing, served: u64) {
        self.refile(group, |entry| {
            if let Some(waiting) = entry {
                waiting.standing = standing;
                waiting.served = served;
            }
        });
    }

    /// The request the next free token goes to, among those of clients that `may_take`: the
    /// oldest (`fifo`), or the oldest of the first group in rank. Without a limit or a cap every
    /// client may take, and the first request looked at is the one.
    pub fn next(&self, fifo: bool, may_take: impl Fn(&C) -> bool) -> Option<WaiterId> {
        let client_of = |id: &WaiterId| &self.order[id].0;
        if fifo {
            return self.order.iter().find(|(_, (client, _))| may_take(client)).map(|(id, _)| *id);
        }
        let mut best: Option<(&Rank, WaiterId)> = None;
        for rank in &self.ranked {
            if let Some((leader, chosen)) = best {
                // Only a group level with the leader, whose oldest request came before the
                // chosen one, can still have an older request that may take a token.
                if !(rank.is_level_with(leader) && rank.oldest < chosen) {
                    break;
                }
            }
            let group = &self.groups[&rank.group];
            let Some(id) = group.waiters.iter().find(|id| may_take(client_of(id))) else {
                continue;
            };
            if best.is_none_or(|(_, chosen)| *id < chosen) {
                best = Some((rank, *id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Whether every request is filed under the group `group_of` gives its client, and each
    /// group stands as `stands` says and is ranked so (the ledger's consistency check).
    pub fn agrees(
        &self,
        group_of: impl Fn(&C) -> GroupKey,
        stands: impl Fn(GroupKey) -> (Standing, u64),
    ) -> bool {
        let filed = self.order.iter().all(|(id, (client, group))| {
            *group == group_of(client)
                && self.groups.get(group).is_some_and(|entry| entry.waiters.contains(id))
                && self.by_client.get(client).is_some_and(|ids| ids.contains(id))
        });
        let counted = self.groups.values().map(|entry| entry.waiters.len()).sum::<usize>()
            == self.order.len()
            && self.by_client.values().map(BTreeSet::len).sum::<usize>() == self.order.len();
        let standing = self.groups.iter().all(|(key, entry)| {
            let (standing, served) = stands(*key);
            entry.standing == standing
                && entry.served == served
                && entry.rank(*key).is_some_and(|rank| self.ranked.contains(&rank))
        });
        filed && counted && standing && self.ranked.len() == self.groups.len()
    }

    /// Changes `group`'s entry with `change` (`None`: it has no request) and files its rank
    /// anew.
    fn refile(&mut self, group: GroupKey, change: impl FnOnce(&mut Option<Group>)) {
        let mut entry = self.groups.remove(&group);
        if let Some(rank) = entry.as_ref().and_then(|entry| entry.rank(group)) {
            self.ranked.remove(&rank);
        }
        change(&mut entry);
        if let Some(entry) = entry {
            if let Some(rank) = entry.rank(group) {
                self.ranked.insert(rank);
            }
            self.groups.insert(group, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(held: usize) -> Standing {
        Standing { held, weight: 1 }
    }

    #[test]
    fn the_first_group_in_rank_gives_its_oldest_request() {
        let mut queue = WaitQueue::default();
        // Group A holds 2, group B holds 1 and was served at 5, group C holds 1, served at 3.
        queue.push(WaiterId(1), "a", (1, 0), standing(2), 9);
        queue.push(WaiterId(2), "b", (2, 0), standing(1), 5);
        queue.push(WaiterId(3), "c", (3, 0), standing(1), 3);
        queue.push(WaiterId(4), "c", (3, 0), standing(1), 3);
        assert_eq!(queue.next(false, |_| true), Some(WaiterId(3)));
        assert_eq!(queue.next(true, |_| true), Some(WaiterId(1)));
        // C is served: it now holds 2; B is next, then A and C level, A's request older.
        queue.remove(WaiterId(3));
        queue.restand((3, 0), standing(2), 10);
        assert_eq!(queue.next(false, |_| true), Some(WaiterId(2)));
        queue.remove(WaiterId(2));
        assert_eq!(queue.next(false, |_| true), Some(WaiterId(1)));
        // A client that may not take a token is skipped, in order.
        assert_eq!(queue.next(false, |client| *client != "a"), Some(WaiterId(4)));
        assert_eq!(queue.remove_client(&"c"), vec![WaiterId(4)]);
        assert_eq!(queue.next(false, |client| *client != "a"), None);
        assert_eq!(queue.iter().map(|(id, c)| (id, *c)).collect::<Vec<_>>(), [(WaiterId(1), "a")]);
    }

    #[test]
    fn among_groups_never_served_the_oldest_request_that_may_take_goes_first() {
        let mut queue = WaitQueue::default();
        // A's oldest request may not take; B's, younger, may; A's second, younger still, may.
        queue.push(WaiterId(1), "limited", (1, 0), standing(0), 0);
        queue.push(WaiterId(2), "b", (2, 0), standing(0), 0);
        queue.push(WaiterId(3), "a", (1, 0), standing(0), 0);
        assert_eq!(queue.next(false, |client| *client != "limited"), Some(WaiterId(2)));
        // Moved to another group, a request keeps its age.
        queue.move_client(&"a", (0, 0), standing(0), 0);
        assert_eq!(queue.next(false, |client| *client != "limited"), Some(WaiterId(2)));
        assert_eq!(queue.first_group_in((0, 1)..=(1, u32::MAX)), Some((1, 0)));
        assert_eq!(queue.first_group_in((1, 1)..=(1, u32::MAX)), None);
    }
}
