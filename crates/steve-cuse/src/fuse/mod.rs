//! Backend `fuse`: the jobserver as a file, `MOUNTPOINT/jobserver`, on a FUSE mount, with the
//! same per-process accounting as `/dev/steve`.
//!
//! steve mounts the filesystem (`mount(2)` as root, `fusermount3` through the [fuser] crate
//! otherwise) and fuser answers the kernel's INIT; from then on the requests are served by this crate's
//! [`Session`], the same loop that serves `/dev/steve`, with a
//! [`OneFile`] answering the filesystem requests. fuser's own request loop is not used because
//! it answers FUSE_INTERRUPT with ENOSYS, after which the kernel sends no interrupts at all: a
//! client blocked in a read could then neither take a signal nor die until a token came (see
//! `docs/design.md`).
//!
//! - [`filesystem`]: the root directory and its one file;
//! - [`mount`]: where to mount, finding and clearing a stale mount, mounting and unmounting;
//! - [`clone`]: a second descriptor on a connection (`FUSE_DEV_IOC_CLONE`);
//! - [`uring`]: FUSE over io_uring, and [`starvation`]: a ring queue starved of entries, and how
//!   it is got going again;
//! - [`baseline`]: a minimal FUSE file server in libfuse's shapes, for `steve bench`;
//! - this module: availability, options, serving until a stop signal.
#![deny(unsafe_code)]

pub mod baseline;
#[allow(unsafe_code)]
pub mod clone;
pub mod filesystem;
pub mod mount;
pub mod starvation;
#[allow(unsafe_code)]
pub mod uring;

use std::path::{Path, PathBuf};

use filesystem::OneFile;
use mount::FILE_NAME;
use nix::unistd::{getegid, geteuid, AccessFlags};
use steve_core::accounting::device::Device;
use steve_core::makeflags::JobserverAuth;
use steve_core::paths::control_beside;
use steve_core::server::backend::{
    Availability, IoUringChoice, Place, Places, ServeConfig, ServeOption,
};
use steve_core::server::{Endpoint, Server};

use crate::session::Session;
use steve_fifo::companion::Companion;
use tracing::info;

/// The kernel's FUSE device.
pub const FUSE_PATH: &str = "/dev/fuse";

/// Whether this machine can mount steve's filesystem for this user, and if not, why.
pub fn availability() -> Availability {
    if std::fs::metadata(FUSE_PATH).is_err() {
        return Availability::Unavailable(
            "no /dev/fuse: the kernel has no FUSE, or the fuse module is not loaded (modprobe fuse)"
                .to_string(),
        );
    }
    if let Err(errno) = nix::unistd::access(FUSE_PATH, AccessFlags::R_OK | AccessFlags::W_OK) {
        return Availability::Unavailable(format!(
            "{FUSE_PATH} cannot be opened by this user ({errno}); it is usually mode 0666"
        ));
    }
    // fuser mounts with mount(2) where that is allowed, through fusermount3 otherwise.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !may_mount(&status) && find_in_path("fusermount3").is_none() {
        return Availability::Unavailable(
            "this process may not mount (no CAP_SYS_ADMIN) and fusermount3 is not installed \
             (package fuse3), through which an ordinary user mounts"
                .to_string(),
        );
    }
    Availability::Available
}

/// Whether `/proc/self/status` text grants CAP_SYS_ADMIN (bit 21 of `CapEff`), which mount(2)
/// needs. Root in a container may lack it.
fn may_mount(status: &str) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|file| file.is_file())
}

/// The options `fuse` takes besides the common ones.
pub const OPTIONS: &[ServeOption] = &[
    ServeOption::Mountpoint,
    ServeOption::PollReservation,
    ServeOption::Threads,
    ServeOption::IoUring,
    ServeOption::PerProcessLimit,
    ServeOption::Fairness,
    ServeOption::Fifo,
];

/// Where fuse servers are found: `MOUNTPOINT/jobserver`, with `MOUNTPOINT.control` beside the
/// mount point, at root's and this user's default mount points.
pub const PLACES: Places = Places { defaults, control_for };

fn defaults() -> Vec<Place> {
    mount::default_mountpoints()
        .into_iter()
        .map(|mountpoint| Place {
            jobserver: mountpoint.join(FILE_NAME),
            control: control_beside(&mountpoint),
        })
        .collect()
}

fn control_for(jobserver: &Path) -> Vec<PathBuf> {
    match jobserver.parent() {
        Some(mountpoint) if jobserver.ends_with(FILE_NAME) && mountpoint.parent().is_some() => {
            vec![control_beside(mountpoint)]
        }
        _ => Vec::new(),
    }
}

/// Mounts the filesystem and sets up its session; the event loop serves it, and dropping it
/// closes the connection, then unmounts.
pub fn start(config: &ServeConfig) -> Result<Box<dyn Server>, steve_core::server::Error> {
    Ok(Box::new(set_up(config)?))
}

