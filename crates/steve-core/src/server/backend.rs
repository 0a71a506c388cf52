//! The backend contract: what a transport crate implements to serve the jobserver protocol, and
//! the registry through which the `steve` binary finds it without naming it.
//!
//! A backend crate provides two things:
//!
//! - a type implementing [`Server`]: the descriptors it wants watched, what it does when they
//!   are ready, its next deadline, how it changes its pool and what it reports;
//! - one [`Backend`] descriptor, submitted with `inventory`, that says everything the CLI would
//!   otherwise hard-code: its name, its place in `--backend auto`'s order, the options it takes
//!   beyond the common ones, where it serves by default, and how it starts.
//!
//! ```
//! use steve_core::server::backend::{Availability, Backend, Places, ServeConfig, Start};
//! use steve_core::server::{Error, Server};
//!
//! fn start(_config: &ServeConfig) -> Result<Box<dyn Server>, Error> {
//!     Err(Error::unavailable("it is only an example"))
//! }
//!
//! inventory::submit! {
//!     Backend {
//!         name: "example",
//!         summary: "a backend that only shows how to register one",
//!         auto_priority: None,
//!         options: &[],
//!         availability: || Availability::Unavailable("it is an example".into()),
//!         places: Places::NONE,
//!         start: Start::Server(start),
//!         resume: None,
//!     }
//! }
//!
//! let example = steve_core::server::backend::find("example").unwrap();
//! assert_eq!(example.summary, "a backend that only shows how to register one");
//! ```
//!
//! The binary must reference each backend crate (`use steve_fifo as _;`), or the linker may
//! drop the crate and its descriptor with it. The event loop that drives a [`Server`] is
//! [`super::serve`].

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::unistd::Gid;

use super::holder_book::HolderBook;
use super::metrics_listener::MetricsAddress;
use super::probe::PressureSource;
use super::processes::Processes;
use super::trace_log::TraceConfig;
use super::Error;
use crate::accounting::limits::Limits;
use crate::accounting::pool::JobCount;
use crate::accounting::shares::Shares;
use crate::client::Style;
use crate::makeflags::JobserverAuth;
use crate::status::BackendReport;
use crate::trace::Record;

/// The registry descriptor of one backend.
pub struct Backend {
    /// The name given to `--backend`.
    pub name: &'static str,
    /// One line saying what it is.
    pub summary: &'static str,
    /// Its place in `--backend auto`'s order: lower is tried first; `None` is never chosen.
    pub auto_priority: Option<u8>,
    /// The options it takes besides the ones every server takes (see [`ServeOption`]).
    pub options: &'static [ServeOption],
    /// Whether it can work on this machine now, and if not, why.
    pub availability: fn() -> Availability,
    /// Where its jobserver and control socket are when no option says otherwise.
    pub places: Places,
    /// How it is started.
    pub start: Start,
    /// How a successor takes its server over ([`crate::handover`]): from the state and the
    /// descriptors its [`Server::export`] gave. `None`: it cannot be handed over.
    pub resume: Option<Resume>,
}

/// Builds a server from a predecessor's part of a handover: its state (as its
/// [`Server::export`] wrote it) and its descriptors, by name.
pub type Resume = fn(
    &ServeConfig,
    &serde_json::Value,
    &mut crate::handover::Descriptors,
) -> Result<Box<dyn Server>, Error>;

/// A server's part of a handover: its state, and the descriptors the state needs, by name.
#[derive(Debug)]
pub struct Export<'a> {
    /// What its backend's [`Resume`] reads back.
    pub state: serde_json::Value,
    /// The descriptors to pass, each under a name of the server's choice.
    pub descriptors: Vec<(String, BorrowedFd<'a>)>,
}

inventory::collect!(Backend);

/// How a backend is started.
#[derive(Clone, Copy)]
pub enum Start {
    /// Sets up a server shared by any process that finds it (`steve serve`); the event loop
    /// then runs it until a stop signal.
    Server(fn(&ServeConfig) -> Result<Box<dyn Server>, Error>),
    /// Runs one command tree under a private jobserver (`steve run`) and returns its status.
    CommandTree(fn(&RunConfig) -> Result<ExitStatus, Error>),
}

/// Whether a backend can work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It can.
    Available,
    /// It cannot, for this reason.
    Unavailable(String),
}

