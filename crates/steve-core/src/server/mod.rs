//! The server plumbing, for backend crates and the `steve` binary: the backend contract and its
//! registry, the one event loop every server runs in, the control socket, signals, the client
//! processes' pidfds, and the system probe.
//!
//! - [`backend`]: the [`Server`] trait a backend implements and the [`Backend`] descriptor it
//!   registers;
//! - `event_loop`: [`EventLoop`], one epoll over everything a server waits for;
//! - `answer`: [`Answer`], the bytes written back for a request, small ones inline;
//! - [`control`]: the control socket (`steve status`, `get`, `set`), server and client side;
//! - [`signals`]: signals read from a signalfd, and the child supervision of `steve run`/`exec`;
//! - [`processes`]: thread to process, a pidfd per client process, command lines;
//! - [`probe`]: the load and memory readings from `/proc`;
//! - [`accounts`]: users and groups named on the command line;
//! - [`trace_log`]: where the event trace goes (the ring, a file);
//! - [`holder_book`]: the crash books, who holds how many tokens, for a server started after
//!   this one dies;
//! - [`metrics_listener`]: the metrics over HTTP, on a Unix socket or a loopback port.
//!
//! [`serve`] is the whole of `steve serve` for any backend: it refuses options the backend does
//! not take, blocks the signals, starts the backend's server, binds the control socket, drops to
//! `--user`, announces the MAKEFLAGS and runs the loop until a stop signal.

pub mod accounts;
mod answer;
pub mod backend;
mod connection_io;
pub mod control;
mod error;
mod event_loop;
pub mod fd_store;
pub mod holder_book;
pub mod metrics_listener;
pub mod probe;
pub mod processes;
pub mod signals;
pub mod trace_log;
mod unix_socket;

use std::path::PathBuf;

use tracing::{info, warn};

pub use answer::Answer;
pub use backend::{
    Backend, Context, Endpoint, Flow, Handled, MessageQueue, Next, PoolChange, Server, SourceId,
    ThreadedSource,
};
pub use error::{Error, ErrorKind};
pub use event_loop::{Ended, EventLoop};

use crate::handover;
use crate::makeflags::jobserver_makeflags;

/// What a server tells once it is ready for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The MAKEFLAGS value clients should be given.
    pub makeflags: String,
    /// The path clients open.
    pub path: PathBuf,
    /// The control socket (`steve status`, `get`, `set`).
    pub control: PathBuf,
    /// The MAKEFLAGS value naming the companion FIFO, for the clients that take only a FIFO.
    pub fifo_makeflags: Option<String>,
}