fn set_up(config: &ServeConfig) -> Result<Session, steve_core::server::Error> {
    let (mode, gid) = config.access()?;
    let mountpoint = match &config.mountpoint {
        Some(mountpoint) => mount::Mountpoint::resolve(mountpoint)?,
        None => mount::Mountpoint::resolve(&mount::default_mountpoint()?)?,
    };
    let directory = mount::prepare(&mountpoint)?;
    // Others get in only where the mode lets them; the kernel checks it (default_permissions).
    let allow_other = mode & 0o077 != 0;
    // Where the ring cannot serve, `--io-uring on` refuses to start and `auto` serves
    // /dev/fuse, saying why.
    let on = config.io_uring == Some(IoUringChoice::On);
    let without_ring = |why: String| {
        if on {
            return Err(steve_core::server::Error::usage(format!("--io-uring on: {why}")));
        }
        info!("serving through /dev/fuse: {why}");
        Ok(())
    };
    // Made before the mount (see `Ring::new`), which also checks that root turned it on.
    let threads = config.threads.unwrap_or_else(default_threads);
    let rings = match io_uring_wanted(config).then(|| make_rings(threads)) {
        Some(Ok(rings)) => rings,
        Some(Err(why)) => without_ring(why).map(|()| Vec::new())?,
        None => Vec::new(),
    };
    let (mounted, channel) = mount::mount(&mountpoint, directory, allow_other, !rings.is_empty())?;
    let mountpoint = mountpoint.path();
    let file = mountpoint.join(FILE_NAME);
    let owner =
        OneFile::new(FILE_NAME, geteuid().as_raw(), gid.unwrap_or_else(getegid).as_raw(), mode);
    let reservation = config.poll_reservation();
    let endpoint = Endpoint {
        path: file.clone(),
        auth: JobserverAuth::Fifo(file),
        default_control: control_beside(mountpoint),
        mode,
        gid,
        how: format!("per-process accounting; reservations of {reservation:?} for pollers"),
        directories: mountpoint.parent().into_iter().map(Path::to_path_buf).collect(),
        companion: None,
    };
    let device = Device::new(config.jobs, reservation);
    let mut session = Session::for_mount(channel, device, endpoint, owner)?;
    session.unmount_on_drop(mounted);
    if !rings.is_empty() {
        // One ring: the loop's thread serves it; a ring per queue: each has a thread.
        let one = threads == 1;
        match register_rings(rings, session.first_channel()) {
            Ok(mut rings) if one => session.serve_ring(rings.remove(0)),
            Ok(rings) => session.serve_queues(rings)?,
            Err(why) => {
                without_ring(why)?;
                session.set_threads(threads)?;
            }
        }
    } else {
        session.set_threads(threads)?;
    }
    if let Some(fifo) = config.companion_path(|| mount::companion_beside(mountpoint)) {
        let companion = Companion::create(&fifo, mode, gid, geteuid().is_root())?;
        session.serve_companion(companion);
    }
    Ok(session)
}

/// The threads serving a FUSE connection unless `--threads` says: a reader per CPU this
/// process may run on, each on a clone of the connection (and with io_uring a ring per CPU,
/// whatever the count), at most [`DEFAULT_THREADS_MOST`]. On the 2-CPU test machine two
/// readers answer 1.2 – 2.5x the round trips of the loop's thread alone with one and two
/// clients, 1.2 – 1.6x with 8 or 32 that each have a token, and only 32 clients taking turns
/// on 4 tokens go faster through the loop alone (docs/performance.md, "`steve bench`
/// (2026-12-06)").
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cpus.min(DEFAULT_THREADS_MOST)
}

/// The most readers by default: every request is handled under one lock, so beyond a few
/// readers more only wait; and the kernel wakes the reader that has waited longest, so each
/// one more makes every reader's cache colder. Not measured beyond 2 CPUs.
const DEFAULT_THREADS_MOST: usize = 4;

/// Whether to try io_uring (`--io-uring`, off by default). Whether the kernel offers it,
/// `Ring::new` finds.
fn io_uring_wanted(config: &ServeConfig) -> bool {
    config.io_uring.unwrap_or(IoUringChoice::Off) != IoUringChoice::Off
}

/// The rings to serve through, made before the mount: with one thread, one ring for every
/// queue, which the loop's thread serves; with more, a ring for each of the kernel's queues
/// (one per CPU, whatever `threads` says), each for a thread of its own.
fn make_rings(threads: usize) -> Result<Vec<uring::Ring>, String> {
    if threads == 1 {
        return uring::Ring::new().map(|ring| vec![ring]);
    }
    (0..uring::queue_count()).map(|queue| uring::Ring::for_queue(queue as u16)).collect()
}

/// Registers each ring's entries on the connection, whose INIT is answered.
fn register_rings(
    mut rings: Vec<uring::Ring>,
    channel: std::os::fd::BorrowedFd<'_>,
) -> Result<Vec<uring::Ring>, String> {
    for ring in &mut rings {
        ring.register(channel)?;
    }
    Ok(rings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_sits_beside_the_mount_point() {
        let control = control_for(Path::new("/run/steve/fuse/jobserver"));
        assert_eq!(control, vec![PathBuf::from("/run/steve/fuse.control")]);
        assert!(control_for(Path::new("/dev/steve")).is_empty());
        assert!(control_for(Path::new("/jobserver")).is_empty());
    }

    #[test]
    fn cap_sys_admin_is_read_from_the_effective_set() {
        let root = "Name:\tsteve\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(may_mount(root));
        // A container's root: everything but CAP_SYS_ADMIN (1 << 21 = 0x200000).
        assert!(!may_mount("CapEff:\t000001ffffdfffff\n"));
        assert!(!may_mount("CapEff:\t0000000000000000\n"), "an ordinary user");
        assert!(!may_mount("no capability lines at all"));
    }
}
