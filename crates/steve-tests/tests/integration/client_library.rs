//! steve-core's client library against every server: make 4.4.1's own fifo jobserver and make
//! 4.3's pipe (the probe runs under `+` rules, so make hands it the jobserver), steve's fifo
//! backend, `steve run`, and `steve exec`. (The cuse device: in the VM tests.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use steve_tests::steve::{self, command, FifoServer};
use steve_tests::{assert_success, clients, timeline};

fn probe() -> &'static str {
    env!("CARGO_BIN_EXE_client-probe")
}

/// A Makefile whose `recipes` rules each run the probe with `jobs` jobs, as `+` rules.
fn probe_makefile(dir: &Path, recipes: usize, jobs: usize, log: &Path) {
    let names: Vec<String> = (0..recipes).map(|n| format!("r{n}")).collect();
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", names.join(" "));
    for name in &names {
        text.push_str(&format!(
            "{name}:\n\t+@{} jobs {jobs} 0.3 {} {name}\n",
            probe(),
            log.display()
        ));
    }
    std::fs::write(dir.join("Makefile"), text).unwrap();
}

fn under_make(make: std::path::PathBuf, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    probe_makefile(dir.path(), 3, 4, &log);
    let output = Command::new(make)
        .arg("-j3")
        .current_dir(dir.path())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .output()
        .unwrap();
    assert_success(&output, what);
    // make's -j3 is the whole budget: its recipes and the probes' jobs share it.
    timeline::assert_peak_within(&log, 12, 3, what);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn the_client_joins_make_4_4_1s_own_fifo_jobserver() {
    under_make(clients::make44(), "client library under make 4.4.1 -j3 (fifo)");
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs Debian's make 4.3, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn the_client_joins_make_4_3s_pipe_jobserver() {
    under_make(clients::make43(), "client library under make 4.3 -j3 (pipe)");
}

#[test]
fn the_client_joins_steves_fifo_server() {
    let server = FifoServer::start(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let output =
        server.client(probe()).args(["jobs", "8", "0.3"]).arg(&log).arg("p").output().unwrap();
    assert_success(&output, "probe");
    timeline::assert_peak_within(&log, 8, 4, "client library on the fifo server with 3 tokens");
    assert_eq!(server.tokens(), 3);
}

#[test]
fn the_client_joins_steve_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    for style in ["pipe", "fifo"] {
        let _ = std::fs::remove_file(&log);
        let output = command()
            .args(["run", "-j", "3", "--style", style, "--"])
            .args([probe(), "jobs", "8", "0.3"])
            .arg(&log)
            .arg("p")
            .env_remove("MAKEFLAGS")
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MFLAGS")
            .output()
            .unwrap();
        assert_success(&output, "steve run probe");
        assert!(
            output.stderr.is_empty(),
            "steve run warned: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        timeline::assert_peak_within(
            &log,
            8,
            3,
            &format!("client library under steve run -j3 --style {style}"),
        );
    }
}

#[test]
fn steve_exec_holds_one_token_while_its_command_runs() {
    let server = FifoServer::start(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    // Three commands through steve exec on a pool of 1: never two at once.
    let execs: Vec<_> = (0..3)
        .map(|n| {
            let script = format!(
                "echo start e{n} $(date +%s%N) >> {0}; sleep 0.3; echo end e{n} $(date +%s%N) >> {0}",
                log.display()
            );
            let mut exec = server.client(steve_tests::steve::binary());
            exec.args(["exec", "--", "sh", "-c", &script]);
            exec.spawn().unwrap()
        })
        .collect();
    for exec in execs {
        assert!(exec.wait_with_output().unwrap().status.success());
    }
    assert_eq!(timeline::peak_of(&log, 3), 1, "steve exec ran two commands on one token");
    assert_eq!(server.tokens(), 1, "steve exec gave its token back");
    // Its exit status is the command's.
    let status = server
        .client(steve_tests::steve::binary())
        .args(["exec", "--", "sh", "-c", "exit 5"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(5));
    // A command that is not there: 127, as env(1), and one error line.
    let output = server
        .client(steve_tests::steve::binary())
        .args(["exec", "--", "/nonexistent/cmd"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(steve_tests::steve::stderr_lines(&output).len(), 1);
    assert_eq!(server.tokens(), 1, "the token came back after the failed start");
}

#[test]
fn a_job_pool_runs_50_short_commands_within_n_plus_one() {
    let server = FifoServer::start(3);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let output =
        server.client(probe()).args(["jobs", "50", "0.05"]).arg(&log).arg("j").output().unwrap();
    assert_success(&output, "probe with 50 jobs");
    timeline::assert_peak_within(&log, 50, 4, "JobPool, 50 commands, 3 tokens + the implicit one");
    assert_eq!(server.tokens(), 3, "every token came back");
}

/// The runnable examples of steve-core's client library do what their docs say, under a real
/// `steve run`: `tokens` finds exactly the slots of `-j3`, `job_pool` runs every command.
#[test]
fn the_client_librarys_examples_run_under_steve_run() {
    let tokens =
        steve::command().args(["run", "-j3", "--"]).arg(steve::example("tokens")).output().unwrap();
    assert_success(&tokens, "example tokens");
    let said = String::from_utf8_lossy(&tokens.stdout);
    assert_eq!(said.trim(), "3 jobs at once: the implicit token and 2 from the jobserver");

    let dir = tempfile::tempdir().unwrap();
    let commands: Vec<String> =
        (0..4).map(|n| format!("touch {}", dir.path().join(n.to_string()).display())).collect();
    let pool = steve::command()
        .args(["run", "-j2", "--"])
        .arg(steve::example("job_pool"))
        .args(&commands)
        .output()
        .unwrap();
    assert_success(&pool, "example job_pool");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "not every command ran");
    let failing = steve::command()
        .args(["run", "-j2", "--"])
        .arg(steve::example("job_pool"))
        .args(["true", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(failing.status.code(), Some(1), "a failed job fails the example");
}

/// `steve exec` waiting for a token honours SIGTERM and SIGINT: it ends at once with 128 +
/// the signal, and never runs its command (`timeout 3 steve exec -- true` used to wait on).
#[test]
fn steve_exec_waiting_for_a_token_stops_on_a_signal_without_running() {
    use nix::sys::signal::{kill, Signal};
    let server = FifoServer::start(1);
    // The one token is out: steve exec waits (it holds no implicit token of its own).
    let mut pipe = std::fs::OpenOptions::new().read(true).write(true).open(&server.path).unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut pipe, &mut byte).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let marker = dir.path().join(format!("ran-{signal}"));
        let exec = server
            .client(steve_tests::steve::binary())
            .args(["exec", "--", "touch"])
            .arg(&marker)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Killed if the test fails before it ends by itself.
        let mut exec = KillOnDrop(Some(exec));
        let pid = exec.child().id() as u64;
        // Waiting once it has the pipe open (status lists the processes that have it open).
        steve_tests::wait_for("steve exec to wait on the pipe", Duration::from_secs(10), || {
            let holders = server.status_json()["holders"].clone();
            holders.as_array()?.iter().any(|holder| holder["pid"] == pid).then_some(())
        });
        kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        steve_tests::wait_for("steve exec to stop", Duration::from_secs(10), || {
            exec.child().try_wait().unwrap().map(|_| ())
        });
        let output = exec.0.take().unwrap().wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(code), "{signal}: {output:?}");
        assert!(!marker.exists(), "the command ran after {signal}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("while waiting for a token"), "{said}");
    }
    std::io::Write::write_all(&mut pipe, &byte).unwrap();
    assert_eq!(server.tokens(), 1);
}

/// A child killed and reaped when dropped, unless taken out first.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("not taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `steve exec --fifo -- ninja` (ninja 1.13.2, which takes only a FIFO) and `steve exec --pipe
/// -- make` (make 4.3, which takes only descriptors), both at once on a pool of 3: their trees
/// borrow from it as they need and together never run more than 3 jobs (steve exec holds each
/// tree's implicit token); every token is back afterwards, and the private named pipe is gone.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs ninja 1.13.2 and make 4.3, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn steve_exec_relays_the_pool_to_a_fifo_tree_and_a_pipe_tree() {
    const JOBS: u32 = 3;
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let (ninja_dir, make_dir) = (dir.path().join("ninja"), dir.path().join("make"));
    std::fs::create_dir(&ninja_dir).unwrap();
    std::fs::create_dir(&make_dir).unwrap();
    steve_tests::projects::ninja_file(&ninja_dir, 6, 0.3, &log);
    steve_tests::projects::makefile(&make_dir, "make43", 6, 0.3, &log);
    let runtime = tempfile::tempdir().unwrap();
    let mut ninja = server.client(steve::binary());
    ninja.args(["exec", "--fifo", "--"]).arg(clients::ninja()).current_dir(&ninja_dir);
    // The private named pipe goes in the runtime directory: watch that it is removed.
    ninja.env("XDG_RUNTIME_DIR", runtime.path());
    let mut make = server.client(steve::binary());
    make.args(["exec", "--pipe", "--"]).arg(clients::make43()).current_dir(&make_dir);
    let spawn = |command: &mut Command| {
        use std::process::Stdio;
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let (ninja, make) = (spawn(&mut ninja), spawn(&mut make));
    for (name, child) in [("ninja", ninja), ("make 4.3", make)] {
        let output = child.wait_with_output().unwrap();
        assert_success(&output, name);
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(!said.contains("Not a fifo"), "{name}: {said}");
    }
    timeline::assert_peak_within(&log, 12, JOBS as usize, "two relayed trees on 3 tokens");
    assert_eq!(server.tokens(), JOBS as usize, "every borrowed token came back");
    assert_eq!(std::fs::read_dir(runtime.path()).unwrap().count(), 0, "the private pipe stayed");
}
