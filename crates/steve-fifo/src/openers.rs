//! Which other processes have a file open, found by scanning `/proc/*/fd`.
//!
//! The named-pipe server uses this to know when nobody but itself holds the pipe: only then does
//! the number of bytes in the pipe say how many tokens are really free.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// A process other than ours that has the file open, if any was found.
    pub holder: Option<u32>,
    /// Processes whose descriptors could not be read (another user's, without privilege).
    pub unreadable: usize,
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
        // Sockets, anonymous pipes and the like are never the named pipe: skip the stat.
        let target = fs::read_link(&path).unwrap_or_default();
        let text = target.as_os_str().as_encoded_bytes();
        if !text.starts_with(b"/") {
            return false;
        }
        fs::metadata(&path).is_ok_and(|metadata| FileId::of(&metadata) == file)
    })
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
