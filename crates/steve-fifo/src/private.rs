//! The `pipe` backend: `steve run`, one command tree under a private jobserver.
//!
//! Built on steve-core's client library ([`Jobserver`]): the command gets `jobs - 1` tokens in a
//! pipe plus the implicit one every client holds, so at most `jobs` of its jobs run at once. With
//! [`RunStyle::Pipe`] the pipe is anonymous and passed as inherited descriptors
//! (`--jobserver-auth=R,W`, which make 4.3 needs); with [`RunStyle::Fifo`] it is a named pipe in a
//! private directory (`fifo:PATH`, make 4.4 and later). `MAKEFLAGS` and `CARGO_MAKEFLAGS` are set
//! for the command, keeping the other flags of the `MAKEFLAGS` steve itself was given. SIGINT,
//! SIGTERM and SIGHUP sent to steve are passed on; steve waits for the command and returns its
//! status, and warns if tokens are missing then.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use steve_core::accounting::limits::{Limits, Settings, SystemProbe};
use steve_core::client::Jobserver;
use steve_core::makeflags::{self, JobserverAuth};
use steve_core::server::backend::RunConfig;
use steve_core::server::probe::ProcProbe;
use steve_core::server::signals::{supervise, Signals};
use steve_core::status::{BackendReport, CounterReport, PoolReport, ReportHeader, StatusReport};
use steve_core::JobCount;
use tracing::{debug, info, warn};

use crate::error::FifoError;

/// `steve run`: runs the command under a private jobserver and returns its exit status.
pub fn run(config: &RunConfig) -> Result<ExitStatus, steve_core::server::Error> {
    Ok(run_command_tree(config)?)
}

fn run_command_tree(config: &RunConfig) -> Result<ExitStatus, FifoError> {
    // Refuse a malformed MAKEFLAGS before anything is created.
    makeflags::from_env().map_err(FifoError::Makeflags)?;
    let signals = Signals::block()
        .map_err(|e| FifoError::io("block signals for", "steve run")(std::io::Error::from(e)))?;
    let jobserver = Jobserver::create(config.jobs, config.style).map_err(FifoError::Client)?;
    let (program, args) = config.command.split_first().ok_or(FifoError::NoCommand)?;
    let mut command = Command::new(program);
    command.args(args);
    let flags = jobserver.configure(&mut command);
    debug!(makeflags = %flags, "starting {:?}", config.command);
    let child = command.spawn().map_err(|source| FifoError::Spawn {
        command: program.to_string_lossy().into_owned(),
        source,
    })?;
    let started = Instant::now();
    let (mut child, mut signals) = (child, signals);
    let status = supervise(&mut child, &mut signals, &mut || {
        info!("status:\n{}", status(&jobserver, &config.jobs_from, started))
    })
    .map_err(FifoError::io("wait for", "the command"))?;
    let tokens = jobserver.jobs() - 1;
    let report = jobserver.close().map_err(FifoError::Client)?;
    if report.missing > 0 {
        warn!(
            "{} of {tokens} jobserver tokens were not returned by the command tree (a job was \
             killed, or is still running in the background)",
            report.missing
        );
    } else if report.surplus > 0 {
        warn!("the command tree returned {} more tokens than it took", report.surplus);
    }
    Ok(status)
}

/// The private jobserver's status: its `jobs` slots, `jobs - 1` tokens in the pipe.
fn status(jobserver: &Jobserver, jobs_from: &str, started: Instant) -> StatusReport {
    let free = jobserver.free();
    // Made from a JobCount by `steve run`, so always one.
    let jobs = JobCount::new(jobserver.jobs()).unwrap_or_else(|_| JobCount::cpus());
    let tokens = jobs.get() - 1;
    let path = match jobserver.auth() {
        JobserverAuth::Fifo(path) => path,
        _ => PathBuf::from("anonymous pipe"),
    };
    let header = ReportHeader {
        backend: "pipe".to_string(),
        path,
        control: None,
        uptime_seconds: started.elapsed().as_secs_f64(),
        limits: Settings { jobs, limits: Limits::default() },
        jobs_from: jobs_from.to_string(),
        system: ProcProbe::default().read(),
        limited_by: None,
    };
    // The command's implicit token is one of the jobs but never in the pipe.
    let part = BackendReport {
        pool: PoolReport {
            jobs: jobs.get(),
            size: tokens,
            free,
            held: tokens.saturating_sub(free),
            withheld: 0,
            lent: 0,
        },
        holders_exact: false,
        holders: Vec::new(),
        waiters: None,
        builds: None,
        companion: None,
        counters: CounterReport::default(),
    };
    StatusReport::assemble(header, part)
}
