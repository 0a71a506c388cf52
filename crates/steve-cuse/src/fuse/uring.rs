//! FUSE over io_uring (Linux 6.14 and later, with the fuse module's `enable_uring` set to Y by
//! root): the server registers ring entries with the kernel, each a header buffer and a payload
//! buffer on one of its queues (one queue per CPU: a request goes to the queue of the CPU its
//! caller runs on), the kernel fills an entry with a request and completes the entry's command,
//! and the server answers and takes the next request in one submission (COMMIT_AND_FETCH): one
//! `io_uring_enter` per batch of answers instead of a `write` per answer and a `read` per
//! request on `/dev/fuse`.
//!
//! The layout, from the kernel's `include/uapi/linux/fuse.h` (ABI 7.42): an entry's header
//! buffer is `fuse_uring_req_header`, 288 bytes: `in_out` (128: the `fuse_in_header` of a
//! request, the `fuse_out_header` of its answer), `op_in` (128: the opcode's fixed argument,
//! say `fuse_read_in`) and `ring_ent_in_out` (32: `flags`, `commit_id`, `payload_sz`); the
//! payload buffer holds the rest (a write's bytes, a read's answer). A command's 80-byte area
//! holds `fuse_uring_cmd_req` (`flags`, `commit_id`, `qid`); a REGISTER's `addr` points at two
//! `iovec`s (header, payload) and its `len` says 2.
//!
//! Not through the ring: FUSE_INTERRUPT (and FORGET) still come on `/dev/fuse`, poll
//! notifications still go there, and the requests the kernel queued there before every queue
//! had an entry are still read and answered there; the session serves both.
//!
//! A jobserver keeps requests: a read that waits for a token holds its entry until a token
//! comes. A queue whose entries all held waiting reads would leave the next request (a token
//! coming back) queued in the kernel until one of them is answered, and the kernel hands a
//! queued request only to an entry that commits, never to one newly registered. So every queue
//! keeps [`SPARE_PER_QUEUE`] entries waiting in the kernel: whenever waiting reads leave fewer,
//! new ones are registered with the next submission, up to [`MAX_ENTRIES`] in all, shared out
//! among the rings when each queue has its own (a user's
//! thousands of blocked threads then queue in the kernel instead of growing the server).
//!
//! That keeps a queue going while the server keeps up; a burst faster than it, or the cap,
//! can still starve a queue, which the server then notices and gets going again by answering
//! a waiting read `EINTR` ([`super::starvation`]).
//!
//! A ring is served by one thread: the loop's ([`Ring::as_fd`] is readable when entries
//! completed), or one of its own per queue ([`Ring::for_queue`], [`Ring::wait`]), which
//! another thread wakes by writing an eventfd the ring keeps a read of ([`Ring::wake_on`]).
//!
//! The unsafe code is here alone: the buffers the kernel writes into are mapped memory the
//! session reads only while the kernel has handed the entry back, and one field of a
//! submission the io-uring crate does not set (`len`).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::errno::Errno;
use tracing::{debug, info, warn};

use super::starvation::{self, Kick, Starvation};

/// Where root turns FUSE over io_uring on (`Y`) or off (`N`); absent when the kernel has none.
pub const ENABLE_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";
/// Entries each queue keeps waiting in the kernel for new requests.
pub const SPARE_PER_QUEUE: usize = 8;
/// The most entries a server registers, whatever waits (about 140 MiB of buffers).
pub const MAX_ENTRIES: usize = 16_384;
/// `fuse_uring_req_header`'s size and the offsets in it.
const HEADER_LEN: usize = 288;
const OP_IN_OFFSET: usize = 128;
const OP_IN_LEN: usize = 128;
const ENT_IN_OUT_OFFSET: usize = 256;
/// `ring_ent_in_out.payload_sz`.
const PAYLOAD_SZ_OFFSET: usize = ENT_IN_OUT_OFFSET + 16;
/// `fuse_in_header` and `fuse_out_header`.
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// Each entry's payload buffer: the kernel wants at least its largest payload, the larger of
/// 8 KiB (FUSE_MIN_READ_BUFFER), max_write and max_pages pages; the mount asks for 4 KiB writes
/// and a readahead of one page, so 8 KiB.
pub const PAYLOAD_LEN: usize = 8192;
/// An entry's share of the mapped memory: its header, padded, then its payload.
const HEADER_SLOT: usize = 512;
const ENTRY_LEN: usize = HEADER_SLOT + PAYLOAD_LEN;
/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Submission slots: a batch of answers larger than this is submitted in parts.
const SUBMISSION_SLOTS: u32 = 256;
/// Completion slots (the kernel keeps any overflow: IORING_FEAT_NODROP).
const COMPLETION_SLOTS: u32 = 4096;
/// The user data of the no-op that makes the ring's descriptor readable, and of the read of
/// the wake-up eventfd: neither names an entry.
const NOP_DATA: u64 = u64::MAX;
const WAKE_DATA: u64 = u64::MAX - 1;