/// Where a backend's server is found by default, for clients that are told nothing
/// (`steve exec`, `steve status`).
#[derive(Clone, Copy)]
pub struct Places {
    /// The jobserver paths and control sockets of this user's and root's default servers.
    pub defaults: fn() -> Vec<Place>,
    /// Where the control socket of a server of this backend serving `jobserver` is by default;
    /// empty if the path cannot be one of its.
    pub control_for: fn(&Path) -> Vec<PathBuf>,
}

impl Places {
    /// No default places (a command-tree backend, or an example).
    pub const NONE: Places = Places { defaults: Vec::new, control_for: |_| Vec::new() };
}

/// One default place of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The path clients open.
    pub jobserver: PathBuf,
    /// Its control socket.
    pub control: PathBuf,
}

/// The options of `steve serve` that only some backends take. Every server takes the rest:
/// `--jobs`, `--mode`, `--group`, `--control`, and the load and memory limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServeOption {
    /// `--path`: where the jobserver is made.
    Path,
    /// `--mountpoint`: the directory a filesystem is mounted on.
    Mountpoint,
    /// `--dev-name`: the name of a device under /dev.
    DevName,
    /// `--user`: the user to become once set up.
    User,
    /// `--poll-reservation-ms`: how long a poller's reserved token waits.
    PollReservation,
    /// `--per-process-limit` (also `steve set per-process-limit=`): needs per-process accounting.
    PerProcessLimit,
    /// `--fifo` and `--no-fifo`: a companion FIFO fed from a device's pool.
    Fifo,
    /// `--fairness`, `--weights`, `--user-caps` (and `steve set`): fair shares need to know who
    /// holds each token. Every backend takes `--fairness fifo`.
    Fairness,
    /// `--threads`: threads serving a FUSE or CUSE connection (on FUSE each on a clone of it).
    Threads,
    /// `--io-uring`: a FUSE connection served through io_uring.
    IoUring,
}

impl ServeOption {
    /// The option as it is typed.
    pub fn flag(self) -> &'static str {
        match self {
            ServeOption::Path => "--path",
            ServeOption::Mountpoint => "--mountpoint",
            ServeOption::DevName => "--dev-name",
            ServeOption::User => "--user",
            ServeOption::PollReservation => "--poll-reservation-ms",
            ServeOption::PerProcessLimit => "--per-process-limit",
            ServeOption::Fifo => "--fifo",
            ServeOption::Fairness => "--fairness",
            ServeOption::Threads => "--threads",
            ServeOption::IoUring => "--io-uring",
        }
    }

    /// What a backend must be to take it, for the line that refuses it.
    pub fn needs(self) -> &'static str {
        match self {
            ServeOption::Path => "it places a named pipe",
            ServeOption::Mountpoint => "it places a FUSE mount",
            ServeOption::DevName => "it names a CUSE device",
            ServeOption::User => {
                "only a cuse server becomes another user; start the others as that user"
            }
            ServeOption::PollReservation => "it needs a backend that accounts per process",
            ServeOption::PerProcessLimit => "it needs a backend that accounts per process",
            ServeOption::Fifo => {
                "it feeds a companion FIFO from a device's pool (a fifo server is one)"
            }
            ServeOption::Fairness => {
                "it needs a backend that accounts per process (a pipe serves its readers in the \
                 order the kernel wakes them)"
            }
            ServeOption::Threads => {
                "it serves a kernel connection (a pipe's readers and writers need no server)"
            }
            ServeOption::IoUring => {
                "it serves a FUSE mount (the kernel serves only FUSE, not CUSE, through io_uring)"
            }
        }
    }
}

/// `--io-uring`: whether a FUSE connection is served through io_uring (Linux 6.14 and later,
/// with the fuse module's `enable_uring` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUringChoice {
    /// Where the kernel offers it; `/dev/fuse` reads and writes otherwise.
    Auto,
    /// Always: the server does not start where the kernel does not offer it.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for IoUringChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<IoUringChoice, String> {
        match text {
            "auto" => Ok(IoUringChoice::Auto),
            "on" => Ok(IoUringChoice::On),
            "off" => Ok(IoUringChoice::Off),
            other => Err(format!("expected auto, on or off, not {other:?}")),
        }
    }
}

/// How long a poller's reserved token waits for its read, unless told otherwise.
pub const DEFAULT_POLL_RESERVATION: Duration = Duration::from_millis(500);

