//! The status of a server, the same for every backend: what `steve status` shows (as text or
//! JSON), what SIGUSR1 writes to the log, and what `steve get` reads values from. A model only:
//! the server's event loop fills in what every server has, and each backend its
//! [`BackendReport`].
//!
//! Every field is documented in `docs/reference.md`; a test checks that the docs name each key
//! a real server reports.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::accounting::limits::{Pressure, Settings, SystemReading};
use crate::accounting::pressure::Resource;
use crate::accounting::shares::{format_user_map, Fairness};
use crate::accounting::waits::WaitHistogram;

/// A server's state at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The backend's name.
    pub backend: String,
    /// The path clients open.
    pub path: PathBuf,
    /// The control socket, if the server has one.
    pub control: Option<PathBuf>,
    /// The server's process id.
    pub daemon_pid: u32,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// The tokens.
    pub pool: PoolReport,
    /// The settings in force: `jobs` and the limits.
    pub limits: Settings,
    /// Where the pool size came from: `-j`, the CPUs the server may use (and what limits them:
    /// its affinity, its cgroup's cpuset or cpu.max), or `steve set`.
    #[serde(default)]
    pub jobs_from: String,
    /// The last reading of the system.
    pub system: SystemReading,
    /// Why tokens are held back now, if they are.
    pub limited_by: Option<Pressure>,
    /// Whether `holders` counts tokens per process (device backends), or lists the processes
    /// that have the jobserver open (a pipe cannot say who holds what).
    pub holders_exact: bool,
    /// The processes holding tokens (or, for a pipe, having it open), by pid.
    pub holders: Vec<HolderReport>,
    /// The waiting requests, oldest first; `None` where the transport cannot see them.
    pub waiters: Option<Vec<WaiterReport>>,
    /// Holders and waiters by build (a top-level client and the clients under it), by build
    /// number; `None` where the transport cannot tell who holds what.
    #[serde(default)]
    pub builds: Option<Vec<BuildReport>>,
    /// The companion FIFO fed from the same pool, if the server has one. Its tokens are in
    /// `pool.held`; it is not among `holders`.
    #[serde(default)]
    pub companion: Option<CompanionReport>,
    /// Running totals.
    pub counters: CounterReport,
}

/// A device's companion FIFO: a named pipe for the clients that take only a FIFO, drawing its
/// tokens from the device's pool one at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompanionReport {
    /// The named pipe's path.
    pub path: PathBuf,
    /// Tokens it holds: in the pipe, or with its readers.
    pub tokens: usize,
    /// Tokens in the pipe now (its spare).
    pub in_pipe: usize,
    /// Whether it waits in the queue for its next token.
    pub waiting: bool,
    /// Tokens recovered from its readers that died holding them.
    pub recovered: u64,
    /// The processes that have it open (a pipe cannot say who holds which token).
    pub openers: Vec<HolderReport>,
}

/// What every server reports the same way: which it is, and the limits and system it works
/// under. [`StatusReport::assemble`] adds the backend's own part.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportHeader {
    /// The backend's name.
    pub backend: String,
    /// The path clients open.
    pub path: PathBuf,
    /// The control socket, if the server has one.
    pub control: Option<PathBuf>,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// The settings in force.
    pub limits: Settings,
    /// Where the pool size came from.
    pub jobs_from: String,
    /// The last reading of the system.
    pub system: SystemReading,
    /// Why tokens are held back now, if they are.
    pub limited_by: Option<Pressure>,
}

/// What a backend reports of itself; the server adds its name, path, limits and the system.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendReport {
    /// The tokens.
    pub pool: PoolReport,
    /// Whether `holders` counts tokens per process (see [`StatusReport::holders_exact`]).
    pub holders_exact: bool,
    /// The processes holding tokens (or, for a pipe, having it open).
    pub holders: Vec<HolderReport>,
    /// The waiting requests, oldest first; `None` where the transport cannot see them.
    pub waiters: Option<Vec<WaiterReport>>,
    /// The builds holding or waiting for tokens; `None` where the transport cannot tell.
    pub builds: Option<Vec<BuildReport>>,
    /// The companion FIFO, if the server feeds one.
    pub companion: Option<CompanionReport>,
    /// Running totals.
    pub counters: CounterReport,
}

/// One build: a top-level client and the client processes under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    /// The server's number for it.
    pub build: u64,
    /// Its top-level client (which may have exited; then `command` is `?`).
    pub pid: u32,
    /// The top-level client's command line.
    pub command: String,
    /// The top-level client's working directory, if it can be read.
    pub cwd: Option<PathBuf>,
    /// Its user.
    pub uid: u32,
    /// Tokens its processes hold.
    pub tokens: usize,
    /// Its requests waiting.
    pub waiting: usize,
    /// The tokens its weight entitles it to among the builds holding or waiting now (`None`
    /// under FIFO).
    pub share: Option<f64>,
}

