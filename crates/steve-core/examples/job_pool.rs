//! Runs each argument as a shell command, as many at once as the jobserver allows: the one
//! MAKEFLAGS names (so under `make` or `steve serve` it shares their pool), or, when there is
//! none, a private one with a slot per CPU, as `make -j$(nproc)` would make.
//!
//! ```sh
//! cargo run -p steve-core --example job_pool -- 'sleep 1' 'sleep 1' 'sleep 1'
//! steve run -j2 -- target/debug/examples/job_pool 'sleep 1' 'sleep 1' 'sleep 1'   # 2 at a time
//! ```

use std::process::{Command, ExitCode};

use steve_core::{Client, ClientError, JobCount, JobPool, Jobserver, Style};

fn main() -> Result<ExitCode, ClientError> {
    let commands: Vec<String> = std::env::args().skip(1).collect();
    // Kept alive while the jobs run: dropping it would close a private jobserver.
    let private;
    let client = match Client::from_env() {
        Ok(client) => client,
        Err(ClientError::NoJobserver) => {
            private = Jobserver::create(JobCount::cpus(), Style::Pipe)?;
            private.client()?
        }
        Err(error) => return Err(error),
    };
    let mut pool = JobPool::new(client);
    for command in &commands {
        // Waits for a token (the first job runs on the implicit one).
        let id = pool.spawn(Command::new("sh").args(["-c", command]))?;
        eprintln!("job {id}: {command}");
    }
    let mut failed = 0;
    for finished in pool.collect_all()? {
        if !finished.status.success() {
            eprintln!("job {} failed: {}", finished.id, finished.status);
            failed += 1;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
