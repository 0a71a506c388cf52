//! The `fifo` backend: a named pipe holding the machine's tokens, shared by every build.
//!
//! Clients read a byte to take a token and write one back to return it; the kernel's pipe does
//! the handing out, so any client that speaks the protocol works, ninja included (it insists on
//! a real FIFO). The daemon keeps the pipe open for reading and writing, so clients never see
//! end-of-file or a broken pipe, and it repairs the pool: a pipe cannot tell who holds a token,
//! so tokens of a client killed while holding them are lost to it. Once no other process has
//! the pipe open, every token must be back in it; the daemon tops up what is missing (and takes
//! out any surplus a confused client wrote). It learns that the pipe was let go from inotify's
//! close events, and confirms that nobody else holds it by scanning `/proc/*/fd`, once per
//! burst of closes ([`CHECK_DELAY`] after the first), so that a client opening and closing the
//! pipe over and over costs one scan per burst, not one per close.
//!
//! The counts are steve-core's [`Pool`]: a token in the pipe or with a client is *held* (out of
//! the daemon's hands), a token the daemon keeps back is *withheld*, and a *free* token is put
//! into the pipe at once. The server runs in steve-core's event loop, which watches its inotify
//! descriptor and its token taker.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use steve_core::accounting::pool::Pool;
use steve_core::makeflags::JobserverAuth;
use steve_core::paths::control_beside;
use steve_core::server::backend::{Export, Place, Places, ServeConfig, ServeOption};
use steve_core::server::processes::command_line;
use steve_core::server::{Context, Endpoint, Flow, PoolChange, Server, SourceId};
use steve_core::status::{BackendReport, CounterReport, HolderReport, PoolReport};
use steve_core::trace::{Kind, Record};
use steve_core::JobCount;
use tracing::{debug, info, warn};

use crate::error::FifoError;
use crate::openers::{find_holder, find_holders, FileId};
use crate::pipe_file::PipeFile;
use crate::taker::Taker;
use crate::TOKEN;
use steve_core::os::bytes_in_pipe;

/// Where root's daemon serves when no `--path` is given.
pub const SYSTEM_PATH: &str = "/run/steve/jobserver";

/// The options `fifo` takes besides the common ones.
pub const OPTIONS: &[ServeOption] = &[ServeOption::Path];

/// The inotify descriptor and the taker's, to the event loop.
const INOTIFY: SourceId = SourceId(0);
const TAKER: SourceId = SourceId(1);
/// How it serves, for the log and the status.
const HOW: &str = "a named pipe; tokens of killed clients are put back once it is let go";
/// How long after a close the leak check runs: the closes of a burst (a client opening and
/// closing the pipe a thousand times a second) share one scan of `/proc`, and a token lost
/// with the last holder is still back well within 100 ms.
const CHECK_DELAY: Duration = Duration::from_millis(60);
/// The pipe and its lock file, by name in a handover.
const PIPE_NAME: &str = "pipe";
const LOCK_NAME: &str = "pipe-lock";

/// The path to serve when none is given: the system path for root, the user's runtime
/// directory otherwise.
pub fn default_path() -> Result<PathBuf, FifoError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(SYSTEM_PATH));
    }
    user_path().ok_or(FifoError::NoDefaultPath)
}

fn user_path() -> Option<PathBuf> {
    Some(steve_core::paths::runtime_dir()?.join("steve").join("jobserver"))
}

/// Where fifo servers are found: root's `/run/steve/jobserver` and this user's, each with its
/// `PATH.control` beside it.
pub const PLACES: Places = Places { defaults, control_for };

fn defaults() -> Vec<Place> {
    std::iter::once(PathBuf::from(SYSTEM_PATH))
        .chain(user_path())
        .map(|jobserver| Place { control: control_beside(&jobserver), jobserver })
        .collect()
}

fn control_for(jobserver: &Path) -> Vec<PathBuf> {
    vec![control_beside(jobserver)]
}

