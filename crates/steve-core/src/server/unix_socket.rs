//! A listening Unix socket that a server made and removes: the control socket, and a metrics
//! socket. Made with its mode from the start (through the umask, never a chmod by name), its
//! group set with lchown; a stale socket is replaced only if it is this user's and nobody answers
//! on it; at the end it is removed only if the name still holds the socket made here.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::Gid;

/// A socket bound by this server, removed when dropped.
#[derive(Debug)]
pub struct OwnedSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket's device and inode, to remove only what was made here.
    id: (u64, u64),
}

impl OwnedSocket {
    /// Listens on `path` (non-blocking), with `mode` and group `gid`. A stale socket nobody
    /// answers on is replaced; a live one, or anything that is not a socket, is an error.
    pub fn bind(path: &Path, mode: u32, gid: Option<Gid>) -> io::Result<OwnedSocket> {
        let me = nix::unistd::geteuid().as_raw();
        if let Ok(metadata) = fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server answers on {}", path.display()),
                ));
            }
            // A dead socket is replaced only if it is this user's: someone else's is theirs.
            if metadata.uid() != me {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is a socket of uid {}: steve will not remove it",
                        path.display(),
                        metadata.uid()
                    ),
                ));
            }
            fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        // The socket is made with its mode (bind applies the umask): nothing is chmod'ed by
        // name afterwards, where a name swapped for a symbolic link would send the chmod
        // elsewhere.
        let umask = nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777);
        let previous = nix::sys::stat::umask(umask);
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(previous);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        let metadata = fs::symlink_metadata(path)?;
        if !metadata.file_type().is_socket() || metadata.uid() != me {
            return Err(io::Error::other(format!(
                "{} was replaced while the socket was made (its directory is writable by others: \
                 put the socket where only this user may write)",
                path.display()
            )));
        }
        if let Some(gid) = gid {
            // lchown never follows a symbolic link.
            std::os::unix::fs::lchown(path, None, Some(gid.as_raw()))?;
        }
        Ok(OwnedSocket { listener, path: path.to_path_buf(), id: (metadata.dev(), metadata.ino()) })
    }

    /// Takes over the socket a predecessor bound at `path` (its listening descriptor came in a
    /// handover): removed at the end like one bound here, if the name still holds it.
    pub fn adopt(listener: std::os::fd::OwnedFd, path: &Path) -> io::Result<OwnedSocket> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        let metadata = fs::symlink_metadata(path)?;
        Ok(OwnedSocket { listener, path: path.to_path_buf(), id: (metadata.dev(), metadata.ino()) })
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let still_ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.id);
        if still_ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}
