//! `steve doctor [-- CMD]`: what would make a build started from here escape the machine's
//! pool, and the fix for each. It looks at this process's environment (the shell's, as it was
//! started from there), the clients on PATH against the kind of jobserver MAKEFLAGS names, the
//! command line given after `--`, and the kernel devices steve's servers need.
//!
//! Each finding is `ok`, `escape` (a build would run outside the pool, or run without a
//! jobserver at all) or `note` (something to know that loses no job slot). The exit status is 1
//! when anything escapes, so that a script can check a build environment.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use steve_core::makeflags::{self, Jobs, JobserverAuth};
use steve_core::server::backend::{auto_order, default_places};
use steve_core::server::control::{ask, Request, Response};
use steve_core::status::StatusReport;

use crate::output;

/// Options of `steve doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// A build command to check as well (`steve doctor -- make -j8`).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// How a finding bears on the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Note,
    Escape,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Note => "note",
            Verdict::Escape => "escape",
        })
    }
}

/// One finding: what was checked, what it found, and the fix when something escapes.
#[derive(Debug, Clone)]
struct Finding {
    check: &'static str,
    verdict: Verdict,
    says: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, says: impl Into<String>) -> Finding {
        Finding { check, verdict: Verdict::Ok, says: says.into(), fix: None }
    }

    fn note(check: &'static str, says: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, verdict: Verdict::Note, says: says.into(), fix: Some(fix.into()) }
    }

    fn escape(check: &'static str, says: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { check, verdict: Verdict::Escape, says: says.into(), fix: Some(fix.into()) }
    }
}

/// What kind of file the jobserver is, which decides which clients can open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A real named pipe: every client that speaks `fifo:`.
    Fifo,
    /// A character device or a FUSE file: not for ninja (it wants a real FIFO).
    NotAFifo,
    /// Inherited descriptors `R,W`.
    Descriptors,
}

/// What the environment names, for the client checks.
#[derive(Debug, Default)]
struct Jobserver {
    kind: Option<Kind>,
    /// The running server's report, when one answers for it.
    status: Option<StatusReport>,
}

/// Runs `steve doctor`; returns whether anything escapes.
pub fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let mut findings = Vec::new();
    let jobserver = check_environment(&mut findings);
    check_clients(&jobserver, &mut findings);
    if !args.command.is_empty() {
        findings.push(check_command(&args.command));
    }
    check_devices(&mut findings);
    let escapes = findings.iter().filter(|f| f.verdict == Verdict::Escape).count();
    if args.json {
        let list: Vec<_> = findings
            .iter()
            .map(|f| {
                json!({"check": f.check, "verdict": f.verdict.to_string(), "says": f.says,
                       "fix": f.fix})
            })
            .collect();
        output::line(&serde_json::to_string_pretty(
            &json!({"findings": list, "escapes": escapes}),
        )?)?;
    } else {
        for finding in &findings {
            output::line(&format!("{:<7} {}: {}", finding.verdict, finding.check, finding.says))?;
            if let Some(fix) = &finding.fix {
                output::line(&format!("        fix: {fix}"))?;
            }
        }
        let summary = match escapes {
            0 => "nothing here escapes the pool".to_string(),
            n => format!("{n} way(s) out of the pool"),
        };
        output::line(&summary)?;
    }
    Ok(escapes > 0)
}

