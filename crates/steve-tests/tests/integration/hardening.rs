//! What a local user could try against root's daemon, each attack as a test, run as an ordinary
//! user the test creates (`steve_tests::attacker`) against a daemon run as root: using up its
//! descriptors, stalling its control socket. The server must keep serving tokens and must not
//! spin.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steve_tests::steve::{command, fuse_server, fuse_server_with, FifoServer, StopOnDrop};
use steve_tests::{attacker, command_as, cpu_seconds, wait_for, KillOnDrop};

/// A fifo server started through `prlimit --nofile=SOFT:HARD`, in a folder others can enter.
fn limited_server(dir: &tempfile::TempDir, soft: u32, hard: u32) -> FifoServer {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("jobserver");
    let mut serve = Command::new("prlimit");
    serve
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(steve_tests::steve::binary())
        .args(["serve", "--backend", "fifo", "-j", "2", "--path"])
        .arg(&path);
    FifoServer::start_command(serve, &path, &dir.path().join("steve.log"))
        .unwrap_or_else(|failure| panic!("steve serve under prlimit: {failure:?}"))
}

#[test]
fn the_descriptor_limit_is_raised_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = limited_server(&dir, 256, 8192);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["8192", "8192"], "{line}");
}

/// A process as `uid` that opens `count` connections to `socket` and holds them, sending each a
/// status request and reading nothing if `ask`; killed when dropped.
fn hold_connections(
    uid: u32,
    gid: u32,
    socket: &std::path::Path,
    count: usize,
    ask: bool,
) -> KillOnDrop {
    let request = if ask { r#"s.sendall(b'{"command":"status"}\n')"# } else { "pass" };
    let script = format!(
        "import socket, sys, time\n\
             held = []\n\
             for _ in range({count}):\n\
             \x20   s = socket.socket(socket.AF_UNIX)\n\
             \x20   try:\n\
             \x20       s.connect(sys.argv[1])\n\
             \x20       {request}\n\
             \x20   except OSError:\n\
             \x20       break\n\
             \x20   held.append(s)\n\
             print(len(held), flush=True)\n\
             time.sleep(60)\n"
    );
    // Debian's python3 (scripts/test installs it): another user can run it.
    let mut child = command_as(uid, gid, "/usr/bin/python3")
        .args(["-c", &script])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let held: usize = line.trim().parse().unwrap_or_else(|_| panic!("the holder said {line:?}"));
    assert_eq!(held, count, "uid {uid} could open only {held} connections");
    KillOnDrop(child)
}

/// One token out of the pipe and back, as a client does.
fn round_trip(path: &std::path::Path) {
    let mut pipe = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    pipe.read_exact(&mut byte).unwrap();
    pipe.write_all(&byte).unwrap();
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn out_of_descriptors_the_server_neither_spins_nor_stops_serving() {
    let (uid, gid) = attacker();
    let dir = tempfile::tempdir().unwrap();
    // 40 descriptors: a dozen are the server's own, and three users' connections (16 each, the
    // most one user may have) are more than the rest.
    let server = limited_server(&dir, 40, 40);
    let holders: Vec<KillOnDrop> = [(uid, gid), (65534, 65534), (0, 0)]
        .into_iter()
        .map(|(uid, gid)| hold_connections(uid, gid, &server.control, 16, false))
        .collect();
    // One more connection finds the server out of descriptors.
    let _late = std::os::unix::net::UnixStream::connect(&server.control);
    server.wait_for_log("out of file descriptors");
    let before = cpu_seconds(server.pid());
    let started = Instant::now();
    let mut round_trips = 0;
    while started.elapsed() < Duration::from_secs(2) {
        round_trip(&server.path);
        round_trips += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let used = cpu_seconds(server.pid()) - before;
    assert!(round_trips > 10, "tokens stopped flowing: {round_trips} round trips");
    // A spinning loop would use all of the 2 s.
    assert!(used < 0.5, "the server used {used:.2} s of CPU in 2 s out of descriptors");
    drop(holders);
    let status = wait_for("the control socket to answer again", Duration::from_secs(20), || {
        let output = command().args(["status", "--control"]).arg(&server.control).output().ok()?;
        output.status.success().then_some(output)
    });
    assert!(String::from_utf8_lossy(&status.stdout).contains("fifo jobserver"));
    assert_eq!(server.tokens(), 2);
}

/// A holder of one token of the fuse file at `file` whose command line is about 1 MB, so that
/// every status answer is large.
fn long_command_line_holder(file: &std::path::Path) -> Child {
    let padding: Vec<String> = (0..10).map(|n| format!("{n}{}", "x".repeat(100_000))).collect();
    // The process itself takes the token (a dd would take it for itself and exit).
    let script = "import os, sys, time\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  os.read(fd, 1)\n\
                  print('held', flush=True)\n\
                  time.sleep(60)\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(file)
        .args(&padding)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");
    child
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn status_readers_that_never_read_do_not_stall_token_traffic() {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = attacker();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mountpoint = dir.path().join("mnt");
    let (server, file, control) = fuse_server(&mountpoint, 4);
    let mut holder = long_command_line_holder(&file);
    // Sixteen status requests whose 1 MB answers nobody reads.
    let stalled = hold_connections(uid, gid, &control, 16, true);
    // Round trips for 4 s: a loop that blocked on a reader that does not read would stop them
    // for a second or more at a time, the longest round trip says.
    let started = Instant::now();
    let (mut round_trips, mut longest) = (0, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(4) {
        let one = Instant::now();
        round_trip(&file);
        longest = longest.max(one.elapsed());
        round_trips += 1;
    }
    assert!(round_trips > 100, "{round_trips} round trips in 4 s while status readers stall");
    assert!(longest < Duration::from_millis(500), "a round trip took {longest:?}");
    let status = command().args(["get", "held", "--control"]).arg(&control).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "1\n", "{status:?}");
    drop(stalled);
    let _ = holder.kill();
    let _ = holder.wait();
    drop(server);
}

/// MAKEFLAGS naming a regular file (`fifo:FILE`) does not make `steve exec` write a token into
/// it, as make would ("precious" became "ppecious"): one error line, the command not run.
#[test]
fn steve_exec_never_writes_a_token_into_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    let marker = dir.path().join("ran");
    let output = command()
        .args(["exec", "--", "touch"])
        .arg(&marker)
        .env("MAKEFLAGS", format!(" -j4 --jobserver-auth=fifo:{}", precious.display()))
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let lines = steve_tests::steve::stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("is a regular file, not a named pipe"), "{}", lines[0]);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");
    assert!(!marker.exists(), "the command ran");
}

/// A user who fills the fifo server's pipe with bytes (64 KiB of them, over and over) hangs no
/// build: the server takes out whatever is beyond the pool as it is written, a make runs to the
/// end, and every report keeps `free + held + withheld == size`.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root and GNU make 4.4.1; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn filling_the_fifo_servers_pipe_hangs_no_build() {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = attacker();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("jobserver");
    let server = FifoServer::start_at(&path, &dir.path().join("steve.log"), &["-j", "3"]).unwrap();
    let script = "import os, sys, time\n\
                  fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK)\n\
                  end = time.time() + 4\n\
                  while time.time() < end:\n\
                  \x20   try:\n\
                  \x20       os.write(fd, b'+' * 65536)\n\
                  \x20   except BlockingIOError:\n\
                  \x20       time.sleep(0.001)\n";
    let mut flood =
        command_as(uid, gid, "/usr/bin/python3").args(["-c", script]).arg(&path).spawn().unwrap();
    let project = tempfile::tempdir().unwrap();
    let log = project.path().join("timeline");
    steve_tests::projects::makefile(project.path(), "job", 12, 0.2, &log);
    let mut make =
        Group::spawn(server.client(steve_tests::clients::make44()).current_dir(project.path()));
    let mut checked = 0;
    let done =
        wait_for("make to finish while the pipe is flooded", Duration::from_secs(60), || {
            let status = server.status_json();
            let pool = &status["pool"];
            let (size, free, held, withheld) = (
                pool["size"].as_u64().unwrap(),
                pool["free"].as_u64().unwrap(),
                pool["held"].as_u64().unwrap(),
                pool["withheld"].as_u64().unwrap(),
            );
            assert_eq!(free + held + withheld, size, "{pool}");
            assert!(size == 3 && free <= 3, "{pool}");
            checked += 1;
            make.try_wait()
        });
    assert!(done.success(), "make failed");
    let _ = flood.wait();
    assert!(checked > 1, "the reports were not checked while make ran");
    let line = server.wait_for_log("beyond the pool");
    assert!(line.contains("took"), "{line}");
    // The last bytes are trimmed as they come; then the pool is whole.
    wait_for("the pool to be whole", Duration::from_secs(10), || {
        (server.tokens() == 3).then_some(())
    });
}

/// A command in a process group of its own, killed with the whole group when dropped before
/// it ended: a test that fails leaves no make blocked on a pipe behind (it would hold the test's
/// output open).
struct Group(Option<Child>);

impl Group {
    fn spawn(command: &mut Command) -> Group {
        use std::os::unix::process::CommandExt;
        Group(Some(command.process_group(0).spawn().unwrap()))
    }

    /// Its exit status once it has ended (then it is reaped, and never signalled).
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.0.as_mut()?.try_wait().unwrap()?;
        self.0 = None;
        Some(status)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Forces the kernel to give a new process the thread id of a thread that just exited (through
/// `/proc/sys/kernel/ns_last_pid`): the new process's token must be booked to it, not to the
/// old thread's process, which holds nothing.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_reused_thread_id_books_tokens_to_the_new_process_forcing_pid_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let (server, file, control) = fuse_server(&mountpoint, 2);
    // Process A: a thread takes a token and gives it back, then exits; A lives on.
    let thread_client = "import os, sys, threading, time\n\
                         tid = []\n\
                         def job():\n\
                         \x20   tid.append(threading.get_native_id())\n\
                         \x20   fd = os.open(sys.argv[1], os.O_RDWR)\n\
                         \x20   os.write(fd, os.read(fd, 1))\n\
                         \x20   os.close(fd)\n\
                         t = threading.Thread(target=job)\n\
                         t.start()\n\
                         t.join()\n\
                         print(tid[0], flush=True)\n\
                         time.sleep(60)\n";
    // Process B: takes a token and keeps it.
    let holder = "import os, sys, time\n\
                  fd = os.open(sys.argv[1], os.O_RDWR)\n\
                  os.read(fd, 1)\n\
                  print(os.getpid(), flush=True)\n\
                  time.sleep(60)\n";
    let start = |script: &str| -> (KillOnDrop, u32) {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        (KillOnDrop(child), line.trim().parse().unwrap())
    };
    let mut reused = false;
    for _ in 0..20 {
        let (old, tid) = start(thread_client);
        // The next pid the kernel hands out is the exited thread's id.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (tid - 1).to_string()).unwrap();
        let (new, pid) = start(holder);
        if pid != tid {
            continue; // another process took the id first: try again
        }
        reused = true;
        let status =
            command().args(["status", "--json", "--control"]).arg(&control).output().unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let holders = status["holders"].as_array().unwrap().clone();
        let booked: Vec<(u64, u64)> = holders
            .iter()
            .map(|holder| (holder["pid"].as_u64().unwrap(), holder["tokens"].as_u64().unwrap()))
            .collect();
        assert_eq!(booked, vec![(u64::from(pid), 1)], "old process {}: {status}", old.0.id());
        drop((old, new));
        break;
    }
    assert!(reused, "the kernel never gave the thread id to a new process in 20 tries");
    drop(server);
}

/// The attacker's `swap-on-create` role (see the compliance binary) on `dir/name`, watching.
fn swapper(
    (uid, gid): (u32, u32),
    dir: &std::path::Path,
    name: &str,
    victim: &std::path::Path,
) -> KillOnDrop {
    let mut swapper = command_as(uid, gid, env!("CARGO_BIN_EXE_compliance"))
        .arg("swap-on-create")
        .arg(dir)
        .arg(name)
        .arg(victim)
        .arg("300")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(swapper.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "watching");
    KillOnDrop(swapper)
}

/// In a directory anyone may write (a shared build directory without the sticky bit), a user
/// swaps the control socket's name for a symbolic link to a root-owned file, over and over,
/// while root's steve starts 200 times: the file keeps its mode, owner and contents.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_symlink_swapped_in_for_the_control_socket_never_gets_its_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = attacker();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = private.path().join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let control = shared.path().join("jobserver.control");
    // Renames a link over the socket's name the moment it is created (inotify): the window
    // between making the socket and setting its mode and group.
    let _swapper = swapper((uid, gid), shared.path(), "jobserver.control", &victim);
    let path = shared.path().join("jobserver");
    let mut served = 0;
    for _ in 0..200 {
        let mut serve = command();
        serve.args(["serve", "--backend", "fifo", "-j", "1", "--mode", "0666", "--path"]);
        serve.arg(&path).arg("--group").arg(gid.to_string());
        let log = shared.path().join("steve.log");
        if let Ok(server) = FifoServer::start_command(serve, &path, &log) {
            served += 1;
            let warning =
                format!("{} may be changed by users other than root", shared.path().display());
            assert!(
                server.log().contains(&warning),
                "no warning about the shared directory: {}",
                server.log()
            );
            drop(server);
        }
        // A name the swapper left behind is its own link: clear it for the next start.
        let _ = std::fs::remove_file(&control);
    }
    let metadata = std::fs::metadata(&victim).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o600, "the victim's mode changed");
    assert_eq!((metadata.uid(), metadata.gid()), (0, 0), "the victim's owner changed");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
    eprintln!("{served} of 200 starts served despite the swapping");
}

