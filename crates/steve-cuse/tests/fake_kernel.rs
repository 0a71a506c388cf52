//! The CUSE session against a fake kernel: byte-exact kernel messages over a SOCK_SEQPACKET
//! socketpair (which keeps message boundaries, as /dev/cuse does), the real `Session` serving
//! the other end, as a CUSE device or as a FUSE mount's file. Real child processes stand in for clients, so that reclaim through pidfds is
//! exercised too.

use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::sync::{Arc, Mutex};

use steve_core::accounting::device::Device;
use steve_core::accounting::limits::{Limits, SystemProbe, SystemReading};
use steve_core::makeflags::JobserverAuth;
use steve_core::server::probe::ProcProbe;
use steve_core::server::{Ended, Endpoint, EventLoop};
use steve_core::JobCount;
use steve_cuse::fuse::filesystem::{OneFile, FILE_ID};
use steve_cuse::ll::{self, kernel};
use steve_cuse::session::Session;

const O_NONBLOCK: u32 = nix::libc::O_NONBLOCK as u32;
const EAGAIN: i32 = -nix::libc::EAGAIN;

/// The kernel's end of a connection, with the session serving the other end in a thread.
struct FakeKernel {
    fd: OwnedFd,
    next_unique: u64,
    session: Option<JoinHandle<Ended>>,
}

impl FakeKernel {
    /// Connects, and checks the CUSE_INIT answer byte by byte.
    fn connect(jobs: usize) -> FakeKernel {
        FakeKernel::connect_with(jobs, None)
    }

    /// Connects with a session whose loop applies `limits`, reading the system from `probe`.
    fn connect_with(jobs: usize, governor: Option<(Limits, Box<dyn SystemProbe>)>) -> FakeKernel {
        let (kernel_end, daemon_end) = seqpacket_pair();
        let mut kernel = FakeKernel { fd: kernel_end, next_unique: 1, session: None };
        kernel.send(&kernel::cuse_init(1, 38));
        let session = std::thread::spawn(move || {
            let device = Device::new(JobCount::new(jobs).unwrap(), Duration::from_millis(500));
            let endpoint = endpoint("/dev/steve-test");
            let mut session = Session::start(daemon_end, "steve-test", device, endpoint).unwrap();
            let (limits, probe) =
                governor.unwrap_or_else(|| (Limits::default(), Box::new(ProcProbe::default())));
            serve_in_loop("cuse", &mut session, limits, probe)
        });
        let init = kernel.receive();
        let (len, error, unique, payload) = kernel::split_reply(&init);
        assert_eq!((len as usize, error, unique), (init.len(), 0, 1));
        let words: Vec<u32> = payload[..ll::CUSE_INIT_OUT_LEN]
            .chunks(4)
            .map(|word| u32::from_ne_bytes(word.try_into().unwrap()))
            .collect();
        // major 7, minor min(38, 31), unused, flags 0, max_read, max_write, dynamic numbers.
        assert_eq!(&words[..8], &[7, 31, 0, 0, 4096, 4096, 0, 0]);
        assert_eq!(&words[8..], &[0; 10], "spare words");
        assert_eq!(&payload[ll::CUSE_INIT_OUT_LEN..], b"DEVNAME=steve-test\0");
        kernel.session = Some(session);
        kernel
    }

    /// Connects as a CUSE device served from two threads, on two channels: the first, and the
    /// one returned (where a real kernel connection would have a clone).
    fn connect_two_channels(jobs: usize) -> (FakeKernel, OwnedFd) {
        let (kernel_end, daemon_end) = seqpacket_pair();
        let (second_kernel_end, second_daemon_end) = seqpacket_pair();
        let mut kernel = FakeKernel { fd: kernel_end, next_unique: 1, session: None };
        kernel.send(&kernel::cuse_init(1, 38));
        let session = std::thread::spawn(move || {
            let device = Device::new(JobCount::new(jobs).unwrap(), Duration::from_millis(500));
            let endpoint = endpoint("/dev/steve-test");
            let mut session = Session::start(daemon_end, "steve-test", device, endpoint).unwrap();
            session.add_channel(second_daemon_end).unwrap();
            session.set_threads(2).unwrap();
            serve_in_loop("cuse", &mut session, Limits::default(), Box::new(ProcProbe::default()))
        });
        kernel.receive();
        kernel.session = Some(session);
        (kernel, second_kernel_end)
    }

