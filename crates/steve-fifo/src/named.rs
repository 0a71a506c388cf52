//! The `fifo` backend: a named pipe holding the machine's tokens, shared by every build.
//!
//! Clients read a byte to take a token and write one back to return it; the kernel's pipe does
//! the handing out, so any client that speaks the protocol works, ninja included (it insists on
//! a real FIFO). The daemon keeps the pipe open for reading and writing, so clients never see
//! end-of-file or a broken pipe, and it repairs the pool: a pipe cannot tell who holds a token,
//! so tokens of a client killed while holding them are lost to it. Once no other process has
//! the pipe open, every token must be back in it; the daemon tops up what is missing (and takes
//! out any surplus a confused client wrote). It learns that the pipe was let go from inotify's
//! close events, and confirms that nobody else holds it by scanning `/proc/*/fd`.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::Gid;
use steve_core::backend::{Announcement, BackendError, ServeConfig};
use steve_core::control::{answer, default_socket_for, ControlServer, Controlled};
use steve_core::limits::{Governor, ProcProbe, SystemProbe};
use steve_core::makeflags::{jobserver_makeflags, JobserverAuth};
use steve_core::signals::{SignalEvent, Signals};
use steve_core::status::{command_line, CounterReport, HolderReport, PoolReport, StatusReport};
use tracing::{debug, info, warn};

use crate::error::{FifoError, MAX_JOBS};
use crate::lock::PathLock;
use crate::openers::{find_holder, find_holders, FileId};
use crate::taker::Taker;
use crate::{check_jobs, make_fifo, TOKEN};
use steve_core::sys::bytes_in_pipe;

/// Where root's daemon serves when no `--path` is given.
pub const SYSTEM_PATH: &str = "/run/steve/jobserver";

/// The path to serve when none is given: the system path for root, the user's runtime
/// directory otherwise.
pub fn default_path() -> Result<PathBuf, FifoError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(SYSTEM_PATH));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join("steve").join("jobserver")),
        _ => Err(FifoError::NoDefaultPath),
    }
}

/// `steve serve --backend fifo`: serves until SIGINT, SIGTERM or SIGHUP.
pub fn serve(
    config: &ServeConfig,
    announce: &mut dyn FnMut(&Announcement),
) -> Result<(), BackendError> {
    // Blocked before the pipe exists, so that a stop signal is never lost between the two.
    let signals = Signals::block()
        .map_err(|e| FifoError::io("block signals for", "the server")(io::Error::from(e)))?;
    let server = NamedPipeServer::create(config)?;
    announce(&Announcement {
        makeflags: jobserver_makeflags(
            server.governor.limits().jobs as u32,
            JobserverAuth::Fifo(server.path.clone()),
        ),
        path: server.path.clone(),
        control: Some(server.control_path.clone()),
    });
    server.run(signals)?;
    Ok(())
}

/// How sure the daemon can be that nobody else holds the pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recovery {
    On,
    /// Off, for this reason: another user could hold the pipe where the scan cannot see.
    Off(String),
}

/// A named pipe this daemon made, with its lock, filled with tokens.
///
/// Tokens are counted three ways: `pool` exist in all (in the pipe, with clients, or kept by the
/// daemon), `withheld` are kept by the daemon, and the rest circulate. The daemon keeps as many
/// circulating as the limits allow: it takes tokens out of the pipe as they come back while
/// over a limit or shrinking (through the [`Taker`] thread, which wins the race for returned
/// tokens against clients that poll), and puts them back when the limits allow.
struct NamedPipeServer {
    path: PathBuf,
    /// Opened for reading and writing: keeps the pipe alive and lets the daemon count, add and
    /// take out tokens.
    pipe: File,
    pipe_id: FileId,
    inotify: Inotify,
    governor: Governor,
    /// Tokens that exist.
    pool: usize,
    /// Tokens the daemon keeps out of the pipe.
    withheld: usize,
    /// How many tokens may circulate now (`None`: all of them).
    allowance: Option<usize>,
    /// Takes tokens out of the pipe with blocking reads while the daemon wants some.
    taker: Taker,
    recovery: Recovery,
    recovered: u64,
    /// The process last seen holding the pipe, checked first next time.
    last_holder: Option<u32>,
    started: Instant,
    /// The control socket; taken out while it is serviced, since servicing needs the server.
    control: Option<ControlServer>,
    control_path: PathBuf,
    // Fields drop in order, after `drop` below removed the pipe: first the lock (and its file),
    // then the directory, which is only empty once both are gone.
    _lock: PathLock,
    _made_dir: Option<MadeDir>,
}

