//! The client processes a server watches: a kernel request names the calling *thread*, the
//! books are kept per *process*, and a pidfd per process, in the event loop's epoll, tells when
//! it exits. Also the command lines status reports show.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::accounting::device::Pid;
use crate::sys::pidfd_open;

/// A process being watched.
#[derive(Debug)]
struct Watched {
    pidfd: OwnedFd,
    name: String,
    threads: Vec<u32>,
}

/// The processes seen, by thread-group id.
#[derive(Debug, Default)]
pub struct Processes {
    watched: HashMap<Pid, Watched>,
    process_of_thread: HashMap<u32, Pid>,
    /// Processes watched since the event loop last added their pidfds to its epoll.
    unregistered: Vec<Pid>,
}

/// Why a caller could not be watched: it is already gone.
#[derive(Debug)]
pub struct Gone(pub io::Error);

impl Processes {
    /// The process of thread `tid`, watched from now on.
    pub fn resolve(&mut self, tid: u32) -> Result<Pid, Gone> {
        if let Some(pid) = self.process_of_thread.get(&tid).copied() {
            // A thread id outlives nothing: once the thread exits, another process may get it.
            // Still in its process's task list, it is still that thread.
            if pid == tid || Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
                return Ok(pid);
            }
            self.process_of_thread.remove(&tid);
            if let Some(watched) = self.watched.get_mut(&pid) {
                watched.threads.retain(|thread| *thread != tid);
            }
        }
        let pid = thread_group_of(tid).map_err(Gone)?;
        let watched = match self.watched.entry(pid) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let pidfd = pidfd_open(pid).map_err(Gone)?;
                let name = fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|name| name.trim_end().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                self.unregistered.push(pid);
                entry.insert(Watched { pidfd, name, threads: Vec::new() })
            }
        };
        watched.threads.push(tid);
        self.process_of_thread.insert(tid, pid);
        Ok(pid)
    }

    /// Whether `pid` has exited (its pidfd is readable).
    pub fn has_exited(&self, pid: Pid) -> bool {
        self.watched.get(&pid).is_some_and(|watched| is_readable(watched.pidfd.as_fd()))
    }

    /// Forgets an exited process and returns its command name.
    pub fn forget(&mut self, pid: Pid) -> Option<String> {
        let watched = self.watched.remove(&pid)?;
        for tid in &watched.threads {
            self.process_of_thread.remove(tid);
        }
        Some(watched.name)
    }

    /// The command line of a live process, read now (only status reports need it).
    pub fn command(&self, pid: Pid) -> String {
        command_line(pid)
    }

    /// How many processes are watched.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether no process is watched.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// The processes watched since the last call, with their pidfds, for the event loop to add
    /// to its epoll. A pidfd closes when its process is forgotten, which takes it out again.
    pub(super) fn take_unregistered(&mut self) -> Vec<(Pid, BorrowedFd<'_>)> {
        let pids = std::mem::take(&mut self.unregistered);
        pids.into_iter()
            .filter_map(|pid| Some((pid, self.watched.get(&pid)?.pidfd.as_fd())))
            .collect()
    }
}

/// The most of a command line a status report shows: a client cannot make every report, and the
/// work of making it, as large as it likes.
pub const COMMAND_LINE_MAX: usize = 4096;

/// A process's command line from `/proc/PID/cmdline` (arguments joined by spaces, the first
/// [`COMMAND_LINE_MAX`] bytes, `...` after a longer one), or its `comm` name when that is empty
/// (kernel threads, zombies).
pub fn command_line(pid: u32) -> String {
    use std::io::Read;
    let mut raw = Vec::new();
    if let Ok(file) = std::fs::File::open(format!("/proc/{pid}/cmdline")) {
        let _ = file.take(COMMAND_LINE_MAX as u64 + 1).read_to_end(&mut raw);
    }
    let cut = raw.len() > COMMAND_LINE_MAX;
    raw.truncate(COMMAND_LINE_MAX);
    let words: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    if words.is_empty() {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|name| format!("[{}]", name.trim_end()))
            .unwrap_or_else(|_| "?".to_string())
    } else if cut {
        words.join(" ") + " ..."
    } else {
        words.join(" ")
    }
}

/// The thread-group id of thread `tid`, from `/proc/TID/status`.
fn thread_group_of(tid: u32) -> io::Result<Pid> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in /proc status"))
}

fn is_readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_resolve_to_their_process() {
        let mut processes = Processes::default();
        let own = std::process::id();
        assert_eq!(processes.resolve(own).unwrap(), own);
        // Another thread of this process resolves to the same process.
        let (sender, receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            sender.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            stopped.recv().ok();
        });
        let tid = receiver.recv().unwrap();
        assert_ne!(tid, own);
        assert_eq!(processes.resolve(tid).unwrap(), own);
        assert_eq!(processes.len(), 1);
        assert_eq!(processes.take_unregistered().len(), 1, "one new pidfd for the loop");
        assert!(processes.take_unregistered().is_empty());
        stop.send(()).unwrap();
        thread.join().unwrap();
        assert!(!processes.has_exited(own));
        // The command line, and on forgetting, the kernel's command name (the executable's
        // name, cut to 15 bytes).
        let exe = std::env::current_exe().unwrap();
        assert!(processes.command(own).starts_with(&exe.display().to_string()));
        let exe_name = exe.file_name().unwrap().to_string_lossy();
        assert_eq!(processes.forget(own).unwrap(), &exe_name[..exe_name.len().min(15)]);
    }

    #[test]
    fn an_exited_child_is_seen_and_forgotten() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // Until its exec is done, the child's arguments are not in place.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read(&cmdline).unwrap_or_default() != b"sleep\x0030\x00" {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut processes = Processes::default();
        let pid = processes.resolve(child.id()).unwrap();
        assert_eq!(processes.command(pid), "sleep 30");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(processes.has_exited(pid));
        assert_eq!(processes.forget(pid).as_deref(), Some("sleep"));
        assert!(processes.is_empty());
    }

    #[test]
    fn command_lines_come_from_proc() {
        let own = command_line(std::process::id());
        let exe = std::env::current_exe().unwrap();
        assert!(own.starts_with(&exe.display().to_string()), "{own}");
        assert_eq!(command_line(u32::MAX), "?");
        let long = "x".repeat(100_000);
        // A shell that waits for its input to close, with a 100 KB argument it ignores.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line", "sh", &long])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read(&cmdline).unwrap_or_default().starts_with(b"sh") {
            assert!(std::time::Instant::now() < deadline, "sh never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let shown = command_line(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(shown.len() <= COMMAND_LINE_MAX + 4 && shown.ends_with(" ..."), "{}", shown.len());
        assert!(shown.starts_with("sh -c read line sh xxx"), "{}", &shown[..40]);
    }
}