/// Whether root has turned FUSE over io_uring on, and if not, why.
pub fn enabled() -> Result<(), String> {
    match std::fs::read_to_string(ENABLE_PARAMETER) {
        Ok(value) if value.trim() == "Y" => Ok(()),
        Ok(_) => Err(format!(
            "FUSE over io_uring is off: root turns it on with `echo Y > {ENABLE_PARAMETER}`"
        )),
        Err(_) => Err(format!(
            "this kernel has no FUSE over io_uring (no {ENABLE_PARAMETER}: it needs Linux 6.14 \
             or later built with CONFIG_FUSE_IO_URING)"
        )),
    }
}

/// The kernel's queues: one per possible CPU (`/sys/devices/system/cpu/possible`, say `0-3`).
pub fn queue_count() -> usize {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    steve_core::cgroup::parse_cpu_list(&possible).unwrap_or(1).max(1)
}

/// One registered entry.
#[derive(Debug)]
struct Entry {
    /// Its queue.
    qid: u16,
    /// Its header buffer; its payload buffer follows at [`HEADER_SLOT`].
    memory: NonNull<u8>,
    /// The kernel holds it, waiting for a request (it is counted in its queue's spares).
    in_kernel: bool,
    /// The kernel gave it up: it holds no request and never comes back.
    given_up: bool,
    /// The epoch ([`Starvation::epoch`]) it last went into the kernel in, and the one it last
    /// committed an answer in.
    armed_at: u64,
    committed_at: Option<u64>,
    /// The two `iovec`s its REGISTER points at (the kernel reads them as it is submitted).
    _iovecs: Box<[nix::libc::iovec; 2]>,
}

/// A FUSE connection's ring: its entries, their buffers, and what waits to be submitted.
pub struct Ring {
    /// Closed first (see [`Drop`]): the kernel lets go of the buffers with it.
    ring: Option<IoUring<squeue::Entry128, cqueue::Entry>>,
    /// The connection (`/dev/fuse`), which the session owns and outlives the ring in.
    channel: RawFd,
    entries: Vec<Entry>,
    /// The entries' memory, mapped a batch at a time; unmapped after the ring is closed.
    regions: Vec<memmap2::MmapMut>,
    /// Per queue, the entries the kernel holds waiting for requests.
    spare: Vec<usize>,
    /// Answers queued and not submitted yet.
    queued: usize,
    /// Completions seen while registering, for the next [`Ring::completions`].
    held: Vec<Completion>,
    /// The most entries this ring registers: [`MAX_ENTRIES`], or its share of them.
    max_entries: usize,
    /// Said once: the ring reached `max_entries`.
    full_said: bool,
    /// The one queue this ring serves, or `None`: every queue.
    only_queue: Option<u16>,
    /// An eventfd whose count ends a [`Ring::wait`] ([`Ring::wake_on`]), and where its read
    /// puts the count.
    wake: Option<Wake>,
    /// Which queues may have run out of entries with requests queued in the kernel.
    starvation: Starvation,
    /// Said once: a queue was starved and a waiting read interrupted.
    kick_said: bool,
}

