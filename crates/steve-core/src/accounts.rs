//! Users and groups named on the command line (`--group`, `--user`), by name or number.
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