/// What `steve serve` asks of a server backend. The options only some backends take are
/// `None` unless given; [`super::serve`] refuses any the chosen backend does not take before
/// it starts, so a backend may treat them as absent.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The pool size.
    pub jobs: JobCount,
    /// Where `jobs` came from, as status reports say it: `-j`, or the CPUs the server may use
    /// and why (see [`crate::cgroup::cpu_budget`]).
    pub jobs_from: String,
    /// The scheduling limits.
    pub limits: Limits,
    /// Where the pressure limits read pressure: the system, or a cgroup.
    pub pressure_source: PressureSource,
    /// The control socket; `None` for the backend's default.
    pub control: Option<PathBuf>,
    /// Permission bits of the jobserver (and the control socket); `None` for the backend's
    /// default.
    pub mode: Option<u32>,
    /// Group to give the jobserver and the control socket, by name or number.
    pub group: Option<String>,
    /// [`ServeOption::Path`].
    pub path: Option<PathBuf>,
    /// [`ServeOption::Mountpoint`].
    pub mountpoint: Option<PathBuf>,
    /// [`ServeOption::DevName`].
    pub dev_name: Option<String>,
    /// [`ServeOption::User`].
    pub user: Option<String>,
    /// [`ServeOption::PollReservation`].
    pub poll_reservation: Option<Duration>,
    /// [`ServeOption::Threads`]: how many threads serve the kernel connection.
    pub threads: Option<usize>,
    /// [`ServeOption::IoUring`].
    pub io_uring: Option<IoUringChoice>,
    /// [`ServeOption::Fifo`]: a companion FIFO at this path, or none; `None` leaves it to the
    /// backend's default (on for root's machine-wide server).
    pub fifo: Option<FifoChoice>,
    /// The event trace: the ring's size, and a file to write it to.
    pub trace: TraceConfig,
    /// Where to serve metrics over HTTP (`--metrics-listen`); none by default.
    pub metrics: Vec<MetricsAddress>,
    /// Take the running server over instead of starting one (`--takeover`,
    /// [`crate::handover`]).
    pub takeover: bool,
    /// Under a service manager, leave the server in its file-descriptor store for a restart,
    /// and take it from there at start (`--fd-store`, [`super::fd_store`]).
    pub fd_store: bool,
}

/// `--fifo PATH` or `--no-fifo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FifoChoice {
    /// A companion FIFO at this path.
    At(PathBuf),
    /// No companion FIFO.
    Off,
}

/// The group root's servers give their jobserver when it exists and no `--group` is given.
pub const JOBSERVER_GROUP: &str = "jobserver";

impl ServeConfig {
    /// `jobs` tokens, no limits, every option left to the backend.
    pub fn new(jobs: JobCount) -> ServeConfig {
        ServeConfig {
            jobs,
            jobs_from: "-j".to_string(),
            limits: Limits::default(),
            pressure_source: PressureSource::System,
            control: None,
            mode: None,
            group: None,
            path: None,
            mountpoint: None,
            dev_name: None,
            user: None,
            poll_reservation: None,
            threads: None,
            io_uring: None,
            fifo: None,
            trace: TraceConfig::default(),
            metrics: Vec::new(),
            takeover: false,
            fd_store: false,
        }
    }

    /// The options only some backends take that were given.
    pub fn given_options(&self) -> Vec<ServeOption> {
        [
            (self.path.is_some(), ServeOption::Path),
            (self.mountpoint.is_some(), ServeOption::Mountpoint),
            (self.dev_name.is_some(), ServeOption::DevName),
            (self.user.is_some(), ServeOption::User),
            (self.poll_reservation.is_some(), ServeOption::PollReservation),
            (self.threads.is_some(), ServeOption::Threads),
            (self.io_uring.is_some(), ServeOption::IoUring),
            (self.limits.per_process_limit.is_some(), ServeOption::PerProcessLimit),
            (self.fifo.is_some(), ServeOption::Fifo),
            (self.limits.shares.needs_accounting(), ServeOption::Fairness),
        ]
        .into_iter()
        .filter_map(|(given, option)| given.then_some(option))
        .collect()
    }

    /// The group `--group` names, looked up.
    pub fn gid(&self) -> Result<Option<Gid>, Error> {
        self.group
            .as_deref()
            .map(|name| {
                super::accounts::group_id(name)
                    .ok_or_else(|| Error::usage(format!("no such group: {name}")))
            })
            .transpose()
    }

