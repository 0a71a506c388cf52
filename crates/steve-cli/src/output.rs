//! What the CLI writes: an error as one line with its causes, and lines on a standard output
//! that may be closed under it (`steve status | head -1`), which ends the command quietly.

use std::io::Write;

/// Writes `error` to stderr as one line: `steve: error: what: why: why`.
pub fn error(error: &(dyn std::error::Error + 'static)) {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    // One line, whatever a cause's message holds (fusermount3's ends in a newline).
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("steve: error: {text}");
}

/// Writes clap's message about arguments it cannot use as one line, without the usage and tip
/// that follow it.
pub fn usage_error(rendered: &str) {
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty() && !line.starts_with("Usage:"))
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("steve: error: {message} (see steve --help)");
}

/// Writes `text` and a newline to stdout, and flushes.
pub fn line(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}

/// Whether `error` is, or was caused by, writing to a closed standard output.
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
