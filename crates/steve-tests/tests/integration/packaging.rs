//! What a distribution ships and a service manager sees: `scripts/install` into a DESTDIR (every
//! file it lists, and nothing else), man pages that render, completions that complete in bash,
//! zsh (through a real terminal, tmux) and fish, unit files systemd-analyze accepts, readiness
//! over NOTIFY_SOCKET, `--print-env` and `steve env` output a shell sources to give make its
//! jobserver, and log lines without colour or doubled timestamps where they must not have them.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use steve_tests::steve::{self, FifoServer};
use steve_tests::terminal::Terminal;
use steve_tests::{assert_success, clients, projects, timeline, workspace_root, KillOnDrop};

/// The visible subcommands, each with its man page.
const SUBCOMMANDS: [&str; 15] = [
    "serve",
    "run",
    "exec",
    "status",
    "get",
    "set",
    "top",
    "trace",
    "plot",
    "metrics",
    "backends",
    "doctor",
    "env",
    "bench",
    "completions",
];

/// `scripts/install --prefix /usr --destdir DIR` of the freshly built files; the files it listed.
fn install_into(destdir: &Path) -> Vec<String> {
    // Builds steve and the C library (and installs them for the C tests).
    steve_tests::capi::prefix();
    let profile_dir = steve::profile_dir();
    let output = Command::new(workspace_root().join("scripts/install"))
        .args(["--prefix", "/usr", "--destdir"])
        .arg(destdir)
        .arg("--from")
        .arg(&profile_dir)
        .env_remove("PREFIX")
        .output()
        .expect("run scripts/install");
    assert_success(&output, "scripts/install");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

/// Every file and link under `root`, as absolute paths below it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                let below = entry.path().strip_prefix(root).unwrap().to_path_buf();
                found.insert(format!("/{}", below.display()));
            }
        }
    }
    found
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs gcc and man, which scripts/test installs")]
fn scripts_install_puts_every_file_in_its_place_and_lists_exactly_those() {
    let destdir = tempfile::tempdir().unwrap();
    let listed = install_into(destdir.path());
    let mut expected: BTreeSet<String> = [
        "/usr/bin/steve",
        "/usr/share/man/man1/steve.1",
        "/usr/share/bash-completion/completions/steve",
        "/usr/share/zsh/site-functions/_steve",
        "/usr/share/fish/vendor_completions.d/steve.fish",
        "/usr/lib/systemd/system/steve.service",
        "/usr/share/doc/steve/steve.service.d/jobs.conf.example",
        "/usr/lib/sysusers.d/steve.conf",
        "/usr/lib/tmpfiles.d/steve.conf",
        "/usr/lib/udev/rules.d/70-steve.rules",
        "/etc/init.d/steve",
        "/etc/conf.d/steve",
        "/usr/lib/libjobserver.so.0.1.0",
        "/usr/lib/libjobserver.so.0",
        "/usr/lib/libjobserver.so",
        "/usr/lib/libjobserver.a",
        "/usr/include/jobserver.h",
        "/usr/lib/pkgconfig/jobserver.pc",
        "/usr/share/man/man7/jobserver.7",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    expected.extend(SUBCOMMANDS.iter().map(|name| format!("/usr/share/man/man1/steve-{name}.1")));
    expected.extend(
        steve_tests::capi::CALLS
            .iter()
            .map(|call| format!("/usr/share/man/man3/jobserver_{call}.3")),
    );
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(listed, expected, "what scripts/install listed");
    assert_eq!(files_under(destdir.path()), expected, "what is under the DESTDIR");

    // The service files name the installed binary, and the init script may be run.
    let root = destdir.path();
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/steve.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/steve serve --fd-store $STEVE_OPTS"), "{unit}");
    let openrc = std::fs::read_to_string(root.join("etc/init.d/steve")).unwrap();
    assert!(openrc.contains("command=\"/usr/bin/steve\""), "{openrc}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("etc/init.d/steve")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // No OpenRC here to run it: its shell is checked, with the conf.d file it sources.
    for script in ["etc/init.d/steve", "etc/conf.d/steve"] {
        let checked = Command::new("sh").arg("-n").arg(root.join(script)).output().unwrap();
        assert_success(&checked, &format!("sh -n {script}"));
    }
    let pc = std::fs::read_to_string(root.join("usr/lib/pkgconfig/jobserver.pc")).unwrap();
    assert!(pc.contains("libdir=/usr/lib") && pc.contains("Version: 0.1.0"), "{pc}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs man and groff, which scripts/test installs")]
fn every_installed_man_page_renders_with_man_l_without_warnings() {
    let destdir = tempfile::tempdir().unwrap();
    let listed = install_into(destdir.path());
    let mandir = destdir.path().join("usr/share/man");
    let pages: Vec<&String> = listed.iter().filter(|path| path.contains("/share/man/")).collect();
    assert!(pages.len() > 20, "{pages:?}");
    for page in pages {
        let relative = page.strip_prefix("/usr/share/man/").unwrap();
        // From the man tree's root, so that a `.so man3/PAGE` link finds its page.
        let output = Command::new("man")
            .args(["--warnings", "-l", relative])
            .current_dir(&mandir)
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        assert_success(&output, &format!("man -l {relative}"));
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(warnings.trim().is_empty(), "man -l {relative}: {warnings}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("NAME"), "{relative}");
    }
    // steve-serve(1) is made from the same definitions as --help: every option is there.
    let serve = Command::new("man")
        .args(["-l", "man1/steve-serve.1"])
        .current_dir(&mandir)
        .env("MANWIDTH", "200")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for option in ["--backend", "--per-process-limit", "--print-env", "--color"] {
        assert!(text.contains(option), "steve-serve(1) lacks {option}");
    }
}

/// Types `line` and Tab into `shell` running in a tmux terminal after `setup`, and returns the
/// screen once it shows `wanted` (or panics after 10 s).
fn complete_in_terminal(
    shell: &[&str],
    setup: &str,
    line: &str,
    tabs: usize,
    wanted: &str,
) -> String {
    let home = tempfile::tempdir().unwrap();
    let command = format!(
        "env -i HOME={} TERM=xterm PATH=/usr/bin:/bin {}",
        home.path().display(),
        shell.join(" ")
    );
    let terminal = Terminal::start(&format!("completion-{}", shell[0]), &command, 160, 40);
    terminal.send(&[setup, "Enter"]);
    terminal.send(&["echo setup-done", "Enter"]);
    terminal.screen_showing("\nsetup-done", false, Duration::from_secs(10));
    let mut keys = vec![line];
    keys.extend(std::iter::repeat_n("Tab", tabs));
    terminal.send(&keys);
    terminal.screen_showing(wanted, false, Duration::from_secs(10))
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs bash, zsh, fish and tmux, which scripts/test installs"
)]
fn the_completions_load_in_bash_zsh_and_fish_and_complete_steve_se() {
    let destdir = tempfile::tempdir().unwrap();
    install_into(destdir.path());
    let share = destdir.path().join("usr/share");
    let bin = destdir.path().join("usr/bin");

    let bash = share.join("bash-completion/completions/steve");
    let setup = format!("PATH={}:$PATH; source {}", bin.display(), bash.display());
    // Two tabs: bash lists the candidates of an ambiguous word.
    let shown = complete_in_terminal(
        &["bash", "--norc", "--noprofile"],
        &setup,
        "steve se",
        2,
        "serve  set",
    );
    assert!(shown.contains("\nserve  set"), "bash showed:\n{shown}");

    let zsh_dir = share.join("zsh/site-functions");
    let setup = format!(
        "PATH={}:$PATH; fpath=({} $fpath); autoload -U compinit; compinit -u",
        bin.display(),
        zsh_dir.display()
    );
    let shown = complete_in_terminal(&["zsh", "-f"], &setup, "steve se", 1, "serve  --");
    assert!(
        shown.contains("serve  -- Serve") && shown.contains("set    -- Change"),
        "zsh showed:\n{shown}"
    );

    let fish = share.join("fish/vendor_completions.d/steve.fish");
    let output = Command::new("fish")
        .arg("--no-config")
        .arg("-c")
        .arg(format!("source {}; complete -C 'steve se'", fish.display()))
        .output()
        .expect("run fish");
    assert_success(&output, "fish");
    let offered: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(offered, ["serve", "set"], "fish offered");
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs systemd-analyze and man, which scripts/test installs"
)]
fn systemd_analyze_verify_accepts_the_unit_and_its_drop_in_example() {
    // Installed under a prefix of its own, so that the unit's ExecStart names a binary that is
    // there (systemd-analyze checks it), as are the man pages its Documentation= names.
    let root = steve_tests::capi::prefix();
    // The unit and the example as an administrator would put it in place.
    let units_dir = tempfile::tempdir().unwrap();
    let units = units_dir.path();
    std::fs::create_dir_all(units.join("steve.service.d")).unwrap();
    std::fs::copy(root.join("lib/systemd/system/steve.service"), units.join("steve.service"))
        .unwrap();
    std::fs::copy(
        root.join("share/doc/steve/steve.service.d/jobs.conf.example"),
        units.join("steve.service.d/jobs.conf"),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("steve.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .env("MANPATH", root.join("share/man"))
        .output()
        .expect("run systemd-analyze (scripts/test installs systemd)");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "{complaints}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs GNU make 4.4.1, which scripts/test installs")]
fn print_env_and_steve_env_give_a_shell_and_make_the_jobserver() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobserver");
    let mut serve = steve::command();
    serve.args(["serve", "--backend", "fifo", "-j3", "--print-env", "--path"]).arg(&path);
    let mut child = KillOnDrop(
        serve.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut printed = String::new();
    for _ in 0..2 {
        stdout.read_line(&mut printed).unwrap();
    }
    assert!(printed.starts_with("export MAKEFLAGS=' -j3 --jobserver-auth=fifo:"), "{printed}");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, &printed).unwrap();

    let project = tempfile::tempdir().unwrap();
    let log = project.path().join("timeline");
    projects::makefile(project.path(), "job", 8, 0.3, &log);
    // Without -j: only the jobserver in the environment makes make run jobs side by side.
    let script = format!(". {}; exec {}", env_file.display(), clients::make44().display());
    let output = Command::new("sh")
        .args(["-c", &script])
        .current_dir(project.path())
        .env_remove("MAKEFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .output()
        .unwrap();
    assert_success(&output, "make in a shell that sourced --print-env");
    timeline::assert_peak_within(&log, 8, 4, "make given the environment --print-env printed");

    // steve env says the same, asked through the control socket.
    let asked = steve::command()
        .args(["env", "--control"])
        .arg(dir.path().join("jobserver.control"))
        .output()
        .unwrap();
    assert_success(&asked, "steve env");
    assert_eq!(String::from_utf8_lossy(&asked.stdout), printed);
    let unit = steve::command()
        .args(["env", "--format", "systemd", "--control"])
        .arg(dir.path().join("jobserver.control"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unit.stdout), printed.replace("export ", ""));
}

#[test]
fn readiness_is_sent_once_clients_may_connect_and_stopping_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let path = dir.path().join("jobserver");
    let mut serve = steve::command();
    serve.args(["serve", "--backend", "fifo", "-j2", "--path"]).arg(&path);
    let mut child = KillOnDrop(
        serve
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buffer = [0u8; 512];
    let length = socket.recv(&mut buffer).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
    assert_eq!(message, format!("READY=1\nSTATUS=serving 2 tokens on {}", path.display()));
    // By then the pipe and the control socket are there.
    assert!(path.exists() && dir.path().join("jobserver.control").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let length = socket.recv(&mut buffer).expect("STOPPING=1");
    assert_eq!(&buffer[..length], b"STOPPING=1");
    child.0.wait().unwrap();
}

/// The first log line `steve serve` writes to `stderr` (a file), with `env` set, then stopped.
fn first_log_line(args: &[&str], env: &[(&str, String)], stderr: PathBuf) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = steve::command();
    serve.args(args).args(["serve", "--backend", "fifo", "-j1", "--path"]);
    serve.arg(dir.path().join("jobserver"));
    serve.envs(env.iter().map(|(name, value)| (*name, value)));
    let server = FifoServer::start_command(serve, &dir.path().join("jobserver"), &stderr)
        .unwrap_or_else(|failure| panic!("{failure:?}"));
    let line = steve_tests::wait_for("a log line", Duration::from_secs(10), || {
        server.log().lines().next().map(str::to_string)
    });
    drop(server);
    line
}

#[test]
fn color_never_and_no_color_write_no_escapes_and_journald_gets_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let line = first_log_line(&["--color", "always"], &[], log.clone());
    assert!(line.contains("\x1b["), "--color always wrote no colour: {line:?}");
    let line = first_log_line(&["--color", "never"], &[], log.clone());
    assert!(!line.contains('\x1b'), "--color never: {line:?}");
    // Into a file, auto means no colour; NO_COLOR is for terminals, seen in the tmux test
    // below.
    let line = first_log_line(&[], &[], log.clone());
    assert!(!line.contains('\x1b') && line.starts_with("20"), "a timestamp first: {line:?}");

    // JOURNAL_STREAM naming stderr's device and inode: journald stamps lines itself.
    std::fs::write(&log, "").unwrap();
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", metadata.dev(), metadata.ino());
    let line = first_log_line(&[], &[("JOURNAL_STREAM", stream.clone())], log.clone());
    assert!(!line.starts_with("20"), "a timestamp under journald: {line:?}");
    // A stale JOURNAL_STREAM (stderr redirected since) is not journald.
    let stale = format!("{}:{}", metadata.dev(), metadata.ino() + 1);
    let line = first_log_line(&[], &[("JOURNAL_STREAM", stale)], log);
    assert!(line.starts_with("20"), "no timestamp with a stale JOURNAL_STREAM: {line:?}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs tmux, which scripts/test installs")]
fn no_color_turns_colour_off_on_a_terminal() {
    let shown = |no_color: bool| {
        let env = if no_color { "export NO_COLOR=1; " } else { "" };
        let command = format!(
            "{env}{} backends; {} run -j1 -- sh -c 'kill -USR1 $PPID; sleep 1'; sleep 30",
            steve::binary().display(),
            steve::binary().display()
        );
        let terminal = Terminal::start(&format!("color-{no_color}"), &command, 200, 50);
        terminal.screen_showing("INFO", true, Duration::from_secs(15))
    };
    assert!(shown(false).contains("\x1b["), "no colour on a terminal without NO_COLOR");
    let plain = shown(true);
    let log_lines: Vec<&str> = plain.lines().filter(|line| line.contains("INFO")).collect();
    assert!(log_lines.iter().all(|line| !line.contains('\x1b')), "{log_lines:?}");
}

#[test]
#[cfg_attr(not(steve_test_all), ignore = "needs root, for a fuse mount")]
fn a_fuse_servers_log_reads_well_for_ls_a_settings_change_and_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let log = dir.path().join("log");
    let (server, _, control) = steve::fuse_server_with(&mountpoint, &["-j2".into()], Some(&log));
    // ls -l and stat send STATX and GETXATTR, which steve does not implement.
    assert_success(&Command::new("ls").arg("-l").arg(&mountpoint).output().unwrap(), "ls -l");
    assert_success(
        &Command::new("stat").arg(mountpoint.join("jobserver")).output().unwrap(),
        "stat",
    );
    let set = steve::command().args(["set", "jobs=3", "--control"]).arg(&control).output().unwrap();
    assert_success(&set, "steve set jobs=3");
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    // The one warning is root's default mode (no jobserver group on this machine).
    let warnings: Vec<&str> =
        text.lines().filter(|line| line.contains("WARN") && !line.contains("mode 0666")).collect();
    assert!(warnings.is_empty(), "warnings for ls -l: {warnings:?}");
    let changed = text.lines().find(|line| line.contains("settings changed")).expect("logged");
    assert!(changed.contains("by uid 0 (pid ") && changed.ends_with(": jobs=3"), "{changed}");
    assert!(text.lines().all(|line| line.contains("serve{backend=fuse}")), "{text}");
    assert!(!text.contains("steve_cuse::"), "module paths without --verbose: {text}");
}