    /// The jobserver's mode and group: what `--mode` and `--group` say, and otherwise, for
    /// root's machine-wide server, 0660 and group [`JOBSERVER_GROUP`] when that group exists,
    /// or 0666 when it does not ([`super::serve`] then warns, naming the risk and the fix); for
    /// anyone else's server (their own builds) 0600, or 0660 with a group given.
    pub fn access(&self) -> Result<(u32, Option<Gid>), Error> {
        let given_gid = self.gid()?;
        let root = nix::unistd::geteuid().is_root();
        let gid = match given_gid {
            Some(gid) => Some(gid),
            None if root && self.mode.is_none() => super::accounts::group_id(JOBSERVER_GROUP),
            None => None,
        };
        let mode = self.mode.unwrap_or(match (root, gid) {
            (_, Some(_)) => 0o660,
            (true, None) => 0o666,
            (false, None) => 0o600,
        });
        Ok((mode, gid))
    }

    /// Where the companion FIFO goes: `--fifo PATH` (made absolute), none with `--no-fifo`,
    /// else `default` for root's machine-wide server (one that stays root: a `--user` server
    /// gets one only when asked) and none for anyone else's.
    pub fn companion_path(&self, default: impl FnOnce() -> PathBuf) -> Option<PathBuf> {
        match &self.fifo {
            Some(FifoChoice::At(path)) => Some(std::path::absolute(path).unwrap_or(path.clone())),
            Some(FifoChoice::Off) => None,
            None => (nix::unistd::geteuid().is_root() && self.user.is_none()).then(default),
        }
    }

    /// How long a poller's reserved token waits.
    pub fn poll_reservation(&self) -> Duration {
        self.poll_reservation.unwrap_or(DEFAULT_POLL_RESERVATION)
    }
}

/// What `steve run` asks of a command-tree backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Job slots for the tree, the command's own implicit one included.
    pub jobs: JobCount,
    /// Where `jobs` came from, as for [`ServeConfig::jobs_from`].
    pub jobs_from: String,
    /// Pipe or named pipe.
    pub style: Style,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Where a running server is found, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The path clients open.
    pub path: PathBuf,
    /// How MAKEFLAGS names it.
    pub auth: JobserverAuth,
    /// The control socket when `--control` does not say: beside the jobserver.
    pub default_control: PathBuf,
    /// The jobserver's permission bits, which the control socket gets too.
    pub mode: u32,
    /// The jobserver's group, which the control socket gets too.
    pub gid: Option<Gid>,
    /// How it serves, for the log line that says it is ready ("per-process accounting").
    pub how: String,
    /// A companion FIFO fed from the same pool, for the clients that take only a FIFO.
    pub companion: Option<PathBuf>,
    /// The directories (absolute, without links) the server made names in, which
    /// [`super::serve`] warns about when others may change them.
    pub directories: Vec<PathBuf>,
}

/// One of a backend's own descriptors, by a number the backend chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(pub u32);

/// What a serving thread of its own serves ([`Server::threaded_sources`]).
#[derive(Debug)]
pub enum ThreadedSource {
    /// A descriptor the thread reads with blocking reads, each one whole message (a device's
    /// request), `0` or `ENODEV` when the transport ended; an answer is written back on it.
    Reads {
        /// Which source its messages are to [`Server::message`].
        id: SourceId,
        /// A descriptor of its own, in blocking mode: the thread sleeps in its reads.
        fd: OwnedFd,
        /// The buffer a read needs for the largest message.
        message_len: usize,
    },
    /// A queue that waits and answers its own way (a FUSE connection's io_uring queue).
    Queue(Box<dyn MessageQueue>),
}

/// A threaded source that is not a descriptor to read: its thread sleeps in
/// [`MessageQueue::next`], hands each message to [`Server::message`] under the one lock, and
/// gives the answer back with [`MessageQueue::answer`] once the lock is let go.
pub trait MessageQueue: Send + std::fmt::Debug {
    /// Sends the answers given since the last call, then gives the next message and the
    /// source it is from (the server's name for where its answer goes), sleeping until one
    /// comes.
    fn next(&mut self) -> Result<Next<'_>, Error>;

    /// Answers the message [`MessageQueue::next`] gave last (sent with the next call).
    fn answer(&mut self, answer: &[u8]);
}

/// What a [`MessageQueue`] woke with.
#[derive(Debug)]
pub enum Next<'a> {
    /// A message, from the source named.
    Message(SourceId, &'a [u8]),
    /// A signal interrupted the wait: the thread looks whether the loop wants it still.
    Interrupted,
    /// The transport ended, for the reason given.
    Ended(String),
}

