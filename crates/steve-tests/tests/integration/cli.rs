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

#[test]
fn serve_without_backend_picks_the_best_available_and_says_why() {
    use std::io::BufRead;
    let listing = command().arg("backends").output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let available = |name: &str| {
        listing.lines().any(|line| line.starts_with(name) && line.ends_with(" available"))
    };
    let expected = ["cuse", "fuse", "fifo"]
        .into_iter()
        .find(|name| available(name))
        .expect("fifo works everywhere");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    let mountpoint = dir.path().join("mnt");
    let log = dir.path().join("steve.log");
    let mut server = command()
        .args(["serve", "-j", "1", "--dev-name", "steve-auto-test", "--path"])
        .arg(&path)
        .arg("--mountpoint")
        .arg(&mountpoint)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut announcement = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut announcement).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    server.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("backend {expected} chosen")), "{text}");
    for passed_over in ["cuse", "fuse"].into_iter().take_while(|name| *name != expected) {
        let reason = listing
            .lines()
            .find(|line| line.starts_with(passed_over))
            .and_then(|line| line.split_once("unavailable: "))
            .map(|(_, why)| why.to_string())
            .unwrap();
        assert!(text.contains(&format!("backend {passed_over} passed over: {reason}")), "{text}");
    }
    let jobserver = match expected {
        "cuse" => "/dev/steve-auto-test".into(),
        "fuse" => mountpoint.join("jobserver"),
        _ => path,
    };
    assert!(announcement.contains(&format!("fifo:{}", jobserver.display())), "{announcement}");
}
