//! The control plane: every server listens on a Unix socket (by default beside its jobserver)
//! for one JSON request per connection and writes one JSON answer. `steve status`, `get`, `set`
//! and `top` are its clients, whatever the backend.
//!
//! - `status` and `get` are open to anyone who can connect (the socket gets the jobserver's mode
//!   and group, so: anyone allowed to use the jobserver);
//! - `set` only to root and the daemon's own user, checked with the peer's credentials
//!   (`SO_PEERCRED`); others get `permission denied`.
//!
//! The server side ([`ControlServer`]) never blocks the backend's poll loop: it accepts and reads
//! without blocking and answers once a whole request line has arrived.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Gid;
use serde::{Deserialize, Serialize};

use crate::status::StatusReport;

/// A request to a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The whole status report.
    Status,
    /// Some values by key (settings, or the status keys).
    Get {
        /// The keys asked for.
        keys: Vec<String>,
    },
    /// Change settings, all or none.
    Set {
        /// `(key, value)` pairs.
        settings: Vec<(String, String)>,
    },
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    /// The status report.
    Status {
        /// The report.
        report: Box<StatusReport>,
    },
    /// Values by key, in the order asked (for `set`, the new values).
    Values {
        /// `(key, value)` pairs.
        values: Vec<(String, String)>,
    },
    /// The request was refused or failed.
    Error {
        /// Why, in one line.
        message: String,
    },
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's user id.
    pub uid: u32,
    /// The peer's process id.
    pub pid: i32,
}

/// What a backend offers the control plane.
pub trait Controlled {
    /// The status now.
    fn status(&mut self) -> StatusReport;
    /// Applies settings (all or none); the error says which and why.
    fn apply(&mut self, settings: &[(String, String)]) -> Result<(), String>;
}

/// Answers `request` from `peer` for `server`, whose daemon runs as `owner_uid`.
pub fn answer(
    server: &mut dyn Controlled,
    request: Request,
    peer: Peer,
    owner_uid: u32,
) -> Response {
    match request {
        Request::Status => Response::Status { report: Box::new(server.status()) },
        Request::Get { keys } => {
            let report = server.status();
            let mut values = Vec::new();
            for key in keys {
                match report.value(&key) {
                    Some(value) => values.push((key, value)),
                    None => return Response::Error { message: format!("unknown key {key:?}") },
                }
            }
            Response::Values { values }
        }
        Request::Set { settings } => {
            if peer.uid != 0 && peer.uid != owner_uid {
                return Response::Error {
                    message: format!(
                        "permission denied: only root or the daemon's user (uid {owner_uid}) may \
                         change settings; you are uid {}",
                        peer.uid
                    ),
                };
            }
            match server.apply(&settings) {
                Ok(()) => {
                    let report = server.status();
                    let values = settings
                        .into_iter()
                        .map(|(key, _)| {
                            let value = report.value(&key).unwrap_or_default();
                            (key, value)
                        })
                        .collect();
                    Response::Values { values }
                }
                Err(message) => Response::Error { message },
            }
        }
    }
}

