//! Writes the fuzz targets' starting corpus into `fuzz/corpus/` (kept in the tree; run again
//! only to change it): requests as the kernel sends them (built with `steve_cuse::ll::kernel`,
//! the helpers the session's tests use), MAKEFLAGS as make 4.3, make 4.4, cargo and steve
//! write them, and one control request of each kind. Not a fuzz target itself.

use std::fs;
use std::path::Path;

use steve_cuse::ll::kernel;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create the corpus folder");
        fs::write(dir.join(name), bytes).expect("write a seed");
    };

    // A client's life on the device: open, a blocking read, a poll, a write back, a release;
    // and two clients contending, one interrupted.
    let life = [
        kernel::cuse_init(1, 31),
        kernel::open(2, 100, 0o2),
        kernel::read(3, 100, 1, 1, 0o2),
        kernel::poll(4, 100, 1, 7, 1, 1),
        kernel::write(5, 100, 1, b"+"),
        kernel::release(6, 1),
    ]
    .concat();
    write("requests", "one-client", &life);
    let contention = [
        kernel::open(10, 100, 0o2),
        kernel::open(11, 101, 0o4002),
        kernel::read(12, 100, 1, 1, 0o2),
        kernel::read(13, 100, 1, 1, 0o2),
        kernel::read(14, 100, 1, 1, 0o2),
        kernel::read(15, 100, 1, 1, 0o2),
        kernel::read(16, 101, 2, 1, 0o4002),
        kernel::read(17, 101, 2, 1, 0o2),
        kernel::interrupt(18, 17),
        kernel::write(19, 100, 1, b"++"),
        kernel::flush(20, 100, 1),
        kernel::ioctl(21, 101, 2, 0x5401),
    ]
    .concat();
    write("requests", "contention", &contention);
    let mount = [
        kernel::lookup(30, 1, "jobserver"),
        kernel::getattr(31, 2),
        kernel::readdir(32, 1, 0, 4096),
    ]
    .concat();
    write("requests", "fuse-mount", &mount);

    for (name, value) in [
        ("make44-fifo", " -j8 --jobserver-auth=fifo:/run/steve/jobserver"),
        ("make43-fds", " -j8 --jobserver-fds=3,4 --jobserver-auth=3,4"),
        ("cargo", "-j --jobserver-fds=5,6 --jobserver-auth=5,6"),
        ("dry-run", "kns -j4 --jobserver-auth=fifo:/tmp/a\\ b -- CC=gcc V=1"),
        ("disabled", " --jobserver-auth=-2,-2"),
        ("overrides", "s -- prefix=/usr DESTDIR=/tmp/x\\\\y"),
    ] {
        write("makeflags", name, value.as_bytes());
    }

    for (name, line) in [
        ("status", r#"{"command":"status"}"#),
        ("get", r#"{"command":"get","keys":["jobs","load-average","weights"]}"#),
        (
            "set",
            r#"{"command":"set","settings":[["jobs","6"],["min-memory-avail","10%"],["cpu-pressure","some:20/10"],["fairness","user"],["weights","0:3"]]}"#,
        ),
        ("trace", r#"{"command":"trace","from":12}"#),
        ("trace-since", r#"{"command":"trace","since_mono_ns":123456789}"#),
    ] {
        write("control", name, format!("{line}\n").as_bytes());
    }
}
