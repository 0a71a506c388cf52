//! The mount: where it goes, what is mounted there already (a stale mount left by a server that
//! died is cleared, a live one refused), and mounting and unmounting. Root's steve mounts with
//! `mount(2)` on the directory it holds open (no name looked up twice, so no symbolic link
//! swapped in can move the mount), anyone else's through `fusermount3`, by fuser; fuser answers
//! the kernel's INIT, and the connection is then served by steve-cuse's session on a duplicate
//! of its descriptor.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, mkdirat, SFlag};
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

/// `MOUNTPOINT.fifo`: the companion FIFO beside a mount point, as its control socket is.
pub fn companion_beside(mountpoint: &Path) -> PathBuf {
    let mut fifo = mountpoint.as_os_str().to_owned();
    fifo.push(".fifo");
    PathBuf::from(fifo)
}

/// The name steve's mounts give as their source (`fsname`), by which they are told from others.
pub const FS_NAME: &str = "steve";

/// What is mounted on a directory already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: the directory is free to mount on.
    Nothing,
    /// A steve mount; stale when its server is gone (the kernel answers ENOTCONN, or
    /// ECONNABORTED as the connection ends).
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
            // dead connection fails it with ENOTCONN, and one that dies while it waits with
            // ECONNABORTED (a server on io_uring killed by SIGKILL: the kernel ends its
            // connection only once its ring is torn down, a moment after the process).
            let stale = matches!(
                nix::sys::statfs::statfs(mountpoint),
                Err(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED)
            );
            Existing::Steve { stale }
        }
        Some(MountEntry { fstype, .. }) => Existing::Other(fstype),
    }
}

/// A mount point reached without following a symbolic link: its parent directory is held open
/// and every later step (creating the directory, clearing a stale mount, mounting, unmounting)
/// looks up only the last name, from that descriptor. A name swapped for a link anywhere on the
/// path cannot send root's mount (or unmount) to another directory.
#[derive(Debug)]
pub struct Mountpoint {
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
}

impl Mountpoint {
    /// `mountpoint` made absolute with its parent free of symbolic links, without touching the
    /// directory itself (a stale mount answers every look at it with ENOTCONN). Creates the
    /// parents if missing.
    pub fn resolve(mountpoint: &Path) -> Result<Mountpoint, Error> {
        let io_error =
            |action, source| Error::Io { action, what: mountpoint.display().to_string(), source };
        let absolute =
            std::path::absolute(mountpoint).map_err(|source| io_error("resolve", source))?;
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(Error::BadMountpoint { mountpoint: mountpoint.to_path_buf() });
        };
        fs::create_dir_all(parent).map_err(|source| io_error("create the parent of", source))?;
        let parent = fs::canonicalize(parent).map_err(|source| io_error("resolve", source))?;
        // Canonical a moment ago: a link found now was swapped in since.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        let parent_fd = openat2(AT_FDCWD, &parent, how)
            .map_err(|errno| io_error("open the parent of", errno.into()))?;
        Ok(Mountpoint { path: parent.join(name), parent: parent_fd, name: name.to_owned() })
    }

    /// The mount point's path, as shown to users and found in `/proc/self/mountinfo`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mount point's name looked up from its parent's descriptor.
    fn beneath(&self) -> PathBuf {
        descriptor_path(self.parent.as_fd()).join(&self.name)
    }

    /// Opens the mount point directory itself, refusing a symbolic link and a directory with
    /// something mounted on it.
    fn open_directory(&self) -> Result<OwnedFd, Error> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        openat2(self.parent.as_fd(), self.name.as_os_str(), how).map_err(|errno| match errno {
            Errno::ELOOP | Errno::ENOTDIR => Error::NotADirectory { mountpoint: self.path.clone() },
            Errno::EXDEV => Error::ForeignMount {
                mountpoint: self.path.clone(),
                fstype: "one mounted while steve started".to_string(),
            },
            errno => Error::Io {
                action: "open the mount point",
                what: self.path.display().to_string(),
                source: errno.into(),
            },
        })
    }
}

/// `/proc/self/fd/N`: a path the kernel resolves to the very file descriptor N holds.
fn descriptor_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The fusermount program: `$FUSERMOUNT_PATH`, as fuser uses it, or `fusermount3`.
fn fusermount() -> std::ffi::OsString {
    std::env::var_os("FUSERMOUNT_PATH").unwrap_or_else(|| "fusermount3".into())
}

