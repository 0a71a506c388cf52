//! The token taker: a helper thread that takes tokens out of the named pipe with blocking reads,
//! for a fifo server that must hold tokens back (a lower `jobs`, a load or memory limit).
//!
//! Why a thread: the daemon shares the pipe with its clients, and whoever reads a returned token
//! first keeps it. make waits in `pselect()` and reads after it wakes; a reader already blocked in
//! `read()` takes the token inside the kernel first. A poll-driven daemon loses that race to busy
//! clients over and over, so a shrink would not settle until the builds ran out of work. The
//! thread does nothing but block in `read()` while tokens are wanted, and tells the poll loop
//! through a socket what it took; all the accounting stays in the loop.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The loop's end of the taker.
#[derive(Debug)]
pub struct Taker {
    shared: Arc<Shared>,
    /// Readable when the thread took tokens.
    notices: UnixStream,
}

#[derive(Debug, Default)]
struct Shared {
    /// Tokens still wanted.
    wanted: Mutex<usize>,
    wanted_changed: Condvar,
    /// Tokens taken and not yet collected by the loop.
    taken: AtomicUsize,
}

impl Taker {
    /// Starts the thread on its own blocking descriptor of the pipe at `path`.
    pub fn start(path: &Path) -> std::io::Result<Taker> {
        // The daemon holds the pipe open for writing, so this open does not block.
        let pipe = File::open(path)?;
        let (notices, mut notifier) = UnixStream::pair()?;
        notices.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new().name("token taker".into()).spawn(move || {
            take_while_wanted(pipe, &thread_shared, &mut notifier);
        })?;
        Ok(Taker { shared, notices })
    }

    /// Asks for `count` more tokens from now on (replacing what was asked before).
    pub fn want(&self, count: usize) {
        let mut wanted = self.shared.wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *wanted != count {
            *wanted = count;
            self.shared.wanted_changed.notify_one();
        }
    }

    /// The tokens taken since the last call. A token or two beyond what is wanted may come:
    /// the loop puts back what it does not need.
    pub fn collect(&self) -> usize {
        let mut sink = [0u8; 64];
        while matches!((&self.notices).read(&mut sink), Ok(count) if count > 0) {}
        self.shared.taken.swap(0, Ordering::AcqRel)
    }

    /// Readable when tokens were taken.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.notices.as_fd()
    }
}

fn take_while_wanted(mut pipe: File, shared: &Shared, notifier: &mut UnixStream) {
    let mut buffer = [0u8; 256];
    loop {
        let wanted = {
            let mut wanted = shared.wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while *wanted == 0 {
                wanted = shared
                    .wanted_changed
                    .wait(wanted)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            *wanted
        };
        let size = wanted.min(buffer.len());
        let taken = match pipe.read(&mut buffer[..size]) {
            Ok(0) => return,
            Ok(taken) => taken,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        {
            let mut wanted = shared.wanted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *wanted = wanted.saturating_sub(taken);
        }
        shared.taken.fetch_add(taken, Ordering::AcqRel);
        if notifier.write_all(b"!").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn takes_what_is_wanted_as_it_arrives_and_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut keeper = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let taker = Taker::start(&path).unwrap();
        taker.want(2);
        keeper.write_all(b"+++").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut taken = 0;
        while taken < 2 {
            assert!(Instant::now() < deadline, "the taker took {taken} of 2");
            taken += taker.collect();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(taken, 2);
        // The third token stays in the pipe: nothing more was wanted.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(taker.collect(), 0);
        assert_eq!(steve_core::os::bytes_in_pipe(&keeper).unwrap(), 1);
    }
}
