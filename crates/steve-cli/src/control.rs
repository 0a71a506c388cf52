//! `steve status`, `steve get` and `steve set`: clients of a running server's control socket,
//! whatever its backend. The socket is `--control`, else `$STEVE_CONTROL`, else the one beside
//! the jobserver MAKEFLAGS names, else the default places of every backend (see
//! `steve_core::server::control`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use steve_core::server::control::{ask, find_socket, Request, Response};
use steve_core::status::StatusReport;

use crate::output;

/// Options of `steve status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the whole report as JSON (every field is documented in docs/reference.md).
    #[arg(long)]
    json: bool,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// Options of `steve get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Settings (jobs, load-average, min-jobs, min-memory-avail, per-process-limit,
    /// load-recheck, fairness, weights, user-caps, cpu-pressure, memory-pressure, io-pressure) or
    /// status values (size, free, held, withheld, waiters, holders, load, memory-available,
    /// memory-limit, memory-from, jobs-from).
    #[arg(required = true, value_name = "KEY")]
    keys: Vec<String>,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// Options of `steve set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// KEY=VALUE settings, applied all or none: jobs=N load-average=X min-jobs=M
    /// min-memory-avail=MIB|P% per-process-limit=K load-recheck=S fairness=build|user|fifo
    /// weights=USER:W,... user-caps=USER:N,... (none clears a limit; USER is a name or a uid).
    #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// The server's control socket.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// The value of `weights` or `user-caps` with user names turned into uids: the server takes
/// numbers only (looking a name up may ask a network directory, and its loop must not wait).
/// Other keys' values are left as they are.
pub fn with_uids(key: &str, value: &str) -> anyhow::Result<String> {
    if !matches!(key, "weights" | "user-caps") || matches!(value, "none" | "off") {
        return Ok(value.to_string());
    }
    let items = value.split(',').map(|item| {
        let Some((user, number)) = item.split_once(':') else { return Ok(item.to_string()) };
        let user = user.trim();
        if user.parse::<u32>().is_ok() {
            return Ok(item.to_string());
        }
        match nix::unistd::User::from_name(user) {
            Ok(Some(found)) => Ok(format!("{}:{number}", found.uid)),
            _ => bail!("{key}: no such user: {user}"),
        }
    });
    Ok(items.collect::<anyhow::Result<Vec<String>>>()?.join(","))
}

/// Sends `request` to the server and returns its answer, an error answer turned into an error.
pub fn exchange(control: Option<&std::path::Path>, request: &Request) -> anyhow::Result<Response> {
    let socket = find_socket(control)?;
    let response = ask(&socket, request).with_context(|| format!("asking {}", socket.display()))?;
    if let Response::Error { message } = response {
        bail!("{message}");
    }
    Ok(response)
}

/// The status report of the server at `control`.
pub fn fetch_status(control: Option<&std::path::Path>) -> anyhow::Result<StatusReport> {
    match exchange(control, &Request::Status)? {
        Response::Status { report } => Ok(*report),
        other => bail!("unexpected answer to status: {other:?}"),
    }
}

/// `steve status`.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let report = fetch_status(args.control.as_deref())?;
    if args.json {
        output::line(&serde_json::to_string_pretty(&report)?)?;
    } else {
        output::line(&report.to_string())?;
    }
    Ok(())
}

/// `steve get`: one value per line, in the order asked.
pub fn get(args: GetArgs) -> anyhow::Result<()> {
    match exchange(args.control.as_deref(), &Request::Get { keys: args.keys })? {
        Response::Values { values } => {
            for (_, value) in values {
                output::line(&value)?;
            }
            Ok(())
        }
        other => bail!("unexpected answer to get: {other:?}"),
    }
}

/// `steve set`: prints the new values as KEY=VALUE.
pub fn set(args: SetArgs) -> anyhow::Result<()> {
    let settings = args
        .settings
        .into_iter()
        .map(|(key, value)| {
            let value = with_uids(&key, &value)?;
            Ok((key, value))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    match exchange(args.control.as_deref(), &Request::Set { settings })? {
        Response::Values { values } => {
            for (key, value) in values {
                output::line(&format!("{key}={value}"))?;
            }
            Ok(())
        }
        other => bail!("unexpected answer to set: {other:?}"),
    }
}
