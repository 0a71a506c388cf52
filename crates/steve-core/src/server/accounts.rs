//! Users and groups named on the command line (`--group`, `--user`), by name or number, and
//! becoming a user for good.
#![forbid(unsafe_code)]

use nix::unistd::{Gid, Group, Uid, User};

/// The group `name` names: a number is taken as it is, a name is looked up. `None` when no
/// group has that name.
pub fn group_id(name: &str) -> Option<Gid> {
    if let Ok(number) = name.parse::<u32>() {
        return Some(Gid::from_raw(number));
    }
    Group::from_name(name).ok().flatten().map(|group| group.gid)
}

/// The user `name` names, by name or number. `None` when there is none.
pub fn user(name: &str) -> Option<User> {
    match name.parse::<u32>() {
        Ok(number) => User::from_uid(Uid::from_raw(number)).ok().flatten(),
        Err(_) => User::from_name(name).ok().flatten(),
    }
}

/// Becomes `user` for good: supplementary groups, group, then user. Says what failed.
pub fn become_user(user: &User) -> Result<(), String> {
    let failed =
        |what: &str, errno: nix::errno::Errno| format!("cannot {what} {}: {errno}", user.name);
    nix::unistd::setgroups(&[user.gid]).map_err(|errno| failed("set the groups of", errno))?;
    nix::unistd::setgid(user.gid).map_err(|errno| failed("take the group of", errno))?;
    nix::unistd::setuid(user.uid).map_err(|errno| failed("become", errno))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(group_id("0"), Some(Gid::from_raw(0)));
        assert_eq!(group_id("root"), Some(Gid::from_raw(0)));
        assert_eq!(group_id("no-such-group-steve"), None);
        assert_eq!(user("root").map(|user| user.uid), Some(Uid::from_raw(0)));
        assert_eq!(user("0").map(|user| user.name), Some("root".to_string()));
        assert!(user("no-such-user-steve").is_none());
    }
}
