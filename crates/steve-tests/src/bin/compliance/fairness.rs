//! Fair shares with real clients: a greedy cargo and two makes started a moment after it, on
//! one pool of four tokens, once with `--fairness build` (the default) and once with
//! `--fairness fifo`, so that the figures show what the policy changes.
//!
//! cargo takes every token it can get and keeps it while units are ready to build (cargo issue
//! 17391); no server can take a token back, so what a policy decides is who gets the tokens
//! cargo does give back, at the end of each layer of its workspace, and who gets the tokens the
//! makes return after each job.
//!
//! Each build's token-seconds are what the server handed it: its tokens, sampled every 100 ms
//! through the control socket (the status's `builds`), plus the implicit token its top-level
//! client always holds, over the time all three builds are active (from their jobs' timelines)
//! and the server has a choice to make: from cargo's first token given back. Before that cargo
//! holds what it took before the makes came, which no policy can take back, and how long that
//! lasts is how long its first layer compiles (seconds on the host, tens of them in a busy VM).
//! The seconds their jobs ran are reported beside them: on a machine whose CPUs the compilers
//! use up (the emulated VM) a make holding a token may be slow to start its next job, which
//! the job-seconds count against it though the server gave it its share.
//!
//! The run is scaled to the machine: a compilation that takes a tenth of a second here takes
//! ten seconds in the emulated test VM, where the makes' jobs (and their fork and exec) would
//! otherwise be all overhead. The makes' jobs last a third of one small compilation (0.3 s at
//! least), and where compiling is slow the workspace is smaller.
//!
//! A layer's crates must also end apart: cargo gives a token back only when a crate ends and no
//! other is ready, so crates ending in one turn of cargo's loop give nothing back at the layer
//! boundary. The workspace's crates therefore keep their tokens a moment after rustc ends,
//! staggered across a layer (a tenth of a second here, a quarter of a compilation and at least two
//! seconds where compiling is slow); holds before rustc were not enough on the VM's two shared
//! CPUs, where compilations started apart still ended together (see docs/performance.md).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steve_core::server::control::{ask, Request, Response};
use steve_tests::timeline::{self, Span};
use steve_tests::{projects, wait_for};

use super::{ensure, env_path, serve_command, Daemon};

/// Tokens in the pool.
const JOBS: u32 = 4;
/// How often the server's builds are sampled.
const SAMPLE: Duration = Duration::from_millis(100);
/// A probe compilation at least this long means an emulated machine, which gets the smaller
/// workspace with holds staggered seconds apart. The host's probe takes about 0.02 s, the test
/// VM's 0.9 – 3.4 s: a line at 1 s put a VM probe of 0.94 s on the host's side, whose 16-crate
/// layers then held each token 9.4 s and left the makes too slow to ask (index 0.87).
const SLOW_COMPILE: f64 = 0.3;
/// The fairness index the fair run must reach on the host (0.98 – 0.99 measured; FIFO 0.84 –
/// 0.87). On an emulated machine it is reported, not asserted: there the compilers and the
/// makes' jobs share two slow CPUs, so the more tokens the makes get, the slower cargo's
/// compilations run and the longer each of cargo's tokens stays out, and cargo's token-seconds
/// grow with the policy's fairness itself. In the test VM (2026-12-05 and 06) the fair run gave
/// 0.74 – 0.99 and the FIFO run 0.86 – 0.93: the index there cannot tell the policies apart
/// (cargo's compilations held 9 – 22 s under fair shares against 5 – 8 s under FIFO). There the
/// makes' first tokens ([`wait_bound`]) are what shows the policy.
const FAIR_INDEX: f64 = 0.9;

/// What one run measured.
struct ShareRun {
    /// Token-seconds the server gave cargo and the two makes while all three were active (with
    /// each one's implicit token).
    tokens: [f64; 3],
    /// Jain's fairness index over them.
    jain: f64,
    /// The seconds their jobs ran meanwhile, and Jain's index over those.
    job_seconds: [f64; 3],
    jobs_jain: f64,
    /// For each make, the seconds from its first request to its first token from the server;
    /// `None` if it never held one.
    waits: [Option<f64>; 2],
    /// For each make, how long it may wait ([`wait_bound`]).
    bounds: [f64; 2],
    /// The median time one of cargo's compilations held its token: one job length.
    job_length: f64,
    /// The server's counters at the end, for the record.
    counters: serde_json::Value,
}

