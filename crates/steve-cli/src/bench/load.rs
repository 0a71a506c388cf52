//! The load `steve bench` puts on a jobserver: client processes (this binary again, as the
//! hidden `steve bench-client`) that take and give back tokens as fast as they can, or take
//! some and keep them, and idle connected clients (forked children that took one token, gave it
//! back and wait), so that the server knows as many processes as a busy machine has, and
//! readers blocked for a token by the thousand.
//!
//! Every client is a process of its own: the per-process backends keep books per process, and
//! a build's clients are processes, not threads.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a `steve bench-client` process does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Role {
    /// Read a token and write it back, over and over, for SECONDS; print the round trips done
    /// and the seconds they took.
    RoundTrips {
        /// The jobserver.
        path: std::path::PathBuf,
        /// How long.
        seconds: f64,
    },
    /// Fork COUNT children that each open the jobserver, take a token, give it back, print `.`
    /// and wait until killed (with the children, as one process group).
    ConnectMany {
        /// The jobserver.
        path: std::path::PathBuf,
        /// How many.
        count: usize,
        /// Each child prints `s` once it has the jobserver open, before it reads.
        #[arg(long)]
        say_opened: bool,
        /// Each child first takes a token and gives it back, prints `f`, and waits for a byte
        /// on stdin; then as with `--say-opened`.
        #[arg(long, conflicts_with = "say_opened")]
        served_first: bool,
    },
    /// Not a client: serve the bench's minimal FUSE file server on MOUNTPOINT (its file is
    /// `MOUNTPOINT/jobserver`: a read answers a byte, a write its length), print `ready`, and
    /// unmount at SIGTERM.
    FuseBaseline {
        /// Where to mount it.
        mountpoint: std::path::PathBuf,
        /// Threads reading requests (1: libfuse's single-threaded loop).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Each thread on a descriptor of its own (libfuse's `clone_fd`), not all on one.
        #[arg(long)]
        clone_fd: bool,
        /// FUSE over io_uring: a thread per CPU, each with a ring for its CPU's queue.
        #[arg(long)]
        io_uring: bool,
    },
    /// Read TOKENS tokens, print `held`, and keep them until killed.
    Hold {
        /// The jobserver.
        path: std::path::PathBuf,
        /// How many.
        tokens: usize,
    },
}

