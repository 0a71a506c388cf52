//! `steve serve --backend fifo` beyond the compliance suite: three makes and ninja 1.13.2 share
//! the pool, SIGUSR1 reports, stop signals remove the pipe and what steve made, and the pipe's
//! mode and group. (One make, two makes and the rest run against every backend in the
//! compliance suite: `src/bin/compliance/`.)

use nix::sys::signal::Signal;
use steve_tests::steve::FifoServer;
use steve_tests::{assert_success, clients, projects, timeline};

const JOBS: u32 = 3;

fn concurrent_makes(makes: usize) {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let children: Vec<_> = (0..makes)
        .map(|n| {
            let project = dir.path().join(format!("make{n}"));
            std::fs::create_dir(&project).unwrap();
            projects::makefile(&project, &format!("m{n}"), 6, 0.4, &log);
            server.client(clients::make44()).current_dir(&project).spawn().unwrap()
        })
        .collect();
    for child in children {
        assert_success(&child.wait_with_output().unwrap(), "make 4.4.1");
    }
    // The pool plus one implicit token per make.
    let bound = JOBS as usize + makes;
    let what = format!("{makes} makes 4.4.1 at once on the fifo server with {JOBS} tokens");
    timeline::assert_peak_within(&log, 6 * makes, bound, &what);
    assert_eq!(server.tokens(), JOBS as usize);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn three_makes_share_the_pool() {
    concurrent_makes(3);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs ninja 1.13.2, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn ninja_1_13_2_stays_within_the_pool_plus_its_implicit_token() {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::ninja_file(dir.path(), 10, 0.4, &log);

    let output = server.client(clients::ninja()).current_dir(dir.path()).output().unwrap();
    assert_success(&output, "ninja");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("Not a fifo"), "ninja refused the pipe: {stdout}");

    let what = format!("ninja 1.13.2 on the fifo server with {JOBS} tokens");
    timeline::assert_peak_within(&log, 10, JOBS as usize + 1, &what);
    assert_eq!(server.tokens(), JOBS as usize);
}

#[test]
fn sigusr1_logs_a_status_report_and_sigterm_removes_the_pipe() {
    let server = FifoServer::start(JOBS);
    server.signal(Signal::SIGUSR1);
    server.wait_for_log("fifo jobserver");
    let tokens = server.wait_for_log("tokens:");
    assert!(
        tokens.contains(&format!(
            "tokens: {JOBS} jobs, {JOBS} in the pool: {JOBS} free, 0 held, 0 withheld"
        )),
        "{tokens}"
    );
    let waiters = server.wait_for_log("waiters:");
    assert!(waiters.contains("waiters: unknown"), "{waiters}");

    let path = server.path.clone();
    let lock = path.with_extension("lock");
    assert!(lock.exists());
    let status = server.stop_with(Signal::SIGTERM);
    assert!(status.success(), "steve exited with {status}");
    assert!(!path.exists(), "the pipe is still there after SIGTERM");
    assert!(!lock.exists(), "the lock file is still there after SIGTERM");
}

#[test]
fn sigint_stops_the_server_cleanly_too() {
    let server = FifoServer::start(1);
    let path = server.path.clone();
    let status = server.stop_with(Signal::SIGINT);
    assert!(status.success(), "steve exited with {status}");
    assert!(!path.exists());
}

#[test]
fn a_directory_steve_made_is_removed_at_exit_and_one_it_found_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made-by-steve");
    let path = made.join("jobserver");
    let server = FifoServer::start_at(&path, &dir.path().join("steve.log"), &["-j", "1"]).unwrap();
    assert!(made.is_dir());
    assert!(server.stop_with(Signal::SIGTERM).success());
    assert!(!made.exists(), "the directory steve made is still there");
    assert!(dir.path().join("steve.log").exists(), "a file steve did not make was removed");
}

#[test]
fn mode_and_group_options_set_the_pipes_access() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let own_gid = nix::unistd::getegid();
    let group = nix::unistd::Group::from_gid(own_gid).unwrap().expect("own group has a name");
    let path = dir.path().join("jobserver");
    let log = dir.path().join("steve.log");
    let server =
        FifoServer::start_at(&path, &log, &["--mode", "0640", "--group", &group.name]).unwrap();
    let metadata = std::fs::metadata(&server.path).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o640);
    assert_eq!(metadata.gid(), own_gid.as_raw());
    drop(server);

    if !nix::unistd::geteuid().is_root() {
        // Without --mode a user's own server is theirs alone.
        let server = FifoServer::start(1);
        let mode = std::fs::metadata(&server.path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "default mode {mode:o}");
    }
}

/// A root fifo server started where `/etc/group` is `groups` (bind-mounted over the real one
/// in a mount namespace of its own, so nothing else on the machine sees it).
fn root_server_with_groups(dir: &std::path::Path, groups: &str) -> FifoServer {
    let group_file = dir.join("group");
    std::fs::write(&group_file, groups).unwrap();
    let path = dir.join("jobserver");
    let mut serve = std::process::Command::new("unshare");
    serve
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/group && exec "$@""#)
        .arg(&group_file)
        .arg(steve_tests::steve::binary())
        .args(["serve", "--backend", "fifo", "-j", "1", "--path"])
        .arg(&path);
    FifoServer::start_command(serve, &path, &dir.join("steve.log")).unwrap()
}

/// Without --mode and --group, root's machine-wide server gives its pipe to the group
/// `jobserver`, mode 0660, when that group exists; without it, 0666 and a warning that says
/// any local user may take every token, and how to fix it.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root (a mount namespace); scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn root_servers_default_to_the_jobserver_group_and_warn_without_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let real = std::fs::read_to_string("/etc/group").unwrap();
    let without: String = real
        .lines()
        .filter(|line| !line.starts_with("jobserver:"))
        .map(|line| format!("{line}\n"))
        .collect();
    let with = format!("{without}jobserver:x:54321:\n");

    let dir = tempfile::tempdir().unwrap();
    let server = root_server_with_groups(dir.path(), &with);
    let metadata = std::fs::metadata(&server.path).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o660);
    assert_eq!(metadata.gid(), 54321);
    let control = std::fs::symlink_metadata(&server.control).unwrap();
    assert_eq!((control.permissions().mode() & 0o777, control.gid()), (0o660, 54321));
    assert!(!server.log().contains("0666"), "{}", server.log());
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = root_server_with_groups(dir.path(), &without);
    let metadata = std::fs::metadata(&server.path).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o666);
    assert_eq!(metadata.gid(), 0);
    let log = server.log();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("any local user may take and hold every token"), "{log}");
    assert!(warnings[0].contains("groupadd --system jobserver"), "{log}");
}