/// What a server did with a threaded source's message ([`Server::message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Whether it goes on.
    pub flow: Flow,
    /// The answer for the thread to write back on the source, after the lock: what it tells
    /// is in the books already.
    pub answer: Option<super::Answer>,
}

/// Whether the server goes on after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Keep serving.
    Continue,
    /// The transport is gone (the kernel closed the connection): stop, saying why.
    Ended(String),
}

/// A change to a server's pool: the loop applies settings and limits through these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChange {
    /// A new pool size (`steve set jobs=`).
    Jobs(JobCount),
    /// How many tokens may be out in total now (the load and memory limits); `None`: all.
    Allowance(Option<usize>),
    /// How many tokens one process may hold; `None`: no cap. Only sent to a backend whose
    /// descriptor takes [`ServeOption::PerProcessLimit`].
    PerProcessLimit(Option<usize>),
    /// Who a free token goes to. Only sent to a backend whose descriptor takes
    /// [`ServeOption::Fairness`].
    Shares(Shares),
}

/// What the event loop lends a server while it handles an event: the client processes it
/// watches (a pidfd each, in the loop's epoll), the crash books and the time.
pub struct Context<'a> {
    pub(super) processes: &'a mut Processes,
    pub(super) book: Option<&'a mut HolderBook>,
    pub(super) now: Instant,
}

impl Context<'_> {
    /// The time the event was taken up.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Writes into the crash books ([`super::holder_book`]) that `pid` holds `tokens` now. A
    /// server that counts holders calls it before it sends the answer that makes the count
    /// true (a token handed out, a token taken back), so that whenever it is killed the books
    /// say no more than its clients were told: a client that wrote its tokens back is never
    /// counted as holding them by the server after. What a server does not book here the loop
    /// books at the end of the turn ([`Server::take_holding_changes`]).
    pub fn book_holding(&mut self, pid: u32, tokens: usize) {
        let Some(book) = self.book.as_deref_mut() else { return };
        // A holder the loop does not watch (a companion FIFO's stand-in) has no start time.
        match self.processes.started(pid) {
            Some(started) => book.record(pid, started, tokens),
            None => book.record(pid, 0, 0),
        }
    }

    /// The client processes; a process watched here is reported to [`Server::process_exited`]
    /// once when it exits.
    pub fn processes(&mut self) -> &mut Processes {
        self.processes
    }
}

/// A running server, driven by the one event loop ([`super::serve`]).
///
/// Every method runs on the loop's thread and must not block: the loop calls
/// [`Server::readable`] only when a descriptor is ready, and the server answers what it can
/// now and keeps the rest for later events.
pub trait Server: Send {
    /// Where clients find it.
    fn endpoint(&self) -> &Endpoint;

