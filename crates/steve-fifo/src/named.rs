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

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::Gid;
use steve_core::backend::{Announcement, BackendError, ServeConfig};
use steve_core::makeflags::{jobserver_makeflags, JobserverAuth};
use steve_core::signals::{SignalEvent, Signals};
use steve_core::status::Status;
use tracing::{debug, info, warn};

use crate::error::FifoError;
use crate::lock::PathLock;
use crate::openers::{find_holder, FileId};
use crate::sys::bytes_in_pipe;
use crate::{check_jobs, make_fifo, TOKEN};

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
            server.jobs as u32,
            JobserverAuth::Fifo(server.path.clone()),
        ),
        path: server.path.clone(),
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

/// A named pipe this daemon made, with its lock, filled with `jobs` tokens.
struct NamedPipeServer {
    path: PathBuf,
    jobs: usize,
    /// Opened for reading and writing: keeps the pipe alive and lets the daemon count, add and
    /// take out tokens.
    pipe: File,
    pipe_id: FileId,
    inotify: Inotify,
    recovery: Recovery,
    recovered: u64,
    /// The process last seen holding the pipe, checked first next time.
    last_holder: Option<u32>,
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
        check_jobs(config.jobs)?;
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

        let pipe = make_fifo(&path)?;
        // From here on the pipe is ours: dropping the server removes it, also on error.
        let metadata = pipe.metadata().map_err(FifoError::io("inspect", &path))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| FifoError::io("watch", &path)(e.into()))?;
        let mut server = NamedPipeServer {
            path,
            jobs: config.jobs as usize,
            pipe,
            pipe_id: FileId::of(&metadata),
            inotify,
            recovery: Recovery::On,
            recovered: 0,
            last_holder: None,
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
        server.put_tokens(server.jobs)?;
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
            jobs = self.jobs,
            "serving {} tokens on {}",
            self.jobs,
            self.path.display()
        );
        if let Recovery::Off(reason) = &self.recovery {
            warn!("leak recovery is off: {reason}");
        }
        loop {
            let (signal_ready, inotify_ready) = {
                let mut fds = [
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        return Err(FifoError::io("wait for events on", &self.path)(e.into()))
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
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
                        SignalEvent::Report => info!("{}", self.status()),
                        SignalEvent::Child => {}
                    }
                }
            }
            if inotify_ready && self.drain_events().closed {
                self.recover_if_idle();
            }
        }
    }

    fn status(&self) -> Status {
        let free = bytes_in_pipe(&self.pipe).unwrap_or(0);
        Status {
            backend: "fifo",
            path: self.path.clone(),
            jobs: self.jobs,
            pool: self.jobs,
            free,
            held: self.jobs.saturating_sub(free),
            withheld: 0,
            waiters: None,
            recovered: self.recovered,
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

    /// If no other process has the pipe open, every token must be in it: put back the missing.
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
        if free < self.jobs {
            let missing = self.jobs - free;
            match self.put_tokens(missing) {
                Ok(()) => {
                    self.recovered += missing as u64;
                    info!(
                        recovered = missing,
                        "recovered {missing} token(s) lost by clients that exited without \
                         returning them; the pool of {} is whole again",
                        self.jobs
                    );
                }
                Err(error) => warn!("could not put back {missing} lost token(s): {error}"),
            }
        } else if free > self.jobs {
            let surplus = free - self.jobs;
            let mut sink = vec![0u8; surplus];
            match (&self.pipe).read(&mut sink) {
                Ok(taken) => warn!(
                    "took {taken} surplus token(s) out of the pipe: clients wrote back more \
                     than they took"
                ),
                Err(error) => warn!("could not take {surplus} surplus token(s) out: {error}"),
            }
        } else {
            debug!("pipe idle, pool of {} whole", self.jobs);
        }
    }

    fn put_tokens(&self, count: usize) -> Result<(), FifoError> {
        (&self.pipe).write_all(&vec![TOKEN; count]).map_err(FifoError::io("fill", &self.path))
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
