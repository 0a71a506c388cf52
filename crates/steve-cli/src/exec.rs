//! `steve exec -- CMD`: takes one token from the current jobserver, runs CMD with MAKEFLAGS
//! naming the same server, and gives the token back when CMD ends (Gentoo's `stevie CMD`). Built
//! on steve-core's client library.
//!
//! The jobserver is the one MAKEFLAGS (CARGO_MAKEFLAGS, MFLAGS) names; when none does, the
//! machine's steve: the first default place of any backend, in `--backend auto`'s order, that
//! exists (`/dev/steve`, `/run/steve/fuse/jobserver`, `/run/steve/jobserver`, and the same under
//! `$XDG_RUNTIME_DIR/steve`).

use std::fmt;
use std::process::{Command, ExitStatus};

use steve_core::client::{Client, ClientError};
use steve_core::makeflags::{Jobs, JobserverAuth, MakeFlags};
use steve_core::server::signals::{supervise, SignalEvent, Signals};
use steve_core::server::ErrorKind;
use tracing::debug;

use crate::CommandLine;

/// Options of `steve exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    command: CommandLine,
}

/// Why `steve exec` could not run its command.
#[derive(Debug)]
pub enum ExecError {
    /// No jobserver in the environment, and no steve serving here.
    NoJobserver,
    /// The jobserver could not be joined or read.
    Client(ClientError),
    /// Signals could not be blocked, or the command could not be waited for.
    Supervise(std::io::Error),
    /// A stop signal came while waiting for a token: the command was not run.
    Stopped(nix::sys::signal::Signal),
    /// The command could not be started.
    Spawn {
        /// The command's name.
        command: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ExecError {
    /// What kind of failure it is, for the exit code (126 or 127 as env(1), else 125).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Stopped(_) => ErrorKind::Stopped,
            ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::CommandNotFound
            }
            ExecError::Spawn { .. } => ErrorKind::CommandNotExecutable,
            _ => ErrorKind::Failed,
        }
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::NoJobserver => {
                f.write_str("no jobserver in MAKEFLAGS and no steve serving on this machine")
            }
            ExecError::Client(error) => write!(f, "{error}"),
            ExecError::Supervise(_) => f.write_str("cannot supervise the command"),
            ExecError::Stopped(signal) => {
                write!(f, "{signal} while waiting for a token: the command was not run")
            }
            ExecError::Spawn { command, .. } => write!(f, "cannot run {command}"),
        }
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecError::Client(error) => error.source(),
            ExecError::Supervise(source) | ExecError::Spawn { source, .. } => Some(source),
            ExecError::NoJobserver | ExecError::Stopped(_) => None,
        }
    }
}

/// Where the machine's steve serves, when the environment names no jobserver.
fn system_jobserver() -> Option<std::path::PathBuf> {
    steve_core::server::backend::default_places()
        .into_iter()
        .map(|place| place.jobserver)
        .find(|path| path.exists())
}

/// Waits for a token, or stops on SIGINT, SIGTERM or SIGHUP (which are blocked, so they would
/// otherwise wait unseen until the command ran).
fn wait_for_token(client: &Client, signals: &mut Signals) -> Result<steve_core::Token, ExecError> {
    use std::os::fd::AsFd;
    loop {
        if let Some(token) = client.acquire_unless(signals.as_fd()).map_err(ExecError::Client)? {
            return Ok(token);
        }
        while let Some(received) =
            signals.read_pending().map_err(|errno| ExecError::Supervise(errno.into()))?
        {
            if let SignalEvent::Stop(signal) = received.event {
                return Err(ExecError::Stopped(signal));
            }
        }
    }
}

/// Runs `steve exec`; returns the command's exit status.
pub fn run(args: ExecArgs) -> Result<ExitStatus, ExecError> {
    let (program, rest) = args.command.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command.args(rest);
    let client = match Client::from_env() {
        Ok(client) => Some(client),
        Err(ClientError::NoJobserver) => {
            let path = system_jobserver().ok_or(ExecError::NoJobserver)?;
            let auth = JobserverAuth::Fifo(path);
            let flags =
                MakeFlags::default().with_jobserver(Jobs::Unlimited, auth.clone()).to_string();
            command.env("MAKEFLAGS", &flags).env("CARGO_MAKEFLAGS", &flags);
            Some(Client::open(&auth).map_err(ExecError::Client)?)
        }
        // A dry run runs no jobs: nothing to take a token for.
        Err(ClientError::DryRun { .. }) => None,
        Err(error) => return Err(ExecError::Client(error)),
    };
    let mut signals = Signals::block().map_err(|errno| ExecError::Supervise(errno.into()))?;
    let token = match &client {
        Some(client) => Some(wait_for_token(client, &mut signals)?),
        None => None,
    };
    debug!(token = ?token.as_ref().map(|t| t.byte() as char), "running {:?}", args.command.command);
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    let status = supervise(&mut child, &mut signals, &mut || {}).map_err(ExecError::Supervise)?;
    drop(token);
    Ok(status)
}
