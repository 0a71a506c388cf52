//! Pressure stall information (PSI): the share of time tasks stalled on CPU, memory or I/O,
//! which the kernel keeps in `/proc/pressure/{cpu,memory,io}` and in each cgroup's
//! `{cpu,memory,io}.pressure`. A limit on it holds tokens back from the moment the stall share
//! reaches its high mark until it falls below its low mark, so that tokens do not flap.
//!
//! The stall share steve uses is its own, over the last [`WINDOW`], from the files' cumulative
//! `total=` microseconds ([`StallRate`]): the kernel's `avg10` is a ten-second average, which
//! lags as the load average does. The kernel can also say the moment a threshold is crossed (a
//! *trigger*, `some 200000 2000000` written to the file and `poll` for `POLLPRI`): [`trigger`]
//! writes it. Nothing here does I/O.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The window steve's stall shares are measured over, and the PSI trigger's window (a multiple
/// of two seconds, which any user may ask for).
pub const WINDOW: Duration = Duration::from_secs(2);

/// What tasks stalled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// Waiting for a CPU.
    Cpu,
    /// Waiting for memory (reclaim, refaults, swap-in).
    Memory,
    /// Waiting for I/O.
    Io,
}

impl Resource {
    /// Every resource, in the order reports list them.
    pub const ALL: [Resource; 3] = [Resource::Cpu, Resource::Memory, Resource::Io];

    /// The name in `/proc/pressure/NAME` and `NAME.pressure`.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Io => "io",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which stall share a limit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stall {
    /// Some tasks stalled (the resource is contended).
    #[default]
    Some,
    /// All non-idle tasks stalled at once (the machine did no work).
    Full,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stall::Some => "some",
            Stall::Full => "full",
        })
    }
}

/// A limit on one resource's stall share, in percent: tokens are held back from `high` on,
/// and flow again below `low`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PressureLimit {
    /// `some` or `full`.
    pub stall: Stall,
    /// The share (percent) at which tokens are held back.
    pub high: f64,
    /// The share below which they flow again.
    pub low: f64,
}

impl PressureLimit {
    /// Parses `[some:|full:]HIGH[/LOW]` (percent; LOW defaults to half of HIGH).
    pub fn parse(text: &str) -> Result<PressureLimit, String> {
        let (stall, rest) = match text.split_once(':') {
            Some(("some", rest)) => (Stall::Some, rest),
            Some(("full", rest)) => (Stall::Full, rest),
            Some((other, _)) => return Err(format!("{other:?} is neither some nor full")),
            None => (Stall::Some, text),
        };
        let percent = |word: &str| match word.parse::<f64>() {
            Ok(value) if value > 0.0 && value <= 100.0 => Ok(value),
            _ => Err(format!("{word:?} is not a percentage above 0 and at most 100")),
        };
        let (high, low) = match rest.split_once('/') {
            Some((high, low)) => (percent(high)?, percent(low)?),
            None => {
                let high = percent(rest)?;
                (high, high / 2.0)
            }
        };
        if low > high {
            return Err(format!("the low mark {low} is above the high mark {high}"));
        }
        Ok(PressureLimit { stall, high, low })
    }
}

impl fmt::Display for PressureLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.stall, self.high, self.low)
    }
}

/// One value for each resource, CPU, memory and I/O: the limits, the shares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ByResource<T> {
    /// CPU.
    pub cpu: Option<T>,
    /// Memory.
    pub memory: Option<T>,
    /// I/O.
    pub io: Option<T>,
}

impl<T> Default for ByResource<T> {
    fn default() -> ByResource<T> {
        ByResource { cpu: None, memory: None, io: None }
    }
}

impl<T: Copy> ByResource<T> {
    /// The value of `resource`.
    pub fn get(&self, resource: Resource) -> Option<T> {
        match resource {
            Resource::Cpu => self.cpu,
            Resource::Memory => self.memory,
            Resource::Io => self.io,
        }
    }

    /// Sets the value of `resource`.
    pub fn set(&mut self, resource: Resource, value: Option<T>) {
        match resource {
            Resource::Cpu => self.cpu = value,
            Resource::Memory => self.memory = value,
            Resource::Io => self.io = value,
        }
    }

    /// Whether any resource has one.
    pub fn any(&self) -> bool {
        Resource::ALL.iter().any(|resource| self.get(*resource).is_some())
    }
}

/// The pressure limits, by resource.
pub type PressureLimits = ByResource<PressureLimit>;

/// The stall shares of every resource that could be read.
pub type Pressures = ByResource<Stalls>;

/// One resource's stall shares, in percent of the last [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Stalls {
    /// Some tasks stalled.
    pub some: f64,
    /// All tasks stalled (`None` where the file has no `full` line: the system's cpu before
    /// Linux 5.13).
    pub full: Option<f64>,
}

