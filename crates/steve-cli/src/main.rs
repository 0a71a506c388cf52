//! `steve`: the command line. Parses arguments, sets up logging, and hands the work to the
//! backend chosen from steve-core's registry; no protocol logic lives here.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use steve_core::backend::{
    self, Announcement, Availability, RunConfig, RunStyle, ServeConfig, Start,
};
use steve_core::limits::Limits;
use tracing::info;

mod control;
mod exec;
mod top;

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
    /// List the backends and whether each works on this machine.
    Backends,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Which backend serves: `steve backends` lists them.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Where clients find the jobserver [default: /run/steve/jobserver as root,
    /// $XDG_RUNTIME_DIR/steve/jobserver otherwise].
    #[arg(long)]
    path: Option<PathBuf>,
    /// fuse: the directory to mount on; clients open DIR/jobserver [default: /run/steve/fuse
    /// as root, $XDG_RUNTIME_DIR/steve/fuse otherwise].
    #[arg(long, value_name = "DIR")]
    mountpoint: Option<PathBuf>,
    /// Number of job tokens [default: the number of CPUs].
    #[arg(short, long, value_name = "N")]
    jobs: Option<u32>,
    /// Permission bits of the path, in octal [default: 0600 for a user's server; for root's,
    /// 0666, or 0660 with --group].
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Group to give the path (name or number).
    #[arg(long)]
    group: Option<String>,
    /// cuse: the device's name under /dev.
    #[arg(long, value_name = "NAME", default_value = "steve")]
    dev_name: String,
    /// cuse: the user to run as once the device is set up (name or number). A fuse server
    /// runs as the user who starts it.
    #[arg(long)]
    user: Option<String>,
    /// cuse, fuse: how long a token reserved for a poll()ing client waits for its read, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    poll_reservation_ms: u64,
    /// Hold tokens back while the 1-minute load average is at or above X.
    #[arg(long, value_name = "X")]
    load_average: Option<f64>,
    /// Tokens that may still be out while a load or memory limit holds tokens back.
    #[arg(long, value_name = "M", default_value_t = 1)]
    min_jobs: usize,
    /// Hold tokens back while less than this many MiB of memory are available.
    #[arg(long, value_name = "MIB")]
    min_memory_avail: Option<u64>,
    /// cuse, fuse: the most tokens one process may hold.
    #[arg(long, value_name = "K")]
    per_process_limit: Option<usize>,
    /// Seconds between readings of the load and memory while over a limit.
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    load_recheck: f64,
    /// The control socket [default: beside the jobserver; for a device /dev/NAME,
    /// /run/steve/NAME.control; for a mount on DIR, DIR.control].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Job slots for the command tree, its own implicit one included [default: the number of
    /// CPUs].
    #[arg(short, long, value_name = "N")]
    jobs: Option<u32>,
    /// pipe: inherited descriptors (make 4.2 and later); fifo: a private named pipe (make 4.4).
    #[arg(long, value_enum, default_value_t = Style::Pipe)]
    style: Style,
    #[command(flatten)]
    command: CommandLine,
}

/// The command `steve run` and `steve exec` start, after `--`.
#[derive(Debug, clap::Args)]
pub struct CommandLine {
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Style {
    Pipe,
    Fifo,
}

/// The preference of `--backend auto`, best first.
const AUTO_ORDER: [&str; 3] = ["cuse", "fuse", "fifo"];

/// `steve run`'s own failures, told apart from the command's statuses as env(1) does.
const EXIT_STEVE_FAILED: u8 = 125;
const EXIT_CANNOT_RUN: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.debug);
    let outcome = match cli.command {
        Commands::Serve(args) => serve(*args).map(|()| ExitCode::SUCCESS),
        Commands::Run(args) => return run(args),
        Commands::Exec(args) => {
            return match exec::run(args) {
                Ok(status) => ExitCode::from(exit_code_of(status)),
                Err(error) => {
                    eprintln!("steve: error: {error:#}");
                    let code = match error.downcast_ref::<exec::SpawnFailed>() {
                        Some(failed) => spawn_failure_code(&failed.source),
                        None => EXIT_STEVE_FAILED,
                    };
                    ExitCode::from(code)
                }
            }
        }
        Commands::Status(args) => control::status(args).map(|()| ExitCode::SUCCESS),
        Commands::Get(args) => control::get(args).map(|()| ExitCode::SUCCESS),
        Commands::Set(args) => control::set(args).map(|()| ExitCode::SUCCESS),
        Commands::Top(args) => top::run(args).map(|()| ExitCode::SUCCESS),
        Commands::Backends => list_backends().map(|()| ExitCode::SUCCESS),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("steve: error: {error:#}");
        ExitCode::FAILURE
    })
}

