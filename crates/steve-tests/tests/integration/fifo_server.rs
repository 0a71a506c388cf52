//! `steve serve --backend fifo` with GNU make 4.4.1 and ninja 1.13.2: concurrency stays within
//! the pool, several builds share it, and the pool is whole afterwards.

use std::process::Output;

use nix::sys::signal::Signal;
use steve_tests::steve::FifoServer;
use steve_tests::{clients, projects, timeline};

const JOBS: u32 = 3;

fn assert_built(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn make_4_4_1_stays_within_the_pool_plus_its_implicit_token() {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::makefile(dir.path(), "job", 10, 0.4, &log);

    let output = server
        .client(clients::make44())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_built(&output, "make 4.4.1");

    let peak = timeline::peak_of(&log, 10);
    eprintln!("make 4.4.1 on the fifo server, -j{JOBS}: peak {peak}");
    assert!(
        peak <= JOBS as usize + 1,
        "peak {peak} exceeds {JOBS} tokens + 1 implicit"
    );
    assert!(peak >= 2, "peak {peak}: make did not run jobs in parallel");
    assert_eq!(
        server.tokens(),
        JOBS as usize,
        "tokens in the pipe after the build"
    );
}

fn concurrent_makes(makes: usize) {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let children: Vec<_> = (0..makes)
        .map(|n| {
            let project = dir.path().join(format!("make{n}"));
            std::fs::create_dir(&project).unwrap();
            projects::makefile(&project, &format!("m{n}"), 6, 0.4, &log);
            server
                .client(clients::make44())
                .current_dir(&project)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_built(&child.wait_with_output().unwrap(), "make 4.4.1");
    }
    let peak = timeline::peak_of(&log, 6 * makes);
    let bound = JOBS as usize + makes;
    eprintln!(
        "{makes} makes at once on the fifo server, -j{JOBS}: combined peak {peak} (bound {bound})"
    );
    assert!(
        peak <= bound,
        "combined peak {peak} exceeds {JOBS} tokens + {makes} implicit"
    );
    assert!(peak >= 2, "peak {peak}: nothing ran in parallel");
    assert_eq!(server.tokens(), JOBS as usize);
}

#[test]
fn two_makes_share_the_pool() {
    concurrent_makes(2);
}

#[test]
fn three_makes_share_the_pool() {
    concurrent_makes(3);
}

#[test]
fn ninja_1_13_2_stays_within_the_pool_plus_its_implicit_token() {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    projects::ninja_file(dir.path(), 10, 0.4, &log);

    let output = server
        .client(clients::ninja())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_built(&output, "ninja");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("Not a fifo"),
        "ninja refused the pipe: {stdout}"
    );

    let peak = timeline::peak_of(&log, 10);
    eprintln!("ninja 1.13.2 on the fifo server, -j{JOBS}: peak {peak}");
    assert!(
        peak <= JOBS as usize + 1,
        "peak {peak} exceeds {JOBS} tokens + 1 implicit"
    );
    assert!(peak >= 2, "peak {peak}: ninja did not run jobs in parallel");
    assert_eq!(server.tokens(), JOBS as usize);
}

#[test]
fn sigusr1_logs_a_status_report_and_sigterm_removes_the_pipe() {
    let server = FifoServer::start(JOBS);
    server.signal(Signal::SIGUSR1);
    let report = server.wait_for_log("status of fifo jobserver");
    assert!(
        report.contains(&format!(
            "jobs {JOBS}, pool {JOBS}, free {JOBS}, held 0, withheld 0"
        )),
        "{report}"
    );
    assert!(report.contains("waiters unknown"), "{report}");

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
    assert!(
        dir.path().join("steve.log").exists(),
        "a file steve did not make was removed"
    );
}
