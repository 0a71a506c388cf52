//! A client of steve-core's client library, for tests: `client-probe jobs K SECONDS LOG NAME`
//! joins the jobserver its environment names and runs K jobs through a `JobPool`, each logging
//! its start and end to LOG (see `steve_tests::timeline`). The first job runs on the implicit
//! token; the rest wait for tokens.

use std::process::Command;

use steve_core::client::{Client, JobPool};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, count, seconds, log, name] = args.as_slice() else {
        eprintln!("usage: client-probe jobs K SECONDS LOG NAME");
        std::process::exit(2);
    };
    assert_eq!(mode, "jobs", "unknown mode {mode}");
    let count: usize = count.parse().expect("K");
    let client = Client::from_env().unwrap_or_else(|error| {
        eprintln!("client-probe: {error}");
        std::process::exit(1);
    });
    let mut pool = JobPool::new(client);
    for n in 0..count {
        let job = format!("{name}-{n}");
        let script = format!(
            "echo start {job} $(date +%s%N) >> {log}; sleep {seconds}; echo end {job} $(date +%s%N) >> {log}"
        );
        pool.spawn(Command::new("sh").args(["-c", &script])).expect("spawn");
    }
    for finished in pool.collect_all().expect("collect") {
        assert!(finished.status.success(), "job {} failed: {}", finished.id, finished.status);
    }
}