/// Runs a client role (in the `steve bench-client` process).
pub fn run_role(role: Role) -> anyhow::Result<()> {
    match role {
        Role::RoundTrips { path, seconds } => {
            let mut file = open(&path)?;
            let mut byte = [0u8; 1];
            let started = Instant::now();
            let deadline = started + Duration::from_secs_f64(seconds);
            let mut count = 0u64;
            // The clock is read every 64 round trips: a read of it is not free either.
            while count % 64 != 0 || Instant::now() < deadline {
                file.read_exact(&mut byte).context("read a token")?;
                file.write_all(&byte).context("write the token back")?;
                count += 1;
            }
            println!("{count} {}", started.elapsed().as_secs_f64());
        }
        Role::ConnectMany { path, count, say_opened, served_first } => {
            use crate::bench::fork::{connected_child, Pattern};
            let path = std::ffi::CString::new(path.into_os_string().into_encoded_bytes())?;
            let pattern = match (say_opened, served_first) {
                (_, true) => Pattern::ServedFirst,
                (true, false) => Pattern::SayOpened,
                (false, false) => Pattern::Idle,
            };
            for _ in 0..count {
                connected_child(&path, pattern)?;
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Role::FuseBaseline { mountpoint, threads, clone_fd, io_uring } => {
            use steve_cuse::fuse::baseline::{serve, Threading};
            let threading = match (threads, clone_fd) {
                _ if io_uring => Threading::Ring,
                (0 | 1, _) => Threading::Single,
                (threads, false) => Threading::Shared(threads),
                (threads, true) => Threading::Cloned(threads),
            };
            serve(&mountpoint, threading, || {
                println!("ready");
                let _ = std::io::stdout().flush();
            })?;
        }
        Role::Hold { path, tokens } => {
            let mut file = open(&path)?;
            let mut byte = [0u8; 1];
            for _ in 0..tokens {
                file.read_exact(&mut byte).context("read a token")?;
            }
            println!("held");
            std::io::stdout().flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    Ok(())
}

/// Whether `fd` becomes readable within `limit` (a poll of at most 65 s at a time: a longer
/// limit answers `false` early, and the caller asks again).
fn readable_within(fd: std::os::fd::BorrowedFd<'_>, limit: Duration) -> std::io::Result<bool> {
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let millis = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    Ok(nix::poll::poll(&mut fds, millis)? > 0)
}

fn open(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

fn client(role: &[&str], path: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this binary"));
    command.arg("bench-client").arg(role[0]).arg(path).args(&role[1..]);
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    command
}

/// Round trips per second of `clients` processes at once on `path`, over `seconds`: the sum of
/// each one's rate over its own time (starting a process is not counted).
pub fn round_trips(path: &Path, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let seconds_arg = format!("{seconds}");
    let children: Vec<Child> = (0..clients)
        .map(|_| {
            client(&["round-trips", &seconds_arg], path)
                .stdout(Stdio::piped())
                .spawn()
                .context("start a bench client")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut total = 0.0;
    for child in children {
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut words = text.split_whitespace().map(str::parse::<f64>);
        match (output.status.success(), words.next(), words.next()) {
            (true, Some(Ok(count)), Some(Ok(took))) if took > 0.0 => total += count / took,
            _ => bail!("a bench client failed on {}", path.display()),
        }
    }
    Ok(total)
}

/// A client holding tokens until it is killed (at the latest when this is dropped: a holder
/// left running would hold its tokens through the next server's crash books).
pub struct Holder(Child);

impl Holder {
    /// Starts a client that takes `tokens` on `path` and waits (up to ten seconds) until it
    /// holds them.
    pub fn start(path: &Path, tokens: usize) -> anyhow::Result<Holder> {
        let mut child = client(&["hold", &tokens.to_string()], path)
            .stdout(Stdio::piped())
            .spawn()
            .context("start a holding client")?;
        let stdout = child.stdout.take().expect("piped");
        let holder = Holder(child);
        let mut line = String::new();
        if readable_within(std::os::fd::AsFd::as_fd(&stdout), Duration::from_secs(10))? {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        if line.trim() != "held" {
            bail!("the holding client did not get its {tokens} tokens on {}", path.display());
        }
        Ok(holder)
    }

    /// Kills it with SIGKILL (as the OOM killer would), and reaps it.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client processes in one process group of their own (killed when this is dropped), writing
/// progress marks to a pipe shared as their stdout, which [`ClientGroup::wait_for`] counts.
/// They are forked by one process rather than started one by one: ten thousand `sh` would
/// measure `fork` and `exec` (some 2.5 ms each here), not the server.
pub struct ClientGroup {
    /// `steve bench-client connect-many`, whose children the clients are.
    leader: Option<Child>,
    marks: File,
    /// Marks read so far beyond those waited for.
    seen: Vec<u8>,
    /// The clients' stdin, where `--served-first` clients wait for a byte each.
    go: Option<File>,
}

impl ClientGroup {
    /// `count` clients forked by one `steve bench-client connect-many` (see [`Role`]).
    pub fn connect_many(path: &Path, count: usize, how: &str) -> anyhow::Result<ClientGroup> {
        let (marks, marks_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("make a pipe")?;
        let count = count.to_string();
        let role: &[&str] =
            if how.is_empty() { &["connect-many", &count] } else { &["connect-many", &count, how] };
        let mut command = client(role, path);
        command.stdout(marks_write).process_group(0);
        let mut go = None;
        if how == "--served-first" {
            let (go_read, go_write) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("make a pipe")?;
            command.stdin(go_read);
            go = Some(go_write.into());
        }
        let leader = command.spawn().context("start the idle clients")?;
        Ok(ClientGroup { leader: Some(leader), marks: marks.into(), seen: Vec::new(), go })
    }

    /// Lets `count` clients waiting on their stdin go on.
    pub fn let_go(&mut self, count: usize) -> anyhow::Result<()> {
        let go = self.go.as_mut().context("these clients wait for nothing")?;
        go.write_all(&vec![b'g'; count]).context("let the clients go on")
    }

    /// Waits until `count` marks `mark` have come (up to `limit` from `since`).
    pub fn wait_for(
        &mut self,
        mark: u8,
        count: usize,
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let mut buffer = [0u8; 4096];
        loop {
            let seen = self.seen.iter().filter(|byte| **byte == mark).count();
            if seen >= count {
                return Ok(());
            }
            let left = limit.saturating_sub(since.elapsed());
            if !readable_within(std::os::fd::AsFd::as_fd(&self.marks), left)? {
                if since.elapsed() >= limit {
                    bail!("{seen} of {count} clients got as far within {limit:?}");
                }
                continue;
            }
            let read = (&self.marks).read(&mut buffer)?;
            self.seen.extend_from_slice(&buffer[..read]);
        }
    }
}

impl Drop for ClientGroup {
    fn drop(&mut self) {
        if let Some(mut leader) = self.leader.take() {
            let group = nix::unistd::Pid::from_raw(-(leader.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            // Its children, orphaned, are reaped by init: until the last is gone, the kernel
            // tearing thousands down would take the CPUs from the next measurement.
            let _ = leader.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            while nix::sys::signal::kill(group, None) != Err(nix::errno::Errno::ESRCH)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `count` idle connected clients: each opens the jobserver, takes a token and gives it back
/// (so the server knows the process), says so, and waits. Returns them (killed when dropped)
/// and how long until all had given their token back.
pub fn idle_clients(
    path: &Path,
    count: usize,
    limit: Duration,
) -> anyhow::Result<(ClientGroup, Duration)> {
    let started = Instant::now();
    let mut group = ClientGroup::connect_many(path, count, "")?;
    group.wait_for(b'.', count, started, limit)?;
    Ok((group, started.elapsed()))
}

/// Hand-offs per second to `count` blocked readers: while a holder keeps the whole pool, each
/// reader (forked, as the idle clients) opens the jobserver and blocks reading a token; once
/// `waiting` says all of them wait, the holder is killed, and each reader that gets a token
/// writes it back at once for the next. The rate is `count` over the time from the kill until
/// the last reader had its token. With `served_first` each reader first took a token and gave
/// it back, before the holder came: no reader's build is then new to the fair shares.
pub fn hand_offs(
    path: &Path,
    count: usize,
    limit: Duration,
    waiting: &dyn Fn() -> Option<usize>,
    served_first: bool,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (holder, mut group) = if served_first {
        let mut group = ClientGroup::connect_many(path, count, "--served-first")?;
        group.wait_for(b'f', count, started, limit)?;
        let holder = Holder::start(path, JOBS_HELD)?;
        group.let_go(count)?;
        (holder, group)
    } else {
        let holder = Holder::start(path, JOBS_HELD)?;
        (holder, ClientGroup::connect_many(path, count, "--say-opened")?)
    };
    group.wait_for(b's', count, started, limit)?;
    while waiting().unwrap_or(0) < count {
        if started.elapsed() > limit {
            bail!("{} of {count} readers were waiting within {limit:?}", waiting().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let freed = Instant::now();
    holder.kill();
    group.wait_for(b'.', count, freed, limit)?;
    Ok(count as f64 / freed.elapsed().as_secs_f64())
}

/// The tokens the hand-off's holder keeps: the whole pool of the bench's servers.
const JOBS_HELD: usize = super::JOBS;

/// Non-blocking reads until `tokens` tokens were taken, then writes them back; when the last
/// was taken (the end of a reclaim, when the tokens were just freed by a kill).
pub fn time_until_free(path: &Path, tokens: usize, limit: Duration) -> anyhow::Result<Instant> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let started = Instant::now();
    let mut taken = 0;
    let mut byte = [0u8; 1];
    while taken < tokens {
        match file.read(&mut byte) {
            Ok(1) => taken += 1,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > limit {
                    file.write_all(&vec![b'+'; taken])?;
                    bail!("only {taken} of {tokens} tokens came back within {limit:?}");
                }
                std::thread::yield_now();
            }
            Err(error) => return Err(error).context("read a token"),
        }
    }
    let done = Instant::now();
    file.write_all(&vec![b'+'; taken])?;
    Ok(done)
}
