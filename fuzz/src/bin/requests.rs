//! Fuzz target: what the kernel hands the daemon on `/dev/cuse` or `/dev/fuse`, which any
//! local process shapes (its pid, its buffer sizes, the bytes it writes).
//!
//! The input is a run of requests, each as long as its header's length field says (the last
//! one takes what is left). Each goes through the decoder (`steve_cuse::ll::parse`), which must
//! never panic and must agree with the length it was given; each request that decodes drives
//! one device ledger (`steve_core::accounting::device::Device`) the way the session does: a
//! read takes a token or queues (under a request id of its own, since the kernel never has two
//! requests with one id in flight), a write returns tokens, a poll reserves, an interrupt cancels,
//! a release is the process going away. After every step the books must balance (free + held
//! + withheld = pool size, no holder beyond what it was given) and nothing may panic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steve_core::accounting::device::{Device, PollHandle, RequestId};
use steve_core::JobCount;
use steve_cuse::ll::{self, Request};

/// `O_NONBLOCK` in a read's flags.
const NONBLOCK: u32 = 0o4000;
/// `FUSE_POLL_SCHEDULE_NOTIFY`: the caller will wait.
const SCHEDULE_NOTIFY: u32 = 1;

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}

fn run(data: &[u8]) {
    // To see what a crashing input does: STEVE_FUZZ_VERBOSE=1 requests < INPUT.
    let verbose = std::env::var_os("STEVE_FUZZ_VERBOSE").is_some();
    let mut device = Device::new(JobCount::new(4).expect("4 jobs"), Duration::from_millis(50));
    let started = Instant::now();
    let mut now = started;
    let mut rest = data;
    // The kernel's request ids as the device sees them: each read gets a fresh one.
    let mut requests: HashMap<u64, RequestId> = HashMap::new();
    let mut next_request = 0;
    while !rest.is_empty() {
        let claimed = rest.get(..4).map_or(rest.len(), |len| {
            u32::from_ne_bytes(len.try_into().expect("4 bytes")) as usize
        });
        let (message, tail) = rest.split_at(claimed.clamp(1, rest.len()));
        rest = tail;
        let (header, request) = match ll::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                // The daemon logs the error and answers with its unique, if it has one.
                let _ = error.to_string();
                continue;
            }
        };
        assert_eq!(
            header.len as usize,
            message.len(),
            "the decoder took a length it was not given"
        );
        // A few processes, so that they contend; time moves on by the request's low bits.
        let pid = header.pid % 8;
        now += Duration::from_millis(header.unique & 0x3f);
        device.expire(now);
        if verbose {
            eprintln!("pid {pid} at +{:?}: {request:?}", now - started);
        }
        match request {
            Request::Read { flags, size, .. } if size > 0 => {
                // The kernel never has two requests with one unique in flight; the input may.
                next_request += 1;
                requests.insert(header.unique, RequestId(next_request));
                let request = RequestId(next_request);
                let _ = device.read(pid, request, flags & NONBLOCK != 0, now);
            }
            Request::Write { data, .. } => {
                let _ = device.write(pid, data.len(), now);
            }
            Request::Poll { kh, flags, .. } => {
                let handle = (flags & SCHEDULE_NOTIFY != 0).then_some(PollHandle(kh));
                let _ = device.poll(pid, handle, now);
            }
            Request::Interrupt { target } => {
                if let Some(request) = requests.get(&target) {
                    let _ = device.interrupt(*request, now);
                }
            }
            Request::Release { .. } | Request::Flush { .. } => {
                let _ = device.process_exited(pid, now);
            }
            _ => {}
        }
        let _ = device.take_events();
        assert!(device.is_consistent(), "the books broke after {request:?}");
        let counts = device.counts();
        assert!(counts.held <= counts.size, "more out than the pool: {counts:?}");
    }
}
