//! Counts the tokens in a named pipe the way a client would see them: by reading every byte that
//! is there without blocking, then writing them all back.
//!
//! Holding the pipe open while counting also keeps the fifo server from repairing the pool
//! mid-count: it only repairs a pipe nobody else has open.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The number of tokens in the named pipe at `path`.
pub fn count_tokens(path: &Path) -> usize {
    let mut pipe = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    let mut taken = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => taken.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => panic!("reading {}: {error}", path.display()),
        }
    }
    pipe.write_all(&taken).expect("put the tokens back");
    taken.len()
}