/// MAKEFLAGS (CARGO_MAKEFLAGS, MFLAGS) and what it names.
fn check_environment(findings: &mut Vec<Finding>) -> Jobserver {
    let mut jobserver = Jobserver::default();
    if std::env::var_os("CARGO_MAKEFLAGS").is_some_and(|value| value.is_empty()) {
        findings.push(Finding::escape(
            "cargo",
            "CARGO_MAKEFLAGS is set and empty: cargo reads it before MAKEFLAGS, finds no \
             jobserver, and runs as many jobs as there are CPUs",
            "unset CARGO_MAKEFLAGS",
        ));
    }
    if let Some(opts) = std::env::var("MAKEOPTS").ok().filter(|opts| gives_job_count(opts)) {
        findings.push(Finding::escape(
            "makeopts",
            format!(
                "MAKEOPTS={opts:?} gives make a -j on its command line: each make then makes a \
                 jobserver of its own ('-jN forced in submake: resetting jobserver mode')"
            ),
            "leave -j out of MAKEOPTS (keep -l if you like); MAKEFLAGS carries the jobserver",
        ));
    }
    let found = match makeflags::from_env() {
        Ok(found) => found,
        Err(error) => {
            findings.push(Finding::escape(
                "jobserver",
                format!("{error}: clients cannot use it"),
                "set MAKEFLAGS to what `steve serve` printed, or unset it",
            ));
            return jobserver;
        }
    };
    let Some(found) = found else {
        let serving = default_places().into_iter().find(|place| place.jobserver.exists());
        findings.push(match serving {
            Some(place) => Finding::escape(
                "jobserver",
                format!(
                    "no MAKEFLAGS: builds started here do not join steve's pool at {}",
                    place.jobserver.display()
                ),
                format!(
                    "export MAKEFLAGS=' -j{} --jobserver-auth=fifo:{}', or start builds as \
                     `steve exec -- CMD`",
                    server_jobs(&place.control).unwrap_or_else(|| "N".into()),
                    place.jobserver.display()
                ),
            ),
            None => Finding::escape(
                "jobserver",
                "no MAKEFLAGS, and no steve serving on this machine: every build sizes itself",
                "start one (`steve serve`) and export the MAKEFLAGS it prints",
            ),
        });
        return jobserver;
    };
    let variable = found.variable;
    match found.flags.jobserver() {
        None => {
            if let Some(Jobs::Limit(n)) = found.flags.jobs {
                findings.push(Finding::escape(
                    "jobserver",
                    format!(
                        "{variable} gives -j{n} but no jobserver: each make runs {n} by itself"
                    ),
                    "export the MAKEFLAGS `steve serve` printed",
                ));
            } else {
                findings.push(Finding::escape(
                    "jobserver",
                    format!("{variable} names no jobserver"),
                    "export the MAKEFLAGS `steve serve` printed",
                ));
            }
        }
        Some(JobserverAuth::Disabled) => findings.push(Finding::escape(
            "jobserver",
            format!("{variable} disables the jobserver (--jobserver-auth=-2,-2)"),
            "export the MAKEFLAGS `steve serve` printed",
        )),
        Some(JobserverAuth::Fds { read, write }) => {
            jobserver.kind = Some(Kind::Descriptors);
            let open = |fd: i32| Path::new(&format!("/proc/self/fd/{fd}")).exists();
            findings.push(if open(*read) && open(*write) {
                Finding::ok(
                    "jobserver",
                    format!("{variable} names descriptors {read},{write}, inherited here"),
                )
            } else {
                Finding::escape(
                    "jobserver",
                    format!(
                        "{variable} names descriptors {read},{write}, which this shell does not \
                         have: only the make that made them and its children do"
                    ),
                    "export the MAKEFLAGS `steve serve` printed (a fifo: path works anywhere)",
                )
            });
        }
        Some(JobserverAuth::Fifo(path)) => {
            check_fifo_path(variable, path, &mut jobserver, findings);
        }
    }
    jobserver
}

/// A `fifo:PATH` jobserver: whether it exists, what it is, and whether steve serves it.
fn check_fifo_path(
    variable: &str,
    path: &Path,
    jobserver: &mut Jobserver,
    findings: &mut Vec<Finding>,
) {
    let Ok(metadata) = std::fs::metadata(path) else {
        findings.push(Finding::escape(
            "jobserver",
            format!(
                "{variable} names {}, which does not exist: clients find no jobserver",
                path.display()
            ),
            "start the server, or export the MAKEFLAGS of the one running (`steve status`)",
        ));
        return;
    };
    let kind = if metadata.file_type().is_fifo() { Kind::Fifo } else { Kind::NotAFifo };
    jobserver.kind = Some(kind);
    let controls: Vec<PathBuf> =
        auto_order().into_iter().flat_map(|backend| (backend.places.control_for)(path)).collect();
    jobserver.status = controls.iter().find_map(|control| status_of(control));
    findings.push(match &jobserver.status {
        Some(status) => Finding::ok(
            "jobserver",
            format!(
                "{variable} names {}, served by steve ({}): {} jobs, {} free",
                path.display(),
                status.backend,
                status.pool.jobs,
                status.pool.free
            ),
        ),
        None if kind == Kind::Fifo => Finding::note(
            "jobserver",
            format!(
                "{variable} names the named pipe {}, which no steve answers for (a make's own, \
                 or another server's)",
                path.display()
            ),
            "nothing, if that is what you meant; `steve status` shows a steve's",
        ),
        None => Finding::escape(
            "jobserver",
            format!(
                "{variable} names {}, which is not a named pipe and which no steve serves",
                path.display()
            ),
            "export the MAKEFLAGS of the running server (`steve status`)",
        ),
    });
}

