//! A relay pipe: a pipe (named or anonymous) whose readers take tokens that its owner draws, one
//! at a time, from a pool it shares with others: the server's ledger for a companion FIFO beside
//! a device, the machine's jobserver for `steve exec --pipe`.
//!
//! The owner keeps a few *spare* tokens in the pipe, one unless it says more
//! ([`Relay::set_spares`]). When readers take them, the relay asks for more
//! ([`Relay::wants_token`]); tokens written back beyond the spares leave the pipe at once and go
//! back to the pool ([`Settled::returned`]). So the pipe's readers hold what they use plus the
//! spares, never a stock of the pool's tokens, and the pool's own fairness decides when their
//! next token comes. (More than one spare is for readers that never wait on the pipe: ninja
//! tries to read a token for each job it could start, and after an empty read waits for one of
//! its jobs to end, so it starts as many jobs at once as there are tokens in the pipe.) Bytes beyond the tokens given were never tokens (a client wrote back
//! more than it took): they are taken out and dropped.
//!
//! Reads and writes of other processes are seen through inotify (`IN_ACCESS`, `IN_MODIFY`),
//! which the kernel sends for every pipe, anonymous ones included (watched through
//! `/proc/self/fd/N`); opens and closes too, for a named pipe's leak check.
//!
//! ```
//! use std::time::Instant;
//! use steve_core::relay::Relay;
//!
//! let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK)?;
//! let mut relay = Relay::new(read.into(), write.into())?;
//! assert!(relay.wants_token(), "an empty pipe asks for its spare");
//! relay.give(Instant::now())?; // a token drawn from the pool
//! assert_eq!((relay.tokens(), relay.in_pipe()), (1, 1));
//! assert!(!relay.wants_token());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::sys::bytes_in_pipe;

/// The byte a relay puts into its pipe as a token.
const TOKEN: u8 = b'+';

/// A pipe fed one token at a time. See the [module documentation](self).
#[derive(Debug)]
pub struct Relay {
    /// The end tokens are taken out of (for a named pipe, one file open both ways).
    read: File,
    /// The end tokens are put into.
    write: File,
    inotify: Inotify,
    /// Tokens given to the pipe and not yet taken back: in it, or with its readers.
    tokens: usize,
    /// When a spare now in the pipe was put there, while some lie untaken.
    spare_since: Option<Instant>,
    /// How many spares the pipe holds at most.
    spares: usize,
    /// Bytes taken out that were never tokens.
    garbage: u64,
}

/// What other processes did to the pipe since the last look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Tokens written back beyond the spare, taken out of the pipe: give them back to the pool.
    pub returned: usize,
    /// Bytes beyond the tokens given, taken out and dropped.
    pub garbage: usize,
    /// Someone opened the pipe (by its name).
    pub opened: bool,
    /// Someone closed it.
    pub closed: bool,
}

