//! The control plane against a real fifo server: status names the processes that have the pipe
//! open, `get` prints values and `set` applies all or nothing, every JSON field is documented,
//! `steve top` draws a live frame in a terminal, and a closed stdout ends steve quietly. (`set`
//! moving the peak, `set` refused to another user and the memory limit are compliance scenarios,
//! run against every backend: `src/bin/compliance/`.)

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use steve_tests::steve::{stderr_lines, FifoServer};
use steve_tests::{assert_success, clients, projects, wait_for, workspace_root};

fn start_make(
    server: &FifoServer,
    dir: &std::path::Path,
    prefix: &str,
    jobs: usize,
    seconds: f64,
    log: &std::path::Path,
) -> Child {
    let project = dir.join(prefix);
    std::fs::create_dir_all(&project).unwrap();
    projects::makefile(&project, prefix, jobs, seconds, log);
    server
        .client(clients::make44())
        .current_dir(&project)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn started(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("start"))
        .count()
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn status_json_names_the_real_holders_while_make_runs() {
    let server = FifoServer::start(2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let mut make = start_make(&server, dir.path(), "held", 4, 30.0, &log);
    wait_for("make to take the tokens", Duration::from_secs(20), || {
        (started(&log) >= 3).then_some(())
    });
    let status = server.status_json();
    let holders = status["holders"].as_array().unwrap();
    let make_pid = make.id() as u64;
    let entry = holders
        .iter()
        .find(|holder| holder["pid"] == make_pid)
        .unwrap_or_else(|| panic!("make {make_pid} not among {holders:?}"));
    assert!(entry["command"].as_str().unwrap().contains("make"), "{entry}");
    assert_eq!(status["pool"]["free"], 0);
    assert_eq!(status["pool"]["held"], 2);
    assert_eq!(status["holders_exact"], false);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(make.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    make.wait().unwrap();
}

#[test]
fn get_prints_one_value_per_line_and_set_rejects_bad_values_whole() {
    let server = FifoServer::start(3);
    let output = server.ctl(&["get", "jobs", "free", "min-jobs", "load-average"]);
    assert_success(&output, "steve get");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "3\n3\n1\nnone\n");
    let output = server.ctl(&["set", "min-jobs=2", "jobs=0"]);
    assert!(!output.status.success());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The same words as `steve serve -j 0`: one type checks every job count.
    assert!(lines[0].contains("jobs: job count 0 is out of range (1 to 4096)"), "{}", lines[0]);
    assert_eq!(
        String::from_utf8_lossy(&server.ctl(&["get", "min-jobs"]).stdout),
        "1\n",
        "half applied"
    );
    let output = server.ctl(&["set", "per-process-limit=2"]);
    assert!(stderr_lines(&output)[0].contains("needs a backend that accounts per process"));
    // A pipe serves its readers first come, first served, and can do nothing else.
    let output = server.ctl(&["get", "fairness", "weights"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fifo\nnone\n");
    for setting in ["fairness=build", "weights=0:2", "user-caps=root:1"] {
        let output = server.ctl(&["set", setting]);
        let lines = stderr_lines(&output);
        assert!(!output.status.success() && lines.len() == 1, "{setting}: {lines:?}");
        assert!(
            lines[0].contains("fairness: --fairness does not apply to backend fifo"),
            "{lines:?}"
        );
    }
    assert_success(&server.ctl(&["set", "fairness=fifo"]), "set fairness=fifo");
    let output = server.ctl(&["set", "weights=nosuchuser:2"]);
    assert_eq!(stderr_lines(&output), ["steve: error: weights: no such user: nosuchuser"]);
    let output = server.ctl(&["set", "fairness=lottery"]);
    assert!(stderr_lines(&output)[0]
        .contains("\"lottery\" is not a fairness policy; known are build, user, fifo"));
    let output = server.ctl(&["get", "colour"]);
    assert!(stderr_lines(&output)[0].contains("unknown key \"colour\""));
}

/// Every key of a JSON value, as dotted paths with `[]` for array elements and `<uid>` for the
/// keys of a map by uid.
fn key_paths(value: &serde_json::Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let key =
                    if key.parse::<u32>().is_ok() { "<uid>".to_string() } else { key.clone() };
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                paths.insert(path.clone());
                key_paths(child, &path, paths);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), paths);
            }
        }
        _ => {}
    }
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn every_status_field_a_real_server_reports_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    // Under a limit, so that `limited_by` has its fields; make holds the pipe open.
    let args = ["-j", "2", "--min-memory-avail", "100000000"];
    let server = FifoServer::start_at(&path, &dir.path().join("steve.log"), &args).unwrap();
    let log = dir.path().join("timeline");
    let mut make = start_make(&server, dir.path(), "doc", 2, 30.0, &log);
    wait_for("make to start", Duration::from_secs(20), || (started(&log) >= 1).then_some(()));
    let mut paths = BTreeSet::new();
    key_paths(&server.status_json(), "", &mut paths);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(make.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    make.wait().unwrap();
    assert!(paths.contains("holders[].pid") && paths.contains("limited_by.kind"), "{paths:?}");
    assert_documented(&paths);
}

/// Fails naming every path that docs/reference.md does not mention as `` `path` ``.
fn assert_documented(paths: &BTreeSet<String>) {
    let reference = std::fs::read_to_string(workspace_root().join("docs/reference.md")).unwrap();
    let missing: Vec<&String> =
        paths.iter().filter(|path| !reference.contains(&format!("`{path}`"))).collect();
    assert!(missing.is_empty(), "status fields not documented in docs/reference.md: {missing:?}");
}

