//! `steve exec -- CMD`: takes one token from the current jobserver, runs CMD with MAKEFLAGS
//! naming the same server, and gives the token back when CMD ends (Gentoo's `stevie CMD`). Built
//! on steve-core's client library.
//!
//! With `--pipe` or `--fifo`, CMD's tree gets a private jobserver instead (inherited `R,W`
//! descriptors, or a private named pipe), for the clients that cannot open the machine's: make
//! 4.3 and GCC 12's LTO take only descriptors, ninja only a FIFO. Its tokens are borrowed from
//! the machine's jobserver one at a time as the tree takes them (a steve-core `Relay` keeps one
//! spare in the private pipe, four in a named one; what the tree writes back beyond them goes
//! back at once, and untaken spares go back after half a second so that others get their turn),
//! and every
//! borrowed token goes back when CMD ends, whatever the tree left unreturned. The tree thus
//! holds at most the token taken for CMD plus what it borrowed.
//!
//! The jobserver is the one MAKEFLAGS (CARGO_MAKEFLAGS, MFLAGS) names; when none does, the
//! machine's steve: the first default place of any backend, in `--backend auto`'s order, that
//! exists (`/dev/steve`, `/run/steve/fuse/jobserver`, `/run/steve/jobserver`, and the same under
//! `$XDG_RUNTIME_DIR/steve`).

use std::fmt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use steve_core::client::{Client, ClientError, Jobserver, Style};
use steve_core::makeflags::{Jobs, JobserverAuth, MakeFlags};
use steve_core::relay::Relay;
use steve_core::server::signals::{supervise, SignalEvent, Signals};
use steve_core::server::ErrorKind;
use tracing::debug;

use crate::CommandLine;

/// Options of `steve exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Give CMD's tree a private jobserver of inherited descriptors (--jobserver-auth=R,W: make
    /// 4.3, GCC 12's LTO) whose tokens are borrowed from the machine's as the tree needs them.
    #[arg(long, conflicts_with = "fifo")]
    pipe: bool,
    /// The same through a private named pipe (fifo:PATH): ninja, and every client that takes
    /// only a real FIFO.
    #[arg(long)]
    fifo: bool,
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
    let mut advertised = Jobs::Unlimited;
    let client = match Client::from_env() {
        Ok(client) => {
            if let Ok(Some(found)) = steve_core::makeflags::from_env() {
                advertised = found.flags.jobs.unwrap_or(Jobs::Unlimited);
            }
            Some(client)
        }
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
    let style = match (args.pipe, args.fifo) {
        (true, _) => Some(Style::Pipe),
        (_, true) => Some(Style::Fifo),
        _ => None,
    };
    let mut signals = Signals::block().map_err(|errno| ExecError::Supervise(errno.into()))?;
    let token = match &client {
        Some(client) => Some(wait_for_token(client, &mut signals)?),
        None => None,
    };
    // The private jobserver, made before the command so that it inherits it.
    let relayed = match (&client, style) {
        (Some(_), Some(style)) => {
            let (jobserver, mut relay) =
                Jobserver::relayed(advertised, style).map_err(ExecError::Client)?;
            // A FIFO's clients (ninja) start only as many jobs as there are tokens in the pipe.
            if style == Style::Fifo {
                relay.set_spares(FIFO_SPARES);
            }
            jobserver.configure(&mut command);
            Some((jobserver, relay))
        }
        _ => None,
    };
    debug!(token = ?token.as_ref().map(|t| t.byte() as char), "running {:?}", args.command.command);
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    let status = match (relayed, &client) {
        (Some((_jobserver, mut relay)), Some(client)) => {
            relay_until_exit(&mut child, &mut signals, client, &mut relay)
        }
        _ => supervise(&mut child, &mut signals, &mut || {}),
    }
    .map_err(ExecError::Supervise)?;
    drop(token);
    Ok(status)
}

/// Spares a private named pipe holds: ninja reads a token for each job it could start, and after
/// an empty read waits for one of its jobs to end.
const FIFO_SPARES: usize = 4;

/// How long a spare lies untaken in the private pipe before it goes back for others' turn.
const SPARE_YIELD: Duration = Duration::from_millis(500);

/// Waits for `child` as [`supervise`] does, meanwhile keeping one spare token borrowed from
/// `client` in `relay`'s pipe and giving back what the tree returns beyond it; gives back every
/// borrowed token when the child ends.
fn relay_until_exit(
    child: &mut std::process::Child,
    signals: &mut Signals,
    client: &Client,
    relay: &mut Relay,
) -> std::io::Result<ExitStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut borrowed: Vec<steve_core::Token> = Vec::new();
    loop {
        if let Some(status) = child.try_wait()? {
            debug!(borrowed = borrowed.len(), "the command ended: every borrowed token goes back");
            return Ok(status);
        }
        let now = Instant::now();
        relay.settle(now);
        if relay.spare_since().is_some_and(|since| now >= since + SPARE_YIELD) {
            relay.take_spares();
        }
        // The borrowed tokens are the relay's: what it gave back goes back to the machine.
        borrowed.truncate(relay.tokens());
        while relay.wants_token() {
            let Some(token) = client.try_acquire().map_err(client_io)? else { break };
            relay.give(now)?;
            borrowed.push(token);
        }
        let waiting_upstream = relay.wants_token();
        let timeout = match relay.spare_since() {
            Some(since) => {
                let left = (since + SPARE_YIELD).saturating_duration_since(now);
                PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(relay.watch(), PollFlags::POLLIN),
        ];
        if waiting_upstream {
            fds.push(PollFd::new(client.readiness(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        while let Some(received) = signals.read_pending()? {
            if let SignalEvent::Stop(signal) = received.event {
                if received.sent_by_process {
                    tracing::info!("{signal} received: passing it on to the command");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        signal,
                    );
                }
            }
        }
    }
}

fn client_io(error: ClientError) -> std::io::Error {
    match error {
        ClientError::Io(error) => error,
        other => std::io::Error::other(other.to_string()),
    }
}
