//! What `steve bench` measures against: a bare kernel FIFO with tokens in it and no server at
//! all (the floor any jobserver is held to), the bench's minimal FUSE server (what a FUSE round
//! trip costs with no jobserver behind it), or a `steve serve` of one backend, started afresh
//! for each measurement in a directory of the bench's own and stopped after it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use steve_cuse::fuse::baseline::Threading;

/// How long a server may take to say it is ready.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A jobserver under test.
pub struct Target {
    /// What it is: `pipe` or a backend's name.
    pub name: String,
    /// Where clients open it.
    pub jobserver: PathBuf,
    server: Option<Child>,
    /// Its control socket.
    control: PathBuf,
    /// The bare pipe, kept open by the bench so that it lives.
    _keeper: Option<File>,
}

impl Target {
    /// A bare named pipe in `dir` holding `jobs` tokens.
    pub fn pipe(dir: &Path, jobs: usize) -> anyhow::Result<Target> {
        let path = dir.join("bare-pipe");
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("cannot make {}", path.display()))?;
        let mut keeper = OpenOptions::new().read(true).write(true).open(&path)?;
        keeper.write_all(&vec![b'+'; jobs])?;
        Ok(Target {
            name: "pipe".into(),
            jobserver: path,
            server: None,
            control: PathBuf::new(),
            _keeper: Some(keeper),
        })
    }

    /// `STEVE serve --backend BACKEND -jJOBS EXTRA...` in `dir`, once it says it is ready.
    pub fn serve(
        steve: &Path,
        backend: &str,
        dir: &Path,
        jobs: usize,
        extra: &[&str],
    ) -> anyhow::Result<Target> {
        let mut command = Command::new(steve);
        command.args(["serve", "--backend", backend, "--jobs", &jobs.to_string()]).args(extra);
        // A control socket (and so crash books) of its own for every start: what one
        // measurement leaves must not reach the next.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let control = dir.join(format!("{backend}-{start}.control"));
        command.arg("--control").arg(&control);
        let jobserver = match backend {
            "fifo" => {
                let path = dir.join("fifo");
                command.arg("--path").arg(&path);
                path
            }
            "fuse" => {
                let mountpoint = dir.join("mnt");
                command.arg("--mountpoint").arg(&mountpoint).arg("--no-fifo");
                mountpoint.join("jobserver")
            }
            "cuse" => {
                let name = format!("steve-bench-{}", std::process::id());
                command.args(["--dev-name", &name, "--no-fifo"]);
                Path::new("/dev").join(name)
            }
            other => bail!("steve bench knows no backend {other}"),
        };
        let server = Target::wait_ready(command, dir, backend, "MAKEFLAGS")?;
        Ok(Target { name: backend.into(), jobserver, server: Some(server), control, _keeper: None })
    }

    /// The bench's minimal FUSE server (`steve bench-client fuse-baseline`) on `dir/baseline`,
    /// served as `threading` says, once mounted.
    pub fn fuse_baseline(
        steve: &Path,
        name: &str,
        dir: &Path,
        threading: Threading,
    ) -> anyhow::Result<Target> {
        let mountpoint = dir.join("baseline");
        let mut command = Command::new(steve);
        command.args(["bench-client", "fuse-baseline"]).arg(&mountpoint);
        match threading {
            Threading::Single => {}
            Threading::Shared(threads) => {
                command.args(["--threads", &threads.to_string()]);
            }
            Threading::Cloned(threads) => {
                command.args(["--threads", &threads.to_string(), "--clone-fd"]);
            }
            Threading::Ring => {
                command.arg("--io-uring");
            }
        }
        let server = Target::wait_ready(command, dir, "baseline", "ready")?;
        Ok(Target {
            name: name.into(),
            jobserver: mountpoint.join("jobserver"),
            server: Some(server),
            control: PathBuf::new(),
            _keeper: None,
        })
    }

    /// Starts `command` with its output in `dir/LABEL.out` and `dir/LABEL.log`, and waits until
    /// the output holds `word`; kills it if it exits or is slow.
    fn wait_ready(
        mut command: Command,
        dir: &Path,
        label: &str,
        word: &str,
    ) -> anyhow::Result<Child> {
        let announced = dir.join(format!("{label}.out"));
        let log = dir.join(format!("{label}.log"));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&announced)?)
            .stderr(File::create(&log)?)
            .env("NO_COLOR", "1");
        let mut server = command.spawn().with_context(|| format!("start the {label} server"))?;
        let started = Instant::now();
        loop {
            if std::fs::read_to_string(&announced).is_ok_and(|text| text.contains(word)) {
                return Ok(server);
            }
            let failed = server.try_wait()?.is_some() || started.elapsed() > START_LIMIT;
            if failed {
                let _ = server.kill();
                let _ = server.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the {label} server did not start:\n{}", log.trim_end());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server keeps books per process (so a killed client's tokens come back).
    pub fn per_process(&self) -> bool {
        self.name == "fuse" || self.name == "cuse"
    }

    /// How many requests wait in the server's queue (its status report), for a per-process
    /// server.
    pub fn waiting(&self) -> Option<usize> {
        use steve_core::server::control::{ask, Request, Response};
        match ask(&self.control, &Request::Status).ok()? {
            Response::Status { report } => Some(report.waiters?.len()),
            _ => None,
        }
    }

    /// The server's resident memory, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// The server's context switches so far (each one a wake-up or a preemption).
    pub fn context_switches(&self) -> Option<u64> {
        self.status_field("voluntary_ctxt_switches:")
    }

    fn status_field(&self, name: &str) -> Option<u64> {
        let pid = self.server.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let pid = nix::unistd::Pid::from_raw(server.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
