//! The metrics listener (`--metrics-listen`): a minimal HTTP/1.1 server on a Unix socket or a
//! loopback TCP port that answers `GET /metrics` with the exposition of the server's status
//! ([`crate::metrics`]), in OpenMetrics when the `Accept` header asks for it.
//!
//! Like the control socket, it never blocks the event loop: every descriptor is non-blocking
//! and watched by the loop's epoll, a request is read until its blank line (8 KiB at most), the
//! answer is written as the client takes it, and a connection that has not sent its request or
//! taken its answer within a few seconds is dropped. At most [`MAX_CONNECTIONS`] are open at
//! once; more are closed on arrival. Only loopback addresses are taken: metrics of a machine's
//! builds are not for the network (put a proxy in front to publish them).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Gid;

use super::connection_io::{read_available, write_available, Filled};
use super::unix_socket::OwnedSocket;
use crate::metrics::Format;

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    /// A Unix socket at this path (`unix:PATH`).
    Unix(PathBuf),
    /// A loopback TCP address (`127.0.0.1:9877`, `[::1]:9877`, `localhost:9877`).
    Tcp(SocketAddr),
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            MetricsAddress::Tcp(address) => write!(f, "{address}"),
        }
    }
}

impl std::str::FromStr for MetricsAddress {
    type Err = String;

    /// `unix:PATH` (an absolute path), or a loopback `HOST:PORT`.
    fn from_str(text: &str) -> Result<MetricsAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{text:?}: the socket's path must be absolute"));
            }
            return Ok(MetricsAddress::Unix(path));
        }
        let address = match text.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                .map_err(|_| format!("{text:?}: not a port")),
            None => text.parse::<SocketAddr>().map_err(|_| {
                format!("{text:?} is not unix:PATH or a loopback address like 127.0.0.1:9877")
            }),
        }?;
        if !address.ip().is_loopback() {
            return Err(format!(
                "{text:?} is not a loopback address: steve serves metrics on this machine only \
                 (127.0.0.1, [::1], or a Unix socket; put a proxy in front to publish them)"
            ));
        }
        Ok(MetricsAddress::Tcp(address))
    }
}

/// Connections open at once at most; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 32;
/// A request's size at most.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may take to send its request and take its answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// A listening socket.
#[derive(Debug)]
enum Listener {
    Unix(OwnedSocket),
    Tcp(TcpListener),
}