/// The scenario: the fair run must give each make a token by the first token cargo gives back
/// after it asked, or within one job length if that is longer ([`wait_bound`]), and on the
/// host reach a fairness index of [`FAIR_INDEX`]; the FIFO run is measured and reported beside
/// it.
pub fn fair_shares() -> Result<(), String> {
    let compile = one_compilation()?;
    let make_job = (compile / 3.0).max(0.3);
    let (widths, stagger): (&[usize], _) = if compile < SLOW_COMPILE {
        (&[4, 16, 16, 16], Duration::from_millis(100))
    } else {
        (&[4, 8], Duration::from_secs_f64((compile / 4.0).max(2.0)))
    };
    println!(
        "figure fair_shares_scale compile {compile:.2} s, make jobs {make_job:.2} s, layers \
         {widths:?}, holds staggered by {stagger:.2?}"
    );
    let fair = share_run("build", widths, stagger, make_job)?;
    let fifo = share_run("fifo", widths, stagger, make_job)?;
    for (policy, run) in [("build", &fair), ("fifo", &fifo)] {
        let [cargo, make1, make2] = run.tokens;
        println!("figure fair_shares_jain_{policy} {:.2}", run.jain);
        println!(
            "figure fair_shares_token_seconds_{policy} cargo={cargo:.1},make1={make1:.1},\
             make2={make2:.1}"
        );
        let [cargo, make1, make2] = run.job_seconds;
        println!(
            "figure fair_shares_job_seconds_{policy} cargo={cargo:.1},make1={make1:.1},\
             make2={make2:.1} (index {:.2})",
            run.jobs_jain
        );
        let waits: Vec<String> = run
            .waits
            .iter()
            .map(|wait| wait.map_or_else(|| "never".to_string(), |s| format!("{s:.2}")))
            .collect();
        println!(
            "figure fair_shares_make_waits_{policy} {} s (job length {:.2} s, bounds {:.2?} s)",
            waits.join(","),
            run.job_length,
            run.bounds
        );
        println!("figure fair_shares_counters_{policy} {}", run.counters);
    }
    for (n, (wait, bound)) in fair.waits.iter().zip(fair.bounds).enumerate() {
        ensure(wait.is_some_and(|wait| wait <= bound), || {
            format!(
                "make {} waited {wait:?} s for a token, more than {bound:.2} s (a job is {:.2} s)",
                n + 1,
                fair.job_length
            )
        })?;
    }
    if compile >= SLOW_COMPILE {
        println!(
            "figure fair_shares_index_not_judged emulated machine (a compile takes {compile:.2} \
             s): index {:.2} fair, {:.2} FIFO",
            fair.jain, fifo.jain
        );
        return Ok(());
    }
    ensure(fair.jain >= FAIR_INDEX, || {
        format!(
            "fairness index {:.2} with --fairness build (at least {FAIR_INDEX}): {:?}",
            fair.jain, fair.tokens
        )
    })
}

/// Seconds one small compilation takes here: rustc on a one-line library, the second of two
/// runs, so that the figure does not depend on whether rustc's libraries are in the page cache
/// yet (the first rustc in a fresh VM took 13 – 17 s, later ones 2.4 – 3.4 s).
fn one_compilation() -> Result<f64, String> {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("probe.rs");
    fs::write(&source, "pub fn f(x: u64) -> u64 { x + 1 }\n").unwrap();
    let rustc = Path::new(&env_path("STEVE_TEST_CARGO")).with_file_name("rustc");
    let mut seconds = 0.0;
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let status = Command::new(&rustc)
            .args(["--crate-type", "lib", "--crate-name", "probe", "--out-dir"])
            .arg(dir.path())
            .arg(&source)
            .status()
            .map_err(|error| format!("rustc: {error}"))?;
        ensure(status.success(), || "rustc failed on a one-line library".to_string())?;
        seconds = started.elapsed().as_secs_f64();
    }
    Ok(seconds)
}

/// One sample of the server's builds: when (nanoseconds since the epoch, as the timelines),
/// and each build's tokens and waiting requests, by its top-level client's pid.
struct Sample {
    at: u128,
    builds: HashMap<u32, (usize, usize)>,
}

/// Samples the server at `control` every [`SAMPLE`] until `stop` is set.
fn sample_builds(control: &Path, stop: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Response::Status { report }) = ask(control, &Request::Status) {
            let builds = report
                .builds
                .unwrap_or_default()
                .into_iter()
                .map(|build| (build.pid, (build.tokens, build.waiting)))
                .collect();
            samples.push(Sample { at: timeline::now_nanos(), builds });
        }
        std::thread::sleep(SAMPLE);
    }
    samples
}

