//! A companion FIFO: a real named pipe beside a device or fuse server, whose tokens come from
//! that server's own ledger, for the clients that take nothing but a FIFO (ninja 1.13 says
//! "Not a fifo path" to anything else; scripts test `-p`). Its clients and the device's share
//! one pool.
//!
//! The pipe is a steve-core [`Relay`]: while someone has it open it holds a few spare tokens
//! ([`SPARES`]), asks the server for more as readers take them, and gives back at once what
//! readers return beyond them. To the server's ledger the pipe is one more process, so its
//! readers together wait their turn in the same fair queue as everyone else. While nobody has it
//! open it holds nothing (a token kept for a client that may never come would be missing from
//! everyone else's pool): the first open asks for the spares, and the leak check that finds the
//! pipe let go takes them back. A reader killed while holding tokens cannot say so: as the
//! fifo backend does, once nobody else has the pipe open (inotify's close events, confirmed by a
//! scan of `/proc/*/fd`), every token not in the pipe is known lost and goes back.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Instant;

use nix::unistd::Gid;
use steve_core::relay::Relay;
use tracing::{debug, info, warn};

use crate::error::FifoError;
use crate::openers::{find_holder, find_holders};
use crate::pipe_file::PipeFile;

/// Spares the pipe holds while someone has it open: ninja reads a token for each job it could
/// start, and after an empty read waits for one of its jobs to end, so it starts at once as many
/// jobs as there are tokens in the pipe.
pub const SPARES: usize = 4;

/// A named pipe fed from a server's ledger. See the [module documentation](self).
#[derive(Debug)]
pub struct Companion {
    relay: Relay,
    made: PipeFile,
    /// Whether a scan can see every process that may hold the pipe.
    recovery: bool,
    recovered: u64,
    /// The process last seen holding the pipe, checked first next time.
    last_holder: Option<u32>,
    /// Someone has the pipe open (as far as the leak check knows): it keeps a spare.
    in_use: bool,
}

/// What the server must give back to its ledger after a look at the pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Returned {
    /// Tokens readers wrote back beyond the spare.
    pub returned: usize,
    /// Tokens lost with readers that went away holding them.
    pub lost: usize,
}

impl Companion {
    /// Makes the pipe at `path` (absolute), empty, with `mode` and group `gid`. Leak recovery
    /// needs to see every reader's descriptors: `stays_root` says whether the server will
    /// (else it is on only when no other user may open the pipe).
    pub fn create(
        path: &Path,
        mode: u32,
        gid: Option<Gid>,
        stays_root: bool,
    ) -> Result<Companion, FifoError> {
        let made = PipeFile::create(path, mode, gid)?;
        let clone = || made.file().try_clone().map_err(FifoError::io("open", path));
        let relay = Relay::new(clone()?, clone()?).map_err(FifoError::io("watch", path))?;
        let recovery = stays_root || mode & 0o077 == 0;
        if !recovery {
            warn!(
                "the companion FIFO {} is mode {mode:04o}: tokens its clients of other users \
                 lose when killed are not recovered (a server that is not root cannot see \
                 their processes)",
                path.display()
            );
        }
        Ok(Companion { relay, made, recovery, recovered: 0, last_holder: None, in_use: false })
    }

