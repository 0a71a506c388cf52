//! 10,000 random and mutated MAKEFLAGS values through `steve exec`, `steve run` and
//! `steve status`: no panic, no hang, no file written. The values name a regular file (which
//! must keep its contents), a FIFO full of tokens, missing paths and assorted descriptors.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use steve_tests::steve::binary;

/// A small seeded generator: the same values on every run, so a failure can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len())]
    }
}

/// One MAKEFLAGS value: words from make's vocabulary and the test's paths, then (often) a few
/// bytes changed, inserted or deleted, sometimes into bytes that are not UTF-8.
fn value(rng: &mut Rng, paths: &[String]) -> OsString {
    const WORDS: &[&str] = &[
        "-j",
        "-j4",
        "-j0",
        "-jx",
        "-j99999999999",
        "-k",
        "ks",
        "-ks",
        "n",
        "-n",
        "kn",
        "--",
        "FOO=bar",
        "--jobserver-auth=",
        "--jobserver-fds=",
        "--jobserver-auth=fifo:",
        "--jobserver-auth=3,4",
        "--jobserver-auth=-2,-2",
        "--jobserver-auth=1,1",
        "--jobserver-auth=0,0",
        "--jobserver-auth=7,7",
        "--jobserver-fds=3,3",
        "--jobserver-auth=4,3",
        "--jobserver-auth=-1,5",
        "--jobserver-auth=3",
        "-l",
        "-l4.5",
        "--load-average=2",
        "\\",
        "\\ ",
        " ",
        "\t",
        "=",
        ",",
        "fifo:",
        ":",
        "-",
        "--no-print-directory",
    ];
    let mut text = String::new();
    for _ in 0..1 + rng.below(6) {
        if !text.is_empty() {
            text.push(if rng.below(8) == 0 { '\t' } else { ' ' });
        }
        match rng.below(4) {
            0 => {
                let path = &paths[rng.below(paths.len())];
                text.push_str(&format!("--jobserver-auth=fifo:{path}"));
            }
            _ => text.push_str(rng.pick(WORDS)),
        }
    }
    let mut bytes = text.into_bytes();
    for _ in 0..rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(3) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, b" -,:=\\0123456789fifo/"[rng.below(21)]),
            _ => bytes.insert(at, (rng.next() & 0xff) as u8),
        }
    }
    bytes.retain(|byte| *byte != 0);
    OsString::from_vec(bytes)
}

#[test]
fn ten_thousand_makeflags_values_cause_no_panic_no_hang_and_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    // A FIFO with more tokens than any client here takes, kept open so it never blocks.
    let fifo = dir.path().join("fifo");
    let keeper = steve_core::client::make_fifo(&fifo).unwrap();
    std::io::Write::write_all(&mut &keeper, &[b'+'; 4096]).unwrap();
    let paths: Vec<String> = [
        precious.display().to_string(),
        fifo.display().to_string(),
        dir.path().join("missing").display().to_string(),
        dir.path().display().to_string(),
        "/dev/null".to_string(),
        "/proc/self/fd/1".to_string(),
    ]
    .into();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let values: Vec<OsString> = (0..10_000).map(|_| value(&mut rng, &paths)).collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    // Exit codes of `steve exec`: the values must reach both the command and steve's refusals.
    let exec_codes = Mutex::new(std::collections::BTreeMap::<i32, usize>::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(flags) = values.get(index) else { return };
                for args in
                    [&["exec", "--", "true"][..], &["run", "-j2", "--", "true"], &["status"]]
                {
                    match run_one(args, flags, dir.path()) {
                        Ok(code) if args[0] == "exec" => {
                            *exec_codes.lock().unwrap().entry(code).or_default() += 1
                        }
                        Ok(_) => {}
                        Err(why) => {
                            failures.lock().unwrap().push(format!("value {index} {flags:?}: {why}"))
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let exec_codes = exec_codes.into_inner().unwrap();
    eprintln!("steve exec exit codes over 10,000 values: {exec_codes:?}");
    for code in [0, 125] {
        assert!(exec_codes.get(&code).is_some_and(|n| *n > 100), "exit {code}: {exec_codes:?}");
    }
    assert!(
        failures.is_empty(),
        "{} failures, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious", "a token went into it");
    let entries: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries.len(), 2, "files appeared: {entries:?}");
}

/// Runs `steve ARGS` with `MAKEFLAGS=flags`: its exit code, or why it failed the test.
fn run_one(args: &[&str], flags: &OsString, cwd: &Path) -> Result<i32, String> {
    let mut command = Command::new(binary());
    command
        .args(args)
        .current_dir(cwd)
        .env("MAKEFLAGS", flags)
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("STEVE_CONTROL")
        .env("XDG_RUNTIME_DIR", cwd);
    let Some(output) = steve_tests::output_within(&mut command, Duration::from_secs(20)) else {
        return Err(format!("steve {args:?} did not end within 20 s"));
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(101) || stderr.contains("panicked") {
        return Err(format!("steve {args:?} panicked: {stderr}"));
    }
    output.status.code().ok_or_else(|| format!("steve {args:?} ended by {:?}", output.status))
}