/// Detaches the filesystem on `mountpoint` at once, even while files on it are open: the
/// kernel as root (by the name under the held parent, never following a link),
/// `fusermount3 -u -z` for anyone else.
pub fn detach(mountpoint: &Mountpoint) -> Result<(), String> {
    if geteuid().is_root() {
        let flags = MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW;
        return nix::mount::umount2(&mountpoint.beneath(), flags)
            .map_err(|errno| format!("umount: {errno}"));
    }
    detach_by_name(mountpoint.path())
}

/// Makes `mountpoint` ready to mount on: creates it, clears a stale steve mount, and refuses a
/// live one or a foreign filesystem. Returns the directory, held open, to mount on.
pub fn prepare(mountpoint: &Mountpoint) -> Result<OwnedFd, Error> {
    let path = || mountpoint.path().to_path_buf();
    match existing(mountpoint.path()) {
        Existing::Nothing => {}
        Existing::Steve { stale: false } => return Err(Error::InUse { mountpoint: path() }),
        Existing::Steve { stale: true } => {
            detach(mountpoint)
                .map_err(|reason| Error::StaleMount { mountpoint: path(), reason })?;
            warn!("cleared a stale mount on {} left by a server that died", path().display());
        }
        Existing::Other(fstype) => return Err(Error::ForeignMount { mountpoint: path(), fstype }),
    }
    let found = fstatat(
        mountpoint.parent.as_fd(),
        mountpoint.name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    match found {
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {}
        Ok(_) => return Err(Error::NotADirectory { mountpoint: path() }),
        Err(Errno::ENOENT) => mkdirat(
            mountpoint.parent.as_fd(),
            mountpoint.name.as_os_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .map_err(|errno| Error::Io {
            action: "create the mount point",
            what: path().display().to_string(),
            source: errno.into(),
        })?,
        Err(errno) => {
            return Err(Error::Io {
                action: "inspect the mount point",
                what: path().display().to_string(),
                source: errno.into(),
            })
        }
    }
    mountpoint.open_directory()
}

/// fuser's part: the INIT answer. Writes are capped at what the session's buffer holds (the
/// kernel refuses to hand requests to a buffer smaller than the largest write). With
/// `io_uring`, the answer also says the server takes requests through io_uring where the kernel
/// offers it, with a readahead of one page, so that the kernel's largest payload (and each ring
/// entry's buffer, [`super::uring::PAYLOAD_LEN`]) stays small.
struct Handshake {
    io_uring: bool,
}

impl fuser::Filesystem for Handshake {
    fn init(
        &mut self,
        _request: &fuser::Request,
        config: &mut fuser::KernelConfig,
    ) -> std::io::Result<()> {
        config
            .set_max_write(crate::session::MAX_IO)
            .map_err(|nearest| std::io::Error::other(format!("max_write {nearest}")))?;
        if self.io_uring {
            // A kernel that does not offer it refuses the ring's entries later, and says why.
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING);
            let _ = config.set_max_readahead(crate::session::MAX_IO);
        }
        Ok(())
    }
}

/// A mounted filesystem, unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::Session<Handshake>>,
    /// The directory mounted on, when steve mounted it itself: unmounted through it.
    directory: Option<OwnedFd>,
    mountpoint: PathBuf,
    /// Taken over from a predecessor without its fuser session: a user's mount is then
    /// detached by name (`fusermount3 -u -z`).
    adopted: bool,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

/// The options every steve mount has.
fn mount_config(allow_other: bool) -> fuser::Config {
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
    config
}

/// Mounts on `mountpoint`, whose `directory` [`prepare`] returned, and answers INIT. Returns the
/// mount and the connection to serve. `allow_other` lets other users' processes in (the file's
/// mode still decides, the kernel checks it: `default_permissions`).
///
/// As root steve mounts itself, on `/proc/self/fd/N` of the directory it holds open: the very
/// directory it checked, wherever that is by now. Anyone else mounts through `fusermount3`
/// (by fuser), which guards its own lookups. `io_uring`: offer to take requests through
/// io_uring (see [`Handshake`]).
pub fn mount(
    mountpoint: &Mountpoint,
    directory: OwnedFd,
    allow_other: bool,
    io_uring: bool,
) -> Result<(Mounted, OwnedFd), Error> {
    let path = mountpoint.path().to_path_buf();
    let mount_error = |source: std::io::Error| Error::Mount {
        mountpoint: path.clone(),
        // fusermount3's own message ends in a newline: the error must stay on one line.
        source: std::io::Error::new(source.kind(), source.to_string().trim_end().to_string()),
    };
    let config = mount_config(allow_other);
    let (session, directory) = if geteuid().is_root() {
        let fuse = mount_directly(&directory, allow_other).map_err(mount_error)?;
        // Unmounted again if the handshake fails or the mount is not where it was meant to be.
        let undo = |error: Error| {
            if let Err(why) = unmount_directory(&directory) {
                warn!("could not unmount the mount just made on {}: {why}", path.display());
            }
            error
        };
        let acl = config.acl;
        let session = fuser::Session::from_fd(Handshake { io_uring }, fuse, acl, config)
            .map_err(|error| undo(mount_error(error)))?;
        check_in_place(&path).map_err(undo)?;
        (session, Some(directory))
    } else {
        (fuser::Session::new(Handshake { io_uring }, &path, &config).map_err(mount_error)?, None)
    };
    let channel = session.as_fd().try_clone_to_owned().map_err(|source| Error::Io {
        action: "duplicate",
        what: "the FUSE connection".to_string(),
        source,
    })?;
    info!("mounted on {}", path.display());
    Ok((Mounted { session: Some(session), directory, mountpoint: path, adopted: false }, channel))
}

/// mount(2) of steve's filesystem on `directory`; returns the new connection (`/dev/fuse`).
fn mount_directly(directory: &OwnedFd, allow_other: bool) -> std::io::Result<OwnedFd> {
    let fuse: OwnedFd =
        fs::OpenOptions::new().read(true).write(true).open(super::FUSE_PATH)?.into();
    let mode = fstat(directory.as_fd())?.st_mode & SFlag::S_IFMT.bits();
    let mut options = format!(
        "fd={},rootmode={mode:o},user_id={},group_id={},default_permissions",
        fuse.as_raw_fd(),
        geteuid(),
        nix::unistd::getegid()
    );
    if allow_other {
        options.push_str(",allow_other");
    }
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    nix::mount::mount(
        Some(FS_NAME),
        &descriptor_path(directory.as_fd()),
        Some("fuse.steve"),
        flags,
        Some(options.as_str()),
    )?;
    Ok(fuse)
}

/// The mount must be seen at its path: a directory renamed between its check and the mount
/// carried the mount away with it (into a directory its renamer may write), and is refused.
fn check_in_place(mountpoint: &Path) -> Result<(), Error> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match mount_at(&mountinfo, mountpoint) {
        Some(MountEntry { source, .. }) if source == FS_NAME => Ok(()),
        _ => Err(Error::Io {
            action: "mount on",
            what: mountpoint.display().to_string(),
            source: std::io::Error::other(
                "the directory was moved while it was mounted on (its parent is writable by \
                 others: use a mount point only root may change)",
            ),
        }),
    }
}

