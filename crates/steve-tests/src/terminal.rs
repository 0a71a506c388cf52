//! A real terminal for the tests: a command running in a tmux server of its own (a pty of a
//! given size), its screen read back as tmux shows it.

use std::process::{Command, Output};
use std::time::Duration;

use crate::assert_success;

/// A real terminal: `command` running in a tmux server of its own, killed when dropped.
pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Starts `command` in a `width` × `height` terminal; `name` keeps the server apart.
    pub fn start(name: &str, command: &str, width: u16, height: u16) -> Terminal {
        let terminal = Terminal { socket: format!("steve-{name}-{}", std::process::id()) };
        let (width, height) = (width.to_string(), height.to_string());
        let started = terminal.tmux(&["new-session", "-d", "-x", &width, "-y", &height, command]);
        assert_success(&started, "tmux new-session");
        terminal
    }

    /// Runs `tmux ARGS` against this terminal's server.
    pub fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("run tmux")
    }

    /// Types `keys` (tmux key names, such as Enter and Tab, or text).
    pub fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// The screen (with its colour codes if `escapes`) once it shows `wanted`; panics after
    /// `limit`.
    pub fn screen_showing(&self, wanted: &str, escapes: bool, limit: Duration) -> String {
        let capture: &[&str] =
            if escapes { &["capture-pane", "-p", "-e"] } else { &["capture-pane", "-p"] };
        crate::wait_for(&format!("{wanted:?} on the screen"), limit, || {
            let shown = String::from_utf8_lossy(&self.tmux(capture).stdout).into_owned();
            shown.contains(wanted).then_some(shown)
        })
    }
}

impl Terminal {
    /// The screen now with wrapped lines joined (`capture-pane -J`): a line the program wrote
    /// wider than the terminal shows as wider, not as two.
    pub fn screen_joined(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-J"]).stdout).into_owned()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}
