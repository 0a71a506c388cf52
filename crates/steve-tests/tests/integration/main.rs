//! steve's integration tests: the real `steve` binary serving the real clients.
//!
//! Each module says what it covers in its first line. The clients (GNU make 4.4.1 and ninja
//! 1.13.2 from PyPI, Debian's make 4.3, cargo) are installed by `scripts/test`, which sets
//! `STEVE_TEST_ALL=1`: then a missing one fails its tests. Without it (a plain `cargo test`),
//! the tests that need one of them, or root, are listed as ignored, each saying what it needs.
//! The compliance suite, every scenario against every backend, is the `compliance` test.

mod bad_input;
mod c_library;
mod cargo_builds;
mod cli;
mod client_library;
mod control;
mod doctor;
mod fifo_server;
mod fuzz_makeflags;
mod hardening;
mod leak_recovery;
mod packaging;
mod run_command;
mod scheduling;
mod top;