/// A directory the daemon made, removed when dropped if nothing else is in it.
struct MadeDir(PathBuf);

impl Drop for MadeDir {
    fn drop(&mut self) {
        // Fails, harmlessly, while anything else is in it.
        let _ = fs::remove_dir(&self.0);
    }
}

impl NamedPipeServer {
    fn create(config: &ServeConfig) -> Result<NamedPipeServer, FifoError> {
        check_jobs(config.limits.jobs)?;
        if config.limits.per_process_limit.is_some() {
            return Err(FifoError::Unsupported {
                what: "--per-process-limit needs a backend that accounts per process (cuse)",
            });
        }
        let path = match &config.path {
            Some(path) => absolute(path)?,
            None => default_path()?,
        };
        let is_root = nix::unistd::geteuid().is_root();
        let gid = config.group.as_deref().map(lookup_group).transpose()?;
        let mode = config.mode.unwrap_or(match (is_root, gid.is_some()) {
            (_, true) => 0o660,
            (true, false) => 0o666,
            (false, false) => 0o600,
        });

        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        // Declared before the lock, so that on an early return the lock goes first.
        let made_dir = make_dir(&dir)?.map(MadeDir);
        let lock = PathLock::acquire(&path)?;
        remove_stale_pipe(&path, &lock)?;
        let control_path = config.control.clone().unwrap_or_else(|| default_socket_for(&path));
        let control = ControlServer::bind(&control_path, mode, gid)
            .map_err(FifoError::io("listen on the control socket", &control_path))?;

        let pipe = make_fifo(&path)?;
        // From here on the pipe is ours: dropping the server removes it, also on error.
        let metadata = pipe.metadata().map_err(FifoError::io("inspect", &path))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| FifoError::io("watch", &path)(e.into()))?;
        let taker =
            Taker::start(&path).map_err(FifoError::io("start the token taker for", &path))?;
        let mut server = NamedPipeServer {
            path,
            pipe,
            pipe_id: FileId::of(&metadata),
            inotify,
            governor: Governor::new(config.limits.clone(), Box::new(ProcProbe)),
            pool: 0,
            withheld: 0,
            allowance: None,
            taker,
            recovery: Recovery::On,
            recovered: 0,
            last_holder: None,
            started: Instant::now(),
            control: Some(control),
            control_path,
            _lock: lock,
            _made_dir: made_dir,
        };
        server.set_access(mode, gid)?;
        server
            .inotify
            .add_watch(
                &server.path,
                AddWatchFlags::IN_OPEN
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CLOSE_NOWRITE,
            )
            .map_err(|e| FifoError::io("watch", &server.path)(e.into()))?;
        server.allowance = server.governor.check(Instant::now());
        server.rebalance()?;
        if !is_root && mode & 0o077 != 0 {
            server.recovery = Recovery::Off(format!(
                "mode {mode:04o} lets other users open the pipe, and a non-root steve cannot see \
                 their processes"
            ));
        }
        Ok(server)
    }

    fn set_access(&self, mode: u32, gid: Option<Gid>) -> Result<(), FifoError> {
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&self.pipe, None, Some(gid.as_raw()))
                .map_err(FifoError::io("set the group of", &self.path))?;
        }
        self.pipe
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(FifoError::io("set the mode of", &self.path))
    }

    fn run(mut self, mut signals: Signals) -> Result<(), FifoError> {
        info!(
            path = %self.path.display(),
            jobs = self.pool,
            "serving {} tokens on {}; control socket {}",
            self.pool,
            self.path.display(),
            self.control_path.display()
        );
        if let Recovery::Off(reason) = &self.recovery {
            warn!("leak recovery is off: {reason}");
        }
        loop {
            let timeout = self.poll_timeout();
            let (signal_ready, inotify_ready, taker_ready, control_ready) = {
                let mut fds = vec![
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.taker.fd(), PollFlags::POLLIN),
                ];
                let first_control = fds.len();
                if let Some(control) = &self.control {
                    fds.extend(
                        control.fds().into_iter().map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
                    );
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(FifoError::io("wait for events on", &self.path)(e.into()))
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    ready(&fds[2]),
                    fds[first_control..].iter().any(ready),
                )
            };
            if signal_ready {
                while let Some(received) = signals
                    .read_pending()
                    .map_err(|e| FifoError::io("read signals for", &self.path)(e.into()))?
                {
                    match received.event {
                        SignalEvent::Stop(signal) => {
                            info!(
                                "{signal} received: stopping and removing {}",
                                self.path.display()
                            );
                            return Ok(());
                        }
                        SignalEvent::Report => info!("status:\n{}", self.status()),
                        SignalEvent::Child => {}
                    }
                }
            }
            if self.has_system_limits() {
                self.apply_limits();
            }
            if taker_ready {
                let taken = self.taker.collect();
                self.account_taken(taken);
                self.rebalance()?;
            }
            if control_ready {
                if let Some(mut control) = self.control.take() {
                    let owner = nix::unistd::geteuid().as_raw();
                    control.service(&mut |request, peer| answer(&mut self, request, peer, owner));
                    self.control = Some(control);
                }
            }
            if inotify_ready && self.drain_events().closed {
                self.recover_if_idle();
            }
        }
    }

    /// A pipe gives the daemon no moment of request to look at the system, so with a load or
    /// memory limit it looks every `load_recheck`, over the limit or not.
    fn poll_timeout(&self) -> PollTimeout {
        if !self.has_system_limits() {
            return PollTimeout::NONE;
        }
        let millis = self.governor.limits().load_recheck.as_millis().clamp(1, i32::MAX as u128);
        PollTimeout::try_from(millis as i32).unwrap_or(PollTimeout::MAX)
    }

    fn has_system_limits(&self) -> bool {
        let limits = self.governor.limits();
        limits.load_average.is_some() || limits.min_memory_avail_mib.is_some()
    }

    /// Reads the system, and takes tokens out or puts them back as the limits now say.
    fn apply_limits(&mut self) {
        let allowance = self.governor.check(Instant::now());
        if allowance != self.allowance {
            match self.governor.pressure() {
                Some(pressure) => info!("holding tokens back: {pressure}"),
                None => info!("limits no longer exceeded: tokens flow again"),
            }
            self.allowance = allowance;
        }
        if let Err(error) = self.rebalance() {
            warn!("{error}");
        }
    }

    /// How many tokens should circulate (in the pipe or with clients) now.
    fn wanted_circulating(&self) -> usize {
        let jobs = self.governor.limits().jobs;
        self.allowance.map_or(jobs, |allowance| allowance.min(jobs))
    }

    fn circulating(&self) -> usize {
        self.pool - self.withheld
    }

    /// Tokens the daemon still has to take out of the pipe.
    fn to_take(&self) -> usize {
        self.circulating().saturating_sub(self.wanted_circulating())
    }

    /// Brings the pipe towards what the limits want: creates or retires tokens for a new `jobs`,
    /// puts withheld tokens back, or takes tokens out as far as the pipe has them now.
    fn rebalance(&mut self) -> Result<(), FifoError> {
        let jobs = self.governor.limits().jobs;
        if self.pool < jobs {
            // New tokens start withheld; the release below puts in what the limits allow.
            self.withheld += jobs - self.pool;
            self.pool = jobs;
        } else if self.pool > jobs {
            let retired = (self.pool - jobs).min(self.withheld);
            self.withheld -= retired;
            self.pool -= retired;
        }
        let wanted = self.wanted_circulating();
        if self.circulating() < wanted && self.withheld > 0 {
            let released = (wanted - self.circulating()).min(self.withheld);
            self.put_tokens(released)?;
            self.withheld -= released;
        }
        let to_take = self.to_take();
        if to_take > 0 {
            // What is in the pipe now comes at once; the taker waits for the rest.
            let mut sink = vec![0u8; to_take];
            let taken = match (&self.pipe).read(&mut sink) {
                Ok(taken) => taken,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(FifoError::io("take tokens out of", &self.path)(error)),
            };
            self.account_taken(taken);
        }
        self.taker.want(self.to_take());
        Ok(())
    }

    /// Tokens taken out of the pipe retire while more exist than `jobs`; the rest are kept back
    /// (and put back by the next `rebalance` if more were taken than wanted).
    fn account_taken(&mut self, taken: usize) {
        let retired = taken.min(self.pool.saturating_sub(self.governor.limits().jobs));
        self.pool -= retired;
        self.withheld += taken - retired;
    }

    fn status(&self) -> StatusReport {
        let free = bytes_in_pipe(&self.pipe).unwrap_or(0);
        let holders = find_holders(self.pipe_id, std::process::id())
            .into_iter()
            .map(|pid| HolderReport {
                pid,
                command: command_line(pid),
                tokens: None,
                held_seconds: None,
            })
            .collect();
        let system =
            if self.has_system_limits() { self.governor.last_reading() } else { ProcProbe.read() };
        StatusReport {
            backend: "fifo".to_string(),
            path: self.path.clone(),
            control: Some(self.control_path.clone()),
            daemon_pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            pool: PoolReport {
                jobs: self.governor.limits().jobs,
                size: self.pool,
                free,
                held: self.circulating().saturating_sub(free),
                withheld: self.withheld,
                lent: 0,
            },
            limits: self.governor.limits().clone(),
            system,
            limited_by: self.governor.pressure(),
            holders_exact: false,
            holders,
            waiters: None,
            counters: CounterReport { reclaimed: self.recovered, ..CounterReport::default() },
        }
    }

    /// Reads every pending inotify event and says whether the pipe was opened or let go.
    fn drain_events(&mut self) -> Seen {
        let mut seen = Seen::default();
        while let Ok(events) = self.inotify.read_events() {
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_OPEN) {
                    seen.opened = true;
                }
                if event.mask.intersects(
                    AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_CLOSE_NOWRITE
                        | AddWatchFlags::IN_Q_OVERFLOW,
                ) {
                    seen.closed = true;
                }
            }
        }
        seen
    }

    /// If no other process has the pipe open, every circulating token must be in it: put back
    /// the missing.
    fn recover_if_idle(&mut self) {
        if self.recovery != Recovery::On {
            return;
        }
        match self.check_idle_pool() {
            Ok(Some(free)) => self.restore(free),
            Ok(None) => {}
            Err(error) => warn!("leak check on {} failed: {error}", self.path.display()),
        }
    }

    /// The number of tokens in the pipe, taken at a moment when no other process held it; or
    /// `None` while one does.
    fn check_idle_pool(&mut self) -> io::Result<Option<usize>> {
        loop {
            let scan = find_holder(self.pipe_id, std::process::id(), self.last_holder)?;
            if let Some(pid) = scan.holder {
                debug!(pid, "pipe still held; no leak check");
                self.last_holder = Some(pid);
                return Ok(None);
            }
            self.last_holder = None;
            let free = bytes_in_pipe(&self.pipe)?;
            // A client that opened the pipe after the scan may already have taken tokens that
            // the count misses: its open event says so. Then look again.
            if !self.drain_events().opened {
                return Ok(Some(free));
            }
        }
    }

    fn restore(&mut self, free: usize) {
        let expected = self.circulating();
        if free < expected {
            let missing = expected - free;
            match self.put_tokens(missing) {
                Ok(()) => {
                    self.recovered += missing as u64;
                    info!(
                        recovered = missing,
                        "recovered {missing} token(s) lost by clients that exited without \
                         returning them; the pool of {} is whole again",
                        self.pool
                    );
                }
                Err(error) => warn!("could not put back {missing} lost token(s): {error}"),
            }
        } else if free > expected {
            let surplus = free - expected;
            let mut sink = vec![0u8; surplus];
            match (&self.pipe).read(&mut sink) {
                Ok(taken) => warn!(
                    "took {taken} surplus token(s) out of the pipe: clients wrote back more \
                     than they took"
                ),
                Err(error) => warn!("could not take {surplus} surplus token(s) out: {error}"),
            }
        } else {
            debug!("pipe idle, pool of {} whole", self.pool);
        }
    }

    fn put_tokens(&self, count: usize) -> Result<(), FifoError> {
        (&self.pipe).write_all(&vec![TOKEN; count]).map_err(FifoError::io("fill", &self.path))
    }
}

