//! cargo building a generated workspace under `steve run` and under the fifo server: the build
//! succeeds and rustc concurrency stays within the jobserver's bound, though cargo's own `-j`
//! would allow more.

use std::path::Path;
use std::process::Command;

use steve_tests::steve::{command, FifoServer};
use steve_tests::{assert_success, clients, projects, timeline};

/// cargo's own limit, set high so that only the jobserver can hold the build back.
const CARGO_JOBS: &str = "16";
const LIBS: usize = 6;

/// Builds a generated workspace with `cargo` and checks that at most `bound` rustc ran at once.
fn cargo_build(mut cargo: Command, dir: &Path, bound: usize, what: &str) {
    let log = dir.join("timeline");
    let workspace = projects::cargo_workspace(dir, LIBS, &log);
    let output = cargo
        .args(["build", "--offline", "-j", CARGO_JOBS])
        .current_dir(&workspace.root)
        .env("RUSTC_WRAPPER", &workspace.wrapper)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_JOBS")
        .output()
        .unwrap();
    assert_success(&output, "cargo build");
    let app = Command::new(dir.join("target/debug/app")).output().unwrap();
    assert_success(&app, "the program cargo built");
    timeline::assert_peak_within(&log, workspace.crates, bound, what);
}

#[test]
fn cargo_under_steve_run_stays_within_n() {
    let jobs = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut cargo = command();
    cargo
        .args(["run", "-j", &jobs.to_string(), "--"])
        .arg(clients::cargo())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    cargo_build(cargo, dir.path(), jobs, &format!("cargo under steve run -j{jobs}, rustc"));
}

#[test]
fn cargo_against_the_fifo_server_stays_within_the_pool_plus_one() {
    let jobs = 2;
    let server = FifoServer::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let what = format!("cargo on the fifo server with {jobs} tokens, rustc");
    cargo_build(server.client(clients::cargo()), dir.path(), jobs as usize + 1, &what);
    assert_eq!(server.tokens(), jobs as usize);
}