    /// Connects as a FUSE mount whose INIT was answered already (by fuser, in steve-fuse).
    fn mount(jobs: usize) -> FakeKernel {
        let (kernel_end, daemon_end) = seqpacket_pair();
        let session = std::thread::spawn(move || {
            let device = Device::new(JobCount::new(jobs).unwrap(), Duration::from_millis(500));
            let file = OneFile::new("jobserver", 1000, 1000, 0o600);
            let mut session =
                Session::for_mount(daemon_end, device, endpoint("/mnt/jobserver"), file).unwrap();
            serve_in_loop("fuse", &mut session, Limits::default(), Box::new(ProcProbe::default()))
        });
        FakeKernel { fd: kernel_end, next_unique: 1, session: Some(session) }
    }

    fn unique(&mut self) -> u64 {
        self.next_unique += 1;
        self.next_unique
    }

    fn send(&self, message: &[u8]) {
        send_on(&self.fd, message);
    }

    /// The next message from the daemon (waiting at most 10 s: a liveness bound).
    fn receive(&self) -> Vec<u8> {
        receive_on(&self.fd)
    }

    /// Sends a request and returns the answer to it, checking it answers that request.
    fn ask(&self, unique: u64, message: &[u8]) -> (i32, Vec<u8>) {
        self.send(message);
        let reply = self.receive();
        let (len, error, answered, payload) = kernel::split_reply(&reply);
        assert_eq!((len as usize, answered), (reply.len(), unique), "answer to another request");
        (error, payload.to_vec())
    }

    /// Proves that nothing else is on its way: the session handles requests in order, so an
    /// answer that was due would arrive before this IOCTL's.
    fn nothing_pending(&mut self) {
        let unique = self.unique();
        let (error, _) = self.ask(unique, &kernel::ioctl(unique, std::process::id(), 1, 0x5401));
        assert_eq!(error, -nix::libc::ENOTTY);
    }

    fn open(&mut self, pid: u32) -> u64 {
        let unique = self.unique();
        let (error, payload) = self.ask(unique, &kernel::open(unique, pid, 2));
        assert_eq!(error, 0);
        u64::from_ne_bytes(payload[..8].try_into().unwrap())
    }

    fn read(&mut self, pid: u32, flags: u32) -> (i32, Vec<u8>) {
        let unique = self.unique();
        self.ask(unique, &kernel::read(unique, pid, 1, 4096, flags))
    }

    /// A blocking read that waits; returns its request id.
    fn read_waiting(&mut self, pid: u32) -> u64 {
        let unique = self.unique();
        self.send(&kernel::read(unique, pid, 1, 4096, 0));
        self.nothing_pending();
        unique
    }

    fn write(&mut self, pid: u32, data: &[u8]) -> (i32, Vec<u8>) {
        let unique = self.unique();
        self.ask(unique, &kernel::write(unique, pid, 1, data))
    }

    /// Closes the kernel's end; the session must end by itself.
    fn disconnect(mut self) -> Ended {
        let session = self.session.take().unwrap();
        drop(self.fd);
        session.join().unwrap()
    }
}

/// A kernel end and a daemon end: SOCK_SEQPACKET keeps message boundaries, as the kernel does.
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap()
}

fn send_on(channel: &OwnedFd, message: &[u8]) {
    assert_eq!(nix::unistd::write(channel, message).unwrap(), message.len());
}

/// The next message from the daemon on `channel` (waiting at most 10 s: a liveness bound).
fn receive_on(channel: &OwnedFd) -> Vec<u8> {
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(channel), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "no answer from the daemon"
    );
    let mut buffer = vec![0u8; 8192];
    let len = nix::unistd::read(channel, &mut buffer).unwrap();
    buffer.truncate(len);
    buffer
}

/// What a session serving `path` tells the loop.
fn endpoint(path: &str) -> Endpoint {
    Endpoint {
        path: path.into(),
        auth: JobserverAuth::Fifo(path.into()),
        default_control: format!("{path}.control").into(),
        mode: 0o600,
        gid: None,
        how: "a fake kernel".into(),
        directories: Vec::new(),
        companion: None,
    }
}

