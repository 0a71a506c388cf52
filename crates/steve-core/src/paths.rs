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

/// The first of `dir` and the directories above it that a user other than root may rename
/// entries in: owned by someone else, or writable by a group or by all without the sticky bit
/// (which keeps others from renaming root's entries). Someone who may rename entries there can
/// swap the names root's steve makes for links between two of its steps: every step is guarded
/// (files are made and changed through descriptors, lookups refuse links), but a refusal still
/// stops the server, so root's jobservers belong where only root may write.
pub fn changeable_by_others(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().find_map(|ancestor| {
        let metadata = std::fs::metadata(ancestor).ok()?;
        let sticky = metadata.mode() & 0o1000 != 0;
        let group_writable = metadata.mode() & 0o020 != 0 && metadata.gid() != 0;
        let all_writable = metadata.mode() & 0o002 != 0;
        let open = metadata.uid() != 0 || (!sticky && (group_writable || all_writable));
        open.then(|| ancestor.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_may_rename_in_is_found_sticky_ones_are_not() {
        if !nix::unistd::geteuid().is_root() {
            // Everything a user owns is "someone else's" to root's steve; nothing to tell apart.
            assert!(changeable_by_others(Path::new("/")).is_none());
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        let inner = shared.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(changeable_by_others(&inner), Some(shared.clone()));
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(changeable_by_others(&inner), None, "sticky, like /tmp");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(changeable_by_others(&inner), None);
        std::os::unix::fs::chown(&inner, Some(65534), None).unwrap();
        assert_eq!(changeable_by_others(&inner), Some(inner.clone()), "another user's own");
    }
}
