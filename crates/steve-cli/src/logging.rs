//! Where log lines go and how they look: coloured on a terminal (unless `NO_COLOR` is set or
//! `--color never`), plain into a pipe or file, and without timestamps of their own under
//! journald, which stamps every line itself.

use std::io::IsTerminal;

/// `--color`: whether log lines carry ANSI colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// On a terminal, unless NO_COLOR is set to anything but the empty string.
    Auto,
    /// Always, even into a pipe.
    Always,
    /// Never.
    Never,
}

/// Sets up the global logger on stderr.
pub fn init(verbose: bool, debug: bool, color: Color) {
    // fuser (which mounts for the fuse backend) logs its steps at info; steve says the same in
    // its own words, so fuser speaks up only with --debug, or --verbose for its info.
    let default = if debug {
        "trace"
    } else if verbose {
        "debug,fuser=info"
    } else {
        "info,fuser=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let journal = stderr_is_the_journal();
    let ansi = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
        }
    };
    // Module paths (steve_cuse::session) are for debugging steve; a server's lines name its
    // backend through their span instead.
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(verbose || debug);
    if journal {
        logger.without_time().init();
    } else {
        logger.init();
    }
}

/// Whether stderr is connected to journald: systemd sets JOURNAL_STREAM to the device and inode
/// of the stream it gave the service, which stay ours only while nothing redirected stderr.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|text| text.split_once(':')) else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(stderr.dev()) && ino.parse() == Ok(stderr.ino())
}
