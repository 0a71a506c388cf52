//! Handing a running server over to a successor process without a gap: a restart or an
//! upgrade of steve breaks no build.
//!
//! A successor (`steve serve --takeover`) connects to the running server's control socket and
//! asks for the handover (`{"command":"handover"}`, allowed to root and the server's own user,
//! as `set` is). The server stops handling anything else and sends, on that connection:
//!
//! 1. a header line, `{"descriptors":N,"state_bytes":L}`;
//! 2. its `N` descriptors (the kernel connection, `/dev/cuse` or `/dev/fuse`, so that the device
//!    and the mount stay; the control and metrics listeners; each client process's pidfd), in
//!    messages of one byte `F` each carrying at most [`DESCRIPTORS_PER_MESSAGE`] of them
//!    (`SCM_RIGHTS`);
//! 3. `L` bytes of JSON: the [`Package`]'s state, which names the descriptors in order, and holds
//!    the books (holders, waiters, the reads waiting for a token by their kernel request ids,
//!    reservations, lent tokens, counters), the limits and the loop's own state.
//!
//! The successor builds its server from them, and answers `taken`; the old server then exits
//! without tearing anything down (no unmount, no unlink: the successor has all of it). Requests
//! that arrive meanwhile wait in the kernel and are answered by the successor. If the successor
//! fails first (the connection closes, or [`ANSWER_TIMEOUT`] passes without `taken`), the old
//! server goes on serving as if nothing had happened: it sent copies of its descriptors.
//!
//! Times cross as offsets from the moment of writing ([`instant`]): `Instant` means nothing in
//! another process, and the handover's own few milliseconds are all a deadline moves by.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Descriptors sent in one message: below the kernel's `SCM_MAX_FD` (253).
pub const DESCRIPTORS_PER_MESSAGE: usize = 250;
/// How long each side waits for the other before giving the handover up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The successor's answer once it serves.
pub const TAKEN: &[u8] = b"taken\n";
/// The largest state a successor accepts (a server of 10,000 clients writes about 3 MB).
const MAX_STATE_BYTES: usize = 256 << 20;

/// Why a handover failed.
#[derive(Debug)]
pub enum HandoverError {
    /// Talking to the other side failed.
    Io(io::Error),
    /// The other side sent something that is not a handover.
    Protocol(String),
    /// A descriptor the state needs was not sent.
    Missing(String),
}

impl fmt::Display for HandoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoverError::Io(error) => write!(f, "handover: {error}"),
            HandoverError::Protocol(why) => write!(f, "handover: {why}"),
            HandoverError::Missing(name) => write!(f, "handover: no descriptor for {name}"),
        }
    }
}

impl std::error::Error for HandoverError {}

impl From<io::Error> for HandoverError {
    fn from(error: io::Error) -> HandoverError {
        HandoverError::Io(error)
    }
}

/// Named descriptors received from a predecessor; each is taken once by whoever needs it.
#[derive(Debug, Default)]
pub struct Descriptors {
    named: Vec<(String, Option<OwnedFd>)>,
}

impl Descriptors {
    /// Descriptors already named (passed back by a service manager's store).
    pub fn from_named(named: Vec<(String, OwnedFd)>) -> Descriptors {
        Descriptors { named: named.into_iter().map(|(name, fd)| (name, Some(fd))).collect() }
    }

    /// Takes the descriptor called `name`.
    pub fn take(&mut self, name: &str) -> Result<OwnedFd, HandoverError> {
        self.named
            .iter_mut()
            .find(|(known, fd)| known == name && fd.is_some())
            .and_then(|(_, fd)| fd.take())
            .ok_or_else(|| HandoverError::Missing(name.to_string()))
    }

    /// Takes the descriptor called `name`, if it was sent.
    pub fn take_optional(&mut self, name: &str) -> Option<OwnedFd> {
        self.take(name).ok()
    }
}

