//! The kernel's FUSE/CUSE wire protocol, as far as a jobserver device needs it: requests parsed
//! from bytes at fixed offsets (no pointer casts, no unsafe), replies and notifications built as
//! [`Reply`]s (the request path's on the stack), each written to the channel (`/dev/cuse`, or `/dev/fuse` for a mount) in one
//! `write`. CUSE and FUSE share every device request; a FUSE mount adds the few filesystem
//! requests that find and describe its one file (LOOKUP, GETATTR, READDIR, ...).
//!
//! Layouts follow `include/uapi/linux/fuse.h` (protocol 7.x with x >= 11). All integers are in
//! the machine's byte order.
#![forbid(unsafe_code)]

use std::fmt;

/// The protocol major version this server speaks.
pub const KERNEL_VERSION: u32 = 7;
/// The newest minor version this server knows; it answers with the smaller of this and the
/// kernel's.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// CUSE needs at least this minor version (poll notifications came in 7.11).
pub const MIN_MINOR_VERSION: u32 = 11;

/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Size of `cuse_init_out`: eight words and ten spare ones.
pub const CUSE_INIT_OUT_LEN: usize = 72;

/// The bit the kernel sets in an INTERRUPT's own request id (`FUSE_INT_REQ_BIT`): the id of
/// the request it interrupts, with this bit.
pub const INTERRUPT_BIT: u64 = 1;

/// Opcodes this server handles.
pub mod opcode {
    /// FUSE_LOOKUP: a name in a directory.
    pub const LOOKUP: u32 = 1;
    /// FUSE_FORGET: the kernel dropped an inode (never answered).
    pub const FORGET: u32 = 2;
    /// FUSE_GETATTR.
    pub const GETATTR: u32 = 3;
    /// FUSE_SETATTR (chmod, truncate, ...).
    pub const SETATTR: u32 = 4;
    /// FUSE_STATFS.
    pub const STATFS: u32 = 17;
    /// FUSE_OPENDIR.
    pub const OPENDIR: u32 = 27;
    /// FUSE_READDIR.
    pub const READDIR: u32 = 28;
    /// FUSE_RELEASEDIR.
    pub const RELEASEDIR: u32 = 29;
    /// FUSE_BATCH_FORGET (never answered).
    pub const BATCH_FORGET: u32 = 42;
    /// FUSE_OPEN.
    pub const OPEN: u32 = 14;
    /// FUSE_READ.
    pub const READ: u32 = 15;
    /// FUSE_WRITE.
    pub const WRITE: u32 = 16;
    /// FUSE_RELEASE.
    pub const RELEASE: u32 = 18;
    /// FUSE_FLUSH.
    pub const FLUSH: u32 = 25;
    /// FUSE_INTERRUPT.
    pub const INTERRUPT: u32 = 36;
    /// FUSE_DESTROY.
    pub const DESTROY: u32 = 38;
    /// FUSE_IOCTL.
    pub const IOCTL: u32 = 39;
    /// FUSE_POLL.
    pub const POLL: u32 = 40;
    /// CUSE_INIT.
    pub const CUSE_INIT: u32 = 4096;
    /// FUSE_SETXATTR.
    pub const SETXATTR: u32 = 21;
    /// FUSE_GETXATTR (`ls -l` asks for ACLs and security labels).
    pub const GETXATTR: u32 = 22;
    /// FUSE_LISTXATTR.
    pub const LISTXATTR: u32 = 23;
    /// FUSE_REMOVEXATTR.
    pub const REMOVEXATTR: u32 = 24;
    /// FUSE_ACCESS.
    pub const ACCESS: u32 = 34;
    /// FUSE_STATX (kernel 6.6 and later; `ls` and `stat` use statx(2)).
    pub const STATX: u32 = 52;
}

