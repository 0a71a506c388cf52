//! The control plane: every server listens on a Unix socket (by default beside its jobserver)
//! for one JSON request per connection and writes one JSON answer. `steve status`, `get`, `set`
//! and `top` are its clients, whatever the backend.
//!
//! - `status` and `get` are open to anyone who can connect (the socket gets the jobserver's mode
//!   and group, so: anyone allowed to use the jobserver);
//! - `set` only to root and the daemon's own user, checked with the peer's credentials
//!   (`SO_PEERCRED`); others get `permission denied`.
//!
//! The server side ([`ControlServer`]) never blocks the event loop: it accepts, reads and writes
//! without blocking, each connection's descriptor in the loop's epoll; an answer that does not fit
//! in the socket at once is kept and written as the client reads it. A connection that has not
//! sent its request, or not taken its answer, within a few seconds is dropped. The answers
//! themselves are made by the event loop (`event_loop.rs`), which holds the server's state.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Gid;
use serde::{Deserialize, Serialize};

use super::connection_io::{read_available, write_available, Filled};
use super::trace_log::Clocks;
use super::unix_socket::OwnedSocket;
use crate::status::StatusReport;
use crate::trace::TraceEvent;

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
    /// Hand the server over to the asking process (`steve serve --takeover`): the answer is
    /// not a [`Response`] but the handover itself ([`crate::handover`]).
    Handover,
    /// A page of the event trace: from sequence number `from` on, or the events stamped at or
    /// after `since_mono_ns`.
    Trace {
        /// The first sequence number wanted (0: the oldest kept).
        #[serde(default)]
        from: Option<u64>,
        /// The earliest time wanted, in `CLOCK_MONOTONIC` nanoseconds (instead of `from`).
        #[serde(default)]
        since_mono_ns: Option<u64>,
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
    /// A page of the event trace.
    Trace {
        /// The events, oldest first.
        events: Vec<TraceEvent>,
        /// The sequence number to ask from next.
        next: u64,
        /// Events asked for that the ring no longer has.
        lost: u64,
        /// How many events the server keeps (0: it keeps no trace).
        capacity: usize,
        /// When this server's trace started, in `CLOCK_MONOTONIC` nanoseconds: a reader that
        /// sees it change knows the server was restarted and its numbering began again.
        started_mono_ns: u64,
        /// The server's clocks as it answered, to put the events on the wall clock.
        clocks: Clocks,
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

/// Who is at the other end of `stream`, by the kernel's word (`SO_PEERCRED`).
pub fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let credentials = getsockopt(stream, PeerCredentials).ok()?;
    Some(Peer { uid: credentials.uid(), pid: credentials.pid() })
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
                    "no steve server is running here (no control socket at {}): start one with \
                     `steve serve` (or `systemctl start steve`), or name its socket with \
                     --control or STEVE_CONTROL",
                    tried.join(", ")
                )
            }
            ControlError::Connect { path, .. } => {
                write!(f, "cannot reach the steve server at {}", path.display())
            }
            ControlError::Io(_) => f.write_str("talking to the steve server failed"),
            ControlError::Protocol(what) => {
                write!(f, "unexpected answer from the steve server: {what}")
            }
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Connect { source, .. } | ControlError::Io(source) => Some(source),
            ControlError::NotFound { .. } | ControlError::Protocol(_) => None,
        }
    }
}

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

/// Whether `peer` may change settings of a server run by `owner_uid`: root and the owner only.
pub fn may_change(peer: Peer, owner_uid: u32) -> Result<(), String> {
    if peer.uid == 0 || peer.uid == owner_uid {
        Ok(())
    } else {
        Err(format!(
            "permission denied: only root or the daemon's user (uid {owner_uid}) may change \
             settings; you are uid {}",
            peer.uid
        ))
    }
}

/// Finds the control socket a client should talk to: `explicit`, else `$STEVE_CONTROL`, else
/// the one the server of the jobserver the environment's MAKEFLAGS names would have, else the
/// default places of every backend (in `--backend auto`'s order).
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
            tried.extend(
                super::backend::auto_order()
                    .into_iter()
                    .flat_map(|backend| (backend.places.control_for)(jobserver)),
            );
        }
    }
    tried.extend(super::backend::default_places().into_iter().map(|place| place.control));
    let mut seen = std::collections::HashSet::new();
    tried.retain(|path| seen.insert(path.clone()));
    match tried.iter().find(|path| is_socket(path)) {
        Some(path) => Ok(path.clone()),
        None => Err(ControlError::NotFound { tried }),
    }
}

fn is_socket(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}

/// How long a connection may take to send its request, and to take its answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections one user may have open at once: one user cannot use up the server's
/// descriptors (root is held to it too).
pub const MAX_CONNECTIONS_PER_USER: usize = 16;
/// The longest request line a server reads.
const MAX_REQUEST: usize = 64 * 1024;

