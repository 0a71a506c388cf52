//! The pool arithmetic every backend shares: how many tokens exist, how many are out, how many
//! are kept back, and how a change of `jobs`, a lent token or a scheduling limit moves them.
//!
//! Every token that exists is in exactly one of three places, and this always holds:
//!
//! ```text
//! free + held + withheld == size
//! ```
//!
//! - `free`: may be handed out now;
//! - `held`: out of the server's hands (with a client, or in a pipe's buffer for the fifo
//!   backend, which cannot tell the two apart);
//! - `withheld`: exists, but an allowance (a scheduling limit) keeps it back for now.
//!
//! `size` follows the wanted size, `target` (the `-j` value) plus the tokens clients have lent:
//! growing creates free tokens at once; shrinking retires free and withheld tokens at once and
//! held ones as they come back (they are *owed*), never taking one from its holder.
//!
//! ```
//! use steve_core::accounting::pool::{JobCount, Pool};
//!
//! let mut pool = Pool::new(JobCount::new(2).unwrap());
//! assert!(pool.hand_out() && pool.hand_out());
//! pool.set_target(JobCount::new(1).unwrap());
//! assert_eq!(pool.counts().owed(), 1, "one held token retires when it comes back");
//! pool.take_back(1);
//! assert_eq!((pool.counts().size, pool.counts().free), (1, 0));
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest pool any backend serves. A pipe buffer is all the room a fifo server has for
/// free tokens, and a user over `pipe-user-pages-soft` gets pipes of one page: 4096 bytes.
pub const MAX_JOBS: usize = 4096;

/// A number of job slots: 1 to [`MAX_JOBS`]. The one type every `-j` value travels as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "usize", into = "usize")]
pub struct JobCount(usize);

/// A job count out of range, or not a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCountError {
    /// A number, but not from 1 to [`MAX_JOBS`].
    OutOfRange(usize),
    /// Not a whole number.
    NotANumber(String),
}

impl fmt::Display for JobCountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobCountError::OutOfRange(jobs) => {
                write!(f, "job count {jobs} is out of range (1 to {MAX_JOBS})")
            }
            JobCountError::NotANumber(text) => {
                write!(f, "{text:?} is not a job count (a whole number from 1 to {MAX_JOBS})")
            }
        }
    }
}

impl std::error::Error for JobCountError {}

impl JobCount {
    /// `jobs` slots, if it is from 1 to [`MAX_JOBS`].
    pub fn new(jobs: usize) -> Result<JobCount, JobCountError> {
        if (1..=MAX_JOBS).contains(&jobs) {
            Ok(JobCount(jobs))
        } else {
            Err(JobCountError::OutOfRange(jobs))
        }
    }

    /// The number of slots.
    pub fn get(self) -> usize {
        self.0
    }

    /// This machine's number of CPUs, the default everywhere a count is not given.
    pub fn cpus() -> JobCount {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        JobCount(cpus.clamp(1, MAX_JOBS))
    }
}

impl FromStr for JobCount {
    type Err = JobCountError;

    fn from_str(text: &str) -> Result<JobCount, JobCountError> {
        let number = text.trim().parse::<usize>();
        number.map_err(|_| JobCountError::NotANumber(text.to_string())).and_then(JobCount::new)
    }
}

impl TryFrom<usize> for JobCount {
    type Error = JobCountError;

    fn try_from(jobs: usize) -> Result<JobCount, JobCountError> {
        JobCount::new(jobs)
    }
}

impl From<JobCount> for usize {
    fn from(jobs: JobCount) -> usize {
        jobs.0
    }
}

impl fmt::Display for JobCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A snapshot of the pool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// The configured number of tokens (`-j`).
    pub target: usize,
    /// Tokens lent to the pool by clients' grace returns, until those clients go.
    pub lent: usize,
    /// Tokens that exist now: `target + lent`, or more while a shrink waits for returns.
    pub size: usize,
    /// Tokens that may be handed out now.
    pub free: usize,
    /// Tokens out of the server's hands.
    pub held: usize,
    /// Tokens kept back by the allowance.
    pub withheld: usize,
}

impl Counts {
    /// Held tokens that retire as they come back, because the pool shrank below them.
    pub fn owed(&self) -> usize {
        self.size - (self.target + self.lent)
    }
}

/// The pool: the counts and the allowance, changed only through operations that keep
/// `free + held + withheld == size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    target: usize,
    lent: usize,
    size: usize,
    free: usize,
    held: usize,
    withheld: usize,
    /// How many tokens may be held in total; `None` is no limit.
    allowance: Option<usize>,
}

impl Pool {
    /// A pool of `jobs` free tokens.
    pub fn new(jobs: JobCount) -> Pool {
        Pool::with_target(jobs.get())
    }

    /// A pool of `target` free tokens, any number (zero for tests of an empty pool).
    pub fn with_target(target: usize) -> Pool {
        Pool { target, lent: 0, size: target, free: target, held: 0, withheld: 0, allowance: None }
    }

    /// The counters as they are now.
    pub fn counts(&self) -> Counts {
        Counts {
            target: self.target,
            lent: self.lent,
            size: self.size,
            free: self.free,
            held: self.held,
            withheld: self.withheld,
        }
    }

    /// The configured number of tokens: the one source of truth for `jobs`.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The allowance in force.
    pub fn allowance(&self) -> Option<usize> {
        self.allowance
    }

    /// Moves one free token out. `false` when none is free.
    pub fn hand_out(&mut self) -> bool {
        if self.free == 0 {
            return false;
        }
        self.free -= 1;
        self.held += 1;
        true
    }

