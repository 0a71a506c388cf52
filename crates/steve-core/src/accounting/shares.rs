//! Fair shares: which waiting client a token that comes free goes to.
//!
//! Every client of a per-process backend belongs to a *build* (a top-level client and the client
//! processes under it; the server decides, see `server::processes`) and to a *user* (its uid).
//! The [`Fairness`] policy says what is shared fairly:
//!
//! - [`Fairness::Build`]: a free token goes to the waiting build that holds the fewest tokens
//!   for its weight, so a build that asks and holds nothing is never behind one that holds
//!   several; FIFO among equals, by build: the one served longest ago first, then the older
//!   request (a build asking again right after a grant does not keep its old request's place,
//!   or two makes sharing one token would pass it back and forth past a third waiting build);
//! - [`Fairness::User`]: the same between users, whatever number of builds each runs;
//! - [`Fairness::Fifo`]: the oldest request first, whoever made it.
//!
//! A weight belongs to a user (1 unless set; a build weighs what its user does), and a user may
//! have a cap: the most tokens all of its processes may hold together. Weights and caps are
//! settable at run time (`steve set weights=1000:2 user-caps=1001:4`). Nothing here does I/O.
#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A user, by uid.
pub type Uid = u32;

/// The uid of a client whose user is not known (the ledger's own clients in tests).
pub const UNKNOWN_USER: Uid = u32::MAX;

/// The most a weight may be: shares are compared by cross-multiplying holdings and weights,
/// which stays far from overflow.
pub const MAX_WEIGHT: u32 = 1000;

/// A build, by a number the server gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BuildId(pub u64);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "build#{}", self.0)
    }
}

/// Whose a client's tokens count as: its build's and its user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The build it belongs to.
    pub build: BuildId,
    /// Its user.
    pub user: Uid,
}

/// What is shared fairly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fairness {
    /// Between builds (the default on per-process backends).
    #[default]
    Build,
    /// Between users.
    User,
    /// None: the oldest request first.
    Fifo,
}

impl Fairness {
    /// The names `--fairness` and `steve set fairness=` take.
    pub const NAMES: [&'static str; 3] = ["build", "user", "fifo"];
}

impl fmt::Display for Fairness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fairness::Build => "build",
            Fairness::User => "user",
            Fairness::Fifo => "fifo",
        })
    }
}

/// A fairness policy name that is none of [`Fairness::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFairness(pub String);

impl fmt::Display for UnknownFairness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a fairness policy; known are {}", self.0, Fairness::NAMES.join(", "))
    }
}

impl std::error::Error for UnknownFairness {}

impl FromStr for Fairness {
    type Err = UnknownFairness;

    fn from_str(text: &str) -> Result<Fairness, UnknownFairness> {
        match text {
            "build" => Ok(Fairness::Build),
            "user" => Ok(Fairness::User),
            "fifo" => Ok(Fairness::Fifo),
            other => Err(UnknownFairness(other.to_string())),
        }
    }
}

/// The policy with its per-user weights and caps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Shares {
    /// What is shared fairly.
    pub fairness: Fairness,
    /// Weights by user, 1 to [`MAX_WEIGHT`]; a user not listed weighs 1.
    pub weights: BTreeMap<Uid, u32>,
    /// The most tokens each listed user's processes may hold together.
    pub user_caps: BTreeMap<Uid, usize>,
}

impl Shares {
    /// FIFO order, no weights, no caps: what a pipe does.
    pub fn fifo() -> Shares {
        Shares { fairness: Fairness::Fifo, ..Shares::default() }
    }

    /// Whether these shares ask for more than FIFO order with the default policy: weights,
    /// caps, or fairness between users. The default, fair shares between builds, is what a
    /// per-process backend does unasked and a pipe cannot do (it serves FIFO).
    pub fn needs_accounting(&self) -> bool {
        self.fairness == Fairness::User || !self.weights.is_empty() || !self.user_caps.is_empty()
    }

    /// `user`'s weight.
    pub fn weight(&self, user: Uid) -> u64 {
        u64::from(self.weights.get(&user).copied().unwrap_or(1))
    }