/// One control connection's number, for the event loop's epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u32);

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    peer: Peer,
    /// The request read so far; then the answer, with how much of it is written.
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// When it is dropped if it has not sent its request (or taken its answer) by then.
    deadline: Instant,
}

/// What a connection did when it became readable.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing complete yet.
    Pending,
    /// A whole request (or a malformed one, with why), from `peer`.
    Request(Result<Request, String>, Peer),
    /// The connection went away, or broke a rule (too long); it is closed.
    Closed,
}

/// What [`ControlServer::accept`] did.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The new connections, to watch for reading.
    pub connections: Vec<ConnectionId>,
    /// Connections refused because their user had [`MAX_CONNECTIONS_PER_USER`] open, by uid.
    pub refused: Vec<u32>,
    /// The process is out of descriptors (`EMFILE`, `ENFILE`): clients are still waiting, and
    /// accepting again at once would fail again.
    pub out_of_descriptors: bool,
}

/// Whether an answer has been written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// All of it: the connection is closed.
    Done,
    /// Part of it: wait until the socket is writable and call [`ControlServer::write`].
    Pending,
}

/// The listening side. The event loop watches [`ControlServer::listener`] and each connection's
/// descriptor, and calls in when they are ready.
#[derive(Debug)]
pub struct ControlServer {
    socket: OwnedSocket,
    connections: HashMap<ConnectionId, Connection>,
    next_id: u32,
}

impl ControlServer {
    /// Listens on `path`, with `mode` and group `gid`. A stale socket nobody answers on is
    /// replaced; a live one, or anything that is not a socket, is an error.
    pub fn bind(path: &Path, mode: u32, gid: Option<Gid>) -> io::Result<ControlServer> {
        Ok(ControlServer {
            socket: OwnedSocket::bind(path, mode, gid)?,
            connections: HashMap::new(),
            next_id: 0,
        })
    }

