//! A QEMU virtual machine running Debian's kernel, where CUSE exists, for the tests that need a
//! real `/dev/cuse` (the machines steve is built on have none).
//!
//! The guest sees the host's whole file system, read-only through virtio-9p, under a tmpfs
//! overlay that takes its writes: the steve binary, the clients and the cargo toolchain run there
//! unchanged, from their host paths, wherever those are (`/tmp` included: nothing is mounted over
//! host directories). A second, writable 9p share carries results back. The
//! initramfs holds only busybox, the kernel modules needed (found with their dependencies in the
//! kernel package's `.modinfo` sections) and an `/init` script that sets this up, runs one
//! command, writes its exit status and powers off; or, for the service tests, hands the
//! machine to the host's systemd as PID 1 ([`Guest::SystemdScript`]), which boots to one unit
//! running a script and powers off when it ends.
//!
//! The kernel comes from Debian's `linux-image-amd64`, unpacked by `scripts/vm-kernel` into
//! `.cache/vm-kernel/root` (or wherever `STEVE_TEST_VM_KERNEL_ROOT` says). A VM that cannot be
//! built or booted fails the test that needs it, saying why.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// The modules the guest loads (their dependencies come along).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "cuse"];

/// The unit systemd boots to under [`Guest::SystemdScript`]: runs the script, records its exit
/// status, and powers the machine off whatever happened.
const SYSTEMD_TEST_UNIT: &str = "[Unit]
Description=steve's test script, run by systemd in the test VM
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
EnvironmentFile=/steve-vm-test.env
ExecStart=/bin/sh -c '/bin/sh /steve-vm-test.sh > /steve-results/output 2>&1; echo $$? > /steve-results/status; sync'
";

/// Environment variables passed from the host into the guest's command.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "RUSTUP_HOME",
    "CARGO_HOME",
    "RUSTUP_TOOLCHAIN",
    "STEVE_LOG",
    "RUST_BACKTRACE",
];

/// Debian's kernel, unpacked.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The unpacked package's root (holds `boot/` and `lib/modules/`).
    pub root: PathBuf,
    /// `boot/vmlinuz-VERSION`.
    pub image: PathBuf,
    /// `lib/modules/VERSION/kernel`.
    pub modules: PathBuf,
}

impl Kernel {
    /// Finds the unpacked kernel, or panics saying how to get it.
    pub fn locate() -> Kernel {
        let root = std::env::var_os("STEVE_TEST_VM_KERNEL_ROOT")
            .map_or_else(|| workspace_root().join(".cache/vm-kernel/root"), PathBuf::from);
        let hint = "run scripts/test (or scripts/vm-kernel), which unpacks Debian's kernel there";
        let boot = fs::read_dir(root.join("boot"))
            .unwrap_or_else(|error| panic!("no kernel in {}: {error}; {hint}", root.display()));
        let image = boot
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
            })
            .unwrap_or_else(|| panic!("no vmlinuz in {}/boot; {hint}", root.display()));
        let version =
            image.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let modules = root.join("lib/modules").join(&version).join("kernel");
        assert!(modules.is_dir(), "no modules for {version} in {}; {hint}", root.display());
        Kernel { root, image, modules }
    }

    /// The `.ko` files for `wanted` and everything they depend on, in an order `insmod` accepts.
    pub fn modules_in_load_order(&self, wanted: &[&str]) -> Vec<PathBuf> {
        let mut index = std::collections::HashMap::new();
        index_modules(&self.modules, &mut index);
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            visit(name, &index, &mut seen, &mut order);
        }
        order
    }
}

fn index_modules(dir: &Path, index: &mut std::collections::HashMap<String, PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, index);
        } else if let Some(name) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko"))
        {
            index.insert(name.replace('-', "_"), path);
        }
    }
}