/// Runs `session` in steve-core's event loop, as `steve serve` does, without signals or a
/// control socket, until the fake kernel hangs up.
fn serve_in_loop(
    backend: &str,
    session: &mut Session,
    limits: Limits,
    probe: Box<dyn SystemProbe>,
) -> Ended {
    let backend = steve_core::server::backend::find(backend).expect("steve-cuse registers it");
    EventLoop::new(backend, limits, probe).unwrap().run(session).unwrap()
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

#[test]
fn open_read_write_with_one_token_per_read_and_eagain() {
    let mut kernel = FakeKernel::connect(2);
    let me = std::process::id();
    assert_ne!(kernel.open(me), kernel.open(me), "file handles are distinct");
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()), "one token per read of 4096 bytes");
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()));
    assert_eq!(kernel.read(me, O_NONBLOCK), (EAGAIN, vec![]));
    // Any byte goes back; the answer says how many were taken.
    assert_eq!(kernel.write(me, b"G"), (0, [1u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat()));
    assert_eq!(kernel.write(me, b"+"), (0, [1u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat()));
    assert!(matches!(kernel.disconnect(), Ended::Transport(_)));
}

#[test]
fn a_waiting_read_is_answered_when_a_token_comes_back() {
    let mut kernel = FakeKernel::connect(1);
    let me = std::process::id();
    kernel.read(me, 0);
    let waiting = kernel.read_waiting(me);
    kernel.write(me, b"+");
    // The write's answer, then the waiting read's.
    let answer = kernel.receive();
    assert_eq!(kernel::split_reply(&answer), (17, 0, waiting, &b"+"[..]));
    kernel.nothing_pending();
    kernel.disconnect();
}

#[test]
fn from_two_threads_each_answer_goes_out_on_the_channel_its_request_came_on() {
    let (mut kernel, second) = FakeKernel::connect_two_channels(1);
    let me = std::process::id();
    kernel.read(me, 0);
    // A read on the second channel waits: an ioctl sent after it is answered first.
    let waiting = kernel.unique();
    send_on(&second, &kernel::read(waiting, me, 1, 4096, 0));
    let probe = kernel.unique();
    send_on(&second, &kernel::ioctl(probe, me, 1, 0x5401));
    let (_, error, answered, _) = kernel::split_reply(&receive_on(&second));
    assert_eq!((error, answered), (-nix::libc::ENOTTY, probe));
    // The token written back on the first channel goes to it, on the second.
    kernel.write(me, b"+");
    assert_eq!(kernel::split_reply(&receive_on(&second)), (17, 0, waiting, &b"+"[..]));
    kernel.nothing_pending();
    // An interrupt that comes on the first channel is answered where its read waits.
    kernel.write(me, b"+");
    kernel.read(me, 0);
    let interrupted = kernel.unique();
    send_on(&second, &kernel::read(interrupted, me, 1, 4096, 0));
    let unique = kernel.unique();
    send_on(&second, &kernel::ioctl(unique, me, 1, 0x5401));
    receive_on(&second);
    let unique = kernel.unique();
    kernel.send(&kernel::interrupt(unique, interrupted));
    let answer = receive_on(&second);
    assert_eq!(kernel::split_reply(&answer), (16, -nix::libc::EINTR, interrupted, &[][..]));
    kernel.nothing_pending();
    drop(second);
    assert!(matches!(kernel.disconnect(), Ended::Transport(_)));
}

#[test]
fn enospc_for_a_token_not_held_after_one_grace_return() {
    let mut kernel = FakeKernel::connect(1);
    let mut client = sleeper();
    let pid = client.id();
    let one = [1u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    assert_eq!(kernel.write(pid, b"+"), (0, one.clone()), "the grace return");
    assert_eq!(kernel.write(pid, b"+"), (-nix::libc::ENOSPC, vec![]));
    let me = std::process::id();
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()));
    assert_eq!(kernel.write(me, b"+"), (0, one));
    assert_eq!(kernel.write(me, b"+"), (-nix::libc::ENOSPC, vec![]), "no grace after a read");
    client.kill().unwrap();
    client.wait().unwrap();
    kernel.disconnect();
}

#[test]
fn an_interrupted_read_gets_eintr_and_loses_no_token() {
    let mut kernel = FakeKernel::connect(1);
    let me = std::process::id();
    kernel.read(me, 0);
    let waiting = kernel.read_waiting(me);
    let unique = kernel.unique();
    kernel.send(&kernel::interrupt(unique, waiting));
    let answer = kernel.receive();
    assert_eq!(kernel::split_reply(&answer), (16, -nix::libc::EINTR, waiting, &[][..]));
    // The token that comes back is free, not handed to the interrupted read.
    kernel.write(me, b"+");
    kernel.nothing_pending();
    assert_eq!(kernel.read(me, O_NONBLOCK), (0, b"+".to_vec()));
    kernel.disconnect();
}

