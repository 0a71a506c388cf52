//! `steve doctor`: each way out of the pool it knows, set up for real and found (MAKEFLAGS
//! naming no server, `-jN` given to make or ninja, an empty CARGO_MAKEFLAGS, make 4.3 and GCC 12
//! against a `fifo:` jobserver, ninja against a file that is not a FIFO, a missing device), and
//! nothing reported when the same clients can join.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use steve_tests::clients;
use steve_tests::steve::{command, fuse_server, FifoServer};

/// `steve doctor --json ARGS` with `env` set (and MAKEFLAGS' relatives cleared unless given):
/// its exit code and findings.
fn doctor(env: &[(&str, &str)], args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut doctor = command();
    doctor.arg("doctor").arg("--json").args(args);
    for variable in ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS", "MAKEOPTS"] {
        doctor.env_remove(variable);
    }
    for (name, value) in env {
        doctor.env(name, value);
    }
    let output = doctor.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("doctor said {output:?}: {error}"));
    let findings = report["findings"].as_array().unwrap().clone();
    assert_eq!(
        report["escapes"].as_u64().unwrap() as usize,
        findings.iter().filter(|f| f["verdict"] == "escape").count()
    );
    (output.status.code().unwrap(), findings)
}

/// The finding of `check`, which must be there once.
fn finding<'a>(findings: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    let matching: Vec<_> = findings.iter().filter(|f| f["check"] == check).collect();
    assert_eq!(matching.len(), 1, "findings of {check}: {findings:#?}");
    matching[0]
}

/// A folder for PATH holding `make`, `ninja` and `gcc` as links to the given programs.
fn path_with(dir: &Path, make: &Path, ninja: &Path, gcc: &Path) -> String {
    for (name, program) in [("make", make), ("ninja", ninja), ("gcc", gcc)] {
        std::os::unix::fs::symlink(program, dir.join(name)).unwrap();
    }
    format!("{}:/usr/bin:/bin", dir.display())
}

#[test]
fn makeflags_naming_no_server_is_an_escape() {
    let (code, findings) =
        doctor(&[("MAKEFLAGS", " -j4 --jobserver-auth=fifo:/nonexistent/jobserver")], &[]);
    assert_eq!(code, 1);
    let jobserver = finding(&findings, "jobserver");
    assert_eq!(jobserver["verdict"], "escape");
    assert!(jobserver["says"].as_str().unwrap().contains("does not exist"), "{jobserver}");
    let (code, findings) = doctor(&[("MAKEFLAGS", " -j4")], &[]);
    assert_eq!(code, 1);
    assert!(finding(&findings, "jobserver")["says"].as_str().unwrap().contains("-j4"));
}