    /// How many tokens `user`'s processes may hold together, if capped.
    pub fn cap(&self, user: Uid) -> Option<usize> {
        self.user_caps.get(&user).copied()
    }
}

/// Parses `UID:N[,UID:N...]` (or `none`) into a map, each `N` checked by `value`.
pub fn parse_user_map<T>(
    text: &str,
    value: impl Fn(&str) -> Result<T, String>,
) -> Result<BTreeMap<Uid, T>, String> {
    let mut map = BTreeMap::new();
    if matches!(text, "none" | "off" | "") {
        return Ok(map);
    }
    for item in text.split(',') {
        let Some((uid, number)) = item.split_once(':') else {
            return Err(format!("{item:?} is not UID:VALUE"));
        };
        let uid: Uid = uid.trim().parse().map_err(|_| format!("{uid:?} is not a user id"))?;
        if map.insert(uid, value(number.trim())?).is_some() {
            return Err(format!("uid {uid} is given twice"));
        }
    }
    Ok(map)
}

/// Writes a map as [`parse_user_map`] reads it; `none` when empty.
pub fn format_user_map<T: fmt::Display>(map: &BTreeMap<Uid, T>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    let items: Vec<String> = map.iter().map(|(uid, value)| format!("{uid}:{value}")).collect();
    items.join(",")
}

/// Parses one weight, 1 to [`MAX_WEIGHT`].
pub fn parse_weight(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(weight) if (1..=MAX_WEIGHT).contains(&weight) => Ok(weight),
        _ => Err(format!("{text:?} is not a weight from 1 to {MAX_WEIGHT}")),
    }
}

/// Parses one cap, at least 1.
pub fn parse_cap(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(cap) if cap >= 1 => Ok(cap),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// How much a share group holds for its weight, compared without division: `a` holds less than
/// `b` for its weight when `a.held * b.weight < b.held * a.weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Tokens the group holds.
    pub held: usize,
    /// Its weight.
    pub weight: u64,
}

impl Standing {
    /// Whether `self` holds strictly less than `other`, each for its weight.
    pub fn is_below(self, other: Standing) -> bool {
        self.cmp_share(other) == Ordering::Less
    }

    /// How what `self` holds for its weight compares with `other`'s: a total order of the
    /// shares (holding 2 for a weight of 2 is level with holding 1 for a weight of 1).
    pub fn cmp_share(self, other: Standing) -> Ordering {
        ((self.held as u64) * other.weight).cmp(&((other.held as u64) * self.weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_by_name() {
        for name in Fairness::NAMES {
            assert_eq!(name.parse::<Fairness>().unwrap().to_string(), name);
        }
        let error = "round-robin".parse::<Fairness>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"round-robin\" is not a fairness policy; known are build, user, fifo"
        );
        assert_eq!(Fairness::default(), Fairness::Build);
    }

    #[test]
    fn user_maps_parse_round_trip_and_refuse_nonsense() {
        let weights = parse_user_map("1000:2, 1001:10", parse_weight).unwrap();
        assert_eq!(weights, BTreeMap::from([(1000, 2), (1001, 10)]));
        assert_eq!(format_user_map(&weights), "1000:2,1001:10");
        assert_eq!(format_user_map(&parse_user_map("none", parse_weight).unwrap()), "none");
        for bad in ["1000", "alice:2", "1000:0", "1000:1001", "1000:2,1000:3", "1000:-1"] {
            assert!(parse_user_map(bad, parse_weight).is_err(), "{bad}");
        }
        assert!(parse_user_map("1000:0", parse_cap).is_err());
        assert_eq!(parse_user_map("7:3", parse_cap).unwrap(), BTreeMap::from([(7, 3)]));
    }

    #[test]
    fn standings_compare_for_their_weights() {
        let one = |held| Standing { held, weight: 1 };
        assert!(one(0).is_below(one(1)));
        assert!(!one(1).is_below(one(1)));
        // Holding 3 with weight 2 is less than holding 2 with weight 1.
        assert!(Standing { held: 3, weight: 2 }.is_below(one(2)));
        assert!(!Standing { held: 4, weight: 2 }.is_below(one(2)));
    }
}
