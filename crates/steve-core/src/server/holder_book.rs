//! The crash books: which client processes hold how many tokens, kept in a file beside the
//! control socket (in `/run`, a tmpfs) so that a server started after this one died without
//! handing over counts the tokens still out. A make that read two tokens from the dead server
//! runs on with them; the new pool must not hand those two out again until it exits.
//!
//! The file is a table of fixed records, one slot per holding process, mapped shared into the
//! server and rewritten in place when the process's count changes, before the answer that
//! changes it goes out: a server killed at any moment leaves books that say no more than its
//! clients were told (the map's pages are the file's, in the page cache), and keeping them costs
//! no system call at all, only a grow of the
//! file (`ftruncate` and a new map) each time the table doubles. A record names
//! the process by pid *and* start time, so that a pid reused since is not taken for a holder;
//! the header names the boot, so that a file surviving a reboot (a `/run` on disk) counts
//! nobody.
//!
//! Every start reads what is there and replaces it with a file of its own, created with
//! `O_EXCL`: the server only ever writes a file it made. A server that stops with no holders
//! left removes its file. A file there that is not a regular
//! file of the server's user is left alone, and the server runs without crash books.
#![forbid(unsafe_code)]

use rustc_hash::FxHashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

/// The first bytes of the file: what it is and its layout's version.
const MAGIC: &[u8; 16] = b"steve holders 1\n";
/// The header: the magic, then the boot id, padded.
const HEADER_LEN: usize = 64;
/// One record: pid (u32), tokens (u32), start time in clock ticks after boot (u64), little
/// endian. A record whose pid is 0 is a free slot.
const RECORD_LEN: usize = 16;
/// The most records kept or read: far beyond any pool (each holder holds one token at least).
const MAX_RECORDS: usize = 1 << 20;
/// Records the file has room for at first (16 KiB); it doubles as needed.
const FIRST_RECORDS: usize = 1024;

/// A process that held tokens when the last server stopped, by the file it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survivor {
    /// Its pid.
    pub pid: u32,
    /// Its start time, clock ticks after boot (`/proc/PID/stat`'s 22nd field).
    pub started: u64,
    /// The tokens it held.
    pub tokens: usize,
}

