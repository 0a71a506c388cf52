//! The command line itself: listing backends and choosing one.

use steve_tests::steve::{command, stderr_lines};

#[test]
fn backends_lists_fifo_and_pipe_as_available() {
    let output = command().arg("backends").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for name in ["fifo", "pipe"] {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(line.ends_with("available"), "{line}");
    }
}

#[test]
fn serve_refuses_an_unknown_or_unfit_backend() {
    for (backend, message) in [
        ("nosuch", "no backend named \"nosuch\""),
        ("pipe", "backend pipe serves one command tree: use `steve run`"),
    ] {
        let output = command().args(["serve", "--backend", backend]).output().unwrap();
        assert!(!output.status.success());
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(message), "{}", lines[0]);
    }
}

#[test]
fn verbose_logs_what_steve_run_gives_the_command() {
    let quiet =
        command().args(["run", "-j", "2", "--", "true"]).env_remove("STEVE_LOG").output().unwrap();
    assert!(stderr_lines(&quiet).is_empty(), "{:?}", stderr_lines(&quiet));
    let verbose = command()
        .args(["-v", "run", "-j", "2", "--", "true"])
        .env_remove("STEVE_LOG")
        .output()
        .unwrap();
    let lines = stderr_lines(&verbose);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("DEBUG") && line.contains("makeflags= -j2 --jobserver-fds=")),
        "{lines:?}"
    );
}