/// Serves `backend` with `config` until a stop signal: `steve serve`. `announce` is called once,
/// when clients may connect.
pub fn serve(
    backend: &'static Backend,
    config: &backend::ServeConfig,
    announce: &mut dyn FnMut(&Announcement),
) -> Result<Ended, Error> {
    backend.check_options(config)?;
    // Every line this server logs names its backend: `serve{backend=fuse}: ...`.
    let _span = tracing::info_span!("serve", backend = %backend.name).entered();
    let backend::Start::Server(start) = backend.start else {
        return Err(Error::usage(format!(
            "backend {} serves one command tree: use `steve run`",
            backend.name
        )));
    };
    // Looked up before anything is set up, so that a wrong name changes nothing.
    let user = config
        .user
        .as_deref()
        .map(|name| {
            accounts::user(name).ok_or_else(|| Error::usage(format!("no such user: {name}")))
        })
        .transpose()?;
    raise_descriptor_limit();
    // Blocked before the jobserver exists, so that a stop signal is never lost.
    let signals = signals::Signals::block()
        .map_err(|errno| Error::io("cannot block signals", errno.into()))?;
    let fd_store = if config.fd_store { fd_store::FdStore::from_env() } else { None };
    let mut predecessor = if config.takeover {
        Some(take_over(backend, config)?)
    } else if let Some(store) = &fd_store {
        let stored = fd_store::take_stored();
        match resume_stored(backend, config, stored.package) {
            Ok(predecessor) => predecessor.map(|mut predecessor| {
                predecessor.from = From::Store { names: stored.names };
                predecessor
            }),
            Err(error) => {
                // A state that cannot be served must not fail every start after it: what was
                // stored goes (a device or mount it held goes with it) and this one starts
                // afresh.
                warn!(
                    "cannot take over what the service manager stored ({error}): starting afresh"
                );
                store.remove(&stored.names);
                None
            }
        }
    } else {
        None
    };
    let (mut server, control, metrics) = match predecessor.as_mut() {
        Some(predecessor) => predecessor.parts.take().expect("taken once"),
        None => {
            let server = start(config)?;
            let endpoint = server.endpoint().clone();
            let control_path =
                config.control.clone().unwrap_or_else(|| endpoint.default_control.clone());
            let control = control::ControlServer::bind(&control_path, endpoint.mode, endpoint.gid)
                .map_err(|source| {
                    Error::io(
                        format!("cannot listen on the control socket {}", control_path.display()),
                        source,
                    )
                })?;
            warn_about_access(config, &endpoint, &control_path);
            let metrics =
                metrics_listener::MetricsServer::bind(&config.metrics, endpoint.mode, endpoint.gid)
                    .map_err(|source| Error::io("cannot listen for metrics", source))?;
            (server, control, metrics)
        }
    };
    let endpoint = server.endpoint().clone();
    let control_path = control.path().to_path_buf();
    // Opened before dropping to --user: the file's place is root's choice.
    let trace = trace_log::TraceLog::open(&config.trace)
        .map_err(|error| Error::usage(error.to_string()))?;
    let (holder_book, survivors) = if server.counts_holders() {
        let path = holder_book::path_beside(&control_path);
        match holder_book::HolderBook::open(&path, predecessor.is_none()) {
            Ok((book, survivors)) => (Some(book), survivors),
            Err(error) => {
                warn!("{error}; a server started after a crash will not count the tokens out");
                (None, Vec::new())
            }
        }
    } else {
        (None, Vec::new())
    };
    if let Some(user) = user {
        accounts::become_user(&user).map_err(Error::usage)?;
        info!("running as user {} (uid {}) from now on", user.name, user.uid);
    }
    let mut event_loop = EventLoop::new(
        backend,
        config.limits.clone(),
        Box::new(probe::ProcProbe::new(config.pressure_source.clone())),
    )?
    .with_signals(signals)
    .with_control(control)
    .with_trace(trace)
    .with_metrics(metrics)
    .with_jobs_from(&config.jobs_from)
    .with_fd_store(fd_store.clone())
    .with_holder_book(holder_book);
    if let Some(predecessor) = predecessor.as_mut() {
        event_loop.adopt(&mut *server, &predecessor.event_loop, &mut predecessor.descriptors)?;
    }
    event_loop.adopt_survivors(&mut *server, &survivors);
    event_loop.prime(&mut *server)?;
    match predecessor.map(|predecessor| predecessor.from) {
        Some(From::Process { mut stream, pid }) => {
            // From here the predecessor exits: this server answers what waited in the kernel.
            std::io::Write::write_all(&mut stream, handover::TAKEN).map_err(|source| {
                Error::io("cannot tell the predecessor it was taken over", source)
            })?;
            info!("took the server over from pid {pid}");
        }
        Some(From::Store { names }) => {
            if let Some(store) = &fd_store {
                store.remove(&names);
            }
            info!(
                "took the server over from the service manager's store ({} descriptors)",
                names.len()
            );
        }
        None => {}
    }
    let jobs = server.jobs();
    announce(&Announcement {
        makeflags: jobserver_makeflags(jobs, endpoint.auth.clone()),
        path: endpoint.path.clone(),
        control: control_path.clone(),
        fifo_makeflags: endpoint
            .companion
            .clone()
            .map(|fifo| jobserver_makeflags(jobs, crate::makeflags::JobserverAuth::Fifo(fifo))),
    });
    info!(
        jobs = jobs.get(),
        "serving {jobs} tokens on {} ({}); control socket {}",
        endpoint.path.display(),
        endpoint.how,
        control_path.display()
    );
    let ended = event_loop.run(&mut *server);
    if let Ok(Ended::HandedOver { .. } | Ended::StoredForRestart) = &ended {
        // The successor (or the store, for the next start) has the kernel connection, the
        // sockets and the mount: nothing here is closed, unmounted or removed; the process
        // exits with them all open.
        match &ended {
            Ok(Ended::HandedOver { to }) => info!("handed over to pid {to}: stopped"),
            _ => info!("stopped for the restart, the server left in the service manager's store"),
        }
        std::mem::forget(event_loop);
        std::mem::forget(server);
        return ended;
    }
    // The control socket goes with the loop, then the server (its transport closes, a mount is
    // unmounted, a pipe and the directory steve made for it are removed).
    drop(event_loop);
    drop(server);
    match &ended {
        Ok(Ended::Stopped(signal)) => info!("{signal} received: stopped"),
        Ok(Ended::Transport(why)) => warn!("{why}"),
        Ok(Ended::HandedOver { .. } | Ended::StoredForRestart) | Err(_) => {}
    }
    ended
}

