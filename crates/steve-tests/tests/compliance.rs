//! The compliance suite: every scenario of `src/bin/compliance/` against every server backend
//! it applies to, as one test each (`fifo::make_peak`, `fuse::make_peak`, `cuse::make_peak`...).
//! The scenario list and which backends each applies to are written once, in that program; this
//! file asks it for them (`compliance list BACKEND`), runs it once per backend (fifo and fuse on
//! this machine, cuse in a QEMU VM booting Debian's kernel) and checks each scenario's line.
//!
//! The runs need root (fuse, and the scenarios that act as another user), QEMU and the real
//! clients that `scripts/test` installs. Without `STEVE_TEST_ALL=1` (which `scripts/test` sets)
//! the trials are listed as ignored; with it, a missing prerequisite fails them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use steve_tests::capi::{self, Link};
use steve_tests::{clients, steve, vm};

/// The server backends, longest run first so that its run starts first.
const BACKENDS: [&str; 3] = ["cuse", "fuse", "fifo"];
/// `(backend, backend whose run must end first)`: the host's two runs take half the VM's time
/// one after the other (fuse 211 s, fifo 112 s, cuse 667 s in one CI run).
const HOST_RUN_AFTER: [(&str, &str); 1] = [("fifo", "fuse")];

/// The scenarios `compliance list BACKEND` says apply to `backend`.
fn applicable(backend: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_compliance"))
        .args(["list", backend])
        .output()
        .expect("run compliance list");
    assert!(output.status.success(), "compliance list {backend}: {output:?}");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

/// What one run of the program printed, and how to describe it when a scenario failed.
struct Run {
    output: String,
    describe: String,
}

/// Runs `scenarios` against `backend` once; every trial of that backend reads the result.
fn run_backend(backend: &'static str, scenarios: &[String]) -> Run {
    let started = Instant::now();
    let run = match backend {
        "cuse" => {
            let mut command: Vec<OsString> =
                vec![env!("CARGO_BIN_EXE_compliance").into(), "run".into()];
            command.extend(scenarios.iter().map(OsString::from));
            let env = [
                ("STEVE_SCENARIO_BACKEND", OsString::from("cuse")),
                ("STEVE_BIN", steve::binary().as_os_str().to_owned()),
                ("STEVE_TEST_MAKE44", clients::make44().into_os_string()),
                ("STEVE_TEST_CARGO", clients::cargo().into_os_string()),
                ("STEVE_TEST_MAKE43", clients::make43().into_os_string()),
                ("STEVE_TEST_NINJA", clients::ninja().into_os_string()),
                ("STEVE_TEST_GCC12", clients::gcc12().into_os_string()),
                ("STEVE_TEST_CAPI_PROBE", capi::probe(Link::Static).into_os_string()),
                ("STEVE_TEST_PYTHON", clients::python_with_prometheus_client().into_os_string()),
            ];
            // About 15 minutes on an idle CI machine; a loaded one took over 20 (2026-12-03).
            let run = vm::run(&command, &env, Duration::from_secs(35 * 60));
            Run { output: run.output.clone(), describe: format!("in the VM\n{}", run.describe()) }
        }
        _ => {
            // Kept for the whole run: each server mounts on DIR/mnt, or serves DIR/jobserver.
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            // Other users must reach the jobserver and the control socket.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let place = dir.path().join(if backend == "fuse" { "mnt" } else { "jobserver" });
            let output = Command::new(env!("CARGO_BIN_EXE_compliance"))
                .arg("run")
                .args(scenarios)
                .env("STEVE_SCENARIO_BACKEND", backend)
                .env("STEVE_SCENARIO_PLACE", place)
                .env("STEVE_BIN", steve::binary())
                .env("STEVE_TEST_MAKE44", clients::make44())
                .env("STEVE_TEST_CARGO", clients::cargo())
                .env("STEVE_TEST_NINJA", clients::ninja())
                .env("STEVE_TEST_MAKE43", clients::make43())
                .env("STEVE_TEST_GCC12", clients::gcc12())
                .env("STEVE_TEST_CAPI_PROBE", capi::probe(Link::Static))
                .env("STEVE_TEST_PYTHON", clients::python_with_prometheus_client())
                .output()
                .expect("run the compliance program");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            Run {
                describe: format!("on this machine\n{text}\n--- stderr ---\n{stderr}"),
                output: text,
            }
        }
    };
    steve_tests::print_figures(
        &format!("{backend} scenarios took {:.1?}", started.elapsed()),
        &run.output,
    );
    run
}

fn main() {
    let mut args = Arguments::from_args();
    // One thread per backend, so that the three runs go side by side.
    args.test_threads.get_or_insert(BACKENDS.len());
    let everything = steve_tests::run_everything();
    if !everything && !args.list {
        eprintln!(
            "compliance: STEVE_TEST_ALL is not 1, so these trials are ignored: they need root, \
             QEMU and the clients scripts/test installs (scripts/test sets STEVE_TEST_ALL=1)"
        );
    }
    let lists: Arc<HashMap<&'static str, Vec<String>>> =
        Arc::new(BACKENDS.iter().map(|backend| (*backend, applicable(backend))).collect());
    let runs: Arc<HashMap<&'static str, OnceLock<Run>>> =
        Arc::new(BACKENDS.iter().map(|backend| (*backend, OnceLock::new())).collect());
    // Interleaved (cuse, fuse, fifo, cuse, ...), so that each thread starts another backend.
    let longest = lists.values().map(|list| list.len()).max().unwrap_or(0);
    let mut trials = Vec::new();
    for index in 0..longest {
        for backend in BACKENDS {
            let Some(name) = lists[backend].get(index).cloned() else { continue };
            let (lists, runs) = (Arc::clone(&lists), Arc::clone(&runs));
            let trial = Trial::test(format!("{backend}::{name}"), move || {
                // The host's runs go one after the other: the storms at the end of each would
                // otherwise load both CPUs while the other measures fair shares.
                if let Some(before) = HOST_RUN_AFTER.iter().find(|(b, _)| *b == backend) {
                    runs[before.1].get_or_init(|| run_backend(before.1, &lists[before.1]));
                }
                let run = runs[backend].get_or_init(|| run_backend(backend, &lists[backend]));
                steve_tests::scenario_outcome(&run.output, &name)
                    .map_err(|why| Failed::from(format!("{why} ({backend} {})", run.describe)))
            });
            trials.push(trial.with_ignored_flag(!everything));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
