//! `steve`: the command line. Parses arguments, sets up logging, and hands the work to the
//! backend chosen from steve-core's registry; it names no backend, and no protocol logic lives
//! here.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use steve_core::accounting::limits::{Limits, Settings};
use steve_core::server::backend::{
    self, Availability, Backend, FifoChoice, RunConfig, ServeConfig, Start,
};
use steve_core::server::metrics_listener::MetricsAddress;
use steve_core::server::trace_log::TraceConfig;
use steve_core::server::{Announcement, ErrorKind};
use steve_core::{JobCount, Style};
use tracing::info;

mod bench;
mod control;
mod doctor;
mod environment;
mod exec;
mod generate;
mod logging;
mod metrics;
mod notify;
mod output;
mod plot;
mod top;
mod trace;

// Referenced so that the linker keeps each backend crate and its registry entries.
use steve_cuse as _;
use steve_fifo as _;

/// A GNU-make-compatible jobserver: one pool of job slots shared by every build on the machine.
#[derive(Debug, Parser)]
#[command(name = "steve", version, about, propagate_version = true)]
struct Cli {
    /// Log more: what the server does with each client.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log everything, for debugging steve itself.
    #[arg(short, long, global = true)]
    debug: bool,
    /// Colour in log lines: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = logging::Color::Auto)]
    color: logging::Color,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serve a jobserver shared by every build that is given its MAKEFLAGS.
    Serve(Box<ServeArgs>),
    /// Run a command tree under a private jobserver.
    Run(RunArgs),
    /// Run a command on one token of the current jobserver (MAKEFLAGS, or the machine's steve).
    Exec(exec::ExecArgs),
    /// Show a running server's state: pool, limits, holders, waiters, counters.
    Status(control::StatusArgs),
    /// Print settings or status values of a running server, one per line.
    Get(control::GetArgs),
    /// Change settings of a running server (root or the server's own user only).
    Set(control::SetArgs),
    /// Watch a running server's holders, waiters and limits live (q quits).
    Top(top::TopArgs),
    /// Print a running server's event trace: grants, returns, reclaims, refusals, waits, limit
    /// and pressure changes, as they happen or since a time ago.
    Trace(trace::TraceArgs),
    /// Draw a trace (a running server's, or saved files) as an SVG timeline of every build, or
    /// export it for Perfetto and chrome://tracing.
    Plot(plot::PlotArgs),
    /// Print a running server's figures as Prometheus (or OpenMetrics) metrics, for a
    /// scraper or the node-exporter's textfile collector.
    Metrics(metrics::MetricsArgs),
    /// List the backends, whether each works on this machine, and the options each takes.
    Backends,
    /// Find what would make a build started from here escape the machine's pool, and the fix
    /// for each (exit status 1 when something escapes).
    Doctor(doctor::DoctorArgs),
    /// Print the environment that joins a running server's pool: MAKEFLAGS, STEVE_CONTROL and
    /// STEVE_FIFO_MAKEFLAGS (eval "$(steve env)").
    Env(environment::EnvArgs),
    /// Measure the jobservers this machine can run, side by side: round trips, contention,
    /// many connected clients, reclaim after SIGKILL, idle wake-ups (a table, or --json).
    Bench(bench::BenchArgs),
    /// A client of `steve bench` (its load runs as processes of this binary).
    #[command(hide = true)]
    BenchClient {
        /// What it does.
        #[command(subcommand)]
        role: bench::Role,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, steve(1) and one per subcommand, into DIR (for installers).
    #[command(hide = true)]
    ManPages {
        /// Where the pages go.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Which backend serves: `steve backends` lists them. `auto` takes the first that works
    /// here and takes every option given.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// fifo: where clients find the named pipe [default: /run/steve/jobserver as root,
    /// $XDG_RUNTIME_DIR/steve/jobserver otherwise].
    #[arg(long)]
    path: Option<PathBuf>,
    /// fuse: the directory to mount on; clients open DIR/jobserver [default: /run/steve/fuse
    /// as root, $XDG_RUNTIME_DIR/steve/fuse otherwise].
    #[arg(long, value_name = "DIR")]
    mountpoint: Option<PathBuf>,
    /// Number of job tokens, 1 to 4096 (-j8, -j 8, --jobs=8, --jobs 8) [default: the CPUs
    /// this server may use: its affinity, and its cgroup's cpuset and cpu.max quota].
    #[arg(short, long, value_name = "N")]
    jobs: Option<JobCount>,
    /// Permission bits of the jobserver and the control socket, in octal [default: 0600 for a
    /// user's server; for root's, 0660 with --group or the group jobserver, else 0666].
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Group to give the jobserver and the control socket (name or number) [default for root's
    /// server: jobserver, when that group exists].
    #[arg(long)]
    group: Option<String>,
    /// cuse: the device's name under /dev [default: steve].
    #[arg(long, value_name = "NAME")]
    dev_name: Option<String>,
    /// cuse: the user to run as once the device and the control socket are set up (name or
    /// number). A fuse server runs as the user who starts it.
    #[arg(long)]
    user: Option<String>,
    /// cuse, fuse: how long a token reserved for a poll()ing client waits for its read, in
    /// milliseconds [default: 500].
    #[arg(long, value_name = "MS")]
    poll_reservation_ms: Option<u64>,
    /// cuse, fuse: threads serving the kernel connection (fuse: each on a clone of it; cuse:
    /// sharing it; 1: the event loop's thread alone; fuse with --io-uring and N > 1: a ring
    /// and a thread per CPU, whatever N says) [default: fuse a thread per CPU, at most 4;
    /// cuse 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
    /// fuse: take the kernel's requests through io_uring (Linux 6.14 and later, once root has
    /// written Y to /sys/module/fuse/parameters/enable_uring): auto where the kernel offers
    /// it, on (or fail), off [default: off].
    #[arg(long, value_name = "auto|on|off")]
    io_uring: Option<steve_core::server::backend::IoUringChoice>,
    /// Hold tokens back while the 1-minute load average is at or above X.
    #[arg(long, value_name = "X")]
    load_average: Option<f64>,
    /// Tokens that may still be out while a load or memory limit holds tokens back.
    #[arg(long, value_name = "M", default_value_t = 1)]
    min_jobs: usize,
    /// Hold tokens back while less than this many MiB of memory are available, or this
    /// percentage of what the server may use (its cgroup's memory.max, else MemTotal): 4096,
    /// 10%.
    #[arg(long, value_name = "MIB|P%")]
    min_memory_avail: Option<String>,
    /// Hold tokens back while tasks stall on the CPU for HIGH percent of the time or more
    /// (pressure stall information), until it is below LOW [default LOW: HIGH/2; some: some
    /// tasks stalled, full: all of them].
    #[arg(long, value_name = "[some:|full:]HIGH[/LOW]")]
    cpu_pressure: Option<String>,
    /// The same for memory.
    #[arg(long, value_name = "[some:|full:]HIGH[/LOW]")]
    memory_pressure: Option<String>,
    /// The same for I/O.
    #[arg(long, value_name = "[some:|full:]HIGH[/LOW]")]
    io_pressure: Option<String>,
    /// Where the pressure limits read pressure: `system` (/proc/pressure), `cgroup` (this
    /// server's own cgroup) or a cgroup v2 directory [default: system].
    #[arg(long, value_name = "SOURCE", default_value = "system")]
    pressure_source: String,
    /// cuse, fuse: also serve a companion FIFO at PATH, fed from the same pool, for clients
    /// that take only a real FIFO (ninja) [default for root's server: /run/steve/NAME.fifo for
    /// a device, DIR.fifo for a mount on DIR].
    #[arg(long, value_name = "PATH", conflicts_with = "no_fifo")]
    fifo: Option<PathBuf>,
    /// cuse, fuse: no companion FIFO.
    #[arg(long)]
    no_fifo: bool,
    /// cuse, fuse: the most tokens one process may hold.
    #[arg(long, value_name = "K")]
    per_process_limit: Option<usize>,
    /// Who a free token goes to: `build`, the waiting build (a top-level client and the
    /// clients under it) that holds the fewest for its weight; `user`, the same between users;
    /// `fifo`, the oldest request [default: build on cuse and fuse; a fifo server is fifo].
    #[arg(long, value_name = "POLICY")]
    fairness: Option<String>,
    /// cuse, fuse: weights of users' shares, USER:W,... (a name or a uid; W from 1 to 1000,
    /// 1 for users not listed).
    #[arg(long, value_name = "USER:W,...")]
    weights: Option<String>,
    /// cuse, fuse: the most tokens all of a user's processes may hold together, USER:N,...
    #[arg(long, value_name = "USER:N,...")]
    user_caps: Option<String>,
    /// Seconds between readings of the load and memory while a load or memory limit is set.
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    load_recheck: f64,
    /// The control socket [default: beside the jobserver; for a device /dev/NAME,
    /// /run/steve/NAME.control; for a mount on DIR, DIR.control].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Events of the trace (`steve trace`, `steve plot`) the server keeps, newest first; 0
    /// keeps none.
    #[arg(long, value_name = "N", default_value_t = steve_core::trace::DEFAULT_RING_SIZE)]
    trace_size: usize,
    /// Also write every event of the trace to PATH as JSON lines, as it happens (a regular
    /// file of the server's user; made with mode 0640 if missing).
    #[arg(long, value_name = "PATH")]
    trace_file: Option<PathBuf>,
    /// The trace file's size at which it is renamed PATH.1 and started again: bytes, or with
    /// K, M or G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    trace_file_size: u64,
    /// Serve metrics (Prometheus text, or OpenMetrics when asked) over HTTP at ADDR:
    /// unix:PATH, or a loopback HOST:PORT like 127.0.0.1:9877; may be given more than once.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Vec<MetricsAddress>,
    /// Take over the server running with these options (its control socket: --control, or
    /// where this backend's server at this place listens) instead of starting one: the device
    /// or mount, the sockets and the books pass to this process, and the old one exits. Builds
    /// carry on; a restart or an upgrade breaks none. If this fails, the old server serves on.
    #[arg(long)]
    takeover: bool,
    /// Under systemd: on a `systemctl restart`, leave the device or mount, the sockets and the
    /// books in the service manager's file-descriptor store, and take them back at the next
    /// start, so that builds carry on (the unit needs FileDescriptorStoreMax= and
    /// RuntimeDirectoryPreserve=restart; the shipped one has both). A plain stop tears down.
    #[arg(long)]
    fd_store: bool,
    /// Print the environment, once ready, as `export` lines for a shell to source, rather than
    /// plain NAME='value' lines (which systemd's EnvironmentFile= reads).
    #[arg(long)]
    print_env: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Job slots for the command tree, its own implicit one included, 1 to 4096 (-j3, -j 3,
    /// --jobs=3, --jobs 3) [default: the CPUs this process may use, as for serve].
    #[arg(short, long, value_name = "N")]
    jobs: Option<JobCount>,
    /// pipe: inherited descriptors (make 4.2 and later); fifo: a private named pipe (make 4.4).
    #[arg(long, default_value_t = Style::Pipe, value_parser = parse_style)]
    style: Style,
    #[command(flatten)]
    command: CommandLine,
}

/// The command `steve run` and `steve exec` start, after `--` or after steve's own options.
#[derive(Debug, clap::Args)]
pub struct CommandLine {
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `steve run` and `steve exec`: their own failures told apart from the command's statuses, as
/// env(1) does.
const EXIT_STEVE_FAILED: u8 = 125;
const EXIT_CANNOT_RUN: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;
/// Everything else: 2 for input that cannot be used (as clap's own errors), 1 for failures.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            output::usage_error(&error.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    logging::init(cli.verbose, cli.debug, cli.color);
    match cli.command {
        Commands::Serve(args) => report(serve(*args), serve_exit_code),
        Commands::Run(args) => run(args),
        Commands::Exec(args) => match exec::run(args) {
            Ok(status) => ExitCode::from(exit_code_of(status)),
            // As a shell reports a command a signal ended: 128 + the signal.
            Err(exec::ExecError::Stopped(signal)) => {
                output::error(&exec::ExecError::Stopped(signal));
                ExitCode::from(128u8.wrapping_add(signal as u8))
            }
            Err(error) => {
                output::error(&error);
                ExitCode::from(command_exit_code(error.kind()))
            }
        },
        Commands::Status(args) => report(control::status(args), |_| EXIT_FAILED),
        Commands::Get(args) => report(control::get(args), |_| EXIT_FAILED),
        Commands::Set(args) => report(control::set(args), |_| EXIT_FAILED),
        Commands::Top(args) => report(top::run(args), |_| EXIT_FAILED),
        Commands::Trace(args) => report(trace::run(args), |_| EXIT_FAILED),
        Commands::Plot(args) => report(plot::run(args), |_| EXIT_FAILED),
        Commands::Metrics(args) => report(metrics::run(args), |_| EXIT_FAILED),
        Commands::Backends => report(list_backends(), |_| EXIT_FAILED),
        Commands::Env(args) => report(environment::run(args), |_| EXIT_FAILED),
        Commands::Bench(args) => report(bench::run(args), |_| EXIT_FAILED),
        Commands::BenchClient { role } => report(bench::run_role(role), |_| EXIT_FAILED),
        Commands::Completions { shell } => {
            report(generate::completions::<Cli>(shell), |_| EXIT_FAILED)
        }
        Commands::ManPages { dir } => report(generate::man_pages::<Cli>(&dir), |_| EXIT_FAILED),
        Commands::Doctor(args) => match doctor::run(args) {
            Ok(false) => ExitCode::SUCCESS,
            Ok(true) => ExitCode::from(EXIT_FAILED),
            Err(error) if output::is_closed_stdout(&error) => ExitCode::SUCCESS,
            Err(error) => {
                output::error(&*error);
                ExitCode::from(EXIT_FAILED)
            }
        },
    }
}

/// Success, or the error in one line and the exit code `code` picks for it. A closed standard
/// output (`steve status | head -1`) ends the command quietly.
fn report(outcome: anyhow::Result<()>, code: fn(&anyhow::Error) -> u8) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if output::is_closed_stdout(&error) => ExitCode::SUCCESS,
        Err(error) => {
            output::error(&*error);
            ExitCode::from(code(&error))
        }
    }
}

fn serve_exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<steve_core::server::Error>().map(|error| error.kind()) {
        Some(ErrorKind::Usage) => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

/// `steve run`'s and `steve exec`'s own failures: 127 when the command was not found, 126
/// when it could not be started otherwise, 125 for anything else.
fn command_exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::CommandNotFound => EXIT_NOT_FOUND,
        ErrorKind::CommandNotExecutable => EXIT_CANNOT_RUN,
        _ => EXIT_STEVE_FAILED,
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal mode like 0660")),
    }
}

/// A size in bytes: `4096`, `512K`, `64M`, `1G` (powers of 1,024).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.strip_suffix(['K', 'k']) {
        Some(digits) => (digits, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(digits) => (digits, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(digits) => (digits, 30),
                None => (text, 0),
            },
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(1 << shift))
        .filter(|bytes| *bytes >= 4096)
        .ok_or_else(|| format!("{text:?} is not a size of at least 4096 bytes like 64M"))
}

