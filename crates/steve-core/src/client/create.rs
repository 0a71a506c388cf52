//! Creating a jobserver for a command tree, as `make -jN` does for its children (and as
//! `steve run` does): `jobs - 1` tokens in a pipe, plus the implicit one the first command holds.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;

use super::{Client, ClientError};
use crate::accounting::pool::JobCount;
use crate::makeflags::{Jobs, JobserverAuth, MakeFlags};
use crate::relay::Relay;

/// How the jobserver reaches its children: the one pipe-or-fifo choice, for the library,
/// `steve run --style` and its backend alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// An anonymous pipe, inherited as descriptors (`--jobserver-auth=R,W`): every make since
    /// 4.2, and what make 4.3 needs.
    Pipe,
    /// A named pipe in a new private directory (`--jobserver-auth=fifo:PATH`): make 4.4 and
    /// later; nothing to inherit.
    Fifo,
}

impl Style {
    /// Every style, as `--style` lists them.
    pub const ALL: [Style; 2] = [Style::Pipe, Style::Fifo];

    /// The style's name: `pipe` or `fifo`.
    pub fn name(self) -> &'static str {
        match self {
            Style::Pipe => "pipe",
            Style::Fifo => "fifo",
        }
    }
}

impl std::str::FromStr for Style {
    type Err = String;

    fn from_str(text: &str) -> Result<Style, String> {
        Style::ALL
            .into_iter()
            .find(|style| style.name() == text)
            .ok_or_else(|| format!("{text:?} is not a style: pipe or fifo"))
    }
}

impl std::fmt::Display for Style {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most tokens a jobserver may be created with: what one write to a pipe puts in at once.
pub const PIPE_BUF: usize = nix::libc::PIPE_BUF;

/// A jobserver this process owns.
///
/// ```
/// use steve_core::client::{Jobserver, Style};
///
/// let jobserver = Jobserver::create(4.try_into()?, Style::Pipe)?;
/// let mut make = std::process::Command::new("true");
/// jobserver.configure(&mut make); // MAKEFLAGS and CARGO_MAKEFLAGS, descriptors inherited
/// make.status()?;
/// assert_eq!(jobserver.close()?.missing, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Jobserver {
    jobs: usize,
    /// The `-j` children are told (`jobs`, unless the tokens come through a relay).
    advertised: Jobs,
    style: Style,
    /// The end tokens are read from (for a named pipe, one file open both ways).
    read: File,
    /// The end tokens are written to.
    write: File,
    /// The named pipe's private directory, removed on close.
    dir: Option<PathBuf>,
}

/// What was found when the jobserver closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    /// Tokens never returned (a child killed holding them, or still running).
    pub missing: usize,
    /// Bytes more than were handed out (a child wrote back what it had not taken).
    pub surplus: usize,
}

impl Jobserver {
    /// A jobserver for `jobs` jobs at once: `jobs - 1` tokens in the pipe.
    pub fn create(jobs: JobCount, style: Style) -> Result<Jobserver, ClientError> {
        Jobserver::with_tokens(&vec![b'+'; jobs.get() - 1], style)
    }

    /// A jobserver whose pipe holds exactly `tokens`, one byte each (libjobserver lets the
    /// caller choose them): `tokens.len() + 1` jobs at once. At most [`PIPE_BUF`] tokens, so
    /// that filling the pipe is one write nobody can see half done.
    pub fn with_tokens(tokens: &[u8], style: Style) -> Result<Jobserver, ClientError> {
        if tokens.len() > PIPE_BUF {
            return Err(ClientError::TooManyTokens { count: tokens.len(), max: PIPE_BUF });
        }
        let jobs = tokens.len() + 1;
        let jobserver = Jobserver::empty(jobs, Jobs::Limit(jobs as u32), style)?;
        (&jobserver.write).write_all(tokens).map_err(ClientError::Io)?;
        Ok(jobserver)
    }

    /// A jobserver whose pipe starts empty and is fed through the returned [`Relay`], one token
    /// at a time, from another jobserver (as `steve exec --pipe` borrows from the machine's);
    /// children are told `-j` `advertised`.
    pub fn relayed(advertised: Jobs, style: Style) -> Result<(Jobserver, Relay), ClientError> {
        let jobserver = Jobserver::empty(1, advertised, style)?;
        let read = jobserver.read.try_clone().map_err(ClientError::Io)?;
        let write = jobserver.write.try_clone().map_err(ClientError::Io)?;
        let relay = Relay::new(read, write).map_err(ClientError::Io)?;
        Ok((jobserver, relay))
    }

