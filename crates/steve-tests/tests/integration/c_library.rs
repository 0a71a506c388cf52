//! The C library with libjobserver's interface: C programs compiled by gcc through the installed
//! `jobserver.pc`, shared and static, run jobs within make 4.4.1 and 4.3 and `steve run`, and
//! every call gives the errno the interface documents when its cause is set up. (The same
//! program on steve's fifo, fuse and cuse servers is the compliance scenario `c_library`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use steve_tests::capi::{self, Link};
use steve_tests::{assert_success, clients, projects, steve, timeline};

/// `program ARGS` with no jobserver inherited from the test's own environment.
fn clean(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_remove("MAKEFLAGS").env_remove("MFLAGS").env_remove("CARGO_MAKEFLAGS");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the probe's `mode` (with no jobserver given) and checks it printed each of `lines`.
fn expect_lines(command: &mut Command, what: &str, lines: &[&str]) -> String {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: {error}"));
    let text = stdout(&output);
    for line in lines {
        assert!(
            text.lines().any(|printed| printed == *line),
            "{what}: no line {line:?} in\n{text}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    text
}

fn probe_mode(mode: &str) -> Command {
    let mut command = clean(&capi::probe(Link::Shared));
    command.arg(mode);
    command
}

/// A Makefile whose one rule runs `command` with make's `+` (so that make hands on its
/// jobserver), or without it.
fn one_rule(dir: &Path, command: &str, plus: bool) {
    let prefix = if plus { "+" } else { "" };
    std::fs::write(dir.join("Makefile"), format!("all:\n\t{prefix}{command}\n")).unwrap();
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1 and 4.3, gcc and pkg-config, which scripts/test installs"
)]
fn c_programs_run_20_jobs_within_make_4_4_1_and_4_3_in_plus_rules() {
    for (make, name) in [(clients::make44(), "make 4.4.1 (fifo)"), (clients::make43(), "make 4.3")]
    {
        for link in [Link::Shared, Link::Static] {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("timeline");
            let probe = capi::probe(link);
            one_rule(
                dir.path(),
                &format!("{} jobs 20 {} 40", probe.display(), log.display()),
                true,
            );
            let output = clean(&make).arg("-j4").current_dir(dir.path()).output().unwrap();
            let what = format!("the {link:?} C probe under {name} -j4");
            assert_success(&output, &what);
            let text = stdout(&output);
            assert!(
                text.contains("ended 20 failed 0") && text.contains("close returned 0"),
                "{text}"
            );
            // make checks its own tokens when it exits and complains if any is missing.
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("jobserver") && !stderr.contains("INTERNAL"), "{stderr}");
            timeline::assert_peak_within(&log, 20, 4, &what);
        }
    }
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1 and 4.3, gcc and pkg-config, which scripts/test installs"
)]
fn three_c_programs_racing_for_one_free_token_wait_again_and_never_hang() {
    // make -j4 runs the three rules on its implicit token and two of its three; the programs'
    // own implicit tokens run one job each, and all three race for the one token left: each
    // sees it readable, one reads it, the others must go back to waiting.
    for (make, name) in [(clients::make44(), "make 4.4.1 (fifo)"), (clients::make43(), "make 4.3")]
    {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("timeline");
        let probe = probe();
        let rules: String = (0..3)
            .map(|n| format!("r{n}:\n\t+{} jobs 10 {}.{n} 30\n", probe.display(), log.display()))
            .collect();
        std::fs::write(dir.path().join("Makefile"), format!("all: r0 r1 r2\n{rules}")).unwrap();
        let mut command = clean(&make);
        command.arg("-j4").current_dir(dir.path());
        let output = steve_tests::output_within(&mut command, std::time::Duration::from_secs(120))
            .unwrap_or_else(|| panic!("three C programs under {name} hung"));
        assert_success(&output, &format!("three C programs under {name} -j4"));
        assert_eq!(stdout(&output).matches("close returned 0").count(), 3, "{}", stdout(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("jobserver") && !stderr.contains("INTERNAL"), "{stderr}");
        // Together, never more than make's 4 slots.
        let mut all = Vec::new();
        for n in 0..3 {
            all.extend(timeline::spans(&dir.path().join(format!("timeline.{n}"))));
        }
        let peak = timeline::peak(&all);
        eprintln!("three C programs under {name} -j4: peak {peak}");
        assert!(peak <= 4 && all.len() == 30, "peak {peak} of {} jobs under {name} -j4", all.len());
    }
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs g++ and pkg-config, which scripts/test installs")]
fn a_cxx_program_includes_the_header_and_links() {
    let program = capi::compile("crates/steve-tests/c/jobserver-cxx.cc", Link::Shared);
    let output = clean(&program).output().unwrap();
    assert_success(&output, "the C++ program");
    assert_eq!(stdout(&output), "create returned 3\nended 4\nclose returned 0\n");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn a_c_program_runs_within_steve_run_pipe_and_fifo() {
    for style in ["pipe", "fifo"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("timeline");
        let output = clean(steve::binary())
            .args(["run", "-j3", "--style", style, "--"])
            .arg(capi::probe(Link::Shared))
            .args(["jobs", "20"])
            .arg(&log)
            .arg("40")
            .output()
            .unwrap();
        let what = format!("the C probe under steve run -j3 --style {style}");
        assert_success(&output, &what);
        assert!(stdout(&output).contains("close returned 0"), "{}", stdout(&output));
        // steve run warns when the command tree did not give every token back.
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("not returned"), "{what}: {stderr}");
        timeline::assert_peak_within(&log, 20, 3, &what);
    }
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1 and 4.3, gcc and pkg-config, which scripts/test installs"
)]
fn jobserver_connect_gives_enodev_eacces_ebadf_and_eproto_for_their_causes() {
    expect_lines(&mut probe_mode("connect"), "no MAKEFLAGS", &["connect failed: ENODEV"]);
    expect_lines(
        probe_mode("connect").env("MAKEFLAGS", " -j2 --jobserver-auth=nonsense"),
        "a malformed MAKEFLAGS",
        &["connect failed: EPROTO"],
    );
    // Descriptors 5 and 6 are open, but on a regular file: not a jobserver.
    let script =
        format!("exec 5</etc/hostname 6</etc/hostname; exec {} connect", probe().display());
    expect_lines(
        clean(Path::new("/bin/sh"))
            .args(["-c", &script])
            .env("MAKEFLAGS", " -j2 --jobserver-auth=5,6"),
        "descriptors of a regular file",
        &["connect failed: EBADF"],
    );
    // make 4.3 closes its jobserver's descriptors for a rule without '+'.
    let dir = tempfile::tempdir().unwrap();
    one_rule(dir.path(), &format!("{} connect", probe().display()), false);
    let mut make = clean(&clients::make43());
    make.arg("-j2").current_dir(dir.path());
    expect_lines(&mut make, "a rule without '+' under make 4.3", &["connect failed: EACCES"]);
    // With '+', make -n runs the rule and hands on the jobserver: no error, dry_run set.
    one_rule(dir.path(), &format!("{} connect", probe().display()), true);
    let mut make = clean(&clients::make44());
    make.args(["-n", "-j2"]).current_dir(dir.path());
    expect_lines(&mut make, "make -n", &["connect returned 0", "dry_run 1 debug 0 keep_going 0"]);
}

fn probe() -> PathBuf {
    capi::probe(Link::Shared)
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1 and 4.3, gcc and pkg-config, which scripts/test installs"
)]
fn create_n_returns_size_plus_one_and_a_child_make_runs_within_it() {
    for (make, name) in [(clients::make44(), "make 4.4.1"), (clients::make43(), "make 4.3")] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("timeline");
        projects::makefile(dir.path(), "job", 12, 0.2, &log);
        let child_make = format!("{} -C {}", make.display(), dir.path().display());
        let what = format!("{name} started by a C program's create_n(3)");
        let text = expect_lines(
            probe_mode("create").arg("4").arg(&child_make),
            &what,
            &["create_n returned 4", "ended 1 failed 0", "close returned 0"],
        );
        assert!(text.contains("MAKEFLAGS  -j4 --jobserver-fds="), "{what}: {text}");
        timeline::assert_peak_within(&log, 12, 4, &what);
    }
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn create_refuses_more_than_pipe_buf_tokens_with_einval() {
    expect_lines(
        &mut probe_mode("too-many"),
        "too many tokens",
        &[
            "create_n PIPE_BUF+1 failed: EINVAL",
            "create_n PIPE_BUF returned 4097",
            "close returned 0",
        ],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn close_gives_ebusy_with_a_job_running_then_succeeds() {
    expect_lines(
        &mut probe_mode("busy"),
        "close while a job runs",
        &["close while running failed: EBUSY", "collect returned 0", "close returned 0"],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn close_gives_eagain_while_a_descendant_holds_tokens_and_eidrm_once_they_are_lost() {
    expect_lines(
        &mut probe_mode("kept-token"),
        "a token kept by a job's child",
        &[
            "ended 1 failed 0",
            "close while a grandchild runs failed: EAGAIN",
            "close once it ended failed: EIDRM",
        ],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn wait_gives_echild_with_stopped_and_status_for_a_child_that_is_not_a_job() {
    expect_lines(
        &mut probe_mode("echild"),
        "a plain child ending",
        &[
            "wait failed: ECHILD",
            "stopped is the plain child 1 exit status 7",
            "ended 1 failed 0",
            "close returned 0",
        ],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn terminate_job_ends_a_job_the_program_reaped_and_refuses_strangers() {
    expect_lines(
        &mut probe_mode("terminate"),
        "terminate_job",
        &[
            "terminate_job returned 0",
            "done saw exit status 5, jobs 0",
            "terminate_job of a stranger failed: ECHILD",
            "close returned 0",
        ],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn clear_kills_every_job_and_gives_its_token_back() {
    expect_lines(
        &mut probe_mode("clear"),
        "clear",
        &["clear returned 0", "killed 3 jobs 0", "close returned 0"],
    );
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn launch_job_gives_eagain_after_its_wait_and_eintr_on_a_signal_losing_no_token() {
    // steve run -j1: an empty pipe, so the second job waits for a token until the alarm.
    let mut run = clean(steve::binary());
    run.args(["run", "-j1", "--"]).arg(probe()).arg("eintr");
    let text = expect_lines(
        &mut run,
        "an alarm during launch_job",
        &[
            "launch_job with a 100 ms wait failed: EAGAIN",
            "launch_job waiting failed: EINTR",
            "jobs 1",
            "collect returned 0",
            "close returned 0",
        ],
    );
    assert!(!text.contains("not returned"), "{text}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn print_describes_the_jobserver_and_each_job() {
    let text = expect_lines(
        &mut probe_mode("print"),
        "print",
        &["collect returned 0", "close returned 0"],
    );
    let described = text.lines().find(|line| line.starts_with("dry run: 0; ")).expect("the state");
    for field in ["size: 1", "has-free-token: 0", "jobs: 2", "token: implicit", "token: 'x'"] {
        assert!(described.contains(field), "no {field:?} in {described:?}");
    }
    assert_eq!(described.matches(" | pid: ").count(), 2, "{described}");
    let returned = format!("print returned {}", described.len());
    assert!(text.lines().any(|line| line == returned), "{returned:?} not in {text}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and pkg-config, which scripts/test installs")]
fn getenv_setenv_and_unsetenv_read_publish_and_remove_the_jobserver_keeping_other_flags() {
    let text = expect_lines(
        probe_mode("env").env("MAKEFLAGS", "ks -j9"),
        "the environment calls",
        &["getenv returned 0", "dry_run 0 debug 0 keep_going 1", "after unsetenv MAKEFLAGS [ks]"],
    );
    let published = |when: &str| {
        let line = text.lines().find(|line| line.starts_with(when)).expect(when);
        line[when.len()..].to_string()
    };
    let created = published("after create MAKEFLAGS ");
    assert!(created.starts_with("[ks -j3 --jobserver-fds="), "{created}");
    // setenv writes the flags the structure holds (the probe cleared keep_going).
    let set = published("after setenv MAKEFLAGS ");
    assert_eq!(set, created.replacen("[ks", "[s", 1), "{set} after {created}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs man and groff, which scripts/test installs")]
fn every_call_has_a_man_page_that_renders_without_warnings() {
    let manpath = capi::prefix().join("share/man");
    let pages = capi::CALLS
        .iter()
        .map(|call| ("3", format!("jobserver_{call}")))
        .chain([("7", "jobserver".to_string())]);
    for (section, name) in pages {
        let output = Command::new("man")
            .args(["--warnings", "-P", "cat", "-M"])
            .arg(&manpath)
            .args([section, &name])
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        assert_success(&output, &format!("man {section} {name}"));
        let text = stdout(&output);
        assert!(text.contains(&name), "man {section} {name} does not name it:\n{text}");
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(warnings.trim().is_empty(), "man {section} {name}: {warnings}");
    }
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, gcc and pkg-config, which scripts/test installs"
)]
fn the_c_example_in_docs_runs_its_commands_within_make_and_on_its_own() {
    let example = capi::compile("docs/examples/jobserver-run.c", Link::Shared);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let commands: Vec<String> = (0..8)
        .map(|n| {
            format!(
                "'echo start e{n} $$(date +%s%N) >> {0}; sleep 0.2; echo end e{n} $$(date +%s%N) >> {0}'",
                log.display()
            )
        })
        .collect();
    one_rule(dir.path(), &format!("{} 1 {}", example.display(), commands.join(" ")), true);
    let output = clean(&clients::make44()).arg("-j3").current_dir(dir.path()).output().unwrap();
    assert_success(&output, "docs/examples/jobserver-run.c under make -j3");
    timeline::assert_peak_within(&log, 8, 3, "the C example under make -j3");

    // With no jobserver it makes its own of 2 jobs.
    std::fs::remove_file(&log).unwrap();
    let commands: Vec<String> =
        commands.iter().map(|command| command.replace("$$", "$").replace('\'', "")).collect();
    let output = clean(&example).arg("2").args(&commands).output().unwrap();
    assert_success(&output, "docs/examples/jobserver-run.c on its own");
    timeline::assert_peak_within(&log, 8, 2, "the C example with a jobserver of its own");
}