fn parse_style(text: &str) -> Result<Style, String> {
    text.parse()
}

/// The job count given, or the CPUs this process may use (its affinity, its cgroup's cpuset and
/// cpu.max), with where it came from.
fn jobs_or_budget(given: Option<JobCount>) -> (JobCount, String) {
    match given {
        Some(jobs) => (jobs, "-j".to_string()),
        None => {
            let budget = steve_core::cgroup::cpu_budget();
            tracing::debug!("no -j: {} jobs, for {}", budget.cpus, budget.from);
            (budget.cpus, budget.from)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (jobs, jobs_from) = jobs_or_budget(args.jobs);
    // Said once the server is up, so that a refused start still prints one line.
    let budget_note = args.jobs.is_none().then(|| format!("no -j: {jobs} tokens, for {jobs_from}"));
    // The limits get the same checks as `steve set`.
    let mut settings = Settings { jobs, limits: Limits::default() };
    let given: Vec<(String, String)> = [
        ("load-average", args.load_average.map(|v| v.to_string())),
        ("min-jobs", Some(args.min_jobs.to_string())),
        ("min-memory-avail", args.min_memory_avail.map(|v| v.to_string())),
        ("per-process-limit", args.per_process_limit.map(|v| v.to_string())),
        ("load-recheck", Some(args.load_recheck.to_string())),
        ("fairness", args.fairness),
        ("weights", args.weights.map(|v| control::with_uids("weights", &v)).transpose()?),
        ("user-caps", args.user_caps.map(|v| control::with_uids("user-caps", &v)).transpose()?),
        ("cpu-pressure", args.cpu_pressure),
        ("memory-pressure", args.memory_pressure),
        ("io-pressure", args.io_pressure),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_string(), value?)))
    .collect();
    settings
        .apply(&given)
        .map_err(|error| steve_core::server::Error::usage(format!("--{error}")))?;
    let config = ServeConfig {
        jobs,
        jobs_from,
        limits: settings.limits,
        pressure_source: steve_core::server::probe::PressureSource::parse(&args.pressure_source)
            .map_err(|error| {
                steve_core::server::Error::usage(format!("--pressure-source: {error}"))
            })?,
        control: args.control,
        mode: args.mode,
        group: args.group,
        path: args.path,
        mountpoint: args.mountpoint,
        dev_name: args.dev_name,
        user: args.user,
        poll_reservation: args.poll_reservation_ms.map(std::time::Duration::from_millis),
        threads: args.threads.map(usize::from),
        io_uring: args.io_uring,
        fifo: match (args.fifo, args.no_fifo) {
            (Some(path), _) => Some(FifoChoice::At(path)),
            (None, true) => Some(FifoChoice::Off),
            (None, false) => None,
        },
        trace: TraceConfig {
            ring_size: args.trace_size,
            file: args.trace_file,
            file_size: args.trace_file_size,
        },
        metrics: args.metrics_listen,
        takeover: args.takeover,
        fd_store: args.fd_store,
    };
    let chosen = choose_backend(&args.backend, &config)?;
    let print_env = args.print_env;
    let settings_jobs = jobs;
    let mut announce = |announcement: &Announcement| {
        if let Some(note) = &budget_note {
            info!("{note}");
        }
        info!("clients use MAKEFLAGS='{}'", announcement.makeflags);
        info!("control socket: {}", announcement.control.display());
        if let Some(fifo) = &announcement.fifo_makeflags {
            info!("clients that take only a FIFO (ninja) use MAKEFLAGS='{fifo}'");
        }
        // The first lines on stdout say the server is ready, in a form a shell can use.
        let format = if print_env { environment::Format::Sh } else { environment::Format::Systemd };
        let lines = environment::lines(
            &announcement.makeflags,
            &announcement.control,
            announcement.fifo_makeflags.as_deref(),
            format,
        );
        let _ = output::line(&lines);
        notify::ready(&format!(
            "serving {} tokens on {}",
            settings_jobs,
            announcement.path.display()
        ));
    };
    let served = steve_core::server::serve(chosen, &config, &mut announce);
    notify::stopping();
    served?;
    Ok(())
}