/// The ring's read of a wake-up eventfd.
#[derive(Debug)]
struct Wake {
    eventfd: RawFd,
    count: Box<u64>,
    /// The read is in the kernel: nothing to queue until it completes.
    armed: bool,
}

/// What a [`Ring::wait`] woke for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Entries completed, or the wake-up eventfd was written.
    Completed,
    /// A signal came first.
    Interrupted,
    /// The deadline passed first.
    TimedOut,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("entries", &self.entries.len())
            .field("spare", &self.spare)
            .finish_non_exhaustive()
    }
}

/// A completed entry: the request it holds, or why it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Entry `n` holds a request: [`Ring::request`] reads it, [`Ring::answer`] answers it.
    Request(u32),
    /// The kernel gave an entry up (the connection ended: ENOTCONN; or an answer to a request
    /// it no longer had: ENOENT).
    Failed(u32, Errno),
}

impl Ring {
    /// A ring with no entries yet, made before the mount: once INIT has said the server takes
    /// requests through io_uring, the kernel holds every request until the ring's entries are
    /// registered (or one is refused), so a ring that cannot even be made (io_uring turned off
    /// by `kernel.io_uring_disabled`, say) must be known before INIT is answered.
    pub fn new() -> Result<Ring, String> {
        enabled()?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(COMPLETION_SLOTS)
            .build(SUBMISSION_SLOTS)
            .map_err(|error| format!("cannot set up an io_uring: {error}"))?;
        Ok(Ring {
            ring: Some(ring),
            channel: -1,
            entries: Vec::new(),
            regions: Vec::new(),
            spare: vec![0; queue_count()],
            queued: 0,
            held: Vec::new(),
            max_entries: MAX_ENTRIES,
            full_said: false,
            only_queue: None,
            wake: None,
            starvation: Starvation::new(queue_count()),
            kick_said: false,
        })
    }

    /// A ring that serves queue `qid` alone (a thread per CPU, each with its own ring), with
    /// its share of [`MAX_ENTRIES`]: what a server's buffers may grow to does not grow with
    /// the machine's CPUs.
    pub fn for_queue(qid: u16) -> Result<Ring, String> {
        let mut ring = Ring::new()?;
        ring.only_queue = Some(qid);
        ring.max_entries = entries_per_queue(ring.spare.len());
        Ok(ring)
    }

    /// Keeps a read of `eventfd` in the ring from now on, so that writing it ends a
    /// [`Ring::wait`]: how another thread wakes the one serving this ring. The descriptor must
    /// outlive the ring.
    pub fn wake_on(&mut self, eventfd: BorrowedFd<'_>) {
        let eventfd = eventfd.as_raw_fd();
        match &mut self.wake {
            // A read of the old one may be in the kernel: its count stays where it is.
            Some(wake) => wake.eventfd = eventfd,
            None => self.wake = Some(Wake { eventfd, count: Box::new(0), armed: false }),
        }
    }

    /// Submits what is queued and sleeps until an entry completes, the wake-up eventfd is
    /// written, a signal comes, or `deadline` passes.
    pub fn wait(&mut self, deadline: Option<Instant>) -> std::io::Result<Waited> {
        self.top_up().map_err(std::io::Error::other)?;
        let wake_read = self.wake.as_mut().filter(|wake| !wake.armed).map(|wake| {
            wake.armed = true;
            let count = std::ptr::from_mut::<u64>(&mut *wake.count).cast::<u8>();
            opcode::Read::new(types::Fd(wake.eventfd), count, 8).build().user_data(WAKE_DATA)
        });
        if let Some(read) = wake_read {
            self.push(squeue::Entry128::from(read))?;
        }
        let ring = self.ring.as_mut().expect("the ring lives until dropped");
        let waited = match deadline {
            None => ring.submit_and_wait(1),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let timespec = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&timespec);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        match waited {
            Ok(_) => {
                self.queued = 0;
                Ok(Waited::Completed)
            }
            Err(error) => match error.raw_os_error() {
                // What was queued went in all the same.
                Some(nix::libc::ETIME) => {
                    self.queued = 0;
                    Ok(Waited::TimedOut)
                }
                Some(nix::libc::EINTR) => Ok(Waited::Interrupted),
                _ => Err(error),
            },
        }
    }

