//! `steve top` in a real terminal (tmux, 60 columns): the alternate screen, every line within
//! the width, a pipe's own figures, a server restart waited out, and `--once --json`.

use std::fs;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use steve_tests::steve::{self, FifoServer};
use steve_tests::terminal::Terminal;
use steve_tests::wait_for;

/// The screen's lines, as tmux shows them.
fn lines(screen: &str) -> Vec<&str> {
    screen.lines().collect()
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs tmux, which scripts/test installs")]
fn top_fits_the_terminal_shows_the_pipe_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pipe, control, log) =
        (dir.path().join("jobserver"), dir.path().join("control"), dir.path().join("log"));
    let args = ["-j", "3", "--control", control.to_str().unwrap()];
    let server = FifoServer::start_at(&pipe, &log, &args).expect("steve serve");
    // A process with the pipe open and a command line far wider than the terminal.
    let long = format!("exec 3<>{}; sleep 300 # {}", pipe.display(), "x".repeat(200));
    let mut opener = Command::new("sh").args(["-c", &long]).spawn().unwrap();
    let top =
        format!("{} top --interval 0.2 --control {}", steve::binary().display(), control.display());
    let terminal = Terminal::start("top", &top, 60, 30);
    terminal.screen_showing("sleep 300", false, Duration::from_secs(10));
    let screen = terminal.screen_joined();
    for line in lines(&screen) {
        assert!(line.chars().count() <= 60, "a line wider than 60 columns: {line:?}\n{screen}");
    }
    assert!(screen.contains(
        &format!("steve top: fifo {}", pipe.display()).chars().take(60).collect::<String>()
    ));
    // sh and its sleep both have the pipe open.
    assert!(screen.contains("3 token(s) in the pipe, 0 out; 2 process(es)"), "{screen}");
    assert!(!screen.contains(" - "), "a pipe's figures are shown, not dashes: {screen}");
    let alternate = terminal.tmux(&["display-message", "-p", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alternate.stdout).trim(),
        "1",
        "not on the alternate screen"
    );

    // The server goes; top waits; a new server on the same socket is picked up.
    let first = server.pid();
    server.stop_with(Signal::SIGTERM);
    terminal.screen_showing("server stopped, waiting", false, Duration::from_secs(10));
    let server = FifoServer::start_at(&pipe, &log, &args).expect("steve serve again");
    terminal.screen_showing(&format!("(pid {}", server.pid()), false, Duration::from_secs(10));
    assert_ne!(server.pid(), first);
    let screen = terminal.screen_joined();
    assert!(lines(&screen).iter().all(|line| line.chars().count() <= 60), "{screen}");

    // q leaves the alternate screen and ends top.
    terminal.send(&["q"]);
    wait_for("top to end", Duration::from_secs(10), || {
        let panes = terminal.tmux(&["list-panes", "-F", "#{pane_dead}#{pane_current_command}"]);
        let text = String::from_utf8_lossy(&panes.stdout).into_owned();
        (!panes.status.success() || !text.contains("steve")).then_some(())
    });
    let _ = opener.kill();
    let _ = opener.wait();
    drop(server);
    let _ = fs::remove_dir_all(dir.path());
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs root for a fifo server's leak recovery")]
fn top_once_json_prints_one_document() {
    let server = FifoServer::start(2);
    let output = steve::command()
        .args(["top", "--once", "--json", "--control"])
        .arg(&server.control)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not one JSON document ({error}): {output:?}"));
    assert_eq!(document["status"]["backend"], "fifo");
    assert_eq!(document["status"]["pool"]["size"], 2);
    assert!(document.get("grants_per_second").is_some());
    // And --once without a server fails in one line rather than waiting.
    let missing = steve::command()
        .args(["top", "--once", "--control", "/nonexistent/control"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert_eq!(steve::stderr_lines(&missing).len(), 1, "{missing:?}");
}
