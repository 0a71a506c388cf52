//! How long requests waited for their tokens: a histogram with fixed bounds, kept by the
//! device for every token that leaves the pool for a request (a read answered at once counts
//! as no wait), and exposed as the `steve_wait_seconds` histogram of `steve metrics`.
//!
//! The bounds run from a millisecond (a token passed on at once) to a minute (a build starved
//! behind others): the questions a jobserver's waits answer sit between.
//!
//! ```
//! use std::time::Duration;
//! use steve_core::accounting::waits::WaitHistogram;
//!
//! let mut waits = WaitHistogram::default();
//! waits.observe(Duration::ZERO);
//! waits.observe(Duration::from_millis(300));
//! let buckets = waits.cumulative();
//! assert_eq!(buckets[0], (0.001, 1)); // at most a millisecond: one
//! assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
//! assert_eq!((waits.count, waits.sum_seconds()), (2, 0.3));
//! ```
#![forbid(unsafe_code)]

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The buckets' upper bounds, in seconds; a last one, `+Inf`, takes the rest.
pub const BOUNDS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];

/// Counts of waits by how long they lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WaitHistogram {
    /// Waits in each bucket (not cumulative), the last one above every bound.
    pub buckets: [u64; BOUNDS.len() + 1],
    /// Waits observed.
    pub count: u64,
    /// Their total, in nanoseconds.
    pub sum_ns: u128,
}

impl WaitHistogram {
    /// Counts one wait of `waited`.
    pub fn observe(&mut self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let index = BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(BOUNDS.len());
        self.buckets[index] += 1;
        self.count += 1;
        self.sum_ns += waited.as_nanos();
    }

    /// The total waited, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Each bound with the waits at or below it, ending with `+Inf` and every wait: a
    /// Prometheus histogram's buckets.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let bounds = BOUNDS.iter().copied().chain([f64::INFINITY]);
        let mut total = 0;
        bounds
            .zip(self.buckets)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_on_a_bound_counts_in_that_bucket_and_longer_ones_in_the_last() {
        let mut waits = WaitHistogram::default();
        waits.observe(Duration::from_millis(5));
        waits.observe(Duration::from_secs(61));
        let cumulative = waits.cumulative();
        assert_eq!(cumulative[0], (0.001, 0));
        assert_eq!(cumulative[1], (0.005, 1));
        assert_eq!(cumulative[BOUNDS.len() - 1], (60.0, 1));
        assert_eq!(cumulative[BOUNDS.len()], (f64::INFINITY, 2));
    }
}
