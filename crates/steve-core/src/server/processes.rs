//! The client processes a server watches: a kernel request names the calling *thread*, the
//! books are kept per *process*, and a pidfd per process, in the event loop's epoll, tells when
//! it exits. Also the command lines status reports show, and the build each process belongs to.
//!
//! A *build* is a top-level client and the client processes under it, told apart by process
//! ancestry: when a process is first seen, its parents are read from `/proc/PID/stat` (each with
//! its start time, so that a reused pid is not taken for its former owner), up to
//! [`MAX_LINEAGE`] of them. The nearest one that is itself a client names the build; a process
//! with none is a new build, and a build found to run under it (its top-level make asked for
//! nothing until its sub-makes had) joins it. Sessions and process groups would not do: two
//! builds started from one shell share both, and ninja puts each of its jobs in a group of its
//! own. A process whose parents cannot be read is a build of its own.
#![forbid(unsafe_code)]

use rustc_hash::{FxHashMap, FxHashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::accounting::device::Pid;
use crate::accounting::shares::{BuildId, Owner, Uid};
use crate::sys::pidfd_open;

/// The most parents read to find a process's build: deeper trees are cut there (a user who
/// nests processes deeper only makes builds of their own).
pub const MAX_LINEAGE: usize = 64;

/// A process being watched.
#[derive(Debug)]
struct Watched {
    pidfd: OwnedFd,
    name: String,
    threads: Vec<u32>,
    /// Its start time (clock ticks after boot), which tells it from a later process with its pid.
    started: u64,
    /// Its parents, nearest first, each with its start time.
    lineage: Vec<(Pid, u64)>,
    owner: Owner,
}

/// The processes seen, by thread-group id.
#[derive(Debug, Default)]
pub struct Processes {
    watched: FxHashMap<Pid, Watched>,
    process_of_thread: FxHashMap<u32, Pid>,
    /// Processes watched since the event loop last added their pidfds to its epoll.
    unregistered: Vec<Pid>,
    /// Each build's top-level client (which may have exited since), while any of its processes
    /// is watched.
    builds: FxHashMap<BuildId, Pid>,
    next_build: u64,
    /// Owners set or changed since the server last asked.
    owner_changes: Vec<(Pid, Owner)>,
    /// How many watched processes each build has: a build goes when its last one does.
    members: FxHashMap<BuildId, usize>,
    /// For each process (with its start time) in a watched process's lineage, the watched
    /// processes under it: a new build finds the builds running under it here, not by a walk
    /// over every process.
    descendants: FxHashMap<(Pid, u64), FxHashSet<Pid>>,
    /// Parents of new clients that are no clients themselves (a shell, `make`'s `sh -c`, the
    /// process that forks a thousand), with their lineage, each with a pidfd that says whether
    /// it is still that process: the siblings after the first find their lineage here with one
    /// poll instead of a read of `/proc/PID/stat` per ancestor.
    ancestors: FxHashMap<Pid, Ancestor>,
}

/// A parent remembered in [`Processes::ancestors`].
#[derive(Debug)]
struct Ancestor {
    pidfd: OwnedFd,
    started: u64,
    lineage: Vec<(Pid, u64)>,
}

/// The most parents remembered; all are forgotten when it is reached (a pidfd each).
const MAX_ANCESTORS: usize = 256;

/// A watched process as a handover writes it: everything but its pidfd, which goes as a
/// descriptor of its own.
#[derive(serde::Serialize, serde::Deserialize)]
struct WatchedState {
    pid: Pid,
    name: String,
    threads: Vec<u32>,
    started: u64,
    lineage: Vec<(Pid, u64)>,
    owner: Owner,
}

/// Why a caller could not be watched: it is already gone.
#[derive(Debug)]
pub struct Gone(pub io::Error);

impl Processes {
    /// The processes as a handover writes them, and their pidfds, each named `pid:PID`.
    pub fn export(&self) -> (serde_json::Value, Vec<(String, BorrowedFd<'_>)>) {
        let watched: Vec<WatchedState> = self
            .watched
            .iter()
            .map(|(pid, watched)| WatchedState {
                pid: *pid,
                name: watched.name.clone(),
                threads: watched.threads.clone(),
                started: watched.started,
                lineage: watched.lineage.clone(),
                owner: watched.owner,
            })
            .collect();
        let builds: Vec<(BuildId, Pid)> = self.builds.iter().map(|(b, p)| (*b, *p)).collect();
        let state = serde_json::json!({
            "watched": watched,
            "builds": builds,
            "next_build": self.next_build,
        });
        let fds = self
            .watched
            .iter()
            .map(|(pid, watched)| (format!("pid:{pid}"), watched.pidfd.as_fd()))
            .collect();
        (state, fds)
    }

    /// The processes a predecessor watched, from its state and their pidfds (all to be added to
    /// the loop's epoll). A process whose pidfd did not come is opened again and kept only if
    /// its start time is the one written (the same process, not a later one with its pid); the
    /// pids of those gone are returned, for the server to reclaim what they held.
    pub fn adopt(
        state: &serde_json::Value,
        descriptors: &mut crate::handover::Descriptors,
    ) -> Result<(Processes, Vec<Pid>), String> {
        let field = |name: &str| state.get(name).cloned().unwrap_or(serde_json::Value::Null);
        let watched: Vec<WatchedState> =
            serde_json::from_value(field("watched")).map_err(|e| e.to_string())?;
        let builds: Vec<(BuildId, Pid)> =
            serde_json::from_value(field("builds")).map_err(|e| e.to_string())?;
        let mut processes = Processes {
            builds: builds.into_iter().collect(),
            next_build: field("next_build").as_u64().unwrap_or(0),
            ..Processes::default()
        };
        let mut gone = Vec::new();
        for state in watched {
            let pidfd = match descriptors.take(&format!("pid:{}", state.pid)) {
                Ok(pidfd) => pidfd,
                Err(_) => match pidfd_open(state.pid) {
                    Ok(pidfd) if stat_of(state.pid).is_some_and(|s| s.started == state.started) => {
                        pidfd
                    }
                    _ => {
                        gone.push(state.pid);
                        continue;
                    }
                },
            };
            for tid in &state.threads {
                processes.process_of_thread.insert(*tid, state.pid);
            }
            processes.unregistered.push(state.pid);
            let watched = Watched {
                pidfd,
                name: state.name,
                threads: state.threads,
                started: state.started,
                lineage: state.lineage,
                owner: state.owner,
            };
            processes.insert(state.pid, watched);
        }
        // A build whose every process went during the handover goes too.
        let members = &processes.members;
        processes.builds.retain(|build, _| members.contains_key(build));
        Ok((processes, gone))
    }

    /// Watches `pid`, which held tokens from a server that died, if it is still the process
    /// that started at `started` (a pid reused since is someone else). Returns whether it is.
    pub fn watch_survivor(&mut self, pid: Pid, started: u64) -> bool {
        if self.watched.contains_key(&pid) {
            return self.watched[&pid].started == started;
        }
        let Ok(pidfd) = pidfd_open(pid) else { return false };
        // Read after the pidfd is open: a pid reused before that has another start time.
        let Lineage { started: now_started, name, parents: lineage } = self.lineage_of(pid);
        let Ok((group, user)) = thread_group_of(pid) else { return false };
        if now_started != started || group != pid {
            return false;
        }
        self.unregistered.push(pid);
        let owner = self.place(pid, started, &lineage, user);
        let watched = Watched { pidfd, name, threads: Vec::new(), started, lineage, owner };
        self.insert(pid, watched);
        true
    }

    /// `pid`'s start time (clock ticks after boot), while it is watched.
    pub fn started(&self, pid: Pid) -> Option<u64> {
        self.watched.get(&pid).map(|watched| watched.started)
    }

    /// The process of thread `tid`, watched from now on; `user` is the user the kernel checked
    /// its access as (a FUSE request's uid), whom its build counts under.
    ///
    /// A thread-group leader (most clients: make, a compiler) gets a pidfd of its own, so its
    /// tid is its pid without reading `/proc`; any other thread's tid is refused (`ENOENT`, or
    /// `EINVAL` before Linux 6.9), and `/proc/TID/status` says its thread group.
    pub fn resolve(&mut self, tid: u32, user: Uid) -> Result<Pid, Gone> {
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
        let (pid, leader_pidfd) = match pidfd_open(tid) {
            Ok(pidfd) => (tid, Some(pidfd)),
            // Another thread's tid: ENOENT since Linux 6.9 (pidfds of threads), EINVAL before.
            Err(error)
                if matches!(error.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::EINVAL)) =>
            {
                (thread_group_of(tid).map_err(Gone)?.0, None)
            }
            Err(error) => return Err(Gone(error)),
        };
        if !self.watched.contains_key(&pid) {
            let pidfd = match leader_pidfd {
                Some(pidfd) => pidfd,
                None => pidfd_open(pid).map_err(Gone)?,
            };
            self.unregistered.push(pid);
            let Lineage { started, name, parents: lineage } = self.lineage_of(pid);
            let owner = self.place(pid, started, &lineage, user);
            let watched = Watched { pidfd, name, threads: Vec::new(), started, lineage, owner };
            self.insert(pid, watched);
        }
        let watched = self.watched.get_mut(&pid).expect("watched above");
        watched.threads.push(tid);
        self.process_of_thread.insert(tid, pid);
        Ok(pid)
    }

    /// `pid`'s start time, name and parents, nearest first, up to [`MAX_LINEAGE`]; init and
    /// the kernel's threads (pids 1, 2 and their parent 0) end it. A parent that is a live
    /// watched client, or one remembered in `ancestors`, gives the rest of the line at once;
    /// a parent read from `/proc` is remembered for its next child.
    fn lineage_of(&mut self, pid: Pid) -> Lineage {
        let Some(stat) = stat_of(pid) else {
            return Lineage { started: 0, name: "?".to_string(), parents: Vec::new() };
        };
        let parent = stat.parent;
        let parents = match self.known_alive(parent) {
            Some(parents) => parents,
            None => {
                // The pidfd first: a pid reused before it opens has another start time.
                let pidfd = (parent > 2).then(|| pidfd_open(parent).ok()).flatten();
                let parents = parents_from(parent);
                if let (Some(pidfd), Some((_, started))) = (pidfd, parents.first()) {
                    if self.ancestors.len() >= MAX_ANCESTORS {
                        self.ancestors.clear();
                    }
                    let lineage = parents[1..].to_vec();
                    self.ancestors.insert(parent, Ancestor { pidfd, started: *started, lineage });
                }
                parents
            }
        };
        Lineage { started: stat.started, name: stat.name, parents }
    }

    /// `parent` and its line, if it is a watched client or a remembered parent that has not
    /// exited since (its pidfd is not readable: the very process, not one given its pid).
    fn known_alive(&mut self, parent: Pid) -> Option<Vec<(Pid, u64)>> {
        let (started, lineage) = if let Some(watched) = self.watched.get(&parent) {
            (!is_readable(watched.pidfd.as_fd())).then_some((watched.started, &watched.lineage))?
        } else {
            let ancestor = self.ancestors.get(&parent)?;
            if is_readable(ancestor.pidfd.as_fd()) {
                self.ancestors.remove(&parent);
                return None;
            }
            (ancestor.started, &ancestor.lineage)
        };
        let mut parents = Vec::with_capacity(lineage.len() + 1);
        parents.push((parent, started));
        parents.extend(lineage.iter().take(MAX_LINEAGE - 1));
        Some(parents)
    }

    /// The build a new process belongs to: its nearest client parent's, or a new one, which the
    /// builds already running under it join.
    fn place(&mut self, pid: Pid, started: u64, lineage: &[(Pid, u64)], user: Uid) -> Owner {
        let parent_build = lineage.iter().find_map(|(parent, parent_started)| {
            let watched = self.watched.get(parent)?;
            (watched.started == *parent_started).then_some(watched.owner.build)
        });
        let owner = match parent_build {
            Some(build) => Owner { build, user },
            None => {
                let build = BuildId(self.next_build);
                self.next_build += 1;
                self.builds.insert(build, pid);
                let under: Vec<Pid> = self
                    .descendants
                    .get(&(pid, started))
                    .map(|members| members.iter().copied().collect())
                    .unwrap_or_default();
                for member in under {
                    let Some(watched) = self.watched.get_mut(&member) else { continue };
                    let old = std::mem::replace(&mut watched.owner.build, build);
                    if old == build {
                        continue;
                    }
                    self.owner_changes.push((member, watched.owner));
                    self.leave_build(old);
                    *self.members.entry(build).or_default() += 1;
                }
                Owner { build, user }
            }
        };
        self.owner_changes.push((pid, owner));
        owner
    }

    /// Watches `pid` from now on, counted in its build and indexed under its parents.
    fn insert(&mut self, pid: Pid, watched: Watched) {
        *self.members.entry(watched.owner.build).or_default() += 1;
        for ancestor in &watched.lineage {
            self.descendants.entry(*ancestor).or_default().insert(pid);
        }
        self.watched.insert(pid, watched);
    }

    /// One process fewer in `build`; the build goes with its last.
    fn leave_build(&mut self, build: BuildId) {
        if let Some(count) = self.members.get_mut(&build) {
            *count -= 1;
            if *count == 0 {
                self.members.remove(&build);
                self.builds.remove(&build);
            }
        }
    }

    /// The owners set or changed since the last call, for the server to give its ledger.
    pub fn take_owner_changes(&mut self) -> Vec<(Pid, Owner)> {
        std::mem::take(&mut self.owner_changes)
    }

    /// `pid`'s build and user, while it is watched.
    pub fn owner(&self, pid: Pid) -> Option<Owner> {
        self.watched.get(&pid).map(|watched| watched.owner)
    }

    /// A build's top-level client.
    pub fn build_root(&self, build: BuildId) -> Option<Pid> {
        self.builds.get(&build).copied()
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
        for ancestor in &watched.lineage {
            if let Some(under) = self.descendants.get_mut(ancestor) {
                under.remove(&pid);
                if under.is_empty() {
                    self.descendants.remove(ancestor);
                }
            }
        }
        self.leave_build(watched.owner.build);
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

/// The thread-group id of thread `tid` and its real user id, from `/proc/TID/status`.
fn thread_group_of(tid: u32) -> io::Result<(Pid, Uid)> {
    let mut buffer = [0u8; PROC_READ];
    let status = read_proc(&format!("/proc/{tid}/status"), &mut buffer)?;
    let field = |name: &str| -> Option<u32> {
        let value = status.lines().find_map(|line| line.strip_prefix(name))?;
        value.split_whitespace().next()?.parse().ok()
    };
    match (field("Tgid:"), field("Uid:")) {
        (Some(pid), Some(uid)) => Ok((pid, uid)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "no Tgid or Uid in /proc status")),
    }
}

/// The most of a `/proc` file read: `status` is some 1.5 KiB, `stat` a few hundred bytes.
const PROC_READ: usize = 4096;

/// The start of `path`, a `/proc` file, in one read into `buffer`: open, read, close, where
/// `fs::read_to_string` adds a `statx` and a read to find the end. The server reads a few
/// for every new client process, so these are most of what connecting one costs.
fn read_proc<'a>(path: &str, buffer: &'a mut [u8]) -> io::Result<&'a str> {
    use std::io::Read;
    let len = fs::File::open(path)?.read(buffer)?;
    std::str::from_utf8(&buffer[..len])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// What `/proc/PID/stat` says of a process: its parent, start time and command name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    parent: Pid,
    started: u64,
    name: String,
}

