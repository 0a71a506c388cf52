//! The client library: join the jobserver a build tool was given, take tokens, give them back.
//!
//! ```
//! use steve_core::client::{Client, Jobserver, Style};
//! use steve_core::JobCount;
//!
//! // In a build tool: `Client::from_env()?` joins the jobserver make or steve gave it. Here a
//! // jobserver of 2 jobs stands in for one.
//! let jobserver = Jobserver::create(JobCount::new(2).unwrap(), Style::Pipe)?;
//! let client: Client = jobserver.client()?;
//! // Every client may run one job on its own implicit token, without asking the server.
//! let first = client.take_implicit().expect("not taken yet");
//! // Further jobs wait for a token; dropping it writes back the byte that was read.
//! let second = client.acquire()?;
//! assert!(client.try_acquire()?.is_none(), "both jobs of the pool are out");
//! drop((first, second));
//! assert_eq!(jobserver.close()?.missing, 0);
//! # Ok::<(), steve_core::client::ClientError>(())
//! ```
//!
//! What it does better than a plain read of the pipe:
//! - inherited descriptors (`--jobserver-auth=R,W`) are reopened through `/proc/self/fd/N`, so
//!   this client has its own open file description: making it non-blocking never changes the
//!   pipe under make or any other process sharing it;
//! - every wait is `poll()` plus a non-blocking read, so there is no blocking-or-not ambiguity, a
//!   token another process takes first (readiness, then `EAGAIN`) only means waiting again, and
//!   a signal (`EINTR`) never loses a token or ends the wait;
//! - [`Client::readiness`] gives the descriptor to put in the caller's own poll loop or async
//!   runtime;
//! - the implicit token is a value of its own ([`ImplicitToken`]), so code cannot confuse it with
//!   one read from the server.
//!
//! [`Jobserver`] creates a jobserver for a command tree; [`JobPool`] runs commands under tokens.

mod create;
mod job_pool;

pub use create::{make_fifo, CloseReport, Jobserver, Style, PIPE_BUF};
pub use job_pool::{Finished, JobId, JobPool};

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::makeflags::{self, EnvError, JobserverAuth};

/// Why a client could not join or use a jobserver.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// None of CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS names a jobserver.
    NoJobserver,
    /// make was asked for a dry run (`n`): no jobs are to be run.
    DryRun {
        /// The variable that says so.
        variable: &'static str,
    },
    /// The jobserver is disabled for this process.
    Disabled {
        /// Why: negative descriptors, or descriptors the parent make closed.
        reason: String,
    },
    /// A descriptor or path that is not a pipe or a character device.
    NotAJobserver {
        /// What was found where.
        reason: String,
    },
    /// The environment's MAKEFLAGS does not parse.
    Makeflags(EnvError),
    /// The jobserver's path could not be opened.
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The jobserver closed (end of file on a read).
    Closed,
    /// More tokens than a jobserver may be created with.
    TooManyTokens {
        /// How many were asked for.
        count: usize,
        /// The most there may be ([`PIPE_BUF`]).
        max: usize,
    },
    /// A read, write or poll failed.
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoJobserver => {
                f.write_str("no jobserver in CARGO_MAKEFLAGS, MAKEFLAGS or MFLAGS")
            }
            ClientError::DryRun { variable } => {
                write!(f, "{variable} asks for a dry run (n): no jobserver is to be used")
            }
            ClientError::Disabled { reason } => write!(f, "the jobserver is disabled: {reason}"),
            ClientError::NotAJobserver { reason } => write!(f, "not a jobserver: {reason}"),
            ClientError::Makeflags(_) => f.write_str("the environment's MAKEFLAGS cannot be used"),
            ClientError::Open { path, .. } => {
                write!(f, "cannot open the jobserver {}", path.display())
            }
            ClientError::Closed => f.write_str("the jobserver closed"),
            ClientError::TooManyTokens { count, max } => {
                write!(f, "{count} tokens asked for, a jobserver holds at most {max}")
            }
            ClientError::Io(_) => f.write_str("jobserver I/O failed"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Open { source, .. } | ClientError::Io(source) => Some(source),
            ClientError::Makeflags(error) => Some(error),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Non-blocking, and this client's own: nobody else's mode changes with it.
    read: File,
    /// Where tokens go back (the same file as `read` for a path opened read-write).
    write: File,
    auth: JobserverAuth,
    implicit_taken: AtomicBool,
}