/// The optional requests steve does not implement, by name: the kernel falls back from each
/// when told ENOSYS (to GETATTR for STATX; for extended attributes it answers EOPNOTSUPP itself
/// from then on), so they are answered ENOSYS without a warning.
pub fn optional_request(opcode: u32) -> Option<&'static str> {
    Some(match opcode {
        opcode::SETXATTR => "SETXATTR",
        opcode::GETXATTR => "GETXATTR",
        opcode::LISTXATTR => "LISTXATTR",
        opcode::REMOVEXATTR => "REMOVEXATTR",
        opcode::ACCESS => "ACCESS",
        opcode::STATX => "STATX",
        _ => return None,
    })
}

/// `FUSE_POLL_SCHEDULE_NOTIFY`: the kernel will wait, and wants a notification.
pub const POLL_SCHEDULE_NOTIFY: u32 = 1;
/// `FUSE_NOTIFY_POLL`, the notification code for a poll wake-up.
pub const NOTIFY_POLL: i32 = 1;
/// `FOPEN_NOFLUSH` (Linux 5.16): a close of the file sends no FLUSH, so it never waits for the
/// server.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// `FOPEN_NONSEEKABLE`: the device has no file position.
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
/// `FOPEN_DIRECT_IO`: every read and write of a FUSE file comes to the server, none is served
/// from the page cache.
pub const FOPEN_DIRECT_IO: u32 = 1;
/// The node id of a FUSE mount's root directory.
pub const ROOT_ID: u64 = 1;
/// Size of `fuse_attr`.
pub const ATTR_LEN: usize = 88;

/// `fuse_in_header`: who asks what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request, header included.
    pub len: u32,
    /// What is asked.
    pub opcode: u32,
    /// The request's id, to be echoed in the reply.
    pub unique: u64,
    /// The inode asked about (FUSE; 0 for CUSE).
    pub nodeid: u64,
    /// The caller's user id.
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The calling thread's id (0 when the kernel itself asks).
    pub pid: u32,
}

/// One request from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// The first message: the kernel's protocol version.
    CuseInit {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
    },
    /// A process opened the device.
    Open {
        /// The `open(2)` flags.
        flags: u32,
    },
    /// A read of up to `size` bytes.
    Read {
        /// The file handle from OPEN.
        fh: u64,
        /// Bytes asked for.
        size: u32,
        /// The file's flags, `O_NONBLOCK` among them.
        flags: u32,
    },
    /// A write of `data`.
    Write {
        /// The file handle from OPEN.
        fh: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// The last descriptor of an open file was closed.
    Release {
        /// The file handle from OPEN.
        fh: u64,
    },
    /// A descriptor was closed.
    Flush {
        /// The file handle from OPEN.
        fh: u64,
    },
    /// The request `target` was interrupted by a signal. Not answered itself.
    Interrupt {
        /// The interrupted request.
        target: u64,
    },
    /// An optional request steve does not implement (see [`optional_request`]).
    Optional {
        /// Its name, as the kernel's fuse.h has it without FUSE_.
        name: &'static str,
    },
    /// The connection is going away.
    Destroy,
    /// An ioctl (`isatty` asks TCGETS).
    Ioctl {
        /// The command.
        cmd: u32,
    },
    /// A poll.
    Poll {
        /// The file handle from OPEN.
        fh: u64,
        /// The kernel's poll handle, for a notification later.
        kh: u64,
        /// `POLL_SCHEDULE_NOTIFY` if the caller will wait.
        flags: u32,
        /// The events polled for.
        events: u32,
    },
    /// FUSE: look `name` up in the directory `nodeid`.
    Lookup {
        /// The name, without its NUL.
        name: &'a [u8],
    },
    /// FUSE: the attributes of `nodeid`.
    Getattr,
    /// FUSE: change attributes of `nodeid`.
    Setattr,
    /// FUSE: the filesystem's statistics.
    Statfs,
    /// FUSE: a directory was opened.
    Opendir,
    /// FUSE: list a directory from entry `offset` on, in at most `size` bytes.
    Readdir {
        /// The index of the first entry wanted.
        offset: u64,
        /// Room in the caller's buffer.
        size: u32,
    },
    /// FUSE: a directory was closed.
    Releasedir,
    /// FUSE: the kernel forgot inodes. Never answered.
    Forget,
    /// An opcode this server does not handle.
    Unknown,
}

