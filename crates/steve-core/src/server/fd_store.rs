//! systemd's file-descriptor store (`FDSTORE=1` in sd_notify(3), passed back as `LISTEN_FDS`):
//! `systemctl restart steve` hands the server over to its next start as `--takeover` hands it
//! to a successor, with the service manager holding the descriptors in between.
//!
//! Under `steve serve --fd-store` (the shipped unit gives it, with `FileDescriptorStoreMax=`
//! and `RuntimeDirectoryPreserve=restart`), a SIGTERM while a *restart* of the unit is queued
//! stores each descriptor of the handover under the name `steve-N` (its place in the state's
//! list; names may not hold the colons the handover's own names have) and then the state itself,
//! in a memfd named `steve-state`, and exits without tearing anything down: the device or the
//! mount stays, its clients' requests wait in the kernel. A SIGTERM for a plain stop tears down
//! as before. The next start finds the state among the descriptors systemd passes, takes the
//! server over from it and removes the entries from the store (each restart stores afresh).
//!
//! Whether a restart is queued is asked of systemd itself (`systemctl list-jobs`): the stop
//! part of a restart job looks like any stop to the service.

use std::ffi::OsString;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;

use crate::handover::{Descriptors, Package, State};

/// The store's name for the state.
pub const STATE_NAME: &str = "steve-state";

/// The store's name for the handover's descriptor number `index`.
fn stored_name(index: usize) -> String {
    format!("steve-{index}")
}

/// The service manager's store, reached through `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct FdStore {
    socket: OsString,
}

impl FdStore {
    /// The store of the service this process runs as, if it runs under a service manager.
    pub fn from_env() -> Option<FdStore> {
        std::env::var_os("NOTIFY_SOCKET").map(|socket| FdStore { socket })
    }

    /// Whether the service manager is restarting this unit (its job for it is a restart), as
    /// opposed to stopping it.
    pub fn restart_pending(&self) -> bool {
        let Some(unit) = own_unit() else { return false };
        let Ok(output) =
            Command::new("systemctl").args(["list-jobs", "--no-legend", "--plain"]).output()
        else {
            return false;
        };
        String::from_utf8_lossy(&output.stdout).lines().any(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.get(1) == Some(&unit.as_str()) && words.get(2) == Some(&"restart")
        })
    }

    /// Stores the handover: each descriptor, then the state naming them.
    pub fn store(&self, state: &State, descriptors: &[BorrowedFd<'_>]) -> io::Result<()> {
        for (index, fd) in descriptors.iter().enumerate() {
            self.send(&format!("FDSTORE=1\nFDNAME={}", stored_name(index)), &[*fd])?;
        }
        let memfd = memfd(STATE_NAME)?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(&serde_json::to_vec(state).map_err(io::Error::other)?)?;
        file.rewind()?;
        self.send(&format!("FDSTORE=1\nFDNAME={STATE_NAME}"), &[file.as_fd()])
    }

    /// Removes what a predecessor stored (by the names it was passed under), now that it is
    /// taken over or given up.
    pub fn remove(&self, names: &[String]) {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        for name in names {
            if let Err(error) = self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]) {
                tracing::warn!("cannot remove {name} from the service manager's store: {error}");
            }
        }
    }

    fn send(&self, message: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use std::os::linux::net::SocketAddrExt;
        let bytes = self.socket.as_encoded_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&self.socket)?,
        };
        let sender = UnixDatagram::unbound()?;
        sender.connect_addr(&address)?;
        crate::sys::send_message(sender.as_fd(), message.as_bytes(), fds)
    }
}

/// This process's unit, from its cgroup (`0::/system.slice/steve.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    let unit = path.rsplit('/').find(|part| part.ends_with(".service"))?;
    Some(unit.to_string())
}

fn memfd(name: &str) -> io::Result<OwnedFd> {
    nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)
}

/// What the service manager passed this process (`LISTEN_FDS`, `LISTEN_FDNAMES`): the names,
/// to remove from its store once taken, and a predecessor's handover if one is among them.
#[derive(Debug)]
pub struct Stored {
    /// The names of every descriptor passed.
    pub names: Vec<String>,
    /// The handover they make up, if a state was passed; descriptors passed without one are
    /// closed.
    pub package: Result<Option<Package>, crate::handover::HandoverError>,
}

/// Takes what the service manager passed ([`Stored`]).
pub fn take_stored() -> Stored {
    let passed = crate::sys::take_listen_fds();
    let names = passed.iter().map(|(name, _)| name.clone()).collect();
    Stored { names, package: package_of(passed) }
}

fn package_of(
    passed: Vec<(String, OwnedFd)>,
) -> Result<Option<Package>, crate::handover::HandoverError> {
    if passed.is_empty() {
        return Ok(None);
    }
    let (mut states, others): (Vec<_>, Vec<_>) =
        passed.into_iter().partition(|(name, _)| name == STATE_NAME);
    let Some((_, state_fd)) = states.pop() else { return Ok(None) };
    let mut text = Vec::new();
    let mut file = std::fs::File::from(state_fd);
    file.rewind()?;
    file.read_to_end(&mut text)?;
    let state: State = serde_json::from_slice(&text)
        .map_err(|error| crate::handover::HandoverError::Protocol(error.to_string()))?;
    let mut named = Vec::new();
    for (name, fd) in others {
        let index = name.strip_prefix("steve-").and_then(|index| index.parse::<usize>().ok());
        if let Some(real) = index.and_then(|index| state.descriptors.get(index)) {
            named.push((real.clone(), fd));
        }
    }
    Ok(Some(Package { state, descriptors: Descriptors::from_named(named) }))
}