/// In a directory anyone may write, a user swaps root's fuse mount point for a symbolic link to
/// a root-owned directory (moving the directory steve made out of the way) the moment it is
/// made, while root's steve starts 200 times: nothing is ever mounted on the victim, and no
/// mount is left in the shared directory after a server stops.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root and /dev/fuse; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_symlink_swapped_in_for_the_mount_point_never_gets_the_mount() {
    use std::os::unix::fs::PermissionsExt;
    let attacker = attacker();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = private.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("kept"), "secret").unwrap();
    let _swapper = swapper(attacker, shared.path(), "fuse", &victim);
    let mountpoint = shared.path().join("fuse");
    let steve_mounts = || {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let watched = [shared.path(), private.path()];
        mountinfo
            .lines()
            .filter(|line| {
                let point = line.split(' ').nth(4).unwrap_or_default();
                watched.iter().any(|dir| point.starts_with(dir.to_str().unwrap()))
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (mut served, mut refused) = (0, 0);
    for _ in 0..200 {
        let mut server = command()
            .args(["serve", "--backend", "fuse", "-j", "1", "--mountpoint"])
            .arg(&mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut announcement = String::new();
        BufReader::new(server.stdout.take().unwrap()).read_line(&mut announcement).unwrap();
        let mut server = StopOnDrop(server);
        if announcement.starts_with("MAKEFLAGS=") {
            served += 1;
            assert!(
                steve_mounts().iter().all(|line| !line.contains(victim.to_str().unwrap())),
                "mounted on the victim: {:?}",
                steve_mounts()
            );
        } else {
            refused += 1;
            let mut stderr = String::new();
            server.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            assert!(server.0.wait().unwrap().code() != Some(0), "{stderr}");
        }
        drop(server);
        assert_eq!(steve_mounts(), Vec::<String>::new(), "a mount outlived its server");
        // Clear what the swapper left (its links, the directories it moved) for the next start.
        for entry in std::fs::read_dir(shared.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name() != Some(std::ffi::OsStr::new(".swap")) {
                let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
            }
        }
    }
    assert_eq!(std::fs::read_to_string(victim.join("kept")).unwrap(), "secret");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "something was made in the victim");
    eprintln!("{served} of 200 starts served, {refused} refused, despite the swapping");
}

/// In a shared directory, a user's FIFO with a forged lock file beside it ("steve 4242", as a
/// dead steve would leave) does not make root's steve remove the FIFO: it refuses in one line
/// and leaves both files as they were.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_forged_lock_file_does_not_get_another_users_pipe_removed() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = attacker();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = shared.path().join("jobserver");
    let lock = shared.path().join("jobserver.lock");
    let made = command_as(uid, gid, "/usr/bin/python3")
        .args([
            "-c",
            "import os, sys; os.mkfifo(sys.argv[1]); open(sys.argv[2], 'w').write('steve 4242\\n')",
        ])
        .arg(&path)
        .arg(&lock)
        .status()
        .unwrap();
    assert!(made.success());
    let failure = FifoServer::start_at(&path, &shared.path().join("steve.log"), &["-j", "2"])
        .map(|server| panic!("steve served on {}", server.path.display()))
        .unwrap_err();
    assert_eq!(failure.stderr_lines.len(), 1, "{:?}", failure.stderr_lines);
    assert!(
        failure.stderr_lines[0].contains(&format!("belongs to uid {uid}")),
        "{:?}",
        failure.stderr_lines
    );
    for file in [&path, &lock] {
        let metadata = std::fs::symlink_metadata(file).expect("the user's file is still there");
        assert_eq!(metadata.uid(), uid, "{}", file.display());
    }
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "steve 4242\n");
}

