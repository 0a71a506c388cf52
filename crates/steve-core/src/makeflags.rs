//! MAKEFLAGS: finding, parsing and writing the jobserver a client should use.
//!
//! GNU make passes its jobserver to children in `MAKEFLAGS`, in one of these forms:
//!
//! - `--jobserver-auth=fifo:PATH` (make 4.4 and later): a path to open;
//! - `--jobserver-auth=R,W` (make 4.2 and later): inherited file descriptors;
//! - `--jobserver-fds=R,W` (older make, and cargo for compatibility);
//! - negative descriptors (`-2,-2`): the jobserver is disabled for this child.
//!
//! The last jobserver option wins, as in make. A first word made of single letters (make's
//! short-flag cluster, `ks` or `-ks`) holding an `n` means a dry run: clients must not use the
//! jobserver then. Everything after a lone `--` is variable overrides and is not searched.
//! Words are split on white space; a backslash makes the next character part of the word, as
//! make writes it.
//!
//! ```
//! use steve_core::makeflags::{JobserverAuth, MakeFlags};
//!
//! let flags = MakeFlags::parse(" -j8 --jobserver-auth=fifo:/run/steve/jobserver").unwrap();
//! assert_eq!(flags.jobserver(), Some(&JobserverAuth::Fifo("/run/steve/jobserver".into())));
//! assert!(MakeFlags::parse("--jobserver-auth=3").is_err());
//! ```
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::accounting::pool::JobCount;

/// The environment variables a client reads, in the order it looks at them: the first one that
/// is set is used, even when it names no jobserver (as the jobserver crate and cargo do).
pub const ENV_VARS: [&str; 3] = ["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"];

/// Where the jobserver is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobserverAuth {
    /// A path to open: a named pipe, or a device or file with jobserver semantics.
    Fifo(PathBuf),
    /// Inherited descriptors: read tokens from `read`, write them back to `write`.
    Fds {
        /// The descriptor to read tokens from.
        read: RawFd,
        /// The descriptor to write tokens back to.
        write: RawFd,
    },
    /// Negative descriptors: the parent make disabled the jobserver for this child.
    Disabled,
}

impl JobserverAuth {
    /// The option that names this jobserver, as make 4.4 writes it. Descriptors are given in
    /// both the old and the new spelling, as cargo does, so make 4.1 and older understand too.
    pub fn to_option(&self) -> String {
        match self {
            JobserverAuth::Fifo(path) => {
                format!("--jobserver-auth=fifo:{}", escape_word(&path.to_string_lossy()))
            }
            JobserverAuth::Fds { read, write } => {
                format!("--jobserver-fds={read},{write} --jobserver-auth={read},{write}")
            }
            JobserverAuth::Disabled => "--jobserver-auth=-2,-2".to_string(),
        }
    }
}

/// The `-j` make was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    /// `-j` without a number: no limit.
    Unlimited,
    /// `-jN`.
    Limit(u32),
}

/// A parsed MAKEFLAGS value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeFlags {
    /// make's cluster of single-letter flags (`ks`), without a dash, empty when absent.
    pub short_flags: String,
    /// The last `-j` option, if any.
    pub jobs: Option<Jobs>,
    jobserver: Option<JobserverAuth>,
    /// Options other than the jobserver and `-j` ones, kept in order.
    pub other_options: Vec<String>,
    /// Variable overrides after `--`.
    pub overrides: Vec<String>,
}

/// Why a MAKEFLAGS value could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeFlagsError {
    kind: MakeFlagsErrorKind,
    /// The offending text, quoted in the message.
    text: String,
}

/// The kinds of [`MakeFlagsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MakeFlagsErrorKind {
    /// A jobserver option whose value is neither `fifo:PATH` nor `R,W`.
    BadJobserverAuth,
    /// `fifo:` with nothing after it.
    EmptyFifoPath,
    /// A `-j` whose count is not a positive number.
    BadJobs,
    /// A lone backslash at the end, with nothing to escape.
    TrailingBackslash,
}

impl MakeFlagsError {
    /// What kind of error this is.
    pub fn kind(&self) -> MakeFlagsErrorKind {
        self.kind
    }

    /// The text that could not be understood.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn new(kind: MakeFlagsErrorKind, text: &str) -> Self {
        MakeFlagsError { kind, text: text.to_string() }
    }
}

impl fmt::Display for MakeFlagsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            MakeFlagsErrorKind::BadJobserverAuth => {
                "invalid jobserver option (expected fifo:PATH or R,W)"
            }
            MakeFlagsErrorKind::EmptyFifoPath => "jobserver fifo: has an empty path",
            MakeFlagsErrorKind::BadJobs => "invalid job count",
            MakeFlagsErrorKind::TrailingBackslash => "backslash at the end of MAKEFLAGS",
        };
        write!(f, "{what}: {:?}", self.text)
    }
}