    /// Registers [`SPARE_PER_QUEUE`] entries on each of the kernel's queues for the FUSE
    /// connection `channel`, whose INIT is answered. Fails where the kernel refuses them; it
    /// then serves the connection through `channel` alone.
    pub fn register(&mut self, channel: BorrowedFd<'_>) -> Result<(), String> {
        self.channel = channel.as_raw_fd();
        self.top_up()?;
        self.submit().map_err(|error| format!("cannot register ring entries: {error}"))?;
        // A refused REGISTER completes at once; an accepted one when a request comes, which
        // is kept for the session.
        self.held = self.completions();
        if let Some(Completion::Failed(_, errno)) =
            self.held.iter().find(|done| matches!(done, Completion::Failed(..)))
        {
            return Err(match errno {
                Errno::EOPNOTSUPP => {
                    "the kernel refused ring entries (EOPNOTSUPP): FUSE over io_uring is off"
                        .to_string()
                }
                errno => format!("the kernel refused ring entries: {errno}"),
            });
        }
        // A request taken already waits in `held`: a no-op's completion makes the ring's
        // descriptor readable, so that the loop comes for it (its user data names no entry).
        if self.held.iter().any(|done| matches!(done, Completion::Request(_))) {
            let nop = squeue::Entry128::from(opcode::Nop::new().build().user_data(NOP_DATA));
            self.push(nop).map_err(|error| format!("cannot queue a no-op: {error}"))?;
            self.submit().map_err(|error| format!("cannot submit a no-op: {error}"))?;
        }
        debug!(queues = self.spare.len(), entries = self.entries.len(), "FUSE io_uring ready");
        Ok(())
    }