/// A connection to a jobserver. Cheap to clone; clones share the implicit token.
#[derive(Debug, Clone)]
pub struct Client(Arc<Inner>);

impl Client {
    /// Joins the jobserver named by the first of CARGO_MAKEFLAGS, MAKEFLAGS, MFLAGS that is set.
    pub fn from_env() -> Result<Client, ClientError> {
        let found = makeflags::from_env()
            .map_err(ClientError::Makeflags)?
            .ok_or(ClientError::NoJobserver)?;
        if found.flags.is_dry_run() {
            return Err(ClientError::DryRun { variable: found.variable });
        }
        let auth = found.flags.jobserver().ok_or(ClientError::NoJobserver)?;
        Client::open(auth)
    }

    /// Joins the jobserver `auth` names: a path (named pipe, /dev/steve, a FUSE file) or
    /// inherited descriptors.
    pub fn open(auth: &JobserverAuth) -> Result<Client, ClientError> {
        let (read, write) = match auth {
            JobserverAuth::Disabled => {
                return Err(ClientError::Disabled {
                    reason: "negative descriptors in MAKEFLAGS".into(),
                })
            }
            JobserverAuth::Fifo(path) => {
                check_kind(path, &path.display().to_string())?;
                let file = open_path(path, true, true)?;
                // Judged again on what was opened: the name may have changed in between.
                check_opened(&file, path)?;
                let write = file.try_clone().map_err(ClientError::Io)?;
                (file, write)
            }
            JobserverAuth::Fds { read, write } => {
                let (read, write) = (reopen_fd(*read, false)?, reopen_fd(*write, true)?);
                // Both ends of one pipe: two unrelated pipes would hand out tokens nobody
                // returns, or swallow them.
                let same = |a: &File, b: &File| -> Result<bool, ClientError> {
                    use std::os::unix::fs::MetadataExt;
                    let (a, b) = (
                        a.metadata().map_err(ClientError::Io)?,
                        b.metadata().map_err(ClientError::Io)?,
                    );
                    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
                };
                if !same(&read, &write)? {
                    return Err(ClientError::NotAJobserver {
                        reason: "its read and write descriptors are not the same pipe".into(),
                    });
                }
                (read, write)
            }
        };
        Ok(Client(Arc::new(Inner {
            read,
            write,
            auth: auth.clone(),
            implicit_taken: AtomicBool::new(false),
        })))
    }

    /// Where this client's jobserver is.
    pub fn auth(&self) -> &JobserverAuth {
        &self.0.auth
    }

    /// The implicit token: the one job every client may run without asking the server. `None`
    /// while it is out (it comes back when the [`ImplicitToken`] is dropped).
    pub fn take_implicit(&self) -> Option<ImplicitToken> {
        let was_taken = self.0.implicit_taken.swap(true, Ordering::AcqRel);
        (!was_taken).then(|| ImplicitToken { client: Arc::clone(&self.0) })
    }

    /// Takes a token if one is there now; never blocks.
    pub fn try_acquire(&self) -> Result<Option<Token>, ClientError> {
        let mut byte = [0u8; 1];
        loop {
            match (&self.0.read).read(&mut byte) {
                Ok(1) => {
                    let client = Arc::clone(&self.0);
                    return Ok(Some(Token { client, byte: byte[0], given_back: false }));
                }
                Ok(_) => return Err(ClientError::Closed),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) => return Err(ClientError::Io(error)),
            }
        }
    }

    /// Waits for a token, however long it takes. Signals do not end the wait.
    pub fn acquire(&self) -> Result<Token, ClientError> {
        loop {
            if let Some(token) = self.try_acquire()? {
                return Ok(token);
            }
            self.wait_readable(None)?;
        }
    }

    /// Waits for a token at most `timeout`; `None` if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<Token>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(token) = self.try_acquire()? {
                return Ok(Some(token));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_readable(Some(left))?;
        }
    }

    /// Waits for a token unless `stop` becomes readable first (a signalfd, a pipe a thread
    /// writes to when it is time to give up): then `None`, and nothing was taken. Signals do not
    /// end the wait by themselves.
    pub fn acquire_unless(&self, stop: BorrowedFd<'_>) -> Result<Option<Token>, ClientError> {
        loop {
            if let Some(token) = self.try_acquire()? {
                return Ok(Some(token));
            }
            let mut fds = [
                PollFd::new(self.0.read.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(ClientError::Io(errno.into())),
            }
            if fds[1].revents().is_some_and(|events| !events.is_empty()) {
                return Ok(None);
            }
        }
    }

    /// Readable when a token may be there: poll it in your own loop, then [`Client::try_acquire`]
    /// (which may still find nothing: another process can be faster).
    pub fn readiness(&self) -> BorrowedFd<'_> {
        self.0.read.as_fd()
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(left) => {
                let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(self.0.read.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(errno) => Err(ClientError::Io(errno.into())),
        }
    }
}

