//! Scheduling limits: how many tokens may be out right now, given the configured limits and what
//! the system says about its load and memory.
//!
//! - `jobs`: the pool size;
//! - `load_average`: while the 1-minute load average is at or above it, no token is handed out
//!   beyond `min_jobs` held in total;
//! - `min_memory_avail_mib`: the same while `MemAvailable` is below it;
//! - `per_process_limit`: how many tokens one process may hold (per-process backends);
//! - `load_recheck`: how often the load and memory are read again while over a limit.
//!
//! Readings come from a [`SystemProbe`]: [`ProcProbe`] reads `/proc`, tests drive a fake.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use steve_core::limits::{Governor, Limits, SystemProbe, SystemReading};
//!
//! #[derive(Debug)]
//! struct Busy;
//! impl SystemProbe for Busy {
//!     fn read(&mut self) -> SystemReading {
//!         SystemReading { load_average_1m: Some(9.0), memory_available_mib: Some(4096) }
//!     }
//! }
//!
//! let limits = Limits { load_average: Some(4.0), min_jobs: 2, ..Limits::new(8) };
//! let mut governor = Governor::new(limits, Box::new(Busy));
//! let now = Instant::now();
//! assert_eq!(governor.check(now), Some(2));
//! assert_eq!(governor.next_recheck(), Some(now + Duration::from_millis(500)));
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The limits a server applies; all of them can be changed at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Tokens in the pool.
    pub jobs: usize,
    /// Hold back tokens while the 1-minute load average is at or above this.
    pub load_average: Option<f64>,
    /// Tokens that may still be out while a load or memory limit holds tokens back.
    pub min_jobs: usize,
    /// Hold back tokens while less than this much memory (MiB) is available.
    pub min_memory_avail_mib: Option<u64>,
    /// Tokens one process may hold (per-process backends).
    pub per_process_limit: Option<usize>,
    /// Seconds between readings while over a limit.
    #[serde(with = "seconds")]
    pub load_recheck: Duration,
}

/// The keys `steve set` and `steve get` know, in the order they are listed.
pub const SETTINGS: [&str; 6] =
    ["jobs", "load-average", "min-jobs", "min-memory-avail", "per-process-limit", "load-recheck"];

/// A setting that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key.
    pub key: String,
    /// What was wrong with it.
    pub reason: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for SettingError {}

impl Limits {
    /// `jobs` tokens and no other limit.
    pub fn new(jobs: usize) -> Limits {
        Limits {
            jobs,
            load_average: None,
            min_jobs: 1,
            min_memory_avail_mib: None,
            per_process_limit: None,
            load_recheck: Duration::from_millis(500),
        }
    }

    /// The value of a setting as `steve get` prints it (`none` for an unset limit).
    pub fn get(&self, key: &str) -> Option<String> {
        let optional = |value: Option<String>| value.unwrap_or_else(|| "none".to_string());
        Some(match key {
            "jobs" => self.jobs.to_string(),
            "load-average" => optional(self.load_average.map(|v| v.to_string())),
            "min-jobs" => self.min_jobs.to_string(),
            "min-memory-avail" => optional(self.min_memory_avail_mib.map(|v| v.to_string())),
            "per-process-limit" => optional(self.per_process_limit.map(|v| v.to_string())),
            "load-recheck" => self.load_recheck.as_secs_f64().to_string(),
            _ => return None,
        })
    }

    /// Applies `KEY=VALUE` settings: all of them, or none if any is wrong. `none` (or `off`)
    /// clears an optional limit. `max_jobs` bounds `jobs`.
    pub fn apply(
        &mut self,
        settings: &[(String, String)],
        max_jobs: usize,
    ) -> Result<(), SettingError> {
        let mut changed = self.clone();
        for (key, value) in settings {
            changed
                .apply_one(key, value, max_jobs)
                .map_err(|reason| SettingError { key: key.clone(), reason })?;
        }
        *self = changed;
        Ok(())
    }