#[test]
fn every_field_of_a_fully_populated_status_is_documented() {
    // What a device backend reports under a load limit: waiters, counters, every kind of field.
    use steve_core::accounting::limits::{Limits, Pressure, Settings, SystemReading};
    use steve_core::accounting::pressure::{
        PressureLimit, PressureLimits, Pressures, Resource, Stall, Stalls,
    };
    use steve_core::status::{
        BucketReport, BuildReport, CompanionReport, CounterReport, HolderReport, PoolReport,
        StatusReport, WaitReport, WaiterReport,
    };
    let full = StatusReport {
        backend: "cuse".into(),
        path: "/dev/steve".into(),
        control: Some("/run/steve/steve.control".into()),
        daemon_pid: 1,
        uptime_seconds: 1.0,
        pool: PoolReport { jobs: 2, size: 2, free: 0, held: 1, withheld: 1, lent: 0 },
        limits: Settings {
            jobs: steve_core::JobCount::new(2).unwrap(),
            limits: Limits {
                load_average: Some(2.0),
                min_memory_avail_mib: Some(1),
                min_memory_avail_percent: Some(5.0),
                per_process_limit: Some(1),
                pressure: PressureLimits {
                    cpu: Some(PressureLimit::parse("some:50").unwrap()),
                    memory: Some(PressureLimit::parse("some:20/10").unwrap()),
                    io: Some(PressureLimit::parse("full:30").unwrap()),
                },
                shares: steve_core::accounting::shares::Shares {
                    fairness: steve_core::accounting::shares::Fairness::User,
                    weights: [(1000, 2)].into(),
                    user_caps: [(1000, 3)].into(),
                },
                ..Limits::default()
            },
        },
        jobs_from: "-j".into(),
        system: SystemReading {
            load_average_1m: Some(3.0),
            memory_available_mib: Some(100),
            memory_limit_mib: Some(512),
            memory_from: Some("memory.max 536870912 of /sys/fs/cgroup/a".into()),
            pressure: Pressures {
                cpu: Some(Stalls { some: 1.0, full: Some(0.0) }),
                memory: Some(Stalls { some: 30.0, full: Some(10.0) }),
                io: Some(Stalls { some: 2.0, full: Some(1.0) }),
            },
        },
        limited_by: Some(Pressure::Stall {
            resource: Resource::Memory,
            stall: Stall::Some,
            current: Some(30.0),
            high: 20.0,
            low: 10.0,
        }),
        holders_exact: true,
        holders: vec![HolderReport {
            pid: 2,
            command: "make".into(),
            tokens: Some(1),
            held_seconds: Some(1.0),
        }],
        waiters: Some(vec![WaiterReport {
            pid: 3,
            command: "make".into(),
            kind: "polling".into(),
            waiting_seconds: 0.1,
        }]),
        builds: Some(vec![BuildReport {
            build: 0,
            pid: 2,
            command: "make".into(),
            cwd: Some("/src".into()),
            uid: 1000,
            tokens: 1,
            waiting: 1,
            share: Some(2.0),
        }]),
        companion: Some(CompanionReport {
            path: "/run/steve/steve.fifo".into(),
            tokens: 2,
            in_pipe: 1,
            waiting: true,
            recovered: 1,
            openers: vec![HolderReport {
                pid: 4,
                command: "ninja".into(),
                tokens: None,
                held_seconds: None,
            }],
        }),
        counters: CounterReport {
            grants: Some(1),
            returns: Some(1),
            reclaimed: 1,
            enospc: Some(1),
            grace_returns: Some(1),
            interrupts: Some(1),
            expired_reservations: Some(1),
            wait_seconds: Some(WaitReport {
                buckets: vec![BucketReport { le: "+Inf".into(), count: 1 }],
                count: 1,
                sum: 0.5,
            }),
        },
    };
    let mut paths = BTreeSet::new();
    key_paths(&serde_json::to_value(&full).unwrap(), "", &mut paths);
    assert_documented(&paths);
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs GNU make 4.4.1, which scripts/test installs (it sets STEVE_TEST_ALL=1)"
)]
fn steve_top_draws_a_live_holder_in_a_terminal() {
    let server = FifoServer::start(2);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("timeline");
    let mut make = start_make(&server, dir.path(), "topped", 3, 30.0, &log);
    wait_for("make to start", Duration::from_secs(20), || (started(&log) >= 1).then_some(()));

    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut top = steve_tests::steve::command()
        .args(["top", "--interval", "0.2", "--control"])
        .arg(&server.control)
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut screen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = format!("{:>7}  ", make.id());
    while !(screen.contains(&wanted) && screen.contains("steve top: fifo")) {
        assert!(Instant::now() < deadline, "no frame showing make (pid {}):\n{screen}", make.id());
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(500u16)).unwrap() > 0 {
            let mut chunk = [0u8; 4096];
            let count = master.read(&mut chunk).unwrap();
            screen.push_str(&String::from_utf8_lossy(&chunk[..count]));
        }
    }
    assert!(screen.contains("\x1b[?1049h"), "frames are drawn on the alternate screen");
    std::io::Write::write_all(&mut master, b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = top.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "steve top did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "steve top exited with {status}");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(make.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    make.wait().unwrap();
}

/// `steve status | head -1`: a reader that goes away ends steve quietly, with no panic and no
/// error line.
#[test]
fn a_closed_stdout_ends_status_and_get_quietly() {
    let server = FifoServer::start(2);
    for args in [&["status"][..], &["status", "--json"], &["get", "jobs", "free", "size"]] {
        let mut child = steve_tests::steve::command()
            .args(args)
            .arg("--control")
            .arg(&server.control)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before steve has its answer to write.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
}