/// A connection.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(stream) => stream.as_fd(),
            Stream::Tcp(stream) => stream.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.read(buffer),
            Stream::Tcp(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.write(buffer),
            Stream::Tcp(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Connection {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// What a connection asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Not all of the request is here yet.
    Pending,
    /// The metrics, in this format.
    Metrics(Format),
    /// Something else: answer with this status line and a short text.
    Refused(&'static str),
    /// It went away, or sent too much: it is closed.
    Closed,
}

/// The listeners and their connections.
#[derive(Debug, Default)]
pub struct MetricsServer {
    listeners: Vec<(Listener, String)>,
    connections: HashMap<u32, Connection>,
    next_id: u32,
}

impl MetricsServer {
    /// Serves the listeners a predecessor made for `addresses` (the same `--metrics-listen`),
    /// from the descriptors of its handover.
    pub fn adopt(
        addresses: &[MetricsAddress],
        descriptors: &mut crate::handover::Descriptors,
    ) -> io::Result<MetricsServer> {
        let mut server = MetricsServer::default();
        for (index, address) in addresses.iter().enumerate() {
            let name = format!("{}{index}", super::event_loop::METRICS_LISTENER);
            let fd = descriptors.take(&name).map_err(io::Error::other)?;
            let listener = match address {
                MetricsAddress::Unix(path) => Listener::Unix(OwnedSocket::adopt(fd, path)?),
                MetricsAddress::Tcp(_) => {
                    let listener = TcpListener::from(fd);
                    listener.set_nonblocking(true)?;
                    Listener::Tcp(listener)
                }
            };
            server.listeners.push((listener, address.to_string()));
        }
        Ok(server)
    }

    /// Listens on every address of `addresses`; a Unix socket gets `mode` and group `gid`.
    pub fn bind(
        addresses: &[MetricsAddress],
        mode: u32,
        gid: Option<Gid>,
    ) -> io::Result<MetricsServer> {
        let mut server = MetricsServer::default();
        for address in addresses {
            let listener = match address {
                MetricsAddress::Unix(path) => Listener::Unix(OwnedSocket::bind(path, mode, gid)?),
                MetricsAddress::Tcp(address) => {
                    let listener = TcpListener::bind(address).map_err(|error| {
                        io::Error::new(error.kind(), format!("cannot listen on {address}: {error}"))
                    })?;
                    listener.set_nonblocking(true)?;
                    Listener::Tcp(listener)
                }
            };
            server.listeners.push((listener, address.to_string()));
        }
        Ok(server)
    }

    /// The listeners' descriptors, by index, with what each listens on.
    pub fn listeners(&self) -> Vec<(usize, BorrowedFd<'_>, &str)> {
        self.listeners
            .iter()
            .enumerate()
            .map(|(index, (listener, address))| {
                let fd = match listener {
                    Listener::Unix(socket) => socket.listener().as_fd(),
                    Listener::Tcp(listener) => listener.as_fd(),
                };
                (index, fd, address.as_str())
            })
            .collect()
    }

    /// Connection `id`'s descriptor.
    pub fn connection(&self, id: u32) -> Option<BorrowedFd<'_>> {
        self.connections.get(&id).map(|connection| connection.stream.fd())
    }

    /// Accepts what waits on listener `index`; returns the new connections' ids.
    pub fn accept(&mut self, index: usize, now: Instant) -> Vec<u32> {
        let mut accepted = Vec::new();
        let Some((listener, _)) = self.listeners.get(index) else { return accepted };
        loop {
            let stream = match listener {
                Listener::Unix(socket) => socket.listener().accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(listener) => listener.accept().map(|(s, _)| Stream::Tcp(s)),
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.raw_os_error() == Some(nix::libc::ECONNABORTED) => continue,
                // Would block, or out of descriptors: what is left waits for the next wake-up.
                Err(_) => break,
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                continue;
            }
            let nonblocking = match &stream {
                Stream::Unix(stream) => stream.set_nonblocking(true),
                Stream::Tcp(stream) => stream.set_nonblocking(true),
            };
            if nonblocking.is_err() {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let connection = Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                deadline: now + DEADLINE,
            };
            self.connections.insert(id, connection);
            accepted.push(id);
        }
        accepted
    }

    /// Reads what connection `id` sent and says what it asked.
    pub fn read(&mut self, id: u32) -> Asked {
        let Some(connection) = self.connections.get_mut(&id) else { return Asked::Closed };
        let closed =
            match read_available(&mut connection.stream, &mut connection.input, MAX_REQUEST) {
                Filled::Open => false,
                Filled::Closed => true,
                Filled::TooLong => {
                    self.connections.remove(&id);
                    return Asked::Closed;
                }
            };
        let end = connection.input.windows(4).position(|window| window == b"\r\n\r\n");
        match end {
            Some(end) => parse(&connection.input[..end]),
            None if closed => {
                self.connections.remove(&id);
                Asked::Closed
            }
            None => Asked::Pending,
        }
    }

    /// Answers connection `id` with `status` and `body` of `content_type`; says whether the
    /// answer is all written (the connection is then closed).
    pub fn respond(
        &mut self,
        id: u32,
        status: &str,
        content_type: &str,
        body: &str,
        now: Instant,
    ) -> bool {
        let Some(connection) = self.connections.get_mut(&id) else { return true };
        connection.output = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        connection.written = 0;
        connection.deadline = now + DEADLINE;
        self.write(id)
    }

    /// Writes more of connection `id`'s answer; says whether it is all written (then closed).
    pub fn write(&mut self, id: u32) -> bool {
        let Some(connection) = self.connections.get_mut(&id) else { return true };
        if !write_available(&mut connection.stream, &connection.output, &mut connection.written) {
            return false;
        }
        self.connections.remove(&id);
        true
    }

    /// Whether connection `id` has an answer on its way.
    pub fn is_answering(&self, id: u32) -> bool {
        self.connections.get(&id).is_some_and(|connection| !connection.output.is_empty())
    }

    /// Closes connection `id`.
    pub fn close(&mut self, id: u32) {
        self.connections.remove(&id);
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

/// What a request's head (up to its blank line) asks.
fn parse(head: &[u8]) -> Asked {
    let Ok(head) = std::str::from_utf8(head) else { return Asked::Refused("400 Bad Request") };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut words = request.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Asked::Refused("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Refused("400 Bad Request");
    }
    if method != "GET" {
        return Asked::Refused("405 Method Not Allowed");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" && path != "/" {
        return Asked::Refused("404 Not Found");
    }
    let accept = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, value)| value.trim())
        .unwrap_or_default();
    Asked::Metrics(Format::for_accept(accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_and_absolute_sockets_are_taken() {
        assert_eq!(
            "127.0.0.1:9877".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Tcp("127.0.0.1:9877".parse().unwrap()))
        );
        assert!(matches!("[::1]:9877".parse::<MetricsAddress>(), Ok(MetricsAddress::Tcp(_))));
        assert!(matches!("localhost:1".parse::<MetricsAddress>(), Ok(MetricsAddress::Tcp(_))));
        assert!(matches!(
            "unix:/run/m.sock".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Unix(_))
        ));
        for refused in ["0.0.0.0:9877", "192.168.1.2:80", "unix:m.sock", "localhost", "9877"] {
            assert!(refused.parse::<MetricsAddress>().is_err(), "{refused}");
        }
    }

    #[test]
    fn requests_are_read_for_what_they_ask() {
        let asked = |text: &str| parse(text.as_bytes());
        assert_eq!(asked("GET /metrics HTTP/1.1\r\nHost: x"), Asked::Metrics(Format::Prometheus));
        assert_eq!(
            asked("GET / HTTP/1.0\r\naccept: application/openmetrics-text;version=1.0.0"),
            Asked::Metrics(Format::OpenMetrics)
        );
        assert_eq!(asked("POST /metrics HTTP/1.1"), Asked::Refused("405 Method Not Allowed"));
        assert_eq!(asked("GET /etc/passwd HTTP/1.1"), Asked::Refused("404 Not Found"));
        assert_eq!(asked("\u{0}\u{1}"), Asked::Refused("400 Bad Request"));
    }
}