impl Controlled for NamedPipeServer {
    fn status(&mut self) -> StatusReport {
        NamedPipeServer::status(self)
    }

    fn apply(&mut self, settings: &[(String, String)]) -> Result<(), String> {
        let mut limits = self.governor.limits().clone();
        limits.apply(settings, MAX_JOBS).map_err(|error| error.to_string())?;
        if limits.per_process_limit.is_some() {
            return Err(
                "per-process-limit: needs a backend that accounts per process (cuse)".into()
            );
        }
        info!("settings changed: {settings:?}");
        self.governor.set_limits(limits);
        self.apply_limits();
        Ok(())
    }
}

impl Drop for NamedPipeServer {
    fn drop(&mut self) {
        // Remove the pipe only if it is still the one this daemon made.
        let still_ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| FileId::of(&metadata) == self.pipe_id);
        if still_ours {
            if let Err(error) = fs::remove_file(&self.path) {
                warn!("could not remove {}: {error}", self.path.display());
            }
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    opened: bool,
    closed: bool,
}

fn absolute(path: &Path) -> Result<PathBuf, FifoError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(FifoError::io("resolve", path))?;
    Ok(cwd.join(path))
}

fn lookup_group(group: &str) -> Result<Gid, FifoError> {
    steve_core::accounts::group_id(group)
        .ok_or_else(|| FifoError::UnknownGroup { group: group.to_string() })
}