    /// Its own descriptors, watched for reading from the start until it stops.
    fn sources(&self) -> Vec<(SourceId, BorrowedFd<'_>)>;

    /// `source` is readable (or has hung up).
    fn readable(&mut self, source: SourceId, cx: &mut Context<'_>) -> Result<Flow, Error>;

    /// Sources each served by a thread of its own instead of the loop's epoll (a FUSE
    /// connection's cloned channels, or its io_uring queues): the thread waits for one message
    /// at a time outside the lock (a blocking read of its descriptor, or the queue's own wait),
    /// then hands it to [`Server::message`] under the one lock over the loop and the server.
    /// Called once, as the loop starts: a queue moves to its thread. None by default: the
    /// loop's thread serves everything.
    fn threaded_sources(&mut self) -> Result<Vec<ThreadedSource>, Error> {
        Ok(Vec::new())
    }

    /// A serving thread read `message` from threaded source `source` ([`Server::threaded_sources`]).
    /// The answer to it, if the server leaves it to the thread, is written on the source once
    /// the lock is let go, so that the next message need not wait for that write.
    fn message(
        &mut self,
        source: SourceId,
        message: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<Handled, Error> {
        let _ = (source, message, cx);
        Err(Error::usage("this server has no threaded sources"))
    }

    /// Writes `answer`, left by [`Server::message`], on `source` itself: for a message the
    /// loop's thread handled, which has no reader's descriptor.
    fn answer(&mut self, source: SourceId, answer: &[u8]) {
        let _ = (source, answer);
    }

    /// A process watched through [`Context::processes`] exited: reclaim what it held. The loop
    /// forgets it afterwards.
    fn process_exited(&mut self, pid: u32, cx: &mut Context<'_>) {
        let _ = (pid, cx);
    }

    /// When it next wants [`Server::deadline`] called, if ever.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Its deadline passed.
    fn deadline(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The configured pool size: the pool's own target, the one source of truth for `jobs`.
    fn jobs(&self) -> JobCount;

    /// Changes the pool (settings and limits go through here).
    fn change(&mut self, change: PoolChange, cx: &mut Context<'_>);

    /// Its part of the status report.
    fn report(&mut self, cx: &mut Context<'_>) -> BackendReport;

    /// Starts (or stops) recording events for the trace: once, before the loop runs, if the
    /// server keeps a trace. Starting records a [`Kind::Start`](crate::trace::Kind::Start)
    /// with the pool's books at `now`.
    fn set_tracing(&mut self, on: bool, now: Instant) {
        let _ = (on, now);
    }

    /// Moves the events recorded since the last call onto the end of `into`, oldest first,
    /// each with when it happened (the server keeps its buffer's room: this runs after every
    /// request).
    fn drain_trace(&mut self, into: &mut Vec<(Instant, Record)>) {
        let _ = into;
    }

    /// Whether it keeps books per client process, which the loop then records in the crash
    /// books ([`super::holder_book`]) for a server started after it dies.
    fn counts_holders(&self) -> bool {
        false
    }

    /// Each process whose count of held tokens changed since the last call, with the count
    /// now (0 once it holds none or is gone).
    fn take_holding_changes(&mut self) -> Vec<(u32, usize)> {
        Vec::new()
    }

    /// Books `tokens` tokens as held by `pid`, which took them from a server that died and is
    /// still running (watched through [`Context::processes`] already): counted until it exits
    /// or writes them back. Returns how many could be booked (no more than are free).
    fn adopt_survivor(&mut self, pid: u32, tokens: usize, cx: &mut Context<'_>) -> usize {
        let _ = (pid, tokens, cx);
        0
    }

    /// Its state and descriptors for a successor ([`crate::handover`]), between two turns of
    /// the loop; or why it cannot be handed over, in which case it goes on serving. Nothing is
    /// changed: if the successor fails, this server carries on.
    fn export(&self) -> Result<Export<'_>, String> {
        Err("this server cannot be handed over".to_string())
    }
}

/// Every registered backend, in name order.
pub fn backends() -> Vec<&'static Backend> {
    let mut all: Vec<&'static Backend> = inventory::iter::<Backend>.into_iter().collect();
    all.sort_by_key(|backend| backend.name);
    all
}

/// The server backends `--backend auto` tries, in its order.
pub fn auto_order() -> Vec<&'static Backend> {
    let mut ordered: Vec<&'static Backend> =
        backends().into_iter().filter(|backend| backend.auto_priority.is_some()).collect();
    ordered.sort_by_key(|backend| backend.auto_priority);
    ordered
}

/// Every default place of every backend, in `--backend auto`'s order: where the machine's (or
/// this user's) server is when nothing says otherwise.
pub fn default_places() -> Vec<Place> {
    auto_order().into_iter().flat_map(|backend| (backend.places.defaults)()).collect()
}

/// The backend registered under `name`.
pub fn find(name: &str) -> Option<&'static Backend> {
    inventory::iter::<Backend>.into_iter().find(|backend| backend.name == name)
}

/// The backend that runs command trees (`steve run`).
pub fn command_tree() -> Option<&'static Backend> {
    backends().into_iter().find(|backend| matches!(backend.start, Start::CommandTree(_)))
}

impl Backend {
    /// Whether it takes `option`.
    pub fn takes(&self, option: ServeOption) -> bool {
        self.options.contains(&option)
    }

    /// Refuses the first option in `config` this backend does not take, in one line naming
    /// both.
    pub fn check_options(&self, config: &ServeConfig) -> Result<(), Error> {
        match config.given_options().into_iter().find(|option| !self.takes(*option)) {
            None => Ok(()),
            Some(option) => Err(Error::usage(self.refusal(option))),
        }
    }

    /// The line that refuses `option`.
    pub fn refusal(&self, option: ServeOption) -> String {
        let own: Vec<&str> = self.options.iter().map(|option| option.flag()).collect();
        let own = if own.is_empty() { "none".to_string() } else { own.join(", ") };
        format!(
            "{} does not apply to backend {}: {} (its own options: {own})",
            option.flag(),
            self.name,
            option.needs()
        )
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish_non_exhaustive()
    }
}
