//! The command line itself: listing backends and choosing one.

use std::time::Duration;

use steve_tests::steve::{command, stderr_lines};

#[test]
fn backends_lists_fifo_and_pipe_as_available() {
    let output = command().arg("backends").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for name in ["fifo", "pipe"] {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(line.ends_with("available"), "{line}");
    }
}

#[test]
fn serve_refuses_an_unknown_or_unfit_backend() {
    for (backend, message) in [
        ("nosuch", "no backend named \"nosuch\""),
        ("pipe", "backend pipe serves one command tree: use `steve run`"),
    ] {
        let output = command().args(["serve", "--backend", backend]).output().unwrap();
        assert!(!output.status.success());
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(message), "{}", lines[0]);
    }
}

#[test]
fn verbose_logs_what_steve_run_gives_the_command() {
    let quiet =
        command().args(["run", "-j", "2", "--", "true"]).env_remove("STEVE_LOG").output().unwrap();
    assert!(stderr_lines(&quiet).is_empty(), "{:?}", stderr_lines(&quiet));
    let verbose = command()
        .args(["-v", "run", "-j", "2", "--", "true"])
        .env_remove("STEVE_LOG")
        .output()
        .unwrap();
    let lines = stderr_lines(&verbose);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("DEBUG") && line.contains("makeflags= -j2 --jobserver-fds=")),
        "{lines:?}"
    );
}

#[test]
fn serve_without_backend_picks_the_best_available_and_says_why() {
    use std::io::BufRead;
    let listing = command().arg("backends").output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let available = |name: &str| {
        listing.lines().any(|line| line.starts_with(name) && line.ends_with(" available"))
    };
    let expected = ["cuse", "fuse", "fifo"]
        .into_iter()
        .find(|name| available(name))
        .expect("fifo works everywhere");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    let mountpoint = dir.path().join("mnt");
    let log = dir.path().join("steve.log");
    // Only the chosen backend's own location option, so that it serves in the temporary
    // folder: auto takes the first backend that works here and takes every option given.
    let mut serve = command();
    serve.args(["serve", "-j", "1"]);
    match expected {
        "cuse" => serve.args(["--dev-name", "steve-auto-test"]),
        "fuse" => serve.arg("--mountpoint").arg(&mountpoint),
        _ => serve.arg("--path").arg(&path),
    };
    let mut server = serve
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut announcement = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut announcement).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    server.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("backend {expected} chosen")), "{text}");
    for passed_over in ["cuse", "fuse"].into_iter().take_while(|name| *name != expected) {
        let reason = listing
            .lines()
            .find(|line| line.starts_with(passed_over))
            .and_then(|line| line.split_once("unavailable: "))
            .map(|(_, why)| why.to_string())
            .unwrap();
        assert!(text.contains(&format!("backend {passed_over} passed over: {reason}")), "{text}");
    }
    let jobserver = match expected {
        "cuse" => "/dev/steve-auto-test".into(),
        "fuse" => mountpoint.join("jobserver"),
        _ => path,
    };
    assert!(announcement.contains(&format!("fifo:{}", jobserver.display())), "{announcement}");
}

/// Every pair of a server backend and an option it does not take: `steve serve` refuses it in
/// one line naming both, and sets nothing up. The pairs come from the registry, so a new backend
/// or option is covered without changing this test.
#[test]
fn a_backend_refuses_each_option_it_does_not_take() {
    let dir = tempfile::tempdir().unwrap();
    let options: [(&str, Vec<std::ffi::OsString>); 6] = [
        ("--path", vec!["--path".into(), dir.path().join("p").into()]),
        ("--mountpoint", vec!["--mountpoint".into(), dir.path().join("m").into()]),
        ("--dev-name", vec!["--dev-name".into(), "steve-refused".into()]),
        ("--user", vec!["--user".into(), "nobody".into()]),
        ("--poll-reservation-ms", vec!["--poll-reservation-ms".into(), "100".into()]),
        ("--per-process-limit", vec!["--per-process-limit".into(), "1".into()]),
    ];
    let listing = command().arg("backends").output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let mut refused = 0;
    for backend in ["cuse", "fuse", "fifo"] {
        let own = own_options(&listing, backend);
        assert!(!own.is_empty() || backend == "fifo", "{backend} lists no options:\n{listing}");
        for (flag, args) in &options {
            if own.iter().any(|taken| taken == flag) {
                continue;
            }
            let mut serve = command();
            serve.args(["serve", "--backend", backend, "-j", "1"]).args(args);
            let output = steve_tests::output_within(&mut serve, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("{backend} served despite {flag}"));
            assert_eq!(output.status.code(), Some(2), "{backend} {flag}: {output:?}");
            let lines = stderr_lines(&output);
            assert_eq!(lines.len(), 1, "{backend} {flag}: {lines:?}");
            let expected = format!("{flag} does not apply to backend {backend}");
            assert!(lines[0].contains(&expected), "{backend} {flag}: {}", lines[0]);
            refused += 1;
        }
    }
    // cuse takes 4 of the 6, fuse 3, fifo 1: 2 + 3 + 5 refusals.
    assert_eq!(refused, 10, "{listing}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused server made files");
}

