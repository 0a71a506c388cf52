//! Build projects for the real clients, whose jobs log to a timeline file (see
//! [`crate::timeline`]): a Makefile, a ninja file, and a cargo workspace built through a
//! logging `RUSTC_WRAPPER`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The shell words that log one event of job `$name` to `log`.
fn log_event(event: &str, name: &str, log: &Path) -> String {
    format!("echo {event} {name} $(date +%s%N) >> {}", log.display())
}

/// Writes `dir/Makefile`: `jobs` independent targets named `PREFIX-N`, each running for
/// `seconds`, made by the default goal `all`.
pub fn makefile(dir: &Path, prefix: &str, jobs: usize, seconds: f64, log: &Path) -> PathBuf {
    let names: Vec<String> = (0..jobs).map(|n| format!("{prefix}-{n}")).collect();
    let mut text = format!(".PHONY: all {0}\nall: {0}\n", names.join(" "));
    for name in &names {
        // $$ is make's escape for the shell's $.
        let start = log_event("start", name, log).replace('$', "$$");
        let end = log_event("end", name, log).replace('$', "$$");
        writeln!(text, "{name}:\n\t@{start}; sleep {seconds}; {end}").unwrap();
    }
    let path = dir.join("Makefile");
    fs::write(&path, text).expect("write Makefile");
    path
}

/// Writes `dir/Makefile` as [`makefile`] does, except that once the file `stop` exists each job
/// that has not begun yet ends at once: a build that runs as long as another one does.
pub fn makefile_until(
    dir: &Path,
    prefix: &str,
    jobs: usize,
    seconds: f64,
    log: &Path,
    stop: &Path,
) -> PathBuf {
    let path = makefile(dir, prefix, jobs, seconds, log);
    let text = fs::read_to_string(&path).expect("read Makefile");
    let text = text.replace(
        &format!("; sleep {seconds}; "),
        &format!("; [ -e {} ] || sleep {seconds}; ", stop.display()),
    );
    fs::write(&path, text).expect("write Makefile");
    path
}

/// Writes `dir/build.ninja`: `jobs` independent edges, each running for `seconds`.
pub fn ninja_file(dir: &Path, jobs: usize, seconds: f64, log: &Path) -> PathBuf {
    let start = log_event("start", "$out", log).replace('$', "$$").replace("$$out", "$out");
    let end = log_event("end", "$out", log).replace('$', "$$").replace("$$out", "$out");
    let mut text = format!("rule job\n  command = sh -c '{start}; sleep {seconds}; {end}'\n");
    for n in 0..jobs {
        writeln!(text, "build job-{n}: job").unwrap();
    }
    let path = dir.join("build.ninja");
    fs::write(&path, text).expect("write build.ninja");
    path
}

/// A generated cargo workspace and the wrapper that logs each rustc.
#[derive(Debug)]
pub struct CargoWorkspace {
    /// The workspace's root folder.
    pub root: PathBuf,
    /// The `RUSTC_WRAPPER` script: it logs start and end of every crate's compilation, and
    /// holds each for a moment so that concurrency shows.
    pub wrapper: PathBuf,
    /// How many crates the build compiles.
    pub crates: usize,
}

/// Writes a workspace of `libs` independent library crates and one binary that uses them all.
pub fn cargo_workspace(dir: &Path, libs: usize, log: &Path) -> CargoWorkspace {
    let root = dir.join("workspace");
    let mut members = Vec::new();
    let mut app_deps = String::new();
    let mut app_main = String::from("fn main() {\n    let mut total = 0u64;\n");
    for n in 0..libs {
        let name = format!("lib{n}");
        let src = root.join(&name).join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(
            root.join(&name).join("Cargo.toml"),
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        )
        .unwrap();
        let mut code = String::new();
        for f in 0..40 {
            writeln!(
                code,
                "pub fn f{f}(x: u64) -> u64 {{ (0..x).map(|i| i * {f} + {n}).filter(|v| v % 3 == 0).sum() }}"
            )
            .unwrap();
        }
        fs::write(src.join("lib.rs"), code).unwrap();
        writeln!(app_deps, "{name} = {{ path = \"../{name}\" }}").unwrap();
        writeln!(app_main, "    total += {name}::f1(10);").unwrap();
        members.push(format!("\"{name}\""));
    }
    app_main.push_str("    println!(\"{total}\");\n}\n");
    fs::create_dir_all(root.join("app/src")).unwrap();
    fs::write(
        root.join("app/Cargo.toml"),
        format!(
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{app_deps}"
        ),
    )
    .unwrap();
    fs::write(root.join("app/src/main.rs"), app_main).unwrap();
    members.push("\"app\"".to_string());
    fs::write(
        root.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"2\"\nmembers = [{}]\n", members.join(", ")),
    )
    .unwrap();

    let wrapper = rustc_wrapper(dir, log, Hold::Before("0.3"));
    CargoWorkspace { root, wrapper, crates: libs + 1 }
}