    fn apply_one(&mut self, key: &str, value: &str, max_jobs: usize) -> Result<(), String> {
        let cleared = matches!(value, "none" | "off");
        let count = |least: usize| -> Result<usize, String> {
            match value.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(format!("{value:?} is not a whole number of at least {least}")),
            }
        };
        match key {
            "jobs" => {
                let jobs = count(1)?;
                if jobs > max_jobs {
                    return Err(format!("{jobs} is more than this backend serves ({max_jobs})"));
                }
                self.jobs = jobs;
            }
            "min-jobs" => self.min_jobs = count(0)?,
            "per-process-limit" => {
                self.per_process_limit = if cleared { None } else { Some(count(1)?) }
            }
            "min-memory-avail" => {
                self.min_memory_avail_mib = if cleared {
                    None
                } else {
                    Some(value.parse().map_err(|_| format!("{value:?} is not a number of MiB"))?)
                }
            }
            "load-average" => {
                self.load_average = if cleared {
                    None
                } else {
                    match value.parse::<f64>() {
                        Ok(load) if load > 0.0 && load.is_finite() => Some(load),
                        _ => return Err(format!("{value:?} is not a positive load average")),
                    }
                }
            }
            "load-recheck" => match value.parse::<f64>() {
                Ok(seconds) if (0.01..=3600.0).contains(&seconds) => {
                    self.load_recheck = Duration::from_secs_f64(seconds)
                }
                _ => return Err(format!("{value:?} is not a number of seconds from 0.01 to 3600")),
            },
            _ => return Err(format!("unknown setting; known are {}", SETTINGS.join(", "))),
        }
        Ok(())
    }
}

/// What the system said at one reading.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SystemReading {
    /// The 1-minute load average.
    pub load_average_1m: Option<f64>,
    /// `MemAvailable`, in MiB.
    pub memory_available_mib: Option<u64>,
}

/// Where readings come from.
pub trait SystemProbe: fmt::Debug + Send {
    /// Reads the load average and available memory now; a value that cannot be read is `None`.
    fn read(&mut self) -> SystemReading;
}

/// Reads `/proc/loadavg` and `/proc/meminfo`.
#[derive(Debug, Default)]
pub struct ProcProbe;

impl SystemProbe for ProcProbe {
    fn read(&mut self) -> SystemReading {
        let load_average_1m = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        let memory_available_mib = fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        });
        SystemReading { load_average_1m, memory_available_mib }
    }
}

/// Why tokens are held back now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Pressure {
    /// The load average is at or above its limit.
    LoadAverage {
        /// The reading.
        current: f64,
        /// The limit.
        limit: f64,
    },
    /// Available memory is below its limit.
    Memory {
        /// The reading, MiB.
        available_mib: u64,
        /// The limit, MiB.
        minimum_mib: u64,
    },
}

impl fmt::Display for Pressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pressure::LoadAverage { current, limit } => {
                write!(f, "load average {current:.2} is at or above {limit:.2}")
            }
            Pressure::Memory { available_mib, minimum_mib } => {
                write!(f, "{available_mib} MiB available, below {minimum_mib} MiB")
            }
        }
    }
}

/// Applies the limits: says how many tokens may be out, and when to look again.
#[derive(Debug)]
pub struct Governor {
    limits: Limits,
    probe: Box<dyn SystemProbe>,
    last: SystemReading,
    pressure: Option<Pressure>,
    next_recheck: Option<Instant>,
}

