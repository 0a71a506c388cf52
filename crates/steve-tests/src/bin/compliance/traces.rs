//! The event trace against real builds: the trace `steve trace --since all --json` prints for
//! one make, and for two makes at once, must agree with the jobs' own start and end logs, and its
//! books must balance when replayed.
//!
//! What "agree" means, for each make (its own process reads and writes the tokens):
//! - when one of its jobs starts, make holds a token for every job then running but one (its
//!   implicit token): the grant is in the trace before the job's start is in its log;
//! - when make returns a token, the jobs still running then are at most the tokens it keeps
//!   plus one: no token goes back while a job needs it;
//! - at the end it holds nothing, and each make's events name one build, not the other's.
//!
//! Then `steve plot` draws the saved trace: the SVG must parse as XML with one lane per build
//! and one bar per hold, and the Chrome export must load as JSON with one complete event per
//! hold.
//!
//! The logs are stamped by `date +%s%N` (the wall clock), the trace by `CLOCK_MONOTONIC`; the
//! two are put on one clock by a pair read together here, so a slack of [`SLACK`] covers the
//! pair's reading. A job logs its start after its token came and its end before it goes back,
//! so the slack never lets a wrong order pass.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::time::{clock_gettime, ClockId};
use steve_core::trace::{Kind, TraceEvent};
use steve_tests::projects;
use steve_tests::timeline::{self, Span};

use super::{ensure, env_path, Daemon};

/// How far apart the two clocks' readings may put an event and a log line.
const SLACK: u64 = 2_000_000;

/// One make of ten jobs, then two makes of six at once, on three tokens.
pub fn trace_matches_jobs() -> Result<(), String> {
    let jobs = 3;
    let daemon = Daemon::start(jobs);
    let dir = tempfile::tempdir().unwrap();
    let one = run_makes(&daemon, dir.path(), "one", &[10])?;
    let two = run_makes(&daemon, dir.path(), "two", &[6, 6])?;
    let (events, saved) = trace_of(&daemon, dir.path())?;
    replay_books(&events)?;
    plot_agrees(&saved, &events, dir.path())?;
    let mut builds = Vec::new();
    for (pid, spans) in one.iter().chain(&two) {
        let (grants, build) = agrees_with_jobs(&events, *pid, spans)?;
        println!("figure trace_make_{pid} {} jobs, {grants} grants", spans.len());
        builds.push(build);
    }
    ensure(builds[1] != builds[2], || format!("the two makes share build {:?}", builds[1]))?;
    let kinds: Vec<Kind> = events.iter().map(|event| event.record.event).collect();
    ensure(kinds.first() == Some(&Kind::Start), || format!("the trace starts with {kinds:?}"))?;
    daemon.assert_pool_whole(jobs as usize)
}

/// Runs one make per entry of `widths` at once (that many jobs of 0.3 s each) and returns each
/// make's pid with its jobs' spans, on `CLOCK_MONOTONIC`.
fn run_makes(
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    widths: &[usize],
) -> Result<Vec<(u32, Vec<Span>)>, String> {
    let started: Vec<(Child, std::path::PathBuf)> = widths
        .iter()
        .enumerate()
        .map(|(n, width)| {
            let project = dir.join(format!("{name}{n}"));
            fs::create_dir(&project).unwrap();
            let log = project.join("timeline");
            projects::makefile(&project, &format!("{name}{n}"), *width, 0.3, &log);
            let make = Command::new(env_path("STEVE_TEST_MAKE44"))
                .current_dir(&project)
                .env("MAKEFLAGS", daemon.makeflags(3))
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            (make, log)
        })
        .collect();
    let mut makes = Vec::new();
    for (mut make, log) in started {
        let pid = make.id();
        ensure(make.wait().unwrap().success(), || format!("make {pid} failed"))?;
        let offset = wall_to_monotonic();
        let mut spans = timeline::spans(&log);
        for span in &mut spans {
            span.start = span.start.saturating_sub(offset);
            span.end = span.end.saturating_sub(offset);
        }
        makes.push((pid, spans));
    }
    Ok(makes)
}

