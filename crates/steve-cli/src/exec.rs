//! `steve exec -- CMD`: takes one token from the current jobserver, runs CMD with MAKEFLAGS
//! naming the same server, and gives the token back when CMD ends (Gentoo's `stevie CMD`). Built
//! on steve-core's client library.
//!
//! The jobserver is the one MAKEFLAGS (CARGO_MAKEFLAGS, MFLAGS) names; when none does, the
//! machine's steve: `/dev/steve`, `/run/steve/fuse/jobserver`, `/run/steve/jobserver`, or under
//! `$XDG_RUNTIME_DIR/steve` `fuse/jobserver` or `jobserver`, the first that exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use steve_core::client::{Client, ClientError};
use steve_core::makeflags::{Jobs, JobserverAuth, MakeFlags};
use steve_core::signals::{supervise, Signals};
use tracing::debug;

use crate::CommandLine;

/// Options of `steve exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    command: CommandLine,
}

/// The command could not be started (the exit status says 126 or 127, as env(1)).
#[derive(Debug)]
pub struct SpawnFailed {
    /// The command's name.
    pub command: String,
    /// Why.
    pub source: std::io::Error,
}

impl std::fmt::Display for SpawnFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot run {}: {}", self.command, self.source)
    }
}

impl std::error::Error for SpawnFailed {}

/// Where the machine's steve serves, when the environment names no jobserver.
fn system_jobserver() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> =
        ["/dev/steve", "/run/steve/fuse/jobserver", "/run/steve/jobserver"]
            .map(PathBuf::from)
            .into();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(&dir).join("steve/fuse/jobserver"));
        candidates.push(Path::new(&dir).join("steve/jobserver"));
    }
    candidates.into_iter().find(|path| path.exists())
}

/// Runs `steve exec`; returns the command's exit status.
pub fn run(args: ExecArgs) -> anyhow::Result<std::process::ExitStatus> {
    let (program, rest) = args.command.command.split_first().context("no command given")?;
    let mut command = Command::new(program);
    command.args(rest);
    let client = match Client::from_env() {
        Ok(client) => Some(client),
        Err(ClientError::NoJobserver) => {
            let Some(path) = system_jobserver() else {
                bail!("no jobserver in MAKEFLAGS and no steve serving on this machine");
            };
            let auth = JobserverAuth::Fifo(path);
            let flags =
                MakeFlags::default().with_jobserver(Jobs::Unlimited, auth.clone()).to_string();
            command.env("MAKEFLAGS", &flags).env("CARGO_MAKEFLAGS", &flags);
            Some(Client::open(&auth)?)
        }
        // A dry run runs no jobs: nothing to take a token for.
        Err(ClientError::DryRun { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    let mut signals = Signals::block().context("blocking signals")?;
    let token = match &client {
        Some(client) => Some(client.acquire()?),
        None => None,
    };
    debug!(token = ?token.as_ref().map(|t| t.byte() as char), "running {:?}", args.command.command);
    let mut child = command.spawn().map_err(|source| SpawnFailed {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    let status = supervise(&mut child, &mut signals, &mut || {})?;
    drop(token);
    Ok(status)
}
