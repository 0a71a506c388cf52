//! cargo building a generated workspace under `steve run` and under the fifo server: the build
//! succeeds and rustc concurrency stays within the jobserver's bound, though cargo's own `-j`
//! would allow more.

use std::process::Command;

use steve_tests::steve::{command, FifoServer};
use steve_tests::{clients, projects, timeline};

/// cargo's own limit, set high so that only the jobserver can hold the build back.
const CARGO_JOBS: &str = "16";
const LIBS: usize = 6;

fn cargo_build(mut cargo: Command, dir: &std::path::Path, log: &std::path::Path) -> usize {
    let workspace = projects::cargo_workspace(dir, LIBS, log);
    let output = cargo
        .args(["build", "--offline", "-j", CARGO_JOBS])
        .current_dir(&workspace.root)
        .env("RUSTC_WRAPPER", &workspace.wrapper)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_JOBS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let app = Command::new(dir.join("target/debug/app")).output().unwrap();
    assert!(app.status.success(), "the built program does not run");
    timeline::peak_of(log, workspace.crates)
}

#[test]
fn cargo_under_steve_run_stays_within_n() {
    let jobs = 3;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let mut cargo = command();
    cargo
        .args(["run", "-j", &jobs.to_string(), "--"])
        .arg(clients::cargo())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    let peak = cargo_build(cargo, dir.path(), &log);
    eprintln!("cargo under steve run -j{jobs}: peak {peak} rustc at once");
    assert!(peak <= jobs, "peak {peak} rustc exceeds -j{jobs}");
    assert!(
        peak >= 2,
        "peak {peak}: cargo did not build crates in parallel"
    );
}

#[test]
fn cargo_against_the_fifo_server_stays_within_the_pool_plus_one() {
    let jobs = 2;
    let server = FifoServer::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let peak = cargo_build(server.client(clients::cargo()), dir.path(), &log);
    eprintln!("cargo on the fifo server, -j{jobs}: peak {peak} rustc at once");
    assert!(
        peak <= jobs as usize + 1,
        "peak {peak} rustc exceeds {jobs} tokens + 1 implicit"
    );
    assert!(
        peak >= 2,
        "peak {peak}: cargo did not build crates in parallel"
    );
    assert_eq!(server.tokens(), jobs as usize);
}