    /// `count` held tokens came back: what a shrink still owes retires, the rest is free (or
    /// withheld, as the allowance says).
    ///
    /// # Panics
    /// If fewer than `count` tokens are held: the caller's books are wrong.
    pub fn take_back(&mut self, count: usize) {
        assert!(count <= self.held, "{count} tokens taken back, {} held", self.held);
        self.held -= count;
        let retired = count.min(self.counts().owed());
        self.size -= retired;
        self.free += count - retired;
        self.rebalance();
    }

    /// Sets the configured number of tokens. Growing frees new tokens at once; shrinking
    /// retires free and withheld ones now and held ones as they come back.
    pub fn set_target(&mut self, target: JobCount) {
        self.target = target.get();
        self.resize();
    }

    /// A client lends one token (a grace return): the pool grows by one until [`Pool::repay`].
    pub fn lend(&mut self) {
        self.lent += 1;
        self.resize();
    }

    /// A lender went away: its token retires, at once if one is free, else from the next
    /// return. Does nothing if nothing is lent.
    pub fn repay(&mut self) {
        self.lent = self.lent.saturating_sub(1);
        self.resize();
    }

    /// Limits how many tokens may be held in total (`None`: no limit). Tokens above the
    /// allowance are withheld, never taken from a holder.
    pub fn set_allowance(&mut self, allowance: Option<usize>) {
        self.allowance = allowance;
        self.rebalance();
    }

    /// Held tokens beyond what may be out now: what a shrink owes plus what exceeds the
    /// allowance. A pipe server takes this many out of its pipe as they come back; a
    /// per-process server simply hands out no more until holders return them.
    pub fn excess_held(&self) -> usize {
        let may_be_out = self.allowance.map_or(usize::MAX, |allowance| allowance);
        let wanted = self.target + self.lent;
        self.held.saturating_sub(may_be_out.min(wanted))
    }

    /// Whether `free + held + withheld == size`, the size follows the target, and the allowance
    /// is kept.
    pub fn is_consistent(&self) -> bool {
        let wanted = self.target + self.lent;
        self.free + self.held + self.withheld == self.size
            && self.size >= wanted
            && (self.size == wanted || self.free + self.withheld == 0)
            && self
                .allowance
                .is_none_or(|allowance| self.free <= allowance.saturating_sub(self.held))
            && (self.withheld == 0 || self.allowance.is_some())
    }

    /// Brings `size` towards the wanted size after either changed.
    fn resize(&mut self) {
        let wanted = self.target + self.lent;
        if wanted > self.size {
            self.free += wanted - self.size;
            self.size = wanted;
        } else {
            let excess = self.size - wanted;
            let from_withheld = excess.min(self.withheld);
            self.withheld -= from_withheld;
            let from_free = (excess - from_withheld).min(self.free);
            self.free -= from_free;
            self.size -= from_withheld + from_free;
        }
        self.rebalance();
    }

    /// Splits the tokens not held between free and withheld, as the allowance says.
    fn rebalance(&mut self) {
        let unheld = self.free + self.withheld;
        let may_hand_out = match self.allowance {
            Some(allowance) => allowance.saturating_sub(self.held),
            None => unheld,
        };
        self.free = unheld.min(may_hand_out);
        self.withheld = unheld - self.free;
        debug_assert!(self.is_consistent(), "pool invariant broken: {self:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(n: usize) -> JobCount {
        JobCount::new(n).unwrap()
    }

    #[test]
    fn job_counts_are_one_to_the_maximum() {
        assert!(JobCount::new(0).is_err());
        assert_eq!(JobCount::new(MAX_JOBS).unwrap().get(), MAX_JOBS);
        assert_eq!(
            JobCount::new(MAX_JOBS + 1).unwrap_err().to_string(),
            "job count 4097 is out of range (1 to 4096)"
        );
        assert_eq!("8".parse::<JobCount>().unwrap().get(), 8);
        assert_eq!(
            "x".parse::<JobCount>().unwrap_err().to_string(),
            "\"x\" is not a job count (a whole number from 1 to 4096)"
        );
        assert!(JobCount::cpus().get() >= 1);
    }

    #[test]
    fn shrinking_retires_free_tokens_now_and_held_ones_as_they_return() {
        let mut pool = Pool::new(jobs(4));
        for _ in 0..3 {
            assert!(pool.hand_out());
        }
        pool.set_target(jobs(1));
        let counts = pool.counts();
        assert_eq!((counts.size, counts.free, counts.held, counts.owed()), (3, 0, 3, 2));
        assert_eq!(pool.excess_held(), 2);
        pool.take_back(2);
        assert_eq!((pool.counts().size, pool.counts().free), (1, 0));
        pool.take_back(1);
        assert_eq!(pool.counts().free, 1);
    }

    #[test]
    fn an_allowance_withholds_without_taking_from_holders() {
        let mut pool = Pool::new(jobs(4));
        pool.hand_out();
        pool.hand_out();
        pool.set_allowance(Some(1));
        let counts = pool.counts();
        assert_eq!((counts.free, counts.held, counts.withheld), (0, 2, 2));
        assert_eq!(pool.excess_held(), 1);
        pool.take_back(1);
        assert_eq!((pool.counts().free, pool.counts().withheld), (0, 3));
        pool.set_allowance(None);
        assert_eq!(pool.counts().free, 3);
    }

    #[test]
    fn a_lent_token_grows_the_pool_until_repaid() {
        let mut pool = Pool::new(jobs(1));
        pool.hand_out();
        pool.lend();
        assert_eq!((pool.counts().size, pool.counts().free), (2, 1));
        pool.hand_out();
        pool.repay();
        assert_eq!(pool.counts().owed(), 1);
        pool.take_back(1);
        let counts = pool.counts();
        assert_eq!((counts.size, counts.free, counts.held, counts.lent), (1, 0, 1, 0));
    }
}
