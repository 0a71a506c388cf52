//! Fuzz target: MAKEFLAGS, which every client's environment carries and the daemon's own tools
//! (`steve status`, `steve exec`, the client library) read.
//!
//! Parsing must never panic, and what steve writes must read back as what it parsed: a value
//! that parses, written out again (`Display`, as steve exports MAKEFLAGS to children), parses
//! to the same flags.

use steve_core::makeflags::MakeFlags;

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}

fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(flags) = MakeFlags::parse(text) else { return };
    let written = flags.to_string();
    match MakeFlags::parse(&written) {
        Ok(again) => assert_eq!(again, flags, "{text:?} was written as {written:?}"),
        Err(error) => panic!("{text:?} was written as {written:?}, which fails: {error}"),
    }
    let _ = flags.jobserver();
    let _ = flags.without_jobserver().to_string();
}
