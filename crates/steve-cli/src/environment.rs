//! The environment a build needs to join a server: `MAKEFLAGS`, `STEVE_CONTROL` and, where a
//! companion FIFO is served, `STEVE_FIFO_MAKEFLAGS`. `steve serve` prints it when it is ready;
//! `steve env` asks a running server for it, for a shell (`eval "$(steve env)"`) or a service
//! manager's environment file (`steve env --format systemd > /run/steve/env`).

use std::path::{Path, PathBuf};

use steve_core::makeflags::{jobserver_makeflags, JobserverAuth};

use crate::{control, output};

/// How the lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `export NAME='value'`: for a POSIX shell to evaluate or source.
    Sh,
    /// `NAME='value'`: for systemd's EnvironmentFile= (and `set -a; . FILE` in a shell).
    Systemd,
}

/// Options of `steve env`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// sh: `export` lines for a shell; systemd: lines for a unit's EnvironmentFile=.
    #[arg(long, value_enum, default_value_t = Format::Sh)]
    format: Format,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// The variables for a server: its MAKEFLAGS, its control socket, and its companion FIFO's
/// MAKEFLAGS if it has one.
pub fn lines(
    makeflags: &str,
    control: &Path,
    fifo_makeflags: Option<&str>,
    format: Format,
) -> String {
    let prefix = match format {
        Format::Sh => "export ",
        Format::Systemd => "",
    };
    let mut variables = vec![
        ("MAKEFLAGS", makeflags.to_string()),
        ("STEVE_CONTROL", control.display().to_string()),
    ];
    if let Some(fifo) = fifo_makeflags {
        variables.push(("STEVE_FIFO_MAKEFLAGS", fifo.to_string()));
    }
    let lines: Vec<String> = variables
        .into_iter()
        .map(|(name, value)| format!("{prefix}{name}='{}'", value.replace('\'', r"'\''")))
        .collect();
    lines.join("\n")
}

/// `steve env`.
pub fn run(args: EnvArgs) -> anyhow::Result<()> {
    let report = control::fetch_status(args.control.as_deref())?;
    let jobs = report.limits.jobs;
    let makeflags = jobserver_makeflags(jobs, JobserverAuth::Fifo(report.path.clone()));
    let fifo = report
        .companion
        .as_ref()
        .map(|companion| jobserver_makeflags(jobs, JobserverAuth::Fifo(companion.path.clone())));
    let control = report.control.clone().unwrap_or_default();
    output::line(&lines(&makeflags, &control, fifo.as_deref(), args.format))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_export_and_quote_and_systemd_lines_do_not_export() {
        let sh = lines(" -j2 --jobserver-auth=fifo:/x'y", Path::new("/c"), Some("f"), Format::Sh);
        assert_eq!(
            sh,
            "export MAKEFLAGS=' -j2 --jobserver-auth=fifo:/x'\\''y'\nexport STEVE_CONTROL='/c'\n\
             export STEVE_FIFO_MAKEFLAGS='f'"
        );
        let unit = lines(" -j2", Path::new("/c"), None, Format::Systemd);
        assert_eq!(unit, "MAKEFLAGS=' -j2'\nSTEVE_CONTROL='/c'");
    }
}
