//! How many CPUs this process may really use: its CPU affinity, and the cgroup v2 limits of
//! the cgroup it runs in (`cpuset.cpus.effective`, and `cpu.max` of it and every ancestor). A
//! server in a container or a systemd slice then sizes its pool for what it may use, not for
//! the whole machine, and says where the figure came from.
//!
//! The parsing is pure ([`parse_cpu_max`], [`parse_cpu_list`], [`cgroup_dir`]); [`cpu_budget`]
//! reads `/proc/self/cgroup`, `/proc/self/mountinfo` and the cgroup's files.
#![forbid(unsafe_code)]

use std::fs;
use std::path::PathBuf;

use crate::accounting::pool::{JobCount, MAX_JOBS};

/// A number of CPUs and what it comes from, for the default job count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBudget {
    /// The CPUs, at least 1.
    pub cpus: JobCount,
    /// Where the figure comes from, for the log and `steve get jobs-from`.
    pub from: String,
}

/// `cpu.max`'s CPUs: `QUOTA PERIOD` allows QUOTA/PERIOD CPUs' worth of time, rounded up (a
/// quota of 1.5 CPUs keeps two busy part of the time); `max PERIOD` is no limit.
pub fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut words = text.split_whitespace();
    let quota = words.next()?;
    let period: u64 = words.next().map_or(Some(100_000), |word| word.parse().ok())?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota.div_ceil(period).max(1) as usize)
}

/// How many CPUs a list such as `0-3,6,8-9` names (7 there); `None` for an empty or malformed
/// one.
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count = 0usize;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        count += last.checked_sub(first)? + 1;
    }
    Some(count)
}

/// The directory of this process's cgroup v2: the `0::PATH` line of `/proc/self/cgroup` under
/// the cgroup2 mount that `mountinfo` shows (its root subtracted). `None` without cgroup v2.
pub fn cgroup_dir(proc_self_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let path = proc_self_cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|field| *field == "-")?;
        if fields.get(separator + 1) != Some(&"cgroup2") {
            return None;
        }
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        let below = path.strip_prefix(root.trim_end_matches('/')).unwrap_or(path);
        let mut dir = PathBuf::from(crate::mountinfo::unescape(mount_point));
        dir.push(below.trim_start_matches('/'));
        Some(dir)
    })
}

/// This process's cgroup v2 directory, from `/proc/self/cgroup` and `/proc/self/mountinfo`.
pub fn own_cgroup_dir() -> Option<PathBuf> {
    cgroup_dir(
        &fs::read_to_string("/proc/self/cgroup").ok()?,
        &fs::read_to_string("/proc/self/mountinfo").ok()?,
    )
}

/// The CPUs this process may use, and why.
pub fn cpu_budget() -> CpuBudget {
    // Not available_parallelism(): it already applies cgroup quotas, and could not say so.
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or(1, |count| count.max(1) as usize);
    let allowed = affinity().unwrap_or(online).min(online);
    let mut best = (allowed, format!("the {allowed} CPUs this process may run on"));
    if let Some(dir) = own_cgroup_dir() {
        let cpuset = fs::read_to_string(dir.join("cpuset.cpus.effective")).unwrap_or_default();
        if let Some(cpus) = parse_cpu_list(&cpuset) {
            if cpus < best.0 {
                let shown = cpuset.trim();
                best = (cpus, format!("cpuset.cpus.effective {shown} of {}", dir.display()));
            }
        }
        // Every ancestor's quota limits this cgroup too: the smallest wins. A level without
        // the cpu controller has no cpu.max; the ones above it may.
        for level in dir.ancestors() {
            let Ok(text) = fs::read_to_string(level.join("cpu.max")) else { continue };
            if let Some(cpus) = parse_cpu_max(&text) {
                if cpus < best.0 {
                    let shown = text.trim();
                    best = (cpus, format!("cpu.max {shown} of {}", level.display()));
                }
            }
        }
    }
    let cpus = JobCount::new(best.0.clamp(1, MAX_JOBS)).expect("clamped to the range");
    CpuBudget { cpus, from: best.1 }
}

/// How many CPUs sched_getaffinity allows this thread.
fn affinity() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let count =
        (0..nix::sched::CpuSet::count()).filter(|cpu| set.is_set(*cpu).unwrap_or(false)).count();
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_a_quota_up_and_max_is_no_limit() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("200000"), Some(2), "the period defaults to 100000");
        assert_eq!(parse_cpu_max("garbage 1"), None);
        assert_eq!(parse_cpu_max("1 0"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn cpu_lists_count_ranges_and_single_cpus() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
    }

    #[test]
    fn the_cgroup_directory_is_found_under_the_cgroup2_mount() {
        let mountinfo = "24 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
                         30 24 0:25 / /proc rw - proc proc rw\n";
        let cgroup = "0::/system.slice/steve.service\n";
        assert_eq!(
            cgroup_dir(cgroup, mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/steve.service"))
        );
        // A hybrid host: cgroup2 elsewhere, and v1 lines ignored.
        let hybrid = "40 1 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let lines = "4:memory:/x\n0::/\n";
        assert_eq!(cgroup_dir(lines, hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified/")));
        // A container whose cgroup namespace root is mounted: the root is subtracted.
        let namespaced = "50 1 0:40 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir("0::/kubepods/pod1/c\n", namespaced),
            Some(PathBuf::from("/sys/fs/cgroup/c"))
        );
        assert_eq!(cgroup_dir("4:memory:/x\n", mountinfo), None, "no cgroup v2 line");
        assert_eq!(cgroup_dir(cgroup, "30 24 0:25 / /proc rw - proc proc rw\n"), None);
    }
}