    /// Serves the control socket a predecessor bound at `path`, from its listening descriptor.
    pub fn adopt(listener: std::os::fd::OwnedFd, path: &Path) -> io::Result<ControlServer> {
        Ok(ControlServer {
            socket: OwnedSocket::adopt(listener, path)?,
            connections: HashMap::new(),
            next_id: 0,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Takes connection `id` out of the server, to talk on it directly (a handover).
    pub fn take_stream(&mut self, id: ConnectionId) -> Option<UnixStream> {
        self.connections.remove(&id).map(|connection| connection.stream)
    }

    /// The listening descriptor: readable when a client connects.
    pub fn listener(&self) -> BorrowedFd<'_> {
        self.socket.listener().as_fd()
    }

    /// A connection's descriptor.
    pub fn connection(&self, id: ConnectionId) -> Option<BorrowedFd<'_>> {
        self.connections.get(&id).map(|connection| connection.stream.as_fd())
    }

    /// Accepts the clients waiting, up to [`MAX_CONNECTIONS_PER_USER`] each.
    pub fn accept(&mut self, now: Instant) -> Accepted {
        let mut accepted = Accepted::default();
        loop {
            let stream = match self.socket.listener().accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.raw_os_error() == Some(nix::libc::ECONNABORTED) => continue,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS)
                    ) =>
                {
                    accepted.out_of_descriptors = true;
                    break;
                }
                Err(_) => break,
            };
            let Ok(credentials) = getsockopt(&stream, PeerCredentials) else { continue };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let uid = credentials.uid();
            let open = self.connections.values().filter(|c| c.peer.uid == uid).count();
            if open >= MAX_CONNECTIONS_PER_USER {
                // One line and the connection closes; a full socket just gets the close.
                let message = format!(
                    "too many control connections from uid {uid} (at most \
                     {MAX_CONNECTIONS_PER_USER} at once)"
                );
                let mut text = serde_json::to_vec(&Response::Error { message }).unwrap_or_default();
                text.push(b'\n');
                let _ = (&stream).write(&text);
                accepted.refused.push(uid);
                continue;
            }
            let id = ConnectionId(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            let peer = Peer { uid: credentials.uid(), pid: credentials.pid() };
            self.connections.insert(
                id,
                Connection {
                    stream,
                    peer,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    deadline: now + DEADLINE,
                },
            );
            accepted.connections.push(id);
        }
        accepted
    }

    /// Reads what connection `id` sent, without blocking.
    pub fn read(&mut self, id: ConnectionId) -> Incoming {
        let Some(connection) = self.connections.get_mut(&id) else { return Incoming::Closed };
        let closed =
            match read_available(&mut connection.stream, &mut connection.input, MAX_REQUEST) {
                Filled::Open => false,
                Filled::Closed => true,
                Filled::TooLong => {
                    self.connections.remove(&id);
                    return Incoming::Closed;
                }
            };
        let Some(end) = connection.input.iter().position(|byte| *byte == b'\n') else {
            if closed {
                self.connections.remove(&id);
                return Incoming::Closed;
            }
            return Incoming::Pending;
        };
        let request = serde_json::from_slice::<Request>(&connection.input[..end])
            .map_err(|error| format!("malformed request: {error}"));
        Incoming::Request(request, connection.peer)
    }

    /// Queues `response` for connection `id` and writes what the socket takes now.
    pub fn respond(&mut self, id: ConnectionId, response: &Response, now: Instant) -> Outgoing {
        let Some(connection) = self.connections.get_mut(&id) else { return Outgoing::Done };
        let mut text = serde_json::to_vec(response).unwrap_or_default();
        text.push(b'\n');
        connection.output = text;
        connection.written = 0;
        connection.deadline = now + DEADLINE;
        self.write(id)
    }

    /// Writes more of connection `id`'s answer, without blocking.
    pub fn write(&mut self, id: ConnectionId) -> Outgoing {
        let Some(connection) = self.connections.get_mut(&id) else { return Outgoing::Done };
        if !write_available(&mut connection.stream, &connection.output, &mut connection.written) {
            return Outgoing::Pending;
        }
        self.connections.remove(&id);
        Outgoing::Done
    }

    /// Closes connection `id`.
    pub fn close(&mut self, id: ConnectionId) {
        self.connections.remove(&id);
    }

    /// Whether connection `id` has an answer being written (it is read no more).
    pub fn is_answering(&self, id: ConnectionId) -> bool {
        self.connections.get(&id).is_some_and(|connection| !connection.output.is_empty())
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Drops the connections whose deadline has passed.
    pub fn expire(&mut self, now: Instant) {
        self.connections.retain(|_, connection| connection.deadline > now);
    }

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections.values().map(|connection| connection.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_for_root_and_the_owner_only() {
        assert!(may_change(Peer { uid: 0, pid: 1 }, 500).is_ok());
        assert!(may_change(Peer { uid: 500, pid: 1 }, 500).is_ok());
        let refused = may_change(Peer { uid: 1000, pid: 1 }, 500).unwrap_err();
        assert!(refused.starts_with("permission denied"), "{refused}");
    }

    #[test]
    fn a_request_is_read_and_a_large_answer_written_without_blocking() {
        let dir = tempfile_dir();
        let path = dir.join("test.control");
        let mut server = ControlServer::bind(&path, 0o600, None).unwrap();
        let now = Instant::now();
        // A client that sends its request and then reads nothing yet.
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"{\"command\":\"status\"}\n").unwrap();
        let [id] = server.accept(now).connections[..] else { panic!("one connection") };
        let Incoming::Request(Ok(Request::Status), peer) = server.read(id) else {
            panic!("no request")
        };
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        // An answer far larger than the socket buffer: written in part, the rest kept.
        let big = Response::Error { message: "x".repeat(4 << 20) };
        assert_eq!(server.respond(id, &big, now), Outgoing::Pending);
        assert!(server.connection(id).is_some());
        // The client reads: the rest goes out as it does.
        let reader = std::thread::spawn(move || {
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).unwrap();
            answer.len()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.write(id) == Outgoing::Pending {
            assert!(Instant::now() < deadline, "the answer was never written out");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reader.join().unwrap(), serde_json::to_vec(&big).unwrap().len() + 1);
        // A second server on the same path is refused while the first listens.
        let _silent = UnixStream::connect(&path).unwrap();
        assert!(ControlServer::bind(&path, 0o600, None).is_err());
        // Silent connections (ours, and the second server's probe) are dropped at their
        // deadline.
        assert_eq!(server.accept(now).connections.len(), 2);
        server.expire(now + DEADLINE);
        assert_eq!(server.next_deadline(), None);
        drop(server);
        assert!(!path.exists(), "the socket is removed with its server");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn one_user_gets_a_bounded_number_of_connections() {
        let dir = tempfile_dir().join("per-user");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.control");
        let mut server = ControlServer::bind(&path, 0o600, None).unwrap();
        let clients: Vec<UnixStream> = (0..MAX_CONNECTIONS_PER_USER + 3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let accepted = server.accept(Instant::now());
        assert_eq!(accepted.connections.len(), MAX_CONNECTIONS_PER_USER);
        assert_eq!(accepted.refused.len(), 3);
        assert!(!accepted.out_of_descriptors);
        // A refused client is told why in one line, then the connection closes.
        let mut refused = String::new();
        (&clients[MAX_CONNECTIONS_PER_USER]).read_to_string(&mut refused).unwrap();
        assert!(refused.contains("too many control connections"), "{refused}");
        // One connection done, one more may come.
        server.expire(Instant::now() + DEADLINE);
        drop(clients);
        let _again = UnixStream::connect(&path).unwrap();
        assert_eq!(server.accept(Instant::now()).connections.len(), 1);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("steve-control-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
