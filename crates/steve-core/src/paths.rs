//! Where steve puts things: the user's runtime directory, trusted only when it is what the XDG
//! base directory spec says it is, and the control socket beside a jobserver.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// `$XDG_RUNTIME_DIR`, when it is set, absolute and an existing directory. A relative one would
/// end up in MAKEFLAGS as a path that means something else in every other working directory;
/// without one a user's server has no default place (a predictable name in `/tmp` is another
/// user's to take first).
pub fn runtime_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    (dir.is_absolute() && dir.is_dir()).then_some(dir)
}

/// `PATH.control`: the control socket beside a jobserver path or a mount point (never inside a
/// mount).
pub fn control_beside(path: &Path) -> PathBuf {
    let mut control = path.as_os_str().to_owned();
    control.push(".control");
    PathBuf::from(control)
}