impl std::error::Error for MakeFlagsError {}

const AUTH_PREFIXES: [&str; 2] = ["--jobserver-auth=", "--jobserver-fds="];

impl MakeFlags {
    /// Parses a MAKEFLAGS value. Never panics, whatever the input.
    pub fn parse(value: &str) -> Result<MakeFlags, MakeFlagsError> {
        let words = split_words(value)?;
        let mut flags = MakeFlags::default();
        let mut words = words.into_iter().peekable();
        if let Some(first) = words.peek() {
            if let Some(cluster) = short_flag_cluster(first) {
                flags.short_flags = cluster.to_string();
                words.next();
            }
        }
        let mut last_auth: Option<String> = None;
        while let Some(word) = words.next() {
            if word == "--" {
                flags.overrides = words.by_ref().collect();
                break;
            }
            if let Some(value) = AUTH_PREFIXES.iter().find_map(|p| word.strip_prefix(p)) {
                last_auth = Some(value.to_string());
            } else if word == "-j" || word == "--jobs" {
                flags.jobs = Some(Jobs::Unlimited);
            } else if let Some(count) =
                word.strip_prefix("--jobs=").or_else(|| word.strip_prefix("-j"))
            {
                flags.jobs = Some(parse_jobs(count, &word)?);
            } else {
                flags.other_options.push(word);
            }
        }
        flags.jobserver = last_auth.as_deref().map(parse_auth).transpose()?;
        Ok(flags)
    }

    /// The jobserver named by the last jobserver option, if any.
    pub fn jobserver(&self) -> Option<&JobserverAuth> {
        self.jobserver.as_ref()
    }

    /// Whether make was asked for a dry run (`n` among the short flags): a client must not use
    /// the jobserver then.
    pub fn is_dry_run(&self) -> bool {
        self.short_flags.contains('n')
    }

    /// The same flags without a jobserver and without `-j` (children are then on their own),
    /// every other flag kept.
    pub fn without_jobserver(&self) -> MakeFlags {
        MakeFlags { jobs: None, jobserver: None, ..self.clone() }
    }

    /// The same flags with `jobs` and `auth` as the jobserver, every other flag kept.
    pub fn with_jobserver(&self, jobs: Jobs, auth: JobserverAuth) -> MakeFlags {
        MakeFlags { jobs: Some(jobs), jobserver: Some(auth), ..self.clone() }
    }
}

impl fmt::Display for MakeFlags {
    /// Writes the value as make does: the short-flag cluster first (empty when there is none,
    /// so the value then starts with a space), then the options, then `-- overrides`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short_flags)?;
        match self.jobs {
            Some(Jobs::Unlimited) => f.write_str(" -j")?,
            Some(Jobs::Limit(count)) => write!(f, " -j{count}")?,
            None => {}
        }
        if let Some(auth) = &self.jobserver {
            write!(f, " {}", auth.to_option())?;
        }
        for option in &self.other_options {
            write!(f, " {}", escape_word(option))?;
        }
        if !self.overrides.is_empty() {
            f.write_str(" --")?;
            for word in &self.overrides {
                write!(f, " {}", escape_word(word))?;
            }
        }
        Ok(())
    }
}

/// The MAKEFLAGS a client should be given to use `auth` with `jobs` job slots.
pub fn jobserver_makeflags(jobs: JobCount, auth: JobserverAuth) -> String {
    MakeFlags::default().with_jobserver(Jobs::from(jobs), auth).to_string()
}

impl From<JobCount> for Jobs {
    fn from(jobs: JobCount) -> Jobs {
        // A JobCount is at most MAX_JOBS, far below u32::MAX.
        Jobs::Limit(jobs.get() as u32)
    }
}

/// Which variable named the jobserver, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMakeFlags {
    /// `CARGO_MAKEFLAGS`, `MAKEFLAGS` or `MFLAGS`.
    pub variable: &'static str,
    /// The parsed value.
    pub flags: MakeFlags,
}

/// Why the environment's MAKEFLAGS could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// The variable's value does not parse.
    Malformed {
        /// Which variable.
        variable: &'static str,
        /// What was wrong.
        error: MakeFlagsError,
    },
    /// The variable's value is not valid UTF-8.
    NotUnicode {
        /// Which variable.
        variable: &'static str,
    },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Malformed { variable, .. } => write!(f, "malformed {variable}"),
            EnvError::NotUnicode { variable } => write!(f, "{variable} is not valid UTF-8"),
        }
    }
}

