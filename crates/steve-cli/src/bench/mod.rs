//! `steve bench`: measures the jobservers this machine can run, side by side in one run, and
//! prints a table (or `--json`) that docs/performance.md is made from.
//!
//! What it measures, each against a bare kernel FIFO (no server: the floor) and every backend
//! whose server works here (`steve backends`):
//! - round trips per second of one client (read a token, write it back), alternating the
//!   targets round by round so that a machine's drift hits them all alike; the median; also
//!   against each server with a load and a memory limit set (never reached), and beside the
//!   fuse server against the bench's minimal FUSE server (`steve_cuse::fuse::baseline`) in
//!   libfuse's shapes: one thread, a thread per CPU on one descriptor, on cloned ones, and
//!   (where root turned FUSE over io_uring on) a thread and a ring per CPU;
//! - contention: the total of 2, 8 and 32 clients at once; where they outnumber the tokens,
//!   also against pools of a token each, as the FUSE baselines (which answer every read)
//!   behave;
//! - scale: one client's round trips while K idle clients are connected (each took and gave
//!   back a token, so the server watches it), how long connecting them took, and the server's
//!   resident memory then;
//! - hand-offs: K readers blocked for a token (per-process backends), handed one each in turn,
//!   readers new to the server and readers each served once before;
//! - reclaim: from SIGKILL of a client holding 3 of 4 tokens until all 4 can be read again
//!   (per-process backends), percentiles over many trials;
//! - idle wake-ups: the server's context switches per second with nobody using it.
//!
//! Figures are for reading, not for passing: nothing here fails on a slow result.

mod fork;
mod load;
mod target;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use steve_core::server::backend::{self, Availability};
use steve_cuse::fuse::baseline::Threading;

pub use load::{run_role, Role};
use target::Target;

/// Tokens in every pool measured.
const JOBS: usize = 4;
/// A target's name with limits set: `fuse, limits set`.
const LIMITED: &str = ", limits set";
/// The limits then: a load average and a memory floor no machine reaches, so that tokens flow
/// as without them and only reading the system costs.
const LIMITS: &[&str] = &["--load-average", "100000", "--min-memory-avail", "1"];

/// `steve bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (a smoke test): one round, fewer clients, a tenth of a second each.
    #[arg(long)]
    quick: bool,
    /// Print the figures as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Rounds of the alternated measurements [default: 7, or 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds each round-trip measurement runs [default: 1, or 0.1 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// The most idle connected clients in the scale measurement [default: 10000, or 100 with
    /// --quick].
    #[arg(long, value_name = "K")]
    max_clients: Option<usize>,
    /// Only these backends (repeat the option) [default: every one that works here].
    #[arg(long = "backend", value_name = "NAME")]
    backends: Vec<String>,
    /// The steve binary whose servers are measured, to compare two builds in one way
    /// [default: this one].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    /// What was measured.
    measure: String,
    /// Against what: `pipe` or a backend.
    target: String,
    /// The median (or the one value); `None` when the measurement could not be made (the
    /// detail says why: a server too slow to connect every client, say).
    value: Option<f64>,
    unit: &'static str,
    /// Spread and circumstances: every sample, percentiles, counts.
    detail: String,
}

impl Figure {
    /// A rate and its detail, or why it could not be measured (then no value).
    fn of(
        measure: String,
        target: &str,
        unit: &'static str,
        measured: anyhow::Result<(f64, String)>,
    ) -> Figure {
        let (value, detail) = match measured {
            Ok((value, detail)) => (Some(value.round()), detail),
            Err(error) => (None, format!("not measured: {error:#}")),
        };
        Figure { measure, target: target.to_string(), value, unit, detail }
    }
}

/// The run's settings, from the options.
struct Plan {
    rounds: usize,
    seconds: f64,
    contention: Vec<usize>,
    scale: Vec<usize>,
    reclaim_trials: usize,
    idle_seconds: f64,
}