fn stat_of(pid: Pid) -> Option<Stat> {
    let mut buffer = [0u8; PROC_READ];
    parse_stat(read_proc(&format!("/proc/{pid}/stat"), &mut buffer).ok()?)
}

/// A process's parent and start time, from `/proc/PID/stat`.
pub fn parent_and_start(pid: Pid) -> Option<(Pid, u64)> {
    stat_of(pid).map(|stat| (stat.parent, stat.started))
}

/// [`stat_of`]'s parser: the name in parentheses (which may hold spaces and parentheses, and
/// so runs to the last `)`), the fourth field and the twenty-second.
fn parse_stat(stat: &str) -> Option<Stat> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let mut fields = stat[close + 1..].split_whitespace();
    // After the name: state (field 3), ppid (4), ..., starttime (22).
    let parent = fields.nth(1)?.parse().ok()?;
    let started = fields.nth(17)?.parse().ok()?;
    Some(Stat { parent, started, name })
}

/// A process's start time and name, and its parents, nearest first.
struct Lineage {
    started: u64,
    name: String,
    parents: Vec<(Pid, u64)>,
}

/// `parent` and its parents, nearest first, up to [`MAX_LINEAGE`], read from `/proc`; init
/// and the kernel's threads (pids 1, 2 and their parent 0) end it.
fn parents_from(mut parent: Pid) -> Vec<(Pid, u64)> {
    let mut parents = Vec::new();
    while parent > 2 && parents.len() < MAX_LINEAGE {
        let Some((grandparent, parent_started)) = parent_and_start(parent) else { break };
        parents.push((parent, parent_started));
        parent = grandparent;
    }
    parents
}