/// A request that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What was wrong.
    pub reason: &'static str,
    /// The opcode, when the header could be read.
    pub opcode: Option<u32>,
    /// The request id, when the header could be read (to answer with an error).
    pub unique: Option<u64>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.opcode {
            Some(opcode) => write!(f, "malformed request (opcode {opcode}): {}", self.reason),
            None => write!(f, "malformed request: {}", self.reason),
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads native-endian integers at fixed offsets of a byte slice, failing instead of panicking
/// when the slice is short.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(self.0.get(at..at + 2)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        Some(u64::from_ne_bytes(self.0.get(at..at + 8)?.try_into().ok()?))
    }
}

/// Parses one request as read from `/dev/cuse`.
pub fn parse(message: &[u8]) -> Result<(InHeader, Request<'_>), ParseError> {
    let fields = Fields(message);
    let header_error = |reason| ParseError { reason, opcode: fields.u32(4), unique: fields.u64(8) };
    let (Some(len), Some(opcode), Some(unique), Some(uid), Some(gid), Some(pid), Some(_extlen)) = (
        fields.u32(0),
        fields.u32(4),
        fields.u64(8),
        fields.u32(24),
        fields.u32(28),
        fields.u32(32),
        fields.u16(36),
    ) else {
        return Err(header_error("shorter than the request header"));
    };
    if len as usize != message.len() {
        return Err(header_error("length field disagrees with the message size"));
    }
    // The fields above end at byte 38; the header has padding to 40.
    if message.len() < IN_HEADER_LEN {
        return Err(header_error("shorter than the request header"));
    }
    let nodeid = fields.u64(16).ok_or_else(|| header_error("shorter than the request header"))?;
    let header = InHeader { len, opcode, unique, nodeid, uid, gid, pid };
    let body = Fields(&message[IN_HEADER_LEN..]);
    let short = || ParseError {
        reason: "body shorter than the opcode needs",
        opcode: Some(opcode),
        unique: Some(unique),
    };
    let request = match opcode {
        opcode::CUSE_INIT => Request::CuseInit {
            major: body.u32(0).ok_or_else(short)?,
            minor: body.u32(4).ok_or_else(short)?,
        },
        opcode::OPEN => Request::Open { flags: body.u32(0).ok_or_else(short)? },
        opcode::READ => Request::Read {
            fh: body.u64(0).ok_or_else(short)?,
            size: body.u32(16).ok_or_else(short)?,
            flags: body.u32(32).ok_or_else(short)?,
        },
        opcode::WRITE => {
            const WRITE_IN_LEN: usize = 40;
            let size = body.u32(16).ok_or_else(short)? as usize;
            let data = body.0.get(WRITE_IN_LEN..WRITE_IN_LEN + size).ok_or_else(short)?;
            Request::Write { fh: body.u64(0).ok_or_else(short)?, data }
        }
        opcode::RELEASE => Request::Release { fh: body.u64(0).ok_or_else(short)? },
        opcode::FLUSH => Request::Flush { fh: body.u64(0).ok_or_else(short)? },
        opcode::INTERRUPT => Request::Interrupt { target: body.u64(0).ok_or_else(short)? },
        opcode::DESTROY => Request::Destroy,
        opcode::IOCTL => Request::Ioctl { cmd: body.u32(12).ok_or_else(short)? },
        opcode::POLL => Request::Poll {
            fh: body.u64(0).ok_or_else(short)?,
            kh: body.u64(8).ok_or_else(short)?,
            flags: body.u32(16).ok_or_else(short)?,
            events: body.u32(20).ok_or_else(short)?,
        },
        opcode::LOOKUP => {
            let name = body.0.split(|byte| *byte == 0).next().unwrap_or_default();
            Request::Lookup { name }
        }
        opcode::GETATTR => Request::Getattr,
        opcode::SETATTR => Request::Setattr,
        opcode::STATFS => Request::Statfs,
        opcode::OPENDIR => Request::Opendir,
        opcode::READDIR => Request::Readdir {
            offset: body.u64(8).ok_or_else(short)?,
            size: body.u32(16).ok_or_else(short)?,
        },
        opcode::RELEASEDIR => Request::Releasedir,
        opcode::FORGET | opcode::BATCH_FORGET => Request::Forget,
        other => match optional_request(other) {
            Some(name) => Request::Optional { name },
            None => Request::Unknown,
        },
    };
    Ok((header, request))
}

