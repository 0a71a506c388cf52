//! `steve run`: make 4.3 and make 4.4.1 under a private jobserver, exit statuses, signals passed
//! on, and the warning about tokens not returned.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steve_tests::steve::{command, stderr_lines};
use steve_tests::{assert_success, clients, projects, timeline, wait_for};

const JOBS: u32 = 3;

/// `steve run` with no jobserver inherited from the test's own environment.
fn steve_run(args: &[&str]) -> Command {
    let mut run = command();
    run.arg("run")
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    run
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs Debian's make 4.3, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn make_4_3_under_steve_run_stays_within_n() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::makefile(dir.path(), "job", 10, 0.4, &log);
    let output = steve_run(&["-j", &JOBS.to_string(), "--"])
        .arg(clients::make43())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&output, "make 4.3 under steve run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("jobserver"), "make complained about the jobserver: {stderr}");
    let what = format!("make 4.3 under steve run -j{JOBS}");
    timeline::assert_peak_within(&log, 10, JOBS as usize, &what);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn make_4_4_1_under_steve_run_style_fifo_stays_within_n_and_the_pipe_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let makefile = projects::makefile(dir.path(), "job", 10, 0.4, &log);
    // One more rule records the MAKEFLAGS make's jobs see, to find the private pipe.
    let flags_file = dir.path().join("makeflags");
    let mut text = std::fs::read_to_string(&makefile).unwrap();
    text.push_str(&format!(
        "all: flags\nflags:\n\t@printf '%s' \"$$MAKEFLAGS\" > {}\n",
        flags_file.display()
    ));
    std::fs::write(&makefile, text).unwrap();

    let output = steve_run(&["-j", &JOBS.to_string(), "--style", "fifo", "--"])
        .arg(clients::make44())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&output, "make 4.4.1 under steve run --style fifo");
    let what = format!("make 4.4.1 under steve run -j{JOBS} --style fifo");
    timeline::assert_peak_within(&log, 10, JOBS as usize, &what);

    let flags = std::fs::read_to_string(&flags_file).unwrap();
    let fifo = flags
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--jobserver-auth=fifo:"))
        .unwrap_or_else(|| panic!("no fifo in {flags:?}"));
    assert!(!std::path::Path::new(fifo).exists(), "{fifo} was left behind");
}

#[test]
fn the_commands_exit_status_is_steves() {
    let status = steve_run(&["--", "sh", "-c", "exit 7"]).status().unwrap();
    assert_eq!(status.code(), Some(7));
    let status = steve_run(&["--", "sh", "-c", "kill -KILL $$"]).status().unwrap();
    assert_eq!(status.code(), Some(128 + 9));
    let output = steve_run(&["--", "/nonexistent/command"]).output().unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(stderr_lines(&output).len(), 1, "{:?}", stderr_lines(&output));
}

#[test]
fn sigusr1_reports_and_sigterm_reaches_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let log = dir.path().join("steve.log");
    let script =
        format!("trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done", ready.display());
    let mut child = steve_run(&["-j", "4", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the command to start", Duration::from_secs(20), || ready.exists().then_some(()));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
    let report = wait_for("a status report", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("pipe jobserver").then_some(())?;
        text.lines().find(|line| line.starts_with("tokens:")).map(str::to_string)
    });
    // The command's implicit token is one of the 4 jobs but never in the pipe.
    assert!(report.contains("tokens: 4 jobs, 3 in the pool: 3 free, 0 held"), "{report}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42), "the command did not see SIGTERM: {status}");
}

#[test]
fn a_token_not_returned_is_reported() {
    // The command takes one token from the private named pipe and exits holding it.
    let script = r#"p="${MAKEFLAGS##*fifo:}"; dd if="$p" of=/dev/null bs=1 count=1 2>/dev/null"#;
    let output =
        steve_run(&["-j", "3", "--style", "fifo", "--", "sh", "-c", script]).output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 of 2 jobserver tokens were not returned"), "{stderr}");

    let output = steve_run(&["-j", "3", "--", "true"]).output().unwrap();
    assert!(
        stderr_lines(&output).is_empty(),
        "warned with every token back: {:?}",
        stderr_lines(&output)
    );
}

#[test]
fn the_other_makeflags_are_kept_for_the_command() {
    let output = steve_run(&["-j", "2", "--", "sh", "-c", "printf '%s' \"$MAKEFLAGS\""])
        .env("MAKEFLAGS", "k --no-print-directory -- V=1")
        .output()
        .unwrap();
    let flags = String::from_utf8_lossy(&output.stdout);
    assert!(flags.starts_with("k -j2 --jobserver-fds="), "{flags}");
    assert!(flags.ends_with("--no-print-directory -- V=1"), "{flags}");
}
