//! The backend registry: every transport crate submits a [`Backend`] descriptor, and the `steve`
//! binary finds them all here without naming them in its code.
//!
//! A backend crate registers itself with `inventory`:
//!
//! ```
//! use steve_core::backend::{Announcement, Availability, Backend, BackendError, ServeConfig, Start};
//!
//! fn serve(config: &ServeConfig, announce: &mut dyn FnMut(&Announcement)) -> Result<(), BackendError> {
//!     Err("not a real backend".into())
//! }
//!
//! inventory::submit! {
//!     Backend {
//!         name: "example",
//!         summary: "a backend that only shows how to register one",
//!         availability: || Availability::Unavailable("it is an example".into()),
//!         start: Start::Server(serve),
//!     }
//! }
//!
//! assert_eq!(steve_core::backend::find("example").unwrap().summary,
//!            "a backend that only shows how to register one");
//! ```
//!
//! The binary must reference each backend crate (`use steve_fifo as _;`), or the linker may
//! drop the crate and its descriptor with it.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// The error a backend reports: its own typed error, boxed so that the registry can carry any.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One transport that can serve the jobserver protocol.
pub struct Backend {
    /// The name given to `--backend` or `--style`.
    pub name: &'static str,
    /// One line saying what it is.
    pub summary: &'static str,
    /// Whether it can work on this machine now, and if not, why.
    pub availability: fn() -> Availability,
    /// How it is started.
    pub start: Start,
}

inventory::collect!(Backend);

/// Starts a server: serves until a stop signal, calling the announce callback once when clients
/// may connect.
pub type ServeFn = fn(&ServeConfig, &mut dyn FnMut(&Announcement)) -> Result<(), BackendError>;

/// Runs one command tree under a private jobserver and returns its exit status.
pub type RunFn = fn(&RunConfig) -> Result<ExitStatus, BackendError>;

/// How a backend is started.
#[derive(Clone, Copy)]
pub enum Start {
    /// Serves a jobserver shared by any process that finds it (`steve serve`), until a stop
    /// signal arrives. `announce` is called once, when clients may connect.
    Server(ServeFn),
    /// Runs one command tree under a private jobserver (`steve run`) and returns its status.
    CommandTree(RunFn),
}

/// Whether a backend can work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It can.
    Available,
    /// It cannot, for this reason.
    Unavailable(String),
}

/// What `steve serve` asks of a server backend. Options a backend has no use for are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The pool size and the scheduling limits.
    pub limits: crate::limits::Limits,
    /// The control socket; `None` for the backend's default (beside the jobserver).
    pub control: Option<PathBuf>,
    /// Where clients find the jobserver; `None` for the backend's default.
    pub path: Option<PathBuf>,
    /// FUSE: the directory to mount on; `None` for the backend's default.
    pub mountpoint: Option<PathBuf>,
    /// Permission bits for the path; `None` for the backend's default.
    pub mode: Option<u32>,
    /// Group to give the path, by name or number.
    pub group: Option<String>,
    /// Device backends: the device's name under /dev; `None` for `steve`.
    pub device_name: Option<String>,
    /// Device backends: the user to become once the device is set up.
    pub user: Option<String>,
    /// Device backends: how long a token reserved for a poller waits to be read.
    pub poll_reservation: Duration,
}

/// How long a poller's reserved token waits for its read, unless told otherwise.
pub const DEFAULT_POLL_RESERVATION: Duration = Duration::from_millis(500);

/// What a server tells once it is ready for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The MAKEFLAGS value clients should be given.
    pub makeflags: String,
    /// The path clients open.
    pub path: PathBuf,
    /// The control socket (`steve status`, `get`, `set`), if the server has one.
    pub control: Option<PathBuf>,
}

/// Which private jobserver `steve run` sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStyle {
    /// An anonymous pipe passed as inherited descriptors (`--jobserver-auth=R,W`); works with
    /// every make since 4.2.
    Pipe,
    /// A private named pipe (`--jobserver-auth=fifo:PATH`); make 4.4 and later.
    Fifo,
}

/// What `steve run` asks of a command-tree backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Job slots for the tree, the command's own implicit one included.
    pub jobs: u32,
    /// Pipe or named pipe.
    pub style: RunStyle,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Every registered backend, in name order.
pub fn backends() -> Vec<&'static Backend> {
    let mut all: Vec<&'static Backend> = inventory::iter::<Backend>.into_iter().collect();
    all.sort_by_key(|backend| backend.name);
    all
}

/// The backend registered under `name`.
pub fn find(name: &str) -> Option<&'static Backend> {
    inventory::iter::<Backend>.into_iter().find(|backend| backend.name == name)
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish_non_exhaustive()
    }
}
