//! The mount: where it goes, what is mounted there already (a stale mount left by a server that
//! died is cleared, a live one refused), and mounting and unmounting. fuser mounts, through
//! `mount(2)` as root and `fusermount3` otherwise, and answers the kernel's INIT; the connection
//! is then served by steve-cuse's session on a duplicate of fuser's descriptor.
#![forbid(unsafe_code)]

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::geteuid;
use tracing::{info, warn};

use steve_core::mountinfo::{mount_at, MountEntry};

use crate::error::Error;

/// The jobserver file's name in the mount.
pub const FILE_NAME: &str = "jobserver";

/// The mount point when none is given: `/run/steve/fuse` for root, `$XDG_RUNTIME_DIR/steve/fuse`
/// for anyone else, who without a runtime directory must give `--mountpoint`.
pub fn default_mountpoint() -> Result<PathBuf, Error> {
    if geteuid().is_root() {
        return Ok(PathBuf::from("/run/steve/fuse"));
    }
    user_mountpoint().ok_or(Error::NoDefaultMountpoint)
}

fn user_mountpoint() -> Option<PathBuf> {
    Some(steve_core::paths::runtime_dir()?.join("steve/fuse"))
}

/// Every place a fuse server mounts by default: root's, then this user's.
pub fn default_mountpoints() -> Vec<PathBuf> {
    std::iter::once(PathBuf::from("/run/steve/fuse")).chain(user_mountpoint()).collect()
}

/// The name steve's mounts give as their source (`fsname`), by which they are told from others.
pub const FS_NAME: &str = "steve";

/// What is mounted on a directory already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: the directory is free to mount on.
    Nothing,
    /// A steve mount; stale when its server is gone (the kernel answers ENOTCONN).
    Steve {
        /// Whether its server is gone.
        stale: bool,
    },
    /// Some other filesystem, of this type (another FUSE filesystem among them).
    Other(String),
}

/// What `/proc/self/mountinfo` shows on `mountpoint` (absolute, without symbolic links).
pub fn existing(mountpoint: &Path) -> Existing {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match mount_at(&mountinfo, mountpoint) {
        None => Existing::Nothing,
        Some(MountEntry { fstype, source })
            if source == FS_NAME && (fstype == "fuse" || fstype.starts_with("fuse.")) =>
        {
            // statfs always asks the server (stat may be answered from cached attributes); a
            // dead connection fails it with ENOTCONN.
            let stale =
                matches!(nix::sys::statfs::statfs(mountpoint), Err(nix::errno::Errno::ENOTCONN));
            Existing::Steve { stale }
        }
        Some(MountEntry { fstype, .. }) => Existing::Other(fstype),
    }
}

/// `mountpoint` made absolute and free of symbolic links, without touching the directory itself
/// (a stale mount answers every look at it with ENOTCONN). Creates the parents if missing.
pub fn resolve(mountpoint: &Path) -> Result<PathBuf, Error> {
    let io_error =
        |action, source| Error::Io { action, what: mountpoint.display().to_string(), source };
    let absolute = std::path::absolute(mountpoint).map_err(|source| io_error("resolve", source))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(Error::BadMountpoint { mountpoint: mountpoint.to_path_buf() });
    };
    fs::create_dir_all(parent).map_err(|source| io_error("create the parent of", source))?;
    let parent = fs::canonicalize(parent).map_err(|source| io_error("resolve", source))?;
    Ok(parent.join(name))
}

/// The fusermount program: `$FUSERMOUNT_PATH`, as fuser uses it, or `fusermount3`.
fn fusermount() -> std::ffi::OsString {
    std::env::var_os("FUSERMOUNT_PATH").unwrap_or_else(|| "fusermount3".into())
}

/// Detaches the filesystem on `mountpoint` at once, even while files on it are open: the
/// kernel as root, `fusermount3 -u -z` for anyone else.
pub fn detach(mountpoint: &Path) -> Result<(), String> {
    if geteuid().is_root() {
        return nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|errno| format!("umount: {errno}"));
    }
    let output = Command::new(fusermount())
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .output()
        .map_err(|error| format!("cannot run {}: {error}", fusermount().to_string_lossy()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Makes `mountpoint` ready to mount on: creates it, clears a stale steve mount, and refuses a
/// live one or a foreign filesystem.
pub fn prepare(mountpoint: &Path) -> Result<(), Error> {
    match existing(mountpoint) {
        Existing::Nothing => {}
        Existing::Steve { stale: false } => {
            return Err(Error::InUse { mountpoint: mountpoint.to_path_buf() })
        }
        Existing::Steve { stale: true } => {
            detach(mountpoint).map_err(|reason| Error::StaleMount {
                mountpoint: mountpoint.to_path_buf(),
                reason,
            })?;
            warn!("cleared a stale mount on {} left by a server that died", mountpoint.display());
        }
        Existing::Other(fstype) => {
            return Err(Error::ForeignMount { mountpoint: mountpoint.to_path_buf(), fstype })
        }
    }
    if let Ok(metadata) = fs::symlink_metadata(mountpoint) {
        if !metadata.is_dir() {
            return Err(Error::NotADirectory { mountpoint: mountpoint.to_path_buf() });
        }
    } else {
        fs::create_dir(mountpoint).map_err(|source| Error::Io {
            action: "create the mount point",
            what: mountpoint.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// fuser's part: the INIT answer. Writes are capped at what the session's buffer holds (the
/// kernel refuses to hand requests to a buffer smaller than the largest write).
struct Handshake;

impl fuser::Filesystem for Handshake {
    fn init(
        &mut self,
        _request: &fuser::Request,
        config: &mut fuser::KernelConfig,
    ) -> std::io::Result<()> {
        config
            .set_max_write(crate::session::MAX_IO)
            .map_err(|nearest| std::io::Error::other(format!("max_write {nearest}")))?;
        Ok(())
    }
}

/// A mounted filesystem, unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::Session<Handshake>>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

/// Mounts on `mountpoint` (prepared) and answers INIT. Returns the mount and the connection to
/// serve. `allow_other` lets other users' processes in (the file's mode still decides, the
/// kernel checks it: `default_permissions`).
pub fn mount(mountpoint: &Path, allow_other: bool) -> Result<(Mounted, OwnedFd), Error> {
    use fuser::MountOption;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.to_string()),
        MountOption::Subtype("steve".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.acl = if allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    let session =
        fuser::Session::new(Handshake, mountpoint, &config).map_err(|source| Error::Mount {
            mountpoint: mountpoint.to_path_buf(),
            // fusermount3's own message ends in a newline: the error must stay on one line.
            source: std::io::Error::new(source.kind(), source.to_string().trim_end().to_string()),
        })?;
    let channel = session.as_fd().try_clone_to_owned().map_err(|source| Error::Io {
        action: "duplicate",
        what: "the FUSE connection".to_string(),
        source,
    })?;
    info!("mounted on {}", mountpoint.display());
    Ok((Mounted { session: Some(session), mountpoint: mountpoint.to_path_buf() }, channel))
}

impl Mounted {
    /// Unmounts; while clients still have the file open, detaches lazily instead (the mount
    /// disappears now, their descriptors fail from then on).
    pub fn unmount(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        if let Err(error) = session.unmount() {
            info!("{} is busy ({error}): detaching it", self.mountpoint.display());
            if let Err(why) = detach(&self.mountpoint) {
                warn!("could not unmount {}: {why}", self.mountpoint.display());
                return;
            }
        }
        info!("unmounted {}", self.mountpoint.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}