/// The clients on PATH against the jobserver's kind.
fn check_clients(jobserver: &Jobserver, findings: &mut Vec<Finding>) {
    let Some(kind) = jobserver.kind else { return };
    if let Some((path, version)) = version_of("make", &["--version"], "GNU Make ") {
        let major_minor = numbers(&version);
        findings.push(if kind != Kind::Descriptors && major_minor < (4, 4) {
            Finding::escape(
                "make",
                format!(
                    "GNU make {version} ({}) cannot open a fifo: jobserver and runs its own",
                    path.display()
                ),
                "run it as `steve exec --pipe -- make ...`, or install GNU make 4.4 or later",
            )
        } else {
            Finding::ok("make", format!("GNU make {version} ({}) joins it", path.display()))
        });
    }
    if let Some((path, version)) = version_of("ninja", &["--version"], "") {
        let version = numbers(&version);
        findings.push(if version < (1, 13) {
            Finding::escape(
                "ninja",
                format!(
                    "ninja {}.{} ({}) has no jobserver client: it runs as many jobs as it likes",
                    version.0,
                    version.1,
                    path.display()
                ),
                "install ninja 1.13 or later",
            )
        } else if kind != Kind::Fifo {
            let companion = jobserver.status.as_ref().and_then(|status| status.companion.clone());
            Finding::escape(
                "ninja",
                format!(
                    "ninja {}.{} ({}) takes only a real FIFO (\"Not a fifo path\") and runs its \
                     own -j without it",
                    version.0,
                    version.1,
                    path.display()
                ),
                match companion {
                    Some(fifo) => format!(
                        "give ninja the companion FIFO: MAKEFLAGS=' -j{} --jobserver-auth=fifo:{}' \
                         (STEVE_FIFO_MAKEFLAGS), or run `steve exec --fifo -- ninja`",
                        jobserver.status.as_ref().map_or(0, |status| status.pool.jobs),
                        fifo.path.display()
                    ),
                    None => "run it as `steve exec --fifo -- ninja`".to_string(),
                },
            )
        } else {
            Finding::ok("ninja", format!("ninja ({}) joins the FIFO", path.display()))
        });
    }
    if let Some((path, version)) = version_of("gcc", &["-dumpversion"], "") {
        let major = numbers(&version).0;
        findings.push(if kind != Kind::Descriptors && major < 13 {
            Finding::escape(
                "gcc",
                format!(
                    "GCC {version} ({}): -flto=jobserver takes only inherited descriptors, so \
                     its LTO links run make -j<CPUs> outside the pool",
                    path.display()
                ),
                "run the build (the make that links) as `steve exec --pipe -- make ...`, or \
                 use GCC 13 or later",
            )
        } else {
            Finding::ok("gcc", format!("GCC {version} ({}) joins it", path.display()))
        });
    }
}