    fn empty(jobs: usize, advertised: Jobs, style: Style) -> Result<Jobserver, ClientError> {
        let (read, write, dir) = match style {
            Style::Pipe => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .map_err(|errno| ClientError::Io(errno.into()))?;
                (File::from(read), File::from(write), None)
            }
            Style::Fifo => {
                let dir = private_dir().map_err(ClientError::Io)?;
                let path = dir.join("jobserver");
                match make_fifo(&path) {
                    Ok(file) => {
                        let write = file.try_clone().map_err(ClientError::Io)?;
                        (file, write, Some(dir))
                    }
                    Err(error) => {
                        let _ = fs::remove_dir_all(&dir);
                        return Err(ClientError::Open { path, source: error });
                    }
                }
            }
        };
        Ok(Jobserver { jobs, advertised, style, read, write, dir })
    }

    /// Jobs at once, the implicit token included: the tokens it was made with, plus one.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// Where children find it.
    pub fn auth(&self) -> JobserverAuth {
        match &self.dir {
            Some(dir) => JobserverAuth::Fifo(dir.join("jobserver")),
            None => {
                JobserverAuth::Fds { read: self.read.as_raw_fd(), write: self.write.as_raw_fd() }
            }
        }
    }

    /// The MAKEFLAGS for children: `base`'s other flags kept, `-jN` and this jobserver set.
    pub fn makeflags(&self, base: &MakeFlags) -> String {
        base.with_jobserver(self.advertised, self.auth()).to_string()
    }

    /// Hands the jobserver to `command`: MAKEFLAGS and CARGO_MAKEFLAGS (keeping the other flags
    /// of this process's MAKEFLAGS), and for [`Style::Pipe`] the two descriptors, inherited
    /// under the numbers MAKEFLAGS names. Nothing changes in this process. Returns the
    /// MAKEFLAGS value given.
    pub fn configure(&self, command: &mut Command) -> String {
        let base = crate::makeflags::from_env()
            .ok()
            .flatten()
            .map(|found| found.flags)
            .unwrap_or_default();
        let flags = self.makeflags(&base);
        command.env("MAKEFLAGS", &flags).env("CARGO_MAKEFLAGS", &flags).env_remove("MFLAGS");
        if self.style == Style::Pipe {
            crate::sys::inherit_fds(command, vec![self.read.as_raw_fd(), self.write.as_raw_fd()]);
        }
        flags
    }

    /// A client of this jobserver, for the owner's own jobs.
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::open(&self.auth())
    }

    /// Tokens in the pipe now.
    pub fn free(&self) -> usize {
        crate::sys::bytes_in_pipe(self.read.as_fd()).unwrap_or(0)
    }

    /// Lets every program this process starts inherit the descriptors (clears close-on-exec),
    /// for a jobserver published in this process's own environment rather than handed to one
    /// [`Command`] by [`Jobserver::configure`]. Nothing to do for a named pipe.
    pub fn inherit_across_exec(&self) -> Result<(), ClientError> {
        if self.style == Style::Pipe {
            for fd in [self.read.as_fd(), self.write.as_fd()] {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                    .map_err(|errno| ClientError::Io(errno.into()))?;
            }
        }
        Ok(())
    }

    /// Whether a process other than this one still has the jobserver open (a descendant that
    /// outlived the job that started it): its tokens may still come back. Processes whose
    /// descriptors cannot be read (another user's) are not seen; a private pipe reaches them
    /// only if one of ours passed it on.
    pub fn held_elsewhere(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let wanted = match (&self.dir, self.read.metadata()) {
            (Some(dir), _) => dir.join("jobserver").into_os_string(),
            (None, Ok(metadata)) => format!("pipe:[{}]", metadata.ino()).into(),
            (None, Err(_)) => return false,
        };
        let own = std::process::id().to_string();
        let Ok(processes) = fs::read_dir("/proc") else { return false };
        processes
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                name != own.as_str() && name.to_str().is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .any(|entry| {
                // Only the links' text is read, never the files behind them.
                fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten().any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted)
                })
            })
    }

    /// Closes the jobserver and says whether every token came back.
    pub fn close(self) -> Result<CloseReport, ClientError> {
        let mut found = 0usize;
        let mut chunk = [0u8; 4096];
        loop {
            match (&self.read).read(&mut chunk) {
                Ok(0) => break,
                Ok(count) => found += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ClientError::Io(error)),
            }
        }
        let expected = self.jobs - 1;
        Ok(CloseReport {
            missing: expected.saturating_sub(found),
            surplus: found.saturating_sub(expected),
        })
    }
}