/// A token read from the jobserver. Dropping it writes back the byte that was read;
/// [`Token::give_back`] does the same and says whether it worked.
#[derive(Debug)]
pub struct Token {
    client: Arc<Inner>,
    byte: u8,
    given_back: bool,
}

impl Token {
    /// The byte the server handed out (`+` from make and steve, anything from others).
    pub fn byte(&self) -> u8 {
        self.byte
    }

    /// Writes the byte back now, and says if that failed (the token is then lost to this
    /// process: the server's accounting, or a fifo steve's leak recovery, finds it).
    pub fn give_back(mut self) -> Result<(), ClientError> {
        self.given_back = true;
        self.write_back()
    }

    fn write_back(&self) -> Result<(), ClientError> {
        loop {
            match (&self.client.write).write(&[self.byte]) {
                Ok(1) => return Ok(()),
                Ok(_) => return Err(ClientError::Closed),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ClientError::Io(error)),
            }
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if !self.given_back {
            // Nothing else can be done in a destructor; give_back reports the failure.
            let _ = self.write_back();
        }
    }
}

/// The implicit token; dropping it makes it available to [`Client::take_implicit`] again.
#[derive(Debug)]
pub struct ImplicitToken {
    client: Arc<Inner>,
}

impl Drop for ImplicitToken {
    fn drop(&mut self) {
        self.client.implicit_taken.store(false, Ordering::Release);
    }
}

/// A jobserver path must be a FIFO, a character device (`/dev/steve`), or steve's own file on a
/// FUSE mount; any other file is refused before a byte is written to it (make writes a token into
/// whatever regular file MAKEFLAGS names).
fn check_kind(path: &Path, shown: &str) -> Result<(), ClientError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(source) => return Err(ClientError::Open { path: path.to_path_buf(), source }),
    };
    let kind = metadata.file_type();
    if kind.is_fifo() || kind.is_char_device() || kind.is_file() {
        Ok(())
    } else {
        Err(ClientError::NotAJobserver {
            reason: format!("{shown} is neither a pipe nor a device"),
        })
    }
}

/// The file opened for a `fifo:` jobserver must be a FIFO, a character device, or a regular file
/// on a FUSE mount whose source is `steve`.
fn check_opened(file: &File, path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata().map_err(ClientError::Io)?;
    let kind = metadata.file_type();
    if kind.is_fifo() && is_standard_pipe(&metadata) {
        return Err(ClientError::NotAJobserver {
            reason: format!(
                "{} is this process's own standard input, output or error",
                path.display()
            ),
        });
    }
    if kind.is_fifo() || kind.is_char_device() {
        return Ok(());
    }
    let on_fuse = nix::sys::statfs::fstatfs(file)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let source = crate::mountinfo::mount_of_device(&mountinfo, metadata.dev());
    if kind.is_file() && on_fuse && source.is_some_and(|mount| mount.source == "steve") {
        return Ok(());
    }
    Err(ClientError::NotAJobserver {
        reason: format!(
            "{} is a {}, not a named pipe, a character device or steve's FUSE jobserver file: \
             no token is written into it",
            path.display(),
            if kind.is_file() { "regular file" } else { "special file" }
        ),
    })
}

/// Whether the pipe `metadata` describes is this process's standard input, output or error
/// (`fifo:/proc/self/fd/1`): reading tokens from it would wait on the process itself.
fn is_standard_pipe(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (0..=2).any(|fd| {
        fs::metadata(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|stdio| (stdio.dev(), stdio.ino()) == (metadata.dev(), metadata.ino()))
    })
}

