//! Scheduling limits: how many tokens may be out right now, given the configured limits and what
//! the system says about its load and memory.
//!
//! - `load_average`: while the 1-minute load average is at or above it, no token is handed out
//!   beyond `min_jobs` held in total;
//! - `min_memory_avail_mib`: the same while less memory is available (`MemAvailable`, or less
//!   where the server's cgroup has less room under its `memory.max`); or
//!   `min_memory_avail_percent`, the same as a share of the memory the server may use (its
//!   cgroup's smallest `memory.max`, else `MemTotal`);
//! - `pressure`: the same while a resource's stall share (PSI, see [`super::pressure`]) is at
//!   or above its high mark, until it falls below its low mark;
//! - `per_process_limit`: how many tokens one process may hold (per-process backends);
//! - `load_recheck`: how often the load, memory and pressure are read while a limit reads them
//!   (a PSI trigger, where the kernel takes one, also says at once when a high mark is crossed);
//! - `shares`: who a free token goes to (`fairness`, per-user `weights` and `user-caps`, see
//!   [`super::shares`]; per-process backends).
//!
//! The pool size, `jobs`, is not a limit: it is the pool's own target
//! ([`Pool::target`](super::pool::Pool::target)), its one source of truth. [`Settings`] is the
//! view `steve set` and `steve get` work on: the pool size with the limits.
//!
//! Readings come from a [`SystemProbe`]: the server's `ProcProbe` reads `/proc`, tests drive a
//! fake. Nothing here does I/O.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use steve_core::accounting::limits::{Governor, Limits, SystemProbe, SystemReading};
//!
//! #[derive(Debug)]
//! struct Busy;
//! impl SystemProbe for Busy {
//!     fn read(&mut self) -> SystemReading {
//!         SystemReading {
//!             load_average_1m: Some(9.0),
//!             memory_available_mib: Some(4096),
//!             ..SystemReading::default()
//!         }
//!     }
//! }
//!
//! let limits = Limits { load_average: Some(4.0), min_jobs: 2, ..Limits::default() };
//! let mut governor = Governor::new(limits, Box::new(Busy));
//! let now = Instant::now();
//! assert_eq!(governor.check(now), Some(2));
//! assert_eq!(governor.next_recheck(), Some(now + Duration::from_millis(500)));
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pool::JobCount;
use super::pressure::{PressureLimit, PressureLimits, Pressures, Resource, Stall};
use super::shares::{self, Shares};

/// The limits a server applies; all of them can be changed at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Hold back tokens while the 1-minute load average is at or above this.
    pub load_average: Option<f64>,
    /// Tokens that may still be out while a load or memory limit holds tokens back.
    pub min_jobs: usize,
    /// Hold back tokens while less than this much memory (MiB) is available.
    pub min_memory_avail_mib: Option<u64>,
    /// Hold back tokens while less than this percentage of the memory the server may use is
    /// available (instead of `min_memory_avail_mib`).
    #[serde(default)]
    pub min_memory_avail_percent: Option<f64>,
    /// Tokens one process may hold (per-process backends).
    pub per_process_limit: Option<usize>,
    /// Seconds between readings while over a limit.
    #[serde(with = "seconds")]
    pub load_recheck: Duration,
    /// Who a free token goes to: the fairness policy, per-user weights and caps.
    #[serde(default)]
    pub shares: Shares,
    /// Limits on CPU, memory and I/O pressure.
    #[serde(default)]
    pub pressure: PressureLimits,
}

/// The keys `steve set` and `steve get` know, in the order they are listed.
pub const SETTINGS: [&str; 12] = [
    "jobs",
    "load-average",
    "min-jobs",
    "min-memory-avail",
    "per-process-limit",
    "load-recheck",
    "fairness",
    "weights",
    "user-caps",
    "cpu-pressure",
    "memory-pressure",
    "io-pressure",
];

/// The pressure setting of each resource: `cpu-pressure`, `memory-pressure`, `io-pressure`.
fn pressure_key(key: &str) -> Option<Resource> {
    Resource::ALL.into_iter().find(|resource| key == format!("{}-pressure", resource.name()))
}

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