/// The pool's counts: `free + held + withheld == size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    /// The configured number of tokens (`-j`).
    pub jobs: usize,
    /// Tokens that exist now.
    pub size: usize,
    /// Tokens a client could take now.
    pub free: usize,
    /// Tokens out with clients.
    pub held: usize,
    /// Tokens the server keeps back (limits, or a shrink waiting for returns).
    pub withheld: usize,
    /// Tokens lent by clients' grace returns.
    pub lent: usize,
}

/// One process holding tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderReport {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Tokens it holds (`None` where the transport cannot tell).
    pub tokens: Option<usize>,
    /// Seconds since it first held one without a break (`None` where unknown).
    pub held_seconds: Option<f64>,
}

/// One waiting request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaiterReport {
    /// The waiting process.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// `blocking` (a read) or `polling` (poll() asking to be woken).
    pub kind: String,
    /// Seconds it has waited.
    pub waiting_seconds: f64,
}

/// Totals since the server started; `None` where the transport cannot count them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CounterReport {
    /// Tokens handed out.
    pub grants: Option<u64>,
    /// Tokens written back by their holders.
    pub returns: Option<u64>,
    /// Tokens taken back from processes that died holding them (fifo: put back into the pipe).
    pub reclaimed: u64,
    /// Writes refused with ENOSPC.
    pub enospc: Option<u64>,
    /// Grace returns accepted.
    pub grace_returns: Option<u64>,
    /// Waiting reads ended by a signal.
    pub interrupts: Option<u64>,
    /// Poll reservations that expired unused.
    pub expired_reservations: Option<u64>,
    /// How long requests waited for their tokens; `None` where the transport cannot see them.
    #[serde(default)]
    pub wait_seconds: Option<WaitReport>,
}

/// A histogram of waits, as Prometheus keeps one: cumulative buckets by upper bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitReport {
    /// Each bound (seconds, as text; the last `+Inf`) with the waits at or below it.
    pub buckets: Vec<BucketReport>,
    /// Waits counted.
    pub count: u64,
    /// Their total, in seconds.
    pub sum: f64,
}

/// One bucket of a [`WaitReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketReport {
    /// The upper bound, in seconds (`+Inf` for the last).
    pub le: String,
    /// Waits at or below it.
    pub count: u64,
}

impl From<&WaitHistogram> for WaitReport {
    fn from(waits: &WaitHistogram) -> WaitReport {
        let buckets = waits
            .cumulative()
            .into_iter()
            .map(|(bound, count)| BucketReport {
                le: if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() },
                count,
            })
            .collect();
        WaitReport { buckets, count: waits.count, sum: waits.sum_seconds() }
    }
}

/// The keys `steve get` reads besides the settings: the pool's counts and the system's state.
pub const STATUS_KEYS: [&str; 11] = [
    "size",
    "free",
    "held",
    "withheld",
    "waiters",
    "holders",
    "load",
    "memory-available",
    "memory-limit",
    "memory-from",
    "jobs-from",
];

impl StatusReport {
    /// The report of this process's server: the common `header` and the backend's `part`.
    pub fn assemble(header: ReportHeader, part: BackendReport) -> StatusReport {
        StatusReport {
            backend: header.backend,
            path: header.path,
            control: header.control,
            daemon_pid: std::process::id(),
            uptime_seconds: header.uptime_seconds,
            pool: part.pool,
            limits: header.limits,
            jobs_from: header.jobs_from,
            system: header.system,
            limited_by: header.limited_by,
            holders_exact: part.holders_exact,
            holders: part.holders,
            waiters: part.waiters,
            builds: part.builds,
            companion: part.companion,
            counters: part.counters,
        }
    }

    /// A value by key, as `steve get` prints it: any setting (`jobs`, `load-average`, ...) or
    /// one of [`STATUS_KEYS`].
    pub fn value(&self, key: &str) -> Option<String> {
        let optional = |value: Option<String>| value.unwrap_or_else(|| "none".to_string());
        Some(match key {
            "size" => self.pool.size.to_string(),
            "free" => self.pool.free.to_string(),
            "held" => self.pool.held.to_string(),
            "withheld" => self.pool.withheld.to_string(),
            "waiters" => optional(self.waiters.as_ref().map(|w| w.len().to_string())),
            "holders" => self.holders.len().to_string(),
            "load" => optional(self.system.load_average_1m.map(|v| format!("{v:.2}"))),
            "memory-available" => optional(self.system.memory_available_mib.map(|v| v.to_string())),
            "memory-limit" => optional(self.system.memory_limit_mib.map(|v| v.to_string())),
            "memory-from" => optional(self.system.memory_from.clone()),
            "jobs-from" => self.jobs_from.clone(),
            setting => return self.limits.get(setting),
        })
    }
}

