//! Bad input gets one clear error line and a non-zero exit, and steve deletes nothing it did not
//! create: malformed MAKEFLAGS, a path that is not a pipe, a pipe steve did not make, a second
//! daemon, an unwritable directory, a fuse mount point that is a file or another filesystem's.
//! A crashed daemon's leftovers are replaced.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::signal::Signal;
use steve_tests::steve::{binary, command, stderr_lines, FifoServer, StartFailure};

fn serve_fails(path: &Path, args: &[&str]) -> StartFailure {
    let log = path.parent().unwrap().join("refused-steve.log");
    match FifoServer::start_at(path, &log, args) {
        Ok(server) => panic!("steve served {} where it should have refused", server.path.display()),
        Err(failure) => {
            assert!(!failure.status.success());
            assert_eq!(
                failure.stderr_lines.len(),
                1,
                "not one error line: {:?}",
                failure.stderr_lines
            );
            failure
        }
    }
}

#[test]
fn malformed_makeflags_in_steve_runs_environment() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for (variable, value, quoted) in [
        ("MAKEFLAGS", " -j4 --jobserver-auth=3", "\"3\""),
        ("MAKEFLAGS", "--jobserver-auth=fifo:", "\"fifo:\""),
        ("CARGO_MAKEFLAGS", "-j --jobserver-fds=x,4", "\"x,4\""),
    ] {
        let output = command()
            .args(["run", "--", "touch"])
            .arg(&marker)
            .env_remove("MAKEFLAGS")
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MFLAGS")
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(125));
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&format!("malformed {variable}")), "{}", lines[0]);
        assert!(lines[0].contains(quoted), "{} does not quote {quoted}", lines[0]);
        assert!(!marker.exists(), "the command ran despite the malformed {variable}");
    }
}

#[test]
fn a_regular_file_at_the_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    fs::write(&path, "precious").unwrap();
    let failure = serve_fails(&path, &["-j", "2"]);
    assert!(
        failure.stderr_lines[0].contains("is a regular file, not a named pipe"),
        "{:?}",
        failure.stderr_lines
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    assert!(!dir.path().join("jobserver.lock").exists(), "steve left its lock file behind");
}

#[test]
fn a_directory_at_the_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), "x").unwrap();
    let failure = serve_fails(&path, &[]);
    assert!(failure.stderr_lines[0].contains("is a directory"), "{:?}", failure.stderr_lines);
    assert!(path.join("inside").exists());
}

#[test]
fn a_named_pipe_steve_did_not_make_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let failure = serve_fails(&path, &[]);
    assert!(
        failure.stderr_lines[0].contains("named pipe that steve did not create"),
        "{:?}",
        failure.stderr_lines
    );
    assert!(path.exists());
}

#[test]
fn a_second_daemon_on_the_same_path_is_refused_and_the_first_keeps_serving() {
    let first = FifoServer::start(3);
    let failure = serve_fails(&first.path, &["-j", "5"]);
    let expected = format!("another steve (pid {}) is already serving", first.pid());
    assert!(failure.stderr_lines[0].contains(&expected), "{:?}", failure.stderr_lines);
    assert_eq!(first.tokens(), 3, "the first daemon's pool was touched");
}

#[test]
fn a_pipe_left_by_a_killed_daemon_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    let crashed = FifoServer::start_at(&path, &dir.path().join("first.log"), &["-j", "2"]).unwrap();
    let crashed_pid = crashed.pid();
    crashed.stop_with(Signal::SIGKILL);
    assert!(path.exists(), "a SIGKILLed steve cannot clean up");

    let server = FifoServer::start_at(&path, &dir.path().join("second.log"), &["-j", "3"]).unwrap();
    let line = server.wait_for_log("replacing the stale pipe");
    assert!(line.contains(&format!("pid {crashed_pid}")), "{line}");
    assert_eq!(server.tokens(), 3);
}

#[test]
fn an_unwritable_directory_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    let path = locked.join("jobserver");
    let mut serve = if nix::unistd::geteuid().is_root() {
        // Root may write anywhere: run steve as nobody, from a copy nobody can reach.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.path().join("steve");
        fs::copy(binary(), &copy).unwrap();
        steve_tests::command_as(65534, 65534, copy)
    } else {
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        command()
    };
    let output = serve.args(["serve", "--backend", "fifo", "--path"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("Permission denied") && lines[0].contains(&locked.display().to_string()),
        "{}",
        lines[0]
    );
    assert_eq!(fs::read_dir(&locked).unwrap().count(), 0, "steve left something in the directory");
}

#[test]
fn a_job_count_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let failure = serve_fails(&dir.path().join("jobserver"), &["-j", "0"]);
    assert!(
        failure.stderr_lines[0].contains("job count 0 is out of range"),
        "{:?}",
        failure.stderr_lines
    );
}

#[test]
fn an_unknown_group_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    let failure = serve_fails(&path, &["--group", "no-such-group-steve"]);
    assert!(
        failure.stderr_lines[0].contains("no such group: no-such-group-steve"),
        "{:?}",
        failure.stderr_lines
    );
    assert!(!path.exists());
}

/// `steve serve --backend fuse ARGS`, expected to refuse: one error line containing `message`.
fn fuse_serve_refuses(mountpoint: &Path, extra: &[&str], message: &str) {
    let output = command()
        .args(["serve", "--backend", "fuse", "-j", "2", "--mountpoint"])
        .arg(mountpoint)
        .args(extra)
        .output()
        .unwrap();
    assert!(!output.status.success(), "steve served on {}", mountpoint.display());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "not one error line: {lines:?}");
    assert!(lines[0].contains(message), "{} does not say {message:?}", lines[0]);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn fuse_refuses_a_file_a_foreign_mount_and_options_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    fs::write(&file, "precious").unwrap();
    fuse_serve_refuses(&file, &[], "is not a directory");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
    // /proc is a mount point of procfs on every Linux machine.
    fuse_serve_refuses(Path::new("/proc"), &[], "mount point of a proc filesystem");
    let free = dir.path().join("mnt");
    fuse_serve_refuses(&free, &["--user", "nobody"], "--user does not apply to backend fuse");
    assert!(!free.exists(), "{} was made for a server that refused", free.display());
}

/// A user whose XDG_RUNTIME_DIR is relative (or missing) gets no default place: a relative path
/// would go into MAKEFLAGS, and a fixed name in /tmp is another user's to take first.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_user_without_an_absolute_runtime_directory_must_name_the_place() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("steve");
    fs::copy(binary(), &copy).unwrap();
    let (uid, gid) = steve_tests::attacker();
    for (runtime, backend, message) in [
        (Some("relative/dir"), "fifo", "there is no default jobserver path: give --path"),
        (None, "fifo", "there is no default jobserver path: give --path"),
        (Some("relative/dir"), "auto", "there is no default"),
    ] {
        let mut serve = steve_tests::command_as(uid, gid, &copy);
        serve.args(["serve", "--backend", backend]).current_dir(dir.path());
        match runtime {
            Some(value) => serve.env("XDG_RUNTIME_DIR", value),
            None => serve.env_remove("XDG_RUNTIME_DIR"),
        };
        let output = steve_tests::output_within(&mut serve, std::time::Duration::from_secs(20))
            .expect("steve served without a place");
        assert_eq!(output.status.code(), Some(2), "{runtime:?} {backend}: {output:?}");
        let lines: Vec<String> =
            stderr_lines(&output).into_iter().filter(|line| !line.contains(" INFO ")).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(message), "{}", lines[0]);
    }
    assert!(!dir.path().join("relative").exists(), "steve made the relative directory");
}