/// The settings of a running server as `steve set` and `steve get` see them: the pool size and
/// the limits. A view: the server keeps `jobs` in its pool and the limits in its governor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Tokens in the pool.
    pub jobs: JobCount,
    /// The scheduling limits.
    #[serde(flatten)]
    pub limits: Limits,
}

impl Default for Limits {
    /// No limit: every token may go out whatever the load.
    fn default() -> Limits {
        Limits {
            load_average: None,
            min_jobs: 1,
            min_memory_avail_mib: None,
            min_memory_avail_percent: None,
            per_process_limit: None,
            load_recheck: Duration::from_millis(500),
            shares: Shares::default(),
            pressure: PressureLimits::default(),
        }
    }
}

impl Limits {
    /// Whether a limit needs readings of the system (load average, memory or pressure).
    pub fn reads_the_system(&self) -> bool {
        self.load_average.is_some()
            || self.min_memory_avail_mib.is_some()
            || self.min_memory_avail_percent.is_some()
            || self.pressure.any()
    }
}

impl Settings {
    /// The value of a setting as `steve get` prints it (`none` for an unset limit).
    pub fn get(&self, key: &str) -> Option<String> {
        let optional = |value: Option<String>| value.unwrap_or_else(|| "none".to_string());
        let limits = &self.limits;
        Some(match key {
            "jobs" => self.jobs.to_string(),
            "load-average" => optional(limits.load_average.map(|v| v.to_string())),
            "min-jobs" => limits.min_jobs.to_string(),
            "min-memory-avail" => match limits.min_memory_avail_percent {
                Some(percent) => format!("{percent}%"),
                None => optional(limits.min_memory_avail_mib.map(|v| v.to_string())),
            },
            "per-process-limit" => optional(limits.per_process_limit.map(|v| v.to_string())),
            "load-recheck" => limits.load_recheck.as_secs_f64().to_string(),
            "fairness" => limits.shares.fairness.to_string(),
            "weights" => shares::format_user_map(&limits.shares.weights),
            "user-caps" => shares::format_user_map(&limits.shares.user_caps),
            key => optional(limits.pressure.get(pressure_key(key)?).map(|l| l.to_string())),
        })
    }

    /// Applies `KEY=VALUE` settings: all of them, or none if any is wrong. `none` (or `off`)
    /// clears an optional limit.
    pub fn apply(&mut self, settings: &[(String, String)]) -> Result<(), SettingError> {
        let mut changed = self.clone();
        for (key, value) in settings {
            changed
                .apply_one(key, value)
                .map_err(|reason| SettingError { key: key.clone(), reason })?;
        }
        *self = changed;
        Ok(())
    }

    fn apply_one(&mut self, key: &str, value: &str) -> Result<(), String> {
        let cleared = matches!(value, "none" | "off");
        let count = |least: usize| -> Result<usize, String> {
            match value.parse::<usize>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(format!("{value:?} is not a whole number of at least {least}")),
            }
        };
        let limits = &mut self.limits;
        match key {
            "jobs" => {
                self.jobs =
                    value.parse().map_err(|error: super::pool::JobCountError| error.to_string())?
            }
            "min-jobs" => limits.min_jobs = count(0)?,
            "per-process-limit" => {
                limits.per_process_limit = if cleared { None } else { Some(count(1)?) }
            }
            "min-memory-avail" => {
                (limits.min_memory_avail_mib, limits.min_memory_avail_percent) = if cleared {
                    (None, None)
                } else if let Some(percent) = value.strip_suffix('%') {
                    match percent.parse::<f64>() {
                        Ok(p) if p > 0.0 && p <= 100.0 => (None, Some(p)),
                        _ => {
                            return Err(format!(
                                "{value:?} is not a percentage above 0 and at most 100"
                            ))
                        }
                    }
                } else {
                    let mib = value.parse().map_err(|_| {
                        format!("{value:?} is neither a number of MiB nor a percentage")
                    })?;
                    (Some(mib), None)
                }
            }
            "load-average" => {
                limits.load_average = if cleared {
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
                    limits.load_recheck = Duration::from_secs_f64(seconds)
                }
                _ => return Err(format!("{value:?} is not a number of seconds from 0.01 to 3600")),
            },
            "fairness" => limits.shares.fairness = value.parse().map_err(|e| format!("{e}"))?,
            "weights" => {
                limits.shares.weights = shares::parse_user_map(value, shares::parse_weight)?
            }
            "user-caps" => {
                limits.shares.user_caps = shares::parse_user_map(value, shares::parse_cap)?
            }
            key if pressure_key(key).is_some() => {
                let limit = if cleared { None } else { Some(PressureLimit::parse(value)?) };
                limits.pressure.set(pressure_key(key).expect("matched"), limit);
            }
            _ => return Err(format!("unknown setting; known are {}", SETTINGS.join(", "))),
        }
        Ok(())
    }
}

