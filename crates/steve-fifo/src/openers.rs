//! Which other processes have a file open, found by scanning `/proc/*/fd`.
//!
//! The named-pipe server uses this to know when nobody but itself holds the pipe: only then does
//! the number of bytes in the pipe say how many tokens are really free. Descriptors are compared
//! by what `/proc/PID/fdinfo` says (mount and inode), never by a stat that would ask the
//! filesystem behind each one.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(metadata: &fs::Metadata) -> FileId {
        FileId { dev: metadata.dev(), ino: metadata.ino() }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// A process other than ours that has the file open, if any was found.
    pub holder: Option<u32>,
    /// Processes whose descriptors could not be read (another user's, without privilege).
    pub unreadable: usize,
    /// Each mount's device, by mount id, read once per scan when first needed.
    devices: Option<std::collections::HashMap<u64, u64>>,
}

/// Looks for a process other than `own_pid` that has `file` open. `hint`, a process found
/// holding it last time, is checked first: during a build the same make keeps it open, so the
/// whole of /proc is read only when the build is over.
pub fn find_holder(file: FileId, own_pid: u32, hint: Option<u32>) -> io::Result<Scan> {
    let mut scan = Scan::default();
    if let Some(pid) = hint.filter(|pid| *pid != own_pid) {
        if process_holds(pid, file, &mut scan) {
            scan.holder = Some(pid);
            return Ok(scan);
        }
    }
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != own_pid && Some(pid) != hint && process_holds(pid, file, &mut scan) {
            scan.holder = Some(pid);
            return Ok(scan);
        }
    }
    Ok(scan)
}

/// Every process other than `own_pid` that has `file` open (those whose descriptors can be
/// read), by pid.
pub fn find_holders(file: FileId, own_pid: u32) -> Vec<u32> {
    let mut scan = Scan::default();
    let mut holders: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own_pid && process_holds(*pid, file, &mut scan))
        .collect();
    holders.sort_unstable();
    holders
}

fn process_holds(pid: u32, file: FileId, scan: &mut Scan) -> bool {
    let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            scan.unreadable += 1;
            return false;
        }
        // The process is gone, or is a zombie without descriptors.
        Err(_) => return false,
    };
    fds.flatten().any(|fd| {
        let path = fd.path();
        // Sockets, anonymous pipes and the like are never the named pipe.
        let target = fs::read_link(&path).unwrap_or_default();
        let text = target.as_os_str().as_encoded_bytes();
        if !text.starts_with(b"/") {
            return false;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        match fs::read_to_string(fdinfo).ok().and_then(|info| open_file_of(&info)) {
            Some(open) => open.is(file, &mut scan.devices),
            // A kernel before 5.14 has no inode in fdinfo: ask the file itself.
            None => fs::metadata(&path).is_ok_and(|metadata| FileId::of(&metadata) == file),
        }
    })
}

/// An open file as `/proc/PID/fdinfo/N` names it: its mount's id and its inode. Read from the
/// kernel's books, never from the file's filesystem: a stat of every descriptor would ask each
/// filesystem, and one that never answers (a FUSE server that is stuck, or this very daemon's
/// own mount) would hang the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenFile {
    mount_id: u64,
    ino: u64,
}

fn open_file_of(fdinfo: &str) -> Option<OpenFile> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(OpenFile { mount_id: field("mnt_id:")?, ino: field("ino:")? })
}

impl OpenFile {
    /// Whether this is `file`: the same inode on a mount of the same device. A mount this
    /// process cannot see (another mount namespace's) counts as the same, so that a holder is
    /// never missed (a missed holder would have its tokens put back while it holds them).
    fn is(self, file: FileId, devices: &mut Option<std::collections::HashMap<u64, u64>>) -> bool {
        if self.ino != file.ino {
            return false;
        }
        let devices = devices.get_or_insert_with(|| {
            steve_core::mountinfo::devices_by_mount_id(
                &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            )
        });
        devices.get(&self.mount_id).is_none_or(|dev| *dev == file.dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn finds_a_child_holding_the_file_and_ignores_ourselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        fs::write(&path, b"").unwrap();
        let own = std::process::id();
        let ours = fs::File::open(&path).unwrap();
        let id = FileId::of(&ours.metadata().unwrap());
        assert_eq!(find_holder(id, own, None).unwrap().holder, None);

        let mut child =
            Command::new("sleep").arg("30").stdin(ours).stdout(Stdio::null()).spawn().unwrap();
        assert_eq!(find_holder(id, own, None).unwrap().holder, Some(child.id()));
        assert_eq!(find_holder(id, own, Some(child.id())).unwrap().holder, Some(child.id()));
        assert_eq!(find_holders(id, own), vec![child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(find_holder(id, own, Some(child.id())).unwrap().holder, None);
        assert!(find_holders(id, own).is_empty());
    }
}