    /// The ring's descriptor: readable when entries completed.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        let ring = self.ring.as_ref().expect("the ring lives until dropped");
        // SAFETY: the descriptor is the ring's, open while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }
    }

    /// How many entries are registered.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The entries that completed since the last call.
    pub fn completions(&mut self) -> Vec<Completion> {
        let ring = self.ring.as_mut().expect("the ring lives until dropped");
        let done: Vec<(u64, i32)> =
            ring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
        let mut completions = std::mem::take(&mut self.held);
        let mut came_back = false;
        for (user_data, result) in done {
            if user_data == WAKE_DATA {
                if let Some(wake) = self.wake.as_mut() {
                    wake.armed = false;
                }
                continue;
            }
            let Some(entry) = self.entries.get_mut(user_data as usize) else { continue };
            if entry.in_kernel {
                entry.in_kernel = false;
                self.spare[entry.qid as usize] -= 1;
                self.starvation.back(entry.qid, entry.armed_at);
                came_back = true;
            }
            let n = user_data as u32;
            completions.push(match result {
                0 => Completion::Request(n),
                error => {
                    entry.given_up = true;
                    Completion::Failed(n, Errno::from_raw(-error))
                }
            });
        }
        if self.starvation.reaped(came_back, Instant::now) {
            debug!(spare = ?self.spare, "a ring queue may have run out of entries");
        }
        completions
    }

    /// When to look at a starved queue again if nothing comes meanwhile ([`Ring::kick`]).
    pub fn kick_due(&self) -> Option<Instant> {
        self.starvation.due()
    }

    /// With every completion reaped: the waiting read to interrupt (answer `EINTR`, through
    /// its entry) so that a starved queue's entry commits and fetches what the kernel queued.
    pub fn kick(&mut self, now: Instant) -> Option<Kick> {
        let kick = self.starvation.kick(now, &EntryFacts(&self.entries))?;
        let queue = self.entries[kick.entry as usize].qid;
        if !self.kick_said {
            self.kick_said = true;
            info!(
                queue,
                "FUSE ring: a queue ran out of entries while requests came; waiting reads are \
                 answered EINTR (their callers read again) until the kernel's queued requests \
                 are through"
            );
        }
        debug!(queue, entry = kick.entry, request = kick.request, "starved ring queue kicked");
        Some(kick)
    }

    /// The request entry `n` holds, as `/dev/fuse` would have given it (`fuse_in_header`, the
    /// opcode's argument, the payload), into `message`; or why it cannot be, with the
    /// request's `unique` to answer.
    pub fn request(&self, n: u32, message: &mut Vec<u8>) -> Result<(), (String, u64)> {
        let entry = &self.entries[n as usize];
        debug_assert!(!entry.in_kernel, "the kernel holds entry {n}");
        // SAFETY: the kernel completed this entry's command and holds it no more until it is
        // answered, so nothing writes its buffers meanwhile; the header slot and the payload
        // are inside the entry's mapped region.
        let (header, payload) = unsafe {
            (
                std::slice::from_raw_parts(entry.memory.as_ptr(), HEADER_LEN),
                std::slice::from_raw_parts(entry.memory.as_ptr().add(HEADER_SLOT), PAYLOAD_LEN),
            )
        };
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let unique = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let (len, payload_len) = (word(0) as usize, word(PAYLOAD_SZ_OFFSET) as usize);
        let op_len = len.checked_sub(IN_HEADER_LEN + payload_len).filter(|&op| op <= OP_IN_LEN);
        let (Some(op_len), true) = (op_len, payload_len <= PAYLOAD_LEN) else {
            let why = format!("a ring entry's request says {len} bytes, {payload_len} of payload");
            return Err((why, unique));
        };
        message.clear();
        message.extend_from_slice(&header[..IN_HEADER_LEN]);
        message.extend_from_slice(&header[OP_IN_OFFSET..OP_IN_OFFSET + op_len]);
        message.extend_from_slice(&payload[..payload_len]);
        Ok(())
    }

    /// Answers the request entry `n` holds with `reply` (a `fuse_out_header` and its data, as
    /// written to `/dev/fuse`), and gives the entry back for the next request. Submitted with
    /// the next [`Ring::submit`].
    pub fn answer(&mut self, n: u32, reply: &[u8]) -> Result<(), String> {
        let Some(entry) = self.entries.get(n as usize).filter(|entry| !entry.in_kernel) else {
            return Err(format!("ring entry {n} holds no request"));
        };
        if reply.len() < OUT_HEADER_LEN || reply.len() - OUT_HEADER_LEN > PAYLOAD_LEN {
            return Err(format!("an answer of {} bytes does not fit a ring entry", reply.len()));
        }
        let (out_header, data) = reply.split_at(OUT_HEADER_LEN);
        let unique = u64::from_le_bytes(out_header[8..16].try_into().expect("8 bytes"));
        // SAFETY: as in `request`, the entry is the session's until it is submitted; the
        // writes stay inside its header slot and payload.
        unsafe {
            let base = entry.memory.as_ptr();
            std::ptr::copy_nonoverlapping(out_header.as_ptr(), base, OUT_HEADER_LEN);
            base.add(PAYLOAD_SZ_OFFSET).cast::<u32>().write_unaligned((data.len() as u32).to_le());
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(HEADER_SLOT), data.len());
        }
        let command = command(unique, entry.qid);
        let sqe = opcode::UringCmd80::new(types::Fd(self.channel), CMD_COMMIT_AND_FETCH)
            .cmd(command)
            .build()
            .user_data(u64::from(n));
        self.push(sqe).map_err(|error| format!("cannot queue an answer: {error}"))?;
        let entry = &mut self.entries[n as usize];
        entry.in_kernel = true;
        entry.armed_at = self.starvation.epoch();
        entry.committed_at = Some(entry.armed_at);
        self.starvation.arm(entry.qid);
        self.spare[entry.qid as usize] += 1;
        Ok(())
    }

    /// Registers new entries where waiting reads left a queue fewer than [`SPARE_PER_QUEUE`],
    /// then submits everything queued.
    pub fn flush(&mut self) -> Result<(), String> {
        self.top_up()?;
        self.submit().map_err(|error| format!("cannot submit to the ring: {error}"))
    }

    /// Queues REGISTERs of new entries until every queue has its spares (or the ring is full).
    fn top_up(&mut self) -> Result<(), String> {
        let starvation = &mut self.starvation;
        let wanted: Vec<(u16, usize)> = (self.spare.iter().enumerate())
            .filter(|(qid, _)| self.only_queue.is_none_or(|only| only as usize == *qid))
            .map(|(qid, &spare)| {
                // After a kick's commit, one fresh entry for the kicked read's next request.
                let fresh = usize::from(starvation.take_fresh(qid as u16));
                (qid as u16, SPARE_PER_QUEUE.saturating_sub(spare).max(fresh))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let total: usize = wanted.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Ok(());
        }
        let room = self.max_entries.saturating_sub(self.entries.len());
        if total > room && !self.full_said {
            self.full_said = true;
            warn!(
                "FUSE ring: {} entries registered, the most it takes; further requests wait in \
                 the kernel until a waiting read is answered",
                self.entries.len()
            );
        }
        let mut slots = self.map_entries(total.min(room))?.into_iter();
        for (qid, count) in wanted {
            for _ in 0..count {
                let Some(memory) = slots.next() else { return Ok(()) };
                self.register_entry(qid, memory)?;
            }
        }
        Ok(())
    }

    /// Maps memory for `count` entries and returns where each begins.
    fn map_entries(&mut self, count: usize) -> Result<Vec<NonNull<u8>>, String> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let len = count * ENTRY_LEN;
        let mut region = memmap2::MmapMut::map_anon(len)
            .map_err(|error| format!("cannot map {len} bytes for ring entries: {error}"))?;
        let base = NonNull::new(region.as_mut_ptr()).expect("a mapping is never at 0");
        // Moving the mapping into the list moves no memory: the pointers stay good.
        self.regions.push(region);
        // SAFETY: every offset is inside the `len` bytes just mapped.
        Ok((0..count).map(|n| unsafe { base.add(n * ENTRY_LEN) }).collect())
    }

    /// Queues a REGISTER of a new entry at `memory` on queue `qid`.
    fn register_entry(&mut self, qid: u16, memory: NonNull<u8>) -> Result<(), String> {
        let n = self.entries.len();
        // SAFETY: the payload begins inside the entry's slot of its mapped region.
        let payload = unsafe { memory.as_ptr().add(HEADER_SLOT) };
        let iovecs = Box::new([
            nix::libc::iovec { iov_base: memory.as_ptr().cast(), iov_len: HEADER_LEN },
            nix::libc::iovec { iov_base: payload.cast(), iov_len: PAYLOAD_LEN },
        ]);
        let mut sqe = opcode::UringCmd80::new(types::Fd(self.channel), CMD_REGISTER)
            .cmd(command(0, qid))
            .addr(Some(iovecs.as_ptr() as u64))
            .build()
            .user_data(n as u64);
        set_len(&mut sqe, 2);
        let armed_at = self.starvation.epoch();
        self.entries.push(Entry {
            qid,
            memory,
            in_kernel: true,
            given_up: false,
            armed_at,
            committed_at: None,
            _iovecs: iovecs,
        });
        self.starvation.arm(qid);
        self.spare[qid as usize] += 1;
        self.push(sqe).map_err(|error| format!("cannot queue a ring entry: {error}"))
    }

    /// Queues `sqe`, submitting what is queued first when the submission queue is full.
    fn push(&mut self, sqe: squeue::Entry128) -> std::io::Result<()> {
        let ring = self.ring.as_mut().expect("the ring lives until dropped");
        loop {
            // SAFETY: what `sqe` points at (a REGISTER's iovecs, and the buffers they name; the
            // wake-up read's count) lives in `self.entries`, the mapped regions and
            // `self.wake` until the ring is dropped.
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                self.queued += 1;
                return Ok(());
            }
            ring.submit()?;
        }
    }

    /// Submits what is queued.
    fn submit(&mut self) -> std::io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        let ring = self.ring.as_mut().expect("the ring lives until dropped");
        loop {
            match ring.submit() {
                Ok(_) => break,
                Err(error) if error.raw_os_error() == Some(nix::libc::EINTR) => continue,
                Err(error) => return Err(error),
            }
        }
        self.queued = 0;
        Ok(())
    }
}

