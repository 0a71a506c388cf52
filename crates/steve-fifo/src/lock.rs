//! The lock beside a served path (`PATH.lock`): one daemon per path, and proof that a pipe left
//! at the path was made by a steve that has died.
//!
//! The lock is an exclusive `flock` on the lock file, held for the daemon's life; the kernel
//! drops it when the daemon dies, however it dies. The file says `steve PID`, so a second daemon
//! can name the first, and a later daemon can tell a crashed steve's leftovers (a lock file in
//! that form, unlocked) from someone else's files, which it never removes.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::FifoError;

/// An exclusive lock on `PATH.lock`, removed with the file when dropped.
#[derive(Debug)]
pub struct PathLock {
    lock_path: PathBuf,
    file: Flock<File>,
    previous_owner: Option<u32>,
}

const MARK: &str = "steve ";

impl PathLock {
    /// Takes the lock for serving `path`, or says who holds it.
    pub fn acquire(path: &Path) -> Result<PathLock, FifoError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        // The file may be removed by its owner between our open and our lock: then the lock we
        // got is on a file nobody else can find, and we try again.
        for _ in 0..8 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&lock_path)
                .map_err(FifoError::io("create the lock file", &lock_path))?;
            // A lock file another user made (in a directory both may write) is not a steve's
            // proof of anything, and is not this daemon's to write.
            let owner = file.metadata().map_err(FifoError::io("inspect", &lock_path))?.uid();
            let me = nix::unistd::geteuid().as_raw();
            if owner != me {
                return Err(FifoError::Io {
                    action: "use the lock file",
                    path: lock_path,
                    source: io::Error::other(format!("it belongs to uid {owner}, not to uid {me}")),
                });
            }
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    let pid = read_owner(&mut file).ok().flatten();
                    return Err(FifoError::AlreadyServed { path: path.to_path_buf(), pid });
                }
                Err((_, errno)) => {
                    return Err(FifoError::io("lock", &lock_path)(errno.into()));
                }
            };
            if !same_file(&lock_path, &file) {
                continue;
            }
            let previous_owner = match read_owner(&mut file) {
                Ok(owner) => owner,
                Err(Foreign) => {
                    // Not ours to overwrite or remove.
                    return Err(FifoError::Io {
                        action: "use the lock file",
                        path: lock_path,
                        source: io::Error::other("it exists and was not made by steve"),
                    });
                }
            };
            write_owner(&mut file).map_err(FifoError::io("write the lock file", &lock_path))?;
            return Ok(PathLock { lock_path, file, previous_owner });
        }
        Err(FifoError::AlreadyServed { path: path.to_path_buf(), pid: None })
    }

    /// Takes over a predecessor's lock for serving `path`: `file` is its open lock file, passed
    /// in a handover. A descriptor passed is the same open file, which holds the lock, so the
    /// lock was never let go; the file names this process from now on.
    pub fn adopt(path: &Path, file: std::os::fd::OwnedFd) -> Result<PathLock, FifoError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut file = Flock::lock(File::from(file), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| FifoError::io("lock", &lock_path)(errno.into()))?;
        write_owner(&mut file).map_err(FifoError::io("write the lock file", &lock_path))?;
        Ok(PathLock { lock_path, file, previous_owner: None })
    }

    /// The open lock file, to hand over.
    pub fn descriptor(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// The pid of the steve that held this lock before and died without cleaning up, if the
    /// lock file was left behind.
    pub fn previous_owner(&self) -> Option<u32> {
        self.previous_owner
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        if same_file(&self.lock_path, &self.file) {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// The lock file's content did not come from steve.
struct Foreign;

/// `Ok(None)` for a new, empty lock file; `Ok(Some(pid))` for one a steve wrote.
fn read_owner(file: &mut File) -> Result<Option<u32>, Foreign> {
    let mut text = String::new();
    file.rewind().map_err(|_| Foreign)?;
    file.read_to_string(&mut text).map_err(|_| Foreign)?;
    if text.is_empty() {
        return Ok(None);
    }
    let pid = text.strip_prefix(MARK).and_then(|rest| rest.trim().parse().ok());
    pid.map(Some).ok_or(Foreign)
}

fn write_owner(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{MARK}{}", std::process::id())
}

fn same_file(path: &Path, file: &File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(on_disk), Ok(open)) => on_disk.dev() == open.dev() && on_disk.ino() == open.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_path_names_the_first_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobserver");
        let first = PathLock::acquire(&path).unwrap();
        assert_eq!(first.previous_owner(), None);
        match PathLock::acquire(&path) {
            Err(FifoError::AlreadyServed { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected AlreadyServed, got {other:?}"),
        }
        drop(first);
        assert!(!dir.path().join("jobserver.lock").exists());
    }

    #[test]
    fn a_lock_file_left_by_a_dead_steve_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobserver");
        fs::write(dir.path().join("jobserver.lock"), "steve 4242\n").unwrap();
        let lock = PathLock::acquire(&path).unwrap();
        assert_eq!(lock.previous_owner(), Some(4242));
    }

    #[test]
    fn a_foreign_lock_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobserver");
        let lock_path = dir.path().join("jobserver.lock");
        fs::write(&lock_path, "precious\n").unwrap();
        assert!(PathLock::acquire(&path).is_err());
        assert_eq!(fs::read_to_string(&lock_path).unwrap(), "precious\n");
    }
}