#[test]
fn a_poller_is_notified_and_its_token_is_reserved() {
    let mut kernel = FakeKernel::connect(1);
    let me = std::process::id();
    let poller = sleeper();
    let blocker = sleeper();
    kernel.read(me, 0);
    // The poller finds nothing and asks to be notified; a blocking reader queues behind it.
    let unique = kernel.unique();
    let pollin = (nix::libc::POLLIN | nix::libc::POLLRDNORM) as u32;
    let (error, revents) = kernel.ask(
        unique,
        &kernel::poll(unique, poller.id(), 1, 0xfeed, ll::POLL_SCHEDULE_NOTIFY, pollin),
    );
    assert_eq!((error, u32::from_ne_bytes(revents[..4].try_into().unwrap())), (0, 0));
    let blocked = kernel.read_waiting(blocker.id());

    kernel.write(me, b"+");
    let notification = kernel.receive();
    assert_eq!(
        kernel::split_reply(&notification),
        (24, ll::NOTIFY_POLL, 0, &0xfeedu64.to_ne_bytes()[..])
    );
    kernel.nothing_pending();
    // Readable for the poller now, and the read gets the reserved token.
    let unique = kernel.unique();
    let (_, revents) = kernel.ask(unique, &kernel::poll(unique, poller.id(), 1, 0xfeed, 0, pollin));
    assert_eq!(u32::from_ne_bytes(revents[..4].try_into().unwrap()), pollin);
    assert_eq!(kernel.read(poller.id(), O_NONBLOCK), (0, b"+".to_vec()));
    // The blocking reader is next.
    kernel.write(poller.id(), b"+");
    let answer = kernel.receive();
    assert_eq!(kernel::split_reply(&answer).2, blocked);
    for mut child in [poller, blocker] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    kernel.disconnect();
}

#[test]
fn tokens_of_a_process_that_exits_are_reclaimed_at_once() {
    let mut kernel = FakeKernel::connect(2);
    let mut client = sleeper();
    kernel.read(client.id(), 0);
    kernel.read(client.id(), 0);
    let me = std::process::id();
    let waiting = kernel.read_waiting(me);
    client.kill().unwrap();
    client.wait().unwrap();
    // Nothing but the pidfd tells the session: the waiting read is answered from the reclaim.
    let answer = kernel.receive();
    assert_eq!(kernel::split_reply(&answer), (17, 0, waiting, &b"+"[..]));
    assert_eq!(kernel.read(me, O_NONBLOCK), (0, b"+".to_vec()));
    kernel.disconnect();
}

#[test]
fn unknown_opcodes_ioctls_releases_and_garbage_get_answers() {
    let mut kernel = FakeKernel::connect(1);
    let me = std::process::id();
    let unique = kernel.unique();
    assert_eq!(
        kernel.ask(unique, &kernel::request(1, unique, me, &[0; 8])),
        (-nix::libc::ENOSYS, vec![])
    );
    let unique = kernel.unique();
    assert_eq!(
        kernel.ask(unique, &kernel::ioctl(unique, me, 1, 0x5401)),
        (-nix::libc::ENOTTY, vec![])
    );
    let unique = kernel.unique();
    assert_eq!(kernel.ask(unique, &kernel::release(unique, 1)), (0, vec![]));
    // A READ too short to parse: answered EIO, and the session carries on.
    let unique = kernel.unique();
    let mut short = kernel::read(unique, me, 1, 1, 0);
    short.truncate(50);
    short[..4].copy_from_slice(&50u32.to_ne_bytes());
    assert_eq!(kernel.ask(unique, &short), (-nix::libc::EIO, vec![]));
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()));
    kernel.disconnect();
}

/// A load the test sets.
#[derive(Debug, Clone)]
struct FakeLoad(Arc<Mutex<f64>>);

impl SystemProbe for FakeLoad {
    fn read(&mut self) -> SystemReading {
        SystemReading {
            load_average_1m: Some(*self.0.lock().unwrap()),
            memory_available_mib: Some(1 << 20),
            ..SystemReading::default()
        }
    }
}

