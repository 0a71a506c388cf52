//! The real clients the tests run, and where they come from.
//!
//! `scripts/test` installs GNU make 4.4.1, ninja 1.13.2 and prometheus_client 0.21.1 (whose
//! parsers check the metrics) from PyPI into `.cache/clients-venv` and points the tests at them
//! through `STEVE_TEST_MAKE44`, `STEVE_TEST_NINJA` and `STEVE_TEST_PYTHON`; Debian's make 4.3 is `/usr/bin/make` (`STEVE_TEST_MAKE43`) and its GCC 12
//! `/usr/bin/gcc-12` (`STEVE_TEST_GCC12`). A client
//! that is missing, or of the wrong version, fails the test that needs it with a message that
//! says how to install it: it is never skipped.

use std::path::PathBuf;
use std::process::Command;

use crate::workspace_root;

/// GNU make 4.4.1: speaks `--jobserver-auth=fifo:PATH`.
pub fn make44() -> PathBuf {
    find("STEVE_TEST_MAKE44", venv_bin("make"), &["--version"], "GNU Make 4.4.1")
}

/// GNU make 4.3 (Debian's): speaks only inherited descriptors (`R,W`).
pub fn make43() -> PathBuf {
    find("STEVE_TEST_MAKE43", PathBuf::from("/usr/bin/make"), &["--version"], "GNU Make 4.3")
}

/// ninja 1.13.2 with jobserver support: needs a real FIFO.
pub fn ninja() -> PathBuf {
    find("STEVE_TEST_NINJA", venv_bin("ninja"), &["--version"], "1.13.2")
}

/// GCC 12 (Debian 12's): its lto-wrapper takes a jobserver only as inherited descriptors.
pub fn gcc12() -> PathBuf {
    find("STEVE_TEST_GCC12", PathBuf::from("/usr/bin/gcc-12"), &["--version"], "gcc-12 ")
}

/// The venv's python with `prometheus_client` 0.21.1, whose parsers read the metrics.
pub fn python_with_prometheus_client() -> PathBuf {
    let check =
        "import prometheus_client, importlib.metadata as m; print(m.version('prometheus_client'))";
    find("STEVE_TEST_PYTHON", venv_bin("python"), &["-c", check], "0.21.1")
}

/// The cargo running the tests (cargo sets `CARGO`), or `cargo` on the PATH.
pub fn cargo() -> PathBuf {
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    find("STEVE_TEST_CARGO", cargo, &["--version"], "cargo ")
}

fn venv_bin(name: &str) -> PathBuf {
    workspace_root().join(".cache/clients-venv/bin").join(name)
}

fn find(variable: &str, default: PathBuf, args: &[&str], expected: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or(default, PathBuf::from);
    let output = Command::new(&path).args(args).output().unwrap_or_else(|error| {
        panic!(
            "cannot run {} ({error}): run scripts/test, which installs the real clients, or set \
             {variable}",
            path.display()
        )
    });
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.starts_with(expected),
        "{} is not {expected:?} but {:?}: run scripts/test, or set {variable}",
        path.display(),
        version.lines().next().unwrap_or("")
    );
    path
}