impl Stalls {
    /// The share a limit of kind `stall` reads.
    pub fn share(&self, stall: Stall) -> Option<f64> {
        match stall {
            Stall::Some => Some(self.some),
            Stall::Full => self.full,
        }
    }
}

/// The cumulative stall times a pressure file says (microseconds since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallTotals {
    /// `some ... total=`.
    pub some_us: u64,
    /// `full ... total=`, if the file has that line.
    pub full_us: Option<u64>,
}

/// Parses a pressure file: `some avg10=.. avg60=.. avg300=.. total=N`, then the same for `full`.
pub fn parse_totals(text: &str) -> Option<StallTotals> {
    let total = |kind: &str| -> Option<u64> {
        let line = text.lines().find(|line| line.split_whitespace().next() == Some(kind))?;
        line.split_whitespace().find_map(|field| field.strip_prefix("total="))?.parse().ok()
    };
    Some(StallTotals { some_us: total("some")?, full_us: total("full") })
}

/// The trigger to write to a pressure file so that `poll` says `POLLPRI` once `limit`'s high
/// mark is crossed: that share of [`WINDOW`] spent stalled.
pub fn trigger(limit: PressureLimit) -> String {
    let window_us = WINDOW.as_micros() as u64;
    // The kernel takes a stall time from 1 us up to the window.
    let stall_us = ((limit.high / 100.0) * window_us as f64).round().clamp(1.0, window_us as f64);
    format!("{} {} {window_us}", limit.stall, stall_us as u64)
}

/// Turns cumulative stall times into the share of the last [`WINDOW`] spent stalled, from the
/// samples it is given (one per reading).
#[derive(Debug, Default, Clone)]
pub struct StallRate {
    samples: VecDeque<(Instant, StallTotals)>,
}

impl StallRate {
    /// Adds a sample taken at `now`; returns the shares since the oldest sample within the
    /// window (or the one just before it), `None` until there are two.
    pub fn sample(&mut self, now: Instant, totals: StallTotals) -> Option<Stalls> {
        // Keep one sample at least WINDOW old, so that the share spans the whole window.
        while self.samples.len() >= 2 && self.samples[1].0 + WINDOW <= now {
            self.samples.pop_front();
        }
        self.samples.push_back((now, totals));
        let (then, old) = *self.samples.front()?;
        let elapsed = now.saturating_duration_since(then).as_micros() as f64;
        if elapsed <= 0.0 {
            return None;
        }
        let share =
            |new: u64, old: u64| (new.saturating_sub(old) as f64 / elapsed * 100.0).min(100.0);
        Some(Stalls {
            some: share(totals.some_us, old.some_us),
            full: totals.full_us.zip(old.full_us).map(|(new, old)| share(new, old)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_a_default_kind_and_low_mark() {
        let limit = PressureLimit::parse("20").unwrap();
        assert_eq!((limit.stall, limit.high, limit.low), (Stall::Some, 20.0, 10.0));
        let limit = PressureLimit::parse("full:30/5").unwrap();
        assert_eq!((limit.stall, limit.high, limit.low), (Stall::Full, 30.0, 5.0));
        assert_eq!(limit.to_string(), "full:30/5");
        assert_eq!(PressureLimit::parse(&limit.to_string()).unwrap(), limit);
        for bad in ["", "0", "101", "some:", "most:10", "10/20", "x", "10/", "-5", "NaN"] {
            assert!(PressureLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pressure_files_parse_and_triggers_cover_the_high_mark() {
        let text = "some avg10=1.50 avg60=0.80 avg300=0.20 total=123456\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        assert_eq!(parse_totals(text), Some(StallTotals { some_us: 123456, full_us: Some(789) }));
        let cpu_before_5_13 = "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(parse_totals(cpu_before_5_13), Some(StallTotals { some_us: 5, full_us: None }));
        assert_eq!(parse_totals("nonsense"), None);
        let limit = PressureLimit::parse("some:10").unwrap();
        assert_eq!(trigger(limit), "some 200000 2000000");
        assert_eq!(trigger(PressureLimit::parse("full:100").unwrap()), "full 2000000 2000000");
    }

    #[test]
    fn shares_come_from_total_differences_over_the_window() {
        let mut rate = StallRate::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let totals = |some_us, full_us| StallTotals { some_us, full_us: Some(full_us) };
        assert_eq!(rate.sample(at(0), totals(0, 0)), None);
        // Half a second, a quarter of it stalled for some tasks, none for all.
        let stalls = rate.sample(at(500), totals(125_000, 0)).unwrap();
        assert_eq!((stalls.some, stalls.full), (25.0, Some(0.0)));
        // Long after: only the last window counts, from the sample at its start.
        rate.sample(at(10_000), totals(125_000, 0));
        let stalls = rate.sample(at(12_000), totals(1_125_000, 500_000)).unwrap();
        assert_eq!((stalls.some, stalls.full), (50.0, Some(25.0)));
    }
}
