//! Token accounting: the pure logic every server backend shares, with no I/O and no unsafe code,
//! so that every transport and every test drives it the same way.
//!
//! - [`pool`]: the pool arithmetic (`free + held + withheld == size`, resizing, the allowance,
//!   lending) and [`JobCount`](pool::JobCount), the one type of a `-j` value;
//! - [`ledger`]: per-client holdings and one queue of waiters over a pool;
//! - [`queue`]: that queue, indexed by share group so the next waiter is found in O(log n);
//! - [`shares`]: who a free token goes to: fair shares between builds or users, or FIFO;
//! - [`device`]: the rules of a per-process jobserver device (CUSE, FUSE), as a sans-IO state
//!   machine over a ledger;
//! - [`limits`]: load, memory and pressure limits, and how many tokens they let out now;
//! - [`pressure`]: pressure stall information: limits with hysteresis, shares from the kernel's
//!   totals, triggers;
//! - [`waits`]: how long requests waited for their tokens, as a histogram.
//!
//! The fifo backend drives a [`pool::Pool`] directly (a pipe cannot say who holds a token); the
//! device backends drive a [`device::Device`].
#![forbid(unsafe_code)]

pub mod device;
pub mod ledger;
pub mod limits;
pub mod pool;
pub mod pressure;
pub mod queue;
pub mod shares;
pub mod waits;