/// `own options:` of `backend` in `steve backends`' listing.
fn own_options(listing: &str, backend: &str) -> Vec<String> {
    let mut lines = listing.lines().skip_while(|line| !line.starts_with(backend));
    lines
        .find_map(|line| line.trim().strip_prefix("own options: "))
        .map(|own| own.split(' ').filter(|o| *o != "none").map(str::to_string).collect())
        .unwrap_or_default()
}

/// `steve run` and `steve serve` take a job count in every form make users type.
#[test]
fn job_counts_are_taken_in_every_form_make_users_type() {
    for form in [&["-j3"][..], &["-j", "3"], &["--jobs=3"], &["--jobs", "3"]] {
        let output = command()
            .arg("run")
            .args(form)
            .args(["--", "sh", "-c", "echo \"$MAKEFLAGS\""])
            .env_remove("MAKEFLAGS")
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MFLAGS")
            .output()
            .unwrap();
        assert!(output.status.success(), "{form:?}: {output:?}");
        let makeflags = String::from_utf8_lossy(&output.stdout);
        assert!(makeflags.starts_with(" -j3 "), "{form:?}: {makeflags}");
    }
    // The command's own options are its own, not steve's.
    let output = command().args(["run", "-j2", "sh", "-c", "exit 4"]).output().unwrap();
    assert_eq!(output.status.code(), Some(4));
    let dir = tempfile::tempdir().unwrap();
    for form in [&["-j3"][..], &["-j", "3"], &["--jobs=3"], &["--jobs", "3"]] {
        let path = dir.path().join("jobserver");
        let mut server = command()
            .args(["serve", "--backend", "fifo", "--path"])
            .arg(&path)
            .args(form)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut announcement = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut announcement)
            .unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        server.wait().unwrap();
        assert!(announcement.starts_with("MAKEFLAGS=' -j3 "), "{form:?}: {announcement}");
    }
    let bad = command().args(["run", "-jx", "true"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let lines = stderr_lines(&bad);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"x\" is not a job count"), "{}", lines[0]);
}

/// `steve bench --quick --json` (the CI smoke run): every measure for the bare pipe and for
/// each server backend this machine runs, with a figure from real clients, and nothing left
/// behind (no server, no mount, no directory). No figure is judged: a slow machine is no
/// failure.
#[test]
fn bench_quick_measures_every_backend_here_and_leaves_nothing() {
    let listed = command().arg("backends").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let available: Vec<&str> = ["fifo", "fuse", "cuse"]
        .into_iter()
        .filter(|name| {
            listed.lines().any(|line| line.starts_with(name) && line.ends_with("available"))
        })
        .collect();
    let output = command().args(["bench", "--quick", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let figures = document["figures"].as_array().unwrap();
    let value = |measure: &str, target: &str| -> f64 {
        figures
            .iter()
            .find(|figure| figure["measure"] == measure && figure["target"] == target)
            .and_then(|figure| figure["value"].as_f64())
            .unwrap_or_else(|| panic!("no {measure:?} for {target} in {document}"))
    };
    for target in std::iter::once("pipe").chain(available.iter().copied()) {
        for measure in ["round trips, 1 client", "round trips, 8 clients in all"] {
            assert!(value(measure, target) > 0.0, "{measure} on {target}: {document}");
        }
    }
    for target in &available {
        for count in [10, 100] {
            let measure = format!("round trips, 1 client, {count} idle connected");
            assert!(value(&measure, target) > 0.0, "{measure} on {target}");
        }
        assert!(value("idle wake-ups", target) >= 0.0);
        if *target != "fifo" {
            assert!(value("reclaim after SIGKILL (p99)", target) > 0.0, "reclaim on {target}");
        }
    }
    let dir = std::path::PathBuf::from(document["directory"].as_str().unwrap());
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    assert!(!dir.exists(), "{} left behind", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "a mount left behind: {mounts}");
}