fn is_readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user the tests' requests come as.
    const ME: Uid = 4321;

    #[test]
    fn a_parent_read_once_gives_its_line_to_its_next_children() {
        let mut processes = Processes::default();
        let spawn = || std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let (mut first, mut second) = (spawn(), spawn());
        let read = processes.lineage_of(first.id());
        let own = std::process::id();
        assert_eq!(
            read.parents,
            [
                vec![(own, parent_and_start(own).unwrap().1)],
                parents_from(std::os::unix::process::parent_id())
            ]
            .concat()
        );
        assert!(processes.ancestors.contains_key(&own), "this process is remembered");
        // The second child's line comes from what was remembered, and is the same.
        let remembered = processes.lineage_of(second.id());
        assert_eq!(remembered.parents, read.parents);
        assert_eq!(remembered.name, "sleep");
        for child in [&mut first, &mut second] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn a_remembered_parent_that_exited_is_forgotten() {
        let mut processes = Processes::default();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let pidfd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        processes.ancestors.insert(pid, Ancestor { pidfd, started: 1, lineage: vec![(1, 0)] });
        assert_eq!(processes.known_alive(pid), None);
        assert!(processes.ancestors.is_empty());
    }

    /// Another thread of this process, by its id, running until told to stop.
    fn another_thread() -> (u32, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            sender.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            stopped.recv().ok();
        });
        (receiver.recv().unwrap(), stop, thread)
    }

    #[test]
    fn a_thread_seen_before_its_leader_resolves_to_its_process_under_the_given_user() {
        let mut processes = Processes::default();
        let own = std::process::id();
        let (tid, stop, thread) = another_thread();
        assert_eq!(processes.resolve(tid, ME).unwrap(), own);
        assert_eq!(processes.resolve(own, ME).unwrap(), own);
        assert_eq!(processes.len(), 1);
        let owners = processes.take_owner_changes();
        assert_eq!(
            owners.iter().map(|(pid, owner)| (*pid, owner.user)).collect::<Vec<_>>(),
            [(own, ME)]
        );
        stop.send(()).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn threads_resolve_to_their_process() {
        let mut processes = Processes::default();
        let own = std::process::id();
        assert_eq!(processes.resolve(own, ME).unwrap(), own);
        // Another thread of this process resolves to the same process.
        let (tid, stop, thread) = another_thread();
        assert_ne!(tid, own);
        assert_eq!(processes.resolve(tid, ME).unwrap(), own);
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
        let pid = processes.resolve(child.id(), ME).unwrap();
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

    /// The pids of `parent`'s children, once it has `count` of them running `sleep`.
    fn sleeping_children(parent: u32, count: usize) -> Vec<u32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let children: Vec<u32> =
                fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .filter(|pid| {
                        fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                            == b"sleep\x0030\x00"
                    })
                    .collect();
            if children.len() == count {
                return children;
            }
            assert!(std::time::Instant::now() < deadline, "the children never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn builds_follow_ancestry_and_a_late_top_level_client_gathers_its_children() {
        // A shell (the top-level client) with two children (its sub-makes, say).
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let children = sleeping_children(shell.id(), 2);
        let mut processes = Processes::default();
        // The children ask first: neither is under the other, so each is a build.
        let first = processes.resolve(children[0], ME).unwrap();
        let second = processes.resolve(children[1], ME).unwrap();
        let (a, b) = (processes.owner(first).unwrap(), processes.owner(second).unwrap());
        assert_ne!(a.build, b.build);
        assert_eq!(a.user, ME, "the user the requests came as");
        assert_eq!(processes.build_root(a.build).unwrap(), first);
        assert_eq!(processes.take_owner_changes().len(), 2);
        // Then the shell: a new build, which both children join.
        let top = processes.resolve(shell.id(), ME).unwrap();
        let build = processes.owner(top).unwrap().build;
        assert!([first, second].iter().all(|pid| processes.owner(*pid).unwrap().build == build));
        let mut changes: Vec<Pid> =
            processes.take_owner_changes().into_iter().map(|(pid, _)| pid).collect();
        changes.sort_unstable();
        let mut expected = vec![first, second, top];
        expected.sort_unstable();
        assert_eq!(changes, expected, "each change is told once");
        assert_eq!(processes.build_root(build).unwrap(), top);
        assert!(processes.build_root(a.build).is_none(), "the joined builds are gone");
        // And this test process, the shell's parent, gathers all three in turn.
        let own = processes.resolve(std::process::id(), ME).unwrap();
        let outer = processes.owner(own).unwrap().build;
        assert_ne!(outer, build);
        assert!([first, second, top]
            .iter()
            .all(|pid| processes.owner(*pid).unwrap().build == outer));
        assert!(processes.build_root(build).is_none());
        processes.forget(own);
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(shell.id() as i32), None).ok();
        for pid in children {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .ok();
        }
        shell.wait().unwrap();
        processes.forget(first);
        processes.forget(second);
        assert!(processes.build_root(outer).is_some(), "one of its processes is still watched");
        processes.forget(top);
        assert!(processes.build_root(outer).is_none());
    }

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let fields = (5..=22).map(|n| n.to_string()).collect::<Vec<_>>().join(" ");
        let stat = format!("77 (a) b (c) S 41 {fields} 0 0");
        // ppid is field 4; the start time field 22.
        let name = "a) b (c".to_string();
        assert_eq!(parse_stat(&stat), Some(Stat { parent: 41, started: 22, name }));
        assert_eq!(parse_stat("77 (cut short) S 41"), None);
        assert_eq!(parse_stat("no name at all"), None);
        let (parent, _) = parent_and_start(std::process::id()).unwrap();
        assert_eq!(parent, std::os::unix::process::parent_id());
        let own = Processes::default().lineage_of(std::process::id());
        assert_eq!(own.parents.first().map(|(pid, _)| *pid), Some(parent));
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(own.name, comm.trim_end());
    }
}