#[test]
fn status_without_a_server_says_so_and_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = steve::command()
        .arg("status")
        .env_remove("MAKEFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("STEVE_CONTROL")
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines = steve::stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("steve: error: no steve server is running here")
            && lines[0].contains("start one with `steve serve`"),
        "{lines:?}"
    );
}

/// Boots a VM with systemd as its init, runs `script` there as root, and asserts it exited 0.
/// The script reports on its output; a `--- timeline ---` line ends the report, and the jobs'
/// timeline follows.
fn boot_systemd(script: String) -> steve_tests::vm::VmRun {
    let run = steve_tests::vm::boot(
        &steve_tests::vm::Guest::SystemdScript(script),
        &[],
        Duration::from_secs(15 * 60),
        2,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    run
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs QEMU, Debian's kernel and systemd, and GNU make 4.4.1, which scripts/test installs"
)]
fn the_systemd_unit_serves_dev_steve_in_a_vm_booted_by_systemd() {
    // Built on the host, installed inside the VM by scripts/install, as a package would be.
    steve_tests::capi::prefix();
    let profile_dir = steve::profile_dir();
    // Not in /tmp: the guest's systemd cleans its /tmp at boot.
    let project = tempfile::tempdir_in(&profile_dir).unwrap();
    // The jobs log into the results share, which the host reads after the VM stops.
    let log = Path::new("/steve-results/timeline");
    projects::makefile(project.path(), "job", 8, 0.5, log);
    let script = format!(
        r#"set -u
fail() {{ echo "FAILED: $*"; journalctl --no-pager -n 40; exit 1; }}
{install} --prefix /usr --from {profile} > /steve-results/installed || fail "scripts/install"
systemd-sysusers || fail "systemd-sysusers"
getent group jobserver > /dev/null || fail "sysusers made no group jobserver"
getent passwd steve > /dev/null || fail "sysusers made no user steve"
systemd-tmpfiles --create /usr/lib/tmpfiles.d/steve.conf || fail "systemd-tmpfiles"
echo "tmpfiles: $(stat -c '%F %a %U' /run/steve)"
udevadm control --reload || fail "udevadm control --reload"
mkdir -p /etc/systemd/system/steve.service.d
printf '[Service]\nEnvironment="STEVE_OPTS=--backend cuse -j 3"\n' > /etc/systemd/system/steve.service.d/test.conf
cat > /etc/systemd/system/steve-after.service <<'UNIT'
[Unit]
Requires=steve.service
After=steve.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'if test -c /dev/steve && /usr/bin/steve status > /dev/null 2>&1; then echo ready; else echo not ready; fi > /run/steve-after'
UNIT
systemctl daemon-reload
systemctl start steve-after.service || fail "systemctl start steve-after"
echo "after: $(cat /run/steve-after)"
echo "active: $(systemctl is-active steve)"
echo "device: $(stat -c '%F %a %G' /dev/steve)"
udevadm test /sys/class/cuse/steve 2>&1 | grep 70-steve.rules | sed 's/^/udev: /' 
echo "env file:"; cat /run/steve/env
(set -a; . /run/steve/env; set +a; exec {make} -C {project} > /dev/null) || fail "make with the unit's environment"
echo "free after make: $(steve get free)"
echo "journal: $(journalctl -u steve -o cat --no-pager | grep 'serving 3 tokens')"
systemctl stop steve || fail "systemctl stop"
for made in /dev/steve /run/steve; do test -e "$made" && echo "left behind: $made"; done
echo "--- timeline ---"
cat /steve-results/timeline
"#,
        install = workspace_root().join("scripts/install").display(),
        profile = profile_dir.display(),
        make = clients::make44().display(),
        project = project.path().display(),
    );
    let run = boot_systemd(script);
    let what = run.describe();
    let (report, timeline_text) = run.output.split_once("--- timeline ---\n").expect(&what);
    // The timeline's lines start with `start` or `end`, never with one of these prefixes.
    let line = |prefix: &str| run.reported(prefix);
    // Type=notify: a unit ordered after steve starts once the device exists and the control
    // socket answers.
    assert_eq!(line("after: "), "ready", "{what}");
    assert_eq!(line("active: "), "active");
    assert_eq!(line("tmpfiles: "), "directory 755 root", "{what}");
    // The udev rule and steve agree: the group jobserver, mode 0660.
    assert_eq!(line("device: "), "character special file 660 jobserver", "{what}");
    // ... and udev applies the shipped rule to it, so it never undoes steve's mode.
    let udev: Vec<&str> = report.lines().filter(|line| line.starts_with("udev: ")).collect();
    assert!(
        udev.iter().any(|line| line.contains("GROUP")) && udev.iter().any(|l| l.contains("MODE")),
        "udev did not apply 70-steve.rules: {udev:?}\n{what}"
    );
    assert!(report.contains("MAKEFLAGS=' -j3 --jobserver-auth=fifo:/dev/steve'"), "{what}");
    assert_eq!(line("free after make: "), "3", "{what}");
    // journald stamps the lines: steve's own carry no timestamp.
    let journal = line("journal: ");
    assert!(journal.contains("serving 3 tokens") && !journal.starts_with("20"), "{journal}");
    assert!(!report.contains("left behind"), "{what}");
    let timeline_file = project.path().join("timeline");
    std::fs::write(&timeline_file, timeline_text).unwrap();
    timeline::assert_peak_within(&timeline_file, 8, 4, "make given the unit's environment");
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs QEMU, Debian's kernel and systemd, and GNU make 4.4.1, which scripts/test installs"
)]
fn systemctl_restart_breaks_no_build() {
    // The shipped unit, installed as a package would be; make runs 40 jobs on /dev/steve while
    // `systemctl restart steve` runs three times.
    steve_tests::capi::prefix();
    let profile_dir = steve::profile_dir();
    let project = tempfile::tempdir_in(&profile_dir).unwrap();
    let log = Path::new("/steve-results/timeline");
    projects::makefile(project.path(), "job", 40, 0.3, log);
    let script = format!(
        r#"set -u
fail() {{ echo "FAILED: $*"; journalctl --no-pager -n 60; exit 1; }}
{install} --prefix /usr --from {profile} > /steve-results/installed || fail "scripts/install"
systemd-sysusers || fail "systemd-sysusers"
systemd-tmpfiles --create /usr/lib/tmpfiles.d/steve.conf || fail "systemd-tmpfiles"
udevadm control --reload || fail "udevadm control --reload"
mkdir -p /etc/systemd/system/steve.service.d
printf '[Service]\nEnvironment="STEVE_OPTS=--backend cuse -j 4"\n' > /etc/systemd/system/steve.service.d/test.conf
systemctl daemon-reload
systemctl start steve || fail "systemctl start"
(set -a; . /run/steve/env; set +a; exec {make} -C {project} > /dev/null 2> /steve-results/make.err; ) &
build=$!
for round in 1 2 3; do
  sleep 2
  systemctl restart steve || fail "systemctl restart $round"
  echo "restart $round: pid $(systemctl show -p MainPID --value steve)"
done
wait $build; echo "make: $?"
echo "make stderr: $(tr '\n' ' ' < /steve-results/make.err)"
echo "free after make: $(steve get free)"
echo "taken from the store: $(journalctl -u steve -o cat --no-pager | grep -c 'took the server over from the service manager')"
echo "left for a restart: $(journalctl -u steve -o cat --no-pager | grep -c 'left in the service manager')"
systemctl stop steve || fail "systemctl stop"
for made in /dev/steve /run/steve; do test -e "$made" && echo "left behind: $made"; done
echo "--- timeline ---"
cat /steve-results/timeline
"#,
        install = workspace_root().join("scripts/install").display(),
        profile = profile_dir.display(),
        make = clients::make44().display(),
        project = project.path().display(),
    );
    let run = boot_systemd(script);
    let what = run.describe();
    let (report, timeline_text) = run.output.split_once("--- timeline ---\n").expect(&what);
    let line = |prefix: &str| run.reported(prefix);
    assert_eq!(line("make: "), "0", "{what}");
    let stderr = line("make stderr: ");
    assert!(!stderr.contains("jobserver") && !stderr.contains("warning"), "{stderr}\n{what}");
    // Three restarts, three different server processes, each taken from the store.
    let pids: BTreeSet<String> =
        (1..=3).map(|round| line(&format!("restart {round}: pid "))).collect();
    assert_eq!(pids.len(), 3, "{pids:?}\n{what}");
    assert_eq!(line("taken from the store: "), "3", "{what}");
    assert_eq!(line("left for a restart: "), "3", "{what}");
    assert_eq!(line("free after make: "), "4", "{what}");
    // A plain stop still tears down.
    assert!(!report.contains("left behind"), "{what}");
    let timeline_file = project.path().join("timeline");
    std::fs::write(&timeline_file, timeline_text).unwrap();
    timeline::assert_peak_within(&timeline_file, 40, 5, "make through three restarts");
}