impl std::error::Error for EnvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnvError::Malformed { error, .. } => Some(error),
            EnvError::NotUnicode { .. } => None,
        }
    }
}

/// Reads the first of [`ENV_VARS`] that is set, through `lookup` (pass `std::env::var_os` for
/// the process environment). `Ok(None)` when none is set.
pub fn from_env_with(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<FoundMakeFlags>, EnvError> {
    for variable in ENV_VARS {
        let Some(value) = lookup(variable) else {
            continue;
        };
        let value = value.into_string().map_err(|_| EnvError::NotUnicode { variable })?;
        let flags =
            MakeFlags::parse(&value).map_err(|error| EnvError::Malformed { variable, error })?;
        return Ok(Some(FoundMakeFlags { variable, flags }));
    }
    Ok(None)
}

/// Reads the process environment, as [`from_env_with`] does.
pub fn from_env() -> Result<Option<FoundMakeFlags>, EnvError> {
    from_env_with(|name| std::env::var_os(name))
}

/// `ks` or `-ks`: a first word of letters only (make's cluster). `-j4` or `--foo` are options.
fn short_flag_cluster(word: &str) -> Option<&str> {
    let (dashed, letters) = match word.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, word),
    };
    let all_letters = !letters.is_empty() && letters.chars().all(|c| c.is_ascii_alphabetic());
    // `-j` alone is the jobs option, not a cluster.
    let is_jobs_option = dashed && letters.starts_with('j');
    (all_letters && !is_jobs_option).then_some(letters)
}

fn parse_jobs(count: &str, word: &str) -> Result<Jobs, MakeFlagsError> {
    match count.parse::<u32>() {
        Ok(n) if n > 0 => Ok(Jobs::Limit(n)),
        _ => Err(MakeFlagsError::new(MakeFlagsErrorKind::BadJobs, word)),
    }
}

fn parse_auth(value: &str) -> Result<JobserverAuth, MakeFlagsError> {
    if let Some(path) = value.strip_prefix("fifo:") {
        if path.is_empty() {
            return Err(MakeFlagsError::new(MakeFlagsErrorKind::EmptyFifoPath, value));
        }
        return Ok(JobserverAuth::Fifo(PathBuf::from(path)));
    }
    let bad = || MakeFlagsError::new(MakeFlagsErrorKind::BadJobserverAuth, value);
    let (read, write) = value.split_once(',').ok_or_else(bad)?;
    let read: RawFd = read.parse().map_err(|_| bad())?;
    let write: RawFd = write.parse().map_err(|_| bad())?;
    if read < 0 || write < 0 {
        Ok(JobserverAuth::Disabled)
    } else {
        Ok(JobserverAuth::Fds { read, write })
    }
}