impl Plan {
    fn from(args: &BenchArgs) -> Plan {
        let quick = args.quick;
        let max_clients = args.max_clients.unwrap_or(if quick { 100 } else { 10_000 });
        Plan {
            rounds: args.rounds.unwrap_or(if quick { 1 } else { 7 }).max(1),
            seconds: args.seconds.unwrap_or(if quick { 0.1 } else { 1.0 }),
            contention: if quick { vec![2, 8] } else { vec![2, 8, 32] },
            scale: [10, 100, 1_000, 10_000].into_iter().filter(|k| *k <= max_clients).collect(),
            reclaim_trials: if quick { 10 } else { 200 },
            idle_seconds: if quick { 0.5 } else { 3.0 },
        }
    }
}

/// Runs the bench and prints what it measured.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from(&args);
    let backends = chosen_backends(&args.backends)?;
    let dir = own_directory(&std::env::temp_dir())?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let started = Instant::now();
    let mut figures = Vec::new();
    let mut targets = vec!["pipe".to_string()];
    targets.extend(backends.iter().cloned());
    // Beside the fuse server, what a FUSE round trip costs with nothing behind it.
    if backends.iter().any(|name| name == "fuse") {
        targets.extend(baselines().into_iter().map(|(name, _)| name));
    }
    // The kernel-served backends also in their other shape: fuse, served from a thread per
    // CPU by default, from the loop's thread alone; cuse from a thread per CPU (`--threads`).
    let threads = cpus();
    for backend in backends.iter().filter(|name| *name != "fifo") {
        targets.push(threaded_name(backend, other_threads(backend, threads)));
    }
    // And fuse through io_uring, where the kernel offers it.
    if backends.iter().any(|name| name == "fuse") {
        match steve_cuse::fuse::uring::enabled() {
            Ok(()) => targets.extend([IO_URING, IO_URING_QUEUES].map(String::from)),
            Err(why) => eprintln!("steve bench: {IO_URING} is not measured: {why}"),
        }
    }
    // With limits that read the system (never reached): what reading it costs a round trip.
    let limited: Vec<String> = backends.iter().map(|name| format!("{name}{LIMITED}")).collect();
    let server = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("this binary")?,
    };
    // A target by name, its pool of `jobs` tokens.
    let start_with = |name: &str, jobs: usize| -> anyhow::Result<Target> {
        if let Some((name, threading)) = baselines().into_iter().find(|(known, _)| known == name) {
            return Target::fuse_baseline(&server, &name, &dir, threading);
        }
        if let Some((backend, threads)) = parse_threaded(name) {
            let threads = threads.to_string();
            return Target::serve(&server, backend, &dir, jobs, &["--threads", &threads]);
        }
        match name.strip_suffix(LIMITED) {
            _ if name == "pipe" => Target::pipe(&dir, jobs),
            _ if name == IO_URING => {
                Target::serve(&server, "fuse", &dir, jobs, &["--io-uring", "on", "--threads", "1"])
            }
            _ if name == IO_URING_QUEUES => {
                let threads = threads.to_string();
                Target::serve(
                    &server,
                    "fuse",
                    &dir,
                    jobs,
                    &["--io-uring", "on", "--threads", &threads],
                )
            }
            Some(backend) => Target::serve(&server, backend, &dir, jobs, LIMITS),
            None => Target::serve(&server, name, &dir, jobs, &[]),
        }
    };
    // A target by name; one named `…, a token each` gets a token for each of `clients`.
    let start = |name: &str, clients: usize| match name.strip_suffix(TOKEN_EACH) {
        Some(name) => start_with(name, clients),
        None => start_with(name, JOBS),
    };
    for clients in std::iter::once(1).chain(plan.contention.iter().copied()) {
        // One client also against the servers with limits set; more clients than tokens also
        // against pools with a token for each (the FUSE baselines answer every read at once:
        // with 4 tokens, steve's clients take turns, and its figure is the hand-offs' pace).
        // All alternated with the rest.
        let targets: Vec<String> = if clients == 1 {
            targets.iter().chain(&limited).cloned().collect()
        } else if clients > JOBS {
            let each = targets.iter().filter(|name| is_server(name));
            let each: Vec<String> = each.map(|name| format!("{name}{TOKEN_EACH}")).collect();
            targets.iter().cloned().chain(each).collect()
        } else {
            targets.clone()
        };
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        for _ in 0..plan.rounds {
            for (index, name) in targets.iter().enumerate() {
                let target = start(name, clients)?;
                samples[index].push(load::round_trips(&target.jobserver, clients, plan.seconds)?);
            }
        }
        for (name, samples) in targets.iter().zip(samples) {
            let measure = if clients == 1 {
                "round trips, 1 client".to_string()
            } else {
                format!("round trips, {clients} clients in all")
            };
            figures.push(median_figure(measure, name, samples, "per s"));
        }
    }
    for name in &backends {
        for &count in &plan.scale {
            let target = start(name, JOBS)?;
            // Half a minute and then some: a server whose cost grows with its clients shows.
            let limit = Duration::from_secs(30 + count as u64 / 100);
            // The median of up to three: one client's rate swings with where the scheduler
            // puts it, beside the server or not.
            let measured = load::idle_clients(&target.jobserver, count, limit).and_then(
                |(_idle, connected_in)| {
                    let mut rates = (0..plan.rounds.min(3))
                        .map(|_| load::round_trips(&target.jobserver, 1, plan.seconds.max(0.1)))
                        .collect::<anyhow::Result<Vec<f64>>>()?;
                    rates.sort_by(f64::total_cmp);
                    Ok((connected_in, percentile(&rates, 0.5)))
                },
            );
            let measured = measured.map(|(connected_in, rate)| {
                let rss = target.rss_kib().unwrap_or(0) as f64 / 1024.0;
                let took = connected_in.as_secs_f64();
                (rate, format!("{count} connected in {took:.2} s; server RSS {rss:.1} MiB"))
            });
            let measure = format!("round trips, 1 client, {count} idle connected");
            figures.push(Figure::of(measure, name, "per s", measured));
        }
    }
    for name in &backends {
        // Readers new to the fair shares, then readers whose builds were all served before
        // (the fair shares then weigh every waiting build, not just the first new one).
        for (served_first, what) in [(false, ""), (true, ", each served before")] {
            for &count in &plan.scale {
                let target = start(name, JOBS)?;
                if !target.per_process() {
                    break;
                }
                let limit = Duration::from_secs(30 + count as u64 / 100);
                let waiting = || target.waiting();
                let measured =
                    load::hand_offs(&target.jobserver, count, limit, &waiting, served_first);
                let detail = format!("{count} readers waiting, then the pool's holder killed");
                let measure = format!("hand-offs to {count} blocked readers{what}");
                let measured = measured.map(|rate| (rate, detail));
                figures.push(Figure::of(measure, name, "per s", measured));
            }
        }
    }
    for name in &backends {
        let target = start(name, JOBS)?;
        if !target.per_process() {
            continue;
        }
        let mut delays = Vec::new();
        for _ in 0..plan.reclaim_trials {
            let holder = load::Holder::start(&target.jobserver, JOBS - 1)?;
            let killed = Instant::now();
            holder.kill();
            let free = load::time_until_free(&target.jobserver, JOBS, Duration::from_secs(10))?;
            delays.push(free.duration_since(killed).as_secs_f64() * 1000.0);
        }
        delays.sort_by(f64::total_cmp);
        let detail = format!(
            "p50 {:.2}, p99 {:.2}, max {:.2} ms over {} kills",
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.last().copied().unwrap_or(0.0),
            delays.len()
        );
        figures.push(Figure {
            measure: "reclaim after SIGKILL (p99)".into(),
            target: name.clone(),
            value: Some(round2(percentile(&delays, 0.99))),
            unit: "ms",
            detail,
        });
    }
    for name in &backends {
        let target = start(name, JOBS)?;
        std::thread::sleep(Duration::from_millis(300));
        let before = target.context_switches().unwrap_or(0);
        std::thread::sleep(Duration::from_secs_f64(plan.idle_seconds));
        let after = target.context_switches().unwrap_or(0);
        figures.push(Figure {
            measure: "idle wake-ups".into(),
            target: name.clone(),
            value: Some(round2((after - before) as f64 / plan.idle_seconds)),
            unit: "per s",
            detail: format!("{} in {:.1} s, no limits set", after - before, plan.idle_seconds),
        });
    }
    let machine = machine();
    if args.json {
        let document = serde_json::json!({
            "machine": machine,
            "directory": dir,
            "rounds": plan.rounds,
            "seconds_each": plan.seconds,
            "took_seconds": started.elapsed().as_secs_f64(),
            "figures": figures,
        });
        crate::output::line(&serde_json::to_string_pretty(&document)?)?;
    } else {
        crate::output::line(&table(&machine, &plan, &figures))?;
    }
    Ok(())
}

