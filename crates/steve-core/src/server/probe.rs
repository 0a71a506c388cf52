//! The system probe a real server reads: `/proc/loadavg` and `/proc/meminfo`, behind the
//! [`SystemProbe`] trait, so that the limits themselves stay pure and tests drive a fake.
#![forbid(unsafe_code)]

use std::fs;

use crate::accounting::limits::{SystemProbe, SystemReading};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proc_probe_reads_this_machine() {
        let reading = ProcProbe.read();
        assert!(reading.load_average_1m.is_some_and(|load| load >= 0.0));
        assert!(reading.memory_available_mib.is_some_and(|mib| mib > 0));
    }
}
