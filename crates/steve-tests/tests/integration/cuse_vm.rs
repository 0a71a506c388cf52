//! The cuse backend against the real kernel, in a QEMU VM booting Debian's kernel (the host has
//! no CUSE): GNU make 4.4.1 and cargo through /dev/steve, reclaim after SIGKILL, ENOSPC and the
//! grace return, EAGAIN, poller fairness, a second daemon; and the fuse backend run by an
//! ordinary user through fusermount3 (the VM's /dev/fuse is open to all, the host's is not).
//! One VM boot runs every scenario of
//! `device-scenarios`; each test here checks its own scenario's line. A VM that cannot be built or
//! booted fails every one of them.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

use steve_tests::{clients, steve, vm};

const SCENARIOS: &[&str] = &[
    "make_peak",
    "two_makes",
    "enospc_and_grace",
    "nonblocking_eagain",
    "sigkill_reclaim",
    "poller_fairness",
    "second_daemon",
    "round_trips",
    "auto_backend",
    "mode_group_user",
    "status_names_holders",
    "set_jobs_moves_the_peak",
    "set_refused_to_others",
    "per_process_limit",
    "memory_limit",
    "client_library",
    "cargo_build",
    "killed_while_waiting",
    "signal_interrupts_waiting_read",
    "status_finds_the_server",
    "unprivileged_fuse",
];

fn vm_run() -> &'static vm::VmRun {
    static RUN: OnceLock<vm::VmRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut command: Vec<OsString> =
            vec![env!("CARGO_BIN_EXE_device-scenarios").into(), "run".into()];
        command.extend(SCENARIOS.iter().map(OsString::from));
        let cargo = clients::cargo();
        let env = [
            ("STEVE_BIN", steve::binary().as_os_str().to_owned()),
            ("STEVE_TEST_MAKE44", clients::make44().into_os_string()),
            ("STEVE_TEST_CARGO", cargo.into_os_string()),
        ];
        let run = vm::run(&command, &env, Duration::from_secs(20 * 60));
        steve_tests::print_figures(&format!("VM run took {:.1?}", run.elapsed), &run.output);
        run
    })
}

/// Asserts that `name` ran in the VM and passed.
fn scenario(name: &str) {
    let run = vm_run();
    if let Err(why) = steve_tests::scenario_outcome(&run.output, name) {
        panic!("{why} (in the VM)\n{}", run.describe());
    }
}

#[test]
fn make_4_4_1_against_dev_steve_stays_within_the_pool_plus_one() {
    scenario("make_peak");
}

#[test]
fn two_makes_share_dev_steve() {
    scenario("two_makes");
}

#[test]
fn cargo_builds_through_dev_steve_within_the_pool_plus_one() {
    scenario("cargo_build");
}

#[test]
fn tokens_of_a_client_killed_with_sigkill_are_free_again() {
    scenario("sigkill_reclaim");
}

#[test]
fn a_write_not_held_gets_enospc_after_one_grace_return() {
    scenario("enospc_and_grace");
}

#[test]
fn a_nonblocking_read_of_an_empty_pool_gets_eagain() {
    scenario("nonblocking_eagain");
}

#[test]
fn a_polling_client_is_not_starved_by_a_blocking_one() {
    scenario("poller_fairness");
}

#[test]
fn a_second_daemon_on_dev_steve_is_refused() {
    scenario("second_daemon");
}

#[test]
fn round_trip_rates_are_measured() {
    scenario("round_trips");
}

#[test]
fn serve_without_backend_picks_cuse_where_dev_cuse_exists() {
    scenario("auto_backend");
}

#[test]
fn the_device_gets_its_mode_and_group_and_the_daemon_drops_to_user() {
    scenario("mode_group_user");
}

#[test]
fn status_names_the_real_holders_of_dev_steve() {
    scenario("status_names_holders");
}

#[test]
fn set_jobs_down_and_up_moves_the_peak_on_dev_steve() {
    scenario("set_jobs_moves_the_peak");
}

#[test]
fn set_on_dev_steve_is_refused_to_another_user() {
    scenario("set_refused_to_others");
}

#[test]
fn a_per_process_limit_caps_each_make() {
    scenario("per_process_limit");
}

#[test]
fn a_memory_limit_holds_dev_steve_back_until_lifted() {
    scenario("memory_limit");
}

#[test]
fn a_client_killed_while_its_read_waits_dies_at_once() {
    scenario("killed_while_waiting");
}

#[test]
fn an_ordinary_user_serves_make_through_fusermount3() {
    scenario("unprivileged_fuse");
}

#[test]
fn the_client_library_joins_dev_steve() {
    scenario("client_library");
}

#[test]
fn a_signal_ends_a_waiting_read_with_eintr() {
    scenario("signal_interrupts_waiting_read");
}

#[test]
fn steve_status_finds_dev_steve_from_makeflags() {
    scenario("status_finds_the_server");
}