/// What the system said at one reading.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SystemReading {
    /// The 1-minute load average.
    pub load_average_1m: Option<f64>,
    /// Memory available to the server, in MiB: `MemAvailable`, or less where its cgroup (or an
    /// ancestor) has less room under its `memory.max`.
    pub memory_available_mib: Option<u64>,
    /// The memory the server may use, in MiB: its cgroup's smallest `memory.max`, else
    /// `MemTotal`.
    #[serde(default)]
    pub memory_limit_mib: Option<u64>,
    /// Where `memory_limit_mib` came from: `MemTotal`, or `memory.max N of DIR`.
    #[serde(default)]
    pub memory_from: Option<String>,
    /// The stall shares over the last two seconds, where pressure files can be read.
    #[serde(default)]
    pub pressure: Pressures,
}

/// Where readings come from.
pub trait SystemProbe: fmt::Debug + Send {
    /// Reads the load average, available memory and stall shares now; a value that cannot be
    /// read is `None`.
    fn read(&mut self) -> SystemReading;

    /// Asks the kernel to say when a pressure limit's high mark is crossed (a PSI trigger per
    /// limit); returns a line for each limit it could not watch so (those are sampled only).
    /// By default nothing is watched.
    fn watch_pressure(&mut self, limits: &PressureLimits) -> Vec<String> {
        let _ = limits;
        Vec::new()
    }