    /// Its state and descriptors for a successor ([`steve_core::handover`]), each descriptor
    /// named `companion:...`.
    pub fn export(&self) -> (serde_json::Value, Vec<(String, std::os::fd::BorrowedFd<'_>)>) {
        use std::os::fd::AsFd;
        // The relay's two ends are copies of the pipe's descriptor, made again by the successor
        // (a service manager's store keeps one of several copies of one open file).
        let (lock, made_dir) = self.made.handover_parts();
        let state = serde_json::json!({
            "path": self.path(),
            "made_dir": made_dir,
            "relay": self.relay.export(),
            "recovery": self.recovery,
            "recovered": self.recovered,
            "last_holder": self.last_holder,
            "in_use": self.in_use,
        });
        let fds = vec![
            ("companion:pipe".to_string(), self.made.file().as_fd()),
            ("companion:lock".to_string(), lock),
        ];
        (state, fds)
    }

    /// A predecessor's companion FIFO, from what its [`Companion::export`] wrote and the
    /// descriptors passed with it.
    pub fn adopt(
        state: &serde_json::Value,
        descriptors: &mut steve_core::handover::Descriptors,
    ) -> Result<Companion, FifoError> {
        let path: std::path::PathBuf =
            state.get("path").and_then(serde_json::Value::as_str).map(Into::into).ok_or_else(
                || FifoError::io("take over", Path::new("?"))(std::io::Error::other("no path")),
            )?;
        let mut take = |name: &str| {
            descriptors
                .take(name)
                .map_err(|e| FifoError::io("take over", &path)(std::io::Error::other(e)))
        };
        let (pipe, lock) = (take("companion:pipe")?, take("companion:lock")?);
        let made_dir = state.get("made_dir").and_then(serde_json::Value::as_str).map(Into::into);
        let made = PipeFile::adopt(&path, pipe, lock, made_dir)?;
        let relay_state = state.get("relay").cloned().unwrap_or_default();
        let clone = || made.file().try_clone().map_err(FifoError::io("open", &path));
        let relay = Relay::adopt(clone()?, clone()?, &relay_state)
            .map_err(FifoError::io("watch", &path))?;
        let flag =
            |name: &str| state.get(name).and_then(serde_json::Value::as_bool).unwrap_or(false);
        Ok(Companion {
            relay,
            made,
            recovery: flag("recovery"),
            recovered: state.get("recovered").and_then(serde_json::Value::as_u64).unwrap_or(0),
            last_holder: state
                .get("last_holder")
                .and_then(serde_json::Value::as_u64)
                .and_then(|pid| u32::try_from(pid).ok()),
            in_use: flag("in_use"),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.made.path()
    }

    /// The pipe's tokens.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The pipe's tokens, to change: give it one when [`Relay::wants_token`] says so.
    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }

    /// Readable when the pipe was read, written, opened or closed: then call
    /// [`Companion::settle`].
    pub fn watch(&self) -> std::os::fd::BorrowedFd<'_> {
        self.relay.watch()
    }

    /// Whether the pipe needs a token: someone has it open and it holds fewer spares than it
    /// may.
    pub fn wants_token(&self) -> bool {
        self.in_use && self.relay.wants_token()
    }

    /// Tokens recovered from readers that died holding them, since the start.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// The processes besides this one that have the pipe open.
    pub fn openers(&self) -> Vec<u32> {
        find_holders(self.made.id(), std::process::id())
    }

    /// Reads what happened to the pipe: what readers gave back beyond the spare, and, once
    /// nobody else has it open, what those who left took with them.
    pub fn settle(&mut self, now: Instant) -> Returned {
        let settled = self.relay.settle(now);
        if settled.garbage > 0 {
            warn!(
                "took {} byte(s) out of {} beyond its tokens: a client wrote back more than it \
                 took",
                settled.garbage,
                self.path().display()
            );
        }
        let mut returned = Returned { returned: settled.returned, lost: 0 };
        if settled.opened {
            self.set_in_use(true);
        }
        if settled.closed && self.recovery {
            self.check_idle(now, &mut returned);
        }
        returned
    }

    fn set_in_use(&mut self, in_use: bool) {
        self.in_use = in_use;
        self.relay.set_spares(SPARES);
    }

    /// If no other process has the pipe open, every token not in it is lost.
    fn check_idle(&mut self, now: Instant, returned: &mut Returned) {
        loop {
            let scan = match find_holder(self.made.id(), std::process::id(), self.last_holder) {
                Ok(scan) => scan,
                Err(error) => {
                    warn!("leak check on {} failed: {error}", self.path().display());
                    return;
                }
            };
            if let Some(pid) = scan.holder {
                debug!(pid, "companion FIFO still held; no leak check");
                self.last_holder = Some(pid);
                self.set_in_use(true);
                return;
            }
            self.last_holder = None;
            // A reader that opened the pipe after the scan may hold tokens the scan missed: its
            // open event says so. Then look again.
            let again = self.relay.settle(now);
            returned.returned += again.returned;
            if !again.opened {
                break;
            }
        }
        let lost = self.relay.forget_out();
        // Let go: the spares go back too, until someone opens the pipe again.
        self.set_in_use(false);
        returned.returned += self.relay.drain();
        if lost > 0 {
            self.recovered += lost as u64;
            info!(
                recovered = lost,
                "recovered {lost} token(s) from clients of {} that exited without returning them",
                self.path().display()
            );
        }
        returned.lost = lost;
    }
}