/// `steve serve --backend fifo`: makes the pipe and fills it; the event loop serves it.
pub fn start(config: &ServeConfig) -> Result<Box<dyn Server>, steve_core::server::Error> {
    let server = NamedPipeServer::create(config)?;
    if let Recovery::Off(reason) = &server.recovery {
        warn!("leak recovery is off: {reason}");
    }
    Ok(Box::new(server))
}

/// Takes a predecessor's pipe over ([`steve_core::handover`]): the same pipe, with the tokens
/// where they are (in it, or with its clients), its lock, and the pool's books as they were.
///
/// The successor's inotify starts after the predecessor's ends: a client that let the pipe go
/// in between is seen at the next close, when the leak check runs. A predecessor's token taker
/// that was blocked in `read()` while the pool shrank may take a token after the handover, which
/// then goes missing until the pipe is let go and the leak check puts it back.
pub fn resume(
    _config: &ServeConfig,
    state: &serde_json::Value,
    descriptors: &mut steve_core::handover::Descriptors,
) -> Result<Box<dyn Server>, steve_core::server::Error> {
    let bad = |why: String| steve_core::server::Error::usage(format!("handover: {why}"));
    #[derive(serde::Deserialize)]
    struct State {
        path: PathBuf,
        made_dir: Option<PathBuf>,
        pool: Pool,
        recovery_off: Option<String>,
        recovered: u64,
        surplus_taken: u64,
        mode: u32,
        gid: Option<u32>,
        directories: Vec<PathBuf>,
    }
    let state: State = serde_json::from_value(state.clone())
        .map_err(|error| bad(format!("the predecessor's books: {error}")))?;
    let pipe = descriptors.take(PIPE_NAME).map_err(|error| bad(error.to_string()))?;
    let lock = descriptors.take(LOCK_NAME).map_err(|error| bad(error.to_string()))?;
    let made = PipeFile::adopt(&state.path, pipe, lock, state.made_dir)?;
    let gid = state.gid.map(nix::unistd::Gid::from_raw);
    let mut server =
        NamedPipeServer::serving(made, state.pool, state.mode, gid, state.directories)?;
    server.recovery = state.recovery_off.map_or(Recovery::On, Recovery::Off);
    server.recovered = state.recovered;
    server.surplus_taken = state.surplus_taken;
    // What the predecessor's taker still wanted, this one takes.
    server.rebalance();
    Ok(Box::new(server))
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
/// It keeps as many tokens out of its hands as the pool allows: it takes tokens out of the pipe
/// as they come back while over a limit or shrinking (through the [`Taker`] thread, which wins
/// the race for returned tokens against clients that poll), and puts them back when allowed.
struct NamedPipeServer {
    path: PathBuf,
    /// Opened for reading and writing: keeps the pipe alive and lets the daemon count, add and
    /// take out tokens.
    pipe: File,
    pipe_id: FileId,
    inotify: Inotify,
    pool: Pool,
    /// Takes tokens out of the pipe with blocking reads while the daemon wants some.
    taker: Taker,
    recovery: Recovery,
    recovered: u64,
    /// Bytes beyond the pool taken out of the pipe.
    surplus_taken: u64,
    /// The process last seen holding the pipe, checked first next time.
    last_holder: Option<u32>,
    /// When the leak check is due: the pipe was closed since the last one.
    check_at: Option<Instant>,
    /// What it did, for the event trace, while tracing is on: a pipe cannot see grants and
    /// returns, only the pool's changes and its recoveries.
    trace: Option<Vec<(Instant, Record)>>,
    endpoint: Endpoint,
    /// The pipe by its name, with its lock: removed when the server goes.
    _made: PipeFile,
}

impl NamedPipeServer {
    fn create(config: &ServeConfig) -> Result<NamedPipeServer, FifoError> {
        let path = match &config.path {
            Some(path) => absolute(path)?,
            None => default_path()?,
        };
        let is_root = nix::unistd::geteuid().is_root();
        let (mode, gid) = config.access().map_err(FifoError::Config)?;

        let made = PipeFile::create(&path, mode, gid)?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let directories = dir.canonicalize().into_iter().collect();
        let pool = Pool::new(config.jobs);
        let mut server = NamedPipeServer::serving(made, pool, mode, gid, directories)?;
        if !is_root && mode & 0o077 != 0 {
            server.recovery = Recovery::Off(format!(
                "mode {mode:04o} lets other users open the pipe, and a non-root steve cannot see \
                 their processes"
            ));
        }
        if server._made.adopted() {
            // The dead steve's tokens are in the pipe or with its clients: none go in again.
            // Those its clients lose come back once the pipe is let go (leak recovery), and
            // bytes beyond the pool are taken out as they come.
            while server.pool.counts().free > 0 && server.pool.hand_out() {}
        }
        // Every token into the pipe; the event loop applies the limits before announcing it.
        server.rebalance();
        Ok(server)
    }

    /// Serves `made` (given `mode` and group `gid`, in `directories`) with `pool`'s books:
    /// watches the pipe and starts the token taker.
    fn serving(
        made: PipeFile,
        pool: Pool,
        mode: u32,
        gid: Option<nix::unistd::Gid>,
        directories: Vec<PathBuf>,
    ) -> Result<NamedPipeServer, FifoError> {
        let path = made.path().to_path_buf();
        let endpoint = Endpoint {
            path: path.clone(),
            auth: JobserverAuth::Fifo(path.clone()),
            default_control: control_beside(&path),
            mode,
            gid,
            how: HOW.into(),
            directories,
            companion: None,
        };
        let pipe = made.file().try_clone().map_err(FifoError::io("open", &path))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| FifoError::io("watch", &path)(e.into()))?;
        inotify
            .add_watch(
                &path,
                AddWatchFlags::IN_OPEN
                    | AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CLOSE_NOWRITE,
            )
            .map_err(|e| FifoError::io("watch", &path)(e.into()))?;
        let taker =
            Taker::start(&path).map_err(FifoError::io("start the token taker for", &path))?;
        Ok(NamedPipeServer {
            path,
            pipe,
            pipe_id: made.id(),
            inotify,
            pool,
            taker,
            recovery: Recovery::On,
            recovered: 0,
            surplus_taken: 0,
            last_holder: None,
            check_at: None,
            trace: None,
            endpoint,
            _made: made,
        })
    }

    /// Brings the pipe towards what the pool wants: puts free tokens into it, and takes out
    /// what is held beyond the allowance or a shrink, as far as the pipe has them now; the
    /// taker waits for the rest.
    fn rebalance(&mut self) {
        for _ in 0..2 {
            let free = self.pool.counts().free;
            if free > 0 {
                match self.put_tokens(free) {
                    Ok(()) => (0..free).for_each(|_| {
                        self.pool.hand_out();
                    }),
                    Err(error) => warn!("{error}"),
                }
            }
            let excess = self.pool.excess_held();
            if excess == 0 {
                break;
            }
            let mut sink = vec![0u8; excess];
            let taken = match (&self.pipe).read(&mut sink) {
                Ok(taken) => taken,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => {
                    warn!("cannot take tokens out of {}: {error}", self.path.display());
                    0
                }
            };
            if taken == 0 {
                break;
            }
            self.take_back(taken);
        }
        self.taker.want(self.pool.excess_held());
    }

    /// More bytes in the pipe than tokens out of the daemon's hands were never tokens: a client
    /// wrote back more than it took, or wrote to fill the pipe so that others' returns block.
    /// They are taken out at once, so the pipe never holds more than the pool, whoever has it
    /// open.
    fn trim_surplus(&mut self) {
        let in_pipe = bytes_in_pipe(&self.pipe).unwrap_or(0);
        let surplus = in_pipe.saturating_sub(self.pool.counts().held);
        if surplus == 0 {
            return;
        }
        let mut sink = vec![0u8; surplus];
        match (&self.pipe).read(&mut sink) {
            Ok(taken) => {
                self.surplus_taken += taken as u64;
                if self.surplus_taken == taken as u64 {
                    warn!(
                        "took {taken} byte(s) out of {} beyond the pool of {}: a client wrote \
                         back more than it took",
                        self.path.display(),
                        self.pool.counts().size
                    );
                } else {
                    debug!(taken, "took surplus bytes out of the pipe");
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => {
                warn!("cannot take surplus bytes out of {}: {error}", self.path.display())
            }
        }
    }

    /// Tokens taken out of the pipe come back into the pool (retiring what a shrink owes).
    /// Bytes beyond the tokens out were never tokens: a client wrote back more than it took.
    fn take_back(&mut self, taken: usize) {
        let held = self.pool.counts().held;
        if taken > held {
            warn!("took {} byte(s) more than there are tokens out of the pipe", taken - held);
        }
        self.pool.take_back(taken.min(held));
    }

    /// Reads every pending inotify event and says whether the pipe was opened or let go.
    fn drain_events(&mut self) -> Seen {
        let mut seen = Seen::default();
        while let Ok(events) = self.inotify.read_events() {
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_OPEN) {
                    seen.opened = true;
                }
                if event.mask.intersects(AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_Q_OVERFLOW) {
                    seen.written = true;
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
            Ok(Idle::Free(free)) => self.restore(free),
            Ok(Idle::Held) => {}
            // Looked at again after the next delay: a client opening the pipe over and over
            // would otherwise keep the daemon scanning /proc without a pause.
            Ok(Idle::Opened) => self.check_at = Some(Instant::now() + CHECK_DELAY),
            Err(error) => warn!("leak check on {} failed: {error}", self.path.display()),
        }
    }

    /// The number of tokens in the pipe, taken at a moment when no other process held it.
    fn check_idle_pool(&mut self) -> io::Result<Idle> {
        let scan = find_holder(self.pipe_id, std::process::id(), self.last_holder)?;
        if let Some(pid) = scan.holder {
            debug!(pid, "pipe still held; no leak check");
            self.last_holder = Some(pid);
            return Ok(Idle::Held);
        }
        self.last_holder = None;
        let free = bytes_in_pipe(&self.pipe)?;
        // A client that opened the pipe after the scan may already have taken tokens that the
        // count misses: its open event says so.
        if self.drain_events().opened {
            return Ok(Idle::Opened);
        }
        Ok(Idle::Free(free))
    }

    fn restore(&mut self, free: usize) {
        let expected = self.pool.counts().held;
        if free < expected {
            let missing = expected - free;
            match self.put_tokens(missing) {
                Ok(()) => {
                    self.recovered += missing as u64;
                    self.trace(Record::new(Kind::Recovery).tokens(missing));
                    info!(
                        recovered = missing,
                        "recovered {missing} token(s) lost by clients that exited without \
                         returning them; the pool of {} is whole again",
                        self.pool.counts().size
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
            debug!("pipe idle, pool of {} whole", self.pool.counts().size);
        }
    }

    /// Records `record` with the pool's books now, if tracing is on.
    fn trace(&mut self, record: Record) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push((Instant::now(), record.books(self.pool.counts())));
        }
    }

    fn put_tokens(&self, count: usize) -> Result<(), FifoError> {
        (&self.pipe).write_all(&vec![TOKEN; count]).map_err(FifoError::io("fill", &self.path))
    }
}

impl Server for NamedPipeServer {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn sources(&self) -> Vec<(SourceId, BorrowedFd<'_>)> {
        vec![(INOTIFY, self.inotify.as_fd()), (TAKER, self.taker.fd())]
    }

    fn readable(
        &mut self,
        source: SourceId,
        _cx: &mut Context<'_>,
    ) -> Result<Flow, steve_core::server::Error> {
        match source {
            TAKER => {
                let taken = self.taker.collect();
                self.take_back(taken);
                self.rebalance();
            }
            _ => {
                let seen = self.drain_events();
                if seen.written {
                    self.trim_surplus();
                }
                if seen.closed {
                    // One check for the whole burst of closes, CHECK_DELAY after its first.
                    self.check_at.get_or_insert_with(|| Instant::now() + CHECK_DELAY);
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.check_at
    }

    fn deadline(&mut self, cx: &mut Context<'_>) {
        if self.check_at.is_some_and(|at| at <= cx.now()) {
            self.check_at = None;
            self.recover_if_idle();
        }
    }

    fn jobs(&self) -> JobCount {
        JobCount::new(self.pool.target()).expect("the pool's target is a job count")
    }

    fn change(&mut self, change: PoolChange, _cx: &mut Context<'_>) {
        let record = match change {
            PoolChange::Jobs(jobs) => {
                self.pool.set_target(jobs);
                Record::new(Kind::Jobs).tokens(jobs.get())
            }
            PoolChange::Allowance(allowance) => {
                self.pool.set_allowance(allowance);
                Record::new(Kind::Limit).tokens(allowance.unwrap_or(self.pool.counts().size))
            }
            // The loop never sends it: this backend does not take the option.
            PoolChange::PerProcessLimit(_) | PoolChange::Shares(_) => return,
        };
        self.rebalance();
        self.trace(record);
    }

    fn set_tracing(&mut self, on: bool, _now: Instant) {
        self.trace = on.then(Vec::new);
        let start = Record::new(Kind::Start).tokens(self.pool.target());
        self.trace(start);
    }

    fn drain_trace(&mut self, into: &mut Vec<(Instant, Record)>) {
        if let Some(trace) = self.trace.as_mut() {
            into.append(trace);
        }
    }

    fn export(&self) -> Result<Export<'_>, String> {
        let (lock, made_dir) = self._made.handover_parts();
        let endpoint = &self.endpoint;
        let state = serde_json::json!({
            "path": &self.path,
            "made_dir": made_dir,
            "pool": &self.pool,
            "recovery_off": match &self.recovery {
                Recovery::On => None,
                Recovery::Off(reason) => Some(reason),
            },
            "recovered": self.recovered,
            "surplus_taken": self.surplus_taken,
            "mode": endpoint.mode,
            "gid": endpoint.gid.map(|gid| gid.as_raw()),
            "directories": &endpoint.directories,
        });
        let descriptors =
            vec![(PIPE_NAME.to_string(), self.pipe.as_fd()), (LOCK_NAME.to_string(), lock)];
        Ok(Export { state, descriptors })
    }

    fn report(&mut self, _cx: &mut Context<'_>) -> BackendReport {
        let counts = self.pool.counts();
        // Bytes beyond the tokens out are not tokens (the next event trims them).
        let free = bytes_in_pipe(&self.pipe).unwrap_or(0).min(counts.held);
        let holders = find_holders(self.pipe_id, std::process::id())
            .into_iter()
            .map(|pid| HolderReport {
                pid,
                command: command_line(pid),
                tokens: None,
                held_seconds: None,
            })
            .collect();
        BackendReport {
            pool: PoolReport {
                jobs: counts.target,
                size: counts.size,
                free,
                held: counts.held.saturating_sub(free),
                withheld: counts.withheld,
                lent: 0,
            },
            holders_exact: false,
            holders,
            waiters: None,
            builds: None,
            companion: None,
            counters: CounterReport { reclaimed: self.recovered, ..CounterReport::default() },
        }
    }
}

/// What a leak check found.
enum Idle {
    /// Nobody else had the pipe open: this many tokens were in it.
    Free(usize),
    /// Someone has it open.
    Held,
    /// Nobody had it open at the scan, but someone opened it before the count: no count.
    Opened,
}

#[derive(Debug, Default)]
struct Seen {
    opened: bool,
    /// Someone wrote to the pipe (a token back, or more).
    written: bool,
    closed: bool,
}

fn absolute(path: &Path) -> Result<PathBuf, FifoError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(FifoError::io("resolve", path))?;
    Ok(cwd.join(path))
}