    /// The descriptors that poll `POLLPRI` when a watched high mark is crossed.
    fn pressure_triggers(&self) -> Vec<(Resource, std::os::fd::BorrowedFd<'_>)> {
        Vec::new()
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
    /// A resource's stall share reached its high mark and has not fallen below its low mark.
    Stall {
        /// CPU, memory or I/O.
        resource: Resource,
        /// Some or full.
        stall: Stall,
        /// The share now, percent (`None` just after a trigger, before a reading has it).
        current: Option<f64>,
        /// The high mark.
        high: f64,
        /// The low mark.
        low: f64,
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
            Pressure::Stall { resource, stall, current, high, low } => match current {
                Some(current) => write!(
                    f,
                    "{resource} pressure ({stall}) {current:.1}% reached {high}% (until below \
                     {low}%)"
                ),
                None => write!(
                    f,
                    "{resource} pressure ({stall}) crossed {high}%, the kernel says (until below \
                     {low}%)"
                ),
            },
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
    /// The resources whose pressure limit holds tokens back now (between the marks they stay).
    engaged: Vec<Resource>,
    /// The resources whose trigger fired since the last check.
    fired: Vec<Resource>,
    /// What the probe said it could not watch, for the server's log.
    notes: Vec<String>,
}

impl Governor {
    /// A governor for `limits`, reading the system through `probe`.
    pub fn new(limits: Limits, probe: Box<dyn SystemProbe>) -> Governor {
        let mut probe = probe;
        let notes = probe.watch_pressure(&limits.pressure);
        Governor {
            limits,
            probe,
            last: SystemReading::default(),
            pressure: None,
            next_recheck: None,
            engaged: Vec::new(),
            fired: Vec::new(),
            notes,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits; the next [`Governor::check`] applies them. Changed pressure limits
    /// are watched anew (see [`Governor::triggers`]).
    pub fn set_limits(&mut self, limits: Limits) {
        if limits.pressure != self.limits.pressure {
            self.notes.extend(self.probe.watch_pressure(&limits.pressure));
            self.engaged.retain(|resource| limits.pressure.get(*resource).is_some());
        }
        self.limits = limits;
    }

    /// The descriptors that poll `POLLPRI` when a pressure limit's high mark is crossed; call
    /// [`Governor::trigger_fired`] then, and check.
    pub fn triggers(&self) -> Vec<(Resource, std::os::fd::BorrowedFd<'_>)> {
        self.probe.pressure_triggers()
    }

    /// The kernel said `resource`'s high mark was crossed: the next check holds tokens back for
    /// it, whatever its own reading (which may not have caught up yet) says.
    pub fn trigger_fired(&mut self, resource: Resource) {
        if !self.fired.contains(&resource) {
            self.fired.push(resource);
        }
    }

    /// Lines the probe had for the log (pressure limits it could not watch with a trigger).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Reads the system (when a load or memory limit is set) and returns how many tokens may be
    /// out in total: `Some(min_jobs)` while over a limit, `None` otherwise. While a limit that
    /// reads the system is set, the next check is due `load_recheck` from now, over the limit or
    /// not: a client that only ever blocks in `read` asks the server nothing in between.
    pub fn check(&mut self, now: Instant) -> Option<usize> {
        self.pressure = None;
        self.next_recheck = None;
        if self.limits.reads_the_system() {
            self.last = self.probe.read();
            self.pressure = self.find_pressure();
            self.next_recheck = Some(now + self.limits.load_recheck);
        }
        self.pressure.map(|_| self.limits.min_jobs)
    }

    /// A reading of the system now, for a status report, whether or not a limit needs one.
    pub fn reading(&mut self) -> SystemReading {
        if self.limits.reads_the_system() {
            self.last.clone()
        } else {
            self.probe.read()
        }
    }

    fn find_pressure(&mut self) -> Option<Pressure> {
        let stall = self.find_stall();
        if let (Some(limit), Some(current)) = (self.limits.load_average, self.last.load_average_1m)
        {
            if current >= limit {
                return Some(Pressure::LoadAverage { current, limit });
            }
        }
        let percent_of_limit = self.limits.min_memory_avail_percent.and_then(|percent| {
            Some((self.last.memory_limit_mib? as f64 * percent / 100.0).ceil() as u64)
        });
        if let (Some(minimum_mib), Some(available_mib)) =
            (self.limits.min_memory_avail_mib.or(percent_of_limit), self.last.memory_available_mib)
        {
            if available_mib < minimum_mib {
                return Some(Pressure::Memory { available_mib, minimum_mib });
            }
        }
        stall
    }

    /// Which pressure limits hold tokens back after this reading: from a fired trigger or the
    /// high mark on, until the share is below the low mark (or cannot be read). The first of
    /// them, in [`Resource::ALL`]'s order, is the one reported.
    fn find_stall(&mut self) -> Option<Pressure> {
        let fired = std::mem::take(&mut self.fired);
        let mut first = None;
        for resource in Resource::ALL {
            let Some(limit) = self.limits.pressure.get(resource) else { continue };
            let current = self.last.pressure.get(resource).and_then(|s| s.share(limit.stall));
            let was = self.engaged.contains(&resource);
            let holds = fired.contains(&resource)
                || current.is_some_and(|share| share >= limit.high || (was && share >= limit.low));
            self.engaged.retain(|engaged| *engaged != resource);
            if holds {
                self.engaged.push(resource);
                first.get_or_insert(Pressure::Stall {
                    resource,
                    stall: limit.stall,
                    current,
                    high: limit.high,
                    low: limit.low,
                });
            }
        }
        first
    }

    /// When to check again: only while a limit reads the system.
    pub fn next_recheck(&self) -> Option<Instant> {
        self.next_recheck
    }

    /// Why tokens are held back, if they are.
    pub fn pressure(&self) -> Option<Pressure> {
        self.pressure
    }

    /// The reading the last [`Governor::check`] took (empty when no limit needed one).
    pub fn last_reading(&self) -> SystemReading {
        self.last.clone()
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
            *self.0.lock().unwrap() = SystemReading {
                load_average_1m: Some(load),
                memory_available_mib: Some(memory),
                ..SystemReading::default()
            };
        }

        fn set_memory_pressure(&self, some: f64) {
            let stalls = crate::accounting::pressure::Stalls { some, full: Some(some / 2.0) };
            self.0.lock().unwrap().pressure.memory = Some(stalls);
        }
    }

    impl SystemProbe for Fake {
        fn read(&mut self) -> SystemReading {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn load_at_or_above_the_limit_holds_to_min_jobs_and_rechecks_while_a_limit_is_set() {
        let fake = Fake::default();
        let limits = Limits { load_average: Some(4.0), min_jobs: 2, ..Limits::default() };
        let mut governor = Governor::new(limits, Box::new(fake.clone()));
        let now = Instant::now();
        fake.set(3.9, 1000);
        assert_eq!(governor.check(now), None);
        assert_eq!(governor.next_recheck(), Some(now + Duration::from_millis(500)));
        fake.set(4.0, 1000);
        assert_eq!(governor.check(now), Some(2));
        assert_eq!(governor.next_recheck(), Some(now + Duration::from_millis(500)));
        assert_eq!(governor.pressure(), Some(Pressure::LoadAverage { current: 4.0, limit: 4.0 }));
        fake.set(1.0, 1000);
        assert_eq!(governor.check(now), None);
        assert_eq!(governor.pressure(), None);
        governor.set_limits(Limits::default());
        assert_eq!(governor.check(now), None);
        assert_eq!(governor.next_recheck(), None, "no limit reads the system: no recheck");
    }

    #[test]
    fn low_memory_holds_to_min_jobs() {
        let fake = Fake::default();
        let limits = Limits { min_memory_avail_mib: Some(2048), ..Limits::default() };
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
        let mut governor = Governor::new(Limits::default(), Box::new(Panics));
        assert_eq!(governor.check(Instant::now()), None);
    }

    #[test]
    fn settings_apply_all_or_nothing() {
        let mut settings = Settings { jobs: JobCount::new(4).unwrap(), limits: Limits::default() };
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        settings
            .apply(&set(&[("jobs", "6"), ("load-average", "3.5"), ("per-process-limit", "2")]))
            .unwrap();
        assert_eq!(
            (settings.jobs.get(), settings.limits.load_average, settings.limits.per_process_limit),
            (6, Some(3.5), Some(2))
        );
        let error = settings.apply(&set(&[("min-jobs", "3"), ("jobs", "0")])).unwrap_err();
        assert_eq!(error.key, "jobs");
        assert_eq!(settings.limits.min_jobs, 1, "nothing applied when one setting is wrong");
        assert!(settings.apply(&set(&[("jobs", "4097")])).is_err());
        assert!(settings.apply(&set(&[("colour", "red")])).is_err());
        settings.apply(&set(&[("load-average", "none"), ("load-recheck", "0.25")])).unwrap();
        assert_eq!(settings.get("load-average").as_deref(), Some("none"));
        assert_eq!(settings.get("load-recheck").as_deref(), Some("0.25"));
        for key in SETTINGS {
            assert!(settings.get(key).is_some(), "{key}");
        }
        let json = serde_json::to_value(&settings).unwrap();
        assert_eq!(json["jobs"], 6, "the pool size sits beside the limits: {json}");
        assert_eq!(json["load_recheck"], 0.25);
    }

    #[test]
    fn a_pressure_limit_holds_from_its_high_mark_until_below_its_low_mark() {
        let fake = Fake::default();
        fake.set(0.0, 4096);
        let limits = Limits {
            min_jobs: 1,
            pressure: PressureLimits {
                memory: Some(PressureLimit::parse("some:20/5").unwrap()),
                ..PressureLimits::default()
            },
            ..Limits::default()
        };
        let mut governor = Governor::new(limits, Box::new(fake.clone()));
        let now = Instant::now();
        // Below the high mark: nothing held, but the system is read at every recheck.
        fake.set_memory_pressure(19.9);
        assert_eq!(governor.check(now), None);
        assert!(governor.next_recheck().is_some());
        // At the high mark: down to min-jobs.
        fake.set_memory_pressure(20.0);
        assert_eq!(governor.check(now), Some(1));
        let Some(Pressure::Stall { resource, current, .. }) = governor.pressure() else {
            panic!("{:?}", governor.pressure())
        };
        assert_eq!((resource, current), (Resource::Memory, Some(20.0)));
        // Between the marks: still held (no flapping).
        fake.set_memory_pressure(10.0);
        assert_eq!(governor.check(now), Some(1));
        fake.set_memory_pressure(5.0);
        assert_eq!(governor.check(now), Some(1), "at the low mark it still holds");
        // Below the low mark: tokens flow; between the marks again, they keep flowing.
        fake.set_memory_pressure(4.9);
        assert_eq!(governor.check(now), None);
        fake.set_memory_pressure(10.0);
        assert_eq!(governor.check(now), None);
        // A trigger holds at once, even before the reading has caught up.
        governor.trigger_fired(Resource::Memory);
        assert_eq!(governor.check(now), Some(1));
        // ...and the reading decides from then on.
        fake.set_memory_pressure(1.0);
        assert_eq!(governor.check(now), None);
        // `full` reads the other share; a lifted limit lets go at once.
        let mut limits = governor.limits().clone();
        limits.pressure.memory = Some(PressureLimit::parse("full:8/4").unwrap());
        governor.set_limits(limits.clone());
        fake.set_memory_pressure(16.0);
        assert_eq!(governor.check(now), Some(1));
        assert!(governor
            .pressure()
            .unwrap()
            .to_string()
            .starts_with("memory pressure (full) 8.0%"));
        limits.pressure.memory = None;
        governor.set_limits(limits);
        assert_eq!(governor.check(now), None);
    }

    #[test]
    fn pressure_settings_parse_print_and_clear() {
        let mut settings = Settings { jobs: JobCount::new(4).unwrap(), limits: Limits::default() };
        let set = |key: &str, value: &str| vec![(key.to_string(), value.to_string())];
        settings.apply(&set("io-pressure", "full:40")).unwrap();
        assert_eq!(settings.get("io-pressure").as_deref(), Some("full:40/20"));
        assert_eq!(settings.get("cpu-pressure").as_deref(), Some("none"));
        assert!(settings.limits.reads_the_system());
        let error = settings.apply(&set("memory-pressure", "some:10/30")).unwrap_err();
        assert_eq!(error.to_string(), "memory-pressure: the low mark 30 is above the high mark 10");
        settings.apply(&set("io-pressure", "none")).unwrap();
        assert!(!settings.limits.reads_the_system());
    }

    #[test]
    fn a_memory_limit_in_percent_is_a_share_of_what_the_server_may_use() {
        let fake = Fake::default();
        let limits = Limits { min_memory_avail_percent: Some(25.0), ..Limits::default() };
        let mut governor = Governor::new(limits, Box::new(fake.clone()));
        let reading = |available: u64| SystemReading {
            memory_available_mib: Some(available),
            memory_limit_mib: Some(512),
            memory_from: Some("memory.max 536870912 of /sys/fs/cgroup/two".into()),
            ..SystemReading::default()
        };
        // A quarter of a 512 MiB cgroup: 128 MiB.
        *fake.0.lock().unwrap() = reading(127);
        assert_eq!(governor.check(Instant::now()), Some(1));
        assert_eq!(governor.pressure().unwrap().to_string(), "127 MiB available, below 128 MiB");
        *fake.0.lock().unwrap() = reading(128);
        assert_eq!(governor.check(Instant::now()), None);
        let mut settings = Settings { jobs: JobCount::new(2).unwrap(), limits: Limits::default() };
        let set = |value: &str| vec![("min-memory-avail".to_string(), value.to_string())];
        settings.apply(&set("10%")).unwrap();
        assert_eq!(settings.get("min-memory-avail").as_deref(), Some("10%"));
        settings.apply(&set("300")).unwrap();
        assert_eq!(
            (settings.limits.min_memory_avail_mib, settings.limits.min_memory_avail_percent),
            (Some(300), None)
        );
        assert!(settings.apply(&set("0%")).is_err() && settings.apply(&set("ten")).is_err());
    }
}