/// The backends to measure: those asked for, or every server backend that works here.
/// The minimal FUSE servers measured beside the fuse backend (`steve_cuse::fuse::baseline`),
/// in libfuse's shapes, by name: through io_uring too where root turned it on.
fn baselines() -> Vec<(String, Threading)> {
    let cpus = cpus();
    let mut baselines = vec![
        ("fuse baseline, 1 thread".to_string(), Threading::Single),
        (format!("fuse baseline, {cpus} threads"), Threading::Shared(cpus)),
        (format!("fuse baseline, {cpus} threads, clone_fd"), Threading::Cloned(cpus)),
    ];
    if steve_cuse::fuse::uring::enabled().is_ok() {
        baselines.push((BASELINE_RING.to_string(), Threading::Ring));
    }
    baselines
}

/// The baseline through io_uring: a ring and a thread per CPU.
const BASELINE_RING: &str = "fuse baseline, io_uring, a ring per CPU";

/// The fuse backend served through io_uring (`--io-uring on --threads 1`): one ring, the
/// loop's thread.
const IO_URING: &str = "fuse, io_uring";
/// The same with `--threads`: a ring and a pinned thread per CPU.
const IO_URING_QUEUES: &str = "fuse, io_uring, a ring per CPU";

/// The threads the multi-threaded targets run: one per CPU, at least two.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).max(2)
}