impl Relay {
    /// A relay over a pipe's two ends (non-blocking; for a named pipe, the same file twice),
    /// with nothing in it yet.
    pub fn new(read: File, write: File) -> io::Result<Relay> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let watched = format!("/proc/self/fd/{}", read.as_raw_fd());
        inotify.add_watch(
            watched.as_str(),
            AddWatchFlags::IN_ACCESS
                | AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_OPEN
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_CLOSE_NOWRITE,
        )?;
        Ok(Relay { read, write, inotify, tokens: 0, spare_since: None, spares: 1, garbage: 0 })
    }

    /// Its counts for a successor ([`crate::handover`]); its two ends go as descriptors.
    pub fn export(&self) -> serde_json::Value {
        let spare_since = self.spare_since.map(crate::handover::instant_offset);
        serde_json::json!({
            "tokens": self.tokens,
            "spare_since": spare_since,
            "spares": self.spares,
            "garbage": self.garbage,
        })
    }

    /// A predecessor's relay over `read` and `write` (passed in a handover), with the counts
    /// its [`Relay::export`] wrote, watched by a new inotify of this process's.
    pub fn adopt(read: File, write: File, state: &serde_json::Value) -> io::Result<Relay> {
        let mut relay = Relay::new(read, write)?;
        let number = |name: &str| state.get(name).and_then(serde_json::Value::as_u64);
        relay.tokens = number("tokens").unwrap_or(0) as usize;
        relay.spares = number("spares").unwrap_or(1) as usize;
        relay.garbage = number("garbage").unwrap_or(0);
        relay.spare_since = state
            .get("spare_since")
            .and_then(serde_json::Value::as_i64)
            .map(crate::handover::instant_at);
        Ok(relay)
    }

    /// Readable when the pipe was read, written, opened or closed: then call [`Relay::settle`].
    pub fn watch(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Tokens given and not taken back: in the pipe or with its readers.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Bytes in the pipe now.
    pub fn in_pipe(&self) -> usize {
        bytes_in_pipe(&self.read).unwrap_or(0)
    }

    /// Bytes taken out since the start that were never tokens.
    pub fn garbage(&self) -> u64 {
        self.garbage
    }

    /// Holds at most `spares` untaken tokens in the pipe from now on (at least one). Spares
    /// beyond a lowered count go back at the next [`Relay::settle`].
    pub fn set_spares(&mut self, spares: usize) {
        self.spares = spares.max(1);
    }

    /// Whether the pipe holds fewer spares than it may: readers took them, or none was given.
    pub fn wants_token(&self) -> bool {
        self.in_pipe() < self.spares
    }

    /// Since when spares have lain in the pipe untaken, if they have.
    pub fn spare_since(&self) -> Option<Instant> {
        self.spare_since.filter(|_| self.in_pipe() > 0)
    }

    /// Puts a token drawn from the pool into the pipe.
    pub fn give(&mut self, now: Instant) -> io::Result<()> {
        (&self.write).write_all(&[TOKEN])?;
        self.tokens += 1;
        self.spare_since = Some(now);
        Ok(())
    }

    /// Reads what happened to the pipe and brings it back to at most its spares: what readers
    /// wrote back beyond them is taken out, to go back to the pool.
    pub fn settle(&mut self, now: Instant) -> Settled {
        let mut settled = self.drain_events();
        let in_pipe = self.in_pipe();
        if in_pipe == 0 {
            self.spare_since = None;
            return settled;
        }
        // Keep the spares, as far as tokens were given at all.
        let keep = self.spares.min(self.tokens).min(in_pipe);
        let taken = self.take_out(in_pipe - keep);
        let returned = taken.min(self.tokens.saturating_sub(keep));
        self.tokens -= returned;
        settled.returned = returned;
        settled.garbage = taken - returned;
        self.garbage += settled.garbage as u64;
        if keep > 0 && self.spare_since.is_none() {
            // A token written back became a spare.
            self.spare_since = Some(now);
        }
        settled
    }

    /// Takes the untaken spares back out, to give them to the pool; how many there were.
    pub fn take_spares(&mut self) -> usize {
        let taken = self.take_out(self.in_pipe().min(self.tokens));
        self.tokens -= taken;
        self.spare_since = None;
        taken
    }

    /// Takes every byte out of the pipe; returns how many were tokens (now back from the pipe).
    pub fn drain(&mut self) -> usize {
        let taken = self.take_out(self.in_pipe());
        let tokens = taken.min(self.tokens);
        self.tokens -= tokens;
        self.garbage += (taken - tokens) as u64;
        self.spare_since = None;
        tokens
    }

    /// Forgets the tokens out with readers (their holders are gone: a leak check found nobody
    /// else with the pipe open); returns how many. What is in the pipe stays given.
    pub fn forget_out(&mut self) -> usize {
        let in_pipe = self.in_pipe().min(self.tokens);
        let lost = self.tokens - in_pipe;
        self.tokens = in_pipe;
        lost
    }

    /// Reads up to `count` bytes out of the pipe without waiting; returns how many.
    fn take_out(&mut self, count: usize) -> usize {
        let mut sink = vec![0u8; count];
        let mut taken = 0;
        while taken < count {
            match (&self.read).read(&mut sink[taken..]) {
                Ok(0) => break,
                Ok(read) => taken += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        taken
    }

    fn drain_events(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Ok(events) = self.inotify.read_events() {
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_OPEN) {
                    settled.opened = true;
                }
                if event.mask.intersects(
                    AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_CLOSE_NOWRITE
                        | AddWatchFlags::IN_Q_OVERFLOW,
                ) {
                    settled.closed = true;
                }
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (Relay, File, File) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let (read, write) = (File::from(read), File::from(write));
        let client = (read.try_clone().unwrap(), write.try_clone().unwrap());
        (Relay::new(read, write).unwrap(), client.0, client.1)
    }

    #[test]
    fn a_taken_spare_asks_for_another_and_returns_beyond_the_spare_go_back() {
        let (mut relay, mut client_read, mut client_write) = relay();
        let now = Instant::now();
        relay.give(now).unwrap();
        let mut byte = [0u8; 1];
        client_read.read_exact(&mut byte).unwrap();
        assert_eq!(relay.settle(now).returned, 0);
        assert!(relay.wants_token(), "the reader took the spare");
        relay.give(now).unwrap();
        client_read.read_exact(&mut byte).unwrap();
        relay.give(now).unwrap();
        assert_eq!((relay.tokens(), relay.in_pipe()), (3, 1), "two out, one spare");
        client_write.write_all(b"++").unwrap();
        let settled = relay.settle(now);
        assert_eq!((settled.returned, settled.garbage), (2, 0));
        assert_eq!((relay.tokens(), relay.in_pipe()), (1, 1), "only the spare is left");
    }

    #[test]
    fn more_spares_are_kept_when_asked_for_and_the_rest_returned() {
        let (mut relay, mut client_read, mut client_write) = relay();
        let now = Instant::now();
        relay.set_spares(3);
        while relay.wants_token() {
            relay.give(now).unwrap();
        }
        assert_eq!((relay.tokens(), relay.in_pipe()), (3, 3));
        let mut taken = [0u8; 3];
        client_read.read_exact(&mut taken).unwrap();
        relay.settle(now);
        assert!(relay.wants_token(), "the readers took every spare");
        relay.give(now).unwrap();
        client_write.write_all(&taken).unwrap();
        assert_eq!(relay.settle(now).returned, 1, "four in the pipe, three kept");
        relay.set_spares(1);
        assert_eq!(relay.settle(now).returned, 2, "a lowered count gives back the rest");
        assert_eq!((relay.tokens(), relay.in_pipe(), relay.take_spares()), (1, 1, 1));
    }

    #[test]
    fn bytes_beyond_the_tokens_given_are_dropped_not_returned() {
        let (mut relay, _client_read, mut client_write) = relay();
        let now = Instant::now();
        client_write.write_all(b"+++").unwrap();
        let settled = relay.settle(now);
        assert_eq!((settled.returned, settled.garbage), (0, 3), "no token was ever given");
        relay.give(now).unwrap();
        client_write.write_all(b"++").unwrap();
        let settled = relay.settle(now);
        assert_eq!((settled.returned, settled.garbage), (0, 2));
        assert_eq!((relay.tokens(), relay.in_pipe()), (1, 1));
        assert_eq!(relay.garbage(), 5);
    }

    #[test]
    fn the_spare_can_be_taken_back_and_lost_tokens_forgotten() {
        let (mut relay, mut client_read, _client_write) = relay();
        let now = Instant::now();
        relay.give(now).unwrap();
        client_read.read_exact(&mut [0u8; 1]).unwrap();
        relay.give(now).unwrap();
        assert!(relay.spare_since().is_some());
        assert_eq!(relay.take_spares(), 1);
        assert_eq!(relay.take_spares(), 0, "only one was there");
        assert_eq!(relay.tokens(), 1, "the one the reader holds");
        assert_eq!(relay.forget_out(), 1);
        assert_eq!(relay.tokens(), 0);
    }

    #[test]
    fn another_process_taking_the_spare_is_seen_through_inotify() {
        let (mut relay, _client_read, _client_write) = relay();
        let now = Instant::now();
        relay.give(now).unwrap();
        relay.settle(now);
        // A child reads the spare through the descriptor it inherits, as its
        // standard input: a shell's `<&N` would fail for N above 9 in dash,
        // and tests running beside this one push the number that high.
        let status = std::process::Command::new("dd")
            .args(["bs=1", "count=1", "status=none", "of=/dev/null"])
            .stdin(relay.read.try_clone().unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        let mut fds = [nix::poll::PollFd::new(relay.watch(), nix::poll::PollFlags::POLLIN)];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
        assert_eq!(ready, 1, "no inotify event for the child's read");
        relay.settle(now);
        assert!(relay.wants_token());
    }
}
