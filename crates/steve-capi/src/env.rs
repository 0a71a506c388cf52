//! The environment's jobserver settings: reading make's flags and jobserver from MAKEFLAGS,
//! publishing a jobserver there, and taking it out again.
//!
//! Reading follows steve's client (the first of CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS that is set).
//! Publishing writes MAKEFLAGS, and CARGO_MAKEFLAGS too when it is set, so that no child
//! reading that one first finds a stale jobserver. Every other flag in the value is kept.

use std::ffi::CString;

use nix::errno::Errno;
use steve_core::makeflags::{self, FoundMakeFlags, Jobs, JobserverAuth, MakeFlags};

/// make's three flags libjobserver reports: `n`, `d` and `k` in the short-flag cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `n`: a dry run.
    pub dry_run: bool,
    /// `d`: print debugging information.
    pub debug: bool,
    /// `k`: keep going after errors.
    pub keep_going: bool,
}

impl Flags {
    /// The flags `makeflags` holds.
    pub fn of(makeflags: &MakeFlags) -> Flags {
        let has = |letter| makeflags.short_flags.contains(letter);
        Flags { dry_run: has('n'), debug: has('d'), keep_going: has('k') }
    }

    /// `cluster` with n, d and k set as these flags say, its other letters kept.
    fn apply(self, cluster: &str) -> String {
        let mut letters: Vec<char> = cluster.chars().filter(|c| !"ndk".contains(*c)).collect();
        for (on, letter) in [(self.debug, 'd'), (self.keep_going, 'k'), (self.dry_run, 'n')] {
            if on {
                letters.push(letter);
            }
        }
        letters.sort_unstable();
        letters.into_iter().collect()
    }
}

/// What the environment says: `Ok(None)` when no variable is set; EPROTO when the value does
/// not parse (or is not UTF-8).
pub fn read() -> Result<Option<FoundMakeFlags>, Errno> {
    makeflags::from_env().map_err(|_| Errno::EPROTO)
}

/// Writes MAKEFLAGS (and CARGO_MAKEFLAGS when set) with `flags`, and with `jobserver` as the
/// jobserver (`jobs` its `-j`, or the one there now), or with no jobserver and no `-j` when it
/// is `None`.
pub fn publish(
    flags: Flags,
    jobserver: Option<(Option<Jobs>, &JobserverAuth)>,
) -> Result<(), Errno> {
    // A value that does not parse is replaced whole.
    let base = read().ok().flatten().map(|found| found.flags).unwrap_or_default();
    let mut value = match jobserver {
        Some((jobs, auth)) => {
            let mut value = base.with_jobserver(Jobs::Unlimited, auth.clone());
            value.jobs = jobs.or(base.jobs);
            value
        }
        None => base.without_jobserver(),
    };
    value.short_flags = flags.apply(&value.short_flags);
    let text = value.to_string();
    set("MAKEFLAGS", &text)?;
    if std::env::var_os("CARGO_MAKEFLAGS").is_some() {
        set("CARGO_MAKEFLAGS", &text)?;
    }
    Ok(())
}

fn set(name: &str, value: &str) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // MAKEFLAGS as written holds no NUL: every word comes from a C string or a path.
    let value = CString::new(value).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both are NUL-terminated strings that outlive the call; setenv copies them. Like
    // libjobserver's, the call is MT-Unsafe const:env (the man pages say so).
    if unsafe { libc::setenv(name.as_ptr(), value.as_ptr(), 1) } == 0 {
        Ok(())
    } else {
        Err(Errno::ENOMEM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_and_set_in_the_cluster_keeping_other_letters() {
        let parsed = MakeFlags::parse("ksw -j4").unwrap();
        assert_eq!(Flags::of(&parsed), Flags { dry_run: false, debug: false, keep_going: true });
        let flags = Flags { dry_run: true, debug: false, keep_going: false };
        assert_eq!(flags.apply("ksw"), "nsw");
        assert_eq!(Flags::default().apply(""), "");
    }
}