/// What to take from a wall-clock time for the monotonic one: the two clocks read together.
fn wall_to_monotonic() -> u128 {
    let ns = |clock| {
        let time = clock_gettime(clock).unwrap();
        time.tv_sec() as u128 * 1_000_000_000 + time.tv_nsec() as u128
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// The whole trace, from `steve trace --since all --json`, and the file it is saved in.
fn trace_of(daemon: &Daemon, dir: &Path) -> Result<(Vec<TraceEvent>, PathBuf), String> {
    let output = daemon.ctl(&["trace", "--since", "all", "--json"]);
    ensure(output.status.success(), || {
        format!("steve trace: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let saved = dir.join("trace.jsonl");
    fs::write(&saved, &output.stdout).unwrap();
    let events = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|error| format!("{error}: {line}")))
        .collect::<Result<_, _>>()?;
    Ok((events, saved))
}

/// `steve plot` of the saved trace: an SVG with a lane per build and a bar per hold, and a
/// Chrome export with a complete event per hold.
fn plot_agrees(saved: &Path, events: &[TraceEvent], dir: &Path) -> Result<(), String> {
    let (svg, chrome) = (dir.join("trace.svg"), dir.join("trace.json"));
    let output = Command::new(env_path("STEVE_BIN"))
        .arg("plot")
        .arg(saved)
        .arg("--output")
        .arg(&svg)
        .arg("--chrome")
        .arg(&chrome)
        .output()
        .unwrap();
    ensure(output.status.success(), || {
        format!("steve plot: {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let grants = events.iter().filter(|event| event.record.event == Kind::Grant).count();
    let mut builds: Vec<Option<u64>> =
        events.iter().filter(|e| e.record.pid.is_some()).map(|e| e.record.build).collect();
    builds.sort_unstable();
    builds.dedup();
    let text = fs::read_to_string(&svg).unwrap();
    let document =
        roxmltree::Document::parse(&text).map_err(|error| format!("the SVG: {error}"))?;
    let count = |name: &str, class: &str| {
        let nodes = document.descendants();
        nodes.filter(|n| n.has_tag_name(name) && n.attribute("class") == Some(class)).count()
    };
    let (lanes, holds) = (count("g", "lane"), count("rect", "hold"));
    println!("figure trace_plot {lanes} lanes, {holds} holds, {} bytes", text.len());
    ensure(lanes == builds.len() && holds == grants, || {
        format!("the SVG has {lanes} lanes and {holds} holds; the trace {builds:?} and {grants}")
    })?;
    let exported: serde_json::Value = serde_json::from_slice(&fs::read(&chrome).unwrap())
        .map_err(|error| format!("the Chrome export: {error}"))?;
    let complete = exported["traceEvents"]
        .as_array()
        .ok_or("the Chrome export has no traceEvents")?
        .iter()
        .filter(|event| event["ph"] == "X" && event["cat"] == "hold")
        .count();
    ensure(complete == grants, || format!("{complete} complete events for {grants} holds"))
}

/// Replays grants, returns, expiries and reclaims: at every event with books, they balance and
/// their `held` is the replay's; no process ever returns more than it was granted; the numbers
/// run without a gap.
fn replay_books(events: &[TraceEvent]) -> Result<(), String> {
    let mut held: HashMap<u32, usize> = HashMap::new();
    for (n, event) in events.iter().enumerate() {
        ensure(event.seq == n as u64, || format!("event {n} is numbered {}", event.seq))?;
        let record = &event.record;
        let change: isize = match record.event {
            Kind::Grant => 1,
            Kind::Return | Kind::Expiry => -1,
            Kind::Reclaim => -(record.tokens as isize),
            _ => 0,
        };
        if change != 0 {
            let pid = record.pid.ok_or_else(|| format!("no pid in {record:?}"))?;
            let entry = held.entry(pid).or_insert(0);
            *entry = entry
                .checked_add_signed(change)
                .ok_or_else(|| format!("pid {pid} gave back more than it took at #{n}"))?;
        }
        if let Some(books) = record.books {
            let replayed: usize = held.values().sum();
            ensure(books.balance() && books.held == replayed, || {
                format!("#{n}: books {books:?}, replayed held {replayed}")
            })?;
        }
    }
    ensure(held.values().all(|tokens| *tokens == 0), || format!("still held at the end: {held:?}"))
}

/// Checks the trace against one make's jobs; returns its grants and its build.
fn agrees_with_jobs(
    events: &[TraceEvent],
    pid: u32,
    spans: &[Span],
) -> Result<(usize, Option<u64>), String> {
    let mine: Vec<&TraceEvent> =
        events.iter().filter(|event| event.record.pid == Some(pid)).collect();
    // Tokens the make held right after each of its events, by time.
    let mut held = 0usize;
    let mut steps: Vec<(u64, usize, Kind)> = Vec::new();
    for event in &mine {
        match event.record.event {
            Kind::Grant => held += 1,
            Kind::Return | Kind::Expiry => held -= 1,
            Kind::Reclaim => held -= event.record.tokens,
            _ => continue,
        }
        steps.push((event.mono_ns, held, event.record.event));
    }
    let held_at = |at: u64| steps.iter().take_while(|step| step.0 <= at).last().map_or(0, |s| s.1);
    // The most it held at any moment from `at` to the slack after it: the clocks' pair may put
    // a log line that much early, and a job that ends just after another starts returns its
    // token within it.
    let held_within = |at: u64| {
        let later = steps.iter().filter(|step| step.0 > at && step.0 <= at + SLACK);
        later.map(|step| step.1).fold(held_at(at), usize::max)
    };
    let running = |from: u128, to: u128| {
        spans.iter().filter(|span| span.start <= from && span.end >= to).count()
    };
    for span in spans {
        let at = span.start as u64;
        let needed = running(span.start, span.start).saturating_sub(1);
        ensure(held_within(at) >= needed, || {
            format!(
                "make {pid}: job {} started with {} running on {} tokens",
                span.name,
                needed + 1,
                held_within(at)
            )
        })?;
    }
    for (at, kept, kind) in &steps {
        if *kind == Kind::Return {
            let surely_running = running(u128::from(at - SLACK), u128::from(at + SLACK));
            ensure(surely_running <= kept + 1, || {
                format!("make {pid} returned a token at {at} with {surely_running} jobs running")
            })?;
        }
    }
    let grants = steps.iter().filter(|step| step.2 == Kind::Grant).count();
    let peak = timeline::peak(spans);
    ensure(peak >= 2 && grants + 1 >= peak, || {
        format!("make {pid}: peak {peak} with {grants} grants")
    })?;
    let builds: Vec<Option<u64>> = mine.iter().map(|event| event.record.build).collect();
    ensure(builds.windows(2).all(|pair| pair[0] == pair[1]), || {
        format!("make {pid}'s events name builds {builds:?}")
    })?;
    Ok((grants, builds.first().copied().flatten()))
}
