//! The fuse backend on this machine's own kernel: the compliance scenarios of
//! `device-scenarios` (the same ones the cuse backend passes in the VM) against
//! `steve serve --backend fuse`: make 4.4.1 and cargo within the pool plus one, two makes
//! sharing, reclaim after SIGKILL, a client killed or signalled while waiting, ENOSPC and the
//! grace return, EAGAIN, poller fairness, a second server refused, a stale mount cleared,
//! unmounting while busy, the file's mode and group enforced for other users, status, set,
//! limits and the client library. One run of the program serves every test here;
//! each checks its own scenario's line. The run is root's (the host's /dev/fuse is mode 0600):
//! the unprivileged case runs in the VM (`cuse_vm.rs`).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use steve_tests::{clients, steve};

const SCENARIOS: &[&str] = &[
    "make_peak",
    "two_makes",
    "enospc_and_grace",
    "nonblocking_eagain",
    "sigkill_reclaim",
    "killed_while_waiting",
    "signal_interrupts_waiting_read",
    "poller_fairness",
    "second_daemon",
    "stale_mount_recovered",
    "unmounts_while_busy",
    "fuse_mode_and_group",
    "ninja_wants_a_fifo",
    "status_finds_the_server",
    "round_trips",
    "auto_backend",
    "status_names_holders",
    "set_jobs_moves_the_peak",
    "set_refused_to_others",
    "per_process_limit",
    "memory_limit",
    "client_library",
    "cargo_build",
];

/// What the one run printed.
fn run_output() -> &'static str {
    static OUTPUT: OnceLock<String> = OnceLock::new();
    OUTPUT.get_or_init(|| {
        // Kept for the whole test run: every scenario's server mounts on DIR/mnt in turn.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        // Other users must reach the mount point for the mode and group scenario.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_device-scenarios"))
            .arg("run")
            .args(SCENARIOS)
            .env("STEVE_SCENARIO_BACKEND", "fuse")
            .env("STEVE_SCENARIO_MOUNTPOINT", dir.path().join("mnt"))
            .env("STEVE_BIN", steve::binary())
            .env("STEVE_TEST_MAKE44", clients::make44())
            .env("STEVE_TEST_CARGO", clients::cargo())
            .env("STEVE_TEST_NINJA", clients::ninja())
            .output()
            .expect("run device-scenarios");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        steve_tests::print_figures(
            &format!("fuse scenarios took {:.1?}", started.elapsed()),
            &text,
        );
        format!("{text}\n--- stderr ---\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

fn scenario(name: &str) {
    let output = run_output();
    if let Err(why) = steve_tests::scenario_outcome(output, name) {
        panic!("{why} (fuse, on the host)\n{output}");
    }
}

#[test]
fn make_4_4_1_against_the_fuse_file_stays_within_the_pool_plus_one() {
    scenario("make_peak");
}

#[test]
fn two_makes_share_the_fuse_file() {
    scenario("two_makes");
}

#[test]
fn cargo_builds_through_the_fuse_file_within_the_pool_plus_one() {
    scenario("cargo_build");
}

#[test]
fn fuse_reclaims_the_tokens_of_a_client_killed_with_sigkill() {
    scenario("sigkill_reclaim");
}

#[test]
fn a_client_killed_while_its_fuse_read_waits_dies_at_once() {
    scenario("killed_while_waiting");
}

#[test]
fn a_fuse_write_not_held_gets_enospc_after_one_grace_return() {
    scenario("enospc_and_grace");
}

#[test]
fn a_nonblocking_fuse_read_of_an_empty_pool_gets_eagain() {
    scenario("nonblocking_eagain");
}

#[test]
fn a_polling_client_is_not_starved_on_fuse() {
    scenario("poller_fairness");
}

#[test]
fn a_second_server_on_a_live_mount_is_refused() {
    scenario("second_daemon");
}

#[test]
fn a_stale_mount_left_by_a_killed_server_is_cleared() {
    scenario("stale_mount_recovered");
}

#[test]
fn sigint_unmounts_even_while_a_client_has_the_file_open() {
    scenario("unmounts_while_busy");
}

#[test]
fn the_fuse_file_gets_its_mode_and_group_and_the_kernel_enforces_them() {
    scenario("fuse_mode_and_group");
}

#[test]
fn ninja_refuses_the_fuse_file_as_the_docs_say() {
    scenario("ninja_wants_a_fifo");
}

#[test]
fn steve_status_finds_the_fuse_server_from_makeflags() {
    scenario("status_finds_the_server");
}

#[test]
fn fuse_round_trip_rates_are_measured() {
    scenario("round_trips");
}

#[test]
fn serve_without_backend_picks_fuse_where_there_is_no_cuse() {
    scenario("auto_backend");
}

#[test]
fn status_names_the_real_holders_of_the_fuse_file() {
    scenario("status_names_holders");
}

#[test]
fn set_jobs_down_and_up_moves_the_peak_on_fuse() {
    scenario("set_jobs_moves_the_peak");
}

#[test]
fn set_on_fuse_is_refused_to_another_user() {
    scenario("set_refused_to_others");
}

#[test]
fn a_per_process_limit_caps_each_make_on_fuse() {
    scenario("per_process_limit");
}

#[test]
fn a_memory_limit_holds_the_fuse_file_back_until_lifted() {
    scenario("memory_limit");
}

#[test]
fn the_client_library_joins_the_fuse_file() {
    scenario("client_library");
}

#[test]
fn a_signal_ends_a_waiting_fuse_read_with_eintr() {
    scenario("signal_interrupts_waiting_read");
}