fn visit(
    name: &str,
    index: &std::collections::HashMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
) {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) {
        return;
    }
    let path =
        index.get(&name).unwrap_or_else(|| panic!("kernel module {name} is not in the package"));
    for dependency in module_dependencies(path) {
        visit(&dependency, index, seen, order);
    }
    order.push(path.clone());
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-separated `key=value` strings.
pub fn module_dependencies(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let key = b"depends=";
    bytes
        .split(|byte| *byte == 0)
        .find_map(|field| field.strip_prefix(key))
        .map(|value| {
            String::from_utf8_lossy(value)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// What a VM run gave back.
#[derive(Debug)]
pub struct VmRun {
    /// The command's exit status, if the guest got far enough to write it.
    pub status: Option<i32>,
    /// The command's stdout and stderr.
    pub output: String,
    /// The guest's serial console (kernel messages and `/init`'s own).
    pub console: String,
    /// Wall time from QEMU's start to its end.
    pub elapsed: Duration,
}

impl VmRun {
    /// What follows `prefix` on the first output line that starts with it (a script's
    /// `echo "NAME: value"`); panics with everything when there is none.
    pub fn reported(&self, prefix: &str) -> String {
        self.output
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{}", self.describe()))
            .to_string()
    }

    /// Everything, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "VM command exit status {:?} after {:.1?}\n--- output ---\n{}\n--- console ---\n{}",
            self.status, self.elapsed, self.output, self.console
        )
    }
}

/// How the guest runs what it was given, once the host's file system is its root.
#[derive(Debug, Clone)]
pub enum Guest {
    /// `/init` runs the command (host paths, seen the same in the guest) in a chroot, as root.
    Command(Vec<OsString>),
    /// `/init` hands the machine to Debian's systemd as PID 1, which runs this shell script as
    /// the one unit it boots to (`steve-vm-test.service`, with the basic system below it:
    /// journald, udev, tmpfiles) and powers off when it ends.
    SystemdScript(String),
}

/// Boots the VM and runs `command` (host paths, seen the same in the guest) with `env` added to
/// the passed-on environment, as root. Gives up after `limit`.
pub fn run(command: &[OsString], env: &[(&str, OsString)], limit: Duration) -> VmRun {
    boot(&Guest::Command(command.to_vec()), env, limit, 2)
}

/// Boots the VM with `cpus` virtual CPUs and `guest`, `env` added to the passed-on
/// environment. Gives up after `limit`.
pub fn boot(guest: &Guest, env: &[(&str, OsString)], limit: Duration, cpus: u32) -> VmRun {
    let kernel = Kernel::locate();
    let work = tempfile::tempdir().expect("temp dir");
    let results = work.path().join("results");
    fs::create_dir(&results).unwrap();
    let initrd = work.path().join("initrd.cpio");
    build_initramfs(&kernel, guest, env, &work.path().join("initramfs"), &initrd);

    let console = work.path().join("console.log");
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-M", "pc", "-bios", "/usr/share/qemu/qboot.rom"])
        .args(["-m", "2048", "-smp", &cpus.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=results,security_model=none", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = qemu.spawn().unwrap_or_else(|error| {
        panic!("cannot start qemu-system-x86_64 ({error}): run scripts/test, which installs it")
    });
    let deadline = start + limit;
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut qemu_stderr = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut qemu_stderr);
    }
    let mut console_text = fs::read_to_string(&console).unwrap_or_default();
    if exited.is_none() {
        console_text.push_str(&format!("\n[steve-tests: VM killed after {limit:?}]"));
    }
    if !qemu_stderr.trim().is_empty() {
        console_text.push_str(&format!("\n[qemu stderr: {}]", qemu_stderr.trim()));
    }
    VmRun {
        status: fs::read_to_string(results.join("status"))
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        output: fs::read_to_string(results.join("output")).unwrap_or_default(),
        console: console_text,
        elapsed: start.elapsed(),
    }
}

