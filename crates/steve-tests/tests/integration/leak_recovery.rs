//! Leak recovery on the fifo server: tokens of a client killed with SIGKILL come back once no
//! process holds the pipe, and never while a live client still does.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use steve_tests::steve::FifoServer;
use steve_tests::{clients, projects, wait_for};

const JOBS: u32 = 4;

fn started_jobs(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start"))
        .count()
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn tokens_of_a_make_killed_with_sigkill_come_back_and_the_recovery_is_logged() {
    let server = FifoServer::start(JOBS);
    let dir = tempfile::tempdir().unwrap();

    // A make that takes every token and keeps it.
    let hog_dir = dir.path().join("hog");
    std::fs::create_dir(&hog_dir).unwrap();
    let hog_log = dir.path().join("hog-timeline");
    projects::makefile(&hog_dir, "hog", 8, 120.0, &hog_log);
    let mut hog =
        server.client(clients::make44()).current_dir(&hog_dir).process_group(0).spawn().unwrap();
    let running = JOBS as usize + 1;
    wait_for("the hog make to run a job per token", Duration::from_secs(20), || {
        (started_jobs(&hog_log) >= running).then_some(())
    });
    assert_eq!(server.tokens(), 0, "the hog holds every token");

    // A second make finishes on its implicit token while the hog lives: its close must not be
    // taken for the end of all clients, so nothing is added to the pipe.
    let quick_dir = dir.path().join("quick");
    std::fs::create_dir(&quick_dir).unwrap();
    projects::makefile(&quick_dir, "quick", 1, 0.1, &dir.path().join("quick-timeline"));
    let status = server.client(clients::make44()).current_dir(&quick_dir).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.tokens(), 0, "tokens were added while their holder was alive");
    assert!(!server.log().contains("recovered"), "false recovery:\n{}", server.log());

    // Kill the hog and its jobs at once: make never gets to write its tokens back.
    killpg(Pid::from_raw(hog.id() as i32), Signal::SIGKILL).unwrap();
    hog.wait().unwrap();

    let line = server.wait_for_log("recovered");
    assert!(line.contains(&format!("recovered {JOBS} token(s)")), "{line}");
    assert_eq!(server.tokens(), JOBS as usize, "the pool is whole again");

    // The recovered pool serves a new build in full.
    let after_log = dir.path().join("after-timeline");
    let after_dir = dir.path().join("after");
    std::fs::create_dir(&after_dir).unwrap();
    projects::makefile(&after_dir, "after", 8, 0.3, &after_log);
    let status = server.client(clients::make44()).current_dir(&after_dir).status().unwrap();
    assert!(status.success());
    let peak = steve_tests::timeline::peak_of(&after_log, 8);
    assert!(peak > 2 && peak <= JOBS as usize + 1, "peak {peak} after recovery");
    assert_eq!(server.tokens(), JOBS as usize);
}