/// A target's name with a token for each client: `fuse, a token each`.
const TOKEN_EACH: &str = ", a token each";

/// Whether target `name` is a pool of tokens (the pipe or a steve server), not a baseline.
fn is_server(name: &str) -> bool {
    !name.starts_with("fuse baseline")
}

/// The threads of `backend`'s other shape than its default: the loop's thread alone for
/// fuse where it serves from several by default, else `threads`.
fn other_threads(backend: &str, threads: usize) -> usize {
    if backend == "fuse" && steve_cuse::fuse::default_threads() > 1 {
        1
    } else {
        threads
    }
}

/// The target of `backend` served from `threads` threads (`--threads`).
fn threaded_name(backend: &str, threads: usize) -> String {
    match threads {
        1 => format!("{backend}, 1 thread"),
        _ => format!("{backend}, {threads} threads"),
    }
}

/// The backend and thread count a [`threaded_name`] names.
fn parse_threaded(name: &str) -> Option<(&str, usize)> {
    let name = name.strip_suffix(" threads").or_else(|| name.strip_suffix(" thread"))?;
    let (backend, threads) = name.split_once(", ")?;
    Some((backend, threads.parse().ok()?))
}

fn chosen_backends(asked: &[String]) -> anyhow::Result<Vec<String>> {
    let servers = ["fifo", "fuse", "cuse"];
    if !asked.is_empty() {
        for name in asked {
            if !servers.contains(&name.as_str()) {
                anyhow::bail!("steve bench measures the fifo, fuse and cuse servers, not {name}");
            }
        }
        return Ok(asked.to_vec());
    }
    Ok(servers
        .into_iter()
        .filter(|name| {
            backend::find(name)
                .is_some_and(|found| matches!((found.availability)(), Availability::Available))
        })
        .map(String::from)
        .collect())
}