/// Why a control request failed on the client's side.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlError {
    /// No server socket found.
    NotFound {
        /// Where it was looked for.
        tried: Vec<PathBuf>,
    },
    /// The socket could not be reached.
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The exchange failed half-way.
    Io(io::Error),
    /// The server's answer could not be understood.
    Protocol(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotFound { tried } => {
                let tried: Vec<String> =
                    tried.iter().map(|path| path.display().to_string()).collect();
                write!(
                    f,
                    "no steve control socket found (tried {}); give --control",
                    tried.join(", ")
                )
            }
            ControlError::Connect { path, source } => {
                write!(f, "cannot reach the steve server at {}: {source}", path.display())
            }
            ControlError::Io(source) => write!(f, "talking to the steve server failed: {source}"),
            ControlError::Protocol(what) => {
                write!(f, "unexpected answer from the steve server: {what}")
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// Sends `request` to the server at `socket` and returns its answer.
pub fn ask(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ControlError::Connect { path: socket.to_path_buf(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(ControlError::Io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(ControlError::Io)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(ControlError::Io)?;
    serde_json::from_str(answer.trim_end())
        .map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
}

/// Where the control socket of the jobserver at `jobserver` is by default: beside it
/// (`PATH.control`), or for a device node `/dev/NAME`, `/run/steve/NAME.control` as root and
/// `$XDG_RUNTIME_DIR/steve/NAME.control` otherwise.
pub fn default_socket_for(jobserver: &Path) -> PathBuf {
    if let (Ok(rest), Some(name)) = (jobserver.strip_prefix("/dev"), jobserver.file_name()) {
        if rest.components().count() == 1 {
            let dir = if nix::unistd::geteuid().is_root() {
                PathBuf::from("/run/steve")
            } else {
                std::env::var_os("XDG_RUNTIME_DIR").map_or_else(
                    || PathBuf::from("/run/steve"),
                    |dir| Path::new(&dir).join("steve"),
                )
            };
            return dir.join(format!("{}.control", name.to_string_lossy()));
        }
    }
    let mut path = jobserver.as_os_str().to_owned();
    path.push(".control");
    PathBuf::from(path)
}

/// Finds the control socket a client should talk to: `explicit`, else `$STEVE_CONTROL`, else
/// the one beside the jobserver the environment's MAKEFLAGS names, else the default places.
pub fn find_socket(explicit: Option<&Path>) -> Result<PathBuf, ControlError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("STEVE_CONTROL").filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut tried = Vec::new();
    if let Ok(Some(found)) = crate::makeflags::from_env() {
        if let Some(crate::makeflags::JobserverAuth::Fifo(jobserver)) = found.flags.jobserver() {
            tried.push(default_socket_for(jobserver));
            // A fuse server's file is DIR/jobserver, its socket DIR.control beside the mount.
            if let Some(mountpoint) = jobserver.parent().filter(|dir| dir.parent().is_some()) {
                tried.push(default_socket_for(mountpoint));
            }
        }
    }
    tried.push(PathBuf::from("/run/steve/steve.control"));
    tried.push(PathBuf::from("/run/steve/fuse.control"));
    tried.push(PathBuf::from("/run/steve/jobserver.control"));
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        tried.push(Path::new(&dir).join("steve/jobserver.control"));
        tried.push(Path::new(&dir).join("steve/fuse.control"));
        tried.push(Path::new(&dir).join("steve/steve.control"));
    }
    match tried.iter().find(|path| is_socket(path)) {
        Some(path) => Ok(path.clone()),
        None => Err(ControlError::NotFound { tried }),
    }
}

fn is_socket(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

/// How long a connection may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    buffer: Vec<u8>,
    peer: Peer,
    opened: Instant,
}

/// The listening side, serviced from a backend's poll loop.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    socket_id: (u64, u64),
    connections: Vec<Connection>,
}

impl ControlServer {
    /// Listens on `path`, with `mode` and group `gid`. A stale socket nobody answers on is
    /// replaced; a live one, or anything that is not a socket, is an error.
    pub fn bind(path: &Path, mode: u32, gid: Option<Gid>) -> io::Result<ControlServer> {
        if let Ok(metadata) = fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server answers on {}", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid.as_raw()))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        let metadata = fs::symlink_metadata(path)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            socket_id: (metadata.dev(), metadata.ino()),
            connections: Vec::new(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptors to poll for reading.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.listener.as_fd()];
        fds.extend(self.connections.iter().map(|connection| connection.stream.as_fd()));
        fds
    }

    /// Accepts new connections, reads what has arrived, and answers every complete request
    /// through `handle`. Never blocks on a slow client: one that has not sent a whole request
    /// within a few seconds is dropped.
    pub fn service(&mut self, handle: &mut dyn FnMut(Request, Peer) -> Response) {
        while let Ok((stream, _)) = self.listener.accept() {
            let Ok(credentials) = getsockopt(&stream, PeerCredentials) else { continue };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let peer = Peer { uid: credentials.uid(), pid: credentials.pid() };
            self.connections.push(Connection {
                stream,
                buffer: Vec::new(),
                peer,
                opened: Instant::now(),
            });
        }
        let now = Instant::now();
        self.connections.retain_mut(|connection| {
            let mut chunk = [0u8; 4096];
            let closed = loop {
                match connection.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(count) => connection.buffer.extend_from_slice(&chunk[..count]),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => return false,
                }
                if connection.buffer.len() > 64 * 1024 {
                    return false;
                }
            };
            let complete = connection.buffer.contains(&b'\n') || closed;
            if !complete {
                return now.duration_since(connection.opened) < REQUEST_DEADLINE;
            }
            let line = connection.buffer.split(|byte| *byte == b'\n').next().unwrap_or_default();
            let response = match serde_json::from_slice::<Request>(line) {
                Ok(request) => handle(request, connection.peer),
                Err(error) => Response::Error { message: format!("malformed request: {error}") },
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = connection.stream.set_nonblocking(false);
            let _ = connection.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = connection.stream.write_all(text.as_bytes());
            false
        });
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let still_ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.socket_id);
        if still_ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    struct Fake {
        limits: Limits,
    }

    impl Controlled for Fake {
        fn status(&mut self) -> StatusReport {
            let mut report = crate::status::tests::sample();
            report.limits = self.limits.clone();
            report.pool.jobs = self.limits.jobs;
            report
        }
        fn apply(&mut self, settings: &[(String, String)]) -> Result<(), String> {
            self.limits.apply(settings, 100).map_err(|error| error.to_string())
        }
    }

    fn set(pairs: &[(&str, &str)]) -> Request {
        Request::Set {
            settings: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn set_is_for_root_and_the_owner_only() {
        let mut server = Fake { limits: Limits::new(4) };
        let stranger = Peer { uid: 1000, pid: 1 };
        let refused = answer(&mut server, set(&[("jobs", "2")]), stranger, 500);
        assert!(
            matches!(&refused, Response::Error { message } if message.starts_with("permission denied"))
        );
        assert_eq!(server.limits.jobs, 4);
        let owner = Peer { uid: 500, pid: 1 };
        let done = answer(&mut server, set(&[("jobs", "2")]), owner, 500);
        assert_eq!(done, Response::Values { values: vec![("jobs".into(), "2".into())] });
        let root = Peer { uid: 0, pid: 1 };
        assert!(matches!(
            answer(&mut server, set(&[("jobs", "0")]), root, 500),
            Response::Error { .. }
        ));
        // Anyone may read.
        let get = Request::Get { keys: vec!["jobs".into(), "free".into()] };
        assert_eq!(
            answer(&mut server, get, stranger, 500),
            Response::Values {
                values: vec![("jobs".into(), "2".into()), ("free".into(), "1".into())]
            }
        );
    }

    #[test]
    fn a_request_over_the_socket_is_answered_without_blocking_the_server() {
        let dir = tempfile_dir();
        let path = dir.join("test.control");
        let mut server = ControlServer::bind(&path, 0o600, None).unwrap();
        let mut fake = Fake { limits: Limits::new(3) };
        let me = nix::unistd::geteuid().as_raw();
        // A silent client must not stall anyone.
        let _silent = UnixStream::connect(&path).unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || ask(&path, &Request::Get { keys: vec!["jobs".into()] }).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.is_finished() {
            server.service(&mut |request, peer| {
                assert_eq!(peer.uid, me);
                answer(&mut fake, request, peer, me)
            });
            assert!(Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            client.join().unwrap(),
            Response::Values { values: vec![("jobs".into(), "3".into())] }
        );
        // A second server on the same path is refused while the first answers.
        assert!(ControlServer::bind(&path, 0o600, None).is_err());
        drop(server);
        assert!(!path.exists(), "the socket is removed with its server");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn the_default_socket_sits_beside_the_jobserver() {
        assert_eq!(
            default_socket_for(Path::new("/tmp/x/jobserver")),
            PathBuf::from("/tmp/x/jobserver.control")
        );
        let device = default_socket_for(Path::new("/dev/steve"));
        assert_eq!(device.file_name().unwrap(), "steve.control");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("steve-control-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
