//! `steve serve --backend cuse`: opens `/dev/cuse`, registers `/dev/DEV_NAME`, gives the node its
//! mode and group, drops to `--user`, announces the MAKEFLAGS and serves until stopped.
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{AccessFlags, Gid, User};
use steve_core::backend::{Announcement, Availability, BackendError, ServeConfig};
use steve_core::control::{default_socket_for, ControlServer};
use steve_core::device::Device;
use steve_core::limits::{Governor, ProcProbe};
use steve_core::makeflags::{jobserver_makeflags, JobserverAuth};
use steve_core::signals::Signals;
use tracing::{info, warn};

use crate::error::Error;
use crate::session::{Ended, Session};
use crate::MAX_JOBS;

/// The kernel's CUSE control device.
pub const CUSE_PATH: &str = "/dev/cuse";
/// The device name when none is given.
pub const DEFAULT_DEV_NAME: &str = "steve";

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

/// Serves the device until SIGINT, SIGTERM or SIGHUP.
pub fn serve(
    config: &ServeConfig,
    announce: &mut dyn FnMut(&Announcement),
) -> Result<(), BackendError> {
    // Blocked before the device exists, so that a stop signal is never lost.
    let mut signals =
        Signals::block().map_err(|errno| Error::io("block signals for", "the server", errno))?;
    let (mut session, dev_path, control_path) = register(config)?;
    announce_ready(config, &dev_path, &control_path, announce);
    match session.run(Some(&mut signals))? {
        Ended::Stopped(signal) => {
            info!("{signal} received: stopping; {} goes with the connection", dev_path.display())
        }
        Ended::Disconnected => warn!("the kernel closed the CUSE connection"),
    }
    Ok(())
}

/// Tells clients where the jobserver is (the MAKEFLAGS line, the control socket) and logs that
/// serving starts. Shared with steve-fuse, whose file is served the same way.
pub fn announce_ready(
    config: &ServeConfig,
    jobserver: &Path,
    control: &Path,
    announce: &mut dyn FnMut(&Announcement),
) {
    let jobs = config.limits.jobs;
    announce(&Announcement {
        makeflags: jobserver_makeflags(jobs as u32, JobserverAuth::Fifo(jobserver.to_path_buf())),
        path: jobserver.to_path_buf(),
        control: Some(control.to_path_buf()),
    });
    info!(
        jobs,
        "serving {jobs} tokens on {} (per-process accounting; reservations of {:?} for pollers); \
         control socket {}",
        jobserver.display(),
        config.poll_reservation,
        control.display()
    );
}

/// Everything up to serving: checks, the CUSE handshake, the node's access, the control
/// socket, the privilege drop.
fn register(config: &ServeConfig) -> Result<(Session, PathBuf, PathBuf), Error> {
    let jobs = checked_jobs(config)?;
    let dev_name = config.device_name.as_deref().unwrap_or(DEFAULT_DEV_NAME);
    if dev_name.is_empty() || dev_name.contains('/') || dev_name.contains('\0') {
        return Err(Error::Handshake(format!("{dev_name:?} is not a device name")));
    }
    let dev_path = Path::new("/dev").join(dev_name);
    if fs::symlink_metadata(&dev_path).is_ok() {
        return Err(Error::DeviceExists { path: dev_path });
    }
    let gid = config.group.as_deref().map(lookup_group).transpose()?;
    let user = config.user.as_deref().map(lookup_user).transpose()?;
    let mode = config.mode.unwrap_or(if gid.is_some() { 0o660 } else { 0o666 });

    let channel = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CUSE_PATH)
        .map_err(|source| Error::OpenCuse { source })?;
    let device = Device::new(jobs, config.poll_reservation);
    let mut session = Session::start(channel.into(), dev_name, device)?;
    wait_for_node(&dev_path)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&dev_path, None, Some(gid.as_raw())).map_err(|source| {
            Error::Io { action: "set the group of", what: dev_path.display().to_string(), source }
        })?;
    }
    fs::set_permissions(&dev_path, fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io { action: "set the mode of", what: dev_path.display().to_string(), source }
    })?;
    let control_path = govern_and_listen(&mut session, config, &dev_path, mode, gid)?;
    if let Some(user) = user {
        drop_privileges(&user)?;
    }
    Ok((session, dev_path, control_path))
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

/// The pool size asked for, checked against what a device serves (1 to [`MAX_JOBS`]).
pub fn checked_jobs(config: &ServeConfig) -> Result<usize, Error> {
    let jobs = config.limits.jobs;
    if jobs == 0 || jobs > MAX_JOBS {
        return Err(Error::BadJobs { jobs });
    }
    Ok(jobs)
}

/// What every device backend does once its session is up: applies the limits, and listens on
/// the control socket (`--control`, or the default beside `jobserver`) with the jobserver's mode
/// and group. Returns the socket's path.
pub fn govern_and_listen(
    session: &mut Session,
    config: &ServeConfig,
    jobserver: &Path,
    mode: u32,
    gid: Option<Gid>,
) -> Result<PathBuf, Error> {
    session.set_governor(Governor::new(config.limits.clone(), Box::new(ProcProbe)));
    let control_path = config.control.clone().unwrap_or_else(|| default_socket_for(jobserver));
    let control = ControlServer::bind(&control_path, mode, gid).map_err(|source| Error::Io {
        action: "listen on the control socket",
        what: control_path.display().to_string(),
        source,
    })?;
    session.set_control(control);
    Ok(control_path)
}

/// The group `--group` names (a name or a number).
pub fn lookup_group(group: &str) -> Result<Gid, Error> {
    steve_core::accounts::group_id(group)
        .ok_or_else(|| Error::UnknownAccount { kind: "group", name: group.to_string() })
}

fn lookup_user(user: &str) -> Result<User, Error> {
    steve_core::accounts::user(user)
        .ok_or_else(|| Error::UnknownAccount { kind: "user", name: user.to_string() })
}

/// Becomes `user` for good: supplementary groups, group, then user.
fn drop_privileges(user: &User) -> Result<(), Error> {
    let failed = |action| move |errno| Error::io(action, user.name.clone(), errno);
    nix::unistd::setgroups(&[user.gid]).map_err(failed("set the groups of"))?;
    nix::unistd::setgid(user.gid).map_err(failed("take the group of"))?;
    nix::unistd::setuid(user.uid).map_err(failed("become"))?;
    info!("running as user {} (uid {}) from now on", user.name, user.uid);
    Ok(())
}
