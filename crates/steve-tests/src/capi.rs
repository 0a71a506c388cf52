//! steve's C library as a C program gets it: built with cargo, installed by `scripts/install`
//! into a prefix of its own, and C programs compiled against it with gcc through the installed
//! `jobserver.pc`, linked to the shared or the static library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{assert_success, workspace_root};

/// Every call of the interface, as the `jobserver_NAME` functions and their man pages name them.
pub const CALLS: [&str; 13] = [
    "connect",
    "create",
    "create_n",
    "close",
    "launch_job",
    "wait",
    "collect",
    "terminate_job",
    "clear",
    "print",
    "getenv",
    "setenv",
    "unsetenv",
];

/// How a C program is linked to libjobserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `-ljobserver`: libjobserver.so.0, found through an rpath.
    Shared,
    /// libjobserver.a and its `Libs.private`.
    Static,
}

/// The prefix `scripts/install` installed the freshly built steve and C library into. Each
/// test program (integration, compliance) has its own, so two never overwrite each other's.
pub fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let profile_dir =
            crate::steve::cargo_build(&["-p", "steve-capi", "-p", "steve-cli"], "steve-capi");
        let exe = std::env::current_exe().expect("test binary path");
        let stem = exe.file_stem().expect("a name").to_string_lossy().into_owned();
        let prefix = profile_dir.join("capi-install").join(stem);
        let _ = std::fs::remove_dir_all(&prefix);
        let install = Command::new(workspace_root().join("scripts/install"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--from")
            .arg(&profile_dir)
            .env_remove("DESTDIR")
            .env_remove("PREFIX")
            .output()
            .expect("run scripts/install");
        assert_success(&install, "scripts/install");
        prefix
    })
}

/// `pkg-config ARGS jobserver` against the installed prefix, split into words.
pub fn pkg_config(args: &[&str]) -> Vec<String> {
    let output = Command::new("pkg-config")
        .args(args)
        .arg("jobserver")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config (scripts/test installs pkgconf)");
    assert_success(&output, "pkg-config jobserver");
    String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_string).collect()
}

/// Compiles the C file `source` (relative to the workspace; a `.cc` file is C++, built with
/// g++) against the installed header and library, into the prefix's `bin`; returns the
/// program.
pub fn compile(source: &str, link: Link) -> PathBuf {
    let source = workspace_root().join(source);
    let stem = source.file_stem().expect("a file name").to_string_lossy().into_owned();
    let program = prefix().join("bin").join(format!("{stem}-{link:?}").to_lowercase());
    let cxx = source.extension().is_some_and(|extension| extension == "cc");
    let mut gcc = Command::new(if cxx { "g++" } else { "gcc" });
    gcc.arg(if cxx { "-std=c++17" } else { "-std=gnu11" });
    gcc.args(["-Wall", "-Wextra", "-Werror", "-o"]).arg(&program).arg(&source);
    gcc.args(pkg_config(&["--cflags"]));
    match link {
        Link::Shared => {
            gcc.args(pkg_config(&["--libs"]));
            let libdir = pkg_config(&["--variable=libdir"]).concat();
            gcc.arg(format!("-Wl,-rpath,{libdir}"));
        }
        Link::Static => {
            let libdir = pkg_config(&["--variable=libdir"]).concat();
            gcc.arg(Path::new(&libdir).join("libjobserver.a"));
            let private = pkg_config(&["--static", "--libs-only-l"]);
            gcc.args(private.iter().filter(|word| *word != "-ljobserver"));
        }
    }
    let output = gcc.output().expect("run gcc");
    assert_success(&output, &format!("gcc {}", source.display()));
    program
}

/// The test suite's C program (`crates/steve-tests/c/jobserver-probe.c`), linked as asked.
pub fn probe(link: Link) -> PathBuf {
    static PROBES: OnceLock<[PathBuf; 2]> = OnceLock::new();
    let [shared, fixed] = PROBES.get_or_init(|| {
        let source = "crates/steve-tests/c/jobserver-probe.c";
        [compile(source, Link::Shared), compile(source, Link::Static)]
    });
    match link {
        Link::Shared => shared.clone(),
        Link::Static => fixed.clone(),
    }
}