fn median_figure(
    measure: String,
    target: &str,
    mut samples: Vec<f64>,
    unit: &'static str,
) -> Figure {
    samples.sort_by(f64::total_cmp);
    let shown: Vec<String> = samples.iter().map(|sample| format!("{sample:.0}")).collect();
    Figure {
        measure,
        target: target.to_string(),
        value: Some(percentile(&samples, 0.5).round()),
        unit,
        detail: format!("median of {}: {}", samples.len(), shown.join(", ")),
    }
}

/// The `p` quantile of sorted `values` (nearest rank).
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The machine, in one line: CPUs, memory, kernel.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or_else(String::new, |kib| format!(", {:.0} GiB", kib as f64 / 1048576.0));
    let kernel = nix::sys::utsname::uname()
        .map(|name| name.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs{memory}, Linux {kernel}")
}

fn table(machine: &str, plan: &Plan, figures: &[Figure]) -> String {
    let mut lines = vec![
        format!(
            "steve bench on {machine}: {} round(s) of {} s, {JOBS} tokens",
            plan.rounds, plan.seconds
        ),
        String::new(),
        "| measure | target | value | detail |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for figure in figures {
        let value = match figure.value {
            Some(value) => format!("{value} {}", figure.unit),
            None => "-".to_string(),
        };
        lines.push(format!(
            "| {} | {} | {value} | {} |",
            figure.measure, figure.target, figure.detail
        ));
    }
    lines.join("\n")
}

/// A new directory of the bench's own in `base` (mode 0700): `mkdir` fails on any name already
/// there, a link included, so a name planted in a shared `/tmp` is passed over, never used
/// (root's bench mounts, serves and at the end removes everything in its directory).
fn own_directory(base: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for attempt in 0..100 {
        let dir = base.join(format!("steve-bench-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot make {}", dir.display()))
            }
        }
    }
    anyhow::bail!("no free name for the bench's directory in {}", base.display())
}

/// The bench's directory, removed at the end (servers are stopped before).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threaded_targets_name_says_its_backend_and_threads() {
        for (backend, threads) in [("fuse", 1), ("fuse", 2), ("cuse", 16)] {
            let name = threaded_name(backend, threads);
            assert_eq!(parse_threaded(&name), Some((backend, threads)), "{name}");
            let each = format!("{name}{TOKEN_EACH}");
            assert_eq!(
                each.strip_suffix(TOKEN_EACH).and_then(parse_threaded),
                Some((backend, threads))
            );
        }
        assert_eq!(threaded_name("fuse", 1), "fuse, 1 thread");
        assert_eq!(parse_threaded("fuse"), None);
        assert_eq!(parse_threaded("fuse, limits set"), None);
        assert!(!is_server("fuse baseline, 2 threads, clone_fd"));
        assert!(is_server("pipe") && is_server("fuse, 1 thread"));
    }

    #[test]
    fn a_name_planted_where_the_bench_makes_its_directory_is_passed_over() {
        let base = std::env::temp_dir().join(format!("bench-base-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let victim = base.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("precious"), "kept").unwrap();
        let planted = base.join(format!("steve-bench-{}-0", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let dir = own_directory(&base).unwrap();
        assert_eq!(dir, base.join(format!("steve-bench-{}-1", std::process::id())));
        drop(RemoveOnDrop(dir.clone()));
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(victim.join("precious")).unwrap(), "kept");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