fn init_logging(verbose: bool, debug: bool) {
    // fuser (which mounts for the fuse backend) logs its steps at info; steve says the same in
    // its own words, so fuser speaks up only with --debug, or --verbose for its info.
    let default = if debug {
        "trace"
    } else if verbose {
        "debug,fuser=info"
    } else {
        "info,fuser=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn default_jobs() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal mode like 0660")),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let chosen = choose_backend(&args.backend)?;
    let Start::Server(start) = chosen.start else {
        bail!("backend {} serves one command tree: use `steve run`", chosen.name);
    };
    let mut limits = Limits::new(args.jobs.unwrap_or_else(default_jobs) as usize);
    let settings: Vec<(String, String)> = [
        ("load-average", args.load_average.map(|v| v.to_string())),
        ("min-jobs", Some(args.min_jobs.to_string())),
        ("min-memory-avail", args.min_memory_avail.map(|v| v.to_string())),
        ("per-process-limit", args.per_process_limit.map(|v| v.to_string())),
        ("load-recheck", Some(args.load_recheck.to_string())),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_string(), value?)))
    .collect();
    // The same checks as `steve set`; the backend checks `jobs` against what it serves.
    limits.apply(&settings, usize::MAX).map_err(|error| anyhow!("--{error}"))?;
    let config = ServeConfig {
        limits,
        control: args.control,
        path: args.path,
        mountpoint: args.mountpoint,
        mode: args.mode,
        group: args.group,
        device_name: Some(args.dev_name),
        user: args.user,
        poll_reservation: std::time::Duration::from_millis(args.poll_reservation_ms),
    };
    let mut announce = |announcement: &Announcement| {
        info!("clients use MAKEFLAGS='{}'", announcement.makeflags);
        let mut stdout = std::io::stdout().lock();
        // The first line on stdout says the server is ready, in a form a shell can use.
        let _ = writeln!(stdout, "MAKEFLAGS='{}'", shell_quote_body(&announcement.makeflags));
        if let Some(control) = &announcement.control {
            info!("control socket: {}", control.display());
            let control = control.display().to_string();
            let _ = writeln!(stdout, "STEVE_CONTROL='{}'", shell_quote_body(&control));
        }
        let _ = stdout.flush();
    };
    start(&config, &mut announce).map_err(|error| anyhow!(error))
}

/// `text` made safe inside single quotes.
fn shell_quote_body(text: &str) -> String {
    text.replace('\'', r"'\''")
}

fn choose_backend(name: &str) -> anyhow::Result<&'static backend::Backend> {
    if name != "auto" {
        let chosen = backend::find(name)
            .with_context(|| format!("no backend named {name:?}; `steve backends` lists them"))?;
        if let Availability::Unavailable(why) = (chosen.availability)() {
            bail!("backend {name} cannot work here: {why}");
        }
        return Ok(chosen);
    }
    for candidate in AUTO_ORDER {
        let Some(found) = backend::find(candidate) else {
            continue;
        };
        match (found.availability)() {
            Availability::Available => {
                info!("backend {candidate} chosen: the first available of {AUTO_ORDER:?}");
                return Ok(found);
            }
            Availability::Unavailable(why) => info!("backend {candidate} passed over: {why}"),
        }
    }
    bail!("no server backend works on this machine; `steve backends` says why")
}

fn run(args: RunArgs) -> ExitCode {
    let Some(backend) = backend::find("pipe") else {
        eprintln!("steve: error: the pipe backend is not built in");
        return ExitCode::from(EXIT_STEVE_FAILED);
    };
    let Start::CommandTree(start) = backend.start else {
        eprintln!("steve: error: the pipe backend cannot run a command tree");
        return ExitCode::from(EXIT_STEVE_FAILED);
    };
    let config = RunConfig {
        jobs: args.jobs.unwrap_or_else(default_jobs),
        style: match args.style {
            Style::Pipe => RunStyle::Pipe,
            Style::Fifo => RunStyle::Fifo,
        },
        command: args.command.command,
    };
    match start(&config) {
        Ok(status) => ExitCode::from(exit_code_of(status)),
        Err(error) => {
            eprintln!("steve: error: {error}");
            let code = match error.downcast_ref::<steve_fifo::FifoError>() {
                Some(steve_fifo::FifoError::Spawn { source, .. }) => spawn_failure_code(source),
                _ => EXIT_STEVE_FAILED,
            };
            ExitCode::from(code)
        }
    }
}

/// 127 when the command was not found, 126 when it could not be started otherwise (as env(1)).
fn spawn_failure_code(error: &std::io::Error) -> u8 {
    if error.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
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
    }
    Ok(())
}