/// Token-seconds of the build of `pid` within `[from, to]`: its tokens, plus its implicit one.
fn token_seconds(samples: &[Sample], pid: u32, from: u128, to: u128) -> f64 {
    samples
        .windows(2)
        .map(|pair| {
            let (start, end) = (pair[0].at.max(from), pair[1].at.min(to));
            let held = pair[0].builds.get(&pid).map_or(0, |(tokens, _)| *tokens) + 1;
            end.saturating_sub(start) as f64 / 1e9 * held as f64
        })
        .sum()
}

/// When the build of `pid` first held fewer tokens than a sample before, after `after`: the
/// sample before the drop (so the window may begin up to one sample early, never late).
fn first_give_back(samples: &[Sample], pid: u32, after: u128) -> Option<u128> {
    let tokens = |sample: &Sample| sample.builds.get(&pid).map_or(0, |(tokens, _)| *tokens);
    samples
        .windows(2)
        .find(|pair| pair[1].at > after && tokens(&pair[1]) < tokens(&pair[0]))
        .map(|pair| pair[0].at.max(after))
}

/// How long the make of `pid` may wait for its first token: until the first token cargo gives
/// back after the make asked, which the policy must hand to a make that holds nothing (and
/// cannot hand out sooner: cargo holds the pool), or one job length if that is longer; plus
/// two samples (the give-back is dated a sample early, the make's token seen a sample late).
/// A first layer slower than the median job (the emulated VM: 16.6 s against 14.25) waits
/// longer than a job without the policy being at fault.
fn wait_bound(samples: &[Sample], pid: u32, cargo: u32, job_length: f64) -> f64 {
    let asked = first_seen(samples, pid);
    let back = asked.and_then(|asked| Some((first_give_back(samples, cargo, asked)?, asked)));
    let until_back = back.map_or(0.0, |(back, asked)| back.saturating_sub(asked) as f64 / 1e9);
    until_back.max(job_length) + 2.0 * SAMPLE.as_secs_f64()
}

/// When the build of `pid` first showed (holding or waiting).
fn first_seen(samples: &[Sample], pid: u32) -> Option<u128> {
    samples.iter().find(|sample| sample.builds.contains_key(&pid)).map(|sample| sample.at)
}

/// Seconds from the build of `pid` first showing (holding or waiting) to its first token.
fn first_token_wait(samples: &[Sample], pid: u32) -> Option<f64> {
    let asked = first_seen(samples, pid)?;
    let got = samples.iter().find(|s| s.builds.get(&pid).is_some_and(|(tokens, _)| *tokens > 0))?;
    Some(got.at.saturating_sub(asked) as f64 / 1e9)
}