/// A running server being taken over: what it handed over, and the connection to tell it on.
struct Predecessor {
    /// The server, its control socket and metrics listeners, until [`serve`] takes them.
    parts: Option<(Box<dyn Server>, control::ControlServer, metrics_listener::MetricsServer)>,
    /// The event loop's part of its state, and the descriptors not taken yet.
    event_loop: serde_json::Value,
    descriptors: handover::Descriptors,
    /// Where it came from.
    from: From,
}

/// Where a handover came from.
enum From {
    /// A running server, on this connection, waiting to hear it was taken over.
    Process { stream: std::os::unix::net::UnixStream, pid: i32 },
    /// The service manager's store, which passed it under these names, to remove.
    Store { names: Vec<String> },
}

/// Builds this server from what a predecessor left in the service manager's store for a
/// restart, if it left anything.
fn resume_stored(
    backend: &'static Backend,
    config: &backend::ServeConfig,
    package: Result<Option<handover::Package>, handover::HandoverError>,
) -> Result<Option<Predecessor>, Error> {
    let package = package.map_err(|error| Error::usage(error.to_string()))?;
    let Some(package) = package else { return Ok(None) };
    let control_path: PathBuf = package
        .state
        .event_loop
        .get("control")
        .and_then(serde_json::Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| Error::usage("handover: the stored state names no control socket"))?;
    resume_package(backend, config, package, &control_path).map(Some)
}

/// Builds this server from a predecessor's `package`; its control socket is at `control_path`.
fn resume_package(
    backend: &'static Backend,
    config: &backend::ServeConfig,
    mut package: handover::Package,
    control_path: &std::path::Path,
) -> Result<Predecessor, Error> {
    let resume = backend
        .resume
        .ok_or_else(|| Error::usage(format!("backend {} cannot be taken over", backend.name)))?;
    if package.state.backend != backend.name {
        return Err(Error::usage(format!(
            "the server at {} is a {} server, not {}",
            control_path.display(),
            package.state.backend,
            backend.name
        )));
    }
    let server = resume(config, &package.state.server, &mut package.descriptors)?;
    let listener = package
        .descriptors
        .take(event_loop::CONTROL_LISTENER)
        .map_err(|error| Error::usage(error.to_string()))?;
    let control = control::ControlServer::adopt(listener, control_path).map_err(|source| {
        Error::io(format!("cannot take over the control socket {}", control_path.display()), source)
    })?;
    let metrics = metrics_listener::MetricsServer::adopt(&config.metrics, &mut package.descriptors)
        .map_err(|source| Error::io("cannot take the metrics listeners over", source))?;
    Ok(Predecessor {
        parts: Some((server, control, metrics)),
        event_loop: package.state.event_loop,
        descriptors: package.descriptors,
        from: From::Store { names: Vec::new() },
    })
}