/// A build command given after `--`.
fn check_command(command: &[OsString]) -> Finding {
    let program = Path::new(&command[0]);
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let args: Vec<String> = command[1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let job_count = job_count_in(&args);
    let shown = std::iter::once(name.clone()).chain(args.iter().cloned()).collect::<Vec<_>>();
    let shown = shown.join(" ");
    match (name.as_str(), job_count) {
        (make, Some(n)) if make == "make" || make == "gmake" || make.starts_with("make-") => {
            Finding::escape(
                "command",
                format!("`{shown}`: -j{n} makes make start a jobserver of its own"),
                "leave -j out (MAKEFLAGS carries the limit and the jobserver)",
            )
        }
        ("ninja" | "samu", Some(n)) => Finding::escape(
            "command",
            format!("`{shown}`: -j{n} turns ninja's jobserver client off"),
            "leave -j out",
        ),
        _ => Finding::ok("command", format!("`{shown}` gives no -j that leaves the pool")),
    }
}

/// The devices steve's servers serve through.
fn check_devices(findings: &mut Vec<Finding>) {
    use nix::unistd::{access, AccessFlags};
    for (device, what, fix) in [
        (
            "/dev/fuse",
            "the fuse backend (and every FUSE mount)",
            "modprobe fuse; give /dev/fuse mode 0666 (a udev rule) for users' own servers",
        ),
        ("/dev/cuse", "the cuse backend (/dev/steve)", "modprobe cuse, as root"),
    ] {
        let is_char = std::fs::metadata(device).is_ok_and(|m| m.file_type().is_char_device());
        let usable = is_char && access(device, AccessFlags::R_OK | AccessFlags::W_OK).is_ok();
        findings.push(if usable {
            Finding::ok("devices", format!("{device} is there for {what}"))
        } else if is_char {
            Finding::note("devices", format!("{device} cannot be opened by this user"), fix)
        } else {
            Finding::note("devices", format!("no {device}: {what} cannot run here"), fix)
        });
    }
}

/// The program `name` on PATH and its version: the first line of `args`' output, after
/// `prefix`, up to a blank. `None` when it is not installed.
fn version_of(name: &str, args: &[&str], prefix: &str) -> Option<(PathBuf, String)> {
    let path = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())?;
    let output = Command::new(&path).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next()?.trim();
    let version = first.strip_prefix(prefix)?.split_whitespace().next()?.to_string();
    Some((path, version))
}

/// `4.3` as (4, 3); missing parts are 0.
fn numbers(version: &str) -> (u32, u32) {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The job count in `-jN`, `-j N`, `--jobs=N` or `--jobs N` among `args`.
fn job_count_in(args: &[String]) -> Option<u32> {
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let count = if let Some(n) = word.strip_prefix("--jobs=") {
            Some(n.to_string())
        } else if word == "-j" || word == "--jobs" {
            words.next().cloned()
        } else {
            word.strip_prefix("-j").map(str::to_string)
        };
        if let Some(n) = count.and_then(|n| n.parse().ok()) {
            return Some(n);
        }
    }
    None
}

/// Whether make options (MAKEOPTS) give a job count.
fn gives_job_count(options: &str) -> bool {
    let words: Vec<String> = options.split_whitespace().map(str::to_string).collect();
    job_count_in(&words).is_some()
}

/// The status of the server on `control`, if one answers.
fn status_of(control: &Path) -> Option<StatusReport> {
    match ask(control, &Request::Status).ok()? {
        Response::Status { report } => Some(*report),
        _ => None,
    }
}

/// The `jobs` of the server on `control`, as text.
fn server_jobs(control: &Path) -> Option<String> {
    status_of(control).map(|status| status.pool.jobs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_counts_are_found_in_every_spelling() {
        let args = |text: &str| text.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(job_count_in(&args("-j8")), Some(8));
        assert_eq!(job_count_in(&args("-C src -j 3")), Some(3));
        assert_eq!(job_count_in(&args("--jobs=4")), Some(4));
        assert_eq!(job_count_in(&args("--jobs 5 all")), Some(5));
        assert_eq!(job_count_in(&args("-j all")), None, "-j alone is no count");
        assert_eq!(job_count_in(&args("-k")), None);
        assert!(gives_job_count("-j16 -l16") && !gives_job_count("-l16"));
    }

    #[test]
    fn versions_compare_by_their_numbers() {
        assert_eq!(numbers("4.3"), (4, 3));
        assert_eq!(numbers("1.13.2"), (1, 13));
        assert_eq!(numbers("12"), (12, 0));
        assert!(numbers("4.3") < (4, 4) && numbers("4.4.1") >= (4, 4));
    }
}
