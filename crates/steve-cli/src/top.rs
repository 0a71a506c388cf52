//! `steve top`: a live view of a running server, redrawn every interval until `q` (or ^C, read
//! as a key). On a terminal it draws on the alternate screen (the shell's screen comes back as
//! it was), every line cut to the terminal's width: the pool with a utilisation bar, a short
//! history of tokens held and waited for, grants per second and the longest wait, the builds
//! with their shares, the holders and the waiters. A pipe server shows what a pipe can know:
//! tokens in it, the processes that have it open, recoveries.
//!
//! A server that goes away is waited for ("server stopped, waiting") and the view picks up
//! the next one. Not on a terminal, or with `--once`, it prints plain frames; with `--json`,
//! each sample as one JSON document (a line each, one with `--once`).

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg, Termios};
use serde_json::json;
use steve_core::status::StatusReport;

use crate::control::fetch_status;

/// Options of `steve top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Seconds between redraws.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    interval: f64,
    /// Print one frame (or one JSON document) and stop.
    #[arg(long)]
    once: bool,
    /// Print each sample as JSON (the status, grants per second, the longest wait) instead of
    /// drawing.
    #[arg(long)]
    json: bool,
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

/// The alternate screen, with the cursor hidden, until dropped.
struct AlternateScreen;

impl AlternateScreen {
    fn enter() -> std::io::Result<AlternateScreen> {
        let mut stdout = std::io::stdout();
        stdout.write_all(b"\x1b[?1049h\x1b[?25l")?;
        stdout.flush()?;
        Ok(AlternateScreen)
    }
}

impl Drop for AlternateScreen {
    fn drop(&mut self) {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = stdout.flush();
    }
}

/// Samples of held and waited-for tokens kept for the history line.
const HISTORY: usize = 120;

/// What the view remembers between samples.
#[derive(Default)]
struct Memory {
    /// The server last seen (its pid): another one starts the history again.
    daemon: Option<u32>,
    held: VecDeque<usize>,
    waiting: VecDeque<usize>,
    /// The last sample's grants and when it was taken.
    last_grants: Option<(u64, Instant)>,
}

/// One sample: the report and what is worked out from it and the one before.
struct Sample {
    report: StatusReport,
    grants_per_second: Option<f64>,
    longest_wait_seconds: Option<f64>,
}

impl Memory {
    fn take(&mut self, report: StatusReport, now: Instant) -> Sample {
        if self.daemon != Some(report.daemon_pid) {
            *self = Memory { daemon: Some(report.daemon_pid), ..Memory::default() };
        }
        let waiting = report.waiters.as_ref().map_or(0, Vec::len);
        for (history, value) in [(&mut self.held, report.pool.held), (&mut self.waiting, waiting)] {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(value);
        }
        let grants = report.counters.grants;
        let grants_per_second = match (grants, self.last_grants) {
            (Some(now_count), Some((then_count, then))) => {
                let seconds = now.duration_since(then).as_secs_f64();
                (seconds > 0.0).then(|| now_count.saturating_sub(then_count) as f64 / seconds)
            }
            _ => None,
        };
        self.last_grants = grants.map(|count| (count, now));
        let longest_wait_seconds = report
            .waiters
            .as_ref()
            .map(|waiters| waiters.iter().map(|w| w.waiting_seconds).fold(0.0, f64::max));
        Sample { report, grants_per_second, longest_wait_seconds }
    }
}

/// `steve top`.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let interval = Duration::try_from_secs_f64(args.interval.clamp(0.1, 60.0))?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let drawing = stdout.is_terminal() && !args.once && !args.json;
    let _cbreak = if drawing && stdin.is_terminal() { Some(Cbreak::enter()?) } else { None };
    let _screen = if drawing { Some(AlternateScreen::enter()?) } else { None };
    let mut memory = Memory::default();
    let mut stdin_open = drawing;
    loop {
        let fetched = fetch_status(args.control.as_deref());
        let (width, height) = terminal_size();
        let lines = match fetched {
            Ok(report) => {
                let sample = memory.take(report, Instant::now());
                if args.json {
                    let document = json!({
                        "status": sample.report,
                        "grants_per_second": sample.grants_per_second,
                        "longest_wait_seconds": sample.longest_wait_seconds,
                    });
                    crate::output::line(&serde_json::to_string(&document)?)?;
                    if args.once {
                        return Ok(());
                    }
                    Vec::new()
                } else {
                    frame(&sample, &memory)
                }
            }
            // A --once asks about now: a server that is not there is an error.
            Err(error) if args.once => return Err(error),
            Err(error) => vec![
                "steve top: server stopped, waiting for it (q quits)".to_string(),
                String::new(),
                format!("{error:#}"),
            ],
        };
        if !lines.is_empty() {
            draw(&lines, width, if drawing { Some(height) } else { None })?;
        }
        if args.once {
            return Ok(());
        }
        if !stdin_open {
            std::thread::sleep(interval);
            continue;
        }
        let timeout =
            PollTimeout::try_from(interval.as_millis() as i32).unwrap_or(PollTimeout::MAX);
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

/// The terminal's columns and rows (80 × 24 when it cannot be asked).
fn terminal_size() -> (usize, usize) {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(size) if size.ws_col > 0 && size.ws_row > 0 => {
            (usize::from(size.ws_col), usize::from(size.ws_row))
        }
        _ => (80, 24),
    }
}

