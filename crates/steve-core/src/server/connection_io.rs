//! Reading and writing a non-blocking connection as far as it goes now: what the control
//! socket and the metrics listener share, so that neither ever blocks the event loop.

use std::io::{self, Read, Write};

/// What reading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Everything there was is read; the peer may send more.
    Open,
    /// The peer closed its end (or the connection failed).
    Closed,
    /// It sent more than `limit` bytes.
    TooLong,
}

/// Reads what `stream` has into `input`, up to `limit` bytes in all.
pub fn read_available(stream: &mut impl Read, input: &mut Vec<u8>, limit: usize) -> Filled {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Filled::Closed,
            Ok(count) => input.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Filled::Open,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Filled::Closed,
        }
        if input.len() > limit {
            return Filled::TooLong;
        }
    }
}

/// Writes `output` from `written` on, as far as `stream` takes it; returns whether it is done
/// (all written, or the connection failed) rather than waiting for room.
pub fn write_available(stream: &mut impl Write, output: &[u8], written: &mut usize) -> bool {
    while *written < output.len() {
        match stream.write(&output[*written..]) {
            Ok(count) => *written += count,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    true
}