impl Governor {
    /// A governor for `limits`, reading the system through `probe`.
    pub fn new(limits: Limits, probe: Box<dyn SystemProbe>) -> Governor {
        Governor {
            limits,
            probe,
            last: SystemReading::default(),
            pressure: None,
            next_recheck: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits; the next [`Governor::check`] applies them.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Reads the system (when a load or memory limit is set) and returns how many tokens may be
    /// out in total: `Some(min_jobs)` while over a limit, `None` otherwise.
    pub fn check(&mut self, now: Instant) -> Option<usize> {
        self.pressure = None;
        if self.limits.load_average.is_some() || self.limits.min_memory_avail_mib.is_some() {
            self.last = self.probe.read();
            self.pressure = self.find_pressure();
        }
        match self.pressure {
            Some(_) => {
                self.next_recheck = Some(now + self.limits.load_recheck);
                Some(self.limits.min_jobs)
            }
            None => {
                self.next_recheck = None;
                None
            }
        }
    }

    fn find_pressure(&self) -> Option<Pressure> {
        if let (Some(limit), Some(current)) = (self.limits.load_average, self.last.load_average_1m)
        {
            if current >= limit {
                return Some(Pressure::LoadAverage { current, limit });
            }
        }
        if let (Some(minimum_mib), Some(available_mib)) =
            (self.limits.min_memory_avail_mib, self.last.memory_available_mib)
        {
            if available_mib < minimum_mib {
                return Some(Pressure::Memory { available_mib, minimum_mib });
            }
        }
        None
    }

    /// When to check again: only while over a limit.
    pub fn next_recheck(&self) -> Option<Instant> {
        self.next_recheck
    }

    /// Why tokens are held back, if they are.
    pub fn pressure(&self) -> Option<Pressure> {
        self.pressure
    }

    /// The reading the last [`Governor::check`] took (empty when no limit needed one).
    pub fn last_reading(&self) -> SystemReading {
        self.last
    }
}

/// Serializes a duration as seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A probe the test sets.
    #[derive(Debug, Clone, Default)]
    struct Fake(Arc<Mutex<SystemReading>>);

    impl Fake {
        fn set(&self, load: f64, memory: u64) {
            *self.0.lock().unwrap() =
                SystemReading { load_average_1m: Some(load), memory_available_mib: Some(memory) };
        }
    }

    impl SystemProbe for Fake {
        fn read(&mut self) -> SystemReading {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn load_at_or_above_the_limit_holds_to_min_jobs_and_rechecks_only_while_over() {
        let fake = Fake::default();
        let limits = Limits { load_average: Some(4.0), min_jobs: 2, ..Limits::new(8) };
        let mut governor = Governor::new(limits, Box::new(fake.clone()));
        let now = Instant::now();
        fake.set(3.9, 1000);
        assert_eq!(governor.check(now), None);
        assert_eq!(governor.next_recheck(), None);
        fake.set(4.0, 1000);
        assert_eq!(governor.check(now), Some(2));
        assert_eq!(governor.next_recheck(), Some(now + Duration::from_millis(500)));
        assert_eq!(governor.pressure(), Some(Pressure::LoadAverage { current: 4.0, limit: 4.0 }));
        fake.set(1.0, 1000);
        assert_eq!(governor.check(now), None);
        assert_eq!(governor.pressure(), None);
    }

    #[test]
    fn low_memory_holds_to_min_jobs() {
        let fake = Fake::default();
        let limits = Limits { min_memory_avail_mib: Some(2048), ..Limits::new(8) };
        let mut governor = Governor::new(limits, Box::new(fake.clone()));
        fake.set(0.0, 2047);
        assert_eq!(governor.check(Instant::now()), Some(1));
        assert_eq!(governor.pressure().unwrap().to_string(), "2047 MiB available, below 2048 MiB");
        fake.set(0.0, 2048);
        assert_eq!(governor.check(Instant::now()), None);
    }

    #[test]
    fn without_system_limits_the_probe_is_not_read_to_decide() {
        #[derive(Debug)]
        struct Panics;
        impl SystemProbe for Panics {
            fn read(&mut self) -> SystemReading {
                panic!("read without a load or memory limit")
            }
        }
        let mut governor = Governor::new(Limits::new(4), Box::new(Panics));
        assert_eq!(governor.check(Instant::now()), None);
    }

    #[test]
    fn settings_apply_all_or_nothing() {
        let mut limits = Limits::new(4);
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        limits
            .apply(&set(&[("jobs", "6"), ("load-average", "3.5"), ("per-process-limit", "2")]), 100)
            .unwrap();
        assert_eq!(
            (limits.jobs, limits.load_average, limits.per_process_limit),
            (6, Some(3.5), Some(2))
        );
        let error = limits.apply(&set(&[("min-jobs", "3"), ("jobs", "0")]), 100).unwrap_err();
        assert_eq!(error.key, "jobs");
        assert_eq!(limits.min_jobs, 1, "nothing applied when one setting is wrong");
        assert!(limits.apply(&set(&[("jobs", "101")]), 100).is_err());
        assert!(limits.apply(&set(&[("colour", "red")]), 100).is_err());
        limits.apply(&set(&[("load-average", "none"), ("load-recheck", "0.25")]), 100).unwrap();
        assert_eq!(limits.get("load-average").as_deref(), Some("none"));
        assert_eq!(limits.get("load-recheck").as_deref(), Some("0.25"));
        for key in SETTINGS {
            assert!(limits.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn the_proc_probe_reads_this_machine() {
        let reading = ProcProbe.read();
        assert!(reading.load_average_1m.is_some_and(|load| load >= 0.0));
        assert!(reading.memory_available_mib.is_some_and(|mib| mib > 0));
    }
}
