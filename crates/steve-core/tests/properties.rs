//! Property tests: the ledger's invariant over random operation sequences, checked against a
//! plain model of who holds what, and the MAKEFLAGS parser over arbitrary input.

use std::collections::HashMap;

use proptest::prelude::*;
use steve_core::accounting::ledger::{Acquire, Grant, Ledger, Wait, WaiterId};
use steve_core::accounting::pool::{JobCount, Pool};
use steve_core::makeflags::{jobserver_makeflags, JobserverAuth, MakeFlags};

#[derive(Debug, Clone)]
enum Op {
    Acquire { client: u8, queue: bool },
    Release { client: u8 },
    Reclaim { client: u8 },
    Cancel { nth_waiter: usize },
    SetTarget(usize),
    SetAllowance(Option<usize>),
    Lend,
    Repay,
    SetPerClientLimit(Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5, any::<bool>()).prop_map(|(client, queue)| Op::Acquire { client, queue }),
        4 => (0u8..5).prop_map(|client| Op::Release { client }),
        1 => (0u8..5).prop_map(|client| Op::Reclaim { client }),
        1 => (0usize..8).prop_map(|nth_waiter| Op::Cancel { nth_waiter }),
        1 => (1usize..8).prop_map(Op::SetTarget),
        1 => proptest::option::of(0usize..8).prop_map(Op::SetAllowance),
        1 => Just(Op::Lend),
        1 => Just(Op::Repay),
        1 => proptest::option::of(1usize..4).prop_map(Op::SetPerClientLimit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ledger_keeps_its_invariant_and_agrees_with_a_model(
        size in 0usize..6,
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut ledger: Ledger<u8> = Ledger::over(Pool::with_target(size));
        // The model: tokens each client holds, and the queue in order.
        let mut held: HashMap<u8, usize> = HashMap::new();
        let mut queue: Vec<(WaiterId, u8)> = Vec::new();
        let mut limit: Option<usize> = None;
        let at_limit = |held: &HashMap<u8, usize>, limit: Option<usize>, client: u8| {
            limit.is_some_and(|limit| held.get(&client).copied().unwrap_or(0) >= limit)
        };
        let granted = |held: &mut HashMap<u8, usize>, queue: &mut Vec<(WaiterId, u8)>,
                           limit: Option<usize>,
                           grants: Vec<Grant<u8>>| {
            for grant in grants {
                // Grants go to the oldest waiter that may take a token: with a per-client limit
                // that need not be the head, but every waiter before it must be at its limit.
                let index = queue.iter().position(|(id, _)| *id == grant.waiter).expect("granted a queued request");
                for (_, skipped) in &queue[..index] {
                    assert!(at_limit(held, limit, *skipped), "skipped client {skipped} below its limit");
                }
                let (_, client) = queue.remove(index);
                assert_eq!(grant.client, client);
                assert!(!at_limit(held, limit, client), "granted past the limit");
                *held.entry(client).or_default() += 1;
            }
        };
        for op in ops {
            let before = ledger.counts();
            match op {
                Op::Acquire { client, queue: wants_queue } => {
                    let wait = if wants_queue { Wait::Queue } else { Wait::NoWait };
                    match ledger.acquire(client, wait) {
                        Acquire::Granted => {
                            // A free token, no waiter that could have taken it, and room under
                            // the limit.
                            prop_assert!(before.free > 0);
                            prop_assert!(!at_limit(&held, limit, client));
                            prop_assert!(queue.iter().all(|(_, waiting)| at_limit(&held, limit, *waiting)));
                            *held.entry(client).or_default() += 1;
                        }
                        Acquire::Queued(id) => {
                            prop_assert!(wants_queue);
                            queue.push((id, client));
                        }
                        Acquire::WouldBlock => {
                            prop_assert!(!wants_queue);
                            let eligible_waiter =
                                queue.iter().any(|(_, waiting)| !at_limit(&held, limit, *waiting));
                            prop_assert!(before.free == 0 || eligible_waiter || at_limit(&held, limit, client));
                        }
                    }
                }
                Op::Release { client } => {
                    let holds = held.get(&client).copied().unwrap_or(0);
                    match ledger.release(&client) {
                        Ok(grants) => {
                            prop_assert!(holds > 0);
                            *held.get_mut(&client).unwrap() -= 1;
                            granted(&mut held, &mut queue, limit, grants);
                        }
                        Err(_) => {
                            prop_assert_eq!(holds, 0);
                            prop_assert_eq!(ledger.counts(), before);
                        }
                    }
                }
                Op::Reclaim { client } => {
                    let reclaimed = ledger.reclaim(&client);
                    prop_assert_eq!(reclaimed.tokens, held.remove(&client).unwrap_or(0));
                    let own: Vec<WaiterId> =
                        queue.iter().filter(|(_, c)| *c == client).map(|(id, _)| *id).collect();
                    prop_assert_eq!(reclaimed.cancelled, own);
                    queue.retain(|(_, c)| *c != client);
                    granted(&mut held, &mut queue, limit, reclaimed.grants);
                }
                Op::Cancel { nth_waiter } => {
                    if let Some((id, _)) = queue.get(nth_waiter).copied() {
                        prop_assert!(ledger.cancel(id));
                        queue.remove(nth_waiter);
                    }
                }
                Op::SetTarget(target) => {
                    let grants = ledger.set_target(JobCount::new(target).unwrap());
                    granted(&mut held, &mut queue, limit, grants);
                    let counts = ledger.counts();
                    // A shrink never takes a token from its holder.
                    prop_assert!(counts.held >= before.held);
                    prop_assert!(counts.size >= target);
                }
                Op::SetAllowance(allowance) => {
                    let grants = ledger.set_allowance(allowance);
                    granted(&mut held, &mut queue, limit, grants);
                    prop_assert!(ledger.counts().held >= before.held);
                }
                Op::Lend => {
                    let grants = ledger.lend();
                    granted(&mut held, &mut queue, limit, grants);
                    prop_assert_eq!(ledger.counts().lent, before.lent + 1);
                }
                Op::SetPerClientLimit(new_limit) => {
                    limit = new_limit;
                    let grants = ledger.set_per_client_limit(limit);
                    granted(&mut held, &mut queue, limit, grants);
                }
                Op::Repay => {
                    let grants = ledger.repay();
                    granted(&mut held, &mut queue, limit, grants);
                    prop_assert_eq!(ledger.counts().lent, before.lent.saturating_sub(1));
                    prop_assert!(ledger.counts().held >= before.held);
                }
            }
            let counts = ledger.counts();
            prop_assert!(ledger.is_consistent(), "{:?}", ledger);
            prop_assert_eq!(counts.free + counts.held + counts.withheld, counts.size);
            prop_assert_eq!(counts.held, held.values().sum::<usize>());
            for (client, count) in &held {
                prop_assert_eq!(ledger.held_by(client), *count);
            }
            prop_assert_eq!(
                ledger.waiters().map(|(id, c)| (id, *c)).collect::<Vec<_>>(),
                queue.clone()
            );
        }
        // Once everything is returned and repaid, the pool is whole at its target again.
        // Reclaiming one client may grant a later client's queued request; that client is
        // reclaimed in turn.
        for client in 0..5u8 {
            ledger.reclaim(&client);
        }
        while ledger.counts().lent > 0 {
            ledger.repay();
        }
        ledger.set_allowance(None);
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
