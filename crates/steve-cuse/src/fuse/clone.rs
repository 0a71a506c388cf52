//! A second descriptor on a FUSE connection: `FUSE_DEV_IOC_CLONE` on a fresh open of
//! `/dev/fuse` attaches it to the connection of an existing one, with a processing queue of its
//! own, so that several threads each read and answer requests on their own descriptor (what
//! libfuse's `clone_fd` does). The one unsafe spot of the FUSE backend: the ioctl.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

mod ioctl {
    // FUSE_DEV_IOC_CLONE is _IOR(229, 0, uint32_t) in <linux/fuse.h>: the argument is a
    // pointer to the descriptor number of the connection to join.
    nix::ioctl_read!(fuse_dev_ioc_clone, 229, 0, u32);
}

/// A new descriptor on the connection `channel` serves, opened from `/dev/fuse`.
pub fn clone_channel(channel: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let fuse = OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let mut session = u32::try_from(channel.as_raw_fd()).map_err(std::io::Error::other)?;
    // SAFETY: `fuse` is an open /dev/fuse descriptor for the call's length and `session` a
    // live u32 the kernel only reads (the ioctl's direction says read, of four bytes).
    unsafe { ioctl::fuse_dev_ioc_clone(fuse.as_raw_fd(), &mut session) }
        .map_err(std::io::Error::from)?;
    Ok(fuse.into())
}
