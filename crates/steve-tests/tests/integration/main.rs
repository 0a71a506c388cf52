//! steve's integration tests: the real `steve` binary serving the real clients.
//!
//! Each module says what it covers in its first line. The clients (GNU make 4.4.1 and ninja
//! 1.13.2 from PyPI, Debian's make 4.3, cargo) are installed by `scripts/test`; a missing one
//! fails its tests, it never skips them.

mod bad_input;
mod cargo_builds;
mod cli;
mod client_library;
mod control;
mod cuse_vm;
mod fifo_server;
mod fuse_host;
mod leak_recovery;
mod run_command;