impl fmt::Display for StatusReport {
    /// The human form: a few lines, as `steve status` prints it and SIGUSR1 logs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = &self.pool;
        writeln!(
            f,
            "{} jobserver {} (pid {}, up {:.0} s)",
            self.backend,
            self.path.display(),
            self.daemon_pid,
            self.uptime_seconds
        )?;
        write!(
            f,
            "tokens: {} jobs, {} in the pool: {} free, {} held, {} withheld",
            pool.jobs, pool.size, pool.free, pool.held, pool.withheld
        )?;
        if pool.lent > 0 {
            write!(f, ", {} lent", pool.lent)?;
        }
        if !self.jobs_from.is_empty() {
            write!(f, " (jobs from {})", self.jobs_from)?;
        }
        writeln!(f)?;
        let limits = &self.limits.limits;
        let or_none = |value: Option<String>| value.unwrap_or_else(|| "none".to_string());
        writeln!(
            f,
            "limits: load average {}, min jobs {}, min memory {}, per process {}, recheck {:.2} s",
            or_none(limits.load_average.map(|v| v.to_string())),
            limits.min_jobs,
            match limits.min_memory_avail_percent {
                Some(percent) => format!("{percent}%"),
                None => or_none(limits.min_memory_avail_mib.map(|v| format!("{v} MiB"))),
            },
            or_none(limits.per_process_limit.map(|v| v.to_string())),
            limits.load_recheck.as_secs_f64()
        )?;
        let pressure_limits: Vec<String> = Resource::ALL
            .iter()
            .filter_map(|r| Some(format!("{r} {}", limits.pressure.get(*r)?)))
            .collect();
        if !pressure_limits.is_empty() {
            writeln!(f, "pressure limits (percent, high/low): {}", pressure_limits.join(", "))?;
        }
        let shares = &limits.shares;
        writeln!(
            f,
            "shares: {}; weights {}; user caps {}",
            match shares.fairness {
                Fairness::Build => "fair between builds",
                Fairness::User => "fair between users",
                Fairness::Fifo => "first come, first served",
            },
            format_user_map(&shares.weights),
            format_user_map(&shares.user_caps)
        )?;
        let pressures: Vec<String> = Resource::ALL
            .iter()
            .filter_map(|r| {
                let stalls = self.system.pressure.get(*r)?;
                let full = stalls.full.map_or_else(String::new, |full| format!("/{full:.1}"));
                Some(format!("{r} {:.1}{full}%", stalls.some))
            })
            .collect();
        let pressures = if pressures.is_empty() {
            String::new()
        } else {
            format!("; pressure (some/full) {}", pressures.join(", "))
        };
        writeln!(
            f,
            "system: load {}, {} available{}{pressures}{}",
            or_none(self.system.load_average_1m.map(|v| format!("{v:.2}"))),
            or_none(self.system.memory_available_mib.map(|v| format!("{v} MiB"))),
            match (self.system.memory_limit_mib, &self.system.memory_from) {
                (Some(limit), Some(from)) => format!(" of {limit} MiB ({from})"),
                _ => String::new(),
            },
            match self.limited_by {
                Some(pressure) => format!("; holding back: {pressure}"),
                None => String::new(),
            }
        )?;
        let title = if self.holders_exact { "holders" } else { "processes with it open" };
        writeln!(f, "{title}: {}", self.holders.len())?;
        for holder in &self.holders {
            let tokens = holder.tokens.map_or_else(String::new, |n| format!("{n} token(s) "));
            let since = holder.held_seconds.map_or_else(String::new, |s| format!("for {s:.1} s "));
            writeln!(f, "  pid {:>7}  {tokens}{since}{}", holder.pid, holder.command)?;
        }
        if let Some(companion) = &self.companion {
            writeln!(
                f,
                "companion FIFO {}: {} token(s), {} in the pipe{}; open by {}",
                companion.path.display(),
                companion.tokens,
                companion.in_pipe,
                if companion.waiting { ", waiting for one" } else { "" },
                companion.openers.len()
            )?;
            for opener in &companion.openers {
                writeln!(f, "  pid {:>7}  {}", opener.pid, opener.command)?;
            }
        }
        if let Some(builds) = &self.builds {
            writeln!(f, "builds: {}", builds.len())?;
            for build in builds {
                let share = build.share.map_or_else(String::new, |s| format!(", share {s:.2}"));
                let cwd = build
                    .cwd
                    .as_ref()
                    .map_or_else(String::new, |cwd| format!(" (in {})", cwd.display()));
                writeln!(
                    f,
                    "  build {:>3}  pid {:>7}  uid {}: {} token(s), {} waiting{share}  {}{cwd}",
                    build.build, build.pid, build.uid, build.tokens, build.waiting, build.command
                )?;
            }
        }
        match &self.waiters {
            Some(waiters) => {
                writeln!(f, "waiters: {}", waiters.len())?;
                for waiter in waiters {
                    writeln!(
                        f,
                        "  pid {:>7}  {} for {:.1} s  {}",
                        waiter.pid, waiter.kind, waiter.waiting_seconds, waiter.command
                    )?;
                }
            }
            None => writeln!(f, "waiters: unknown (a pipe does not show them)")?,
        }
        let counters = &self.counters;
        let count = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
        write!(
            f,
            "counters: grants {}, returns {}, reclaimed {}, ENOSPC {}, grace returns {}, \
             interrupts {}, expired reservations {}",
            count(counters.grants),
            count(counters.returns),
            counters.reclaimed,
            count(counters.enospc),
            count(counters.grace_returns),
            count(counters.interrupts),
            count(counters.expired_reservations)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> StatusReport {
        StatusReport {
            backend: "cuse".into(),
            path: "/dev/steve".into(),
            control: Some("/run/steve/steve.control".into()),
            daemon_pid: 42,
            uptime_seconds: 10.0,
            pool: PoolReport { jobs: 4, size: 4, free: 1, held: 3, withheld: 0, lent: 0 },
            limits: Settings {
                jobs: crate::accounting::pool::JobCount::new(4).unwrap(),
                limits: Default::default(),
            },
            jobs_from: "-j".into(),
            system: SystemReading {
                load_average_1m: Some(1.5),
                memory_available_mib: Some(900),
                memory_limit_mib: Some(2048),
                memory_from: Some("MemTotal".into()),
                pressure: crate::accounting::pressure::Pressures {
                    memory: Some(crate::accounting::pressure::Stalls {
                        some: 12.5,
                        full: Some(3.0),
                    }),
                    ..Default::default()
                },
            },
            limited_by: None,
            holders_exact: true,
            holders: vec![HolderReport {
                pid: 100,
                command: "make -C src".into(),
                tokens: Some(3),
                held_seconds: Some(2.0),
            }],
            waiters: Some(vec![WaiterReport {
                pid: 200,
                command: "ninja".into(),
                kind: "blocking".into(),
                waiting_seconds: 0.5,
            }]),
            builds: Some(vec![BuildReport {
                build: 7,
                pid: 100,
                command: "make -C src".into(),
                cwd: Some("/home/ann/project".into()),
                uid: 1000,
                tokens: 3,
                waiting: 0,
                share: Some(2.0),
            }]),
            companion: Some(CompanionReport {
                path: "/run/steve/steve.fifo".into(),
                tokens: 2,
                in_pipe: 1,
                waiting: false,
                recovered: 0,
                openers: vec![HolderReport {
                    pid: 300,
                    command: "ninja -C build".into(),
                    tokens: None,
                    held_seconds: None,
                }],
            }),
            counters: CounterReport { reclaimed: 1, grants: Some(10), ..CounterReport::default() },
        }
    }

    #[test]
    fn round_trips_through_json_and_answers_get() {
        let report = sample();
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), report);
        assert_eq!(report.value("free").as_deref(), Some("1"));
        assert_eq!(report.value("jobs").as_deref(), Some("4"));
        assert_eq!(report.value("load").as_deref(), Some("1.50"));
        assert_eq!(report.value("load-average").as_deref(), Some("none"));
        assert_eq!(report.value("nonsense"), None);
        for key in STATUS_KEYS {
            assert!(report.value(key).is_some(), "{key}");
        }
    }

    #[test]
    fn the_text_form_names_holders_and_waiters() {
        let text = sample().to_string();
        assert!(text.contains("pid     100  3 token(s) for 2.0 s make -C src"), "{text}");
        assert!(text.contains("pid     200  blocking for 0.5 s  ninja"), "{text}");
        assert!(
            text.contains(
                "build   7  pid     100  uid 1000: 3 token(s), 0 waiting, share 2.00  make -C src \
                 (in /home/ann/project)"
            ),
            "{text}"
        );
        assert!(text.contains("shares: fair between builds; weights none; user caps none"));
        assert!(
            text.contains(
                "900 MiB available of 2048 MiB (MemTotal); pressure (some/full) memory 12.5/3.0%"
            ),
            "{text}"
        );
        assert!(
            text.contains("tokens: 4 jobs, 4 in the pool: 1 free, 3 held, 0 withheld"),
            "{text}"
        );
    }
}
