//! Property tests: the ledger's invariant and its fair-share rule over random operation
//! sequences, checked against a plain model of who holds what and who is next, and the MAKEFLAGS
//! parser over arbitrary input.

use std::collections::HashMap;

use proptest::prelude::*;
use steve_core::accounting::ledger::{Acquire, Grant, Ledger, Wait, WaiterId};
use steve_core::accounting::pool::{JobCount, Pool};
use steve_core::accounting::shares::{BuildId, Fairness, Owner, Shares, Uid};
use steve_core::makeflags::{jobserver_makeflags, JobserverAuth, MakeFlags};

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        client: u8,
        queue: bool,
    },
    Release {
        client: u8,
    },
    Reclaim {
        client: u8,
    },
    Cancel {
        nth_waiter: usize,
    },
    SetTarget(usize),
    SetAllowance(Option<usize>),
    Lend,
    Repay,
    SetPerClientLimit(Option<usize>),
    SetShares(Shares),
    /// The client joins another build (its tokens and requests go along), or another user's.
    Move {
        client: u8,
        build: u64,
        user: Uid,
    },
}

/// Clients 0 to 5: clients 0 and 1 are one build, 2 and 3 another, 4 and 5 one each; even
/// clients are user 0, odd ones user 1.
const CLIENTS: u8 = 6;

fn owner_of(client: u8) -> Owner {
    let build = if client < 4 { client / 2 } else { client - 2 };
    Owner { build: BuildId(u64::from(build)), user: Uid::from(client % 2) }
}

fn shares() -> impl Strategy<Value = Shares> {
    let fairness = prop_oneof![Just(Fairness::Build), Just(Fairness::User), Just(Fairness::Fifo)];
    let weights = proptest::collection::btree_map(0u32..2, 1u32..4, 0..3);
    let caps = proptest::collection::btree_map(0u32..2, 1usize..4, 0..2);
    (fairness, weights, caps).prop_map(|(fairness, weights, user_caps)| Shares {
        fairness,
        weights,
        user_caps,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..CLIENTS, any::<bool>()).prop_map(|(client, queue)| Op::Acquire { client, queue }),
        4 => (0u8..CLIENTS).prop_map(|client| Op::Release { client }),
        1 => (0u8..CLIENTS).prop_map(|client| Op::Reclaim { client }),
        1 => (0usize..8).prop_map(|nth_waiter| Op::Cancel { nth_waiter }),
        1 => (1usize..8).prop_map(Op::SetTarget),
        1 => proptest::option::of(0usize..8).prop_map(Op::SetAllowance),
        1 => Just(Op::Lend),
        1 => Just(Op::Repay),
        1 => proptest::option::of(1usize..4).prop_map(Op::SetPerClientLimit),
        1 => shares().prop_map(Op::SetShares),
        1 => (0u8..CLIENTS, 0u64..5, 0u32..2).prop_map(|(client, build, user)| Op::Move { client, build, user }),
    ]
}

/// The model: who holds what, the queue in order, the limits, and the rule that picks the
/// waiter a free token goes to, written plainly.
#[derive(Debug, Default)]
struct Model {
    held: HashMap<u8, usize>,
    queue: Vec<(WaiterId, u8)>,
    limit: Option<usize>,
    shares: Shares,
    /// Tokens handed out, and the count at each build's and user's last one.
    handed: u64,
    build_served: HashMap<BuildId, u64>,
    user_served: HashMap<Uid, u64>,
    /// Clients moved to another build or user than [`owner_of`] gives.
    moved: HashMap<u8, Owner>,
}

impl Model {
    fn owner(&self, client: u8) -> Owner {
        self.moved.get(&client).copied().unwrap_or_else(|| owner_of(client))
    }

    fn holds(&self, client: u8) -> usize {
        self.held.get(&client).copied().unwrap_or(0)
    }

    /// What `client`'s share group holds under the policy (users for FIFO too: caps are theirs).
    fn group_holds(&self, client: u8) -> usize {
        let owner = self.owner(client);
        let same = |other: u8| match self.shares.fairness {
            Fairness::Build => self.owner(other).build == owner.build,
            Fairness::User | Fairness::Fifo => self.owner(other).user == owner.user,
        };
        (0..CLIENTS).filter(|other| same(*other)).map(|other| self.holds(other)).sum()
    }

    /// Books a token handed to `client`.
    fn hand(&mut self, client: u8) {
        *self.held.entry(client).or_default() += 1;
        self.handed += 1;
        self.build_served.insert(self.owner(client).build, self.handed);
        self.user_served.insert(self.owner(client).user, self.handed);
    }