/// The ring's entries as [`Starvation::kick`] asks about them.
struct EntryFacts<'a>(&'a [Entry]);

impl starvation::Entries for EntryFacts<'_> {
    fn in_kernel(&self, n: u32) -> bool {
        self.0.get(n as usize).is_some_and(|entry| entry.in_kernel)
    }

    fn committed_and_kept(&self, queue: u16, since: u64) -> bool {
        self.0.iter().any(|entry| {
            entry.qid == queue && entry.in_kernel && entry.committed_at.is_some_and(|c| c >= since)
        })
    }

    fn parked(&self, queue: u16) -> Option<(u32, u64)> {
        let (n, entry) = (self.0.iter().enumerate())
            .find(|(_, entry)| entry.qid == queue && !entry.in_kernel && !entry.given_up)?;
        // SAFETY: the entry is out of the kernel, which writes its buffers no more until it is
        // answered; the request id lies in the header slot's `fuse_in_header`.
        let header = unsafe { std::slice::from_raw_parts(entry.memory.as_ptr(), IN_HEADER_LEN) };
        let unique = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        Some((n as u32, unique))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The ring goes first, the regions after: closing it cancels the commands, and the
        // kernel copies into an entry's buffers only within this process's own io_uring calls.
        drop(self.ring.take());
    }
}

