//! `/proc/self/mountinfo`, read without trusting its text: which filesystem is mounted on a
//! path (the fuse backend's stale-mount check) or holds a device (the client library's check that
//! a regular file is steve's own FUSE file). Pure parsing; the caller reads the file.
#![forbid(unsafe_code)]

use std::path::Path;

/// One line of mountinfo, the parts steve looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem type (`fuse`, `fuse.steve`, `tmpfs`).
    pub fstype: String,
    /// The mount's source (`steve` for steve's own).
    pub source: String,
}

/// The topmost filesystem mounted on `mountpoint`, from mountinfo's text.
pub fn mount_at(mountinfo: &str, mountpoint: &Path) -> Option<MountEntry> {
    let wanted = mountpoint.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let (_, point, entry) = parse_line(line)?;
        (point == wanted).then_some(entry)
    })
}

/// The topmost mount whose device is `dev` (what `stat` gives a file on it).
pub fn mount_of_device(mountinfo: &str, dev: u64) -> Option<MountEntry> {
    let wanted = format!("{}:{}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    mountinfo.lines().rev().find_map(|line| {
        let (device, _, entry) = parse_line(line)?;
        (device == wanted).then_some(entry)
    })
}

/// Each mount's device (as `stat` gives it, `makedev(major, minor)`), by mount id (field 1).
pub fn devices_by_mount_id(mountinfo: &str) -> std::collections::HashMap<u64, u64> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((id, nix::sys::stat::makedev(major.parse().ok()?, minor.parse().ok()?)))
        })
        .collect()
}

/// One line: field 3 is the device (`major:minor`), field 5 the mount point (octal escapes for
/// blanks); after ` - ` come the type and the source.
fn parse_line(line: &str) -> Option<(&str, String, MountEntry)> {
    let (mount, filesystem) = line.split_once(" - ")?;
    let mut mount = mount.split(' ');
    let device = mount.nth(2)?;
    let point = unescape(mount.nth(1)?);
    let mut fields = filesystem.split(' ');
    let fstype = fields.next()?.to_string();
    let source = unescape(fields.next()?);
    Some((device, point, MountEntry { fstype, source }))
}

/// Undoes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
pub(crate) fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).filter(|digits| {
            bytes[at] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
61 40 0:52 / /run/steve/fuse rw,nosuid,nodev shared:30 - fuse.steve steve rw,user_id=0
62 22 0:53 / /tmp/a\\040b rw shared:31 - fuse steve rw,user_id=1000
63 40 0:54 / /run/steve/fuse rw shared:32 - tmpfs none rw
64 22 0:55 / /mnt/remote rw shared:33 - fuse.sshfs me@host: rw,user_id=1000
";

    fn fstype(mountpoint: &str) -> Option<String> {
        mount_at(MOUNTINFO, Path::new(mountpoint)).map(|entry| entry.fstype)
    }

    #[test]
    fn the_topmost_mount_on_a_point_is_found() {
        assert_eq!(fstype("/run").as_deref(), Some("tmpfs"));
        assert_eq!(fstype("/run/steve/fuse").as_deref(), Some("tmpfs"), "the later line is on top");
        let steve = mount_at(MOUNTINFO, Path::new("/tmp/a b")).unwrap();
        assert_eq!(steve, MountEntry { fstype: "fuse".into(), source: "steve".into() });
        let sshfs = mount_at(MOUNTINFO, Path::new("/mnt/remote")).unwrap();
        assert_eq!(sshfs, MountEntry { fstype: "fuse.sshfs".into(), source: "me@host:".into() });
        assert_eq!(fstype("/run/steve"), None);
        assert_eq!(mount_at("garbage\n\n", Path::new("/")), None);
    }

    #[test]
    fn each_mount_id_gives_its_device() {
        let devices = devices_by_mount_id(MOUNTINFO);
        assert_eq!(devices.len(), 6);
        assert_eq!(devices[&40], nix::sys::stat::makedev(0, 35));
        assert_eq!(devices[&64], nix::sys::stat::makedev(0, 55));
        assert!(devices_by_mount_id("garbage\n1 2 x:y / / - a b").is_empty());
    }

    #[test]
    fn octal_escapes_are_undone_and_stray_backslashes_kept() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/x\\9y\\"), "/x\\9y\\");
    }

    #[test]
    fn the_mount_of_a_device_is_found() {
        let dev = |major, minor| nix::sys::stat::makedev(major, minor);
        assert_eq!(
            mount_of_device(MOUNTINFO, dev(0, 53)).map(|e| e.source).as_deref(),
            Some("steve")
        );
        assert_eq!(
            mount_of_device(MOUNTINFO, dev(0, 55)).map(|e| e.source).as_deref(),
            Some("me@host:")
        );
        assert_eq!(mount_of_device(MOUNTINFO, dev(0, 99)), None);
    }
}