/// One run under `policy`: cargo over layers of `widths` (holds staggered by `stagger`), makes
/// of `make_job`-second jobs.
fn share_run(
    policy: &str,
    widths: &[usize],
    stagger: Duration,
    make_job: f64,
) -> Result<ShareRun, String> {
    let daemon = Daemon::start_with(serve_command(JOBS, &["--fairness", policy]));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (control, stop) = (daemon.control.clone(), Arc::clone(&stop_sampling));
        std::thread::spawn(move || sample_builds(&control, &stop))
    };
    let dir = tempfile::tempdir().unwrap();
    let cargo_log = dir.path().join("cargo.timeline");
    let workspace = projects::layered_cargo_workspace(dir.path(), widths, stagger, &cargo_log);
    let cargo = Command::new(env_path("STEVE_TEST_CARGO"))
        .args(["build", "--offline", "-q", "-j", "8"])
        .current_dir(&workspace.root)
        .env("MAKEFLAGS", daemon.makeflags(JOBS))
        .env_remove("CARGO_MAKEFLAGS")
        .env("RUSTC_WRAPPER", &workspace.wrapper)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cargo_pid = cargo.id();
    // The makes start a moment after cargo's first compilation: cargo holds its tokens by then.
    wait_for("cargo's first compilation", Duration::from_secs(120), || {
        fs::read_to_string(&cargo_log).unwrap_or_default().contains("start").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let stop = dir.path().join("stop");
    let make_logs: Vec<_> = (1..=2).map(|n| dir.path().join(format!("make{n}.timeline"))).collect();
    let makes: Vec<_> = make_logs
        .iter()
        .enumerate()
        .map(|(n, log)| {
            let project = dir.path().join(format!("make{}", n + 1));
            fs::create_dir(&project).unwrap();
            projects::makefile_until(&project, &format!("m{}", n + 1), 400, make_job, log, &stop);
            Command::new(env_path("STEVE_TEST_MAKE44"))
                .current_dir(&project)
                .env("MAKEFLAGS", daemon.makeflags(JOBS))
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let make_pids: Vec<u32> = makes.iter().map(std::process::Child::id).collect();
    let cargo_output = cargo.wait_with_output().unwrap();
    // cargo is done: the makes' jobs not yet begun end at once.
    fs::write(&stop, "").unwrap();
    for mut make in makes {
        ensure(make.wait().unwrap().success(), || format!("a make failed ({policy})"))?;
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler");
    ensure(cargo_output.status.success(), || {
        format!("cargo failed ({policy}): {}", String::from_utf8_lossy(&cargo_output.stderr))
    })?;
    let builds = [cargo_log.as_path(), &make_logs[0], &make_logs[1]].map(spans_of);
    // While all three are active: from the last first start to the first last end; and from
    // the policy's first choice, cargo's first token given back.
    let from = builds.iter().map(|spans| spans[0].start).max().unwrap();
    let from = first_give_back(&samples, cargo_pid, from).unwrap_or(from);
    let to = builds.iter().map(|spans| spans.iter().map(|s| s.end).max().unwrap()).min().unwrap();
    let pids = [cargo_pid, make_pids[0], make_pids[1]];
    let tokens = pids.map(|pid| token_seconds(&samples, pid, from, to));
    let job_seconds = builds.each_ref().map(|spans| timeline::seconds_within(spans, from, to));
    let mut lengths: Vec<u128> = builds[0].iter().map(|span| span.end - span.start).collect();
    lengths.sort_unstable();
    let job_length = lengths[lengths.len() / 2] as f64 / 1e9;
    let counters = daemon.status()["counters"].clone();
    daemon.assert_pool_whole(JOBS as usize)?;
    Ok(ShareRun {
        jain: timeline::jain_index(&tokens),
        tokens,
        jobs_jain: timeline::jain_index(&job_seconds),
        job_seconds,
        waits: [first_token_wait(&samples, pids[1]), first_token_wait(&samples, pids[2])],
        bounds: [1, 2].map(|n| wait_bound(&samples, pids[n], cargo_pid, job_length)),
        job_length,
        counters,
    })
}

/// A timeline's spans by start time.
fn spans_of(log: &Path) -> Vec<Span> {
    let mut spans = timeline::spans(log);
    spans.sort_by_key(|span| span.start);
    assert!(!spans.is_empty(), "no job ran: {}", log.display());
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u128, cargo_tokens: usize) -> Sample {
        Sample { at, builds: HashMap::from([(7, (cargo_tokens, 0))]) }
    }

    #[test]
    fn the_window_begins_before_cargos_first_token_back() {
        let samples: Vec<Sample> = [(100, 3), (200, 3), (300, 3), (400, 2), (500, 3), (600, 1)]
            .map(|(at, n)| sample(at, n))
            .into();
        assert_eq!(first_give_back(&samples, 7, 150), Some(300));
        // A drop before `after` does not count; one in the pair that straddles it begins at it.
        assert_eq!(first_give_back(&samples, 7, 350), Some(350));
        assert_eq!(first_give_back(&samples, 7, 450), Some(500));
        assert_eq!(first_give_back(&samples, 7, 600), None);
        assert_eq!(first_give_back(&samples, 8, 0), None, "a build never seen gives nothing back");
    }

    #[test]
    fn a_make_may_wait_until_cargo_gives_a_token_back_or_a_job_length() {
        const S: u128 = 1_000_000_000;
        // cargo (7) holds 4; the make (9) asks at 1 s; cargo gives one back between 5 and 6 s.
        let samples: Vec<Sample> =
            [(0, 4, false), (S, 4, true), (5 * S, 4, true), (6 * S, 3, true)]
                .map(|(at, cargo, make)| {
                    let mut builds = HashMap::from([(7, (cargo, 0))]);
                    if make {
                        builds.insert(9, (0, 1));
                    }
                    Sample { at, builds }
                })
                .into();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(wait_bound(&samples, 9, 7, 1.5), 4.2), "until the give-back, 4 s after");
        assert!(near(wait_bound(&samples, 9, 7, 10.0), 10.2), "a job length when longer");
        assert!(near(wait_bound(&samples, 8, 7, 1.5), 1.7), "a make never seen: a job length");
    }
}