impl Drop for Jobserver {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Makes a named pipe at `path` (mode 0600) and opens it for reading and writing without
/// blocking: the opener keeps it alive and can count, add and take out tokens. If it cannot be
/// opened, it is removed again.
pub fn make_fifo(path: &Path) -> io::Result<File> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(io::Error::from)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(path)
        .inspect_err(|_| {
            let _ = fs::remove_file(path);
        })
}

/// A new directory only this user can enter, in the runtime directory or the temp directory.
fn private_dir() -> io::Result<PathBuf> {
    let base = crate::paths::runtime_dir().unwrap_or_else(std::env::temp_dir);
    for attempt in 0..100 {
        let dir = base.join(format!("steve-jobserver-{}-{attempt}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free private directory name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_jobserver_reaches_a_child_and_counts_what_comes_back() {
        let jobserver = Jobserver::create(JobCount::new(3).unwrap(), Style::Pipe).unwrap();
        assert_eq!(jobserver.free(), 2);
        // A child that takes one token through the inherited descriptors and keeps it.
        let mut child = Command::new("sh");
        child.args(["-c", r#"r="${MAKEFLAGS##*--jobserver-auth=}"; r="${r%%,*}"; dd bs=1 count=1 <&"$r" 2>/dev/null >/dev/null"#]);
        jobserver.configure(&mut child);
        assert!(child.status().unwrap().success());
        assert_eq!(jobserver.close().unwrap(), CloseReport { missing: 1, surplus: 0 });
    }

    #[test]
    fn a_fifo_jobserver_is_a_path_removed_on_close() {
        let jobserver = Jobserver::create(JobCount::new(2).unwrap(), Style::Fifo).unwrap();
        let JobserverAuth::Fifo(path) = jobserver.auth() else { panic!("not a fifo") };
        assert!(path.exists());
        let client = jobserver.client().unwrap();
        let token = client.try_acquire().unwrap().expect("one token in the pipe");
        assert!(client.try_acquire().unwrap().is_none());
        drop(token);
        drop(client);
        assert_eq!(jobserver.close().unwrap(), CloseReport { missing: 0, surplus: 0 });
        assert!(!path.exists());
    }

    #[test]
    fn tokens_of_the_callers_choice_come_out_as_written_and_too_many_are_refused() {
        let jobserver = Jobserver::with_tokens(b"ab", Style::Pipe).unwrap();
        assert_eq!((jobserver.jobs(), jobserver.free()), (3, 2));
        let client = jobserver.client().unwrap();
        let bytes: Vec<u8> =
            (0..2).map(|_| client.try_acquire().unwrap().unwrap().byte()).collect();
        assert_eq!(bytes, b"ab");
        assert!(matches!(
            Jobserver::with_tokens(&[b'+'; PIPE_BUF + 1], Style::Pipe),
            Err(ClientError::TooManyTokens { count, max: PIPE_BUF }) if count == PIPE_BUF + 1
        ));
        assert_eq!(
            Jobserver::with_tokens(&[b'+'; PIPE_BUF], Style::Pipe).unwrap().free(),
            PIPE_BUF
        );
    }

    #[test]
    fn a_descendant_holding_the_pipe_is_seen_and_inherits_it_across_exec() {
        let jobserver = Jobserver::create(JobCount::new(2).unwrap(), Style::Pipe).unwrap();
        assert!(!jobserver.held_elsewhere(), "only this process has it");
        jobserver.inherit_across_exec().unwrap();
        let JobserverAuth::Fds { read, .. } = jobserver.auth() else { panic!("a pipe") };
        // No configure(): the descriptor reaches the child only because it is inheritable now.
        let mut child =
            Command::new("sleep").arg("30").stdin(std::process::Stdio::null()).spawn().unwrap();
        // spawn() returns once the child has exec'd: the descriptors are there or never will be.
        let link = fs::read_link(format!("/proc/{}/fd/{read}", child.id()));
        let seen = jobserver.held_elsewhere();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(link.is_ok(), "the child did not inherit descriptor {read}");
        assert!(seen, "a child holding the pipe was not seen");
        // Children other tests spawn meanwhile inherit the descriptor too (it is inheritable
        // in the whole test process); they end with their tests.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while jobserver.held_elsewhere() {
            assert!(std::time::Instant::now() < deadline, "the child is gone");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