/// Writes a workspace of library crates in layers of the given widths, each crate depending on
/// every crate of the layer before: the shape of real workspaces, where cargo's queue of ready
/// units runs dry at the end of each layer (cargo gives tokens back only then). Through the
/// logging wrapper, crate `lLcN` holds its token 0.3 s + (N mod 5) × `stagger` after rustc
/// ends: crates that all took the same time would end together, and cargo, seeing the next
/// layer ready in the same turn, would give nothing back. The hold comes after the compilation,
/// not before it, because compilations started apart on CPUs they share still end together (a
/// VM run: four crates' rustc, started seconds apart, ended in one turn of cargo's loop); a
/// sleep after them parts their ends by the stagger whatever the CPUs do.
pub fn layered_cargo_workspace(
    dir: &Path,
    widths: &[usize],
    stagger: Duration,
    log: &Path,
) -> CargoWorkspace {
    let root = dir.join("layered");
    let mut members = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for (layer, width) in widths.iter().enumerate() {
        let names: Vec<String> = (0..*width).map(|n| format!("l{layer}c{n}")).collect();
        for name in &names {
            fs::create_dir_all(root.join(name).join("src")).unwrap();
            let deps: String =
                previous.iter().map(|dep| format!("{dep} = {{ path = \"../{dep}\" }}\n")).collect();
            fs::write(
                root.join(name).join("Cargo.toml"),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}"
                ),
            )
            .unwrap();
            fs::write(root.join(name).join("src/lib.rs"), "pub fn f(x: u64) -> u64 { x + 1 }\n")
                .unwrap();
            members.push(format!("\"{name}\""));
        }
        previous = names;
    }
    fs::write(
        root.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"2\"\nmembers = [{}]\n", members.join(", ")),
    )
    .unwrap();
    // In milliseconds, from the crate's number in its layer (`l2c5-PID` is 5), printed as
    // seconds for sleep: the shell has integers only.
    let hold = format!(
        r#"$(n=${{name%-*}}; ms=$(( 300 + ${{n##*c}} % 5 * {} )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"#,
        stagger.as_millis()
    );
    let wrapper = rustc_wrapper(dir, log, Hold::After(&hold));
    CargoWorkspace { root, wrapper, crates: widths.iter().sum() }
}