/// A reply or notification, ready to write to the channel in one `write`: the request path's
/// (a token, a write's length, an error, a poll's events, an open's handle) are kept inline,
/// so answering a request allocates nothing.
pub type Reply = steve_core::server::Answer;

/// Builds `fuse_out_header` followed by `payload`.
fn message(unique: u64, error: i32, payload: &[&[u8]]) -> Reply {
    let len = OUT_HEADER_LEN + payload.iter().map(|part| part.len()).sum::<usize>();
    let header = header(len, error, unique);
    // The header and up to three parts, without a list on the heap.
    let mut parts: [&[u8]; 4] = [&header, &[], &[], &[]];
    if payload.len() < parts.len() {
        parts[1..=payload.len()].copy_from_slice(payload);
        return Reply::from_parts(&parts);
    }
    let mut out = header.to_vec();
    out.extend(payload.iter().flat_map(|part| part.iter()));
    Reply::from(out)
}

/// `fuse_out_header { len, error, unique }`.
fn header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut header = [0u8; OUT_HEADER_LEN];
    header[..4].copy_from_slice(&(len as u32).to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..].copy_from_slice(&unique.to_ne_bytes());
    header
}

/// `values` in the machine's byte order, on the stack.
fn u32s<const N: usize>(values: [u32; N]) -> [[u8; 4]; N] {
    values.map(u32::to_ne_bytes)
}

/// An error reply: `errno` is positive (`libc::EAGAIN`), sent negated as the kernel expects.
pub fn reply_error(unique: u64, errno: i32) -> Reply {
    message(unique, -errno, &[])
}

/// A success reply with no payload (FLUSH, RELEASE).
pub fn reply_empty(unique: u64) -> Reply {
    message(unique, 0, &[])
}

/// A READ reply carrying `data`.
pub fn reply_data(unique: u64, data: &[u8]) -> Reply {
    message(unique, 0, &[data])
}

/// An OPEN reply: `fuse_open_out { fh, open_flags, padding }`.
pub fn reply_open(unique: u64, fh: u64, open_flags: u32) -> Reply {
    message(unique, 0, &[&fh.to_ne_bytes(), u32s([open_flags, 0]).as_flattened()])
}

/// A WRITE reply: `fuse_write_out { size, padding }`.
pub fn reply_write(unique: u64, size: u32) -> Reply {
    message(unique, 0, &[u32s([size, 0]).as_flattened()])
}

/// A POLL reply: `fuse_poll_out { revents, padding }`.
pub fn reply_poll(unique: u64, revents: u32) -> Reply {
    message(unique, 0, &[u32s([revents, 0]).as_flattened()])
}

/// What `fuse_attr` says of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The inode number.
    pub ino: u64,
    /// The file type and permission bits (`S_IFREG | 0o666`).
    pub mode: u32,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access, modification and change time, in seconds since the epoch.
    pub time: u64,
}