    /// When `client`'s group was last served (0: never).
    fn served(&self, client: u8) -> u64 {
        let owner = self.owner(client);
        let served = match self.shares.fairness {
            Fairness::Build => self.build_served.get(&owner.build),
            Fairness::User | Fairness::Fifo => self.user_served.get(&owner.user),
        };
        served.copied().unwrap_or(0)
    }

    fn user_holds(&self, user: Uid) -> usize {
        (0..CLIENTS).filter(|c| self.owner(*c).user == user).map(|c| self.holds(c)).sum()
    }

    fn may_take(&self, client: u8) -> bool {
        let user = self.owner(client).user;
        self.limit.is_none_or(|limit| self.holds(client) < limit)
            && self.shares.user_caps.get(&user).is_none_or(|cap| self.user_holds(user) < *cap)
    }

    /// The waiter the next free token goes to: FIFO, or the oldest request of the group holding
    /// the least tokens divided by its weight, among equals the group served longest ago.
    fn pick(&self) -> Option<usize> {
        let eligible = self.queue.iter().enumerate().filter(|(_, (_, c))| self.may_take(*c));
        if self.shares.fairness == Fairness::Fifo {
            return eligible.map(|(index, _)| index).next();
        }
        let ratio = |client: u8| {
            let weight = self.shares.weights.get(&self.owner(client).user).copied().unwrap_or(1);
            self.group_holds(client) as f64 / f64::from(weight)
        };
        let key = |client: u8| (ratio(client), self.served(client));
        let mut best: Option<(usize, (f64, u64))> = None;
        for (index, (_, client)) in eligible {
            if best.is_none_or(|(_, least)| key(*client) < least) {
                best = Some((index, key(*client)));
            }
        }
        best.map(|(index, _)| index)
    }