/// Splits on white space; a backslash makes the next character part of the word.
fn split_words(value: &str) -> Result<Vec<String>, MakeFlagsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let escaped = chars
                .next()
                .ok_or_else(|| MakeFlagsError::new(MakeFlagsErrorKind::TrailingBackslash, value))?;
            word.push(escaped);
            in_word = true;
        } else if c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
        } else {
            word.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn escape_word(word: &str) -> String {
    let mut escaped = String::with_capacity(word.len());
    for c in word.chars() {
        if c.is_whitespace() || c == '\\' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> Option<JobserverAuth> {
        MakeFlags::parse(value).unwrap().jobserver().cloned()
    }

    #[test]
    fn reads_every_form_make_writes() {
        assert_eq!(
            auth(" -j4 --jobserver-auth=fifo:/tmp/GMfifo123"),
            Some(JobserverAuth::Fifo("/tmp/GMfifo123".into()))
        );
        assert_eq!(
            auth(" -j4 --jobserver-auth=3,4"),
            Some(JobserverAuth::Fds { read: 3, write: 4 })
        );
        assert_eq!(auth("-j --jobserver-fds=5,6"), Some(JobserverAuth::Fds { read: 5, write: 6 }));
        assert_eq!(auth(" --jobserver-auth=-2,-2"), Some(JobserverAuth::Disabled));
        assert_eq!(auth(" --jobserver-auth=-1,4"), Some(JobserverAuth::Disabled));
        assert_eq!(auth("ks -j2"), None);
        assert_eq!(auth(""), None);
    }

    #[test]
    fn the_last_occurrence_wins_across_both_spellings() {
        let value = "--jobserver-auth=fifo:/a --jobserver-fds=3,4 --jobserver-auth=fifo:/b";
        assert_eq!(auth(value), Some(JobserverAuth::Fifo("/b".into())));
        assert_eq!(
            auth("--jobserver-auth=fifo:/a --jobserver-fds=7,8"),
            Some(JobserverAuth::Fds { read: 7, write: 8 })
        );
    }

    #[test]
    fn dry_run_only_from_the_short_flag_cluster() {
        assert!(MakeFlags::parse("kn -j4 --jobserver-auth=3,4").unwrap().is_dry_run());
        assert!(MakeFlags::parse("-n").unwrap().is_dry_run());
        assert!(!MakeFlags::parse(" -j4 --no-print-directory").unwrap().is_dry_run());
        assert!(!MakeFlags::parse("ks -- n=1").unwrap().is_dry_run());
    }

    #[test]
    fn overrides_are_not_searched_for_a_jobserver() {
        let flags = MakeFlags::parse(" -j2 -- CFLAGS=--jobserver-auth=1,2").unwrap();
        assert_eq!(flags.jobserver(), None);
        assert_eq!(flags.overrides, vec!["CFLAGS=--jobserver-auth=1,2"]);
    }

    #[test]
    fn malformed_values_are_typed_and_quote_the_text() {
        for (value, kind, quoted) in [
            ("--jobserver-auth=3", MakeFlagsErrorKind::BadJobserverAuth, "3"),
            ("--jobserver-auth=a,b", MakeFlagsErrorKind::BadJobserverAuth, "a,b"),
            ("--jobserver-fds=3,", MakeFlagsErrorKind::BadJobserverAuth, "3,"),
            ("--jobserver-auth=", MakeFlagsErrorKind::BadJobserverAuth, ""),
            ("--jobserver-auth=fifo:", MakeFlagsErrorKind::EmptyFifoPath, "fifo:"),
            (" -jx", MakeFlagsErrorKind::BadJobs, "-jx"),
            (" -j0", MakeFlagsErrorKind::BadJobs, "-j0"),
            ("-j4 \\", MakeFlagsErrorKind::TrailingBackslash, "-j4 \\"),
        ] {
            let error = MakeFlags::parse(value).unwrap_err();
            assert_eq!(error.kind(), kind, "{value}");
            assert_eq!(error.text(), quoted, "{value}");
            assert!(error.to_string().contains(&format!("{quoted:?}")), "{error}");
        }
    }

    #[test]
    fn writes_what_make_writes_and_reads_back() {
        let fifo = jobserver_makeflags(
            JobCount::new(8).unwrap(),
            JobserverAuth::Fifo("/run/steve/jobserver".into()),
        );
        assert_eq!(fifo, " -j8 --jobserver-auth=fifo:/run/steve/jobserver");
        let fds = jobserver_makeflags(
            JobCount::new(4).unwrap(),
            JobserverAuth::Fds { read: 3, write: 4 },
        );
        assert_eq!(fds, " -j4 --jobserver-fds=3,4 --jobserver-auth=3,4");
        let spaced = JobserverAuth::Fifo("/tmp/a dir/jobserver".into());
        assert_eq!(
            auth(&jobserver_makeflags(JobCount::new(2).unwrap(), spaced.clone())),
            Some(spaced)
        );
    }

    #[test]
    fn with_jobserver_keeps_the_other_flags() {
        let flags = MakeFlags::parse("ks -j9 --jobserver-auth=3,4 --no-print-directory -- V=1")
            .unwrap()
            .with_jobserver(Jobs::Limit(2), JobserverAuth::Fifo("/p".into()));
        assert_eq!(
            flags.to_string(),
            "ks -j2 --jobserver-auth=fifo:/p --no-print-directory -- V=1"
        );
    }

    #[test]
    fn environment_is_read_in_cargo_make_mflags_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(*v))
        };
        let found = from_env_with(env(&[("MAKEFLAGS", "-j2"), ("MFLAGS", "-j3")])).unwrap();
        assert_eq!(found.unwrap().variable, "MAKEFLAGS");
        let found = from_env_with(env(&[("MAKEFLAGS", "-j2"), ("CARGO_MAKEFLAGS", "")])).unwrap();
        assert_eq!(found.unwrap().variable, "CARGO_MAKEFLAGS");
        assert_eq!(from_env_with(env(&[])).unwrap(), None);
        let error = from_env_with(env(&[("MAKEFLAGS", "--jobserver-auth=x")])).unwrap_err();
        assert_eq!(error.to_string(), "malformed MAKEFLAGS");
        let cause = std::error::Error::source(&error).expect("the parse error is the cause");
        assert_eq!(
            cause.to_string(),
            "invalid jobserver option (expected fifo:PATH or R,W): \"x\""
        );
    }
}
