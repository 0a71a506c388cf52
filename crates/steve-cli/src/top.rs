//! `steve top`: a live view of a running server (holders, waiters, limits), redrawn every
//! interval until `q` (or ^C, read as a key) is pressed.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, Termios};

use crate::control::fetch_status;

/// Options of `steve top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Seconds between redraws.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    interval: f64,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// The terminal in cbreak mode (keys arrive one by one, unechoed, ^C as a key) until dropped.
struct Cbreak {
    saved: Termios,
}

impl Cbreak {
    fn enter() -> anyhow::Result<Cbreak> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Cbreak { saved })
    }
}

impl Drop for Cbreak {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// `steve top`.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let interval = Duration::try_from_secs_f64(args.interval.clamp(0.1, 60.0))?;
    let stdin = std::io::stdin();
    let _cbreak = if stdin.is_terminal() { Some(Cbreak::enter()?) } else { None };
    let mut stdin_open = true;
    let mut stdout = std::io::stdout();
    loop {
        let report = fetch_status(args.control.as_deref())?;
        // Home, clear, then the frame.
        write!(stdout, "\x1b[H\x1b[2J")?;
        writeln!(stdout, "steve top: {} {} (q quits)\n", report.backend, report.path.display())?;
        writeln!(stdout, "{report}")?;
        stdout.flush()?;
        let timeout =
            PollTimeout::try_from(interval.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        if !stdin_open {
            std::thread::sleep(interval);
            continue;
        }
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout)? > 0 {
            let mut keys = [0u8; 64];
            let count = stdin.lock().read(&mut keys)?;
            if count == 0 {
                stdin_open = false;
            } else if keys[..count].iter().any(|key| matches!(key, b'q' | b'Q' | 0x03)) {
                return Ok(());
            }
        }
    }
}