#[test]
fn a_job_count_given_to_make_or_ninja_is_an_escape() {
    let server = FifoServer::start(2);
    let env = [("MAKEFLAGS", server.makeflags.as_str())];
    for args in [["--", "make", "-j8"], ["--", "ninja", "-j4"]] {
        let (code, findings) = doctor(&env, &args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(finding(&findings, "command")["verdict"], "escape", "{args:?}");
    }
    let (_, findings) = doctor(&env, &["--", "make", "-k", "all"]);
    assert_eq!(finding(&findings, "command")["verdict"], "ok");
    let (code, findings) = doctor(&[("MAKEFLAGS", &server.makeflags), ("MAKEOPTS", "-j16")], &[]);
    assert_eq!((code, &finding(&findings, "makeopts")["verdict"]), (1, &"escape".into()));
}

#[test]
fn an_empty_cargo_makeflags_is_an_escape() {
    let server = FifoServer::start(2);
    let (_, findings) = doctor(&[("MAKEFLAGS", &server.makeflags)], &[]);
    assert!(findings.iter().all(|f| f["check"] != "cargo"), "{findings:#?}");
    let (code, findings) =
        doctor(&[("MAKEFLAGS", &server.makeflags), ("CARGO_MAKEFLAGS", "")], &[]);
    assert_eq!(code, 1);
    assert_eq!(finding(&findings, "cargo")["verdict"], "escape");
}

/// make 4.3 and GCC 12 cannot open a `fifo:` jobserver; make 4.4.1 and ninja 1.13.2 can.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs make 4.4.1, ninja 1.13.2 and GCC 12, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn clients_that_cannot_open_the_jobserver_are_found_and_those_that_can_pass() {
    let server = FifoServer::start(2);
    let old = tempfile::tempdir().unwrap();
    let path = path_with(old.path(), &clients::make43(), &clients::ninja(), &clients::gcc12());
    let (code, findings) = doctor(&[("MAKEFLAGS", &server.makeflags), ("PATH", &path)], &[]);
    assert_eq!(code, 1);
    assert_eq!(finding(&findings, "jobserver")["verdict"], "ok", "{findings:#?}");
    for check in ["make", "gcc"] {
        let found = finding(&findings, check);
        assert_eq!(found["verdict"], "escape", "{found}");
        assert!(found["fix"].as_str().unwrap().contains("steve exec --pipe"), "{found}");
    }
    assert_eq!(finding(&findings, "ninja")["verdict"], "ok", "ninja takes a FIFO");

    let new = tempfile::tempdir().unwrap();
    let path = path_with(new.path(), &clients::make44(), &clients::ninja(), Path::new("/bin/true"));
    let (_, findings) = doctor(&[("MAKEFLAGS", &server.makeflags), ("PATH", &path)], &[]);
    assert_eq!(finding(&findings, "make")["verdict"], "ok", "{findings:#?}");
    // Inherited descriptors are what make 4.3 and GCC 12 take (the pipe is not close-on-exec:
    // doctor inherits it).
    let (read, write) = nix::unistd::pipe().unwrap();
    let fds = format!(" -j2 --jobserver-auth={},{}", read.as_raw_fd(), write.as_raw_fd());
    let old = tempfile::tempdir().unwrap();
    let path = path_with(old.path(), &clients::make43(), &clients::ninja(), &clients::gcc12());
    let (_, findings) = doctor(&[("MAKEFLAGS", &fds), ("PATH", &path)], &[]);
    for check in ["jobserver", "make", "gcc"] {
        assert_eq!(finding(&findings, check)["verdict"], "ok", "{check}: {findings:#?}");
    }
    drop((read, write));
}

/// Against a fuse server's file (not a FIFO), ninja 1.13.2 is sent to the companion FIFO.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root, /dev/fuse and ninja 1.13.2; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn ninja_against_a_device_file_is_sent_to_the_companion_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let (_server, file, _) = fuse_server(&mountpoint, 3);
    let makeflags = format!(" -j3 --jobserver-auth=fifo:{}", file.display());
    let makeflags = makeflags.as_str();
    let bin = tempfile::tempdir().unwrap();
    let path =
        path_with(bin.path(), Path::new("/bin/false"), &clients::ninja(), Path::new("/bin/false"));
    let (code, findings) = doctor(&[("MAKEFLAGS", makeflags), ("PATH", &path)], &[]);
    assert_eq!(code, 1);
    assert!(finding(&findings, "jobserver")["says"]
        .as_str()
        .unwrap()
        .contains("served by steve (fuse)"));
    let ninja = finding(&findings, "ninja");
    assert_eq!(ninja["verdict"], "escape");
    let companion: PathBuf = steve_core::paths::control_beside(&mountpoint).with_extension("fifo");
    assert!(ninja["fix"].as_str().unwrap().contains(companion.to_str().unwrap()), "{ninja}");
}

/// A /dev/fuse that is not the device (a file bind-mounted over it, in a mount namespace of the
/// doctor's own) is found.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root (a mount namespace); scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_missing_device_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("not-fuse");
    std::fs::write(&fake, "").unwrap();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /dev/fuse && exec "$@""#)
        .arg(&fake)
        .arg(steve_tests::steve::binary())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let fuse: Vec<_> = findings
        .iter()
        .filter(|f| f["check"] == "devices" && f["says"].as_str().unwrap().contains("/dev/fuse"))
        .collect();
    assert_eq!(fuse.len(), 1, "{findings:#?}");
    assert!(fuse[0]["says"].as_str().unwrap().starts_with("no /dev/fuse"), "{}", fuse[0]);
    assert!(fuse[0]["fix"].as_str().unwrap().contains("modprobe fuse"));
}