impl Attr {
    /// `fuse_attr`: size and blocks 0, one time for all three, 4 KiB blocks.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ATTR_LEN);
        for value in [self.ino, 0, 0, self.time, self.time, self.time] {
            out.extend_from_slice(&value.to_ne_bytes());
        }
        // atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
        out.extend_from_slice(
            u32s([0, 0, 0, self.mode, self.nlink, self.uid, self.gid, 0, 4096, 0]).as_flattened(),
        );
        out
    }
}

/// A LOOKUP reply: `fuse_entry_out { nodeid, generation, entry_valid, attr_valid,
/// entry_valid_nsec, attr_valid_nsec, attr }`, both valid for `valid_seconds`.
pub fn reply_entry(unique: u64, attr: &Attr, valid_seconds: u64) -> Reply {
    let mut out = Vec::new();
    for value in [attr.ino, 0, valid_seconds, valid_seconds] {
        out.extend_from_slice(&value.to_ne_bytes());
    }
    out.extend_from_slice(u32s([0, 0]).as_flattened());
    out.extend_from_slice(&attr.bytes());
    message(unique, 0, &[&out])
}

/// A GETATTR reply: `fuse_attr_out { attr_valid, attr_valid_nsec, dummy, attr }`.
pub fn reply_attr(unique: u64, attr: &Attr, valid_seconds: u64) -> Reply {
    message(unique, 0, &[&valid_seconds.to_ne_bytes(), u32s([0, 0]).as_flattened(), &attr.bytes()])
}

/// A STATFS reply for a filesystem with no space and `files` inodes: `fuse_kstatfs`.
pub fn reply_statfs(unique: u64, files: u64) -> Reply {
    let mut out = Vec::new();
    // blocks, bfree, bavail, files, ffree
    for value in [0, 0, 0, files, 0] {
        out.extend_from_slice(&u64::to_ne_bytes(value));
    }
    // bsize, namelen, frsize, padding, spare[6]
    out.extend_from_slice(u32s([4096, 255, 4096, 0, 0, 0, 0, 0, 0, 0]).as_flattened());
    message(unique, 0, &[&out])
}

/// One directory entry for [`reply_dirents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent<'a> {
    /// The inode number.
    pub ino: u64,
    /// `DT_DIR`, `DT_REG`, ...
    pub kind: u32,
    /// The name.
    pub name: &'a [u8],
}

/// A READDIR reply: the entries from index `offset` on, as many as fit in `size` bytes, each a
/// `fuse_dirent { ino, off, namelen, type, name }` padded to 8 bytes; `off` is the index of the
/// entry after it, which the kernel passes back to continue.
pub fn reply_dirents(unique: u64, entries: &[Dirent<'_>], offset: u64, size: u32) -> Reply {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate().skip(offset.min(usize::MAX as u64) as usize) {
        let unpadded = 24 + entry.name.len();
        let padded = unpadded.div_ceil(8) * 8;
        if out.len() + padded > size as usize {
            break;
        }
        out.extend_from_slice(&entry.ino.to_ne_bytes());
        out.extend_from_slice(&(index as u64 + 1).to_ne_bytes());
        out.extend_from_slice(u32s([entry.name.len() as u32, entry.kind]).as_flattened());
        out.extend_from_slice(entry.name);
        out.resize(out.len() + padded - unpadded, 0);
    }
    message(unique, 0, &[&out])
}

/// The CUSE_INIT reply: `cuse_init_out` then the NUL-terminated device info, which names the
/// device node (`DEVNAME=steve` makes `/dev/steve`). Device numbers 0 ask for dynamic ones.
pub fn reply_cuse_init(
    unique: u64,
    minor: u32,
    max_read: u32,
    max_write: u32,
    dev_name: &str,
) -> Reply {
    let init_out = u32s([
        KERNEL_VERSION,
        minor,
        0, // unused
        0, // flags: no unrestricted ioctls
        max_read,
        max_write,
        0, // dev_major: dynamic
        0, // dev_minor: dynamic
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0, // spare[10]
    ]);
    let info = format!("DEVNAME={dev_name}\0");
    message(unique, 0, &[init_out.as_flattened(), info.as_bytes()])
}