/// `--jobserver-auth=1,1` with standard output a pipe made `steve exec` wait on its own output
/// forever: standard descriptors are never a jobserver.
#[test]
fn steve_exec_never_takes_its_own_standard_output_for_a_jobserver() {
    let mut exec = command();
    exec.args(["exec", "--", "true"])
        .env("MAKEFLAGS", " -j2 --jobserver-auth=1,1")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MFLAGS");
    let output = steve_tests::output_within(&mut exec, Duration::from_secs(20))
        .expect("steve exec waited on its own standard output");
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let lines = steve_tests::steve::stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("descriptor 1 is standard input, output or error"), "{}", lines[0]);
}

/// A companion FIFO put in a directory others may change (`--fifo`) is warned about, as the
/// jobserver's and the control socket's directories are.
#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs root and /dev/fuse; scripts/test runs it (it sets STEVE_TEST_ALL=1)"
)]
fn a_companion_fifo_in_a_shared_directory_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let private = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = private.path().join("steve.log");
    let fifo = shared.path().join("companion.fifo");
    let args = ["-j".into(), "2".into(), "--fifo".into(), fifo.into_os_string()];
    let _server = fuse_server_with(&private.path().join("mnt"), &args, Some(&log));
    let said = std::fs::read_to_string(&log).unwrap();
    let warning = format!("{} may be changed by users other than root", shared.path().display());
    assert!(said.contains(&warning), "{said}");
}