/// When the logging wrapper holds a crate's token beyond its compilation, and for how long: a
/// shell word of seconds, which may use `$name` (the crate's name and the wrapper's pid).
enum Hold<'a> {
    /// Before rustc runs: the compilations overlap for at least that long.
    Before(&'a str),
    /// After rustc ends: the compilations end that far apart.
    After(&'a str),
}

/// Writes `dir/rustc-wrapper.sh`, a `RUSTC_WRAPPER` that logs the start and end of every
/// crate's compilation to `log`, holding each for a moment (`hold`) so that concurrency shows.
fn rustc_wrapper(dir: &Path, log: &Path, hold: Hold) -> PathBuf {
    // cargo also asks rustc for its version and target facts (`--crate-name ___ --print ...`);
    // only compilations are logged.
    let wrapper = dir.join("rustc-wrapper.sh");
    let start = log_event("start", "$name", log);
    let end = log_event("end", "$name", log);
    // A hold after rustc also holds back rustc's messages (its stderr): cargo starts a crate's
    // dependents as soon as rustc says the crate's metadata is written (pipelining), which
    // would let the next layer begin while this one's tokens are still held.
    let (before, run, after) = match hold {
        Hold::Before(seconds) => {
            (format!("sleep {seconds}"), r#""$rustc" "$@""#.to_string(), ":".to_string())
        }
        Hold::After(seconds) => (
            ":".to_string(),
            r#"messages=$(mktemp); "$rustc" "$@" 2>"$messages""#.to_string(),
            format!(r#"sleep {seconds}; cat "$messages" >&2; rm -f "$messages""#),
        ),
    };
    fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
rustc="$1"; shift
name=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--crate-name" ]; then name="$arg-$$"; fi
  prev="$arg"
done
case "$name" in ""|___-*) exec "$rustc" "$@";; esac
{start}
{before}
{run}
status=$?
{after}
{end}
exit $status
"#
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// A GCC link with link-time optimization over `units` translation units, each its own LTRANS
/// partition (`-flto-partition=1to1`, so `units + 1` with `main.c`), run through the jobserver
/// (`-flto=jobserver`: GCC's lto-wrapper runs its partitions as a make's jobs).
#[derive(Debug)]
pub struct LtoProject {
    /// The folder: its `Makefile` links `prog` from the objects, compiled already.
    pub dir: PathBuf,
    /// LTRANS jobs the link runs, each logged.
    pub partitions: usize,
}

/// Writes and compiles (with `-flto`, not yet optimized) an [`LtoProject`] in `dir` for
/// `compiler` (GCC 12). Through a wrapper that GCC's driver passes to lto-wrapper as the compiler
/// (`COLLECT_GCC`, set from its `argv[0]`), every LTRANS job logs its start and end to `log`,
/// holding its token a moment first so that concurrency shows. The objects are compiled here,
/// at once, so that only the link runs under the jobserver.
pub fn lto_project(dir: &Path, compiler: &Path, units: usize, log: &Path) -> LtoProject {
    fs::create_dir_all(dir).unwrap();
    let mut main = String::from("#include <stdio.h>\n");
    let mut calls = String::new();
    let mut objects = Vec::new();
    for unit in 0..units {
        fs::write(
            dir.join(format!("u{unit}.c")),
            format!(
                "__attribute__((noinline)) int f{unit}(int x) {{ int s = 0; \
                 for (int i = 0; i < x; i++) s += i * {unit}; return s; }}\n"
            ),
        )
        .unwrap();
        writeln!(main, "int f{unit}(int);").unwrap();
        write!(calls, " s += f{unit}(10);").unwrap();
        objects.push(format!("u{unit}.o"));
    }
    writeln!(main, "int main(void) {{ int s = 0;{calls} printf(\"%d\\n\", s); return 0; }}")
        .unwrap();
    fs::write(dir.join("main.c"), main).unwrap();
    objects.push("main.o".to_string());

    // The driver finds cc1, collect2 and lto-wrapper from its argv[0]: with the wrapper's name
    // there, -B says where they are.
    let libexec = Command::new(compiler).arg("-print-prog-name=cc1").output().unwrap();
    let libexec = String::from_utf8_lossy(&libexec.stdout).trim().to_string();
    let libexec = Path::new(&libexec).parent().expect("cc1 in a folder").to_path_buf();
    let wrapper = dir.join("cc-wrap");
    let start = log_event("start", "ltrans-$$", log);
    let end = log_event("end", "ltrans-$$", log);
    fs::write(
        &wrapper,
        format!(
            r#"#!/bin/bash
case " $* " in *" -fltrans "*)
  {start}
  sleep 0.3
  {compiler} "$@"; status=$?
  {end}
  exit $status;;
esac
exec -a "$0" {compiler} -B{libexec}/ "$@"
"#,
            compiler = compiler.display(),
            libexec = libexec.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    for object in &objects {
        let source = object.replace(".o", ".c");
        let status = Command::new(&wrapper)
            .args(["-O2", "-flto", "-c", &source, "-o", object])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success(), "compiling {source} failed");
    }
    // `+`: the link is a recursive job, to which make hands its jobserver.
    fs::write(
        dir.join("Makefile"),
        format!(
            "prog: {objects}\n\t+{wrapper} -O2 -flto=jobserver -flto-partition=1to1 -o $@ $^\n",
            objects = objects.join(" "),
            wrapper = wrapper.display(),
        ),
    )
    .unwrap();
    LtoProject { dir: dir.to_path_buf(), partitions: units + 1 }
}