/// Makes the pipe's directory if it is missing; returns it if it was made.
fn make_dir(dir: &Path) -> Result<Option<PathBuf>, FifoError> {
    if dir.is_dir() {
        return Ok(None);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(FifoError::io("create the directory", dir))?;
    Ok(Some(dir.to_path_buf()))
}

/// A named pipe left at `path` by a steve that died is replaced; anything else is refused.
fn remove_stale_pipe(path: &Path, lock: &PathLock) -> Result<(), FifoError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(FifoError::io("inspect", path)(error)),
    };
    let file_type = metadata.file_type();
    if !file_type.is_fifo() {
        let found = if file_type.is_dir() {
            "directory"
        } else if file_type.is_symlink() {
            "symbolic link"
        } else if file_type.is_socket() {
            "socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "device"
        } else {
            "regular file"
        };
        return Err(FifoError::NotAPipe { path: path.to_path_buf(), found });
    }
    match lock.previous_owner() {
        Some(pid) => {
            warn!(
                "replacing the stale pipe {} left by steve pid {pid}, which is no longer running",
                path.display()
            );
            fs::remove_file(path).map_err(FifoError::io("remove the stale pipe", path))
        }
        None => Err(FifoError::ForeignPipe { path: path.to_path_buf() }),
    }
}
