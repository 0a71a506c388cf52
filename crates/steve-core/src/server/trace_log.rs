//! Where a server's event trace goes: the ring the control socket reads (`steve trace`,
//! `steve plot`), and optionally a file of JSON lines written as events happen, rotated by size
//! (`--trace-file`, `--trace-file-size`).
//!
//! The backends' accounting records events with the [`Instant`] it was told; they are stamped
//! here with `CLOCK_MONOTONIC` nanoseconds, the clock other processes on the machine read too,
//! so that a trace lines up with a build's own logs.
//!
//! The file is the administrator's choice of path, written by a daemon that may run as root: it
//! is opened without following a symbolic link, must be a regular file of the server's own user,
//! and is created with mode 0640. At its size limit it is renamed to `PATH.1` (replacing the one
//! before) and a new file is created in its place, never opening one that appeared meanwhile.
//! A write that fails is said once, and the file is given up; the ring goes on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::time::{clock_gettime, ClockId};
use tracing::warn;

use crate::trace::{Page, Record, Ring, TraceEvent};

/// How a server traces: the ring's size and the file, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Events the ring keeps; 0 keeps none.
    pub ring_size: usize,
    /// A file to write every event to, as JSON lines.
    pub file: Option<PathBuf>,
    /// The file's size at which it is rotated, in bytes.
    pub file_size: u64,
}

/// A trace file is rotated at this size unless told otherwise: 64 MiB.
pub const DEFAULT_FILE_SIZE: u64 = 64 << 20;

impl Default for TraceConfig {
    fn default() -> TraceConfig {
        TraceConfig {
            ring_size: crate::trace::DEFAULT_RING_SIZE,
            file: None,
            file_size: DEFAULT_FILE_SIZE,
        }
    }
}

/// The clocks at one moment, so that a reader can put monotonic stamps on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Clocks {
    /// `CLOCK_MONOTONIC`, in nanoseconds.
    pub mono_ns: u64,
    /// `CLOCK_REALTIME`, in nanoseconds since the epoch.
    pub realtime_ns: u64,
}

impl Clocks {
    /// Both clocks now.
    pub fn now() -> Clocks {
        Clocks {
            mono_ns: clock_ns(ClockId::CLOCK_MONOTONIC),
            realtime_ns: clock_ns(ClockId::CLOCK_REALTIME),
        }
    }
}

/// `clock` in nanoseconds (0 if it cannot be read, which Linux never does for these two).
fn clock_ns(clock: ClockId) -> u64 {
    clock_gettime(clock).map_or(0, |time| {
        u64::try_from(time.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(time.tv_nsec()).unwrap_or(0)
    })
}

/// The server's trace: the ring, the file, and the clock they are stamped by.
#[derive(Debug)]
pub struct TraceLog {
    ring: Ring,
    file: Option<TraceFile>,
    /// An [`Instant`] and the monotonic clock read together, to stamp the backends' instants.
    origin: (Instant, u64),
}

impl TraceLog {
    /// A trace as `config` says; fails if the file cannot be opened as it must be.
    pub fn open(config: &TraceConfig) -> io::Result<TraceLog> {
        let file = match &config.file {
            Some(path) => Some(TraceFile::open(path, config.file_size)?),
            None => None,
        };
        Ok(TraceLog { ring: Ring::new(config.ring_size), file, origin: origin() })
    }

    /// A trace that keeps nothing.
    pub fn off() -> TraceLog {
        TraceLog { ring: Ring::new(0), file: None, origin: origin() }
    }

    /// Whether anything is kept: the backends record events only then.
    pub fn is_on(&self) -> bool {
        self.ring.is_on() || self.file.is_some()
    }

    /// Stamps `record`, which happened at `at`, and keeps it.
    pub fn record(&mut self, at: Instant, record: Record) {
        let (origin, origin_ns) = self.origin;
        let mono_ns = match at.checked_duration_since(origin) {
            Some(after) => origin_ns.saturating_add(after.as_nanos() as u64),
            None => origin_ns.saturating_sub(origin.duration_since(at).as_nanos() as u64),
        };
        let event = self.ring.stamp(record, mono_ns);
        if let Some(file) = self.file.as_mut() {
            if let Err(error) = file.write(&event) {
                warn!("the trace file {} is given up: {error}", file.path.display());
                self.file = None;
            }
        }
        self.ring.keep(event);
    }

    /// Writes out what the file has buffered (at the end of each turn of the loop).
    pub fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            if let Err(error) = file.out.flush() {
                warn!("the trace file {} is given up: {error}", file.path.display());
                self.file = None;
            }
        }
    }

    /// The events from sequence number `first` on, a page at most.
    pub fn from(&self, first: u64) -> Page {
        self.ring.from(first, crate::trace::PAGE)
    }

    /// The events stamped at or after `mono_ns`, a page at most.
    pub fn since(&self, mono_ns: u64) -> Page {
        self.ring.since(mono_ns, crate::trace::PAGE)
    }

    /// How many events the ring keeps at most.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// When the trace started, in `CLOCK_MONOTONIC` nanoseconds: tells one server's trace
    /// from the next one's.
    pub fn started_mono_ns(&self) -> u64 {
        self.origin.1
    }

    /// The file written to, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|file| file.path.as_path())
    }
}