#[test]
fn over_the_load_limit_only_min_jobs_go_out_and_tokens_flow_when_it_drops() {
    let load = FakeLoad(Arc::new(Mutex::new(5.0)));
    let limits = Limits {
        load_average: Some(2.0),
        min_jobs: 1,
        load_recheck: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut kernel = FakeKernel::connect_with(3, Some((limits, Box::new(load.clone()))));
    let me = std::process::id();
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()), "min-jobs still go out");
    assert_eq!(kernel.read(me, O_NONBLOCK), (EAGAIN, vec![]), "held back over the load limit");
    let waiting = kernel.read_waiting(me);
    // The load drops; nothing is asked, so the session's own recheck must let the token go.
    *load.0.lock().unwrap() = 0.5;
    let answer = kernel.receive();
    assert_eq!(kernel::split_reply(&answer), (17, 0, waiting, &b"+"[..]));
    assert_eq!(kernel.read(me, O_NONBLOCK), (0, b"+".to_vec()), "all 3 flow again");
    assert_eq!(kernel.read(me, O_NONBLOCK), (EAGAIN, vec![]));
    kernel.disconnect();
}

#[test]
fn a_mount_serves_its_one_file_with_the_device_rules() {
    let mut kernel = FakeKernel::mount(1);
    let me = std::process::id();
    let unique = kernel.unique();
    let (error, entry) = kernel.ask(unique, &kernel::lookup(unique, ll::ROOT_ID, "jobserver"));
    assert_eq!((error, &entry[..8]), (0, &FILE_ID.to_ne_bytes()[..]));
    let unique = kernel.unique();
    let (error, _) = kernel.ask(unique, &kernel::lookup(unique, ll::ROOT_ID, "other"));
    assert_eq!(error, -nix::libc::ENOENT);
    let unique = kernel.unique();
    let (error, listing) = kernel.ask(unique, &kernel::readdir(unique, ll::ROOT_ID, 0, 4096));
    assert_eq!(error, 0);
    assert!(listing.windows(9).any(|name| name == b"jobserver"), "{listing:?}");

    // The file: every read reaches the server (direct I/O), one token each, EAGAIN when empty;
    // a close sends no FLUSH (nothing may wait for the server while it scans /proc).
    let unique = kernel.unique();
    let (error, open) = kernel.ask(unique, &kernel::on_node(FILE_ID, kernel::open(unique, me, 2)));
    assert_eq!(error, 0);
    let open_flags = u32::from_ne_bytes(open[8..12].try_into().unwrap());
    assert_eq!(open_flags, ll::FOPEN_DIRECT_IO | ll::FOPEN_NONSEEKABLE | ll::FOPEN_NOFLUSH);
    // A kernel before 5.16 still flushes: ENOSYS turns it off for the connection.
    let unique = kernel.unique();
    let fh = u64::from_ne_bytes(open[..8].try_into().unwrap());
    let (error, _) = kernel.ask(unique, &kernel::on_node(FILE_ID, kernel::flush(unique, me, fh)));
    assert_eq!(error, -nix::libc::ENOSYS);
    assert_eq!(kernel.read(me, 0), (0, b"+".to_vec()));
    assert_eq!(kernel.read(me, O_NONBLOCK), (EAGAIN, vec![]));
    let one = [1u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    assert_eq!(kernel.write(me, b"+"), (0, one));

    // FORGET is never answered; SETATTR is refused; what the mount does not know, ENOSYS.
    let unique = kernel.unique();
    kernel.send(&kernel::on_node(FILE_ID, kernel::request(ll::opcode::FORGET, unique, 0, &[0; 8])));
    kernel.nothing_pending();
    let unique = kernel.unique();
    let setattr =
        kernel::on_node(FILE_ID, kernel::request(ll::opcode::SETATTR, unique, me, &[0; 88]));
    assert_eq!(kernel.ask(unique, &setattr).0, -nix::libc::EPERM);
    const GETXATTR: u32 = 22;
    let unique = kernel.unique();
    let getxattr = kernel::on_node(FILE_ID, kernel::request(GETXATTR, unique, me, &[0; 16]));
    assert_eq!(kernel.ask(unique, &getxattr).0, -nix::libc::ENOSYS);
    assert!(matches!(kernel.disconnect(), Ended::Transport(_)));
}
