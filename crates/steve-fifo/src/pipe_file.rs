//! A named pipe steve made at a path, for a fifo server or a device's companion FIFO: made only
//! where nothing else is (a pipe left by a steve that died is replaced, anything else refused),
//! locked for one daemon (`PATH.lock`), given its mode and group through its descriptor, and
//! removed when dropped if it is still the one made, with the directory made for it.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::Gid;
use tracing::warn;

use crate::error::FifoError;
use crate::lock::PathLock;
use crate::make_fifo;
use crate::openers::FileId;

/// A named pipe this daemon made, open for reading and writing without blocking.
#[derive(Debug)]
pub struct PipeFile {
    path: PathBuf,
    file: File,
    id: FileId,
    /// It was left by a steve that died while clients still had it open, and is served again
    /// as it is: its tokens are where that steve left them.
    adopted: bool,
    // Fields drop in order, after `drop` below removed the pipe: first the lock (and its file),
    // then the directory, which is only empty once both are gone.
    _lock: PathLock,
    _made_dir: Option<MadeDir>,
}

impl PipeFile {
    /// Makes the pipe at `path` (absolute), its directory if missing, with `mode` and `gid`.
    pub fn create(path: &Path, mode: u32, gid: Option<Gid>) -> Result<PipeFile, FifoError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        // Declared before the lock, so that on an early return the lock goes first.
        let made_dir = make_dir(dir)?.map(MadeDir);
        let lock = PathLock::acquire(path)?;
        if let Some((file, id)) = stale_pipe_in_use(path, &lock)? {
            return Ok(PipeFile {
                path: path.to_path_buf(),
                file,
                id,
                adopted: true,
                _lock: lock,
                _made_dir: made_dir,
            });
        }
        remove_stale_pipe(path, &lock)?;
        let file = make_fifo(path)?;
        let made = |file: &File| -> Result<FileId, FifoError> {
            let metadata = file.metadata().map_err(FifoError::io("inspect", path))?;
            if let Some(gid) = gid {
                std::os::unix::fs::fchown(file, None, Some(gid.as_raw()))
                    .map_err(FifoError::io("set the group of", path))?;
            }
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(FifoError::io("set the mode of", path))?;
            Ok(FileId::of(&metadata))
        };
        match made(&file) {
            Ok(id) => Ok(PipeFile {
                path: path.to_path_buf(),
                file,
                id,
                adopted: false,
                _lock: lock,
                _made_dir: made_dir,
            }),
            Err(error) => {
                let _ = fs::remove_file(path);
                Err(error)
            }
        }
    }

    /// Takes over the pipe a predecessor made at `path`, from its descriptors (the pipe open
    /// both ways, and its lock file) and the directory it made for it, if it did: removed at the
    /// end as if made here.
    pub fn adopt(
        path: &Path,
        file: std::os::fd::OwnedFd,
        lock: std::os::fd::OwnedFd,
        made_dir: Option<PathBuf>,
    ) -> Result<PipeFile, FifoError> {
        let file = File::from(file);
        let metadata = file.metadata().map_err(FifoError::io("inspect", path))?;
        Ok(PipeFile {
            path: path.to_path_buf(),
            id: FileId::of(&metadata),
            adopted: false,
            file,
            _lock: PathLock::adopt(path, lock)?,
            _made_dir: made_dir.map(MadeDir),
        })
    }

    /// Its lock file, and the directory made for it (if one was), to hand over.
    pub fn handover_parts(&self) -> (std::os::fd::BorrowedFd<'_>, Option<&Path>) {
        (self._lock.descriptor(), self._made_dir.as_ref().map(|dir| dir.0.as_path()))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a dead steve's pipe that clients still had open, served again: its
    /// tokens are in it or with those clients, not to be put in again.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pipe, open both ways.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its identity, to find who else has it open.
    pub fn id(&self) -> FileId {
        self.id
    }
}

impl Drop for PipeFile {
    fn drop(&mut self) {
        // Remove the pipe only if it is still the one this daemon made.
        let still_ours =
            fs::symlink_metadata(&self.path).is_ok_and(|metadata| FileId::of(&metadata) == self.id);
        if still_ours {
            if let Err(error) = fs::remove_file(&self.path) {
                warn!("could not remove {}: {error}", self.path.display());
            }
        }
    }
}

/// A directory the daemon made, removed when dropped if nothing else is in it.
#[derive(Debug)]
struct MadeDir(PathBuf);

impl Drop for MadeDir {
    fn drop(&mut self) {
        // Fails, harmlessly, while anything else is in it.
        let _ = fs::remove_dir(&self.0);
    }
}

/// Makes the pipe's directory if it is missing; returns it if it was made.
fn make_dir(dir: &Path) -> Result<Option<PathBuf>, FifoError> {
    if dir.is_dir() {
        return Ok(None);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(FifoError::io("create the directory", dir))?;
    Ok(Some(dir.to_path_buf()))
}

/// A named pipe left at `path` by a steve that died is replaced; anything else is refused.
/// A pipe a dead steve left at `path` that processes still have open: opened, to serve again,
/// so that they and new clients share one pool (replacing it would make a second pool beside
/// the one they still use). `None` if there is none, or nobody has it open.
fn stale_pipe_in_use(path: &Path, lock: &PathLock) -> Result<Option<(File, FileId)>, FifoError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Some(pid) = lock.previous_owner() else { return Ok(None) };
    let Ok(metadata) = fs::symlink_metadata(path) else { return Ok(None) };
    if !metadata.file_type().is_fifo() || metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(None);
    }
    // O_RDWR never blocks on a FIFO; O_NOFOLLOW, since the name is only checked, not held.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(FifoError::io("open", path))?;
    let opened = file.metadata().map_err(FifoError::io("inspect", path))?;
    let id = FileId::of(&opened);
    if id != FileId::of(&metadata) {
        return Ok(None);
    }
    let holders = crate::openers::find_holders(id, std::process::id());
    if holders.is_empty() {
        return Ok(None);
    }
    warn!(
        "serving again the pipe {} left by steve pid {pid}, which is no longer running: {} \
         process(es) still have it open, and a new pipe would be a second pool beside it",
        path.display(),
        holders.len()
    );
    Ok(Some((file, id)))
}

fn remove_stale_pipe(path: &Path, lock: &PathLock) -> Result<(), FifoError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(FifoError::io("inspect", path)(error)),
    };
    let file_type = metadata.file_type();
    if !file_type.is_fifo() {
        let found = if file_type.is_dir() {
            "directory"
        } else if file_type.is_symlink() {
            "symbolic link"
        } else if file_type.is_socket() {
            "socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "device"
        } else {
            "regular file"
        };
        return Err(FifoError::NotAPipe { path: path.to_path_buf(), found });
    }
    // Only a pipe this user made can be a dead steve's of this user.
    use std::os::unix::fs::MetadataExt;
    if metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Err(FifoError::ForeignPipe { path: path.to_path_buf() });
    }
    match lock.previous_owner() {
        Some(pid) => {
            warn!(
                "replacing the stale pipe {} left by steve pid {pid}, which is no longer running",
                path.display()
            );
            fs::remove_file(path).map_err(FifoError::io("remove the stale pipe", path))
        }
        None => Err(FifoError::ForeignPipe { path: path.to_path_buf() }),
    }
}