/// Single-quotes `text` for the guest's shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn build_initramfs(
    kernel: &Kernel,
    guest: &Guest,
    env: &[(&str, OsString)],
    dir: &Path,
    out: &Path,
) {
    for sub in ["bin", "modules", "proc", "sys", "dev", "host", "upper", "newroot"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "no /bin/busybox: run scripts/test, which installs busybox-static");
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    let applets = [
        "sh",
        "mount",
        "insmod",
        "mkdir",
        "chroot",
        "poweroff",
        "echo",
        "sync",
        "cat",
        "switch_root",
        "ip",
    ];
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    let mut load = String::new();
    for module in kernel.modules_in_load_order(MODULES) {
        let name = module.file_name().unwrap().to_string_lossy().to_string();
        fs::copy(&module, dir.join("modules").join(&name)).unwrap();
        load.push_str(&format!("insmod /modules/{name} || fail 'insmod {name}'\n"));
    }
    let mut variables: Vec<(String, String)> = PASSED_ENV
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    variables.extend(
        env.iter().map(|(name, value)| (name.to_string(), value.to_string_lossy().into_owned())),
    );
    let exports: String =
        variables.iter().map(|(name, value)| format!("{name}={} ", quote(value))).collect();
    let run = match guest {
        Guest::Command(command) => {
            let command_line: Vec<String> =
                command.iter().map(|part| quote(&part.to_string_lossy())).collect();
            format!(
                r#"echo "steve-vm: running the command"
chroot /newroot /usr/bin/env -i {exports}STEVE_IN_VM=1 {command} > /newroot/steve-results/output 2>&1
status=$?
echo $status > /newroot/steve-results/status
sync
echo "steve-vm: command exited with $status"
poweroff -f
"#,
                command = command_line.join(" "),
            )
        }
        Guest::SystemdScript(script) => {
            // The script and the unit are files in the initramfs, copied into the new root.
            fs::write(dir.join("steve-vm-test.sh"), script).unwrap();
            // systemd's EnvironmentFile= reads NAME='value' lines.
            let environment: String = variables
                .iter()
                .map(|(name, value)| format!("{name}={}\n", quote(value)))
                .collect();
            fs::write(dir.join("steve-vm-test.env"), format!("{environment}STEVE_IN_VM=1\n"))
                .unwrap();
            fs::write(dir.join("steve-vm-test.service"), SYSTEMD_TEST_UNIT).unwrap();
            r#"echo "steve-vm: starting systemd"
cp /steve-vm-test.sh /steve-vm-test.env /newroot/ || fail 'copying the test script'
cp /steve-vm-test.service /newroot/etc/systemd/system/ || fail 'copying the test unit'
exec switch_root /newroot /lib/systemd/systemd --unit=steve-vm-test.service
"#
            .to_string()
        }
    };
    let init = format!(
        r#"#!/bin/sh
export PATH=/bin
fail() {{ echo "steve-vm: $1 failed"; poweroff -f; }}
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail 'mounting proc, sys, dev'
{load}mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || fail 'mounting the host root'
mount -t tmpfs -o size=75% tmpfs /upper && mkdir -p /upper/u /upper/w || fail 'mounting tmpfs'
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot || fail 'mounting the overlay'
for d in proc sys dev; do mount --move /$d /newroot/$d || fail "moving /$d"; done
mkdir -p /newroot/steve-results
mount -t 9p -o trans=virtio,version=9p2000.L results /newroot/steve-results || fail 'mounting the results share'
ip link set lo up || fail 'bringing up the loopback interface'
{run}"#,
    );
    let init_path = dir.join("init");
    fs::write(&init_path, init).unwrap();
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755)).unwrap();

    // busybox cpio writes the newc archive the kernel unpacks; no compression needed.
    let mut find = Command::new("busybox")
        .args(["find", "."])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("busybox find");
    let archive = fs::File::create(out).unwrap();
    let status = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(dir)
        .stdin(find.stdout.take().unwrap())
        .stdout(archive)
        .stderr(Stdio::null())
        .status()
        .expect("busybox cpio");
    assert!(find.wait().unwrap().success() && status.success(), "building the initramfs failed");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dependencies_from_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("cuse.ko");
        fs::write(&module, b"\x7fELF junk\0license=GPL\0depends=fuse,other\0vermagic=6.1\0")
            .unwrap();
        assert_eq!(module_dependencies(&module), vec!["fuse", "other"]);
        let module = dir.path().join("fuse.ko");
        fs::write(&module, b"\0depends=\0name=fuse\0").unwrap();
        assert!(module_dependencies(&module).is_empty());
    }
}