/// What a predecessor hands over: its state and its descriptors.
#[derive(Debug)]
pub struct Package {
    /// The state: [`State`].
    pub state: State,
    /// The descriptors the state names.
    pub descriptors: Descriptors,
}

/// The state a predecessor writes: which backend, the event loop's part and the server's part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The format, so that a successor refuses a state it cannot read.
    pub version: u32,
    /// The backend's name (`fuse`, `cuse`, `fifo`).
    pub backend: String,
    /// The descriptors' names, in the order they were sent.
    pub descriptors: Vec<String>,
    /// The event loop's part: the limits, the client processes, the counters.
    pub event_loop: serde_json::Value,
    /// The server's part, as its backend wrote it.
    pub server: serde_json::Value,
}

/// The state format this build writes and reads.
pub const VERSION: u32 = 1;

/// The header line before the descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    descriptors: usize,
    state_bytes: usize,
}

/// Sends `state` and `descriptors` (named as `state.descriptors` says, in that order) on
/// `stream`, blocking up to [`ANSWER_TIMEOUT`] for each write.
pub fn send(
    stream: &mut UnixStream,
    state: &State,
    descriptors: &[BorrowedFd<'_>],
) -> Result<(), HandoverError> {
    if state.descriptors.len() != descriptors.len() {
        return Err(HandoverError::Protocol("descriptors and their names differ".into()));
    }
    let text = serde_json::to_vec(state).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let header = Header { descriptors: descriptors.len(), state_bytes: text.len() };
    let mut line = serde_json::to_vec(&header).expect("a header encodes");
    line.push(b'\n');
    stream.write_all(&line)?;
    for chunk in descriptors.chunks(DESCRIPTORS_PER_MESSAGE) {
        crate::sys::send_descriptors(stream.as_fd(), chunk)?;
    }
    stream.write_all(&text)?;
    Ok(())
}

/// Receives a predecessor's package from `stream` (after asking for it).
pub fn receive(stream: &mut UnixStream) -> Result<Package, HandoverError> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    // A byte at a time up to the newline: a buffered read could swallow the first message
    // that carries descriptors, and they would be lost with it.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        stream.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let header: Header = serde_json::from_slice(&line).map_err(|_| {
        HandoverError::Protocol(format!(
            "the server answered {:?} instead of handing over",
            String::from_utf8_lossy(&line)
        ))
    })?;
    if header.state_bytes > MAX_STATE_BYTES {
        return Err(HandoverError::Protocol(format!("a state of {} bytes", header.state_bytes)));
    }
    let mut fds = Vec::with_capacity(header.descriptors);
    while fds.len() < header.descriptors {
        let received = crate::sys::receive_descriptors(stream.as_fd(), DESCRIPTORS_PER_MESSAGE)?;
        if received.is_empty() {
            return Err(HandoverError::Protocol("a message without descriptors".into()));
        }
        fds.extend(received);
    }
    let mut text = vec![0u8; header.state_bytes];
    stream.read_exact(&mut text)?;
    let state: State =
        serde_json::from_slice(&text).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    if state.version != VERSION {
        return Err(HandoverError::Protocol(format!(
            "state version {} (this steve reads {VERSION})",
            state.version
        )));
    }
    if state.descriptors.len() != fds.len() {
        return Err(HandoverError::Protocol("descriptors and their names differ".into()));
    }
    let named = state.descriptors.iter().cloned().zip(fds.into_iter().map(Some)).collect();
    Ok(Package { state, descriptors: Descriptors { named } })
}

/// `at` as signed nanoseconds after now (negative: before), as a handover writes instants.
pub fn instant_offset(at: std::time::Instant) -> i64 {
    instant::offset(at)
}

/// The instant `offset` nanoseconds after now, as a handover reads instants.
pub fn instant_at(offset: i64) -> std::time::Instant {
    instant::at(offset)
}

