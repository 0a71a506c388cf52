//! The one-file filesystem a FUSE mount shows: a root directory holding the jobserver file. It
//! answers the requests that find and describe that file (LOOKUP, GETATTR, READDIR, ...); the
//! file's opens, reads, writes and polls are the device's, served by the session exactly as for
//! a CUSE device.
#![forbid(unsafe_code)]

use crate::ll::{self, Attr, Dirent, InHeader, Reply, Request, ROOT_ID};

/// The node id of the jobserver file.
pub const FILE_ID: u64 = 2;
/// How long the kernel may cache names and attributes; they never change while mounted.
const VALID_SECONDS: u64 = 60;
/// `DT_DIR` and `DT_REG`, the directory entry types.
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;

/// The mount's contents: `/NAME`, owned by `uid`:`gid` with permission bits `mode`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OneFile {
    name: String,
    uid: u32,
    gid: u32,
    mode: u32,
    /// When it was mounted, as every timestamp.
    time: u64,
}

impl OneFile {
    /// The file `name` with permission bits `mode` (the type bits are added here).
    pub fn new(name: &str, uid: u32, gid: u32, mode: u32) -> OneFile {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        OneFile { name: name.to_string(), uid, gid, mode: mode & 0o7777, time }
    }

    /// The file's name in the mount's root.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn attr(&self, nodeid: u64) -> Option<Attr> {
        let (mode, nlink) = match nodeid {
            ROOT_ID => (nix::libc::S_IFDIR | 0o755, 2),
            FILE_ID => (nix::libc::S_IFREG | self.mode, 1),
            _ => return None,
        };
        Some(Attr { ino: nodeid, mode, nlink, uid: self.uid, gid: self.gid, time: self.time })
    }

    /// The reply to a filesystem request, or `None` when `request` is not one (device requests
    /// are the session's).
    pub fn answer(&self, header: &InHeader, request: &Request<'_>) -> Option<Reply> {
        let unique = header.unique;
        let not_found = || ll::reply_error(unique, nix::libc::ENOENT);
        let reply = match request {
            Request::Lookup { name } => {
                if header.nodeid == ROOT_ID && *name == self.name.as_bytes() {
                    let attr = self.attr(FILE_ID).expect("the file has attributes");
                    ll::reply_entry(unique, &attr, VALID_SECONDS)
                } else {
                    not_found()
                }
            }
            Request::Getattr => match self.attr(header.nodeid) {
                Some(attr) => ll::reply_attr(unique, &attr, VALID_SECONDS),
                None => not_found(),
            },
            // Mode and owner are the daemon's options; the file has no size to truncate.
            Request::Setattr => ll::reply_error(unique, nix::libc::EPERM),
            Request::Statfs => ll::reply_statfs(unique, 2),
            Request::Opendir if header.nodeid == ROOT_ID => ll::reply_open(unique, 0, 0),
            Request::Opendir => ll::reply_error(unique, nix::libc::ENOTDIR),
            Request::Readdir { offset, size } => {
                let entries = [
                    Dirent { ino: ROOT_ID, kind: DT_DIR, name: b"." },
                    Dirent { ino: ROOT_ID, kind: DT_DIR, name: b".." },
                    Dirent { ino: FILE_ID, kind: DT_REG, name: self.name.as_bytes() },
                ];
                ll::reply_dirents(unique, &entries, *offset, *size)
            }
            Request::Releasedir => ll::reply_empty(unique),
            _ => return None,
        };
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ll::kernel;

    fn answer(file: &OneFile, message: &[u8]) -> (i32, Vec<u8>) {
        let (header, request) = ll::parse(message).unwrap();
        let reply = file.answer(&header, &request).expect("a filesystem request");
        let (_, error, unique, payload) = kernel::split_reply(&reply);
        assert_eq!(unique, header.unique);
        (error, payload.to_vec())
    }

    #[test]
    fn the_root_holds_exactly_the_jobserver_file() {
        let file = OneFile::new("jobserver", 1000, 100, 0o660);
        let (error, entry) = answer(&file, &kernel::lookup(1, ROOT_ID, "jobserver"));
        assert_eq!(error, 0);
        assert_eq!(&entry[..8], &FILE_ID.to_ne_bytes(), "nodeid");
        let mode = u32::from_ne_bytes(entry[100..104].try_into().unwrap());
        assert_eq!(mode, nix::libc::S_IFREG | 0o660);
        let uid = u32::from_ne_bytes(entry[108..112].try_into().unwrap());
        assert_eq!(uid, 1000);
        assert_eq!(answer(&file, &kernel::lookup(2, ROOT_ID, "other")).0, -nix::libc::ENOENT);
        assert_eq!(answer(&file, &kernel::lookup(3, FILE_ID, "jobserver")).0, -nix::libc::ENOENT);
        let (error, attr) = answer(&file, &kernel::getattr(4, ROOT_ID));
        assert_eq!(error, 0);
        let mode = u32::from_ne_bytes(attr[16 + 60..16 + 64].try_into().unwrap());
        assert_eq!(mode, nix::libc::S_IFDIR | 0o755);
        assert_eq!(answer(&file, &kernel::getattr(5, 9)).0, -nix::libc::ENOENT);
        let (_, listing) = answer(&file, &kernel::readdir(6, ROOT_ID, 2, 4096));
        assert_eq!(&listing[24..33], b"jobserver", "the third entry");
        let read = kernel::read(7, 1, 1, 1, 0);
        let (header, request) = ll::parse(&read).unwrap();
        assert_eq!(file.answer(&header, &request), None, "reads are the device's");
    }
}