fn open_path(path: &Path, read: bool, write: bool) -> Result<File, ClientError> {
    let flags = if read { nix::libc::O_NONBLOCK } else { 0 };
    OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| ClientError::Open { path: path.to_path_buf(), source })
}

/// Opens inherited descriptor `fd` anew through /proc, for a description of our own.
fn reopen_fd(fd: i32, write: bool) -> Result<File, ClientError> {
    // Standard input, output and error are never a jobserver: a pipe there is the process's
    // own (`--jobserver-auth=1,1` with stdout a pipe would wait on itself forever).
    if (0..=2).contains(&fd) {
        return Err(ClientError::NotAJobserver {
            reason: format!("descriptor {fd} is standard input, output or error"),
        });
    }
    let link = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let metadata = fs::metadata(&link).map_err(|_| ClientError::Disabled {
        reason: format!(
            "descriptor {fd} is not open: the parent make closed it (a rule without '+' runs its \
             commands without the jobserver)"
        ),
    })?;
    if !metadata.file_type().is_fifo() {
        return Err(ClientError::NotAJobserver {
            reason: format!("descriptor {fd} is not a pipe"),
        });
    }
    open_path(&link, !write, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A jobserver pipe with `tokens` in it, as inherited descriptors of this process.
    fn pipe_with(tokens: &[u8]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd, JobserverAuth) {
        use std::os::fd::AsRawFd;
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&write, tokens).unwrap();
        let auth = JobserverAuth::Fds { read: read.as_raw_fd(), write: write.as_raw_fd() };
        (read, write, auth)
    }

    #[test]
    fn a_dropped_token_writes_back_exactly_the_byte_that_was_read() {
        let (read, _write, auth) = pipe_with(b"ab");
        let client = Client::open(&auth).unwrap();
        let token = client.acquire().unwrap();
        assert_eq!(token.byte(), b'a');
        assert_eq!(crate::sys::bytes_in_pipe(&read).unwrap(), 1);
        drop(token);
        assert_eq!(crate::sys::bytes_in_pipe(&read).unwrap(), 2);
        let mut rest = [0u8; 2];
        assert_eq!(nix::unistd::read(&read, &mut rest).unwrap(), 2);
        assert_eq!(&rest, b"ba", "the byte that was read went back, once");
    }

    #[test]
    fn give_back_writes_the_byte_once() {
        let (read, _write, auth) = pipe_with(b"x");
        let client = Client::open(&auth).unwrap();
        let token = client.try_acquire().unwrap().unwrap();
        token.give_back().unwrap();
        // Given back, and not again when the token is dropped inside give_back.
        assert_eq!(crate::sys::bytes_in_pipe(&read).unwrap(), 1);
    }

    #[test]
    fn the_implicit_token_is_one_and_comes_back_on_drop() {
        let (_read, _write, auth) = pipe_with(b"");
        let client = Client::open(&auth).unwrap();
        let implicit = client.take_implicit().unwrap();
        assert!(client.clone().take_implicit().is_none(), "clones share it");
        drop(implicit);
        assert!(client.take_implicit().is_some());
    }

    #[test]
    fn try_acquire_never_blocks_even_if_the_shared_pipe_is_blocking() {
        let (read, _write, auth) = pipe_with(b"");
        // The shared description is blocking (as a parent make may leave it); ours is not.
        nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
            .unwrap();
        let client = Client::open(&auth).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(client.try_acquire().unwrap().is_none()).unwrap());
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok(true), "try_acquire blocked");
        let flags = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & nix::libc::O_NONBLOCK, 0, "the shared description's mode changed");
    }

    #[test]
    fn a_token_taken_by_someone_else_first_means_waiting_again_not_hanging() {
        let (_read, write, auth) = pipe_with(b"");
        let slow = Client::open(&auth).unwrap();
        let fast = Client::open(&auth).unwrap();
        nix::unistd::write(&write, b"+").unwrap();
        // Both see readiness; the fast one takes the token.
        let mut fds = [PollFd::new(slow.readiness(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
        let taken = fast.try_acquire().unwrap().unwrap();
        let start = Instant::now();
        assert!(slow.acquire_timeout(Duration::from_millis(200)).unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(10));
        drop(taken);
        assert!(slow.acquire_timeout(Duration::from_secs(10)).unwrap().is_some());
    }

    #[test]
    fn acquire_unless_gives_up_when_told_and_takes_nothing() {
        let (read, write, auth) = pipe_with(b"");
        let client = Client::open(&auth).unwrap();
        let (stop_read, stop_write) = nix::unistd::pipe().unwrap();
        let waiter = std::thread::spawn(move || {
            client.acquire_unless(stop_read.as_fd()).map(|token| token.is_some())
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "gave up before it was told");
        nix::unistd::write(&stop_write, b"!").unwrap();
        assert!(!waiter.join().unwrap().unwrap(), "a token came from an empty pipe");
        // A token there is taken, stop or not.
        nix::unistd::write(&write, b"+").unwrap();
        let client = Client::open(&auth).unwrap();
        let (stop, _keep) = nix::unistd::pipe().unwrap();
        assert!(client.acquire_unless(stop.as_fd()).unwrap().is_some());
        assert_eq!(crate::sys::bytes_in_pipe(&read).unwrap(), 1, "written back on drop");
    }

    extern "C" fn ignore_signal(_: nix::libc::c_int) {}

    #[test]
    fn acquire_survives_signals_that_interrupt_its_wait() {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        use std::os::unix::thread::JoinHandleExt;
        // A handler without SA_RESTART: the signal makes the blocked poll fail with EINTR.
        let action =
            SigAction::new(SigHandler::Handler(ignore_signal), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe; SIGURG is used by no
        // other test.
        unsafe { sigaction(Signal::SIGURG, &action) }.unwrap();
        let (_read, write, auth) = pipe_with(b"");
        let client = Client::open(&auth).unwrap();
        let waiter = std::thread::spawn(move || client.acquire().map(|token| token.byte()));
        let thread = waiter.as_pthread_t();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            nix::sys::pthread::pthread_kill(thread, Signal::SIGURG).unwrap();
        }
        assert!(!waiter.is_finished(), "a signal ended the wait");
        nix::unistd::write(&write, b"+").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), b'+');
    }

    #[test]
    fn typed_errors_for_disabled_closed_and_wrong_descriptors() {
        assert!(matches!(
            Client::open(&JobserverAuth::Disabled),
            Err(ClientError::Disabled { .. })
        ));
        let closed = JobserverAuth::Fds { read: 987, write: 988 };
        let error = Client::open(&closed).unwrap_err();
        assert!(matches!(error, ClientError::Disabled { .. }), "{error}");
        assert!(error.to_string().contains("'+'"), "{error}");
        for stdio in [0, 1, 2] {
            let error =
                Client::open(&JobserverAuth::Fds { read: stdio, write: stdio }).unwrap_err();
            assert!(matches!(error, ClientError::NotAJobserver { .. }), "{error}");
        }
        // Two ends of different pipes are not a jobserver.
        let (first, _w1, _) = pipe_with(b"");
        let (_r2, second, _) = pipe_with(b"");
        use std::os::fd::AsRawFd;
        let mixed = JobserverAuth::Fds { read: first.as_raw_fd(), write: second.as_raw_fd() };
        assert!(matches!(Client::open(&mixed), Err(ClientError::NotAJobserver { .. })));
        let file = tempfile_in_tmp();
        let not_pipe = JobserverAuth::Fds { read: file.as_raw_fd(), write: file.as_raw_fd() };
        assert!(matches!(Client::open(&not_pipe), Err(ClientError::NotAJobserver { .. })));
    }

    #[test]
    fn a_regular_file_is_never_written_to() {
        let path = std::env::temp_dir().join(format!("steve-precious-{}", std::process::id()));
        fs::write(&path, "precious").unwrap();
        let error = Client::open(&JobserverAuth::Fifo(path.clone())).unwrap_err();
        assert!(matches!(error, ClientError::NotAJobserver { .. }), "{error}");
        assert!(error.to_string().contains("regular file"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
        let _ = fs::remove_file(&path);
        // A FIFO is a jobserver.
        let fifo = std::env::temp_dir().join(format!("steve-fifo-{}", std::process::id()));
        let _keep = crate::client::make_fifo(&fifo).unwrap();
        assert!(Client::open(&JobserverAuth::Fifo(fifo.clone())).is_ok());
        let _ = fs::remove_file(&fifo);
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("steve-client-test-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let _ = fs::remove_file(&path);
        file
    }
}