fn origin() -> (Instant, u64) {
    (Instant::now(), clock_ns(ClockId::CLOCK_MONOTONIC))
}

/// The trace file, rotated by size.
#[derive(Debug)]
struct TraceFile {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    limit: u64,
}

impl TraceFile {
    fn open(path: &Path, limit: u64) -> io::Result<TraceFile> {
        let file = open_own(path, false)?;
        let written = file.metadata()?.len();
        Ok(TraceFile { path: path.to_path_buf(), out: BufWriter::new(file), written, limit })
    }

    fn write(&mut self, event: &TraceEvent) -> io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.written > 0 && self.written + line.len() as u64 > self.limit {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// `PATH` becomes `PATH.1` and a new `PATH` is made; rename replaces a name, never
    /// following one.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        fs::rename(&self.path, &old)?;
        self.out = BufWriter::new(open_own(&self.path, true)?);
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for appending without following a symbolic link, creating it with mode 0640
/// (only, with `new`); an existing file must be a regular file of this user.
fn open_own(path: &Path, new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    // Non-blocking: a FIFO put at the path would otherwise hold the open until it had a
    // reader (it fails with ENXIO instead); writes to a regular file do not care.
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK;
    options.append(true).mode(0o640).custom_flags(flags);
    if new {
        options.create_new(true);
    } else {
        options.create(true);
    }
    let file = options.open(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot open the trace file {}: {error}", path.display()),
        )
    })?;
    let metadata = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if !metadata.file_type().is_file() || metadata.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the trace file {} is not a regular file of uid {me}: steve will not write to it",
                path.display()
            ),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Kind;

    fn config(dir: &Path, size: u64) -> TraceConfig {
        TraceConfig { ring_size: 16, file: Some(dir.join("trace.jsonl")), file_size: size }
    }

    fn lines(path: &Path) -> Vec<TraceEvent> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn events_are_stamped_in_order_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut trace = TraceLog::open(&config(dir.path(), 400)).unwrap();
        let start = Instant::now();
        let before = Clocks::now().mono_ns;
        for pid in 0..10 {
            trace.record(start, Record::new(Kind::Grant).pid(pid));
        }
        trace.flush();
        let path = dir.path().join("trace.jsonl");
        let (old, new) = (lines(&dir.path().join("trace.jsonl.1")), lines(&path));
        assert!(!old.is_empty() && !new.is_empty(), "rotated once: {old:?} {new:?}");
        assert!(fs::metadata(&path).unwrap().len() <= 400);
        let seqs: Vec<u64> = old.iter().chain(&new).map(|event| event.seq).collect();
        // What rotated out of .1 before is gone; what is kept is in order and ends with the last.
        assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "{seqs:?}");
        assert_eq!(seqs.last(), Some(&9));
        // Stamped with the monotonic clock of the moment recorded.
        let stamp = new[0].mono_ns;
        assert!(stamp.abs_diff(before) < 1_000_000_000, "{stamp} vs {before}");
        assert_eq!(trace.from(0).events.len(), 10);
    }

    #[test]
    fn a_symbolic_link_or_someone_elses_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("trace.jsonl")).unwrap();
        let error = TraceLog::open(&config(dir.path(), 400)).unwrap_err();
        assert!(error.to_string().contains("cannot open the trace file"), "{error}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let config = TraceConfig { file: Some(fifo), ..config(dir.path(), 400) };
        // Refused at once, not left waiting for a reader.
        assert!(TraceLog::open(&config).is_err());
        // A file of another user's (the tests run as root, who can make one).
        let theirs = dir.path().join("theirs.jsonl");
        fs::write(&theirs, "").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown: run as root");
        let config = TraceConfig { file: Some(theirs.clone()), ..config };
        let error = TraceLog::open(&config).unwrap_err();
        assert!(error.to_string().contains("not a regular file of uid"), "{error}");
        assert_eq!(fs::read_to_string(&theirs).unwrap(), "");
    }
}