// SAFETY: the raw pointers in a ring (its entries' buffers and the iovecs naming them) point
// only into the mappings the ring owns, which move with it; nothing else refers to them, and
// the kernel writes them in whichever of the process's threads submitted, never concurrently
// with the session's reads (an entry is read only once the kernel has handed it back).
unsafe impl Send for Ring {}

/// A queue's share of [`MAX_ENTRIES`] when each of `queues` has a ring of its own (never so few
/// that a queue cannot keep its spares and a few waiting reads).
fn entries_per_queue(queues: usize) -> usize {
    (MAX_ENTRIES / queues.max(1)).max(4 * SPARE_PER_QUEUE)
}

/// `fuse_uring_cmd_req { flags: 0, commit_id, qid }` in a command's 80 bytes.
fn command(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut command = [0u8; 80];
    command[8..16].copy_from_slice(&commit_id.to_le_bytes());
    command[16..18].copy_from_slice(&qid.to_le_bytes());
    command
}

/// Sets a submission's `len`, which the io-uring crate leaves 0 for a command: a REGISTER says
/// there its two iovecs.
fn set_len(sqe: &mut squeue::Entry128, len: u32) {
    // SAFETY: `Entry128` is `repr(C)`: the kernel's 64-byte `io_uring_sqe` and 64 more bytes;
    // the sqe's `len` (a u32) is at byte 24 of it, and any value is a valid one.
    unsafe {
        (sqe as *mut squeue::Entry128).cast::<u8>().add(24).cast::<u32>().write_unaligned(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_per_queue_share_the_entries_out() {
        assert_eq!(entries_per_queue(1), MAX_ENTRIES);
        assert_eq!(entries_per_queue(2), MAX_ENTRIES / 2);
        assert_eq!(entries_per_queue(64), 256);
        assert_eq!(entries_per_queue(4096), 4 * SPARE_PER_QUEUE, "a floor on huge machines");
    }

    #[test]
    fn a_command_holds_the_commit_id_and_queue() {
        let command = command(0x0102_0304_0506_0708, 3);
        assert_eq!(&command[..8], &[0; 8], "flags");
        assert_eq!(&command[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&command[16..18], &[3, 0]);
        assert!(command[18..].iter().all(|&byte| byte == 0));
    }

    #[test]
    fn a_registers_len_lands_in_the_sqe() {
        let mut sqe = opcode::UringCmd80::new(types::Fd(7), CMD_REGISTER).build();
        set_len(&mut sqe, 2);
        // SAFETY: reading the 128 bytes of a repr(C) value of that size.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(&bytes[24..28], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &7i32.to_le_bytes(), "the descriptor, at byte 4");
    }
}