/// Why the crash books cannot be kept.
#[derive(Debug)]
pub enum BookError {
    /// Something else is at the books' path: it is not touched.
    NotOurs {
        /// The path.
        path: PathBuf,
        /// What is there instead.
        what: &'static str,
    },
    /// A system call failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for BookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BookError::NotOurs { path, what } => {
                write!(f, "{} is {what}, not steve's crash books: left alone", path.display())
            }
            BookError::Io { action, path, source } => {
                write!(f, "cannot {action} the crash books {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for BookError {}

/// The crash books of a running server.
#[derive(Debug)]
pub struct HolderBook {
    file: File,
    /// The file, mapped: the header and `capacity` records.
    map: memmap2::MmapMut,
    capacity: usize,
    path: PathBuf,
    /// Each recorded process's slot.
    slots: FxHashMap<u32, usize>,
    /// Slots freed by processes that hold nothing now, reused first.
    free: Vec<usize>,
    /// The first slot never used.
    next: usize,
    /// Growing the file failed: warned once, and nothing more is recorded.
    broken: bool,
}

/// The crash books' place beside the control socket `control`: `steve.control` keeps them in
/// `steve.holders`.
pub fn path_beside(control: &Path) -> PathBuf {
    control.with_extension("holders")
}

/// This boot's id, which tells a record of this boot from one of an earlier boot.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

fn header(boot: &str) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    let id = boot.as_bytes();
    let room = HEADER_LEN - MAGIC.len();
    header[MAGIC.len()..MAGIC.len() + id.len().min(room)]
        .copy_from_slice(&id[..id.len().min(room)]);
    header
}

/// The holders a file's bytes name, if it is crash books of boot `boot`; none otherwise (a
/// file of another boot or version counts nobody).
pub fn parse(bytes: &[u8], boot: &str) -> Vec<Survivor> {
    if bytes.len() < HEADER_LEN || bytes[..HEADER_LEN] != header(boot) {
        return Vec::new();
    }
    bytes[HEADER_LEN..]
        .chunks_exact(RECORD_LEN)
        .take(MAX_RECORDS)
        .filter_map(|record| {
            let pid = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes"));
            let tokens = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
            let started = u64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
            (pid != 0 && tokens != 0).then_some(Survivor { pid, started, tokens: tokens as usize })
        })
        .collect()
}

impl HolderBook {
    /// Reads the books a dead server left at `path`, if any, and starts new ones there.
    /// `fresh` says whether this server starts afresh (then what the books name are survivors
    /// to count) or took a predecessor's books over (then they are in the books already, and
    /// the old file only goes).
    pub fn open(path: &Path, fresh: bool) -> Result<(HolderBook, Vec<Survivor>), BookError> {
        let io_error = |action, source| BookError::Io { action, path: path.to_path_buf(), source };
        let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
        let survivors = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(mut file) => {
                let metadata = file.metadata().map_err(|e| io_error("inspect", e))?;
                let what = if !metadata.is_file() {
                    Some("not a regular file")
                } else if metadata.uid() != nix::unistd::geteuid().as_raw() {
                    Some("another user's file")
                } else if metadata.nlink() != 1 {
                    Some("a file with other names")
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(BookError::NotOurs { path: path.to_path_buf(), what });
                }
                let limit = (HEADER_LEN + MAX_RECORDS * RECORD_LEN) as u64;
                let mut bytes = Vec::new();
                (&mut file).take(limit).read_to_end(&mut bytes).map_err(|e| io_error("read", e))?;
                std::fs::remove_file(path).map_err(|e| io_error("remove", e))?;
                if fresh {
                    parse(&bytes, &boot_id())
                } else {
                    Vec::new()
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) if error.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(BookError::NotOurs {
                    path: path.to_path_buf(),
                    what: "a symbolic link",
                })
            }
            Err(error) => return Err(io_error("open", error)),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_error("create", e))?;
        file.write_all_at(&header(&boot_id()), 0).map_err(|e| io_error("write", e))?;
        file.set_len((HEADER_LEN + FIRST_RECORDS * RECORD_LEN) as u64)
            .map_err(|e| io_error("size", e))?;
        let map = crate::sys::map_shared(&file).map_err(|e| io_error("map", e))?;
        let book = HolderBook {
            file,
            map,
            capacity: FIRST_RECORDS,
            path: path.to_path_buf(),
            slots: FxHashMap::default(),
            free: Vec::new(),
            next: 0,
            broken: false,
        };
        Ok((book, survivors))
    }

    /// Where the books are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that process `pid` (started at `started`) holds `tokens` now.
    pub fn record(&mut self, pid: u32, started: u64, tokens: usize) {
        if self.broken {
            return;
        }
        let (slot, record) = if tokens == 0 {
            let Some(slot) = self.slots.remove(&pid) else { return };
            self.free.push(slot);
            (slot, [0u8; RECORD_LEN])
        } else {
            let slot = match self.slots.get(&pid) {
                Some(slot) => *slot,
                None => {
                    let Some(slot) = self.free.pop().or_else(|| self.new_slot()) else {
                        return;
                    };
                    self.slots.insert(pid, slot);
                    slot
                }
            };
            let mut record = [0u8; RECORD_LEN];
            record[0..4].copy_from_slice(&pid.to_le_bytes());
            record[4..8].copy_from_slice(&u32::try_from(tokens).unwrap_or(u32::MAX).to_le_bytes());
            record[8..16].copy_from_slice(&started.to_le_bytes());
            (slot, record)
        };
        let offset = HEADER_LEN + slot * RECORD_LEN;
        self.map[offset..offset + RECORD_LEN].copy_from_slice(&record);
    }

    /// A slot never used, growing the file when the table is full; `None` at the most.
    fn new_slot(&mut self) -> Option<usize> {
        if self.next == self.capacity {
            let capacity = (self.capacity * 2).min(MAX_RECORDS);
            if capacity == self.capacity || !self.grow(capacity) {
                return None;
            }
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// Grows the file and its map to `capacity` records; whether it could.
    fn grow(&mut self, capacity: usize) -> bool {
        let grown = self
            .file
            .set_len((HEADER_LEN + capacity * RECORD_LEN) as u64)
            .and_then(|()| crate::sys::map_shared(&self.file));
        match grown {
            Ok(map) => {
                self.map = map;
                self.capacity = capacity;
                true
            }
            Err(error) => {
                warn!(
                    "cannot grow the crash books {}: {error}; a server started after a crash \
                     will not count the tokens of holders beyond {}",
                    self.path.display(),
                    self.capacity
                );
                self.broken = true;
                false
            }
        }
    }
}

impl Drop for HolderBook {
    /// A server that stops with nobody holding its tokens leaves no books behind; with holders
    /// left (or after a handover, where the loop is never dropped) the file stays for the
    /// next server. Only the file this book made goes, never one put at its path since.
    fn drop(&mut self) {
        if !self.slots.is_empty() {
            return;
        }
        let same = match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(ours), Ok(there)) => ours.dev() == there.dev() && ours.ino() == there.ino(),
            _ => false,
        };
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<Survivor> {
        parse(&std::fs::read(path).unwrap(), &boot_id())
    }

    #[test]
    fn the_books_name_what_each_holder_holds_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steve.holders");
        let (mut book, survivors) = HolderBook::open(&path, true).unwrap();
        assert!(survivors.is_empty());
        book.record(100, 7, 2);
        book.record(200, 8, 1);
        book.record(100, 7, 3);
        book.record(200, 8, 0);
        book.record(300, 9, 1);
        assert_eq!(
            read(&path),
            vec![
                Survivor { pid: 100, started: 7, tokens: 3 },
                Survivor { pid: 300, started: 9, tokens: 1 }
            ]
        );
        // 300 took 200's freed slot: the table does not grow with every process ever seen.
        assert_eq!(book.next, 2);
        // Holders left: the books stay for the next server.
        drop(book);
        assert_eq!(read(&path).len(), 2);
    }

    #[test]
    fn the_table_grows_as_holders_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steve.holders");
        let (mut book, _) = HolderBook::open(&path, true).unwrap();
        let holders = FIRST_RECORDS * 2 + 1;
        for pid in 1..=holders as u32 {
            book.record(pid, u64::from(pid) * 10, 1);
        }
        let survivors = read(&path);
        assert_eq!(survivors.len(), holders);
        assert_eq!(
            survivors[holders - 1],
            Survivor { pid: holders as u32, started: holders as u64 * 10, tokens: 1 }
        );
        assert_eq!(book.capacity, FIRST_RECORDS * 4);
    }

    #[test]
    fn books_with_nobody_in_them_go_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steve.holders");
        let (mut book, _) = HolderBook::open(&path, true).unwrap();
        book.record(100, 7, 1);
        book.record(100, 7, 0);
        drop(book);
        assert!(!path.exists());
        // A file put at the path since is not the book's to remove.
        let (book, _) = HolderBook::open(&path, true).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "another").unwrap();
        drop(book);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "another");
    }

    #[test]
    fn a_new_server_reads_the_survivors_and_starts_its_own_books() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steve.holders");
        let (mut book, _) = HolderBook::open(&path, true).unwrap();
        book.record(100, 7, 2);
        let (second, survivors) = HolderBook::open(&path, true).unwrap();
        assert_eq!(survivors, vec![Survivor { pid: 100, started: 7, tokens: 2 }]);
        assert!(read(&path).is_empty(), "the new books start empty");
        drop((book, second));
        // A successor that took the books over counts nobody twice.
        let (mut book, _) = HolderBook::open(&path, true).unwrap();
        book.record(100, 7, 2);
        let (_, survivors) = HolderBook::open(&path, false).unwrap();
        assert!(survivors.is_empty());
    }

    #[test]
    fn books_of_another_boot_or_version_count_nobody() {
        let mut bytes = header("another boot").to_vec();
        bytes.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(parse(&bytes, "this boot").is_empty());
        assert_eq!(parse(&bytes, "another boot").len(), 1);
        bytes[0] = b'S';
        assert!(parse(&bytes, "another boot").is_empty());
        assert!(parse(b"short", "another boot").is_empty());
    }

    #[test]
    fn something_else_at_the_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.path().join("link.holders");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = HolderBook::open(&link, true).unwrap_err();
        assert!(matches!(error, BookError::NotOurs { what: "a symbolic link", .. }), "{error}");
        let hard = dir.path().join("hard.holders");
        std::fs::hard_link(&target, &hard).unwrap();
        let error = HolderBook::open(&hard, true).unwrap_err();
        assert!(matches!(error, BookError::NotOurs { .. }), "{error}");
        let fifo = dir.path().join("fifo.holders");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let error = HolderBook::open(&fifo, true).unwrap_err();
        assert!(matches!(error, BookError::NotOurs { what: "not a regular file", .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(link.exists() && hard.exists() && fifo.exists());
    }
}