/// The backend `name` names, or for `auto` the first in the registry's order that works here
/// and takes every option given.
fn choose_backend(name: &str, config: &ServeConfig) -> anyhow::Result<&'static Backend> {
    let usage = |message: String| anyhow::Error::new(steve_core::server::Error::usage(message));
    if name != "auto" {
        let chosen = backend::find(name).ok_or_else(|| {
            usage(format!("no backend named {name:?}; `steve backends` lists them"))
        })?;
        // Options first: a wrong option is wrong on any machine.
        chosen.check_options(config)?;
        if let Availability::Unavailable(why) = (chosen.availability)() {
            bail!(steve_core::server::Error::unavailable(format!(
                "backend {name} cannot work here: {why}"
            )));
        }
        return Ok(chosen);
    }
    let given = config.given_options();
    let mut passed_over = Vec::new();
    for candidate in backend::auto_order() {
        let reason = match (candidate.availability)() {
            Availability::Unavailable(why) => why,
            Availability::Available => {
                match given.iter().find(|option| !candidate.takes(**option)) {
                    Some(option) => format!("it takes no {}", option.flag()),
                    None => {
                        info!("backend {} chosen: the first that works here and takes the options given", candidate.name);
                        return Ok(candidate);
                    }
                }
            }
        };
        info!("backend {} passed over: {reason}", candidate.name);
        passed_over.push(format!("{}: {reason}", candidate.name));
    }
    Err(usage(format!(
        "no server backend works here with the options given ({})",
        passed_over.join("; ")
    )))
}

