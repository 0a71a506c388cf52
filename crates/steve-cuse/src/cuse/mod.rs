//! Backend `cuse`: opens `/dev/cuse`, registers `/dev/DEV_NAME` and gives the node its mode and
//! group; the session then serves it in steve-core's event loop (which also drops to `--user`).
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::AccessFlags;
use steve_core::accounting::device::Device;
use steve_core::makeflags::JobserverAuth;
use steve_core::server::backend::{Availability, Place, Places, ServeConfig, ServeOption};
use steve_core::server::{Endpoint, Server};

use crate::error::Error;
use crate::session::Session;
use steve_fifo::companion::Companion;

/// The kernel's CUSE control device.
pub const CUSE_PATH: &str = "/dev/cuse";
/// The device name when none is given.
pub const DEFAULT_DEV_NAME: &str = "steve";

/// The options `cuse` takes besides the common ones.
pub const OPTIONS: &[ServeOption] = &[
    ServeOption::DevName,
    ServeOption::User,
    ServeOption::PollReservation,
    ServeOption::Threads,
    ServeOption::PerProcessLimit,
    ServeOption::Fairness,
    ServeOption::Fifo,
];

/// Whether this machine can serve a CUSE device, and if not, why.
pub fn availability() -> Availability {
    match fs::metadata(CUSE_PATH) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Availability::Unavailable(
            "no /dev/cuse: the kernel has no CUSE (CONFIG_CUSE), or the cuse module is not loaded \
             (modprobe cuse)"
                .to_string(),
        ),
        Err(error) => Availability::Unavailable(format!("{CUSE_PATH}: {error}")),
        Ok(_) => match nix::unistd::access(CUSE_PATH, AccessFlags::R_OK | AccessFlags::W_OK) {
            Ok(()) => Availability::Available,
            Err(errno) => Availability::Unavailable(format!(
                "{CUSE_PATH} cannot be opened by this user ({errno}): run steve as root"
            )),
        },
    }
}

/// Where a device's control socket goes: `/run/steve` for root, the user's runtime directory
/// otherwise (a device node cannot have a socket beside it).
fn control_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/run/steve")];
    if let Some(dir) = steve_core::paths::runtime_dir() {
        dirs.push(dir.join("steve"));
    }
    dirs
}

/// The control socket of this process's server of `/dev/NAME`.
fn own_control(name: &str) -> PathBuf {
    let dirs = control_dirs();
    let dir =
        if nix::unistd::geteuid().is_root() { &dirs[0] } else { dirs.last().unwrap_or(&dirs[0]) };
    dir.join(format!("{name}.control"))
}

/// Where cuse servers are found: `/dev/steve`, its socket in `/run/steve` (or the user's
/// runtime directory).
pub const PLACES: Places = Places { defaults, control_for };

fn defaults() -> Vec<Place> {
    control_for(Path::new("/dev").join(DEFAULT_DEV_NAME).as_path())
        .into_iter()
        .map(|control| Place { jobserver: Path::new("/dev").join(DEFAULT_DEV_NAME), control })
        .collect()
}

fn control_for(jobserver: &Path) -> Vec<PathBuf> {
    let (Ok(rest), Some(name)) = (jobserver.strip_prefix("/dev"), jobserver.file_name()) else {
        return Vec::new();
    };
    if rest.components().count() != 1 {
        return Vec::new();
    }
    let name = name.to_string_lossy();
    control_dirs().into_iter().map(|dir| dir.join(format!("{name}.control"))).collect()
}

/// Sets up `/dev/DEV_NAME`: the CUSE handshake and the node's access.
pub fn start(config: &ServeConfig) -> Result<Box<dyn Server>, steve_core::server::Error> {
    Ok(Box::new(register(config)?))
}

fn register(config: &ServeConfig) -> Result<Session, steve_core::server::Error> {
    let dev_name = config.dev_name.as_deref().unwrap_or(DEFAULT_DEV_NAME);
    if dev_name.is_empty() || dev_name.contains('/') || dev_name.contains('\0') {
        return Err(Error::BadDeviceName { name: dev_name.to_string() }.into());
    }
    let dev_path = Path::new("/dev").join(dev_name);
    if fs::symlink_metadata(&dev_path).is_ok() {
        return Err(Error::DeviceExists { path: dev_path }.into());
    }
    let (mode, gid) = config.access()?;
    let channel = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CUSE_PATH)
        .map_err(|source| Error::OpenCuse { source })?;
    let reservation = config.poll_reservation();
    let endpoint = Endpoint {
        path: dev_path.clone(),
        auth: JobserverAuth::Fifo(dev_path.clone()),
        default_control: own_control(dev_name),
        mode,
        gid,
        how: format!("per-process accounting; reservations of {reservation:?} for pollers"),
        directories: Vec::new(),
        companion: None,
    };
    let device = Device::new(config.jobs, reservation);
    let mut session = Session::start(channel.into(), dev_name, device, endpoint)?;
    session.set_threads(config.threads.unwrap_or(1))?;
    wait_for_node(&dev_path)?;
    let companion = config.companion_path(|| {
        let control = own_control(dev_name);
        control.with_file_name(format!("{dev_name}.fifo"))
    });
    if let Some(fifo) = companion {
        // Recovery scans every process's descriptors: only while the server stays root.
        let stays_root = nix::unistd::geteuid().is_root() && config.user.is_none();
        session.serve_companion(Companion::create(&fifo, mode, gid, stays_root)?);
    }
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&dev_path, None, Some(gid.as_raw())).map_err(|source| {
            Error::Io { action: "set the group of", what: dev_path.display().to_string(), source }
        })?;
    }
    fs::set_permissions(&dev_path, fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io { action: "set the mode of", what: dev_path.display().to_string(), source }
    })?;
    Ok(session)
}

/// The kernel creates the node while it handles the CUSE_INIT answer; give devtmpfs a moment.
fn wait_for_node(path: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::symlink_metadata(path).is_err() {
        if Instant::now() > deadline {
            return Err(Error::NoDeviceNode { path: path.to_path_buf() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_nodes_control_socket_is_in_the_runtime_directories() {
        let found = control_for(Path::new("/dev/steve"));
        assert_eq!(found[0], PathBuf::from("/run/steve/steve.control"));
        assert!(control_for(Path::new("/dev/pts/0")).is_empty());
        assert!(control_for(Path::new("/run/steve/jobserver")).is_empty());
        assert_eq!(defaults()[0].jobserver, PathBuf::from("/dev/steve"));
    }
}