/// A poll wake-up notification for handle `kh` (unique 0, the notify code as error).
pub fn notify_poll(kh: u64) -> Reply {
    message(0, NOTIFY_POLL, &[&kh.to_ne_bytes()])
}

/// Builds requests as the kernel sends them: for tests that play the kernel, and the INTERRUPT
/// a starved ring queue's thread gives the session ([`crate::fuse::starvation`]).
pub mod kernel {
    use super::*;

    /// A request with the given header fields and body.
    pub fn request(opcode: u32, unique: u64, pid: u32, body: &[u8]) -> Vec<u8> {
        let len = (IN_HEADER_LEN + body.len()) as u32;
        let mut out = Vec::with_capacity(len as usize);
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&opcode.to_ne_bytes());
        out.extend_from_slice(&unique.to_ne_bytes());
        out.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
        out.extend_from_slice(&0u32.to_ne_bytes()); // uid
        out.extend_from_slice(&0u32.to_ne_bytes()); // gid
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&[0u8; 4]); // total_extlen, padding
        out.extend_from_slice(body);
        out
    }

    /// `message` addressed to inode `nodeid` (FUSE requests name the inode in the header).
    pub fn on_node(nodeid: u64, mut message: Vec<u8>) -> Vec<u8> {
        message[16..24].copy_from_slice(&nodeid.to_ne_bytes());
        message
    }

    /// LOOKUP of `name` in the directory `parent`.
    pub fn lookup(unique: u64, parent: u64, name: &str) -> Vec<u8> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        on_node(parent, request(opcode::LOOKUP, unique, 1, &body))
    }

    /// GETATTR: `fuse_getattr_in { getattr_flags, dummy, fh }`.
    pub fn getattr(unique: u64, nodeid: u64) -> Vec<u8> {
        on_node(nodeid, request(opcode::GETATTR, unique, 1, &[0u8; 16]))
    }

    /// READDIR: `fuse_read_in` with the entry index as offset.
    pub fn readdir(unique: u64, nodeid: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut body = 0u64.to_ne_bytes().to_vec();
        body.extend_from_slice(&offset.to_ne_bytes());
        body.extend_from_slice(u32s([size, 0]).as_flattened());
        body.extend_from_slice(&[0u8; 16]);
        on_node(nodeid, request(opcode::READDIR, unique, 1, &body))
    }

    /// CUSE_INIT: `cuse_init_in { major, minor, unused, flags }`.
    pub fn cuse_init(unique: u64, minor: u32) -> Vec<u8> {
        request(opcode::CUSE_INIT, unique, 0, u32s([KERNEL_VERSION, minor, 0, 0]).as_flattened())
    }

    /// OPEN: `fuse_open_in { flags, open_flags }`.
    pub fn open(unique: u64, pid: u32, flags: u32) -> Vec<u8> {
        request(opcode::OPEN, unique, pid, u32s([flags, 0]).as_flattened())
    }

    /// READ: `fuse_read_in { fh, offset, size, read_flags, lock_owner, flags, padding }`.
    pub fn read(unique: u64, pid: u32, fh: u64, size: u32, flags: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(u32s([size, 0]).as_flattened());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(u32s([flags, 0]).as_flattened());
        request(opcode::READ, unique, pid, &body)
    }

    /// WRITE: `fuse_write_in { fh, offset, size, write_flags, lock_owner, flags, padding }` and
    /// the data.
    pub fn write(unique: u64, pid: u32, fh: u64, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(u32s([data.len() as u32, 0]).as_flattened());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(u32s([0, 0]).as_flattened());
        body.extend_from_slice(data);
        request(opcode::WRITE, unique, pid, &body)
    }

    /// POLL: `fuse_poll_in { fh, kh, flags, events }`.
    pub fn poll(unique: u64, pid: u32, fh: u64, kh: u64, flags: u32, events: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_ne_bytes());
        body.extend_from_slice(&kh.to_ne_bytes());
        body.extend_from_slice(u32s([flags, events]).as_flattened());
        request(opcode::POLL, unique, pid, &body)
    }

    /// INTERRUPT: `fuse_interrupt_in { unique }`.
    pub fn interrupt(unique: u64, target: u64) -> Vec<u8> {
        request(opcode::INTERRUPT, unique, 0, &target.to_ne_bytes())
    }

    /// RELEASE: `fuse_release_in { fh, flags, release_flags, lock_owner }`.
    pub fn release(unique: u64, fh: u64) -> Vec<u8> {
        let mut body = fh.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; 16]);
        request(opcode::RELEASE, unique, 0, &body)
    }

    /// FLUSH: `fuse_flush_in { fh, unused, padding, lock_owner }`.
    pub fn flush(unique: u64, pid: u32, fh: u64) -> Vec<u8> {
        let mut body = fh.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; 16]);
        request(opcode::FLUSH, unique, pid, &body)
    }

    /// IOCTL: `fuse_ioctl_in { fh, flags, cmd, arg, in_size, out_size }`.
    pub fn ioctl(unique: u64, pid: u32, fh: u64, cmd: u32) -> Vec<u8> {
        let mut body = fh.to_ne_bytes().to_vec();
        body.extend_from_slice(u32s([0, cmd]).as_flattened());
        body.extend_from_slice(&0u64.to_ne_bytes());
        body.extend_from_slice(u32s([0, 0]).as_flattened());
        request(opcode::IOCTL, unique, pid, &body)
    }

    /// The parts of a reply or notification: `(len, error, unique, payload)`.
    pub fn split_reply(message: &[u8]) -> (u32, i32, u64, &[u8]) {
        let fields = Fields(message);
        let len = fields.u32(0).expect("reply header");
        let error = fields.u32(4).expect("reply header") as i32;
        let unique = fields.u64(8).expect("reply header");
        (len, error, unique, &message[OUT_HEADER_LEN..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_builder_writes() {
        let read = kernel::read(7, 1234, 3, 4096, 0o4000);
        let (header, request) = parse(&read).unwrap();
        assert_eq!((header.unique, header.pid, header.opcode), (7, 1234, opcode::READ));
        assert_eq!(request, Request::Read { fh: 3, size: 4096, flags: 0o4000 });
        let write = kernel::write(8, 1, 3, b"+G");
        assert_eq!(parse(&write).unwrap().1, Request::Write { fh: 3, data: b"+G" });
        let poll = kernel::poll(9, 1, 3, 77, POLL_SCHEDULE_NOTIFY, 1);
        assert_eq!(parse(&poll).unwrap().1, Request::Poll { fh: 3, kh: 77, flags: 1, events: 1 });
        let interrupt = kernel::interrupt(10, 7);
        assert_eq!(parse(&interrupt).unwrap().1, Request::Interrupt { target: 7 });
        let ioctl = kernel::ioctl(11, 1, 3, 0x5401);
        assert_eq!(parse(&ioctl).unwrap().1, Request::Ioctl { cmd: 0x5401 });
    }

    fn payload(reply: Reply) -> Vec<u8> {
        let (len, _, _, payload) = kernel::split_reply(&reply);
        assert_eq!(len as usize, reply.len());
        payload.to_vec()
    }

    #[test]
    fn filesystem_requests_parse_and_replies_have_the_kernels_layout() {
        let lookup = kernel::lookup(3, ROOT_ID, "jobserver");
        let (header, request) = parse(&lookup).unwrap();
        assert_eq!((header.nodeid, request), (ROOT_ID, Request::Lookup { name: b"jobserver" }));
        let getattr = kernel::getattr(4, 2);
        let (header, request) = parse(&getattr).unwrap();
        assert_eq!((header.nodeid, request), (2, Request::Getattr));
        let readdir = kernel::readdir(5, ROOT_ID, 1, 4096);
        assert_eq!(parse(&readdir).unwrap().1, Request::Readdir { offset: 1, size: 4096 });

        let attr = Attr { ino: 2, mode: 0o100644, nlink: 1, uid: 7, gid: 8, time: 9 };
        let entry = payload(reply_entry(3, &attr, 10));
        assert_eq!(entry.len(), 40 + ATTR_LEN);
        // fuse_attr's mode sits after six u64 fields and three u32 ones.
        assert_eq!(&entry[40 + 60..40 + 64], &0o100644u32.to_ne_bytes());
        let attr_out = payload(reply_attr(4, &attr, 10));
        assert_eq!(attr_out.len(), 16 + ATTR_LEN);
        let statfs = payload(reply_statfs(6, 2));
        assert_eq!(statfs.len(), 80);

        let entries = [
            Dirent { ino: 1, kind: 4, name: b"." },
            Dirent { ino: 2, kind: 8, name: b"jobserver" },
        ];
        let all = payload(reply_dirents(5, &entries, 0, 4096));
        // 24 + 1 padded to 32, 24 + 9 padded to 40.
        assert_eq!(all.len(), 72);
        assert_eq!(&all[8..16], &1u64.to_ne_bytes(), "the first entry's offset is 1");
        assert_eq!(&all[32 + 24..32 + 33], b"jobserver");
        let rest = payload(reply_dirents(5, &entries, 1, 4096));
        assert_eq!(rest.len(), 40, "offset 1 continues after the first entry");
        let none = payload(reply_dirents(5, &entries, 0, 39));
        assert_eq!(none.len(), 32, "an entry that does not fit is left for the next call");
    }

    #[test]
    fn short_or_inconsistent_messages_are_errors_not_panics() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0u8; 39]).is_err());
        let mut read = kernel::read(1, 1, 1, 1, 0);
        read.truncate(60);
        let error = parse(&read).unwrap_err();
        assert_eq!(error.unique, Some(1), "the header was readable: {error}");
        // A write claiming more data than it carries.
        let mut write = kernel::write(2, 1, 1, b"+");
        write[56..60].copy_from_slice(&5u32.to_ne_bytes());
        assert!(parse(&write).is_err());
        for len in 0..200 {
            let _ = parse(&vec![0xffu8; len]);
        }
        // Found by the fuzzer (fuzz/src/bin/requests.rs): shorter than the header, yet long
        // enough for every field the header check reads, and saying its own length.
        for len in 38..IN_HEADER_LEN {
            let mut short = vec![0u8; len];
            short[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            assert!(parse(&short).is_err(), "a {len}-byte message parsed");
        }
    }

    #[test]
    fn replies_have_the_kernels_layout() {
        let reply = reply_error(5, nix::libc::EAGAIN);
        assert_eq!(kernel::split_reply(&reply), (16, -nix::libc::EAGAIN, 5, &[][..]));
        let reply = reply_data(6, b"+");
        assert_eq!(kernel::split_reply(&reply), (17, 0, 6, &b"+"[..]));
        let init = reply_cuse_init(1, 31, 4096, 4096, "steve");
        let (len, error, _, payload) = kernel::split_reply(&init);
        assert_eq!((len as usize, error), (init.len(), 0));
        assert_eq!(&payload[..8], &[7u32.to_ne_bytes(), 31u32.to_ne_bytes()].concat()[..]);
        assert_eq!(payload.len(), CUSE_INIT_OUT_LEN + b"DEVNAME=steve\0".len());
        assert_eq!(&payload[CUSE_INIT_OUT_LEN..], b"DEVNAME=steve\0");
        let notify = notify_poll(0xabcd);
        assert_eq!(
            kernel::split_reply(&notify),
            (24, NOTIFY_POLL, 0, &0xabcdu64.to_ne_bytes()[..])
        );
    }
}