    /// Checks the ledger's grants one by one against the rule and books them.
    fn granted(&mut self, grants: Vec<Grant<u8>>) {
        for grant in grants {
            let index = self.pick().expect("a grant while no waiter may take a token");
            let (id, client) = self.queue.remove(index);
            assert_eq!((grant.waiter, grant.client), (id, client), "granted out of turn: {self:?}");
            self.hand(client);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ledger_keeps_its_invariant_and_shares_tokens_as_its_model_says(
        size in 0usize..6,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut ledger: Ledger<u8> = Ledger::over(Pool::with_target(size));
        for client in 0..CLIENTS {
            ledger.set_owner(client, owner_of(client));
        }
        let mut model = Model::default();
        for op in ops {
            let before = ledger.counts();
            match op {
                Op::Acquire { client, queue: wants_queue } => {
                    let wait = if wants_queue { Wait::Queue } else { Wait::NoWait };
                    match ledger.acquire(client, wait) {
                        Acquire::Granted => {
                            // A free token, no waiter that could have taken it, and room under
                            // the limit and the cap.
                            prop_assert!(before.free > 0);
                            prop_assert!(model.may_take(client));
                            prop_assert!(model.pick().is_none());
                            model.hand(client);
                        }
                        Acquire::Queued(id) => {
                            prop_assert!(wants_queue);
                            model.queue.push((id, client));
                        }
                        Acquire::WouldBlock => {
                            prop_assert!(!wants_queue);
                            prop_assert!(
                                before.free == 0 || model.pick().is_some() || !model.may_take(client)
                            );
                        }
                    }
                }
                Op::Release { client } => {
                    let holds = model.holds(client);
                    match ledger.release(&client) {
                        Ok(grants) => {
                            prop_assert!(holds > 0);
                            *model.held.get_mut(&client).unwrap() -= 1;
                            model.granted(grants);
                        }
                        Err(_) => {
                            prop_assert_eq!(holds, 0);
                            prop_assert_eq!(ledger.counts(), before);
                        }
                    }
                }
                Op::Reclaim { client } => {
                    let reclaimed = ledger.reclaim(&client);
                    prop_assert_eq!(reclaimed.tokens, model.held.remove(&client).unwrap_or(0));
                    // A build's record goes with its last client.
                    let build = model.owner(client).build;
                    if !(0..CLIENTS).any(|other| other != client && model.owner(other).build == build) {
                        model.build_served.remove(&build);
                    }
                    let own: Vec<WaiterId> =
                        model.queue.iter().filter(|(_, c)| *c == client).map(|(id, _)| *id).collect();
                    prop_assert_eq!(reclaimed.cancelled, own);
                    model.queue.retain(|(_, c)| *c != client);
                    model.granted(reclaimed.grants);
                    // A new process with the same pid: the server tells the ledger its owner.
                    model.moved.remove(&client);
                    prop_assert!(ledger.set_owner(client, owner_of(client)).is_empty());
                }
                Op::Cancel { nth_waiter } => {
                    if let Some((id, _)) = model.queue.get(nth_waiter).copied() {
                        prop_assert!(ledger.cancel(id));
                        model.queue.remove(nth_waiter);
                    }
                }
                Op::SetTarget(target) => {
                    let grants = ledger.set_target(JobCount::new(target).unwrap());
                    model.granted(grants);
                    let counts = ledger.counts();
                    // A shrink never takes a token from its holder.
                    prop_assert!(counts.held >= before.held);
                    prop_assert!(counts.size >= target);
                }
                Op::SetAllowance(allowance) => {
                    let grants = ledger.set_allowance(allowance);
                    model.granted(grants);
                    prop_assert!(ledger.counts().held >= before.held);
                }
                Op::Lend => {
                    let grants = ledger.lend();
                    model.granted(grants);
                    prop_assert_eq!(ledger.counts().lent, before.lent + 1);
                }
                Op::SetPerClientLimit(new_limit) => {
                    model.limit = new_limit;
                    let grants = ledger.set_per_client_limit(new_limit);
                    model.granted(grants);
                }
                Op::SetShares(shares) => {
                    model.shares = shares.clone();
                    let grants = ledger.set_shares(shares);
                    model.granted(grants);
                }
                Op::Move { client, build, user } => {
                    let owner = Owner { build: BuildId(build), user };
                    model.moved.insert(client, owner);
                    let grants = ledger.set_owner(client, owner);
                    model.granted(grants);
                    prop_assert_eq!(ledger.owner(&client), Some(owner));
                }
                Op::Repay => {
                    let grants = ledger.repay();
                    model.granted(grants);
                    prop_assert_eq!(ledger.counts().lent, before.lent.saturating_sub(1));
                    prop_assert!(ledger.counts().held >= before.held);
                }
            }
            let counts = ledger.counts();
            prop_assert!(ledger.is_consistent(), "{:?}", ledger);
            prop_assert_eq!(counts.free + counts.held + counts.withheld, counts.size);
            prop_assert_eq!(counts.held, model.held.values().sum::<usize>());
            for client in 0..CLIENTS {
                prop_assert_eq!(ledger.held_by(&client), model.holds(client));
            }
            prop_assert_eq!(
                ledger.waiters().map(|(id, c)| (id, *c)).collect::<Vec<_>>(),
                model.queue.clone()
            );
        }
        // No build is starved: with the limits lifted, a pool of at least one token and every
        // holder returning its tokens one at a time, every waiter is served, within as many
        // returns as there were requests in the queue and tokens in the pool.
        ledger.set_per_client_limit(None);
        ledger.set_allowance(None);
        let shares = Shares { user_caps: Default::default(), ..model.shares.clone() };
        ledger.set_shares(shares);
        let target = ledger.counts().target.max(1);
        ledger.set_target(JobCount::new(target).unwrap());
        let mut returns_left = ledger.waiting() + ledger.counts().size;
        while ledger.waiting() > 0 {
            prop_assert!(returns_left > 0, "waiters never served: {:?}", ledger);
            returns_left -= 1;
            let holder = *ledger.holdings().next().expect("tokens out while requests wait").0;
            ledger.release(&holder).unwrap();
        }
        // Once everything is returned and repaid, the pool is whole at its target again.
        for client in 0..CLIENTS {
            ledger.reclaim(&client);
        }
        while ledger.counts().lent > 0 {
            ledger.repay();
        }
        let counts = ledger.counts();
        prop_assert_eq!((counts.size, counts.free, counts.held), (counts.target, counts.target, 0));
    }

    #[test]
    fn makeflags_parser_never_panics(value in ".{0,200}") {
        let _ = MakeFlags::parse(&value);
    }

    #[test]
    fn makeflags_parser_never_panics_on_option_like_input(
        words in proptest::collection::vec(
            prop_oneof![
                Just("--jobserver-auth=".to_string()),
                Just("--jobserver-fds=".to_string()),
                Just("fifo:".to_string()),
                Just("-j".to_string()),
                Just("--".to_string()),
                Just("\\".to_string()),
                "[-0-9,a-z:/ ]{0,12}",
            ],
            0..12,
        )
    ) {
        let _ = MakeFlags::parse(&words.concat());
    }

    #[test]
    fn formatted_flags_parse_back(
        jobs in 1usize..1000,
        read in 0i32..1024,
        write in 0i32..1024,
        path in "/[a-zA-Z0-9 _./-]{1,40}",
    ) {
        for auth in [JobserverAuth::Fds { read, write }, JobserverAuth::Fifo(path.clone().into())] {
            let flags =
                MakeFlags::parse(&jobserver_makeflags(JobCount::new(jobs).unwrap(), auth.clone()))
                    .unwrap();
            prop_assert_eq!(flags.jobserver(), Some(&auth));
        }
    }
}