/// Writes `lines`, each cut to `width`: on the alternate screen from its top (no more than
/// `height` lines, the rest of each line and of the screen cleared), or plainly, with a blank
/// line after the frame.
fn draw(lines: &[String], width: usize, height: Option<usize>) -> std::io::Result<()> {
    let mut out = String::new();
    match height {
        Some(height) => {
            out.push_str("\x1b[H");
            for (n, line) in lines.iter().take(height).enumerate() {
                if n > 0 {
                    out.push_str("\r\n");
                }
                out.push_str(&cut(line, width));
                out.push_str("\x1b[K");
            }
            out.push_str("\x1b[J");
        }
        None => {
            for line in lines {
                out.push_str(&cut(line, width));
                out.push('\n');
            }
            out.push('\n');
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()
}

/// `line` cut to `width` characters (every character here takes one column).
fn cut(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

/// `value` of `most` as a bar of `width` cells.
fn bar(value: usize, withheld: usize, most: usize, width: usize) -> String {
    let most = most.max(1);
    let cells = |count: usize| (count * width).div_ceil(most).min(width);
    let held = cells(value);
    let kept = cells(value + withheld).saturating_sub(held);
    format!("[{}{}{}]", "#".repeat(held), "x".repeat(kept), ".".repeat(width - held - kept))
}

/// The newest values of `history` as a sparkline, scaled to `most`.
fn sparkline(history: &VecDeque<usize>, most: usize, width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let most = most.max(1);
    let skip = history.len().saturating_sub(width);
    history
        .iter()
        .skip(skip)
        .map(|value| LEVELS[(value * (LEVELS.len() - 1)).div_ceil(most).min(LEVELS.len() - 1)])
        .collect()
}

fn or_dash(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.1}{unit}"))
}

/// One frame, before cutting to the terminal's width.
fn frame(sample: &Sample, memory: &Memory) -> Vec<String> {
    let report = &sample.report;
    let pool = &report.pool;
    let mut lines = vec![
        format!(
            "steve top: {} {} (pid {}, up {:.0} s; q quits)",
            report.backend,
            report.path.display(),
            report.daemon_pid,
            report.uptime_seconds
        ),
        format!(
            "pool {} {} held, {} withheld, {} free of {} (jobs {})",
            bar(pool.held, pool.withheld, pool.size, 20),
            pool.held,
            pool.withheld,
            pool.free,
            pool.size,
            pool.jobs
        ),
        format!("held    {}", sparkline(&memory.held, pool.size, 40)),
    ];
    if report.waiters.is_some() {
        let most = memory.waiting.iter().copied().max().unwrap_or(0).max(pool.size);
        lines.push(format!("waiting {}", sparkline(&memory.waiting, most, 40)));
        lines.push(format!(
            "grants {}  longest wait {}  waiting {}",
            or_dash(sample.grants_per_second, "/s"),
            or_dash(sample.longest_wait_seconds, " s"),
            report.waiters.as_ref().map_or(0, Vec::len)
        ));
    }
    match &report.limited_by {
        Some(pressure) => lines.push(format!("limited: {pressure}")),
        None => lines.push("limits: not holding tokens back".to_string()),
    }
    if !report.holders_exact {
        // A pipe: what it can know.
        lines.push(format!(
            "pipe: {} token(s) in the pipe, {} out; {} process(es) have it open; {} recovered",
            pool.free,
            pool.held,
            report.holders.len(),
            report.counters.reclaimed
        ));
        lines.push(String::new());
        lines.push("processes with the pipe open".to_string());
        for holder in &report.holders {
            lines.push(format!("  {:>7}  {}", holder.pid, holder.command));
        }
        return lines;
    }
    lines.push(String::new());
    let builds = report.builds.as_deref().unwrap_or_default();
    lines.push(format!("builds ({})           tokens  waiting  share", builds.len()));
    for build in builds {
        let share = build.share.map_or_else(|| "-".to_string(), |share| format!("{share:.2}"));
        lines.push(format!(
            "  #{:<4} {:>7}  {:>7}  {:>5}  {}",
            build.build, build.tokens, build.waiting, share, build.command
        ));
    }
    lines.push(String::new());
    lines.push(format!("holders ({})", report.holders.len()));
    for holder in &report.holders {
        let tokens = holder.tokens.map_or_else(|| "-".to_string(), |tokens| tokens.to_string());
        let held = or_dash(holder.held_seconds, " s");
        lines
            .push(format!("  {:>7} {:>3} tok {:>8}  {}", holder.pid, tokens, held, holder.command));
    }
    if let Some(waiters) = &report.waiters {
        lines.push(String::new());
        lines.push(format!("waiters ({})", waiters.len()));
        for waiter in waiters {
            lines.push(format!(
                "  {:>7} {:<8} {:>6.1} s  {}",
                waiter.pid, waiter.kind, waiter.waiting_seconds, waiter.command
            ));
        }
    }
    if let Some(companion) = &report.companion {
        lines.push(String::new());
        lines.push(format!(
            "companion FIFO {}: {} token(s), {} in the pipe, {} recovered",
            companion.path.display(),
            companion.tokens,
            companion.in_pipe,
            companion.recovered
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_sparklines_fit_their_cells() {
        assert_eq!(bar(2, 1, 4, 8), "[####xx..]");
        assert_eq!(bar(0, 0, 0, 4), "[....]");
        let history: VecDeque<usize> = [0, 1, 2, 4, 4].into_iter().collect();
        assert_eq!(sparkline(&history, 4, 3), "▅██");
        assert_eq!(sparkline(&history, 4, 10).chars().count(), 5);
        assert_eq!(cut("ab▁cd", 3), "ab▁");
    }
}