/// Asks the running server of `backend` at `config`'s place for a handover and builds this
/// server from it (`steve serve --takeover`). Fails, changing nothing, if none runs there, it
/// refuses, or what it sends cannot be served: it then goes on serving.
fn take_over(
    backend: &'static Backend,
    config: &backend::ServeConfig,
) -> Result<Predecessor, Error> {
    if backend.resume.is_none() {
        return Err(Error::usage(format!("backend {} cannot be taken over", backend.name)));
    }
    let control_path = predecessor_control(backend, config).ok_or_else(|| {
        Error::usage(format!(
            "no running {} server to take over here (give its socket with --control)",
            backend.name
        ))
    })?;
    let failed = |source: std::io::Error| {
        Error::io(format!("cannot take over the server at {}", control_path.display()), source)
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&control_path).map_err(failed)?;
    let request = serde_json::to_string(&control::Request::Handover).expect("a request encodes");
    std::io::Write::write_all(&mut stream, format!("{request}\n").as_bytes()).map_err(failed)?;
    let pid = control::peer_of(&stream).map(|peer| peer.pid).unwrap_or(0);
    let package =
        handover::receive(&mut stream).map_err(|error| Error::usage(error.to_string()))?;
    let mut predecessor = resume_package(backend, config, package, &control_path)?;
    predecessor.from = From::Process { stream, pid };
    Ok(predecessor)
}

/// The control socket of the server a `--takeover` replaces: `--control`, or where a server of
/// `backend` at the configured place (or a default one) listens.
fn predecessor_control(backend: &Backend, config: &backend::ServeConfig) -> Option<PathBuf> {
    if let Some(control) = &config.control {
        return Some(control.clone());
    }
    let jobserver = config
        .mountpoint
        .as_ref()
        .map(|mountpoint| mountpoint.join("jobserver"))
        .or_else(|| config.path.clone())
        .or_else(|| config.dev_name.as_ref().map(|name| PathBuf::from("/dev").join(name)));
    let candidates: Vec<PathBuf> = match jobserver {
        Some(jobserver) => (backend.places.control_for)(&jobserver),
        None => (backend.places.defaults)().into_iter().map(|place| place.control).collect(),
    };
    candidates.into_iter().find(|control| std::os::unix::net::UnixStream::connect(control).is_ok())
}

/// Says, once root's server is up, what lets others in or in the way: a jobserver open to every
/// local user by default, and directories others may change names in.
fn warn_about_access(
    config: &backend::ServeConfig,
    endpoint: &Endpoint,
    control: &std::path::Path,
) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if config.mode.is_none() && endpoint.mode & 0o006 != 0 {
        let group = backend::JOBSERVER_GROUP;
        warn!(
            "the jobserver is mode {:04o}: any local user may take and hold every token of this \
             machine-wide server; create the group {group} (groupadd --system {group}) with \
             the users who build in it, or give --mode 0660 --group GROUP",
            endpoint.mode
        );
    }
    let control_dir = control.parent().and_then(|dir| dir.canonicalize().ok());
    let mut said = Vec::new();
    for dir in endpoint.directories.iter().cloned().chain(control_dir) {
        match crate::paths::changeable_by_others(&dir) {
            Some(open) if !said.contains(&open) => {
                warn!(
                    "{} may be changed by users other than root, who could swap the names \
                     steve makes under it: keep root's jobservers where only root may write \
                     (the default, /run/steve)",
                    open.display()
                );
                said.push(open);
            }
            _ => {}
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one: a server keeps one per client
/// process and per control connection, and systemd's default soft limit is 1,024.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!("descriptor limit raised from {soft} to {hard}"),
            Err(errno) => warn!("cannot raise the descriptor limit from {soft} to {hard}: {errno}"),
        },
        Ok(_) => {}
        Err(errno) => warn!("cannot read the descriptor limit: {errno}"),
    }
}