impl Mounted {
    /// The mount a predecessor made on `mountpoint`, taken over in a handover: unmounted at the
    /// end through `directory` (the directory it mounted on, when it mounted as root) or by
    /// name.
    pub fn adopted(mountpoint: PathBuf, directory: Option<OwnedFd>) -> Mounted {
        Mounted { session: None, directory, mountpoint, adopted: true }
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory mounted on, when steve mounted it as root.
    pub fn directory(&self) -> Option<BorrowedFd<'_>> {
        self.directory.as_ref().map(AsFd::as_fd)
    }

    /// Unmounts; while clients still have the file open, detaches lazily instead (the mount
    /// disappears now, their descriptors fail from then on).
    pub fn unmount(&mut self) {
        let outcome = match (self.directory.take(), self.session.take()) {
            (Some(directory), _) => unmount_directory(&directory),
            (None, Some(mut session)) => session.unmount().or_else(|error| {
                info!("{} is busy ({error}): detaching it", self.mountpoint.display());
                detach_by_name(&self.mountpoint)
            }),
            (None, None) if self.adopted => {
                self.adopted = false;
                detach_by_name(&self.mountpoint)
            }
            (None, None) => return,
        };
        match outcome {
            Ok(()) => info!("unmounted {}", self.mountpoint.display()),
            Err(why) => warn!("could not unmount {}: {why}", self.mountpoint.display()),
        }
    }
}

/// Unmounts what steve mounted on `directory` (through `/proc/self/fd/N`, which reaches the
/// mount on top of that very directory); detaches it while it is busy.
fn unmount_directory(directory: &OwnedFd) -> Result<(), String> {
    let path = descriptor_path(directory.as_fd());
    match nix::mount::umount2(&path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => nix::mount::umount2(&path, MntFlags::MNT_DETACH)
            .map_err(|errno| format!("umount: {errno}")),
        Err(errno) => Err(format!("umount: {errno}")),
    }
}

/// `fusermount3 -u -z` on a user's own mount.
fn detach_by_name(mountpoint: &Path) -> Result<(), String> {
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

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}