fn run(args: RunArgs) -> ExitCode {
    let Some(backend) = backend::command_tree() else {
        output::error(&*anyhow::anyhow!("no command-tree backend is built in"));
        return ExitCode::from(EXIT_STEVE_FAILED);
    };
    let Start::CommandTree(start) = backend.start else {
        unreachable!("command_tree() finds a command-tree backend");
    };
    let (jobs, jobs_from) = jobs_or_budget(args.jobs);
    let config = RunConfig { jobs, jobs_from, style: args.style, command: args.command.command };
    match start(&config) {
        Ok(status) => ExitCode::from(exit_code_of(status)),
        Err(error) => {
            output::error(&error);
            ExitCode::from(command_exit_code(error.kind()))
        }
    }
}

/// The command's exit code, or 128 + the signal that killed it, as a shell reports it.
fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => EXIT_STEVE_FAILED,
    }
}

fn list_backends() -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for found in backend::backends() {
        let kind = match found.start {
            Start::Server(_) => "steve serve",
            Start::CommandTree(_) => "steve run",
        };
        let availability = match (found.availability)() {
            Availability::Available => "available".to_string(),
            Availability::Unavailable(why) => format!("unavailable: {why}"),
        };
        writeln!(
            stdout,
            "{:<6} {:<12} {availability}\n       {}",
            found.name, kind, found.summary
        )?;
        if matches!(found.start, Start::Server(_)) {
            let own: Vec<&str> = found.options.iter().map(|option| option.flag()).collect();
            let own = if own.is_empty() { "none".to_string() } else { own.join(" ") };
            writeln!(stdout, "       own options: {own}")?;
        }
    }
    stdout.flush().context("writing the list")?;
    Ok(())
}
