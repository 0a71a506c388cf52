//! The system probe a real server reads: `/proc/loadavg`, `/proc/meminfo` and the pressure
//! files (the system's `/proc/pressure/*`, or a cgroup's `*.pressure`), behind the
//! [`SystemProbe`] trait, so that the limits themselves stay pure and tests drive a fake. It
//! also arms the PSI triggers that tell the event loop at once when a pressure limit's high mark
//! is crossed.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::accounting::limits::{SystemProbe, SystemReading};
use crate::accounting::pressure::{self, PressureLimits, Pressures, Resource, StallRate, Stalls};

/// Where pressure is read: the whole system, or one cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PressureSource {
    /// `/proc/pressure/{cpu,memory,io}`.
    #[default]
    System,
    /// `DIR/{cpu,memory,io}.pressure` of a cgroup v2 directory.
    Cgroup(PathBuf),
}

/// `statfs`'s magic number of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl PressureSource {
    /// `system`, `cgroup` (this process's own cgroup) or a cgroup v2 directory, checked.
    pub fn parse(text: &str) -> Result<PressureSource, String> {
        let dir = match text {
            "system" => return Ok(PressureSource::System),
            "cgroup" => crate::cgroup::own_cgroup_dir()
                .ok_or("this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)")?,
            dir => PathBuf::from(dir),
        };
        let on_cgroup2 = nix::sys::statfs::statfs(&dir)
            .map_err(|errno| format!("{}: {errno}", dir.display()))?
            .filesystem_type()
            .0 as i64
            == CGROUP2_SUPER_MAGIC;
        if !on_cgroup2 {
            return Err(format!("{} is not a cgroup v2 directory", dir.display()));
        }
        if !dir.join("memory.pressure").exists() && !dir.join("cpu.pressure").exists() {
            return Err(format!("{} has no pressure files (a kernel without PSI?)", dir.display()));
        }
        Ok(PressureSource::Cgroup(dir))
    }

    /// The pressure file of `resource`.
    pub fn file(&self, resource: Resource) -> PathBuf {
        match self {
            PressureSource::System => Path::new("/proc/pressure").join(resource.name()),
            PressureSource::Cgroup(dir) => dir.join(format!("{}.pressure", resource.name())),
        }
    }
}

/// Reads `/proc/loadavg`, `/proc/meminfo`, the memory files of the server's own cgroup and the
/// pressure files of its source.
#[derive(Debug, Default)]
pub struct ProcProbe {
    source: PressureSource,
    /// The server's own cgroup v2 directory, found once.
    cgroup: Option<PathBuf>,
    /// Stall shares from successive readings, by resource (in [`Resource::ALL`]'s order).
    rates: [StallRate; 3],
    /// The armed PSI triggers: a pressure file each, open for writing, polled for `POLLPRI`.
    triggers: Vec<(Resource, File)>,
}

impl ProcProbe {
    /// A probe reading pressure from `source`.
    pub fn new(source: PressureSource) -> ProcProbe {
        ProcProbe { source, cgroup: crate::cgroup::own_cgroup_dir(), ..ProcProbe::default() }
    }
}

/// What the memory files say: available and total memory in MiB, and where the total is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRoom {
    /// Memory available to the server.
    pub available_mib: Option<u64>,
    /// Memory it may use.
    pub limit_mib: Option<u64>,
    /// `MemTotal`, or `memory.max N of DIR`.
    pub from: Option<String>,
}

/// The memory `meminfo`'s `MemAvailable` and `MemTotal` say, narrowed by each cgroup level's
/// room under its `memory.max` (`levels`: `(DIR, memory.max, memory.current)`, where a level
/// without a limit says `max`).
pub fn memory_room(meminfo: &str, levels: &[(PathBuf, String, String)]) -> MemoryRoom {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|line| line.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
    };
    let mut room = MemoryRoom {
        available_mib: field("MemAvailable:"),
        limit_mib: field("MemTotal:"),
        from: Some("MemTotal".to_string()),
    };
    for (dir, max, current) in levels {
        let (Ok(max_bytes), Ok(current_bytes)) =
            (max.trim().parse::<u64>(), current.trim().parse::<u64>())
        else {
            continue;
        };
        let (max_mib, free_mib) = (max_bytes >> 20, max_bytes.saturating_sub(current_bytes) >> 20);
        if room.limit_mib.is_none_or(|limit| max_mib < limit) {
            room.limit_mib = Some(max_mib);
            room.from = Some(format!("memory.max {} of {}", max.trim(), dir.display()));
        }
        room.available_mib = Some(room.available_mib.map_or(free_mib, |a| a.min(free_mib)));
    }
    room
}