/// `Instant`s as signed nanoseconds from the moment they are written, for `#[serde(with)]`.
pub mod instant {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `at` as nanoseconds after now (negative: before).
    pub fn serialize<S: Serializer>(at: &Instant, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(offset(*at))
    }

    /// Reads an offset written by [`serialize`] as an `Instant` that far from now.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Instant, D::Error> {
        Ok(at(i64::deserialize(deserializer)?))
    }

    pub(super) fn offset(at: Instant) -> i64 {
        let now = Instant::now();
        let clamp = |nanos: u128| nanos.min(i64::MAX as u128) as i64;
        match at.checked_duration_since(now) {
            Some(ahead) => clamp(ahead.as_nanos()),
            None => -clamp(now.duration_since(at).as_nanos()),
        }
    }

    pub(super) fn at(offset: i64) -> Instant {
        let now = Instant::now();
        let distance = Duration::from_nanos(offset.unsigned_abs());
        if offset >= 0 {
            now + distance
        } else {
            now.checked_sub(distance).unwrap_or(now)
        }
    }
}

/// `Option<Instant>`s as [`instant`] writes them.
pub mod option_instant {
    use std::time::Instant;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `at` as an offset from now, or nothing.
    pub fn serialize<S: Serializer>(
        at: &Option<Instant>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_some(&super::instant::offset(*at)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Instant>, D::Error> {
        Ok(Option::<i64>::deserialize(deserializer)?.map(super::instant::at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    #[test]
    fn a_package_crosses_a_socket_with_its_descriptors() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        // More than one message's worth, each a pipe whose other end tells it apart.
        let pipes: Vec<(OwnedFd, OwnedFd)> =
            (0..DESCRIPTORS_PER_MESSAGE + 3).map(|_| nix::unistd::pipe().unwrap()).collect();
        let names: Vec<String> = (0..pipes.len()).map(|n| format!("pipe:{n}")).collect();
        let state = State {
            version: VERSION,
            backend: "test".into(),
            descriptors: names.clone(),
            event_loop: serde_json::json!({"jobs": 4}),
            server: serde_json::json!({"books": [1, 2, 3]}),
        };
        let borrowed: Vec<BorrowedFd<'_>> = pipes.iter().map(|(_, write)| write.as_fd()).collect();
        let sender = std::thread::scope(|scope| {
            let sending = scope.spawn(|| send(&mut old, &state, &borrowed));
            let package = receive(&mut new).unwrap();
            sending.join().unwrap().unwrap();
            package
        });
        let mut package = sender;
        assert_eq!(package.state.server, state.server);
        assert_eq!(package.state.descriptors, names);
        // Each received descriptor is a copy of its pipe's write end: a byte written to it comes
        // out of that pipe.
        for (n, (read, _)) in pipes.iter().enumerate() {
            let fd = package.descriptors.take(&format!("pipe:{n}")).unwrap();
            nix::unistd::write(&fd, &[n as u8]).unwrap();
            let mut byte = [0u8; 1];
            nix::unistd::read(read, &mut byte).unwrap();
            assert_eq!(byte[0], n as u8, "descriptor {n} (fd {})", fd.as_raw_fd());
        }
        assert!(package.descriptors.take("pipe:0").is_err(), "each is taken once");
    }

    #[test]
    fn a_refusal_is_a_protocol_error_not_a_hang() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        old.write_all(b"{\"answer\":\"error\",\"message\":\"permission denied\"}\n").unwrap();
        let error = receive(&mut new).unwrap_err();
        assert!(error.to_string().contains("permission denied"), "{error}");
    }

    #[test]
    fn instants_cross_as_offsets_from_now() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3);
        let earlier = now - Duration::from_secs(2);
        let back_later = instant::at(instant::offset(later));
        let back_earlier = instant::at(instant::offset(earlier));
        let close =
            |a: Instant, b: Instant| a.max(b).duration_since(a.min(b)) < Duration::from_millis(50);
        assert!(close(back_later, later) && close(back_earlier, earlier));
    }
}