impl SystemProbe for ProcProbe {
    fn read(&mut self) -> SystemReading {
        let load_average_1m = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        // The cgroup and every ancestor: the tightest limit binds.
        let levels: Vec<(PathBuf, String, String)> = self
            .cgroup
            .iter()
            .flat_map(|dir| dir.ancestors())
            .filter_map(|level| {
                let max = fs::read_to_string(level.join("memory.max")).ok()?;
                let current = fs::read_to_string(level.join("memory.current")).ok()?;
                Some((level.to_path_buf(), max, current))
            })
            .collect();
        let memory = memory_room(&meminfo, &levels);
        let now = Instant::now();
        let mut pressure = Pressures::default();
        for (resource, rate) in Resource::ALL.into_iter().zip(&mut self.rates) {
            let totals = fs::read_to_string(self.source.file(resource))
                .ok()
                .and_then(|text| pressure::parse_totals(&text));
            let stalls: Option<Stalls> = totals.and_then(|totals| rate.sample(now, totals));
            pressure.set(resource, stalls);
        }
        SystemReading {
            load_average_1m,
            memory_available_mib: memory.available_mib,
            memory_limit_mib: memory.limit_mib,
            memory_from: memory.from,
            pressure,
        }
    }

    fn watch_pressure(&mut self, limits: &PressureLimits) -> Vec<String> {
        // Closed first: the event loop's epoll lets go of a trigger as it closes.
        self.triggers.clear();
        let mut notes = Vec::new();
        for resource in Resource::ALL {
            let Some(limit) = limits.get(resource) else { continue };
            let path = self.source.file(resource);
            let armed = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|mut file| {
                    // The kernel reads up to the NUL, which it needs as the last byte written.
                    file.write_all(format!("{}\0", pressure::trigger(limit)).as_bytes())?;
                    Ok(file)
                });
            match armed {
                Ok(file) => self.triggers.push((resource, file)),
                Err(error) => notes.push(format!(
                    "{resource} pressure: no PSI trigger on {} ({error}); it is read at every \
                     recheck only",
                    path.display()
                )),
            }
        }
        notes
    }

    fn pressure_triggers(&self) -> Vec<(Resource, BorrowedFd<'_>)> {
        self.triggers.iter().map(|(resource, file)| (*resource, file.as_fd())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proc_probe_reads_this_machine() {
        let mut probe = ProcProbe::default();
        let reading = probe.read();
        assert!(reading.load_average_1m.is_some_and(|load| load >= 0.0));
        assert!(reading.memory_available_mib.is_some_and(|mib| mib > 0));
        // Stall shares need two readings; this kernel has PSI.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let reading = probe.read();
        let memory = reading.pressure.memory.expect("this kernel has /proc/pressure/memory");
        assert!((0.0..=100.0).contains(&memory.some), "{memory:?}");
    }

    #[test]
    fn a_cgroup_with_less_room_than_the_machine_narrows_available_memory() {
        let meminfo = "MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:    8192000 kB\n";
        let machine = memory_room(meminfo, &[]);
        assert_eq!((machine.available_mib, machine.limit_mib), (Some(8000), Some(16000)));
        assert_eq!(machine.from.as_deref(), Some("MemTotal"));
        let level = |dir: &str, max: &str, current: &str| {
            (PathBuf::from(dir), max.to_string(), current.to_string())
        };
        // 512 MiB allowed, 400 used: 112 left, whatever the machine has.
        let levels = [
            level("/sys/fs/cgroup/a/b", "max\n", "419430400\n"),
            level("/sys/fs/cgroup/a", "536870912\n", "419430400\n"),
        ];
        let room = memory_room(meminfo, &levels);
        assert_eq!((room.available_mib, room.limit_mib), (Some(112), Some(512)));
        assert_eq!(room.from.as_deref(), Some("memory.max 536870912 of /sys/fs/cgroup/a"));
    }

    #[test]
    fn a_pressure_source_must_be_a_cgroup_v2_directory() {
        assert_eq!(PressureSource::parse("system"), Ok(PressureSource::System));
        let error = PressureSource::parse("/tmp").unwrap_err();
        assert_eq!(error, "/tmp is not a cgroup v2 directory");
        assert!(PressureSource::parse("/no/such/dir").unwrap_err().contains("/no/such/dir"));
        assert_eq!(
            PressureSource::Cgroup("/sys/fs/cgroup/a".into()).file(Resource::Io),
            Path::new("/sys/fs/cgroup/a/io.pressure")
        );
        assert_eq!(
            PressureSource::System.file(Resource::Memory),
            Path::new("/proc/pressure/memory")
        );
    }

    #[test]
    fn a_trigger_is_armed_on_the_systems_pressure_file() {
        let mut probe = ProcProbe::default();
        let limits = PressureLimits {
            memory: Some(pressure::PressureLimit::parse("some:50").unwrap()),
            ..PressureLimits::default()
        };
        assert_eq!(probe.watch_pressure(&limits), Vec::<String>::new());
        assert_eq!(probe.pressure_triggers().len(), 1);
        assert!(probe.watch_pressure(&PressureLimits::default()).is_empty());
        assert!(probe.pressure_triggers().is_empty(), "lifted limits disarm their triggers");
    }
}
